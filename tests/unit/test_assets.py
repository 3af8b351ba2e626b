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


def test_image_text_model_uses_the_image() -> None:
    """tiny-qwen3-vl-vision: held-out caption loss with the image far below a blank image's, and
    the report describes the shipped weights."""
    import hashlib

    from tests.helpers import VISION_MODEL

    report = json.loads((VISION_MODEL / "training_report.json").read_text())
    loss = report["held_out_caption_loss"]
    assert loss["with_image"] < 0.5 * loss["blank_image"] < loss["untrained"]
    weights = (VISION_MODEL / "model.safetensors").read_bytes()
    assert report["model_safetensors_sha256"] == hashlib.sha256(weights).hexdigest()
    for name in ("preprocessor_config.json", "chat_template.jinja", "tokenizer.json"):
        assert (VISION_MODEL / name).is_file(), name


def test_shapes_set_is_coco_format_with_captions_that_name_the_drawing() -> None:
    from tests.helpers import SHAPES

    for split, count in (("train", 360), ("val", 40)):
        doc = json.loads((SHAPES / f"captions_{split}.json").read_text())
        assert len(doc["images"]) == len(doc["annotations"]) == count
        assert all((SHAPES / "images" / i["file_name"]).is_file() for i in doc["images"])
        assert all(a["caption"].startswith(("a ", "two ", "three ")) for a in doc["annotations"])
