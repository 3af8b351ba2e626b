"""Recipe files in ModelOpt's own language: PTQ recipe YAML that ``modelopt.recipe.load_recipe``
validates and ModelOpt's ``hf_ptq.py --recipe <file>`` applies.

A file is exactly ModelOpt's schema (``ModelOptPTQRecipe``)::

    metadata: {recipe_type: ptq, description: "<kind> of run <name> (<id>): <pairs>, LM bits ..."}
    quantize: {algorithm: max, quant_cfg: [{quantizer_name: '*', enable: false}, ...]}

ModelOpt's schema forbids other keys, so what a recipe *is* (kind, formats, LM bits, source run)
lives in the description as text; which layer groups it quantizes, and in which format, is read
back from the ``quant_cfg`` module names against the run's manifest (:func:`read_recipe`), so no
project-specific sidecar is needed. YAML keeps ModelOpt's integer block-size keys (``-1: 128``);
tuples such as ``num_bits: (4, 3)`` are written as lists, which ModelOpt's schema turns back.

    cfg = layer_sensitivity.recipe_files.load_recipe("recipes/keep_top_25pct.yaml")
    model = mtq.quantize(model, cfg, forward_loop)
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from . import recipes
from .errors import UserError
from .manifest_model import Manifest
from .recipes import QUANTIZER_ATTRS, QuantCfg, Recipe

SUFFIX = ".yaml"
RECIPE_TYPE = "ptq"
# The kinds a file name starts with (``keep_top_25pct``, ``recommended_25pct``,
# ``frontier_6bits``, ``mixed_..._6bits``; evaluate's equal-bits baselines).
KINDS = (recipes.KEEP_TOP, "keep_top_rank", "recommended", "reverse", "random", recipes.FRONTIER,
         recipes.MIXED)


# --------------------------------------------------------------------------------------------
# Writing


def _plain(obj: Any) -> Any:
    """Tuples as lists (YAML's safe dumper has no tuple); integer keys kept."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    return obj


def pairs_of(manifest: Manifest | None, formats: Sequence[str]) -> str:
    """The pairs of the formats a recipe uses, as the run named them (``wfp8_afp8``)."""
    by_format: dict[str, str | None] = {}
    if manifest is not None:
        q = manifest.quantization
        by_format = {f.name: f.pair for f in q.formats or []}
        if q.modelopt_format:
            by_format[q.modelopt_format] = q.pair
    names = [str(by_format.get(f) or f) for f in formats]
    return " + ".join(names) or "nothing (every group at 16 bits)"


def description(recipe: Recipe, manifest: Manifest | None = None,
                run_id: str | None = None) -> str:
    """One line: the kind, the source run, the pair(s) and the LM bits; the vision tower."""
    run = (manifest.scheme.name if manifest is not None else None) or (
        recipe.info.get("source") or {}).get("scheme") or "?"
    source = f"run '{run}'" + (f" ({run_id})" if run_id else "")
    formats = sorted(set(recipe.quantized.values()))
    total = len(recipe.kept) + len(recipe.quantized)
    rule = recipe.info.get("rule")
    kept = (f"{len(recipe.quantized)} of {total} LM groups quantized by the solver's choice"
            if recipe.kind in (recipes.FRONTIER, recipes.MIXED) else
            f"{len(recipe.kept)} of {total} LM groups kept at 16 bits"
            + (f" (rule: {rule})" if rule else ""))
    target = recipe.info.get("target_bits")
    bits = f"LM bits {recipe.lm_bits:.4f}" + (f" (target {target:g})" if target is not None else "")
    if recipe.info.get("recommended_as"):  # evaluate's choice per budget, on validation captions
        bits += (f"; recommended: {recipe.info['recommended_as']} (validation KL "
                 f"{recipe.info.get('kl_validation', float('nan')):.4g}, test KL "
                 f"{recipe.info.get('kl_test', float('nan')):.4g})")
    return (f"layer_sensitivity {recipe.name} ({recipe.kind}) of {source}: "
            f"{pairs_of(manifest, formats)} ({', '.join(formats) or 'none'}); {kept}; {bits}; "
            "vision tower unquantized.")


def document(recipe: Recipe, manifest: Manifest | None = None,
             run_id: str | None = None) -> dict[str, Any]:
    """The YAML document: ModelOpt's PTQ recipe schema, nothing else."""
    cfg = recipe.config
    return {"metadata": {"recipe_type": RECIPE_TYPE,
                         "description": description(recipe, manifest, run_id)},
            "quantize": {"algorithm": _plain(cfg.get("algorithm", "max")),
                         "quant_cfg": _plain(cfg["quant_cfg"])}}


def dumps(recipe: Recipe, manifest: Manifest | None = None,
          run_id: str | None = None) -> str:
    header = ("# A ModelOpt PTQ recipe written by layer_sensitivity: "
              "modelopt.recipe.load_recipe(<this file>),\n"
              "# or ModelOpt's examples/llm_ptq/hf_ptq.py --recipe <this file>.\n")
    return header + yaml.safe_dump(document(recipe, manifest, run_id), sort_keys=False,
                                   width=100)


def write_recipe(recipe: Recipe, path: str | Path, manifest: Manifest | None = None,
                 run_id: str | None = None) -> Path:
    """Write atomically (a reader never sees half a recipe)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dumps(recipe, manifest, run_id))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_recipes(recipe_list: Iterable[Recipe], directory: str | Path,
                  manifest: Manifest | None = None,
                  run_id: str | None = None) -> list[Path]:
    """``<directory>/<recipe.name>.yaml`` for each recipe."""
    return [write_recipe(r, Path(directory) / f"{r.name}{SUFFIX}", manifest, run_id)
            for r in recipe_list]


# --------------------------------------------------------------------------------------------
# Reading


def validate(path: str | Path) -> Any:
    """ModelOpt's own validation (``modelopt.recipe.load_recipe``); a UserError when it fails.

    Returns the ``ModelOptPTQRecipe``. Paths are files: ModelOpt would also resolve a bare name
    against its built-in library, which a run's recipe never is.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Recipe '{path}' does not exist. Check the path, or list the run's "
                        "recipes/ artifacts (mlflow artifacts list --run-id <run>).")
    from modelopt.recipe import ModelOptPTQRecipe
    from modelopt.recipe import load_recipe as modelopt_load

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "[load_recipe] loading: ..."
            loaded = modelopt_load(path.resolve())
    except Exception as e:  # noqa: BLE001 - pydantic, YAML and ModelOpt's own ValueErrors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"Recipe '{path}' is not a valid ModelOpt PTQ recipe ({first}). "
                        "Re-export it, or check it against ModelOpt's recipe schema "
                        "(modelopt_recipes/general/ptq/ has examples).") from None
    if not isinstance(loaded, ModelOptPTQRecipe):
        raise UserError(f"Recipe '{path}' is a ModelOpt '{loaded.recipe_type.value}' recipe, "
                        "not a PTQ recipe (metadata.recipe_type: ptq); export needs a PTQ recipe.")
    return loaded


def load_recipe(path: str | Path) -> QuantCfg:
    """The ModelOpt config of a recipe file, validated by ModelOpt, ready for
    ``mtq.quantize(model, cfg, forward_loop)``."""
    loaded = validate(path)
    return dict(loaded.quantize.model_dump(exclude_unset=True))


def raw(path: str | Path) -> dict[str, Any]:
    """The YAML as written (after :func:`validate`): what the project reads its metadata from."""
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return doc if isinstance(doc, dict) else {}


def module_settings(cfg: Mapping[str, Any]) -> dict[str, dict[str, tuple[bool, Any]]]:
    """module -> quantizer attr -> (enabled, attributes) for every module the config names.

    Only entries naming one module's quantizer (``<module>.weight_quantizer``) are read; the
    leading ``'*': disabled`` entry is what every unnamed quantizer gets.
    """
    out: dict[str, dict[str, tuple[bool, Any]]] = {}
    for e in cfg.get("quant_cfg") or []:
        name = str(e.get("quantizer_name", ""))
        module, _, attr = name.rpartition(".")
        if attr not in QUANTIZER_ATTRS or not module or any(c in module for c in "*?["):
            continue
        out.setdefault(module, {})[attr] = (bool(e.get("enable", True)), e.get("cfg"))
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal settings, whatever the container types (YAML lists, JSON's string keys)."""
    return json.dumps(recipes.jsonable(a), sort_keys=True) == \
        json.dumps(recipes.jsonable(b), sort_keys=True)


def _kind(name: str) -> str:
    return next((k for k in sorted(KINDS, key=len, reverse=True) if name.startswith(k)),
                "external")


def read_recipe(path: str | Path, manifest: Manifest,
                quant_cfgs: Mapping[str, QuantCfg] | None = None) -> Recipe:
    """A recipe file back as a :class:`Recipe`, its groups and formats read against the run's
    manifest: a group is quantized in format F when every module of it carries F's weight and
    input settings, kept when none is quantized. A group half quantized (q without k), or in a
    format the run did not search, is a UserError: that file is not one of the run's recipes."""
    loaded = validate(path)
    cfg = dict(loaded.quantize.model_dump(exclude_unset=True))
    settings = module_settings(raw(path).get("quantize") or {})
    groups = recipes.manifest_groups(manifest)
    cfgs = dict(quant_cfgs) if quant_cfgs is not None else recipes.format_configs(manifest)
    expected = {name: recipes.linear_quantizers(c) for name, c in cfgs.items()}
    path = Path(path)
    quantized: dict[str, str] = {}
    named = set(settings)
    for g in groups:
        named -= set(g.modules)
        per_module = [settings.get(m, {}) for m in g.modules]
        on = [bool(s.get(recipes.WEIGHT, (False, None))[0]) for s in per_module]
        if not any(on):
            continue
        if not all(on):
            raise UserError(f"Recipe '{path}' quantizes only part of layer group '{g.handle}' "
                            f"({', '.join(m for m, o in zip(g.modules, on, strict=True) if o)}); "
                            "its modules share one format (q/k/v, gate/up). Fix the recipe.")
        fmt = next((name for name, exp in expected.items()
                    if all(_matches(s, exp) for s in per_module)), None)
        if fmt is None:
            raise UserError(f"Recipe '{path}' quantizes group '{g.handle}' in a format the run "
                            f"did not search (it searched {', '.join(sorted(cfgs))}). Export "
                            "recipes of this run, or run the analysis with that format.")
        quantized[g.handle] = fmt
    vision = sorted(m for m in named if recipes._is_vision(m)
                    and settings[m].get(recipes.WEIGHT, (False, None))[0])
    if vision:
        raise UserError(f"Recipe '{path}' quantizes vision-tower modules ({', '.join(vision[:3])}"
                        "...); the vision tower stays unquantized. Use a recipe of this project.")
    kept = tuple(g.handle for g in groups if g.handle not in quantized)
    info: dict[str, Any] = {"description": loaded.description}
    return Recipe(name=path.stem.removesuffix(SUFFIX), kind=_kind(path.stem), config=cfg,
                  quantized=quantized, kept=kept,
                  lm_bits=recipes.lm_bits(groups, quantized) if groups else math.nan, info=info)


def _matches(module: Mapping[str, tuple[bool, Any]],
             expected: Mapping[str, tuple[bool, Any]]) -> bool:
    for attr, (enabled, attrs) in expected.items():
        if attr == recipes.OUTPUT and not enabled:
            continue
        got = module.get(attr, (False, None))
        if got[0] != enabled or (enabled and attrs is not None and not _same(got[1], attrs)):
            return False
    return True
