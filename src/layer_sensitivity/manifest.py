"""The quant manifest: everything a sensitivity job measured, as one JSON document.

Reports are derived from a manifest alone. ``load`` reads the current schema and the shape written
by the earlier Hydra runner (no ``schema_version``), normalising both to the current one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import UserError
from .groups import RECIPE_SUFFIX, GroupStats
from .schema import SensitivityConfig

SCHEMA_VERSION = 1
MANIFEST_SUFFIX = "_quant_manifest.json"


def manifest_filename(scheme_name: str) -> str:
    return f"{scheme_name}{MANIFEST_SUFFIX}"


def layer_sensitivity(groups: dict[str, GroupStats]) -> dict[str, dict[str, Any]]:
    """In-scope groups with their importance and rank (1 = most sensitive)."""
    scoped = {h: g for h, g in groups.items() if g.in_scope}
    order = sorted(scoped, key=lambda h: (-scoped[h].importance, h))
    return {
        h: {
            "formats": scoped[h].formats,
            "scores": scoped[h].scores,
            "costs": scoped[h].costs,
            "importance": scoped[h].importance,
            "rank": order.index(h) + 1,
            "modules": scoped[h].modules,
            "chosen": scoped[h].chosen,
        }
        for h in order
    }


@dataclass(frozen=True)
class JobFacts:
    """What a job measured or derived besides the groups, as plain values (no torch objects)."""

    scheme_name: str
    checkpoint: str
    fingerprint: str
    device: str
    dtype: str
    weights_in_scope: int
    weights_frozen: int
    captions_path: str
    captions_sha256: str
    samples_used: int
    samples_max: int
    samples_available: int
    batches: int
    score_batches: int
    score_samples: int
    real_tokens: int
    padded_tokens: int
    target_bits: float
    modelopt_bits: float
    format_name: str
    weight_quantizer: dict[str, Any]
    input_quantizer: dict[str, Any]
    modelopt_config: dict[str, Any]  # the exact ModelOpt config searched (JSON-safe)
    versions: dict[str, str]
    truncated_captions: int = 0  # captions cut at seq_len


def build(cfg: SensitivityConfig, f: JobFacts, groups: dict[str, GroupStats],
          autoquant: dict[str, Any], frontier: list[dict[str, Any]],
          score_cache: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest of one job: config, facts, per-group sensitivity, the solver's outcome."""
    sens = layer_sensitivity(groups)
    q, g, d = cfg.quant_pair, cfg.quant_granularity, cfg.dataset
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "scheme": {
            "name": f.scheme_name,
            "effective_bits_requested": f.target_bits,
            "effective_bits_modelopt": f.modelopt_bits,
            "method": cfg.autoquant.method.value,
            "score_size": f.score_samples,
            "coverage": cfg.autoquant.coverage.value,
            "formats": [f.format_name],
            # AutoQuantize scores are sums over the score batches: compare runs by share or rank,
            # or by the per-sample values (score / score_size).
            "score_semantics": "sum over score batches",
        },
        "model": {
            "id": f.checkpoint,
            "name": cfg.model.name,
            "dtype": f.dtype,
            "device": f.device,
            "fingerprint": f.fingerprint,
            "weights_in_scope": f.weights_in_scope,
            "weights_frozen": f.weights_frozen,
        },
        "dataset": {
            "name": d.name,
            "size": d.size.value,
            "path": f.captions_path,
            "sha256": f.captions_sha256,
            "samples_used": f.samples_used,
            "samples_max": f.samples_max,
            "samples_available": f.samples_available,
            "seq_len": d.calib_seq_len,
            "batch_size": cfg.autoquant.batch_size,
            "batches": f.batches,
            "score_batches": f.score_batches,
            "real_tokens": f.real_tokens,
            "padded_tokens": f.padded_tokens,
            "truncated_captions": f.truncated_captions,
        },
        "quantization": {
            "pair": q.name,
            "weight_dtype": q.weight.value,
            "activation_dtype": q.activation.value,
            "activations_quantized": q.activation.value != "fp16",
            "fp4_format": q.fp4_format.value if q.fp4_format else None,
            "modelopt_format": f.format_name,
            "modelopt_base": q.modelopt_base,
            "edits": [str(e) for e in q.edits],
            "granularity": g.name,
            "granularity_weight": g.weight.value,
            "granularity_group_size": g.group_size,
            "granularity_activation": g.activation.value,
            # Exact settings of a decoder linear layer's quantizers (type, num_bits, axis, blocks).
            "weight_quantizer": f.weight_quantizer,
            "input_quantizer": f.input_quantizer,
            "requires_cuda": q.requires_cuda,
            "experimental": q.experimental,
            "modelopt_config": f.modelopt_config,
        },
        "layer_sensitivity": sens,
        "sensitivity_ranking": [{"name": h, "importance": s["importance"]} for h, s in sens.items()],
        "frozen_groups": sorted(h for h, gs in groups.items() if not gs.in_scope),
        "autoquant": autoquant,
        "versions": f.versions,
        "score_cache": score_cache,
    }
    if frontier:
        doc["frontier"] = frontier
    return doc


def write(manifest: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / manifest_filename(manifest["scheme"]["name"])
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def find(out_dir: Path) -> Path:
    """The single ``*_quant_manifest.json`` in a directory."""
    found = sorted(Path(out_dir).glob(f"*{MANIFEST_SUFFIX}"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise UserError(
            f"Expected one *{MANIFEST_SUFFIX} in '{out_dir}', found {what}. Point at the output "
            "directory of one sensitivity job."
        )
    return found[0]


# --- Reading manifests back: a schema for each shape ------------------------------------------
#
# The models below check types only; ``load`` returns the JSON exactly as written. Strict mode:
# numbers are numbers (not "8"), booleans are booleans (not 1); unknown keys are kept, so a
# manifest with more than this version knows still loads.

FiniteNumber = Annotated[float, Field(allow_inf_nan=False)]


class _Shape(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class _Scheme(_Shape):
    name: Annotated[str, Field(min_length=1)]
    effective_bits_requested: FiniteNumber | None = None
    effective_bits_modelopt: FiniteNumber | None = None
    method: str | None = None
    score_size: int | None = None
    coverage: str | None = None
    formats: list[str] = []


class _Model(_Shape):
    id: str | None = None
    name: str | None = None
    dtype: str | None = None
    device: str | None = None
    fingerprint: str | None = None
    weights_in_scope: int | None = None
    weights_frozen: int | None = None


class _Dataset(_Shape):
    name: str | None = None
    size: str | None = None
    path: str | None = None
    sha256: str | None = None
    samples_used: int | None = None
    samples_max: int | None = None
    samples_available: int | None = None
    seq_len: int | None = None
    batch_size: int | None = None
    batches: int | None = None
    score_batches: int | None = None
    real_tokens: int | None = None
    padded_tokens: int | None = None
    truncated_captions: int | None = None


class _Quantization(_Shape):
    pair: str | None = None
    weight_dtype: str | None = None
    activation_dtype: str | None = None
    activations_quantized: bool | None = None
    fp4_format: str | None = None
    modelopt_format: str | None = None
    modelopt_base: str | None = None
    edits: list[str] | None = None
    granularity: str | None = None
    granularity_weight: str | None = None
    granularity_group_size: int | None = None
    granularity_activation: str | None = None
    weight_quantizer: dict[str, Any] | None = None
    input_quantizer: dict[str, Any] | None = None
    requires_cuda: bool | None = None
    experimental: bool | None = None
    modelopt_config: dict[str, Any] | None = None
    modelopt_configs: dict[str, dict[str, Any]] | None = None


class _GroupLists(_Shape):
    """One layer group's candidate formats with a score and a cost for each."""

    formats: list[str]
    scores: list[FiniteNumber]
    costs: list[FiniteNumber]

    @model_validator(mode="after")
    def _parallel(self) -> _GroupLists:
        for name in ("scores", "costs"):
            if len(getattr(self, name)) != len(self.formats):
                raise ValueError(f"has {len(self.formats)} formats but "
                                 f"{len(getattr(self, name))} {name}")
        return self


class _Group(_GroupLists):
    importance: FiniteNumber
    rank: Annotated[int, Field(ge=1)]
    modules: list[str] | None = None
    chosen: str | None = None


class _RankingEntry(_Shape):
    name: str
    importance: FiniteNumber


class _Autoquant(_Shape):
    effective_bits_achieved: FiniteNumber | None = None
    modelopt_effective_bits_achieved: FiniteNumber | None = None
    min_effective_bits: FiniteNumber | None = None
    total_score: FiniteNumber | None = None
    satisfied: bool | None = None


class _FrontierPoint(_Shape):
    target_bits: FiniteNumber
    modelopt_bits: FiniteNumber
    achieved_bits: FiniteNumber
    total_score: FiniteNumber
    satisfied: bool
    recipe: dict[str, str]


class _ScoreCache(_Shape):
    key: str | None = None
    hit: bool
    path: str | None = None


class CurrentManifest(_Shape):
    """A manifest as ``build`` writes it (``schema_version`` 1)."""

    schema_version: Literal[1]
    scheme: _Scheme
    model: _Model = Field(default_factory=_Model)
    dataset: _Dataset = Field(default_factory=_Dataset)
    quantization: _Quantization = Field(default_factory=_Quantization)
    layer_sensitivity: dict[str, _Group]
    sensitivity_ranking: list[_RankingEntry] = []
    frozen_groups: list[str] = []
    autoquant: _Autoquant = Field(default_factory=_Autoquant)
    frontier: list[_FrontierPoint] = []
    versions: dict[str, str] = {}
    score_cache: _ScoreCache | None = None
    legacy: bool = False


class _LegacyScheme(_Shape):
    name: Annotated[str, Field(min_length=1)]
    auto_quantize_bits: FiniteNumber | None = None
    auto_quantize_method: str | None = None
    auto_quantize_score_size: int | None = None
    coverage_mode: str | None = None
    coverage_fraction: FiniteNumber | None = None
    quant_formats: str | list[str] | None = None


class _LegacyState(_Shape):
    constraints: Any = None  # only a dict's effective_bits is read; anything else is ignored
    score: FiniteNumber | None = None
    is_satisfied: bool | None = None


class LegacyManifest(_Shape):
    """A manifest of the earlier Hydra runner (no ``schema_version``), before conversion."""

    scheme: _LegacyScheme
    model: _Model | None = None
    dataset: _Dataset | None = None
    quantization: _Quantization | None = None
    autoquant_state: _LegacyState | None = None
    layer_sensitivity: dict[str, _GroupLists]


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
}
_MAX_ERRORS_SHOWN = 3


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


def validate(data: dict[str, Any], shape: type[BaseModel], source: str) -> None:
    """Check ``data`` against ``shape``; a UserError naming each bad field otherwise."""
    try:
        shape.model_validate(data)
    except ValidationError as e:
        by_field: dict[str, list[str]] = {}
        for error in e.errors():
            field, problem = _explain(error)
            by_field.setdefault(field, []).append(problem)
        raise _bad(source, _first_few([f"{field} ({_first_few(problems)})"
                                       for field, problems in by_field.items()])) from None


def _with_groups(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A manifest without a single scored group has nothing to report, rank or publish."""
    if not data.get("layer_sensitivity"):
        raise UserError(f"{source} has no layer groups in 'layer_sensitivity', so there is nothing "
                        "to report, compare or publish. Point at the manifest of a finished "
                        "sensitivity job. Nothing was changed.")
    return data


def load(path: Path) -> dict[str, Any]:
    """A manifest in the current schema, converting the legacy shape; clear errors otherwise.

    Either shape is checked against its schema first (``CurrentManifest``, ``LegacyManifest``),
    so a wrong type anywhere a report, recipe or publish reads is refused here, naming the field.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise UserError(f"Manifest '{path}' {what}. Check the path or the run's artifacts.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"Manifest '{path}' is not valid JSON ({e}). Nothing was changed.") from None
    if not isinstance(data, dict):
        raise UserError(f"Manifest '{path}' is not a JSON object. Nothing was changed.")
    source = f"Manifest '{path}'"
    version = data.get("schema_version")
    if version == SCHEMA_VERSION and not isinstance(version, bool):
        validate(data, CurrentManifest, source)
        return _with_groups(data, source)
    if version is None and "scheme" in data and "layer_sensitivity" in data:
        return _with_groups(from_legacy(data, source), source)
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


def _bad(source: str, what: str) -> UserError:
    return UserError(f"{source} cannot be read: {what}. Fix or regenerate the manifest; nothing "
                     "was changed.")


def _model_name(model_id: Any) -> str | None:
    """``/ckpts/Qwen3-VL-4B`` or ``Qwen/Qwen3-VL-4B`` -> ``Qwen3-VL-4B``."""
    if not isinstance(model_id, str) or not model_id.strip("/\\"):
        return None
    return re.split(r"[/\\]", model_id.rstrip("/\\"))[-1]


def from_legacy(old: dict[str, Any], source: str = "Legacy manifest") -> dict[str, Any]:
    """Normalise a manifest of the earlier Hydra runner to the current schema.

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
