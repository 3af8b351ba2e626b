"""Which checkpoint a job uses, checked cheaply before anything is logged or loaded.

A configured checkpoint: config.json describes a Qwen3-VL, every safetensors file is complete and
its tensors have the shapes config.json describes (headers only; the weights are not read), and a
tokenizer is there. ``model.init=random``: the weightless directory it will use, described but not
yet written (``RandomInit.write`` writes it).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..schema import ModelConfig, ModelInit
from . import digest, placement, random_init
from .architecture import (
    check_config_json,
    check_shape_values,
    configured_dir,
    damaged,
    hf_config,
    meta_model,
    read_config,
)
from .random_init import RandomInit

# model.name names output files and directories (<name>_autoquant_<pair>_..._quant_manifest.json
# and the publish layout): short enough for a file name on any file system, and a plain name.
MAX_MODEL_NAME_CHARS = 100
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class Checkpoint:
    """The directory a job reads its model from, and its fingerprint (the score-cache identity)."""

    path: Path
    fingerprint: str
    random_init: RandomInit | None = None  # model.init=random: ``write()`` makes the directory


def resolve(cfg: ModelConfig) -> Checkpoint:
    """The checked checkpoint for ``cfg.init``; writes nothing."""
    check_model_name(cfg)
    placement.check_loader_options(cfg)
    if cfg.init == ModelInit.random:
        spec = random_init.describe(cfg)
        return Checkpoint(spec.directory, spec.fingerprint(), spec)
    path = checked_dir(cfg)
    return Checkpoint(path, digest.fingerprint(path))


def checked_dir(cfg: ModelConfig) -> Path:
    """The configured checkpoint directory, checked (config.json, weights, shapes, tokenizer)."""
    path = configured_dir(cfg)
    if path is None:
        how = f"or export {cfg.path_env}=<dir>" if cfg.path_env else ""
        shapes = (" Without weights, model.init=random builds a random model of the real shape from "
                  "model.config and runner.dry_run=true plans the job." if cfg.config else "")
        raise UserError(
            f"Model '{cfg.name}' has no checkpoint directory. Set model.path=<local dir with "
            f"config.json and *.safetensors> {how}; weights are only loaded from local disk.{shapes}"
        )
    check_config_json(cfg, path)
    check_weights(path)
    check_weight_shapes(path, cfg.trust_remote_code)
    _check_tokenizer_files(path)
    return path


def check_model_name(cfg: ModelConfig) -> None:
    name = cfg.name
    plain = not any(c in name for c in "/\\\x00") and name not in (".", "..")
    if not name or len(name) > MAX_MODEL_NAME_CHARS or not plain:
        shown = name if len(name) <= 60 else f"{name[:40]}... ({len(name)} characters)"
        raise UserError(
            f"model.name={shown!r} cannot name output files: it must be 1 to "
            f"{MAX_MODEL_NAME_CHARS} characters without '/', '\\' or NUL (it becomes part of the "
            "manifest's file name and of the publish directory). Set model.name to a short plain "
            "name such as Qwen3-VL-4B-Instruct."
        )


def _check_tokenizer_files(path: Path) -> None:
    """Without a tokenizer the captions become zero tokens and scoring fails deep inside."""
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(
            f"The checkpoint in '{path}' has no tokenizer ({' / '.join(TOKENIZER_FILES)} missing). "
            "Copy the tokenizer files that came with the checkpoint next to its config.json."
        )


def check_weights(path: Path) -> None:
    """Every safetensors file of the checkpoint is present and complete (headers only)."""
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted({str(v) for v in weight_map.values()})
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise damaged(index_file, f"it is not a valid safetensors index ({type(e).__name__}: "
                                      f"{e})") from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise damaged(index_file, f"it lists {len(missing)} shard(s) that are missing: "
                                      f"{', '.join(missing[:3])}")
    files = sorted(path.glob("*.safetensors"))
    if not files and not any(path.glob("pytorch_model*.bin")):
        raise UserError(
            f"Model directory '{path}' has a config.json but no weights (*.safetensors). Copy the "
            "checkpoint's weight files there, or use model.init=random for a random model of its "
            "shape."
        )
    for f in files:
        problem = _safetensors_problem(f)
        if problem:
            raise damaged(f, problem)


def _header_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (the weights are not read)."""
    with file.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return {k: tuple(t["shape"]) for k, t in header.items() if k != "__metadata__"}


def check_weight_shapes(path: Path, trust_remote_code: bool = False) -> None:
    """The safetensors headers' shapes match the shapes config.json describes (built on the meta
    device): a mismatch would otherwise surface while loading, inside the run."""
    values = read_config(path)
    check_shape_values(values, str(path / "config.json"))
    if "quantization_config" in values:
        return  # a quantized export stores packed tensors of other sizes; its loader judges it
    expected = {k: tuple(v.shape) for k, v in
                meta_model(hf_config(values, trust_remote_code), trust_remote_code)
                .state_dict().items()}
    for f in sorted(path.glob("*.safetensors")):
        for name, shape in _header_shapes(f).items():
            want = expected.get(name)
            # Sizes, not layouts: a loader may legitimately transpose or fuse a stored tensor.
            if want is not None and math.prod(want) != math.prod(shape):
                raise UserError(
                    f"Checkpoint '{path}' does not match its config.json: tensor '{name}' in "
                    f"{f.name} has shape {list(shape)} but config.json describes {list(want)}. "
                    "The weights and config.json come from different models: copy the "
                    "checkpoint again from its source, or point model.path at an intact one."
                )


def _safetensors_problem(file: Path) -> str | None:
    """Why ``file`` is not a complete safetensors file (8-byte header size, JSON header,
    tensors ending exactly at the end of the file), or None."""
    size = file.stat().st_size
    with file.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"it has {size} bytes, too few for a safetensors file (truncated or empty)"
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            return (f"its header claims {n} bytes but the file has {size} in all (the file is "
                    "truncated or not safetensors)")
        try:
            header = json.loads(fh.read(n))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"),
                      default=0)
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "its header is not valid safetensors JSON (the file is damaged)"
    if 8 + n + end > size:
        return (f"it is truncated: its tensors need {8 + n + end} bytes but the file has {size} "
                "(an interrupted copy or download?)")
    return None
