"""Layer groups as plain data: ModelOpt's unit of decision, its formats, and where it sits in depth.

No torch, no ModelOpt: manifests, reports, figures and comparisons all read groups through this.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

RECIPE_SUFFIX = ".quant_recipe"  # ModelOpt's handle of a group: "<first module>.quant_recipe"
_BITS = re.compile(r"effective-bits:\s*([0-9.]+)")
_DECODER = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")
# Known decoder kinds, by the handle's module path inside the layer (q/k/v and gate/up share a
# recipe, named after their first module).
_KINDS = {
    "self_attn.q_proj": "attn.qkv",
    "self_attn.o_proj": "attn.o",
    "mlp.gate_proj": "mlp.gate_up",
    "mlp.down_proj": "mlp.down",
}


def format_bits(fmt: str) -> float:
    """Bits per weight of a ModelOpt format string such as ``FP8_DEFAULT_CFG(effective-bits: 8.0)``."""
    m = _BITS.search(fmt)
    return float(m.group(1)) if m else math.nan


def module_of(handle: str) -> str:
    return handle.removesuffix(RECIPE_SUFFIX)


def layer_and_kind(handle: str) -> tuple[int | None, str]:
    """(decoder layer index, kind) of a group; (None, name) outside the decoder stack.

    ``model.language_model.layers.3.mlp.gate_proj.quant_recipe`` -> (3, "mlp.gate_up");
    ``lm_head.quant_recipe`` -> (None, "lm_head"). Unknown decoder groups get their own kind from
    their path inside the layer (``self_attn`` shortened to ``attn``, ``_proj`` dropped).
    """
    module = module_of(handle)
    m = _DECODER.search(module)
    if not m:
        return None, module.removeprefix("model.")
    inner = m.group(2)
    kind = _KINDS.get(inner) or re.sub(r"_proj\b", "", inner.replace("self_attn.", "attn."))
    return int(m.group(1)), kind


@dataclass(frozen=True)
class GroupStats:
    """One runtime-grouped decision (e.g. q/k/v of one layer share a format)."""

    formats: list[str]  # "FP8_DEFAULT_CFG(effective-bits: 8.0)", ..., "NONE(effective-bits: 16.0)"
    scores: list[float]
    costs: list[float]
    modules: list[str]
    chosen: str  # the format the solver picked
    in_scope: bool

    @property
    def importance(self) -> float:
        """Sensitivity: the largest score among quantized formats (NONE scores 0)."""
        quantized = [s for f, s in zip(self.formats, self.scores, strict=True)
                     if not f.startswith("NONE")]
        return max(quantized, default=0.0)

    @property
    def uncompressed_cost(self) -> float:
        return max(self.costs)

    @property
    def chosen_cost(self) -> float:
        return self.costs[self.formats.index(self.chosen)]


def achieved_scope_bits(groups: dict[str, GroupStats]) -> float:
    """Average bits over in-scope weights of the solver's choice."""
    scoped = [g for g in groups.values() if g.in_scope]
    return 16.0 * sum(g.chosen_cost for g in scoped) / sum(g.uncompressed_cost for g in scoped)


def min_scope_bits(groups: dict[str, GroupStats]) -> float:
    scoped = [g for g in groups.values() if g.in_scope]
    return 16.0 * sum(min(g.costs) for g in scoped) / sum(g.uncompressed_cost for g in scoped)


# Order of the known decoder kinds inside one layer, as data flows through it.
KIND_ORDER = ("attn.qkv", "attn.o", "mlp.gate_up", "mlp.down")


def depth_key(handle: str) -> tuple[int, int, int, str]:
    """Sort key for model depth order: embeddings, then decoder layers (kinds in KIND_ORDER, other
    kinds after them by name), then everything else (final norm, ``lm_head``) by name."""
    layer, kind = layer_and_kind(handle)
    if layer is None:
        return (0 if "embed" in kind else 2, 0, 0, kind)
    position = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
    return (1, layer, position, kind)
