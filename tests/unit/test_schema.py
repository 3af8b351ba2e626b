"""The typed schemas hold real defaults: the core runs from plain Python objects, without Hydra."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from layer_sensitivity import paths, pipeline
from layer_sensitivity.cli.config_store import CONF_DIR
from layer_sensitivity.schema import DatasetConfig, QuantPairConfig, SensitivityConfig


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_defaults_hold_no_interpolations() -> None:
    texts = _strings(dataclasses.asdict(SensitivityConfig()))
    assert texts and not [t for t in texts if "${" in t]


def test_default_paths_are_real(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.CACHE_DIR_ENV, raising=False)
    cfg = SensitivityConfig()
    assert (Path(cfg.model.path or "") / "config.json").is_file()
    assert Path(cfg.dataset.captions_path).is_file()
    root = paths.project_root()
    assert Path(cfg.autoquant.score_cache_dir) == root / ".cache" / "autoquant-scores"
    assert Path(cfg.output_layout.dir or "") == root / "outputs"
    assert Path(cfg.output_layout.root) == root / "models"


def test_score_cache_default_honours_the_environment(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.CACHE_DIR_ENV, str(tmp_path))
    assert SensitivityConfig().autoquant.score_cache_dir == str(tmp_path / "autoquant-scores")


def test_defaults_match_what_hydra_composes() -> None:
    """The Python defaults and conf/'s interpolations name the same files."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        composed = compose("sensitivity", overrides=["output_layout=publish"])
    plain = SensitivityConfig()
    assert composed.model.path == plain.model.path
    assert composed.dataset.captions_path == plain.dataset.captions_path
    assert composed.autoquant.score_cache_dir == plain.autoquant.score_cache_dir
    assert composed.output_layout.root == plain.output_layout.root
    # Hydra's own files go to its run directory, known only inside a run.
    assert "dir: ${hydra:runtime.output_dir}" in OmegaConf.to_yaml(composed.output_layout)


def test_readme_notebook_example_plans() -> None:
    """README: a notebook calls ``pipeline.plan(SensitivityConfig(...))`` (the model is not run here)."""
    cfg = SensitivityConfig(quant_pair=QuantPairConfig(), dataset=DatasetConfig(max_calib_samples=8))
    plan = pipeline.plan(cfg)
    assert (plan.checkpoint / "config.json").is_file()
    assert plan.checkpoint == Path(paths.asset("tiny-qwen3-vl"))
    assert Path(plan.captions.path).is_file() and len(plan.captions.lines) == 8
    assert plan.quant_cfg["quant_cfg"] and plan.target_bits == plan.format_bits
