"""One sensitivity job as plain function calls: ``plan`` (validate, no model, writes nothing)
then ``run``.

``run`` reads top to bottom as named phases: calibration data -> scores (stored, or load the model
and search) -> solve every bit target -> manifest and reports. No Hydra, no MLflow: callers pass a
``SensitivityConfig`` and an output directory.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import torch

from . import (
    autoquant,
    budgets,
    calibration,
    catalogue,
    image_captions,
    manifest,
    recipe_files,
    recipes,
    report,
    scorecache,
    scoring,
)
from .errors import UserError
from .groups import GroupStats, min_scope_bits
from .model import checkpoint, digest, placement, scope
from .model.random_init import RandomInit
from .phases import Phases
from .reuse import Resources
from .schema import Coverage, Modality, QuantPairConfig, SensitivityConfig

log = logging.getLogger(__name__)

BITS_TOLERANCE = 1e-9
RECIPES_DIR = "recipes"  # ModelOpt-loadable recipes: per frontier target and per keep fraction
LM_HEAD_PATTERN = "*lm_head*"
WEIGHT_DIGESTS = "weight-digests"  # in the score cache: each shard's digest by file identity


@dataclass
class Plan:
    """Everything decided before the model loads, each value computed once."""

    cfg: SensitivityConfig
    checkpoint: Path
    fingerprint: str
    device: str
    captions: calibration.Captions
    quant_cfg: dict[str, Any]
    format_name: str  # the pair's ModelOpt format as reports name it
    format_bits: float
    targets: list[float]  # requested averages over the language model's quantizable weights
    score_samples: int
    frozen_patterns: list[str]
    weights_sha256: str | None = None  # the weights' bytes, for the score key (reuse on)
    # Decided here, written by the first phase (``write_planned``): plan writes nothing.
    random_init: RandomInit | None = None  # model.init=random: its weightless directory
    digest_memos: list[digest.ShardMemo] = field(default_factory=list)
    images: image_captions.ImageCaptions | None = None  # dataset.modality=image_text
    # The pair's quantizer settings as the manifest records them (from quant_cfg, once).
    weight_quantizer: dict[str, Any] = field(default_factory=dict)
    input_quantizer: dict[str, Any] = field(default_factory=dict)

    @property
    def image_settings(self) -> image_captions.ImageSettings:
        d = self.cfg.dataset
        return image_captions.ImageSettings(d.image_prompt, d.image_min_pixels, d.image_max_pixels)

    @property
    def target_bits(self) -> float:
        """The main target; the others (a frontier) are re-solved from the same scores."""
        return self.targets[0]

    @property
    def scheme_name(self) -> str:
        c = self.cfg
        covered = "lm" if c.autoquant.coverage == Coverage.lm_only else "full"
        covered += "" if c.autoquant.lm_head else "_nohead"
        images = "_image" if self.images is not None else ""
        return (f"{c.model.name}_autoquant_{c.quant_pair.name}_{covered}_{c.dataset.size.value}"
                f"{images}")

    @property
    def score_steps(self) -> int:
        return math.ceil(self.score_samples / self.cfg.autoquant.batch_size)


@dataclass
class Result:
    manifest: manifest.Manifest
    files: list[Path]
    seconds: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None  # the run it was logged into, if any


def sample_count(cfg: SensitivityConfig) -> int:
    d = cfg.dataset
    if d.max_calib_samples is not None:
        return d.max_calib_samples
    if d.size.value not in d.size_samples:
        raise UserError(
            f"dataset.size={d.size.value} has no entry in dataset.size_samples "
            f"({sorted(d.size_samples)}). Add one or set dataset.max_calib_samples."
        )
    return d.size_samples[d.size.value]


def plan(cfg: SensitivityConfig) -> Plan:
    """Validate the job and resolve every input that does not need the model; writes nothing."""
    aq, pair = cfg.autoquant, cfg.quant_pair
    for name, value in (("autoquant.batch_size", aq.batch_size),
                        ("dataset.calib_seq_len", cfg.dataset.calib_seq_len),
                        ("autoquant.score_size", aq.score_size),
                        ("dataset.max_calib_samples", cfg.dataset.max_calib_samples)):
        if value is not None and value <= 0:
            raise UserError(f"{name}={value} must be a positive integer. Set it to 1 or more.")
    device = placement.resolve_device(cfg.model.device)
    placement.check_placement(cfg.model, device)
    if aq.reuse_scores:
        _check_cache_dir(Path(aq.score_cache_dir))
        scorecache.check_key_file()  # e.g. world-readable: refused now, not inside the run
    frozen = [*scope.FROZEN_PATTERNS[aq.coverage], *([] if aq.lm_head else [LM_HEAD_PATTERN])]
    # Pair and overlay: preset available, overlay meaningful, runnable on this device.
    quant_cfg = catalogue.build_quant_config(pair, cfg.quant_granularity)
    catalogue.check_device(pair, cfg.quant_granularity, quant_cfg, device)
    ckpt = checkpoint.resolve(cfg.model)
    catalogue.check_layer_fit(cfg.quant_granularity, ckpt.path, frozen, cfg.model.trust_remote_code,
                              ckpt.random_init.config if ckpt.random_init else None)
    images = read_images(cfg, ckpt.path)
    captions = (images.captions if images is not None
                else calibration.read_captions(cfg.dataset.captions_path, sample_count(cfg)))
    fmt_bits = catalogue.format_effective_bits(quant_cfg)
    targets = checked_targets(aq.effective_bits, fmt_bits, pair)
    score_samples = min(aq.score_size or len(captions.lines), len(captions.lines))
    # Read once per checkpoint (remembered by file identity: the memos are written by the first
    # phase); refuses NaN / inf weights here, before any run exists. With reuse off, the loaded
    # model is checked instead.
    weights, memos = (digest.weights_digest(ckpt.path, Path(aq.score_cache_dir) / WEIGHT_DIGESTS)
                      if aq.reuse_scores else (None, []))
    return Plan(cfg, ckpt.path, ckpt.fingerprint, device, captions, quant_cfg,
                catalogue.format_name(pair, cfg.quant_granularity), fmt_bits, targets,
                score_samples, frozen, weights, ckpt.random_init, memos, images,
                catalogue.quantizer_settings(quant_cfg, catalogue.WEIGHT),
                catalogue.quantizer_settings(quant_cfg, catalogue.INPUT))


def write_planned(p: Plan) -> None:
    """What ``plan`` decided but left unwritten: the random-init checkpoint directory and the
    weights' digest memos. Idempotent; the first phase (``calibration_data``) calls it."""
    if p.random_init is not None:
        p.random_init.write()
    for memo in p.digest_memos:
        memo.write()


def read_images(cfg: SensitivityConfig,
                checkpoint: Path | None) -> image_captions.ImageCaptions | None:
    """The image-caption pairs of an image_text job, every one checked (None for text jobs);
    with a ``checkpoint``, also that it has an image processor and chat template (a dry run
    plans without one)."""
    d = cfg.dataset
    if d.modality != Modality.image_text:
        return None
    if not d.images_dir:
        raise UserError("dataset.modality=image_text needs dataset.images_dir: the folder of the "
                        "images named in dataset.annotations_path (a COCO-style captions JSON), "
                        "or, with annotations_path=null, a folder of image/caption pairs "
                        "(cat.jpg + cat.txt). Use dataset=image_captions, or set it.")
    for name in ("image_min_pixels", "image_max_pixels"):
        if getattr(d, name) <= 0:
            raise UserError(f"dataset.{name}={getattr(d, name)} must be a positive pixel count.")
    if not d.pad_to_longest or d.sort_by_length:  # chats are batched in file order, padded
        raise UserError("dataset.modality=image_text batches chats in file order, each batch "
                        "padded to its longest chat: set dataset.pad_to_longest=true and "
                        "dataset.sort_by_length=false.")
    if d.image_min_pixels > d.image_max_pixels:
        raise UserError(f"dataset.image_min_pixels={d.image_min_pixels} is above "
                        f"dataset.image_max_pixels={d.image_max_pixels}; set min <= max.")
    if checkpoint is not None:
        image_captions.check_image_support(checkpoint)
    if not d.annotations_path:  # a folder of image/caption pairs
        return image_captions.read_image_folder(d.images_dir, sample_count(cfg))
    return image_captions.read_image_captions(d.annotations_path, d.images_dir, sample_count(cfg))


def _check_cache_dir(path: Path) -> None:
    blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"autoquant.score_cache_dir={path} cannot be a directory: '{blocker}' is a "
                        "file. Point it at a directory, or set autoquant.reuse_scores=false.")


def out_of_reach(targets: list[float], lowest: float) -> float | None:
    """The first LM bit target outside [lowest, 16] (lowest: every group in the smallest format)."""
    return next((t for t in targets if not (lowest - BITS_TOLERANCE <= t <= 16.0)), None)


def checked_targets(value: Any, fmt_bits: float, pair: QuantPairConfig) -> list[float]:
    """The bit targets, each within what the pair's format can reach over the language model."""
    targets = bit_targets(value, fmt_bits)
    target = out_of_reach(targets, fmt_bits)
    if target is not None:
        raise UserError(
            f"autoquant.effective_bits={target:g} is out of reach for quant_pair={pair.name}: "
            f"the language model can average between {fmt_bits:g} bits (every layer in "
            f"{pair.modelopt_base}) and 16 bits (nothing quantized). Set "
            f"autoquant.effective_bits to a value in [{fmt_bits:g}, 16], or null for "
            f"{fmt_bits:g}."
        )
    return targets


def bit_targets(value: Any, natural: float) -> list[float]:
    """``autoquant.effective_bits`` as a list: null -> [natural], 6 -> [6.0], [8, 6] -> [8.0, 6.0]."""
    if value is None:
        return [natural]
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        targets = [float(v) for v in values if not isinstance(v, bool)]
    except (TypeError, ValueError):
        targets = []
    if not values or len(targets) != len(values):
        raise UserError(
            f"autoquant.effective_bits={value!r} is not a number or a list of numbers. Use e.g. "
            "autoquant.effective_bits=6 or autoquant.effective_bits=[4.5,6,8] (a frontier)."
        )
    if len(set(targets)) != len(targets):
        raise UserError(f"autoquant.effective_bits={value!r} repeats a target; list each once.")
    return targets


@dataclass
class Solution:
    groups: dict[str, GroupStats]  # the main target's choice per group
    autoquant: dict[str, Any]  # achieved bits, total score, satisfied
    frontier: list[dict[str, Any]]
    modelopt_bits: float  # what the solver was given for the main target


def calibration_data(p: Plan, resources: Resources) -> list[calibration.Batch]:
    """Token batches (CPU): needed for the score key even when the scores are stored.

    The first phase of every job, so it first writes what the plan left unwritten.
    """
    write_planned(p)
    c = p.cfg
    tokenizer = resources.tokenizer(c.model, p.checkpoint)
    if p.images is not None:
        return resources.image_batches(p.images, tokenizer, p.checkpoint, p.image_settings,
                                       c.autoquant.batch_size, c.dataset.calib_seq_len)
    batches = resources.batches(p.captions, tokenizer, f"{p.checkpoint.resolve()}",
                                c.autoquant.batch_size, c.dataset.calib_seq_len,
                                c.dataset.pad_to_longest, c.dataset.sort_by_length)
    truncated = calibration.truncated_count(batches, c.dataset.calib_seq_len)
    if truncated:
        log.warning("%d of %d captions are longer than dataset.calib_seq_len=%d tokens and were "
                    "truncated; raise dataset.calib_seq_len to score them whole.", truncated,
                    len(p.captions.lines), c.dataset.calib_seq_len)
    return batches


def solve(p: Plan, s: scoring.Scores) -> Solution:
    """Every target re-solved from the scores alone, the same way for stored and fresh scores."""
    solved = autoquant.solve(s.state, p.frozen_patterns,
                             [(target, s.modelopt_bits(target)) for target in p.targets])
    label = p.format_name  # ModelOpt's CUSTOM_0(...) label of the pair's config, renamed
    frontier = [{**asdict(point), "recipe": {h: catalogue.custom_label(f, label)
                                             for h, f in point.recipe.items()}}
                for point in solved.points]
    groups = catalogue.name_custom_format(solved.chosen, label)
    point = solved.points[0]
    if point.achieved_bits > p.target_bits + 1e-6 or not point.satisfied:
        log.warning("the solver did not meet %.4g LM bits (achieved %.4f)", p.target_bits,
                    point.achieved_bits)
    return Solution(groups, {
        "effective_bits_achieved": point.achieved_bits,
        "modelopt_effective_bits_achieved": solved.modelopt_achieved_bits,
        "min_effective_bits": min_scope_bits(groups),
        "total_score": point.total_score,
        "satisfied": point.satisfied,
    }, frontier if len(p.targets) > 1 else [], point.modelopt_bits)


class ScoreCounts(Protocol):
    """What the manifest needs of a search's scores (single- or multi-format)."""

    dtype: str
    weights_in_scope: int
    weights_frozen: int


def job_facts(p: Plan, s: ScoreCounts, batches: list[calibration.Batch], *, scheme_name: str,
              target_bits: float, modelopt_bits: float, format_name: str,
              weight_quantizer: dict[str, Any], input_quantizer: dict[str, Any],
              modelopt_config: dict[str, Any]) -> manifest.JobFacts:
    """What the manifest records besides the groups: plan, data and the scores' counts."""
    real, padded, truncated = calibration.token_facts(batches, p.cfg.dataset.calib_seq_len)
    return manifest.JobFacts(
        scheme_name=scheme_name, checkpoint=str(p.checkpoint), fingerprint=p.fingerprint,
        device=p.device, dtype=s.dtype, weights_in_scope=s.weights_in_scope,
        weights_frozen=s.weights_frozen, captions_path=str(p.captions.path),
        captions_sha256=p.captions.sha256, samples_used=len(p.captions.lines),
        samples_max=p.captions.requested, samples_available=p.captions.available,
        batches=len(batches), score_batches=p.score_steps, score_samples=p.score_samples,
        real_tokens=real, padded_tokens=padded, target_bits=target_bits,
        modelopt_bits=modelopt_bits, format_name=format_name,
        weight_quantizer=weight_quantizer, input_quantizer=input_quantizer,
        modelopt_config=modelopt_config, versions=versions(),
        truncated_captions=truncated,
        modality=p.cfg.dataset.modality.value, images=image_facts(p, batches))


def image_facts(p: Plan, batches: list[calibration.Batch]) -> dict[str, Any] | None:
    """What the manifest records of an image_text job's images (None for text jobs)."""
    if p.images is None:
        return None
    return {"annotations_path": str(p.images.annotations), "images_dir": str(p.images.images_dir),
            "sha256": p.images.sha256, **p.image_settings.as_dict(),
            "vision_tokens": image_captions.vision_tokens(batches),
            "caption_tokens": image_captions.caption_tokens(batches)}


def write_outputs(p: Plan, s: scoring.Scores, sol: Solution, batches: list[calibration.Batch],
                  out_dir: Path) -> tuple[manifest.Manifest, list[Path]]:
    """The manifest, its reports and figures, and one recipe per frontier target."""
    doc = manifest.build(p.cfg, job_facts(
        p, s, batches, scheme_name=p.scheme_name, target_bits=p.target_bits,
        modelopt_bits=sol.modelopt_bits, format_name=p.format_name,
        weight_quantizer=p.weight_quantizer, input_quantizer=p.input_quantizer,
        modelopt_config=recipes.jsonable(p.quant_cfg)), sol.groups, sol.autoquant, sol.frontier,
        s.cache)
    files = [manifest.write(doc, out_dir), *report.write_reports(doc, out_dir)]
    exported = recipes.from_frontier(doc) + budgets.keep_top(doc, headroom=p.cfg.recipes.keep)
    files += recipe_files.write_recipes(exported, out_dir / RECIPES_DIR, doc)
    return doc, files


def versions() -> dict[str, str]:
    """Installed versions (package metadata: no import of ModelOpt on a score-cache hit)."""
    return {"torch": torch.__version__, "transformers": metadata.version("transformers"),
            "modelopt": metadata.version("nvidia-modelopt")}


def run(p: Plan, out_dir: Path, resources: Resources | None = None,
        phases: Phases | None = None) -> Result:
    """Calibration data -> scores -> solve -> manifest and reports, into ``out_dir``.

    ``resources`` lets the jobs of one process share loaded models and tokenized batches;
    ``phases`` (optional) tells a caller which phase an interrupted job was in.
    """
    resources = resources or Resources()
    phases = phases or Phases()
    out_dir.mkdir(parents=True, exist_ok=True)
    with phases("calibration_data"):
        batches = calibration_data(p, resources)
    with phases("autoquant"):
        s = scoring.scores(p, batches, resources)
    with phases("solve"):
        sol = solve(p, s)
    with phases("reports"):
        doc, files = write_outputs(p, s, sol, batches, out_dir)
    return Result(doc, files, dict(phases.seconds))
