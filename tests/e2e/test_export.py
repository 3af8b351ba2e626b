"""``export``: a run's recipe as a servable checkpoint, through ``mlflow run`` on the shared sweep's
fp8 run, and an fp8+int4 mix at 6 bits in-process; bad inputs exit 2 leaving nothing behind."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlflow
import pytest
from safetensors import safe_open

from layer_sensitivity import export, exported_checkpoint, mixed, tracking
from layer_sensitivity.catalogue import runtimes
from layer_sensitivity.schema import AutoQuantConfig, DatasetConfig, SensitivityConfig, TrackingConfig
from layer_sensitivity.tasks import recipe as recipe_task
from layer_sensitivity.tasks.export import export_run
from tests.e2e.test_mixed import _pair
from tests.helpers import SweepRun, all_runs, mlflow_run, run_cli

pytestmark = pytest.mark.slow
PARENT_TAG = "mlflow.parentRunId"


def _checkpoint_facts(directory: Path) -> tuple[dict[str, str], list[str]]:
    """module -> quant_algo from hf_quant_config.json; the vision tensors that carry scales."""
    hf = json.loads((directory / export.HF_QUANT_CONFIG).read_text())
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        vision_scaled = [k for k in keys if "visual" in k and "scale" in k]
        vision_int = [k for k in keys if "visual" in k and not f.get_tensor(k).is_floating_point()]
    return exported_checkpoint.layer_algos(hf), vision_scaled + vision_int


def test_export_fp8_keep_recipe_through_mlflow_run(swept: SweepRun, tmp_path: Path) -> None:
    child = swept.children["wfp8_afp8/default/small"].info.run_id
    out = tmp_path / "ckpt"
    proc = mlflow_run("export", {"run_id": child, "recipe": "keep_top_25pct", "out": str(out),
                                 "register_as": "tiny-fp8-keep25"}, swept.store, swept.base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "served by: TensorRT-LLM, vLLM, SGLang" in proc.stdout
    for name in ("config.json", export.HF_QUANT_CONFIG, "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json"):
        assert (out / name).is_file(), name
    algos, vision = _checkpoint_facts(out)
    assert algos == {"*": "FP8"} and not vision  # the vision tower is unquantized in the file
    client = mlflow.MlflowClient(swept.uri)
    (run,) = [r for r in all_runs(swept.uri) if r.data.tags.get(PARENT_TAG) == child
              and r.info.run_name == "export keep_top_25pct"]
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert m["export/max_logit_error"] <= export.LOGIT_TOLERANCE
    assert m["export/weight_error"] <= export.WEIGHT_TOLERANCE
    assert 0 < m["export/kl"] and m["export/kl"] == pytest.approx(m["export/recipe_kl"], rel=0.05)
    assert run.data.params["export.quant_algo"] == "FP8"
    (model,) = client.search_logged_models([run.info.experiment_id],
                                           filter_string=f"source_run_id = '{child}'")
    assert model.status.name == "READY" and model.params["pairs"] == "wfp8_afp8"
    assert model.params["recipe"] == "keep_top_25pct" and float(model.params["lm_bits"]) > 8
    assert {x.key for x in model.metrics} >= {"export/kl", "export/recipe_kl"}
    assert {f.path for f in client.list_logged_model_artifacts(model.model_id)} >= {
        "config.json", export.HF_QUANT_CONFIG, "model.safetensors"}
    (version,) = client.search_model_versions("name = 'tiny-fp8-keep25'")
    assert version.source == f"models:/{model.model_id}" and version.run_id == run.info.run_id
    # publish copies the exported checkpoint next to the run's published files
    proc = run_cli(["--run-id", child, "--root", str(tmp_path / "pub"), "--models", "true"],
                   swept.store, swept.base, module="layer_sensitivity.cli.publish")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (published,) = (tmp_path / "pub").rglob(f"checkpoints/{model.name}")
    assert (published / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    provenance = json.loads((published.parent.parent / "provenance.json").read_text())
    assert f"checkpoints/{model.name}/{export.HF_QUANT_CONFIG}" in json.dumps(provenance)


def test_bad_inputs_exit_2_and_leave_nothing(swept: SweepRun, tmp_path: Path) -> None:
    child = swept.children["wint8_aint8/default/small"].info.run_id
    before = len(all_runs(swept.uri))
    (tmp_path / "a-file").write_text("x")
    cases = {
        "not found": ["--run-id", "0" * 32, "--recipe", "keep_top_25pct"],
        "neither a recipe file": ["--run-id", child, "--recipe", "keep_top_77"],
        "Cannot write": ["--run-id", child, "--recipe", "keep_top_25pct",
                         "--out", str(tmp_path / "a-file" / "out")],
    }
    for expected, args in cases.items():
        out = [] if "--out" in args else ["--out", str(tmp_path / "never")]
        proc = run_cli([*args, *out], swept.store, swept.base,
                       module="layer_sensitivity.cli.export")
        assert proc.returncode == 2, (expected, proc.stderr[-2000:])
        assert expected in proc.stderr and "Traceback" not in proc.stderr, expected
    assert not (tmp_path / "never").exists() and len(all_runs(swept.uri)) == before


def test_export_of_an_fp8_int4_mix_is_mixed_precision(tmp_path: Path) -> None:
    """In-process (no subprocess): a tracked mixed run at 6 bits, exported with export_run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = SensitivityConfig(dataset=DatasetConfig(max_calib_samples=8),
                             autoquant=AutoQuantConfig(score_cache_dir=str(tmp_path / "cache")),
                             tracking=TrackingConfig(uri=uri, system_metrics=False))
    cfgs = [dataclasses.replace(base, quant_pair=_pair(p)) for p in ("wfp8_afp8", "wint4_afp16")]
    tracker = tracking.create(base.tracking)
    mixed_run = recipe_task.run_and_log(recipe_task.MixedRequest(cfgs, 6.0, tmp_path / "mixed",
                                                     strategy=mixed.DIRECT), tracker)
    (path,) = mixed_run.recipes
    r, model_id = export_run(tracking.run_store(uri), tracker, str(mixed_run.run_id), path.stem,
                             tmp_path / "ckpt", device="cpu")
    assert set(r.plan.serving.runtimes) == {runtimes.TRTLLM}  # vLLM's mix has no W4A16_AWQ
    assert r.quant_algo == runtimes.MIXED_PRECISION and r.verified
    algos, vision = _checkpoint_facts(tmp_path / "ckpt")
    assert set(algos.values()) == {"FP8", "W4A16_AWQ"} and not vision
    for module, algo in algos.items():  # q/k/v and gate/up share one format
        for a, b in (("q_proj", "k_proj"), ("q_proj", "v_proj"), ("gate_proj", "up_proj")):
            if module.endswith(a):
                assert algos[module.removesuffix(a) + b] == algo
    assert r.kl_export == pytest.approx(r.kl_recipe, rel=0.05) and r.kl_export > 0
    model = mlflow.MlflowClient(uri).get_logged_model(str(model_id))
    assert model.source_run_id == mixed_run.run_id and model.status.name == "READY"
    assert model.params["pairs"] == "wfp8_afp8 + wint4_afp16"
    assert model.params["quant_algo"] == runtimes.MIXED_PRECISION
