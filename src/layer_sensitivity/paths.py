"""Where the project's files live, independent of the working directory."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"


def project_root() -> Path:
    """The directory holding MLproject (the repo), or the working directory when installed."""
    for parent in PACKAGE_DIR.parents:
        if (parent / "MLproject").is_file():
            return parent
    return Path.cwd()


def asset(relative: str) -> str:
    return str(ASSETS_DIR / relative)
