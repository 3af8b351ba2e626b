"""Sweeps are Hydra multiruns: one parent run, a nested child per job, a summary, any failure kept.

Three real sweeps on the embedded model, each read by several tests:
- a plain ``python -m layer_sensitivity -m`` multirun with one job that fails (the issue's
  done-when; the failing pair comes first, so a failure must not stop the jobs after it);
- the ``mlflow run -e sweep`` one (the session's shared ``swept`` fixture);
- sweeps refused or failing before any model loads (``tracking=none``, an unknown pair).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest

from layer_sensitivity import profiles
from layer_sensitivity.sweep import DEFINITION, STATUS_FILE, SUMMARY
from tests.helpers import FAST, SweepRun, all_runs, artifact_text, finished_runs, run_cli
from tests.helpers.manifests import typed

pytestmark = pytest.mark.slow

LM_GROUPS = 4 * 4 + 1  # per decoder layer: qkv, o_proj, gate/up, down_proj; plus lm_head
COUNTS = ("jobs", "jobs_finished", "jobs_failed", "jobs_killed", "jobs_not_started")
PHASES = ("calibration_data", "autoquant", "solve", "reports")
PARENT_TAG = "mlflow.parentRunId"
DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default", where `mlflow run` puts runs unless told
OUT_OF_REACH = "autoquant.effective_bits=6 is out of reach for quant_pair=wfp8_afp8"
# Run names: <pair>/<granularity>/<size>, plus the bit target when one is set.
FP8_JOB, INT4_JOB = "wfp8_afp8/default/small @6bits", "wint4_afp16/default/small @6bits"


def _counts(run: mlflow.entities.Run) -> dict[str, float | None]:
    return {k: run.data.metrics.get(k) for k in COUNTS}


def _summary_rows(uri: str, run_id: str, dst: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(artifact_text(uri, run_id, f"{SUMMARY}.csv", dst))))


def _artifacts(uri: str, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id, path)}


def _manifest(uri: str, run: mlflow.entities.Run, dst: Path) -> dict[str, Any]:
    (name,) = [n for n in _artifacts(uri, run.info.run_id) if n.endswith("_quant_manifest.json")]
    return json.loads(artifact_text(uri, run.info.run_id, name, dst))


def _job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(d for d in sweep_dir.iterdir() if d.is_dir() and (d / ".hydra").is_dir())


def _assert_all_metrics(uri: str, child: mlflow.entities.Run, dst: Path) -> dict[str, Any]:
    """The child holds every metric its manifest maps to, with the manifest's values."""
    manifest = _manifest(uri, child, dst)
    logged = child.data.metrics
    expected = profiles.run_metrics(typed(manifest))
    assert expected and {k for k, _, _ in expected} <= set(logged)
    for key, value, step in expected:
        if step is None:  # a series shows its last step here; single values must match
            assert logged[key] == pytest.approx(value), key
    sens = [k for k in logged if k.startswith("sensitivity/")]
    assert len(sens) == LM_GROUPS and not any("visual" in k for k in sens)
    assert {f"seconds/{p}" for p in PHASES} <= set(logged)
    return manifest


# --- A plain multirun with one failing job ----------------------------------------------------


@dataclass
class FailingSweep:
    sweep_dir: Path
    uri: str
    proc: subprocess.CompletedProcess[str]
    parent: mlflow.entities.Run
    children: dict[str, mlflow.entities.Run]  # by run name


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> FailingSweep:
    """``-m quant_pair=fp8,int4 autoquant.effective_bits=6``: 6 bits is out of reach for FP8
    (8 at least) and fine for INT4."""
    base = tmp_path_factory.mktemp("failing-sweep")
    store = base / "mlflow.db"
    proc = run_cli(["-m", "quant_pair=fp8,int4", "autoquant.effective_bits=6", *FAST.split(),
                    f"hydra.sweep.dir={base}/multi"], store, cwd=base)
    uri = f"sqlite:///{store}"
    runs = all_runs(uri)
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    assert len(parents) == 1, ([r.info.run_name for r in runs], proc.stderr[-3000:])
    children = {r.info.run_name: r for r in runs if r is not parents[0]}
    return FailingSweep(base / "multi", uri, proc, parents[0], children)


def test_a_failing_job_fails_the_command_after_the_other_jobs_ran(failing: FailingSweep) -> None:
    proc = failing.proc
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"{FP8_JOB}: {OUT_OF_REACH}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "1 finished, 1 failed" in proc.stdout + proc.stderr
    # progress after each job; no time estimate from a failed job (only finished ones count)
    out = proc.stdout + proc.stderr
    assert "1 of 2 jobs done" in out and "2 of 2 jobs done" in out
    assert "estimate" not in out
    assert sorted(failing.children) == [FP8_JOB, INT4_JOB]


def test_the_parent_holds_the_counts_and_the_summary(failing: FailingSweep, tmp_path: Path) -> None:
    parent, uri = failing.parent, failing.uri
    assert parent.info.status == "FAILED"
    assert _counts(parent) == {"jobs": 2.0, "jobs_finished": 1.0, "jobs_failed": 1.0,
                               "jobs_killed": 0.0, "jobs_not_started": 0.0}
    assert parent.data.params["sweep.num_jobs"] == "2"
    assert {DEFINITION, f"{SUMMARY}.csv", f"{SUMMARY}.json", "error.txt"} <= _artifacts(
        uri, parent.info.run_id)
    rows = {r["name"]: r for r in _summary_rows(uri, parent.info.run_id, tmp_path)}
    assert {n: r["status"] for n, r in rows.items()} == {FP8_JOB: "FAILED", INT4_JOB: "FINISHED"}
    assert {n: r["run_id"] for n, r in rows.items()} == {
        n: c.info.run_id for n, c in failing.children.items()}
    assert OUT_OF_REACH in rows[FP8_JOB]["error"] and not rows[INT4_JOB]["error"]
    int4 = failing.children[INT4_JOB]
    assert float(rows[INT4_JOB]["total_score"]) == pytest.approx(int4.data.metrics["run/total_score"])
    assert float(rows[INT4_JOB]["effective_bits_achieved"]) == pytest.approx(
        int4.data.metrics["run/effective_bits_achieved"])
    on_disk = list(csv.DictReader((failing.sweep_dir / f"{SUMMARY}.csv").open()))
    assert [r["run_id"] for r in on_disk] == [rows[FP8_JOB]["run_id"], rows[INT4_JOB]["run_id"]]


def test_the_parent_says_how_many_jobs_failed(failing: FailingSweep, tmp_path: Path) -> None:
    error = artifact_text(failing.uri, failing.parent.info.run_id, "error.txt", tmp_path)
    assert "1 of 2 jobs failed" in error and "Traceback" not in error


def test_the_finished_child_has_all_its_metrics(failing: FailingSweep, tmp_path: Path) -> None:
    child = failing.children[INT4_JOB]
    assert child.info.status == "FINISHED"
    assert child.data.tags[PARENT_TAG] == failing.parent.info.run_id
    assert child.info.experiment_id == failing.parent.info.experiment_id
    assert child.data.tags["sweep.job"] == "1"
    manifest = _assert_all_metrics(failing.uri, child, tmp_path)
    assert manifest["quantization"]["pair"] == "wint4_afp16"
    assert manifest["scheme"]["effective_bits_requested"] == 6.0
    assert child.data.metrics["run/effective_bits_achieved"] <= 6.0 + 1e-6


def test_the_failed_child_keeps_its_error(failing: FailingSweep, tmp_path: Path) -> None:
    child = failing.children[FP8_JOB]
    assert child.info.status == "FAILED"
    assert child.data.tags[PARENT_TAG] == failing.parent.info.run_id
    assert child.info.experiment_id == failing.parent.info.experiment_id
    assert (child.data.tags["quant_pair"], child.data.tags["sweep.job"]) == ("wfp8_afp8", "0")
    error = artifact_text(failing.uri, child.info.run_id, "error.txt", tmp_path)
    assert OUT_OF_REACH in error and "Traceback" not in error  # the user error's own paragraph
    assert not any(k.startswith("sensitivity/") for k in child.data.metrics)


def test_the_failed_child_records_the_config_that_failed(failing: FailingSweep) -> None:
    params = failing.children[FP8_JOB].data.params
    assert (params.get("pair"), params.get("effective_bits")) == ("wfp8_afp8", "6")
    assert params.get("quant_pair") == "fp8"  # as typed
    assert failing.children[FP8_JOB].data.tags["quant_pair.alias"] == "fp8"


def test_each_job_keeps_its_hydra_folder(failing: FailingSweep) -> None:
    dirs = _job_dirs(failing.sweep_dir)
    assert [d.name for d in dirs] == ["0_wfp8_afp8_default_small", "1_wint4_afp16_default_small"]
    for d, pair in zip(dirs, ("fp8", "int4"), strict=True):
        assert {f.name for f in (d / ".hydra").iterdir()} >= {"config.yaml", "hydra.yaml",
                                                               "overrides.yaml"}
        assert f"quant_pair={pair}" in (d / ".hydra" / "overrides.yaml").read_text()
        status = json.loads((d / STATUS_FILE).read_text())
        assert status["run_id"] == failing.children[status["name"]].info.run_id
        assert status["seconds"] > 0  # the job's own duration: the time estimate averages them
        assert (d / "sensitivity.log").is_file()  # Hydra's job log, also logged as an artifact
    failed_dir, finished_dir = dirs
    assert not list(failed_dir.glob("*_quant_manifest.json"))
    assert len(list(finished_dir.glob("*_quant_manifest.json"))) == 1
    assert failing.children[INT4_JOB].data.tags["output_dir"] == str(finished_dir)
    assert (failing.sweep_dir / "multirun.yaml").is_file()


# --- `mlflow run -e sweep` ---------------------------------------------------------------------


def test_mlflow_run_sweep_nests_one_finished_child_per_job(swept: SweepRun, tmp_path: Path) -> None:
    parent, uri = swept.parent, swept.uri
    runs = all_runs(uri)
    children = {r.info.run_name: r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id
                and "sweep.job" in r.data.tags}  # other tests nest report/publish records here
    # `mlflow run --experiment-name <project's>` (as the README runs it): no run in Default.
    assert not [r for r in runs if r.info.experiment_id == DEFAULT_EXPERIMENT_ID]
    assert parent.info.status == "FINISHED"
    assert parent.info.experiment_id != DEFAULT_EXPERIMENT_ID
    assert parent.info.run_name.startswith("sweep ") and parent.info.run_name.endswith("(2 jobs)")
    assert parent.data.params["quant_pairs"] == "fp8,int8"  # logged by `mlflow run` itself
    assert parent.data.params["sweep.num_jobs"] == "2"
    assert sorted(children) == ["wfp8_afp8/default/small", "wint8_aint8/default/small"]
    out_dirs = set()
    for name, child in children.items():
        assert child.info.status == "FINISHED", name
        assert child.data.tags[PARENT_TAG] == parent.info.run_id
        assert child.info.experiment_id == parent.info.experiment_id
        assert child.data.params["resolved.quant_pair"] == name.split("/")[0]
        assert child.data.tags["sweep.job"] in ("0", "1")
        sens = [k for k in child.data.metrics if k.startswith("sensitivity/")]
        assert len(sens) == LM_GROUPS and not any("visual" in k for k in sens)
        out_dir = Path(child.data.tags["output_dir"])
        assert out_dir.parent == swept.base / "multi" and (out_dir / ".hydra").is_dir()
        out_dirs.add(out_dir)
    assert len(out_dirs) == 2  # output directories never collide
    assert _counts(parent) == {"jobs": 2.0, "jobs_finished": 2.0, "jobs_failed": 0.0,
                               "jobs_killed": 0.0, "jobs_not_started": 0.0}
    names = _artifacts(uri, parent.info.run_id)
    assert {DEFINITION, f"{SUMMARY}.csv", f"{SUMMARY}.json", "comparison"} <= names
    assert "error.txt" not in names
    rows = _summary_rows(uri, parent.info.run_id, tmp_path)
    assert {r["run_id"] for r in rows} == {c.info.run_id for c in children.values()}
    assert {(r["pair"], r["granularity"], r["size"], r["status"]) for r in rows} == {
        ("wfp8_afp8", "default", "small", "FINISHED"), ("wint8_aint8", "default", "small",
                                                        "FINISHED")}
    for r in rows:
        child = children[r["name"]]
        assert float(r["total_score"]) == pytest.approx(child.data.metrics["run/total_score"])
    definition = json.loads(artifact_text(uri, parent.info.run_id, DEFINITION, tmp_path))
    assert "quant_pair=fp8,int8" in definition["overrides"] and len(definition["jobs"]) == 2
    assert (swept.base / "multi" / f"{SUMMARY}.csv").is_file()


# --- Sweeps that stop before any model loads ---------------------------------------------------


def test_sweep_without_tracking_still_records_every_failure(tmp_path: Path) -> None:
    """The thin ``sweep`` wrapper builds pairs x sizes; with ``tracking=none`` the summary on disk
    is the record."""
    store = tmp_path / "mlflow.db"
    proc = run_cli(["--quant-pairs", "fp8", "--dataset-sizes", "small,medium", "tracking=none",
                    "autoquant.effective_bits=6", f"hydra.sweep.dir={tmp_path}/multi"], store,
                   cwd=tmp_path, module="layer_sensitivity.cli.sweep")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and OUT_OF_REACH in proc.stderr
    assert not store.exists()
    rows = list(csv.DictReader((tmp_path / "multi" / f"{SUMMARY}.csv").open()))
    assert [(r["name"], r["status"], r["run_id"]) for r in rows] == [
        ("wfp8_afp8/default/small @6bits", "FAILED", ""),
        ("wfp8_afp8/default/medium @6bits", "FAILED", "")]
    assert all(OUT_OF_REACH in r["error"] for r in rows)
    assert len(json.loads((tmp_path / "multi" / DEFINITION).read_text())["jobs"]) == 2
    assert len(_job_dirs(tmp_path / "multi")) == 2


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A sweep naming a pair that does not exist, through the ``sweep`` wrapper."""
    base = tmp_path_factory.mktemp("refused-sweep")
    proc = run_cli(["--quant-pairs", "fp8,w3a3", f"hydra.sweep.dir={base}/multi"],
                   base / "mlflow.db", cwd=base, module="layer_sensitivity.cli.sweep")
    return base, proc


def test_an_unknown_pair_stops_the_sweep_before_any_job(
        refused: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    base, proc = refused
    assert proc.returncode != 0
    assert "quant_pair=w3a3: no such option" in proc.stderr and "wfp8_afp8" in proc.stderr  # listed
    assert "Traceback" not in proc.stderr
    assert finished_runs(base / "mlflow.db") == []
    multi = base / "multi"
    assert not multi.exists() or not _job_dirs(multi)
    if (multi / f"{SUMMARY}.csv").exists():
        rows = list(csv.DictReader((multi / f"{SUMMARY}.csv").open()))
        assert {r["status"] for r in rows} == {"NOT_STARTED"}


def test_an_unknown_pair_in_a_sweep_is_bad_input(
        refused: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    assert refused[1].returncode == 2
