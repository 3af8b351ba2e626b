"""``pipeline.plan`` and the score key on the embedded model, without running the model.

Planning validates the job and resolves its inputs; the key of stored scores is built from the
plan and the tokenized batches only. Jobs that run the model are in tests/e2e/test_reuse.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from layer_sensitivity import pipeline, scorecache, scoring
from layer_sensitivity.cli.config_store import CONF_DIR
from layer_sensitivity.errors import UserError
from layer_sensitivity.model import digest
from layer_sensitivity.reuse import Resources
from layer_sensitivity.schema import Coverage, Method, SensitivityConfig

BASE = ["dataset.max_calib_samples=8", "autoquant.batch_size=4", "tracking=none"]


def _cfg(tmp_path: Path, *overrides: str) -> SensitivityConfig:
    """The job ``python -m layer_sensitivity <overrides>`` would run (outside a Hydra app)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sensitivity", overrides=[*BASE, *overrides])
    cfg.output_layout.dir = str(tmp_path / "out")  # ${hydra:runtime.output_dir} needs a Hydra app
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def resources() -> Iterator[Resources]:
    """One tokenizer for every key; nothing here may load the model."""
    shared = Resources(keep=True)
    yield shared
    assert shared.loads == 0


def _key(cfg: SensitivityConfig, resources: Resources, *, fingerprint: str | None = None,
         dtype: torch.dtype = torch.float32) -> str:
    p = pipeline.plan(cfg)
    if fingerprint is not None:
        p = dataclasses.replace(p, fingerprint=fingerprint)
    batches = pipeline.calibration_data(p, resources)
    return scorecache.cache_key(scoring.score_key_ingredients(p, dtype, batches))


def _other_captions(tmp_path: Path) -> Path:
    f = tmp_path / "other.txt"
    f.write_text("".join(f"a different caption {i} of a green tram\n" for i in range(20)))
    return f


def _with(cfg: SensitivityConfig, **changes: object) -> SensitivityConfig:
    """``cfg`` with dotted fields changed, e.g. ``_with(cfg, **{"dataset.calib_seq_len": 6})``."""
    for dotted, value in changes.items():
        section, name = dotted.split(".")
        part = dataclasses.replace(getattr(cfg, section), **{name: value})
        cfg = dataclasses.replace(cfg, **{section: part})
    return cfg


def test_every_ingredient_changes_the_score_key(tmp_path: Path, resources: Resources) -> None:
    cfg = _cfg(tmp_path)

    def key(changed: SensitivityConfig | None = None, **kwargs: object) -> str:
        return _key(changed or cfg, resources, **kwargs)  # type: ignore[arg-type]

    def edit(**changes: object) -> str:
        return key(_with(cfg, **changes))

    base = key()
    assert key(_cfg(tmp_path)) == base  # deterministic
    variants = {
        "model": key(fingerprint="another checkpoint"),
        "dtype": key(dtype=torch.bfloat16),
        "samples": edit(**{"dataset.max_calib_samples": 12}),
        "captions": edit(**{"dataset.captions_path": str(_other_captions(tmp_path))}),
        "seq_len": edit(**{"dataset.calib_seq_len": 6}),
        "batch_size": edit(**{"autoquant.batch_size": 2}),
        "score_steps": edit(**{"autoquant.score_size": 4}),
        "padding": edit(**{"dataset.pad_to_longest": False, "dataset.calib_seq_len": 32}),
        "sorting": edit(**{"dataset.sort_by_length": True}),
        "method": edit(**{"autoquant.method": Method.kl_div}),
        "coverage": edit(**{"autoquant.coverage": Coverage.full}),
        # pairs and overlays as Hydra composes them
        "pair": key(_cfg(tmp_path, "quant_pair=int8")),
        "int4_blocks": key(_cfg(tmp_path, "quant_pair=int4")),
        "granularity": key(_cfg(tmp_path, "quant_pair=int8", "quant_granularity=a_per_token_dynamic")),
    }
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants), variants
    # What the scores do not depend on leaves the key alone: targets, tracking, where it writes.
    assert edit(**{"autoquant.effective_bits": 12, "tracking.experiment": "x",
                   "autoquant.score_cache_dir": str(tmp_path / "elsewhere")}) == base
    assert edit(**{"autoquant.effective_bits": [8, 10, 12]}) == base


def test_plan_resolves_the_job_without_the_model(tmp_path: Path) -> None:
    p = pipeline.plan(_cfg(tmp_path, "quant_pair=int4", "autoquant.score_size=3",
                           "autoquant.effective_bits=[6,5]"))
    assert (p.targets, p.target_bits, p.format_bits) == ([6.0, 5.0], 6.0, 4.0)
    assert (len(p.captions.lines), p.score_samples, p.score_steps) == (8, 3, 1)
    assert p.scheme_name == "tiny-qwen3-vl_autoquant_wint4_afp16_lm_small"
    assert p.device == "cpu" and len(p.fingerprint) == 16
    assert p.format_name == "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"
    assert any("visual" in pattern for pattern in p.frozen_patterns)  # the vision tower is frozen


@pytest.mark.parametrize("init", ["random", "pretrained"])
def test_plan_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, init: str) -> None:
    """``plan`` only validates: the random-init directory and the weights' digest memos (both in
    the cache) are written by the first phase, and are what the plan said they would be."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LAYER_SENSITIVITY_CACHE_DIR", str(cache))  # random-init and score cache
    p = pipeline.plan(_cfg(tmp_path, f"model.init={init}"))
    assert p.cfg.autoquant.reuse_scores and Path(p.cfg.autoquant.score_cache_dir).is_relative_to(cache)
    assert not cache.exists()
    assert (p.random_init is not None) == (init == "random") == (not p.checkpoint.exists())
    pipeline.write_planned(p)
    assert p.checkpoint.is_dir() and p.fingerprint == digest.fingerprint(p.checkpoint)
    memos = list((Path(p.cfg.autoquant.score_cache_dir) / pipeline.WEIGHT_DIGESTS).glob("*.json"))
    assert len(memos) == (init == "pretrained")  # the embedded checkpoint's one shard
    assert pipeline.plan(_cfg(tmp_path, f"model.init={init}")).fingerprint == p.fingerprint


@pytest.mark.parametrize("value,targets", [(None, [8.0]), (6, [6.0]), ("7.5", [7.5]),
                                           ([8, 6.5], [8.0, 6.5])])
def test_bit_targets(value: object, targets: list[float]) -> None:
    assert pipeline.bit_targets(value, 8.0) == targets


@pytest.mark.parametrize("value", [[], [8, 8], [8, "abc"], True, "many"])
def test_bad_bit_targets_are_user_errors(value: object) -> None:
    with pytest.raises(UserError, match="autoquant.effective_bits="):
        pipeline.bit_targets(value, 8.0)


@pytest.mark.parametrize("value", ["[]", "[8,8]", "[8,abc]"])
def test_bad_frontiers_are_refused_by_plan(tmp_path: Path, value: str) -> None:
    with pytest.raises(UserError, match="effective_bits"):
        pipeline.plan(_cfg(tmp_path, f"autoquant.effective_bits={value}"))


def test_a_frontier_target_below_the_format_is_out_of_reach(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"effective_bits=6 is out of reach .* \[8, 16\]"):
        pipeline.plan(_cfg(tmp_path, "autoquant.effective_bits=[8,6]"))


@pytest.mark.parametrize("override", ["autoquant.batch_size=0", "dataset.max_calib_samples=-1",
                                      "autoquant.score_size=0", "dataset.calib_seq_len=0"])
def test_non_positive_sizes_are_refused_by_plan(tmp_path: Path, override: str) -> None:
    with pytest.raises(UserError, match=f"{override.replace('.', '[.]')} must be a positive"):
        pipeline.plan(_cfg(tmp_path, override))


# --- dataset=image_captions ---------------------------------------------------------------------

VISION = ["dataset=image_captions", "model=tiny_qwen3_vl_vision"]


def test_image_plan_records_the_modality_and_the_pairs(tmp_path: Path) -> None:
    p = pipeline.plan(_cfg(tmp_path, *VISION))
    assert p.images is not None and len(p.images.pairs) == 8
    assert p.captions.lines == tuple(c for _, c in p.images.pairs)
    assert p.scheme_name.endswith("_small_image")
    assert pipeline.plan(_cfg(tmp_path)).images is None  # text stays the default


def test_image_score_key_covers_images_and_settings(tmp_path: Path, resources: Resources) -> None:
    cfg = _cfg(tmp_path, *VISION)
    base = _key(cfg, resources)
    text = _key(_cfg(tmp_path, "model=tiny_qwen3_vl_vision"), resources)
    fewer_pixels = _key(_with(cfg, **{"dataset.image_max_pixels": 64 * 64}), resources)
    prompt = _key(_with(cfg, **{"dataset.image_prompt": "What is drawn?"}), resources)
    assert len({base, text, fewer_pixels, prompt}) == 4
    p = pipeline.plan(cfg)
    ingredients = scoring.score_key_ingredients(p, torch.float32,
                                                 pipeline.calibration_data(p, resources))
    assert ingredients["modality"] == "image_text" and ingredients["images_sha256"]
    # Text jobs keep exactly their earlier key ingredients (and so their stored scores).
    tp = pipeline.plan(_cfg(tmp_path))
    assert "modality" not in scoring.score_key_ingredients(
        tp, torch.float32, pipeline.calibration_data(tp, resources))


@pytest.mark.parametrize(("overrides", "message"), [
    (["model=tiny_qwen3_vl", "dataset=image_captions"],  # the text-only embedded model
     "no preprocessor_config.json and a chat template"),
    ([*VISION, "dataset.images_dir=/nonexistent/images"], "Image folder .* does not exist"),
    ([*VISION, "dataset.annotations_path=/nonexistent.json"], "does not exist"),
    ([*VISION, "dataset.image_min_pixels=20000"], "image_min_pixels=20000 is above"),
    ([*VISION, "dataset.image_max_pixels=0"], "image_max_pixels=0 must be a positive"),
    ([*VISION, "dataset.images_dir=null"], "needs dataset.images_dir"),
    ([*VISION, "dataset.sort_by_length=true"], "set dataset.pad_to_longest=true and"),
    ([*VISION, "dataset.annotations_path=null"], "has no image .* with a same-named .txt caption"),
])
def test_bad_image_jobs_are_refused_by_plan(tmp_path: Path, overrides: list[str],
                                            message: str) -> None:
    with pytest.raises(UserError, match=message):
        pipeline.plan(_cfg(tmp_path, *overrides))
