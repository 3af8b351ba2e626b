"""Score reuse (cache key, hit, miss), the bit-target frontier, and in-process sharing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from layer_sensitivity import calibration, pipeline, scorecache
from layer_sensitivity.cli.config_store import CONF_DIR
from layer_sensitivity.errors import UserError
from layer_sensitivity.reuse import Resources
from layer_sensitivity.schema import SensitivityConfig

from .conftest import TINY_MODEL, run_cli

FAST = ["dataset.max_calib_samples=8", "autoquant.batch_size=4", "tracking=none"]


def _job(tmp_path: Path, *overrides: str) -> SensitivityConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sensitivity", overrides=[*FAST, f"autoquant.score_cache_dir={tmp_path}/cache",
                                                *overrides])
    cfg.output_layout.dir = str(tmp_path / "out")
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def _key(tmp_path: Path, *overrides: str, fingerprint: str = "fp") -> str:
    p = pipeline.plan(_job(tmp_path, *overrides))
    tok = AutoTokenizer.from_pretrained(TINY_MODEL, local_files_only=True)
    c = p.cfg
    batches = calibration.build_batches(p.captions.lines, tok, c.autoquant.batch_size,
                                        c.dataset.calib_seq_len, c.dataset.pad_to_longest,
                                        c.dataset.sort_by_length)
    steps = -(-p.score_samples // c.autoquant.batch_size)
    import torch

    return scorecache.cache_key(pipeline.score_key_ingredients(p, fingerprint, torch.float32,
                                                               batches, steps))


def test_every_ingredient_changes_the_key(tmp_path: Path) -> None:
    base = _key(tmp_path)
    assert _key(tmp_path) == base  # deterministic
    variants = {
        "model": _key(tmp_path, fingerprint="other"),
        "samples": _key(tmp_path, "dataset.max_calib_samples=12"),
        "captions": _key(tmp_path, f"dataset.captions_path={_other_captions(tmp_path)}"),
        "seq_len": _key(tmp_path, "dataset.calib_seq_len=6"),
        "batch_size": _key(tmp_path, "autoquant.batch_size=2"),
        "score_steps": _key(tmp_path, "autoquant.score_size=4"),
        "padding": _key(tmp_path, "dataset.pad_to_longest=false", "dataset.calib_seq_len=32"),
        "sorting": _key(tmp_path, "dataset.sort_by_length=true"),
        "method": _key(tmp_path, "autoquant.method=kl_div"),
        "coverage": _key(tmp_path, "autoquant.coverage=full"),
        "pair": _key(tmp_path, "quant_pair=int8"),
        "int4_blocks": _key(tmp_path, "quant_pair=int4"),
        "granularity": _key(tmp_path, "quant_pair=int8", "quant_granularity=a_per_token_dynamic"),
    }
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants), variants
    # What the scores do not depend on leaves the key alone.
    assert _key(tmp_path, "autoquant.effective_bits=12", "tracking.experiment=x") == base


def _other_captions(tmp_path: Path) -> Path:
    f = tmp_path / "other.txt"
    f.write_text("".join(f"a different caption {i} of a green tram\n" for i in range(20)))
    return f


def _manifest(result: pipeline.Result) -> dict[str, Any]:
    return json.loads(result.files[0].read_text())


def _scores(m: dict[str, Any]) -> dict[str, float]:
    return {h: s["importance"] for h, s in m["layer_sensitivity"].items()}


def test_hit_reuses_scores_and_a_miss_recomputes(tmp_path: Path) -> None:
    first = pipeline.run(pipeline.plan(_job(tmp_path)), tmp_path / "a")
    assert first.manifest["score_cache"]["hit"] is False
    assert Path(first.manifest["score_cache"]["path"]).is_file()
    again = pipeline.run(pipeline.plan(_job(tmp_path, "autoquant.effective_bits=12")), tmp_path / "b")
    assert again.manifest["score_cache"] == {**first.manifest["score_cache"], "hit": True}
    assert _scores(again.manifest) == _scores(first.manifest)
    assert again.manifest["autoquant"]["effective_bits_achieved"] > 8.0  # re-solved for 12 bits
    miss = pipeline.run(pipeline.plan(_job(tmp_path, "autoquant.score_size=4")), tmp_path / "c")
    assert miss.manifest["score_cache"]["hit"] is False
    assert miss.manifest["score_cache"]["key"] != first.manifest["score_cache"]["key"]
    assert _scores(miss.manifest) != _scores(first.manifest)
    off = pipeline.run(pipeline.plan(_job(tmp_path, "autoquant.reuse_scores=false")), tmp_path / "d")
    assert off.manifest["score_cache"] is None
    assert _scores(off.manifest) == pytest.approx(_scores(first.manifest), rel=1e-5)


def test_frontier_resolves_every_target_from_one_search(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    proc = run_cli([*FAST[:-1], "autoquant.effective_bits=[8,10,12,14]",
                    f"autoquant.score_cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/out"],
                   store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(next((tmp_path / "out").glob("*_quant_manifest.json")).read_text())
    points = m["frontier"]
    assert [p["target_bits"] for p in points] == [8, 10, 12, 14]
    achieved = [p["achieved_bits"] for p in points]
    scores = [p["total_score"] for p in points]
    assert all(p["satisfied"] for p in points)
    assert achieved == sorted(achieved) and achieved[0] == pytest.approx(8.0)
    assert all(a <= t + 1e-6 for a, t in zip(achieved, [8, 10, 12, 14], strict=True))
    # ModelOpt's solver spends most of each budget, so fewer groups stay quantized as it grows.
    quantized = [sum(not f.startswith("NONE") for f in p["recipe"].values()) for p in points]
    assert quantized[0] == 17 and quantized == sorted(quantized, reverse=True) and quantized[-1] < 17
    assert all(s > 0 for s in scores) and scores[0] == pytest.approx(m["autoquant"]["total_score"])
    assert m["scheme"]["effective_bits_requested"] == 8
    assert "## Score versus bits" in (tmp_path / "out" / "layer-sensitivity-report.md").read_text()
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    history = client.get_metric_history(run.info.run_id, "frontier/effective_bits_achieved")
    assert sorted(h.step for h in history) == [800, 1000, 1200, 1400]
    assert {h.step: h.value for h in history}[1200] == pytest.approx(achieved[2])
    names = {a.path for a in client.list_artifacts(run.info.run_id, "frontier")}
    assert names == {f"frontier/recipe_{b}bits.json" for b in (8, 10, 12, 14)}


@pytest.mark.parametrize("value", ["[]", "[8,8]", "[8,abc]"])
def test_bad_frontiers_are_user_errors(tmp_path: Path, value: str) -> None:
    with pytest.raises(UserError, match="effective_bits"):
        pipeline.plan(_job(tmp_path, f"autoquant.effective_bits={value}"))


def test_frontier_target_below_format_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="effective_bits=6 is out of reach"):
        pipeline.plan(_job(tmp_path, "autoquant.effective_bits=[8,6]"))


def test_one_process_loads_once_and_matches_fresh_processes(tmp_path: Path) -> None:
    shared = Resources(keep=True)
    jobs = {"wfp8_afp8": "quant_pair=fp8", "wint8_aint8": "quant_pair=int8"}
    in_process = {}
    for pair, override in jobs.items():
        job = _job(tmp_path, override, "autoquant.reuse_scores=false")
        in_process[pair] = _scores(pipeline.run(pipeline.plan(job), tmp_path / pair,
                                                resources=shared).manifest)
    assert (shared.loads, shared.tokenizations) == (1, 1)
    for pair, override in jobs.items():
        out = tmp_path / f"fresh-{pair}"
        proc = run_cli([*FAST, override, "autoquant.reuse_scores=false", f"hydra.run.dir={out}"],
                       tmp_path / "unused.db")
        assert proc.returncode == 0, proc.stderr[-2000:]
        fresh = json.loads(next(out.glob("*_quant_manifest.json")).read_text())
        assert in_process[pair] == pytest.approx(_scores(fresh), rel=1e-5)
    assert in_process["wfp8_afp8"] != pytest.approx(in_process["wint8_aint8"], rel=1e-3)
