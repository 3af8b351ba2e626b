"""Reusable AutoQuantize scores, stored as ModelOpt ``checkpoint=`` files under a content key.

ModelOpt restores a checkpoint without checking that the data, step counts or config match, so
the key covers everything the scores depend on; a different key never reuses.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .calibration import Batch

KEY_VERSION = 1


def batches_digest(batches: list[Batch]) -> str:
    """sha256 over the token ids and masks: covers captions, tokenizer, seq len, batching, order."""
    h = hashlib.sha256()
    for b in batches:
        for name in ("input_ids", "attention_mask"):
            t = b[name].detach().to("cpu", torch.int64).contiguous()
            h.update(name.encode() + str(tuple(t.shape)).encode() + t.numpy().tobytes())
    return h.hexdigest()


def cache_key(ingredients: dict[str, Any]) -> str:
    blob = json.dumps({"key_version": KEY_VERSION, **ingredients}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path  # ModelOpt checkpoint file for this key

    @property
    def hit(self) -> bool:
        return self.path.is_file()

    @property
    def staging(self) -> Path:
        """Where a fresh search writes, moved to ``path`` only once it completed."""
        return self.path.with_suffix(".partial.pth")

    def commit(self) -> None:
        if self.staging.is_file():
            self.staging.replace(self.path)


def entry(root: Path, ingredients: dict[str, Any]) -> Entry:
    key = cache_key(ingredients)
    root.mkdir(parents=True, exist_ok=True)
    return Entry(key, root / f"{key}.pth")
