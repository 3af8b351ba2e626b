"""What can be decided before the model's weights load: formats that need CUDA, and weight group
sizes that do not divide a layer's input features."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..schema import QuantGranularityConfig, QuantPairConfig, WeightGranularity
from .describe import dtype_name, format_name
from .presets import INPUT, MX_SCALE_BITS, WEIGHT, QuantCfg, is_fp4, resolve_quantizer
from .registry import Listing, current_listing


def cuda_requirements(cfg: QuantCfg) -> list[str]:
    """Why ModelOpt 0.47 can run this config only on CUDA (empty: it runs on CPU too).

    Facts measured on CPU (see tests/unit/catalogue/test_capability.py): NVFP4 blocks assert CUDA tensors
    (``amax must be a CUDA tensor for dynamic block quantization``), MX blocks load the CUDA
    extension ``modelopt_cuda_ext_mx``, static FP4 blocks need Triton on a GPU; per-token dynamic
    and static INT/FP8 blocks run on CPU.
    """
    reasons = []
    for quantizer, side in ((WEIGHT, "weights"), (INPUT, "activations")):
        enabled, attrs = resolve_quantizer(cfg, quantizer)
        if not enabled or attrs is None:
            continue
        for stage in attrs if isinstance(attrs, list) else [attrs]:
            blocks = stage.get("block_sizes") or {}
            sized = any(isinstance(k, int) and v for k, v in blocks.items())
            fmt = dtype_name(stage.get("num_bits", 8))
            if tuple(blocks.get("scale_bits") or ()) == MX_SCALE_BITS:
                reasons.append(f"{fmt} {side} in MX blocks (E8M0 scales) need ModelOpt's CUDA "
                               "extension modelopt_cuda_ext_mx")
            elif sized and blocks.get("type") == "dynamic":
                reasons.append(f"{fmt} {side} use dynamic block quantization, which ModelOpt "
                               "runs only on CUDA tensors")
            elif is_fp4(stage):
                reasons.append(f"{fmt} {side} need ModelOpt's FP4 kernels (CUDA or Triton on a GPU)")
    return reasons


def cpu_alternatives(listing: Listing | None = None) -> list[str]:
    """Canonical pairs that run on CPU, with their aliases, as users type them.

    ``listing`` defaults to the registered one; empty when none is known.
    """
    listing = listing or current_listing()
    if listing is None:
        return []
    out = []
    for name, p in listing.pairs.items():
        if p.requires_cuda:
            continue
        short = listing.aliases_of(name)
        out.append(f"{name} ({', '.join(short)})" if short else name)
    return out


def check_device(pair: QuantPairConfig, granularity: QuantGranularityConfig, cfg: QuantCfg,
                 device: str, listing: Listing | None = None) -> None:
    """A clear error, before the model loads, when the pair/overlay needs CUDA and ``device`` is not.

    The message names the pairs that do run, from ``listing`` (default: the registered one).
    """
    if device.startswith("cuda"):
        return
    reasons = cuda_requirements(cfg)
    if not reasons and not pair.requires_cuda:
        return
    if not reasons:
        reasons = ["the pair is marked requires_cuda in conf/quant_pair"]
    who = f"quant_pair={pair.name}"
    if granularity.name != "default" and not pair.requires_cuda:
        who += f" with quant_granularity={granularity.name}"
    alternatives = cpu_alternatives(listing)
    alt = (f" Pairs that run on {device}: {', '.join(alternatives)}." if alternatives else "")
    raise UserError(
        f"{who} ({pair.description or format_name(pair, granularity)}) cannot run on {device}: "
        f"{'; '.join(dict.fromkeys(reasons))}.{alt} Or run this pair on a CUDA host "
        "(model.device=cuda)."
    )


def weight_last_dims(checkpoint: Path, frozen_patterns: list[str],
                     trust_remote_code: bool = False, config: Any = None) -> dict[str, int]:
    """Last weight dimension (input features of a linear layer) of each quantizable module in scope.

    Built from config.json (or ``config``, a transformers config, for a checkpoint directory not
    written yet) on the meta device: no weights are read.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    if config is None:
        config = AutoConfig.from_pretrained(checkpoint, local_files_only=True,
                                            trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        meta = AutoModelForImageTextToText.from_config(config, trust_remote_code=trust_remote_code)
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return {
        name: int(m.weight.shape[-1])
        for name, m in meta.named_modules()
        if isinstance(m, kinds) and not any(fnmatch.fnmatch(name, p) for p in frozen_patterns)
    }


def check_layer_fit(granularity: QuantGranularityConfig, checkpoint: Path,
                    frozen_patterns: list[str], trust_remote_code: bool = False,
                    config: Any = None) -> None:
    """A weight group size must divide the input features of every quantized layer."""
    if granularity.weight != WeightGranularity.group or not granularity.group_size:
        return
    size = granularity.group_size
    dims = weight_last_dims(checkpoint, frozen_patterns, trust_remote_code, config)
    bad = {n: d for n, d in dims.items() if d % size}
    if bad:
        shown = ", ".join(f"{n} ({d})" for n, d in list(bad.items())[:4])
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        ok = sorted({g for g in (16, 32, 64, 128, 256) if all(d % g == 0 for d in dims.values())})
        raise UserError(
            f"quant_granularity={granularity.name} quantizes weights in groups of {size}, which "
            f"does not divide the input features of {len(bad)} layer(s) of {checkpoint.name}: "
            f"{shown}{more}. Use a group size that divides them all "
            f"({', '.join(map(str, ok)) or 'none of 16..256 does'}), or a per-channel overlay."
        )
