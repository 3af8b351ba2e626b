"""Where the project's files live, whatever the working directory; writability probed by creating a
file (not os.access)."""

from __future__ import annotations

from pathlib import Path

import pytest

from layer_sensitivity import paths


def test_project_root_is_the_folder_holding_mlproject(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # not read from the working directory in a checkout
    root = paths.project_root()
    assert (root / "MLproject").is_file() and paths.PACKAGE_DIR.is_relative_to(root)
    assert paths.default_output_dir() == str(root / "outputs")


def test_assets_and_config_are_found_beside_the_package() -> None:
    assert Path(paths.asset("captions/captions.txt")).is_file()
    assert (Path(paths.asset("tiny-qwen3-vl")) / "config.json").is_file()
    assert (paths.CONF_DIR / "sensitivity.yaml").is_file()


def test_score_cache_dir_follows_the_environment_else_the_project(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setenv(paths.CACHE_DIR_ENV, str(tmp_path))
    assert paths.default_score_cache_dir() == str(tmp_path / "autoquant-scores")
    monkeypatch.delenv(paths.CACHE_DIR_ENV)
    assert paths.default_score_cache_dir() == str(paths.project_root() / ".cache" / "autoquant-scores")


def test_write_failure_creates_a_file_instead_of_trusting_permission_bits(tmp_path: Path) -> None:
    assert paths.write_failure(tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # the probe is removed
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert paths.write_failure(a_file) is not None  # creating under it fails, whoever we are
    assert paths.write_failure(tmp_path / "absent") is not None
    assert paths.nearest_existing(tmp_path / "new" / "deeper") == tmp_path
    assert paths.nearest_existing(a_file) == a_file
