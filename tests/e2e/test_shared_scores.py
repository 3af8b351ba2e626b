"""One AutoQuantize search for many pairs on the embedded model: each pair's split-out state is
the state a search of that pair alone returns (bit for bit), jobs after the shared pre-pass are
cache hits with the outputs of a job of their own, and a sweep shares its scores."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from layer_sensitivity import autoquant, calibration, paths, pipeline, shared_scores
from layer_sensitivity.model import loader
from layer_sensitivity.reuse import Resources
from layer_sensitivity.schema import (
    AutoQuantConfig,
    DatasetConfig,
    Method,
    Precision,
    PresetEdit,
    QuantPairConfig,
    SensitivityConfig,
    TrackingConfig,
)
from tests.helpers import FAST, all_runs, artifact_text, run_cli

pytestmark = pytest.mark.slow

# W8A8, W8A16 (same weight bits: ModelOpt clips one to the other), INT8, INT4 weight-only, W4A8.
PAIRS = ("wfp8_afp8", "wfp8_afp16", "wint8_aint8", "wint4_afp16", "wint4_afp8")


def _pair(name: str) -> QuantPairConfig:
    d = yaml.safe_load((paths.CONF_DIR / "quant_pair" / f"{name}.yaml").read_text())
    return QuantPairConfig(**{**d, "weight": Precision(d["weight"]),
                              "activation": Precision(d["activation"]),
                              "edits": [PresetEdit(e) for e in d.get("edits") or []]})


def _same(a: Any, b: Any) -> bool:
    """Deep equality; tensors exactly, ModelOpt formats by config and by name."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return (isinstance(b, dict) and {str(k) for k in a} == {str(k) for k in b}
                and all(_same(v, b[k]) for k, v in a.items()))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if hasattr(a, "checkpoint_signature"):
        return a == b and str(a) == str(b)
    return bool(a == b)


@pytest.mark.parametrize(("method", "pairs"), [(Method.gradient, PAIRS),
                                               (Method.kl_div, ("wfp8_afp8", "wfp8_afp16"))],
                         ids=["gradient", "kl_div"])
def test_split_states_equal_single_format_searches(method: Method, pairs: tuple[str, ...]) -> None:
    """Every key of every split state (scores, costs, formats and their names, calibration,
    signatures) equals a single-format search's, though ModelOpt clipped the shared search's
    scores (the W8A8 / W8A16 pair ties by construction)."""
    p = pipeline.plan(SensitivityConfig(dataset=DatasetConfig(max_calib_samples=4)))
    loaded = loader.load(p.cfg.model, p.checkpoint, "cpu")
    batches = calibration.build_batches(list(p.captions.lines), loaded.tokenizer, 2, 128)
    cfgs = [pipeline.plan(dataclasses.replace(p.cfg, quant_pair=_pair(n))).quant_cfg for n in pairs]
    kw: dict[str, Any] = {"method": method, "modelopt_bits": 16.0,
                          "frozen_patterns": p.frozen_patterns, "num_score_steps": len(batches)}
    shared_model = copy.deepcopy(loaded.model)
    multi = autoquant.run_formats(shared_model, batches, cfgs, **kw)
    raw = shared_scores.raw_scores(shared_model)
    clipped = sum(s != raw[h][f.checkpoint_signature]
                  for h, st in multi["candidate_stats"].items()
                  for f, s in zip(st["formats"], st["scores"], strict=True))
    assert clipped > 0  # the shared search's own candidate_stats are no per-pair scores
    for i, cfg in enumerate(cfgs):
        single = autoquant.run(copy.deepcopy(loaded.model), batches, cfg, **kw)
        split = shared_scores.split_state(multi, raw, cfgs, i)
        assert set(split) == set(single)
        differ = [k for k in single if k != "best" and not _same(split[k], single[k])]
        assert differ == [], (pairs[i], differ)


def _cfg(pair: str, cache: Path, reuse: bool = True) -> SensitivityConfig:
    return SensitivityConfig(quant_pair=_pair(pair),
                             dataset=DatasetConfig(max_calib_samples=4),
                             autoquant=AutoQuantConfig(batch_size=2, score_cache_dir=str(cache),
                                                       reuse_scores=reuse,
                                                       effective_bits=None),
                             tracking=TrackingConfig(enabled=False))


def test_jobs_after_the_pre_pass_are_hits_with_a_single_jobs_outputs(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    pairs = ("wfp8_afp8", "wint8_aint8", "wint4_afp16", "wint4_afp8")
    report = shared_scores.precompute([_cfg(n, cache) for n in pairs])
    assert (report.searches, report.formats_searched, report.count("stored")) == (1, 4, 4)
    resources = Resources(keep=True)
    docs = {n: pipeline.run(pipeline.plan(_cfg(n, cache)), tmp_path / n, resources).manifest
            .to_json_dict() for n in pairs}
    assert resources.loads == 0 and all(d["score_cache"]["hit"] for d in docs.values())
    # A job of its own (no cache at all) writes the same scores, ranking, frontier and recipes.
    alone = pipeline.run(pipeline.plan(_cfg("wint4_afp8", cache, reuse=False)), tmp_path / "alone")
    shared = docs["wint4_afp8"]
    for key in ("layer_sensitivity", "sensitivity_ranking", "autoquant", "frontier"):
        assert shared.get(key) == alone.manifest.to_json_dict().get(key), key
    mine = sorted((tmp_path / "wint4_afp8" / pipeline.RECIPES_DIR).iterdir())
    theirs = sorted((tmp_path / "alone" / pipeline.RECIPES_DIR).iterdir())
    assert [f.name for f in mine] == [f.name for f in theirs] and mine
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(mine, theirs, strict=True))
    again = shared_scores.precompute([_cfg(n, cache) for n in pairs])
    assert again.searches == 0 and again.count("already_stored") == 4


def test_a_sweep_shares_its_scores_and_a_later_job_is_a_hit(tmp_path: Path) -> None:
    store, cache = tmp_path / "mlflow.db", tmp_path / "cache"
    common = [*FAST.split(), f"autoquant.score_cache_dir={cache}"]
    proc = run_cli(["-m", "quant_pair=fp8,int4,nvfp4", *common, f"hydra.sweep.dir={tmp_path}/m"],
                   store)
    assert proc.returncode == 1, proc.stderr[-3000:]  # nvfp4 needs CUDA: its own FAILED child
    uri = f"sqlite:///{store}"
    runs = all_runs(uri)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if r is not parent}
    report = json.loads(artifact_text(uri, parent.info.run_id, "shared_scores.json", tmp_path))
    assert report["searches"] == 1 and report["formats_searched"] == 2
    status = {j["pair"]: j["status"] for j in report["jobs"]}
    assert status == {"wfp8_afp8": "stored", "wint4_afp16": "stored", "wfp4_afp4": "not_shared"}
    assert parent.data.metrics["seconds/shared_scores"] > 0
    assert {n: r.info.status for n, r in children.items()} == {
        "wfp8_afp8/default/small": "FINISHED", "wint4_afp16/default/small": "FINISHED",
        "wfp4_afp4/default/small": "FAILED"}
    assert {children[n].data.tags["score_cache"] for n in (
        "wfp8_afp8/default/small", "wint4_afp16/default/small")} == {"hit"}
    single = run_cli(["quant_pair=int4", *common, f"hydra.run.dir={tmp_path}/one"], store)
    assert single.returncode == 0, single.stderr[-3000:]
    (doc,) = (tmp_path / "one").glob("*_quant_manifest.json")
    assert json.loads(doc.read_text())["score_cache"]["hit"] is True


def test_sigterm_during_the_shared_search_ends_the_sweep_killed(tmp_path: Path) -> None:
    """The pre-pass runs inside the sweep's parent run: interrupted, the parent ends KILLED, every
    job is NOT_STARTED, and no cache entry is left half-written (entries are published whole)."""
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import tool_env

    store, cache, log = tmp_path / "mlflow.db", tmp_path / "cache", tmp_path / "sweep.log"
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "layer_sensitivity", "-m", "quant_pair=fp8,int8,int4",
             "dataset.size=medium", f"autoquant.score_cache_dir={cache}",
             f"hydra.sweep.dir={tmp_path}/m"], cwd=tmp_path, env=tool_env(store),
            stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 900  # a busy machine loads slowly
        while "shared search: one AutoQuantize search" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=900) == 143, log.read_text()[-3000:]
    runs = all_runs(f"sqlite:///{store}")
    assert [r.info.status for r in runs] == ["KILLED"]  # the parent only: no job started
    summary = (tmp_path / "m" / "sweep_summary.csv").read_text()
    assert summary.count("NOT_STARTED") == 3 and "RUNNING" not in summary
    assert not list(cache.glob("*.pth"))
