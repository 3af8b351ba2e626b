"""What every entry point shares: clean user errors and config flattening."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ..errors import UserError


@contextmanager
def user_errors() -> Iterator[None]:
    """A UserError becomes one paragraph on stderr and exit status 2, without a traceback."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as dotted keys (lists and dicts rendered as text)."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    flat = pd.json_normalize(container, sep=".").iloc[0].to_dict()
    return {k: (v if isinstance(v, (str, int, float, bool)) or v is None else str(v))
            for k, v in flat.items()}


def expand_packed_overrides(argv: list[str]) -> list[str]:
    """``--overrides "a=1 b=2"`` (how MLproject passes extra overrides) -> ``a=1 b=2``."""
    out, it = [], iter(argv)
    for arg in it:
        if arg == "--overrides":
            out += shlex.split(next(it, ""))
        elif arg.startswith("--overrides="):
            out += shlex.split(arg.removeprefix("--overrides="))
        else:
            out.append(arg)
    return out
