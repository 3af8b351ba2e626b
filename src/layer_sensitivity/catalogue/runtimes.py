"""Which serving runtimes load the unified Hugging Face checkpoint ModelOpt exports for a format.

``export_hf_checkpoint`` names each quantized layer's format in ``hf_quant_config.json``
(``quant_algo``; ``MIXED_PRECISION`` with ``quantized_layers`` when a model mixes formats). A
runtime serves the export when it reads that ``quant_algo`` (and, for a mix, every per-layer
one). The format is derived from a layer's weight and input quantizer settings, the way ModelOpt's
exporter derives it (``modelopt.torch.export.quant_utils.get_quantization_format``); where the
exporter's label would not describe what was measured (it ignores an INT4 layer's activation
quantizer, and an FP8 layer's activation format), the pair has no faithful export and no runtime.

Each claim names its source (docs or code, read for this table); a runtime absent from a format
is "no claim found", not "verified impossible". The claims are about checkpoint formats: whether a
runtime supports a given model architecture (Qwen3-VL) is the runtime's model list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TRTLLM, VLLM, SGLANG = "TensorRT-LLM", "vLLM", "SGLang"
RUNTIMES = (TRTLLM, VLLM, SGLANG)
MIXED_PRECISION = "MIXED_PRECISION"

# Sources (read 2026-12 for this table).
_TRTLLM_DOCS = "https://nvidia.github.io/TensorRT-LLM/features/quantization.html"
_MODELOPT_MATRIX = "https://nvidia.github.io/Model-Optimizer/guides/0_support_matrix.html"
_TRTLLM_AUTOQ = ("github.com/NVIDIA/TensorRT-LLM examples/quantization/README.md "
                 "(--autoq_format fp8,int4_awq,w4a8_awq: per-layer mixed checkpoints)")
_TRTLLM_MIXED = ("github.com/NVIDIA/TensorRT-LLM tensorrt_llm/_torch/model_config.py "
                 "(load_modelopt_quant_config: MIXED_PRECISION -> per-layer quantized_layers)")
_TRTLLM_MODE = ("github.com/NVIDIA/TensorRT-LLM tensorrt_llm/quantization/mode.py (QuantAlgo: W8A16, "
                "W4A16_AWQ, W8A8_SQ_PER_CHANNEL, FP8, NVFP4, MIXED_PRECISION)")
_VLLM_DOCS = "https://docs.vllm.ai/en/stable/features/quantization/modelopt/"
_VLLM_MIXED = ("github.com/vllm-project/vllm vllm/model_executor/layers/quantization/modelopt.py "
               "(ModelOptMixedPrecisionConfig: per-layer FP8, NVFP4, W4A16_NVFP4, MXFP8)")
_SGLANG_DOCS = ("github.com/sgl-project/sglang docs/backend/quantization.md "
                "(modelopt_fp8, modelopt_fp4 checkpoints)")


@dataclass(frozen=True)
class Format:
    """One exported layer format: its ``quant_algo`` and who serves it, with sources."""

    quant_algo: str  # as hf_quant_config.json writes it
    served_by: Mapping[str, str]  # runtime -> source of the claim
    in_mix: Mapping[str, str]  # runtime -> source, when served as one format of MIXED_PRECISION
    note: str = ""


# (weight kind, activation kind) -> format. Kinds: see :func:`quantizer_kind`.
FORMATS: dict[tuple[str, str], Format] = {
    ("fp8", "fp8"): Format("FP8", {TRTLLM: _TRTLLM_DOCS, VLLM: _VLLM_DOCS, SGLANG: _SGLANG_DOCS},
                           {TRTLLM: _TRTLLM_AUTOQ, VLLM: _VLLM_MIXED}),
    ("fp8_channel", "fp8_token"): Format("FP8_PER_CHANNEL_PER_TOKEN",
                                         {TRTLLM: _TRTLLM_DOCS, VLLM: _VLLM_DOCS}, {}),
    ("int4_block", "none"): Format("W4A16_AWQ", {TRTLLM: _TRTLLM_DOCS},
                                   {TRTLLM: _TRTLLM_AUTOQ}),
    ("int8", "int8"): Format("W8A8_SQ_PER_CHANNEL", {TRTLLM: _MODELOPT_MATRIX}, {TRTLLM: _TRTLLM_MIXED}),
    ("int8", "none"): Format("W8A16", {TRTLLM: _TRTLLM_MODE}, {TRTLLM: _TRTLLM_MIXED}),
    ("nvfp4", "nvfp4"): Format("NVFP4", {TRTLLM: _TRTLLM_DOCS, VLLM: _VLLM_DOCS,
                                         SGLANG: _SGLANG_DOCS},
                               {TRTLLM: _TRTLLM_MIXED, VLLM: _VLLM_MIXED}),
    ("nvfp4", "none"): Format("W4A16_NVFP4", {VLLM: _VLLM_DOCS}, {VLLM: _VLLM_MIXED}),
    # Exported, but no runtime claim found: kept so the refusal can name the format.
    ("fp8", "none"): Format("FP8", {}, {}, "FP8 weights with 16-bit activations are exported as "
                            "FP8 without input scales; no runtime documents that variant"),
    ("nvfp4", "fp8"): Format("W4A8_NVFP4_FP8", {}, {}),
    ("mxfp4", "mxfp4"): Format("MXFP4", {}, {}),
    ("mxfp4", "fp8"): Format("W4A8_MXFP4_FP8", {}, {}),
    ("mxfp4", "none"): Format("MXFP4", {}, {}),
}


def _bits(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def quantizer_kind(enabled: bool, attrs: Mapping[str, Any] | None) -> str:
    """``none``, ``fp8``, ``fp8_channel``, ``fp8_token``, ``int8``, ``int4``, ``int4_block``,
    ``nvfp4``, ``mxfp4`` or ``other:<num_bits>`` for one quantizer's settings."""
    if not enabled:
        return "none"
    a = dict(attrs or {})
    bits, axis, block = _bits(a.get("num_bits", 8)), a.get("axis"), a.get("block_sizes")
    if bits == (2, 1):
        scale = _bits((block or {}).get("scale_bits"))
        return "mxfp4" if scale == (8, 0) else "nvfp4"
    if bits == (4, 3):
        if block:
            return "fp8_block"
        if (a.get("type") == "dynamic") or axis in (-2, (-2,)):
            return "fp8_token"
        return "fp8_channel" if axis == 0 else "fp8"
    if bits == 4:
        return "int4_block" if block else "int4"
    if bits == 8:
        return "int8"
    return f"other:{bits}"


@dataclass(frozen=True)
class Serving:
    """What the export of a recipe is and who serves it."""

    formats: dict[str, str]  # per (weight kind, activation kind) label -> quant_algo or "?"
    quant_algo: str | None  # the checkpoint's quant_algo (MIXED_PRECISION for several)
    runtimes: dict[str, list[str]]  # runtime -> sources of the claims it rests on
    unserved: dict[str, str]  # format label -> why no runtime serves it

    @property
    def servable(self) -> bool:
        return bool(self.runtimes)

    def summary(self) -> str:
        if not self.formats:
            return "nothing quantized: the export is the 16-bit model"
        what = ", ".join(f"{k} -> {v if v != '?' else 'no faithful ModelOpt format'}"
                         for k, v in sorted(self.formats.items()))
        who = ", ".join(self.runtimes) if self.runtimes else "no runtime"
        algo = self.quant_algo if self.quant_algo not in (None, "?") else "not exportable as measured"
        return f"{algo} ({what}); served by {who}"


def _unfaithful(w: str, a: str) -> str:
    """Why ModelOpt's exporter has no label for what was measured (its get_quantization_format)."""
    if w.startswith("int4"):
        return (f"ModelOpt exports INT4 weights as W4A16_AWQ whatever the activation quantizer, "
                f"so the {a} activations the recipe was measured with would not be served")
    if w.startswith("fp8"):
        return (f"ModelOpt labels FP8 weights FP8 whatever the activation format, so the {a} "
                "activation scales would be read as FP8 ones")
    if w == "int8":
        return (f"ModelOpt labels INT8 weights with quantized inputs W8A8_SQ_PER_CHANNEL (INT8 "
                f"activations), not {a}")
    return f"ModelOpt's exporter has no format for weights {w} with activations {a}"


def _label(w: str, a: str) -> str:
    return f"W:{w} A:{a}"


def serving(layer_kinds: Mapping[str, tuple[str, str]]) -> Serving:
    """Who serves the checkpoint whose quantized layers have these (weight, activation) kinds.

    ``layer_kinds``: module -> (weight kind, activation kind) of every quantized layer.
    """
    kinds = sorted(set(layer_kinds.values()))
    formats: dict[str, str] = {}
    unserved: dict[str, str] = {}
    known: list[Format] = []
    for w, a in kinds:
        fmt = FORMATS.get((w, a))
        formats[_label(w, a)] = fmt.quant_algo if fmt else "?"
        if fmt is None:
            unserved[_label(w, a)] = _unfaithful(w, a)
        elif not fmt.served_by:
            unserved[_label(w, a)] = fmt.note or f"no runtime claim found for {fmt.quant_algo}"
        else:
            known.append(fmt)
    algos = {formats[k] for k in formats}
    if not formats:
        return Serving({}, None, {r: ["16-bit model"] for r in RUNTIMES}, {})
    if unserved:
        return Serving(formats, MIXED_PRECISION if len(algos) > 1 else next(iter(algos)), {},
                       unserved)
    if len(known) == 1:
        return Serving(formats, known[0].quant_algo, {r: [s] for r, s in known[0].served_by.items()},
                       {})
    runtimes = {r: [f.in_mix[r] for f in known] for r in RUNTIMES
                if all(r in f.in_mix for f in known)}
    if not runtimes:
        unserved["mix"] = ("no runtime claims MIXED_PRECISION with all of "
                           + ", ".join(sorted({f.quant_algo for f in known})))
    return Serving(formats, MIXED_PRECISION, {r: sorted(set(s)) for r, s in runtimes.items()},
                   unserved)


def recipe_layer_kinds(module_settings: Mapping[str, Mapping[str, tuple[bool, Any]]]
                       ) -> dict[str, tuple[str, str]]:
    """module -> (weight kind, activation kind) for every module a recipe quantizes the weights of
    (``recipe_files.module_settings``)."""
    out = {}
    for module, s in module_settings.items():
        w_on, w_attrs = s.get("weight_quantizer", (False, None))
        if not w_on:
            continue
        a_on, a_attrs = s.get("input_quantizer", (False, None))
        out[module] = (quantizer_kind(True, w_attrs), quantizer_kind(a_on, a_attrs))
    return out


def config_kinds(cfg: Mapping[str, Any]) -> tuple[str, str]:
    """(weight kind, activation kind) a pair's ModelOpt config gives a decoder linear layer."""
    from .describe import quantizer_settings
    from .presets import INPUT, WEIGHT

    w, a = quantizer_settings(dict(cfg), WEIGHT), quantizer_settings(dict(cfg), INPUT)
    return quantizer_kind(bool(w["enabled"]), w), quantizer_kind(bool(a["enabled"]), a)


def pair_serving(cfg: Mapping[str, Any]) -> Serving:
    """Who serves a pair's export when every quantized layer uses the pair's format."""
    return serving({"*": config_kinds(cfg)})


BEGIN, END = "<!-- runtimes:begin -->", "<!-- runtimes:end -->"


def markdown(pair_kinds: Mapping[str, tuple[str, str]]) -> str:
    """The README table: per exported format, its pairs and who serves it alone or in a mix,
    with numbered sources. ``pair_kinds``: pair name -> :func:`config_kinds` of its config."""
    sources: list[str] = []

    def cite(src: str) -> str:
        if src not in sources:
            sources.append(src)
        return f"[{sources.index(src) + 1}]"

    lines = ["| Weights | Activations | Pairs | Exported as | " + " | ".join(RUNTIMES) + " |",
             "|---|---|---|---|" + "---|" * len(RUNTIMES)]
    rows = sorted(FORMATS.items(), key=lambda kv: (not kv[1].served_by, kv[0]))
    for (w, a), f in rows:
        pairs = ", ".join(f"`{p}`" for p, k in sorted(pair_kinds.items()) if k == (w, a)) or "-"
        cells = []
        for r in RUNTIMES:
            alone = f"yes {cite(f.served_by[r])}" if r in f.served_by else "-"
            mix = f"; in a mix {cite(f.in_mix[r])}" if r in f.in_mix else ""
            cells.append(alone + mix)
        lines.append(f"| {w} | {a} | {pairs} | `{f.quant_algo}` | " + " | ".join(cells) + " |")
    unfaithful = sorted(p for p, k in pair_kinds.items() if k not in FORMATS)
    lines += ["", "No faithful export (ModelOpt's exporter would label the layers with another "
              "activation format, so no runtime serves what was measured): "
              + (", ".join(f"`{p}`" for p in unfaithful) or "none") + ".", "",
              "Sources: " + "; ".join(f"[{i}] {s}" for i, s in enumerate(sources, start=1)) + "."]
    return "\n".join(lines)


def readme_section(readme_text: str) -> str | None:
    if BEGIN not in readme_text or END not in readme_text:
        return None
    return readme_text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")
