"""GGUF -> LLM bundle: stream every tensor through its weight format, write the ``kind: llm`` container.

Layer matrices get the chosen scheme (lut3, lut2 and ptqtp give some matrices more bits, see MIXES and
LAYER_MIXES); the embedding (and the output head, tied or not) stay int8, since the head is read every
token and is the most sensitive matrix. The report gives per-tensor relative weight error, bits per
weight, bytes read per token and the device's predicted decode speed (bandwidth / bytes per token).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from edgeq import __version__
from edgeq.bundle import encode_container, write_atomic
from edgeq.devices import get_device
from edgeq.errors import EdgeqError
from edgeq.progress import Progress
from edgeq.runtimes import llm_formats
from edgeq.runtimes.llm_reference import LAYER_MATS, LLMWeights, Matrix
from . import llm_calib, llm_quantize
from .gguf_import import GGUFModel

SCHEMES = ("int8", "int4", "ternary", "ptqtp", "lut2", "lut3")
# Schemes that destroy a model not trained for them (REFERENCE.md section 5): warn and measure.
RISKY = ("ternary", "ptqtp", "lut2")
HEAD_FORMAT = "int8"
# Per-tensor recipes, like llama.cpp's Q2_K / *_M ones: the matrices quantization hurts most get more bits
# in the LUT schemes. lut3 keeps the big feed-forward gate/up (half the layer weights) at 3 bits and the rest
# at 4 (the value projection at 8): 4.36 bits/weight on SmolLM2, below the 4.63 of llama.cpp's Q3_K_M file
# there, and measured better than it (benchmarks/RESULTS.md; with attn_q/attn_k at lut3 too, 4.30 bits, it
# was level). lut2 is the same recipe with gate/up at 2 bits (2-bit bit planes for two thirds of the
# feed-forward weights, as llama.cpp's Q2_K recipe keeps its ffn_down and attention at more bits): 3.89
# bits/weight on SmolLM2 with the layer exceptions below. The recipes tried are in docs/llm.md ("Recipes").
MIXES: dict[str, dict[str, str]] = {s: {"attn_q": "int4", "attn_k": "int4", "attn_v": "int8",
                                        "attn_output": "int4", "ffn_down": "int4"} for s in ("lut3", "lut2")}
# Layer-specific exceptions {scheme: {layer: {matrix: format}}}, like llama.cpp's extra bits for some layers'
# ffn_down. The first layer's feed-forward block writes the residual stream's huge outlier channels (its
# output is ~170x the residual's size on SmolLM2), and low bits there cost more than in any other layer:
# lut2 keeps layer 0's gate/up at int4 (+0.03 bits/weight; perplexity 20.96 -> 19.37), ptqtp its whole
# feed-forward block (same 4.5 bits/weight; 16.83 -> 16.21). lut2 also keeps gate/up at lut3 in the six
# layers where 2 bits cost SmolLM2 most, measured one layer at a time on held-out calibration text (not the
# evaluation text): 3.89 bits/weight, 19.37 -> 18.28, with 23 of 30 layers' gate/up (51% of the feed-forward
# weights) still lut2. Figures: docs/llm.md, "Recipes".
_LUT3_FFN = {"ffn_gate": "lut3", "ffn_up": "lut3"}
LAYER_MIXES: dict[str, dict[int, dict[str, str]]] = {
    "lut2": {0: {"ffn_gate": "int4", "ffn_up": "int4"}, **{i: _LUT3_FFN for i in (6, 7, 10, 18, 19, 23)}},
    "ptqtp": {0: {"ffn_gate": "int4", "ffn_up": "int4", "ffn_down": "int4"}},
}


def tensor_format(name: str, scheme: str, mix: dict[str, str] | None = None) -> str:
    """The weight format of tensor ``name`` under ``scheme``: embedding/head int8; else ``mix``'s entry
    (a recipe to try: key ``"3.ffn_up"`` for one layer's matrix, ``"ffn_up"`` for every layer's), then
    LAYER_MIXES, MIXES, and the scheme itself."""
    if name in ("token_embd", "output"):
        return HEAD_FORMAT
    _, layer, mat = name.split(".")
    for key in (f"{layer}.{mat}", mat):
        if key in (mix or {}):
            return mix[key]
    return LAYER_MIXES.get(scheme, {}).get(int(layer), {}).get(mat) or MIXES.get(scheme, {}).get(mat, scheme)


def check_mix(mix: dict[str, str]) -> None:
    """EdgeqError naming the first entry of a recipe that is not ``[layer.]matrix: format``."""
    for key, fmt in mix.items():
        layer, _, mat = key.rpartition(".")
        if mat not in LAYER_MATS or (layer and not layer.isdigit()) or fmt not in llm_formats.FORMATS:
            raise EdgeqError(f"bad mix entry {key!r}: {fmt!r} (want [layer.]matrix: format, matrices "
                             f"{', '.join(LAYER_MATS)}, formats {', '.join(llm_formats.FORMATS)})")


@dataclass
class LLMConversion:
    """Where the bundle went and the conversion report (JSON-able)."""

    path: Path
    report: dict[str, Any]


def _rel_err(w: np.ndarray, wd: np.ndarray) -> float:
    return float(np.sqrt(np.mean((wd - w) ** 2) / max(float(np.mean(w.astype(np.float64) ** 2)), 1e-30)))


def _calibrated(scheme: str, mix: dict[str, str] | None, n_layers: int) -> bool:
    """Whether any matrix gains from calibration (int8 rows use absmax, data-independent)."""
    return any(tensor_format(f"blk.{i}.{n}", scheme, mix) != "int8" for i in range(n_layers) for n in LAYER_MATS)


def convert_gguf(model: str | Path, device: str = "rpi5", scheme: str | None = None,
                 output: str | Path | None = None, progress: bool = True, quantizer: str = "gptq",
                 calib_text: str | None = None, calib_tokens: int = llm_calib.DEFAULT_TOKENS,
                 mix: dict[str, str] | None = None) -> LLMConversion:
    """Convert a Llama-architecture GGUF into an LLM bundle for ``device`` with weight ``scheme``.

    ``quantizer``: ``gptq`` (default), ``imatrix`` or ``plain`` (no calibration); see llm_quantize.
    ``calib_text``: calibration text (default: llm_calib.builtin_text(), disjoint from the evaluation
    text); its first ``calib_tokens`` tokens are used. ``mix``: formats that override the scheme's recipe
    (see :func:`tensor_format`), for trying recipes.
    """
    t_start = time.perf_counter()
    profile = get_device(device)
    scheme = scheme or profile.default_scheme
    if scheme not in SCHEMES:
        raise EdgeqError(f"unknown LLM scheme {scheme!r} (choose from {', '.join(SCHEMES)})")
    if scheme not in profile.schemes:
        raise EdgeqError(f"device '{profile.id}' does not support scheme '{scheme}' "
                         f"(supports: {', '.join(profile.schemes)})")
    if quantizer not in llm_quantize.METHODS:
        raise EdgeqError(f"unknown quantizer {quantizer!r} (choose from {', '.join(llm_quantize.METHODS)})")
    if calib_tokens < llm_calib.MIN_TOKENS:
        raise EdgeqError(f"--calib-tokens must be at least {llm_calib.MIN_TOKENS}")
    check_mix(mix or {})
    g = GGUFModel(model)
    out = Path(output) if output else Path(g.path).with_suffix(f".{profile.id}.{scheme}.edgeq")
    if out.parent and not out.parent.exists():
        raise EdgeqError(f"output directory '{out.parent}' does not exist")
    method = quantizer if _calibrated(scheme, mix, g.config.n_layers) else "plain"
    consts: dict[str, np.ndarray] = {}
    specs: dict[str, Any] = {}
    mats: dict[str, Matrix] = {}
    errors: dict[str, float] = {}

    def quantize(name: str, w: np.ndarray, hessian: np.ndarray | None = None) -> np.ndarray:
        fmt = tensor_format(name, scheme, mix)
        arrays = llm_quantize.quantize_matrix(w, fmt, hessian, method if hessian is not None else "plain",
                                              tensor=name + ".weight")
        m = Matrix(fmt, w.shape[0], w.shape[1], arrays)
        wq = llm_formats.unpack(arrays, fmt)
        errors[name] = round(_rel_err(w, wq), 5)
        mats[name] = m
        specs[name] = {"format": fmt, "rows": m.rows, "cols": m.cols}
        consts.update({f"{name}.{k}": v for k, v in arrays.items()})
        bar.advance()
        return wq

    names = list(g.matrix_names())
    calib: dict[str, Any] = {"method": method}
    if method != "plain":  # tokenize first: a text too short fails before any work
        windows = llm_calib.calibration_windows(
            g, llm_calib.builtin_text() if calib_text is None else calib_text, calib_tokens)
        calib.update(source=f"built-in: docstrings of {len(llm_calib.CALIB_MODULES)} standard-library modules"
                     if calib_text is None else "user text", tokens=int(windows.size), windows=int(windows.shape[0]))
    with Progress(f"converting to {scheme} ({method})", len(names), enabled=progress) as bar, \
            threadpool_limits(1):  # one BLAS thread: two spin-waiting ones collapse on a shared 2-core machine
        emb = quantize("token_embd", g.load("token_embd"))  # one float tensor alive at a time
        if method == "plain":
            for name in names:
                if name != "token_embd":
                    quantize(name, g.load(name))
        else:
            layers = llm_calib.LayerPass(g.config, emb, windows)
            del emb
            for li in range(g.config.n_layers):
                layers.layer(li, g.load, quantize)
            if "output" in g.tensors:
                quantize("output", g.load("output"))
        calib["seconds"] = round(time.perf_counter() - t_start, 1)
    norms = {n: g.load(n).astype(np.float32) for n in g.norm_names()}
    consts.update(norms)
    tok_blob = np.frombuffer(g.tokenizer_gguf(), dtype=np.uint8)
    consts["tokenizer.gguf"] = tok_blob
    weights = LLMWeights(g.config, mats, norms)
    bpt = weights.bytes_per_token()
    layer_params = sum(m.rows * m.cols for k, m in mats.items() if k.startswith("blk."))
    layer_bytes = sum(llm_formats.packed_nbytes(m.arrays) for k, m in mats.items() if k.startswith("blk."))
    weights_bytes = sum(llm_formats.packed_nbytes(m.arrays) for m in mats.values())
    worst = sorted(errors, key=errors.get, reverse=True)[:5]
    bw = profile.mem_bandwidth_bytes_per_s
    report = {
        "output": str(out), "device": profile.id, "scheme": scheme, "head_format": HEAD_FORMAT,
        "source": {"format": "gguf", "name": g.path.name},
        "config": g.config.to_dict(),
        "layer_bits_per_weight": round(8 * layer_bytes / layer_params, 4),
        "bits_per_weight": round(8 * weights_bytes / sum(m.rows * m.cols for m in mats.values()), 4),
        "formats": dict(Counter(m.fmt for k, m in mats.items() if k.startswith("blk."))),
        "weights_bytes": weights_bytes,
        "quantizer": calib,
        "mix": mix or None,
        "bytes_per_token": bpt,
        "predicted_decode_tokens_per_s": round(bw / bpt, 1) if bw else None,
        "mean_relative_weight_error": round(float(np.mean([errors[k] for k in errors if k.startswith("blk.")])), 5),
        "worst_tensors": {k: errors[k] for k in worst},
        "warning": (f"the {scheme} scheme applied after training (a model not trained for it) usually "
                    f"destroys its quality: check the perplexity" if scheme in RISKY else None),
    }
    manifest = {
        "kind": "llm", "device": profile.to_dict(), "scheme": scheme,
        "producer": {"name": "edgeq", "version": __version__},
        "source": {"format": "gguf", "sha256": g.sha256(), "name": g.path.name},
        "config": g.config.to_dict(), "tensors": specs,
        "tokenizer": {"blob": "tokenizer.gguf", **g.tokenizer_info()},
        "report": {k: report[k] for k in ("layer_bits_per_weight", "bits_per_weight", "bytes_per_token", "quantizer",
                                          "mean_relative_weight_error", "worst_tensors", "warning")},
    }
    chunks = encode_container(manifest, consts)
    write_atomic(out, chunks)
    report["bundle_bytes"] = sum(len(c) for c in chunks)
    return LLMConversion(out, report)
