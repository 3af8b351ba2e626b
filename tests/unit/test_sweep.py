"""Sweep bookkeeping (``sweep.py``), the multirun plan the callback expects, and the thin
``sweep`` wrapper's command line. No job runs here: tests/e2e/test_sweep.py runs real sweeps."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from layer_sensitivity import paths, sweep
from layer_sensitivity.cli.sweep import multirun_argv
from layer_sensitivity.cli.sweep_callback import compose_jobs, planned_jobs, sweep_name
from layer_sensitivity.manifest import Manifest
from layer_sensitivity.schema import DatasetSize
from layer_sensitivity.tracking import NoopTracker
from tests.helpers.manifests import typed

BASE = "wfp8_afp8/default/small"


def _manifest(pair: str = "wfp8_afp8", score: float = 0.5, bits: float = 7.5) -> Manifest:
    return typed({"schema_version": 1, "scheme": {"name": "s"}, "layer_sensitivity": {},
                  "quantization": {"pair": pair, "granularity": "default"},
                  "dataset": {"size": "small"},
                  "autoquant": {"total_score": score, "effective_bits_achieved": bits}})


def _status(directory: Path, num: int, overrides: list[str], status: str = "FINISHED",
            **kwargs: Any) -> Path:
    out = directory / f"{num}_job"
    sweep.write_status(out, num=num, name=f"job {num}", overrides=overrides, status=status,
                       run_id=kwargs.pop("run_id", f"run{num}"), **kwargs)
    return out


# --- Names and keys ------------------------------------------------------------------------


def test_job_name_adds_only_swept_keys_the_name_does_not_show() -> None:
    swept = {"quant_pair", "dataset.size", "autoquant.score_size"}
    task = ["quant_pair=fp8", "dataset.size=small", "autoquant.score_size=8",
            "autoquant.batch_size=2"]
    assert sweep.job_name(BASE, task, swept) == f"{BASE} autoquant.score_size=8"
    assert sweep.job_name(BASE, task, {"quant_pair"}) == BASE  # nothing else varies
    shown = [f"{key}=x" for key in sweep.NAME_KEYS]  # the base name already shows these
    assert sweep.job_name(BASE, shown, set(sweep.NAME_KEYS)) == BASE
    assert sweep.job_name(BASE, ["+extra=1", "~gone"], {"extra", "gone"}) == f"{BASE} +extra=1 ~gone"


def test_overrides_key_does_not_depend_on_order() -> None:
    assert sweep.overrides_key(["b=2", "a=1"]) == sweep.overrides_key(["a=1", "b=2"]) == "a=1 b=2"


def test_sweep_name_leaves_out_hydra_settings() -> None:
    args = ["quant_pair=fp8,int8", "hydra.sweep.dir=/somewhere", "dataset.size=small"]
    assert sweep_name(args, 2) == "sweep quant_pair=fp8,int8 dataset.size=small (2 jobs)"
    assert sweep_name(args, 0).endswith("(? jobs)")


# --- Status files, summary, counts ---------------------------------------------------------


def test_a_status_file_round_trips_with_what_the_summary_needs(tmp_path: Path) -> None:
    out = _status(tmp_path, 0, ["quant_pair=fp8", "dataset.size=small"], manifest=_manifest(),
                  seconds=12.5)
    (row,) = sweep.read_statuses(tmp_path)
    planned = _status(tmp_path / "planned", 1, [], status="FAILED",
                      planned={"pair": "wfp8_afp8", "granularity": "default", "size": "small"})
    (before,) = sweep.read_statuses(planned.parent)  # failed before its manifest was written
    assert (before["pair"], before["size"], before["total_score"]) == ("wfp8_afp8", "small", None)
    assert row == {"job": 0, "name": "job 0", "overrides": "dataset.size=small quant_pair=fp8",
                   "status": "FINISHED", "run_id": "run0", "pair": "wfp8_afp8",
                   "granularity": "default", "size": "small", "total_score": 0.5,
                   "effective_bits_achieved": 7.5, "output_dir": str(out), "seconds": 12.5,
                   "error": None}
    assert [p.name for p in out.iterdir()] == [sweep.STATUS_FILE]  # no temporary file left


def test_a_failed_status_keeps_the_last_line_of_its_error(tmp_path: Path) -> None:
    _status(tmp_path, 0, ["quant_pair=fp8"], status="FAILED", run_id=None,
            error="Traceback (most recent call last):\n  ...\nValueError: boom\n\n")
    (row,) = sweep.read_statuses(tmp_path)
    assert (row["status"], row["run_id"], row["error"], row["pair"]) == ("FAILED", None,
                                                                        "ValueError: boom", None)


def test_statuses_are_read_in_job_order_and_bad_files_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for num in (10, 2, 0):
        _status(tmp_path, num, [f"n={num}"])
    bad = tmp_path / "3_job"
    bad.mkdir()
    (bad / sweep.STATUS_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="layer_sensitivity.sweep"):
        rows = sweep.read_statuses(tmp_path)
    assert [r["job"] for r in rows] == [0, 2, 10]
    assert "unreadable job status" in caplog.text and str(bad) in caplog.text


def test_summary_lists_planned_jobs_that_never_started() -> None:
    statuses = [{"job": 0, "name": BASE, "overrides": "quant_pair=fp8", "status": "FAILED",
                 "run_id": "r0", "error": "bad"}]
    table = sweep.summary(statuses, ["quant_pair=fp8", "quant_pair=int8", "quant_pair=int4"])
    assert list(table.columns) == sweep.COLUMNS
    assert table[["name", "status"]].values.tolist() == [
        [BASE, "FAILED"], ["quant_pair=int8", "NOT_STARTED"], ["quant_pair=int4", "NOT_STARTED"]]
    assert table["overrides"].tolist() == ["quant_pair=fp8", "quant_pair=int8", "quant_pair=int4"]
    # an unknown plan (glob sweeps) lists what ran, and only that
    assert sweep.summary(statuses, []).shape[0] == 1


def test_counts_each_status() -> None:
    table = pd.DataFrame({"status": ["FINISHED", "FAILED", "FINISHED", "KILLED", "NOT_STARTED"]})
    assert sweep.counts(table) == {"jobs": 5.0, "jobs_finished": 2.0, "jobs_failed": 1.0,
                                   "jobs_killed": 1.0, "jobs_not_started": 1.0}
    assert sweep.counts(sweep.summary([], []))["jobs"] == 0.0


def test_progress_counts_status_files_whatever_the_launcher(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sweep.TOTAL_ENV, "6")
    monkeypatch.delenv(sweep.WORKERS_ENV, raising=False)
    assert sweep.progress(tmp_path) == "0 of 6 jobs done"  # no estimate before a job finished
    _status(tmp_path, 0, ["n=0"], status="FAILED", seconds=1.0)  # a quick failure says nothing
    assert sweep.progress(tmp_path) == "1 of 6 jobs done"
    _status(tmp_path, 1, ["n=1"], seconds=60.0)
    _status(tmp_path, 2, ["n=2"], seconds=80.0)
    # mean 70 s x 3 jobs left, one at a time (the basic launcher)
    assert sweep.progress(tmp_path) == (
        "3 of 6 jobs done; estimate: about 3.5 min left (70 s per job, 1 at a time)")
    monkeypatch.setenv(sweep.WORKERS_ENV, "2")  # 3 left on 2 workers: two rounds
    assert sweep.progress(tmp_path) == (
        "3 of 6 jobs done; estimate: about 2.3 min left (70 s per job, 2 at a time)")
    monkeypatch.setenv(sweep.WORKERS_ENV, "8")  # more workers than jobs left: one round
    assert sweep.progress(tmp_path) == (
        "3 of 6 jobs done; estimate: about 70 s left (70 s per job, 3 at a time)")
    monkeypatch.setenv(sweep.TOTAL_ENV, "0")  # plan unknown
    assert sweep.progress(tmp_path) == "3 jobs done"


def test_status_files_without_a_duration_give_no_estimate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sweep.TOTAL_ENV, "4")
    _status(tmp_path, 0, ["n=0"])  # written by an older version: no seconds
    assert sweep.progress(tmp_path) == "1 of 4 jobs done"


@pytest.mark.parametrize(("launcher", "workers"), [
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 1),
    ({"n_jobs": 4}, 4), ({"n_jobs": -1}, 16), ({"n_jobs": -2}, 15), ({"n_jobs": "3"}, 3),
    ({"array_parallelism": 8}, 8), ({}, 1)])
def test_launcher_workers(launcher: dict[str, Any], workers: int) -> None:
    assert sweep.launcher_workers(launcher, cpu_count=16) == workers


def test_launcher_workers_never_fails_the_sweep() -> None:
    from omegaconf import OmegaConf

    unresolvable = OmegaConf.create({"n_jobs": "${no_such_resolver_here:}"})
    assert sweep.launcher_workers(unresolvable) == 1  # the estimate assumes one at a time


# --- The parent's life, without a tracking store ------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Sweep.start exports is removed again after the test."""
    for name in (sweep.PARENT_ENV, sweep.SWEPT_ENV, sweep.TOTAL_ENV, sweep.WORKERS_ENV):
        monkeypatch.delenv(name, raising=False)


def test_a_sweep_writes_its_summary_once_and_counts_failures(tmp_path: Path, clean_env: None) -> None:
    planned = ["quant_pair=fp8", "quant_pair=int8"]
    s = sweep.Sweep(NoopTracker(), tmp_path, "sweep test (2 jobs)",
                    {"overrides": ["quant_pair=fp8,int8"], "jobs": planned}, planned)
    s.start()
    assert os.environ[sweep.TOTAL_ENV] == "2" and sweep.PARENT_ENV not in os.environ  # no run id
    _status(tmp_path, 0, ["quant_pair=fp8"], status="FAILED", run_id=None, error="bad value\n")
    table = s.finish()
    assert table is not None
    assert table["status"].tolist() == ["FAILED", "NOT_STARTED"]
    assert sweep.counts(table)["jobs_failed"] == 1.0
    on_disk = pd.read_csv(tmp_path / f"{sweep.SUMMARY}.csv")
    assert on_disk["status"].tolist() == ["FAILED", "NOT_STARTED"]
    assert on_disk["error"].tolist()[0] == "bad value"
    assert json.loads((tmp_path / sweep.DEFINITION).read_text())["jobs"] == planned
    assert s.finish() is None  # the multirun's end and the entry point's safety net both call it


# --- The plan as Hydra's basic sweeper expands it -----------------------------------------


def _plan(params: dict[str, str], task: list[str]) -> tuple[list[str], set[str]]:
    cfg = OmegaConf.create({"hydra": {"sweeper": {"params": params}, "overrides": {"task": task}}})
    jobs, swept, _ = planned_jobs(cfg)
    return jobs, swept


def test_plan_is_the_product_of_the_sweep_axes() -> None:
    jobs, swept = _plan({}, ["quant_pair=fp8,int8", "dataset.size=small,medium", "a.b=1"])
    assert jobs == ["a.b=1 dataset.size=small quant_pair=fp8", "a.b=1 dataset.size=medium quant_pair=fp8",
                    "a.b=1 dataset.size=small quant_pair=int8", "a.b=1 dataset.size=medium quant_pair=int8"]
    assert swept == {"quant_pair", "dataset.size"}


def test_command_line_overrides_win_over_a_preset() -> None:
    preset = OmegaConf.load(paths.CONF_DIR / "sweep" / "cpu_all.yaml").hydra.sweeper.params
    params = {str(k): str(v) for k, v in preset.items()}
    jobs, _ = _plan(params, ["sweep=cpu_all"])
    assert len(jobs) == 30
    jobs, swept = _plan(params, ["sweep=cpu_all", "dataset.size=small"])
    assert len(jobs) == 10 and all("dataset.size=small" in j.split() for j in jobs)
    assert swept == {"quant_pair"}


def test_a_glob_sweep_leaves_the_plan_unknown() -> None:
    jobs, swept = _plan({}, ["quant_pair=glob(w*)"])
    assert jobs == [] and swept == {"quant_pair"}


def test_the_planned_jobs_are_composed_before_the_sweep_starts(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(paths.CONF_DIR), version_base="1.3"):
        config = compose("sensitivity", [f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
        composed = compose_jobs(config, [["quant_pair=fp8"], ["quant_pair=int8"]])
        assert [c.quant_pair.name for _, c in composed] == ["wfp8_afp8", "wint8_aint8"]
        assert {str(c.output_layout.dir) for _, c in composed} == {str(tmp_path)}


def test_a_job_that_does_not_compose_refuses_the_sweep_in_one_paragraph(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with initialize_config_dir(config_dir=str(paths.CONF_DIR), version_base="1.3"):
        config = compose("sensitivity", [f"hydra.sweep.dir={tmp_path}"], return_hydra_config=True)
        with pytest.raises(SystemExit) as stop:  # before the parent run: none exists yet
            compose_jobs(config, [["autoquant.batch_size=2"], ["autoquant.batch_size=abc"]])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "`autoquant.batch_size=abc` does not compose" in err and "'abc'" in err


def test_cpu_all_preset_is_every_cpu_capable_pair_by_every_size() -> None:
    from layer_sensitivity.cli.config_store import load_listing

    listing = load_listing()  # the pairs as Hydra composes conf/quant_pair/ (aliases excluded)
    cpu_pairs = {name for name, pair in listing.pairs.items() if not pair.requires_cuda}
    preset = OmegaConf.load(paths.CONF_DIR / "sweep" / "cpu_all.yaml").hydra.sweeper.params
    assert sorted(preset["quant_pair"].split(",")) == sorted(cpu_pairs)
    assert preset["dataset.size"].split(",") == [s.value for s in DatasetSize]


# --- The `sweep` entry point's command line ------------------------------------------------


def test_sweep_entry_point_is_a_multirun_over_pairs_and_sizes() -> None:
    assert multirun_argv("fp8,int8", "small", ["autoquant.batch_size=2"]) == [
        "-m", "quant_pair=fp8,int8", "dataset.size=small", "autoquant.batch_size=2"]
    assert multirun_argv("fp8", None, []) == ["-m", "quant_pair=fp8"]
    assert multirun_argv(None, None, ["-m", "a=1,2", "--multirun"]) == ["-m", "a=1,2"]


def test_a_sweep_preset_replaces_the_pairs_and_sizes() -> None:
    assert multirun_argv("fp8,int8", "small", ["sweep=cpu_all", "dataset.size=small"]) == [
        "-m", "sweep=cpu_all", "dataset.size=small"]
