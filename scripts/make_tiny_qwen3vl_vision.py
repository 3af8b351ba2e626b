#!/usr/bin/env python
"""Make the embedded image-text checkpoint: a tiny Qwen3-VL whose vision tower and language model
are trained jointly on the bundled drawn-shapes captions (and on the bundled text captions).

    PYTHONPATH=src python scripts/make_tiny_qwen3vl_vision.py   # -> assets/tiny-qwen3-vl-vision

The same architecture as ``make_tiny_qwen3vl.py``'s tiny preset. Each training step takes one batch
of image-caption chats (the image, a short prompt, the caption as the answer; loss on the caption
tokens only, exactly the batches ``dataset=image_captions`` builds) and one batch of plain text
captions, so both text-only and image-text calibration mean something on this model. The model
directory also holds the image processor (``preprocessor_config.json``) and a Qwen-VL chat
template, so nothing is downloaded. ``training_report.json`` records held-out caption loss with the
image and with a blank image of the same size: the gap is what the image tells the model.
Deterministic: fixed seed, threads and deterministic kernels.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import Qwen3VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from layer_sensitivity import image_captions as ic

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "src" / "layer_sensitivity" / "assets"
SHAPES = ASSETS / "shapes-captions"
_spec = importlib.util.spec_from_file_location("make_tiny", Path(__file__).with_name(
    "make_tiny_qwen3vl.py"))
assert _spec is not None and _spec.loader is not None
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

# Qwen-VL's chat format for one image and text per turn (the part of Qwen3-VL's template that
# calibration uses; no tools, no video).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPT = "Describe the picture."
MIN_PIXELS, MAX_PIXELS = 32 * 32, 96 * 96  # the bundled images: 96 x 96 -> 9 vision tokens
BLANK = (255, 255, 255)  # the drawings' background


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ASSETS / "tiny-qwen3-vl-vision")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="1: the machine is shared")
    p.add_argument("--seq-len", type=int, default=128)
    return p.parse_args(argv)


def read_pairs(split: str) -> ic.ImageCaptions:
    return ic.read_image_captions(SHAPES / f"captions_{split}.json", SHAPES / "images", None)


def image_batch(data: ic.ImageCaptions, idx: list[int], tok, proc, blank: bool = False) -> dict:
    settings = ic.ImageSettings(PROMPT, MIN_PIXELS, MAX_PIXELS)
    names = [data.pairs[i][0] for i in idx]
    images = [Image.new("RGB", ic.open_rgb(data.images_dir, n).size, BLANK) if blank
              else ic.open_rgb(data.images_dir, n) for n in names]
    return ic.encode(images, [data.pairs[i][1] for i in idx], tok, proc, settings, 128)


def loss_sum(model, batch: dict) -> tuple[torch.Tensor, int]:
    out = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False)
    target = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), target.flatten(),
                                             ignore_index=-100, reduction="sum")
    return loss, int((target != -100).sum())


@torch.no_grad()
def image_loss(model, data: ic.ImageCaptions, tok, proc, bs: int, blank: bool) -> float:
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(data.pairs), bs):
        loss, n = loss_sum(model, image_batch(data, list(range(s, min(s + bs, len(data.pairs)))),
                                              tok, proc, blank))
        total, count = total + float(loss), count + n
    return total / count


def train(model, pairs: ic.ImageCaptions, texts: list[str], tok, proc, args) -> None:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(
        (s + 1) / warmup, 0.1 + 0.45 * (1 + math.cos(math.pi * s / max(1, args.steps)))))
    gen = torch.Generator().manual_seed(args.seed)
    img_order: list[int] = []
    txt_order: list[int] = []
    bs = args.batch_size
    for step in range(args.steps):
        if len(img_order) < bs:
            img_order += torch.randperm(len(pairs.pairs), generator=gen).tolist()
        if len(txt_order) < bs:
            txt_order += torch.randperm(len(texts), generator=gen).tolist()
        (ii, img_order), (ti, txt_order) = (img_order[:bs], img_order[bs:]), (txt_order[:bs],
                                                                              txt_order[bs:])
        il, i_n = loss_sum(model, image_batch(pairs, ii, tok, proc))
        tl, t_n = tiny.token_loss_sum(model, tiny.make_batches([texts[i] for i in ti], tok))
        (il / i_n + tl / t_n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  image-caption loss {il.item() / i_n:.3f}  "
                  f"text loss {tl.item() / t_n:.3f}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    prev = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _make(args)
    finally:
        torch.set_num_threads(prev[0])
        torch.use_deterministic_algorithms(prev[1])


def _make(args: argparse.Namespace) -> dict:
    train_pairs, val_pairs = read_pairs("train"), read_pairs("val")
    text_file = ASSETS / "captions" / "captions.txt"
    train_text, held_text = tiny.read_captions(text_file, 10)
    tok = tiny.train_tokenizer(train_text + [c for _, c in train_pairs.pairs] + [PROMPT], 2048)
    tok.chat_template = CHAT_TEMPLATE
    proc = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                    size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS})
    config = tiny.build_config("tiny", tok)
    torch.manual_seed(args.seed)
    model = Qwen3VLForConditionalGeneration(config).float()
    lm_params = sum(p.numel() for n, p in model.named_parameters() if ".visual." not in n)
    vision_params = sum(p.numel() for p in model.model.visual.parameters())
    print(f"{lm_params:,} language-model + {vision_params:,} vision parameters; "
          f"{len(train_pairs.pairs)} / {len(val_pairs.pairs)} image captions, "
          f"{len(train_text)} / {len(held_text)} text captions (train / held out)")

    bs = args.batch_size
    untrained = image_loss(model, val_pairs, tok, proc, bs, blank=False)
    start = time.perf_counter()
    train(model, train_pairs, train_text, tok, proc, args)
    seconds = time.perf_counter() - start
    with_image = image_loss(model, val_pairs, tok, proc, bs, blank=False)
    blank_image = image_loss(model, val_pairs, tok, proc, bs, blank=True)
    text_loss = tiny.caption_loss(model, held_text, tok, 32)
    print(f"held-out caption loss: with image {with_image:.4f}, blank image {blank_image:.4f} "
          f"(untrained {untrained:.4f}); held-out text loss {text_loss:.4f}; {seconds:.1f} s")

    model = model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    proc.save_pretrained(args.out)
    report = {
        "preset": "tiny",
        "architecture": dict(tiny.PRESETS["tiny"]["text"], vision=tiny.PRESETS["tiny"]["vision"]),
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "threads": args.threads, "vocab_size": len(tok), "dtype": "float32",
        "params": {"language_model": lm_params, "vision": vision_params,
                   "total": lm_params + vision_params},
        "image_captions": {"dir": "shapes-captions", "train": len(train_pairs.pairs),
                           "held_out": len(val_pairs.pairs), "train_sha256": train_pairs.sha256,
                           "held_out_sha256": val_pairs.sha256, "prompt": PROMPT,
                           "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS},
        "text_captions": {"file": text_file.name, "sha256": tiny.sha256(text_file),
                          "train": len(train_text), "held_out": len(held_text)},
        # Mean cross-entropy over held-out caption tokens (prompt and image masked).
        "held_out_caption_loss": {"untrained": round(untrained, 6),
                                  "with_image": round(with_image, 6),
                                  "blank_image": round(blank_image, 6)},
        "held_out_text_loss": round(text_loss, 6),
        "train_seconds": round(seconds, 1),
        "model_safetensors_sha256": tiny.sha256(args.out / "model.safetensors"),
    }
    return tiny.write_report(args.out, report)


if __name__ == "__main__":
    main()
