#!/usr/bin/env python
"""Make the embedded default checkpoint: a tiny Qwen3-VL trained briefly on the bundled captions.

Everything is built locally (no hub access) and deterministically: the same arguments on the
same machine give a byte-identical ``model.safetensors``.

    python scripts/make_tiny_qwen3vl.py                       # tiny preset -> assets/tiny-qwen3-vl
    python scripts/make_tiny_qwen3vl.py --preset bench --out .cache/bench-qwen3-vl
    python scripts/make_tiny_qwen3vl.py --preset deep --out .cache/deep-qwen3-vl   # 8 layers

Steps: train a byte-level BPE tokenizer on the training captions, build a real
``Qwen3VLForConditionalGeneration`` (language model + vision tower), train only on text
(next-token loss), evaluate held-out caption loss before and after, save model, tokenizer and
``training_report.json``. The vision tower keeps its seeded random initialisation: calibration
in this project is text-only, the tower exists so the architecture (and module names) match a
real Qwen3-VL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import tokenizers
import torch
import torch.nn.functional as F
import transformers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "src" / "layer_sensitivity" / "assets"

# Model sizes. mrope_section splits head_dim // 2 rotary frequencies over (time, height, width).
PRESETS: dict[str, dict] = {
    "tiny": dict(
        text=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, intermediate_size=384,
                  mrope_section=[4, 6, 6]),
        vision=dict(depth=2, hidden_size=64, num_heads=2, intermediate_size=128,
                    deepstack_visual_indexes=[0]),
        # ~8 epochs of the 621 training captions: held-out loss is lowest around here; longer
        # runs memorise the training captions and held-out loss climbs back up.
        steps=200,
    ),
    "deep": dict(
        text=dict(hidden_size=128, num_hidden_layers=8, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, intermediate_size=384,
                  mrope_section=[4, 6, 6]),
        vision=dict(depth=2, hidden_size=64, num_heads=2, intermediate_size=128,
                    deepstack_visual_indexes=[0]),
        # The validity model (scripts/equal_bits_table.py, tests/e2e/test_validity.py): the tiny
        # model's widths with 8 decoder layers, so depth rules of thumb have room to be wrong.
        steps=200,
    ),
    "bench": dict(
        text=dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64, intermediate_size=1536,
                  mrope_section=[8, 12, 12]),
        vision=dict(depth=4, hidden_size=128, num_heads=4, intermediate_size=512,
                    deepstack_visual_indexes=[1, 3]),
        # The benchmark model (benchmarks/bench.py, conf/model/bench_qwen3_vl.yaml): 27 M
        # language-model parameters, so a default job on the large captions takes about a minute
        # on 2 cores. 100 steps give held-out loss 5.35 (7.68 untrained) in 90 s.
        steps=100,
    ),
}

# Qwen's special tokens, first in the vocabulary so their ids (0..6) do not depend on training.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# Qwen2's pre-tokenizer split: contractions, words, single digits, punctuation runs, spaces.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
              r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
FP32_LIMIT_BYTES = 10 * 1024 * 1024  # above this the checkpoint is stored in bf16


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default: assets/tiny-qwen3-vl for the tiny preset)")
    p.add_argument("--captions", type=Path, default=ASSETS / "captions" / "captions.txt")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: preset's)")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="fixed so float sums happen in one order")
    p.add_argument("--holdout-every", type=int, default=10, help="every Nth caption is held out")
    args = p.parse_args(argv)
    if args.out is None:
        if args.preset != "tiny":
            p.error("--out is required for presets other than tiny (only tiny is bundled)")
        args.out = ASSETS / "tiny-qwen3-vl"
    if args.steps is None:
        args.steps = PRESETS[args.preset]["steps"]
    return args


def read_captions(path: Path, every: int) -> tuple[list[str], list[str]]:
    """(train, held_out): every ``every``-th caption is held out, so all topics appear in both."""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    held = [c for i, c in enumerate(lines) if i % every == every - 1]
    train = [c for i, c in enumerate(lines) if i % every != every - 1]
    return train, held


def train_tokenizer(captions: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Qwen's normalisation and split, so any UTF-8 text is encodable."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(captions, trainer=trainer)
    # Like Qwen: no BOS, nothing added around the text, pad right with <|endoftext|>.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:], model_max_length=512,
        padding_side="right", clean_up_tokenization_spaces=False,
    )


def build_config(preset: str, tok: PreTrainedTokenizerFast) -> Qwen3VLConfig:
    text, vision = dict(PRESETS[preset]["text"]), dict(PRESETS[preset]["vision"])
    ids: dict[str, int] = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}  # type: ignore[misc]
    eos = ids["<|endoftext|>"]
    mrope = text.pop("mrope_section")
    assert sum(mrope) == text["head_dim"] // 2, "mrope_section must cover head_dim // 2"
    # eos/pad ids go through Qwen3VLConfig's **kwargs (not in its typed signature).
    return Qwen3VLConfig(  # type: ignore[call-arg]
        text_config=dict(
            **text, vocab_size=len(tok), max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            bos_token_id=None, eos_token_id=eos, pad_token_id=eos,
        ),
        vision_config=dict(
            **vision, out_hidden_size=text["hidden_size"], patch_size=16, temporal_patch_size=2,
            spatial_merge_size=2, num_position_embeddings=256,  # a 16x16 grid of patch positions
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=eos, pad_token_id=eos,
        tie_word_embeddings=False,  # lm_head is its own (quantizable) layer
    )


def make_batches(captions: list[str], tok: PreTrainedTokenizerFast) -> dict[str, torch.Tensor]:
    """Each caption + <|endoftext|>, padded right; padding is -100 in labels so the loss skips it."""
    ids = [tok(c)["input_ids"] + [tok.eos_token_id] for c in captions]
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tok.pad_token_id)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": mask,
            "labels": input_ids.masked_fill(mask == 0, -100)}


def token_loss_sum(model, batch: dict) -> tuple[torch.Tensor, int]:
    """(summed next-token cross-entropy, number of predicted tokens)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    target = batch["labels"][:, 1:]
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten(), ignore_index=-100,
                           reduction="sum")
    return loss, int((target != -100).sum())


@torch.no_grad()
def caption_loss(model, captions: list[str], tok, batch_size: int) -> float:
    """Mean token cross-entropy over all the captions' tokens (not a mean of batch means)."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(captions), batch_size):
        loss, n = token_loss_sum(model, make_batches(captions[start : start + batch_size], tok))
        total, count = total + float(loss), count + n
    return total / count


def train(model, captions: list[str], tok, steps: int, batch_size: int, lr: float,
          seed: int) -> None:
    """AdamW, linear warm-up then cosine decay; epochs are reshuffled by a seeded generator."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(
        (s + 1) / warmup, 0.1 + 0.45 * (1 + math.cos(math.pi * s / max(1, steps)))))
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for step in range(steps):
        if len(order) < batch_size:  # a new epoch: top up with a fresh permutation
            order += torch.randperm(len(captions), generator=gen).tolist()
        picked, order = order[:batch_size], order[batch_size:]
        loss, n = token_loss_sum(model, make_batches([captions[i] for i in picked], tok))
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item() / n:.3f}", flush=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # Determinism: fixed seed, deterministic kernels, one thread count (changes summation order).
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _make(args)
    finally:  # leave the caller's process (e.g. pytest) as it was
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)


def _make(args: argparse.Namespace) -> dict:
    train_caps, held_caps = read_captions(args.captions, args.holdout_every)
    tok = train_tokenizer(train_caps, args.vocab_size)
    config = build_config(args.preset, tok)

    torch.manual_seed(args.seed)
    model = Qwen3VLForConditionalGeneration(config).float()
    lm_params = sum(p.numel() for n, p in model.named_parameters() if ".visual." not in n)
    vision_params = sum(p.numel() for p in model.model.visual.parameters())
    print(f"{args.preset}: {lm_params:,} language-model + {vision_params:,} vision parameters, "
          f"vocab {len(tok)}, {len(train_caps)} train / {len(held_caps)} held-out captions")

    untrained = caption_loss(model, held_caps, tok, args.batch_size)
    start = time.perf_counter()
    train(model, train_caps, tok, args.steps, args.batch_size, args.lr, args.seed)
    train_seconds = time.perf_counter() - start
    trained = caption_loss(model, held_caps, tok, args.batch_size)
    train_set = caption_loss(model, train_caps, tok, args.batch_size)  # shows any memorising
    print(f"held-out loss: untrained {untrained:.4f} -> trained {trained:.4f} "
          f"(training captions {train_set:.4f}; {args.steps} steps, {train_seconds:.1f} s)")

    fp32_bytes = 4 * (lm_params + vision_params)
    dtype = torch.float32 if fp32_bytes <= FP32_LIMIT_BYTES else torch.bfloat16
    model = model.to(dtype).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)

    report = {
        "preset": args.preset,
        "architecture": dict(PRESETS[args.preset]["text"], vision=PRESETS[args.preset]["vision"]),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "vocab_size": len(tok),
        "dtype": str(dtype).removeprefix("torch."),
        "params": {"language_model": lm_params, "vision": vision_params,
                   "total": lm_params + vision_params},
        "captions": {"file": args.captions.name, "sha256": sha256(args.captions),
                     "train": len(train_caps), "held_out": len(held_caps),
                     "held_out_rule": f"line index % {args.holdout_every} == "
                                      f"{args.holdout_every - 1}"},
        "held_out_loss": {"untrained": round(untrained, 6), "trained": round(trained, 6)},
        "train_captions_loss": round(train_set, 6),
        "train_seconds": round(train_seconds, 1),
        "model_safetensors_sha256": sha256(args.out / "model.safetensors"),
    }
    return write_report(args.out, report)


def write_report(out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """``training_report.json`` in ``out``, the library versions last."""
    report["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                          "tokenizers": tokenizers.__version__}
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
