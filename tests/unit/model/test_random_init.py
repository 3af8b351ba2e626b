"""model.init=random: checked and described without writing; written once, where described.
A random model built and run end to end: tests/e2e/test_random_init.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layer_sensitivity.errors import UserError
from layer_sensitivity.model import digest, random_init
from layer_sensitivity.schema import ModelConfig, ModelInit
from tests.helpers import TINY_MODEL


def _random_cfg(**text: object) -> ModelConfig:
    """A random-init config of the embedded model's shape (its config.json values)."""
    values = json.loads((TINY_MODEL / "config.json").read_text())
    for key in ("dtype", "transformers_version"):
        values.pop(key, None)
    values["text_config"].update(text)
    return ModelConfig(name="small random", path=None, config=values, init=ModelInit.random)


def test_random_init_is_checked_and_described_before_it_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAYER_SENSITIVITY_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="vocabulary has only 100"):
        random_init.describe(_random_cfg(vocab_size=100))  # the embedded tokenizer has 2048 ids
    spec = random_init.describe(_random_cfg())
    planned = spec.fingerprint()
    assert not (tmp_path / "cache").exists()  # described: nothing written
    directory = spec.write()
    assert directory == spec.directory and directory.name.startswith("small-random-")
    assert planned == digest.fingerprint(directory) == spec.fingerprint()
    assert random_init.describe(_random_cfg()).directory == directory  # found again, same name
