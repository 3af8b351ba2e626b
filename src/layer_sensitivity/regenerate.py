"""Regenerate a job's reports and figures from its manifest: in a directory, or in a run.

The manifest (current or legacy shape) is read and checked first and every file is rendered
before anything is replaced, so a missing, invalid or unknown manifest changes nothing; the
manifest itself is never rewritten. The same manifest gives byte-identical files. No torch.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from . import manifest, report
from .errors import UserError

if TYPE_CHECKING:
    from .tracking.base import RunReader

log = logging.getLogger(__name__)


def render(doc: manifest.Manifest, out_dir: Path) -> dict[str, Path]:
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
        log.info("regenerated %s", f)
    return files


def check_run(store: RunReader, run_id: str) -> None:
    """A FINISHED run with a readable manifest of at least one group (before anything is logged)."""
    store.finished(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        manifest.load(store.fetch_manifest(run_id, Path(tmp)))


def regenerate_run(store: RunReader, run_id: str) -> list[str]:
    """Download a run's manifest, regenerate its reports and log them back to the same run,
    replacing the old report artifacts; returns their artifact paths."""
    store.get(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        local = store.fetch_manifest(run_id, Path(tmp) / "in")
        doc = manifest.load(local)
        out = Path(tmp) / "out"
        out.mkdir()
        rendered = render(doc, out)
        rendered.pop(local.name, None)  # never replace the manifest
        store.upload(run_id, rendered)
    return sorted(rendered)
