"""Typed schemas for every config group.

Plain dataclasses and enums, importable without Hydra: the CLI registers them with Hydra's
ConfigStore (see ``cli/config_store.py``) so a wrong key, type or enum value fails at compose time,
and the core receives the same dataclasses as plain Python objects.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from . import paths


class _Choice(str, Enum):
    """An enum whose text is its value, so it reads naturally in paths and interpolations."""

    def __str__(self) -> str:
        return self.value


class DType(_Choice):
    auto = "auto"  # bf16 on CUDA, fp32 on CPU
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class DatasetSize(_Choice):
    small = "small"
    medium = "medium"
    large = "large"


class Modality(_Choice):
    """What the language model sees during calibration and scoring."""

    text = "text"  # captions alone (the default: comparable and fast)
    image_text = "image_text"  # an image, a prompt and its caption as Qwen3-VL's chat


class Precision(_Choice):
    """A weight or activation precision as users name it (fp16 = left unquantized)."""

    fp16 = "fp16"
    fp8 = "fp8"
    int8 = "int8"
    int4 = "int4"
    fp4 = "fp4"


class Method(_Choice):
    gradient = "gradient"
    kl_div = "kl_div"


class Coverage(_Choice):
    lm_only = "lm_only"  # vision tower stays unquantized
    full = "full"


class ModelInit(_Choice):
    pretrained = "pretrained"  # the checkpoint's weights from local disk
    random = "random"  # seeded random weights of the real shape; no weights are read


class OutputLayout(_Choice):
    tmp = "tmp"  # the Hydra run directory
    publish = "publish"  # the committed models/<model>/layer-analysis/... tree


@dataclass
class ModelConfig:
    name: str = "tiny-qwen3-vl"
    # Local checkpoint directory; weights are never fetched from a hub. The default is the embedded
    # tiny model; presets for real checkpoints set null and name ``path_env``.
    path: Optional[str] = paths.asset("tiny-qwen3-vl")
    # Environment variable that holds the directory when ``path`` is unset (presets for real
    # checkpoints name one, e.g. QWEN3_VL_4B_PATH).
    path_env: Optional[str] = None
    dtype: DType = DType.auto
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    trust_remote_code: bool = False
    init: ModelInit = ModelInit.pretrained
    # Architecture values (config.json content, shapes only) used when there is no checkpoint
    # directory: runner.dry_run plans and model.init=random builds from them.
    config: Optional[Dict[str, Any]] = None
    # Spread one model over several GPUs through accelerate: auto | balanced | balanced_low_0 |
    # sequential, or an explicit {module name: device} map. null = the whole model on model.device.
    device_map: Any = None
    # Per device cap with device_map: {GPU index or "cpu": size}, e.g. model.max_memory={0:70GiB,1:70GiB}
    max_memory: Any = None


@dataclass
class DatasetConfig:
    name: str = "bundled-captions"
    captions_path: str = paths.asset("captions/captions.txt")
    size: DatasetSize = DatasetSize.small
    size_samples: Dict[str, int] = field(
        default_factory=lambda: {"small": 16, "medium": 128, "large": 512}
    )
    max_calib_samples: Optional[int] = None  # overrides the size's sample count
    calib_seq_len: int = 128  # captions longer than this are truncated
    # false = pad every batch to calib_seq_len (the earlier runner's way; same scores, more compute)
    pad_to_longest: bool = True
    sort_by_length: bool = False  # batch captions of similar length together (less padding)
    # modality=image_text (conf/dataset/image_captions.yaml): COCO-style captions JSON and the
    # folder of its images (annotations_path null: a folder of image/caption pairs, cat.jpg +
    # cat.txt); each image is resized to within [min, max] pixels by the model's
    # processor, which sets its number of vision tokens (and so memory).
    modality: Modality = Modality.text
    annotations_path: Optional[str] = None
    images_dir: Optional[str] = None
    image_prompt: str = "Describe the picture."
    image_min_pixels: int = 1024
    image_max_pixels: int = 9216


class FP4Format(_Choice):
    """The two FP4 flavours ModelOpt offers (E2M1 values, different block scaling)."""

    nvfp4 = "nvfp4"  # blocks of 16 (32 in W4A8_NVFP4_FP8_CFG) with FP8 E4M3 scales; the default FP4
    mxfp4 = "mxfp4"  # OCP microscaling: blocks of 32 with E8M0 (power-of-two) scales


class PresetEdit(_Choice):
    """Named edits to a ModelOpt preset (implemented in ``catalogue.EDITS``, derived from presets)."""

    disable_input_quantizers = "disable_input_quantizers"
    fp8_inputs = "fp8_inputs"
    int8_inputs = "int8_inputs"
    int4_inputs = "int4_inputs"


@dataclass
class QuantPairConfig:
    name: str = "wfp8_afp8"  # canonical w<weight>_a<activation>
    weight: Precision = Precision.fp8
    activation: Precision = Precision.fp8
    fp4_format: Optional[FP4Format] = None  # set when weights or activations are FP4
    modelopt_base: str = "FP8_DEFAULT_CFG"  # the mtq.*_CFG preset this pair starts from
    edits: List[PresetEdit] = field(default_factory=list)  # applied to the preset, in order
    # Whether ModelOpt can only run this pair on CUDA (checked against the derived config).
    requires_cuda: bool = False
    experimental: bool = False  # a mixed combination no inference runtime deploys yet
    description: str = ""


class WeightGranularity(_Choice):
    keep = "keep"  # the pair's own weight scaling
    per_tensor = "per_tensor"
    per_out_channel = "per_out_channel"  # one scale per output feature (axis 0)
    per_in_channel = "per_in_channel"  # one scale per input feature (axis 1)
    group = "group"  # blocks of ``group_size`` consecutive input features, static scales


class ActivationGranularity(_Choice):
    keep = "keep"  # the pair's own activation scaling
    per_tensor_static = "per_tensor_static"  # one calibrated scale per tensor
    per_token_dynamic = "per_token_dynamic"  # one scale per token, computed at run time


@dataclass
class QuantGranularityConfig:
    name: str = "default"
    weight: WeightGranularity = WeightGranularity.keep
    group_size: Optional[int] = None  # for weight=group
    activation: ActivationGranularity = ActivationGranularity.keep
    description: str = ""


@dataclass
class AutoQuantConfig:
    method: Method = Method.gradient
    # Average bits over the language model's quantizable weights (lm_head included);
    # null = the pair's natural target (its weight format's bits). A list ([4.5, 6, 8]) is a
    # bit-target frontier: scores are computed once, the search is re-solved per target, and the
    # first target is the run's main result. (Typed Any because OmegaConf has no float|list union;
    # pipeline.plan validates it.)
    effective_bits: Any = None
    score_size: Optional[int] = None  # samples used for scoring; null = all calibration samples
    batch_size: int = 4
    coverage: Coverage = Coverage.lm_only
    # Whether lm_head is analysed (scored and quantizable). Deploy runtimes usually keep it at 16
    # bits; false leaves it unquantized like the vision tower (its weights then count as frozen).
    lm_head: bool = True
    seed: int = 0
    # Reuse stored scores (ModelOpt checkpoint=) when everything they depend on matches.
    reuse_scores: bool = True
    # $LAYER_SENSITIVITY_CACHE_DIR/autoquant-scores, else <project root>/.cache/autoquant-scores
    score_cache_dir: str = field(default_factory=paths.default_score_cache_dir)


@dataclass
class OutputLayoutConfig:
    kind: OutputLayout = OutputLayout.tmp
    # publish root (layout `publish` only)
    root: str = field(default_factory=lambda: str(paths.project_root() / "models"))
    # Where the job writes (Hydra sets its run directory). None only where no directory exists yet
    # (``--cfg job --resolve`` prints the config before Hydra makes one).
    dir: Optional[str] = field(default_factory=paths.default_output_dir)


@dataclass
class TrackingConfig:
    enabled: bool = True
    # null = MLFLOW_TRACKING_URI when set, else sqlite:///<project root>/mlflow.db
    uri: Optional[str] = None
    experiment: str = "qwen3-vl-layer-sensitivity"
    run_name: Optional[str] = None
    system_metrics: bool = True  # CPU / memory (GPU when present) sampled into the run


@dataclass
class RunnerConfig:
    # Regenerate the reports from the one *_quant_manifest.json in ``output_dir`` (no model, no
    # MLflow) instead of running a job.
    report_only: bool = False
    output_dir: Optional[str] = None
    # Plan the job (shapes, layer groups, bits, memory estimate) on the meta device and write
    # plan.json; loads no weights and no data.
    dry_run: bool = False


@dataclass
class RecipesConfig:
    # Exported with every run (recipes/*.yaml, ModelOpt PTQ recipes), one per value: LM bit
    # budgets as fractions of the headroom from the pair's bits (0: every group quantized) to 16
    # (1: none), each filled by keeping the most sensitive groups per bit spent at 16 bits
    # (budgets.py states the rule); plus one per frontier target.
    keep: List[float] = field(default_factory=lambda: [0.0, 0.10, 0.25, 0.50])

    def __post_init__(self) -> None:
        check_recipes(self)


def check_recipes(cfg: "RecipesConfig") -> None:
    """Each ``recipes.keep`` value is a fraction of the 16-bit headroom (UserError otherwise)."""
    from .budgets import check_headroom

    check_headroom(list(cfg.keep), "recipes.keep")


@dataclass
class SensitivityConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    quant_pair: QuantPairConfig = field(default_factory=QuantPairConfig)
    quant_granularity: QuantGranularityConfig = field(default_factory=QuantGranularityConfig)
    autoquant: AutoQuantConfig = field(default_factory=AutoQuantConfig)
    output_layout: OutputLayoutConfig = field(default_factory=OutputLayoutConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    recipes: RecipesConfig = field(default_factory=RecipesConfig)
