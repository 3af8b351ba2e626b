"""The sensitivity entry point end to end on the embedded model, with a real MLflow store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from .conftest import ROOT, finished_runs, run_cli, tool_env

FAST = ["dataset.max_calib_samples=8", "autoquant.batch_size=4"]
LM_GROUPS = 4 * 4 + 1  # per decoder layer: qkv, o_proj, gate/up, down_proj; plus lm_head


def _only_run(store: Path) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def _manifest(run: mlflow.entities.Run, store: Path, tmp_path: Path) -> dict:
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    names = [a.path for a in client.list_artifacts(run.info.run_id)]
    (name,) = [n for n in names if n.endswith("_quant_manifest.json")]
    local = client.download_artifacts(run.info.run_id, name, str(tmp_path))
    return json.loads(Path(local).read_text())


def _mlflow_run(tmp_path: Path, *params: str) -> subprocess.CompletedProcess[str]:
    """``mlflow run <repo> -e sensitivity -P ... --env-manager local`` into tmp_path/mlflow.db."""
    args = [a for p in params for a in ("-P", p)]
    return subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "sensitivity", *args,
         "--env-manager", "local"],
        env=tool_env(tmp_path / "mlflow.db"), capture_output=True, text=True, timeout=600,
        cwd=tmp_path)


def test_mlflow_run_sensitivity_logs_one_complete_run(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    proc = _mlflow_run(tmp_path, "quant_pair=fp8",
                       f"overrides=hydra.run.dir={tmp_path}/out dataset.max_calib_samples=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _only_run(store)
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["quant_pair"] == "fp8"  # logged by `mlflow run` itself
    assert p["quant_pair.name"] == "wfp8_afp8"
    assert (p["quant_pair.weight"], p["quant_pair.activation"]) == ("fp8", "fp8")
    assert p["resolved.modelopt_format"] == "FP8_DEFAULT_CFG"
    assert p["dataset.size"] == "small" and p["resolved.samples"] == "8"
    assert float(p["resolved.effective_bits_requested"]) == 8.0
    assert float(p["resolved.effective_bits_modelopt"]) > 8.0  # vision weights count at 16 bits
    for key in ("autoquant.method", "autoquant.score_size", "dataset.calib_seq_len",
                "autoquant.batch_size", "model.name", "model.path", "resolved.dtype",
                "resolved.device", "quant_granularity.name", "dataset.name"):
        assert key in p, key
    m = run.data.metrics
    sens = {k: v for k, v in m.items() if k.startswith("sensitivity/")}
    assert len(sens) == LM_GROUPS
    assert "sensitivity/lm_head" in sens
    assert not any("visual" in k for k in sens)
    for key in ("total_score", "effective_bits_achieved", "constraint_satisfied",
                "num_layer_groups", "seconds/load", "seconds/autoquant", "seconds/reports",
                "seconds/calibration_data"):
        assert key in m, key
    assert m["num_layer_groups"] == LM_GROUPS and m["constraint_satisfied"] == 1.0
    tags = run.data.tags
    for key in ("version.torch", "version.transformers", "version.modelopt", "version.mlflow",
                "device", "model.fingerprint"):
        assert tags.get(key), key
    assert run.inputs.dataset_inputs[0].dataset.name == "bundled-captions"
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"layer-sensitivity-report.md", "layer-sensitivity-report.json",
            "composed_config.yaml",
            "tiny-qwen3-vl_autoquant_wfp8_afp8_lm_small_quant_manifest.json"} <= names
    manifest = _manifest(run, store, tmp_path)
    scores = [s["importance"] for s in manifest["layer_sensitivity"].values()]
    assert any(s > 0 for s in scores) and len(set(scores)) > LM_GROUPS // 2
    assert manifest["dataset"]["samples_used"] == 8
    assert manifest["quantization"]["pair"] == "wfp8_afp8"
    assert manifest["model"]["fingerprint"] == tags["model.fingerprint"]
    for h, s in manifest["layer_sensitivity"].items():
        assert m["sensitivity/" + h.removesuffix(".quant_recipe")] == pytest.approx(s["importance"])


def test_bad_input_through_mlflow_run_fails_the_run(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    proc = _mlflow_run(tmp_path, "effective_bits=3", f"overrides=hydra.run.dir={tmp_path}/out")
    assert proc.returncode != 0
    assert "autoquant.effective_bits=3 is out of reach" in proc.stderr
    assert finished_runs(store) == []
    assert _only_run(store).info.status == "FAILED"


@pytest.mark.parametrize("overrides,pair,method", [
    (["quant_pair=int8"], "wint8_aint8", "gradient"),
    (["quant_pair=int4"], "wint4_afp16", "gradient"),
    (["autoquant.method=kl_div"], "wfp8_afp8", "kl_div"),
])
def test_pairs_and_methods_run_end_to_end(tmp_path: Path, overrides: list[str], pair: str,
                                          method: str) -> None:
    store = tmp_path / "mlflow.db"
    proc = run_cli([*overrides, *FAST, f"hydra.run.dir={tmp_path}/out"], store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _only_run(store)
    assert run.info.status == "FINISHED"
    assert run.data.params["quant_pair.name"] == pair
    assert run.data.params["autoquant.method"] == method
    manifest = _manifest(run, store, tmp_path)
    scores = [s["importance"] for s in manifest["layer_sensitivity"].values()]
    assert len(scores) == LM_GROUPS and len(set(scores)) > 1 and max(scores) > 0


def test_large_dataset_and_user_captions(tmp_path: Path) -> None:
    captions = tmp_path / "mine.txt"
    captions.write_text("".join(f"caption number {i} about a red bus near a park\n\n"
                                for i in range(600)))
    store = tmp_path / "mlflow.db"
    proc = run_cli(["dataset.size=large", f"dataset.captions_path={captions}",
                    "dataset.name=my-captions", "autoquant.batch_size=64",
                    "autoquant.score_size=64", "autoquant.effective_bits=12",
                    f"hydra.run.dir={tmp_path}/out"], store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _only_run(store)
    manifest = _manifest(run, store, tmp_path)
    d = manifest["dataset"]
    assert (d["size"], d["samples_used"], d["samples_available"]) == ("large", 512, 600)
    assert d["batches"] == 8 and d["score_batches"] == 1 and d["name"] == "my-captions"
    assert run.inputs.dataset_inputs[0].dataset.name == "my-captions"
    assert 8.0 <= manifest["autoquant"]["effective_bits_achieved"] <= 12.0 + 1e-6
    assert manifest["scheme"]["effective_bits_requested"] == 12.0


def _bad(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    store = tmp_path / "mlflow.db"
    proc = run_cli([*overrides, f"hydra.run.dir={tmp_path}/out"], store)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert finished_runs(store) == []
    return proc


def test_missing_model_dir(tmp_path: Path) -> None:
    proc = _bad(tmp_path, f"model.path={tmp_path}/nope")
    assert f"Model directory '{tmp_path}/nope'" in proc.stderr and "model.path" in proc.stderr


def test_missing_captions_file(tmp_path: Path) -> None:
    proc = _bad(tmp_path, f"dataset.captions_path={tmp_path}/none.txt")
    assert f"'{tmp_path}/none.txt' does not exist" in proc.stderr


def test_empty_captions_file(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    proc = _bad(tmp_path, f"dataset.captions_path={tmp_path}/empty.txt")
    assert "has no captions" in proc.stderr


def test_target_below_format_names_the_minimum(tmp_path: Path) -> None:
    proc = _bad(tmp_path, "quant_pair=int4", "autoquant.effective_bits=3.5")
    assert "effective_bits=3.5" in proc.stderr and "between 4 bits" in proc.stderr


@pytest.mark.parametrize("override,name", [
    ("autoquant.batch_size=0", "autoquant.batch_size=0"),
    ("dataset.max_calib_samples=-1", "dataset.max_calib_samples=-1"),
    ("autoquant.score_size=0", "autoquant.score_size=0"),
    ("dataset.calib_seq_len=0", "dataset.calib_seq_len=0"),
])
def test_non_positive_sizes(tmp_path: Path, override: str, name: str) -> None:
    assert name in _bad(tmp_path, override).stderr


def test_unknown_pair_is_a_compose_error(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    proc = run_cli(["quant_pair=w3a3", f"hydra.run.dir={tmp_path}/out"], store)
    assert proc.returncode != 0
    assert "quant_pair/w3a3" in proc.stderr and "wfp8_afp8" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert finished_runs(store) == []
