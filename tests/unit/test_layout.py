"""The layout CONTRIBUTING.md describes is the layout there is.

- Its module table ("## The rooms") lists every module of the package, each once, and nothing that
  does not exist. A first cell lists modules in backticks: ``paths.py``, or a subpackage folder
  followed by each of its modules (``cli/``: ``common.py``, ``typos.py``); a folder alone covers
  nothing (its ``__init__.py`` is the package itself and needs no row).
- ``tests/unit`` mirrors the package: ``<module>.py`` -> ``tests/unit/test_<module>.py``,
  ``<package>/<module>.py`` -> ``tests/unit/<package>/test_<module>.py``, but for the modules in
  the two lists below.
- No unit test starts a process.

The lists are data, meant to be edited when modules move: keep them short, and give each entry the
place its tests are (a path that exists) or why there are none yet.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "layer_sensitivity"
UNIT = ROOT / "tests" / "unit"
CONTRIBUTING = ROOT / "CONTRIBUTING.md"

# Folders in the table that hold no Python modules of their own (conf/ is linked into the package).
NOT_PACKAGES = {"conf/"}

# Modules whose tests live somewhere other than the mirrored path. Every path named must exist.
TESTED_ELSEWHERE = {
    "__main__.py": "the `python -m layer_sensitivity` shim: its overrides in "
                   "tests/unit/cli/test_common.py, run as a process by tests/e2e/test_sensitivity.py",
    "autoquant.py": "ModelOpt's search needs a model: tests/e2e/test_sensitivity.py, "
                    "tests/e2e/test_shared_scores.py; composing and re-solving states in "
                    "tests/unit/test_mixed.py, a job's re-solving in tests/unit/test_rooms.py",
    "evaluate.py": "quantizes and runs the model: tests/e2e/test_validity.py, tests/e2e/test_mixed.py",
    "export.py": "exports a quantized model: tests/e2e/test_export.py; refusals before loading in "
                 "tests/unit/catalogue/test_runtimes.py",
    "tasks/export.py": "a tracked export of a real checkpoint: tests/e2e/test_export.py",
    "tasks/recipe.py": "its metrics in tests/unit/test_mixed.py; the run in tests/e2e/test_mixed.py",
    "compare/rankings.py": "tests/unit/test_compare.py (the package's public functions)",
    "compare/heatmaps.py": "tests/unit/test_compare.py (figures of a comparison and of a sweep)",
    "compare/document.py": "tests/unit/test_compare.py (Markdown, JSON, CSV, headline)",
    "mixed/plan.py": "tests/unit/test_mixed.py (every refusal before the model loads)",
    "mixed/search.py": "tests/unit/test_mixed.py (labels, solve); searches in tests/e2e/test_mixed.py",
    "mixed/heldout.py": "tests/unit/test_mixed.py (its metrics and description); measured in "
                        "tests/e2e/test_mixed.py",
    "mixed/outputs.py": "tests/unit/test_mixed.py (choice table, figures); tests/e2e/test_mixed.py",
    "tracking/runs.py": "reads a real store: tests/e2e/test_report_run.py, tests/e2e/test_publish_run.py",
    "cli/sensitivity.py": "an entry point (parse, one call): tests/e2e/test_sensitivity.py",
    "cli/sweep.py": "an entry point: tests/e2e/test_sweep.py",
    "cli/recipe.py": "an entry point: tests/e2e/test_mixed.py",
    "cli/report.py": "an entry point: tests/e2e/test_report_run.py",
    "cli/publish.py": "an entry point: tests/e2e/test_publish_run.py",
    "cli/compare.py": "an entry point: tests/e2e/test_compare_evaluate.py",
    "cli/evaluate.py": "an entry point: tests/e2e/test_compare_evaluate.py",
    "cli/export.py": "an entry point: tests/e2e/test_export.py",
    "held_out.py": "needs the embedded model's training report and captions: "
                   "tests/e2e/test_validity.py (held out, disjoint, split)",
    "scoring.py": "the score key in tests/unit/test_pipeline.py; stored vs searched scores in "
                  "tests/e2e/test_reuse.py, tests/e2e/test_scorecache_faults.py",
    "phases.py": "timed by every task: tests/unit/tasks/test_lifecycle.py",
    "model/architecture.py": "shape values refused in tests/unit/test_bad_input_checks.py; the meta "
                             "model in tests/unit/test_planner.py",
    "model/checkpoint.py": "weights vs config.json in tests/unit/test_bad_input_checks.py; every "
                           "refusal before loading in tests/e2e/test_random_init.py, "
                           "tests/e2e/test_faults.py",
    "model/loader.py": "loads the embedded model: tests/unit/test_planner.py, "
                       "tests/e2e/test_random_init.py",
    "cli/sweep_callback.py": "tests/unit/test_sweep.py (planned jobs and names), tests/e2e/test_sweep.py",
}

# Modules with no unit test yet, and why (each one a gap to close, not a place to park modules).
NO_UNIT_TEST_YET: dict[str, str] = {}

# What a unit test may not do: start a process, directly or through the helpers that launch one.
SPAWNING_MODULES = {"subprocess", "multiprocessing", "pty", "pexpect"}
SPAWNING_CALLS = re.compile(r"^(os\.(system|popen|fork|forkpty|exec\w*|spawn\w*|posix_spawn\w*)"
                            r"|(\w+\.)*Popen|(\w+\.)*(run_cli|mlflow_run|run_sweep|read_only_dir"
                            r"|release_read_only|mount_tmpfs))$")
SPAWNING_FIXTURES = {"swept"}  # conftest: one sweep through `mlflow run`


def package_modules() -> set[str]:
    """Every module as its path inside the package (``cli/common.py``), ``__init__.py`` files aside."""
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
            if p.name != "__init__.py" and p.relative_to(PACKAGE).parts[0] not in ("assets", "conf")}


def table_cells() -> list[str]:
    """First cells of the rows of the table under '## The rooms'."""
    text = CONTRIBUTING.read_text()
    section = text.split("## The rooms", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert rows and rows[0].startswith("| Where |"), "the rooms table moved or lost its header"
    return [row.split("|")[1].strip() for row in rows[2:]]


def listed_modules() -> tuple[list[str], set[str]]:
    """(modules as listed, in order, duplicates kept; folders named)."""
    modules: list[str] = []
    folders: set[str] = set()
    for cell in table_cells():
        folder = ""
        for name in re.findall(r"`([^`]+)`", cell):
            name = name.removeprefix("src/layer_sensitivity/")
            if name.endswith("/"):
                folder = name
                folders.add(name)
            elif name.endswith(".py"):
                modules.append(name if "/" in name else folder + name)
    return modules, folders


def test_the_rooms_table_lists_every_module_once() -> None:
    modules, folders = listed_modules()
    actual = package_modules()
    assert sorted(actual - set(modules)) == [], "modules missing from CONTRIBUTING.md's table"
    assert sorted(set(modules) - actual) == [], "the table lists modules that do not exist"
    assert sorted({m for m in modules if modules.count(m) > 1}) == [], "modules listed twice"
    subpackages = {p.parent.relative_to(PACKAGE).as_posix() + "/" for p in PACKAGE.glob("*/__init__.py")}
    assert folders - NOT_PACKAGES == subpackages


def mirrored_test(module: str) -> Path:
    path = Path(module)
    return UNIT / path.parent / f"test_{path.stem}.py"


def test_every_module_has_a_unit_test_module_at_the_mirrored_path() -> None:
    untested = {m for m in package_modules() if not mirrored_test(m).is_file()}
    assert sorted(untested - set(TESTED_ELSEWHERE) - set(NO_UNIT_TEST_YET)) == []
    # The lists stay short and current: no entry for a module that is gone or now mirrored.
    listed = set(TESTED_ELSEWHERE) | set(NO_UNIT_TEST_YET)
    assert sorted(listed - untested) == [], "drop these from the lists in test_layout.py"
    assert not set(TESTED_ELSEWHERE) & set(NO_UNIT_TEST_YET)


def test_test_folders_of_subpackages_are_packages() -> None:
    # tests/unit/cli/test_compare.py and tests/unit/test_compare.py must import as different modules
    for folder in {mirrored_test(m).parent for m in package_modules()} | {UNIT}:
        if folder.is_dir():
            assert (folder / "__init__.py").is_file(), folder


@pytest.mark.parametrize("lists", [TESTED_ELSEWHERE, NO_UNIT_TEST_YET], ids=["elsewhere", "not-yet"])
def test_every_place_named_in_the_lists_exists(lists: dict[str, str]) -> None:
    for module, reason in lists.items():
        named = re.findall(r"tests/[\w/]+\.py", reason)
        assert all((ROOT / p).is_file() for p in named), (module, reason)
    assert all(re.findall(r"tests/[\w/]+\.py", r) for r in TESTED_ELSEWHERE.values())


def spawns(source: str) -> list[str]:
    """What in ``source`` starts a process: imports, calls and fixtures, as ``line: what``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in SPAWNING_MODULES]
        elif isinstance(node, ast.ImportFrom):
            base = (node.module or "").split(".")[0]
            found += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names
                      if base in SPAWNING_MODULES or SPAWNING_CALLS.match(a.name)]
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if SPAWNING_CALLS.match(name):
                found.append(f"{node.lineno}: {name}()")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [f"{node.lineno}: fixture {a.arg}" for a in node.args.args
                      if a.arg in SPAWNING_FIXTURES]
    return found


def test_no_unit_test_starts_a_process() -> None:
    offenders = {str(p.relative_to(ROOT)): spawns(p.read_text()) for p in sorted(UNIT.rglob("*.py"))}
    assert {p: f for p, f in offenders.items() if f} == {}, "move these to tests/e2e (marked slow)"


@pytest.mark.parametrize("source,what", [
    ("import subprocess", "import subprocess"),
    ("from subprocess import run", "from subprocess import run"),
    ("import os\nos.system('ls')", "os.system()"),
    ("import os\nos.execv('x', [])", "os.execv()"),
    ("from x import Popen\nPopen(['ls'])", "Popen()"),
    ("from tests.helpers import run_cli", "from tests.helpers import run_cli"),
    ("def test_x(swept):\n    pass", "fixture swept"),
])
def test_the_process_check_catches_each_way_in(source: str, what: str) -> None:
    assert [f.split(": ", 1)[1] for f in spawns(source)][-1] == what
    assert spawns("import os\nos.getpid()\nfrom tests.helpers import TINY_MODEL") == []
