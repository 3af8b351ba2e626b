"""Where the project's files live, independent of the working directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
# The Hydra config tree. It lives at the repository top (conf/); src/layer_sensitivity/conf is a
# link to it, so a checkout (PYTHONPATH=src), an editable install and a wheel (where setuptools
# copies it as package data) all find it here.
CONF_DIR = (PACKAGE_DIR / "conf").resolve()
# Overrides where stored scores go (see default_score_cache_dir).
CACHE_DIR_ENV = "LAYER_SENSITIVITY_CACHE_DIR"


def project_root() -> Path:
    """The directory holding MLproject (the repo), or the working directory when installed."""
    for parent in PACKAGE_DIR.parents:
        if (parent / "MLproject").is_file():
            return parent
    return Path.cwd()


def asset(relative: str) -> str:
    return str(ASSETS_DIR / relative)


def default_score_cache_dir() -> str:
    """``$LAYER_SENSITIVITY_CACHE_DIR/autoquant-scores``, else ``<project root>/.cache/autoquant-scores``
    (what conf/autoquant/default.yaml interpolates)."""
    base = os.environ.get(CACHE_DIR_ENV) or str(project_root() / ".cache")
    return str(Path(base) / "autoquant-scores")


def default_output_dir() -> str:
    """Where a job writes when nothing says otherwise (Hydra jobs use their run directory)."""
    return str(project_root() / "outputs")


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (what creating ``path`` writes into)."""
    path = Path(path).absolute()
    return next(p for p in [path, *path.parents] if p.exists())


def write_failure(directory: Path) -> str | None:
    """Why a file cannot be created in ``directory`` (None when it can). Creates and removes a
    probe file: ``os.access`` answers from permission bits only and says yes to root on a
    read-only mount or an immutable directory."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
    except OSError as e:
        return e.strerror or type(e).__name__
    os.close(fd)
    os.unlink(probe)
    return None
