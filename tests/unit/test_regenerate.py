"""Regenerating reports and figures from a manifest in a directory (``report_only``), no MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layer_sensitivity import figures, manifest, regenerate, report
from layer_sensitivity.errors import UserError
from tests.helpers.manifests import legacy_doc, new_schema_equivalent, write_legacy

REPORTS = [report.MARKDOWN_NAME, report.JSON_NAME, report.HTML_NAME]


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


def _expected_files(directory: Path) -> list[str]:
    """The reports and the figures the directory's manifest calls for (relative paths)."""
    doc = manifest.load(manifest.find(directory))
    return sorted([*REPORTS, *(f"{figures.FIGURES_DIR}/{n}" for n in figures.figure_names(doc))])


def test_report_only_regenerates_a_legacy_manifest(tmp_path: Path) -> None:
    out = tmp_path / "published"
    source = write_legacy(out)
    original = source.read_bytes()
    written = regenerate.report_only(str(out))
    assert sorted(p.relative_to(out).as_posix() for p in written) == _expected_files(out)
    assert any(p.suffix == ".png" for p in written)  # figures too, not only the reports
    first = _contents(out)
    assert source.read_bytes() == original  # the manifest is never rewritten
    md, js = out / report.MARKDOWN_NAME, out / report.JSON_NAME
    layers = [r["Group"] for r in json.loads(js.read_text())["layers"]]
    assert layers == report.layer_rows(new_schema_equivalent())["Group"].tolist()
    assert "visual" not in md.read_text()
    # only the manifest, the reports and the figures: no staging directory left behind
    assert sorted(first) == sorted([source.name, *_expected_files(out)])
    assert sorted(p.name for p in out.iterdir()) == sorted([source.name, *REPORTS,
                                                            figures.FIGURES_DIR])
    # a second regeneration is byte-identical, figures included
    regenerate.report_only(str(out))
    assert _contents(out) == first


def test_legacy_reports_are_byte_identical_when_regenerated(tmp_path: Path) -> None:
    write_legacy(tmp_path)
    regenerate.regenerate_dir(tmp_path)
    first = _contents(tmp_path)
    write_legacy(tmp_path)  # the same manifest written again
    regenerate.regenerate_dir(tmp_path)
    assert _contents(tmp_path) == first
    assert "Qwen3-VL-4B-Instruct" in (tmp_path / report.MARKDOWN_NAME).read_text()


def test_stale_reports_and_figures_are_replaced(tmp_path: Path) -> None:
    write_legacy(tmp_path)
    regenerate.regenerate_dir(tmp_path)
    fresh = _contents(tmp_path)
    for rel in _expected_files(tmp_path):
        (tmp_path / rel).write_text("stale\n")
    regenerate.regenerate_dir(tmp_path)
    assert _contents(tmp_path) == fresh


@pytest.mark.parametrize("content,needle", [
    (None, "Expected one *_quant_manifest.json"),
    ("{not json", "not valid JSON"),
    ('{"schema_version": 7, "scheme": {"name": "x"}}', "unknown schema_version 7"),
    (json.dumps({**legacy_doc(), "layer_sensitivity": {"a.quant_recipe": {"formats": ["x"]}}}),
     "scores must be a list"),
])
def test_report_only_bad_manifests_change_nothing(tmp_path: Path, content: str | None,
                                                  needle: str) -> None:
    (tmp_path / report.MARKDOWN_NAME).write_text("old report\n")
    if content is not None:
        (tmp_path / "x_quant_manifest.json").write_text(content)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(UserError) as e:
        regenerate.report_only(str(tmp_path))
    assert needle in str(e.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("output_dir", [None, ""])
def test_report_only_needs_an_output_dir(output_dir: str | None) -> None:
    with pytest.raises(UserError, match="needs runner.output_dir"):
        regenerate.report_only(output_dir)
