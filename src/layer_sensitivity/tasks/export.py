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

from .. import export, manifest, recipe_files
from ..errors import UserError
from ..phases import Phases
from .lifecycle import Outputs, RunSpec, Task, run_task

if TYPE_CHECKING:
    from ..tracking import Run, Tracker
    from ..tracking.base import RunReader

log = logging.getLogger(__name__)

RECIPES = "recipes/"


def find_recipe(store: RunReader, run_id: str, recipe: str, dst: Path) -> Path:
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


def model_name(doc: manifest.Manifest, recipe: str) -> str:
    """A logged-model name: the run's scheme (it names the model) and the recipe, in characters
    MLflow keeps."""
    scheme = doc.scheme.name or doc.model.name or "run"
    base = f"{scheme}-{recipe}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-")


class ExportTask(Task["export.ExportResult"]):
    """``export``: one recipe of a finished run as a checkpoint, logged as a run nested under the
    analysis run, the checkpoint as a logged model whose source is the analysis run."""

    def __init__(self, store: RunReader, run_id: str, recipe: str, out_dir: Path, tmp: Path, *,
                 force: bool = False, register_as: str | None = None,
                 eval_captions: str | None = None, max_eval_samples: int | None = None,
                 device: str = "auto") -> None:
        self.store, self.run_id, self.recipe, self.out_dir, self.tmp = (store, run_id, recipe,
                                                                         out_dir, tmp)
        self.force, self.register_as, self.device = force, register_as, device
        self.eval_captions, self.max_eval_samples = eval_captions, max_eval_samples
        self.model_id: str | None = None

    def validate(self) -> None:
        """The run, its manifest and recipe, the output directory and the export's own checks."""
        self.record = self.store.get(self.run_id)
        export.check_output(self.out_dir)
        self.doc = manifest.load(self.store.fetch_manifest(self.run_id, self.tmp))
        self.path = find_recipe(self.store, self.run_id, self.recipe, self.tmp / "recipe")
        self.plan = export.plan(self.doc, self.path, self.out_dir, force=self.force,
                                eval_captions_path=self.eval_captions,
                                max_eval_samples=self.max_eval_samples)
        r = self.plan.recipe
        self.pairs = recipe_files.pairs_of(self.doc, sorted(set(r.quantized.values())))
        self.description = recipe_files.description(r, self.doc, self.run_id)

    def spec(self) -> RunSpec:
        return RunSpec(f"export {self.plan.recipe.name}", parent_id=self.run_id,
                       tags={"export.of": self.record.run_name,
                             "export.out": str(self.plan.out_dir)},
                       description=self.description)

    def params(self) -> dict[str, Any]:
        p, r = self.plan, self.plan.recipe
        return {"export.recipe": r.name, "export.pairs": self.pairs,
                "export.formats": ",".join(sorted(set(r.quantized.values()))),
                "export.lm_bits": f"{r.lm_bits:.4f}", "export.kept_groups": len(r.kept),
                "export.quantized_groups": len(r.quantized),
                "export.runtimes": ",".join(p.serving.runtimes) or "none",
                "export.forced": self.force,
                "export.eval_captions": self.eval_captions or (
                    "held-out image-text pairs" if p.images is not None
                    else "held-out bundled captions")}

    def execute(self, run: Run, phases: Phases) -> export.ExportResult:
        p, r = self.plan, self.plan.recipe
        with phases("export"):
            result = export.run(p, self.device)
        with phases("log_model"):
            self.model_id = run.log_model(
                model_name(self.doc, r.name), result.out_dir,
                params={"recipe": r.name, "pairs": self.pairs, "lm_bits": f"{r.lm_bits:.4f}",
                        "quant_algo": result.quant_algo,
                        "runtimes": ",".join(p.serving.runtimes) or "none",
                        "source_run": self.run_id, "export_run": run.run_id,
                        "description": self.description},
                metrics=result.metrics(), register_as=self.register_as,
                source_run_id=self.run_id)
        return result

    def outputs(self, result: export.ExportResult) -> Outputs:
        return Outputs(
            params={"export.quant_algo": result.quant_algo, "export.verified": result.verified},
            metrics=[(k, v, None) for k, v in result.metrics().items()],
            tags={"export.model_id": self.model_id} if self.model_id else {},
            files={f"recipe/{self.path.name}": self.path,
                   f"checkpoint/{export.HF_QUANT_CONFIG}": result.out_dir / export.HF_QUANT_CONFIG})


def export_run(store: RunReader, tracker: Tracker, run_id: str, recipe: str, out_dir: Path, *,
               force: bool = False, register_as: str | None = None,
               eval_captions: str | None = None, max_eval_samples: int | None = None,
               device: str = "auto") -> tuple[export.ExportResult, str | None]:
    """Export a finished run's recipe; returns the result and the logged model's id."""
    with tempfile.TemporaryDirectory() as tmp:
        task = ExportTask(store, run_id, recipe, out_dir, Path(tmp), force=force,
                          register_as=register_as, eval_captions=eval_captions,
                          max_eval_samples=max_eval_samples, device=device)
        result = run_task(task, tracker).result
    log.info("exported recipe %s of run %s to %s", task.plan.recipe.name, run_id, result.out_dir)
    return result, task.model_id
