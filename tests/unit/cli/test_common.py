"""What every entry point shares: input checks before any run, the failure policy as exit codes,
logging that drops secrets, the config as flat params, MLproject's packed overrides."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from layer_sensitivity.cli import common
from layer_sensitivity.errors import OutOfSpace, UserError
from layer_sensitivity.redact import RedactingFilter
from layer_sensitivity.tracking import Interrupted

SECRET_URI = "http://user:hunter2@tracking.example:5000"


def test_an_output_dir_behind_a_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    common.check_out_dir(tmp_path / "new" / "deeper", "--out")  # creatable: passes, creates nothing
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "taken").write_text("x")
    with pytest.raises(UserError, match=r"--out=.*/taken/sub cannot be created: '.*/taken' is a file"):
        common.check_out_dir(tmp_path / "taken" / "sub", "--out")


def test_input_files_must_exist_and_be_files(tmp_path: Path) -> None:
    f = tmp_path / "captions.txt"
    f.write_text("a cat\n")
    common.check_input_file(f, "dataset.captions_path")
    with pytest.raises(UserError, match="dataset.captions_path=.* does not exist"):
        common.check_input_file(tmp_path / "absent.txt", "dataset.captions_path")
    with pytest.raises(UserError, match="is a directory"):
        common.check_input_file(tmp_path, "dataset.captions_path")


def test_counts_must_be_positive_or_left_out() -> None:
    common.check_positive(None, "--limit")
    common.check_positive(3, "--limit")
    with pytest.raises(UserError, match="--limit=0 must be a positive integer"):
        common.check_positive(0, "--limit")


def _exit_of(error: BaseException) -> int:
    with pytest.raises(SystemExit) as e, common.user_errors():
        raise error
    assert isinstance(e.value.code, int)
    return e.value.code


def test_user_errors_map_failures_to_exit_codes_and_one_redacted_paragraph(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)  # not under `mlflow run`: no run to discard
    assert _exit_of(UserError(f"tracking.uri={SECRET_URI} is wrong")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tracking.uri=http://user:***@tracking.example") and "hunter2" not in err
    assert _exit_of(OutOfSpace("disk full")) == 1
    assert capsys.readouterr().err == "error: disk full\n"
    assert _exit_of(RuntimeError(f"bug near {SECRET_URI}")) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError" in err and "hunter2" not in err
    with common.user_errors():
        pass  # no error: no exit


def test_an_interruption_exits_128_plus_the_signal(capsys: pytest.CaptureFixture[str]) -> None:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert _exit_of(Interrupted(signal.SIGTERM)) == 143
        assert capsys.readouterr().err == "interrupted (SIGTERM)\n"
        assert _exit_of(KeyboardInterrupt()) == 130
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # a second Ctrl-C waits for the exit
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_redact_logging_adds_one_filter_per_handler() -> None:
    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        common.redact_logging()
        common.redact_logging()
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    finally:
        root.removeHandler(handler)


def test_flatten_gives_dotted_keys_with_lists_as_text() -> None:
    cfg = OmegaConf.create({"autoquant": {"effective_bits": [4.5, 6.0], "method": "gradient"},
                            "model": {"path": "/m", "max_memory": None}, "n": 3,
                            "ref": "${model.path}/x"})
    assert common.flatten(cfg) == {"autoquant.effective_bits": "[4.5, 6.0]",
                                   "autoquant.method": "gradient", "model.path": "/m",
                                   "model.max_memory": None, "n": 3, "ref": "/m/x"}


def test_packed_overrides_are_split_like_a_shell() -> None:
    argv = ["quant_pair=int8", "--overrides", "a=1 'b=x y'", "--overrides=c=2", "--overrides", ""]
    assert common.expand_packed_overrides(argv) == ["quant_pair=int8", "a=1", "b=x y", "c=2"]
