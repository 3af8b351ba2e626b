"""Figures from a manifest alone: what they show, and byte-stable PNGs."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from layer_sensitivity import figures, manifest, profiles
from layer_sensitivity.groups import KIND_ORDER
from tests.helpers.manifests import typed

FIXTURES = Path(__file__).parent / "fixtures" / "report"
INT4_RUN = FIXTURES / "tiny-qwen3-vl_autoquant_wint4_afp16_lm_small_quant_manifest.json"
FP8_RUN = FIXTURES / "tiny-qwen3-vl_autoquant_wfp8_afp8_lm_small_quant_manifest.json"
INT4, NONE = "INT4_BLOCKWISE_WEIGHT_ONLY_CFG(effective-bits: 4.0)", "NONE(effective-bits: 16.0)"
INNER = ["self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"]
ALL = [figures.DEPTH_PROFILE, figures.TOP_GROUPS, figures.LAYER_KIND_HEATMAP, figures.FRONTIER]


def synthetic(num_layers: int, seed: int = 0) -> manifest.Manifest:
    """A current-schema manifest: 4 groups a decoder layer + lm_head, random importances."""
    rng = np.random.default_rng(seed)
    handles = [f"model.language_model.layers.{i}.{m}.quant_recipe" for i in range(num_layers)
               for m in INNER] + ["lm_head.quant_recipe"]
    scores = dict(zip(handles, (10 ** rng.uniform(-7, -3, len(handles))).tolist(), strict=True))
    order = sorted(scores, key=lambda h: (-scores[h], h))
    sens = {h: {"formats": [INT4, NONE], "scores": [scores[h], 0.0], "costs": [1.0, 4.0],
                "importance": scores[h], "rank": r, "modules": [h.removesuffix(".quant_recipe")],
                "chosen": INT4} for r, h in enumerate(order, start=1)}
    return typed({"schema_version": manifest.SCHEMA_VERSION,
            "scheme": {"name": f"synthetic_{num_layers}", "method": "kl_div", "score_size": 32},
            "model": {}, "dataset": {"samples_used": 32}, "quantization": {},
            "layer_sensitivity": sens, "frozen_groups": [],
            "autoquant": {"effective_bits_achieved": 4.0, "total_score": 1.0, "satisfied": True},
            "versions": {}})


def legacy(tmp_path: Path) -> manifest.Manifest:
    """A manifest of the earlier Hydra runner, loaded through the converter."""
    fp8 = "FP8_DEFAULT_CFG(effective-bits: 8.0)"
    sens = {f"{m}.quant_recipe": {"formats": [fp8, NONE], "scores": [s, 0.0], "costs": [1.0, 2.0],
                                  "importance": s, "rank": 1}
            for m, s in [("model.language_model.layers.0.mlp.down_proj", 0.27),
                         ("model.language_model.layers.1.self_attn.q_proj", 8.0e-6),
                         ("lm_head", 0.0065)]}
    sens["model.visual.blocks.0.attn.qkv.quant_recipe"] = {"formats": [NONE], "scores": [0.0],
                                                           "costs": [3.0]}
    path = tmp_path / f"legacy{manifest.MANIFEST_SUFFIX}"
    path.write_text(json.dumps({"scheme": {"name": "legacy_fp8", "auto_quantize_score_size": 128},
                                "model": {"id": "/m/Qwen3-VL-4B"}, "layer_sensitivity": sens}))
    return manifest.load(path)


def digests(paths: list[Path]) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_same_manifest_gives_identical_png_bytes(tmp_path: Path) -> None:
    m = manifest.load(INT4_RUN)
    first = figures.write_figures(m, tmp_path / "a")
    second = figures.write_figures(manifest.load(INT4_RUN), tmp_path / "b")
    assert [p.name for p in first] == ALL == figures.figure_names(m)
    assert all(p.parent == tmp_path / "a" / figures.FIGURES_DIR for p in first)
    assert digests(first) == digests(second)
    again = figures.write_figures(m, tmp_path / "a")  # overwriting in place: same bytes
    assert digests(again) == digests(second)
    assert all(b"Software" not in p.read_bytes() for p in first)  # no version text chunk
    for p in first:
        width, _ = png_size(p)
        assert width == round(figures.WIDTH_IN * figures.DPI)


def test_a_users_matplotlib_settings_do_not_change_the_bytes(tmp_path: Path) -> None:
    m = manifest.load(INT4_RUN)
    plain = digests(figures.write_figures(m, tmp_path / "plain"))
    with matplotlib.rc_context({"font.size": 30, "lines.linewidth": 7, "axes.grid": False,
                                "figure.dpi": 50, "savefig.bbox": "tight"}):
        styled = digests(figures.write_figures(m, tmp_path / "styled"))
    assert styled == plain


def test_figures_follow_the_data(tmp_path: Path) -> None:
    one = digests(figures.write_figures(synthetic(8, seed=1), tmp_path / "one"))
    two = digests(figures.write_figures(synthetic(8, seed=2), tmp_path / "two"))
    assert one.keys() == two.keys() == set(ALL[:3])  # no frontier, no frontier figure
    assert all(one[n] != two[n] for n in one)


def test_frontier_figure_only_for_frontier_runs() -> None:
    assert figures.FRONTIER not in figures.figure_names(manifest.load(FP8_RUN))
    assert figures.FRONTIER in figures.figure_names(manifest.load(INT4_RUN))


def test_depth_profile_plots_each_kinds_share_per_layer() -> None:
    m = synthetic(36)
    ranked = profiles.group_profiles(m)
    fig = Figure()
    figures.draw_depth_profile(fig, m, ranked)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(KIND_ORDER) <= set(lines)
    for kind in KIND_ORDER:
        expected = sorted((p.layer, 100 * p.share) for p in ranked if p.kind == kind)
        assert list(lines[kind].get_xdata()) == [x for x, _ in expected]
        assert np.allclose(lines[kind].get_ydata(), [y for _, y in expected])
    lm_head = next(p for p in ranked if p.kind == "lm_head")
    (outside,) = [line for label, line in lines.items() if label.startswith("lm_head")]
    assert np.allclose(outside.get_ydata(), 100 * lm_head.share)


def test_top_groups_are_the_most_sensitive_with_their_share() -> None:
    m = synthetic(36)
    ranked = profiles.group_profiles(m)
    fig = Figure()
    figures.draw_top_groups(fig, m, ranked)
    ax = fig.axes[0]
    bars = ax.patches
    assert len(bars) == figures.TOP_K
    assert [t.get_text() for t in ax.get_yticklabels()] == [p.name for p in ranked[:figures.TOP_K]]
    assert np.allclose([b.get_width() for b in bars], [100 * p.share for p in ranked[:20]])
    assert ax.yaxis_inverted()  # rank 1 on top
    assert f"{100 * ranked[0].share:.1f}%" in [t.get_text() for t in ax.texts]


def test_heatmap_holds_each_groups_share_at_its_layer_and_kind() -> None:
    doc = synthetic(6).to_json_dict()
    doc["layer_sensitivity"]["model.language_model.layers.2.mlp.down_proj.quant_recipe"][
        "importance"] = 0.0  # a zero cell is left blank (log colour scale)
    m = typed(doc)
    ranked = profiles.group_profiles(m)
    fig = Figure()
    figures.draw_layer_kind_heatmap(fig, m, ranked)
    image = fig.axes[0].images[0]
    grid = np.ma.filled(image.get_array(), np.nan)
    assert grid.shape == (4, 6)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(KIND_ORDER)
    for p in ranked:
        if p.layer is None:
            assert "lm_head" in fig.axes[0].get_title()
        elif p.share == 0:
            assert np.isnan(grid[KIND_ORDER.index(p.kind), p.layer])
        else:
            assert grid[KIND_ORDER.index(p.kind), p.layer] == pytest.approx(100 * p.share)


def test_frontier_figure_plots_score_against_achieved_bits() -> None:
    m = manifest.load(INT4_RUN)
    fig = Figure()
    figures.draw_frontier(fig, m)
    (line,) = fig.axes[0].get_lines()
    points = sorted(m.frontier, key=lambda p: p.achieved_bits)
    assert list(line.get_xdata()) == [p.achieved_bits for p in points]
    assert list(line.get_ydata()) == [p.total_score for p in points]


def test_legacy_and_large_manifests_render(tmp_path: Path) -> None:
    old = figures.write_figures(legacy(tmp_path), tmp_path / "legacy")
    assert [p.name for p in old] == ALL[:3]
    big = figures.write_figures(synthetic(64), tmp_path / "big")
    assert [p.name for p in big] == ALL[:3]
    assert all(p.stat().st_size > 10_000 for p in [*old, *big])


def test_kind_colours_are_fixed_and_distinct() -> None:
    colours = [figures.kind_color(k) for k in (*KIND_ORDER, "lm_head")]
    assert len(set(colours)) == len(colours)
    assert figures.kind_color("lm_head") == figures.kind_color("lm_head")
