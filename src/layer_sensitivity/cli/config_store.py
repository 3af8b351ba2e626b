"""Registers the typed schemas and resolvers with Hydra / OmegaConf."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from .. import paths
from ..schema import SensitivityConfig

# conf/ sits at the repository root, next to src/.
CONF_DIR = str(Path(__file__).resolve().parents[3] / "conf")


def register() -> None:
    OmegaConf.register_new_resolver("asset", paths.asset, replace=True)
    OmegaConf.register_new_resolver("project_root", lambda: str(paths.project_root()), replace=True)
    ConfigStore.instance().store(name="sensitivity_schema", node=SensitivityConfig)


register()
