"""The precision-pair catalogue: quant pairs and granularity overlays -> exact ModelOpt configs.

A pair (``conf/quant_pair/<name>.yaml``) names a ModelOpt preset (``mtq.<NAME>_CFG``) and a list of
named edits; a granularity overlay (``conf/quant_granularity/<name>.yaml``) changes how the pair's
weights or activations are scaled. The effective config is always derived in code from the
installed presets, never written out by hand, so it follows ModelOpt and can be printed for users
to read. Everything that can be decided without the model's weights is checked here.

By concern:
    presets     pair + overlay -> ModelOpt config (presets, named edits, overlays)
    describe    effective settings, format names and bits, warnings, the README tables
    capability  checks before the model loads (CUDA-only formats, group sizes vs layer widths)
    registry    the configured list of pairs, aliases and overlays (filled by the Hydra edge)
"""

from .capability import check_device, check_layer_fit, cpu_alternatives, cuda_requirements, weight_last_dims
from .describe import (
    BEGIN,
    END,
    MODELOPT_CUSTOM_NAME,
    custom_label,
    dtype_name,
    effective_quantizers,
    experimental_warning,
    format_effective_bits,
    format_name,
    markdown_tables,
    name_custom_format,
    quantizer_settings,
    readme_section,
)
from .presets import (
    DEFAULT_FP4,
    EDITS,
    FP4_E2M1,
    INPUT,
    MX_SCALE_BITS,
    WEIGHT,
    Edit,
    QuantCfg,
    build_quant_config,
    is_fp4,
    modelopt_preset,
    resolve_quantizer,
)
from .registry import Listing, current_listing, register_listing_source

__all__ = [
    "BEGIN", "DEFAULT_FP4", "EDITS", "END", "FP4_E2M1", "INPUT", "MODELOPT_CUSTOM_NAME", "MX_SCALE_BITS",
    "WEIGHT", "Edit", "Listing", "QuantCfg", "build_quant_config", "check_device", "check_layer_fit",
    "cpu_alternatives", "cuda_requirements", "current_listing", "custom_label", "dtype_name",
    "effective_quantizers", "experimental_warning", "format_effective_bits", "format_name", "is_fp4",
    "markdown_tables", "modelopt_preset", "name_custom_format", "quantizer_settings", "readme_section",
    "register_listing_source", "resolve_quantizer", "weight_last_dims",
]
