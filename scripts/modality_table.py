#!/usr/bin/env python
"""Text-only vs image-text sensitivity of the same language model: a Markdown table.

For each precision pair, three AutoQuantize jobs on the image-text embedded model
(``model=tiny_qwen3_vl_vision``, no tracking, no score cache):

- ``text``: the project's default text calibration (``dataset=captions``),
- ``caption_text``: the image set's own captions as plain text (the same words, no image),
- ``image_text``: ``dataset=image_captions`` (the image, a prompt, the caption as the answer).

``caption_text`` separates what the images change from what the other captions change. Printed:
per group, its share of the run's total importance and its rank under each modality; Spearman
between every two modalities; the groups that move most between text and image-text. For pairs
that quantize activations (fp8), also how much each layer's static activation scale (amax, from
``mtq.quantize`` calibration with the vision tower unquantized) changes when image tokens are
present: image_text amax / text amax per linear layer of the language model. Last, the held-out
image-text KL of recipes chosen from the text and the image-text rankings at equal bits.

    PYTHONPATH=src python scripts/modality_table.py                  # fp8 and int4, size small
    PYTHONPATH=src python scripts/modality_table.py --pairs fp8 --size medium
    PYTHONPATH=src python scripts/modality_table.py --size medium --no-kl --amax-pairs \
        --json out.json     # the scores only, as numbers (tests/e2e/test_modality_table.py)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from layer_sensitivity import compare, pipeline
from layer_sensitivity.cli.config_store import CONF_DIR, register
from layer_sensitivity.schema import SensitivityConfig

MODALITIES = ("text", "caption_text", "image_text")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", nargs="+", default=["fp8", "int4"])
    p.add_argument("--size", default="small", choices=["small", "medium", "large"])
    p.add_argument("--method", default="gradient", choices=["gradient", "kl_div"])
    p.add_argument("--amax-pairs", nargs="*", default=["fp8"],
                   help="pairs whose activation amax change is measured (activations quantized)")
    p.add_argument("--no-kl", dest="kl", action="store_false",
                   help="skip the held-out KL of recipes chosen from each ranking")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    return p.parse_args(argv)


def config(pair: str, modality: str, size: str, method: str, work: Path) -> SensitivityConfig:
    overrides = ["model=tiny_qwen3_vl_vision", f"quant_pair={pair}", f"dataset.size={size}",
                 f"autoquant.method={method}", "autoquant.reuse_scores=false", "tracking=none"]
    if modality == "image_text":
        overrides.append("dataset=image_captions")
    elif modality == "caption_text":
        overrides.append(f"dataset.captions_path={shape_captions(work)}")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sensitivity", overrides=overrides)
    cfg.output_layout.dir = str(work / "out")
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def shape_captions(work: Path) -> Path:
    """The image set's training captions, one per line, in file order (as image_text uses them)."""
    path = work / "shape_captions.txt"
    if not path.exists():
        from layer_sensitivity import paths

        doc = json.loads(Path(paths.asset("shapes-captions/captions_train.json")).read_text())
        path.write_text("".join(a["caption"] + "\n" for a in doc["annotations"]))
    return path


def measure(pair: str, size: str, method: str, work: Path
            ) -> tuple[compare.Comparison, dict[str, Any]]:
    manifests = {}
    for modality in MODALITIES:
        p = pipeline.plan(config(pair, modality, size, method, work))
        manifests[modality] = pipeline.run(p, work / f"{pair}-{modality}").manifest
    return compare.compare(manifests), manifests


HEADROOM = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)  # LM bit budgets: from the pair (0) to 16 bits (1)


def equal_bits_kl(pair: str, size: str, manifests: dict[str, Any], work: Path
                  ) -> list[dict[str, Any]]:
    """Held-out image-text KL of the keep-top recipes chosen from each modality's ranking at the
    same LM bits: both calibrated on the same image-text chats (the training split), measured on
    the 40 held-out images (captions_val.json, disjoint images)."""
    from layer_sensitivity import budgets, evaluate, image_captions, paths
    from layer_sensitivity.reuse import Resources

    p = pipeline.plan(config(pair, "image_text", size, "gradient", work))
    resources = Resources()
    calib = pipeline.calibration_data(p, resources)
    assets = Path(paths.asset("shapes-captions"))
    held = image_captions.read_image_captions(assets / "captions_val.json", assets / "images", None)
    assert p.images is not None and not {n for n, _ in held.pairs} & {n for n, _ in p.images.pairs}
    tok = resources.tokenizer(p.cfg.model, p.checkpoint)
    evals = image_captions.build_batches(held, tok, image_captions.load_image_processor(
        p.checkpoint), p.image_settings, 8, p.cfg.dataset.calib_seq_len)
    base = resources.model(p.cfg.model, p.checkpoint, p.device).model
    rows = []
    for h in HEADROOM:
        chosen = {m: budgets.keep_top(manifests[m], headroom=[h])[0] for m in ("text", "image_text")}
        kl = evaluate.measure_configs(base, [r.config for r in chosen.values()], calib, evals)
        rows.append({"headroom": h,
                     **{f"lm_bits_{m}": r.lm_bits for m, r in chosen.items()},
                     **{f"kl_{m}": k["kl"] for m, k in zip(chosen, kl, strict=True)},
                     **{f"kept_{m}": list(r.kept) for m, r in chosen.items()}})
    return rows


def kl_table(pair: str, rows: list[dict[str, Any]], names: Any) -> str:
    lines = [f"Held-out image-text KL at equal bits ({pair}; recipe chosen from each ranking):", "",
             "| headroom | LM bits (text / image) | kept | KL, text ranking | "
             "KL, image-text ranking | kept only by text | kept only by image-text |",
             "|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        t, i = r["kept_text"], r["kept_image_text"]
        only = {"text": [h for h in t if h not in i], "image_text": [h for h in i if h not in t]}
        shown = {m: ", ".join(str(names.get(h, h)) for h in hs) or "-" for m, hs in only.items()}
        lines.append(f"| {r['headroom']:.0%} | {r['lm_bits_text']:.2f} / "
                     f"{r['lm_bits_image_text']:.2f} | {len(t)} / {len(i)} | "
                     f"{r['kl_text']:.4g} | {r['kl_image_text']:.4g} | {shown['text']} | "
                     f"{shown['image_text']} |")
    return "\n".join(lines) + "\n"


def amax_ratios(pair: str, size: str, work: Path) -> dict[str, float]:
    """Per language-model linear layer: its input amax calibrated on image-text chats over the
    one calibrated on the bundled text captions (same model, same number of samples)."""
    import modelopt.torch.quantization as mtq

    from layer_sensitivity.reuse import Resources

    amax: dict[str, dict[str, float]] = {}
    for modality in ("text", "image_text"):
        p = pipeline.plan(config(pair, modality, size, "gradient", work))
        resources = Resources()
        batches = pipeline.calibration_data(p, resources)
        net = resources.model(p.cfg.model, p.checkpoint, p.device).model
        cfg = {**p.quant_cfg, "quant_cfg": [*p.quant_cfg["quant_cfg"],
                                            {"quantizer_name": "*visual*", "enable": False}]}

        def loop(m: Any, batches: list[Any] = batches) -> None:
            for b in batches:
                m(**{k: v for k, v in b.items() if k != "labels"}, use_cache=False)

        mtq.quantize(net, cfg, forward_loop=loop)
        amax[modality] = {name: float(q.amax.max()) for name, q in net.named_modules()
                          if name.endswith("input_quantizer") and "visual" not in name
                          and getattr(q, "amax", None) is not None}
    return {name.removesuffix(".input_quantizer").removeprefix("model.language_model."):
            amax["image_text"][name] / amax["text"][name]
            for name in amax["text"] if amax["text"][name] > 0}


def amax_table(pair: str, ratios: dict[str, float]) -> str:
    lines = [f"Activation amax, image_text / text ({pair}, per linear layer, largest first):", "",
             "| layer | amax ratio |", "|---|---:|"]
    lines += [f"| {name} | {r:.2f} |" for name, r in sorted(ratios.items(), key=lambda x: -x[1])]
    return "\n".join(lines) + "\n"


def spearman(cmp: compare.Comparison, a: str, b: str) -> float:
    return float(cmp.spearman.loc[a, b])


def table(pair: str, cmp: compare.Comparison) -> str:
    names = cmp.groups["name"]
    lines = [f"### {pair}", "",
             "| group | text share | text rank | caption-text rank | image-text share | "
             "image-text rank | rank change (text -> image) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for h in sorted(cmp.shared_groups, key=lambda h: cmp.ranks.at[h, "image_text"]):
        r = cmp.ranks.loc[h]
        lines.append(
            f"| {names[h]} | {cmp.shares.at[h, 'text']:.3f} | {int(r['text'])} | "
            f"{int(r['caption_text'])} | {cmp.shares.at[h, 'image_text']:.3f} | "
            f"{int(r['image_text'])} | {int(r['text']) - int(r['image_text']):+d} |")
    lines += ["", "Spearman: " + ", ".join(
        f"{a} vs {b} {spearman(cmp, a, b):.3f}"
        for a, b in (("text", "image_text"), ("caption_text", "image_text"),
                     ("text", "caption_text"))), ""]
    moved = sorted(cmp.shared_groups, key=lambda h: -abs(cmp.ranks.at[h, "text"]
                                                         - cmp.ranks.at[h, "image_text"]))[:3]
    lines.append("Moved most (text -> image-text): " + ", ".join(
        f"{names[h]} ({int(cmp.ranks.at[h, 'text'])} -> {int(cmp.ranks.at[h, 'image_text'])})"
        for h in moved))
    return "\n".join(lines) + "\n"


def numbers(cmp: compare.Comparison) -> dict[str, Any]:
    names = cmp.groups["name"]
    return {"spearman": {f"{a}:{b}": spearman(cmp, a, b) for a in MODALITIES for b in MODALITIES
                         if a < b},
            "groups": {names[h]: {m: {"share": float(cmp.shares.at[h, m]),
                                      "rank": int(cmp.ranks.at[h, m])} for m in MODALITIES}
                       for h in cmp.shared_groups}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    register()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pairs:
            cmp, manifests = measure(pair, args.size, args.method, Path(tmp))
            print(table(pair, cmp), flush=True)
            out[pair] = numbers(cmp)
            if args.kl:
                rows = equal_bits_kl(pair, args.size, manifests, Path(tmp))
                print(kl_table(pair, rows, cmp.groups["name"].to_dict()), flush=True)
                out[pair]["equal_bits_kl"] = rows
            if pair in args.amax_pairs:
                ratios = amax_ratios(pair, args.size, Path(tmp))
                print(amax_table(pair, ratios), flush=True)
                out[pair]["amax_ratio"] = ratios
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
