"""Work shared between the jobs of one process: a tokenizer loaded once per checkpoint, batches
tokenized once per shape and never handed to a job of another shape. (Pristine model copies need a
model load: tests/e2e/test_reuse.py.)"""

from __future__ import annotations

from layer_sensitivity.calibration import read_captions
from layer_sensitivity.reuse import Resources
from layer_sensitivity.schema import ModelConfig
from tests.helpers import CAPTIONS, TINY_MODEL

CFG = ModelConfig()


def test_one_tokenizer_per_checkpoint() -> None:
    shared = Resources(keep=True)
    tokenizer = shared.tokenizer(CFG, TINY_MODEL)
    other_spelling = TINY_MODEL.parent / ".." / TINY_MODEL.parent.name / TINY_MODEL.name
    assert shared.tokenizer(CFG, other_spelling) is tokenizer  # the same checkpoint
    assert tokenizer.padding_side == "right" and tokenizer.pad_token is not None


def test_batches_are_kept_per_shape_only_when_jobs_share_a_process() -> None:
    captions = read_captions(CAPTIONS, 6)
    shared = Resources(keep=True)
    tokenizer = shared.tokenizer(CFG, TINY_MODEL)

    def batches(r: Resources, seq_len: int = 32, captions=captions):  # type: ignore[no-untyped-def]
        return r.batches(captions, tokenizer, "tiny", 2, seq_len, True, False)

    first = batches(shared)
    assert len(first) == 3 and batches(shared) is first and shared.tokenizations == 1
    other = batches(shared, seq_len=16)  # another shape: tokenized again, not the same batches
    assert shared.tokenizations == 2 and other is not first
    assert max(b["input_ids"].shape[1] for b in other) <= 16
    assert batches(shared, captions=read_captions(CAPTIONS, 4)) is not first  # other captions
    single = Resources()  # one job per process: nothing kept
    batches(single)
    batches(single)
    assert single.tokenizations == 2 and single.loads == 0
