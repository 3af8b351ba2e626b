"""Load a local Qwen3-VL checkpoint (or build a seeded random one of the real shape), decide the
quantization scope, translate bit targets.

``model.init=random`` needs no weights: the architecture comes from the checkpoint's config.json
or from ``model.config`` (the published config.json values in conf/model/qwen3_vl_*.yaml). It is
materialised as a small weightless directory (config.json, a tokenizer, ``random_init.json``) so
the rest of the job (plan, fingerprint, score cache, reports) treats it like any checkpoint.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import math
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from . import paths
from .errors import UserError
from .schema import Coverage, DType, ModelConfig, ModelInit

log = logging.getLogger(__name__)

# Module-name patterns ModelOpt must leave unquantized for each coverage.
FROZEN_PATTERNS: dict[Coverage, list[str]] = {
    Coverage.lm_only: ["*visual*"],
    Coverage.full: [],
}


def configured_dir(cfg: ModelConfig) -> Path | None:
    """The directory named by ``path`` or by the ``path_env`` variable, unchecked; None if neither."""
    raw = cfg.path or (os.environ.get(cfg.path_env) if cfg.path_env else None)
    return Path(raw).expanduser() if raw else None


def checkpoint_dir(cfg: ModelConfig) -> Path:
    """The local checkpoint directory; for ``init=random`` the materialised weightless one.

    A configured checkpoint is checked cheaply here, before anything is logged or loaded:
    config.json parses and describes a Qwen3-VL, and every safetensors file is complete
    (headers only; the weights are not read).
    """
    check_model_name(cfg)
    check_loader_options(cfg)
    if cfg.init == ModelInit.random:
        return random_init_dir(cfg)
    path = configured_dir(cfg)
    if path is None:
        how = f"or export {cfg.path_env}=<dir>" if cfg.path_env else ""
        shapes = (" Without weights, model.init=random builds a random model of the real shape from "
                  "model.config and runner.dry_run=true plans the job." if cfg.config else "")
        raise UserError(
            f"Model '{cfg.name}' has no checkpoint directory. Set model.path=<local dir with "
            f"config.json and *.safetensors> {how}; weights are only loaded from local disk.{shapes}"
        )
    _check_config_json(cfg, path)
    check_weights(path)
    check_weight_shapes(path, cfg.trust_remote_code)
    _check_tokenizer_files(path)
    return path


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def _check_tokenizer_files(path: Path) -> None:
    """Without a tokenizer the captions become zero tokens and scoring fails deep inside."""
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(
            f"The checkpoint in '{path}' has no tokenizer ({' / '.join(TOKENIZER_FILES)} missing). "
            "Copy the tokenizer files that came with the checkpoint next to its config.json."
        )


# Checkpoint model types this project analyses (transformers' names for Qwen3-VL and its MoE).
QWEN3_VL_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")
# model.name names output files and directories (<name>_autoquant_<pair>_..._quant_manifest.json
# and the publish layout): short enough for a file name on any file system, and a plain name.
MAX_MODEL_NAME_CHARS = 100


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


def _check_config_json(cfg: ModelConfig, path: Path) -> None:
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


def check_weights(path: Path) -> None:
    """Every safetensors file of the checkpoint is present and complete (headers only)."""
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted({str(v) for v in weight_map.values()})
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise _damaged(index_file, f"it is not a valid safetensors index ({type(e).__name__}: "
                                       f"{e})") from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise _damaged(index_file, f"it lists {len(missing)} shard(s) that are missing: "
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
            raise _damaged(f, problem)


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


def _damaged(file: Path, problem: str) -> UserError:
    return UserError(
        f"Checkpoint file '{file}' is damaged: {problem}. Copy the checkpoint again from its "
        "source (or save_pretrained it once more), or point model.path at an intact checkpoint."
    )


# --------------------------------------------------------------------------------------------
# Architecture without weights: config.json or model.config

DEFAULT_MODEL_TYPE = "qwen3_vl"


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
        _check_config_json(cfg, path)
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


# --------------------------------------------------------------------------------------------
# model.init=random

RANDOM_INIT_SEED = 0  # fixed: the same config always gives the same weights
RANDOM_INIT_MARKER = "random_init.json"
# Random weights make token identity meaningless; only ids < vocab_size and sequence lengths
# matter. A configured checkpoint's own tokenizer is used when it has one, else the embedded
# model's byte-level BPE (2048 ids, so it fits any real vocabulary; it splits captions into
# somewhat more tokens than Qwen's 151k vocabulary, so measured memory errs on the high side).
EMBEDDED_TOKENIZER_DIR = paths.ASSETS_DIR / "tiny-qwen3-vl"
_TOKENIZER_FILE = re.compile(
    r"^(tokenizer.*|vocab\.json|merges\.txt|special_tokens_map\.json|added_tokens\.json|"
    r"chat_template\.(jinja|json))$"
)


def cache_root() -> Path:
    """Where derived, re-creatable files go (shared with the score cache's default)."""
    return Path(os.environ.get("LAYER_SENSITIVITY_CACHE_DIR") or paths.project_root() / ".cache")


def _tokenizer_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and _TOKENIZER_FILE.match(p.name))


def _text_vocab_size(config: Any) -> int:
    text = getattr(config, "text_config", None) or config
    return int(text.vocab_size)


def random_init_dir(cfg: ModelConfig) -> Path:
    """A weightless checkpoint directory describing the random model (created once, atomically).

    It holds config.json (normalised by transformers), the tokenizer files and
    ``random_init.json`` (init, seed, tokenizer origin), which :func:`fingerprint` includes, so
    random-init scores never mix with a real checkpoint's in the score cache.
    """
    values, source = architecture(cfg)
    config = hf_config(values, cfg.trust_remote_code)
    ckpt = configured_dir(cfg)
    tokenizer_files = _tokenizer_files(ckpt) if ckpt is not None else []
    origin = "checkpoint" if tokenizer_files else "embedded"
    tokenizer_files = tokenizer_files or _tokenizer_files(EMBEDDED_TOKENIZER_DIR)
    marker = {"init": "random", "seed": RANDOM_INIT_SEED, "tokenizer": origin}
    h = hashlib.sha256(config.to_json_string(use_diff=False).encode())
    h.update(json.dumps(marker, sort_keys=True).encode())
    for f in tokenizer_files:
        h.update(f.name.encode() + f.read_bytes())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.name).strip("-") or "model"
    target = cache_root() / "random-init" / f"{slug}-{h.hexdigest()[:16]}"
    if (target / RANDOM_INIT_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        config.save_pretrained(staging)
        for f in tokenizer_files:
            shutil.copy2(f, staging / f.name)
        _check_tokenizer_fits(staging, _text_vocab_size(config), cfg, origin)
        (staging / RANDOM_INIT_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            staging.rename(target)
        except OSError:  # another process published the same directory first
            if not (target / RANDOM_INIT_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("random-init model of %s (%s) described in %s", cfg.name, source, target)
    return target


def _check_tokenizer_fits(directory: Path, vocab_size: int, cfg: ModelConfig, origin: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    if len(tokenizer) > vocab_size:
        raise UserError(
            f"model.init=random for '{cfg.name}': the {origin} tokenizer has {len(tokenizer)} ids "
            f"but the model's vocabulary has only {vocab_size}. Set text_config.vocab_size in "
            f"model.config to {len(tokenizer)} or more."
        )


def build_random(cfg: ModelConfig, path: Path, device: str) -> LoadedModel:
    """A seeded, randomly initialised model of the shape in ``path``/config.json, built directly
    on ``device`` (nothing is read but config.json and the tokenizer)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    dtype = resolve_dtype(cfg.dtype, device)
    config = AutoConfig.from_pretrained(path, local_files_only=True,
                                        trust_remote_code=cfg.trust_remote_code)
    target = torch.device(device)
    cuda = [target.index if target.index is not None else torch.cuda.current_device()] \
        if target.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(RANDOM_INIT_SEED)
        with target:
            model = AutoModelForImageTextToText.from_config(
                config, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    model.eval()
    return LoadedModel(model, load_tokenizer(cfg, path), path, device, dtype)


# --------------------------------------------------------------------------------------------
# Loader options: one model over several GPUs (accelerate)

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def check_loader_options(cfg: ModelConfig) -> None:
    """``device_map`` / ``max_memory`` make sense together and with the chosen init."""
    if cfg.device_map is None:
        if cfg.max_memory:
            raise UserError(
                "model.max_memory is set but model.device_map is null; max_memory only caps the "
                "devices of a device map. Set model.device_map=auto (or balanced), or drop "
                "model.max_memory."
            )
        return
    if cfg.max_memory is not None and not isinstance(cfg.max_memory, Mapping):
        raise UserError(
            f"model.max_memory={cfg.max_memory!r} is not a map of device to size. Use e.g. "
            "model.max_memory={0:70GiB,1:70GiB} (GPU index or cpu: size)."
        )
    dm = cfg.device_map
    if not (dm in DEVICE_MAP_STRATEGIES or isinstance(dm, Mapping)):
        raise UserError(
            f"model.device_map={dm!r} is not a device map. Use one of "
            f"{', '.join(DEVICE_MAP_STRATEGIES)}, or an explicit {{module name: device}} map, or "
            "null for one device."
        )
    if cfg.init == ModelInit.random:
        raise UserError(
            "model.device_map is not supported with model.init=random (the random model is built "
            "on model.device). Drop model.device_map, or use a checkpoint (model.init=pretrained)."
        )


def check_placement(cfg: ModelConfig, device: str) -> None:
    """model.device_map / max_memory fit the device (checked before anything is logged)."""
    _loader_kwargs(cfg, device)


def _loader_kwargs(cfg: ModelConfig, device: str) -> dict[str, Any]:
    """from_pretrained's device_map / max_memory, or {} for one device."""
    if cfg.device_map is None:
        return {}
    if not device.startswith("cuda"):
        raise UserError(
            f"model.device_map={cfg.device_map!r} spreads the model over GPUs but the job runs on "
            f"{device}. Run on a CUDA host or set model.device_map=null."
        )
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise UserError(
            "model.device_map needs the 'accelerate' package, which is not installed. Install it "
            "(pip install accelerate) or set model.device_map=null."
        ) from None
    dm = cfg.device_map
    kwargs: dict[str, Any] = {"device_map": dict(dm) if isinstance(dm, Mapping) else dm}
    if cfg.max_memory:
        kwargs["max_memory"] = {(int(k) if str(k).isdigit() else str(k)): str(v)
                                for k, v in cfg.max_memory.items()}
    return kwargs


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"model.device={device} but this machine has no CUDA device. Use model.device=cpu "
            "(or auto) here, or run on a GPU host."
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"model.device={device} is not a device; use auto, cpu, cuda or cuda:N.")
    return device


def resolve_dtype(dtype: DType, device: str) -> torch.dtype:
    if dtype == DType.auto:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype.value)


def fingerprint(path: Path) -> str:
    """sha256 over config.json and the weights' index (tensor names, shapes, dtypes, offsets).

    Cheap for any size of checkpoint: safetensors headers are read, not the weights.
    """
    h = hashlib.sha256((path / "config.json").read_bytes())
    marker = path / RANDOM_INIT_MARKER  # random weights: seed and tokenizer origin
    if marker.is_file():
        h.update(marker.read_bytes())
    index = path / "model.safetensors.index.json"
    if index.is_file():
        h.update(index.read_bytes())
    for shard in sorted(path.glob("*.safetensors")):
        with shard.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            h.update(shard.name.encode() + f.read(n))
    return h.hexdigest()[:16]


WEIGHTS_MEMO_VERSION = 1
_READ_CHUNK = 16 << 20


def weights_digest(path: Path, memo_dir: Path | None = None) -> str:
    """sha256 over the weights' bytes (every ``*.safetensors`` shard); refuses non-finite weights.

    ``fingerprint`` reads headers only, so a checkpoint with the same shapes but other weights
    (fine-tuned, permuted, NaN) would match it. This digest is what stored scores are keyed on.
    Reading a large checkpoint takes a while, so each shard's result is remembered in
    ``memo_dir`` by the shard's identity (resolved path, size, mtime_ns, inode): a later job on
    the same files costs one stat per shard.
    """
    h = hashlib.sha256()
    for shard in sorted(path.glob("*.safetensors")):
        digest, bad = _shard_check(shard, memo_dir)
        if bad:
            raise UserError(
                f"The checkpoint in '{path}' has non-finite weights (NaN or inf) in {len(bad)} "
                f"tensor(s) of {shard.name}, e.g. {', '.join(bad[:3])}: sensitivity scores of such "
                "a model mean nothing. Point model.path at an intact checkpoint (re-export or "
                "re-download it)."
            )
        h.update(shard.name.encode() + bytes.fromhex(digest))
    return h.hexdigest()[:32]


def _shard_identity(shard: Path) -> dict[str, Any]:
    st = shard.stat()
    return {"path": str(shard.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "inode": st.st_ino, "version": WEIGHTS_MEMO_VERSION}


def _shard_check(shard: Path, memo_dir: Path | None) -> tuple[str, list[str]]:
    """(sha256 of the shard's bytes, names of tensors with non-finite values), memoized."""
    identity = _shard_identity(shard)
    memo = (memo_dir / f"{hashlib.sha256(identity['path'].encode()).hexdigest()[:32]}.json"
            if memo_dir is not None else None)
    if memo is not None and memo.is_file():
        try:
            doc = json.loads(memo.read_text())
            if doc.get("identity") == identity:
                return str(doc["sha256"]), list(doc["non_finite"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable memo: compute again
    h = hashlib.sha256()
    with shard.open("rb") as f:
        while chunk := f.read(_READ_CHUNK):
            h.update(chunk)
    bad = _non_finite_tensors(shard)
    if _shard_identity(shard) != identity:  # changed while read: do not remember it
        return h.hexdigest(), bad
    if memo is not None:
        assert memo_dir is not None
        memo_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the private score cache
        memo_dir.mkdir(mode=0o700, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"identity": identity, "sha256": h.hexdigest(),
                                   "non_finite": bad}))
        os.replace(tmp, memo)
    return h.hexdigest(), bad


def _non_finite_tensors(shard: Path) -> list[str]:
    from safetensors import safe_open

    bad = []
    try:
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                t = f.get_tensor(name)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad.append(name)
    except SafetensorError:  # unreadable: the loader names the damage when the model loads
        return []
    return bad


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


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    path: Path
    device: str
    dtype: torch.dtype


def load(cfg: ModelConfig, path: Path, device: str) -> LoadedModel:
    """The model for ``cfg.init``: the checkpoint (offline, eval mode) or a seeded random one."""
    if cfg.init == ModelInit.random:
        return build_random(cfg, path, device)
    from transformers import AutoModelForImageTextToText

    dtype = resolve_dtype(cfg.dtype, device)
    kwargs = dict(local_files_only=True, trust_remote_code=cfg.trust_remote_code)
    spread = _loader_kwargs(cfg, device)
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


def _unloadable(path: Path, what: str, error: BaseException) -> UserError:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    return UserError(
        f"The {what} in '{path}' could not be loaded ({type(error).__name__}: {first}). Its files "
        "are damaged or do not match its config.json: copy the checkpoint again from its source "
        "(or save_pretrained it once more), or point model.path at an intact Qwen3-VL checkpoint."
    )


def _is_quantizable(module: torch.nn.Module) -> bool:
    # The layers ModelOpt's weight cost model counts: linear and convolution weights.
    return isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))


FUSED_EXPERT_WEIGHTS = ("gate_up_proj", "down_proj")


def is_fused_experts(module: torch.nn.Module) -> bool:
    """A fused MoE experts container (3-D ``gate_up_proj`` and ``down_proj`` parameters, as in
    transformers 5's Qwen3-VL-MoE): ModelOpt quantizes it as one module, all experts together."""
    params = dict(module.named_parameters(recurse=False))
    return all(n in params and params[n].dim() == 3 for n in FUSED_EXPERT_WEIGHTS)


def quantizable_weight_numel(module: torch.nn.Module) -> int:
    """Weights ModelOpt's cost model counts for ``module`` (0 for modules it does not quantize)."""
    if _is_quantizable(module):
        weight: torch.Tensor = module.weight  # type: ignore[assignment]
        return weight.numel()
    if is_fused_experts(module):
        params = dict(module.named_parameters(recurse=False))
        return sum(params[n].numel() for n in FUSED_EXPERT_WEIGHTS)
    return 0


def weight_counts(model: torch.nn.Module, frozen_patterns: list[str]) -> tuple[int, int]:
    """(weights in scope, weights of quantizable layers kept at 16 bits by ``frozen_patterns``).

    Works on the meta device too (only shapes are read).
    """
    in_scope = frozen = 0
    for name, module in model.named_modules():
        n = quantizable_weight_numel(module)
        if not n:
            continue
        if any(fnmatch.fnmatch(name, p) for p in frozen_patterns):
            frozen += n
        else:
            in_scope += n
    return in_scope, frozen


def modelopt_bits(target_bits: float, in_scope: int, frozen: int) -> float:
    """ModelOpt's effective-bits target for a target averaged over the in-scope weights only.

    ModelOpt averages over every quantizable layer it sees; frozen layers always cost 16 bits.
    """
    return (target_bits * in_scope + 16.0 * frozen) / (in_scope + frozen)


def scope_bits(modelopt_target: float, in_scope: int, frozen: int) -> float:
    """Inverse of :func:`modelopt_bits`: a whole-model figure as bits over the in-scope weights."""
    return (modelopt_target * (in_scope + frozen) - 16.0 * frozen) / in_scope


def read_config(path: Path) -> dict[str, Any]:
    """config.json as a dict; a UserError naming the file when it is not a JSON object."""
    file = path / "config.json"
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _damaged(file, f"it is not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise _damaged(file, f"it holds a JSON {type(values).__name__}, not an object")
    return values
