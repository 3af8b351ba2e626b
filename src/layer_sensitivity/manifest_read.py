"""Reading a manifest document back: the current schema or the earlier runner's (legacy) shape.

Either shape is checked strictly before use, so a wrong type anywhere a report, recipe or publish
reads is refused here, in one paragraph naming the field, what it must be and the value found.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import UserError
from .groups import RECIPE_SUFFIX
from .manifest_model import READING, SCHEMA_VERSION, Manifest, ModelInfo, Number

# What a field must be, said once per field (``*``: any key of a map); an error is explained by
# its longest prefix here, so "'autoquant' must be an object (autoquant: Input should be ...)".
_EXPECTED: dict[tuple[str | int, ...], str] = {
    ("scheme",): "must be an object with a string 'name'",
    ("model",): "must be an object",
    ("dataset",): "must be an object",
    ("quantization",): "must be an object",
    ("autoquant",): "must be an object",
    ("autoquant_state",): "must be an object",
    ("layer_sensitivity",): "must map each '<module>.quant_recipe' to an object",
    ("layer_sensitivity", "*"): "must be an object with parallel formats, scores and costs lists",
    ("layer_sensitivity", "*", "formats"): "must be a list of strings",
    ("layer_sensitivity", "*", "scores"): "must be a list of finite numbers",
    ("layer_sensitivity", "*", "costs"): "must be a list of finite numbers",
    ("layer_sensitivity", "*", "importance"): "must be a finite number",
    ("layer_sensitivity", "*", "rank"): "must be a positive integer (1 = most sensitive)",
    ("sensitivity_ranking",): "must be a list of {name, importance} objects",
    ("frozen_groups",): "must be a list of group names",
    ("frontier",): ("must be a list of objects with target_bits, modelopt_bits, achieved_bits, "
                    "total_score, satisfied and recipe"),
    ("versions",): "must map package names to version strings",
    ("score_cache",): "must be null or an object with key, hit and path",
    ("mixed",): "must be an object (the formats of a mixed-format search)",
}
_MAX_ERRORS_SHOWN = 3
M = TypeVar("M", bound=BaseModel)


def _field_path(loc: tuple[str | int, ...]) -> str:
    """(layer_sensitivity, a.quant_recipe, scores, 0) -> layer_sensitivity['a.quant_recipe'].scores[0]"""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_]\w*", part):
            out += f".{part}" if out else part
        else:
            out += f"['{part}']"
    return out


def _explain(error: Any) -> tuple[str, str]:
    """(the field and what it must be, what is wrong there) for one validation error."""
    loc: tuple[str | int, ...] = tuple(error["loc"])
    msg = re.sub(r" or instance of \w+", "", str(error["msg"]).removeprefix("Value error, "))
    if error["type"] != "missing":
        shown = repr(error["input"])
        msg += f", got {shown if len(shown) <= 60 else shown[:57] + '...'}"
    # Map keys (layer group handles) match the '*' of the table.
    pattern = tuple("*" if i == 1 and loc[0] == "layer_sensitivity" else p
                    for i, p in enumerate(loc))
    for n in range(len(loc), 0, -1):
        if pattern[:n] in _EXPECTED:
            if n == 1:  # a top-level section: "'autoquant' must be ... (autoquant: ...)"
                return f"{loc[0]!r} {_EXPECTED[pattern[:1]]}", f"{_field_path(loc)}: {msg}"
            inner = f"{_field_path(loc[n:])}: " if loc[n:] else ""
            return f"{_field_path(loc[:n])} {_EXPECTED[pattern[:n]]}", f"{inner}{msg}"
    return _field_path(loc), msg


def _first_few(items: list[str]) -> str:
    more = len(items) - _MAX_ERRORS_SHOWN
    return "; ".join(items[:_MAX_ERRORS_SHOWN]) + (f"; and {more} more" if more > 0 else "")


def _bad(source: str, what: str) -> UserError:
    return UserError(f"{source} cannot be read: {what}. Fix or regenerate the manifest; nothing "
                     "was changed.")


def validate(data: dict[str, Any], shape: type[M], source: str) -> M:
    """``data`` read strictly as ``shape``; a UserError naming each bad field otherwise."""
    try:
        return shape.model_validate(data, strict=True, context={READING: True})
    except ValidationError as e:
        by_field: dict[str, list[str]] = {}
        for error in e.errors():
            field, problem = _explain(error)
            by_field.setdefault(field, []).append(problem)
        raise _bad(source, _first_few([f"{field} ({_first_few(problems)})"
                                       for field, problems in by_field.items()])) from None


def parse(data: dict[str, Any], source: str) -> Manifest:
    """A manifest from a parsed JSON document of either shape; clear errors otherwise."""
    version = data.get("schema_version")
    if version == SCHEMA_VERSION and not isinstance(version, bool):
        return _with_groups(validate(data, Manifest, source), source)
    if version is None and "scheme" in data and "layer_sensitivity" in data:
        return _with_groups(validate(from_legacy(data, source), Manifest, source), source)
    if version is None:
        missing = [k for k in ("scheme", "layer_sensitivity") if k not in data]
        raise UserError(
            f"{source} is not a quant manifest: it has no schema_version and lacks "
            f"{', '.join(repr(k) for k in missing)}, so it is neither the current schema nor the "
            "legacy (unversioned) shape. Point at a *_quant_manifest.json written by a sensitivity "
            "job. Nothing was changed."
        )
    raise UserError(
        f"{source} has unknown schema_version {version!r}; this version reads "
        f"schema_version {SCHEMA_VERSION} and legacy (unversioned) manifests. Upgrade "
        "layer_sensitivity or regenerate the manifest. Nothing was changed."
    )


def _with_groups(m: Manifest, source: str) -> Manifest:
    """A manifest without a single scored group has nothing to report, rank or publish."""
    if not m.layer_sensitivity:
        raise UserError(f"{source} has no layer groups in 'layer_sensitivity', so there is nothing "
                        "to report, compare or publish. Point at the manifest of a finished "
                        "sensitivity job. Nothing was changed.")
    return m


# --- The earlier Hydra runner's shape (no schema_version) --------------------------------------


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow")


class _LegacyScheme(_Shape):
    name: Annotated[str, Field(min_length=1)]
    auto_quantize_bits: Number | None = None
    auto_quantize_method: str | None = None
    auto_quantize_score_size: int | None = None
    coverage_mode: str | None = None
    coverage_fraction: Number | None = None
    quant_formats: str | list[str] | None = None


class _LegacyState(_Shape):
    constraints: Any = None  # only a dict's effective_bits is read; anything else is ignored
    score: Number | None = None
    is_satisfied: bool | None = None


class _LegacyGroup(_Shape):
    """One layer group's candidate formats with a score and a cost for each."""

    formats: list[str]
    scores: list[Number]
    costs: list[Number]

    @model_validator(mode="after")
    def _parallel(self) -> _LegacyGroup:
        for name in ("scores", "costs"):
            if len(getattr(self, name)) != len(self.formats):
                raise ValueError(f"has {len(self.formats)} formats but "
                                 f"{len(getattr(self, name))} {name}")
        return self


class LegacyManifest(_Shape):
    """A manifest of the earlier Hydra runner (no ``schema_version``), before conversion."""

    scheme: _LegacyScheme
    model: ModelInfo | None = None
    dataset: dict[str, Any] | None = None  # checked as the current schema's after conversion
    quantization: dict[str, Any] | None = None
    autoquant_state: _LegacyState | None = None
    layer_sensitivity: dict[str, _LegacyGroup]


def _model_name(model_id: Any) -> str | None:
    """``/ckpts/Qwen3-VL-4B`` or ``Qwen/Qwen3-VL-4B`` -> ``Qwen3-VL-4B``."""
    if not isinstance(model_id, str) or not model_id.strip("/\\"):
        return None
    return re.split(r"[/\\]", model_id.rstrip("/\\"))[-1]


def from_legacy(old: dict[str, Any], source: str = "Legacy manifest") -> dict[str, Any]:
    """Normalise a manifest of the earlier Hydra runner to a document in the current schema.

    Legacy shape (checked by ``LegacyManifest`` first): ``scheme`` {name, auto_quantize_bits,
    auto_quantize_method, auto_quantize_score_size, coverage_mode, coverage_fraction,
    quant_formats}, ``model`` {id}, ``num_quantized_layers``, ``layers``, ``autoquant_state``
    {keys, constraints: {effective_bits}, score, is_satisfied}, ``layer_sensitivity`` {handle:
    {formats, scores, costs, importance, rank}}, ``sensitivity_ranking``, optional ``dataset``,
    ``quantization``, ``run_config``.

    Its ``rank`` and ``sensitivity_ranking`` run the other way (rank 1 = least sensitive, vision
    groups first) and are not used: importance and rank are recomputed exactly as ``build`` does
    (importance = the largest score among quantized formats; rank 1 = most sensitive; ties by
    name), so a legacy manifest orders its layers like a current one. Groups offered only the
    NONE format (the vision tower) become ``frozen_groups``. Legacy runners passed the bits
    target straight to ModelOpt, so requested and given bits are the same number there.
    """
    validate(old, LegacyManifest, source)
    scheme = old["scheme"]
    state = dict(old.get("autoquant_state") or {})
    constraints = state.get("constraints")
    if not isinstance(constraints, dict):
        constraints = {}
    sens_in: dict[str, tuple[list[str], list[float], list[float], float]] = {}
    frozen = []
    for handle, s in old["layer_sensitivity"].items():
        formats, scores, costs = s["formats"], [float(x) for x in s["scores"]], [
            float(x) for x in s["costs"]]
        quantized = [sc for f, sc in zip(formats, scores, strict=True) if not f.startswith("NONE")]
        if not quantized:
            frozen.append(handle)  # only NONE was offered: outside the analysed scope
            continue
        sens_in[handle] = (formats, scores, costs, max(quantized))
    if not sens_in:
        raise _bad(source, "no layer group in 'layer_sensitivity' has a quantized format")
    order = sorted(sens_in, key=lambda h: (-sens_in[h][3], h))
    sens = {
        h: {
            "formats": sens_in[h][0],
            "scores": sens_in[h][1],
            "costs": sens_in[h][2],
            "importance": sens_in[h][3],
            "rank": rank,
            "modules": [h.removesuffix(RECIPE_SUFFIX)],
            "chosen": None,
        }
        for rank, h in enumerate(order, start=1)
    }
    raw_formats = scheme.get("quant_formats")
    formats = ([raw_formats] if isinstance(raw_formats, str)
               else [str(f) for f in raw_formats or []])
    model = dict(old.get("model") or {})
    model.setdefault("name", _model_name(model.get("id")))
    bits = scheme.get("auto_quantize_bits")
    achieved = constraints.get("effective_bits")
    return {
        "schema_version": SCHEMA_VERSION,
        "legacy": True,
        "scheme": {
            "name": scheme["name"],
            "effective_bits_requested": bits,
            "effective_bits_modelopt": bits,
            "method": scheme.get("auto_quantize_method"),
            "score_size": scheme.get("auto_quantize_score_size"),
            "coverage": scheme.get("coverage_mode"),
            "coverage_fraction": scheme.get("coverage_fraction"),
            "formats": formats,
        },
        "model": model,
        "dataset": dict(old.get("dataset") or {}),
        "quantization": dict(old.get("quantization") or {}),
        "layer_sensitivity": sens,
        "sensitivity_ranking": [{"name": h, "importance": s["importance"]} for h, s in sens.items()],
        "frozen_groups": sorted(frozen),
        "autoquant": {
            "effective_bits_achieved": achieved,
            "modelopt_effective_bits_achieved": achieved,
            "total_score": state.get("score"),
            "satisfied": state.get("is_satisfied"),
        },
        "versions": {},
        "run_config": old.get("run_config"),
    }
