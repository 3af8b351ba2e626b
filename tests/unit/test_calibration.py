"""Captions file -> token batches: reading, padding to the longest, masking, sorting."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from layer_sensitivity.calibration import batch_tokens, build_batches, read_captions
from layer_sensitivity.errors import UserError
from tests.helpers import CAPTIONS, TINY_MODEL


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    tok = AutoTokenizer.from_pretrained(TINY_MODEL, local_files_only=True)
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "right"
    return tok


def test_blank_lines_skipped_and_limit_applied(tmp_path: Path) -> None:
    f = tmp_path / "c.txt"
    f.write_text("a cat\n\n  \na dog on a mat\nthird one\n")
    c = read_captions(f, 2)
    assert c.lines == ("a cat", "a dog on a mat")
    assert (c.available, c.requested) == (3, 2)
    assert c.sha256 != read_captions(f, 3).sha256


@pytest.mark.parametrize("text,needle", [("", "no captions"), ("\n \n", "no captions")])
def test_empty_captions_rejected(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "c.txt"
    f.write_text(text)
    with pytest.raises(UserError, match=needle):
        read_captions(f, 4)


def test_missing_file_and_bad_size(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_captions(tmp_path / "nope.txt", 4)
    with pytest.raises(UserError, match="must be positive"):
        read_captions(CAPTIONS, 0)


def test_batches_pad_to_their_longest_caption_and_mask_padding(tokenizer) -> None:  # type: ignore[no-untyped-def]
    caps = ["a cat", "a very long caption about a dog running across a sunny green park",
            "tiny", "two birds"]
    batches = build_batches(caps, tokenizer, batch_size=2, seq_len=512)
    assert len(batches) == 2
    for b, pair in zip(batches, (caps[:2], caps[2:]), strict=True):
        lengths = [len(tokenizer(c)["input_ids"]) for c in pair]
        assert b["input_ids"].shape == (2, max(lengths))  # longest in batch, not seq_len
        assert b["attention_mask"].sum(1).tolist() == lengths
        pad = b["attention_mask"] == 0
        assert (b["labels"][pad] == -100).all()
        assert (b["labels"][~pad] == b["input_ids"][~pad]).all()
    assert batches[0]["input_ids"].shape[1] > batches[1]["input_ids"].shape[1]
    real, total = batch_tokens(batches)
    assert real < total


def test_seq_len_truncates(tokenizer) -> None:  # type: ignore[no-untyped-def]
    b = build_batches(["one two three four five six seven eight nine ten"], tokenizer, 1, 3)
    assert b[0]["input_ids"].shape == (1, 3)


def test_fixed_padding_pads_every_batch_to_seq_len(tokenizer) -> None:  # type: ignore[no-untyped-def]
    caps = ["a cat", "two birds on a wire", "tiny"]
    batches = build_batches(caps, tokenizer, 2, 64, pad_to_longest=False)
    assert [b["input_ids"].shape[1] for b in batches] == [64, 64]
    assert (batches[0]["labels"][batches[0]["attention_mask"] == 0] == -100).all()


def test_sorting_by_length_reduces_padding(tokenizer) -> None:  # type: ignore[no-untyped-def]
    caps = ["a", "a very long caption about a dog running across a sunny green park today",
            "b", "another long caption describing a crowded market street with many stalls"]
    plain = batch_tokens(build_batches(caps, tokenizer, 2, 512))
    ordered = batch_tokens(build_batches(caps, tokenizer, 2, 512, sort_by_length=True))
    assert plain[0] == ordered[0] and ordered[1] < plain[1]
