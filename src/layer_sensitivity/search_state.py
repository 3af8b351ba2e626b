"""What a stored AutoQuantize search state must be: complete (a finite score and cost for every
format of every group, as ModelOpt returns it after scoring) and bytes that load back with
``weights_only=True`` (no code runs when an entry is read)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from numbers import Real
from typing import Any

import torch

from .errors import UserError


def state_problem(state: Any, expected_formats: list[str] | None = None) -> str | None:
    """Why ``state`` is not a complete AutoQuantize search state, or None if it is."""
    try:
        return _state_problem(state, expected_formats)
    except Exception as e:  # a malformed state may break any access below
        return f"{type(e).__name__}: {_first_line(e)}"


def _state_problem(state: Any, expected_formats: list[str] | None) -> str | None:
    if not isinstance(state, Mapping):
        return f"state is a {type(state).__name__}, not a dict"
    if state.get("method") not in ("gradient", "kl_div"):
        return f"method {state.get('method')!r} is not gradient or kl_div"
    groups = state.get("candidate_stats")
    if not isinstance(groups, Mapping) or not groups:
        return "candidate_stats is missing or empty (scoring did not finish)"
    for handle, stats in groups.items():
        problem = _group_problem(stats)
        if problem:
            return f"group {handle}: {problem}"
    # ModelOpt saves its checkpoint before it solves (best.recipe empty); readers re-solve anyway.
    best = state.get("best", {})
    recipe = best.get("recipe") if isinstance(best, Mapping) else None
    if not isinstance(recipe, Mapping):
        return "best is not a dict with a recipe"
    if recipe and set(recipe) != set(groups):
        return "best.recipe does not choose a format for every group"
    for handle, chosen in recipe.items():
        if chosen not in groups[handle]["formats"]:
            return f"best.recipe[{handle}] = {chosen} is not one of the group's formats"
    if expected_formats is not None:
        stored = {_format_name(f) for s in groups.values() for f in s["formats"]} - {"NONE"}
        wanted = {_format_name(f) for f in expected_formats} - {"NONE"}
        if stored != wanted:
            return f"formats {sorted(stored)} differ from the expected {sorted(wanted)}"
    return None


def _group_problem(stats: Any) -> str | None:
    if not isinstance(stats, Mapping):
        return "stats are not a dict"
    formats, scores, costs = stats.get("formats"), stats.get("scores"), stats.get("costs")
    if not isinstance(formats, list) or not formats:
        return "no formats"
    if not isinstance(scores, list) or len(scores) != len(formats):
        return "no score for every format (scoring did not finish)"
    if not isinstance(costs, list) or len(costs) != len(formats):
        return "no cost for every format"
    if not all(_finite(v) for v in [*scores, *costs]):
        return "scores and costs must be finite numbers"
    modules = stats.get("module_names")
    if not isinstance(modules, list) or not modules or not all(isinstance(m, str) for m in modules):
        return "module_names missing"
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _format_name(fmt: Any) -> str:
    """``FP8_DEFAULT_CFG(effective-bits: 8.0)`` and ``FP8_DEFAULT_CFG`` both name FP8_DEFAULT_CFG."""
    return str(fmt).split("(", 1)[0].strip()


def check_torch_load_environment() -> None:
    # torch.load raises for every file when both are set; valid entries must not be quarantined.
    both = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    if all(os.environ.get(v, "0").lower() in ("1", "y", "yes", "true") for v in both):
        raise UserError(
            f"Both {both[0]} and {both[1]} are set, so torch refuses to load any file. Unset "
            f"{both[1]} (stored scores are always read with weights_only=True anyway)."
        )


def _register_modelopt_types() -> None:
    # ModelOpt registers QuantRecipe and its config classes as torch safe globals on import.
    import modelopt.torch.quantization.algorithms  # noqa: F401


def weights_only_load(payload: bytes) -> Any:
    _register_modelopt_types()
    # weights_only passed explicitly: torch 2.13 then ignores TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.
    return torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")


def serialize(state: Mapping[str, Any]) -> bytes:
    from modelopt.torch.utils.serialization import safe_save  # defaultdict -> dict, etc.

    buffer = io.BytesIO()
    safe_save(dict(state), buffer)
    return buffer.getvalue()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""
