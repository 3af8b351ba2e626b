"""Per-layer quantization sensitivity of Qwen3-VL's language model with ModelOpt AutoQuantize."""

__version__ = "0.1.0"
