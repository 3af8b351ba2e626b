"""``export`` over a tracked run: one of its recipes as a servable checkpoint, logged under it.

The work is ``export.py``; this module finds the run's manifest and recipe file, checks every
input before a run is logged or the model loads, then records the export as a run nested under
the analysis run (``export <recipe>``: params, ``export/*`` metrics, the recipe and
``hf_quant_config.json`` as artifacts) and the checkpoint as an MLflow logged model whose source
run is the analysis run (the experiment's Models tab), optionally registered under a name.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import export, manifest, recipe_files
from .errors import UserError

if TYPE_CHECKING:
    from .tracking import Tracker
    from .tracking.runs import RunStore

log = logging.getLogger(__name__)

RECIPES = "recipes/"


def find_recipe(store: RunStore, run_id: str, recipe: str, dst: Path) -> Path:
    """A recipe file: an existing local path, or the name of one of the run's recipe artifacts
    (``keep_top_25pct``, ``keep_top_25pct.yaml`` or ``recipes/keep_top_25pct.yaml``)."""
    local = Path(recipe).expanduser()
    if local.suffix in (".yaml", ".yml") and local.is_file():
        return local
    stem = recipe.removeprefix(RECIPES).removesuffix(recipe_files.SUFFIX)
    files = store.artifact_files(run_id)
    names = sorted(f.removeprefix(RECIPES).removesuffix(recipe_files.SUFFIX) for f in files
                   if f.startswith(RECIPES) and f.endswith(recipe_files.SUFFIX))
    if stem not in names:
        have = ", ".join(names) or "it has none: older versions wrote JSON recipes; rerun it"
        raise UserError(
            f"Recipe '{recipe}' is neither a recipe file nor one of run {run_id}'s recipes "
            f"({have}). Pass one of those names or a path to a ModelOpt PTQ recipe YAML.")
    return store.download(run_id, f"{RECIPES}{stem}{recipe_files.SUFFIX}", dst)


def model_name(doc: dict[str, Any], recipe: str) -> str:
    """A logged-model name: the run's scheme (it names the model) and the recipe, in characters
    MLflow keeps."""
    scheme = (doc.get("scheme") or {}).get("name") or (doc.get("model") or {}).get("name") or "run"
    base = f"{scheme}-{recipe}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-")


def export_run(store: RunStore, tracker: Tracker, run_id: str, recipe: str, out_dir: Path, *,
               force: bool = False, register_as: str | None = None,
               eval_captions: str | None = None, max_eval_samples: int | None = None,
               device: str = "auto") -> tuple[export.ExportResult, str | None]:
    """Export a finished run's recipe; returns the result and the logged model's id."""
    record = store.get(run_id)
    export.check_output(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        doc: dict[str, Any] = manifest.load(store.fetch_manifest(run_id, Path(tmp)))
        path = find_recipe(store, run_id, recipe, Path(tmp) / "recipe")
        p = export.plan(doc, path, out_dir, force=force, eval_captions_path=eval_captions,
                        max_eval_samples=max_eval_samples)
        r = p.recipe
        pairs = recipe_files.pairs_of(doc, sorted(set(r.quantized.values())))
        with tracker.run(f"export {r.name}", parent_id=run_id,
                         tags={"export.of": record.run_name, "export.out": str(p.out_dir)},
                         description=recipe_files.description(r, doc, run_id)) as run:
            params = {"export.recipe": r.name, "export.pairs": pairs,
                      "export.formats": ",".join(sorted(set(r.quantized.values()))),
                      "export.lm_bits": f"{r.lm_bits:.4f}", "export.kept_groups": len(r.kept),
                      "export.quantized_groups": len(r.quantized),
                      "export.runtimes": ",".join(p.serving.runtimes) or "none",
                      "export.forced": force,
                      "export.eval_captions": eval_captions or "held-out bundled captions"}
            run.log_params(params)
            result = export.run(p, device)
            run.log_params({"export.quant_algo": result.quant_algo,
                            "export.verified": result.verified})
            run.log_metrics([(k, v, None) for k, v in result.metrics().items()])
            run.log_files({f"recipe/{path.name}": path,
                           f"checkpoint/{export.HF_QUANT_CONFIG}":
                               result.out_dir / export.HF_QUANT_CONFIG})
            model_id = run.log_model(
                model_name(doc, r.name), result.out_dir,
                params={"recipe": r.name, "pairs": pairs, "lm_bits": f"{r.lm_bits:.4f}",
                        "quant_algo": result.quant_algo,
                        "runtimes": ",".join(p.serving.runtimes) or "none",
                        "source_run": run_id, "export_run": run.run_id,
                        "description": recipe_files.description(r, doc, run_id)},
                metrics=result.metrics(), register_as=register_as, source_run_id=run_id)
            if model_id:
                run.set_tags({"export.model_id": model_id})
    log.info("exported recipe %s of run %s to %s", r.name, run_id, result.out_dir)
    return result, model_id
