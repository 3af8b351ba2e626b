"""What recipes cost: held-out KL to the unquantized model and caption-loss change.

For each recipe a fresh copy of the model is quantized with ``mtq.quantize`` (recipe config,
calibrated by forward passes over the run's calibration batches), then compared with the
unquantized model on held-out captions disjoint from calibration:

- ``kl``: mean over real tokens (padding masked) of KL(unquantized || quantized) of the next-token
  distributions;
- ``loss_delta``: caption loss (mean token cross-entropy) of the quantized model minus the
  unquantized model's.

No MLflow, no Hydra: callers log the returned table.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import calibration, model, recipes
from .errors import UserError
from .recipes import KEEP_BOTTOM, KEEP_RANDOM, KEEP_TOP, Recipe
from .schema import ModelConfig

log = logging.getLogger(__name__)

TRAINING_REPORT = "training_report.json"  # written by scripts/make_tiny_qwen3vl.py
EVAL_BATCH_SIZE = 16  # evaluation needs no gradients: larger batches, fewer forwards
COLUMNS = ["name", "kind", "keep_fraction", "target_bits", "seed", "lm_bits", "kept", "kl", "loss",
           "loss_ref", "loss_delta", "eval_tokens", "weight_quantizers", "seconds"]


# --------------------------------------------------------------------------------------------
# Captions


def _lines(path: Path) -> list[str]:
    return list(calibration.read_captions(path, 10**9).lines)


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


def read_eval_captions(path: str | Path, calibration_lines: Sequence[str],
                       max_samples: int | None = None) -> list[str]:
    """A user's evaluation file, all of it (up to ``max_samples``), checked disjoint."""
    lines = _lines(Path(path))[:max_samples] if max_samples else _lines(Path(path))
    check_disjoint(lines, calibration_lines)
    return lines


def calibration_captions(manifest: Mapping[str, Any]) -> list[str]:
    """The captions the manifest's run calibrated on, checked against its recorded digest."""
    d = manifest.get("dataset") or {}
    if not d.get("path") or not d.get("samples_used"):
        raise UserError("The manifest does not record its calibration captions (dataset.path, "
                        "dataset.samples_used); pass the calibration captions explicitly.")
    caps = calibration.read_captions(d["path"], int(d["samples_used"]))
    if d.get("sha256") and caps.sha256 != d["sha256"]:
        raise UserError(
            f"The captions file '{d['path']}' changed since the run calibrated on it (sha256 of "
            "its first samples differs), so evaluation cannot reproduce the calibration. Restore "
            "the file or pass the calibration captions explicitly."
        )
    return list(caps.lines)


# --------------------------------------------------------------------------------------------
# Measurement


@dataclass
class _Reference:
    logits: list[torch.Tensor]  # per eval batch: logits at real positions (model dtype)
    loss_sum: float
    tokens: int  # labelled tokens the loss averages over

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens


def _no_labels(batch: calibration.Batch) -> dict[str, torch.Tensor]:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@torch.no_grad()
def _forward(m: torch.nn.Module, batch: calibration.Batch) -> torch.Tensor:
    return m(**_no_labels(batch), use_cache=False).logits


def _loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy over labelled positions (padding is -100)."""
    shifted, target = logits[:, :-1].float(), labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(shifted.reshape(-1, shifted.shape[-1]),
                                             target.reshape(-1), ignore_index=-100, reduction="sum")
    return float(loss), int((target != -100).sum())


def _reference(m: torch.nn.Module, batches: list[calibration.Batch]) -> _Reference:
    logits, loss_sum, tokens = [], 0.0, 0
    for b in batches:
        out = _forward(m, b)
        s, n = _loss_sum(out, b["labels"])
        loss_sum, tokens = loss_sum + s, tokens + n
        logits.append(out[b["attention_mask"].bool()])
    return _Reference(logits, loss_sum, tokens)


def _measure(m: torch.nn.Module, batches: list[calibration.Batch],
             ref: _Reference) -> dict[str, float]:
    kl_sum, positions, loss_sum = 0.0, 0, 0.0
    for b, ref_logits in zip(batches, ref.logits, strict=True):
        out = _forward(m, b)
        loss_sum += _loss_sum(out, b["labels"])[0]
        log_q = torch.log_softmax(out[b["attention_mask"].bool()].float(), dim=-1)
        log_p = torch.log_softmax(ref_logits.float(), dim=-1)
        kl_sum += float(torch.nn.functional.kl_div(log_q, log_p, log_target=True, reduction="sum"))
        positions += log_p.shape[0]
    loss = loss_sum / ref.tokens
    return {"kl": kl_sum / positions, "loss": loss, "loss_ref": ref.loss,
            "loss_delta": loss - ref.loss, "eval_tokens": positions}


def _enabled_weight_quantizers(m: torch.nn.Module) -> int:
    from modelopt.torch.quantization.nn import TensorQuantizer

    return sum(1 for name, q in m.named_modules()
               if isinstance(q, TensorQuantizer) and name.endswith(".weight_quantizer")
               and q.is_enabled)


def quantize_copy(base: torch.nn.Module, config: Mapping[str, Any],
                  calib_batches: list[calibration.Batch]) -> torch.nn.Module:
    """A deep copy of ``base`` quantized with ``config``, calibrated on ``calib_batches``."""
    import modelopt.torch.quantization as mtq

    def forward_loop(m: torch.nn.Module) -> None:
        for b in calib_batches:
            _forward(m, b)

    return mtq.quantize(copy.deepcopy(base), copy.deepcopy(dict(config)), forward_loop)


def _row(r: Recipe) -> dict[str, Any]:
    return {"name": r.name, "kind": r.kind, "keep_fraction": r.info.get("keep_fraction"),
            "target_bits": r.info.get("target_bits"), "seed": r.info.get("seed"),
            "lm_bits": r.lm_bits, "kept": len(r.kept)}


def evaluate(model_dir: str | Path | model.LoadedModel, recipe_list: Sequence[Recipe],
             calib_captions: Sequence[str], eval_captions: Sequence[str], *,
             batch_size: int = 4, seq_len: int = 128, eval_batch_size: int = EVAL_BATCH_SIZE,
             device: str = "auto", progress: bool = True,
             on_result: Callable[[dict[str, Any]], None] | None = None) -> pd.DataFrame:
    """One row per recipe (columns :data:`COLUMNS`): held-out KL and loss change after quantizing.

    ``model_dir`` is a checkpoint directory, or a model already loaded (kept unquantized).
    ``batch_size`` and ``seq_len`` shape the calibration batches as the run did. Recipes with
    identical configs (e.g. every ``keep 0%``) are quantized and measured once.
    ``on_result`` is called with each row as it is measured (e.g. to log a metric).
    """
    check_disjoint(eval_captions, calib_captions)
    if isinstance(model_dir, model.LoadedModel):
        loaded = model_dir
    else:
        path = Path(model_dir)
        dev = model.resolve_device(device)
        loaded = model.load(ModelConfig(name=path.name, path=str(path), device=dev), path, dev)
    tok, dev = loaded.tokenizer, loaded.device
    calib = [{k: v.to(dev) for k, v in b.items()}
             for b in calibration.build_batches(list(calib_captions), tok, batch_size, seq_len)]
    evals = [{k: v.to(dev) for k, v in b.items()}
             for b in calibration.build_batches(list(eval_captions), tok, eval_batch_size, seq_len)]
    ref = _reference(loaded.model, evals)
    log.info("reference loss %.4f over %d held-out tokens", ref.loss, ref.tokens)
    rows, measured = [], {}
    for r in tqdm(recipe_list, desc="evaluating recipes", unit="recipe", disable=not progress):
        key = json.dumps(recipes.jsonable(r.config), sort_keys=True)
        t = time.perf_counter()
        if key not in measured:
            q = quantize_copy(loaded.model, r.config, calib)
            measured[key] = {**_measure(q, evals, ref),
                             "weight_quantizers": _enabled_weight_quantizers(q)}
            del q
        row = {**_row(r), **measured[key], "seconds": time.perf_counter() - t}
        rows.append(row)
        if on_result:
            on_result(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def curves(results: pd.DataFrame, metric: str = "kl") -> pd.DataFrame:
    """Per keep fraction: guided (keep top), random mean/min/max over seeds, reverse (keep bottom),
    each with its achieved LM bits (NaN where a kind was not evaluated)."""
    keep = results[results["kind"].isin([KEEP_TOP, KEEP_BOTTOM, KEEP_RANDOM])]

    def series(kind: str, column: str, how: str = "mean") -> pd.Series:
        return keep[keep["kind"] == kind].groupby("keep_fraction")[column].agg(how)

    out = pd.DataFrame({
        "guided": series(KEEP_TOP, metric),
        "random_mean": series(KEEP_RANDOM, metric),
        "random_min": series(KEEP_RANDOM, metric, "min"),
        "random_max": series(KEEP_RANDOM, metric, "max"),
        "reverse": series(KEEP_BOTTOM, metric),
        "guided_bits": series(KEEP_TOP, "lm_bits"),
        "random_bits": series(KEEP_RANDOM, "lm_bits"),
        "reverse_bits": series(KEEP_BOTTOM, "lm_bits"),
    })
    out.index.name = "keep_fraction"
    return out


def _evaluate_like_the_run(manifest: Mapping[str, Any], todo: Sequence[Recipe], *,
                           model_dir: str | Path | None, eval_captions_path: str | Path | None,
                           max_eval_samples: int | None, device: str, eval_batch_size: int,
                           progress: bool,
                           on_result: Callable[[dict[str, Any]], None] | None = None
                           ) -> pd.DataFrame:
    """``todo`` on the run's model, calibrated on its captions, measured on held-out ones."""
    mdir = Path(model_dir or (manifest.get("model") or {}).get("id") or "")
    if not (mdir / "config.json").is_file():
        raise UserError(f"Model directory '{mdir}' of the run is not there; pass model_dir=<the "
                        "checkpoint the run analysed>.")
    calib = calibration_captions(manifest)
    if eval_captions_path is None:
        held = held_out_captions(manifest["dataset"]["path"], calib, mdir, max_eval_samples)
    else:
        held = read_eval_captions(eval_captions_path, calib, max_eval_samples)
    d = manifest["dataset"]
    return evaluate(mdir, todo, calib, held, batch_size=int(d.get("batch_size") or 4),
                    seq_len=int(d.get("seq_len") or 128), eval_batch_size=eval_batch_size,
                    device=device, progress=progress, on_result=on_result)


def evaluate_manifest(manifest: Mapping[str, Any], *,
                      keep_fractions: Sequence[float] = recipes.DEFAULT_KEEP,
                      seeds: Sequence[int] = recipes.RANDOM_SEEDS,
                      eval_captions_path: str | Path | None = None,
                      max_eval_samples: int | None = None,
                      quant_cfgs: Mapping[str, recipes.QuantCfg] | None = None,
                      include_frontier: bool = True, model_dir: str | Path | None = None,
                      device: str = "auto", eval_batch_size: int = EVAL_BATCH_SIZE,
                      progress: bool = True,
                      on_result: Callable[[dict[str, Any]], None] | None = None) -> pd.DataFrame:
    """Evaluate a sensitivity run: its frontier recipes, keep-top at ``keep_fractions`` and the
    random (``seeds``) and reverse baselines, on held-out captions (default: see
    :func:`held_out_captions`), calibrating exactly as the run did."""
    groups = recipes.manifest_groups(manifest)
    searched = sorted({f for g in groups for f in g.costs if f != recipes.NONE})
    cfgs = dict(quant_cfgs) if quant_cfgs is not None else recipes.format_configs(manifest)
    todo: list[Recipe] = []
    if include_frontier:
        todo += recipes.from_frontier(manifest, cfgs)
    if len(searched) == 1:
        todo += recipes.evaluation_recipes(manifest, cfgs[searched[0]], keep_fractions, seeds)
    return _evaluate_like_the_run(manifest, todo, model_dir=model_dir,
                                  eval_captions_path=eval_captions_path,
                                  max_eval_samples=max_eval_samples, device=device,
                                  eval_batch_size=eval_batch_size, progress=progress,
                                  on_result=on_result)


# --------------------------------------------------------------------------------------------
# Mixed-format recipes against one format with the most sensitive groups kept at 16 bits

_SAME_CALIBRATION = (("model", "fingerprint"), ("dataset", "sha256"), ("dataset", "samples_used"),
                     ("dataset", "batch_size"), ("dataset", "seq_len"))


def evaluate_mixed(mixed_manifest: Mapping[str, Any], single_manifest: Mapping[str, Any], *,
                   eval_captions_path: str | Path | None = None,
                   max_eval_samples: int | None = None, model_dir: str | Path | None = None,
                   device: str = "auto", eval_batch_size: int = EVAL_BATCH_SIZE,
                   progress: bool = True) -> pd.DataFrame:
    """Each mixed recipe of a ``recipe`` run next to "the single run's format everywhere except
    its most sensitive groups kept at 16 bits" at the bits the mixed recipe achieved
    (:func:`recipes.keep_top_for_bits`), measured alike on held-out captions.

    Both runs must have analysed the same model on the same calibration data. Rows: the mixed
    recipes (kind ``mixed``), then the keep-top recipes (kind ``keep_top``), in budget order.
    """
    for section, key in _SAME_CALIBRATION:
        a = (mixed_manifest.get(section) or {}).get(key)
        b = (single_manifest.get(section) or {}).get(key)
        if a != b:
            raise UserError(
                f"The mixed run and the single-format run differ in {section}.{key} ({a!r} vs "
                f"{b!r}); a side-by-side needs both analysed on the same model and calibration "
                "data. Run the single-format analysis with the mixed run's data settings."
            )
    mixed = recipes.from_frontier(mixed_manifest)
    keep = [recipes.keep_top_for_bits(single_manifest, r.lm_bits) for r in mixed]
    return _evaluate_like_the_run(mixed_manifest, [*mixed, *keep], model_dir=model_dir,
                                  eval_captions_path=eval_captions_path,
                                  max_eval_samples=max_eval_samples, device=device,
                                  eval_batch_size=eval_batch_size, progress=progress)
