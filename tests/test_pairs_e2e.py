"""Every CPU-capable precision pair end to end on the embedded tiny Qwen3-VL, plus overlays.

The pair runs go in-process (compose with Hydra, then the CLI's ``run_job``) to keep the
suite fast; one tracked run and one refusal go through ``python -m layer_sensitivity``.
Nothing is mocked: real ModelOpt AutoQuantize, real model, real MLflow store.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from hydra import compose, initialize_config_dir

from layer_sensitivity import catalogue, report
from layer_sensitivity.cli.config_store import CONF_DIR
from layer_sensitivity.cli.sensitivity import run_job

from .conftest import tool_env

FAST = ["dataset.max_calib_samples=4", "autoquant.batch_size=2"]
LM_GROUPS = 4 * 4 + 1  # per decoder layer: qkv, o_proj, gate/up, down_proj; plus lm_head

PAIRS = catalogue.load_pairs()
CPU_PAIRS = [n for n, p in PAIRS.items() if not p.requires_cuda]
OVERLAYS = catalogue.load_granularities()


def _run_in_process(tmp_path: Path, *overrides: str) -> dict[str, Any]:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sensitivity", overrides=[*overrides, *FAST, "tracking=none"])
    cfg.output_layout.dir = str(tmp_path / "out")  # ${hydra:runtime.output_dir} outside Hydra
    result = run_job(cfg)
    on_disk = json.loads(next((tmp_path / "out").glob("*_quant_manifest.json")).read_text())
    assert on_disk == json.loads(json.dumps(result.manifest))
    return on_disk


def _check_manifest(m: dict[str, Any], pair: str, overlay: str) -> None:
    p, g = PAIRS[pair], OVERLAYS[overlay]
    q = m["quantization"]
    assert (q["pair"], q["weight_dtype"], q["activation_dtype"]) == (
        pair, p.weight.value, p.activation.value)
    assert q["granularity"] == overlay
    expected = catalogue.effective_quantizers(catalogue.build_quant_config(p, g))
    assert q["weight_quantizer"] == expected["weight"]
    assert q["input_quantizer"] == expected["input"]
    assert q["input_quantizer"]["enabled"] == (p.activation.value != "fp16")
    # Real sensitivities for every language-model group, none for the frozen vision tower.
    sens = m["layer_sensitivity"]
    scores = [s["importance"] for s in sens.values()]
    assert len(scores) == LM_GROUPS and not any("visual" in h for h in sens)
    assert min(scores) > 0 and len(set(scores)) > LM_GROUPS // 2
    bits = catalogue.format_effective_bits(catalogue.build_quant_config(p, g))
    assert m["scheme"]["effective_bits_requested"] == pytest.approx(bits)
    assert m["autoquant"]["satisfied"] is True
    assert m["autoquant"]["effective_bits_achieved"] <= bits + 1e-6
    name = catalogue.format_name(p, g)
    assert m["scheme"]["formats"] == [name]
    for s in sens.values():  # ModelOpt's label for a derived config is replaced by the catalogue's
        assert s["formats"][0].startswith(f"{name}(effective-bits: ") and s["chosen"]


@pytest.mark.parametrize("pair", CPU_PAIRS)
def test_cpu_pair_runs_end_to_end(pair: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _run_in_process(tmp_path, f"quant_pair={pair}")
    _check_manifest(m, pair, "default")
    md = (tmp_path / "out" / report.MARKDOWN_NAME).read_text()
    assert m["quantization"]["weight_quantizer"]["summary"] in md
    warned = "warning: quant_pair=" in capsys.readouterr().err
    assert warned == PAIRS[pair].experimental


def test_weight_group64_runs_end_to_end(tmp_path: Path) -> None:
    m = _run_in_process(tmp_path, "quant_pair=wint4_aint8", "quant_granularity=w_group64")
    _check_manifest(m, "wint4_aint8", "w_group64")
    w = m["quantization"]["weight_quantizer"]
    assert (w["num_bits"], w["block_sizes"]) == (4, {"-1": 64, "type": "static"})
    js = json.loads((tmp_path / "out" / report.JSON_NAME).read_text())
    assert js["quantization"]["granularity"] == "w_group64"
    assert js["quantization"]["weight_quantizer"] == "int4, blocks of 64, static"
    assert js["quantization"]["weight_quantizer_settings"]["block_sizes"] == {"-1": 64, "type": "static"}


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "layer_sensitivity", *args,
                           f"hydra.run.dir={tmp_path}/out/${{quant_pair.name}}/${{quant_granularity.name}}"],
                          cwd=tmp_path, env=tool_env(tmp_path / "mlflow.db"), capture_output=True,
                          text=True, timeout=600)


def test_experimental_pair_with_per_token_activations_is_tracked(tmp_path: Path) -> None:
    """CLI + MLflow: the warning, the tag, the run name and the effective settings as params."""
    proc = _cli(["quant_pair=wint8_afp8", "quant_granularity=a_per_token_dynamic", *FAST], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: quant_pair=wint8_afp8 is experimental" in proc.stderr
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "wint8_afp8/a_per_token_dynamic/small"
    assert run.data.tags["experimental"] == "true"
    p = run.data.params
    assert (p["quant_pair.weight"], p["quant_pair.activation"]) == ("int8", "fp8")
    assert p["quant_granularity.name"] == "a_per_token_dynamic"
    assert p["resolved.input_quantizer"] == "fp8_e4m3, per-token, dynamic"
    assert p["resolved.weight_quantizer"] == "int8, per-output-channel, static"
    out = tmp_path / "out" / "wint8_afp8" / "a_per_token_dynamic"
    m = json.loads(next(out.glob("*_quant_manifest.json")).read_text())
    _check_manifest(m, "wint8_afp8", "a_per_token_dynamic")
    assert (m["quantization"]["input_quantizer"]["type"],
            m["quantization"]["input_quantizer"]["block_sizes"]) == ("dynamic", {"-1": None})
    assert m["quantization"]["experimental"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cuda_only_pair_is_refused_cleanly_by_the_cli(tmp_path: Path) -> None:
    proc = _cli(["quant_pair=nvfp4"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    err = proc.stderr
    assert "quant_pair=wfp4_afp4" in err and "cannot run on cpu" in err
    assert "wint8_aint8 (int8)" in err
    assert not (tmp_path / "mlflow.db").exists()  # refused before any run was started
