"""Sweeps: nested MLflow runs through `mlflow run -e sweep`, failures per job, Hydra multirun."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from layer_sensitivity.cli import sweep
from layer_sensitivity.cli.config_store import CONF_DIR
from layer_sensitivity.errors import UserError

from .conftest import ROOT, finished_runs, run_cli

FAST = "dataset.max_calib_samples=4 autoquant.batch_size=2"
LM_GROUPS = 4 * 4 + 1  # per decoder layer: qkv, o_proj, gate/up, down_proj; plus lm_head


def tool_env(store: Path) -> dict[str, str]:
    """A temporary store, and this interpreter's bin first on PATH (`mlflow run` calls `python`)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "HYDRA_FULL_ERROR": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    return env


def mlflow_run(entry: str, params: dict[str, str], store: Path,
               cwd: Path) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", entry, "--env-manager", "local"]
    for k, v in params.items():
        args += ["-P", f"{k}={v}"]
    return subprocess.run(args, env=tool_env(store), capture_output=True, text=True, timeout=600,
                          cwd=cwd)


def all_runs(uri: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(uri)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def artifact_text(uri: str, run_id: str, path: str, dst: Path) -> str:
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                dst_path=str(dst), tracking_uri=uri)
    return Path(local).read_text()


@dataclass
class SweepRun:
    """The result of `mlflow run -e sweep -P quant_pairs=fp8,int8 -P dataset_sizes=small`."""

    base: Path
    store: Path
    uri: str
    proc: subprocess.CompletedProcess[str]
    parent: mlflow.entities.Run
    children: dict[str, mlflow.entities.Run]  # by run name


_SWEEP: dict[str, SweepRun] = {}


def sweep_once(base: Path) -> SweepRun:
    """Run the issue's sweep once per test session; report and publish tests reuse its children."""
    if "run" not in _SWEEP:
        base.mkdir(parents=True, exist_ok=True)
        store = base / "mlflow.db"
        proc = mlflow_run("sweep", {"quant_pairs": "fp8,int8", "dataset_sizes": "small",
                                    "overrides": f"{FAST} hydra.sweep.dir={base}/multi"},
                          store, base)
        assert proc.returncode == 0, proc.stderr[-4000:]
        uri = f"sqlite:///{store}"
        runs = all_runs(uri)
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1, [r.info.run_name for r in runs]
        children = {r.info.run_name: r for r in runs if r is not parents[0]}
        _SWEEP["run"] = SweepRun(base, store, uri, proc, parents[0], children)
    return _SWEEP["run"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> SweepRun:
    return sweep_once(tmp_path_factory.getbasetemp() / "shared-sweep")


def test_mlflow_run_sweep_nests_one_finished_child_per_job(swept: SweepRun, tmp_path: Path) -> None:
    parent, children = swept.parent, swept.children
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "sweep wfp8_afp8,wint8_aint8 x small (2 jobs)"
    assert parent.data.params["quant_pairs"] == "fp8,int8"  # logged by `mlflow run` itself
    assert parent.data.params["sweep.num_jobs"] == "2"
    assert sorted(children) == ["wfp8_afp8/default/small", "wint8_aint8/default/small"]
    out_dirs = set()
    for name, child in children.items():
        assert child.info.status == "FINISHED", name
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.experiment_id == parent.info.experiment_id
        sens = [k for k in child.data.metrics if k.startswith("sensitivity/")]
        assert len(sens) == LM_GROUPS and not any("visual" in k for k in sens)
        assert child.data.params["quant_pair.name"] == name.split("/")[0]
        assert child.data.tags["sweep.job"] in ("0", "1")
        out_dirs.add(child.data.params["resolved.output_dir"])
        assert Path(child.data.params["resolved.output_dir"]).is_relative_to(swept.base / "multi")
    assert len(out_dirs) == 2  # output directories never collide
    assert parent.data.metrics == {"jobs": 2.0, "jobs_finished": 2.0, "jobs_failed": 0.0}
    client = mlflow.MlflowClient(swept.uri)
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep.json", "sweep_summary.csv", "sweep_summary.json"} <= names
    rows = list(csv.DictReader(io.StringIO(
        artifact_text(swept.uri, parent.info.run_id, "sweep_summary.csv", tmp_path))))
    assert {r["run_id"] for r in rows} == {c.info.run_id for c in children.values()}
    assert {(r["pair"], r["granularity"], r["size"], r["status"]) for r in rows} == {
        ("wfp8_afp8", "default", "small", "FINISHED"), ("wint8_aint8", "default", "small",
                                                        "FINISHED")}
    for r in rows:
        child = client.get_run(r["run_id"])
        assert float(r["total_score"]) == pytest.approx(child.data.metrics["total_score"])
        assert float(r["effective_bits_achieved"]) == pytest.approx(
            child.data.metrics["effective_bits_achieved"])
    definition = json.loads(artifact_text(swept.uri, parent.info.run_id, "sweep.json", tmp_path))
    assert definition["quant_pairs"] == "fp8,int8" and len(definition["jobs"]) == 2
    assert (swept.base / "multi" / "sweep_summary.csv").is_file()


def test_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    # 6 bits is out of reach for FP8 (8 bits at least) but fine for INT4
    proc = run_cli(["--quant-pairs", "fp8,int4", "autoquant.effective_bits=6", *FAST.split(),
                    f"hydra.sweep.dir={tmp_path}/multi"], store, cwd=tmp_path,
                   module="layer_sensitivity.cli.sweep")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 of 2 sweep jobs failed" in proc.stderr and "Traceback" not in proc.stderr
    assert "wfp8_afp8/default/small" in proc.stderr
    uri = f"sqlite:///{store}"
    runs = {r.info.run_name: r for r in all_runs(uri)}
    (parent,) = [r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags]
    failed, finished = runs["wfp8_afp8/default/small"], runs["wint4_afp16/default/small"]
    assert parent.info.status == "FAILED"
    assert parent.data.metrics == {"jobs": 2.0, "jobs_finished": 1.0, "jobs_failed": 1.0}
    assert failed.info.status == "FAILED" and finished.info.status == "FINISHED"
    for child in (failed, finished):
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    error = artifact_text(uri, failed.info.run_id, "error.txt", tmp_path)
    assert "autoquant.effective_bits=6 is out of reach" in error
    assert failed.data.params["quant_pair.name"] == "wfp8_afp8"  # the failed job's config
    assert len([k for k in finished.data.metrics if k.startswith("sensitivity/")]) == LM_GROUPS
    rows = list(csv.DictReader(io.StringIO(
        artifact_text(uri, parent.info.run_id, "sweep_summary.csv", tmp_path))))
    assert [(r["pair"], r["status"]) for r in rows] == [("wfp8_afp8", "FAILED"),
                                                         ("wint4_afp16", "FINISHED")]
    assert "out of reach" in rows[0]["error"] and rows[0]["run_id"] == failed.info.run_id


def test_hydra_multirun_runs_four_jobs_without_code_changes(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    proc = run_cli(["-m", "quant_pair=fp8,int8", "dataset.size=small,medium",
                    "dataset.max_calib_samples=2", "autoquant.batch_size=2",
                    f"hydra.sweep.dir={tmp_path}/multi"], store, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(finished_runs(store)) == 4
    runs = all_runs(f"sqlite:///{store}")
    assert sorted(r.info.run_name for r in runs) == [
        "wfp8_afp8/default/medium", "wfp8_afp8/default/small",
        "wint8_aint8/default/medium", "wint8_aint8/default/small"]
    dirs = {r.data.params["resolved.output_dir"] for r in runs}
    assert len(dirs) == 4
    for d in dirs:
        assert Path(d).parent == tmp_path / "multi"
        assert len(list(Path(d).glob("*_quant_manifest.json"))) == 1


def test_bad_value_stops_the_sweep_before_anything_runs(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    with pytest.raises(SystemExit) as e:
        sweep.main(["--quant-pairs", "fp8,w3a3", f"hydra.sweep.dir={tmp_path}/multi",
                    f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "quant_pair/w3a3" in err and "nothing was logged" in err and "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "multi").exists()


def _jobs(*overrides: str, pairs: str | None = None, sizes: str | None = None) -> list[list[str]]:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        jobs, _ = sweep.job_overrides(pairs, sizes, list(overrides))
    return jobs


def test_sweep_overrides_expand_with_later_ones_winning() -> None:
    assert _jobs(pairs="fp8,int8", sizes="small") == [["quant_pair=fp8", "dataset.size=small"],
                                                      ["quant_pair=int8", "dataset.size=small"]]
    jobs = _jobs("autoquant.method=gradient,kl_div", "dataset.size=medium", pairs="fp8",
                 sizes="small,large")
    assert jobs == [["quant_pair=fp8", "dataset.size=medium", "autoquant.method=gradient"],
                    ["quant_pair=fp8", "dataset.size=medium", "autoquant.method=kl_div"]]
    # the preset replaces the entry point's defaults; explicit overrides after it still win
    assert len(_jobs("sweep=cpu_all", pairs="fp8,int8", sizes="small")) == 30
    jobs = _jobs("sweep=cpu_all", "dataset.size=small", pairs="fp8,int8", sizes="small")
    assert len(jobs) == 10 and all("dataset.size=small" in j for j in jobs)
    with pytest.raises(UserError, match="sweep/nope"):
        _jobs("sweep=nope")


def test_cpu_all_preset_is_every_cpu_capable_pair_by_every_size() -> None:
    pairs = set()
    for f in Path(CONF_DIR, "quant_pair").glob("*.yaml"):
        cfg = OmegaConf.load(f)
        if "name" in cfg and not cfg.get("requires_cuda", False):  # aliases only have defaults
            pairs.add(str(cfg.name))
    preset = OmegaConf.load(Path(CONF_DIR, "sweep", "cpu_all.yaml")).hydra.sweeper.params
    assert set(preset["quant_pair"].split(",")) == pairs
    assert preset["dataset.size"].split(",") == ["small", "medium", "large"]


def test_two_jobs_writing_to_one_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="would both write to"):
        sweep.define("fp8,int8", "small", [f"output_layout.dir={tmp_path}/same",
                                           f"hydra.sweep.dir={tmp_path}/multi"])
    assert not (tmp_path / "same").exists()


def test_extra_swept_keys_keep_child_names_distinct(tmp_path: Path) -> None:
    s = sweep.define("fp8", "small", ["autoquant.method=gradient,kl_div",
                                      f"hydra.sweep.dir={tmp_path}/multi"])
    assert [j.name for j in s.jobs] == ["wfp8_afp8/default/small autoquant.method=gradient",
                                        "wfp8_afp8/default/small autoquant.method=kl_div"]
    assert [j.out_dir.name for j in s.jobs if j.out_dir] == ["0_wfp8_afp8_default_small",
                                                             "1_wfp8_afp8_default_small"]
    assert s.dir == tmp_path / "multi"


def test_job_run_nests_children_and_records_their_errors(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from layer_sensitivity import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, run_name="parent").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", parent)  # as under `mlflow run -e sweep`
    previous = mlflow.get_tracking_uri()
    try:
        with tracking.recording_runs() as started, pytest.raises(ValueError, match="boom"):
            with tracking.job_run(uri, "ignored", "child/a", parent_run_id=parent):
                raise ValueError("boom")
        with mlflow.start_run(run_id=parent), tracking.recording_runs() as more:
            with tracking.job_run(uri, "ignored", "child/b") as run:  # nests under the active run
                tracking.log_params({"x": 1})
            assert mlflow.active_run().info.run_id == parent
        failed_id = tracking.record_failed_child(uri, parent, "child/c", {"y": 2},
                                                 "bad value\n")
    finally:
        mlflow.set_tracking_uri(previous)
    a, b, c = (client.get_run(i) for i in [*started, *more, failed_id])
    assert b.info.run_id == run.info.run_id
    assert [r.info.run_name for r in (a, b, c)] == ["child/a", "child/b", "child/c"]
    assert [r.info.status for r in (a, b, c)] == ["FAILED", "FINISHED", "FAILED"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in (a, b, c))
    assert all(r.info.experiment_id == exp for r in (a, b, c))
    assert "ValueError: boom" in artifact_text(uri, a.info.run_id, "error.txt", tmp_path)
    assert artifact_text(uri, c.info.run_id, "error.txt", tmp_path) == "bad value\n"
    assert c.data.params == {"y": "2"} and b.data.params == {"x": "1"}
    assert client.get_run(parent).data.params == {}  # never resumed by a child


def test_sweep_without_tracking_still_records_failures(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        sweep.main(["--quant-pairs", "fp8", "tracking=none", "autoquant.effective_bits=6",
                    f"hydra.sweep.dir={tmp_path}/multi"])
    assert e.value.code == 1
    assert "1 of 1 sweep jobs failed" in capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "multi" / "sweep_summary.csv").open()))
    assert [(r["pair"], r["status"], r["run_id"]) for r in rows] == [("wfp8_afp8", "FAILED", "")]
    assert "out of reach" in rows[0]["error"]
    assert json.loads((tmp_path / "multi" / "sweep.json").read_text())["jobs"][0]["num"] == 0
