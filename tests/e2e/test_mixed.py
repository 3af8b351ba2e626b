"""Mixed-format recipes end to end on the embedded model: composed from stored single-format
scores equals a direct multi-format search, the recipes load into ``mtq.quantize``, their held-out
KL next to "INT4 with the most sensitive groups kept at 16 bits", and the ``recipe`` entry point
through ``mlflow run`` and on bad input."""

from __future__ import annotations

import copy
import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml

from layer_sensitivity import (
    budgets,
    calibration,
    evaluate,
    held_out,
    mixed,
    paths,
    pipeline,
    recipe_files,
    recipes,
)
from layer_sensitivity.manifest import Manifest
from layer_sensitivity.model import loader
from layer_sensitivity.reuse import Resources
from layer_sensitivity.schema import (
    AutoQuantConfig,
    DatasetConfig,
    Method,
    ModelConfig,
    Precision,
    PresetEdit,
    QuantPairConfig,
    SensitivityConfig,
    TrackingConfig,
)
from tests.helpers import FAST, all_runs, mlflow_run, run_cli

pytestmark = pytest.mark.slow

TINY_MODEL = Path(paths.asset("tiny-qwen3-vl"))
FORMATS = ("wfp8_afp8", "wint4_afp16")
BUDGETS = [5.0, 6.0, 7.0]
FP8, INT4 = "FP8_DEFAULT_CFG", "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"


def _pair(name: str) -> QuantPairConfig:
    d = yaml.safe_load((paths.CONF_DIR / "quant_pair" / f"{name}.yaml").read_text())
    return QuantPairConfig(**{**d, "weight": Precision(d["weight"]),
                              "activation": Precision(d["activation"]),
                              "edits": [PresetEdit(e) for e in d.get("edits") or []]})


def _cfgs(cache: Path, method: Method) -> list[SensitivityConfig]:
    base = SensitivityConfig(
        dataset=DatasetConfig(max_calib_samples=8),
        autoquant=AutoQuantConfig(method=method, score_cache_dir=str(cache)),
        tracking=TrackingConfig(enabled=False))
    return [dataclasses.replace(base, quant_pair=_pair(p)) for p in FORMATS]


@dataclasses.dataclass
class Runs:
    singles: dict[str, Manifest]  # pair -> sensitivity manifest (scores stored)
    composed: mixed.MixedResult
    direct: mixed.MixedResult
    composed_loads: int  # checkpoint loads during the composed run


def _runs(base: Path, method: Method) -> Runs:
    cfgs = _cfgs(base / "cache", method)
    # The single-format analyses a user runs first (sensitivity jobs): their scores get stored.
    singles = {c.quant_pair.name: pipeline.run(pipeline.plan(c), base / c.quant_pair.name).manifest
               for c in cfgs}
    resources = Resources(keep=True)
    composed = mixed.run(mixed.plan(cfgs, BUDGETS), base / "composed", resources)
    direct = mixed.run(mixed.plan(cfgs, BUDGETS, strategy=mixed.DIRECT), base / "direct")
    return Runs(singles, composed, direct, resources.loads)


@pytest.fixture(scope="module", params=[Method.gradient, Method.kl_div], ids=lambda m: m.value)
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return _runs(tmp_path_factory.mktemp(f"mixed-{request.param.value}"), request.param)


def _stats(doc: Manifest) -> dict[str, tuple[list[str], list[float], list[float]]]:
    return {h: (s.formats, s.scores, s.costs) for h, s in doc.layer_sensitivity.items()}


def test_composed_search_equals_direct_search(runs: Runs) -> None:
    """Same chosen format for every group and the same achieved bits at every budget; the
    composed run loaded no model, calibrated and scored nothing."""
    c, d = runs.composed.manifest, runs.direct.manifest
    assert c.mixed is not None and d.mixed is not None and c.score_cache is not None
    assert c.mixed.composed and not d.mixed.composed
    assert c.score_cache.hit and runs.composed_loads == 0
    assert all(e is not None and e.hit for e in (c.mixed.single_format_scores or {}).values())
    assert _stats(c) == _stats(d)  # ModelOpt's clipped scores and costs, group by group
    for pc, pd_ in zip(c.frontier, d.frontier, strict=True):
        assert pc.recipe == pd_.recipe
        assert pc.achieved_bits == pd_.achieved_bits
        assert pc.total_score == pd_.total_score
        assert pc.achieved_bits <= pc.target_bits + 1e-6
    for fc, fd in zip(runs.composed.recipes, runs.direct.recipes, strict=True):
        assert fc.name == fd.name and fc.read_bytes() == fd.read_bytes()


def test_scores_are_the_single_runs_clipped_to_be_monotone(runs: Runs) -> None:
    """Per group, the most compressed format keeps its own score (the INT4 run's), the next one
    gets min(its own, INT4's): ModelOpt's rule, so a mixed run is no per-format ranking."""
    fp8 = runs.singles["wfp8_afp8"].layer_sensitivity
    int4 = runs.singles["wint4_afp16"].layer_sensitivity
    clipped = 0
    for handle, s in runs.composed.manifest.layer_sensitivity.items():
        names = [recipes.format_name(f) for f in s.formats]
        assert names == [INT4, FP8, recipes.NONE]
        own4, own8 = int4[handle].scores[0], fp8[handle].scores[0]
        assert s.scores == [own4, min(own8, own4), 0]
        clipped += own8 > own4
    print(f"groups whose FP8 score was clipped to INT4's: {clipped}")


def test_composition_is_exact_when_scores_are_clipped() -> None:
    """Three formats, two of equal bits (fp8, int8: the plan refuses such a mix, the rule must
    still hold): ModelOpt clips many groups, and the composed state matches the direct one."""
    import modelopt.torch.quantization as mtq

    from layer_sensitivity import autoquant

    loaded = loader.load(ModelConfig(path=str(TINY_MODEL), device="cpu"), TINY_MODEL, "cpu")
    captions = calibration.read_captions(paths.asset("captions/captions.txt"), 8).lines
    batches = calibration.build_batches(captions, loaded.tokenizer, 4, 128)
    cfgs = [copy.deepcopy(c) for c in (mtq.FP8_DEFAULT_CFG, mtq.INT8_DEFAULT_CFG,
                                       mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG)]
    kw: dict[str, Any] = {"method": Method.gradient, "modelopt_bits": 16.0,
                          "frozen_patterns": ["*visual*"], "num_score_steps": len(batches)}
    singles = [autoquant.run(copy.deepcopy(loaded.model), batches, c, **kw) for c in cfgs]
    direct = autoquant.run_formats(copy.deepcopy(loaded.model), batches, cfgs, **kw)
    composed = autoquant.compose_states(singles, cfgs)
    clipped = 0
    for handle, d in direct["candidate_stats"].items():
        c = composed["candidate_stats"][handle]
        assert (c["formats"], c["scores"], c["costs"]) == (d["formats"], d["scores"], d["costs"])
        clipped += len(d["scores"]) > 2 and len(set(d["scores"])) < len(d["scores"])
    assert clipped >= 3
    for bits in (5.0, 7.0, 10.0):
        assert autoquant.resolve(composed, bits) == autoquant.resolve(direct, bits)


def test_mixed_recipes_split_formats_and_load_into_mtq_quantize(runs: Runs) -> None:
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization.nn import TensorQuantizer

    doc = runs.composed.manifest
    point = next(p for p in doc.frontier if p.target_bits == 6.0)
    assert point.achieved_bits <= 6.0 + 1e-6 and point.mix is not None
    assert point.mix[FP8].groups >= 1 and point.mix[INT4].groups >= 1
    path = next(f for f in runs.composed.recipes if f.name.endswith("_6bits.yaml"))
    assert path.name == "mixed_wfp8_afp8+wint4_afp16_6bits.yaml"
    meta = recipe_files.read_recipe(path, doc)
    assert meta.kind == recipes.MIXED and meta.lm_bits == pytest.approx(point.achieved_bits)
    loaded = loader.load(ModelConfig(path=str(TINY_MODEL), device="cpu"), TINY_MODEL, "cpu")
    captions = calibration.read_captions(paths.asset("captions/captions.txt"), 8).lines
    batches = calibration.build_batches(captions, loaded.tokenizer, 4, 128)

    def loop(m: Any) -> None:
        for b in batches:
            m(input_ids=b["input_ids"], attention_mask=b["attention_mask"])

    q = mtq.quantize(copy.deepcopy(loaded.model), recipe_files.load_recipe(path), loop)
    weights = {n.removesuffix(".weight_quantizer"): m for n, m in q.named_modules()
               if isinstance(m, TensorQuantizer) and n.endswith(".weight_quantizer")}
    sens = doc.layer_sensitivity
    for handle, label in point.recipe.items():
        for module in sens[handle].modules or []:
            wq = weights[module]
            assert wq.is_enabled == (recipes.format_name(label) != recipes.NONE), module
            if recipes.format_name(label) == INT4:
                assert wq.num_bits == 4 and wq.block_sizes.get(-1) == 128
            elif recipes.format_name(label) == FP8:
                assert tuple(wq.num_bits) == (4, 3)
    assert not any(m.is_enabled for n, m in weights.items() if "visual" in n)


def test_evaluate_mixed_against_keep_top_int4(runs: Runs) -> None:
    """Held-out KL of the mixed FP8/INT4 recipes next to INT4 with the most sensitive groups kept
    at 16 bits at the same bits. Measured (embedded model, 8 calibration captions): the mix is
    better at about 7 bits, not at 6 (see the printed table); both are far better than INT4
    everywhere. ``evaluate_manifest`` measures a mixed run's own recipes the same way."""
    doc = runs.composed.manifest
    int4 = runs.singles["wint4_afp16"]
    table = evaluate.evaluate_mixed(doc, int4, progress=False)
    mix = table[table["kind"] == recipes.MIXED].reset_index(drop=True)
    keep = table[table["kind"] == recipes.KEEP_TOP].reset_index(drop=True)
    everywhere = evaluate.evaluate(TINY_MODEL, budgets.keep_top(int4, headroom=[0.0]),
                                   held_out.calibration_captions(int4),
                                   held_out.held_out_captions(str(doc.dataset.path),
                                                              held_out.calibration_captions(doc),
                                                              TINY_MODEL),
                                   batch_size=4, seq_len=128, progress=False)["kl"].iloc[0]
    print(f"\n{doc.scheme.method}: INT4 everywhere KL {everywhere:.5f}")
    for m, k in zip(mix.itertuples(), keep.itertuples(), strict=True):
        print(f"budget {m.target_bits:g}: mixed {m.lm_bits:.4f} bits KL {m.kl:.5f} | keep-top INT4 "
              f"{k.lm_bits:.4f} bits ({k.kept} groups at 16) KL {k.kl:.5f}")
        assert k.lm_bits <= m.lm_bits + 1e-9 and m.lm_bits <= m.target_bits + 1e-6
        assert m.kl < everywhere and k.kl < everywhere
    assert list(mix["kl"]) == sorted(mix["kl"], reverse=True)  # more bits, less damage
    seven = mix["target_bits"] == 7.0
    assert (mix.loc[seven, "kl"].values <= keep.loc[seven, "kl"].values).all()
    own = evaluate.evaluate_manifest(doc, progress=False)
    assert list(own["kind"]) == [recipes.MIXED] * len(BUDGETS)
    assert list(own["kl"]) == list(mix["kl"])


# --- The entry point --------------------------------------------------------------------------


def _runs_in(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(store) as db:
        return int(db.execute("select count(*) from runs").fetchone()[0])


@pytest.mark.parametrize(("formats", "bits", "expected"), [
    ("fp8", "6", "names 1 format"),
    ("fp8,wfp8_afp8", "6", "fp8 and wfp8_afp8 are both pair wfp8_afp8"),
    ("fp8,int8", "8", "both cost 8 bits per weight"),
    ("fp8,nvfp4", "6", "cannot run on cpu"),
    ("fp8,int4", "3", "effective_bits=3 is out of reach"),
    ("fp8,int4", "[6,17]", "effective_bits=17 is out of reach"),
    ("fp8,int5", "6", "'int5' is not a quant pair"),
])
def test_bad_input_exits_2_before_the_model_loads(tmp_path: Path, formats: str, bits: str,
                                                  expected: str) -> None:
    store = tmp_path / "mlflow.db"
    proc = run_cli(["--formats", formats, "--effective-bits", bits, "model.device=cpu",
                    f"hydra.run.dir={tmp_path}/out"], store, module="layer_sensitivity.cli.recipe")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Loading weights" not in proc.stderr
    assert not (tmp_path / "out").exists() and _runs_in(store) == 0


def _recipe_run(store: Path) -> mlflow.entities.Run:
    (run,) = [r for r in all_runs(f"sqlite:///{store}")
              if r.data.tags.get("entry_point") == "recipe"]
    return run


def _recipe_file(store: Path, run: mlflow.entities.Run, dst: Path) -> Path:
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    (entry,) = [a for a in client.list_artifacts(run.info.run_id, "recipes")]
    return Path(client.download_artifacts(run.info.run_id, entry.path, str(dst)))


def test_mlflow_run_recipe_reuses_single_format_analyses(tmp_path: Path) -> None:
    """The issue's scenario: fp8 and int4 analysed first with the same data settings, then
    ``mlflow run -e recipe -P formats=fp8,int4 -P effective_bits=6`` only re-solves, and gives the
    recipe a direct search gives."""
    cache = tmp_path / "cache"
    data = f"{FAST} autoquant.score_cache_dir={cache}"
    for pair in ("fp8", "int4"):
        proc = run_cli([f"quant_pair={pair}", *data.split(), "tracking.enabled=false",
                        f"hydra.run.dir={tmp_path}/{pair}"], tmp_path / "unused.db")
        assert proc.returncode == 0, proc.stderr[-3000:]
    store = tmp_path / "mlflow.db"
    proc = mlflow_run("recipe", {"formats": "fp8,int4", "effective_bits": "6", "heldout": "false",
                                 "overrides": f"{data} hydra.run.dir={tmp_path}/mixed"},
                      store, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = _recipe_run(store)
    assert run.info.status == "FINISHED"
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["mixed.composed"] == "true" and tags["score_cache"] == "hit", tags
    assert "Loading weights" not in proc.stderr  # no model: the scores were stored
    assert not [k for k in metrics if k.startswith("run/heldout")]  # heldout=false: skipped
    assert "Held-out quality not measured" in tags["mlflow.note.content"]
    assert metrics["effective_bits_achieved"] <= 6.0 + 1e-6
    assert metrics[f"mixed/groups/{FP8}"] >= 1 and metrics[f"mixed/groups/{INT4}"] >= 1
    assert run.data.params["formats"] == "fp8,int4" and run.data.params["effective_bits"] == "6"
    composed = _recipe_file(store, run, tmp_path / "a")
    assert composed.name == "mixed_wfp8_afp8+wint4_afp16_6bits.yaml"
    artifacts = {a.path for a in mlflow.MlflowClient(f"sqlite:///{store}").list_artifacts(
        run.info.run_id, "figures")}
    assert artifacts == {"figures/mixed_formats.png"}

    direct_store = tmp_path / "direct.db"
    proc = mlflow_run("recipe", {"formats": "fp8,int4", "effective_bits": "6",
                                 "overrides": f"{data} autoquant.reuse_scores=false "
                                              f"hydra.run.dir={tmp_path}/direct"},
                      direct_store, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = _recipe_run(direct_store)
    assert run.data.tags["mixed.composed"] == "false" and run.data.tags["score_cache"] == "off"
    # held-out quality (default on): the mix against INT4 alone at equal bits (FP8 cannot reach 6)
    metrics = run.data.metrics
    assert metrics["run/heldout_kl_mixed"] > 0 and metrics["run/heldout_kl_best_single"] > 0
    assert abs(metrics["run/heldout_bits_best_single"] - metrics["effective_bits_achieved"]) <= 0.5
    note = run.data.tags["mlflow.note.content"]
    line = next(ln for ln in note.splitlines() if ln.startswith("Held-out KL"))
    assert f"{metrics['run/heldout_kl_mixed']:.4g}" in line and "int4" in line, note
    assert "held-out KL: mixed" in proc.stdout + proc.stderr  # the command's summary says it too
    direct = _recipe_file(direct_store, run, tmp_path / "b")
    assert yaml.safe_load(direct.read_text()) == yaml.safe_load(composed.read_text())
