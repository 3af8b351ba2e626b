"""Device, dtype and device_map / max_memory: bad combinations are one-paragraph UserErrors."""

from __future__ import annotations

import pytest
import torch

from layer_sensitivity.errors import UserError
from layer_sensitivity.model import placement
from layer_sensitivity.schema import DType, ModelConfig, ModelInit


@pytest.mark.parametrize("changes, message", [
    ({"max_memory": {0: "10GiB"}}, "device_map is null"),
    ({"device_map": "everywhere"}, "is not a device map"),
    ({"device_map": "auto", "max_memory": "10GiB"}, "not a map of device to size"),
    ({"device_map": "auto", "init": ModelInit.random}, "not supported with"),
])
def test_loader_options_that_do_not_fit_together(changes: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        placement.check_loader_options(ModelConfig(**changes))


def test_one_device_needs_no_loader_options() -> None:
    placement.check_loader_options(ModelConfig())
    assert placement.loader_kwargs(ModelConfig(), "cpu") == {}


def test_a_device_map_needs_cuda() -> None:
    with pytest.raises(UserError, match="spreads the model over GPUs but the job runs on cpu"):
        placement.check_placement(ModelConfig(device_map="auto"), "cpu")


def test_devices_and_dtypes() -> None:
    assert placement.resolve_device("cpu") == "cpu"
    assert placement.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="is not a device"):
        placement.resolve_device("tpu")
    assert placement.resolve_dtype(DType.auto, "cpu") == torch.float32
    assert placement.resolve_dtype(DType.auto, "cuda:1") == torch.bfloat16
    assert placement.resolve_dtype(DType.float16, "cpu") == torch.float16
