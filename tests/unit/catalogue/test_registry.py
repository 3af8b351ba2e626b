"""The configured list of pairs, aliases and overlays: its documented order, aliases by pair, and the
source the Hydra edge registers (none: the core leaves the list out of its messages)."""

from __future__ import annotations

import random

import pytest

from layer_sensitivity.catalogue import Listing, registry
from layer_sensitivity.schema import QuantGranularityConfig
from tests.helpers.catalogue import ALIASES, OVERLAYS, PAIRS


def test_listing_order_does_not_depend_on_input_order() -> None:
    pairs, overlays = list(PAIRS.values()), list(OVERLAYS.values())
    random.Random(0).shuffle(pairs)
    random.Random(0).shuffle(overlays)
    again = Listing.ordered(pairs, dict(reversed(ALIASES.items())), overlays)
    assert list(again.pairs) == list(PAIRS) and list(again.overlays) == list(OVERLAYS)
    assert list(again.aliases) == sorted(ALIASES)
    # Weight precision first, then FP4 flavour, then activation precision.
    assert list(PAIRS)[:3] == ["wfp8_afp16", "wfp8_afp8", "wfp8_aint8"]
    assert list(OVERLAYS)[0] == "default"


def test_unlisted_overlays_follow_the_documented_ones_by_name() -> None:
    extra = [QuantGranularityConfig(name="zz_mine"), QuantGranularityConfig(name="aa_mine")]
    listing = Listing.ordered(PAIRS.values(), ALIASES, [*extra, *OVERLAYS.values()])
    assert list(listing.overlays)[-3:] == ["recipe_match_channel_token", "aa_mine", "zz_mine"]


def test_aliases_of_a_pair() -> None:
    listing = Listing.ordered(PAIRS.values(), ALIASES, OVERLAYS.values())
    assert listing.aliases_of("wfp8_afp8") == ["fp8"]
    assert listing.aliases_of("wfp8_afp16") == []


def test_the_listing_comes_from_the_registered_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_source", registry._source)  # restored after the test
    registry.register_listing_source(None)
    assert registry.current_listing() is None  # the core without Hydra: no list
    empty = Listing.ordered([], {}, [])
    registry.register_listing_source(lambda: empty)
    assert registry.current_listing() is empty
