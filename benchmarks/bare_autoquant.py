#!/usr/bin/env python
"""The least a script can do for one sensitivity analysis: load, batch, ``mtq.auto_quantize``.

The baseline of the benchmark's "runner overhead" row. It does what a ``sensitivity`` job does
between loading and solving, with the same inputs and the same ``mtq.auto_quantize`` arguments
(see ``layer_sensitivity.autoquant.run``), and nothing else: no Hydra, no MLflow, no validation,
no manifest or reports. It writes only the per-group scores (``--scores``), so the benchmark can
check that both did the same work.

    python benchmarks/bare_autoquant.py --model .cache/bench-qwen3-vl --samples 512 --scores s.json
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
from pathlib import Path

import modelopt.torch.quantization as mtq
import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer

CAPTIONS = Path(__file__).resolve().parents[1] / "src/layer_sensitivity/assets/captions/captions.txt"
FORMATS = {"fp8": mtq.FP8_DEFAULT_CFG, "int8": mtq.INT8_DEFAULT_CFG}
FROZEN = ["*visual*"]  # the vision tower stays unquantized (coverage=lm_only)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--captions", type=Path, default=CAPTIONS)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--format", choices=sorted(FORMATS), default="fp8")
    p.add_argument("--effective-bits", type=float, default=8.0, help="over the language model")
    p.add_argument("--scores", type=Path, default=None, help="write per-group scores here")
    return p.parse_args()


def forward(model: torch.nn.Module, batch: dict) -> object:
    return model(**batch, use_cache=False)


def loss(output: object, batch: dict) -> torch.Tensor:
    return output.loss  # type: ignore[attr-defined]


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32,
                                                        local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    tok.padding_side = "right"

    lines = [ln.strip() for ln in args.captions.read_text(encoding="utf-8").splitlines() if ln.strip()]
    captions = lines[: args.samples]
    batches = []
    for start in range(0, len(captions), args.batch_size):
        enc = tok(captions[start : start + args.batch_size], padding="longest", truncation=True,
                  max_length=args.seq_len, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                        "labels": labels})

    # ModelOpt's budget counts every linear layer, the frozen vision tower at 16 bits.
    lm = frozen = 0
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            if any(fnmatch.fnmatch(name, p) for p in FROZEN):
                frozen += module.weight.numel()
            else:
                lm += module.weight.numel()
    given = (args.effective_bits * lm + 16.0 * frozen) / (lm + frozen)

    _, state = mtq.auto_quantize(
        model,
        constraints={"effective_bits": given},
        quantization_formats=[FORMATS[args.format]],
        data_loader=batches,
        disabled_layers=FROZEN,
        num_calib_steps=len(batches),
        num_score_steps=math.ceil(len(captions) / args.batch_size),
        method="gradient",
        checkpoint=None,
        forward_step=forward,
        loss_func=loss,
    )
    if args.scores:
        scores = {h: max((float(s) for f, s in zip(st["formats"], st["scores"], strict=True)
                          if not str(f).startswith("NONE")), default=0.0)
                  for h, st in state["candidate_stats"].items()
                  if not (st.get("module_names") and all(
                      any(fnmatch.fnmatch(m, p) for p in FROZEN) for m in st["module_names"]))}
        args.scores.write_text(json.dumps(scores, indent=2) + "\n")


if __name__ == "__main__":
    main()
