"""The Hydra edge of the catalogue: every pair and overlay file composes against the typed schema
into the listing the core reads (``load_listing``), bad values fail at compose time, and the
resolvers and listing source are registered on import."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from layer_sensitivity import catalogue, paths
from layer_sensitivity.cli import config_store
from layer_sensitivity.cli.config_store import load_listing
from layer_sensitivity.errors import UserError
from layer_sensitivity.schema import FP4Format, Precision
from tests.helpers.catalogue import ALIASES, LISTING, OVERLAYS, PAIRS, compose_cfg, compose_job

ROOT = Path(__file__).resolve().parents[3]

# What the issue asks for, by name.
REQUIRED_PAIRS = {"wfp8_afp8", "wfp8_afp16", "wfp8_aint8", "wint8_aint8", "wint8_afp16", "wint8_afp8",
                  "wint4_afp16", "wint4_aint8", "wint4_afp8", "wfp4_afp16", "wfp4_afp8", "wfp4_afp4"}
REQUIRED_ALIASES = {"fp8": "wfp8_afp8", "int8": "wint8_aint8", "int4": "wint4_afp16",
                    "nvfp4": "wfp4_afp4", "mxfp4": "wmxfp4_amxfp4", "w4a8": "wint4_afp8"}
REQUIRED_OVERLAYS = {"default", "w_per_tensor", "w_per_out_channel", "w_per_in_channel", "w_group64",
                     "w_group128", "a_per_tensor_static", "a_per_token_dynamic",
                     "recipe_match_channel_token"}


def test_catalogue_has_every_requested_name() -> None:
    assert REQUIRED_PAIRS <= set(PAIRS)
    assert {p for p in PAIRS if "aint4" in p}, "at least one INT4-activation pair"
    assert ALIASES == REQUIRED_ALIASES
    assert set(OVERLAYS) == REQUIRED_OVERLAYS
    # Both FP4 flavours for every FP4 activation choice; the plain names are NVFP4.
    for a in ("afp16", "afp8"):
        assert PAIRS[f"wfp4_{a}"].fp4_format == FP4Format.nvfp4
        assert PAIRS[f"wmxfp4_{a}"].fp4_format == FP4Format.mxfp4
    assert PAIRS["wmxfp4_amxfp4"].fp4_format == FP4Format.mxfp4


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_pair_file_is_canonical_and_self_consistent(name: str) -> None:
    p = PAIRS[name]
    assert (ROOT / "conf" / "quant_pair" / f"{name}.yaml").is_file()
    w = "mx" + p.weight.value if p.fp4_format == FP4Format.mxfp4 else p.weight.value
    a = ("mx" + p.activation.value if p.fp4_format == FP4Format.mxfp4
         and p.activation == Precision.fp4 else p.activation.value)
    assert name == f"w{w}_a{a}"
    assert (p.fp4_format is not None) == (Precision.fp4 in (p.weight, p.activation))
    assert p.description and len(p.description.splitlines()) == 1


def test_listing_covers_every_config_file() -> None:
    """Every file of the two groups is a canonical pair, an alias or an overlay; nothing is dropped."""
    pair_files = {p.stem for p in (paths.CONF_DIR / "quant_pair").glob("*.yaml")}
    assert pair_files == set(PAIRS) | set(ALIASES)
    assert not set(PAIRS) & set(ALIASES)
    assert {p.stem for p in (paths.CONF_DIR / "quant_granularity").glob("*.yaml")} == set(OVERLAYS)


@pytest.mark.parametrize("option", sorted([*PAIRS, *ALIASES]))
def test_every_pair_option_composes_to_the_listing_entry(option: str) -> None:
    q = compose_job(f"quant_pair={option}").quant_pair
    assert q == PAIRS[ALIASES.get(option, option)]


def test_listing_inside_a_running_hydra_app_uses_its_search_path(tmp_path: Path) -> None:
    """Composed with the already initialized Hydra of a job or sweep (here: a trimmed copy of conf/),
    and a pair file whose name matches no file is reported rather than taken for an alias."""
    conf = tmp_path / "conf"
    shutil.copytree(paths.CONF_DIR, conf)
    kept = {"quant_pair": {"wfp8_afp8", "fp8", "wint8_aint8", "int8"},
            "quant_granularity": {"default", "w_group64"}}
    for group, names in kept.items():
        for f in (conf / group).glob("*.yaml"):
            if f.stem not in names:
                f.unlink()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        assert GlobalHydra.instance().is_initialized()
        trimmed = load_listing.__wrapped__()
    assert trimmed.pairs == {n: PAIRS[n] for n in ("wfp8_afp8", "wint8_aint8")}
    assert trimmed.aliases == {"fp8": "wfp8_afp8", "int8": "wint8_aint8"}
    assert trimmed.overlays == {n: OVERLAYS[n] for n in ("default", "w_group64")}

    pair_file = conf / "quant_pair" / "wint8_aint8.yaml"
    pair_file.write_text(pair_file.read_text().replace("name: wint8_aint8", "name: wint8_aint8_renamed"))
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        with pytest.raises(UserError, match="composes to a pair named wint8_aint8_renamed"):
            load_listing.__wrapped__()


@pytest.mark.parametrize("option", sorted(OVERLAYS))
def test_every_overlay_composes_to_the_catalogue_entry(option: str) -> None:
    assert compose_job(f"quant_granularity={option}").quant_granularity == OVERLAYS[option]


@pytest.mark.parametrize("override,needle", [
    ("quant_granularity.weight=per_banana", "per_banana"),
    ("quant_granularity.activation=per_block", "per_block"),
    ("quant_granularity.group_size=sixty", "sixty"),
    ("quant_pair.fp4_format=fp3", "fp3"),
    ("quant_pair.edits=[no_such_edit]", "no_such_edit"),
    ("quant_pair.weight=int3", "int3"),
])
def test_bad_catalogue_values_fail_at_compose_time(override: str, needle: str) -> None:
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose_job(override)
    assert needle in str(e.value) + str(e.value.__cause__)


def test_unknown_pair_lists_every_known_name() -> None:
    with pytest.raises(ConfigCompositionException) as e:
        compose_job("quant_pair=w3a3")
    text = str(e.value)
    assert "quant_pair/w3a3" in text
    for name in [*PAIRS, *ALIASES]:
        assert re.search(rf"\b{name}\b", text), name


def test_importing_registers_the_resolvers_and_the_listing_source() -> None:
    cfg = OmegaConf.create({"captions": "${asset:captions/captions.txt}", "root": "${project_root:}"})
    assert cfg.captions == str(paths.ASSETS_DIR / "captions" / "captions.txt")
    assert cfg.root == str(paths.project_root())
    assert catalogue.current_listing() is LISTING  # what the core's device errors list
    config_store.register()  # again (a second app in one process): replaces, does not fail
    assert compose_cfg().model.path == str(paths.ASSETS_DIR / "tiny-qwen3-vl")


def test_unknown_plus_keys_are_refused_and_every_shipped_option_passes() -> None:
    with initialize_config_dir(config_dir=config_store.CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        # (pairs and overlays are typed leaves: their keys cannot add unknown ones)
        for group in ("model", "dataset", "output_layout", "tracking", "sweep", "hydra/launcher"):
            for option in loader.get_group_options(group):
                config_store.check_known_keys(compose("sensitivity", overrides=[f"{group}={option}"],
                                         return_hydra_config=True))
        with pytest.raises(UserError, match="did you mean 'autoquant.method'") as info:
            config_store.check_known_keys(compose("sensitivity", overrides=["+autoquant.methd=kl_div",
                                                               "+foo=bar"]))
        assert "'foo'" in str(info.value)
