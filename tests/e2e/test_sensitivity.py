"""The sensitivity entry point end to end on the embedded model, with a real MLflow store:
``mlflow run -e sensitivity``, ``python -m layer_sensitivity``, and bad input refused cleanly."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest

from layer_sensitivity import profiles
from layer_sensitivity.schema import TrackingConfig
from tests.helpers import FAST, all_runs, finished_runs, mlflow_run, run_cli
from tests.helpers.manifests import typed

pytestmark = pytest.mark.slow

DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default", where `mlflow run` puts runs unless told
LM_GROUPS = 4 * 4 + 1  # per decoder layer: qkv, o_proj, gate/up, down_proj; plus lm_head
PHASES = ("calibration_data", "autoquant", "solve", "reports")
# Where a job writes and how it is tracked are not parameters of the analysis.
NOT_PARAMS = ("tracking.", "output_layout.dir", "output_layout.root", "runner.",
              "autoquant.score_cache_dir")


def _only_run(store: Path) -> mlflow.entities.Run:
    runs = all_runs(f"sqlite:///{store}")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def _tracked_run(store: Path) -> mlflow.entities.Run:
    """The one run in the store: the run ``mlflow run --experiment-name <project's>`` created
    (no pointer or empty run anywhere else)."""
    (run,) = all_runs(f"sqlite:///{store}")
    experiment = mlflow.MlflowClient(f"sqlite:///{store}").get_experiment(run.info.experiment_id)
    assert experiment.name == TrackingConfig().experiment
    return run


def _run_count(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(store) as db:
        return int(db.execute("select count(*) from runs").fetchone()[0])


def _artifacts(store: Path, run_id: str) -> set[str]:
    return {a.path for a in mlflow.MlflowClient(f"sqlite:///{store}").list_artifacts(run_id)}


def _manifest(run: mlflow.entities.Run, store: Path, tmp_path: Path) -> dict[str, Any]:
    (name,) = [n for n in _artifacts(store, run.info.run_id) if n.endswith("_quant_manifest.json")]
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    return json.loads(Path(client.download_artifacts(run.info.run_id, name, str(tmp_path))).read_text())


def _importances(manifest: dict[str, Any]) -> list[float]:
    return [s["importance"] for s in manifest["layer_sensitivity"].values()]


# --- `mlflow run -e sensitivity` -------------------------------------------------------------


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    base = tmp_path_factory.mktemp("mlflow-run-sensitivity")
    proc = mlflow_run("sensitivity", {"quant_pair": "fp8",
                                      "overrides": f"hydra.run.dir={base}/out {FAST}"},
                      base / "mlflow.db", base)
    return base, proc


def test_mlflow_run_sensitivity_logs_one_complete_run(
        tracked: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    base, proc = tracked
    store = base / "mlflow.db"
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _tracked_run(store)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "wfp8_afp8/default/small"
    p = run.data.params
    assert (p["quant_pair"], p["dataset_size"]) == ("fp8", "small")  # logged by `mlflow run` itself
    assert p["pair"] == p["resolved.quant_pair"] == "wfp8_afp8"  # the canonical name
    assert run.data.tags["quant_pair.alias"] == "fp8"
    # the run id `mlflow run` prints is the run that holds the work
    assert f"Run (ID '{run.info.run_id}') succeeded" in proc.stderr
    assert (p["quant_pair.weight"], p["quant_pair.activation"]) == ("fp8", "fp8")
    assert p["resolved.samples"] == "4" and float(p["resolved.effective_bits_requested"]) == 8.0
    for key in ("method", "effective_bits", "model", "autoquant.score_size", "autoquant.batch_size",
                "dataset.calib_seq_len", "model.path", "resolved.device", "quant_granularity.name",
                "dataset.name", "resolved.weight_quantizer", "resolved.input_quantizer"):
        assert key in p, key
    assert not [k for k in p if k.startswith(NOT_PARAMS)]
    assert "quant_pair.name" not in p  # the short name only, not the Hydra key twice
    m = run.data.metrics
    sens = {k: v for k, v in m.items() if k.startswith("sensitivity/")}
    assert len(sens) == LM_GROUPS and "sensitivity/lm_head" in sens
    assert not any("visual" in k for k in sens)
    for key in ("run/total_score", "run/effective_bits_achieved", "run/constraint_satisfied",
                "run/num_layer_groups", *(f"seconds/{phase}" for phase in PHASES)):
        assert key in m, key
    assert m["run/num_layer_groups"] == LM_GROUPS and m["run/constraint_satisfied"] == 1.0
    tags = run.data.tags
    for key in ("version.torch", "version.transformers", "version.modelopt", "device",
                "model.fingerprint", "score_cache"):
        assert tags.get(key), key
    assert "**wfp8_afp8**" in tags["mlflow.note.content"]
    assert run.inputs is not None
    assert run.inputs.dataset_inputs[0].dataset.name == "bundled-captions"
    names = _artifacts(store, run.info.run_id)
    assert {"layer-sensitivity-report.md", "layer-sensitivity-report.json", "composed_config.yaml",
            "metric_keys.csv", "sensitivity.log",
            "tiny-qwen3-vl_autoquant_wfp8_afp8_lm_small_quant_manifest.json"} <= names
    manifest = _manifest(run, store, tmp_path)
    scores = _importances(manifest)
    assert min(scores) > 0 and len(set(scores)) > LM_GROUPS // 2
    assert manifest["dataset"]["samples_used"] == 4
    assert manifest["quantization"]["pair"] == "wfp8_afp8"
    assert manifest["model"]["fingerprint"] == tags["model.fingerprint"]
    assert manifest["scheme"]["effective_bits_modelopt"] > 8.0  # vision weights count at 16 bits
    ranked = profiles.group_profiles(typed(manifest))
    for group in ranked:  # per-group metrics are shares in percent (never 0.00 in a bar chart)
        assert m[group.key] == pytest.approx(100 * group.share), group.key
    # the headline agrees with the description: top group, its share, the bits
    assert tags["top1_group"] == ranked[0].name and m["run/top1_share"] == pytest.approx(
        100 * ranked[0].share)
    assert f"**`{ranked[0].name}`** ({ranked[0].share:.1%}" in tags["mlflow.note.content"]
    assert "importance_sum" not in m
    out = base / "out"
    assert (out / ".hydra" / "config.yaml").is_file() and tags["output_dir"] == str(out)
    assert len(list(out.glob("*_quant_manifest.json"))) == 1


def test_bad_input_through_mlflow_run_fails_the_run(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    proc = mlflow_run("sensitivity", {"effective_bits": "3",
                                      "overrides": f"hydra.run.dir={tmp_path}/out"}, store, tmp_path)
    assert proc.returncode != 0
    assert "autoquant.effective_bits=3 is out of reach" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert finished_runs(store) == []
    # The run `mlflow run` made is named by the refusal, then deleted once `mlflow run` exited.
    deadline = time.monotonic() + 300  # mlflow run deletes it after exiting; slow when busy
    while all_runs(f"sqlite:///{store}") and time.monotonic() < deadline:
        time.sleep(1)
    assert all_runs(f"sqlite:///{store}") == []
    assert not (tmp_path / "out").exists()


# --- `python -m layer_sensitivity` -------------------------------------------------------------


def test_user_captions_large_size_and_kl_div_scores(tmp_path: Path) -> None:
    captions = tmp_path / "mine.txt"
    captions.write_text("".join(f"caption number {i} about a red bus near a park\n\n"
                                for i in range(600)))
    store = tmp_path / "mlflow.db"
    proc = run_cli(["dataset.size=large", f"dataset.captions_path={captions}",
                    "dataset.name=my-captions", "autoquant.method=kl_div", "autoquant.batch_size=64",
                    "autoquant.score_size=64", "autoquant.effective_bits=12",
                    f"hydra.run.dir={tmp_path}/out"], store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _only_run(store)
    assert run.info.status == "FINISHED"
    assert (run.data.params["method"], run.data.params["dataset_size"]) == ("kl_div", "large")
    assert run.inputs is not None
    assert run.inputs.dataset_inputs[0].dataset.name == "my-captions"
    manifest = _manifest(run, store, tmp_path)
    d = manifest["dataset"]
    assert (d["size"], d["samples_used"], d["samples_available"]) == ("large", 512, 600)
    assert d["batches"] == 8 and d["score_batches"] == 1 and d["name"] == "my-captions"
    assert manifest["scheme"]["method"] == "kl_div"
    scores = _importances(manifest)
    assert len(scores) == LM_GROUPS and len(set(scores)) > 1 and max(scores) > 0
    assert 8.0 <= manifest["autoquant"]["effective_bits_achieved"] <= 12.0 + 1e-6
    assert manifest["scheme"]["effective_bits_requested"] == 12.0


# --- Bad input: one paragraph, exit 2, no run, no output folder ------------------------------


def _refused(tmp_path: Path, *overrides: str) -> str:
    store = tmp_path / "mlflow.db"
    proc = run_cli([*overrides, f"hydra.run.dir={tmp_path}/out"], store)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert _run_count(store) == 0  # refused before any run started
    assert not (tmp_path / "out").exists()  # and no output folder left behind
    return proc.stderr


def _one_paragraph(stderr: str) -> str:
    """The ``error: ...`` paragraph, checked to be the only one."""
    (line,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
    return line


def test_missing_model_dir(tmp_path: Path) -> None:
    line = _one_paragraph(_refused(tmp_path, f"model.path={tmp_path}/nope"))
    assert f"Model directory '{tmp_path}/nope'" in line and "model.path" in line


def test_missing_captions_file(tmp_path: Path) -> None:
    line = _one_paragraph(_refused(tmp_path, f"dataset.captions_path={tmp_path}/none.txt"))
    assert f"'{tmp_path}/none.txt' does not exist" in line


def test_empty_captions_file(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    line = _one_paragraph(_refused(tmp_path, f"dataset.captions_path={tmp_path}/empty.txt"))
    assert "has no captions" in line


def test_target_below_format_names_the_minimum(tmp_path: Path) -> None:
    line = _one_paragraph(_refused(tmp_path, "quant_pair=int4", "autoquant.effective_bits=3.5"))
    assert "effective_bits=3.5" in line and "between 4 bits" in line


@pytest.mark.parametrize("override", ["autoquant.batch_size=0", "dataset.max_calib_samples=-1",
                                      "autoquant.score_size=0", "dataset.calib_seq_len=0"])
def test_non_positive_sizes(tmp_path: Path, override: str) -> None:
    assert override in _one_paragraph(_refused(tmp_path, override))


def test_unknown_pair_is_bad_input(tmp_path: Path) -> None:
    stderr = _refused(tmp_path, "quant_pair=w3a3")
    # refused before Hydra composes: one paragraph naming the value and listing the options
    assert "quant_pair=w3a3: no such option" in _one_paragraph(stderr) and "wfp8_afp8" in stderr
