"""Typos in a job's overrides, caught before Hydra composes: one paragraph with "did you mean", for
group options (also in a user's config dir, every value of a sweep) and dotted schema keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from layer_sensitivity.cli.typos import check_overrides, config_dirs, group_options
from layer_sensitivity.errors import UserError


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


@pytest.mark.parametrize("value", ["fp8,fp9", "choice(fp8,fp9)", "fp9"])
def test_every_value_of_a_sweep_override_names_a_known_option(value: str) -> None:
    check_overrides(["quant_pair=fp8,int8", "quant_pair=choice(fp8,int8)"])
    with pytest.raises(UserError, match="quant_pair=fp9: no such option"):
        check_overrides([f"quant_pair={value}"])


def test_config_dirs_reads_hydras_flags_and_notices_a_searchpath() -> None:
    argv = ["--config-dir", "/a", "-cd=/b", "--config-path=/c", "-cp", "/d", "quant_pair=fp8"]
    assert config_dirs(argv) == ([Path("/a"), Path("/b"), Path("/c"), Path("/d")], False)
    assert config_dirs(["--config-dir"]) == ([], False)  # flag without a value: nothing added
    assert config_dirs(["+hydra.searchpath=[file:///x]"])[1] is True


def test_keys_under_free_form_nodes_are_left_to_hydra() -> None:
    check_overrides(["model.max_memory.anything=1", "dataset.size_samples.huge=4096"])
    with pytest.raises(UserError, match="'model.pathh' is not a config key. Did you mean 'model.path'"):
        check_overrides(["model.pathh=/x"])
