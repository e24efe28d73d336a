"""Calibration data for LLM conversion: a text, its tokens, and a float forward pass run layer by layer.

The quantizer (``llm_quantize``) needs, for every layer matrix, the statistics of the activations that
multiply it: ``H = sum_t x_t x_t^T`` over the calibration tokens (its diagonal is llama.cpp's importance
matrix, the whole of it GPTQ's Hessian). :class:`LayerPass` computes them one layer at a time, in the
order the layer uses its matrices, so that each matrix sees the inputs produced by the already quantized
ones before it (GPTQ's sequential mode); only one layer's activations are alive at a time.

The built-in calibration text is the docstrings of a few standard-library modules (:data:`CALIB_MODULES`),
deliberately disjoint from the evaluation text of ``edgeq perplexity``'s default and the benchmarks
(``pydoc_data.topics``, the language reference), so that perplexity figures do not reward fitting the
test text.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

import numpy as np

from edgeq.errors import InputError
from edgeq.runtimes.llm_reference import LLMConfig, rope, rope_tables

F32 = np.float32
CALIB_MODULES = ("argparse", "email.message", "email.utils", "email.headerregistry", "email.policy",
                 "logging", "json", "textwrap", "subprocess", "pathlib", "collections", "functools",
                 "itertools", "string", "datetime", "decimal", "fractions", "statistics", "csv", "shutil")
# 8192 rather than 4096: measured on SmolLM2 (pydoc_data.topics, 4 x 512): ptqtp 16.86 -> 16.21, lut2
# 23.2 -> 21.0 (before its layer-0 rule); 16384 gave lut2 only 19.37 -> 19.20 for 1.3x the conversion time.
DEFAULT_TOKENS = 8192
WINDOW = 512        # tokens per calibration sequence (the evaluation's context length)
MIN_TOKENS = 64


def builtin_text() -> str:
    """Docstrings of :data:`CALIB_MODULES` (module, then its public classes, their methods and functions)."""
    parts: list[str] = []
    for name in CALIB_MODULES:
        mod = importlib.import_module(name)
        parts.append(inspect.getdoc(mod) or "")
        for key, obj in sorted(vars(mod).items()):
            if key.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            parts.append(inspect.getdoc(obj) or "")
            if inspect.isclass(obj):
                parts += [inspect.getdoc(f) or "" for k, f in sorted(vars(obj).items())
                          if not k.startswith("_") and callable(f)]
    return "\n\n".join(p for p in dict.fromkeys(parts) if p)


class _TokenizerSource:
    """What ``edgeq.llm_text.Tokenizer`` needs from a bundle, taken from the source GGUF instead."""

    def __init__(self, gguf_model: Any):
        self.tokenizer_info = gguf_model.tokenizer_info()
        self._blob = np.frombuffer(gguf_model.tokenizer_gguf(), dtype=np.uint8)

    def tokenizer_blob(self) -> np.ndarray:
        return self._blob


def calibration_windows(gguf_model: Any, text: str, n_tokens: int = DEFAULT_TOKENS) -> np.ndarray:
    """The first ``n_tokens`` tokens of ``text`` (llama.cpp's tokenizer from the GGUF) as windows
    ``[n, len]`` of up to :data:`WINDOW` tokens; InputError when the text is too short."""
    from edgeq.llm_text import Tokenizer
    ids = Tokenizer(_TokenizerSource(gguf_model)).encode(text, add_bos=False)[:n_tokens]
    win = min(WINDOW, gguf_model.config.ctx, max(len(ids), 1))
    n = len(ids) // win
    if n * win < MIN_TOKENS:
        raise InputError(f"the calibration text has {len(ids)} tokens; at least {MIN_TOKENS} are needed")
    return np.asarray(ids[:n * win], dtype=np.int64).reshape(n, win)


def _rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return (x / np.sqrt(np.mean(x * x, -1, keepdims=True) + F32(eps)) * w).astype(F32)


def gram(x: np.ndarray) -> np.ndarray:
    """``sum_t x_t x_t^T`` over all leading axes of ``x[..., n]``, float64 [n, n]."""
    x2 = x.reshape(-1, x.shape[-1])
    return (x2.T @ x2).astype(np.float64)


# quantize(name, float weight, H) -> the float weight the bundle will hold (dequantized)
QuantizeFn = Callable[[str, np.ndarray, np.ndarray], np.ndarray]


class LayerPass:
    """The calibration tokens' hidden states, advanced one decoder layer at a time in float32."""

    def __init__(self, config: LLMConfig, embedding: np.ndarray, windows: np.ndarray):
        self.c = config
        self.x = embedding[windows].astype(F32)  # [n, T, dim]
        cos, sin = rope_tables(config)
        t = windows.shape[1]
        self.cos, self.sin = cos[:t, None, :], sin[:t, None, :]  # broadcast over heads

    def _attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        c = self.c
        n, t = q.shape[:2]
        rep = c.n_heads // c.n_kv_heads
        q = rope(q.reshape(n, t, c.n_heads, c.head_dim), self.cos, self.sin).transpose(0, 2, 1, 3)
        k = rope(k.reshape(n, t, c.n_kv_heads, c.head_dim), self.cos, self.sin).transpose(0, 2, 1, 3)
        v = v.reshape(n, t, c.n_kv_heads, c.head_dim).transpose(0, 2, 1, 3)
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = (q @ k.transpose(0, 1, 3, 2)) * F32(1 / np.sqrt(c.head_dim))
        s = np.where(np.tril(np.ones((t, t), bool)), s, F32(-np.inf))
        e = np.exp(s - s.max(-1, keepdims=True))
        a = (e / e.sum(-1, keepdims=True)) @ v  # [n, heads, t, hd]
        return a.transpose(0, 2, 1, 3).reshape(n, t, -1).astype(F32)

    def layer(self, li: int, load: Callable[[str], np.ndarray], quantize: QuantizeFn) -> None:
        """Quantize layer ``li``'s matrices in order (``quantize`` gets each one's input statistics) and
        advance the hidden states through the quantized layer."""
        c, p = self.c, f"blk.{li}."

        def mat(names: tuple[str, ...], x: np.ndarray) -> list[np.ndarray]:
            h = gram(x)
            return [x @ quantize(p + n, load(p + n), h).T for n in names]

        h = _rmsnorm(self.x, load(p + "attn_norm"), c.eps)
        q, k, v = mat(("attn_q", "attn_k", "attn_v"), h)
        att = self._attention(q, k, v)
        self.x = self.x + mat(("attn_output",), att)[0]
        h = _rmsnorm(self.x, load(p + "ffn_norm"), c.eps)
        gate, up = mat(("ffn_gate", "ffn_up"), h)
        act = (gate / (1 + np.exp(-gate)) * up).astype(F32)
        self.x = self.x + mat(("ffn_down",), act)[0]
