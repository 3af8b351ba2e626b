"""Fault suite: bad input, interruptions, leftovers and secrets, through the real CLI.

Every bad input must give one paragraph on stderr naming the bad value, exit 2, no traceback, no
output folder left behind and nothing FINISHED in the tracking store. SIGINT / SIGTERM during
scoring must end the run KILLED (with error.txt, exit 130 / 143) and the identical job run again
must finish with the scores of an uninterrupted run. A job tracked on a real ``mlflow server``
through a URI with a password, then reported and published, must not write the password anywhere.
Expensive runs are shared through module fixtures; the bad-input commands run three at a time.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pytest

from layer_sensitivity import calibration, manifest, publish
from layer_sensitivity.tracking import store as tracking_store
from tests.helpers import (
    CAPTIONS,
    ROOT,
    TINY_MODEL,
    finished_runs,
    mount_tmpfs,
    release_read_only,
    tool_env,
)

pytestmark = pytest.mark.slow

FAST = ["dataset.max_calib_samples=4", "autoquant.batch_size=2"]
# Scoring long enough (seconds) for a signal to land in it: 128 captions in batches of 4.
SCORING = ["dataset.size=medium"]
GOOD_MANIFEST = (ROOT / "tests/unit/fixtures/report"
                 / "tiny-qwen3-vl_autoquant_wfp8_afp8_lm_small_quant_manifest.json")
SECRET = "s3cr3t"
TIMEOUT = 600
PARALLEL = 3  # bad-input commands at a time (each mostly imports; they wait on disk and CPU)


def _env(store: Path, **extra: str) -> dict[str, str]:
    return tool_env(store) | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} | extra


def _run(args: list[str], env: dict[str, str], cwd: Path,
         module: str = "layer_sensitivity") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


def _error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


def _files_under(*roots: Path) -> Iterator[Path]:
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            yield from (p for p in root.rglob("*") if p.is_file())


# --- Bad inputs ---------------------------------------------------------------------------------


@dataclass
class BadInput:
    args: list[str]
    needles: list[str]  # what the error paragraph must name (the bad value, the field)
    module: str = "layer_sensitivity"
    job: bool = True  # a sensitivity job: gets its own hydra.run.dir and the tiny settings
    hydra: bool = False  # refused by Hydra's config composition (its own message, not "error: ")
    untouched: list[Path] = field(default_factory=list)  # must not exist afterwards
    proc: subprocess.CompletedProcess[str] | None = None


def _damaged_checkpoints(base: Path) -> dict[str, Path]:
    """A corrupt config.json, a truncated model.safetensors, GPT-2 and LLaMA checkpoints."""
    import shutil

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    out = {name: base / name for name in ("corrupt", "truncated", "gpt2", "llama")}
    shutil.copytree(TINY_MODEL, out["corrupt"])
    (out["corrupt"] / "config.json").write_text('{"model_type": "qwen3_vl", "text_config": {')
    shutil.copytree(TINY_MODEL, out["truncated"])
    weights = (TINY_MODEL / "model.safetensors").read_bytes()
    (out["truncated"] / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=2048, n_positions=64)
                    ).save_pretrained(out["gpt2"])
    LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                 num_attention_heads=2, num_key_value_heads=2, vocab_size=2048)
                     ).save_pretrained(out["llama"])
    for name in ("gpt2", "llama"):
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(TINY_MODEL / f, out[name] / f)
    return out


def _bad_manifests(base: Path) -> dict[str, Path]:
    """Output directories each holding one manifest of the wrong shape."""
    good = json.loads(GOOD_MANIFEST.read_text())
    first = next(iter(good["layer_sensitivity"]))
    changes: dict[str, Callable[[dict[str, Any]], None]] = {
        "autoquant": lambda d: d.update(autoquant=[1]),
        "model": lambda d: d.update(model="s"),
        "frontier": lambda d: d.update(frontier=[1]),
        "scores": lambda d: d["layer_sensitivity"][first].update(scores=["x"]),
    }
    dirs = {}
    for name, change in changes.items():
        doc = copy.deepcopy(good)
        change(doc)
        dirs[name] = base / f"manifest-{name}"
        dirs[name].mkdir()
        (dirs[name] / GOOD_MANIFEST.name).write_text(json.dumps(doc, indent=2))
    return dirs


def _logged_run(uri: str, manifest_doc: dict[str, Any], directory: Path) -> str:
    """A FINISHED run holding ``manifest_doc`` as its manifest artifact (made with MLflow's client,
    as a run of an older or foreign writer would be)."""
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("hand-made")
    artifacts = (directory.parent / "mlartifacts").as_uri()  # not ./mlruns of the test's cwd
    exp_id = exp.experiment_id if exp else client.create_experiment("hand-made", artifacts)
    run_id = client.create_run(exp_id).info.run_id
    directory.mkdir(parents=True)
    path = directory / f"{manifest_doc['scheme']['name']}_quant_manifest.json"
    path.write_text(json.dumps(manifest_doc, indent=2))
    client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return run_id


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BadInput]:
    """Every bad input, run once through the CLI (three at a time) against one job store."""
    base = tmp_path_factory.mktemp("bad-inputs")
    store = base / "mlflow.db"  # the jobs' store: must hold nothing FINISHED afterwards
    tracking_store.prepare_store(f"sqlite:///{store}")
    runs_uri = f"sqlite:///{base / 'runs.db'}"  # hand-made runs for report and publish
    tracking_store.prepare_store(runs_uri)
    ckpt = _damaged_checkpoints(base / "checkpoints")
    manifests = _bad_manifests(base)
    a_file, a_dir = base / "a-file", base / "a-dir"
    a_file.write_text("not a directory\n")
    a_dir.mkdir()
    long_name = "m" * 300
    bad_doc = json.loads(GOOD_MANIFEST.read_text()) | {"autoquant": [1]}
    long_doc = json.loads(GOOD_MANIFEST.read_text())
    long_doc["model"]["name"] = long_name
    bad_run = _logged_run(runs_uri, bad_doc, base / "bad-run")
    long_run = _logged_run(runs_uri, long_doc, base / "long-run")
    pub_root = base / "published"
    report_only = ["runner.report_only=true"]

    cases = {
        "corrupt config.json": BadInput([f"model.path={ckpt['corrupt']}"],
                                        [str(ckpt["corrupt"] / "config.json"), "not valid JSON"]),
        "truncated model.safetensors": BadInput(
            [f"model.path={ckpt['truncated']}"],
            [str(ckpt["truncated"] / "model.safetensors"), "truncated"]),
        "GPT-2 checkpoint": BadInput([f"model.path={ckpt['gpt2']}"],
                                     [str(ckpt["gpt2"]), "model_type='gpt2'", "Qwen3-VL"]),
        "LLaMA checkpoint": BadInput([f"model.path={ckpt['llama']}"],
                                     [str(ckpt["llama"]), "model_type='llama'", "Qwen3-VL"]),
        "tracking.uri=bogus://x": BadInput(["tracking.uri=bogus://x"], ["bogus://x", "scheme"]),
        "tracking.uri=<directory>": BadInput([f"tracking.uri={a_dir}"], [str(a_dir), "sqlite:///"]),
        "SQLite path under a file": BadInput([f"tracking.uri=sqlite:///{a_file}/mlflow.db"],
                                             [str(a_file), "regular file"]),
        "hydra.run.dir on a file": BadInput([f"hydra.run.dir={a_file}", *FAST],
                                            [str(a_file), "hydra.run.dir"], job=False),
        "publish root on a file": BadInput(["output_layout=publish", f"output_layout.root={a_file}"],
                                           [str(a_file), "output_layout.root"]),
        "report_only: autoquant=[1]": BadInput(
            [*report_only, f"runner.output_dir={manifests['autoquant']}"],
            ["autoquant: Input should be a valid dictionary", "[1]"]),
        "report_only: model='s'": BadInput(
            [*report_only, f"runner.output_dir={manifests['model']}"],
            ["model: Input should be a valid dictionary", "'s'"]),
        "report_only: frontier=[1]": BadInput(
            [*report_only, f"runner.output_dir={manifests['frontier']}"],
            ["frontier[0]: Input should be a valid dictionary"]),
        "report_only: scores=['x']": BadInput(
            [*report_only, f"runner.output_dir={manifests['scores']}"],
            ["scores must be a list of finite numbers", "'x'"]),
        "report: autoquant=[1]": BadInput(
            ["--run-id", bad_run, "--tracking-uri", runs_uri],
            ["autoquant: Input should be a valid dictionary"], module="layer_sensitivity.cli.report",
            job=False),
        "publish: 300-character model name": BadInput(
            ["--run-id", long_run, "--root", str(pub_root), "--tracking-uri", runs_uri],
            ["model.name", "300 bytes", "m" * 40], module="layer_sensitivity.cli.publish",
            job=False, untouched=[pub_root]),
        "job: 300-character model.name": BadInput([f"model.name={long_name}"],
                                                  ["model.name", "300 characters"]),
        "captions path is a directory": BadInput([f"dataset.captions_path={a_dir}"],
                                                 [str(a_dir), "is a directory"]),
        # refused before Hydra composes (cli/typos.py): one paragraph with the options
        "unknown pair": BadInput(["quant_pair=no_such_pair"],
                                 ["quant_pair=no_such_pair: no such option", "wfp8_afp8"]),
        "unknown overlay": BadInput(["quant_granularity=no_such_overlay"],
                                    ["quant_granularity=no_such_overlay: no such option"]),
    }
    for i, case in enumerate(cases.values()):
        if case.job:
            out = base / "outputs" / f"job-{i}"
            case.args += [*FAST, f"hydra.run.dir={out}"]
            case.untouched.append(out)

    env = _env(store)

    def run(case: BadInput) -> None:
        case.proc = _run(case.args, env, base, case.module)

    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(run, cases.values()))
    assert a_file.read_text() == "not a directory\n"  # nothing wrote into or over the file
    assert finished_runs(store) == []
    return cases


BAD_INPUTS = [
    "corrupt config.json", "truncated model.safetensors", "GPT-2 checkpoint", "LLaMA checkpoint",
    "tracking.uri=bogus://x", "tracking.uri=<directory>", "SQLite path under a file",
    "hydra.run.dir on a file", "publish root on a file", "report_only: autoquant=[1]",
    "report_only: model='s'", "report_only: frontier=[1]", "report_only: scores=['x']",
    "report: autoquant=[1]", "publish: 300-character model name", "job: 300-character model.name",
    "captions path is a directory", "unknown pair", "unknown overlay",
]


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_is_one_clear_paragraph(bad_inputs: dict[str, BadInput], name: str) -> None:
    case = bad_inputs[name]
    proc = case.proc
    assert proc is not None
    shown = f"{name}: exit {proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 2, shown
    assert "Traceback" not in proc.stderr + proc.stdout, shown
    if case.hydra:  # Hydra's own message, kept as it is
        assert all(n in proc.stderr for n in case.needles), shown
    else:
        errors = _error_lines(proc)
        assert len(errors) == 1, shown  # one paragraph
        assert all(n in errors[0] for n in case.needles), shown
    left = [str(p) for p in case.untouched if p.exists()]
    assert not left, f"{name} left {left}"


def test_bad_inputs_leave_nothing_finished(bad_inputs: dict[str, BadInput]) -> None:
    assert sorted(bad_inputs) == sorted(BAD_INPUTS)  # every case was tried and is checked above
    clean = [n for n, c in bad_inputs.items() if c.proc is not None and c.proc.returncode == 2
             and "Traceback" not in c.proc.stderr]
    print(f"bad inputs tried: {len(bad_inputs)}, clean: {len(clean)}")
    assert len(clean) == len(bad_inputs)


def test_a_two_megabyte_caption_is_cut_quickly_and_reported(tmp_path: Path) -> None:
    """One 2 MB line: tokenized from its head only, reported as truncated on the console and in
    the manifest."""
    words = CAPTIONS.read_text().split()
    line = " ".join(words[i % len(words)] for i in range(400_000))[:2_000_000]
    captions = tmp_path / "one-long-line.txt"
    captions.write_text(line + "\n")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL)
    start = time.perf_counter()
    (batch,) = calibration.build_batches([line], tokenizer, 1, 128)
    seconds = time.perf_counter() - start
    whole = tokenizer([line], truncation=True, max_length=128)["input_ids"][0]
    assert batch["input_ids"][0].tolist() == whole  # the same tokens as tokenizing all of it
    assert seconds < 1.0, seconds

    out = tmp_path / "out"
    proc = _run([*FAST, f"dataset.captions_path={captions}", f"hydra.run.dir={out}"],
                _env(tmp_path / "mlflow.db"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert "1 of 1 captions are longer than dataset.calib_seq_len=128" in console
    assert "has 1 caption(s) but 4 were asked for" in console
    (manifest_file,) = out.glob("*_quant_manifest.json")
    dataset = json.loads(manifest_file.read_text())["dataset"]
    assert dataset["samples_used"] == 1
    assert dataset["truncated_captions"] == 1


# --- Interruptions during scoring ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("faults") / "mlflow.db"
    tracking_store.prepare_store(f"sqlite:///{store}")
    return store


def _scores(out_dir: Path) -> dict[str, list[float]]:
    (path,) = out_dir.glob("*_quant_manifest.json")
    doc = json.loads(path.read_text())
    assert doc["score_cache"] is None or doc["score_cache"]["hit"] is False  # computed here
    return {h: g["scores"] for h, g in doc["layer_sensitivity"].items()}


def _experiment_runs(store: Path, experiment: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


@pytest.fixture(scope="module")
def uninterrupted_scores(fault_store: Path, tmp_path_factory: pytest.TempPathFactory
                         ) -> dict[str, list[float]]:
    base = tmp_path_factory.mktemp("uninterrupted")
    proc = _run([*SCORING, f"hydra.run.dir={base / 'out'}", "tracking.experiment=uninterrupted"],
                _env(fault_store, LAYER_SENSITIVITY_CACHE_DIR=str(base / "cache")), base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _scores(base / "out")


def _wait_for_line(log: Path, proc: subprocess.Popen[str], text: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"the job ended ({proc.returncode}) before '{text}':\n{log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no '{text}' within {timeout} s")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_scoring_then_the_same_job_again(
        sig: signal.Signals, fault_store: Path, uninterrupted_scores: dict[str, list[float]],
        tmp_path: Path) -> None:
    experiment = f"interrupted-{sig.name}"
    env = _env(fault_store, LAYER_SENSITIVITY_CACHE_DIR=str(tmp_path / "cache"))
    args = [*SCORING, f"tracking.experiment={experiment}"]
    stdout, stderr = tmp_path / "first.out", tmp_path / "first.err"
    with stdout.open("w") as out, stderr.open("w") as err:
        first = subprocess.Popen(
            [sys.executable, "-m", "layer_sensitivity", *args, f"hydra.run.dir={tmp_path / 'first'}"],
            cwd=tmp_path, env=env, stdout=out, stderr=err, text=True)
        try:
            _wait_for_line(stdout, first, "phase autoquant")
            first.send_signal(sig)
            code = first.wait(timeout=TIMEOUT)
        finally:
            if first.poll() is None:
                first.kill()
    assert code == 128 + sig, stderr.read_text()[-3000:]
    assert "Traceback" not in stderr.read_text()
    (killed,) = _experiment_runs(fault_store, experiment)
    assert killed.info.status == "KILLED"
    client = mlflow.MlflowClient(f"sqlite:///{fault_store}")
    assert "error.txt" in {a.path for a in client.list_artifacts(killed.info.run_id)}
    error = Path(client.download_artifacts(killed.info.run_id, "error.txt", str(tmp_path)))
    assert "autoquant" in error.read_text()  # says where it stopped

    again = _run([*args, f"hydra.run.dir={tmp_path / 'again'}"], env, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    statuses = sorted(r.info.status for r in _experiment_runs(fault_store, experiment))
    assert statuses == ["FINISHED", "KILLED"]
    scores = _scores(tmp_path / "again")
    assert scores.keys() == uninterrupted_scores.keys()
    for handle, values in scores.items():
        assert values == pytest.approx(uninterrupted_scores[handle], rel=1e-6), handle


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_model_load_ends_the_run_killed(
        sig: signal.Signals, fault_store: Path, tmp_path: Path) -> None:
    """A signal a moment into the model load (where a finalizer once swallowed it)."""
    experiment = f"load-{sig.name}"
    env = _env(fault_store, LAYER_SENSITIVITY_CACHE_DIR=str(tmp_path / "cache"))
    log = tmp_path / "job.out"
    with log.open("w") as out:
        job = subprocess.Popen(
            [sys.executable, "-m", "layer_sensitivity", *FAST, f"tracking.experiment={experiment}",
             f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path, env=env, stdout=out,
            stderr=subprocess.STDOUT, text=True)
        try:
            _wait_for_line(log, job, "phase autoquant")
            time.sleep(0.2)
            job.send_signal(sig)
            code = job.wait(timeout=TIMEOUT)
        finally:
            if job.poll() is None:
                job.kill()
    assert code == 128 + sig, log.read_text()[-3000:]
    (killed,) = _experiment_runs(fault_store, experiment)
    assert killed.info.status == "KILLED"


def _wait_for_run(store: Path, name: str, proc: subprocess.Popen[str], timeout: float = 900) -> None:
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with sqlite3.connect(store, timeout=30) as db:
            if db.execute("select 1 from runs where name=? and status='RUNNING'",
                          (name,)).fetchone():
                return
        time.sleep(0.05)
    pytest.fail(f"no RUNNING run '{name}' (exit {proc.poll()})")


def test_sigterm_to_evaluate_ends_its_nested_run_killed(
        fault_store: Path, uninterrupted_scores: dict[str, list[float]], tmp_path: Path) -> None:
    (target,) = _experiment_runs(fault_store, "uninterrupted")
    proc = subprocess.Popen(
        [sys.executable, "-m", "layer_sensitivity.cli.evaluate", "--run-id", target.info.run_id,
         "--out", str(tmp_path / "eval")], cwd=tmp_path, env=_env(fault_store),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_run(fault_store, f"evaluate {target.info.run_name}", proc)  # named after its target
        time.sleep(0.5)  # into the model load
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, output[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{fault_store}")
    nested = client.search_runs([target.info.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{target.info.run_id}'")
    assert [r.info.status for r in nested] == ["KILLED"]


def test_sigint_while_a_new_store_is_created_then_the_next_job_works(tmp_path: Path) -> None:
    store = tmp_path / "new.db"
    env = _env(store)
    log = tmp_path / "job.out"
    with log.open("w") as out:
        job = subprocess.Popen(
            [sys.executable, "-m", "layer_sensitivity", *FAST, f"hydra.run.dir={tmp_path / 'a'}"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            _wait_for_line(log, job, "Preparing the MLflow tracking store")
            time.sleep(0.5)  # into MLflow's table creation and migrations
            job.send_signal(signal.SIGINT)
            code = job.wait(timeout=TIMEOUT)
        finally:
            if job.poll() is None:
                job.kill()
    assert code == 130, log.read_text()[-3000:]
    assert not list(tmp_path.glob(".new.db.creating-*"))
    again = _run([*FAST, f"hydra.run.dir={tmp_path / 'b'}"], env, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(finished_runs(store)) == 1


def test_a_sigkilled_run_is_ended_killed_by_the_next_job(fault_store: Path, tmp_path: Path) -> None:
    experiment = "sigkill"
    env = _env(fault_store, LAYER_SENSITIVITY_CACHE_DIR=str(tmp_path / "cache"))
    log = tmp_path / "job.out"
    with log.open("w") as out:
        job = subprocess.Popen(
            [sys.executable, "-m", "layer_sensitivity", *SCORING, f"tracking.experiment={experiment}",
             f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path, env=env, stdout=out,
            stderr=subprocess.STDOUT, text=True)
        try:
            _wait_for_line(log, job, "phase autoquant")
            job.send_signal(signal.SIGKILL)
            job.wait(timeout=TIMEOUT)
        finally:
            if job.poll() is None:
                job.kill()
    (left,) = _experiment_runs(fault_store, experiment)
    assert left.info.status == "RUNNING"  # nothing could end it: the process had no say
    nxt = _run([*FAST, f"tracking.experiment={experiment}", f"hydra.run.dir={tmp_path / 'b'}"],
               env, tmp_path)
    assert nxt.returncode == 0, nxt.stderr[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{fault_store}")
    ended = client.get_run(left.info.run_id)
    assert ended.info.status == "KILLED"
    assert f"pid {left.data.tags['process.pid']}" in ended.data.tags["mlflow.note.content"]


# --- Leftovers of interrupted publishes ----------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_full_disk_under_output_layout_publish_leaves_nothing_in_the_tree(
        fault_store: Path, tmp_path: Path) -> None:
    """The analysis is staged beside its directory and renamed in when complete: a publish root on
    a 200 kB tmpfs (too small for the reports) ends with one paragraph and an empty root."""
    full = tmp_path / "full"
    if not mount_tmpfs(full, "size=200k"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        proc = _run([*FAST, "output_layout=publish", f"output_layout.root={full}/models",
                     "tracking.experiment=disk-full", f"hydra.run.dir={tmp_path / 'out'}"],
                    _env(fault_store), tmp_path)
        left = sorted(str(p) for p in full.rglob("*"))
    finally:
        release_read_only(full)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "no space left" in proc.stderr
    assert left == []  # no half-written analysis, no staging directory, no empty chain
    (failed,) = _experiment_runs(fault_store, "disk-full")
    assert failed.info.status == "FAILED"


def test_publish_cleans_its_own_leftovers(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking_store.prepare_store(uri)
    doc = json.loads(GOOD_MANIFEST.read_text())
    run_id = _logged_run(uri, doc, tmp_path / "run")
    root = tmp_path / "models"
    dest = publish.destination(root, manifest.load(GOOD_MANIFEST))
    dest.parent.mkdir(parents=True)
    two_minutes_ago = time.time() - 120
    dead = dest.parent / f".{dest.name}.staging-{_dead_pid()}-abcd1234"  # its publisher is gone
    ancient = dest.parent / ".other.staging-a1b2c3d4"  # an earlier version's name, hours old
    live = dest.parent / f".{dest.name}.staging-{os.getpid()}-efgh5678"  # a publish in progress
    notes = dest.parent / ".notes.staging"  # not a name publish makes
    for d in (dead, ancient, live, notes):
        d.mkdir()
        (d / "file.json").write_text("{}")
    os.utime(dead, (two_minutes_ago, two_minutes_ago))
    os.utime(ancient, (time.time() - 3 * 3600, time.time() - 3 * 3600))
    args = ["--run-id", run_id, "--root", str(root), "--tracking-uri", uri]
    env = _env(tmp_path / "unused.db")

    first = _run(args, env, tmp_path, "layer_sensitivity.cli.publish")
    assert first.returncode == 0, first.stderr[-3000:]
    assert not dead.exists() and not ancient.exists()
    assert live.is_dir() and notes.is_dir()
    assert f"removed {dead}" in first.stderr and f"removed {ancient}" in first.stderr
    assert (dest / publish.PROVENANCE).is_file()

    # Killed between its two renames: the published directory is only in its .old- copy.
    old = dest.parent / f".{dest.name}.old-{_dead_pid()}-deadbeef"
    dest.rename(old)
    os.utime(old, (two_minutes_ago, two_minutes_ago))
    second = _run(args, env, tmp_path, "layer_sensitivity.cli.publish")
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"restored {dest}" in second.stderr
    assert "already published" in second.stdout  # the restored copy is this run's, intact
    assert not old.exists() and (dest / publish.PROVENANCE).is_file()


# --- Secrets --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A loopback ``mlflow server`` without authentication: (port, its directory)."""
    port, home = _free_port(), tmp_path / "server"
    home.mkdir()
    log = (home.parent / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{home / 'store.db'}",
         "--artifacts-destination", str(home / "artifacts")],
        cwd=home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env=_env(home / "unused.db"))
    try:
        deadline = time.monotonic() + 600  # a busy machine starts the server slowly
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, \
                (home.parent / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield port, home
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def test_credentials_in_the_tracking_uri_are_never_written(
        mlflow_server: tuple[int, Path], tmp_path: Path) -> None:
    """One job, a sweep on each local launcher, and every other entry point on a server URI with
    a password: the password is in no store row, artifact, output tree, .hydra/ file, stdout or
    stderr (it leaves the URI at process start; the server really gets the runs)."""
    port, server_home = mlflow_server
    uri = f"http://user:{SECRET}@127.0.0.1:{port}"
    cache, out, root = tmp_path / "cache", tmp_path / "out", tmp_path / "models"
    env = _env(tmp_path / "unused.db", LAYER_SENSITIVITY_CACHE_DIR=str(cache))
    env.pop("MLFLOW_TRACKING_URI")
    procs: dict[str, subprocess.CompletedProcess[str]] = {}
    procs["job"] = _run([*FAST, f"tracking.uri={uri}", "tracking.experiment=secrets",
                         f"hydra.run.dir={out}"], env, tmp_path)
    assert procs["job"].returncode == 0, procs["job"].stderr[-3000:]
    for launcher in ("basic", "local_parallel"):
        sweep_dir = out / f"sweep-{launcher}"
        procs[f"sweep {launcher}"] = proc = _run(
            ["-m", "quant_pair=fp8,int4", *FAST, f"tracking.uri={uri}",
             "tracking.experiment=secrets", f"hydra/launcher={launcher}",
             *(["hydra.launcher.n_jobs=2"] if launcher == "local_parallel" else []),
             f"hydra.sweep.dir={sweep_dir}"], env, tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(list(sweep_dir.glob("*/.hydra/overrides.yaml"))) == 2
    client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")  # the jobs really used the server
    runs = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
    assert len(runs) == 1 + 2 * 3 and all(r.info.status == "FINISHED" for r in runs)
    single = next(r for r in runs if "sweep" not in r.data.tags
                  and "mlflow.parentRunId" not in r.data.tags)
    run_id = single.info.run_id
    parent = next(r for r in runs if r.data.tags.get("sweep") == "parent").info.run_id
    tool = ["--tracking-uri", uri]
    procs["report"] = _run(["--run-id", run_id, *tool], env, tmp_path,
                           "layer_sensitivity.cli.report")
    procs["publish"] = _run(["--run-id", run_id, "--root", str(root), *tool], env, tmp_path,
                            "layer_sensitivity.cli.publish")
    procs["compare"] = _run(["--parent-run-id", parent, "--out", str(out / "compare"), *tool],
                            env, tmp_path, "layer_sensitivity.cli.compare")
    procs["evaluate"] = _run(["--run-id", run_id, "--keep", "0.5", "--draws", "2",
                              "--ground-truth", "none", "--max-eval-samples", "4",
                              "--out", str(out / "evaluate"), *tool], env, tmp_path,
                             "layer_sensitivity.cli.evaluate")
    procs["recipe"] = _run(["--formats", "fp8,int4", "--effective-bits", "6", *FAST,
                            f"tracking.uri={uri}", "tracking.experiment=secrets",
                            f"hydra.run.dir={out / 'recipe'}"], env, tmp_path,
                           "layer_sensitivity.cli.recipe")
    for name in ("report", "publish", "compare", "evaluate", "recipe"):
        assert procs[name].returncode == 0, f"{name}: {procs[name].stderr[-3000:]}"
    procs["failed report"] = _run(["--run-id", "0" * 32, *tool], env, tmp_path,
                                  "layer_sensitivity.cli.report")  # a message naming the store
    assert procs["failed report"].returncode == 2 and _error_lines(procs["failed report"])
    assert any(out.rglob(".hydra/*.yaml"))

    outputs = {f"{name} {stream}": getattr(proc, stream).encode()
               for name, proc in procs.items() for stream in ("stdout", "stderr")}
    files = list(_files_under(out, root, cache, server_home))
    assert any(f.suffix == ".db" for f in files) and any("provenance" in f.name for f in files)
    assert any(f.name == "job_status.json" for f in files)
    assert any(f.name == "sweep.json" for f in files)
    outputs |= {str(f): f.read_bytes() for f in files}
    hits = [name for name, data in outputs.items() if SECRET.encode() in data]
    print(f"credential grep: {len(outputs)} outputs searched, {len(hits)} hits")
    assert hits == []


def test_tracking_server_death_mid_job_ends_in_seconds(
        mlflow_server: tuple[int, Path], tmp_path: Path) -> None:
    """Scoring goes on, then the first request to the dead server gives up after a few retries:
    one paragraph, exit 1, no traceback, not MLflow's default minutes of retries."""
    port, _ = mlflow_server
    env = _env(tmp_path / "unused.db", LAYER_SENSITIVITY_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("MLFLOW_TRACKING_URI")
    log = tmp_path / "job.out"
    with log.open("w") as out:
        job = subprocess.Popen(
            [sys.executable, "-m", "layer_sensitivity", *SCORING, "tracking.system_metrics=false",
             f"tracking.uri=http://127.0.0.1:{port}", f"hydra.run.dir={tmp_path / 'out'}"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            _wait_for_line(log, job, "phase autoquant")
            for proc in __import__("psutil").net_connections("tcp"):
                if proc.laddr and proc.laddr.port == port and proc.status == "LISTEN" and proc.pid:
                    os.kill(proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            code = job.wait(timeout=TIMEOUT)
            seconds = time.monotonic() - killed
        finally:
            if job.poll() is None:
                job.kill()
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert "stopped answering" in text and "Traceback" not in text, text[-3000:]
    assert seconds < 150, seconds
