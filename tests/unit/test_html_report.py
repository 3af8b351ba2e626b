"""Markdown reports as one self-contained HTML page: figures inlined, raw HTML escaped, same bytes
for the same input."""

from __future__ import annotations

import base64
from pathlib import Path

from layer_sensitivity import html_report

PNG = b"\x89PNG\r\n\x1a\n-not-really-an-image"


def test_html_name_swaps_the_suffix() -> None:
    assert html_report.html_name("layer-sensitivity-report.md") == "layer-sensitivity-report.html"
    assert html_report.html_name("sub/x.md") == "sub/x.html"


def test_linked_pngs_are_inlined_and_missing_ones_left_as_links(tmp_path: Path) -> None:
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "shares.png").write_bytes(PNG)
    text = ("# Report\n\n![shares](figures/shares.png)\n\n![gone](figures/missing.png)\n\n"
            "| g | share |\n|---|---|\n| L00 | 0.5 |\n\n<script>alert(1)</script>\n")
    page = html_report.render_html(text, tmp_path, "Report <1>")
    assert f'src="data:image/png;base64,{base64.b64encode(PNG).decode()}"' in page
    assert 'src="figures/missing.png"' in page
    assert "<table>" in page and "<td>L00</td>" in page
    assert "<script>" not in page and "&lt;script&gt;" in page  # raw HTML is text, not markup
    assert "<title>Report &lt;1&gt;</title>" in page
    assert html_report.render_html(text, tmp_path, "Report <1>") == page  # byte-stable


def test_write_html_puts_the_page_beside_the_markdown(tmp_path: Path) -> None:
    md = tmp_path / "report.md"
    md.write_text("![f](f.png)\n", encoding="utf-8")
    (tmp_path / "f.png").write_bytes(PNG)
    target = html_report.write_html(md, "t")
    assert target == tmp_path / "report.html"
    assert "data:image/png;base64," in target.read_text(encoding="utf-8")
