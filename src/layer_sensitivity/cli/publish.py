"""``publish``: copy a finished run's manifest, reports, config and plots into the analysis tree.

    python -m layer_sensitivity.cli.publish --run-id <run id> [--root models] [--force false]

Destination: ``<root>/<model>/layer-analysis/weight-<w>-act-<a>/<granularity>/<scheme>/`` with a
``provenance.json`` (run, experiment, tracking URI, params, git commit, time, sha256 of every
file). Staged and renamed into place; the same run again is a no-op; another run onto an
existing directory needs ``--force true``. The run is tagged ``published.path``.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .. import manifest, paths, publish, tracking
from ..errors import UserError
from .common import user_errors

PUBLISHED_TAG = "published.path"
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def parse_bool(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise UserError(f"{name}={text!r} is not a boolean; use true or false.")


def redact(uri: str) -> str:
    """A tracking URI without any user:password part."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


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


def provenance(record: tracking.RunRecord, uri: str, manifest_name: str) -> dict[str, object]:
    commit = record.tags.get("mlflow.source.git.commit")
    return {
        "run_id": record.run_id,
        "run_name": record.run_name,
        "experiment_id": record.experiment_id,
        "experiment_name": record.experiment_name,
        "tracking_uri": redact(uri),
        "params": dict(sorted(record.params.items())),
        "parent_run_id": record.tags.get(tracking.PARENT_TAG),
        "git_commit": commit or _git_head(),
        # "run": the commit MLflow recorded for the run; "publisher": this checkout's HEAD
        "git_commit_source": "run" if commit else "publisher",
        "manifest": manifest_name,
        "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "layer_sensitivity_version": _version(),
    }


def publish_run(uri: str, run_id: str, root: Path, force: bool) -> publish.Published:
    record = tracking.get_run(uri, run_id)
    if record.status != "FINISHED":
        raise UserError(
            f"Run {run_id} is {record.status}; only FINISHED runs can be published. Re-run the "
            "job, or publish one of its finished siblings."
        )
    chosen, skipped = publish.select(tracking.artifact_files(uri, run_id))
    manifests = [p for p in chosen if "/" not in p and p.endswith(manifest.MANIFEST_SUFFIX)]
    if len(manifests) != 1:
        raise UserError(
            f"Run {run_id} has {len(manifests) or 'no'} *{manifest.MANIFEST_SUFFIX} artifacts at "
            "its top level; only a sensitivity job's run (e.g. a sweep's child run, not the "
            "sweep's parent) can be published."
        )
    with tempfile.TemporaryDirectory() as tmp:
        local = {manifests[0]: tracking.download_artifact(uri, run_id, manifests[0], Path(tmp))}
        dest = publish.destination(root, manifest.load(local[manifests[0]]))
        done = publish.check_existing(dest, run_id, force)
        if done:
            if record.tags.get(PUBLISHED_TAG) != str(done.path):
                tracking.set_run_tags(uri, run_id, {PUBLISHED_TAG: str(done.path)})
            return done
        for p in chosen:
            local.setdefault(p, tracking.download_artifact(uri, run_id, p, Path(tmp)))
        result = publish.publish_files(local, dest, provenance(record, uri, manifests[0]),
                                       force=force)
    for p in skipped:
        print(f"not published: {p}")
    tracking.set_run_tags(uri, run_id, {PUBLISHED_TAG: str(result.path)})
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m layer_sensitivity.cli.publish",
        description="Publish a finished sensitivity run into "
                    "<root>/<model>/layer-analysis/weight-<w>-act-<a>/<granularity>/<scheme>/.")
    parser.add_argument("--run-id", required=True, help="the sensitivity job's MLflow run id")
    parser.add_argument("--root", default="models", help="publish root (default: models)")
    parser.add_argument("--force", default="false",
                        help="true: replace a directory that holds another run (default: false)")
    parser.add_argument("--tracking-uri", default=None,
                        help="default: MLFLOW_TRACKING_URI, else <project>/mlflow.db")
    args = parser.parse_args(argv)
    with user_errors():
        force = parse_bool(args.force, "force")
        uri = tracking.resolve_uri(args.tracking_uri, paths.project_root())
        result = publish_run(uri, args.run_id, Path(args.root), force)
    if result.status == "unchanged":
        print(f"run {args.run_id} is already published at {result.path}; nothing to do")
    else:
        print(f"{result.status} run {args.run_id} at {result.path} "
              f"({len(result.files)} files + {publish.PROVENANCE})")


if __name__ == "__main__":
    main()
