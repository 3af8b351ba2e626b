"""Markdown reports as one self-contained HTML file, for MLflow's artifact viewer.

MLflow's Markdown preview does not resolve relative image links (a report's figure section shows
as literal ``![...](figures/x.png)`` text), but its HTML preview renders a page in an iframe. So
each Markdown report also gets an HTML twin with its figures inlined as base64 data URIs; the
Markdown stays as it is (relative links work in a published tree and on GitHub). No torch, no
MLflow.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from markdown_it import MarkdownIt

_IMG_SRC = re.compile(r'(<img src=")([^":]+\.png)(")')
_STYLE = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Liberation Sans",Arial,sans-serif;
     margin:1.5em;color:#1f2328;line-height:1.45;max-width:1200px}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:13px}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa} tr:nth-child(even) td{background:#fbfbfc}
img{max-width:100%;height:auto;display:block;margin:.4em 0 1em}
blockquote{border-left:4px solid #d4a72c;margin:0;padding:.2em 1em;background:#fff8e5}
code{background:#f3f4f6;padding:0 3px;border-radius:3px}
"""


def html_name(markdown_name: str) -> str:
    """``layer-sensitivity-report.md`` -> ``layer-sensitivity-report.html``."""
    return str(Path(markdown_name).with_suffix(".html"))


def render_html(markdown_text: str, base_dir: Path, title: str) -> str:
    """``markdown_text`` as a standalone page; PNGs it links relative to ``base_dir`` inlined.

    The same Markdown and PNG bytes give the same HTML (no dates, no random ids)."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)

    def inline(match: re.Match[str]) -> str:
        path = base_dir / html.unescape(match.group(2))
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"{match.group(1)}data:image/png;base64,{data}{match.group(3)}"

    body = _IMG_SRC.sub(inline, body)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
            f"<body>\n{body}</body></html>\n")


def write_html(markdown_file: Path, title: str) -> Path:
    """Write ``<markdown_file>.html`` beside ``markdown_file`` (figures relative to its folder)."""
    target = markdown_file.with_suffix(".html")
    target.write_text(render_html(markdown_file.read_text(encoding="utf-8"), markdown_file.parent,
                                  title), encoding="utf-8")
    return target
