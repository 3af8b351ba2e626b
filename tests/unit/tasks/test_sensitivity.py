"""``tasks/sensitivity``: a sensitivity job's run (name, params, tags) and a sweep job's status file, without
running the model (bad input stops every case here before the model loads)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from layer_sensitivity import sweep
from layer_sensitivity.errors import UserError
from layer_sensitivity.schema import SensitivityConfig
from layer_sensitivity.tasks import sensitivity as job
from layer_sensitivity.tasks.lifecycle import PHASE_TAG
from tests.helpers.tracking import RecordingTracker


def _request(tmp_path: Path, **autoquant: object) -> job.JobRequest:
    cfg = SensitivityConfig()
    cfg = dataclasses.replace(cfg, autoquant=dataclasses.replace(cfg.autoquant, **autoquant))
    return job.JobRequest(cfg=cfg, out_dir=tmp_path / "job0", config_yaml="a: 1\n",
                          flat_config={"quant_pair.name": cfg.quant_pair.name,
                                       "dataset.size": "small", "autoquant.effective_bits": None},
                          choices={"quant_pair": "fp8"}, run_name="wfp8_afp8/default/small",
                          parent_id="parent", tags={"sweep.job": "0"})


def test_default_run_name_names_method_and_bits() -> None:
    cfg = SensitivityConfig()
    name = job.default_run_name(dataclasses.replace(
        cfg, autoquant=dataclasses.replace(cfg.autoquant, effective_bits=[5, 6.5])))
    assert name.endswith("@5,6.5bits") and name.startswith(cfg.quant_pair.name)


def test_config_params_keep_the_pair_as_typed_and_its_canonical_name(tmp_path: Path) -> None:
    params = job.config_params(_request(tmp_path))
    assert (params["quant_pair"], params["pair"]) == ("fp8", SensitivityConfig().quant_pair.name)
    assert params["effective_bits"] == "null"


def test_a_standalone_job_with_bad_input_opens_no_run(tmp_path: Path) -> None:
    req = dataclasses.replace(_request(tmp_path, effective_bits="abc"), parent_id=None)
    tracker = RecordingTracker()
    with pytest.raises(UserError, match="effective_bits"):
        job.run_job(req, tracker)
    assert tracker.runs == []


def test_a_sweep_job_with_bad_input_is_a_failed_child_with_a_status_file(tmp_path: Path) -> None:
    req = _request(tmp_path, effective_bits="abc")
    tracker = RecordingTracker()
    with pytest.raises(UserError):
        job.run_sweep_job(req, lambda: tracker, None, num=0,  # type: ignore[arg-type]
                          overrides=["quant_pair=fp8"])
    spec, run = tracker.runs[0]
    assert (spec.parent_id, run.status, run.tags()[PHASE_TAG]) == ("parent", "FAILED", "validate")
    assert run.kinds()[0] == "params"  # the sweep's table shows which job it was
    status = json.loads((req.out_dir / sweep.STATUS_FILE).read_text())
    assert (status["status"], status["run_id"], status["pair"]) == (
        "FAILED", "run0", SensitivityConfig().quant_pair.name)
    assert "effective_bits" in status["error"]


def test_a_sweep_job_whose_store_cannot_open_still_leaves_its_status(tmp_path: Path) -> None:
    req = _request(tmp_path)

    def no_store() -> RecordingTracker:
        raise UserError("tracking.uri=bogus:// is not a tracking store.")

    with pytest.raises(UserError):
        job.run_sweep_job(req, no_store, None, num=3, overrides=["quant_pair=fp8"])  # type: ignore[arg-type]
    status = json.loads((req.out_dir / sweep.STATUS_FILE).read_text())
    assert (status["job"], status["status"], status["run_id"]) == (3, "FAILED", None)
