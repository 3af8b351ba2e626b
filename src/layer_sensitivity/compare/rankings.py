"""Rankings of several runs side by side: shares, ranks, rank correlations, top-k overlaps,
movers, from manifests alone (``compare``)."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .. import manifest as manifest_mod
from ..errors import UserError
from ..groups import depth_key, layer_and_kind, module_of
from ..manifest import Manifest
from ..profiles import group_name

log = logging.getLogger(__name__)

MARKDOWN_NAME = "comparison.md"
HTML_NAME = "comparison.html"  # the Markdown with figures inlined (MLflow renders HTML)
JSON_NAME = "comparison.json"
FIGURES_DIR = "figures"
SHARES_FIGURE = "comparison-shares.png"
SPEARMAN_FIGURE = "comparison-spearman.png"
SWEEP_SHARES_FIGURE = "sweep-shares.png"
SWEEP_SPEARMAN_FIGURE = "sweep-spearman.png"
CSV_NAMES = {  # attribute of Comparison -> file name
    "runs": "comparison-runs.csv",
    "pairs": "comparison-pairs.csv",
    "by_kind": "comparison-by-kind.csv",
    "movers": "comparison-movers.csv",
    "spearman": "comparison-spearman.csv",
    "kendall": "comparison-kendall.csv",
    "shares": "comparison-shares.csv",
    "ranks": "comparison-ranks.csv",
}
TOP_COUNTS = (5, 10)  # top-k overlap for these k ...
TOP_FRACTION = 0.2  # ... and for this fraction of the shared groups (rounded up)
CONCENTRATION_TOP = 10  # concentration = share of a run's total held by its top 10 groups
MOVERS = 10  # groups listed as moving most in rank
MIN_KIND_GROUPS = 3  # fewer shared groups of a kind give no meaningful rank correlation
PAIRS_IN_MARKDOWN = 45  # all pairs of up to 10 runs; more go to the CSV, the worst ones shown
DPI = 100
_PAIR_STATS = ["groups", "spearman", "spearman_p", "kendall", "kendall_p"]


@dataclass(frozen=True)
class Comparison:
    """What ``compare`` found. Groups are manifest handles (``<module>.quant_recipe``); tables list
    groups in depth order and runs in the order given.

    runs: label -> scheme, pair, granularity, size, method, samples, groups, total_importance,
        top10_share (share of the run's total held by its own top 10 groups).
    groups: handle (all groups of any run) -> name (short, e.g. ``L03.mlp.gate_up``), layer, kind,
        runs (how many runs have it), shared (whether every run has it).
    shares: handle (all groups) x label: importance / the run's total; NaN where the run lacks the
        group or its total is zero.
    ranks: handle (shared groups) x label: 1 = most sensitive among the shared groups; tied
        importances share the best rank.
    pairs: one row per pair of runs over the shared groups: run_a, run_b, groups, spearman,
        spearman_p, kendall, kendall_p, and for each stem of ``top_k`` (``top5``, ``top10``,
        ``top20pct``) the overlap count and ``<stem>_fraction`` (count / k).
    by_kind: run_a, run_b, kind, groups, spearman, spearman_p, kendall, kendall_p for each kind
        with at least MIN_KIND_GROUPS shared groups.
    spearman, kendall: label x label matrices over the shared groups.
    movers: up to MOVERS groups whose rank differs across runs, largest range first: group, name,
        kind, min_rank, max_rank, rank_range, most_sensitive_in, least_sensitive_in.
    top_k: stem -> the k used (capped at the number of shared groups).
    excluded: label -> that run's groups left out of rank statistics (not in every run).
    notes: plain sentences about anything that limits the comparison.
    """

    labels: tuple[str, ...]
    runs: pd.DataFrame
    groups: pd.DataFrame
    shares: pd.DataFrame
    ranks: pd.DataFrame
    pairs: pd.DataFrame
    by_kind: pd.DataFrame
    spearman: pd.DataFrame
    kendall: pd.DataFrame
    movers: pd.DataFrame
    top_k: dict[str, int]
    excluded: dict[str, list[str]]
    notes: tuple[str, ...] = field(default=())

    @property
    def shared_groups(self) -> list[str]:
        """The groups every run has, in depth order: the ones rank statistics use."""
        return list(self.ranks.index)


# --- reading manifests -----------------------------------------------------------------------------


def normalised(label: str, m: Any) -> Manifest:
    """The run's manifest; a parsed JSON document (current or legacy schema) is read first."""
    if isinstance(m, Manifest):
        return m
    if not isinstance(m, Mapping):
        raise UserError(f"Run '{label}' is not a manifest (got {type(m).__name__}). Pass the parsed "
                        "*_quant_manifest.json of each run, e.g. from layer_sensitivity.manifest.load.")
    return manifest_mod.parse(dict(m), f"Manifest of run '{label}'")


def importances(m: Manifest) -> pd.Series:
    return pd.Series({h: float(s.importance) for h, s in m.layer_sensitivity.items()}, dtype=float)


def _run_fields(m: Manifest) -> dict[str, Any]:
    q, d, s = m.quantization, m.dataset, m.scheme
    return {"scheme": s.name, "pair": q.pair, "granularity": q.granularity,
            "size": d.size, "method": s.method, "samples": d.samples_used}


def run_label(manifest: Manifest) -> str:
    """``<pair>/<granularity>/<size>`` of a run (the parts it records), else its scheme name."""
    f = _run_fields(manifest)
    parts = [str(f[k]) for k in ("pair", "granularity", "size") if f[k] not in (None, "")]
    return "/".join(parts) or str(f["scheme"])


# --- groups ----------------------------------------------------------------------------------------


def depth_order(handles: Iterable[str]) -> list[str]:
    return sorted(set(handles), key=lambda h: (depth_key(h), h))


def group_table(handles: list[str], present: pd.DataFrame) -> pd.DataFrame:
    """Short names as in a run's metrics (``L03.mlp.gate_up``), layer, kind and presence."""
    where = [layer_and_kind(h) for h in handles]
    num_layers = max((layer for layer, _ in where if layer is not None), default=-1) + 1
    names = [group_name(h, num_layers) for h in handles]  # the per-run metric names
    if len(set(names)) < len(names):  # unusual module paths: fall back to the module names
        names = [module_of(h) for h in handles]
    counts = present.loc[handles].sum(axis=1).astype(int)
    return pd.DataFrame({"name": names,
                         "layer": pd.array([layer for layer, _ in where], dtype="Int64"),
                         "kind": [kind for _, kind in where],
                         "runs": counts.to_numpy(),
                         "shared": (counts == present.shape[1]).to_numpy()},
                        index=pd.Index(handles, name="group"))


def _kinds(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["kind"]))  # first appearance in depth order


# --- statistics ------------------------------------------------------------------------------------


def _spearman_matrix(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman rho and p between the columns (runs); NaN where a column is constant."""
    n = values.shape[1]
    with warnings.catch_warnings():  # constant rankings give NaN, which we report as undefined
        warnings.simplefilter("ignore")
        res = stats.spearmanr(values, axis=0)
    rho, p = np.asarray(res.statistic, dtype=float), np.asarray(res.pvalue, dtype=float)
    if n == 2:  # scipy returns one number for two columns
        rho = np.array([[1.0, float(rho)], [float(rho), 1.0]])
        p = np.array([[0.0, float(p)], [float(p), 0.0]])
    constant = np.all(values == values[0], axis=0)
    rho[constant, :] = np.nan
    rho[:, constant] = np.nan
    return rho, p


def _kendall(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.kendalltau(a, b)  # tau-b: accounts for ties
    return float(res.statistic), float(res.pvalue)


def _pair_stats(values: np.ndarray) -> dict[tuple[int, int], dict[str, float]]:
    """Per pair of columns: number of groups, Spearman and Kendall with p-values."""
    rho, rho_p = _spearman_matrix(values)
    out = {}
    for i, j in combinations(range(values.shape[1]), 2):
        tau, tau_p = _kendall(values[:, i], values[:, j])
        out[i, j] = {"groups": values.shape[0], "spearman": float(rho[i, j]),
                     "spearman_p": float(rho_p[i, j]) if math.isfinite(rho[i, j]) else math.nan,
                     "kendall": tau, "kendall_p": tau_p}
    return out


def _top_k(n_groups: int) -> dict[str, int]:
    ks = {f"top{k}": min(k, n_groups) for k in TOP_COUNTS}
    ks[f"top{round(TOP_FRACTION * 100)}pct"] = max(1, math.ceil(TOP_FRACTION * n_groups))
    return ks


def _top_sets(importance: pd.DataFrame, k: int) -> list[set[str]]:
    """Each run's k most sensitive shared groups; equal importances in name order, as manifests do."""
    sets = []
    for label in importance.columns:
        col = importance[label]
        order = sorted(col.index, key=lambda h: (-col[h], h))
        sets.append(set(order[:k]))
    return sets


def _matrix(labels: list[str], pairs: pd.DataFrame, column: str, undefined: list[str]) -> pd.DataFrame:
    """Label x label matrix of a pair statistic; 1 on the diagonal except for undefined rankings."""
    where = {label: i for i, label in enumerate(labels)}
    values = np.eye(len(labels))
    for a, b, value in zip(pairs["run_a"], pairs["run_b"], pairs[column], strict=True):
        values[where[a], where[b]] = values[where[b], where[a]] = value
    for label in undefined:
        values[where[label], where[label]] = math.nan
    return pd.DataFrame(values, index=pd.Index(labels, name="run"), columns=labels)


def _movers(ranks: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    lo, hi = ranks.min(axis=1), ranks.max(axis=1)
    movers = pd.DataFrame({
        "group": ranks.index, "name": table.loc[ranks.index, "name"].to_numpy(),
        "kind": table.loc[ranks.index, "kind"].to_numpy(),
        "min_rank": lo.astype(int).to_numpy(), "max_rank": hi.astype(int).to_numpy(),
        "rank_range": (hi - lo).astype(int).to_numpy(),
        "most_sensitive_in": ranks.idxmin(axis=1).to_numpy(),
        "least_sensitive_in": ranks.idxmax(axis=1).to_numpy(),
    })
    movers = movers[movers["rank_range"] > 0]
    # stable sort keeps depth order among equal ranges
    return movers.sort_values("rank_range", ascending=False, kind="stable").head(MOVERS) \
        .reset_index(drop=True)


def compare(manifests: Mapping[str, Manifest | Mapping[str, Any]]) -> Comparison:
    """Compare the rankings of two or more runs (label -> manifest, current or legacy schema)."""
    if len(manifests) < 2:
        got = ", ".join(f"'{k}'" for k in manifests) or "none"
        raise UserError(f"A comparison needs two or more runs; got {len(manifests)} ({got}). Pass "
                        "more run ids, a sweep parent with several children, or a wider filter.")
    labels = [str(k) for k in manifests]
    docs = {label: normalised(label, m) for label, m in zip(labels, manifests.values(), strict=True)}
    importance = pd.DataFrame({label: importances(m) for label, m in docs.items()})
    handles = depth_order(importance.index)
    importance = importance.loc[handles]
    table = group_table(handles, importance.notna())
    shared = list(table.index[table["shared"]])
    if len(shared) < 2:
        raise UserError(
            f"The runs {', '.join(labels)} share {len(shared)} layer group(s), so their rankings "
            "cannot be compared. Compare runs of the same model and scope (group counts: "
            + ", ".join(f"{k}={importance[k].notna().sum()}" for k in labels) + ")."
        )
    notes: list[str] = []
    excluded = {k: [h for h in handles if h not in shared and pd.notna(importance.at[h, k])]
                for k in labels}
    if any(excluded.values()):
        notes.append(f"The runs share {len(shared)} of {len(handles)} groups; rank statistics use "
                     "the shared ones (" + ", ".join(f"{k} leaves out {len(v)}"
                                                      for k, v in excluded.items() if v) + ").")

    totals = importance.sum(axis=0, min_count=1)
    zero = [k for k in labels if not totals[k] > 0]
    for k in zero:
        notes.append(f"Run '{k}' has a total importance of {totals[k]:g}: its shares and "
                     "concentration are undefined.")
    shares = importance.div(totals.where(totals > 0), axis=1)
    shares.index.name = "group"

    own_top = {k: importance[k].dropna().sort_values(ascending=False).head(CONCENTRATION_TOP).sum()
               for k in labels}
    runs = pd.DataFrame([{**_run_fields(docs[k]), "groups": int(importance[k].notna().sum()),
                          "total_importance": float(totals[k]),
                          "top10_share": own_top[k] / totals[k] if totals[k] > 0 else math.nan}
                         for k in labels], index=pd.Index(labels, name="run"))

    common = importance.loc[shared]
    ranks = common.rank(axis=0, method="min", ascending=False).astype(int)
    constant = [k for k in labels if common[k].nunique() < 2]
    for k in constant:
        if k in zero:
            continue
        notes.append(f"Run '{k}' gives every shared group the same importance: its rank "
                     "correlations are undefined (NaN).")

    top_k = _top_k(len(shared))
    values = common.to_numpy()
    overall = _pair_stats(values)
    top_sets = {stem: _top_sets(common, size) for stem, size in top_k.items()}
    pair_rows = []
    for (i, j), row in overall.items():
        rec: dict[str, Any] = {"run_a": labels[i], "run_b": labels[j], **row}
        for stem, size in top_k.items():
            common_top = len(top_sets[stem][i] & top_sets[stem][j])
            rec[stem], rec[f"{stem}_fraction"] = common_top, common_top / size
        pair_rows.append(rec)
    pairs = pd.DataFrame(pair_rows)

    kind_rows = []
    shared_table = table.loc[shared]
    for kind in _kinds(shared_table):
        members = shared_table.index[shared_table["kind"] == kind]
        if len(members) < MIN_KIND_GROUPS:
            continue
        for (i, j), row in _pair_stats(common.loc[members].to_numpy()).items():
            kind_rows.append({"run_a": labels[i], "run_b": labels[j], "kind": kind, **row})
    by_kind = pd.DataFrame(kind_rows, columns=["run_a", "run_b", "kind", *_PAIR_STATS])

    return Comparison(
        labels=tuple(labels), runs=runs, groups=table, shares=shares, ranks=ranks, pairs=pairs,
        by_kind=by_kind, spearman=_matrix(labels, pairs, "spearman", constant),
        kendall=_matrix(labels, pairs, "kendall", constant), movers=_movers(ranks, table), top_k=top_k,
        excluded=excluded, notes=tuple(notes),
    )
