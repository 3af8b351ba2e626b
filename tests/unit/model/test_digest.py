"""The weights' digest, remembered by file identity once the caller writes its memos."""

from __future__ import annotations

from pathlib import Path

import pytest

from layer_sensitivity.model import digest
from tests.helpers import TINY_MODEL


def test_weights_digest_is_remembered_by_file_identity(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(TINY_MODEL, ckpt)
    memo = tmp_path / "memo"
    first, memos = digest.weights_digest(ckpt, memo)
    assert not memo.exists()  # nothing written while digesting: the caller writes the memos
    for m in memos:
        m.write()
    assert len(list(memo.glob("*.json"))) == 1

    def unread(shard: Path) -> list[str]:
        raise AssertionError(f"{shard} was read again")

    monkeypatch.setattr(digest, "_non_finite_tensors", unread)
    assert digest.weights_digest(ckpt, memo) == (first, [])  # same identity: one stat, no read
    monkeypatch.undo()
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4] ^= 1  # the lowest mantissa bit of the last float: same size, same header
    weights.write_bytes(bytes(data))
    assert digest.weights_digest(ckpt, memo)[0] != first
