"""A run's recipe as a servable checkpoint: quantize, calibrate as the run did, export, verify.

1. **Plan** (nothing loaded): ModelOpt validates the recipe file, its groups and formats are read
   against the run's manifest, the serving catalogue says which runtimes read the export (none:
   a UserError unless forced), the output directory must be new (or empty) in a writable folder.
2. **Quantize**: a fresh copy of the run's model, ``mtq.quantize`` with the recipe, calibrated on
   the run's captions in the run's batch shapes (the recipe carries the algorithm). An image-text
   run (``dataset=image_captions``) calibrates on its own image-caption chats and is measured on
   held-out pairs of other images, as ``evaluate`` does (``image_evaluate``).
3. **Export**: ``modelopt.torch.export.export_hf_checkpoint`` into a staging folder beside the
   target, plus the tokenizer and processor files (image processor, chat template); renamed into
   place only once verified, so a failure leaves nothing half-written.
4. **Verify, not assume**: the file's weights are dequantized with their scales (and its
   activation scales applied) into a fresh unquantized model, which must reproduce the
   fake-quantized model's logits on held-out captions (or image-text chats, through the file's
   vision tower) within :data:`LOGIT_TOLERANCE`; the vision tower must be unquantized in the file;
   held-out KL of the rebuilt model is measured next to the recipe's own.

No MLflow, no Hydra: ``tasks/export.py`` logs the result.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import calibration, evaluate, held_out, image_captions, image_evaluate, recipe_files
from .catalogue import runtimes
from .errors import UserError
from .exported_checkpoint import rebuild
from .manifest_model import Manifest
from .model import loader, placement
from .recipes import Recipe
from .schema import ModelConfig

log = logging.getLogger(__name__)

HF_QUANT_CONFIG = "hf_quant_config.json"
# Files a processor or tokenizer may need besides what tokenizer.save_pretrained writes.
PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json",
                   "processor_config.json", "chat_template.json", "chat_template.jinja")
# Rebuilt-from-file logits vs the fake-quantized model's, relative to its largest |logit|. The
# file's weights and scales are the fake-quantized model's exactly (checked); what differs is
# float summation order in a few matmuls (1 ulp), which FP8 activation rounding can amplify when a
# value sits on a rounding boundary. Measured on the embedded model (README): max 0.74% (FP8
# keep_top_25pct), 0.93% (FP8+INT4 mix at 6 bits), 5e-7 (INT4 weight-only); held-out KL within 1%.
LOGIT_TOLERANCE = 0.02  # max
MEAN_LOGIT_TOLERANCE = 1e-4  # mean
WEIGHT_TOLERANCE = 1e-6  # dequantized file weights vs fake-quantized weights, relative


@dataclass
class ExportPlan:
    manifest: Manifest
    recipe_path: Path
    recipe: Recipe
    serving: runtimes.Serving
    out_dir: Path
    model_dir: Path
    calib_captions: list[str]
    eval_captions: list[str]  # an image-text run: the held-out pairs' captions
    forced: bool = False
    images: image_evaluate.RunPairs | None = None  # an image-text run's pairs and settings


@dataclass
class ExportResult:
    plan: ExportPlan
    out_dir: Path
    quant_algo: str | None
    kl_recipe: float  # held-out KL of the fake-quantized model (what evaluate measures)
    kl_export: float  # held-out KL of the model rebuilt from the exported files
    loss_delta_export: float
    max_logit_error: float  # max |rebuilt - fake-quantized| / max |fake-quantized logit|
    mean_logit_error: float  # mean |rebuilt - fake-quantized| / max |fake-quantized logit|
    weight_error: float  # max over layers: |dequantized file weight - fake-quantized| / max |w|
    eval_tokens: int
    verified: bool  # max_logit_error within LOGIT_TOLERANCE (only a forced export may be False)
    files: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        return {"export/kl": self.kl_export, "export/recipe_kl": self.kl_recipe,
                "export/loss_delta": self.loss_delta_export,
                "export/max_logit_error": self.max_logit_error,
                "export/mean_logit_error": self.mean_logit_error,
                "export/weight_error": self.weight_error,
                "export/lm_bits": self.plan.recipe.lm_bits,
                "export/eval_tokens": float(self.eval_tokens)}


# --------------------------------------------------------------------------------------------
# Plan


def check_output(out_dir: Path) -> None:
    """A new (or empty) directory in a folder we can write to; checked before anything runs."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"Output '{out_dir}' already exists and is not an empty directory. "
                        "Choose a new path (the export never overwrites a checkpoint).")
    parent = out_dir.parent
    probe_dir = parent
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:  # really writable (permissions, read-only or special file systems), then cleaned up
        if not probe_dir.is_dir():
            raise NotADirectoryError(str(probe_dir))
        Path(tempfile.mkdtemp(prefix=".export-probe-", dir=probe_dir)).rmdir()
    except OSError as e:
        raise UserError(f"Cannot write the export under '{parent}' ('{probe_dir}': "
                        f"{e.strerror or type(e).__name__}). Pass --out in a folder you can "
                        "write to.") from None


def plan(manifest: Manifest, recipe_path: str | Path, out_dir: str | Path, *,
         force: bool = False, eval_captions_path: str | Path | None = None,
         max_eval_samples: int | None = None, model_dir: str | Path | None = None) -> ExportPlan:
    """Everything decided before the model loads; a UserError for any bad input."""
    out = Path(out_dir).expanduser().absolute()
    check_output(out)
    path = Path(recipe_path)
    recipe = recipe_files.read_recipe(path, manifest)
    if not recipe.quantized:
        raise UserError(f"Recipe '{path.name}' quantizes no layer (every group kept at 16 bits); "
                        "its export would be the unquantized model. Pick a recipe that "
                        "quantizes something (e.g. keep_top_25pct).")
    serving = runtimes.serving(runtimes.recipe_layer_kinds(recipe_files.module_settings(
        recipe_files.raw(path).get("quantize") or {})))
    if not serving.servable and not force:
        why = "; ".join(f"{k}: {v}" for k, v in serving.unserved.items())
        raise UserError(
            f"No runtime serves the export of recipe '{path.name}' ({serving.summary()}): {why}. "
            "TensorRT-LLM, vLLM and SGLang would not load it as measured. Export a recipe of a "
            "served pair (e.g. wfp8_afp8, wint4_afp16; see the README's runtime table), or "
            "pass --force to write the checkpoint anyway."
        )
    if any(h.startswith("lm_head") for h in recipe.quantized):
        log.warning("recipe %s quantizes lm_head; deploy runtimes usually keep it at 16 bits, so "
                    "check that yours loads a quantized lm_head (or rerun with "
                    "autoquant.lm_head=false)", path.name)
    mdir = Path(model_dir or manifest.model.id or "")
    if not (mdir / "config.json").is_file():
        raise UserError(f"Model directory '{mdir}' of the run is not there; pass --model-dir "
                        "<the checkpoint the run analysed>.")
    if image_evaluate.is_image_text(manifest):  # calibrated on image-caption chats
        pairs = image_evaluate.run_pairs(manifest, mdir, eval_captions_path, max_eval_samples)
        return ExportPlan(manifest, path, recipe, serving, out, mdir,
                          list(pairs.calib.captions.lines), list(pairs.held.captions.lines),
                          force, pairs)
    calib = held_out.calibration_captions(manifest)
    if eval_captions_path is None:
        held = held_out.held_out_captions(str(manifest.dataset.path), calib, mdir,
                                          max_eval_samples)
    else:
        held = held_out.read_eval_captions(eval_captions_path, calib, max_eval_samples)
    return ExportPlan(manifest, path, recipe, serving, out, mdir, calib, held, force)


# --------------------------------------------------------------------------------------------
# Run


def _logits(m: torch.nn.Module, batches: list[calibration.Batch]) -> list[torch.Tensor]:
    return [evaluate._forward(m, b)[b["attention_mask"].bool()].float() for b in batches]


def _fake_quantized_weights(q: torch.nn.Module) -> dict[str, torch.Tensor]:
    """module -> its weight as the fake-quantized model computes with it (quantize-dequantize)."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    out = {}
    with torch.no_grad():
        for name, mod in q.named_modules():
            wq = getattr(mod, "weight_quantizer", None)
            if isinstance(wq, TensorQuantizer) and wq.is_enabled:
                out[name] = wq(mod.weight).detach().float().cpu()
    return out


def _weight_error(rebuilt: torch.nn.Module, fake: Mapping[str, torch.Tensor]) -> float:
    modules = dict(rebuilt.named_modules())
    worst = 0.0
    for name, w in fake.items():
        got = modules[name].weight.detach().float().cpu()
        worst = max(worst, float((got - w).abs().max()) / max(float(w.abs().max()), 1e-30))
    return worst


def _max_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """max |got - want| relative to the largest |want|, over every eval position."""
    err = max(float((a - b).abs().max()) for a, b in zip(got, want, strict=True))
    return err / max(float(b.abs().max()) for b in want)


def _mean_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """mean |got - want| relative to the largest |want|."""
    total = sum(float((a - b).abs().sum()) for a, b in zip(got, want, strict=True))
    count = sum(b.numel() for b in want)
    return total / count / max(float(b.abs().max()) for b in want)


def _copy_tokenizer_files(tokenizer: Any, source: Path, staging: Path) -> None:
    tokenizer.save_pretrained(str(staging))
    for name in PROCESSOR_FILES:
        if (source / name).is_file() and not (staging / name).exists():
            shutil.copy2(source / name, staging / name)


def _batches(p: ExportPlan, tokenizer: Any, batch_size: int, seq_len: int
             ) -> tuple[list[calibration.Batch], list[calibration.Batch]]:
    """(calibration, held-out) batches: captions, or an image-text run's chats."""
    if p.images is None:
        return (calibration.build_batches(p.calib_captions, tokenizer, batch_size, seq_len),
                calibration.build_batches(p.eval_captions, tokenizer, evaluate.EVAL_BATCH_SIZE,
                                          seq_len))
    build = image_evaluate.batch_builder(p.model_dir, tokenizer, p.images.settings, seq_len)
    return build(p.images.calib, batch_size), build(p.images.held, evaluate.EVAL_BATCH_SIZE)


def run(p: ExportPlan, device: str = "auto") -> ExportResult:
    """Quantize, calibrate, export into a staging folder, verify, move into place."""
    from modelopt.torch.export import export_hf_checkpoint

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    dev = placement.resolve_device(device)
    loaded = loader.load(ModelConfig(name=p.model_dir.name, path=str(p.model_dir), device=dev),
                        p.model_dir, dev)
    d = p.manifest.dataset
    batch_size, seq_len = int(d.batch_size or 4), int(d.seq_len or 128)
    tok = loaded.tokenizer
    calib, evals = ([{k: v.to(dev) for k, v in b.items()} for b in batches]
                    for batches in _batches(p, tok, batch_size, seq_len))
    ref = evaluate._reference(loaded.model, evals)
    q = evaluate.quantize_copy(loaded.model, p.recipe.config, calib)
    fake = evaluate._measure(q, evals, ref)
    fake_logits = _logits(q, evals)
    fake_weights = _fake_quantized_weights(q)
    seconds["quantize"] = time.perf_counter() - t

    t = time.perf_counter()
    p.out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{p.out_dir.name}.", suffix=".staging",
                                    dir=p.out_dir.parent))
    try:
        with torch.inference_mode():
            export_hf_checkpoint(q, export_dir=staging)
        _copy_tokenizer_files(tok, p.model_dir, staging)
        seconds["export"] = time.perf_counter() - t
        t = time.perf_counter()
        del q
        hf_quant = json.loads((staging / HF_QUANT_CONFIG).read_text(encoding="utf-8"))
        rebuilt = rebuild(staging, hf_quant, p.model_dir, dev)
        weight_error = _weight_error(rebuilt, fake_weights)
        if weight_error > WEIGHT_TOLERANCE:
            raise RuntimeError(f"the exported weights, dequantized, differ from the fake-quantized "
                               f"ones by {weight_error:.3g} (relative) > {WEIGHT_TOLERANCE}")
        exported = evaluate._measure(rebuilt, evals, ref)
        rebuilt_logits = _logits(rebuilt, evals)
        rel = _max_error(rebuilt_logits, fake_logits)
        mean_rel = _mean_error(rebuilt_logits, fake_logits)
        verified = rel <= LOGIT_TOLERANCE and mean_rel <= MEAN_LOGIT_TOLERANCE
        if not verified and not p.forced:
            raise RuntimeError(f"the exported weights do not reproduce the fake-quantized logits: "
                               f"max error {rel:.4g} (tolerance {LOGIT_TOLERANCE}), mean error "
                               f"{mean_rel:.4g} (tolerance {MEAN_LOGIT_TOLERANCE}) of the largest "
                               "logit")
        if not verified:
            log.warning("forced export: the checkpoint does not reproduce the fake-quantized "
                        "logits (max error %.4g, mean %.4g of the largest logit)", rel, mean_rel)
        verify_loads(staging, images=p.images is not None)
        seconds["verify"] = time.perf_counter() - t
        if p.out_dir.exists():
            p.out_dir.rmdir()  # empty, checked by plan
        os.replace(staging, p.out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    quant_algo = (hf_quant.get("quantization") or {}).get("quant_algo")
    log.info("exported %s (%s) to %s: held-out KL %.5f (fake-quantized recipe %.5f); logit error "
             "max %.2e, mean %.2e of the largest logit", p.recipe.name, quant_algo, p.out_dir,
             exported["kl"], fake["kl"], rel, mean_rel)
    return ExportResult(p, p.out_dir, quant_algo, float(fake["kl"]), float(exported["kl"]),
                        float(exported["loss_delta"]), rel, mean_rel, weight_error,
                        int(exported["eval_tokens"]),
                        verified, sorted(f.name for f in p.out_dir.iterdir()), seconds)


def verify_loads(directory: Path, images: bool = False) -> None:
    """The exported directory loads back with transformers' own readers (config, tokenizer; with
    ``images``, the image processor and chat template an image-text deployment needs)."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(str(directory))
    if "quantization_config" not in config.to_dict():
        raise RuntimeError(f"{directory}/config.json has no quantization_config")
    AutoTokenizer.from_pretrained(str(directory))
    if images:
        image_captions.check_image_support(directory)
        image_captions.load_image_processor(directory)
