"""Score-cache faults with real AutoQuantize states of the embedded model.

An interrupted search never becomes an entry, ModelOpt's own checkpoint files are never accepted,
concurrent writers publish one complete entry, and a stored state re-solves (with ModelOpt's
solver, no model) exactly as the state auto_quantize returned.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from layer_sensitivity import autoquant, calibration, scorecache
from layer_sensitivity.model import loader, scope
from layer_sensitivity.schema import Method, ModelConfig
from layer_sensitivity.scorecache import InvalidState, ScoreCache

pytestmark = pytest.mark.slow

ASSETS = Path(scorecache.__file__).parent / "assets"
TINY_MODEL = ASSETS / "tiny-qwen3-vl"
FROZEN = ["*visual*"]
FP8 = "FP8_DEFAULT_CFG(effective-bits: 8.0)"


@dataclass
class Search:
    state: dict[str, Any]
    batches: list[calibration.Batch]
    quant_cfg: dict[str, Any]
    modelopt_bits: float
    final_checkpoint: Path  # a copy of what ModelOpt wrote to checkpoint= by the end


def _load() -> loader.LoadedModel:
    return loader.load(ModelConfig(name="tiny", path=str(TINY_MODEL)), TINY_MODEL, "cpu")


def _env(key_file: Path) -> dict[str, str]:
    return {**os.environ, scorecache.KEY_FILE_ENV: str(key_file), "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config") / "score-cache.key"


@pytest.fixture(autouse=True)
def _private_key(key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(scorecache.KEY_FILE_ENV, str(key_file))


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory, key_file: Path) -> Search:
    """One complete FP8 search of the embedded model, run with a private checkpoint path."""
    import modelopt.torch.quantization as mtq

    torch.set_num_threads(1)
    torch.manual_seed(0)
    work = tmp_path_factory.mktemp("search")
    loaded = _load()
    captions = calibration.read_captions(ASSETS / "captions" / "captions.txt", 8)
    batches = calibration.build_batches(captions.lines, loaded.tokenizer, 4, 32)
    quant_cfg = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    in_scope, frozen = scope.weight_counts(loaded.model, FROZEN)
    given = scope.modelopt_bits(12.0, in_scope, frozen)
    cache = ScoreCache(work / "cache", key_file=key_file)
    with cache.private_checkpoint() as checkpoint:
        state = autoquant.run(loaded.model, batches, quant_cfg, method=Method.gradient,
                              modelopt_bits=given, frozen_patterns=FROZEN, num_score_steps=2,
                              checkpoint=str(checkpoint))
        final = shutil.copy(checkpoint, work / "final-checkpoint.pth")
    assert not checkpoint.parent.exists()
    return Search(state, batches, quant_cfg, given, Path(final))


def _solution(state: dict[str, Any], target: float) -> dict[str, Any]:
    """What the pipeline derives from a state alone: recipe, ModelOpt bits achieved, score."""
    from modelopt.torch.quantization.algorithms import _resolve_best_recipe

    recipe = _resolve_best_recipe(state, {"effective_bits": target})
    stats = state["candidate_stats"]
    index = {h: stats[h]["formats"].index(f) for h, f in recipe.items()}
    cost = sum(stats[h]["costs"][i] for h, i in index.items())
    # ModelOpt's own fallback: its checkpoint file is saved before cost_denominator is set.
    denominator = state.get("cost_denominator") or sum(
        s.get("uncompressed_cost", max(s["costs"])) for s in stats.values())
    return {"recipe": {h: str(f) for h, f in recipe.items()},
            "effective_bits": 16.0 * cost / denominator,
            "score": sum(stats[h]["scores"][i] for h, i in index.items())}


def _scores(state: dict[str, Any]) -> dict[str, list[Any]]:
    return {h: list(s["scores"]) for h, s in state["candidate_stats"].items()}


def _quant_config(state: dict[str, Any], target: float) -> str:
    import modelopt.torch.quantization as mtq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return json.dumps(mtq.get_auto_quantize_config(state, {"effective_bits": target}),
                          sort_keys=True, default=str)


def test_stored_state_resolves_like_the_returned_one(search: Search, tmp_path: Path) -> None:
    cache, key = ScoreCache(tmp_path / "cache"), scorecache.cache_key({"test": "round trip"})
    cache.store(key, search.state)
    loaded = cache.load(key, expected_formats=[FP8])
    assert loaded is not None
    assert _scores(loaded) == _scores(search.state)
    assert any(s > 0 for scores in _scores(loaded).values() for s in scores)
    formats = {str(f) for s in loaded["candidate_stats"].values() for f in s["formats"]}
    assert formats == {FP8, "NONE(effective-bits: 16.0)"}
    # The solve of the original search, recomputed from the stored state alone.
    best = search.state["best"]
    again = _solution(loaded, search.modelopt_bits)
    assert again["recipe"] == {h: str(f) for h, f in best["recipe"].items()}
    assert again["effective_bits"] == pytest.approx(best["constraints"]["effective_bits"])
    assert again["score"] == pytest.approx(best["score"])
    assert best["is_satisfied"] and again["effective_bits"] <= search.modelopt_bits + 1e-9
    for target in (search.modelopt_bits - 1.5, search.modelopt_bits + 2.0, 16.0):
        assert _solution(loaded, target) == _solution(search.state, target)
        assert _quant_config(loaded, target) == _quant_config(search.state, target)


def test_a_fresh_process_reads_the_entry(search: Search, tmp_path: Path, key_file: Path) -> None:
    """Only scorecache imported: ModelOpt's safe globals must still be registered for the load."""
    cache, key = ScoreCache(tmp_path / "cache"), scorecache.cache_key({"test": "fresh process"})
    cache.store(key, search.state)
    code = ("import json, sys; from pathlib import Path; from layer_sensitivity import scorecache\n"
            "s = scorecache.ScoreCache(Path(sys.argv[1])).load(sys.argv[2])\n"
            "print(json.dumps({h: [[str(f) for f in v['formats']], v['scores']] "
            "for h, v in s['candidate_stats'].items()}))")
    proc = subprocess.run([sys.executable, "-c", code, str(cache.root), key], env=_env(key_file),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got == {h: [[str(f) for f in s["formats"]], s["scores"]]
                   for h, s in search.state["candidate_stats"].items()}


def test_a_finished_search_checkpoint_is_stored_never_restored(search: Search, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    cache, key = ScoreCache(tmp_path / "cache"), scorecache.cache_key({"test": "checkpoint"})
    # ModelOpt saves after scoring but before it solves: every score, no best recipe yet.
    cache.store(key, search.final_checkpoint)
    loaded = cache.load(key)
    assert loaded is not None and loaded["best"]["recipe"] == {}
    assert loaded["cost_denominator"] is None and search.state["cost_denominator"] > 0
    assert _scores(loaded) == _scores(search.state)
    assert _solution(loaded, search.modelopt_bits) == _solution(search.state, search.modelopt_bits)
    shutil.copy(search.final_checkpoint, cache.path(key))  # the raw file: no header, no HMAC
    with caplog.at_level(logging.WARNING, logger=scorecache.__name__):
        assert cache.load(key) is None
    assert "no header" in caplog.text and not cache.path(key).exists()


class _Interrupted(KeyboardInterrupt):
    pass


def test_an_interrupted_search_leaves_nothing_to_resume(search: Search, tmp_path: Path,
                                                        key_file: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    import modelopt.torch.quantization as mtq

    cache, key = ScoreCache(tmp_path / "cache"), scorecache.cache_key({"test": "interrupted"})
    loaded, calls = _load(), []

    def forward(m: torch.nn.Module, batch: calibration.Batch) -> Any:
        calls.append(1)
        if len(calls) > len(search.batches):  # calibration done: stop during scoring (Ctrl-C)
            raise _Interrupted
        return m(**batch, use_cache=False)

    partial = tmp_path / "partial.pth"
    with pytest.raises(_Interrupted), cache.private_checkpoint() as checkpoint:
        try:
            mtq.auto_quantize(loaded.model, constraints={"effective_bits": search.modelopt_bits},
                              quantization_formats=[search.quant_cfg], data_loader=search.batches,
                              forward_step=forward, loss_func=lambda out, batch: out.loss,
                              disabled_layers=FROZEN, num_calib_steps=len(search.batches),
                              num_score_steps=2, method="gradient", checkpoint=str(checkpoint))
        finally:
            shutil.copy(checkpoint, partial)  # ModelOpt did save the calibrated, unscored state
    assert not checkpoint.parent.exists()
    assert not list(cache.root.glob(".tmp-*")) and not cache.path(key).exists()
    saved = torch.load(partial, weights_only=True)
    assert saved["quantizer_states"] and not saved["candidate_stats"]
    with pytest.raises(InvalidState, match="candidate_stats"):
        cache.store(key, partial)
    # Even signed with this user's secret (a publishing bug), the structure check refuses it.
    payload = partial.read_bytes()
    digest = hmac.new(key_file.read_bytes(), key.encode() + b"\0" + payload, hashlib.sha256)
    header = {"key": key, "length": len(payload), "hmac": digest.hexdigest()}
    cache.path(key).write_bytes(scorecache.MAGIC + json.dumps(header).encode() + b"\n" + payload)
    with caplog.at_level(logging.WARNING, logger=scorecache.__name__):
        assert cache.load(key) is None
    assert "wrong structure" in caplog.text and str(cache.path(key)) in caplog.text
    # The identical job again: a fresh search, nothing resumed, the same scores as uninterrupted.
    with cache.private_checkpoint() as checkpoint:
        state = autoquant.run(_load().model, search.batches, search.quant_cfg,
                              method=Method.gradient, modelopt_bits=search.modelopt_bits,
                              frozen_patterns=FROZEN, num_score_steps=2, checkpoint=str(checkpoint))
    cache.store(key, state)
    again = cache.load(key)
    assert again is not None
    assert _scores(again) == {h: pytest.approx(v, rel=1e-5) for h, v in _scores(search.state).items()}


_WRITER = """
import sys, time
from pathlib import Path
from layer_sensitivity import scorecache
root, key, state, ready, go = sys.argv[1:6]
cache = scorecache.ScoreCache(Path(root))
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.01)
for _ in range(10):
    cache.store(key, Path(state))
"""


def test_concurrent_writers_publish_one_complete_entry(search: Search, tmp_path: Path,
                                                       key_file: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    from modelopt.torch.utils.serialization import safe_save

    cache, key = ScoreCache(tmp_path / "cache"), scorecache.cache_key({"test": "concurrent"})
    state_file, go = tmp_path / "state.pth", tmp_path / "go"
    safe_save(search.state, str(state_file))
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(cache.root), key,
                                 str(state_file), str(r), str(go)], env=_env(key_file),
                                stderr=subprocess.PIPE, text=True) for r in ready]
    deadline = time.monotonic() + 300
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    reads: list[bool] = []
    with caplog.at_level(logging.WARNING, logger=scorecache.__name__):
        while any(w.poll() is None for w in writers):
            reads.append(cache.load(key) is not None)
            time.sleep(0.005)  # leave the writers CPU on a small machine
    errors = [w.stderr.read() if w.stderr else "" for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errors
    # Once an entry existed every read got a complete one: never a partial or torn file.
    first_hit = reads.index(True) if True in reads else len(reads)
    assert all(reads[first_hit:]) and caplog.text == ""
    final = cache.load(key)
    assert final is not None and _scores(final) == _scores(search.state)
    assert not list(cache.root.glob(".tmp-*"))
    assert not (cache.root / scorecache.QUARANTINE).exists()
    assert sorted(p.name for p in cache.root.iterdir()) == [f"{key}.pth"]
