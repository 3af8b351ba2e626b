"""Mixed-precision recipes that ``mtq.quantize`` consumes, built from a quant manifest.

A recipe's config is ModelOpt's own shape, ``{"quant_cfg": [...], "algorithm": ...}``: every
quantizer is disabled first, then each quantized layer group's modules get the weight and input
quantizer settings of that group's format, named module by module (as
``mtq.get_auto_quantize_config`` writes them). The vision tower is never named, so it stays
unquantized. :class:`Recipe` adds what it is (kind, formats, LM bits, kept and quantized groups);
``recipe_files`` writes it as a ModelOpt PTQ recipe YAML and reads it back.

Building recipes needs neither torch nor ModelOpt when the manifest records its formats' exact
configs (``quantization.modelopt_config`` / ``modelopt_configs``) or the caller passes them;
otherwise :func:`format_configs` rebuilds them from the catalogue, which imports ModelOpt.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError
from .manifest_model import Manifest

log = logging.getLogger(__name__)

QuantCfg = dict[str, Any]

NONE = "NONE"  # ModelOpt's name for "left at 16 bits"
# Quantizers of a plain linear layer, as ModelOpt's auto_quantize replays them per module.
WEIGHT, INPUT, OUTPUT = "weight_quantizer", "input_quantizer", "output_quantizer"
QUANTIZER_ATTRS = (WEIGHT, INPUT, OUTPUT)
VISION_PATTERNS = ("*visual*",)  # never quantized, whatever the manifest's coverage
BITS_TOLERANCE = 1e-9

# Kinds of recipe (``layer_sensitivity.kind``).
FRONTIER, MIXED = "frontier", "mixed"  # the solver's own per-group choice at a bit target
KEEP_TOP = "keep_top"  # the most sensitive groups per bit kept at 16 bits within a budget
# (budgets.py selects them; baselines.py adds the equal-bits baselines' kinds)


# --------------------------------------------------------------------------------------------
# Layer groups of a manifest


@dataclass(frozen=True)
class Group:
    """One in-scope layer group of a manifest: ModelOpt's unit of decision."""

    handle: str  # "<first module>.quant_recipe"
    rank: int  # 1 = most sensitive
    modules: tuple[str, ...]
    costs: dict[str, float]  # format name -> weight cost ("NONE" = 16 bits)
    scores: dict[str, float] = field(default_factory=dict)  # format name -> AutoQuantize score

    @property
    def uncompressed_cost(self) -> float:
        return max(self.costs.values())

    def cost(self, fmt: str | None) -> float:
        return self.uncompressed_cost if fmt is None or fmt == NONE else self.costs[fmt]


def format_name(label: str) -> str:
    """``INT4_BLOCKWISE_WEIGHT_ONLY_CFG(effective-bits: 4.0)`` -> ``INT4_BLOCKWISE_WEIGHT_ONLY_CFG``."""
    return label.split("(", 1)[0].strip()


def _is_vision(module: str) -> bool:
    return any(fnmatch.fnmatch(module, p) for p in VISION_PATTERNS)


def _source(manifest: Manifest) -> str:
    return f"manifest of run '{manifest.scheme.name}'"


def manifest_groups(manifest: Manifest) -> list[Group]:
    """The manifest's in-scope groups, most sensitive first; vision groups are left out."""
    if manifest.legacy:
        raise UserError(
            f"The {_source(manifest)} is a legacy manifest: it does not record which modules "
            "form each layer group (q/k/v and gate/up share one), so no recipe can name them. "
            "Rerun the sensitivity job with this version to get a manifest recipes can be built "
            "from."
        )
    sens = manifest.layer_sensitivity
    if not sens:
        raise UserError(f"The {_source(manifest)} has no layer_sensitivity groups; point at the "
                        "*_quant_manifest.json of a finished sensitivity job.")
    out = []
    for handle, s in sens.items():
        modules = tuple(s.modules or ())
        if not modules:
            raise UserError(f"The {_source(manifest)} lists no modules for group '{handle}'; "
                            "regenerate the manifest with a current sensitivity job.")
        if all(_is_vision(m) for m in modules):
            continue
        costs = {format_name(f): float(c) for f, c in zip(s.formats, s.costs, strict=True)}
        scores = {format_name(f): float(x) for f, x in zip(s.formats, s.scores, strict=True)}
        out.append(Group(handle, s.rank, modules, costs, scores))
    return sorted(out, key=lambda g: (g.rank, g.handle))


def lm_bits(groups: Sequence[Group], assignment: Mapping[str, str]) -> float:
    """Average bits over the groups' weights when ``assignment`` (handle -> format) is applied.

    Groups absent from ``assignment`` stay at 16 bits; costs are ModelOpt's own (scales included).
    """
    full = sum(g.uncompressed_cost for g in groups)
    return 16.0 * sum(g.cost(assignment.get(g.handle)) for g in groups) / full


# --------------------------------------------------------------------------------------------
# Format configs


def restore(obj: Any, key: str | None = None) -> Any:
    """A config read from JSON, with ModelOpt's tuples and integer block-size keys back."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if key == "block_sizes" and isinstance(k, str) and re.fullmatch(r"-?\d+", k):
                out[int(k)] = restore(v, k)  # {"-1": 128} -> {-1: 128}: ModelOpt asserts int axes
            else:
                out[k] = restore(v, k)
        return out
    if isinstance(obj, list):
        items = [restore(x) for x in obj]
        return tuple(items) if key in ("num_bits", "scale_bits") else items
    return obj


def jsonable(obj: Any) -> Any:
    """A config as plain JSON (tuples as lists, integer keys as strings), e.g. for a manifest."""
    return json.loads(json.dumps(obj))


def format_configs(manifest: Manifest) -> dict[str, QuantCfg]:
    """Format name -> exact ModelOpt config of every format the manifest's run searched.

    Read from ``quantization.modelopt_configs`` ({name: config}, a mixed search) or
    ``quantization.modelopt_config`` (one pair, named ``modelopt_format``) when recorded;
    otherwise rebuilt from the catalogue by pair and granularity (imports ModelOpt) and checked
    against the quantizer settings the manifest recorded.
    """
    q = manifest.quantization
    if q.modelopt_configs is not None:
        return {name: restore(cfg) for name, cfg in q.modelopt_configs.items()}
    if q.modelopt_config is not None and q.modelopt_format:
        return {q.modelopt_format: restore(q.modelopt_config)}
    return _rebuild_config(manifest)


def _rebuild_config(manifest: Manifest) -> dict[str, QuantCfg]:
    """The pair's config rebuilt from the pair and overlay the manifest describes (imports ModelOpt)."""
    from . import catalogue
    from .schema import (
        ActivationGranularity,
        FP4Format,
        Precision,
        PresetEdit,
        QuantGranularityConfig,
        QuantPairConfig,
        WeightGranularity,
    )

    q = manifest.quantization
    try:
        pair = QuantPairConfig(
            name=_recorded(q.pair, "pair"), weight=Precision(_recorded(q.weight_dtype, "weight_dtype")),
            activation=Precision(_recorded(q.activation_dtype, "activation_dtype")),
            fp4_format=FP4Format(q.fp4_format) if q.fp4_format else None,
            modelopt_base=_recorded(q.modelopt_base, "modelopt_base"),
            edits=[PresetEdit(e) for e in q.edits or []])
        gran = QuantGranularityConfig(
            name=q.granularity or "default",
            weight=WeightGranularity(q.granularity_weight or "keep"),
            group_size=q.granularity_group_size,
            activation=ActivationGranularity(q.granularity_activation or "keep"))
    except (KeyError, ValueError) as e:
        raise UserError(
            f"The {_source(manifest)} neither records its ModelOpt config "
            f"(quantization.modelopt_config) nor a pair this version can rebuild it from ({e}). "
            "Pass the format configs explicitly (quant_cfgs=...) or rerun the analysis."
        ) from None
    cfg = catalogue.build_quant_config(pair, gran)
    for side, key in ((catalogue.WEIGHT, "weight_quantizer"), (catalogue.INPUT, "input_quantizer")):
        recorded, now = getattr(q, key), catalogue.quantizer_settings(cfg, side)
        if recorded is not None and jsonable(now) != recorded:
            raise UserError(
                f"Rebuilding the {pair.name} config of the {_source(manifest)} gives a {key} of "
                f"{now['summary']!r}, but the run recorded {recorded.get('summary')!r} (another "
                "ModelOpt version?). Pass the run's exact configs (quant_cfgs=...) or rerun it."
            )
    return {q.modelopt_format or catalogue.format_name(pair, gran): cfg}


def _recorded(value: str | None, name: str) -> str:
    """A field the rebuild needs; a KeyError naming it when the manifest does not record it."""
    if value is None:
        raise KeyError(name)
    return value


def _entries(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``quant_cfg`` as a list of dict entries (ModelOpt 0.47's form; older dict form converted)."""
    entries = cfg.get("quant_cfg")
    if isinstance(entries, list) and all(isinstance(e, dict) for e in entries):
        return entries
    from modelopt.torch.quantization.config import normalize_quant_cfg_list

    return [dict(e) if isinstance(e, dict) else e.model_dump(exclude_unset=True)
            for e in normalize_quant_cfg_list(entries)]


def linear_quantizers(cfg: Mapping[str, Any]) -> dict[str, tuple[bool, Any]]:
    """attr -> (enabled, attributes) that ``cfg`` gives the quantizers of a plain linear layer.

    Entries match the bare quantizer name (or end with it), as ModelOpt does when it turns an
    auto_quantize result into a per-module config; entries scoped by parent class or module path
    (``*lm_head*``, ``*visual*``) are the preset's exclusions, which a recipe replaces by naming
    modules. Last match wins; an entry with ``cfg`` sets the attributes, one without only toggles
    ``enable`` (``set_quantizer_by_cfg``'s rule).
    """
    out: dict[str, tuple[bool, Any]] = {}
    for attr in QUANTIZER_ATTRS:
        enabled, attrs, matched = False, None, False
        for e in _entries(cfg):
            pattern = e["quantizer_name"]
            if e.get("parent_class") is not None:
                continue
            if not (fnmatch.fnmatch(attr, pattern) or pattern.endswith(attr)):
                continue
            matched = True
            if e.get("cfg") is not None:
                c = e["cfg"]
                attrs = ([_attrs(x) for x in c] if isinstance(c, list) else _attrs(c))
            enabled = bool(e.get("enable", True))
        if matched:
            out[attr] = (enabled, attrs)
    return out


def _attrs(d: Mapping[str, Any]) -> dict[str, Any]:
    # ``enable`` belongs to the entry; ModelOpt rejects it inside ``cfg``.
    return {k: copy.deepcopy(v) for k, v in d.items() if k != "enable"}


def _algorithm(cfgs: Iterable[Mapping[str, Any]]) -> Any:
    algos = {json.dumps(c.get("algorithm", "max"), sort_keys=True): c.get("algorithm", "max")
             for c in cfgs}
    if len(algos) <= 1:  # none: nothing is quantized
        return copy.deepcopy(next(iter(algos.values()), "max"))
    log.warning("formats calibrate with different algorithms %s; the recipe uses 'max'",
                sorted(algos))
    return "max"


# --------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class Recipe:
    name: str  # file stem, e.g. "keep_top_25pct", "frontier_6bits"
    kind: str  # frontier | mixed | keep_top | a baseline's kind (baselines.py)
    config: QuantCfg  # ModelOpt's config, native types (what mtq.quantize takes)
    quantized: dict[str, str]  # group handle -> format name
    kept: tuple[str, ...]  # in-scope groups left at 16 bits, most sensitive first
    lm_bits: float  # achieved, over the language model's quantizable weights
    info: dict[str, Any] = field(default_factory=dict)  # target_bits, headroom, seed, source

    @property
    def metadata(self) -> dict[str, Any]:
        """What the recipe is, as data (reports, logged-model params)."""
        formats = sorted(set(self.quantized.values()))
        return {
            "name": self.name,
            "kind": self.kind,
            "formats": formats,
            "lm_bits": self.lm_bits,
            **self.info,
            "kept_groups": list(self.kept),
            "quantized_groups": dict(self.quantized),
        }


def build_config(groups: Sequence[Group], assignment: Mapping[str, str],
                 quant_cfgs: Mapping[str, QuantCfg]) -> QuantCfg:
    """ModelOpt config: all quantizers off, then each assigned group's modules in its format."""
    settings = {name: linear_quantizers(quant_cfgs[name]) for name in set(assignment.values())}
    entries: list[dict[str, Any]] = [{"quantizer_name": "*", "enable": False}]
    for g in groups:
        fmt = assignment.get(g.handle)
        if fmt is None:
            continue
        for module in g.modules:
            if _is_vision(module):
                raise UserError(f"Group '{g.handle}' contains vision module '{module}'; the "
                                "vision tower is never quantized by a recipe.")
            for attr, (enabled, attrs) in settings[fmt].items():
                if attr == OUTPUT and not enabled:
                    continue  # "*" already disabled it; keep recipes readable
                entry: dict[str, Any] = {"quantizer_name": f"{module}.{attr}", "enable": enabled}
                if enabled and attrs is not None:
                    entry["cfg"] = copy.deepcopy(attrs)
                entries.append(entry)
    return {"quant_cfg": entries,
            "algorithm": _algorithm(quant_cfgs[n] for n in sorted(set(assignment.values())))}


def _check_formats(manifest: Manifest, needed: Iterable[str],
                   quant_cfgs: Mapping[str, QuantCfg]) -> None:
    missing = sorted(set(needed) - set(quant_cfgs))
    if missing:
        raise UserError(
            f"No ModelOpt config for format(s) {', '.join(missing)} of the {_source(manifest)} "
            f"(configs given for: {', '.join(sorted(quant_cfgs)) or 'none'}). Pass a config for "
            "each format the run searched (quant_cfgs={name: config}), e.g. from "
            "catalogue.build_quant_config."
        )


def make_recipe(manifest: Manifest, groups: list[Group], name: str, kind: str,
            assignment: dict[str, str], quant_cfgs: Mapping[str, QuantCfg],
            **info: Any) -> Recipe:
    _check_formats(manifest, assignment.values(), quant_cfgs)
    q, scheme = manifest.quantization, manifest.scheme
    source = {"scheme": scheme.name, "pair": q.pair, "granularity": q.granularity,
              "method": scheme.method}
    ordered = {g.handle: assignment[g.handle] for g in groups if g.handle in assignment}
    kept = tuple(g.handle for g in groups if g.handle not in assignment)
    return Recipe(name, kind, build_config(groups, ordered, quant_cfgs), ordered, kept,
                  lm_bits(groups, ordered), {**info, "source": source})


def _solver_points(manifest: Manifest) -> list[tuple[float | None, dict[str, str]]]:
    """(target bits, handle -> format label) per frontier target; the main result without one."""
    if manifest.frontier:
        return [(float(p.target_bits), dict(p.recipe)) for p in manifest.frontier]
    sens = manifest.layer_sensitivity
    if any(s.chosen is None for s in sens.values()):
        raise UserError(f"The {_source(manifest)} records no solver choice per group, so it "
                        "has no recipe of its own; use budgets.keep_top(...) recipes instead.")
    target = manifest.scheme.effective_bits_requested
    return [(None if target is None else float(target),
             {h: s.chosen for h, s in sens.items() if s.chosen is not None})]


def from_frontier(manifest: Manifest,
                  quant_cfgs: Mapping[str, QuantCfg] | None = None) -> list[Recipe]:
    """One recipe per frontier target (the solver's per-group choice); mixed when it mixes formats.

    Without a frontier, one recipe for the run's main target. ``quant_cfgs`` maps format names
    (as in the manifest's labels, before ``(effective-bits: ...)``) to ModelOpt configs; None =
    :func:`format_configs`.
    """
    groups = manifest_groups(manifest)
    by_handle = {g.handle: g for g in groups}
    searched = {f for g in groups for f in g.costs if f != NONE}
    kind = MIXED if len(searched) > 1 else FRONTIER
    points = _solver_points(manifest)
    if quant_cfgs is None:
        quant_cfgs = format_configs(manifest)
    out = []
    for target, labels in points:
        assignment = {h: format_name(label) for h, label in labels.items()
                      if h in by_handle and format_name(label) != NONE}
        vision = [h for h in labels if h not in by_handle and format_name(labels[h]) != NONE]
        if vision:
            log.warning("recipe at %s bits leaves the vision groups %s unquantized", target, vision)
        name = f"{kind}_{target:g}bits" if target is not None else kind
        out.append(make_recipe(manifest, groups, name, kind, assignment, quant_cfgs,
                           target_bits=target))
    return out


def single_format(manifest: Manifest, groups: list[Group],
                   quant_cfg: QuantCfg | None, fmt: str | None) -> tuple[str, dict[str, QuantCfg]]:
    searched = sorted({f for g in groups for f in g.costs if f != NONE})
    if fmt is None:
        if len(searched) != 1:
            raise UserError(
                f"The {_source(manifest)} searched several formats ({', '.join(searched)}); name "
                "the one to quantize the non-kept groups with (format_name=...)."
            )
        fmt = searched[0]
    if fmt not in searched:
        raise UserError(f"Format {fmt!r} was not searched in the {_source(manifest)} (it has: "
                        f"{', '.join(searched)}), so its costs are unknown. Use one of those.")
    return fmt, ({fmt: quant_cfg} if quant_cfg is not None else format_configs(manifest))


# --------------------------------------------------------------------------------------------
# Files: ModelOpt PTQ recipe YAML, in ``recipe_files`` (these names delegate there, so callers
# of the former JSON writer and loader get ModelOpt's format).


def write_recipes(recipe_list: Iterable[Recipe], directory: Any,
                  manifest: Manifest | None = None) -> list[Any]:
    """``recipe_files.write_recipes``: ``<directory>/<name>.yaml`` per recipe."""
    from . import recipe_files

    return recipe_files.write_recipes(recipe_list, directory, manifest)


def load_recipe(path: Any) -> QuantCfg:
    """``recipe_files.load_recipe``: the config of a ModelOpt PTQ recipe file, validated."""
    from . import recipe_files

    return recipe_files.load_recipe(path)
