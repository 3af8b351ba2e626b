#!/usr/bin/env python
"""Measure the README's equal-bits table on the 8-layer validity model, and render it.

    python scripts/equal_bits_table.py            # measure what is not cached, write docs/, print
    python scripts/equal_bits_table.py --render   # re-render docs/equal_bits.md from the JSON only

For INT4 (weight-only) and FP8 (W8A8), each ranked by gradient and by kl_div scores: a default
sensitivity job (16 calibration captions) on the ``deep`` preset of scripts/make_tiny_qwen3vl.py
(made into .cache/deep-qwen3-vl, deterministically, when missing), then
``equal_bits.evaluate_equal_bits`` (budgets 10/25/50% of the headroom, 20 random draws, every
group alone as ground truth; validation captions choose, test captions report). Each run's
measured rows are cached under .cache/equal-bits/ (delete to remeasure). Writes
docs/equal_bits.json (the numbers), docs/equal_bits.md (the tables and the wins and losses the
README quotes; tests/unit/test_equal_bits_readme.py checks the README against the JSON) and the
README's figure (int4, gradient).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / ".cache" / "deep-qwen3-vl"
CACHE = REPO / ".cache" / "equal-bits"
JSON_OUT = REPO / "docs" / "equal_bits.json"
MD_OUT = REPO / "docs" / "equal_bits.md"
FIGURE = REPO / "docs" / "figures" / "quality_vs_bits_int4_gradient.png"  # the README's figure
PAIRS = {"int4": "wint4_afp16", "fp8": "wfp8_afp8"}
METHODS = ("gradient", "kl_div")
HEADROOM = (0.10, 0.25, 0.50)
DRAWS = 20
CURVES = ("recommended", "keep_top", "random_mean", "reverse", "rule_first_layers",
          "rule_last_layers", "rule_lm_head", "rule_mlp_down", "rule_depth_prior")
LABELS = {"recommended": "recommended", "keep_top": "guided", "random_mean": "random mean",
          "reverse": "reverse", "rule_first_layers": "first layers",
          "rule_last_layers": "last layers", "rule_lm_head": "lm_head", "rule_mlp_down": "mlp.down",
          "rule_depth_prior": "depth prior"}
RULES = [c for c in CURVES if c.startswith("rule_")]


def ensure_model(model_dir: Path = MODEL_DIR) -> Path:
    """The deep model, made when missing (one thread: the bytes the README's numbers came from)."""
    if not (model_dir / "model.safetensors").is_file():
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_qwen3vl.py"),
                        "--preset", "deep", "--threads", "1", "--out", str(model_dir)], check=True)
    return model_dir


def model_sha256(model_dir: Path = MODEL_DIR) -> str:
    return str(json.loads((model_dir / "training_report.json").read_text())[
        "model_safetensors_sha256"])


def measure(short: str, method: str, cache: Path = CACHE, model_dir: Path = MODEL_DIR,
            figure: Path | None = FIGURE) -> dict[str, Any]:
    """One run: (cached) manifest and measured rows -> summary, recommendation, correlations;
    int4 gradient also draws ``figure``."""
    import pandas as pd
    import yaml

    from layer_sensitivity import equal_bits, manifest, paths, pipeline
    from layer_sensitivity.schema import (
        AutoQuantConfig,
        Method,
        ModelConfig,
        Precision,
        QuantPairConfig,
        SensitivityConfig,
        TrackingConfig,
    )

    out = cache / f"{short}_{method}"
    manifest_path, rows_path = out / "manifest.json", out / "results.csv"
    out.mkdir(parents=True, exist_ok=True)
    if manifest_path.is_file():
        m = manifest.load(manifest_path)
    else:
        d = yaml.safe_load((paths.CONF_DIR / "quant_pair" / f"{PAIRS[short]}.yaml").read_text())
        pair = QuantPairConfig(**{**d, "weight": Precision(d["weight"]),
                                  "activation": Precision(d["activation"])})
        cfg = SensitivityConfig(
            model=ModelConfig(name="deep-qwen3-vl", path=str(ensure_model(model_dir)),
                              device="cpu"),
            quant_pair=pair, autoquant=AutoQuantConfig(method=Method(method), reuse_scores=False),
            tracking=TrackingConfig(enabled=False))
        m = pipeline.run(pipeline.plan(cfg), out / "job").manifest
        manifest_path.write_text(manifest.dumps(m))
    if rows_path.is_file():
        ev = equal_bits.analyse(m, pd.read_csv(rows_path))
    else:
        ev = equal_bits.evaluate_equal_bits(m, headroom=HEADROOM, draws=DRAWS, device="cpu",
                                            progress=False)
        tmp = rows_path.with_suffix(".tmp")
        ev.results.to_csv(tmp, index=False)
        tmp.replace(rows_path)
    assert ev.correlations is not None
    if figure is not None and (short, method) == ("int4", "gradient"):
        from layer_sensitivity import figures

        made = figures.write_quality_vs_bits(ev.summary, cache / "figure")
        figure.parent.mkdir(parents=True, exist_ok=True)
        figure.write_bytes(made.read_bytes())
    return {"pair": short, "method": method, "groups": len(m.layer_sensitivity),
            "summary": json.loads(ev.summary.to_json(orient="records")),
            "recommended": json.loads(ev.recommended.to_json(orient="records")),
            "correlations": json.loads(ev.correlations.to_json(orient="records"))}


# --------------------------------------------------------------------------------------------
# Rendering (no torch): also imported by tests/unit/test_equal_bits_readme.py


def _cell(rows: list[dict[str, Any]], bits: float, curve: str) -> dict[str, Any]:
    return next(r for r in rows if r["curve"] == curve and abs(r["target_bits"] - bits) < 1e-9)


def claims(run: dict[str, Any]) -> list[str]:
    """Wins and losses at each budget, on test KL: guided and recommended against the random mean
    and every rule."""
    rows, out = run["summary"], []
    for bits in sorted({r["target_bits"] for r in rows}):
        for who in ("keep_top", "recommended"):
            me = _cell(rows, bits, who)["kl_test"]
            lost = [LABELS[c] for c in ("random_mean", *RULES) if _cell(rows, bits, c)["kl_test"] < me]
            name = LABELS[who]
            out.append(f"{bits:.2f} bits: {name} " + (
                "is at or below the random mean and every rule" if not lost
                else "loses to " + ", ".join(lost)))
    return out


def table(run: dict[str, Any]) -> list[str]:
    rows = run["summary"]
    head = ["bits", *(LABELS[c] for c in CURVES), "random std", "guided beats"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for bits in sorted({r["target_bits"] for r in rows}):
        rnd = _cell(rows, bits, "random_mean")
        cells = [f"{bits:.2f}", *(f"{_cell(rows, bits, c)['kl_test']:.5f}" for c in CURVES),
                 f"{rnd['kl_test_std']:.5f}", f"{rnd['guided_beats']:.0%} of {int(rnd['draws'])}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def correlation_line(run: dict[str, Any]) -> str:
    corr = {c["ranking"]: c for c in run["correlations"]}
    rules = {k: v for k, v in corr.items() if k != "ranking"}
    best = max(rules, key=lambda k: rules[k]["spearman_kl"])
    return (f"Spearman vs each group alone ({run['groups']} groups, test KL): ranking "
            f"{corr['ranking']['spearman_kl']:.2f} (Kendall {corr['ranking']['kendall_kl']:.2f}; "
            f"vs loss change {corr['ranking']['spearman_loss']:.2f}); best data-free rule "
            f"{LABELS[best]} {rules[best]['spearman_kl']:.2f}.")


def _every(runs: list[dict[str, Any]], test: Any) -> bool:
    return all(test(run, bits) for run in runs for bits in {r["target_bits"] for r in run["summary"]})


def _kl(run: dict[str, Any], bits: float, curve: str) -> float:
    return float(_cell(run["summary"], bits, curve)["kl_test"])


def summary_lines(runs: list[dict[str, Any]]) -> list[str]:
    """The prose the README states about all runs, each sentence computed from the numbers."""
    budgets_ = sum(len({r["target_bits"] for r in run["summary"]}) for run in runs)
    out = []
    below = _every(runs, lambda r, b: all(_kl(r, b, who) < min(_kl(r, b, "random_mean"),
                                                               _kl(r, b, "reverse"))
                                          for who in ("keep_top", "recommended")))
    all_draws = _every(runs, lambda r, b: _cell(r["summary"], b, "random_mean")["guided_beats"] == 1)
    out.append(f"- Guided and recommended are {'' if below else 'not always '}below the random mean "
               f"and the reverse ranking at every budget of every run; guided beats "
               f"{'every one of the' if all_draws else 'not all'} {DRAWS} random draws "
               f"{'everywhere' if all_draws else ''}.".replace(" .", "."))
    rank_wins = sum(_kl(run, b, "keep_top_rank") < _kl(run, b, "keep_top") for run in runs
                    for b in {r["target_bits"] for r in run["summary"]})
    out.append(f"- Score per bit is not always the best fill: the ranking's plain order "
               f"(`keep_top_rank`) has lower test KL than guided at {rank_wins} of {budgets_} "
               "budgets. The recommended recipe picks between them on validation captions.")
    rule_wins = [(run, b, c) for run in runs for b in sorted({r["target_bits"] for r in run["summary"]})
                 for c in RULES if _kl(run, b, c) < _kl(run, b, "recommended")]
    mono = all([_kl(run, b, "recommended") for b in sorted({r["target_bits"] for r in run["summary"]})]
               == sorted([_kl(run, b, "recommended") for b in {r["target_bits"] for r in
                                                                run["summary"]}], reverse=True)
               for run in runs)
    out.append(f"- The recommended recipe {'never' if mono else 'sometimes'} gets worse on test "
               f"captions for more bits; it is at or below every rule at "
               f"{budgets_ - len({(id(r), b) for r, b, _ in rule_wins})} of {budgets_} budgets"
               + ("." if not rule_wins else ": " + "; ".join(
                   f"{LABELS[c]} is lower for {r['pair']} {r['method']} at {b:.2f} bits"
                   for r, b, c in rule_wins) + " (each rule is a candidate; validation "
                   "captions preferred another)."))
    rank = [next(c for c in run["correlations"] if c["ranking"] == "ranking") for run in runs]
    best = [max((c for c in run["correlations"] if c["ranking"] != "ranking"),
                key=lambda c: c["spearman_kl"]) for run in runs]
    out.append(f"- Against ground truth (test KL of each group alone) the ranking's Spearman is "
               f"{min(c['spearman_kl'] for c in rank):.2f}-{max(c['spearman_kl'] for c in rank):.2f}, "
               f"the best data-free rule's {min(c['spearman_kl'] for c in best):.2f}-"
               f"{max(c['spearman_kl'] for c in best):.2f} "
               f"({', '.join(sorted({LABELS[c['ranking']] for c in best}))}); against each group's "
               f"caption-loss change the ranking's Spearman is only "
               f"{min(c['spearman_loss'] for c in rank):.2f} to "
               f"{max(c['spearman_loss'] for c in rank):.2f}.")
    return out


def render(runs: list[dict[str, Any]]) -> str:
    out = [*summary_lines(runs), ""]
    for run in runs:
        out += [f"**{run['pair']}, {run['method']}** ({correlation_line(run)})", "", *table(run),
                "", *(f"- {c}" for c in claims(run)), ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--render", action="store_true", help="render docs/equal_bits.md from the JSON")
    args = p.parse_args(argv)
    if args.render:
        runs = json.loads(JSON_OUT.read_text())["runs"]
    else:
        CACHE.mkdir(parents=True, exist_ok=True)
        runs = [measure(short, method) for short in PAIRS for method in METHODS]
        JSON_OUT.parent.mkdir(parents=True, exist_ok=True)
        JSON_OUT.write_text(json.dumps({"model": "deep preset (8 decoder layers), "
                                        "scripts/make_tiny_qwen3vl.py --threads 1",
                                        "model_safetensors_sha256": model_sha256(),
                                        "headroom": HEADROOM,
                                        "draws": DRAWS, "runs": runs}, indent=1) + "\n")
    MD_OUT.write_text(render(runs))
    print(MD_OUT.read_text())


if __name__ == "__main__":
    main()
