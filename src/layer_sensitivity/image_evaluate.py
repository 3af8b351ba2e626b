"""Recipes of an image-text run, measured on held-out image-text pairs.

The run's calibration pairs are read back from what its manifest records (annotations, image folder,
samples used, prompt and pixel bounds) and checked against its digest; held-out pairs are other
images: an explicit annotations file, else the file's ``val`` sibling (COCO's
``captions_train2017.json`` -> ``captions_val2017.json``, the bundled ``captions_train.json`` ->
``captions_val.json``), else the same file's pairs after the calibrated ones. No image of the
held-out pairs may be a calibration image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import evaluate, image_captions
from .errors import UserError
from .manifest_model import Manifest
from .model import loader, placement
from .recipes import Recipe
from .schema import ModelConfig

MAX_EVAL_PAIRS = 64  # default cap on held-out pairs (each carries an image's vision tokens)


def is_image_text(manifest: Manifest) -> bool:
    return manifest.dataset.modality == "image_text"


def _read(annotations: Path, images_dir: Path, max_samples: int | None
          ) -> image_captions.ImageCaptions:
    if annotations.is_dir():  # a folder of image/caption pairs
        return image_captions.read_image_folder(annotations, max_samples)
    return image_captions.read_image_captions(annotations, images_dir, max_samples)


def calibration_pairs(manifest: Manifest) -> image_captions.ImageCaptions:
    """The pairs the run calibrated on, checked against the digest it recorded."""
    d = manifest.dataset
    images = d.images or {}
    if not images.get("annotations_path") or not images.get("images_dir") or not d.samples_used:
        raise UserError("The manifest does not record its image-text calibration data "
                        "(dataset.images.annotations_path, images_dir, dataset.samples_used); "
                        "rerun the sensitivity job with dataset=image_captions.")
    pairs = _read(Path(images["annotations_path"]), Path(images["images_dir"]),
                  int(d.samples_used))
    if pairs.sha256 != images.get("sha256"):
        raise UserError(
            f"The image-text pairs in '{images['annotations_path']}' ('{images['images_dir']}') "
            "are not the ones the run calibrated on (their digest differs), so evaluation cannot "
            "reproduce its calibration. Restore the files the run used.")
    return pairs


def held_out_pairs(calib: image_captions.ImageCaptions, eval_annotations: str | Path | None,
                   max_samples: int | None) -> image_captions.ImageCaptions:
    """Pairs of other images than the calibration ones (see the module docstring)."""
    cap = max_samples or MAX_EVAL_PAIRS
    if eval_annotations is not None:
        held = _read(Path(eval_annotations), calib.images_dir, None)
    else:
        sibling = calib.annotations.with_name(calib.annotations.name.replace("train", "val"))
        if calib.annotations.is_file() and sibling != calib.annotations and sibling.is_file():
            held = _read(sibling, calib.images_dir, None)
        else:
            held = _read(calib.annotations, calib.images_dir, None)
    used = {name for name, _ in calib.pairs}
    shared = [name for name, _ in held.pairs if name in used]
    if eval_annotations is not None and shared:
        raise UserError(
            f"{len(shared)} evaluation image(s) of '{eval_annotations}' were also calibration "
            f"images (e.g. '{shared[0]}'), so the evaluation would not be held out. Use images "
            "the run did not calibrate on.")
    rest = tuple(p for p in held.pairs if p[0] not in used)[:cap]
    if not rest:
        raise UserError(
            f"No held-out image-text pair is left in '{held.annotations}' after removing the "
            f"{len(used)} calibration images. Pass eval_captions=<a COCO-style captions JSON of "
            "other images>, or calibrate on fewer samples.")
    return image_captions.ImageCaptions(held.annotations, held.images_dir, rest, held.available,
                                        cap, "")


@dataclass(frozen=True)
class RunPairs:
    """An image-text run's calibration pairs (read back, checked), held-out pairs of other images
    and the image settings it ran with."""

    calib: image_captions.ImageCaptions
    held: image_captions.ImageCaptions
    settings: image_captions.ImageSettings


def run_pairs(manifest: Manifest, mdir: Path, eval_annotations: str | Path | None,
              max_samples: int | None) -> RunPairs:
    """Everything an image-text run's recipes are calibrated and measured on, checked before the
    model loads (the checkpoint's processor and chat template too)."""
    image_captions.check_image_support(mdir)
    calib = calibration_pairs(manifest)
    images = manifest.dataset.images or {}
    settings = image_captions.ImageSettings(str(images.get("prompt", "Describe the picture.")),
                                            int(images["min_pixels"]), int(images["max_pixels"]))
    return RunPairs(calib, held_out_pairs(calib, eval_annotations, max_samples), settings)


def batch_builder(mdir: Path, tokenizer: Any, settings: image_captions.ImageSettings,
                  seq_len: int) -> Callable[[image_captions.ImageCaptions, int], list[Any]]:
    """pairs, batch size -> chat batches, through the checkpoint's processor and chat template."""
    tok = image_captions.with_chat_template(tokenizer, mdir)
    processor = image_captions.load_image_processor(mdir)

    def batches(data: image_captions.ImageCaptions, size: int) -> list[Any]:
        return image_captions.build_batches(data, tok, processor, settings, size, seq_len)

    return batches


def evaluate_like_the_run(manifest: Manifest, todo: Sequence[Recipe], *,
                          model_dir: str | Path | None, eval_captions_path: str | Path | None,
                          max_eval_samples: int | None, device: str, eval_batch_size: int,
                          progress: bool,
                          on_result: Callable[[dict[str, Any]], None] | None = None,
                          split: bool = False) -> pd.DataFrame:
    """``todo`` on the run's model, calibrated on its image-text chats, measured on held-out ones
    (even / odd pairs as validation / test when ``split``)."""
    d = manifest.dataset
    mdir = Path(model_dir or manifest.model.id or "")
    if not (mdir / "config.json").is_file():
        raise UserError(f"Model directory '{mdir}' of the run is not there; pass model_dir=<the "
                        "checkpoint the run analysed>.")
    pairs = run_pairs(manifest, mdir, eval_captions_path, max_eval_samples)
    calib, held = pairs.calib, pairs.held
    dev = placement.resolve_device(device)
    loaded = loader.load(ModelConfig(name=mdir.name, path=str(mdir), device=dev), mdir, dev)
    batches = batch_builder(mdir, loaded.tokenizer, pairs.settings, int(d.seq_len or 128))
    evals, tests = held, None
    if split:
        if len(held.pairs) < 2:
            raise UserError(f"{len(held.pairs)} held-out image-text pair(s) cannot be split into "
                            "validation and test pairs; give at least 2.")
        evals = _subset(held, held.pairs[0::2])
        tests = _subset(held, held.pairs[1::2])
    return evaluate.evaluate_batches(
        loaded, todo, batches(calib, int(d.batch_size or 4)),
        batches(evals, eval_batch_size), batches(tests, eval_batch_size) if tests else [],
        progress=progress, on_result=on_result)


def _subset(data: image_captions.ImageCaptions, pairs: tuple[tuple[str, str], ...]
            ) -> image_captions.ImageCaptions:
    return image_captions.ImageCaptions(data.annotations, data.images_dir, pairs, data.available,
                                        len(pairs), "")
