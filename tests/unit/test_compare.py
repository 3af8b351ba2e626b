"""Comparing rankings of several runs from their manifests (no torch, no model, no MLflow)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from layer_sensitivity import compare as cmp_mod
from layer_sensitivity import manifest
from layer_sensitivity.compare import compare, sweep_figures, write_comparison
from layer_sensitivity.errors import UserError
from layer_sensitivity.groups import GroupStats, depth_key
from tests.helpers.manifests import typed

FIXTURES = Path(__file__).parent / "fixtures" / "compare"
INT4, FP8, NONE = ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG(effective-bits: 4.0)",
                   "FP8_DEFAULT_CFG(effective-bits: 8.0)", "NONE(effective-bits: 16.0)")
INNER = ["self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"]


def handles(layers: int = 36) -> list[str]:
    """Groups of a Qwen3-VL language model: 4 per decoder layer and lm_head (145 for 36 layers)."""
    return [f"model.language_model.layers.{i}.{m}.quant_recipe" for i in range(layers)
            for m in INNER] + ["lm_head.quant_recipe"]


def synthetic(importance: dict[str, float], *, pair: str = "wint4_afp16", size: str = "small",
              granularity: str = "default", method: str = "gradient") -> manifest.Manifest:
    """A current-schema manifest whose groups come from the real builder of that section."""
    fmt = INT4 if "int4" in pair else FP8
    groups = {h: GroupStats([fmt, NONE], [s, 0.0], [1024.0, 4096.0], [h.removesuffix(".quant_recipe")],
                            fmt, True) for h, s in importance.items()}
    return typed({"schema_version": manifest.SCHEMA_VERSION,
                  "scheme": {"name": f"{pair}_{size}", "method": method, "formats": [fmt]},
                  "model": {"name": "m"}, "dataset": {"size": size, "samples_used": 16},
                  "quantization": {"pair": pair, "granularity": granularity},
                  "layer_sensitivity": manifest.layer_sensitivity(groups),
                  "autoquant": {"total_score": sum(importance.values())}})


def random_scores(seed: int, groups: list[str]) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return dict(zip(groups, 10.0 ** rng.uniform(-6, -2, len(groups)), strict=True))


def importances(m: manifest.Manifest, groups: list[str]) -> np.ndarray:
    return np.array([m.layer_sensitivity[h].importance for h in groups])


def legacy_manifest() -> dict[str, Any]:
    """An unversioned manifest of the earlier runner: ascending ranks, vision groups offered NONE."""
    sens: dict[str, Any] = {"model.visual.blocks.0.attn.qkv.quant_recipe": {
        "formats": [NONE], "scores": [0.0], "costs": [64.0], "importance": 0.0, "rank": 1}}
    for i, h in enumerate(handles(2)):
        score = [3e-4, 1e-5, 8e-2, 2e-1, 5e-6, 4e-6, 5e-2, 5e-2, 6e-3][i]
        sens[h] = {"formats": [FP8, NONE], "scores": [score, 0.0], "costs": [64.0, 128.0],
                   "importance": score, "rank": 99}
    return {"scheme": {"name": "legacy_fp8", "auto_quantize_method": "gradient"},
            "model": {"id": "/ckpt/Qwen3-VL-4B"}, "layer_sensitivity": sens}


def test_identical_rankings_agree_fully() -> None:
    m = synthetic(random_scores(0, handles(4)))
    c = compare({"a": m, "b": synthetic({h: 7 * s.importance
                                          for h, s in m.layer_sensitivity.items()})})
    row = c.pairs.iloc[0]
    assert (row.run_a, row.run_b, row.groups) == ("a", "b", 17)
    assert row.spearman == pytest.approx(1.0) and row.kendall == pytest.approx(1.0)
    assert c.top_k == {"top5": 5, "top10": 10, "top20pct": 4}
    for stem, k in c.top_k.items():
        assert row[stem] == k and row[f"{stem}_fraction"] == 1.0
    assert c.movers.empty
    assert np.allclose(c.by_kind["spearman"], 1.0) and set(c.by_kind["kind"]) == {
        "attn.qkv", "attn.o", "mlp.gate_up", "mlp.down"}  # lm_head alone cannot be correlated
    assert c.shares["a"].to_numpy() == pytest.approx(c.shares["b"].to_numpy())
    assert c.shares["a"].sum() == pytest.approx(1.0)


def test_reversed_rankings_are_minus_one_with_no_top_overlap() -> None:
    groups = handles(36)
    a = {h: float(i + 1) for i, h in enumerate(groups)}
    b = {h: float(len(groups) - i) for i, h in enumerate(groups)}
    c = compare({"a": synthetic(a), "b": synthetic(b)})
    row = c.pairs.iloc[0]
    assert row.spearman == pytest.approx(-1.0) and row.kendall == pytest.approx(-1.0)
    assert row.top5 == row.top10 == row.top20pct == 0 and c.top_k["top20pct"] == 29
    assert c.spearman.loc["a", "b"] == c.spearman.loc["b", "a"] == pytest.approx(-1.0)
    top = c.movers.iloc[0]
    assert top.rank_range == len(groups) - 1 and {top.min_rank, top.max_rank} == {1, len(groups)}


def test_a_known_permutation_gives_scipys_values() -> None:
    groups = handles(6)
    base = random_scores(1, groups)
    order = np.random.default_rng(2).permutation(len(groups))
    permuted = dict(zip(groups, np.array(list(base.values()))[order], strict=True))
    ma, mb = synthetic(base), synthetic(permuted, method="kl_div")
    c = compare({"grad": ma, "kl": mb})
    xa, xb = importances(ma, c.shared_groups), importances(mb, c.shared_groups)
    row = c.pairs.iloc[0]
    assert row.spearman == pytest.approx(stats.spearmanr(xa, xb).statistic)
    assert row.kendall == pytest.approx(stats.kendalltau(xa, xb).statistic)
    assert row.spearman_p == pytest.approx(stats.spearmanr(xa, xb).pvalue)
    top5 = [{h for h, s in m.layer_sensitivity.items() if s.rank <= 5} for m in (ma, mb)]
    assert row.top5 == len(top5[0] & top5[1]) and row.top5_fraction == row.top5 / 5
    qkv = [h for h in c.shared_groups if "q_proj" in h]
    kind = c.by_kind.set_index("kind").loc["attn.qkv"]
    assert kind.groups == 6
    assert kind.spearman == pytest.approx(stats.spearmanr(importances(ma, qkv),
                                                          importances(mb, qkv)).statistic)
    # ranks are over the shared groups, 1 = most sensitive, consistent with the manifest's own
    assert c.ranks["grad"].to_dict() == {h: s.rank for h, s in ma.layer_sensitivity.items()}
    moved = c.movers.iloc[0]
    assert moved.rank_range == (c.ranks.max(axis=1) - c.ranks.min(axis=1)).max() > 0
    assert len(c.movers) == cmp_mod.MOVERS


def test_groups_are_in_depth_order() -> None:
    c = compare({"a": synthetic(random_scores(3, handles(12))),
                 "b": synthetic(random_scores(4, handles(12)))})
    assert list(c.shares.index) == sorted(handles(12), key=depth_key)
    assert list(c.groups["name"][:5]) == ["L00.attn.qkv", "L00.attn.o", "L00.mlp.gate_up",
                                          "L00.mlp.down", "L01.attn.qkv"]
    assert c.groups["name"].iloc[-1] == "lm_head"


def test_legacy_and_current_manifests_mix(tmp_path: Path) -> None:
    legacy = legacy_manifest()
    path = tmp_path / "legacy_fp8_quant_manifest.json"
    path.write_text(json.dumps(legacy))
    current = synthetic({h: s["importance"] for h, s in legacy["layer_sensitivity"].items()
                         if "visual" not in h}, pair="wfp8_afp8")
    c = compare({"legacy-raw": legacy, "legacy-loaded": manifest.load(path), "current": current})
    assert len(c.shared_groups) == 9 and not any("visual" in h for h in c.groups.index)
    # the legacy file's ascending ranks are not used: all three rank the groups alike
    assert np.allclose(c.pairs["spearman"], 1.0) and (c.pairs["top5_fraction"] == 1.0).all()
    assert c.ranks.loc["model.language_model.layers.0.mlp.down_proj.quant_recipe"].tolist() == [1, 1, 1]
    assert c.runs.loc["legacy-raw", "method"] == "gradient"
    assert c.runs.loc["current", "pair"] == "wfp8_afp8"


def test_different_group_sets_use_the_intersection(tmp_path: Path) -> None:
    full = handles(36)
    short = [h for h in full if ".layers.35." not in h]  # e.g. a run scoped without the last layer
    ma, mb = synthetic(random_scores(5, full)), synthetic(random_scores(6, short))
    c = compare({"full": ma, "short": mb})
    assert len(c.shared_groups) == len(short) == 141 and len(c.groups) == 145
    assert c.pairs.iloc[0].groups == 141
    assert c.excluded == {"full": [h for h in full if ".layers.35." in h], "short": []}
    assert "share 141 of 145 groups" in c.notes[0] and "full leaves out 4" in c.notes[0]
    xa, xb = importances(ma, c.shared_groups), importances(mb, c.shared_groups)
    assert c.pairs.iloc[0].spearman == pytest.approx(stats.spearmanr(xa, xb).statistic)
    missing = c.shares.loc[c.excluded["full"], "short"]
    assert missing.isna().all() and c.shares["short"].sum() == pytest.approx(1.0)
    write_comparison(c, tmp_path)
    doc = json.loads((tmp_path / "comparison.json").read_text())
    assert doc["groups_compared"] == 141 and doc["groups_total"] == 145
    assert doc["shares"][c.excluded["full"][0]]["short"] is None
    assert "141 groups that every run has (of 145 in any run)" in (tmp_path / "comparison.md").read_text()


@pytest.mark.parametrize("runs", [0, 1])
def test_fewer_than_two_runs_is_a_user_error(runs: int) -> None:
    ms = {f"r{i}": synthetic(random_scores(i, handles(2))) for i in range(runs)}
    with pytest.raises(UserError, match=f"two or more runs; got {runs}"):
        compare(ms)


def test_runs_sharing_no_groups_and_bad_manifests_are_user_errors() -> None:
    a = synthetic(random_scores(0, handles(2)))
    b = synthetic({"vision.blocks.0.qkv.quant_recipe": 1.0, "vision.blocks.1.qkv.quant_recipe": 2.0})
    with pytest.raises(UserError, match="share 0 layer group"):
        compare({"a": a, "b": b})
    with pytest.raises(UserError, match="Run 'b' is not a manifest"):
        compare({"a": a, "b": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(UserError, match="Manifest of run 'b' has unknown schema_version 7"):
        compare({"a": a, "b": {"schema_version": 7}})
    broken = synthetic(random_scores(1, handles(2))).to_json_dict()  # as parsed from a file
    next(iter(broken["layer_sensitivity"].values()))["importance"] = "high"
    with pytest.raises(UserError, match="importance must be a finite number.*got 'high'"):
        compare({"a": a, "b": broken})


def test_zero_total_importance_is_reported_not_fatal(tmp_path: Path) -> None:
    groups = handles(3)
    c = compare({"ok": synthetic(random_scores(0, groups)),
                 "zero": synthetic(dict.fromkeys(groups, 0.0))})
    assert c.shares["zero"].isna().all() and math.isnan(c.runs.loc["zero", "top10_share"])
    assert math.isnan(c.pairs.iloc[0].spearman) and math.isnan(c.spearman.loc["zero", "zero"])
    assert c.spearman.loc["ok", "ok"] == 1.0
    assert any("'zero' has a total importance of 0" in n for n in c.notes)
    write_comparison(c, tmp_path)
    doc = json.loads((tmp_path / "comparison.json").read_text(),
                     parse_constant=lambda x: pytest.fail(f"non-JSON constant {x}"))
    assert doc["pairs"][0]["spearman"] is None
    assert "n/a" in (tmp_path / "comparison.md").read_text()


def test_ties_are_ranked_alike_and_broken_by_name_for_top_k() -> None:
    groups = handles(3)
    tied = {h: (1.0 if i < 6 else 0.5) for i, h in enumerate(groups)}  # six groups tie for first
    other = {h: float(len(groups) - i) for i, h in enumerate(groups)}
    c = compare({"tied": synthetic(tied), "other": synthetic(other)})
    assert set(c.ranks["tied"]) == {1, 7}
    xa = importances(synthetic(tied), c.shared_groups)
    xb = importances(synthetic(other), c.shared_groups)
    assert c.pairs.iloc[0].kendall == pytest.approx(stats.kendalltau(xa, xb).statistic)
    top5_tied = set(sorted(groups[:6])[:5])  # by name among equals, like the manifest's ranks
    top5_other = set(groups[:5])
    assert c.pairs.iloc[0].top5 == len(top5_tied & top5_other) == 4


def test_concentration_is_the_top_ten_share() -> None:
    groups = handles(10)
    scores = {h: (100.0 if i < 10 else 1.0) for i, h in enumerate(groups)}
    c = compare({"a": synthetic(scores), "b": synthetic(random_scores(9, groups))})
    assert c.runs.loc["a", "top10_share"] == pytest.approx(1000 / (1000 + len(groups) - 10))
    assert c.runs.loc["a", "groups"] == 41


def test_sample_manifests_of_real_jobs(tmp_path: Path) -> None:
    loaded = {p.name.split("_autoquant_")[1].removesuffix("_quant_manifest.json"): manifest.load(p)
              for p in sorted(FIXTURES.glob("*_quant_manifest.json"))}
    c = compare(loaded)
    assert c.labels == ("wfp8_afp8_lm_small", "wint4_afp16_lm_small") and len(c.shared_groups) == 17
    xa, xb = (importances(m, c.shared_groups) for m in loaded.values())
    assert c.pairs.iloc[0].spearman == pytest.approx(stats.spearmanr(xa, xb).statistic)
    assert c.runs["pair"].tolist() == ["wfp8_afp8", "wint4_afp16"]
    paths = write_comparison(c, tmp_path)
    assert {p.name for p in paths} >= {"comparison.md", "comparison.json", "comparison-pairs.csv",
                                       "comparison-shares.png", "comparison-spearman.png"}
    md = (tmp_path / "comparison.md").read_text()
    assert "![Spearman matrix](figures/comparison-spearman.png)" in md
    assert "![Shares by group and run](figures/comparison-shares.png)" in md
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert (tmp_path / "figures" / "comparison-shares.png").read_bytes()[:4] == b"\x89PNG"


def test_outputs_are_byte_identical_on_repeat(tmp_path: Path) -> None:
    groups = handles(8)
    ms = {f"run{i}": synthetic(random_scores(i, groups), size=s)
          for i, s in enumerate(["small", "medium", "large"])}
    first = write_comparison(compare(ms), tmp_path / "one")
    second = write_comparison(compare(ms), tmp_path / "two")
    assert [p.relative_to(tmp_path / "one") for p in first] == \
        [p.relative_to(tmp_path / "two") for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    sweeps = [sweep_figures(ms, tmp_path / d) for d in ("s1", "s2")]
    assert [a.read_bytes() for a in sweeps[0]] == [b.read_bytes() for b in sweeps[1]]
    assert all(b"matplotlib" not in p.read_bytes() for p in first + sweeps[0] if p.suffix == ".png")


def test_sweep_figures_label_children_by_pair_granularity_size(tmp_path: Path) -> None:
    groups = handles(4)
    ms = {"id1": synthetic(random_scores(1, groups), pair="wint4_afp16"),
          "id2": synthetic(random_scores(2, groups), pair="wfp8_afp8", granularity="per_channel"),
          "id3": synthetic(random_scores(3, groups), pair="wfp8_afp8", granularity="per_channel"),
          "id4": synthetic(random_scores(4, groups), pair="wint4_afp16", size="large")}
    assert cmp_mod.sweep_labels(ms) == {
        "id1": "wint4_afp16/default/small", "id2": "wfp8_afp8/per_channel/small (id2)",
        "id3": "wfp8_afp8/per_channel/small (id3)", "id4": "wint4_afp16/default/large"}
    paths = sweep_figures(ms, tmp_path)
    assert [p.name for p in paths] == ["sweep-shares.png", "sweep-spearman.png"]
    one = sweep_figures({"id1": ms["id1"]}, tmp_path / "single")
    assert [p.name for p in one] == ["sweep-shares.png"] and one[0].stat().st_size > 0
    zero = sweep_figures({"z": synthetic(dict.fromkeys(groups, 0.0))}, tmp_path / "zero")
    assert zero[0].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UserError, match="at least one child"):
        sweep_figures({}, tmp_path)


def test_thirty_runs_of_a_145_group_model(tmp_path: Path) -> None:
    groups = handles(36)
    ms = {f"run{i:02d}": synthetic(random_scores(i, groups)) for i in range(30)}
    c = compare(ms)
    assert len(c.shared_groups) == 145 and c.shares.shape == (145, 30)
    assert len(c.pairs) == 30 * 29 // 2 and len(c.by_kind) == 4 * len(c.pairs)
    assert c.top_k == {"top5": 5, "top10": 10, "top20pct": 29}
    rho = c.spearman.to_numpy()
    assert np.allclose(rho, rho.T) and np.allclose(np.diag(rho), 1.0)
    i, j = 3, 17
    xa, xb = importances(ms["run03"], c.shared_groups), importances(ms["run17"], c.shared_groups)
    assert rho[i, j] == pytest.approx(stats.spearmanr(xa, xb).statistic)
    assert c.kendall.iloc[i, j] == pytest.approx(stats.kendalltau(xa, xb).statistic)
    assert len(c.movers) == 10 and c.movers["rank_range"].is_monotonic_decreasing
    paths = write_comparison(c, tmp_path)
    md = (tmp_path / "comparison.md").read_text()
    assert "The 20 least agreeing of 435 pairs" in md
    shares_csv = (tmp_path / "comparison-shares.csv").read_text().splitlines()
    assert len(shares_csv) == 146 and shares_csv[0].startswith("group,name,layer,kind,run00,")
    assert len(paths) == 3 + len(cmp_mod.CSV_NAMES) + 2  # md, html, json, CSVs, figures


def test_headline_names_the_best_and_worst_agreeing_pairs_and_each_top_group() -> None:
    groups = handles(4)
    base = {h: float(i + 1) for i, h in enumerate(groups)}
    near = dict(base, **{groups[0]: 1.5})  # one swap near the bottom: still close
    reverse = {h: float(len(groups) - i) for i, h in enumerate(groups)}
    c = compare({"a": synthetic(base), "b": synthetic(near), "c": synthetic(reverse)})
    lines = cmp_mod.headline(c)
    best, worst = c.pairs.loc[c.pairs["spearman"].idxmax()], c.pairs.loc[c.pairs["spearman"].idxmin()]
    assert f"most {best['spearman']:.2f} (a vs b)" in lines[0]
    assert f"least **{worst['spearman']:.2f}**" in lines[0] and "c)" in lines[0]
    top_a = c.groups.loc[c.shares["a"].idxmax(), "name"]
    assert f"a: `{top_a}`" in lines[1] and "c: `L00.attn.qkv`" in lines[1]
