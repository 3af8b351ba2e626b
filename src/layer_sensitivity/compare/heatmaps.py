"""Comparison figures: share and rank-correlation heatmaps, for a comparison and for a sweep's
children (every finished job, even when only one finished)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from ..errors import UserError
from ..manifest import Manifest
from .rankings import (
    DPI,
    SWEEP_SHARES_FIGURE,
    SWEEP_SPEARMAN_FIGURE,
    Comparison,
    compare,
    depth_order,
    group_table,
    importances,
    normalised,
    run_label,
)

log = logging.getLogger(__name__)


# --- figures ---------------------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # No software/version stamp: the same input gives the same bytes.
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def _heatmap(values: np.ndarray, rows: list[str], cols: list[str], path: Path, *, title: str,
             colour_label: str, log_scale: bool, limits: tuple[float, float] | None = None,
             annotate: bool = False) -> Path:
    """A rows x cols heatmap; NaN (and, on a log scale, zero) cells grey."""
    width = _clamp(3.5 + 0.16 * len(cols) + 0.06 * max(map(len, rows)), 5.0, 40.0)
    height = _clamp(1.8 + 0.15 * len(rows) + 0.06 * max(map(len, cols)), 3.0, 40.0)
    with matplotlib.style.context("default"):  # a user's matplotlibrc must not change the bytes
        fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
        _draw_heatmap(fig, values, rows, cols, title=title, colour_label=colour_label,
                      log_scale=log_scale, limits=limits, annotate=annotate)
        return _save(fig, path)


def _draw_heatmap(fig: Figure, values: np.ndarray, rows: list[str], cols: list[str], *, title: str,
                  colour_label: str, log_scale: bool, limits: tuple[float, float] | None,
                  annotate: bool) -> None:
    ax = fig.add_subplot()
    cells = np.ma.masked_invalid(np.where(values > 0, values, np.nan) if log_scale else values)
    finite = cells.compressed()
    if limits is not None:
        norm: Normalize = Normalize(*limits)
    elif log_scale and finite.size and finite.min() < finite.max():
        norm = LogNorm(finite.min(), finite.max())
    else:
        norm = Normalize(0.0, float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
    cmap = colormaps["coolwarm" if limits else "viridis"].with_extremes(bad="#d9d9d9")
    image = ax.imshow(cells, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=6)
    ax.set_yticks(range(len(rows)), rows, fontsize=6)
    ax.set_title(title, fontsize=9)
    if annotate:
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, "n/a" if math.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    fontsize=6)
    # a colour bar about 0.3 inch wide, next to the cells whatever the figure's width
    width = fig.get_figwidth()
    bar = fig.colorbar(image, ax=ax, shrink=0.8, fraction=min(0.15, 0.3 / width), pad=0.1 / width)
    bar.set_label(colour_label, fontsize=7)


def shares_figure(cmp: Comparison, path: Path, *, runs_as_rows: bool = False,
                  run_names: list[str] | None = None) -> Path:
    """Heatmap of shares: groups in depth order x runs (or transposed), log colour scale."""
    groups = list(cmp.groups["name"])
    runs = run_names or list(cmp.labels)
    values = cmp.shares.to_numpy(dtype=float)
    if runs_as_rows:
        return _heatmap(values.T, runs, groups, path, log_scale=True, colour_label="share of run total",
                        title="Share of each run's total sensitivity, by group (depth order)")
    return _heatmap(values, groups, runs, path, log_scale=True, colour_label="share of run total",
                    title="Share of each run's total sensitivity")


def spearman_figure(cmp: Comparison, path: Path, *, run_names: list[str] | None = None) -> Path:
    """Spearman matrix between runs over the shared groups, annotated when small enough to read."""
    names = run_names or list(cmp.labels)
    return _heatmap(cmp.spearman.to_numpy(dtype=float), names, names, path, log_scale=False,
                    limits=(-1.0, 1.0), annotate=len(names) <= 12, colour_label="Spearman rho",
                    title=f"Rank agreement (Spearman) over {len(cmp.shared_groups)} shared groups")


def sweep_labels(manifests: Mapping[str, Manifest | Mapping[str, Any]]) -> dict[str, str]:
    """Label -> ``pair/granularity/size``; the label is appended where two runs would look alike."""
    names = {str(k): run_label(normalised(str(k), m)) for k, m in manifests.items()}
    seen = pd.Series(list(names.values())).value_counts()
    return {k: f"{n} ({k})" if seen[n] > 1 else n for k, n in names.items()}


def sweep_figures(manifests: Mapping[str, Manifest | Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """A sweep parent's figures from its children's manifests (label -> manifest), into out_dir:
    shares as runs (``pair/granularity/size``) x groups in depth order, and the Spearman matrix
    between children. One child gives only the shares figure; groups not in every child are grey."""
    out_dir = Path(out_dir)
    if not manifests:
        raise UserError("A sweep's figures need at least one child run with a manifest; none was "
                        "given. Check that the sweep's jobs finished and logged their manifests.")
    names = sweep_labels(manifests)
    if len(manifests) == 1:
        (label, m), = manifests.items()
        cmp = _single_run(label, m)
        return [shares_figure(cmp, out_dir / SWEEP_SHARES_FIGURE, runs_as_rows=True,
                              run_names=[names[str(label)]])]
    cmp = compare(manifests)
    run_names = [names[k] for k in cmp.labels]
    return [shares_figure(cmp, out_dir / SWEEP_SHARES_FIGURE, runs_as_rows=True, run_names=run_names),
            spearman_figure(cmp, out_dir / SWEEP_SPEARMAN_FIGURE, run_names=run_names)]


def _single_run(label: str, m: Manifest | Mapping[str, Any]) -> Comparison:
    """A one-run 'comparison' holding only what the shares figure needs."""
    importance = importances(normalised(label, m))
    handles = depth_order(importance.index)
    total = importance.sum()
    shares = pd.DataFrame({label: importance.loc[handles] / (total if total > 0 else math.nan)})
    table = group_table(handles, pd.DataFrame({label: True}, index=handles))
    empty = pd.DataFrame()
    return Comparison(labels=(label,), runs=empty, groups=table, shares=shares,
                      ranks=pd.DataFrame(index=handles), pairs=empty, by_kind=empty,
                      spearman=empty, kendall=empty, movers=empty, top_k={}, excluded={})
