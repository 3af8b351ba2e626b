"""The quiet command line: did-you-mean, warning filters by name, prints to the debug log (typos
caught before Hydra: tests/unit/cli/test_typos.py)."""

from __future__ import annotations

import logging
import warnings

import pytest

from layer_sensitivity import console


@pytest.mark.parametrize("typo,choices,hint", [
    ("fp9", ["fp8", "int4", "int8"], "Did you mean 'fp8'?"),
    ("int9", ["fp8", "int4", "int8"], "Did you mean 'int8' or 'int4'?"),
    ("zzz", ["fp8", "int4"], ""),
])
def test_did_you_mean(typo: str, choices: list[str], hint: str) -> None:
    assert console.did_you_mean(typo, choices).strip() == hint


def test_known_warnings_are_filtered_by_name_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warnings, "filters", list(warnings.filters))
    console.quiet_third_party()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        console.quiet_third_party()
        warnings.warn("transformers 9.9 is not tested with current version of modelopt", UserWarning,
                      stacklevel=1)
        warnings.warn("something else entirely", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else entirely"]
    assert logging.getLogger("mlflow.system_metrics").level == logging.WARNING


def test_prints_go_to_the_debug_log(caplog: pytest.LogCaptureFixture,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("test.prints")
    with caplog.at_level(logging.DEBUG, logger="test.prints"), console.prints_to_log(log):
        print("Inserted 168 quantizers")
    assert capsys.readouterr().out == ""
    assert "Inserted 168 quantizers" in caplog.text
