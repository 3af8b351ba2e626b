"""Rankings of several sensitivity runs side by side, from their manifests alone.

No torch, no ModelOpt, no MLflow: a notebook, the ``compare`` entry point and a sweep's parent all
call ``compare`` with plain manifests (label -> manifest) and write what it found with
``write_comparison`` or ``sweep_figures``.

AutoQuantize scores are sums over score batches, so raw values differ by orders of magnitude
between sizes and methods; only ranks and shares (score / run total) compare across runs. Rank
statistics therefore use the groups every run has; shares are shown for all groups.
"""

from .document import headline, render_json, render_markdown, write_comparison
from .heatmaps import shares_figure, spearman_figure, sweep_figures, sweep_labels
from .rankings import (
    CSV_NAMES,
    FIGURES_DIR,
    HTML_NAME,
    JSON_NAME,
    MARKDOWN_NAME,
    MOVERS,
    SHARES_FIGURE,
    SPEARMAN_FIGURE,
    SWEEP_SHARES_FIGURE,
    SWEEP_SPEARMAN_FIGURE,
    Comparison,
    compare,
    run_label,
)

__all__ = ["CSV_NAMES", "FIGURES_DIR", "HTML_NAME", "JSON_NAME", "MARKDOWN_NAME", "MOVERS",
           "SHARES_FIGURE", "SPEARMAN_FIGURE", "SWEEP_SHARES_FIGURE", "SWEEP_SPEARMAN_FIGURE",
           "Comparison", "compare", "headline", "render_json", "render_markdown", "run_label",
           "shares_figure", "spearman_figure", "sweep_figures", "sweep_labels",
           "write_comparison"]
