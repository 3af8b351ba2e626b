"""Validity of the sensitivity ranking (science, not plumbing), on the embedded model.

A real sensitivity job ranks the layer groups; the ranking is then judged on held-out captions
(disjoint from calibration and held out of the model's training) by the KL of the quantized to the
unquantized model:

- keeping the 25% most sensitive groups unquantized gives at most half the KL of keeping the 25%
  least sensitive ones;
- at every keep fraction strictly between 0 and 100%, keeping the top groups is at least as good
  as keeping random groups (mean of three fixed seeds);
- at the same bits as each random or reverse recipe, keeping the most sensitive groups that fit
  the budget is at least as good (groups are counted above; big groups such as lm_head make the
  guided recipe spend more bits at the same count, so this compares them at equal cost too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from layer_sensitivity import evaluate, paths, pipeline, recipes
from layer_sensitivity.errors import UserError
from layer_sensitivity.schema import (
    AutoQuantConfig,
    Precision,
    QuantPairConfig,
    SensitivityConfig,
    TrackingConfig,
)

pytestmark = pytest.mark.slow

KEEP = (0.0, 0.10, 0.25, 0.50)
TINY_MODEL = paths.asset("tiny-qwen3-vl")
CAPTIONS = paths.asset("captions/captions.txt")


def _pair(name: str) -> QuantPairConfig:
    d = yaml.safe_load((paths.CONF_DIR / "quant_pair" / f"{name}.yaml").read_text())
    return QuantPairConfig(**{**d, "weight": Precision(d["weight"]),
                              "activation": Precision(d["activation"])})


def _job_manifest(pair: str, out: Path) -> dict[str, Any]:
    """The default job (16 calibration captions, gradient scores) for one pair."""
    cfg = SensitivityConfig(quant_pair=_pair(pair), autoquant=AutoQuantConfig(reuse_scores=False),
                            tracking=TrackingConfig(enabled=False))
    return pipeline.run(pipeline.plan(cfg), out).manifest


@pytest.mark.parametrize("pair", ["wint4_afp16", "wfp8_afp8"])
def test_ranking_predicts_held_out_kl(pair: str, tmp_path: Path) -> None:
    m = _job_manifest(pair, tmp_path)
    results = evaluate.evaluate_manifest(m, keep_fractions=KEEP, include_frontier=False,
                                         progress=False)
    kl = evaluate.curves(results, "kl")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        shown = f"{pair}, held-out KL by keep fraction:\n{kl.to_string()}"
    print(shown)
    assert (results["kl"] > 0).all(), shown  # every recipe quantizes something measurable
    assert kl.loc[0.25, "guided"] <= 0.5 * kl.loc[0.25, "reverse"], shown
    for x in KEEP:
        if 0 < x < 1:
            assert kl.loc[x, "guided"] <= kl.loc[x, "random_mean"], f"keep {x:.0%}\n{shown}"

    baselines = results[results["kind"].isin([recipes.KEEP_RANDOM, recipes.KEEP_BOTTOM])
                        & (results["keep_fraction"] > 0)]
    matched = [recipes.keep_top_for_bits(m, bits) for bits in baselines["lm_bits"]]
    calib = evaluate.calibration_captions(m)
    held = evaluate.held_out_captions(m["dataset"]["path"], calib, m["model"]["id"])
    at_bits = evaluate.evaluate(m["model"]["id"], matched, calib, held, progress=False,
                                batch_size=m["dataset"]["batch_size"], seq_len=m["dataset"]["seq_len"])
    side = pd.DataFrame({"baseline": baselines["name"].to_numpy(),
                         "bits": baselines["lm_bits"].to_numpy(), "kl": baselines["kl"].to_numpy(),
                         "guided_bits": at_bits["lm_bits"].to_numpy(),
                         "guided_kl": at_bits["kl"].to_numpy()})
    print(side.to_string())
    assert (side["guided_bits"] <= side["bits"] + 1e-9).all()
    assert (side["guided_kl"] <= side["kl"]).all(), side.to_string()


def test_held_out_captions_are_disjoint_from_calibration_and_training(tmp_path: Path) -> None:
    lines = [ln.strip() for ln in Path(CAPTIONS).read_text().splitlines() if ln.strip()]
    calib = lines[:16]
    held = evaluate.held_out_captions(CAPTIONS, calib, TINY_MODEL)
    generator_held = [c for i, c in enumerate(lines) if i % 10 == 9]
    assert held == [c for c in generator_held if c not in calib]
    assert len(held) == len(generator_held) - 1  # line 9 is also a calibration caption
    assert len(evaluate.held_out_captions(CAPTIONS, calib, TINY_MODEL, max_samples=5)) == 5
    assert len(evaluate.held_out_captions(CAPTIONS, calib)) == len(lines) - 16  # no training rule
    overlapping = tmp_path / "eval.txt"
    overlapping.write_text("\n".join([lines[100], lines[3]]) + "\n")
    with pytest.raises(UserError, match="1 evaluation caption"):
        evaluate.read_eval_captions(overlapping, calib)
    with pytest.raises(UserError, match="calibration captions"):
        evaluate.evaluate(TINY_MODEL, [], calib, [lines[3]])
    with pytest.raises(UserError, match="no caption left"):
        evaluate.held_out_captions(CAPTIONS, generator_held, TINY_MODEL)
