"""The catalogue's pairs, aliases and overlays, as the configuration system composes them.

The core does not read ``conf/`` (composing it is Hydra's job, and the core imports no Hydra): the
Hydra edge (``cli/config_store.py``) registers a source here, and core code that needs the whole
list (the CPU alternatives in a device error) asks for it. Without a registered source (the core
called from a notebook) ``current_listing()`` is None and such messages leave the list out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..schema import QuantGranularityConfig, QuantPairConfig
from .presets import DEFAULT_FP4

_W_ORDER = ["fp8", "int8", "int4", "fp4"]
_A_ORDER = ["fp16", "fp8", "int8", "int4", "fp4"]
# The overlays in the order the README documents them; unlisted ones follow, by name.
_OVERLAY_ORDER = ["default", "w_per_tensor", "w_per_out_channel", "w_per_in_channel", "w_group64",
                  "w_group128", "a_per_tensor_static", "a_per_token_dynamic",
                  "recipe_match_channel_token"]


def _pair_rank(p: QuantPairConfig) -> tuple[int, int, int, str]:
    flavour = 0 if p.fp4_format in (None, DEFAULT_FP4) else 1
    return (_W_ORDER.index(p.weight.value), flavour, _A_ORDER.index(p.activation.value), p.name)


def _overlay_rank(g: QuantGranularityConfig) -> tuple[int, str]:
    known = g.name in _OVERLAY_ORDER
    return (_OVERLAY_ORDER.index(g.name) if known else len(_OVERLAY_ORDER), g.name)


@dataclass(frozen=True)
class Listing:
    """Every configured pair and overlay, in the documented order."""

    pairs: dict[str, QuantPairConfig]  # canonical name -> pair, by weight then activation
    aliases: dict[str, str]  # alias -> canonical pair name, by alias
    overlays: dict[str, QuantGranularityConfig]  # name -> overlay

    @classmethod
    def ordered(cls, pairs: Iterable[QuantPairConfig], aliases: Mapping[str, str],
                overlays: Iterable[QuantGranularityConfig]) -> Listing:
        return cls(pairs={p.name: p for p in sorted(pairs, key=_pair_rank)},
                   aliases=dict(sorted(aliases.items())),
                   overlays={g.name: g for g in sorted(overlays, key=_overlay_rank)})

    def aliases_of(self, pair: str) -> list[str]:
        return [alias for alias, canonical in self.aliases.items() if canonical == pair]


_source: Callable[[], Listing] | None = None


def register_listing_source(source: Callable[[], Listing] | None) -> None:
    """Where ``current_listing()`` gets the list (the Hydra edge registers its composer)."""
    global _source
    _source = source


def current_listing() -> Listing | None:
    """The configured pairs and overlays, or None when no configuration system registered them."""
    return _source() if _source is not None else None
