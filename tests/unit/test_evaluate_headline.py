"""evaluate's headline: guided vs baselines at one keep fraction, as single values and one line."""

from __future__ import annotations

import pandas as pd

from layer_sensitivity import evaluate_runs


def _results() -> pd.DataFrame:
    rows = []
    for kind, kls in (("keep_top", [0.9, 0.2, 0.1]), ("keep_bottom", [0.9, 0.8, 0.5]),
                      ("keep_random", [0.9, 0.5, 0.3])):
        for frac, kl in zip([0.0, 0.25, 0.5], kls, strict=True):
            rows.append({"kind": kind, "keep_fraction": frac, "kl": kl, "loss_delta": kl / 10,
                         "lm_bits": 4 + 8 * frac, "target_bits": None})
    rows.append({"kind": "frontier", "keep_fraction": None, "kl": 0.7, "loss_delta": 0.07,
                 "lm_bits": 6.0, "target_bits": 6.0})
    return pd.DataFrame(rows)


def test_headline_is_the_smallest_keep_fraction_above_zero() -> None:
    point = evaluate_runs.headline_point(_results())
    assert set(point["keep_fraction"]) == {0.25}
    metrics = dict((k, v) for k, v, s in evaluate_runs.headline_metrics(point) if s is None)
    assert metrics == {"keep_fraction": 0.25, "kl_guided": 0.2, "kl_random": 0.5, "kl_reverse": 0.8,
                       "loss_delta_guided": 0.02, "loss_delta_random": 0.05,
                       "loss_delta_reverse": 0.08, "lm_bits_guided": 6.0, "lm_bits_random": 6.0,
                       "lm_bits_reverse": 6.0}
    line = evaluate_runs.describe("wint4_afp16/default/small", point, 10).splitlines()[0]
    assert "**0.2** guided vs 0.5 random vs 0.8 reverse: lower than both" in line


def test_curves_are_named_as_curves() -> None:
    keys = {k for k, _, s in evaluate_runs.metrics(_results())}
    assert {"eval_curve/guided/kl", "eval_curve/random/kl", "eval_curve/reverse/kl",
            "eval_curve/frontier/kl"} <= keys
    assert not any(k.startswith("eval/") for k in keys)
