"""Which image-text pairs evaluate an image-text run's recipes: its calibration pairs read back and
checked, held-out pairs of other images (no model run here; tests/e2e/test_image_text.py runs the
evaluate and export entry points)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from layer_sensitivity import image_captions as ic
from layer_sensitivity import image_evaluate as ie
from layer_sensitivity import paths
from layer_sensitivity.errors import UserError
from layer_sensitivity.manifest_model import Manifest
from tests.helpers import SHAPES


def _manifest(annotations: Path, images_dir: Path, samples: int, sha256: str | None = None
              ) -> Manifest:
    data = ic.read_image_captions(annotations, images_dir, samples)
    return Manifest.model_validate({
        "schema_version": 1, "scheme": {"name": "x"}, "layer_sensitivity": {},
        "dataset": {"modality": "image_text", "samples_used": samples, "images": {
            "annotations_path": str(annotations), "images_dir": str(images_dir),
            "sha256": sha256 or data.sha256, "prompt": "Describe the picture.",
            "min_pixels": 1024, "max_pixels": 9216}}})


def test_calibration_pairs_are_read_back_and_checked(tmp_path: Path) -> None:
    m = _manifest(SHAPES / "captions_train.json", SHAPES / "images", 8)
    assert ie.is_image_text(m)
    assert len(ie.calibration_pairs(m).pairs) == 8
    changed = _manifest(SHAPES / "captions_train.json", SHAPES / "images", 8, sha256="0" * 64)
    with pytest.raises(UserError, match="not the ones the run calibrated on"):
        ie.calibration_pairs(changed)


def test_held_out_defaults_to_the_val_sibling_then_the_rest_of_the_file(tmp_path: Path) -> None:
    calib = ie.calibration_pairs(_manifest(SHAPES / "captions_train.json", SHAPES / "images", 8))
    held = ie.held_out_pairs(calib, None, None)
    assert held.annotations.name == "captions_val.json" and len(held.pairs) == 40
    copy = tmp_path / "pairs.json"  # no val sibling: the same file's other images
    shutil.copy(SHAPES / "captions_train.json", copy)
    calib = ie.calibration_pairs(_manifest(copy, SHAPES / "images", 8))
    held = ie.held_out_pairs(calib, None, 5)
    assert len(held.pairs) == 5 and not {n for n, _ in held.pairs} & {n for n, _ in calib.pairs}


def test_explicit_eval_pairs_must_be_other_images(tmp_path: Path) -> None:
    calib = ie.calibration_pairs(_manifest(SHAPES / "captions_train.json", SHAPES / "images", 8))
    with pytest.raises(UserError, match="also calibration images"):
        ie.held_out_pairs(calib, SHAPES / "captions_train.json", None)
    doc = json.loads((SHAPES / "captions_train.json").read_text())
    doc["images"], doc["annotations"] = doc["images"][:8], doc["annotations"][:8]
    few = tmp_path / "few.json"
    few.write_text(json.dumps(doc))
    calib_all = ie.calibration_pairs(_manifest(few, SHAPES / "images", 8))
    with pytest.raises(UserError, match="No held-out image-text pair is left"):
        ie.held_out_pairs(calib_all, None, None)


def test_run_pairs_are_what_evaluate_and_export_calibrate_and_measure_on() -> None:
    m = _manifest(SHAPES / "captions_train.json", SHAPES / "images", 8)
    pairs = ie.run_pairs(m, Path(paths.asset("tiny-qwen3-vl-vision")), None, 6)
    assert len(pairs.calib.pairs) == 8 and len(pairs.held.pairs) == 6
    assert pairs.settings == ic.ImageSettings("Describe the picture.", 1024, 9216)
    with pytest.raises(UserError, match="no preprocessor_config.json"):  # a text-only checkpoint
        ie.run_pairs(m, Path(paths.asset("tiny-qwen3-vl")), None, 6)
