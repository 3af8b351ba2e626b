"""``report``: regenerate the reports of a finished run (or of an output directory) from its manifest.

    python -m layer_sensitivity.cli.report --run-id <run id>      # MLflow: the run's artifacts
    python -m layer_sensitivity runner.report_only=true runner.output_dir=<dir>   # no MLflow

Either way the manifest (current or legacy shape) is read and checked first and every report is
rendered before anything is replaced, so a missing, invalid or unknown manifest changes nothing;
the manifest itself is never rewritten. The same manifest gives byte-identical reports.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from .. import manifest, paths, report
from ..errors import UserError
from .common import user_errors


def render(doc: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Everything derived from a manifest, written into ``out_dir``: relative path -> file."""
    files = report.write_reports(doc, out_dir)
    return {f.relative_to(out_dir).as_posix(): f for f in files}


def regenerate_dir(directory: Path) -> list[Path]:
    """Rewrite the reports next to the one ``*_quant_manifest.json`` in ``directory``."""
    directory = Path(directory)
    source = manifest.find(directory)
    doc = manifest.load(source)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".report-") as tmp:
        rendered = render(doc, Path(tmp))
        targets = []
        for rel, f in rendered.items():
            target = directory / rel
            if target == source:
                continue  # never overwrite the manifest
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, target)
            targets.append(target)
    return targets


def report_only(output_dir: str | None) -> list[Path]:
    """The runner's ``report_only`` mode."""
    if not output_dir:
        raise UserError(
            "runner.report_only=true needs runner.output_dir=<directory holding one "
            f"*{manifest.MANIFEST_SUFFIX}>, e.g. a job's output directory or a published "
            "layer-analysis directory."
        )
    files = regenerate_dir(Path(output_dir))
    for f in files:
        print(f"regenerated {f}")
    return files


def regenerate_run(uri: str, run_id: str) -> list[str]:
    """Download a run's manifest, regenerate its reports and log them back to the same run,
    replacing the old report artifacts; returns their artifact paths."""
    from .. import tracking

    tracking.get_run(uri, run_id)
    names = [p for p in tracking.artifact_files(uri, run_id)
             if "/" not in p and p.endswith(manifest.MANIFEST_SUFFIX)]
    if len(names) != 1:
        raise UserError(
            f"Run {run_id} has {len(names) or 'no'} *{manifest.MANIFEST_SUFFIX} artifact"
            f"{'s' if len(names) > 1 else ''} at its top level; only a finished sensitivity job "
            "(e.g. a sweep's child run, not the sweep's parent) can be re-reported."
        )
    with tempfile.TemporaryDirectory() as tmp:
        local = tracking.download_artifact(uri, run_id, names[0], Path(tmp) / "in")
        doc = manifest.load(local)
        out = Path(tmp) / "out"
        out.mkdir()
        rendered = render(doc, out)
        rendered.pop(names[0], None)  # never replace the manifest
        tracking.upload_artifacts(uri, run_id, rendered)
    return sorted(rendered)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m layer_sensitivity.cli.report",
        description="Regenerate a run's layer-sensitivity reports from its manifest artifact and "
                    "log them back to the run (the manifest is never replaced).")
    parser.add_argument("--run-id", required=True, help="the sensitivity job's MLflow run id")
    parser.add_argument("--tracking-uri", default=None,
                        help="default: MLFLOW_TRACKING_URI, else <project>/mlflow.db")
    args = parser.parse_args(argv)
    with user_errors():
        from .. import tracking

        uri = tracking.resolve_uri(args.tracking_uri, paths.project_root())
        names = regenerate_run(uri, args.run_id)
    print(f"regenerated {', '.join(names)} of run {args.run_id} in {uri}")


if __name__ == "__main__":
    main()
