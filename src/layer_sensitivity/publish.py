"""The committed analysis tree: models/<model>/layer-analysis/weight-<w>-act-<a>/<granularity>/<scheme>/."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError
from .schema import SensitivityConfig


def safe_join(root: Path, *parts: str) -> Path:
    """``root/part/...``, refusing any part that could leave ``root``."""
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part or "\x00" in part:
            raise UserError(
                f"'{part}' cannot be used as a directory name under the publish root '{root}' "
                "(empty, '.', '..' or containing a path separator). Rename the model, pair or "
                "granularity to a plain name."
            )
    root = root.resolve()
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root):
        raise UserError(f"'{path}' is outside the publish root '{root}'; refusing to write there.")
    return path


def layout_dir(root: Path, model_name: str, weight: str, activation: str, granularity: str,
               scheme_name: str) -> Path:
    return safe_join(root, model_name, "layer-analysis", f"weight-{weight}-act-{activation}",
                     granularity, scheme_name)


def analysis_dir(root: Path, job: SensitivityConfig, scheme_name: str) -> Path:
    q = job.quant_pair
    return layout_dir(root, job.model.name, q.weight.value, q.activation.value,
                      job.quant_granularity.name, scheme_name)
