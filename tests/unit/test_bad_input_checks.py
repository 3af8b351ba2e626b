"""Checks that refuse bad input before any run: shape values, weights vs config.json, the
score-cache key file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from layer_sensitivity import scorecache
from layer_sensitivity.errors import UserError
from layer_sensitivity.model import architecture, checkpoint
from tests.helpers import TINY_MODEL


@pytest.mark.parametrize("key,value", [("hidden_size", -8), ("num_hidden_layers", 0),
                                       ("intermediate_size", 1.5), ("head_dim", "x")])
def test_shape_values_must_be_positive_integers(key: str, value: object) -> None:
    values = json.loads((TINY_MODEL / "config.json").read_text())
    architecture.check_shape_values(values, "model.config")  # the real config passes
    values["text_config"][key] = value
    with pytest.raises(UserError, match=rf"model\.config\.text_config\.{key}="):
        architecture.check_shape_values(values, "model.config")


def test_weights_of_another_size_than_config_json_are_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(TINY_MODEL, ckpt)
    checkpoint.check_weight_shapes(ckpt)  # intact: passes
    config = json.loads((ckpt / "config.json").read_text())
    config["text_config"]["intermediate_size"] += 64
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="does not match its config.json"):
        checkpoint.check_weight_shapes(ckpt)


def test_open_key_file_is_refused_and_missing_one_is_fine(tmp_path: Path) -> None:
    key = tmp_path / "score-cache.key"
    scorecache.check_key_file(key)  # missing: the cache creates it later
    key.write_bytes(b"k" * scorecache.SECRET_BYTES)
    key.chmod(0o600)
    scorecache.check_key_file(key)
    key.chmod(0o644)
    with pytest.raises(UserError, match="readable by other users"):
        scorecache.check_key_file(key)
