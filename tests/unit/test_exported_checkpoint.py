"""Reading an export back: ModelOpt's packed INT4 weights unpack to the values it packed."""

from __future__ import annotations

import torch

from layer_sensitivity import exported_checkpoint


def test_int4_unpacking_inverts_modelopts_packing() -> None:
    from modelopt.torch.export.quant_utils import pack_int4_in_uint8

    torch.manual_seed(0)
    w = torch.randn(6, 256)
    scale = w.abs().reshape(6, 2, 128).amax(-1) / 7
    packed = pack_int4_in_uint8(w, scale, 128)
    q = exported_checkpoint._unpack_int4(packed)
    expected = (w / scale.repeat_interleave(128, dim=1)).round().clamp(-8, 7)
    assert torch.equal(q.float(), expected)
