"""Ground truth for a ranking: one recipe per group quantized alone, the measured table, and the
correlations of the run's ranking and of each data-free rule with it."""

from __future__ import annotations

import pandas as pd
import pytest

from layer_sensitivity import baselines, budgets, ground_truth, recipes
from layer_sensitivity.errors import UserError
from tests.helpers.manifests import typed
from tests.helpers.recipes import INT4, synthetic


def test_ground_truth_correlations_and_subsets() -> None:
    m = synthetic([INT4], seed=4)
    gs = recipes.manifest_groups(typed(m))
    fmt = budgets.only_format(gs)
    truth = pd.DataFrame({"group": [g.handle for g in gs],
                          "kl": [budgets.score(g, fmt) ** 2 for g in gs],  # same order as scores
                          "loss_delta": [-budgets.score(g, fmt) for g in gs]})
    c = ground_truth.correlations(typed(m), truth).set_index("ranking")
    assert c.loc["ranking", "spearman_kl"] == pytest.approx(1.0)
    assert c.loc["ranking", "kendall_kl"] == pytest.approx(1.0)
    assert c.loc["ranking", "spearman_loss"] == pytest.approx(-1.0)
    assert set(c.index) == {"ranking", *baselines.RULES}
    assert ground_truth.best_rule(c.reset_index())["ranking"] in baselines.RULES
    sub = ground_truth.chosen_groups(gs, 5)
    assert len(sub) == 5 and sub[0] == gs[0] and sub[-1] == gs[-1]
    alone = ground_truth.alone_recipes(typed(m), 5)
    assert [list(r.quantized) for r in alone] == [[g.handle] for g in sub]
    assert "5 quantize-and-measure passes" in ground_truth.cost_statement(5, 2.0)
    with pytest.raises(UserError, match="at least 3"):
        ground_truth.chosen_groups(gs, 2)


def test_subsets_of_all_or_more_groups_are_all_groups() -> None:
    gs = recipes.manifest_groups(typed(synthetic([INT4])))
    assert ground_truth.chosen_groups(gs, None) == gs
    assert ground_truth.chosen_groups(gs, len(gs) + 5) == gs
    alone = ground_truth.alone_recipes(typed(synthetic([INT4])))
    assert len(alone) == len(gs) and {r.kind for r in alone} == {ground_truth.ALONE}
    assert all(r.name == f"alone_{r.info['group'].removesuffix('.quant_recipe')}" for r in alone)
    assert "s each" not in ground_truth.cost_statement(3, None)  # no timing: no estimate


def test_truth_table_reads_the_alone_rows_of_the_chosen_split() -> None:
    results = pd.DataFrame({"kind": ["alone", "keep_top", "alone"], "group": ["a", None, "b"],
                            "kl_test": [0.1, 9.0, 0.3], "loss_delta_test": [1.0, 9.0, 3.0],
                            "kl_val": [0.2, 9.0, 0.4], "loss_delta_val": [2.0, 9.0, 4.0]})
    test = ground_truth.truth_table(results)
    assert test.to_dict("list") == {"group": ["a", "b"], "kl": [0.1, 0.3], "loss_delta": [1.0, 3.0]}
    assert list(ground_truth.truth_table(results, "_val")["kl"]) == [0.2, 0.4]


def test_fewer_than_three_measured_groups_correlate_as_nan() -> None:
    m = synthetic([INT4])
    two = [g.handle for g in recipes.manifest_groups(typed(m))[:2]]
    c = ground_truth.correlations(typed(m), pd.DataFrame({"group": two, "kl": [1.0, 2.0],
                                                   "loss_delta": [1.0, 2.0]}))
    assert set(c["groups"]) == {2} and c[["spearman_kl", "kendall_loss"]].isna().all().all()
