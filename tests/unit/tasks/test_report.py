"""``tasks/report``: a run's reports regenerated into it, recorded as a run nested under it."""

from __future__ import annotations

from pathlib import Path

import pytest

from layer_sensitivity.errors import UserError
from layer_sensitivity.tasks.report import report_run
from tests.helpers.tracking import MemoryReader, RecordingTracker

MANIFEST = (Path(__file__).parents[1] / "fixtures" / "compare"
            / "tiny-qwen3-vl_autoquant_wfp8_afp8_lm_small_quant_manifest.json")


def test_reports_go_back_into_the_run_and_the_record_is_nested_under_it() -> None:
    reader, tracker = MemoryReader(), RecordingTracker()
    reader.add("job", "wfp8_afp8/default/small", MANIFEST)
    done = report_run(reader, tracker, "job")
    (spec, run), = tracker.runs
    assert (spec.name, spec.parent_id, run.status) == ("report", "job", "FINISHED")
    (target, uploaded), = reader.uploads
    assert target == "job" and uploaded == done.result
    assert MANIFEST.name not in uploaded  # the manifest is never replaced
    assert "layer-sensitivity-report.md" in uploaded and any(f.endswith(".png") for f in uploaded)
    assert ("params", {"report.files": ", ".join(done.result)}) in run.events


@pytest.mark.parametrize("status", ["FAILED", "KILLED", "RUNNING"])
def test_an_unfinished_run_is_refused_before_any_record(status: str) -> None:
    reader, tracker = MemoryReader(), RecordingTracker()
    reader.add("job", "wfp8_afp8/default/small", MANIFEST, status=status)
    with pytest.raises(UserError, match=status):
        report_run(reader, tracker, "job")
    assert tracker.runs == [] and reader.uploads == []
