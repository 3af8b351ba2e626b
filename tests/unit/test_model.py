"""The model package without loading a model: a language-model bit target in ModelOpt's whole-model
budget and back (``scope``), and the weights' digest remembered by file identity (``digest``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from layer_sensitivity.errors import UserError
from layer_sensitivity.model import digest, random_init
from layer_sensitivity.model.scope import modelopt_bits, scope_bits, weight_counts
from layer_sensitivity.schema import ModelConfig, ModelInit
from tests.helpers import TINY_MODEL


def test_no_frozen_weights_is_identity() -> None:
    assert modelopt_bits(6.0, 1000, 0) == 6.0


def test_frozen_weights_count_as_16_bits() -> None:
    # 800 LM weights at 8 bits + 200 vision weights at 16 -> 9.6 bits over everything
    assert modelopt_bits(8.0, 800, 200) == pytest.approx(9.6)
    assert scope_bits(9.6, 800, 200) == pytest.approx(8.0)


@pytest.mark.parametrize("bits", [4.0, 4.5, 8.0, 12.25, 16.0])
def test_roundtrip(bits: float) -> None:
    assert scope_bits(modelopt_bits(bits, 1234, 567), 1234, 567) == pytest.approx(bits)


def test_weight_counts_split_by_pattern() -> None:
    m = torch.nn.Module()
    m.visual = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Conv2d(1, 2, 3))
    m.lm = torch.nn.Linear(8, 8)
    m.norm = torch.nn.LayerNorm(8)  # not quantizable, never counted
    assert weight_counts(m, ["*visual*"]) == (64, 8 + 18)
    assert weight_counts(m, []) == (64 + 26, 0)


def test_infeasible_message_is_restated_in_language_model_bits() -> None:
    from layer_sensitivity.autoquant import InfeasibleTarget

    e = InfeasibleTarget("The effective_bits target 8.0 is infeasible for the resolved module "
                         "search spaces. The minimum achievable effective bits is 9.6000.")
    assert e.minimum_bits == 9.6
    assert scope_bits(e.minimum_bits, 800, 200) == pytest.approx(8.0)


def test_weights_digest_is_remembered_by_file_identity(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(TINY_MODEL, ckpt)
    memo = tmp_path / "memo"
    first, memos = digest.weights_digest(ckpt, memo)
    assert not memo.exists()  # nothing written while digesting: the caller writes the memos
    for m in memos:
        m.write()
    assert len(list(memo.glob("*.json"))) == 1

    def unread(shard: Path) -> list[str]:
        raise AssertionError(f"{shard} was read again")

    monkeypatch.setattr(digest, "_non_finite_tensors", unread)
    assert digest.weights_digest(ckpt, memo) == (first, [])  # same identity: one stat, no read
    monkeypatch.undo()
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4] ^= 1  # the lowest mantissa bit of the last float: same size, same header
    weights.write_bytes(bytes(data))
    assert digest.weights_digest(ckpt, memo)[0] != first


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
