"""Where the model lives: device, dtype, and one model over several GPUs (accelerate's
``device_map`` / ``max_memory``), checked before anything is logged."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import UserError
from ..schema import DType, ModelConfig, ModelInit

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"model.device={device} but this machine has no CUDA device. Use model.device=cpu "
            "(or auto) here, or run on a GPU host."
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"model.device={device} is not a device; use auto, cpu, cuda or cuda:N.")
    return device


def resolve_dtype(dtype: DType, device: str) -> torch.dtype:
    if dtype == DType.auto:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype.value)


def check_loader_options(cfg: ModelConfig) -> None:
    """``device_map`` / ``max_memory`` make sense together and with the chosen init."""
    if cfg.device_map is None:
        if cfg.max_memory:
            raise UserError(
                "model.max_memory is set but model.device_map is null; max_memory only caps the "
                "devices of a device map. Set model.device_map=auto (or balanced), or drop "
                "model.max_memory."
            )
        return
    if cfg.max_memory is not None and not isinstance(cfg.max_memory, Mapping):
        raise UserError(
            f"model.max_memory={cfg.max_memory!r} is not a map of device to size. Use e.g. "
            "model.max_memory={0:70GiB,1:70GiB} (GPU index or cpu: size)."
        )
    dm = cfg.device_map
    if not (dm in DEVICE_MAP_STRATEGIES or isinstance(dm, Mapping)):
        raise UserError(
            f"model.device_map={dm!r} is not a device map. Use one of "
            f"{', '.join(DEVICE_MAP_STRATEGIES)}, or an explicit {{module name: device}} map, or "
            "null for one device."
        )
    if cfg.init == ModelInit.random:
        raise UserError(
            "model.device_map is not supported with model.init=random (the random model is built "
            "on model.device). Drop model.device_map, or use a checkpoint (model.init=pretrained)."
        )


def check_placement(cfg: ModelConfig, device: str) -> None:
    """model.device_map / max_memory fit the device (checked before anything is logged)."""
    loader_kwargs(cfg, device)


def loader_kwargs(cfg: ModelConfig, device: str) -> dict[str, Any]:
    """from_pretrained's device_map / max_memory, or {} for one device."""
    if cfg.device_map is None:
        return {}
    if not device.startswith("cuda"):
        raise UserError(
            f"model.device_map={cfg.device_map!r} spreads the model over GPUs but the job runs on "
            f"{device}. Run on a CUDA host or set model.device_map=null."
        )
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise UserError(
            "model.device_map needs the 'accelerate' package, which is not installed. Install it "
            "(pip install accelerate) or set model.device_map=null."
        ) from None
    dm = cfg.device_map
    kwargs: dict[str, Any] = {"device_map": dict(dm) if isinstance(dm, Mapping) else dm}
    if cfg.max_memory:
        kwargs["max_memory"] = {(int(k) if str(k).isdigit() else str(k)): str(v)
                                for k, v in cfg.max_memory.items()}
    return kwargs
