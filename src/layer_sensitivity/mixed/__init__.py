"""Mixed-format recipes at a bit budget: one AutoQuantize search over several formats.

``plan`` (every format and budget checked, no model) then ``run``: calibration data -> scores ->
solve each budget -> manifest, choice table, figures and ``recipes/mixed_<pairs>_<bits>bits.yaml``
(``recipe_files.load_recipe`` -> ``mtq.quantize``). ``run_and_log`` logs one run through the tracking
interface. No Hydra, no MLflow: callers pass one ``SensitivityConfig`` per format (identical but
for the pair).

Scores. With ``strategy="auto"`` and ``autoquant.reuse_scores`` on, each format's single-format
search state comes from the score cache (the entry a ``sensitivity`` run of that pair with the same
model, data and settings stores) and the multi-format state is composed from them with ModelOpt's
own rule (:func:`autoquant.compose_states`), then re-solved: no model, no calibration, no scoring.
A format with no stored state is searched alone first and stored (rather than searching the mix
directly): that entry is what a later ``sensitivity`` run of the pair, or another mix with it,
reuses. ``strategy="direct"`` (or reuse off) runs one multi-format ``auto_quantize``; so does a
composition that cannot be exact, and the run says why (``mixed.composed=false``,
``mixed.reason``).

In a multi-format search ModelOpt clips scores to be monotone in compression, so a format's own
per-layer ranking cannot be read from it: sensitivity stays one pair per run; this run decides the
mix.
"""

from .heldout import describe_heldout, heldout_metrics, heldout_quality
from .outputs import MixedResult, build_manifest, choices_frame, run, write_outputs
from .plan import (
    AUTO,
    CHOICES_TABLE,
    CONFIG_FILE,
    DIRECT,
    KIND,
    NONE,
    REPORT_NAME,
    STRATEGIES,
    MixedPlan,
    plan,
)
from .search import MixedScores, MixedSolution, direct_reason, search, solve

__all__ = ["AUTO", "CHOICES_TABLE", "CONFIG_FILE", "DIRECT", "KIND", "NONE", "REPORT_NAME",
           "STRATEGIES", "MixedPlan", "MixedResult", "MixedScores", "MixedSolution",
           "build_manifest", "choices_frame", "describe_heldout", "direct_reason",
           "heldout_metrics", "heldout_quality", "plan", "run", "search", "solve", "write_outputs"]
