"""Typos in a job's overrides, caught before Hydra composes (which would print a 30-line option
list, or suggest appending the misspelt key with ``+``): one paragraph with "did you mean".

Checks what is cheap and certain: a config group's option (``quant_pair=fp9``) against the files
in ``conf/<group>/``, and a dotted key (``autoquant.methd=...``) against the typed schema where
the schema is a dataclass (free-form dict nodes accept any key). ``+key`` (append) and ``~key``
(delete) overrides are Hydra's (issue 22 refuses unknown appended keys at compose time).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

from .. import paths
from ..console import did_you_mean
from ..errors import UserError


def group_options(group: str, extra_dirs: typing.Sequence[Path] = ()) -> list[str]:
    """Options of a config group: the YAML files in ``conf/<group>/`` and in the same group of any
    config directory the user added (``--config-dir``); empty if no such group."""
    folders = [Path(paths.CONF_DIR) / group, *(Path(d) / group for d in extra_dirs)]
    return sorted({p.stem for f in folders if f.is_dir() for p in f.glob("*.yaml")})


def config_dirs(argv: typing.Sequence[str]) -> tuple[list[Path], bool]:
    """The config directories Hydra's command line adds (``--config-dir``/``-cd``,
    ``--config-path``/``-cp``), and whether ``hydra.searchpath`` adds more (then group options
    cannot be listed here, and Hydra's own check decides)."""
    dirs, searchpath = [], False
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag in ("--config-dir", "-cd", "--config-path", "-cp"):
            value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            if value:
                dirs.append(Path(value))
        searchpath = searchpath or arg.lstrip("+").startswith("hydra.searchpath")
    return dirs, searchpath


def _schema_keys(cls: Any, prefix: str = "") -> list[str] | None:
    """Every dotted key of a dataclass schema; None where a node takes any key (a dict)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        hint = hints.get(f.name)
        if dataclasses.is_dataclass(hint):
            keys += _schema_keys(hint, f"{key}.") or []
    return keys


def check_overrides(argv: list[str]) -> None:
    """Raise ``UserError`` for an unknown group option or schema key in a job's command line
    (overrides and Hydra's flags), with the closest names."""
    from ..schema import SensitivityConfig

    keys = _schema_keys(SensitivityConfig) or []
    extra_dirs, searchpath = config_dirs(argv)
    for override in argv:
        if "=" not in override or override.startswith(("+", "~", "hydra", "-")):
            continue  # Hydra's own groups (hydra/launcher=...) also come from its plugins
        key, value = override.split("=", 1)
        options = [] if searchpath else group_options(key, extra_dirs)
        if options:
            # Every value of a sweep: `a,b` and Hydra's `choice(a,b)` alike.
            listed = re.sub(r"^choice\((.*)\)$", r"\1", value.strip())
            for v in (x.strip() for x in listed.split(",")):
                if v and v not in options and v != "null" and "(" not in v and "$" not in v:
                    raise UserError(f"{key}={v}: no such option in conf/{key}/."
                                    f"{did_you_mean(v, options)} Options: {', '.join(options)}.")
            continue
        if "." in key and key not in keys and _under_schema(key, keys):
            raise UserError(f"'{key}' is not a config key.{did_you_mean(key, keys)} "
                            "See the defaults with `python -m layer_sensitivity --cfg job`.")


def _under_schema(key: str, keys: list[str]) -> bool:
    """Whether ``key`` falls under dataclass nodes of the schema all the way (so it must be one
    of ``keys``); False under a free-form node (a dict, ``Any``)."""
    from ..schema import SensitivityConfig

    cls: Any = SensitivityConfig
    for part in key.split(".")[:-1]:
        if not dataclasses.is_dataclass(cls):
            return False
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return True  # an unknown node under a dataclass: a typo too
        cls = hints[part]
    return dataclasses.is_dataclass(cls)
