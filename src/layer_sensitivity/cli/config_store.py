"""Registers the typed schemas and resolvers with Hydra / OmegaConf, and gives the core the
catalogue's list of pairs, aliases and overlays as Hydra composes them."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from .. import catalogue, paths
from ..errors import UserError
from ..schema import QuantGranularityConfig, QuantPairConfig, SensitivityConfig

CONF_DIR = str(paths.CONF_DIR)  # Hydra wants text
PRIMARY_CONFIG = "sensitivity"


def register() -> None:
    OmegaConf.register_new_resolver("asset", paths.asset, replace=True)
    OmegaConf.register_new_resolver("project_root", lambda: str(paths.project_root()), replace=True)
    ConfigStore.instance().store(name="sensitivity_schema", node=SensitivityConfig)
    catalogue.register_listing_source(load_listing)


@contextmanager
def _hydra() -> Iterator[None]:
    """Hydra ready to compose: the running app's own (inside a job or sweep), else conf/."""
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        yield


def _composed(group: str, option: str) -> Any:
    """One option of a group as a job sees it: the primary config composed with it, then typed."""
    cfg = compose(PRIMARY_CONFIG, overrides=[f"{group}={option}"])
    return OmegaConf.to_object(cfg[group])


@functools.cache
def load_listing() -> catalogue.Listing:
    """Every ``quant_pair`` and ``quant_granularity`` option, composed against the typed schema.

    An option that composes to a pair of another name is an alias of it (alias files hold only
    ``defaults: [<canonical>]``). About 2 s (one composition per option), cached.
    """
    with _hydra():
        loader = GlobalHydra.instance().config_loader()
        pairs: dict[str, QuantPairConfig] = {}
        aliases: dict[str, str] = {}
        for option in loader.get_group_options("quant_pair"):
            pair: QuantPairConfig = _composed("quant_pair", option)
            if pair.name == option:
                pairs[option] = pair
            else:
                aliases[option] = pair.name
        overlays: list[QuantGranularityConfig] = [
            _composed("quant_granularity", option)
            for option in loader.get_group_options("quant_granularity")]
    for alias, target in aliases.items():
        if target not in pairs:
            raise UserError(
                f"conf/quant_pair/{alias}.yaml composes to a pair named {target}, but there is no "
                f"conf/quant_pair/{target}.yaml. Name a pair's file after its name, or make "
                f"{alias}.yaml an alias holding only `defaults: [<pair file>]`."
            )
    return catalogue.Listing.ordered(pairs.values(), aliases, overlays)


register()


def check_known_keys(cfg: Any) -> None:
    """Keys a ``+key=value`` override added that no schema has: refused, with the closest match.

    Hydra's ``+`` adds a key even to a typed (struct) config, so ``+autoquant.methd=kl_div`` would
    run with the default method and log the junk as a parameter.
    """
    import dataclasses
    import difflib

    from omegaconf import DictConfig

    def walk(node: DictConfig, prefix: str) -> Iterator[tuple[str, list[str]]]:
        kind = OmegaConf.get_type(node)
        if not (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
            return  # free-form dicts (model.max_memory, size_samples, ...)
        known = [f.name for f in dataclasses.fields(kind)]
        for key in map(str, node.keys()):
            name = f"{prefix}{key}"
            if key not in known:
                if name != "hydra":
                    yield name, [f"{prefix}{m}" for m in difflib.get_close_matches(str(key), known)]
                continue
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                yield from walk(child, f"{name}.")

    unknown = list(walk(cfg, ""))
    if unknown:
        shown = "; ".join(f"'{k}'" + (f" (did you mean '{m[0]}'?)" if m else "")
                          for k, m in unknown)
        raise UserError(f"Unknown config key {shown}: no config group defines it, so it would be "
                        "ignored. Fix the name (`python -m layer_sensitivity --cfg job` lists "
                        "every key) and drop the leading '+'.")
