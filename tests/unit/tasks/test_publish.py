"""``tasks/publish``: a finished run copied into the analysis tree, recorded as a nested run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layer_sensitivity import publish
from layer_sensitivity.errors import UserError
from layer_sensitivity.tasks.publish import publish_tracked
from tests.helpers.tracking import MemoryReader, RecordingTracker

MANIFEST = (Path(__file__).parents[1] / "fixtures" / "compare"
            / "tiny-qwen3-vl_autoquant_wint4_afp16_lm_small_quant_manifest.json")


def test_publishing_twice_is_one_copy_and_two_records(tmp_path: Path) -> None:
    reader, tracker = MemoryReader(), RecordingTracker()
    reader.add("job", "wint4_afp16/default/small", MANIFEST)
    first = publish_tracked(reader, tracker, "job", tmp_path / "models").result
    assert first.status == "published" and (first.path / MANIFEST.name).is_file()
    assert first.path.is_relative_to(tmp_path / "models")
    provenance = json.loads((first.path / publish.PROVENANCE).read_text())
    assert provenance["run_id"] == "job"
    again = publish_tracked(reader, tracker, "job", tmp_path / "models").result
    assert (again.status, again.path) == ("unchanged", first.path)
    assert [(s.name, s.parent_id, r.status) for s, r in tracker.runs] == [
        ("publish", "job", "FINISHED")] * 2
    params = [v for kind, v in tracker.runs[0][1].events if kind == "params"]
    assert params[-1]["publish.status"] == "published"
    assert reader.records["job"].tags[publish.PUBLISHED_TAG] == str(first.path)


def test_an_unfinished_run_is_refused_before_any_record(tmp_path: Path) -> None:
    reader, tracker = MemoryReader(), RecordingTracker()
    reader.add("job", "wint4_afp16/default/small", MANIFEST, status="FAILED")
    with pytest.raises(UserError, match="FAILED"):
        publish_tracked(reader, tracker, "job", tmp_path / "models")
    assert tracker.runs == [] and not (tmp_path / "models").exists()
