"""Load a local Qwen3-VL checkpoint, decide the quantization scope, translate bit targets."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .schema import Coverage, DType, ModelConfig

# Module-name patterns ModelOpt must leave unquantized for each coverage.
FROZEN_PATTERNS: dict[Coverage, list[str]] = {
    Coverage.lm_only: ["*visual*"],
    Coverage.full: [],
}


def checkpoint_dir(cfg: ModelConfig) -> Path:
    """The local checkpoint directory named by ``path`` or by the ``path_env`` variable."""
    raw = cfg.path or (os.environ.get(cfg.path_env) if cfg.path_env else None)
    if not raw:
        how = f"or export {cfg.path_env}=<dir>" if cfg.path_env else ""
        raise UserError(
            f"Model '{cfg.name}' has no checkpoint directory. Set model.path=<local dir with "
            f"config.json and *.safetensors> {how}; weights are only loaded from local disk."
        )
    path = Path(raw).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(
            f"Model directory '{path}' for model '{cfg.name}' does not exist or has no "
            "config.json. Set model.path to a local Qwen3-VL checkpoint directory (as written by "
            "save_pretrained); nothing is downloaded from a model hub."
        )
    return path


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


def fingerprint(path: Path) -> str:
    """sha256 over config.json and the weights' index (tensor names, shapes, dtypes, offsets).

    Cheap for any size of checkpoint: safetensors headers are read, not the weights.
    """
    h = hashlib.sha256((path / "config.json").read_bytes())
    index = path / "model.safetensors.index.json"
    if index.is_file():
        h.update(index.read_bytes())
    for shard in sorted(path.glob("*.safetensors")):
        with shard.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            h.update(shard.name.encode() + f.read(n))
    return h.hexdigest()[:16]


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    path: Path
    device: str
    dtype: torch.dtype


def load(cfg: ModelConfig, path: Path, device: str) -> LoadedModel:
    """The checkpoint through ``AutoModelForImageTextToText``, offline, in eval mode."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    dtype = resolve_dtype(cfg.dtype, device)
    kwargs = dict(local_files_only=True, trust_remote_code=cfg.trust_remote_code)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, **kwargs)
    model.to(device)  # type: ignore[arg-type]  # transformers types .to() as a decorator
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return LoadedModel(model, tokenizer, path, device, dtype)


def _is_quantizable(module: torch.nn.Module) -> bool:
    # The layers ModelOpt's weight cost model counts: linear and convolution weights.
    return isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))


def weight_counts(model: torch.nn.Module, frozen_patterns: list[str]) -> tuple[int, int]:
    """(weights in scope, weights of quantizable layers kept at 16 bits by ``frozen_patterns``)."""
    in_scope = frozen = 0
    for name, module in model.named_modules():
        if not _is_quantizable(module):
            continue
        n = module.weight.numel()
        if any(fnmatch.fnmatch(name, p) for p in frozen_patterns):
            frozen += n
        else:
            in_scope += n
    return in_scope, frozen


def modelopt_bits(target_bits: float, in_scope: int, frozen: int) -> float:
    """ModelOpt's effective-bits target for a target averaged over the in-scope weights only.

    ModelOpt averages over every quantizable layer it sees; frozen layers always cost 16 bits.
    """
    return (target_bits * in_scope + 16.0 * frozen) / (in_scope + frozen)


def scope_bits(modelopt_target: float, in_scope: int, frozen: int) -> float:
    """Inverse of :func:`modelopt_bits`: a whole-model figure as bits over the in-scope weights."""
    return (modelopt_target * (in_scope + frozen) - 16.0 * frozen) / in_scope


def read_config(path: Path) -> dict[str, Any]:
    return json.loads((path / "config.json").read_text())
