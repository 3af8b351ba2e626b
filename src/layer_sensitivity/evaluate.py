"""What recipes cost: held-out KL to the unquantized model and caption-loss change.

For each recipe a fresh copy of the model is quantized with ``mtq.quantize`` (recipe config,
calibrated by forward passes over the run's calibration batches), then compared with the
unquantized model on held-out captions disjoint from calibration:

- ``kl``: mean over real tokens (padding masked) of KL(unquantized || quantized) of the next-token
  distributions;
- ``loss_delta``: caption loss (mean token cross-entropy) of the quantized model minus the
  unquantized model's.

Held-out captions split into **validation** (``kl``, ``loss_delta``: what a choice between recipes
may look at) and **test** (``kl_test``, ``loss_delta_test``: the numbers reported), alternating by
position (:func:`split_validation_test`), checked disjoint from each other and from calibration.

No MLflow, no Hydra: callers log the returned table.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import budgets, calibration, recipes
from .console import prints_to_log
from .errors import UserError
from .held_out import (
    calibration_captions,
    check_disjoint,
    held_out_captions,
    read_eval_captions,
    split_validation_test,
)
from .manifest_model import Manifest
from .model import loader, placement
from .recipes import Recipe
from .schema import ModelConfig

log = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 16  # evaluation needs no gradients: larger batches, fewer forwards
COLUMNS = ["name", "kind", "headroom", "target_bits", "seed", "lm_bits", "kept", "kl", "loss",
           "loss_ref", "loss_delta", "eval_tokens", "kl_test", "loss_delta_test", "test_tokens",
           "weight_quantizers", "seconds"]


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
    # Image-text batches also carry pixel_values, image_grid_thw and mm_token_type_ids.
    return {k: v for k, v in batch.items() if k != "labels"}


def _scored(batch: calibration.Batch) -> torch.Tensor:
    """Positions whose logits are compared: every real token of a captions batch; of an
    image-text chat, those that predict a caption token (image and prompt are context)."""
    if "pixel_values" not in batch:
        return batch["attention_mask"].bool()
    mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    mask[:, :-1] = batch["labels"][:, 1:] != -100
    return mask


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
        logits.append(out[_scored(b)])
    return _Reference(logits, loss_sum, tokens)


def _measure(m: torch.nn.Module, batches: list[calibration.Batch],
             ref: _Reference) -> dict[str, float]:
    kl_sum, positions, loss_sum = 0.0, 0, 0.0
    for b, ref_logits in zip(batches, ref.logits, strict=True):
        out = _forward(m, b)
        loss_sum += _loss_sum(out, b["labels"])[0]
        log_q = torch.log_softmax(out[_scored(b)].float(), dim=-1)
        log_p = torch.log_softmax(ref_logits.float(), dim=-1)
        kl_sum += float(torch.nn.functional.kl_div(log_q, log_p, log_target=True, reduction="sum"))
        positions += log_p.shape[0]
    loss = loss_sum / ref.tokens
    return {"kl": kl_sum / positions, "loss": loss, "loss_ref": ref.loss,
            "loss_delta": loss - ref.loss, "eval_tokens": positions}


def measure_configs(base: torch.nn.Module, configs: Sequence[Mapping[str, Any]],
                    calib_batches: list[calibration.Batch],
                    eval_batches: list[calibration.Batch]) -> list[dict[str, float]]:
    """Held-out KL and loss change of each config (a recipe's), each quantized from a copy of
    ``base`` calibrated on ``calib_batches``: already-built batches, e.g. image-text chats."""
    ref = _reference(base, eval_batches)
    return [_measure(quantize_copy(base, c, calib_batches), eval_batches, ref) for c in configs]


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

    with prints_to_log(log):  # ModelOpt prints "Inserted N quantizers" per copy
        return mtq.quantize(copy.deepcopy(base), copy.deepcopy(dict(config)), forward_loop)


def _row(r: Recipe) -> dict[str, Any]:
    return {"name": r.name, "kind": r.kind, "headroom": r.info.get("headroom"),
            "target_bits": r.info.get("target_bits"), "seed": r.info.get("seed"),
            "lm_bits": r.lm_bits, "kept": len(r.kept)}


def evaluate(model_dir: str | Path | loader.LoadedModel, recipe_list: Sequence[Recipe],
             calib_captions: Sequence[str], eval_captions: Sequence[str], *,
             batch_size: int = 4, seq_len: int = 128, eval_batch_size: int = EVAL_BATCH_SIZE,
             device: str = "auto", progress: bool = True,
             on_result: Callable[[dict[str, Any]], None] | None = None,
             test_captions: Sequence[str] = ()) -> pd.DataFrame:
    """One row per recipe (columns :data:`COLUMNS`): held-out KL and loss change after quantizing,
    on ``eval_captions`` (``kl``, ``loss_delta``) and, when given, ``test_captions`` (``kl_test``,
    ``loss_delta_test``; checked disjoint from both other sets).

    ``model_dir`` is a checkpoint directory, or a model already loaded (kept unquantized).
    ``batch_size`` and ``seq_len`` shape the calibration batches as the run did. Recipes with
    identical configs (e.g. every ``keep 0%``) are quantized and measured once.
    ``on_result`` is called with each row as it is measured (e.g. to log a metric).
    """
    check_disjoint(eval_captions, calib_captions)
    if test_captions:
        check_disjoint(test_captions, calib_captions)
        check_disjoint(test_captions, eval_captions)
    if isinstance(model_dir, loader.LoadedModel):
        loaded = model_dir
    else:
        path = Path(model_dir)
        dev = placement.resolve_device(device)
        loaded = loader.load(ModelConfig(name=path.name, path=str(path), device=dev), path, dev)
    tok = loaded.tokenizer
    calib = calibration.build_batches(list(calib_captions), tok, batch_size, seq_len)
    evals = calibration.build_batches(list(eval_captions), tok, eval_batch_size, seq_len)
    tests = calibration.build_batches(list(test_captions), tok, eval_batch_size, seq_len
                                      ) if test_captions else []
    return evaluate_batches(loaded, recipe_list, calib, evals, tests, progress=progress,
                            on_result=on_result)


def evaluate_batches(loaded: loader.LoadedModel, recipe_list: Sequence[Recipe],
                     calib: list[calibration.Batch], evals: list[calibration.Batch],
                     tests: list[calibration.Batch], *, progress: bool = True,
                     on_result: Callable[[dict[str, Any]], None] | None = None) -> pd.DataFrame:
    """:func:`evaluate` on batches already built (captions, or image-text chats)."""
    dev = loaded.device
    calib, evals, tests = ([{k: v.to(dev) for k, v in b.items()} for b in batches]
                           for batches in (calib, evals, tests))
    ref = _reference(loaded.model, evals)
    test_ref = _reference(loaded.model, tests) if tests else None
    log.info("reference loss %.4f over %d held-out tokens", ref.loss, ref.tokens)
    rows, measured = [], {}
    # disable=None: a bar on a terminal only (a log file gets no redraws)
    for r in tqdm(recipe_list, desc="evaluating recipes", unit="recipe",
                  disable=None if progress else True):
        key = json.dumps(recipes.jsonable(r.config), sort_keys=True)
        t = time.perf_counter()
        if key not in measured:
            q = quantize_copy(loaded.model, r.config, calib)
            measured[key] = {**_measure(q, evals, ref),
                             "weight_quantizers": _enabled_weight_quantizers(q)}
            if test_ref is not None:
                t_ = _measure(q, tests, test_ref)
                measured[key].update(kl_test=t_["kl"], loss_delta_test=t_["loss_delta"],
                                     test_tokens=t_["eval_tokens"])
            del q
        row = {**_row(r), **measured[key], "seconds": time.perf_counter() - t}
        rows.append(row)
        if on_result:
            on_result(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _evaluate_like_the_run(manifest: Manifest, todo: Sequence[Recipe], *,
                           model_dir: str | Path | None, eval_captions_path: str | Path | None,
                           max_eval_samples: int | None, device: str, eval_batch_size: int,
                           progress: bool,
                           on_result: Callable[[dict[str, Any]], None] | None = None,
                           split: bool = False) -> pd.DataFrame:
    """``todo`` on the run's model, calibrated on its captions, measured on held-out ones (split
    into validation and test captions when ``split``)."""
    from . import image_evaluate  # image-text runs: calibrated and measured on image chats

    if image_evaluate.is_image_text(manifest):
        return image_evaluate.evaluate_like_the_run(
            manifest, todo, model_dir=model_dir, eval_captions_path=eval_captions_path,
            max_eval_samples=max_eval_samples, device=device, eval_batch_size=eval_batch_size,
            progress=progress, on_result=on_result, split=split)
    mdir, calib, held = run_inputs(manifest, model_dir, eval_captions_path, max_eval_samples)
    test: list[str] = []
    if split:
        held, test = split_validation_test(held)
    d = manifest.dataset
    return evaluate(mdir, todo, calib, held, batch_size=int(d.batch_size or 4),
                    seq_len=int(d.seq_len or 128), eval_batch_size=eval_batch_size,
                    device=device, progress=progress, on_result=on_result, test_captions=test)


def measure_like_the_run(manifest: Manifest, todo: Sequence[Recipe], *,
                         device: str = "auto") -> pd.DataFrame:
    """``todo`` on the run's model, calibrated as the run did, on its default held-out captions
    split into validation (``kl``) and test (``kl_test``) halves; no progress bar."""
    return _evaluate_like_the_run(manifest, todo, model_dir=None, eval_captions_path=None,
                                  max_eval_samples=None, device=device,
                                  eval_batch_size=EVAL_BATCH_SIZE, progress=False, split=True)


def run_inputs(manifest: Manifest, model_dir: str | Path | None,
               eval_captions_path: str | Path | None, max_eval_samples: int | None
               ) -> tuple[Path, list[str], list[str]]:
    """(model directory, calibration captions, held-out captions) of the manifest's run."""
    mdir = Path(model_dir or manifest.model.id or "")
    if not (mdir / "config.json").is_file():
        raise UserError(f"Model directory '{mdir}' of the run is not there; pass model_dir=<the "
                        "checkpoint the run analysed>.")
    calib = calibration_captions(manifest)
    if eval_captions_path is None:
        held = held_out_captions(str(manifest.dataset.path), calib, mdir, max_eval_samples)
    else:
        held = read_eval_captions(eval_captions_path, calib, max_eval_samples)
    return mdir, calib, held


def evaluate_manifest(manifest: Manifest, *,
                      eval_captions_path: str | Path | None = None,
                      max_eval_samples: int | None = None,
                      quant_cfgs: Mapping[str, recipes.QuantCfg] | None = None,
                      model_dir: str | Path | None = None, device: str = "auto",
                      eval_batch_size: int = EVAL_BATCH_SIZE, progress: bool = True,
                      on_result: Callable[[dict[str, Any]], None] | None = None,
                      split: bool = False) -> pd.DataFrame:
    """The run's own (frontier or mixed) recipes, calibrated as the run did, on held-out captions
    (default: see :func:`held_out_captions`; ``split``: validation and test columns). Single-format
    runs are judged at equal bits against baselines by ``equal_bits.evaluate_equal_bits``."""
    return _evaluate_like_the_run(manifest, recipes.from_frontier(manifest, quant_cfgs),
                                  model_dir=model_dir, eval_captions_path=eval_captions_path,
                                  max_eval_samples=max_eval_samples, device=device,
                                  eval_batch_size=eval_batch_size, progress=progress,
                                  on_result=on_result, split=split)


# --------------------------------------------------------------------------------------------
# Mixed-format recipes against one format with the most sensitive groups kept at 16 bits

_SAME_CALIBRATION = (("model", "fingerprint"), ("dataset", "sha256"), ("dataset", "samples_used"),
                     ("dataset", "batch_size"), ("dataset", "seq_len"))


def evaluate_mixed(mixed_manifest: Manifest, single_manifest: Manifest, *,
                   eval_captions_path: str | Path | None = None,
                   max_eval_samples: int | None = None, model_dir: str | Path | None = None,
                   device: str = "auto", eval_batch_size: int = EVAL_BATCH_SIZE,
                   progress: bool = True) -> pd.DataFrame:
    """Each mixed recipe of a ``recipe`` run next to "the single run's format everywhere except
    its most sensitive groups kept at 16 bits" at the bits the mixed recipe achieved
    (:func:`budgets.keep_top_for_bits`), measured alike on held-out captions.

    Both runs must have analysed the same model on the same calibration data. Rows: the mixed
    recipes (kind ``mixed``), then the keep-top recipes (kind ``keep_top``), in budget order.
    """
    for section, key in _SAME_CALIBRATION:
        a = getattr(getattr(mixed_manifest, section), key)
        b = getattr(getattr(single_manifest, section), key)
        if a != b:
            raise UserError(
                f"The mixed run and the single-format run differ in {section}.{key} ({a!r} vs "
                f"{b!r}); a side-by-side needs both analysed on the same model and calibration "
                "data. Run the single-format analysis with the mixed run's data settings."
            )
    mixed = recipes.from_frontier(mixed_manifest)
    keep = [budgets.keep_top_for_bits(single_manifest, r.lm_bits) for r in mixed]
    return _evaluate_like_the_run(mixed_manifest, [*mixed, *keep], model_dir=model_dir,
                                  eval_captions_path=eval_captions_path,
                                  max_eval_samples=max_eval_samples, device=device,
                                  eval_batch_size=eval_batch_size, progress=progress)
