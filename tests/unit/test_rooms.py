"""A job's plan walks through the package's rooms (modules) in order, entering each at most twice.

The walk: a real ``pipeline.run`` on the embedded tiny model, its scores stored beforehand (a
synthetic but complete search state under the job's own score key, so the run is a score-cache hit
and loads no model), traced with ``sys.setprofile``. The definition:

- A *room* is a module of ``src/layer_sensitivity`` (``model.loader``, ``catalogue.describe``).
  Standard-library and third-party frames are transparent: a call made from inside one belongs to
  the nearest package frame below it (``with phases(...)`` is ``pipeline.run`` calling ``phases``).
- The plan's path is the conductor, the ``pipeline`` module (``run`` and its phase functions): it
  holds the plan and hands it, and what each phase made, to the rooms. A *move* is a call between
  the conductor and another room, either way (``pipeline.solve`` calling ``autoquant.solve``;
  ``scoring`` reading a ``Plan`` property is a climb back into ``pipeline``). What a room does
  inside its step (its own helpers, the rooms below it) is its business, not the plan's path.
  Returns are not moves (the conductor takes back what the room made).
- A move is counted once per *call site* (a caller's line calling one function): a loop's later
  iterations repeat a move already walked.
- A room's *entries* are the moves into it. ``phases`` (the stopwatch around each phase: a name
  and a wall time, never the plan or its data) is not counted.

Each room is entered at most twice. (Before the change that added this test: ``autoquant`` 6,
``calibration`` 4, ``catalogue.describe`` 4, ``scoring`` 3; measured the same way.)
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from layer_sensitivity import autoquant, pipeline, scorecache, scoring
from layer_sensitivity.cli.config_store import CONF_DIR
from layer_sensitivity.model import placement
from layer_sensitivity.reuse import Resources
from layer_sensitivity.schema import SensitivityConfig

PACKAGE = Path(pipeline.__file__).parent
CONDUCTOR = "pipeline"
STOPWATCH = "phases"
MAX_ENTRIES = 2

_ROOMS: dict[str, str | None] = {}


def room(frame: FrameType) -> str | None:
    """The package module a frame runs in (``model.loader``), None outside the package."""
    filename = frame.f_code.co_filename
    if filename not in _ROOMS:  # the profiler sees every call: compute each file's room once
        path = Path(filename)
        inside = path.is_relative_to(PACKAGE) and path.suffix == ".py"
        _ROOMS[filename] = (path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".")
                            if inside else None)
    return _ROOMS[filename]


def package_frame(frame: FrameType | None) -> FrameType | None:
    """The nearest frame of the package at or below ``frame`` (others are transparent)."""
    while frame is not None and room(frame) is None:
        frame = frame.f_back
    return frame


class Walk:
    """The moves between the conductor and the rooms, in order, each call site once."""

    def __init__(self) -> None:
        self.moves: list[tuple[str, str]] = []  # (caller room.function:line, callee room.function)
        self.entries: Counter[str] = Counter()
        self._seen: set[tuple[Any, int, Any]] = set()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or room(frame) is None:
            return
        caller = package_frame(frame.f_back)
        if caller is None:
            return
        source, target = room(caller), room(frame)
        site = (caller.f_code, caller.f_lineno, frame.f_code)
        if source == target or CONDUCTOR not in (source, target) or site in self._seen:
            return
        self._seen.add(site)
        self.moves.append((f"{source}.{caller.f_code.co_name}:{caller.f_lineno}",
                           f"{target}.{frame.f_code.co_name}"))
        if target != STOPWATCH:
            self.entries[str(target)] += 1


def _synthetic_state(quant_cfg: dict[str, Any], groups: int = 4) -> dict[str, Any]:
    """A complete search state of the shape ``auto_quantize`` returns: the pair's format (ModelOpt's
    label for a custom config) or 16 bits for each of a few language-model groups."""
    from modelopt.torch.quantization.algorithms import QuantRecipe

    fmt, none = QuantRecipe(dict(quant_cfg), name=f"{autoquant.CUSTOM_PREFIX}_0"), QuantRecipe(None)
    stats = {
        f"model.language_model.layers.{i}.mlp.down_proj.quant_recipe": {
            "formats": [fmt, none], "scores": [0.1 * (i + 1), 0.0],
            "costs": [64.0 * (i + 1), 128.0 * (i + 1)],
            "module_names": [f"model.language_model.layers.{i}.mlp.down_proj"],
            "cost_weight": 1.0,
        }
        for i in range(groups)
    }
    return {"method": "gradient", "cost_denominator": sum(s["costs"][1] for s in stats.values()),
            "candidate_stats": stats, "quantizer_states": {},
            "best": {"recipe": {h: fmt for h in stats}, "constraints": {"effective_bits": 8.0},
                     "score": 1.0, "is_satisfied": True}}


def _cfg(tmp_path: Path) -> SensitivityConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sensitivity", overrides=[
            "dataset.max_calib_samples=4", "autoquant.batch_size=2", "tracking=none",
            f"autoquant.score_cache_dir={tmp_path / 'cache'}", "autoquant.effective_bits=[12,9]"])
    cfg.output_layout.dir = str(tmp_path / "out")
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Walk:
    tmp_path = tmp_path_factory.mktemp("rooms")
    p = pipeline.plan(_cfg(tmp_path))
    resources = Resources()
    batches = pipeline.calibration_data(p, resources)
    cache = scorecache.ScoreCache(Path(p.cfg.autoquant.score_cache_dir))
    dtype = placement.resolve_dtype(p.cfg.model.dtype, p.device)  # as the scores phase keys it
    cache.store(cache.key(scoring.score_key_ingredients(p, dtype, batches)),
                _synthetic_state(p.quant_cfg))
    walk = Walk()
    sys.setprofile(walk)
    try:
        result = pipeline.run(p, tmp_path / "out", resources)
    finally:
        sys.setprofile(None)
    assert result.manifest.score_cache is not None and result.manifest.score_cache.hit  # no model loaded
    return walk


def test_the_plan_enters_each_room_at_most_twice(walk: Walk) -> None:
    shown = "\n".join(f"{a} -> {b}" for a, b in walk.moves)
    assert walk.entries["scoring"] >= 1 and walk.entries["manifest"] >= 1, shown  # it walked
    assert {r: n for r, n in walk.entries.items() if n > MAX_ENTRIES} == {}, shown


def test_autoquant_solve_answers_the_solve_phase_in_one_call(tmp_path: Path) -> None:
    state = _synthetic_state(pipeline.plan(_cfg(tmp_path)).quant_cfg)
    solved = autoquant.solve(state, [], [(16.0, 16.0), (12.0, 12.0)])  # main target first
    assert [p.target_bits for p in solved.points] == [16.0, 12.0]
    assert solved.points[0].achieved_bits == 16.0 and solved.modelopt_achieved_bits == 16.0
    assert all(g.chosen.startswith("NONE") for g in solved.chosen.values())  # the main choice
    assert solved.points[1].achieved_bits <= 12.0 and solved.points[1].satisfied
    assert solved.groups.keys() == solved.chosen.keys() == state["candidate_stats"].keys()
