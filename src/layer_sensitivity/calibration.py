"""Captions file -> calibration batches padded to their longest caption, padding masked out."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Captions:
    path: Path
    lines: tuple[str, ...]  # the captions used, in file order
    available: int  # non-blank lines in the file
    requested: int  # samples the config asked for

    @cached_property  # computed once: the score key, the batches' key and the manifest read it
    def sha256(self) -> str:
        """Digest of exactly the captions used (one per line), independent of blank lines."""
        return hashlib.sha256("".join(f"{line}\n" for line in self.lines).encode()).hexdigest()


def read_captions(path: str | Path, max_samples: int | None) -> Captions:
    """The first ``max_samples`` non-blank lines of a UTF-8 captions file (None: all of them)."""
    path = Path(path)
    if max_samples is not None and max_samples <= 0:
        raise UserError(
            f"The number of calibration samples must be positive, got {max_samples}. Set "
            "dataset.size to small, medium or large, or dataset.max_calib_samples to a positive "
            "integer."
        )
    if not path.is_file():
        what = ("is a directory, not a file" if path.is_dir()
                else "exists but is not a regular file" if path.exists() else "does not exist")
        raise UserError(
            f"Captions file '{path}' {what}. Set dataset.captions_path to a UTF-8 text file with "
            "one caption per line (the bundled file is used by default)."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"Captions file '{path}' is not UTF-8 text ({e.reason} at byte {e.start}). Save it as "
            "UTF-8 with one caption per line."
        ) from None
    except OSError as e:
        raise UserError(f"Captions file '{path}' cannot be read ({e.strerror or e}). Check its "
                        "permissions or set dataset.captions_path to a readable file.") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UserError(
            f"Captions file '{path}' has no captions (it is empty or only blank lines). Put one "
            "caption per line in it, or point dataset.captions_path at another file."
        )
    if max_samples is None:
        max_samples = len(lines)
    elif len(lines) < max_samples:
        log.warning("captions file %s has %d caption(s) but %d were asked for; the job uses %d. "
                    "Add captions or lower dataset.size / dataset.max_calib_samples.", path,
                    len(lines), max_samples, len(lines))
    return Captions(path, tuple(lines[:max_samples]), len(lines), max_samples)


Batch = dict[str, torch.Tensor]
# No tokenizer's token spans this many characters on average over seq_len tokens (BPE tokens of
# Qwen's vocabulary are a few characters; the longest are runs of spaces or symbols), so cutting
# a caption here keeps its first seq_len tokens and turns a multi-megabyte line into a few KB.
MAX_CHARS_PER_TOKEN = 64


def clip_for_tokenizer(caption: str, seq_len: int) -> str:
    """``caption`` cut to at most ``seq_len * MAX_CHARS_PER_TOKEN`` characters."""
    return caption[: seq_len * MAX_CHARS_PER_TOKEN]


def build_batches(captions: list[str] | tuple[str, ...], tokenizer: Any, batch_size: int,
                  seq_len: int, pad_to_longest: bool = True,
                  sort_by_length: bool = False) -> list[Batch]:
    """Tokenize in batches of ``batch_size``, each padded only to its own longest caption.

    ``pad_to_longest=False`` pads every batch to ``seq_len`` (how the earlier runner did it: the
    same scores for many times the compute). ``sort_by_length`` groups captions of similar length
    so batches carry even less padding. ``labels`` repeat ``input_ids`` with padding set to -100 so
    the loss ignores it; the model shifts labels itself.
    """
    if batch_size <= 0 or seq_len <= 0:
        raise UserError(
            f"autoquant.batch_size ({batch_size}) and dataset.calib_seq_len ({seq_len}) must be "
            "positive integers."
        )
    # Only the first seq_len tokens are kept: a huge line need not be tokenized whole.
    captions = [clip_for_tokenizer(c, seq_len) for c in captions]
    if sort_by_length:
        lengths = [len(ids) for ids in tokenizer(captions)["input_ids"]]
        captions = [c for _, c in sorted(zip(lengths, captions, strict=True), key=lambda x: x[0])]
    batches = []
    for start in range(0, len(captions), batch_size):
        enc = tokenizer(
            captions[start : start + batch_size],
            padding="longest" if pad_to_longest else "max_length",
            truncation=True,
            max_length=seq_len,
            return_tensors="pt",
        )
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        batches.append(
            {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
        )
    return batches


def batch_tokens(batches: list[Batch]) -> tuple[int, int]:
    """(real tokens, padded positions) over all batches: what padding to the longest saves."""
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    total = sum(b["input_ids"].numel() for b in batches)
    return real, total


def token_facts(batches: list[Batch], seq_len: int) -> tuple[int, int, int]:
    """(real tokens, padded positions, captions cut at ``seq_len``): what a manifest records."""
    return (*batch_tokens(batches), truncated_count(batches, seq_len))


def truncated_count(batches: list[Batch], seq_len: int) -> int:
    """Captions that filled all ``seq_len`` positions: cut at ``seq_len`` (or exactly that long)."""
    return sum(int((b["attention_mask"].sum(dim=1) >= seq_len).sum()) for b in batches)
