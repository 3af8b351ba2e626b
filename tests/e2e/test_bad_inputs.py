"""Bad inputs on every entry point, table-driven: exit 2, one paragraph, no traceback, no new run,
no folder left behind.

Every row is a real command line (``python -m <entry point> ...``) against one shared SQLite store
holding a hand-made FINISHED run, a FAILED run and a run whose manifest has no groups. The rows run
three at a time; the store's run count must not change. (tests/e2e/test_faults.py has the older
bad-input table: damaged checkpoints, bad manifests, unknown pairs.)
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pytest

from layer_sensitivity.tracking import store as tracking_store
from tests.helpers import FAST, ROOT, TINY_MODEL, read_only_dir, release_read_only, tool_env

pytestmark = pytest.mark.slow

GOOD_MANIFEST = (ROOT / "tests/unit/fixtures/report"
                 / "tiny-qwen3-vl_autoquant_wfp8_afp8_lm_small_quant_manifest.json")
PARALLEL = 3
TIMEOUT = 900  # an upper bound for a busy CI machine; rows take seconds
SENSITIVITY, SWEEP = "layer_sensitivity", "layer_sensitivity.cli.sweep"
REPORT, PUBLISH = "layer_sensitivity.cli.report", "layer_sensitivity.cli.publish"
COMPARE, EVALUATE = "layer_sensitivity.cli.compare", "layer_sensitivity.cli.evaluate"
RECIPE = "layer_sensitivity.cli.recipe"


@dataclass
class Row:
    module: str
    args: list[str]
    needles: list[str]  # what the one error paragraph must name
    untouched: list[Path] = field(default_factory=list)  # must not exist afterwards
    env: dict[str, str] = field(default_factory=dict)  # extra environment
    proc: subprocess.CompletedProcess[str] | None = None


def _hand_made_run(uri: str, doc: dict, directory: Path, status: str) -> str:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("hand-made")
    exp_id = exp.experiment_id if exp else client.create_experiment(
        "hand-made", (directory.parent / "mlartifacts").as_uri())
    run_id = client.create_run(exp_id).info.run_id
    directory.mkdir(parents=True)
    path = directory / GOOD_MANIFEST.name
    path.write_text(json.dumps(doc, indent=2))
    client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status)
    return run_id


def _runs(store: Path) -> set[tuple[str, str, str]]:
    with sqlite3.connect(store) as db:
        return set(db.execute("select run_uuid, name, status from runs"))


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Row]]:
    base = tmp_path_factory.mktemp("bad-inputs-2")
    store = base / "mlflow.db"
    uri = f"sqlite:///{store}"
    tracking_store.prepare_store(uri)
    good = json.loads(GOOD_MANIFEST.read_text())
    finished = _hand_made_run(uri, good, base / "finished", "FINISHED")
    failed = _hand_made_run(uri, good, base / "failed", "FAILED")
    empty = _hand_made_run(uri, good | {"layer_sensitivity": {}}, base / "empty", "FINISHED")
    a_file, a_dir, text_db = base / "a-file", base / "a-dir", base / "notes.db"
    a_file.write_text("a file\n")
    a_dir.mkdir()
    text_db.write_text("not a database\n")
    other_db = base / "other.db"
    with sqlite3.connect(other_db) as db:
        db.execute("create table t (x)")
    no_tokenizer = base / "no-tokenizer"
    shutil.copytree(TINY_MODEL, no_tokenizer)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / f).unlink()
    new_db = base / "typo" / "new.db"
    mismatched = base / "mismatched"  # config.json of another size than the weights
    shutil.copytree(TINY_MODEL, mismatched)
    config = json.loads((mismatched / "config.json").read_text())
    config["text_config"]["intermediate_size"] *= 2
    (mismatched / "config.json").write_text(json.dumps(config))
    open_key = base / "open-key" / "score-cache.key"
    open_key.parent.mkdir()
    open_key.write_bytes(b"k" * 32)
    open_key.chmod(0o644)
    read_only = base / "read-only"
    out = base / "outputs"
    root_run = ["--run-id", finished]

    rows = {
        # sensitivity: python -m layer_sensitivity
        "effective_bits=abc": Row(SENSITIVITY, ["autoquant.effective_bits=abc"], ["abc"]),
        "effective_bits={a:1}": Row(SENSITIVITY, ["autoquant.effective_bits={a:1}"],
                                    ["effective_bits"]),
        "effective_bits=[8,abc]": Row(SENSITIVITY, ["autoquant.effective_bits=[8,abc]"],
                                      ["effective_bits", "abc"]),
        "effective_bits=[[8]]": Row(SENSITIVITY, ["autoquant.effective_bits=[[8]]"],
                                    ["effective_bits"]),
        "+foo=bar": Row(SENSITIVITY, ["+foo=bar"], ["'foo'"]),
        "+autoquant.methd": Row(SENSITIVITY, ["+autoquant.methd=kl_div"],
                                ["autoquant.methd", "did you mean 'autoquant.method'"]),
        "checkpoint without tokenizer": Row(SENSITIVITY, [f"model.path={no_tokenizer}"],
                                            [str(no_tokenizer), "tokenizer"]),
        "device_map=auto on CPU": Row(SENSITIVITY, ["model.device_map=auto"],
                                      ["model.device_map", "cpu"]),
        "recipes.keep=[1.5]": Row(SENSITIVITY, ["recipes.keep=[1.5]"], ["recipes.keep", "1.5"]),
        "recipes.keep=[-1]": Row(SENSITIVITY, ["recipes.keep=[-1]"], ["recipes.keep", "-1"]),
        "score_cache_dir on a file": Row(SENSITIVITY, [f"autoquant.score_cache_dir={a_file}"],
                                         ["autoquant.score_cache_dir", str(a_file)]),
        "dry run: negative shape": Row(
            SENSITIVITY, ["model=qwen3_vl_2b", "runner.dry_run=true",
                          "model.config.text_config.hidden_size=-8"],
            ["model.config.text_config.hidden_size=-8", "positive"]),
        "checkpoint shape mismatch": Row(SENSITIVITY, [f"model.path={mismatched}"],
                                         [str(mismatched), "does not match its config.json"]),
        "world-readable score-cache key": Row(
            SENSITIVITY, [], [str(open_key), "readable by other users"],
            env={"LAYER_SENSITIVITY_CACHE_KEY_FILE": str(open_key)}),
        "sweep: world-readable score-cache key": Row(
            SENSITIVITY, ["-m", "quant_pair=fp8,int8", f"hydra.sweep.dir={out}/sweep-key"],
            [str(open_key), "readable by other users"], [out / "sweep-key"],
            env={"LAYER_SENSITIVITY_CACHE_KEY_FILE": str(open_key)}),
        "sweep: unknown pair": Row(SENSITIVITY, ["-m", "quant_pair=fp8,fp9",
                                                 f"hydra.sweep.dir={out}/sweep-pair"],
                                   ["quant_pair=fp9", "Did you mean"], [out / "sweep-pair"]),
        "tracking.uri=<text file>": Row(SENSITIVITY, [f"tracking.uri=sqlite:///{text_db}"],
                                        [str(text_db), "not a readable SQLite"],
                                        [Path(f"{text_db}.lock")]),
        # sweep: python -m layer_sensitivity.cli.sweep
        "sweep +foo=bar": Row(SWEEP, ["--quant-pairs", "fp8,int8", "+foo=bar",
                                      f"hydra.sweep.dir={out}/sweep"], ["'foo'"],
                              [out / "sweep"]),
        # report
        "report: bogus scheme": Row(REPORT, [*root_run, "--tracking-uri", "bogus://x"],
                                    ["bogus://x", "scheme"]),
        "report: file: URI": Row(REPORT, [*root_run, "--tracking-uri", f"file://{a_dir}"],
                                 ["file:", "sqlite:///"]),
        "report: plain path": Row(REPORT, [*root_run, "--tracking-uri", str(a_dir)],
                                  [str(a_dir), "sqlite:///"]),
        "report: sqlite dir": Row(REPORT, [*root_run, "--tracking-uri", f"sqlite:///{a_dir}"],
                                  [str(a_dir), "directory"]),
        "report: new store": Row(REPORT, [*root_run, "--tracking-uri", f"sqlite:///{new_db}"],
                                 [str(new_db), "does not exist"], [new_db, new_db.parent]),
        "report: other SQLite": Row(REPORT, [*root_run, "--tracking-uri", f"sqlite:///{other_db}"],
                                    [str(other_db), "not an MLflow tracking store"]),
        "report: dead server": Row(REPORT, [*root_run, "--tracking-uri", "http://127.0.0.1:9"],
                                   ["http://127.0.0.1:9", "does not answer"]),
        "report: FAILED run": Row(REPORT, ["--run-id", failed], [failed, "FAILED"]),
        "report: no groups": Row(REPORT, ["--run-id", empty], ["no layer groups"]),
        # publish
        "publish --root /": Row(PUBLISH, [*root_run, "--root", "/"], ["--root=/"]),
        "publish --root <file>": Row(PUBLISH, [*root_run, "--root", str(a_file)],
                                     [str(a_file), "is a file"]),
        "publish: FAILED run": Row(PUBLISH, ["--run-id", failed, "--root", str(out / "pub")],
                                   [failed, "FAILED"], [out / "pub"]),
        # compare
        "compare --out <file>": Row(COMPARE, ["--run-ids", f"{finished},{finished}", "--out",
                                              str(a_file)], [str(a_file), "--out"]),
        "compare: bogus scheme": Row(COMPARE, ["--run-ids", finished, "--tracking-uri",
                                               "bogus://x"], ["bogus://x"]),
        # evaluate
        "evaluate --max-eval-samples 0": Row(EVALUATE, [*root_run, "--max-eval-samples", "0"],
                                             ["--max-eval-samples=0"]),
        "evaluate --max-eval-samples -1": Row(EVALUATE, [*root_run, "--max-eval-samples=-1"],
                                              ["--max-eval-samples=-1"]),
        "evaluate --out <file>": Row(EVALUATE, [*root_run, "--out", str(a_file)],
                                     [str(a_file), "--out"]),
        "evaluate --eval-captions <missing>": Row(
            EVALUATE, [*root_run, "--eval-captions", str(base / "missing.txt")],
            ["--eval-captions", "does not exist"]),
        "evaluate: FAILED run": Row(EVALUATE, ["--run-id", failed, "--out", str(out / "eval")],
                                    [failed, "FAILED"], [out / "eval"]),
        # recipe
        "recipe --formats ,": Row(RECIPE, ["--formats", ","], ["--formats", "names no format"]),
        "recipe hydra.run.dir=<file>/x": Row(RECIPE, ["--formats", "fp8,int4",
                                                      f"hydra.run.dir={a_file}/x"],
                                             [str(a_file), "is a file"]),
        "recipe +foo=bar": Row(RECIPE, ["--formats", "fp8,int4", "+foo=bar",
                                        f"hydra.run.dir={out}/recipe"], ["'foo'"],
                               [out / "recipe"]),
    }
    if read_only_dir(read_only):  # root passes os.access everywhere: a real read-only mount
        rows |= {
            "tracking.uri=<read-only dir>": Row(
                SENSITIVITY, [f"tracking.uri=sqlite:///{read_only}/mlflow.db"],
                ["tracking store", str(read_only), "cannot be written"]),
            "hydra.run.dir=<read-only>": Row(SENSITIVITY, [f"hydra.run.dir={read_only}/job"],
                                             ["hydra.run.dir", str(read_only)]),
            "output_layout.root=<read-only>": Row(
                SENSITIVITY, ["output_layout=publish", f"output_layout.root={read_only}/models"],
                ["output_layout.root", str(read_only)]),
            "publish --root <read-only>": Row(PUBLISH, [*root_run, "--root",
                                                        str(read_only / "models")],
                                              ["--root", str(read_only)]),
        }
    for i, row in enumerate(rows.values()):
        if row.module == SENSITIVITY:
            job_out = out / f"job-{i}"
            own_dir = any(a.startswith("hydra.run.dir=") for a in row.args)
            row.args += [*FAST.split(), *([] if own_dir else [f"hydra.run.dir={job_out}"])]
            row.untouched.append(job_out)
    before = _runs(store)
    env = tool_env(store) | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def run(row: Row) -> None:
        row.proc = subprocess.run([sys.executable, "-m", row.module, *row.args], cwd=base,
                                  env=env | row.env, capture_output=True, text=True,
                                  timeout=TIMEOUT)

    try:
        with ThreadPoolExecutor(PARALLEL) as pool:
            list(pool.map(run, rows.values()))
        assert _runs(store) - before == set()  # no row started a run, not even a FAILED one
        assert a_file.read_text() == "a file\n"
        yield rows
    finally:
        release_read_only(read_only)


ROWS = [
    "effective_bits=abc", "effective_bits={a:1}", "effective_bits=[8,abc]", "effective_bits=[[8]]",
    "+foo=bar", "+autoquant.methd", "checkpoint without tokenizer", "device_map=auto on CPU",
    "recipes.keep=[1.5]", "recipes.keep=[-1]", "score_cache_dir on a file",
    "tracking.uri=<text file>", "sweep +foo=bar", "dry run: negative shape",
    "checkpoint shape mismatch", "world-readable score-cache key", "sweep: unknown pair",
    "sweep: world-readable score-cache key",
    "report: bogus scheme", "report: file: URI",
    "report: plain path", "report: sqlite dir", "report: new store", "report: other SQLite",
    "report: dead server", "report: FAILED run", "report: no groups", "publish --root /",
    "publish --root <file>", "publish: FAILED run", "compare --out <file>",
    "compare: bogus scheme", "evaluate --max-eval-samples 0", "evaluate --max-eval-samples -1",
    "evaluate --out <file>", "evaluate --eval-captions <missing>", "evaluate: FAILED run",
    "recipe --formats ,", "recipe hydra.run.dir=<file>/x", "recipe +foo=bar",
]
# Rows that need a directory nobody can write to (a read-only mount as root, mode 0555 otherwise).
READ_ONLY_ROWS = ["tracking.uri=<read-only dir>", "hydra.run.dir=<read-only>",
                  "output_layout.root=<read-only>", "publish --root <read-only>"]


@pytest.mark.parametrize("name", ROWS + READ_ONLY_ROWS)
def test_bad_input_exits_2_with_one_paragraph(rows: dict[str, Row], name: str) -> None:
    if name not in rows:
        pytest.skip("no read-only directory can be made here (no mount permission, running as root)")
    row = rows[name]
    proc = row.proc
    assert proc is not None
    shown = f"{name}: exit {proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 2, shown
    assert "Traceback" not in proc.stderr + proc.stdout, shown
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, shown
    assert all(n in errors[0] for n in row.needles), shown
    left = [str(p) for p in row.untouched if p.exists()]
    assert not left, f"{name} left {left}"


def test_every_row_is_checked(rows: dict[str, Row]) -> None:
    assert sorted(set(rows) - set(READ_ONLY_ROWS)) == sorted(ROWS)
    print(f"bad inputs on {len({r.module for r in rows.values()})} entry points: {len(rows)}")
