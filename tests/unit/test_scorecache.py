"""Score cache: private directory and secret, verified reads, quarantine, atomic complete writes.

States here are built from ModelOpt's own QuantRecipe objects with random scores; the real
search state of the embedded model is exercised in tests/e2e/test_scorecache_faults.py.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import pickle
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from layer_sensitivity import scorecache
from layer_sensitivity.errors import UserError
from layer_sensitivity.scorecache import InvalidState, ScoreCache


@pytest.fixture(autouse=True)
def _key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "config" / "score-cache.key"
    monkeypatch.setenv(scorecache.KEY_FILE_ENV, str(path))
    return path


@pytest.fixture
def cache(tmp_path: Path) -> ScoreCache:
    return ScoreCache(tmp_path / "cache")


def _state(groups: int = 4, seed: int = 0) -> dict[str, Any]:
    """A complete search state of the shape auto_quantize returns, with random scores."""
    from modelopt.torch.quantization.algorithms import QuantRecipe

    fp8, none = QuantRecipe("FP8_DEFAULT_CFG"), QuantRecipe(None)
    scores = torch.rand(groups, generator=torch.Generator().manual_seed(seed)).tolist()
    stats = {
        f"model.layers.{i}.mlp.down_proj.quant_recipe": {
            "formats": [fp8, none], "scores": [s, 0], "costs": [64.0 * (i + 1), 128.0 * (i + 1)],
            "module_names": [f"model.layers.{i}.mlp.down_proj"], "cost_weight": 1.0,
        }
        for i, s in enumerate(scores)
    }
    return {
        "method": "gradient", "cost_denominator": sum(s["costs"][1] for s in stats.values()),
        "candidate_stats": stats, "quantizer_states": {},
        "best": {"recipe": {h: fp8 for h in stats}, "constraints": {"effective_bits": 8.0},
                 "score": sum(scores), "is_satisfied": True},
    }


def _key(name: str = "job") -> str:
    return scorecache.cache_key({"job": name})


def _signed_entry(key: str, payload: bytes, secret: bytes) -> bytes:
    """An entry in the documented layout: magic, JSON header line, payload."""
    digest = hmac.new(secret, key.encode() + b"\0" + payload, hashlib.sha256).hexdigest()
    header = {"key": key, "length": len(payload), "hmac": digest}
    return scorecache.MAGIC + json.dumps(header).encode() + b"\n" + payload


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _quarantined(cache: ScoreCache) -> list[Path]:
    return sorted((cache.root / scorecache.QUARANTINE).glob("*"))


def _assert_rejected(cache: ScoreCache, key: str, caplog: pytest.LogCaptureFixture,
                     reason: str) -> None:
    entry = cache.path(key)
    with caplog.at_level(logging.WARNING, logger=scorecache.__name__):
        assert cache.load(key) is None
    assert not entry.exists()
    (moved,) = _quarantined(cache)
    assert moved.name.startswith(entry.name + ".")
    assert str(entry) in caplog.text and reason in caplog.text


# Directory and secret -------------------------------------------------------------------------

def test_cache_dir_is_private_and_the_secret_lives_outside(cache: ScoreCache, _key_file: Path) -> None:
    assert stat.S_IMODE(cache.root.stat().st_mode) == 0o700
    assert cache.key_file == _key_file and cache.root not in _key_file.parents
    assert stat.S_IMODE(_key_file.stat().st_mode) == 0o600
    assert len(_key_file.read_bytes()) == scorecache.SECRET_BYTES
    assert stat.S_IMODE(_key_file.parent.stat().st_mode) == 0o700
    secret = _key_file.read_bytes()
    ScoreCache(cache.root)
    assert _key_file.read_bytes() == secret  # reused, not replaced
    assert not list(_key_file.parent.glob(".tmp-*"))


def test_default_secret_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(scorecache.KEY_FILE_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert scorecache.default_key_file() == tmp_path / "xdg" / "layer-sensitivity" / "score-cache.key"


def test_an_open_cache_dir_is_tightened(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "open"
    root.mkdir(mode=0o755)
    root.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger=scorecache.__name__):
        ScoreCache(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert str(root) in caplog.text


def test_a_cache_dir_that_is_a_file_is_a_user_error(tmp_path: Path) -> None:
    root = tmp_path / "file"
    root.write_text("x")
    with pytest.raises(UserError, match=str(root)):
        ScoreCache(root)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a directory to another user")
def test_a_cache_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "theirs"
    root.mkdir(mode=0o700)
    os.chown(root, 12345, 12345)
    with pytest.raises(UserError, match="another user"):
        ScoreCache(root)


def test_a_readable_secret_is_refused(tmp_path: Path, _key_file: Path) -> None:
    ScoreCache(tmp_path / "cache")
    _key_file.chmod(0o644)
    with pytest.raises(UserError, match=f"{_key_file}.*readable by other users"):
        ScoreCache(tmp_path / "cache")


def test_a_damaged_secret_is_refused(tmp_path: Path, _key_file: Path) -> None:
    _key_file.parent.mkdir(mode=0o700)
    _key_file.write_bytes(b"short")
    _key_file.chmod(0o600)
    with pytest.raises(UserError, match="5 bytes"):
        ScoreCache(tmp_path / "cache")


def test_contradictory_torch_load_settings_are_a_user_error(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(UserError, match="Unset TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        ScoreCache(tmp_path / "cache")


# Round trip and misses -------------------------------------------------------------------------

def test_store_then_load_gives_the_same_state(cache: ScoreCache) -> None:
    state, key = _state(), _key()
    path = cache.store(key, state)
    assert path == cache.path(key) and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(cache.root.glob(".tmp-*"))
    loaded = cache.load(key, expected_formats=["FP8_DEFAULT_CFG(effective-bits: 8.0)"])
    assert loaded is not None
    assert type(loaded["candidate_stats"]) is dict
    for handle, stats in state["candidate_stats"].items():
        got = loaded["candidate_stats"][handle]
        assert got["scores"] == stats["scores"] and got["costs"] == stats["costs"]
        assert [str(f) for f in got["formats"]] == [str(f) for f in stats["formats"]]
        assert got["formats"] == stats["formats"]  # QuantRecipe objects again, not strings
    assert {h: str(f) for h, f in loaded["best"]["recipe"].items()} == {
        h: str(f) for h, f in state["best"]["recipe"].items()}
    assert cache.load(key, expected_formats=["FP8_DEFAULT_CFG"]) is not None  # name alone


def test_a_missing_entry_is_a_quiet_miss(cache: ScoreCache, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=scorecache.__name__):
        assert cache.load(_key()) is None
    assert caplog.text == "" and not _quarantined(cache)


def test_keys_are_checked(cache: ScoreCache) -> None:
    with pytest.raises(ValueError, match="not a score-cache key"):
        cache.path("../../etc/passwd")
    assert cache.key({"a": 1}) == scorecache.cache_key({"a": 1}) != cache.key({"a": 2})


# Bad entries: never restored, moved aside, warned about ----------------------------------------

def test_truncated_entry(cache: ScoreCache, caplog: pytest.LogCaptureFixture) -> None:
    key = _key()
    path = cache.store(key, _state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_rejected(cache, key, caplog, "truncated")
    assert cache.load(key) is None  # the next job recomputes instead of failing again


def test_entry_signed_with_another_secret(cache: ScoreCache, caplog: pytest.LogCaptureFixture) -> None:
    key = _key()
    payload = _torch_bytes(_state(seed=1))
    cache.path(key).write_bytes(_signed_entry(key, payload, os.urandom(scorecache.SECRET_BYTES)))
    _assert_rejected(cache, key, caplog, "HMAC")


def test_plain_weights_only_file_with_fabricated_scores(cache: ScoreCache,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    key = _key()
    cache.path(key).write_bytes(_torch_bytes(_state(seed=2)))  # what the old cache accepted
    _assert_rejected(cache, key, caplog, "no header")


def test_entry_of_another_key(cache: ScoreCache, caplog: pytest.LogCaptureFixture) -> None:
    key, other = _key("a"), _key("b")
    cache.store(other, _state()).rename(cache.path(key))
    _assert_rejected(cache, key, caplog, "for key")


def test_wrong_structure_even_when_signed(cache: ScoreCache, caplog: pytest.LogCaptureFixture,
                                          _key_file: Path) -> None:
    key, state = _key(), _state()
    next(iter(state["candidate_stats"].values()))["scores"] = []  # scoring never finished
    cache.path(key).write_bytes(_signed_entry(key, _torch_bytes(state), _key_file.read_bytes()))
    _assert_rejected(cache, key, caplog, "no score for every format")


def test_other_formats_than_expected(cache: ScoreCache, caplog: pytest.LogCaptureFixture) -> None:
    key = _key()
    cache.store(key, _state())
    with caplog.at_level(logging.WARNING, logger=scorecache.__name__):
        assert cache.load(key, expected_formats=["INT8_DEFAULT_CFG"]) is None
    assert "differ from the expected" in caplog.text and len(_quarantined(cache)) == 1


def test_a_directory_or_symlink_at_the_entry(cache: ScoreCache, caplog: pytest.LogCaptureFixture,
                                             tmp_path: Path) -> None:
    key = _key()
    cache.path(key).mkdir()
    _assert_rejected(cache, key, caplog, "not a regular file")
    target = tmp_path / "elsewhere.pth"
    target.write_bytes(b"x")
    cache.path(key).symlink_to(target)
    with caplog.at_level(logging.WARNING, logger=scorecache.__name__):
        assert cache.load(key) is None
    assert target.exists() and not cache.path(key).is_symlink()


class _Planted:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("signed", [False, True], ids=["planted", "planted-with-stolen-secret"])
def test_code_in_an_entry_never_runs(cache: ScoreCache, caplog: pytest.LogCaptureFixture,
                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     _key_file: Path, signed: bool) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker, key = tmp_path / "code-ran", _key()
    payload = _torch_bytes({"method": "gradient", "x": _Planted(marker)})
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Planted(marker)))  # the payload does run code when unpickled
    assert marker.exists()
    marker.unlink()
    data = _signed_entry(key, payload, _key_file.read_bytes()) if signed else payload
    cache.path(key).write_bytes(data)
    _assert_rejected(cache, key, caplog, "weights_only=True" if signed else "no header")
    assert not marker.exists()


# Writing ---------------------------------------------------------------------------------------

def test_incomplete_states_never_become_entries(cache: ScoreCache) -> None:
    key = _key()
    calibrated_only = {**_state(), "candidate_stats": {}}  # ModelOpt's save before scoring
    with pytest.raises(InvalidState, match="candidate_stats"):
        cache.store(key, calibrated_only)
    half_scored = _state()
    next(iter(half_scored["candidate_stats"].values()))["scores"].pop()
    with pytest.raises(InvalidState, match="no score for every format"):
        cache.store(key, half_scored)
    half_solved = _state()
    half_solved["best"]["recipe"].popitem()
    with pytest.raises(InvalidState, match="every group"):
        cache.store(key, half_solved)
    assert not cache.path(key).exists() and not list(cache.root.glob(".tmp-*"))


def test_a_scored_but_unsolved_state_is_an_entry(cache: ScoreCache) -> None:
    """ModelOpt's last checkpoint save: every score, best still empty (readers re-solve)."""
    key, state = _key(), _state()
    state["best"] = {"recipe": {}, "constraints": {}, "score": float("inf"), "is_satisfied": False}
    cache.store(key, state)
    loaded = cache.load(key)
    assert loaded is not None and loaded["best"]["recipe"] == {}
    assert [s["scores"] for s in loaded["candidate_stats"].values()] == [
        s["scores"] for s in state["candidate_stats"].values()]


def test_store_from_a_file(cache: ScoreCache, tmp_path: Path) -> None:
    from modelopt.torch.utils.serialization import safe_save

    file, key = tmp_path / "state.pth", _key()
    safe_save(_state(seed=3), str(file))
    cache.store(key, file)
    loaded = cache.load(key)
    assert loaded is not None
    assert [s["scores"] for s in loaded["candidate_stats"].values()] == [
        s["scores"] for s in _state(seed=3)["candidate_stats"].values()]


def test_private_checkpoint_is_fresh_unique_and_removed(cache: ScoreCache) -> None:
    with cache.private_checkpoint() as first, cache.private_checkpoint() as second:
        assert first != second and first.suffix == ".pth"
        assert not first.exists() and first.parent.is_dir() and cache.root in first.parents
        assert stat.S_IMODE(first.parent.stat().st_mode) == 0o700
        first.write_bytes(b"partial")
    assert not first.parent.exists() and not second.parent.exists()
    with pytest.raises(KeyboardInterrupt), cache.private_checkpoint() as third:
        third.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert not third.parent.exists()


def test_leftovers_of_dead_processes_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    ScoreCache(root)
    dead = _dead_pid()
    day_ago = time.time() - 2 * scorecache.STALE_TMP_SECONDS
    old_dead_file = root / f".tmp-{dead}-abc.pth"
    old_dead_dir = root / f".tmp-{dead}-def"
    old_alive = root / f".tmp-{os.getpid()}-ghi.pth"
    fresh_dead = root / f".tmp-{dead}-jkl.pth"
    entry = root / f"{_key()}.pth"
    for f in (old_dead_file, old_alive, fresh_dead, entry):
        f.write_bytes(b"x")
    old_dead_dir.mkdir()
    (old_dead_dir / "search.pth").write_bytes(b"x")
    for f in (old_dead_file, old_dead_dir, old_alive, entry):
        os.utime(f, (day_ago, day_ago))
    removed = ScoreCache(root).removed_leftovers
    assert sorted(removed) == sorted([old_dead_file, old_dead_dir])
    assert not old_dead_file.exists() and not old_dead_dir.exists()
    assert old_alive.exists() and fresh_dead.exists() and entry.exists()


def _dead_pid() -> int:
    """A process id no process holds now (as a killed writer's leftovers carry)."""
    import psutil

    return next(pid for pid in range(4_000_000, 1, -1) if not psutil.pid_exists(pid))
