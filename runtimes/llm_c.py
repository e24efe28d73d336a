"""The C LLM decoder: ``c/edgeq_llm.c`` built and cached by :class:`c_backend.CBackend`, one call per batch
of tokens (all layers inside C). Bit-exact with ``llm_reference.ReferenceDecoder``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import BackendError, InputError
from . import llm_formats
from .c_backend import DEFAULT_FLAGS, SANITIZE_FLAGS, CBackend
from .llm_reference import LLMWeights, Matrix, rope_tables

SOURCES = ("edgeq_llm.c", "edgeq_llm.h")
MARKER = "/* ---- API (cffi binds this section) */"
# -ffp-contract=off: the float order is part of the spec (also implied by -std=c99 with GCC).
FLAGS = DEFAULT_FLAGS + ("-ffp-contract=off",)
ERRORS = {-1: "inconsistent model dimensions or unknown weight format", -2: "token id outside the vocabulary",
          -3: "position past the context length", -4: "more tokens than the decoder state holds"}

_default: CBackend | None = None


def backend() -> CBackend:
    """The shared build of the LLM kernels (host flags, cached on disk)."""
    global _default
    if _default is None:
        _default = CBackend(FLAGS, tag="llm", sources=SOURCES, cdef_marker=MARKER)
    return _default


def sanitized_backend(directory: str | Path) -> CBackend:
    """The same kernels with ASan + UBSan (load in a process with LD_PRELOAD of libasan)."""
    return CBackend(SANITIZE_FLAGS + ("-march=native", "-ffp-contract=off"), Path(directory), tag="llmasan",
                    probe=True, sources=SOURCES, cdef_marker=MARKER)


def _check(rc: int) -> None:
    if rc != 0:
        raise BackendError(f"C LLM kernels: {ERRORS.get(rc, 'failure')} (code {rc})")


class _Refs:
    """Keeps the numpy arrays behind cffi pointers alive as long as the structs using them."""

    def __init__(self, ffi: Any):
        self.ffi = ffi
        self.keep: list[Any] = []

    def ptr(self, ctype: str, a: np.ndarray) -> Any:
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        self.keep.append(a)
        p = self.ffi.from_buffer(ctype, a)
        self.keep.append(p)
        return p

    def mat(self, dst: Any, m: Matrix, lib: Any = None) -> None:
        """Point ``dst`` at ``m``'s arrays; with ``lib``, also lay out the tiles the SIMD path multiplies (a
        second copy of the weights in RAM on the AVX-512 path, built once here)."""
        dst.fmt = llm_formats.get_format(m.fmt).code
        dst.rows, dst.cols = m.rows, m.cols
        dst.q = self.ptr("uint8_t[]", m.arrays["q"].view(np.uint8))
        dst.d = self.ptr("uint16_t[]", m.arrays["d"].view(np.uint16))
        dst.m = self.ptr("uint16_t[]", m.arrays["m"].view(np.uint16)) if "m" in m.arrays else self.ffi.NULL
        dst.tiles = self.ffi.NULL
        if lib is not None:
            dst = self.ffi.addressof(dst)
            size = lib.edgeq_llm_tiles_size(dst)
            if size < 0:
                raise BackendError(f"C LLM kernels: invalid {m.fmt} matrix {m.rows}x{m.cols}")
            if size:
                raw = np.empty(size + 64, np.uint8)
                buf = raw[-raw.ctypes.data % 64:][:size]
                self.keep.append(raw)
                _check(lib.edgeq_llm_make_tiles(dst, self.ptr("uint8_t[]", buf)))


class CDecoder:
    """Same interface as ``ReferenceDecoder`` (``forward``), plus batched prefill and thread control."""

    def __init__(self, weights: LLMWeights, max_batch: int = 64, build: CBackend | None = None):
        self.build = build or backend()
        self.build.ensure_available()
        ffi, lib = self.build._loaded()
        self.ffi, self.lib, self.w, self.c = ffi, lib, weights, weights.config
        c, refs = self.c, _Refs(ffi)
        self._refs = refs
        model = ffi.new("edgeq_llm_model *")
        model.n_layers, model.dim, model.n_heads, model.n_kv_heads = c.n_layers, c.dim, c.n_heads, c.n_kv_heads
        model.head_dim, model.ffn_dim, model.vocab, model.ctx = c.head_dim, c.ffn_dim, c.vocab, c.ctx
        model.eps, model.kq_scale = c.eps, float(np.float32(1 / np.sqrt(c.head_dim)))
        cos, sin = rope_tables(c)
        model.rope_cos, model.rope_sin = refs.ptr("float[]", cos), refs.ptr("float[]", sin)
        model.out_norm = refs.ptr("float[]", weights.norms["output_norm"])
        refs.mat(model.embed, weights.mats["token_embd"])
        refs.mat(model.head, weights.head, lib)
        layers = ffi.new("edgeq_llm_layer[]", c.n_layers)
        names = {"wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output", "gate": "ffn_gate",
                 "up": "ffn_up", "down": "ffn_down"}
        for i in range(c.n_layers):
            p = f"blk.{i}."
            layers[i].attn_norm = refs.ptr("float[]", weights.norms[p + "attn_norm"])
            layers[i].ffn_norm = refs.ptr("float[]", weights.norms[p + "ffn_norm"])
            for field, name in names.items():
                refs.mat(getattr(layers[i], field), weights.mats[p + name], lib)
        model.layers = layers
        self.model, self._layers = model, layers
        _check(lib.edgeq_llm_validate(model))
        sizes = ffi.new("int64_t[4]")
        _check(lib.edgeq_llm_state_sizes(model, max_batch, sizes))
        self.max_batch = max_batch
        self.k_cache = np.zeros(sizes[3], np.float32)  # position blocks (edgeq_llm.h)
        self.v_cache = np.zeros((c.n_layers, c.ctx, c.n_kv_heads, c.head_dim), np.float32)
        self._work = np.zeros(sizes[0], np.float32)
        self._xq = np.zeros(sizes[1], np.int8)
        self._xsum = np.zeros(max(sizes[2], 1), np.int32)
        state = ffi.new("edgeq_llm_state *")
        state.max_batch = max_batch
        state.k_cache, state.v_cache = refs.ptr("float[]", self.k_cache), refs.ptr("float[]", self.v_cache)
        state.work, state.xq = refs.ptr("float[]", self._work), refs.ptr("int8_t[]", self._xq)
        state.xsum = refs.ptr("int32_t[]", self._xsum)
        self.state = state

    def set_threads(self, n: int) -> None:
        """OpenMP threads for the mat-vecs and attention."""
        self.lib.edgeq_llm_set_threads(max(1, int(n)))

    def simd(self) -> str:
        """The SIMD path compiled in (avx512vnni, avx2, neon-dotprod, neon, scalar)."""
        return self.ffi.string(self.lib.edgeq_llm_simd()).decode()

    def forward(self, tokens: list[int] | np.ndarray, pos: int, all_logits: bool = True) -> np.ndarray:
        """Run ``tokens`` from position ``pos`` in batches of ``max_batch``; logits [n, vocab] (or [1, vocab]
        for the last token when ``all_logits`` is False)."""
        toks = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        if toks.size == 0:
            raise InputError("no tokens to run")
        if pos < 0 or pos + toks.size > self.c.ctx:
            raise InputError(f"{pos + toks.size} tokens exceed the context length {self.c.ctx}")
        outs = []
        for s in range(0, toks.size, self.max_batch):
            chunk = toks[s: s + self.max_batch]
            last = s + self.max_batch >= toks.size
            rows = chunk.size if all_logits else 1
            out = np.empty((rows, self.c.vocab), np.float32)
            want = all_logits or last
            _check(self.lib.edgeq_llm_forward(self.model, self.state, self.ffi.from_buffer("int32_t[]", chunk),
                                              chunk.size, pos + s, self.ffi.from_buffer("float[]", out),
                                              int(all_logits)))
            if want:
                outs.append(out)
        return np.concatenate(outs)


def matvec(m: Matrix, xq: np.ndarray, xs: np.ndarray, build: CBackend | None = None) -> np.ndarray:
    """One C mat-vec (quantized tokens xq [n, cols] with block scales xs [n, cols / 32]); for tests against
    llm_formats.matvec."""
    b = build or backend()
    b.ensure_available()
    ffi, lib = b._loaded()
    refs = _Refs(ffi)
    mat = ffi.new("edgeq_llm_mat *")
    refs.mat(mat[0], m, lib)
    xq = np.ascontiguousarray(xq, np.int8)
    xs = np.ascontiguousarray(xs, np.float32)
    n = xq.shape[0]
    xsum = np.ascontiguousarray(xq.reshape(n, -1, llm_formats.BLOCK).sum(-1, dtype=np.int32))
    y = np.empty((n, m.rows), np.float32)
    _check(lib.edgeq_llm_matvec(mat, refs.ptr("int8_t[]", xq), refs.ptr("float[]", xs), refs.ptr("int32_t[]", xsum),
                                n, ffi.from_buffer("float[]", y)))
    return y


def quantize(x: np.ndarray, build: CBackend | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The C per-token activation quantizer (for tests against llm_formats.quantize_act)."""
    b = build or backend()
    b.ensure_available()
    ffi, lib = b._loaded()
    x = np.ascontiguousarray(x, np.float32)
    n, cols = x.shape
    xq, xs = np.empty((n, cols), np.int8), np.empty((n, cols // 32), np.float32)
    xsum = np.empty((n, max(cols // llm_formats.BLOCK, 1)), np.int32)
    lib.edgeq_llm_quantize(ffi.from_buffer("float[]", x), n, cols, ffi.from_buffer("int8_t[]", xq),
                           ffi.from_buffer("float[]", xs), ffi.from_buffer("int32_t[]", xsum))
    return xq, xs
