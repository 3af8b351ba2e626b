"""Every CPU-capable precision pair end to end on the embedded tiny Qwen3-VL, plus overlays.

The pair jobs run in this process through the core (``job.run_job`` with the no-op tracker), all
sharing one loaded model as a sweep's jobs do; one tracked run and one refusal go through
``python -m layer_sensitivity``. Nothing is mocked: real ModelOpt AutoQuantize, real model, real
MLflow store.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from layer_sensitivity import catalogue, paths, report
from layer_sensitivity.cli.config_store import CONF_DIR, load_listing
from layer_sensitivity.reuse import Resources
from layer_sensitivity.schema import SensitivityConfig
from layer_sensitivity.tasks import sensitivity as job
from layer_sensitivity.tracking import NoopTracker
from tests.helpers import FAST, all_runs, run_cli

pytestmark = pytest.mark.slow

LM_GROUPS = 4 * 4 + 1  # per decoder layer: qkv, o_proj, gate/up, down_proj; plus lm_head
# The CPU-capable pairs, as the cpu_all sweep preset lists them (tests/unit/test_sweep.py checks
# that list against conf/quant_pair/); read here without composing every pair at collection.
CPU_PAIRS = str(OmegaConf.load(paths.CONF_DIR / "sweep" / "cpu_all.yaml")
                .hydra.sweeper.params.quant_pair).split(",")


@pytest.fixture(scope="module")
def shared() -> Iterator[Resources]:
    """One pristine model for every in-process job; each job gets its own copy."""
    resources = Resources(keep=True)
    yield resources
    assert resources.loads == 1


def _run_in_process(tmp_path: Path, resources: Resources, *overrides: str) -> dict[str, Any]:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        composed = compose("sensitivity", overrides=[*overrides, *FAST.split(), "tracking=none"])
    out = tmp_path / "out"
    composed.output_layout.dir = str(out)  # ${hydra:runtime.output_dir} needs a Hydra app
    cfg: SensitivityConfig = OmegaConf.to_object(composed)  # type: ignore[assignment]
    req = job.JobRequest(cfg=cfg, out_dir=out, config_yaml=OmegaConf.to_yaml(composed),
                         flat_config={})
    result = job.run_job(req, NoopTracker(), resources)
    on_disk = json.loads(next(out.glob("*_quant_manifest.json")).read_text())
    assert on_disk == json.loads(json.dumps(result.manifest.to_json_dict()))
    return on_disk


def _check_manifest(m: dict[str, Any], pair: str, overlay: str) -> None:
    listing = load_listing()
    p, g = listing.pairs[pair], listing.overlays[overlay]
    q = m["quantization"]
    assert (q["pair"], q["weight_dtype"], q["activation_dtype"]) == (
        pair, p.weight.value, p.activation.value)
    assert q["granularity"] == overlay
    quant_cfg = catalogue.build_quant_config(p, g)
    expected = catalogue.effective_quantizers(quant_cfg)
    assert q["weight_quantizer"] == expected["weight"]
    assert q["input_quantizer"] == expected["input"]
    assert q["input_quantizer"]["enabled"] == (p.activation.value != "fp16")
    # Real sensitivities for every language-model group, none for the frozen vision tower.
    sens = m["layer_sensitivity"]
    scores = [s["importance"] for s in sens.values()]
    assert len(scores) == LM_GROUPS and not any("visual" in h for h in sens)
    assert min(scores) > 0 and len(set(scores)) > LM_GROUPS // 2
    bits = catalogue.format_effective_bits(quant_cfg)
    assert m["scheme"]["effective_bits_requested"] == pytest.approx(bits)
    assert m["autoquant"]["satisfied"] is True
    assert m["autoquant"]["effective_bits_achieved"] <= bits + 1e-6
    name = catalogue.format_name(p, g)
    assert m["scheme"]["formats"] == [name]
    for s in sens.values():  # ModelOpt's label for a derived config is replaced by the catalogue's
        assert s["formats"][0].startswith(f"{name}(effective-bits: ") and s["chosen"]


@pytest.mark.parametrize("pair", CPU_PAIRS)
def test_cpu_pair_runs_end_to_end(pair: str, tmp_path: Path, shared: Resources,
                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="layer_sensitivity.tasks.sensitivity"):
        m = _run_in_process(tmp_path, shared, f"quant_pair={pair}")
    _check_manifest(m, pair, "default")
    md = (tmp_path / "out" / report.MARKDOWN_NAME).read_text()
    assert m["quantization"]["weight_quantizer"]["summary"] in md
    listed = load_listing().pairs[pair]
    warned = [r.getMessage() for r in caplog.records if "is experimental" in r.getMessage()]
    assert warned == ([catalogue.experimental_warning(listed)] if listed.experimental else [])


def test_weight_group64_runs_end_to_end(tmp_path: Path, shared: Resources) -> None:
    m = _run_in_process(tmp_path, shared, "quant_pair=wint4_aint8", "quant_granularity=w_group64")
    _check_manifest(m, "wint4_aint8", "w_group64")
    w = m["quantization"]["weight_quantizer"]
    assert (w["num_bits"], w["block_sizes"]) == (4, {"-1": 64, "type": "static"})
    js = json.loads((tmp_path / "out" / report.JSON_NAME).read_text())
    assert js["quantization"]["granularity"] == "w_group64"
    assert js["quantization"]["weight_quantizer"] == "int4, blocks of 64, static"
    assert js["quantization"]["weight_quantizer_settings"]["block_sizes"] == {"-1": 64, "type": "static"}


# --- Through the command line, tracked ---------------------------------------------------------


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return run_cli([*args, f"hydra.run.dir={tmp_path}/out/${{quant_pair.name}}/${{quant_granularity.name}}"],
                   tmp_path / "mlflow.db", cwd=tmp_path)


def test_experimental_pair_with_per_token_activations_is_tracked(tmp_path: Path) -> None:
    """CLI + MLflow: the warning, the tag, the run name and the effective settings as params."""
    proc = _cli(["quant_pair=wint8_afp8", "quant_granularity=a_per_token_dynamic", *FAST.split()],
                tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warning = catalogue.experimental_warning(load_listing().pairs["wint8_afp8"])
    assert warning and warning in proc.stdout + proc.stderr  # a log line (Hydra's console)
    (run,) = all_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "wint8_afp8/a_per_token_dynamic/small"
    assert run.data.tags["experimental"] == "true"
    p = run.data.params
    assert (p["quant_pair"], p["resolved.quant_pair"]) == ("wint8_afp8", "wint8_afp8")
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
    assert mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(
        run.info.run_id).data.tags["output_dir"] == str(out)


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``quant_pair=nvfp4`` on this CPU-only machine, run dir nested as the default one is."""
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only refusal")
    base = tmp_path_factory.mktemp("cuda-only")
    return base, _cli(["quant_pair=nvfp4"], base)


def test_cuda_only_pair_is_refused_cleanly_by_the_cli(
        refused: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    base, proc = refused
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert "quant_pair=wfp4_afp4" in line and "cannot run on cpu" in line
    assert "wint8_aint8 (int8)" in line
    store = base / "mlflow.db"
    if store.exists():  # refused before any run was started
        with sqlite3.connect(store) as db:
            assert db.execute("select count(*) from runs").fetchone()[0] == 0
    out = base / "out"
    assert not (out / "wfp4_afp4" / "default").exists()  # Hydra's run dir is removed again
    assert not [p for p in out.rglob("*") if not p.is_dir()]


def test_a_refused_job_leaves_no_empty_folders(
        refused: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    assert not (refused[0] / "out").exists()
