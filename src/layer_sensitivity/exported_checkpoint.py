"""A unified Hugging Face checkpoint (ModelOpt's ``export_hf_checkpoint``) read back as a runtime
would: its weights dequantized with their scales, its activation scales applied to the inputs,
loaded into a fresh unquantized model of the source architecture. ``export`` checks an export
against the fake-quantized model with it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .catalogue import runtimes
from .errors import UserError
from .model import loader
from .schema import ModelConfig

FP8_MAX = 448.0


def _unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ModelOpt's ``pack_int4_in_uint8`` (2-D): (out/2, in) uint8 -> (out, in) int."""
    p = packed.to(torch.int16).T  # (in, out/2)
    lo, hi = p & 0x0F, (p >> 4) & 0x0F
    both = torch.stack([lo, hi], dim=-1).reshape(p.shape[0], -1)  # (in, out)
    return torch.where(both >= 8, both - 16, both).T


def layer_algos(hf_quant: Mapping[str, Any]) -> dict[str, str]:
    """module -> quant_algo of every quantized layer; ``*`` for a single-format checkpoint."""
    q = hf_quant.get("quantization") or {}
    if q.get("quant_algo") == runtimes.MIXED_PRECISION:
        return {k: str(v["quant_algo"]) for k, v in (q.get("quantized_layers") or {}).items()}
    return {"*": str(q.get("quant_algo"))} if q.get("quant_algo") else {}


def dequantize(state: Mapping[str, torch.Tensor], hf_quant: Mapping[str, Any],
               dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, float]]]:
    """The checkpoint's weights in ``dtype`` with every quantized weight dequantized with its
    scales; and module -> (quant_algo, input scale) for layers whose activations are quantized."""
    algos = layer_algos(hf_quant)
    out: dict[str, torch.Tensor] = {}
    inputs: dict[str, tuple[str, float]] = {}
    group = int((hf_quant.get("quantization") or {}).get("group_size") or 128)
    for key, t in state.items():
        if key.endswith((".weight_scale", ".input_scale", ".pre_quant_scale", ".weight_scale_2")):
            continue
        module = key.removesuffix(".weight")
        scale = state.get(f"{module}.weight_scale")
        if not key.endswith(".weight") or scale is None:
            out[key] = t.to(dtype) if t.is_floating_point() else t
            continue
        algo = algos.get(module, algos.get("*", ""))
        if algo == "FP8":
            w = t.to(torch.float32) * scale.to(torch.float32)
        elif algo == "W4A16_AWQ":
            q = _unpack_int4(t).to(torch.float32)
            s = scale.to(torch.float32).repeat_interleave(group, dim=1)[:, :q.shape[1]]
            w = q * s
        elif algo in ("W8A16", "W8A8_SQ_PER_CHANNEL"):
            w = t.to(torch.float32) * scale.to(torch.float32).reshape(-1, 1)
        else:
            raise UserError(f"Checking an export of format {algo!r} ({module}) is not supported "
                            "on this machine (FP8, W4A16_AWQ, W8A16, W8A8_SQ_PER_CHANNEL are).")
        pre = state.get(f"{module}.pre_quant_scale")
        if pre is not None:  # AWQ: y = (x * s) W^T  ==  x (W * s)^T
            w = w * pre.to(torch.float32).reshape(1, -1)
        out[key] = w.to(dtype)
        if f"{module}.input_scale" in state:
            inputs[module] = (algo, float(state[f"{module}.input_scale"].float().reshape(-1)[0]))
    return out, inputs


def _fake_quant_inputs(m: torch.nn.Module, inputs: Mapping[str, tuple[str, float]]) -> list[Any]:
    """Quantize-dequantize each listed layer's input with the file's scale, as a runtime would,
    with ModelOpt's own quantizer kernel (the same arithmetic as the fake-quantized model, so a
    value on a rounding boundary falls the same way)."""
    from modelopt.torch.quantization.config import QuantizerAttributeConfig
    from modelopt.torch.quantization.nn import TensorQuantizer

    modules = dict(m.named_modules())
    handles = []
    for name, (algo, scale) in inputs.items():
        bits, bound = ((4, 3), FP8_MAX) if algo == "FP8" else (8, 127.0)  # else W8A8 (int8)
        tq = TensorQuantizer(QuantizerAttributeConfig(num_bits=bits, axis=None))
        tq.amax = torch.tensor(scale * bound, dtype=torch.float32)
        tq.to(next(modules[name].parameters()).device)

        def hook(_mod: Any, args: tuple[Any, ...], q: Any = tq) -> tuple[Any, ...]:
            return (q(args[0]), *args[1:])

        handles.append(modules[name].register_forward_pre_hook(hook))
    return handles


def _vision_quantized(state: Mapping[str, torch.Tensor], hf_quant: Mapping[str, Any]) -> list[str]:
    scaled = [k for k in state if "visual" in k and k.endswith(("_scale", "_scale_2"))]
    low = [k for k in state if "visual" in k and k.endswith(".weight")
           and not state[k].is_floating_point()]
    listed = [k for k in layer_algos(hf_quant) if "visual" in k]
    return sorted(set(scaled + low + listed))


def read_state(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        state.update(load_file(str(f)))
    if not state:
        raise RuntimeError(f"the export in {directory} has no safetensors weights")
    return state


def rebuild(directory: Path, hf_quant: Mapping[str, Any], source_dir: Path, device: str
            ) -> torch.nn.Module:
    """A fresh unquantized model (the source architecture) holding the export's weights,
    dequantized with ``hf_quant`` (its hf_quant_config.json), with its activation scales applied."""
    loaded = loader.load(ModelConfig(name=source_dir.name, path=str(source_dir), device=device),
                        source_dir, device)
    fresh = loaded.model
    dtype = next(fresh.parameters()).dtype
    state = read_state(directory)
    vision = _vision_quantized(state, hf_quant)
    if vision:
        raise RuntimeError(f"the export quantizes the vision tower: {vision[:5]}")
    weights, inputs = dequantize(state, hf_quant, dtype)
    result = fresh.load_state_dict(weights, strict=False)
    tied = set(getattr(fresh, "_tied_weights_keys", None) or [])
    missing = [k for k in result.missing_keys if k not in tied and not k.endswith("lm_head.weight")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"the export does not fill the model: missing {missing[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]}")
    fresh.to(device)
    _fake_quant_inputs(fresh, inputs)
    return fresh
