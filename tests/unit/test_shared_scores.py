"""The shared-scores pre-pass decides, without loading a model, which jobs it serves."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from layer_sensitivity import paths, shared_scores
from layer_sensitivity.schema import (
    AutoQuantConfig,
    DatasetConfig,
    Method,
    Precision,
    PresetEdit,
    QuantPairConfig,
    SensitivityConfig,
)


def _pair(name: str) -> QuantPairConfig:
    d = yaml.safe_load((paths.CONF_DIR / "quant_pair" / f"{name}.yaml").read_text())
    return QuantPairConfig(**{**d, "weight": Precision(d["weight"]),
                              "activation": Precision(d["activation"]),
                              "edits": [PresetEdit(e) for e in d.get("edits") or []]})


def _cfg(pair: str, cache: Path, **autoquant: object) -> SensitivityConfig:
    return SensitivityConfig(quant_pair=_pair(pair), dataset=DatasetConfig(max_calib_samples=4),
                             autoquant=AutoQuantConfig(score_cache_dir=str(cache), **autoquant))


def test_share_key_ignores_only_the_format() -> None:
    base = {"model_fingerprint": "m", "samples": 4, "method": "gradient", "quant_cfg": "fp8"}
    same = shared_scores.share_key(base | {"quant_cfg": "int4"}, "/c")
    assert shared_scores.share_key(base, "/c") == same
    assert shared_scores.share_key(base | {"samples": 8}, "/c") != same
    assert shared_scores.share_key(base, "/other") != same


def test_jobs_it_cannot_serve_are_left_to_themselves(tmp_path: Path) -> None:
    """kl_div, reuse off, a CUDA-only pair on CPU, and a lone format: no search, no model."""
    cache = tmp_path / "cache"
    cfgs = [_cfg("wfp8_afp8", cache, method=Method.kl_div),
            _cfg("wint8_aint8", cache, method=Method.kl_div),
            _cfg("wint4_afp16", cache, reuse_scores=False),
            dataclasses.replace(_cfg("wfp4_afp4", cache), model=dataclasses.replace(
                SensitivityConfig().model, device="cpu")),
            _cfg("wint4_afp8", cache)]
    report = shared_scores.precompute(cfgs)
    assert report.searches == 0 and report.count("not_shared") == 5
    reasons = {o.pair: o.reason for o in report.outcomes}
    assert "kl_div is not shared" in reasons["wfp8_afp8"]
    assert reasons["wint4_afp16"] == "autoquant.reuse_scores=false"
    assert reasons["wfp4_afp4"].startswith("the job does not validate")
    assert "the only format" in reasons["wint4_afp8"]
    assert not list(cache.glob("*.pth"))
