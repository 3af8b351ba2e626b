"""model.init=random end to end on a small shape, and the planner's dry run of a real-size preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from layer_sensitivity import paths, planner
from layer_sensitivity.model import checkpoint, digest, loader, random_init, scope
from layer_sensitivity.schema import ModelConfig, ModelInit, SensitivityConfig

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(paths.asset("tiny-qwen3-vl"))


def small_config() -> dict:
    """The embedded model's architecture values (its config.json), shapes only."""
    values = json.loads((TINY / "config.json").read_text())
    for key in ("dtype", "transformers_version"):
        values.pop(key, None)
    return values


def small_random() -> ModelConfig:
    return ModelConfig(name="small-random", path=None, config=small_config(), init=ModelInit.random,
                       device="cpu")


def test_random_init_is_seeded_and_marked() -> None:
    cfg = small_random()
    planned = checkpoint.resolve(cfg)
    assert planned.random_init is not None
    directory = planned.random_init.write()
    assert directory == planned.path == planned.random_init.write()  # created once, found again
    assert planned.fingerprint == digest.fingerprint(directory) == checkpoint.resolve(cfg).fingerprint
    assert json.loads((directory / digest.RANDOM_INIT_MARKER).read_text()) == {
        "init": "random", "seed": random_init.RANDOM_INIT_SEED, "tokenizer": "embedded"}
    assert not list(directory.glob("*.safetensors"))
    first, second = loader.load(cfg, directory, "cpu"), loader.load(cfg, directory, "cpu")
    trained = loader.load(ModelConfig(path=str(TINY)), TINY, "cpu")
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    w = first.model.model.language_model.layers[0].mlp.down_proj.weight
    assert not torch.equal(w, trained.model.model.language_model.layers[0].mlp.down_proj.weight)
    assert 0.01 < float(w.std()) < 0.05  # transformers' initializer_range 0.02, not zeros
    assert scope.weight_counts(first.model, ["*visual*"]) == \
        scope.weight_counts(trained.model, ["*visual*"])
    # Random weights never share a fingerprint (score-cache key) with a real checkpoint.
    assert digest.fingerprint(directory) != digest.fingerprint(TINY)


def test_random_init_job_runs_end_to_end(tmp_path: Path) -> None:
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "small_random.yaml").write_text(yaml.safe_dump(
        {"name": "small-random", "path": None, "config": small_config()}))
    out = tmp_path / "out"
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "layer_sensitivity", "--config-dir", str(tmp_path / "conf"),
         "model=small_random", "model.init=random", "model.device=cpu", "dataset.size=small",
         "tracking=none", f"hydra.run.dir={out}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads(next(out.glob("*_quant_manifest.json")).read_text())
    assert manifest["model"]["name"] == "small-random"
    assert Path(manifest["model"]["id"]).name.startswith("small-random-")
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()

    # The plan made on the meta device names exactly the groups ModelOpt scored.
    plan = planner.plan_model(ModelConfig(name="small-random", path=None, config=small_config()),
                              format_bits=8.0, device="cpu")
    assert set(plan["groups"]["handles"]) == set(manifest["layer_sensitivity"])
    assert plan["groups"]["frozen"] == len(manifest["frozen_groups"])
    assert plan["quantizable_weights"]["in_scope"] == manifest["model"]["weights_in_scope"]
    assert plan["quantizable_weights"]["frozen"] == manifest["model"]["weights_frozen"]


def test_dry_run_of_the_4b_preset_writes_plan_json(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    data = yaml.safe_load((ROOT / "conf" / "model" / "qwen3_vl_4b.yaml").read_text())
    monkeypatch.delenv(data["path_env"], raising=False)
    cfg = SensitivityConfig()
    cfg.model = ModelConfig(name=data["name"], path=None, path_env=data["path_env"],
                            config=data["config"])
    cfg.dataset.captions_path = paths.asset("captions/captions.txt")
    plan = planner.dry_run(cfg, tmp_path / "dry")

    written = json.loads((tmp_path / "dry" / planner.PLAN_FILE).read_text())
    assert written == json.loads(json.dumps(plan))
    assert plan["groups"]["in_scope"] == 145
    assert plan["job"]["quant_pair"] == cfg.quant_pair.name
    assert plan["job"]["samples"] == cfg.dataset.size_samples[cfg.dataset.size.value]
    assert plan["job"]["calib_batches"] == -(-plan["job"]["samples"] // cfg.autoquant.batch_size)
    assert plan["bits"]["targets"][0]["requested"] == plan["bits"]["format_bits"]
    assert plan["memory_gib"]["peak"] > plan["memory_gib"]["weights"] > 8.0
    assert not list((tmp_path / "dry").glob("*.safetensors"))


@pytest.mark.parametrize("changes, message", [
    ({"max_memory": {0: "10GiB"}}, "device_map is null"),
    ({"device_map": "everywhere"}, "is not a device map"),
    ({"device_map": "auto", "max_memory": "10GiB"}, "not a map of device to size"),
    ({"device_map": "auto", "init": ModelInit.random, "config": {}}, "not supported with"),
])
def test_loader_options_are_checked_before_anything_loads(changes: dict, message: str) -> None:
    from layer_sensitivity.errors import UserError

    cfg = ModelConfig(path=str(TINY), **changes)
    with pytest.raises(UserError, match=message):
        checkpoint.resolve(cfg)
