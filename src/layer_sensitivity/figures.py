"""Figures of one manifest (matplotlib, Agg): depth profile, top groups, layer x kind heatmap and,
for a frontier run, score versus bits. No torch, no MLflow, no pyplot (no global figure state).

The same manifest gives byte-identical PNGs on one installation: fixed size and dpi, matplotlib's
default style whatever the user's matplotlibrc, and no ``Software`` text chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .groups import KIND_ORDER
from .profiles import GroupProfile, depth_order, group_profiles, kind_order, score_samples

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"
DEPTH_PROFILE = "depth_profile.png"
TOP_GROUPS = "top_groups.png"
LAYER_KIND_HEATMAP = "layer_kind_heatmap.png"
FRONTIER = "frontier.png"
TOP_K = 20
DPI = 110
WIDTH_IN = 8.0  # 880 px wide: text stays readable when MLflow scales the preview down
# Applied over matplotlib's defaults, so a user's matplotlibrc cannot change the bytes.
STYLE: dict[Any, Any] = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "axes.grid": True, "grid.alpha": 0.3,
         "figure.facecolor": "white", "savefig.facecolor": "white"}
_PALETTE = [matplotlib.colormaps["tab10"](i) for i in range(10)]  # 10 distinct colours


def kind_color(kind: str) -> Any:
    """One colour per kind, the same in every figure (known decoder kinds first)."""
    index, _ = kind_order(kind)
    if kind not in KIND_ORDER:
        index = len(KIND_ORDER) + sum(map(ord, kind)) % (len(_PALETTE) - len(KIND_ORDER))
    return _PALETTE[index % len(_PALETTE)]


def figure_names(manifest: dict[str, Any]) -> list[str]:
    """File names (under ``figures/``) that ``write_figures`` writes for this manifest, in order."""
    profiles = group_profiles(manifest)
    decoder = any(p.layer is not None for p in profiles)
    names = [DEPTH_PROFILE] if decoder else []
    names += [TOP_GROUPS] if profiles else []
    names += [LAYER_KIND_HEATMAP] if decoder else []
    names += [FRONTIER] if _frontier_points(manifest) else []
    return names


def write_figures(manifest: dict[str, Any], out_dir: Path) -> list[Path]:
    """Render every figure of the manifest into ``out_dir/figures/``; returns the PNG paths."""
    folder = Path(out_dir) / FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    profiles = group_profiles(manifest)
    draw: dict[str, Callable[[Figure], None]] = {
        DEPTH_PROFILE: lambda fig: draw_depth_profile(fig, manifest, profiles),
        TOP_GROUPS: lambda fig: draw_top_groups(fig, manifest, profiles),
        LAYER_KIND_HEATMAP: lambda fig: draw_layer_kind_heatmap(fig, manifest, profiles),
        FRONTIER: lambda fig: draw_frontier(fig, manifest),
    }
    paths = []
    for name in figure_names(manifest):
        path = folder / name
        _render(draw[name], _height(name, profiles), path)
        paths.append(path)
    log.debug("wrote %d figures to %s", len(paths), folder)
    return paths


def _height(name: str, profiles: Sequence[GroupProfile]) -> float:
    if name == TOP_GROUPS:
        return 1.6 + 0.3 * min(TOP_K, len(profiles))
    if name == LAYER_KIND_HEATMAP:
        kinds = {p.kind for p in profiles if p.layer is not None}
        return 2.2 + 0.45 * len(kinds)
    return 4.5


def _render(draw: Callable[[Figure], None], height: float, path: Path) -> None:
    with matplotlib.style.context("default"), matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        draw(fig)
        fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})


def _subtitle(manifest: dict[str, Any]) -> str:
    scheme = manifest.get("scheme") or {}
    samples = score_samples(manifest)
    parts = [str(scheme.get("name") or ""), str(scheme.get("method") or "method unknown"),
             f"{samples} score samples" if samples else "score samples unknown"]
    return " | ".join(p for p in parts if p)


def _pct(share: float) -> float:
    return 100.0 * share


def draw_depth_profile(fig: Figure, manifest: dict[str, Any],
                       profiles: Sequence[GroupProfile]) -> None:
    """Share of the run's total per decoder layer, one line per kind (log scale); groups outside
    the decoder (lm_head) as dashed horizontal lines."""
    ax = fig.add_subplot()
    decoder = [p for p in depth_order(profiles) if p.layer is not None]
    kinds = sorted({p.kind for p in decoder}, key=kind_order)
    for kind in kinds:
        points = [(p.layer, _pct(p.share)) for p in decoder if p.kind == kind and p.share > 0]
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(x, y, marker="o", markersize=4, linewidth=1.6, label=kind,
                    color=kind_color(kind))
    for p in profiles:
        if p.layer is None and p.share > 0:
            ax.axhline(_pct(p.share), linestyle="--", linewidth=1.2, color=kind_color(p.kind),
                       label=f"{p.name} (outside layers)")
    if any(p.share > 0 for p in profiles):
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("share of run total (%, log)")
    ax.set_title(f"Sensitivity across depth\n{_subtitle(manifest)}")
    # outside the axes: with 36+ layers no corner is free of data
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def draw_top_groups(fig: Figure, manifest: dict[str, Any],
                    profiles: Sequence[GroupProfile]) -> None:
    """The most sensitive groups with their share of the run's total (most sensitive on top)."""
    ax = fig.add_subplot()
    top = list(profiles[:TOP_K])
    y = np.arange(len(top))
    shares = [_pct(p.share) for p in top]
    ax.barh(y, shares, color=[kind_color(p.kind) for p in top])
    ax.set_yticks(y, [p.name for p in top])
    ax.invert_yaxis()
    for yi, share in zip(y, shares, strict=True):
        ax.annotate(f"{share:.1f}%", (share, yi), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=9)
    ax.set_xlim(0, max(shares, default=0.0) * 1.18 or 1.0)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("share of run total (%)")
    ax.set_title(f"Top {len(top)} of {len(profiles)} groups\n{_subtitle(manifest)}")


def draw_layer_kind_heatmap(fig: Figure, manifest: dict[str, Any],
                            profiles: Sequence[GroupProfile]) -> None:
    """Share per (kind, decoder layer), log colour scale; grey where a group is absent or 0."""
    ax = fig.add_subplot()
    decoder = [p for p in profiles if p.layer is not None]
    kinds = sorted({p.kind for p in decoder}, key=kind_order)
    num_layers = max(p.layer for p in decoder if p.layer is not None) + 1
    grid = np.full((len(kinds), num_layers), np.nan)
    for p in decoder:
        if p.share > 0 and p.layer is not None:
            grid[kinds.index(p.kind), p.layer] = _pct(p.share)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    positive = grid[np.isfinite(grid)]
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, norm=norm,
                      interpolation="nearest")
    ax.set_yticks(range(len(kinds)), kinds)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(False)
    ax.set_xlabel("decoder layer")
    if num_layers <= 16:  # cell labels stay legible only for small models
        for (row, col), value in np.ndenumerate(grid):
            if np.isfinite(value):
                ax.text(col, row, f"{value:.2g}", ha="center", va="center", fontsize=8,
                        color="white" if norm and norm(value) < 0.6 else "black")
    outside = ", ".join(f"{p.name} {_pct(p.share):.1f}%" for p in profiles if p.layer is None)
    ax.set_title(f"Share of run total (%) per layer and kind"
                 f"{f' (outside layers: {outside})' if outside else ''}\n{_subtitle(manifest)}")
    if norm is not None:
        fig.colorbar(image, ax=ax, label="share (%)")


def _frontier_points(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    points = [p for p in manifest.get("frontier") or []
              if isinstance(p.get("achieved_bits"), (int, float))
              and isinstance(p.get("total_score"), (int, float))]
    return sorted(points, key=lambda p: (float(p["achieved_bits"]), float(p["target_bits"])))


def draw_frontier(fig: Figure, manifest: dict[str, Any]) -> None:
    """Total score of the solver's choice per bit target, against the bits it achieved."""
    ax = fig.add_subplot()
    points = _frontier_points(manifest)
    x = [float(p["achieved_bits"]) for p in points]
    y = [float(p["total_score"]) for p in points]
    ax.plot(x, y, color=_PALETTE[0], linewidth=1.6, zorder=1)
    met = [bool(p.get("satisfied")) for p in points]
    for satisfied in (True, False):
        chosen = [(xi, yi) for xi, yi, m in zip(x, y, met, strict=True) if m == satisfied]
        if chosen:
            cx, cy = zip(*chosen, strict=True)
            ax.scatter(cx, cy, s=45, zorder=2, color=_PALETTE[0] if satisfied else "white",
                       edgecolors=_PALETTE[0],
                       label="target met" if satisfied else "target missed")
    for p, xi, yi in zip(points, x, y, strict=True):
        ax.annotate(f"target {float(p['target_bits']):g}", (xi, yi), xytext=(5, 5),
                    textcoords="offset points", fontsize=9)
    ax.margins(x=0.1, y=0.15)  # room for the target labels
    ax.set_xlabel("effective bits achieved (LM)")
    ax.set_ylabel("total score (sum over score batches)")
    ax.set_title(f"Score versus bits\n{_subtitle(manifest)}")
    ax.legend(loc="best")


QUALITY_VS_BITS = "quality_vs_bits.png"


def draw_quality_vs_bits(fig: Figure, results: Any, metric: str = "kl") -> None:
    """Measured quality (held-out KL or loss change) against LM bits: the ranking's choice of
    groups kept at 16 bits, random choices (each seed a point, their mean a line), the reverse
    ranking, and the solver's frontier recipes."""
    ax = fig.add_subplot()
    styles = {"keep_top": ("guided (keep most sensitive)", _PALETTE[0], "o-"),
              "keep_random": ("random groups (3 seeds)", _PALETTE[7], "x"),
              "keep_bottom": ("reverse (keep least sensitive)", _PALETTE[3], "s--"),
              "frontier": ("solver frontier", _PALETTE[2], "^:"),
              "mixed": ("mixed-format solver", _PALETTE[4], "D:")}
    for kind, (label, color, style) in styles.items():
        rows = results[results["kind"] == kind].sort_values("lm_bits")
        if rows.empty:
            continue
        ax.plot(rows["lm_bits"], rows[metric], style, color=color, label=label, markersize=6)
        if kind == "keep_random":
            mean = rows.groupby("keep_fraction")[[metric, "lm_bits"]].mean().sort_values("lm_bits")
            ax.plot(mean["lm_bits"], mean[metric], "-", color=color, linewidth=1.2,
                    label="random mean")
    if metric == "kl" and (results[metric] > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("effective bits (LM)")
    ax.set_ylabel({"kl": "mean token KL to the unquantized model",
                   "loss_delta": "caption loss change"}.get(metric, metric))
    ax.set_title("Quality versus bits on held-out captions")
    ax.legend(loc="best", fontsize=9)


def write_quality_vs_bits(results: Any, out_dir: Path, metric: str = "kl") -> Path:
    path = Path(out_dir) / FIGURES_DIR / QUALITY_VS_BITS
    path.parent.mkdir(parents=True, exist_ok=True)
    _render(lambda fig: draw_quality_vs_bits(fig, results, metric), 5.0, path)
    return path
