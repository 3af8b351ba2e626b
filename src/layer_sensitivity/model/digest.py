"""What identifies a checkpoint: a cheap fingerprint of its headers, and a digest of its weights'
bytes (which also refuses non-finite weights). Stored scores are keyed on both."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..errors import UserError

# Written by model.init=random into its weightless directory (init, seed, tokenizer origin); part
# of the fingerprint, so random-init scores never mix with a real checkpoint's.
RANDOM_INIT_MARKER = "random_init.json"
WEIGHTS_MEMO_VERSION = 1
_READ_CHUNK = 16 << 20


def fingerprint(path: Path) -> str:
    """sha256 over config.json and the weights' index (tensor names, shapes, dtypes, offsets).

    Cheap for any size of checkpoint: safetensors headers are read, not the weights.
    """
    marker = path / RANDOM_INIT_MARKER  # random weights: seed and tokenizer origin
    index = path / "model.safetensors.index.json"
    headers = []
    for shard in sorted(path.glob("*.safetensors")):
        with shard.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            headers.append((shard.name, f.read(n)))
    return fingerprint_of((path / "config.json").read_bytes(),
                          marker.read_bytes() if marker.is_file() else None,
                          index.read_bytes() if index.is_file() else None, headers)


def fingerprint_of(config_json: bytes, marker: bytes | None = None, index: bytes | None = None,
                   headers: Iterable[tuple[str, bytes]] = ()) -> str:
    """:func:`fingerprint` from the files' bytes (for a directory not written yet)."""
    h = hashlib.sha256(config_json)
    for part in (marker, index):
        if part is not None:
            h.update(part)
    for name, header in headers:
        h.update(name.encode() + header)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ShardMemo:
    """A shard's digest remembered by the shard's identity, to be written by :meth:`write`."""

    file: Path
    doc: dict[str, Any]

    def write(self) -> None:
        self.file.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the score cache
        self.file.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.doc))
        os.replace(tmp, self.file)


def weights_digest(path: Path, memo_dir: Path | None = None) -> tuple[str, list[ShardMemo]]:
    """sha256 over the weights' bytes (every ``*.safetensors`` shard); refuses non-finite weights.

    ``fingerprint`` reads headers only, so a checkpoint with the same shapes but other weights
    (fine-tuned, permuted, NaN) would match it. This digest is what stored scores are keyed on.
    Reading a large checkpoint takes a while, so each shard's result is remembered in
    ``memo_dir`` by the shard's identity (resolved path, size, mtime_ns, inode): a later job on
    the same files costs one stat per shard. Nothing is written here: the memos of shards read
    afresh come back, for the caller to write when it may (``ShardMemo.write``).
    """
    h = hashlib.sha256()
    memos = []
    for shard in sorted(path.glob("*.safetensors")):
        digest, bad, memo = _shard_check(shard, memo_dir)
        if bad:
            raise UserError(
                f"The checkpoint in '{path}' has non-finite weights (NaN or inf) in {len(bad)} "
                f"tensor(s) of {shard.name}, e.g. {', '.join(bad[:3])}: sensitivity scores of such "
                "a model mean nothing. Point model.path at an intact checkpoint (re-export or "
                "re-download it)."
            )
        memos += [memo] if memo is not None else []
        h.update(shard.name.encode() + bytes.fromhex(digest))
    return h.hexdigest()[:32], memos


def _shard_identity(shard: Path) -> dict[str, Any]:
    st = shard.stat()
    return {"path": str(shard.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "inode": st.st_ino, "version": WEIGHTS_MEMO_VERSION}


def _shard_check(shard: Path, memo_dir: Path | None) -> tuple[str, list[str], ShardMemo | None]:
    """(sha256 of the shard's bytes, names of tensors with non-finite values, a memo to write)."""
    identity = _shard_identity(shard)
    memo = (memo_dir / f"{hashlib.sha256(identity['path'].encode()).hexdigest()[:32]}.json"
            if memo_dir is not None else None)
    if memo is not None and memo.is_file():
        try:
            doc = json.loads(memo.read_text())
            if doc.get("identity") == identity:
                return str(doc["sha256"]), list(doc["non_finite"]), None
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable memo: compute again
    h = hashlib.sha256()
    with shard.open("rb") as f:
        while chunk := f.read(_READ_CHUNK):
            h.update(chunk)
    bad = _non_finite_tensors(shard)
    if memo is None or _shard_identity(shard) != identity:  # changed while read: do not remember
        return h.hexdigest(), bad, None
    return h.hexdigest(), bad, ShardMemo(memo, {"identity": identity, "sha256": h.hexdigest(),
                                                "non_finite": bad})


def _non_finite_tensors(shard: Path) -> list[str]:
    from safetensors import safe_open

    bad = []
    try:
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                t = f.get_tensor(name)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad.append(name)
    except SafetensorError:  # unreadable: the loader names the damage when the model loads
        return []
    return bad
