"""The model and tokenizer of a checked checkpoint directory, in eval mode, offline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ..errors import UserError
from ..schema import ModelConfig, ModelInit
from . import random_init
from .placement import loader_kwargs, resolve_dtype


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    path: Path
    device: str
    dtype: torch.dtype


def load(cfg: ModelConfig, path: Path, device: str) -> LoadedModel:
    """The model for ``cfg.init``: the checkpoint (offline, eval mode) or a seeded random one."""
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.init == ModelInit.random:
        net = random_init.build(cfg, path, device, dtype)
        return LoadedModel(net, load_tokenizer(cfg, path), path, device, dtype)
    from transformers import AutoModelForImageTextToText

    kwargs = dict(local_files_only=True, trust_remote_code=cfg.trust_remote_code)
    spread = loader_kwargs(cfg, device)
    try:
        loaded: Any = AutoModelForImageTextToText.from_pretrained(  # (model, loading info)
            path, dtype=dtype, output_loading_info=True, **kwargs, **spread)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise _unloadable(path, "model", e) from None
    except RuntimeError as e:  # shapes that do not match config.json; not out-of-memory
        if isinstance(e, torch.OutOfMemoryError) or "mismatch" not in str(e):
            raise
        raise _unloadable(path, "model", e) from None
    model, info = loaded
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # transformers would start these from random values: scores would mean nothing
        raise UserError(
            f"The checkpoint in '{path}' lacks {len(missing)} weight(s) its config.json needs "
            f"(e.g. {', '.join(missing[:3])}), which would be left random. Copy the complete "
            "checkpoint (every *.safetensors shard), or point model.path at an intact Qwen3-VL "
            "checkpoint."
        )
    if not spread:  # a device map already placed every module
        model.to(device)  # type: ignore[arg-type]  # transformers types .to() as a decorator
    model.eval()
    return LoadedModel(model, load_tokenizer(cfg, path), path, device, dtype)


def load_tokenizer(cfg: ModelConfig, path: Path) -> Any:
    """The checkpoint's tokenizer (for ``init=random`` the one in the materialised directory),
    padding on the right with EOS when it has no pad token."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                  trust_remote_code=cfg.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exception too
        raise _unloadable(path, "tokenizer", e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def check_finite(net: torch.nn.Module, path: Path) -> None:
    """A loaded model with NaN or inf weights is refused before any scoring."""
    bad = [n for n, p in net.named_parameters()
           if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        raise UserError(
            f"The checkpoint in '{path}' has non-finite weights (NaN or inf) in {len(bad)} "
            f"parameter(s), e.g. {', '.join(bad[:3])}: sensitivity scores of such a model mean "
            "nothing. Point model.path at an intact checkpoint (re-export or re-download it)."
        )


def _unloadable(path: Path, what: str, error: BaseException) -> UserError:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    return UserError(
        f"The {what} in '{path}' could not be loaded ({type(error).__name__}: {first}). Its files "
        "are damaged or do not match its config.json: copy the checkpoint again from its source "
        "(or save_pretrained it once more), or point model.path at an intact Qwen3-VL checkpoint."
    )
