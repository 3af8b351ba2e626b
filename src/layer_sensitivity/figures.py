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

from .groups import KIND_ORDER, depth_key, format_bits, layer_and_kind
from .manifest_model import FrontierPoint, Manifest
from .profiles import GroupProfile, depth_order, kind_order

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


def figure_names(manifest: Manifest) -> list[str]:
    """File names (under ``figures/``) that ``write_figures`` writes for this manifest, in order."""
    profiles = manifest.profiles
    decoder = any(p.layer is not None for p in profiles)
    names = [DEPTH_PROFILE] if decoder else []
    names += [TOP_GROUPS] if profiles else []
    names += [LAYER_KIND_HEATMAP] if decoder else []
    names += [FRONTIER] if _frontier_points(manifest) else []
    return names


def write_figures(manifest: Manifest, out_dir: Path) -> list[Path]:
    """Render every figure of the manifest into ``out_dir/figures/``; returns the PNG paths."""
    folder = Path(out_dir) / FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    profiles = manifest.profiles
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


def _subtitle(manifest: Manifest) -> str:
    scheme, samples = manifest.scheme, manifest.score_samples
    parts = [scheme.name, scheme.method or "method unknown",
             f"{samples} score samples" if samples else "score samples unknown"]
    return " | ".join(p for p in parts if p)


def _pct(share: float) -> float:
    return 100.0 * share


def draw_depth_profile(fig: Figure, manifest: Manifest,
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


def draw_top_groups(fig: Figure, manifest: Manifest,
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


def draw_layer_kind_heatmap(fig: Figure, manifest: Manifest,
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


def _frontier_points(manifest: Manifest) -> list[FrontierPoint]:
    return sorted(manifest.frontier, key=lambda p: (float(p.achieved_bits), float(p.target_bits)))


def draw_frontier(fig: Figure, manifest: Manifest) -> None:
    """Total score of the solver's choice per bit target, against the bits it achieved."""
    ax = fig.add_subplot()
    points = _frontier_points(manifest)
    x = [float(p.achieved_bits) for p in points]
    y = [float(p.total_score) for p in points]
    ax.plot(x, y, color=_PALETTE[0], linewidth=1.6, zorder=1)
    met = [p.satisfied for p in points]
    for satisfied in (True, False):
        chosen = [(xi, yi) for xi, yi, m in zip(x, y, met, strict=True) if m == satisfied]
        if chosen:
            cx, cy = zip(*chosen, strict=True)
            ax.scatter(cx, cy, s=45, zorder=2, color=_PALETTE[0] if satisfied else "white",
                       edgecolors=_PALETTE[0],
                       label="target met" if satisfied else "target missed")
    for p, xi, yi in zip(points, x, y, strict=True):
        ax.annotate(f"target {float(p.target_bits):g}", (xi, yi), xytext=(5, 5),
                    textcoords="offset points", fontsize=9)
    ax.margins(x=0.1, y=0.15)  # room for the target labels
    ax.set_xlabel("effective bits achieved (LM)")
    ax.set_ylabel("total score (sum over score batches)")
    ax.set_title(f"Score versus bits\n{_subtitle(manifest)}")
    ax.legend(loc="best")


QUALITY_VS_BITS = "quality_vs_bits.png"


def draw_quality_vs_bits(fig: Figure, summary: Any, metric: str = "kl_test") -> None:
    """Test-caption quality against LM bits at equal budgets (``equal_bits.summary``): the
    recommended recipe, the guided one, random draws (mean line, min-max band), the reverse
    ranking and each practitioner rule."""
    ax = fig.add_subplot()
    named = {"recommended": ("recommended (chosen on validation)", "k", "o-", 2.2),
             "keep_top": ("guided (score per bit)", _PALETTE[0], "o-", 1.6),
             "reverse": ("reverse ranking", _PALETTE[3], "s--", 1.0),
             "keep_top_rank": ("ranking order, ignoring bits", _PALETTE[9], "v:", 1.0)}
    rules = sorted(c for c in summary["curve"].unique() if str(c).startswith("rule_"))
    for i, rule in enumerate(rules):
        named[rule] = (rule.removeprefix("rule_").replace("_", " ") + " (rule)",
                       _PALETTE[[1, 2, 4, 5, 6, 8][i % 6]], "^:", 1.0)
    for curve, (label, color, style, width) in named.items():
        rows = summary[summary["curve"] == curve].sort_values("target_bits")
        if not rows.empty:
            ax.plot(rows["target_bits"], rows[metric], style, color=color, label=label,
                    linewidth=width, markersize=5)
    rnd = summary[summary["curve"] == "random_mean"].sort_values("target_bits")
    if not rnd.empty:
        ax.plot(rnd["target_bits"], rnd[metric], "-", color=_PALETTE[7], label="random (mean)")
        if metric == "kl_test":
            ax.fill_between(rnd["target_bits"], rnd["kl_test_min"], rnd["kl_test_max"],
                            color=_PALETTE[7], alpha=0.25, label="random (min-max)")
    if metric.startswith("kl") and (summary[metric] > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("LM bit budget (each recipe at or just below it)")
    ax.set_ylabel({"kl_test": "mean token KL to the unquantized model",
                   "loss_delta_test": "caption loss change"}.get(metric, metric))
    ax.set_title("Quality versus bits at equal budgets (test captions)")
    ax.legend(loc="best", fontsize=8)


def write_quality_vs_bits(summary: Any, out_dir: Path, metric: str = "kl_test") -> Path:
    path = Path(out_dir) / FIGURES_DIR / QUALITY_VS_BITS
    path.parent.mkdir(parents=True, exist_ok=True)
    _render(lambda fig: draw_quality_vs_bits(fig, summary, metric), 5.0, path)
    return path


# --------------------------------------------------------------------------------------------
# Mixed-format runs (the ``recipe`` entry point): chosen formats across depth, mixed frontier

MIXED_FORMATS = "mixed_formats.png"
MIXED_FRONTIER = "mixed_frontier.png"
_NONE = "NONE"
_NONE_COLOR = "lightgrey"
_MAX_LAYER_TICKS = 16


def _label_name(label: str) -> str:
    return label.split("(", 1)[0].strip()


def _mixed_points(manifest: Manifest) -> list[FrontierPoint]:
    return sorted(manifest.frontier, key=lambda p: float(p.target_bits))


def pair_names(manifest: Manifest) -> dict[str, str]:
    """ModelOpt format name -> the project's pair name (``FP8_DEFAULT_CFG`` -> ``wfp8_afp8``), as
    the mixed manifest records them; 16 bits as ``16 bits (kept)``."""
    names = {f.name: f.pair or f.name for f in manifest.quantization.formats or []}
    return names | {_NONE: "16 bits (kept)"}


def mixed_format_order(manifest: Manifest) -> list[str]:
    """The run's formats from most to least compressed, then NONE (16 bits): colour order."""
    bits: dict[str, float] = {}
    for s in manifest.layer_sensitivity.values():
        for label in s.formats:
            bits.setdefault(_label_name(label), format_bits(label))
    bits.pop(_NONE, None)
    return [*sorted(bits, key=lambda n: (bits[n], n)), _NONE]


def _format_colors(order: Sequence[str]) -> list[Any]:
    return [_NONE_COLOR if name == _NONE else _PALETTE[i % len(_PALETTE)]
            for i, name in enumerate(order)]


def mixed_figure_names(manifest: Manifest) -> list[str]:
    """Files ``write_mixed_figures`` writes: formats across depth; the frontier for 2+ budgets."""
    points = _mixed_points(manifest)
    return ([MIXED_FORMATS] if points else []) + ([MIXED_FRONTIER] if len(points) > 1 else [])


def write_mixed_figures(manifest: Manifest, out_dir: Path) -> list[Path]:
    """Render a mixed run's figures into ``out_dir/figures/``; returns the PNG paths."""
    folder = Path(out_dir) / FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    draw: dict[str, tuple[Callable[[Figure], None], float]] = {
        MIXED_FORMATS: (lambda fig: draw_mixed_formats(fig, manifest),
                        2.4 + 0.45 * len(_mixed_points(manifest))),
        MIXED_FRONTIER: (lambda fig: draw_mixed_frontier(fig, manifest), 4.5),
    }
    paths = []
    for name in mixed_figure_names(manifest):
        _render(draw[name][0], draw[name][1], folder / name)
        paths.append(folder / name)
    return paths


def _layer_ticks(handles: Sequence[str]) -> tuple[list[int], list[str], list[float]]:
    """Tick positions and labels (first group of a layer: ``L<n>``; groups outside the layers by
    name) and the boundaries between layers, for columns in depth order."""
    positions, labels, bounds = [], [], []
    layers = [layer_and_kind(h) for h in handles]
    decoder = sorted({layer for layer, _ in layers if layer is not None})
    every = max(1, -(-len(decoder) // _MAX_LAYER_TICKS))
    previous: int | None = None
    for i, (layer, kind) in enumerate(layers):
        if layer is None:
            positions.append(i)
            labels.append(kind)
        elif layer != previous:
            if previous is not None:
                bounds.append(i - 0.5)
            if decoder.index(layer) % every == 0:
                positions.append(i)
                labels.append(f"L{layer}")
        previous = layer if layer is not None else previous
    return positions, labels, bounds


def draw_mixed_formats(fig: Figure, manifest: Manifest) -> None:
    """One row per bit budget, one column per layer group in depth order, coloured by the format
    the solver chose (grey: kept at 16 bits); each row's label gives the bits achieved."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    ax = fig.add_subplot()
    order = mixed_format_order(manifest)
    handles = sorted(manifest.layer_sensitivity, key=depth_key)
    points = _mixed_points(manifest)
    grid = np.array([[order.index(_label_name(p.recipe.get(h, _NONE))) for h in handles]
                     for p in points], dtype=float)
    colors = _format_colors(order)
    ax.imshow(grid, aspect="auto", cmap=ListedColormap(colors), vmin=-0.5,
              vmax=len(order) - 0.5, interpolation="nearest")
    positions, labels, bounds = _layer_ticks(handles)
    ax.set_xticks(positions, labels, rotation=90 if len(positions) > 12 else 0)
    for x in bounds:
        ax.axvline(x, color="white", linewidth=1.0)
    ax.set_yticks(range(len(points)), [f"{float(p.target_bits):g} bits "
                                       f"(got {float(p.achieved_bits):.2f})" for p in points])
    ax.grid(False)
    ax.set_xlabel("layer groups in depth order (q/k/v, o, gate/up, down per layer)")
    names = pair_names(manifest)
    legend = [Patch(color=c, label=names.get(n, n)) for n, c in zip(order, colors, strict=True)]
    # Below the figure, outside the axes: constrained layout keeps the x label clear of it.
    fig.legend(handles=legend, loc="outside lower center", ncol=min(4, len(legend)), fontsize=9)
    ax.set_title(f"Chosen format per layer group across depth\n{_subtitle(manifest)}")


def draw_mixed_frontier(fig: Figure, manifest: Manifest) -> None:
    """Total score of the mixed solution per budget against the bits achieved, with each format's
    own frontier (the same scores restricted to that format and 16 bits) overlaid."""
    ax = fig.add_subplot()
    order = mixed_format_order(manifest)
    colors = dict(zip(order, _format_colors(order), strict=True))
    singles = manifest.mixed.single_frontiers if manifest.mixed else {}
    for name in order:
        points = sorted(singles.get(name) or [], key=lambda p: float(p.achieved_bits))
        if points:
            ax.plot([float(p.achieved_bits) for p in points],
                    [float(p.total_score) for p in points], "s--", color=colors[name],
                    linewidth=1.2, markersize=5, label=f"{pair_names(manifest).get(name, name)} only")
    mixed = sorted(_mixed_points(manifest), key=lambda p: float(p.achieved_bits))
    x = [float(p.achieved_bits) for p in mixed]
    y = [float(p.total_score) for p in mixed]
    ax.plot(x, y, "o-", color="black", linewidth=1.8, markersize=6, label="mixed", zorder=3)
    for p, xi, yi in zip(mixed, x, y, strict=True):
        ax.annotate(f"{float(p.target_bits):g}", (xi, yi), xytext=(5, 5),
                    textcoords="offset points", fontsize=9)
    ax.margins(x=0.08, y=0.12)
    ax.set_xlabel("effective bits achieved (LM)")
    ax.set_ylabel("total score (ModelOpt's objective)")
    ax.set_title(f"Mixed versus single-format frontiers\n{_subtitle(manifest)}")
    ax.legend(loc="best", fontsize=9)
