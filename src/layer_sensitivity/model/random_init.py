"""``model.init=random``: a seeded random Qwen3-VL of the real shape, without weights on disk.

The architecture comes from the checkpoint's config.json or from ``model.config`` (the published
config.json values in conf/model/qwen3_vl_*.yaml). It is materialised as a small weightless
directory (config.json, a tokenizer, ``random_init.json``) so the rest of the job (fingerprint,
score cache, reports) treats it like any checkpoint. :func:`describe` decides and checks that
directory without writing it; :meth:`RandomInit.write` writes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import paths
from ..errors import UserError
from ..schema import ModelConfig
from .architecture import architecture, configured_dir, hf_config
from .digest import RANDOM_INIT_MARKER, fingerprint, fingerprint_of

log = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0  # fixed: the same config always gives the same weights
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


@dataclass(frozen=True)
class RandomInit:
    """The weightless directory of a random model: where it goes and what it holds."""

    directory: Path
    config: Any  # the transformers config
    tokenizer_files: tuple[Path, ...]
    marker: dict[str, Any]  # init, seed, tokenizer origin
    what: str  # "<model name> (<where the architecture came from>)", for the log

    def _marker_bytes(self) -> bytes:
        return (json.dumps(self.marker, indent=2) + "\n").encode()

    def fingerprint(self) -> str:
        """The directory's fingerprint (``digest.fingerprint``), whether written yet or not."""
        if (self.directory / RANDOM_INIT_MARKER).is_file():
            return fingerprint(self.directory)
        # save_pretrained writes exactly this config.json (a unit test holds the two equal).
        return fingerprint_of(self.config.to_json_string(use_diff=True).encode(),
                              self._marker_bytes())

    def write(self) -> Path:
        """The directory on disk: written once, atomically; found again afterwards."""
        target = self.directory
        if (target / RANDOM_INIT_MARKER).is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            self.config.save_pretrained(staging)
            for f in self.tokenizer_files:
                shutil.copy2(f, staging / f.name)
            (staging / RANDOM_INIT_MARKER).write_bytes(self._marker_bytes())
            try:
                staging.rename(target)
            except OSError:  # another process published the same directory first
                if not (target / RANDOM_INIT_MARKER).is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("random-init model of %s described in %s", self.what, target)
        return target


def describe(cfg: ModelConfig) -> RandomInit:
    """The random model's directory, decided and checked (shapes, tokenizer fit); writes nothing.

    The directory is named by a hash of config.json, the marker and the tokenizer files, so
    another shape or tokenizer never finds this one.
    """
    values, source = architecture(cfg)
    config = hf_config(values, cfg.trust_remote_code)
    ckpt = configured_dir(cfg)
    tokenizer_files = _tokenizer_files(ckpt) if ckpt is not None else []
    origin = "checkpoint" if tokenizer_files else "embedded"
    tokenizer_dir = ckpt if tokenizer_files and ckpt is not None else EMBEDDED_TOKENIZER_DIR
    tokenizer_files = tokenizer_files or _tokenizer_files(EMBEDDED_TOKENIZER_DIR)
    marker = {"init": "random", "seed": RANDOM_INIT_SEED, "tokenizer": origin}
    h = hashlib.sha256(config.to_json_string(use_diff=False).encode())
    h.update(json.dumps(marker, sort_keys=True).encode())
    for f in tokenizer_files:
        h.update(f.name.encode() + f.read_bytes())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", cfg.name).strip("-") or "model"
    directory = cache_root() / "random-init" / f"{slug}-{h.hexdigest()[:16]}"
    if not (directory / RANDOM_INIT_MARKER).is_file():  # checked when it was written otherwise
        _check_tokenizer_fits(tokenizer_dir, _text_vocab_size(config), cfg, origin)
    return RandomInit(directory, config, tuple(tokenizer_files), marker, f"{cfg.name} ({source})")


def _tokenizer_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and _TOKENIZER_FILE.match(p.name))


def _text_vocab_size(config: Any) -> int:
    text = getattr(config, "text_config", None) or config
    return int(text.vocab_size)


def _check_tokenizer_fits(directory: Path, vocab_size: int, cfg: ModelConfig, origin: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True,
                                              trust_remote_code=cfg.trust_remote_code)
    if len(tokenizer) > vocab_size:
        raise UserError(
            f"model.init=random for '{cfg.name}': the {origin} tokenizer has {len(tokenizer)} ids "
            f"but the model's vocabulary has only {vocab_size}. Set text_config.vocab_size in "
            f"model.config to {len(tokenizer)} or more."
        )


def build(cfg: ModelConfig, path: Path, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """A seeded, randomly initialised model of the shape in ``path``/config.json, built directly
    on ``device`` (nothing is read but config.json)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

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
    return model
