"""What a Qwen3-VL looks like without its weights: config.json (or ``model.config``) values, checked,
as a transformers config and as a module tree on the meta device."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..schema import ModelConfig

# Checkpoint model types this project analyses (transformers' names for Qwen3-VL and its MoE).
QWEN3_VL_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")
DEFAULT_MODEL_TYPE = "qwen3_vl"


def configured_dir(cfg: ModelConfig) -> Path | None:
    """The directory named by ``path`` or by the ``path_env`` variable, unchecked; None if neither."""
    raw = cfg.path or (os.environ.get(cfg.path_env) if cfg.path_env else None)
    return Path(raw).expanduser() if raw else None


def read_config(path: Path) -> dict[str, Any]:
    """config.json as a dict; a UserError naming the file when it is not a JSON object."""
    file = path / "config.json"
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise damaged(file, f"it is not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise damaged(file, f"it holds a JSON {type(values).__name__}, not an object")
    return values


def damaged(file: Path, problem: str) -> UserError:
    return UserError(
        f"Checkpoint file '{file}' is damaged: {problem}. Copy the checkpoint again from its "
        "source (or save_pretrained it once more), or point model.path at an intact checkpoint."
    )


def check_config_json(cfg: ModelConfig, path: Path) -> None:
    """``path`` has a config.json describing a Qwen3-VL (or any type, with trust_remote_code)."""
    if not (path / "config.json").is_file():
        raise UserError(
            f"Model directory '{path}' for model '{cfg.name}' does not exist or has no "
            "config.json. Set model.path to a local Qwen3-VL checkpoint directory (as written by "
            "save_pretrained); nothing is downloaded from a model hub."
        )
    values = read_config(path)
    model_type = values.get("model_type")
    # Remote-code checkpoints name their own types; their loader is the judge.
    if model_type not in QWEN3_VL_MODEL_TYPES and not cfg.trust_remote_code:
        arch = ", ".join(map(str, values.get("architectures") or [])) or "no architectures listed"
        raise UserError(
            f"Model directory '{path}' holds a {model_type or 'untyped'} checkpoint ({arch}), "
            f"not a Qwen3-VL: its config.json has model_type={model_type!r}, and this project "
            f"analyses the language model inside Qwen3-VL (model_type "
            f"{' or '.join(QWEN3_VL_MODEL_TYPES)}). Set model.path to a Qwen3-VL checkpoint "
            "directory (or model.trust_remote_code=true for a remote-code variant)."
        )


def _plain(value: Any) -> Any:
    """JSON-like plain data from OmegaConf containers or mappings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def architecture(cfg: ModelConfig) -> tuple[dict[str, Any], str]:
    """(config.json values, where they came from): the checkpoint's when one is configured, else
    ``model.config``."""
    path = configured_dir(cfg)
    if path is not None:
        check_config_json(cfg, path)
        values = read_config(path)
        check_shape_values(values, str(path / "config.json"))
        return values, str(path / "config.json")
    if cfg.config:
        values = _plain(cfg.config)
        check_shape_values(values, "model.config")
        return values, "model.config"
    raise UserError(
        f"Model '{cfg.name}' has neither a checkpoint directory nor architecture values. Set "
        "model.path=<dir with config.json> (or the preset's path_env variable), or model.config "
        "to the model's config.json values (see conf/model/qwen3_vl_4b.yaml)."
    )


# Keys that size a tensor or count modules: torch would fail deep inside model construction (a
# traceback) on a zero or negative one, so they are checked first.
_SHAPE_KEY = re.compile(r"^(num_\w+|\w+_size|head_dim|depth|vocab_size)$")
_SUB_CONFIGS = ("text_config", "vision_config")


def check_shape_values(values: Mapping[str, Any], source: str) -> None:
    """Every shape value (sizes, counts) at the top and in text_config/vision_config is a
    positive integer; a UserError naming the key otherwise."""
    scopes = [("", values), *((f"{k}.", values[k]) for k in _SUB_CONFIGS
                               if isinstance(values.get(k), Mapping))]
    for prefix, scope in scopes:
        for key, value in scope.items():
            if not _SHAPE_KEY.match(str(key)) or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                where = (f"{source}.{prefix}{key}" if source == "model.config"
                         else f"{prefix}{key} in {source}")
                raise UserError(
                    f"{where}={value!r} is not a valid shape: sizes and counts must be positive "
                    f"integers. Set it to the model's value (e.g. from conf/model/qwen3_vl_4b.yaml)."
                )


def hf_config(values: dict[str, Any], trust_remote_code: bool = False) -> Any:
    """A transformers config object from config.json values (nothing is downloaded)."""
    from transformers import AutoConfig

    values = dict(values)
    model_type = values.pop("model_type", DEFAULT_MODEL_TYPE)
    try:
        return AutoConfig.for_model(model_type, **values)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(
            f"model.config could not be turned into a transformers config ({e}). Give the "
            "config.json values of a Qwen3-VL model (model_type qwen3_vl, text_config, "
            "vision_config), e.g. from conf/model/qwen3_vl_4b.yaml."
        ) from None


def meta_model(config: Any, trust_remote_code: bool = False) -> torch.nn.Module:
    """The architecture on the meta device: every module and shape, no memory, no weights."""
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config, trust_remote_code=trust_remote_code)
