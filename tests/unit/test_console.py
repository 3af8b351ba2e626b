"""The quiet command line: did-you-mean, typos caught before Hydra, warning filters by name."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from layer_sensitivity import console
from layer_sensitivity.cli.typos import check_overrides, group_options
from layer_sensitivity.errors import UserError


@pytest.mark.parametrize("typo,choices,hint", [
    ("fp9", ["fp8", "int4", "int8"], "Did you mean 'fp8'?"),
    ("int9", ["fp8", "int4", "int8"], "Did you mean 'int8' or 'int4'?"),
    ("zzz", ["fp8", "int4"], ""),
])
def test_did_you_mean(typo: str, choices: list[str], hint: str) -> None:
    assert console.did_you_mean(typo, choices).strip() == hint


@pytest.mark.parametrize("override,message", [
    ("quant_pair=fp9", "Did you mean 'fp8'"),
    ("quant_pair=fp8,int9", "quant_pair=int9: no such option"),
    ("autoquant.methd=kl_div", "Did you mean 'autoquant.method'"),
    ("autoqunt.method=kl_div", "'autoqunt.method' is not a config key"),
    ("model=tiny_qwen3vl", "Did you mean 'tiny_qwen3_vl'"),
])
def test_typos_are_one_paragraph_with_a_suggestion(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as e:
        check_overrides([override])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("override", [
    "quant_pair=wint4_afp16", "quant_pair=fp8,int8", "autoquant.method=kl_div",
    "autoquant.effective_bits=[4.5,6]", "+anything=1", "hydra.run.dir=/tmp/x", "sweep=cpu_all",
    "dataset.size=small", "hydra/launcher=submitit_local",
])
def test_valid_overrides_pass(override: str) -> None:
    check_overrides([override])


def test_group_options_are_the_conf_files() -> None:
    assert {"fp8", "wfp8_afp8", "int4"} <= set(group_options("quant_pair"))
    assert group_options("no_such_group") == []


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


@pytest.mark.parametrize("flag", [["--config-dir", "{d}"], ["--config-dir={d}"], ["-cd", "{d}"]])
def test_options_from_a_users_config_dir_are_options(tmp_path: Path, flag: list[str]) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my_model.yaml").write_text("name: mine\n")
    argv = [a.format(d=tmp_path) for a in flag]
    check_overrides([*argv, "model=my_model"])
    with pytest.raises(UserError, match="Did you mean 'my_model'"):
        check_overrides([*argv, "model=my_modle"])


def test_a_searchpath_leaves_group_options_to_hydra() -> None:
    check_overrides(["hydra.searchpath=[file:///elsewhere]", "model=from_elsewhere"])
