"""Reusable AutoQuantize scores: complete, verified search states stored under a content key.

ModelOpt is never handed a cache file: it restores ``checkpoint=`` files with ``torch.load``
(full unpickling under ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``) and resumes from the state it
writes after calibration, which it cannot score from. So a search starts fresh (``checkpoint=None``
or a :meth:`ScoreCache.private_checkpoint` path) and only a state with every score is published;
a hit re-solves from the stored state itself (``_resolve_best_recipe``), without the model.

An entry ``<key>.pth`` is one file: a magic line, a JSON header line (key, payload length,
HMAC-SHA256 of key and payload under a per-user secret kept outside the cache directory) and the
payload (``torch.save`` of the state). Reading checks the length, the HMAC and the key before
unpickling, and unpickles with ``weights_only=True`` explicitly (torch then ignores
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``). A bad entry is moved to ``quarantine/`` with a warning and
reads as a miss.

Concurrency: no lock. An entry is written to a private temporary file, fsynced and renamed into
place, so readers see either no entry or a complete one. Two identical jobs started together both
compute; the last rename wins and both entries are complete and equivalent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import torch

from .calibration import Batch
from .errors import UserError
from .search_state import check_torch_load_environment, serialize, state_problem, weights_only_load

log = logging.getLogger(__name__)

KEY_VERSION = 2  # 2: HMAC'd single-file entries holding the returned (complete) state
MAGIC = b"LAYER-SENSITIVITY-SCORES/1\n"
MAX_HEADER = 4096
SECRET_BYTES = 32
KEY_FILE_ENV = "LAYER_SENSITIVITY_CACHE_KEY_FILE"
TMP_PREFIX = ".tmp-"
STALE_TMP_SECONDS = 24 * 3600
QUARANTINE = "quarantine"
_KEY_PATTERN = re.compile(r"^[0-9a-f]{32}$")


class InvalidState(ValueError):
    """A search state that must not become an entry (incomplete, or not weights-only loadable)."""


def batches_digest(batches: list[Batch]) -> str:
    """sha256 over the token ids and masks: covers captions, tokenizer, seq len, batching, order."""
    h = hashlib.sha256()
    for b in batches:
        for name in ("input_ids", "attention_mask"):
            t = b[name].detach().to("cpu", torch.int64).contiguous()
            h.update(name.encode() + str(tuple(t.shape)).encode() + t.numpy().tobytes())
    return h.hexdigest()


def tensors_digest(batches: list[Batch], *names: str) -> str:
    """sha256 over the named tensors of every batch (e.g. an image job's pixels and labels)."""
    h = hashlib.sha256()
    for b in batches:
        for name in names:
            t = b[name].detach().to("cpu").contiguous()
            h.update(name.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode()
                     + t.numpy().tobytes())
    return h.hexdigest()


def cache_key(ingredients: dict[str, Any]) -> str:
    blob = json.dumps({"key_version": KEY_VERSION, **ingredients}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def default_key_file() -> Path:
    """Where the per-user secret lives: never inside a cache directory."""
    if override := os.environ.get(KEY_FILE_ENV):
        return Path(override).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "layer-sensitivity" / "score-cache.key"


def check_key_file(key_file: Path | None = None) -> None:
    """An existing secret must be usable (a regular file of ours, private, the right size);
    checked when the job is planned, so a bad one is refused before any run exists. A missing one
    is fine: the cache creates it."""
    path = key_file or default_key_file()
    with contextlib.suppress(FileNotFoundError):
        _read_secret(path)


class ScoreCache:
    """Entries under ``root`` (created 0700), authenticated with the secret in ``key_file``."""

    def __init__(self, root: Path, key_file: Path | None = None) -> None:
        check_torch_load_environment()
        self.root = Path(root)
        _private_dir(self.root, "autoquant.score_cache_dir")
        self.key_file = key_file or default_key_file()
        self._secret = _read_or_create_secret(self.key_file)
        self.removed_leftovers = _remove_stale_temporaries(self.root)

    def key(self, ingredients: dict[str, Any]) -> str:
        return cache_key(ingredients)

    def path(self, key: str) -> Path:
        if not _KEY_PATTERN.match(key):
            raise ValueError(f"not a score-cache key: {key!r}")
        return self.root / f"{key}.pth"

    # Reading -------------------------------------------------------------------------------

    def load(self, key: str, expected_formats: list[str] | None = None) -> dict[str, Any] | None:
        """The verified search state stored under ``key``, or None (miss or bad entry)."""
        path = self.path(key)
        try:
            # No symlinks, and no blocking open of a FIFO someone put there.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as e:
            self._quarantine(path, None, f"unreadable ({e.strerror or e})")
            return None
        try:
            identity = os.fstat(fd)
            if not stat.S_ISREG(identity.st_mode):
                self._quarantine(path, identity, "not a regular file")
                return None
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read()
        except OSError as e:
            self._quarantine(path, None, f"unreadable ({e.strerror or e})")
            return None
        finally:
            os.close(fd)
        reason, state = self._verify(key, data, expected_formats)
        if reason:
            self._quarantine(path, identity, reason)
            return None
        return state

    def _verify(self, key: str, data: bytes,
                expected_formats: list[str] | None) -> tuple[str | None, dict[str, Any] | None]:
        if not data.startswith(MAGIC):
            return "not a score-cache entry (no header)", None
        end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER)
        if end < 0:
            return "header is truncated or too long", None
        try:
            header = json.loads(data[len(MAGIC):end])
            length, digest, stored_key = int(header["length"]), str(header["hmac"]), header["key"]
        except (ValueError, KeyError, TypeError):
            return "header is not valid JSON with key, length and hmac", None
        payload = data[end + 1:]
        if len(payload) != length:
            return f"truncated: {len(payload)} of {length} payload bytes", None
        if stored_key != key:
            return f"entry is for key {stored_key!r}, not this one", None
        if not hmac.compare_digest(self._mac(key, payload), digest):
            return "integrity check failed (HMAC does not match this user's secret)", None
        try:
            state = weights_only_load(payload)
        except Exception as e:  # anything the unpickler or torch raises is a bad entry
            return f"not loadable with weights_only=True ({type(e).__name__}: {_first_line(e)})", None
        problem = state_problem(state, expected_formats)
        if problem:
            return f"wrong structure: {problem}", None
        return None, state

    def _quarantine(self, path: Path, identity: os.stat_result | None, reason: str) -> None:
        target = self.root / QUARANTINE / f"{path.name}.{_timestamp()}"
        try:
            # Another job may have published a good entry since we read the bad one: keep it.
            if identity is not None and not _same_file(path, identity):
                log.warning("score cache entry %s was %s; it has been replaced since, left alone",
                            path, reason)
                return
            _private_dir(target.parent, "score-cache quarantine")
            os.replace(path, target)
        except (OSError, UserError) as e:
            log.warning("score cache entry %s is %s; could not move it aside (%s): recomputing",
                        path, reason, e)
            return
        log.warning("score cache entry %s is %s; moved to %s, recomputing", path, reason, target)

    # Writing -------------------------------------------------------------------------------

    def store(self, key: str, state: Mapping[str, Any] | Path) -> Path:
        """Publish a complete search state under ``key`` atomically; return the entry's path.

        ``state`` is what ``mtq.auto_quantize`` returned, or the ``checkpoint=`` file of a search
        that returned (ModelOpt's last save, after scoring; its ``best`` is still empty). A state
        without a score for every format of every group (ModelOpt's save after calibration, an
        interrupted search) or that would not load back with ``weights_only=True`` raises
        :class:`InvalidState` and writes nothing.
        """
        path = self.path(key)
        loaded = weights_only_load(state.read_bytes()) if isinstance(state, Path) else state
        problem = state_problem(loaded)
        if problem:
            raise InvalidState(f"search state not stored under {key}: {problem}")
        payload = serialize(loaded)
        try:  # what load will do: fail here rather than publish an entry every reader rejects
            problem = state_problem(weights_only_load(payload))
        except Exception as e:
            problem = f"does not load back with weights_only=True ({type(e).__name__}: {_first_line(e)})"
        if problem:
            raise InvalidState(f"search state not stored under {key}: {problem}")
        header = {"key": key, "length": len(payload), "hmac": self._mac(key, payload),
                  "created": _timestamp(), "torch": torch.__version__}
        _atomic_write(path, MAGIC + json.dumps(header).encode() + b"\n" + payload)
        return path

    @contextlib.contextmanager
    def private_checkpoint(self) -> Iterator[Path]:
        """A ``checkpoint=`` path for ModelOpt that no other process uses and that does not exist.

        It lives in a fresh private directory inside ``root`` (ModelOpt resumes from an existing
        file, so it must start absent) and is removed on exit whatever happens. The pipeline
        does not need it (``checkpoint=None`` writes nothing); it is here for callers that want
        ModelOpt's own intermediate saves without ever resuming from another job's.
        """
        directory = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=self.root))
        try:
            yield directory / "search.pth"  # a suffix, or ModelOpt takes the path for a directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def _mac(self, key: str, payload: bytes) -> str:
        return hmac.new(self._secret, key.encode() + b"\0" + payload, hashlib.sha256).hexdigest()


# Files ---------------------------------------------------------------------------------------------

def _private_dir(path: Path, what: str) -> None:
    """``path`` as a directory only its owner can enter: created 0700, a too-open one tightened."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as e:
        raise UserError(
            f"{what} '{path}' cannot be created or used ({e.strerror or e}). Point it at a "
            "directory you own on a local disk."
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise UserError(f"{what} '{path}' is not a directory. Point it at a directory you own.")
    if info.st_uid != os.getuid():
        raise UserError(
            f"{what} '{path}' belongs to another user (uid {info.st_uid}); its entries cannot be "
            "trusted. Point it at a directory you own."
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        try:
            path.chmod(0o700)
        except OSError as e:
            raise UserError(
                f"{what} '{path}' is open to other users (mode {stat.S_IMODE(info.st_mode):o}) and "
                f"cannot be made private ({e.strerror or e}). Run chmod 700 on it or use another one."
            ) from None
        log.warning("%s %s was open to other users (mode %o); set it to 700", what, path,
                    stat.S_IMODE(info.st_mode))


def _read_or_create_secret(key_file: Path) -> bytes:
    try:
        return _read_secret(key_file)
    except FileNotFoundError:
        pass
    _private_dir(key_file.parent, "score-cache key directory")
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=key_file.parent)  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(SECRET_BYTES))
            f.flush()
            os.fsync(f.fileno())
        # A hard link is an O_EXCL create of the finished file: it never replaces another
        # process's secret and never shows a half-written one. If one exists already, use it.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, key_file)
    except OSError as e:
        raise UserError(
            f"Score-cache secret '{key_file}' cannot be created ({e.strerror or e}). Set "
            f"{KEY_FILE_ENV} to a file path in a directory you own on a local disk."
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return _read_secret(key_file)


def _read_secret(key_file: Path) -> bytes:
    info = key_file.stat()
    fix = (f"Delete '{key_file}' (a new secret is created and cached scores are recomputed) or "
           f"set {KEY_FILE_ENV} to another path.")
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        raise UserError(f"Score-cache secret '{key_file}' is not a regular file you own. {fix}")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise UserError(
            f"Score-cache secret '{key_file}' is readable by other users (mode "
            f"{stat.S_IMODE(info.st_mode):o}), so cache entries could be forged. {fix}"
        )
    secret = key_file.read_bytes()
    if len(secret) != SECRET_BYTES:
        raise UserError(f"Score-cache secret '{key_file}' holds {len(secret)} bytes, not "
                        f"{SECRET_BYTES}. {fix}")
    return secret


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", suffix=".pth", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_temporaries(root: Path, max_age: float = STALE_TMP_SECONDS) -> list[Path]:
    """Delete ``.tmp-<pid>-*`` leftovers of killed processes: older than ``max_age``, pid gone."""
    removed = []
    now = time.time()
    for path in root.glob(f"{TMP_PREFIX}*"):
        pid = path.name[len(TMP_PREFIX):].split("-", 1)[0]
        try:
            old = now - path.lstat().st_mtime > max_age
            if not old or not pid.isdigit() or psutil.pid_exists(int(pid)):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue  # another process cleaned it first
        removed.append(path)
        log.info("removed leftover %s of a process that no longer runs", path)
    return removed


def _same_file(path: Path, identity: os.stat_result) -> bool:
    try:
        now = path.stat()
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (identity.st_dev, identity.st_ino)


def _timestamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""
