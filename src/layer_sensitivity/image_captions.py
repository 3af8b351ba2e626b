"""Image-caption pairs (COCO captions format) -> Qwen3-VL calibration batches.

Each sample is one chat turn as Qwen3-VL sees it in deployment: the user sends the image and a
short prompt, the assistant answers with the caption. Batches carry ``pixel_values`` and
``image_grid_thw`` next to the token ids, so the model's own forward runs the vision tower and
merges its output (and DeepStack features) into the language model. ``labels`` hold the caption's
tokens only: image, prompt and chat markup are -100, so the loss (and kl_div) scores captions.

Everything here is checked before the model loads: the annotations file, the image folder, each
image used, and that the checkpoint has an image processor and a chat template.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .calibration import Batch, Captions
from .errors import UserError

log = logging.getLogger(__name__)

IMAGE_PAD = "<|image_pad|>"  # Qwen-VL's placeholder, repeated once per merged vision token
PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class ImageCaptions:
    """The pairs a job uses, in annotation order (one caption per image: the first one)."""

    annotations: Path  # the captions JSON, or the folder itself for image/caption pairs
    images_dir: Path
    pairs: tuple[tuple[str, str], ...]  # (image file name, caption)
    available: int  # images with a caption in the file
    requested: int
    images_sha256: str  # over each used image's name and bytes

    @property
    def captions(self) -> Captions:
        """The captions alone, as a text job records them (path, lines, digest)."""
        return Captions(self.annotations, tuple(c for _, c in self.pairs), self.available,
                        self.requested)

    @property
    def sha256(self) -> str:
        """Digest of the pairs: captions, image names and image bytes."""
        h = hashlib.sha256(self.images_sha256.encode())
        for name, caption in self.pairs:
            h.update(f"{name}\t{caption}\n".encode())
        return h.hexdigest()


def _bad_file(path: Path, problem: str) -> UserError:
    return UserError(
        f"Image captions file '{path}' {problem}. Set dataset.annotations_path to a COCO-style "
        "captions JSON: an object with 'images' (each {\"id\", \"file_name\"}) and 'annotations' "
        "(each {\"image_id\", \"caption\"}), e.g. COCO 2017's annotations/captions_val2017.json."
    )


def read_image_captions(annotations: str | Path, images_dir: str | Path,
                        max_samples: int | None) -> ImageCaptions:
    """The first ``max_samples`` images of a COCO captions file that have a caption, each with
    its first caption; every image used is opened and checked here."""
    annotations, images_dir = Path(annotations), Path(images_dir)
    if max_samples is not None and max_samples <= 0:
        raise UserError(f"The number of calibration samples must be positive, got {max_samples}. "
                        "Set dataset.size or dataset.max_calib_samples to a positive value.")
    if not annotations.is_file():
        raise _bad_file(annotations, "does not exist" if not annotations.exists()
                        else "is not a regular file")
    if not images_dir.is_dir():
        raise UserError(
            f"Image folder '{images_dir}' " + ("is not a directory" if images_dir.exists()
                                              else "does not exist")
            + ". Set dataset.images_dir to the folder that holds the images named in "
            f"'{annotations.name}' (for COCO 2017: the val2017/ or train2017/ folder)."
        )
    try:
        doc = json.loads(annotations.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad_file(annotations, f"is not valid JSON ({e})") from None
    except OSError as e:
        raise _bad_file(annotations, f"cannot be read ({e.strerror or e})") from None
    return _first(annotations, images_dir, _pairs(annotations, doc), max_samples)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_image_folder(images_dir: str | Path, max_samples: int | None) -> ImageCaptions:
    """A folder of image/caption pairs: each image with a caption file of the same stem
    (``cat.jpg`` + ``cat.txt``, UTF-8, first non-blank line), in name order; images without a
    caption file are skipped."""
    images_dir = Path(images_dir)
    if max_samples is not None and max_samples <= 0:
        raise UserError(f"The number of calibration samples must be positive, got {max_samples}. "
                        "Set dataset.size or dataset.max_calib_samples to a positive value.")
    if not images_dir.is_dir():
        raise UserError(
            f"Image folder '{images_dir}' " + ("is not a directory" if images_dir.exists()
                                              else "does not exist")
            + ". Set dataset.images_dir to a folder of images, each with a same-named .txt caption "
            "(or set dataset.annotations_path to a COCO-style captions JSON)."
        )
    pairs = []
    for image in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        text = image.with_suffix(".txt")
        if not text.is_file():
            continue
        try:
            lines = [ln.strip() for ln in text.read_text(encoding="utf-8").splitlines()]
        except (UnicodeDecodeError, OSError) as e:
            raise UserError(f"Caption file '{text}' cannot be read as UTF-8 text ({e}). Save it "
                            "as UTF-8 with the caption on its first line.") from None
        caption = next((ln for ln in lines if ln), "")
        if caption:
            pairs.append((image.name, caption))
    if not pairs:
        raise UserError(
            f"Image folder '{images_dir}' has no image ({', '.join(IMAGE_SUFFIXES)}) with a "
            "same-named .txt caption. Put e.g. cat.jpg next to cat.txt, or set "
            "dataset.annotations_path to a COCO-style captions JSON."
        )
    return _first(images_dir, images_dir, pairs, max_samples)


def _first(source: Path, images_dir: Path, pairs: list[tuple[str, str]],
           max_samples: int | None) -> ImageCaptions:
    """The first ``max_samples`` pairs (all when None; fewer, with a warning, when short)."""
    if max_samples is None:
        max_samples = len(pairs)
    elif len(pairs) < max_samples:
        log.warning("%s has %d captioned image(s) but %d were asked for; the job uses %d.",
                    source, len(pairs), max_samples, len(pairs))
    used = tuple(pairs[:max_samples])
    return ImageCaptions(source, images_dir, used, len(pairs), max_samples,
                         _images_digest(images_dir, used))


def _images_digest(images_dir: Path, pairs: tuple[tuple[str, str], ...]) -> str:
    digest = hashlib.sha256()
    for name, _ in pairs:
        digest.update(name.encode() + b"\0" + check_image(images_dir, name) + b"\n")
    return digest.hexdigest()


def _pairs(path: Path, doc: Any) -> list[tuple[str, str]]:
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(
            doc.get("annotations"), list):
        raise _bad_file(path, "has no 'images' and 'annotations' lists")
    files: dict[Any, str] = {}
    for i, image in enumerate(doc["images"]):
        if not (isinstance(image, dict) and isinstance(image.get("file_name"), str)
                and "id" in image):
            raise _bad_file(path, f"has an entry images[{i}] without 'id' and 'file_name'")
        files[image["id"]] = image["file_name"]
    first: dict[Any, str] = {}
    for i, ann in enumerate(doc["annotations"]):
        if not (isinstance(ann, dict) and isinstance(ann.get("caption"), str)
                and "image_id" in ann):
            raise _bad_file(path, f"has an entry annotations[{i}] without 'image_id' and 'caption'")
        if ann["image_id"] not in files:
            raise _bad_file(path, f"has annotations[{i}] for image_id {ann['image_id']!r}, "
                                  "which no entry of 'images' has")
        if ann["caption"].strip():
            first.setdefault(ann["image_id"], ann["caption"].strip())
    pairs = [(files[i], first[i]) for i in files if i in first]
    if not pairs:
        raise _bad_file(path, "has no image with a non-empty caption")
    return pairs


def check_image(images_dir: Path, name: str) -> bytes:
    """The image's sha256 (raw digest) once PIL has decoded it; a UserError if it cannot."""
    from PIL import Image, UnidentifiedImageError

    path = images_dir / name
    if not path.is_file():
        raise UserError(
            f"Image '{name}' named in the captions file is missing from '{images_dir}'. Copy it "
            "there, point dataset.images_dir at the folder that holds it, or remove its entries."
        )
    data = path.read_bytes()
    try:
        with Image.open(path) as im:
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(
            f"Image '{path}' cannot be read as an image ({type(e).__name__}: {e}). Replace it with "
            "a valid PNG or JPEG, or remove its entries from the captions file."
        ) from None
    return hashlib.sha256(data).digest()


def check_image_support(path: Path) -> None:
    """The checkpoint can turn images into model inputs: an image processor and a chat template."""
    has_template = (path / "chat_template.jinja").is_file() or (
        path / "chat_template.json").is_file() or "chat_template" in _json(
            path / "tokenizer_config.json")
    if not (path / PREPROCESSOR_FILE).is_file() or not has_template:
        missing = " and ".join(m for m, ok in ((PREPROCESSOR_FILE, (path / PREPROCESSOR_FILE).is_file()),
                                               ("a chat template", has_template)) if not ok)
        raise UserError(
            f"dataset=image_captions needs the checkpoint's image processor and chat template, but "
            f"'{path}' has no {missing} (a text-only model). Use a Qwen3-VL checkpoint saved with "
            "its processor (e.g. model=tiny_qwen3_vl_vision, or a Hugging Face Qwen3-VL download), "
            "or calibrate on text with dataset=captions."
        )


def _json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def with_chat_template(tokenizer: Any, path: Path) -> Any:
    """The tokenizer, given the checkpoint's processor chat template when it has none of its own
    (Hugging Face Qwen-VL checkpoints may keep it only in chat_template.jinja / .json)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer
    if (path / "chat_template.jinja").is_file():
        tokenizer.chat_template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    elif isinstance(_json(path / "chat_template.json").get("chat_template"), str):
        tokenizer.chat_template = _json(path / "chat_template.json")["chat_template"]
    return tokenizer


def load_image_processor(path: Path) -> Any:
    """The checkpoint's image processor (offline)."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(path, local_files_only=True)


@dataclass(frozen=True)
class ImageSettings:
    """What shapes the vision tokens: the processor resizes each image to within these pixels."""

    prompt: str
    min_pixels: int
    max_pixels: int

    def as_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "min_pixels": self.min_pixels,
                "max_pixels": self.max_pixels}


def prompt_ids(tokenizer: Any, prompt: str, image_tokens: int) -> list[int]:
    """The chat up to the answer: user turn with the image and prompt, then the assistant's
    header. The image placeholder is expanded to one token per merged vision patch, as
    Qwen3-VL's processor does."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if text.count(IMAGE_PAD) != 1:
        raise UserError(f"The checkpoint's chat template does not place one {IMAGE_PAD} for an "
                        "image. Use a Qwen3-VL checkpoint's own chat template.")
    text = text.replace(IMAGE_PAD, IMAGE_PAD * image_tokens)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode(images: list[Any], captions: list[str], tokenizer: Any, image_processor: Any,
           settings: ImageSettings, seq_len: int) -> Batch:
    """One padded batch: chat prompt with the image, caption as the answer, caption-only labels.

    A caption is cut so a sample fits ``seq_len``; the image tokens are never cut (the vision
    features must match them one for one).
    """
    vision = image_processor(images=images, return_tensors="pt",
                             size={"shortest_edge": settings.min_pixels,
                                   "longest_edge": settings.max_pixels})
    merge = int(getattr(image_processor, "merge_size", 2)) ** 2
    end = list(tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"])
    rows: list[tuple[list[int], int]] = []  # (ids, where the caption starts)
    for grid, caption in zip(vision["image_grid_thw"], captions, strict=True):
        prefix = prompt_ids(tokenizer, settings.prompt, int(grid.prod()) // merge)
        room = seq_len - len(prefix) - len(end)
        if room < 1:
            raise UserError(
                f"An image takes {int(grid.prod()) // merge} vision tokens and the prompt "
                f"{len(prefix)} tokens in all, leaving no room for its caption within "
                f"dataset.calib_seq_len={seq_len}. Raise dataset.calib_seq_len or lower "
                "dataset.image_max_pixels."
            )
        answer = list(tokenizer(caption, add_special_tokens=False)["input_ids"])[:room]
        rows.append((prefix + answer + end, len(prefix)))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (ids, start) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = 1
        stop = len(ids) - len(end)
        labels[r, start:stop] = input_ids[r, start:stop]  # the caption's tokens only
    # 1 marks image tokens (0 text): the model needs it to lay out M-RoPE positions.
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels,
            "mm_token_type_ids": (input_ids == image_id).to(torch.int32),
            "pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}


def open_rgb(images_dir: Path, name: str) -> Any:
    from PIL import Image

    with Image.open(images_dir / name) as im:
        return im.convert("RGB")


def build_batches(data: ImageCaptions, tokenizer: Any, image_processor: Any,
                  settings: ImageSettings, batch_size: int, seq_len: int) -> list[Batch]:
    """Batches of ``batch_size`` pairs in file order, each padded to its own longest sample."""
    if batch_size <= 0 or seq_len <= 0:
        raise UserError(f"autoquant.batch_size ({batch_size}) and dataset.calib_seq_len "
                        f"({seq_len}) must be positive integers.")
    batches = []
    for start in range(0, len(data.pairs), batch_size):
        chunk = data.pairs[start : start + batch_size]
        batches.append(encode([open_rgb(data.images_dir, n) for n, _ in chunk],
                              [c for _, c in chunk], tokenizer, image_processor, settings, seq_len))
    return batches


def caption_tokens(batches: list[Batch]) -> int:
    """Tokens the loss counts (the captions')."""
    return sum(int((b["labels"] != -100).sum()) for b in batches)


def vision_tokens(batches: list[Batch], merge_size: int = 2) -> int:
    """Merged vision tokens the language model sees over all batches."""
    return sum(int(b["image_grid_thw"].prod(dim=1).sum()) // merge_size**2 for b in batches
               if "image_grid_thw" in b)
