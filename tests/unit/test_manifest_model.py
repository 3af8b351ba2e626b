"""The manifest in memory is one typed model: built once, written as today's JSON, read by
attribute everywhere outside the manifest modules, its derived views computed once."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from layer_sensitivity import manifest, report
from layer_sensitivity.errors import UserError
from layer_sensitivity.manifest_model import Manifest
from tests.helpers.manifests import build, new_schema_equivalent

SRC = Path(manifest.__file__).parent
MANIFEST_MODULES = {"manifest.py", "manifest_model.py", "manifest_read.py"}
SECTIONS = set(Manifest.model_fields)  # scheme, model, dataset, quantization, layer_sensitivity...
# Dicts outside the manifest that happen to use a section's name as a key: (module, receiver).
NOT_MANIFESTS = {
    ("report.py", "doc"),  # the JSON report being assembled
    ("compare/rankings.py", "f"),  # _run_fields' plain row
    ("export.py", "hf_quant"), ("exported_checkpoint.py", "hf_quant"),  # hf_quant_config.json
    ("mixed/heldout.py", "heldout"), ("cli/recipe.py", "result.heldout"),  # held-out KL rows
    ("recipe_files.py", "recipe.info.get('source') or {}"),  # a recipe's source run
    ("redact.py", "m"),  # a regex match
    ("tasks/sensitivity.py", "req.choices"),  # Hydra's config group choices
    ("planner.py", "plan"),  # the planner's JSON plan
}


def _modules() -> list[tuple[str, ast.Module]]:
    return [(p.relative_to(SRC).as_posix(), ast.parse(p.read_text(), filename=str(p)))
            for p in sorted(SRC.rglob("*.py")) if p.name not in MANIFEST_MODULES]


def _string_key_reads(tree: ast.Module) -> list[tuple[int, str, str]]:
    """(line, receiver, key) of every ``x["<section>"]`` and ``x.get("<section>")``."""
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
                and node.slice.value in SECTIONS):
            found.append((node.lineno, ast.unparse(node.value), str(node.slice.value)))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "get" and node.args and isinstance(node.args[0], ast.Constant)
              and node.args[0].value in SECTIONS):
            found.append((node.lineno, ast.unparse(node.func.value), str(node.args[0].value)))
    return found


def test_no_module_reads_a_manifest_by_string_key() -> None:
    reads = {(name, receiver, line, key) for name, tree in _modules()
             for line, receiver, key in _string_key_reads(tree)}
    bad = [f"{name}:{line}: {receiver}[{key!r}]" for name, receiver, line, key in sorted(reads)
           if (name, receiver) not in NOT_MANIFESTS]
    assert not bad, "read the manifest by attribute (m.scheme.name), not by key:\n" + "\n".join(bad)
    assert NOT_MANIFESTS == {(name, receiver) for name, receiver, _, _ in reads}  # none stale


def test_the_key_check_finds_a_string_key_read() -> None:
    tree = ast.parse("def f(manifest):\n    return manifest['scheme']['name'], m.get('frontier')")
    assert sorted((r, k) for _, r, k in _string_key_reads(tree)) == [("m", "frontier"),
                                                                     ("manifest", "scheme")]


def _manifest_annotations(tree: ast.Module) -> list[tuple[int, str, str]]:
    """(line, name, annotation) of every parameter or field named like a manifest."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            out += [(a.lineno, a.arg, ast.unparse(a.annotation)) for a in args
                    if a.annotation is not None and a.arg.endswith("manifest")]
        elif isinstance(node, ast.ClassDef):
            out += [(s.lineno, s.target.id, ast.unparse(s.annotation)) for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                    and s.target.id == "manifest"]
    return out


def test_every_manifest_parameter_and_field_is_typed_as_the_model() -> None:
    found = [(name, line, arg, ann) for name, tree in _modules()
             for line, arg, ann in _manifest_annotations(tree)]
    assert len(found) > 30  # report, figures, profiles, recipes, evaluate, export, mixed, ...
    bad = [f"{name}:{line}: {arg}: {ann}" for name, line, arg, ann in found
           if "Manifest" not in ann]
    assert not bad, "\n".join(bad)


def test_a_manifest_has_no_string_keys() -> None:
    m = new_schema_equivalent()
    with pytest.raises(TypeError):
        m["scheme"]  # type: ignore[index]
    assert not hasattr(m, "get") and not hasattr(m.scheme, "get")


def test_build_writes_todays_keys_in_todays_order(tmp_path: Path) -> None:
    m = new_schema_equivalent()
    doc = json.loads(manifest.write(m, tmp_path).read_text())
    assert list(doc) == ["schema_version", "scheme", "model", "dataset", "quantization",
                         "layer_sensitivity", "sensitivity_ranking", "frozen_groups", "autoquant",
                         "versions", "score_cache"]  # no frontier: a single target
    assert list(doc["scheme"]) == ["name", "effective_bits_requested", "effective_bits_modelopt",
                                   "method", "score_size", "coverage", "formats",
                                   "score_semantics"]
    assert list(next(iter(doc["layer_sensitivity"].values()))) == [
        "formats", "scores", "costs", "importance", "rank", "modules", "chosen"]
    assert doc["quantization"]["fp4_format"] is None  # recorded as null, not left out
    assert manifest.load(manifest.find(tmp_path)) == m


def test_integers_stay_integers() -> None:
    m = build({}, {"total_score": 1}, target_bits=8, score_samples=4)
    doc = json.loads(manifest.dumps(m))
    assert doc["scheme"]["effective_bits_requested"] == 8
    assert '"effective_bits_requested": 8,' in manifest.dumps(m)  # not 8.0
    assert '"total_score": 1\n' in manifest.dumps(m)


def test_derived_views_are_computed_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from layer_sensitivity import manifest_model

    calls = []
    rank = manifest_model.rank_groups
    monkeypatch.setattr(manifest_model, "rank_groups",
                        lambda *a, **k: calls.append(1) or rank(*a, **k))
    m = new_schema_equivalent()
    report.write_reports(m, tmp_path)  # markdown, JSON, figures: each reads the profiles
    assert len(calls) == 1


def test_a_non_finite_score_is_refused_when_read_not_when_built(tmp_path: Path) -> None:
    m = build({}, {"total_score": float("nan")})
    assert m.autoquant.total_score != m.autoquant.total_score  # NaN kept: the job's result
    path = manifest.write(m, tmp_path)
    with pytest.raises(UserError, match="total_score: Input should be a finite number"):
        manifest.load(path)
