"""Equal-bits evaluation without torch: the recommendation per budget, the summary against the
baselines, metrics and figures (the baselines themselves: test_baselines.py; ground truth:
test_ground_truth.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from layer_sensitivity import (
    baselines,
    equal_bits,
    figures,
    recipe_files,
)
from layer_sensitivity.errors import UserError
from layer_sensitivity.tasks import evaluate as evaluate_runs
from tests.helpers.manifests import typed
from tests.helpers.recipes import INT4, synthetic


def _results(rows: list[tuple[str, str, float, float, float, float]]) -> pd.DataFrame:
    """(name, kind, headroom, target_bits, lm_bits, kl) -> an evaluate-shaped table; test KL is
    validation KL + 1 so the two cannot be mixed up."""
    return pd.DataFrame([{"name": n, "kind": k, "headroom": h, "target_bits": t, "lm_bits": b,
                          "kl": kl, "kl_test": kl + 1, "loss_delta_test": kl / 10, "seed": None}
                         for n, k, h, t, b, kl in rows])


def test_recommended_is_the_best_fitting_candidate_on_validation_and_never_worse_for_more_bits(
        ) -> None:
    res = _results([
        ("g5", "keep_top", 0.1, 5.0, 4.9, 0.30), ("r5", "rule_first_layers", 0.1, 5.0, 5.0, 0.20),
        ("x5", "random", 0.1, 5.0, 5.0, 0.01),  # a baseline, never a candidate
        ("g7", "keep_top", 0.25, 7.0, 7.0, 0.25),  # worse than r5: r5 fits 7 bits too
        ("g10", "keep_top", 0.5, 10.0, 10.0, 0.05), ("f", "frontier", math.nan, 9.5, 9.6, 0.04),
        ("f12", "frontier", math.nan, 12.0, 11.9, 0.0),  # above every budget: never fits
    ])
    rec = equal_bits.recommend(res).set_index("target_bits")
    assert list(rec["name"]) == ["r5", "r5", "f"]
    assert list(rec["kl_test"]) == [1.20, 1.20, 1.04]
    assert list(rec["dominated"]) == [False, True, False]
    assert "r5 at 5.00 bits" in rec.loc[7.0, "note"]
    assert rec["kl_val"].is_monotonic_decreasing


def test_summary_counts_the_draws_guided_beats() -> None:
    rows = [("g", "keep_top", 0.1, 5.0, 5.0, 0.3)]
    rows += [(f"r{i}", "random", 0.1, 5.0, 4.95, 0.1 * i) for i in range(10)]  # test KL 1 .. 1.9
    s = equal_bits.summary(_results(rows)).set_index("curve")
    assert s.loc["random_mean", "guided_beats"] == pytest.approx(0.6)  # 1.3 < 1.4 .. 1.9
    assert s.loc["random_mean", "draws"] == 10
    assert s.loc["random_mean", "kl_test"] == pytest.approx(1.45)
    assert s.loc["recommended", "recipe"] == "g"
    wide = equal_bits.wide(equal_bits.summary(_results(rows)))
    assert wide.loc[5.0, "keep_top"] == pytest.approx(1.3)


def test_eval_metrics_are_series_over_bits_and_the_figure_draws(tmp_path: Path) -> None:
    rows = [("g5", "keep_top", 0.1, 5.2, 5.2, 0.3), ("g7", "keep_top", 0.25, 7.0, 6.9, 0.2),
            ("rv5", "reverse", 0.1, 5.2, 5.2, 0.5), ("rv7", "reverse", 0.25, 7.0, 7.0, 0.4),
            ("f", "rule_first_layers", 0.1, 5.2, 5.1, 0.35),
            ("f7", "rule_first_layers", 0.25, 7.0, 7.0, 0.25)]
    rows += [(f"r{i}_{h}", "random", h, t, t, 0.4 + i / 100) for i in range(3)
             for h, t in ((0.1, 5.2), (0.25, 7.0))]
    res = _results(rows)
    ev = equal_bits.EqualBits(res, equal_bits.summary(res), equal_bits.recommend(res), None, None)
    ms = evaluate_runs.metrics(ev)
    assert all(k.startswith("eval/") for k, _, _ in ms)
    series = {k for k, _, step in ms if step is not None}
    assert all(k.endswith("_by_bits") for k in series)
    assert {step for _, _, step in ms} == {520, 700}  # LM bit budget x 100
    guided = {step: v for k, v, step in ms if k == "eval/guided_kl_test_by_bits"}
    assert guided == {520: pytest.approx(1.3), 700: pytest.approx(1.2)}  # test KL, not validation
    beats = {step: v for k, v, step in ms if k == "eval/guided_beats_random_share_by_bits"}
    assert beats == {520: 1.0, 700: 1.0}
    path = figures.write_quality_vs_bits(ev.summary, tmp_path)
    assert path.is_file() and path.stat().st_size > 10_000


def test_a_mixed_run_logs_its_own_recipes_by_target_bits() -> None:
    res = _results([("mixed_6bits", "mixed", math.nan, 6.0, 5.9, 0.2),
                    ("mixed_7bits", "mixed", math.nan, 7.0, 6.9, 0.1)])
    ev = equal_bits.EqualBits(res, pd.DataFrame(), pd.DataFrame(), None, None)
    ms = evaluate_runs.metrics(ev)
    assert ms == [("eval/mixed_kl_test_by_bits", pytest.approx(1.2), 600),
                  ("eval/mixed_kl_test_by_bits", pytest.approx(1.1), 700)]


def test_recommended_recipes_are_the_chosen_candidates_renamed(tmp_path: Path) -> None:
    m = synthetic([INT4], seed=5)
    rs = baselines.equal_bits_recipes(typed(m), (0.1, 0.25), draws=2)
    kl = {r.name: (0.5 if r.kind == "random" else 0.3 if r.kind == "rule_lm_head" else 0.4)
          - r.info["headroom"] for r in rs}
    res = _results([(r.name, r.kind, r.info["headroom"], r.info["target_bits"], r.lm_bits,
                     kl[r.name]) for r in rs])
    chosen = equal_bits.recommended_recipes(equal_bits.recommend(res), rs)
    assert [r.name for r in chosen] == ["recommended_10pct", "recommended_25pct"]
    assert [r.info["recommended_as"] for r in chosen] == ["rule_lm_head_10pct", "rule_lm_head_25pct"]
    original = {r.name: r for r in rs}["rule_lm_head_25pct"]
    assert chosen[1].config == original.config and chosen[1].kept == original.kept
    path = recipe_files.write_recipe(chosen[1], tmp_path / "recommended_25pct.yaml", typed(m))
    back = recipe_files.read_recipe(path, typed(m))  # a ModelOpt PTQ recipe, read back with the manifest
    assert back.name == "recommended_25pct" and back.kind == "recommended"
    assert back.quantized == chosen[1].quantized
    assert "recommended: rule_lm_head_25pct" in back.info["description"]
    assert "test KL 1.05" in back.info["description"]


def test_evaluate_arguments_name_the_bad_value() -> None:
    from layer_sensitivity.cli import evaluate as cli

    assert cli.parse_fractions("0.1,0.25") == [0.1, 0.25]
    assert cli.parse_truth("all") == (True, None) and cli.parse_truth("none") == (False, None)
    assert cli.parse_truth("12") == (True, 12)
    for bad in ("0,0.25", "25", "a"):
        with pytest.raises(UserError, match="headroom"):
            cli.parse_fractions(bad)
    for bad in ("2", "some"):
        with pytest.raises(UserError, match="ground-truth"):
            cli.parse_truth(bad)
