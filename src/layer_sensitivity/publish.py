"""The committed analysis tree: models/<model>/layer-analysis/weight-<w>-act-<a>/<granularity>/<scheme>/.

Layout, path safety, and an atomic copy of a run's files with their provenance (no MLflow here:
the caller passes the files and the provenance as plain data)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from . import manifest, paths
from .errors import UserError, out_of_space
from .manifest import MANIFEST_SUFFIX, Manifest
from .redact import redact_text
from .schema import SensitivityConfig
from .staging import clean_leftovers, fsync, staged

if TYPE_CHECKING:
    from .tracking.base import RunReader, RunRecord

log = logging.getLogger(__name__)
PUBLISHED_TAG = "published.path"
PARENT_TAG = "mlflow.parentRunId"


def safe_join(root: Path, *parts: str) -> Path:
    """``root/part/...``, refusing any part that could leave ``root``."""
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part or "\x00" in part:
            raise UserError(
                f"'{part}' cannot be used as a directory name under the publish root '{root}' "
                "(empty, '.', '..' or containing a path separator). Rename the model, pair or "
                "granularity to a plain name."
            )
    root = root.resolve()
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root):
        raise UserError(f"'{path}' is outside the publish root '{root}'; refusing to write there.")
    return path


# Room the last directory name needs beyond itself: ".<scheme>.staging-<pid>-<8 chars>" while
# publishing, "<scheme>_quant_manifest.json" inside it.
_NAME_ROOM = 32


def layout_dir(root: Path, model_name: str, weight: str, activation: str, granularity: str,
               scheme_name: str) -> Path:
    parts = {"model.name": model_name, "layer-analysis": "layer-analysis",
             "the precision pair": f"weight-{weight}-act-{activation}",
             "quant_granularity": granularity, "the scheme name": scheme_name}
    _check_name_lengths(root, parts)
    path = safe_join(root, *parts.values())
    _check_directories(root.resolve(), path)
    return path


def _name_max(root: Path) -> int:
    """The longest file name the file system under ``root`` takes (255 bytes almost everywhere)."""
    existing = next((p for p in [root, *root.parents] if p.is_dir()), None)
    try:
        return os.pathconf(existing or ".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # not POSIX, or the file system does not say
        return 255


def _check_name_lengths(root: Path, parts: dict[str, str]) -> None:
    """A name too long for the file system fails with ENAMETOOLONG mid-write: refuse it first."""
    name_max = _name_max(root)
    last = list(parts)[-1]
    for source, part in parts.items():
        limit = name_max - (_NAME_ROOM if source == last else 0)
        size = len(os.fsencode(part))
        if size > limit:
            shown = part if len(part) <= 60 else f"{part[:40]}..."
            raise UserError(
                f"'{shown}' ({size} bytes, from {source}) is too long for a directory name under "
                f"the publish root '{root}': at most {limit} bytes fit there. Shorten "
                f"{'model.name, which starts it' if source == last else source} (e.g. "
                "model.name=Qwen3-VL-4B-Instruct) and run the job again."
            )


def _check_directories(root: Path, path: Path) -> None:
    """Every existing step from the root to ``path`` must be a directory."""
    for step in [*reversed(path.parents), path]:
        if step.exists() and not step.is_dir():
            raise UserError(
                f"'{step}' is a file, so the publish root '{root}' cannot hold the analysis tree "
                f"there. Set output_layout.root (or publish --root) to a directory, or move "
                f"'{step}' away."
            )


def analysis_dir(root: Path, job: SensitivityConfig, scheme_name: str) -> Path:
    q = job.quant_pair
    return layout_dir(root, job.model.name, q.weight.value, q.activation.value,
                      job.quant_granularity.name, scheme_name)


# --- Publishing a finished run's files ------------------------------------------------------

PROVENANCE = "provenance.json"
CONFIG_FILE = "composed_config.yaml"
REPORT_PREFIX = "layer-sensitivity-report."
PLOT_SUFFIXES = (".png", ".svg", ".pdf")
RECIPES_PREFIX = "recipes/"  # ModelOpt-loadable recipes: what a deployment takes from a run
# Serialized state (ModelOpt search state, checkpoints, pickles) is never published, whatever
# the selection below says.
BINARY_STATE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".safetensors",
                         ".npy", ".npz", ".joblib")


CHECKPOINTS_PREFIX = "checkpoints/"  # exported quantized checkpoints (the run's logged models)


def is_binary_state(path: str) -> bool:
    name = PurePosixPath(path).name.lower()
    if path.startswith(CHECKPOINTS_PREFIX) and name.endswith(".safetensors"):
        return False  # an exported checkpoint's weights: safetensors hold data, never code
    return name.endswith(BINARY_STATE_SUFFIXES) or name.startswith("modelopt_state")


def select(paths: list[str]) -> tuple[list[str], list[str]]:
    """Split a run's artifact files into (published, skipped).

    Published: the manifest, the reports and the composed config (top level), plots
    (anywhere) and the recipes (``recipes/*.yaml``, ModelOpt PTQ recipes; ``*.json`` of older
    runs). Everything else, binary ModelOpt state above all, stays in the tracking store.
    """
    chosen: list[str] = []
    skipped: list[str] = []
    for path in sorted(paths):
        top = "/" not in path
        name = PurePosixPath(path).name
        wanted = (
            (top and (name.endswith(MANIFEST_SUFFIX) or name.startswith(REPORT_PREFIX)
                      or name == CONFIG_FILE))
            or name.lower().endswith(PLOT_SUFFIXES)
            or (path.startswith(RECIPES_PREFIX) and name.endswith((".yaml", ".json")))
        )
        (chosen if wanted and not is_binary_state(path) and name != PROVENANCE
         else skipped).append(path)
    return chosen, skipped


def destination(root: Path, manifest: Manifest) -> Path:
    """``<root>/<model>/layer-analysis/weight-<w>-act-<a>/<granularity>/<scheme>/`` of a manifest."""
    q = manifest.quantization
    parts = {
        "model.name": manifest.model.name,
        "quantization.weight_dtype": q.weight_dtype,
        "quantization.activation_dtype": q.activation_dtype,
        "quantization.granularity": q.granularity,
        "scheme.name": manifest.scheme.name,
    }
    missing = [k for k, v in parts.items() if not isinstance(v, str) or not v]
    if missing:
        raise UserError(
            f"The manifest lacks {', '.join(missing)}, which name the publish directory. Publish "
            "runs written by this version of the sensitivity job (legacy manifests can be "
            "re-reported but not published)."
        )
    return layout_dir(root, *(str(v) for v in parts.values()))


@dataclass(frozen=True)
class Published:
    path: Path
    status: str  # "published" | "replaced" | "unchanged"
    files: dict[str, str]  # relative path -> sha256


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_provenance(directory: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((directory / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _changed(directory: Path, files: dict[str, str]) -> list[str]:
    """Files of a provenance record that are missing or differ on disk."""
    bad = []
    for rel, digest in files.items():
        try:
            path = safe_join(directory, *rel.split("/"))
        except UserError:
            bad.append(rel)
            continue
        if not path.is_file() or sha256_file(path) != digest:
            bad.append(rel)
    return bad


def check_existing(dest: Path, run_id: str, force: bool) -> Published | None:
    """None: go ahead (nothing there, or ``force``). ``unchanged``: this run is already there,
    intact. Anything else there is refused with a UserError naming the way out."""
    if not dest.exists() or (dest.is_dir() and not any(dest.iterdir())):
        return None
    if not dest.is_dir():
        raise UserError(f"'{dest}' exists and is not a directory; remove it and publish again.")
    prov = read_provenance(dest)
    files = prov.get("files") if prov else None
    if prov and prov.get("run_id") == run_id and isinstance(files, dict):
        changed = _changed(dest, files)
        if not changed:
            return None if force else Published(dest, "unchanged", dict(files))
        if not force:
            raise UserError(
                f"'{dest}' was published from run {run_id} but {', '.join(changed)} changed "
                "since. Nothing was changed; publish again with force=true to restore the run's "
                "files."
            )
    if force:
        return None
    if prov is None:
        raise UserError(
            f"'{dest}' already exists and was not published from a run (it has no {PROVENANCE}; "
            "e.g. a job with output_layout=publish wrote there). Nothing was changed; publish "
            "with force=true to replace it."
        )
    raise UserError(
        f"'{dest}' already holds run {prov.get('run_id')} (published {prov.get('published_at')})"
        f"; refusing to replace it with run {run_id}. Nothing was changed; publish with "
        "force=true to replace it."
    )


def publish_files(files: dict[str, Path], dest: Path, provenance: dict[str, Any], *,
                  force: bool = False) -> Published:
    """Copy ``files`` (relative path -> local file) to ``dest`` with a ``provenance.json``.

    Atomic: everything is written into a hidden staging directory next to ``dest`` and renamed
    into place, so an interrupted publish leaves no half-written directory. ``provenance`` is
    plain data (run id, params, ...); the sha256 of every published file is added to it.
    """
    run_id = str(provenance["run_id"])
    existing = check_existing(dest, run_id, force)
    if existing:
        return existing
    replaced = dest.exists()
    digests = {}
    try:
        with staged(dest) as stage:
            for rel, src in sorted(files.items()):
                if rel == PROVENANCE or is_binary_state(rel):
                    raise UserError(f"'{rel}' cannot be published (reserved name or binary state).")
                target = safe_join(stage, *rel.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)
                fsync(target)
                digests[rel] = sha256_file(target)
            (stage / PROVENANCE).write_text(
                json.dumps({**provenance, "files": digests}, indent=2, sort_keys=True) + "\n")
            fsync(stage / PROVENANCE)
    except OSError as e:
        clean = out_of_space(e, f"'{dest}'")
        if clean is not None:
            raise clean from None
        raise
    return Published(dest, "replaced" if replaced else "published", digests)


# --- Publishing a run from a tracking store ------------------------------------------------


def _git_head() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.project_root(),
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version() -> str | None:
    try:
        return metadata.version("layer-sensitivity")
    except metadata.PackageNotFoundError:
        return None


def provenance(record: RunRecord, where: str, manifest_name: str) -> dict[str, object]:
    """Where the published files came from; ``where`` is the store with credentials redacted."""
    commit = record.tags.get("mlflow.source.git.commit")
    return {
        "run_id": record.run_id,
        "run_name": record.run_name,
        "experiment_id": record.experiment_id,
        "experiment_name": record.experiment_name,
        "tracking_uri": redact_text(where),
        "params": {k: redact_text(v) for k, v in sorted(record.params.items())},
        "parent_run_id": record.tags.get(PARENT_TAG),
        "git_commit": commit or _git_head(),
        # "run": the commit MLflow recorded for the run; "publisher": this checkout's HEAD
        "git_commit_source": "run" if commit else "publisher",
        "manifest": manifest_name,
        "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "layer_sensitivity_version": _version(),
    }


def publish_run(store: RunReader, run_id: str, root: Path, force: bool,
                models: bool = False) -> Published:
    """Copy a FINISHED run's manifest, reports, config and figures under ``root``; with
    ``models``, also the checkpoints exported from it (its READY logged models) under
    ``checkpoints/<model name>/``."""
    record = store.get(run_id)
    if record.status != "FINISHED":
        raise UserError(
            f"Run {run_id} is {record.status}; only FINISHED runs can be published. Re-run the "
            "job, or publish one of its finished siblings."
        )
    chosen, skipped = select(store.artifact_files(run_id))
    name = store.manifest_name(run_id, chosen)
    with tempfile.TemporaryDirectory() as tmp:
        local = {name: store.download(run_id, name, Path(tmp))}
        dest = destination(root, manifest.load(local[name]))
        clean_leftovers(dest.parent)
        done = check_existing(dest, run_id, force)
        if done:
            if record.tags.get(PUBLISHED_TAG) != str(done.path):
                store.set_tags(run_id, {PUBLISHED_TAG: str(done.path)})
            return done
        for p in chosen:
            local.setdefault(p, store.download(run_id, p, Path(tmp)))
        if models:
            local |= _model_files(store, run_id, Path(tmp) / "models")
        result = publish_files(local, dest, provenance(record, store.where, name), force=force)
    for p in skipped:
        log.info("not published: %s", p)
    store.set_tags(run_id, {PUBLISHED_TAG: str(result.path)})
    return result


def _model_files(store: RunReader, run_id: str, tmp: Path) -> dict[str, Path]:
    """``checkpoints/<name>/<file>`` -> local copy, for each READY logged model of the run."""
    out: dict[str, Path] = {}
    seen: set[str] = set()
    for m in store.logged_models(run_id):  # newest first: one checkpoint per name
        if m["status"] != "READY" or m["name"] in seen:
            continue
        seen.add(m["name"])
        local = store.download_model(m["model_id"], tmp / m["model_id"])
        for f in sorted(local.rglob("*")):
            if f.is_file():
                out[f"{CHECKPOINTS_PREFIX}{m['name']}/{f.relative_to(local).as_posix()}"] = f
    if not out:
        log.info("run %s has no exported checkpoint (logged model) to publish", run_id)
    return out
