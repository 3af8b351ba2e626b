"""Image-caption pairs -> Qwen3-VL chat batches: reading and checking the COCO-style file and its
images, caption-only labels, vision tokens, and a tiny forward through the real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from layer_sensitivity import image_captions as ic
from layer_sensitivity.errors import UserError
from tests.helpers import SHAPES, TINY_MODEL, VISION_MODEL

SETTINGS = ic.ImageSettings("Describe the picture.", 32 * 32, 96 * 96)


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(VISION_MODEL, local_files_only=True)


@pytest.fixture(scope="module")
def processor():  # type: ignore[no-untyped-def]
    return ic.load_image_processor(VISION_MODEL)


def _dataset(tmp_path: Path, doc: object, images: dict[str, bytes] | None = None) -> Path:
    (tmp_path / "img").mkdir()
    for name, data in (images or {}).items():
        (tmp_path / "img" / name).write_bytes(data)
    path = tmp_path / "captions.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _png() -> bytes:
    from io import BytesIO

    buf = BytesIO()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _coco(*names: str) -> dict:
    return {"images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
            "annotations": [{"id": i, "image_id": i, "caption": f"picture {i}"}
                            for i in range(len(names))]}


def test_bundled_set_reads_in_order_with_a_stable_digest() -> None:
    data = ic.read_image_captions(SHAPES / "captions_train.json", SHAPES / "images", 8)
    assert len(data.pairs) == 8 and data.available == 360 and data.requested == 8
    assert data.pairs[0][0] == "0000.png" and data.captions.lines[0] == data.pairs[0][1]
    again = ic.read_image_captions(SHAPES / "captions_train.json", SHAPES / "images", 8)
    assert again.sha256 == data.sha256
    assert ic.read_image_captions(SHAPES / "captions_train.json", SHAPES / "images",
                                  9).sha256 != data.sha256


def test_val_split_is_disjoint_from_train() -> None:
    train = ic.read_image_captions(SHAPES / "captions_train.json", SHAPES / "images", None)
    val = ic.read_image_captions(SHAPES / "captions_val.json", SHAPES / "images", None)
    assert not {n for n, _ in train.pairs} & {n for n, _ in val.pairs}
    assert len(train.pairs) + len(val.pairs) == 400


def test_digest_covers_image_bytes(tmp_path: Path) -> None:
    path = _dataset(tmp_path, _coco("a.png"), {"a.png": _png()})
    before = ic.read_image_captions(path, tmp_path / "img", None).sha256
    Image.new("RGB", (40, 40), (0, 0, 255)).save(tmp_path / "img" / "a.png")
    assert ic.read_image_captions(path, tmp_path / "img", None).sha256 != before


def test_first_caption_per_image_and_images_without_one_skipped(tmp_path: Path) -> None:
    doc = _coco("a.png", "b.png")
    doc["annotations"] = [{"image_id": 1, "caption": "first"}, {"image_id": 1, "caption": "second"}]
    path = _dataset(tmp_path, doc, {"a.png": b"not read", "b.png": _png()})
    data = ic.read_image_captions(path, tmp_path / "img", None)
    assert data.pairs == (("b.png", "first"),)


@pytest.mark.parametrize(("doc", "message"), [
    ("{not json", "is not valid JSON"),
    ({"annotations": []}, "has no 'images' and 'annotations' lists"),
    ({"images": [{"file_name": "a.png"}], "annotations": []}, "without 'id' and 'file_name'"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1}]},
     "without 'image_id' and 'caption'"),
    ({"images": [{"id": 1, "file_name": "a.png"}],
      "annotations": [{"image_id": 2, "caption": "x"}]}, "which no entry of 'images' has"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": []},
     "has no image with a non-empty caption"),
])
def test_malformed_captions_file(tmp_path: Path, doc: object, message: str) -> None:
    path = _dataset(tmp_path, doc)
    with pytest.raises(UserError, match=message) as e:
        ic.read_image_captions(path, tmp_path / "img", None)
    assert "dataset.annotations_path" in str(e.value) and "\n" not in str(e.value)


def test_missing_captions_file_and_image_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist.*dataset.annotations_path"):
        ic.read_image_captions(tmp_path / "none.json", tmp_path, None)
    path = _dataset(tmp_path, _coco("a.png"))
    with pytest.raises(UserError, match="Image folder .* does not exist.*dataset.images_dir"):
        ic.read_image_captions(path, tmp_path / "missing", None)


def test_missing_and_unreadable_images(tmp_path: Path) -> None:
    path = _dataset(tmp_path, _coco("a.png", "b.png"), {"a.png": _png(), "b.png": b"\x89PNG junk"})
    with pytest.raises(UserError, match="b.png' cannot be read as an image"):
        ic.read_image_captions(path, tmp_path / "img", None)
    assert len(ic.read_image_captions(path, tmp_path / "img", 1).pairs) == 1  # only used ones
    (tmp_path / "img" / "b.png").unlink()
    with pytest.raises(UserError, match="Image 'b.png' .* is missing from"):
        ic.read_image_captions(path, tmp_path / "img", None)


def test_text_only_checkpoint_refused_for_images() -> None:
    with pytest.raises(UserError, match="no preprocessor_config.json and a chat template"):
        ic.check_image_support(TINY_MODEL)
    ic.check_image_support(VISION_MODEL)


def test_labels_are_the_caption_only(tokenizer, processor) -> None:  # type: ignore[no-untyped-def]
    captions = ["two blue squares, at the left and at the right.", "a red circle."]
    images = [Image.new("RGB", (96, 96), "white"), Image.new("RGB", (64, 64), "white")]
    b = ic.encode(images, captions, tokenizer, processor, SETTINGS, 128)
    assert b["image_grid_thw"].tolist() == [[1, 6, 6], [1, 4, 4]]
    assert b["mm_token_type_ids"].sum(dim=1).tolist() == [9, 4]  # merged 2 x 2
    for row, caption in enumerate(captions):
        ids = b["labels"][row][b["labels"][row] != -100]
        assert tokenizer.decode(ids) == caption
    assert ic.caption_tokens([b]) == int((b["labels"] != -100).sum())
    assert ic.vision_tokens([b]) == 13
    # the shorter chat is padded on the right, masked out and not scored
    mask = b["attention_mask"]
    assert mask.sum(dim=1).min() < mask.shape[1] and mask[:, 0].all()
    assert (b["labels"][mask == 0] == -100).all()


def test_max_pixels_sets_the_vision_tokens(tokenizer, processor) -> None:  # type: ignore[no-untyped-def]
    small = ic.ImageSettings("Describe the picture.", 32 * 32, 64 * 64)
    b = ic.encode([Image.new("RGB", (96, 96))], ["x"], tokenizer, processor, small, 128)
    assert b["image_grid_thw"].tolist() == [[1, 4, 4]]


def test_no_room_for_the_caption_is_refused(tokenizer, processor) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError, match="calib_seq_len=12.*image_max_pixels"):
        ic.encode([Image.new("RGB", (96, 96))], ["x"], tokenizer, processor, SETTINGS, 12)


def test_long_caption_cut_to_seq_len(tokenizer, processor) -> None:  # type: ignore[no-untyped-def]
    b = ic.encode([Image.new("RGB", (96, 96))], ["a red circle " * 50], tokenizer, processor,
                  SETTINGS, 40)
    assert b["input_ids"].shape[1] == 40 and (b["labels"] != -100).any()


def test_tiny_forward_scores_caption_positions_only(tokenizer, processor) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForImageTextToText

    from layer_sensitivity.autoquant import _logits_of_real_tokens

    data = ic.read_image_captions(SHAPES / "captions_val.json", SHAPES / "images", 2)
    [batch] = ic.build_batches(data, tokenizer, processor, SETTINGS, 2, 128)
    model = AutoModelForImageTextToText.from_pretrained(VISION_MODEL, local_files_only=True).eval()
    with torch.no_grad():
        loss = model(**batch, use_cache=False).loss
        logits = _logits_of_real_tokens(model, batch)
    assert torch.isfinite(loss) and loss < 2.0  # the model was trained on these chats
    assert logits.shape[0] == ic.caption_tokens([batch])


def test_evaluate_compares_caption_predicting_positions(tokenizer, processor) -> None:  # type: ignore[no-untyped-def]
    """evaluate's KL over an image-text chat looks at the positions that predict caption tokens
    (as kl_div scoring does); captions batches keep every real token."""
    from layer_sensitivity.evaluate import _no_labels, _scored

    b = ic.encode([Image.new("RGB", (96, 96))], ["a red circle."], tokenizer, processor,
                  SETTINGS, 128)
    assert int(_scored(b).sum()) == ic.caption_tokens([b])
    assert set(_no_labels(b)) == {"input_ids", "attention_mask", "mm_token_type_ids",
                                  "pixel_values", "image_grid_thw"}
    text = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
            "labels": b["labels"]}
    assert _scored(text).equal(b["attention_mask"].bool())


def test_caption_readers_refuse_an_image_text_run_clearly() -> None:
    from layer_sensitivity.held_out import calibration_captions
    from layer_sensitivity.manifest_model import Manifest

    doc = Manifest.model_validate({"schema_version": 1, "scheme": {"name": "x"},
                                   "layer_sensitivity": {}, "dataset": {
                                       "modality": "image_text", "path": "x.json",
                                       "samples_used": 4}})
    with pytest.raises(UserError, match="calibrated on image_text data.*image_evaluate.calibration_pairs"):
        calibration_captions(doc)


def test_folder_of_image_caption_pairs(tmp_path: Path) -> None:
    for name in ("b", "a", "c"):
        (tmp_path / f"{name}.png").write_bytes(_png())
    (tmp_path / "a.txt").write_text("\n  a red square.\nignored\n")
    (tmp_path / "b.txt").write_text("two dots.\n")  # c.png has no caption: skipped
    data = ic.read_image_folder(tmp_path, None)
    assert data.pairs == (("a.png", "a red square."), ("b.png", "two dots."))
    assert data.images_dir == tmp_path and data.available == 2
    assert ic.read_image_folder(tmp_path, 1).pairs == (("a.png", "a red square."),)
    (tmp_path / "a.png").write_bytes(b"junk")
    with pytest.raises(UserError, match="a.png' cannot be read as an image"):
        ic.read_image_folder(tmp_path, None)
    with pytest.raises(UserError, match="has no image .* with a same-named .txt caption"):
        ic.read_image_folder(_empty(tmp_path), None)
    with pytest.raises(UserError, match="Image folder .* does not exist"):
        ic.read_image_folder(tmp_path / "missing", None)


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def test_chat_template_from_the_processor_files(tmp_path: Path) -> None:
    """A tokenizer without a chat template gets the checkpoint's chat_template.json one."""
    tok = AutoTokenizer.from_pretrained(TINY_MODEL, local_files_only=True)  # no template
    assert not tok.chat_template
    template = (VISION_MODEL / "chat_template.jinja").read_text()
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    assert ic.with_chat_template(tok, tmp_path).chat_template == template
    assert ic.prompt_ids(tok, "Describe.", 3).count(tok.convert_tokens_to_ids(ic.IMAGE_PAD)) == 3
