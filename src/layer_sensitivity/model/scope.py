"""Which weights a search covers: quantizable layers, the frozen ones (vision tower, lm_head), and
a language-model bit target translated into ModelOpt's whole-model budget and back."""

from __future__ import annotations

import fnmatch

import torch

from ..schema import Coverage

# Module-name patterns ModelOpt must leave unquantized for each coverage.
FROZEN_PATTERNS: dict[Coverage, list[str]] = {
    Coverage.lm_only: ["*visual*"],
    Coverage.full: [],
}
FUSED_EXPERT_WEIGHTS = ("gate_up_proj", "down_proj")


def _is_quantizable(module: torch.nn.Module) -> bool:
    # The layers ModelOpt's weight cost model counts: linear and convolution weights.
    return isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))


def is_fused_experts(module: torch.nn.Module) -> bool:
    """A fused MoE experts container (3-D ``gate_up_proj`` and ``down_proj`` parameters, as in
    transformers 5's Qwen3-VL-MoE): ModelOpt quantizes it as one module, all experts together."""
    params = dict(module.named_parameters(recurse=False))
    return all(n in params and params[n].dim() == 3 for n in FUSED_EXPERT_WEIGHTS)


def quantizable_weight_numel(module: torch.nn.Module) -> int:
    """Weights ModelOpt's cost model counts for ``module`` (0 for modules it does not quantize)."""
    if _is_quantizable(module):
        weight: torch.Tensor = module.weight  # type: ignore[assignment]
        return weight.numel()
    if is_fused_experts(module):
        params = dict(module.named_parameters(recurse=False))
        return sum(params[n].numel() for n in FUSED_EXPERT_WEIGHTS)
    return 0


def weight_counts(model: torch.nn.Module, frozen_patterns: list[str]) -> tuple[int, int]:
    """(weights in scope, weights of quantizable layers kept at 16 bits by ``frozen_patterns``).

    Works on the meta device too (only shapes are read).
    """
    in_scope = frozen = 0
    for name, module in model.named_modules():
        n = quantizable_weight_numel(module)
        if not n:
            continue
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
