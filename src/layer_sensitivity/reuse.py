"""Work shared between the jobs of one process: pristine models and tokenized batches.

A sweep runs many jobs in one process. AutoQuantize rewrites the model it is given (quantizer
modules, folded weights), so each job gets a fresh deep copy of a pristine model that stays
untouched; batches are keyed by everything that shapes them, so a job never sees another job's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import calibration, image_captions
from .model import loader
from .schema import ModelConfig


@dataclass
class Resources:
    """``keep=False`` (one job per process) loads directly and keeps nothing."""

    keep: bool = False
    _models: dict[tuple[Any, ...], loader.LoadedModel] = field(default_factory=dict)
    _batches: dict[tuple[Any, ...], list[calibration.Batch]] = field(default_factory=dict)
    _tokenizers: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    loads: int = 0  # checkpoint loads from disk (what a sweep saves)
    tokenizations: int = 0

    def model(self, cfg: ModelConfig, path: Path, device: str) -> loader.LoadedModel:
        """A model this job may modify freely."""
        if not self.keep:
            self.loads += 1
            return loader.load(cfg, path, device)
        key = (str(path.resolve()), cfg.dtype.value, device, cfg.trust_remote_code)
        if key not in self._models:
            self.loads += 1
            self._models[key] = loader.load(cfg, path, device)
        pristine = self._models[key]
        return replace(pristine, model=copy.deepcopy(pristine.model))

    def tokenizer(self, cfg: ModelConfig, path: Path) -> Any:
        """The checkpoint's tokenizer alone (stored scores need no model)."""
        key = (str(path.resolve()), cfg.trust_remote_code)
        if key not in self._tokenizers:
            self._tokenizers[key] = loader.load_tokenizer(cfg, path)
        return self._tokenizers[key]

    def batches(self, captions: calibration.Captions, tokenizer: Any, tokenizer_id: str,
                batch_size: int, seq_len: int, pad_to_longest: bool,
                sort_by_length: bool) -> list[calibration.Batch]:
        key = (captions.sha256, tokenizer_id, batch_size, seq_len, pad_to_longest, sort_by_length)
        if key in self._batches:
            return self._batches[key]
        self.tokenizations += 1
        batches = calibration.build_batches(captions.lines, tokenizer, batch_size, seq_len,
                                            pad_to_longest, sort_by_length)
        if self.keep:
            self._batches[key] = batches
        return batches

    def image_batches(self, data: image_captions.ImageCaptions, tokenizer: Any, path: Path,
                      settings: image_captions.ImageSettings, batch_size: int,
                      seq_len: int) -> list[calibration.Batch]:
        """Image-caption chats through the checkpoint's own image processor and chat template."""
        key = ("image", data.sha256, str(path.resolve()), tuple(settings.as_dict().items()),
               batch_size, seq_len)
        if key in self._batches:
            return self._batches[key]
        self.tokenizations += 1
        processor = image_captions.load_image_processor(path)
        tokenizer = image_captions.with_chat_template(tokenizer, path)
        batches = image_captions.build_batches(data, tokenizer, processor, settings, batch_size,
                                               seq_len)
        if self.keep:
            self._batches[key] = batches
        return batches
