"""The tiny Qwen3-VL checkpoint runs (text and image forwards), and its generator script makes a
loadable checkpoint."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never reach for a hub

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForImageTextToText,
    AutoTokenizer,
    Qwen3VLForConditionalGeneration,
)

from tests.helpers import CAPTIONS, ROOT, TINY_MODEL  # noqa: E402

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "make_tiny_qwen3vl.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_tiny_qwen3vl", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(path: Path) -> tuple[Any, Any]:
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=False)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    return model.eval(), tok


@pytest.fixture(scope="module")
def bundled() -> tuple[Any, Any]:
    return load(TINY_MODEL)


def test_checkpoint_is_a_qwen3_vl_with_vision_tower(bundled: tuple[Any, Any]) -> None:
    model, _ = bundled
    assert isinstance(model, Qwen3VLForConditionalGeneration)
    assert len(model.model.visual.blocks) >= 1
    assert len(model.model.language_model.layers) >= 1
    assert model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr()


def test_text_forward_and_tokenizer_round_trip(bundled: tuple[Any, Any]) -> None:
    model, tok = bundled
    caption = CAPTIONS.read_text(encoding="utf-8").splitlines()[0]
    ids = tok(caption)["input_ids"]
    assert tok.decode(ids) == caption
    batch = tok([caption, "A dog."], padding="longest", return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (*batch["input_ids"].shape, model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_image_forward_reaches_the_vision_tower(bundled: tuple[Any, Any]) -> None:
    """One 64x64 image: a 4x4 patch grid, merged 2x2 into 4 image tokens."""
    model, tok = bundled
    cfg = model.config
    v = cfg.vision_config
    grid = torch.tensor([[1, 4, 4]])
    pixels = torch.randn(16, v.in_channels * v.temporal_patch_size * v.patch_size**2)
    ids = ([cfg.vision_start_token_id] + [cfg.image_token_id] * 4 + [cfg.vision_end_token_id]
           + tok("A photo.")["input_ids"])
    input_ids = torch.tensor([ids])
    mm_types = (input_ids == cfg.image_token_id).long()  # 1 marks image tokens

    def logits(pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=grid,
                         mm_token_type_ids=mm_types).logits

    first = logits(pixels)
    assert first.shape[:2] == input_ids.shape
    assert torch.isfinite(first).all()
    assert not torch.allclose(first, logits(pixels + 1.0))  # the image does reach the text


def test_script_smoke_run_makes_a_loadable_checkpoint(tmp_path: Path) -> None:
    # 100 captions keep tokenizer training and the two evaluation passes quick.
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CAPTIONS.read_text(encoding="utf-8").splitlines()[:100]) + "\n")
    out = tmp_path / "ckpt"
    # One thread: on a busy 2-core machine a 2-thread pool waits on its slowest thread.
    argv = ["--steps", "2", "--threads", "1", "--captions", str(captions), "--out", str(out)]
    report = load_script().main(argv)
    assert report["steps"] == 2 and report["captions"]["held_out"] == 10
    model, tok = load(out)
    assert isinstance(model, Qwen3VLForConditionalGeneration)
    with torch.no_grad():
        logits = model(**tok(["A cat on a mat."], return_tensors="pt")).logits
    assert torch.isfinite(logits).all()
