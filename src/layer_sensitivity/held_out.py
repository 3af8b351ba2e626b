"""Which captions a recipe is measured on: held out from calibration (and, for the embedded model,
from its training), split into validation (what a choice may look at) and test (what is
reported), alternating by position, each checked disjoint from the others. No torch."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from . import calibration
from .errors import UserError
from .manifest_model import Manifest

log = logging.getLogger(__name__)

TRAINING_REPORT = "training_report.json"  # written by scripts/make_tiny_qwen3vl.py

# --------------------------------------------------------------------------------------------
# Captions


def _lines(path: Path) -> list[str]:
    return list(calibration.read_captions(path, None).lines)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generator_held_out(model_dir: str | Path, captions_path: str | Path) -> set[int] | None:
    """Indices of the captions the model's generator held out of training, when it trained on this
    very file (``training_report.json`` of the embedded models); None when unknown."""
    report_path = Path(model_dir) / TRAINING_REPORT
    if not report_path.is_file():
        return None
    caps = json.loads(report_path.read_text(encoding="utf-8")).get("captions") or {}
    if caps.get("sha256") != _sha256(Path(captions_path)):
        return None  # trained on other text: this file says nothing about training
    m = re.fullmatch(r"line index % (\d+) == (\d+)", str(caps.get("held_out_rule", "")))
    if not m:
        raise UserError(
            f"{report_path} says the model trained on '{captions_path}' but its held_out_rule "
            f"{caps.get('held_out_rule')!r} is not 'line index % N == K', so held-out captions "
            "cannot be chosen. Pass eval captions explicitly (a file the model never saw)."
        )
    every, index = int(m.group(1)), int(m.group(2))
    return {i for i in range(len(_lines(Path(captions_path)))) if i % every == index}


def check_disjoint(eval_captions: Sequence[str], calib_captions: Sequence[str]) -> None:
    """UserError when an evaluation caption was also used for calibration."""
    shared = set(eval_captions) & set(calib_captions)
    if shared:
        example = next(iter(sorted(shared)))
        raise UserError(
            f"{len(shared)} evaluation caption(s) were also calibration captions (e.g. "
            f"{example!r}), so the evaluation would not be held out. Use captions the run did "
            "not calibrate on (the default picks them), or remove these lines from the "
            "evaluation file."
        )
    if not eval_captions:
        raise UserError("There are no evaluation captions. Point eval_captions at a UTF-8 file "
                        "with one caption per line that the run did not calibrate on.")


def held_out_captions(captions_path: str | Path, calibration_lines: Sequence[str],
                      model_dir: str | Path | None = None,
                      max_samples: int | None = None) -> list[str]:
    """Captions of ``captions_path`` the run did not calibrate on and, when the model's generator
    trained on this file (``model_dir``'s training report), that it held out of training."""
    path = Path(captions_path)
    lines = _lines(path)
    held = generator_held_out(model_dir, path) if model_dir is not None else None
    calib = set(calibration_lines)
    out = [c for i, c in enumerate(lines) if (held is None or i in held) and c not in calib]
    if not out:
        raise UserError(
            f"'{path}' has no caption left for evaluation after removing the "
            f"{len(calib)} calibration captions{' and the training captions' if held else ''}. "
            "Pass eval captions from another file, or calibrate on fewer captions."
        )
    out = out[:max_samples] if max_samples else out
    check_disjoint(out, calibration_lines)
    return out


def split_validation_test(held: Sequence[str]) -> tuple[list[str], list[str]]:
    """Held-out captions -> (validation, test): even positions validate, odd ones test. Checked
    disjoint (a caption repeated in the file would otherwise land on both sides)."""
    validation, test = list(held[0::2]), list(held[1::2])
    shared = set(validation) & set(test)
    if shared:
        raise UserError(
            f"{len(shared)} held-out caption(s) appear twice (e.g. {sorted(shared)[0]!r}), so "
            "validation and test captions would overlap. Remove duplicate lines from the file."
        )
    if not validation or not test:
        raise UserError(f"{len(held)} held-out caption(s) cannot be split into validation and "
                        "test captions; give at least 2 (more for meaningful numbers).")
    return validation, test


def read_eval_captions(path: str | Path, calibration_lines: Sequence[str],
                       max_samples: int | None = None) -> list[str]:
    """A user's evaluation file, all of it (up to ``max_samples``), checked disjoint."""
    lines = _lines(Path(path))[:max_samples] if max_samples else _lines(Path(path))
    check_disjoint(lines, calibration_lines)
    return lines


def calibration_captions(manifest: Manifest) -> list[str]:
    """The captions the manifest's run calibrated on, checked against its recorded digest."""
    d = manifest.dataset
    if d.modality not in (None, "text"):  # its calibration data are image-caption chats
        raise UserError(
            f"This run calibrated on {d.modality} data (image-caption chats), not on "
            "captions; read its pairs back with image_evaluate.calibration_pairs (what evaluate "
            "and export do).")
    if not d.path or not d.samples_used:
        raise UserError("The manifest does not record its calibration captions (dataset.path, "
                        "dataset.samples_used); pass the calibration captions explicitly.")
    caps = calibration.read_captions(d.path, int(d.samples_used))
    if d.sha256 and caps.sha256 != d.sha256:
        raise UserError(
            f"The captions file '{d.path}' changed since the run calibrated on it (sha256 of "
            "its first samples differs), so evaluation cannot reproduce the calibration. Restore "
            "the file or pass the calibration captions explicitly."
        )
    return list(caps.lines)
