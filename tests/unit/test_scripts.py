"""Scripts run in-process: scripts/gpu_smoke.py's report (planned next to measured memory) and
scripts/measure_job.py's recorder. The shell wrapper's arguments are checked in
tests/e2e/test_gpu_smoke_args.py."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str):  # noqa: ANN202 - a module loaded from scripts/
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _measured(loaded: float, calibration: float, scoring: float, allocated: float,
              reserved: float) -> dict:
    return {"events": {"model_loaded": {"cuda_allocated_gib": loaded},
                       "calibration": {"cuda_allocated_peak_gib": calibration, "seconds": 3.0},
                       "scoring": {"cuda_allocated_peak_gib": scoring, "seconds": 7.0}},
            "phases": {"autoquant": {"seconds": 10.5}, "reports": {"seconds": 1.0}},
            "job": {"cuda_allocated_peak_gib": allocated, "cuda_reserved_peak_gib": reserved}}


def test_report_sets_each_planned_term_next_to_the_measured_one() -> None:
    smoke = _script("gpu_smoke")
    planned = {"weights": 4.0, "quantizers": 0.5, "checkpointed_inputs": 0.1, "logits": 1.0,
               "embedding_grad": 0.5, "layer_activations": 0.2, "output_diffs": 0.1, "peak": 6.0}
    measured = _measured(loaded=4.2, calibration=5.0, scoring=7.2, allocated=7.2, reserved=8.0)
    rows = {label: (p, m) for label, p, m in smoke.term_rows(planned, measured)}
    assert rows["weights (allocated after the model loads)"] == (4.0, 4.2)
    assert rows["scoring above the weights (peak - weights)"] == pytest.approx((2.0, 3.0))
    assert rows["whole-job peak, reserved"] == (6.0, 8.0)
    assert rows["logits"] == (1.0, None)  # one run cannot separate it: planned only
    phase = smoke.Phase("random_2b", status="ok", seconds=12.0, peak_gib=7.2, reserved_gib=8.0,
                        estimate_gib=6.0, planned=planned, measured=measured)
    doc = {"gpu": {"name": "Test GPU", "memory_gib": 80.0},
           "versions": {"torch": "x", "cuda": "y"}, "batch_size": 4, "seq_len": 128,
           "total_seconds": 30.0, "phases": [dataclasses.asdict(phase)]}
    text = smoke.render(doc)
    assert "| random_2b | ok | 12.0 | 7.20 | 8.00 | 6.00 | 1.20 |" in text
    assert "| weights (allocated after the model loads) | 4.00 | 4.20 | 1.05 |" in text
    assert "| scoring above the weights (peak - weights) | 2.00 | 3.00 | 1.50 |" in text
    assert "| logits | 1.00 |  |  |" in text
    assert "autoquant.calibration 3.0, autoquant.scoring 7.0" in text
    assert "fixed padding" in text
    assert smoke.exit_status([phase, smoke.Phase("random_4b")]) == 0
    assert smoke.exit_status([smoke.Phase("random_2b", status="failed")]) == 1


def test_measure_job_keeps_peaks_across_modelopts_reset_and_splits_scoring() -> None:
    measure = _script("measure_job")
    rec = measure.Recorder()
    with rec.phase("calibration_data"):
        pass
    with rec.phase("autoquant"):
        rec.model_loaded()
        rec.modelopt_reset()  # ModelOpt's call when scoring starts
    report = rec.report()
    assert set(report["phases"]) == {"calibration_data", "autoquant"}
    assert {"calibration", "scoring", "model_loaded"} <= set(report["events"])
    assert report["phases"]["autoquant"]["seconds"] >= report["events"]["scoring"]["seconds"]
    if report["rss_peak_resettable"]:
        assert report["job"]["rss_peak_gib"] >= report["phases"]["autoquant"]["rss_peak_gib"] > 0


def test_modality_table_prints_ranks_spearman_and_movers() -> None:
    """scripts/modality_table.py's table from three manifests (no model run): the image-text run
    here reverses the text ranking, so Spearman is -1 and the ends move most."""
    import copy
    import json

    from layer_sensitivity import compare

    m = _script("modality_table")
    doc = json.loads((ROOT / "tests/unit/fixtures/report"
                      / "tiny-qwen3-vl_autoquant_wfp8_afp8_lm_small_quant_manifest.json").read_text())
    handles = list(doc["layer_sensitivity"])
    runs = {}
    for modality, order in (("text", handles), ("caption_text", handles),
                            ("image_text", handles[::-1])):
        run = copy.deepcopy(doc)
        for i, h in enumerate(order):
            run["layer_sensitivity"][h]["importance"] = float(len(order) - i)
        runs[modality] = run
    cmp = compare.compare(runs)
    text = m.table("fp8", cmp)
    assert "text vs image_text -1.000" in text and "text vs caption_text 1.000" in text
    assert text.count("\n| ") == len(handles) + 1  # header + one row per group
    first = cmp.groups["name"][handles[0]]
    assert f"{first} (1 -> {len(handles)})" in text.splitlines()[-1]
    numbers = m.numbers(cmp)
    assert numbers["spearman"]["image_text:text"] == pytest.approx(-1.0)
    assert m.amax_table("fp8", {"layers.0.mlp.down_proj": 1.5, "layers.1.mlp.down_proj": 0.5}) \
        .splitlines()[4] == "| layers.0.mlp.down_proj | 1.50 |"
    row = {"headroom": 0.1, "lm_bits_text": 8.5, "lm_bits_image_text": 8.5, "kl_text": 0.002,
           "kl_image_text": 0.001, "kept_text": ["a", "b"], "kept_image_text": ["a", "c"]}
    assert m.kl_table("fp8", [row], {"b": "L00.attn.o"}).splitlines()[-1] == \
        "| 10% | 8.50 / 8.50 | 2 / 2 | 0.002 | 0.001 | L00.attn.o | c |"


def test_make_shapes_captions_reproduces_the_bundled_set(tmp_path: Path) -> None:
    """scripts/make_shapes_captions.py is deterministic: it rewrites the bundled files byte for
    byte (captions JSON and every image)."""
    m = _script("make_shapes_captions")
    m.main(["--out", str(tmp_path)])
    bundled = ROOT / "src" / "layer_sensitivity" / "assets" / "shapes-captions"
    for name in ("captions_train.json", "captions_val.json"):
        assert (tmp_path / name).read_bytes() == (bundled / name).read_bytes(), name
    made = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert made == sorted(p.name for p in (bundled / "images").iterdir())
    assert all((tmp_path / "images" / n).read_bytes() == (bundled / "images" / n).read_bytes()
               for n in made)
    assert m.caption([("circle", "red", (0, 0)), ("circle", "red", (2, 1))]) == \
        "two red circles, at the top left and at the right."
