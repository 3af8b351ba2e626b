"""``tasks/compare``: which runs are compared, and the comparison logged as one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layer_sensitivity import compare
from layer_sensitivity.errors import UserError
from layer_sensitivity.tasks.compare import compare_runs, select_runs
from tests.helpers.tracking import MemoryReader, RecordingTracker

FIXTURES = Path(__file__).parents[1] / "fixtures" / "compare"


@pytest.fixture
def reader() -> MemoryReader:
    """A sweep's parent, its two finished children (fp8, int4), a failed child and a report run."""
    r = MemoryReader()
    r.add("parent", "sweep", None, tags={"sweep": "parent"})
    child = {"mlflow.parentRunId": "parent"}
    for run_id, pair in (("fp8", "wfp8_afp8"), ("int4", "wint4_afp16")):
        path = FIXTURES / f"tiny-qwen3-vl_autoquant_{pair}_lm_small_quant_manifest.json"
        r.add(run_id, f"{pair}/default/small", path, tags=child)
    r.add("failed", "wint8_aint8/default/small", None, status="FAILED", tags=child)
    r.add("report", "report", None, tags=child)
    return r


def test_a_sweeps_finished_jobs_are_selected(reader: MemoryReader) -> None:
    chosen = select_runs(reader, parent_run_id="parent")
    assert [r.run_id for r in chosen] == ["fp8", "int4"]


@pytest.mark.parametrize("selection", [{}, {"run_ids": ["fp8"], "parent_run_id": "parent"}])
def test_exactly_one_way_of_selecting(reader: MemoryReader, selection: dict) -> None:
    with pytest.raises(UserError, match="exactly one of"):
        select_runs(reader, **selection)


def test_a_named_run_that_is_not_a_finished_job_is_refused(reader: MemoryReader) -> None:
    with pytest.raises(UserError, match="failed.*FAILED"):
        select_runs(reader, run_ids=["fp8", "failed"])


def test_one_run_is_not_a_comparison(reader: MemoryReader) -> None:
    with pytest.raises(UserError, match="two or more"):
        select_runs(reader, run_ids=["fp8"])


def test_the_comparison_is_one_run_nested_under_the_sweep(reader: MemoryReader,
                                                         tmp_path: Path) -> None:
    tracker = RecordingTracker()
    done = compare_runs(reader, tracker, tmp_path, parent_run_id="parent")
    (spec, run), = tracker.runs
    assert (spec.name, spec.parent_id, run.status) == ("compare 2 runs", "parent", "FINISHED")
    assert spec.tags["compare.runs"] == "fp8,int4"
    assert done.run_id == run.run_id and done.headline
    params = run.events[0][1]
    assert params["compare.num_runs"] == 2 and params["compare.parent_run_id"] == "parent"
    metrics = {k: v for k, v, _ in next(v for kind, v in run.events if kind == "metrics")}
    assert -1.0 <= metrics["spearman_min"] <= metrics["spearman_mean"] <= 1.0
    logged = next(v for kind, v in run.events if kind == "files")
    assert compare.HTML_NAME in logged and all((tmp_path / f).is_file() for f in logged)
    assert run.tags()["mlflow.note.content"].startswith("Comparison of 2 runs")


def test_a_bad_selection_opens_no_run(reader: MemoryReader, tmp_path: Path) -> None:
    tracker = RecordingTracker()
    with pytest.raises(UserError):
        compare_runs(reader, tracker, tmp_path, run_ids=["fp8", "nope"])
    assert tracker.runs == []


def test_a_manifest_that_cannot_be_compared_opens_no_run(reader: MemoryReader,
                                                        tmp_path: Path) -> None:
    future = tmp_path / "future_quant_manifest.json"
    doc = json.loads((FIXTURES / "tiny-qwen3-vl_autoquant_wfp8_afp8_lm_small_quant_manifest.json")
                     .read_text())
    future.write_text(json.dumps(doc | {"schema_version": 99}))
    reader.add("future", "from a newer version", future, tags={"mlflow.parentRunId": "parent"})
    tracker = RecordingTracker()
    with pytest.raises(UserError, match="schema_version"):
        compare_runs(reader, tracker, tmp_path / "out", run_ids=["fp8", "future"])
    assert tracker.runs == [] and not (tmp_path / "out").exists()
