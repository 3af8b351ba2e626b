"""Score reuse (hit without the model, miss), the bit-target frontier, and jobs sharing a process.

The score key itself (which ingredient changes it) is a unit test: tests/unit/test_pipeline.py.
Two expensive runs are shared: a tracked frontier job in a fresh process, and two jobs in one
process; the frontier job's scores are also the fresh-process reference for the shared one.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from layer_sensitivity import pipeline
from layer_sensitivity.cli.config_store import CONF_DIR
from layer_sensitivity.reuse import Resources
from layer_sensitivity.schema import SensitivityConfig
from tests.helpers import FAST, TINY_MODEL, all_runs, run_cli

pytestmark = pytest.mark.slow

LM_GROUPS = 4 * 4 + 1  # per decoder layer: qkv, o_proj, gate/up, down_proj; plus lm_head
TARGETS = [8, 10, 12, 14]


def _job(cache: Path, *overrides: str) -> SensitivityConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sensitivity", overrides=[*FAST.split(), "tracking=none",
                                                f"autoquant.score_cache_dir={cache}", *overrides])
    cfg.output_layout.dir = str(cache.parent / "out")  # ${hydra:runtime.output_dir} needs an app
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def _scores(m: dict[str, Any]) -> dict[str, float]:
    return {h: s["importance"] for h, s in m["layer_sensitivity"].items()}


def _run(cache: Path, out: Path, *overrides: str) -> tuple[dict[str, Any], Resources]:
    """One job in this process with resources of its own; returns its manifest and them."""
    resources = Resources()
    result = pipeline.run(pipeline.plan(_job(cache, *overrides)), out, resources)
    return result.manifest.to_json_dict(), resources  # as written


# --- Shared runs --------------------------------------------------------------------------------


@dataclass
class Frontier:
    base: Path
    proc: subprocess.CompletedProcess[str]
    manifest: dict[str, Any]


@pytest.fixture(scope="module")
def frontier(tmp_path_factory: pytest.TempPathFactory) -> Frontier:
    """``autoquant.effective_bits=[8,10,12,14]`` for fp8, tracked, in a fresh process."""
    base = tmp_path_factory.mktemp("frontier")
    proc = run_cli([*FAST.split(), f"autoquant.effective_bits=[{','.join(map(str, TARGETS))}]",
                    f"autoquant.score_cache_dir={base}/cache", f"hydra.run.dir={base}/out"],
                   base / "mlflow.db")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads(next((base / "out").glob("*_quant_manifest.json")).read_text())
    return Frontier(base, proc, manifest)


@dataclass
class OneProcess:
    resources: Resources
    manifests: dict[str, dict[str, Any]]  # by pair, in the order they ran
    cache: Path  # what autoquant.score_cache_dir pointed at (reuse was off)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> OneProcess:
    """int8 then fp8 in one process, as a sweep's jobs run: one model load, one tokenization."""
    base = tmp_path_factory.mktemp("one-process")
    shared = Resources(keep=True)
    manifests = {}
    for pair, override in (("wint8_aint8", "quant_pair=int8"), ("wfp8_afp8", "quant_pair=fp8")):
        job = _job(base / "cache", override, "autoquant.reuse_scores=false")
        result = pipeline.run(pipeline.plan(job), base / pair, shared)
        manifests[pair] = result.manifest.to_json_dict()
    return OneProcess(shared, manifests, base / "cache")


# --- Tests ----------------------------------------------------------------------------------------


def test_hit_reuses_scores_without_the_model_and_a_miss_recomputes(
        tmp_path: Path, one_process: OneProcess) -> None:
    cache = tmp_path / "cache"
    first, resources = _run(cache, tmp_path / "a")
    assert first["score_cache"]["hit"] is False and resources.loads == 1
    assert Path(first["score_cache"]["path"]).is_file()
    again, resources = _run(cache, tmp_path / "b", "autoquant.effective_bits=12")
    assert again["score_cache"] == {**first["score_cache"], "hit": True}
    assert resources.loads == 0  # a hit never loads the model
    assert _scores(again) == _scores(first)
    assert again["scheme"]["effective_bits_requested"] == 12.0
    assert 8.0 < again["autoquant"]["effective_bits_achieved"] <= 12.0 + 1e-6  # re-solved for 12
    miss, resources = _run(cache, tmp_path / "c", "autoquant.score_size=2")
    assert miss["score_cache"]["hit"] is False and resources.loads == 1
    assert miss["score_cache"]["key"] != first["score_cache"]["key"]
    assert _scores(miss) != _scores(first)
    # With reuse off (the shared process's fp8 job) the same scores come out, nothing stored.
    unstored = one_process.manifests["wfp8_afp8"]
    assert unstored["score_cache"] is None and not list(one_process.cache.glob("*.pth"))
    assert _scores(unstored) == pytest.approx(_scores(first), rel=1e-5)
    # Same shapes and headers, other weights (every matrix's rows permuted): a miss, new scores.
    permuted, _ = _run(cache, tmp_path / "d", f"model.path={_edited_checkpoint(tmp_path, 'rows')}")
    assert permuted["model"]["fingerprint"] == first["model"]["fingerprint"]  # headers identical
    assert permuted["score_cache"]["hit"] is False
    assert _scores(permuted) != _scores(first)


def _edited_checkpoint(base: Path, how: str) -> Path:
    """The embedded model with every weight matrix's rows reversed (``rows``) or one NaN (``nan``)."""
    import shutil

    from safetensors.torch import load_file, save_file

    out = base / f"ckpt-{how}"
    shutil.copytree(TINY_MODEL, out)
    tensors = load_file(out / "model.safetensors")
    for name, t in tensors.items():
        if t.ndim == 2 and how == "rows":
            tensors[name] = t.flip(0).contiguous()
        elif how == "nan" and name.endswith("o_proj.weight"):
            tensors[name] = t.clone().fill_(float("nan"))
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_a_checkpoint_with_nan_weights_is_refused_before_scoring(tmp_path: Path) -> None:
    from layer_sensitivity.errors import UserError

    nan = _edited_checkpoint(tmp_path, "nan")
    for reuse in ("true", "false"):
        resources = Resources()
        job = _job(tmp_path / "cache", f"model.path={nan}", f"autoquant.reuse_scores={reuse}")
        with pytest.raises(UserError, match="non-finite weights"):  # reuse on: in plan, unloaded
            pipeline.run(pipeline.plan(job), tmp_path / f"out-{reuse}", resources)
        assert resources.loads == (0 if reuse == "true" else 1)
        assert not list((tmp_path / "cache").glob("*.pth"))


def test_frontier_resolves_every_target_from_one_search(frontier: Frontier) -> None:
    m = frontier.manifest
    points = m["frontier"]
    assert [p["target_bits"] for p in points] == TARGETS
    achieved = [p["achieved_bits"] for p in points]
    scores = [p["total_score"] for p in points]
    assert all(p["satisfied"] for p in points)
    assert achieved == sorted(achieved) and achieved[0] == pytest.approx(8.0)
    assert all(a <= t + 1e-6 for a, t in zip(achieved, TARGETS, strict=True))
    # ModelOpt's solver spends most of each budget, so fewer groups stay quantized as it grows.
    quantized = [sum(not f.startswith("NONE") for f in p["recipe"].values()) for p in points]
    assert quantized[0] == LM_GROUPS and quantized == sorted(quantized, reverse=True)
    assert quantized[-1] < LM_GROUPS
    assert all(s > 0 for s in scores) and scores[0] == pytest.approx(m["autoquant"]["total_score"])
    assert m["scheme"]["effective_bits_requested"] == 8
    out = frontier.base / "out"
    assert "## Score versus bits" in (out / "layer-sensitivity-report.md").read_text()
    # one exported recipe per target, on disk and as artifacts
    recipes = {f"{pipeline.RECIPES_DIR}/frontier_{b}bits.yaml" for b in TARGETS}
    assert {p.relative_to(out).as_posix()
            for p in (out / pipeline.RECIPES_DIR).glob("frontier_*")} == recipes
    uri = f"sqlite:///{frontier.base / 'mlflow.db'}"
    (run,) = all_runs(uri)
    client = mlflow.MlflowClient(uri)
    history = client.get_metric_history(run.info.run_id, "frontier/effective_bits_achieved")
    assert sorted(h.step for h in history) == [t * 100 for t in TARGETS]
    assert {h.step: h.value for h in history}[1200] == pytest.approx(achieved[2])
    names = {a.path for a in client.list_artifacts(run.info.run_id, pipeline.RECIPES_DIR)}
    assert {n for n in names if "/frontier_" in n} == recipes


def test_one_process_loads_once_and_matches_a_fresh_process(one_process: OneProcess,
                                                            frontier: Frontier) -> None:
    assert (one_process.resources.loads, one_process.resources.tokenizations) == (1, 1)
    shared = one_process.manifests
    assert [m["quantization"]["pair"] for m in shared.values()] == ["wint8_aint8", "wfp8_afp8"]
    # fp8 ran second, on a copy of the model int8 had already quantized a copy of; its scores
    # equal a fresh process's (the frontier job: same data, scores do not depend on the targets).
    assert _scores(shared["wfp8_afp8"]) == pytest.approx(_scores(frontier.manifest), rel=1e-5)
    assert _scores(shared["wfp8_afp8"]) != pytest.approx(_scores(shared["wint8_aint8"]), rel=1e-3)
    assert all(len(_scores(m)) == LM_GROUPS for m in shared.values())
