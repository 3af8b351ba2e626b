"""``compare`` and ``evaluate`` through ``mlflow run``, on the shared sweep's runs."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from layer_sensitivity import recipes
from tests.helpers import SweepRun, artifact_text, mlflow_run, top_level_runs

pytestmark = pytest.mark.slow
PARENT_TAG = "mlflow.parentRunId"


def _nested(swept: SweepRun, parent_id: str, name_start: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(swept.uri)
    return [r for r in client.search_runs([swept.parent.info.experiment_id])
            if r.data.tags.get(PARENT_TAG) == parent_id and r.info.run_name.startswith(name_start)]


def test_compare_a_sweeps_children_nests_under_the_parent(swept: SweepRun, tmp_path: Path) -> None:
    parent = swept.parent.info.run_id
    top_level = {r.info.run_id for r in top_level_runs(swept.uri)}
    proc = mlflow_run("compare", {"parent_run_id": parent}, swept.store, swept.base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = _nested(swept, parent, "compare")
    assert run.info.run_name == "compare 2 runs" and run.info.status == "FINISHED"
    assert -1.0 <= run.data.metrics["spearman_min"] <= 1.0
    assert run.data.metrics["shared_groups"] == 17  # 4 layers x 4 kinds + lm_head
    md = artifact_text(swept.uri, run.info.run_id, "comparison.md", tmp_path)
    for child in swept.children:  # both runs are named in the report
        assert child in md
    assert "Spearman" in md and "Kendall" in md
    assert {r.info.run_id for r in top_level_runs(swept.uri)} == top_level  # nothing left on top


def test_compare_by_experiment_and_filter(swept: SweepRun) -> None:
    experiment = mlflow.MlflowClient(swept.uri).get_experiment(swept.parent.info.experiment_id)
    parent = swept.parent.info.run_id
    proc = mlflow_run("compare", {"experiment": experiment.name,
                                  "filter": f"tags.`{PARENT_TAG}` = '{parent}'"},
                      swept.store, swept.base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Rankings agree at Spearman" in proc.stdout and "comparison run " in proc.stdout


def test_compare_refuses_a_single_run_clearly(swept: SweepRun) -> None:
    one = swept.children["wfp8_afp8/default/small"].info.run_id
    proc = mlflow_run("compare", {"run_ids": one}, swept.store, swept.base)
    assert proc.returncode != 0
    assert "two or more" in proc.stderr and "Traceback" not in proc.stderr.split("error:")[-1]


def test_evaluate_logs_equal_bits_curves_with_steps_in_bits(swept: SweepRun,
                                                             tmp_path: Path) -> None:
    child = swept.children["wint8_aint8/default/small"].info.run_id
    proc = mlflow_run("evaluate", {"run_id": child, "keep": "0.25,0.5", "draws": "20",
                                   "ground_truth": "5"}, swept.store, swept.base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ground truth: 5 quantize-and-measure passes" in proc.stderr  # said before running
    (run,) = _nested(swept, child, "evaluate")
    assert run.info.status == "FINISHED"
    client = mlflow.MlflowClient(swept.uri)
    rid = run.info.run_id
    budgets_ = client.get_metric_history(rid, "eval/guided_lm_bits_by_bits")
    steps = sorted(m.step for m in budgets_)
    assert len(steps) == 2 and 800 < steps[0] < steps[1] < 1600  # LM bits x 100 (int8: 8 to 16)
    for key in ("eval/guided_kl_test_by_bits", "eval/random_mean_kl_test_by_bits",
                "eval/random_std_kl_test_by_bits", "eval/guided_beats_random_share_by_bits",
                "eval/reverse_kl_test_by_bits", "eval/recommended_kl_test_by_bits",
                "eval/rule_first_layers_kl_test_by_bits", "eval/rule_last_layers_kl_test_by_bits",
                "eval/rule_lm_head_kl_test_by_bits", "eval/rule_mlp_down_kl_test_by_bits"):
        assert sorted(m.step for m in client.get_metric_history(rid, key)) == steps, key
    for m in budgets_:  # each recipe at or just below its budget (step / 100)
        assert m.value <= m.step / 100 + 0.01
    assert run.info.run_name == "evaluate wint8_aint8/default/small"  # named after its target
    data = client.get_run(rid).data
    # the headline: single values at the middle budget, and the description says the same
    assert data.metrics["eval/budget_bits"] * 100 in steps
    assert f"guided **{data.metrics['eval/guided_kl_test']:.4g}**" in data.tags["mlflow.note.content"]
    assert data.params["evaluate.random_draws"] == "20"
    assert -1 <= data.metrics["eval/truth_spearman_kl_ranking"] <= 1
    assert data.metrics["eval/truth_groups_measured"] == 5
    rec = {m.step: m.value for m in client.get_metric_history(rid, "eval/recommended_kl_test_by_bits")}
    assert rec[steps[1]] <= rec[steps[0]]  # more bits never recommend a worse recipe (test KL)
    names = {a.path for a in client.list_artifacts(rid, "figures")}
    assert names == {"figures/quality_vs_bits.png"}
    chosen = {a.path for a in client.list_artifacts(rid, "recipes")}
    assert chosen == {"recipes/recommended_25pct.yaml", "recipes/recommended_50pct.yaml"}
    local = mlflow.artifacts.download_artifacts(run_id=rid, artifact_path="recipes",
                                                dst_path=str(tmp_path), tracking_uri=swept.uri)
    cfg = recipes.load_recipe(Path(local) / "recommended_50pct.yaml")  # ModelOpt-validated YAML
    assert cfg["quant_cfg"][0] == {"quantizer_name": "*", "enable": False}
