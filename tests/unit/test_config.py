"""The Hydra config groups compose into the typed schema; bad values fail at compose time."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from layer_sensitivity import paths
from layer_sensitivity.cli.config_store import CONF_DIR
from layer_sensitivity.errors import UserError
from layer_sensitivity.schema import Method, Precision, SensitivityConfig

GROUPS = ["model", "dataset", "quant_pair", "quant_granularity", "autoquant", "output_layout",
          "tracking"]


def _compose(*overrides: str) -> SensitivityConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sensitivity", overrides=list(overrides))
    cfg.output_layout.dir = "/tmp/x"  # ${hydra:...} only resolves inside a Hydra run
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def test_default_is_embedded_fp8() -> None:
    job = _compose()
    assert job.model.name == "tiny-qwen3-vl"
    assert Path(job.model.path or "").joinpath("config.json").is_file()
    assert Path(job.dataset.captions_path).is_file()
    assert job.quant_pair.name == "wfp8_afp8"
    assert job.autoquant.method == Method.gradient


def _options(group: str) -> list[str]:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return GlobalHydra.instance().config_loader().get_group_options(group)


def test_conf_dir_is_the_top_level_conf() -> None:
    root = Path(__file__).resolve().parents[2]
    assert paths.CONF_DIR == (root / "conf").resolve()
    assert CONF_DIR == str(paths.CONF_DIR)
    assert (paths.CONF_DIR / "sensitivity.yaml").is_file()
    assert (paths.PACKAGE_DIR / "conf" / "sensitivity.yaml").is_file()  # the link a wheel copies


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes(group: str) -> None:
    options = _options(group)
    assert options
    for option in options:
        job = _compose(f"{group}={option}")
        assert isinstance(job, SensitivityConfig)


@pytest.mark.parametrize("alias,canonical,w,a", [
    ("fp8", "wfp8_afp8", Precision.fp8, Precision.fp8),
    ("int8", "wint8_aint8", Precision.int8, Precision.int8),
    ("int4", "wint4_afp16", Precision.int4, Precision.fp16),
])
def test_aliases_resolve_to_canonical_pairs(alias: str, canonical: str, w: Precision,
                                            a: Precision) -> None:
    q = _compose(f"quant_pair={alias}").quant_pair
    assert (q.name, q.weight, q.activation) == (canonical, w, a)


@pytest.mark.parametrize("override,needle", [
    ("autoquant.method=newton", "newton"),
    ("dataset.size=huge", "huge"),
    ("model.dtype=int3", "int3"),
    ("autoquant.batch_size=four", "four"),
    ("model.colour=red", "colour"),
])
def test_bad_values_fail_at_compose_time(override: str, needle: str) -> None:
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        _compose(override)
    assert needle in str(e.value) + str(e.value.__cause__)


@pytest.mark.parametrize("keep,needle", [("[0,25]", "did you mean 0.25"), ("[-0.1]", "-0.1"),
                                         ("[0.1,1.5]", "1.5")])
def test_recipe_budgets_are_fractions_of_the_headroom_at_compose_time(keep: str,
                                                                       needle: str) -> None:
    with pytest.raises(UserError, match="recipes.keep value") as e:
        _compose(f"recipes.keep={keep}")
    assert needle in str(e.value)
    assert _compose("recipes.keep=[0,0.2,1]").recipes.keep == [0.0, 0.2, 1.0]


def test_unknown_pair_lists_choices() -> None:
    with pytest.raises(ConfigCompositionException) as e:
        _compose("quant_pair=w3a3")
    assert "quant_pair/w3a3" in str(e.value)


def test_real_checkpoint_presets_read_path_from_env() -> None:
    job = _compose("model=qwen3_vl_4b")
    assert job.model.path is None and job.model.path_env == "QWEN3_VL_4B_PATH"


def test_image_captions_brings_the_vision_trained_embedded_model() -> None:
    job = _compose("dataset=image_captions", "quant_pair=fp8")
    assert (job.model.name, job.dataset.modality.value) == ("tiny-qwen3-vl-vision", "image_text")
    assert Path(job.model.path or "").joinpath("preprocessor_config.json").is_file()
    assert _compose().model.name == "tiny-qwen3-vl"  # text-only default unchanged
    assert _compose("dataset=captions").model.name == "tiny-qwen3-vl"


@pytest.mark.parametrize("overrides", [("dataset=image_captions", "model=qwen3_vl_4b"),
                                       ("model=qwen3_vl_4b", "dataset=image_captions")])
def test_an_explicit_model_wins_over_the_image_dataset_default(overrides: tuple[str, ...]) -> None:
    job = _compose(*overrides)
    assert (job.model.name, job.model.path_env) == ("Qwen3-VL-4B-Instruct", "QWEN3_VL_4B_PATH")
    assert job.dataset.modality.value == "image_text"
    assert _compose("dataset=image_captions", "model=tiny_qwen3_vl").model.name == "tiny-qwen3-vl"


def _mlproject_argv(**params: str) -> list[str]:
    """The sensitivity entry point's command line as `mlflow run` fills it in."""
    import shlex

    import yaml

    from layer_sensitivity.cli.common import expand_packed_overrides

    entry = yaml.safe_load((paths.CONF_DIR.parent / "MLproject").read_text())
    entry = entry["entry_points"]["sensitivity"]
    values = {k: str(v["default"]) for k, v in entry["parameters"].items()} | params
    argv = shlex.split(entry["command"].format(**values))
    return expand_packed_overrides(argv[argv.index("layer_sensitivity") + 1:])


def test_typo_check_and_mlproject_accept_the_image_dataset() -> None:
    from layer_sensitivity.cli.typos import check_overrides

    check_overrides(["dataset=image_captions", "quant_pair=fp8"])
    argv = _mlproject_argv(model="tiny_qwen3_vl_vision", overrides="dataset=image_captions")
    check_overrides(argv)
    job = _compose(*argv)
    assert (job.model.name, job.dataset.name) == ("tiny-qwen3-vl-vision", "bundled-shapes")
    # MLproject always passes model= (default tiny_qwen3_vl), and an explicit model wins.
    assert _compose(*_mlproject_argv(overrides="dataset=image_captions")).model.name == \
        "tiny-qwen3-vl"
