"""The catalogue as Hydra composes it, composing a job, and ModelOpt run on a two-layer MLP on CPU
(the catalogue tests in tests/unit/catalogue and tests/unit/cli/test_config_store.py share these)."""

from __future__ import annotations

from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from layer_sensitivity.cli.config_store import CONF_DIR, load_listing
from layer_sensitivity.schema import SensitivityConfig

LISTING = load_listing()
PAIRS, ALIASES, OVERLAYS = LISTING.pairs, LISTING.aliases, LISTING.overlays
CPU_PAIRS = [n for n, p in PAIRS.items() if not p.requires_cuda]
CUDA_PAIRS = [n for n, p in PAIRS.items() if p.requires_cuda]
DEFAULT = OVERLAYS["default"]


def compose_cfg(*overrides: str) -> Any:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sensitivity", overrides=list(overrides))
    cfg.output_layout.dir = "/tmp/unused"  # ${hydra:...} only resolves inside a Hydra run
    return cfg


def compose_job(*overrides: str) -> SensitivityConfig:
    return OmegaConf.to_object(compose_cfg(*overrides))  # type: ignore[return-value]


def tiny_linear() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128))


def quantize_on_cpu(cfg: dict[str, Any]) -> torch.nn.Sequential:
    import modelopt.torch.quantization as mtq

    model, x = tiny_linear(), torch.randn(2, 8, 128)
    mtq.quantize(model, cfg, lambda m: m(x))
    model(x)
    return model


def applied_settings(tq: Any) -> dict[str, Any]:
    """A ModelOpt TensorQuantizer's settings in the manifest's vocabulary."""
    if not tq.is_enabled:
        return {"enabled": False}
    blocks = tq.block_sizes
    # ModelOpt turns per-token blocks ({-1: None}) into amax over the last axis of the 3-D input.
    axis = "per-token" if tq.axis == (0, 1) else tq.axis if blocks is None else "blocks"
    return {"enabled": True, "num_bits": list(tq.num_bits) if isinstance(tq.num_bits, tuple) else tq.num_bits,
            "block_sizes": None if blocks is None else {str(k): v for k, v in blocks.items()},
            "dynamic": bool(tq._dynamic), "axis": axis}


def recorded_settings(s: dict[str, Any]) -> dict[str, Any]:
    if not s["enabled"]:
        return {"enabled": False}
    blocks = s["block_sizes"]
    if blocks == {"-1": None}:
        return {"enabled": True, "num_bits": s["num_bits"], "block_sizes": None,
                "dynamic": s["type"] == "dynamic", "axis": "per-token"}
    if blocks is not None:
        blocks = {k: (tuple(v) if isinstance(v, list) else v) for k, v in blocks.items()}
    return {"enabled": True, "num_bits": s["num_bits"], "block_sizes": blocks,
            "dynamic": s["type"] == "dynamic", "axis": s["axis"] if blocks is None else "blocks"}
