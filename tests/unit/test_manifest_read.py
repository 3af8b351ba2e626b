"""The manifest schemas: valid manifests load unchanged; a wrong shape is one paragraph naming the
field, what it must be and the value found."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from layer_sensitivity import manifest
from layer_sensitivity.errors import UserError
from tests.helpers.manifests import legacy_doc, write_legacy

FIXTURES = Path(__file__).parent / "fixtures"
GOOD = FIXTURES / "report" / "tiny-qwen3-vl_autoquant_wfp8_afp8_lm_small_quant_manifest.json"
Change = Callable[[dict[str, Any]], None]


def _first(d: dict[str, Any]) -> dict[str, Any]:
    return next(iter(d["layer_sensitivity"].values()))


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "x_quant_manifest.json"
    path.write_text(json.dumps(doc))
    return path


def _error(tmp_path: Path, doc: dict[str, Any]) -> str:
    with pytest.raises(UserError) as e:
        manifest.load(_write(tmp_path, doc))
    return str(e.value)


@pytest.mark.parametrize("path", sorted(FIXTURES.rglob("*_quant_manifest.json")), ids=lambda p: p.name)
def test_written_manifests_load_exactly_as_stored(path: Path) -> None:
    m = manifest.load(path)
    assert m.to_json_dict() == json.loads(path.read_text())
    assert manifest.dumps(m) == path.read_text()  # the same keys, order and values


def test_unknown_keys_are_kept(tmp_path: Path) -> None:
    doc = json.loads(GOOD.read_text())
    doc["from_a_newer_version"] = {"x": 1}
    _first(doc)["extra"] = [1, 2]
    doc["dataset"]["truncated_captions"] = 2
    assert manifest.load(_write(tmp_path, doc)).to_json_dict() == doc


@pytest.mark.parametrize("change,needles", [
    (lambda d: d.update(autoquant=[1]),
     ["'autoquant' must be an object", "autoquant: Input should be a valid dictionary", "got [1]"]),
    (lambda d: d.update(model="s"), ["'model' must be an object", "got 's'"]),
    (lambda d: d.update(frontier=[1]), ["frontier[0]: Input should be a valid dictionary"]),
    (lambda d: d.update(frontier=None), ["'frontier' must be a list", "got None"]),
    (lambda d: d.update(frontier=[{"target_bits": 8.0}]),
     ["frontier[0].modelopt_bits: Field required", "and 2 more"]),
    (lambda d: _first(d).update(scores=["x"]),
     ["].scores must be a list of finite numbers", "[0]: Input should be a valid number", "'x'"]),
    (lambda d: _first(d).update(costs=[float("inf")]), ["costs must be a list of finite numbers"]),
    (lambda d: _first(d).update(rank="1"), ["].rank must be a positive integer", "got '1'"]),
    (lambda d: _first(d).update(importance=True), ["].importance must be a finite number"]),
    (lambda d: _first(d).update(formats=["a"]), ["has 1 formats but 2 scores"]),
    (lambda d: d.update(layer_sensitivity={"g.quant_recipe": 5}),
     ["layer_sensitivity['g.quant_recipe'] must be an object", "got 5"]),
    (lambda d: d["scheme"].update(name=5), ["'scheme' must be an object with a string 'name'",
                                           "scheme.name: Input should be a valid string"]),
    (lambda d: d.pop("scheme"), ["scheme: Field required"]),
    (lambda d: d["dataset"].update(samples_used="16"), ["dataset.samples_used", "got '16'"]),
    (lambda d: d["versions"].update(torch=2), ["'versions' must map package names", "got 2"]),
    (lambda d: d.update(score_cache={"hit": "yes"}), ["score_cache.hit", "valid boolean"]),
])
def test_a_wrong_shape_names_the_field(tmp_path: Path, change: Change, needles: list[str]) -> None:
    doc = json.loads(GOOD.read_text())
    change(doc)
    message = _error(tmp_path, doc)
    assert "cannot be read" in message and str(tmp_path) in message
    assert "\n" not in message  # one paragraph
    for needle in needles:
        assert needle in message, message


def test_many_errors_are_summarised(tmp_path: Path) -> None:
    doc = json.loads(GOOD.read_text()) | {"model": 1, "dataset": 2, "quantization": 3, "autoquant": 4,
                                          "versions": 5}
    message = _error(tmp_path, doc)
    assert "'model' must be an object" in message and "and 2 more" in message


def test_a_long_value_is_shortened(tmp_path: Path) -> None:
    doc = json.loads(GOOD.read_text()) | {"autoquant": "x" * 500}
    message = _error(tmp_path, doc)
    assert "x" * 50 in message and "x" * 100 not in message


@pytest.mark.parametrize("version", [True, "1", 2])
def test_only_schema_version_one_is_read(tmp_path: Path, version: Any) -> None:
    doc = json.loads(GOOD.read_text()) | {"schema_version": version}
    assert "unknown schema_version" in _error(tmp_path, doc)


def test_a_directory_is_not_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a directory"):
        manifest.load(tmp_path)


# --- The earlier runner's shape, checked before it is converted ------------------------------


def test_legacy_manifests_still_convert(tmp_path: Path) -> None:
    m = manifest.load(write_legacy(tmp_path))
    assert m.legacy is True and m.scheme.name == legacy_doc()["scheme"]["name"]
    assert m.frozen_groups and all(g.rank >= 1 for g in m.layer_sensitivity.values())


@pytest.mark.parametrize("change,needles", [
    (lambda d: d["scheme"].update(auto_quantize_bits="8"),
     ["scheme.auto_quantize_bits: Input should be a valid number", "got '8'"]),
    (lambda d: d.update(model="x"), ["'model' must be an object"]),
    (lambda d: d.update(autoquant_state=[1]), ["'autoquant_state' must be an object"]),
    (lambda d: d["autoquant_state"].update(is_satisfied="yes"), ["autoquant_state.is_satisfied"]),
    (lambda d: _first(d).update(scores=[None]), ["].scores must be a list of finite numbers"]),
    (lambda d: d["scheme"].update(quant_formats=[1]), ["scheme.quant_formats"]),
])
def test_a_wrong_legacy_shape_names_the_field(tmp_path: Path, change: Change,
                                              needles: list[str]) -> None:
    doc = copy.deepcopy(legacy_doc())
    change(doc)
    with pytest.raises(UserError, match="cannot be read") as e:
        manifest.load(write_legacy(tmp_path, doc))
    for needle in needles:
        assert needle in str(e.value), str(e.value)


def test_legacy_constraints_of_another_shape_are_ignored(tmp_path: Path) -> None:
    doc = legacy_doc()
    doc["autoquant_state"]["constraints"] = ["effective_bits"]  # as before: not read
    assert manifest.load(write_legacy(tmp_path, doc)).autoquant.effective_bits_achieved is None
