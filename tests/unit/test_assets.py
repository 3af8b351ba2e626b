"""The embedded default: bundled captions and the tiny Qwen3-VL checkpoint's files (no model load;
the model's forwards are in tests/e2e/test_embedded_model.py)."""

from __future__ import annotations

import json

from transformers import AutoTokenizer

from tests.helpers import CAPTIONS, TINY_MODEL


def test_captions_are_many_distinct_lines() -> None:
    lines = CAPTIONS.read_text(encoding="utf-8").splitlines()
    assert all(line.strip() for line in lines), "blank line in captions"
    assert len(set(lines)) == len(lines), "duplicate captions"
    assert len(lines) >= 600
    assert all(6 <= len(line.split()) <= 20 for line in lines)


def test_tokenizer_round_trips_a_caption() -> None:
    tok = AutoTokenizer.from_pretrained(TINY_MODEL, local_files_only=True)
    caption = CAPTIONS.read_text(encoding="utf-8").splitlines()[0]
    ids = tok(caption)["input_ids"]
    assert tok.decode(ids) == caption


def test_training_report_shows_learning() -> None:
    report = json.loads((TINY_MODEL / "training_report.json").read_text())
    loss = report["held_out_loss"]
    assert loss["trained"] < loss["untrained"] - 1.0
    assert report["params"]["vision"] > 0 and report["params"]["language_model"] > 0
