"""evaluate's headline: guided vs baselines at the middle budget, as single values and one line
(a table shows a series' last point only)."""

from __future__ import annotations

import pandas as pd

from layer_sensitivity.equal_bits import EqualBits
from layer_sensitivity.tasks import evaluate as evaluate_runs


def _summary() -> pd.DataFrame:
    rows = []
    for bits, (g, r, b, rec) in {5.2: (0.5, 0.7, 0.9, 0.5), 6.0: (0.2, 0.5, 0.8, 0.19),
                                 10.0: (0.1, 0.3, 0.6, 0.1)}.items():
        rows += [{"target_bits": bits, "curve": "keep_top", "kl_test": g},
                 {"target_bits": bits, "curve": "random_mean", "kl_test": r, "guided_beats": 0.95},
                 {"target_bits": bits, "curve": "reverse", "kl_test": b},
                 {"target_bits": bits, "curve": "recommended", "kl_test": rec}]
    return pd.DataFrame(rows)


def test_headline_is_single_values_at_the_middle_budget_and_one_line() -> None:
    ev = EqualBits(pd.DataFrame({"kl": [0.1]}), _summary(), pd.DataFrame(), None, None)
    metrics, line = evaluate_runs.headline(ev)
    assert all(step is None for _, _, step in metrics)
    assert dict((k, v) for k, v, _ in metrics) == {
        "eval/budget_bits": 6.0, "eval/recommended_kl_test": 0.19, "eval/guided_kl_test": 0.2,
        "eval/random_mean_kl_test": 0.5, "eval/reverse_kl_test": 0.8}
    assert "At **6.00 LM bits**" in line and "guided **0.2** vs random 0.5" in line
    assert "lower than both" in line and "beats 95% of the draws" in line
    assert "\n" not in line
