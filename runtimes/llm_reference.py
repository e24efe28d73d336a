"""The NumPy reference decoder for Llama-architecture LLM bundles: the living spec of the C and Numba paths.

One token at a time: embedding (int8 rows) -> per layer [RMSNorm, Q/K/V mat-vecs, RoPE, grouped-query
attention over the KV cache, output mat-vec, residual, RMSNorm, SwiGLU feed-forward, residual] -> final
RMSNorm -> output head. Every mat-vec quantizes its input per token to int8 and follows
``llm_formats.matvec``. All other arithmetic is float32 in an order a C compiler keeps with
``-ffp-contract=off`` (and Numba without fastmath):

- ``dot8``: products summed into 8 lanes (element i into lane i % 8, in index order), then the lanes
  combined as ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)). Used for RMSNorm and attention scores.
- ``exp_f32``: clamp to [-87, 88], k = rint(x log2 e), r = (x - k ln2_hi) - k ln2_lo, a degree-6 Taylor
  polynomial in Horner form, times 2**k built from its bits. Used by softmax and SiLU.
- the softmax total sums position p into lane p % 16 (in order), lanes folded by ``halving_sum``; the
  attention-weighted sum of V accumulates over positions in order.
- RoPE uses the precomputed float32 tables of :func:`rope_tables` (pairs (2i, 2i+1), GGML's "normal" mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import llm_formats

F32 = np.float32
LOG2E, LN2_HI, LN2_LO = F32(1.44269504088896341), F32(0.693359375), F32(-2.12194440e-4)
EXP_POLY = tuple(F32(c) for c in (1 / 720, 1 / 120, 1 / 24, 1 / 6, 0.5, 1.0, 1.0))
LANES = 8


@dataclass(frozen=True)
class LLMConfig:
    """Shape of a Llama-architecture decoder."""

    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    vocab: int
    ctx: int
    eps: float
    rope_base: float

    def to_dict(self) -> dict:
        """JSON-ready form (the bundle manifest's ``config``)."""
        return dict(self.__dict__)


@dataclass
class Matrix:
    """A packed weight matrix: its format name and arrays (``q``, ``d``[, ``m``]) from the converter (edgeq.converters.llm_quantize.quantize_matrix)."""

    fmt: str
    rows: int
    cols: int
    arrays: dict[str, np.ndarray]


@dataclass
class LLMWeights:
    """All weights of a decoder. ``mats`` is keyed by GGUF tensor name (``blk.0.attn_q`` ...,
    ``token_embd``, and ``output`` when the head is not tied); ``norms`` likewise (float32 vectors)."""

    config: LLMConfig
    mats: dict[str, Matrix]
    norms: dict[str, np.ndarray]

    @property
    def head(self) -> Matrix:
        """The output head (the embedding when tied)."""
        return self.mats.get("output", self.mats["token_embd"])

    def bytes_per_token(self) -> int:
        """Bytes of weights one decode step reads: every layer matrix, the head, one embedding row, the norms."""
        layer = sum(llm_formats.packed_nbytes(m.arrays) for k, m in self.mats.items() if k.startswith("blk."))
        head = llm_formats.packed_nbytes(self.head.arrays)
        emb = self.mats["token_embd"]
        row = llm_formats.packed_nbytes(emb.arrays) // emb.rows
        return layer + head + row + sum(n.nbytes for n in self.norms.values())


LAYER_MATS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def matrix_shapes(c: LLMConfig) -> dict[str, tuple[int, int]]:
    """(rows, cols) of each layer matrix name (without the ``blk.N.`` prefix)."""
    return {"attn_q": (c.n_heads * c.head_dim, c.dim), "attn_k": (c.n_kv_heads * c.head_dim, c.dim),
            "attn_v": (c.n_kv_heads * c.head_dim, c.dim), "attn_output": (c.dim, c.n_heads * c.head_dim),
            "ffn_gate": (c.ffn_dim, c.dim), "ffn_up": (c.ffn_dim, c.dim), "ffn_down": (c.dim, c.ffn_dim)}


# ---- float32 building blocks -------------------------------------------------------------------

def dot8(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Lane-ordered float32 dot product over the last axis (length a multiple of 8)."""
    p = (a * b).astype(F32, copy=False)
    p = p.reshape(p.shape[:-1] + (-1, LANES))
    acc = p[..., 0, :]
    for i in range(1, p.shape[-2]):
        acc = acc + p[..., i, :]
    return ((acc[..., 0] + acc[..., 1]) + (acc[..., 2] + acc[..., 3])) + \
        ((acc[..., 4] + acc[..., 5]) + (acc[..., 6] + acc[..., 7]))


def exp_f32(x: np.ndarray) -> np.ndarray:
    """exp in float32 with a fixed operation sequence (see the module docstring); relative error < 2e-7."""
    x = np.clip(x.astype(F32, copy=False), F32(-87), F32(88))
    k = np.rint(x * LOG2E)
    r = (x - k * LN2_HI) - k * LN2_LO
    p = np.full_like(r, EXP_POLY[0])
    for c in EXP_POLY[1:]:
        p = p * r + c
    scale = ((k.astype(np.int32) + 127) << 23).view(F32)
    return p * scale


def silu(x: np.ndarray) -> np.ndarray:
    """x / (1 + exp(-x)) with :func:`exp_f32`."""
    return x / (F32(1) + exp_f32(-x))


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x * (1 / sqrt(mean(x^2) + eps)) * w, the mean from :func:`dot8`."""
    ss = dot8(x, x)
    r = F32(1) / np.sqrt(ss / F32(x.shape[-1]) + F32(eps))
    return (x * r[..., None]) * w


def rope_tables(c: LLMConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [ctx, head_dim / 2] float32 of angle pos * base^(-2i / head_dim), computed in float64."""
    inv = c.rope_base ** (-np.arange(0, c.head_dim, 2, dtype=np.float64) / c.head_dim)
    ang = np.arange(c.ctx, dtype=np.float64)[:, None] * inv[None]
    return np.cos(ang).astype(F32), np.sin(ang).astype(F32)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate pairs (2i, 2i+1) of every head ``x[heads, head_dim]`` by the position's table row."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


MatvecFn = Callable[[Matrix, np.ndarray, np.ndarray], np.ndarray]


def reference_matvec(m: Matrix, xq: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``llm_formats.matvec`` on a :class:`Matrix`."""
    return llm_formats.matvec(m.arrays, m.fmt, xq, xs)


class ReferenceDecoder:
    """Token-by-token decoder with a float32 KV cache. ``matvec`` can be swapped for a compiled one
    (the Numba backend) without changing any other arithmetic."""

    def __init__(self, weights: LLMWeights, matvec: MatvecFn = reference_matvec):
        self.w, self.c, self.matvec = weights, weights.config, matvec
        c = self.c
        self.cos, self.sin = rope_tables(c)
        self.kq_scale = F32(1 / np.sqrt(c.head_dim))
        self.k_cache = np.zeros((c.n_layers, c.ctx, c.n_kv_heads, c.head_dim), F32)
        self.v_cache = np.zeros_like(self.k_cache)
        emb = weights.mats["token_embd"]
        self._emb_v = llm_formats.plane_values(emb.arrays, emb.fmt)[0]
        self._emb_d = emb.arrays["d"].astype(F32)[:, 0]

    def _mv(self, name: str, xq: np.ndarray, xs: np.ndarray) -> np.ndarray:
        return self.matvec(self.w.mats[name], xq, xs)[0]

    def embed(self, token: int) -> np.ndarray:
        """The token's embedding row, dequantized: d * v."""
        return self._emb_d[token] * self._emb_v[token].astype(F32)

    def step(self, token: int, pos: int) -> np.ndarray:
        """Run one token at position ``pos`` (filling the KV cache there); return its logits [vocab]."""
        c, w = self.c, self.w
        x = self.embed(token)
        hd, nh, nkv = c.head_dim, c.n_heads, c.n_kv_heads
        for li in range(c.n_layers):
            p = f"blk.{li}."
            xq, xs = llm_formats.quantize_act(rmsnorm(x, w.norms[p + "attn_norm"], c.eps)[None])
            q = rope(self._mv(p + "attn_q", xq, xs).reshape(nh, hd), self.cos[pos], self.sin[pos])
            k = rope(self._mv(p + "attn_k", xq, xs).reshape(nkv, hd), self.cos[pos], self.sin[pos])
            self.k_cache[li, pos] = k
            self.v_cache[li, pos] = self._mv(p + "attn_v", xq, xs).reshape(nkv, hd)
            keys = self.k_cache[li, :pos + 1].repeat(nh // nkv, axis=1)   # [T, nh, hd]
            vals = self.v_cache[li, :pos + 1].repeat(nh // nkv, axis=1)
            s = dot8(q[None], keys) * self.kq_scale                         # [T, nh]
            e = exp_f32(s - s.max(0))
            lanes = np.zeros((-(-len(e) // 16) * 16, nh), F32)
            lanes[:len(e)] = e
            total = llm_formats.halving_sum(np.cumsum(lanes.reshape(-1, 16, nh), axis=0, dtype=F32)[-1].T)  # lane p % 16
            acc = np.cumsum(e[..., None] * vals, axis=0, dtype=F32)[-1]     # [nh, hd]
            att = (acc / total[:, None]).reshape(-1)
            x = x + self._mv(p + "attn_output", *llm_formats.quantize_act(att[None]))
            xq, xs = llm_formats.quantize_act(rmsnorm(x, w.norms[p + "ffn_norm"], c.eps)[None])
            h = silu(self._mv(p + "ffn_gate", xq, xs)) * self._mv(p + "ffn_up", xq, xs)
            x = x + self._mv(p + "ffn_down", *llm_formats.quantize_act(h[None]))
        xq, xs = llm_formats.quantize_act(rmsnorm(x, w.norms["output_norm"], c.eps)[None])
        return self.matvec(w.head, xq, xs)[0]

    def forward(self, tokens: list[int] | np.ndarray, pos: int) -> np.ndarray:
        """Run ``tokens`` from position ``pos``; logits [len(tokens), vocab]."""
        return np.stack([self.step(int(t), pos + i) for i, t in enumerate(tokens)])
