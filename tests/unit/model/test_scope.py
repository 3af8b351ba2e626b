"""A language-model bit target in ModelOpt's whole-model budget and back; weights in scope."""

from __future__ import annotations

import pytest
import torch

from layer_sensitivity.model.scope import modelopt_bits, scope_bits, weight_counts


def test_no_frozen_weights_is_identity() -> None:
    assert modelopt_bits(6.0, 1000, 0) == 6.0


def test_frozen_weights_count_as_16_bits() -> None:
    # 800 LM weights at 8 bits + 200 vision weights at 16 -> 9.6 bits over everything
    assert modelopt_bits(8.0, 800, 200) == pytest.approx(9.6)
    assert scope_bits(9.6, 800, 200) == pytest.approx(8.0)


@pytest.mark.parametrize("bits", [4.0, 4.5, 8.0, 12.25, 16.0])
def test_roundtrip(bits: float) -> None:
    assert scope_bits(modelopt_bits(bits, 1234, 567), 1234, 567) == pytest.approx(bits)


def test_weight_counts_split_by_pattern() -> None:
    m = torch.nn.Module()
    m.visual = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Conv2d(1, 2, 3))
    m.lm = torch.nn.Linear(8, 8)
    m.norm = torch.nn.LayerNorm(8)  # not quantizable, never counted
    assert weight_counts(m, ["*visual*"]) == (64, 8 + 18)
    assert weight_counts(m, []) == (64 + 26, 0)


def test_infeasible_message_is_restated_in_language_model_bits() -> None:
    from layer_sensitivity.autoquant import InfeasibleTarget

    e = InfeasibleTarget("The effective_bits target 8.0 is infeasible for the resolved module "
                         "search spaces. The minimum achievable effective bits is 9.6000.")
    assert e.minimum_bits == 9.6
    assert scope_bits(e.minimum_bits, 800, 200) == pytest.approx(8.0)
