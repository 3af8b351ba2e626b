"""The README's equal-bits claims, checked against the numbers scripts/equal_bits_table.py measured
(docs/equal_bits.json; rerun the script to remeasure, then update the README)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
DATA = json.loads((REPO / "docs" / "equal_bits.json").read_text(encoding="utf-8"))
RUNS = DATA["runs"]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("equal_bits_table",
                                                  REPO / "scripts" / "equal_bits_table.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SCRIPT = _script()


def _block() -> str:
    m = re.search(r"<!-- equal-bits:start -->\n(.*?)<!-- equal-bits:end -->", README, re.S)
    assert m, "the README has no equal-bits block"
    return m.group(1)


def _curve(run: dict[str, Any], curve: str) -> list[dict[str, Any]]:
    return sorted((r for r in run["summary"] if r["curve"] == curve), key=lambda r: r["target_bits"])


def test_readme_tables_and_wins_and_losses_are_the_measured_ones() -> None:
    assert _block() == SCRIPT.render(RUNS)
    assert (REPO / "docs" / "equal_bits.md").read_text(encoding="utf-8") == SCRIPT.render(RUNS)
    assert {(r["pair"], r["method"]) for r in RUNS} == {
        (p, m) for p in ("int4", "fp8") for m in ("gradient", "kl_div")}
    assert all(r["groups"] >= 8 * 4 for r in RUNS)  # the 8-layer model: 8 x 4 groups + lm_head
    assert DATA["draws"] >= 20


def test_recommended_is_never_worse_for_more_bits_on_test_captions() -> None:
    """README: 'more LM bits never give a higher test KL' for the recommended recipes."""
    for run in RUNS:
        kl = [r["kl_test"] for r in _curve(run, "recommended")]
        assert kl == sorted(kl, reverse=True), (run["pair"], run["method"], kl)


def test_recommended_and_guided_beat_the_random_mean_and_reverse_everywhere() -> None:
    """README: 'guided and recommended are below the random mean and the reverse ranking at every
    budget of every run'."""
    for run in RUNS:
        for who in ("keep_top", "recommended"):
            for me, rnd, rev in zip(_curve(run, who), _curve(run, "random_mean"),
                                    _curve(run, "reverse"), strict=True):
                assert me["kl_test"] < rnd["kl_test"] and me["kl_test"] < rev["kl_test"], run


def test_ranking_beats_every_data_free_rule_against_ground_truth() -> None:
    """README: 'the ranking's Spearman against ground truth is above the best data-free rule's in
    every run'."""
    for run in RUNS:
        corr = {c["ranking"]: c["spearman_kl"] for c in run["correlations"]}
        ranking = corr.pop("ranking")
        assert ranking > max(corr.values()), run["pair"]


def test_readme_loss_claim_matches_the_measurements() -> None:
    """README: the ranking predicts caption-loss change much less well than KL."""
    for run in RUNS:
        c = next(c for c in run["correlations"] if c["ranking"] == "ranking")
        assert c["spearman_loss"] < c["spearman_kl"] - 0.3, run["pair"]
    rank = [next(c for c in run["correlations"] if c["ranking"] == "ranking") for run in RUNS]
    lo, hi = min(c["spearman_loss"] for c in rank), max(c["spearman_loss"] for c in rank)
    assert f"Spearman {lo:.2f} to {hi:.2f}; single-group loss changes" in " ".join(README.split())


@pytest.mark.parametrize("phrase", ["tests/unit/test_equal_bits_readme.py",
                                    "scripts/equal_bits_table.py"])
def test_readme_names_its_sources(phrase: str) -> None:
    assert phrase in README


def test_every_curve_is_within_the_stated_tolerance() -> None:
    """README: 'on the 8-layer model below every gap is at most 0.11 bits'."""
    gaps = [r["bits_gap"] for run in RUNS for r in run["summary"] if r["curve"] != "recommended"]
    assert max(gaps) <= 0.11 and all(r["within_tolerance"] for run in RUNS for r in run["summary"])
    assert "every gap is at most 0.11 bits" in " ".join(README.split())
