"""The configured list of pairs, aliases and overlays: its documented order, aliases by pair, and the
source the Hydra edge registers (none: the core leaves the list out of its messages)."""

from __future__ import annotations

import random

from layer_sensitivity.catalogue import Listing
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
