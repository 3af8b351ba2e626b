#!/usr/bin/env python
"""Regenerate the README's precision-pair tables from the catalogue (conf/ as Hydra composes it).

    python scripts/catalogue_table.py            # rewrite README.md between the quant-pairs markers
    python scripts/catalogue_table.py --check    # exit 1 when README.md is out of date
    python scripts/catalogue_table.py --print    # print the tables only

Only the text between ``<!-- quant-pairs:begin -->`` and ``<!-- quant-pairs:end -->`` is touched;
when the markers are missing, a "## Precision pairs" section holding them is appended once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from layer_sensitivity import catalogue
from layer_sensitivity.cli.config_store import load_listing

README = Path(__file__).resolve().parents[1] / "README.md"


def render(readme_text: str) -> str:
    tables = catalogue.markdown_tables(load_listing())
    block = f"{catalogue.BEGIN}\n{tables}\n{catalogue.END}"
    if catalogue.readme_section(readme_text) is None:
        return readme_text.rstrip("\n") + f"\n\n## Precision pairs\n\n{block}\n"
    head, rest = readme_text.split(catalogue.BEGIN, 1)
    tail = rest.split(catalogue.END, 1)[1]
    return head + block + tail


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail when README.md is out of date")
    mode.add_argument("--print", action="store_true", help="print the tables, change nothing")
    p.add_argument("--readme", type=Path, default=README)
    args = p.parse_args(argv)
    if args.print:
        print(catalogue.markdown_tables(load_listing()))
        return 0
    text = args.readme.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print(f"{args.readme} is out of date: run python scripts/catalogue_table.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
