"""``python -m layer_sensitivity dataset=image_captions`` end to end on the image-text embedded
model: the run records the modality and image settings, and image-text scores differ from
text-only scores of the same model (which way is not asserted: that is what is measured); compare
and evaluate of such runs; a mixed-format recipe on image-text data and its export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest

from layer_sensitivity import export, exported_checkpoint
from tests.helpers import FAST, all_runs, run_cli

pytestmark = pytest.mark.slow

VISION = ["model=tiny_qwen3_vl_vision", *FAST.split()]


def _manifest(out: Path) -> dict[str, Any]:
    (path,) = out.glob("*_quant_manifest.json")
    return json.loads(path.read_text())


def test_image_text_job_records_modality_and_scores_differ(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    # No model=: dataset=image_captions brings the vision-trained embedded model (the done-when).
    image = run_cli([*FAST.split(), "dataset=image_captions", f"hydra.run.dir={tmp_path}/image"],
                    store)
    assert image.returncode == 0, image.stderr[-3000:]
    text = run_cli([*VISION, f"hydra.run.dir={tmp_path}/text"], store)
    assert text.returncode == 0, text.stderr[-3000:]

    runs = {r.data.tags["mlflow.runName"]: r for r in all_runs(f"sqlite:///{store}")}
    (name,) = [n for n in runs if "image_text" in n]
    run = runs[name]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.runName"].endswith("image_text")
    params = run.data.params
    assert params["dataset.modality"] == "image_text"
    assert params["model"] == "tiny_qwen3_vl_vision"
    assert params["dataset.image_max_pixels"] == "9216"
    names = {a.path for a in mlflow.MlflowClient(f"sqlite:///{store}").list_artifacts(
        run.info.run_id)}
    assert "tiny-qwen3-vl-vision_autoquant_wfp8_afp8_lm_small_image_quant_manifest.json" in names

    im, tx = _manifest(tmp_path / "image"), _manifest(tmp_path / "text")
    d = im["dataset"]
    assert d["modality"] == "image_text" and tx["dataset"]["modality"] == "text"
    assert d["images"]["max_pixels"] == 9216 and d["images"]["vision_tokens"] == 4 * 9
    assert 0 < d["images"]["caption_tokens"] < d["real_tokens"]  # image and prompt not scored
    assert im["layer_sensitivity"].keys() == tx["layer_sensitivity"].keys()
    scores = {h: g["importance"] for h, g in im["layer_sensitivity"].items()}
    assert min(scores.values()) > 0
    assert scores != {h: g["importance"] for h, g in tx["layer_sensitivity"].items()}
    assert "image_text" in (tmp_path / "image" / "layer-sensitivity-report.md").read_text()

    # compare logs the rank agreement of the text-only and image-text runs as one comparison
    ids = ",".join(r.info.run_id for r in runs.values())
    cmp = run_cli(["--run-ids", ids], store, module="layer_sensitivity.cli.compare")
    assert cmp.returncode == 0, cmp.stderr[-3000:]
    assert "Rankings agree at Spearman" in cmp.stdout
    (compared,) = [r for r in all_runs(f"sqlite:///{store}")
                   if r.data.tags["mlflow.runName"] == "compare 2 runs"]
    assert -1.0 <= compared.data.metrics["spearman_min"] < 1.0  # the rankings are not identical

    # its recipes evaluate on held-out image-text pairs (the val images, disjoint)
    ev = run_cli(["--run-id", run.info.run_id, "--keep", "0.5", "--draws", "2", "--ground-truth",
                  "none", "--max-eval-samples", "8"], store, module="layer_sensitivity.cli.evaluate")
    assert ev.returncode == 0, ev.stderr[-3000:]
    (evaluated,) = [r for r in all_runs(f"sqlite:///{store}")
                    if r.data.tags["mlflow.runName"] == f"evaluate {name}"]
    assert evaluated.data.params["evaluate.eval_captions"] == "held-out image-text pairs"
    assert evaluated.data.metrics["eval/guided_kl_test"] > 0


@pytest.mark.parametrize(("args", "needle"), [
    (["model=tiny_qwen3_vl", "dataset=image_captions"], "no preprocessor_config.json"),  # text-only
    (["model=tiny_qwen3_vl_vision", "dataset=image_captions", "dataset.images_dir=/no/such/dir"],
     "Image folder '/no/such/dir' does not exist"),
])
def test_bad_image_input_exits_2_before_any_run(tmp_path: Path, args: list[str],
                                                needle: str) -> None:
    store = tmp_path / "mlflow.db"
    proc = run_cli([*args, f"hydra.run.dir={tmp_path}/out"], store)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    assert not store.exists() or not all_runs(f"sqlite:///{store}")


def test_training_script_smoke_run_makes_a_checkpoint_with_its_processor(tmp_path: Path) -> None:
    """scripts/make_tiny_qwen3vl_vision.py with two steps: a checkpoint the image-text dataset
    accepts (processor, chat template) and whose chats run through the model."""
    import importlib.util

    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from layer_sensitivity import image_captions as ic
    from tests.helpers import ROOT, SHAPES

    spec = importlib.util.spec_from_file_location(
        "make_tiny_qwen3vl_vision", ROOT / "scripts" / "make_tiny_qwen3vl_vision.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "ckpt"
    report = script.main(["--steps", "2", "--out", str(out)])
    loss = report["held_out_caption_loss"]
    assert report["steps"] == 2 and report["image_captions"]["held_out"] == 40
    assert loss["with_image"] < loss["untrained"]
    ic.check_image_support(out)
    data = ic.read_image_captions(SHAPES / "captions_val.json", SHAPES / "images", 2)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    settings = ic.ImageSettings(script.PROMPT, script.MIN_PIXELS, script.MAX_PIXELS)
    [batch] = ic.build_batches(data, tok, ic.load_image_processor(out), settings, 2, 128)
    model = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True).eval()
    with torch.no_grad():
        assert torch.isfinite(model(**batch, use_cache=False).loss)


def test_mixed_recipe_on_image_text_pairs_and_its_export(tmp_path: Path) -> None:
    """``recipe --formats fp8,int4`` with ``dataset=image_captions``: int4's stored image-text
    scores are reused (the key the image-text sensitivity job stored), fp8 is searched, and the mix
    is measured on held-out image-text pairs; the run records the modality as sensitivity runs do.
    Then ``export`` of that recipe: calibrated on the run's chats, verified on held-out image-text
    chats through the file's own vision tower (unquantized), processor files carried along."""
    store, cache = tmp_path / "mlflow.db", tmp_path / "cache"
    data = [*FAST.split(), "dataset=image_captions", f"autoquant.score_cache_dir={cache}"]
    single = run_cli([*data, "quant_pair=int4", "tracking.enabled=false",
                      f"hydra.run.dir={tmp_path}/int4"], tmp_path / "unused.db")
    assert single.returncode == 0, single.stderr[-3000:]
    proc = run_cli(["--formats", "fp8,int4", "--effective-bits", "6", *data,
                    f"hydra.run.dir={tmp_path}/mixed"], store, module="layer_sensitivity.cli.recipe")
    assert proc.returncode == 0, proc.stderr[-3000:]

    (run,) = all_runs(f"sqlite:///{store}")
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.runName"] == "mixed/fp8+int4/6bits image_text"
    assert run.data.params["dataset.modality"] == "image_text"
    assert run.data.params["dataset.image_max_pixels"] == "9216"
    doc = _manifest(tmp_path / "mixed")
    assert doc["scheme"]["name"].endswith("_lm_small_image")
    assert doc["dataset"]["modality"] == "image_text"
    assert doc["dataset"]["images"]["vision_tokens"] == 4 * 9
    stored = _manifest(tmp_path / "int4")["score_cache"]
    scores = doc["mixed"]["single_format_scores"]
    assert scores["wint4_afp16"] == {**stored, "hit": True}  # the image-text state, reused
    assert scores["wfp8_afp8"]["hit"] is False and doc["mixed"]["composed"] is True
    # held-out quality on pairs of other images (the val file), against INT4 alone at equal bits
    assert run.data.metrics["run/heldout_kl_mixed"] > 0
    assert run.data.metrics["run/heldout_kl_best_single"] > 0
    note = run.data.tags["mlflow.note.content"]
    assert "Held-out KL (test image-text pairs" in note, note
    assert "image-caption chats" in (tmp_path / "mixed" / "mixed-recipe-report.md").read_text()

    ckpt = tmp_path / "ckpt"
    exp = run_cli(["--run-id", run.info.run_id, "--recipe", "mixed_wfp8_afp8+wint4_afp16_6bits",
                   "--out", str(ckpt), "--max-eval-samples", "8"], store,
                  module="layer_sensitivity.cli.export")
    assert exp.returncode == 0, exp.stderr[-3000:]
    (exported,) = [r for r in all_runs(f"sqlite:///{store}")
                   if r.data.tags["mlflow.runName"] == "export mixed_wfp8_afp8+wint4_afp16_6bits"]
    assert exported.data.params["export.eval_captions"] == "held-out image-text pairs"
    m = exported.data.metrics
    assert m["export/max_logit_error"] <= export.LOGIT_TOLERANCE
    assert 0 < m["export/kl"] == pytest.approx(m["export/recipe_kl"], rel=0.05)
    hf = json.loads((ckpt / export.HF_QUANT_CONFIG).read_text())
    assert not [k for k in exported_checkpoint.layer_algos(hf) if "visual" in k]
    # complete: the exported directory alone turns an image and caption into the same chat batch
    import torch
    from transformers import AutoTokenizer

    from layer_sensitivity import image_captions as ic
    from tests.helpers import SHAPES

    data = ic.read_image_captions(SHAPES / "captions_val.json", SHAPES / "images", 2)
    settings = ic.ImageSettings("Describe the picture.", 1024, 9216)
    source = Path(doc["model"]["id"])
    batches = [ic.build_batches(data, ic.with_chat_template(
        AutoTokenizer.from_pretrained(d, local_files_only=True), d), ic.load_image_processor(d),
        settings, 2, 128)[0] for d in (source, ckpt)]
    assert batches[0].keys() == batches[1].keys()
    assert all(torch.equal(batches[0][k], batches[1][k]) for k in batches[0])
