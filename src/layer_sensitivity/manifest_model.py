"""The quant manifest in memory: one pydantic model, read by attribute.

``manifest.build`` makes one, ``manifest.load`` reads one back (either JSON shape), ``manifest.write``
writes it. Every field a job did not record is left unset and is not written, so a manifest
writes back exactly the keys it was built or read with, in the order they are declared here.
Unknown keys are kept (a manifest of a newer version still loads). Views derived from the
groups (profiles, score samples) are computed once per manifest, on first use.

Reading checks types strictly (numbers are numbers, not "8"; booleans are booleans, not 1) and
refuses non-finite numbers; building takes what the job measured as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, WrapValidator, model_validator

from .groups import layer_and_kind
from .profiles import GroupProfile, rank_groups

SCHEMA_VERSION: Literal[1] = 1
READING = "reading"  # validation context key: the document comes from a file


def _number(value: Any, handler: Callable[[Any], Any], info: ValidationInfo) -> Any:
    """A float, keeping an int an int (so it writes back as written) and, when reading, finite."""
    out = value if isinstance(value, int) and not isinstance(value, bool) else handler(value)
    if info.context and info.context.get(READING) and not math.isfinite(out):
        raise ValueError("Input should be a finite number")
    return out


Number = Annotated[float, WrapValidator(_number)]


class Section(BaseModel):
    """A part of the manifest: typed fields, unknown keys kept, unset fields not written."""

    model_config = ConfigDict(extra="allow", frozen=True)

    def has(self, name: str) -> bool:
        """Whether the manifest records ``name`` (a field that is unset was never written)."""
        return name in self.model_fields_set


class Scheme(Section):
    name: Annotated[str, Field(min_length=1)]
    effective_bits_requested: Number | None = None
    effective_bits_modelopt: Number | None = None
    method: str | None = None
    score_size: int | None = None
    coverage: str | None = None
    coverage_fraction: Number | None = None  # legacy manifests only
    formats: list[str] = []
    score_semantics: str | None = None
    kind: str | None = None  # "mixed" for a mixed-format search


class ModelInfo(Section):
    id: str | None = None
    name: str | None = None
    dtype: str | None = None
    device: str | None = None
    fingerprint: str | None = None
    weights_in_scope: int | None = None
    weights_frozen: int | None = None


class Dataset(Section):
    name: str | None = None
    size: str | None = None
    path: str | None = None
    sha256: str | None = None
    samples_used: int | None = None
    samples_max: int | None = None
    samples_available: int | None = None
    seq_len: int | None = None
    batch_size: int | None = None
    batches: int | None = None
    score_batches: int | None = None
    real_tokens: int | None = None
    padded_tokens: int | None = None
    truncated_captions: int | None = None
    modality: str | None = None  # text | image_text (absent: text, before image-text runs)
    # image_text runs: annotations, image folder, data digest, prompt, pixel bounds, token counts
    images: dict[str, Any] | None = None


class FormatInfo(Section):
    """One format of a mixed-format search (``quantization.formats``)."""

    name: str
    pair: str | None = None
    bits: Number | None = None
    modelopt_base: str | None = None
    weight_quantizer: dict[str, Any] | None = None
    input_quantizer: dict[str, Any] | None = None
    experimental: bool | None = None


class Quantization(Section):
    """The precision pair and granularity (one search), or the formats of a mixed search."""

    pair: str | None = None
    pairs: list[str] | None = None  # mixed
    weight_dtype: str | None = None
    activation_dtype: str | None = None
    activations_quantized: bool | None = None
    fp4_format: str | None = None
    modelopt_format: str | None = None
    modelopt_base: str | None = None
    edits: list[str] | None = None
    granularity: str | None = None
    granularity_weight: str | None = None
    granularity_group_size: int | None = None
    granularity_activation: str | None = None
    # Exact settings of a decoder linear layer's quantizers (type, num_bits, axis, blocks).
    weight_quantizer: dict[str, Any] | None = None
    input_quantizer: dict[str, Any] | None = None
    requires_cuda: bool | None = None
    experimental: bool | None = None
    modelopt_config: dict[str, Any] | None = None  # the exact ModelOpt config searched
    formats: list[FormatInfo] | None = None  # mixed
    modelopt_configs: dict[str, dict[str, Any]] | None = None  # mixed: format name -> config


class Group(Section):
    """One in-scope layer group: its candidate formats with a score and a cost for each."""

    formats: list[str]
    scores: list[Number]
    costs: list[Number]
    importance: Number  # the largest score among quantized formats
    rank: Annotated[int, Field(ge=1)]  # 1 = most sensitive
    modules: list[str] | None = None
    chosen: str | None = None

    @model_validator(mode="after")
    def _parallel(self) -> Group:
        for name in ("scores", "costs"):
            if len(getattr(self, name)) != len(self.formats):
                raise ValueError(f"has {len(self.formats)} formats but "
                                 f"{len(getattr(self, name))} {name}")
        return self


class RankingEntry(Section):
    name: str
    importance: Number


class Autoquant(Section):
    """The solver's outcome at the main target."""

    effective_bits_achieved: Number | None = None
    modelopt_effective_bits_achieved: Number | None = None
    min_effective_bits: Number | None = None
    total_score: Number | None = None
    satisfied: bool | None = None


class Share(Section):
    """How many in-scope groups a format gets at one budget, and their share of the weights."""

    groups: Number
    weights_share: Number


class SolverPoint(Section):
    target_bits: Number
    modelopt_bits: Number
    achieved_bits: Number
    total_score: Number
    satisfied: bool


class FrontierPoint(SolverPoint):
    """One bit target re-solved from the search: the recipe (group -> format) it gives."""

    recipe: dict[str, str]
    mix: dict[str, Share] | None = None  # mixed: per format name, most compressed first


class ScoreCache(Section):
    key: str | None = None
    hit: bool
    path: str | None = None


class Mixed(Section):
    """A mixed-format search: the formats asked for and how their scores were obtained."""

    pairs: list[str] = []
    requested: list[str] = []
    budgets: list[Number] = []
    strategy: str | None = None
    composed: bool | None = None
    reason: str | None = None
    single_format_scores: dict[str, ScoreCache | None] | None = None
    single_frontiers: dict[str, list[SolverPoint]] = {}  # each format alone, same objective


class Manifest(Section):
    """Everything a sensitivity (or mixed-format) job measured."""

    schema_version: Literal[1]
    legacy: bool = False  # converted from the earlier runner's shape
    scheme: Scheme
    model: ModelInfo = Field(default_factory=ModelInfo)
    dataset: Dataset = Field(default_factory=Dataset)
    quantization: Quantization = Field(default_factory=Quantization)
    layer_sensitivity: dict[str, Group]  # in-scope groups, most sensitive first
    sensitivity_ranking: list[RankingEntry] = []
    frozen_groups: list[str] = []
    autoquant: Autoquant = Field(default_factory=Autoquant)
    versions: dict[str, str] = {}
    score_cache: ScoreCache | None = None
    frontier: list[FrontierPoint] = []
    mixed: Mixed | None = None
    run_config: Any = None  # legacy manifests: the earlier runner's config

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON document ``manifest.write`` writes: the recorded keys only."""
        return self.model_dump(exclude_unset=True)

    # --- derived views, computed once ---------------------------------------------------------

    @cached_property
    def score_samples(self) -> int | None:
        """Samples the scores were summed over: ``scheme.score_size`` capped by
        ``dataset.samples_used`` (either alone when the other is missing); None when neither is
        known."""
        counts = [self.scheme.score_size, self.dataset.samples_used]
        known = [int(c) for c in counts if c is not None and c > 0]
        return min(known) if known else None

    @cached_property
    def num_decoder_layers(self) -> int:
        """Decoder layers spanned by the in-scope groups (highest layer index + 1; 0 if none)."""
        layers = [layer_and_kind(h)[0] for h in self.layer_sensitivity]
        return max((x for x in layers if x is not None), default=-1) + 1

    @cached_property
    def profiles(self) -> list[GroupProfile]:
        """Every in-scope group as reports and metrics show it, most sensitive first."""
        return rank_groups({h: (g.importance, g.modules) for h, g in self.layer_sensitivity.items()},
                           self.num_decoder_layers, self.score_samples)

    def as_mixed(self, formats: list[str], kind: str, quantization: Quantization,
                 mixed: Mixed) -> Manifest:
        """This manifest as a mixed-format search's: its format names, its formats' settings
        (instead of one pair's) and the mix (the groups and their views are unchanged)."""
        scheme = self.scheme.model_copy(update={"formats": formats, "kind": kind})
        return self.model_copy(update={"scheme": scheme, "quantization": quantization,
                                       "mixed": mixed})
