"""A search state is complete or names what is missing; it loads back weights-only or not at all."""

from __future__ import annotations

import io
import math
import pickle
from typing import Any

import pytest
import torch

from layer_sensitivity import search_state


def _state() -> dict[str, Any]:
    """A complete state of auto_quantize's shape, formats named by strings."""
    stats = {f"layers.{i}.quant_recipe": {"formats": ["FP8_DEFAULT_CFG(effective-bits: 8.0)", "NONE"],
                                         "scores": [0.5 * i, 0.0], "costs": [8.0, 16.0],
                                         "module_names": [f"layers.{i}"]} for i in range(3)}
    return {"method": "gradient", "candidate_stats": stats,
            "best": {"recipe": {h: "NONE" for h in stats}}}


def test_a_complete_state_has_no_problem() -> None:
    assert search_state.state_problem(_state()) is None
    assert search_state.state_problem(_state(), ["FP8_DEFAULT_CFG", "NONE"]) is None


@pytest.mark.parametrize("break_it, problem", [
    (lambda s: s.update(method="random"), "method 'random'"),
    (lambda s: s.update(candidate_stats={}), "scoring did not finish"),
    (lambda s: s["candidate_stats"]["layers.0.quant_recipe"]["scores"].pop(), "no score for every"),
    (lambda s: s["candidate_stats"]["layers.1.quant_recipe"]["costs"].__setitem__(0, math.nan),
     "finite"),
    (lambda s: s["best"]["recipe"].popitem(), "every group"),
    (lambda s: s["best"]["recipe"].__setitem__("layers.2.quant_recipe", "INT4"), "not one of"),
    (lambda s: s.update(best=None), "not a dict with a recipe"),
    (lambda s: s["candidate_stats"].__setitem__("x", None), "stats are not a dict"),
])
def test_an_incomplete_state_names_its_problem(break_it: Any, problem: str) -> None:
    state = _state()
    break_it(state)
    found = search_state.state_problem(state)
    assert found is not None and problem in found, found


def test_other_formats_than_expected_are_a_problem() -> None:
    assert "differ from the expected" in str(search_state.state_problem(_state(), ["INT8_DEFAULT_CFG"]))


def test_serialized_state_loads_back_weights_only_and_code_does_not() -> None:
    assert search_state.weights_only_load(search_state.serialize(_state())) == _state()
    buffer = io.BytesIO()
    torch.save({"x": pickle.loads}, buffer)  # a callable: refused by the weights-only unpickler
    with pytest.raises(pickle.UnpicklingError):
        search_state.weights_only_load(buffer.getvalue())
