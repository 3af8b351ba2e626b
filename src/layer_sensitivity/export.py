"""A run's recipe as a servable checkpoint: quantize, calibrate as the run did, export, verify.

1. **Plan** (nothing loaded): ModelOpt validates the recipe file, its groups and formats are read
   against the run's manifest, the serving catalogue says which runtimes read the export (none:
   a UserError unless forced), the output directory must be new (or empty) in a writable folder.
2. **Quantize**: a fresh copy of the run's model, ``mtq.quantize`` with the recipe, calibrated on
   the run's captions in the run's batch shapes (the recipe carries the algorithm).
3. **Export**: ``modelopt.torch.export.export_hf_checkpoint`` into a staging folder beside the
   target, plus the tokenizer and processor files; renamed into place only once verified, so a
   failure leaves nothing half-written.
4. **Verify, not assume**: the file's weights are dequantized with their scales (and its
   activation scales applied) into a fresh unquantized model, which must reproduce the
   fake-quantized model's logits on held-out captions within :data:`LOGIT_TOLERANCE`; the vision
   tower must be unquantized in the file; held-out KL of the rebuilt model is measured next to the
   recipe's own.

No MLflow, no Hydra: ``export_runs`` logs the result.
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

from . import calibration, evaluate, recipe_files
from .catalogue import runtimes
from .errors import UserError
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
FP8_MAX = 448.0


@dataclass
class ExportPlan:
    manifest: dict[str, Any]
    recipe_path: Path
    recipe: Recipe
    serving: runtimes.Serving
    out_dir: Path
    model_dir: Path
    calib_captions: list[str]
    eval_captions: list[str]
    forced: bool = False


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


def plan(manifest: dict[str, Any], recipe_path: str | Path, out_dir: str | Path, *,
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
    mdir = Path(model_dir or (manifest.get("model") or {}).get("id") or "")
    if not (mdir / "config.json").is_file():
        raise UserError(f"Model directory '{mdir}' of the run is not there; pass --model-dir "
                        "<the checkpoint the run analysed>.")
    calib = evaluate.calibration_captions(manifest)
    if eval_captions_path is None:
        held = evaluate.held_out_captions(manifest["dataset"]["path"], calib, mdir,
                                          max_eval_samples)
    else:
        held = evaluate.read_eval_captions(eval_captions_path, calib, max_eval_samples)
    return ExportPlan(dict(manifest), path, recipe, serving, out, mdir, calib, held, force)


# --------------------------------------------------------------------------------------------
# Reading an exported checkpoint back


def _unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ModelOpt's ``pack_int4_in_uint8`` (2-D): (out/2, in) uint8 -> (out, in) int."""
    p = packed.to(torch.int16).T  # (in, out/2)
    lo, hi = p & 0x0F, (p >> 4) & 0x0F
    both = torch.stack([lo, hi], dim=-1).reshape(p.shape[0], -1)  # (in, out)
    return torch.where(both >= 8, both - 16, both).T


def layer_algos(hf_quant: Mapping[str, Any]) -> dict[str, str]:
    """module -> quant_algo of every quantized layer; ``*`` for a single-format checkpoint."""
    q = hf_quant.get("quantization") or {}
    if q.get("quant_algo") == runtimes.MIXED_PRECISION:
        return {k: str(v["quant_algo"]) for k, v in (q.get("quantized_layers") or {}).items()}
    return {"*": str(q.get("quant_algo"))} if q.get("quant_algo") else {}


def dequantize(state: Mapping[str, torch.Tensor], hf_quant: Mapping[str, Any],
               dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, float]]]:
    """The checkpoint's weights in ``dtype`` with every quantized weight dequantized with its
    scales; and module -> (quant_algo, input scale) for layers whose activations are quantized."""
    algos = layer_algos(hf_quant)
    out: dict[str, torch.Tensor] = {}
    inputs: dict[str, tuple[str, float]] = {}
    group = int((hf_quant.get("quantization") or {}).get("group_size") or 128)
    for key, t in state.items():
        if key.endswith((".weight_scale", ".input_scale", ".pre_quant_scale", ".weight_scale_2")):
            continue
        module = key.removesuffix(".weight")
        scale = state.get(f"{module}.weight_scale")
        if not key.endswith(".weight") or scale is None:
            out[key] = t.to(dtype) if t.is_floating_point() else t
            continue
        algo = algos.get(module, algos.get("*", ""))
        if algo == "FP8":
            w = t.to(torch.float32) * scale.to(torch.float32)
        elif algo == "W4A16_AWQ":
            q = _unpack_int4(t).to(torch.float32)
            s = scale.to(torch.float32).repeat_interleave(group, dim=1)[:, :q.shape[1]]
            w = q * s
        elif algo in ("W8A16", "W8A8_SQ_PER_CHANNEL"):
            w = t.to(torch.float32) * scale.to(torch.float32).reshape(-1, 1)
        else:
            raise UserError(f"Checking an export of format {algo!r} ({module}) is not supported "
                            "on this machine (FP8, W4A16_AWQ, W8A16, W8A8_SQ_PER_CHANNEL are).")
        pre = state.get(f"{module}.pre_quant_scale")
        if pre is not None:  # AWQ: y = (x * s) W^T  ==  x (W * s)^T
            w = w * pre.to(torch.float32).reshape(1, -1)
        out[key] = w.to(dtype)
        if f"{module}.input_scale" in state:
            inputs[module] = (algo, float(state[f"{module}.input_scale"].float().reshape(-1)[0]))
    return out, inputs


def _fake_quant_inputs(m: torch.nn.Module, inputs: Mapping[str, tuple[str, float]]) -> list[Any]:
    """Quantize-dequantize each listed layer's input with the file's scale, as a runtime would,
    with ModelOpt's own quantizer kernel (the same arithmetic as the fake-quantized model, so a
    value on a rounding boundary falls the same way)."""
    from modelopt.torch.quantization.config import QuantizerAttributeConfig
    from modelopt.torch.quantization.nn import TensorQuantizer

    modules = dict(m.named_modules())
    handles = []
    for name, (algo, scale) in inputs.items():
        bits, bound = ((4, 3), FP8_MAX) if algo == "FP8" else (8, 127.0)  # else W8A8 (int8)
        tq = TensorQuantizer(QuantizerAttributeConfig(num_bits=bits, axis=None))
        tq.amax = torch.tensor(scale * bound, dtype=torch.float32)
        tq.to(next(modules[name].parameters()).device)

        def hook(_mod: Any, args: tuple[Any, ...], q: Any = tq) -> tuple[Any, ...]:
            return (q(args[0]), *args[1:])

        handles.append(modules[name].register_forward_pre_hook(hook))
    return handles


def _vision_quantized(state: Mapping[str, torch.Tensor], hf_quant: Mapping[str, Any]) -> list[str]:
    scaled = [k for k in state if "visual" in k and k.endswith(("_scale", "_scale_2"))]
    low = [k for k in state if "visual" in k and k.endswith(".weight")
           and not state[k].is_floating_point()]
    listed = [k for k in layer_algos(hf_quant) if "visual" in k]
    return sorted(set(scaled + low + listed))


def read_state(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(directory.glob("*.safetensors")):
        state.update(load_file(str(f)))
    if not state:
        raise RuntimeError(f"the export in {directory} has no safetensors weights")
    return state


def rebuild(directory: Path, source_dir: Path, device: str) -> tuple[torch.nn.Module, Any]:
    """A fresh unquantized model (the source architecture) holding the export's weights,
    dequantized, with its activation scales applied; and the export's hf_quant_config."""
    hf_quant = json.loads((directory / HF_QUANT_CONFIG).read_text(encoding="utf-8"))
    loaded = loader.load(ModelConfig(name=source_dir.name, path=str(source_dir), device=device),
                        source_dir, device)
    fresh = loaded.model
    dtype = next(fresh.parameters()).dtype
    state = read_state(directory)
    vision = _vision_quantized(state, hf_quant)
    if vision:
        raise RuntimeError(f"the export quantizes the vision tower: {vision[:5]}")
    weights, inputs = dequantize(state, hf_quant, dtype)
    result = fresh.load_state_dict(weights, strict=False)
    tied = set(getattr(fresh, "_tied_weights_keys", None) or [])
    missing = [k for k in result.missing_keys if k not in tied and not k.endswith("lm_head.weight")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"the export does not fill the model: missing {missing[:5]}, "
                           f"unexpected {result.unexpected_keys[:5]}")
    fresh.to(device)
    _fake_quant_inputs(fresh, inputs)
    return fresh, hf_quant


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


def run(p: ExportPlan, device: str = "auto") -> ExportResult:
    """Quantize, calibrate, export into a staging folder, verify, move into place."""
    from modelopt.torch.export import export_hf_checkpoint

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    dev = placement.resolve_device(device)
    loaded = loader.load(ModelConfig(name=p.model_dir.name, path=str(p.model_dir), device=dev),
                        p.model_dir, dev)
    d = p.manifest["dataset"]
    batch_size, seq_len = int(d.get("batch_size") or 4), int(d.get("seq_len") or 128)
    tok = loaded.tokenizer
    calib = [{k: v.to(dev) for k, v in b.items()}
             for b in calibration.build_batches(p.calib_captions, tok, batch_size, seq_len)]
    evals = [{k: v.to(dev) for k, v in b.items()}
             for b in calibration.build_batches(p.eval_captions, tok, evaluate.EVAL_BATCH_SIZE,
                                                seq_len)]
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
        rebuilt, hf_quant = rebuild(staging, p.model_dir, dev)
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
        verify_loads(staging)
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


def verify_loads(directory: Path) -> None:
    """The exported directory loads back with transformers' own readers (config, tokenizer)."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(str(directory))
    if "quantization_config" not in config.to_dict():
        raise RuntimeError(f"{directory}/config.json has no quantization_config")
    AutoTokenizer.from_pretrained(str(directory))
