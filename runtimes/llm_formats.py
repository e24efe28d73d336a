"""The one table of LLM weight formats (ggml ``type_traits`` style) and their NumPy reference arithmetic.

Every weight matrix ``W[rows, cols]`` (``y = W @ x``) is cut along ``cols`` into groups of ``group``
weights. A format stores, per group, ``planes`` integer planes ``v_p`` and one float16 scale ``d_p`` per
plane, plus (lut formats) a float16 offset ``m``:

    w[j] = d_0 * v_0[j] + d_1 * v_1[j] + ... + m

=======  ======  =====  ===========  ======================================================
format   group   planes  plane values  meaning
=======  ======  =====  ===========  ======================================================
int8     row     1       -127..127   per-row absmax scale (also the embedding / output head)
int4     32      1       -8..7       groupwise symmetric (the Q4_0 layout)
ternary  64      1       -1, 0, 1    BitNet b1.58 ternary with one scale per group
ptqtp    64      2       -1, 0, 1    two ternary trit-planes with their own scales (PTQTP)
lut2     64      2       0, 1        bit planes with free per-plane scales + offset (ELUTQ/HLQ)
lut3     64      3       0, 1        the same with three planes
=======  ======  =====  ===========  ======================================================

Packed arrays (row-major; docs/llm-formats.md gives the byte layout): ``q`` the codes (int8 for int8,
else uint8), ``d`` float16 ``[rows, groups * planes]`` (plane-minor), ``m`` float16 ``[rows, groups]``
(lut formats only).

Activations are quantized to int8 in blocks of 32 along the row, each block with its own float32 scale
(:func:`quantize_act`). The mat-vec (:func:`matvec`) is defined so that optimized kernels can reproduce
it bit for bit. Per output row and token, the row is cut into the activation's 32-column blocks; per block
``b`` (in column order; ``g`` = the weight group holding it) the integer dot products of each plane over the
block's 32 columns are exact in int32, and only then does float32 arithmetic start, in this fixed order
(no fused multiply-add)::

    acc = 0
    for each block b in order:
        t = d_0[g] * float(dot_0)
        t = t + d_p[g] * float(dot_p)             for p = 1 .. planes-1
        t = t + m[g] * float(sum of x_q over the block)   (formats with an offset)
        acc = acc + t * x_scale[b]
    y = acc

One convert and multiply per (row, block, plane): the vector kernels put 16 rows in the 16 lanes of a
register (rows interleaved at load time), so no lane ever needs a horizontal reduction.

This module needs only NumPy: the converter lays out its chosen numbers with :func:`encode` and the runtime
checks against :func:`matvec`; choosing the numbers (fitting) is the converter's (converters/llm_quantize.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgeq.errors import ModelError

F32 = np.float32


@dataclass(frozen=True)
class WeightFormat:
    """One row of the format table."""

    name: str
    code: int           # the id the C kernels switch on (runtimes/c/edgeq_llm.h EDGEQ_LLM_FMT_*)
    group: int          # weights per group; 0 means one group per row
    planes: int
    vmin: int           # range of a plane value
    vmax: int
    offset: bool        # a per-group float offset m
    bits: int           # stored bits per weight of the codes (scales excluded)
    pack_codes: Callable[[np.ndarray, int], np.ndarray]
    unpack_codes: Callable[[np.ndarray, int, int], np.ndarray]

    def group_size(self, cols: int) -> int:
        """Weights per group for a matrix with ``cols`` columns."""
        return cols if self.group == 0 else self.group

    def bits_per_weight(self, cols: int) -> float:
        """Stored bits per weight including scales and offsets (float16 each)."""
        g = self.group_size(cols)
        return self.bits + 16.0 * (self.planes + int(self.offset)) / g


# ---- code packing: values [planes, rows, cols] int8 <-> the packed q array ----------------------------

def _pack_int8(v: np.ndarray, g: int) -> np.ndarray:
    return np.ascontiguousarray(v[0], dtype=np.int8)


def _unpack_int8(q: np.ndarray, g: int, planes: int) -> np.ndarray:
    return q.astype(np.int8)[None]


def _pack_int4(v: np.ndarray, g: int) -> np.ndarray:
    # Q4_0 order: byte j of a 32-group holds element j (low nibble) and j + 16 (high nibble), code v + 8.
    r, c = v.shape[1:]
    u = (v[0].astype(np.int16) + 8).astype(np.uint8).reshape(r, c // 32, 2, 16)
    return (u[:, :, 0] | (u[:, :, 1] << 4)).reshape(r, c // 2)


def _unpack_int4(q: np.ndarray, g: int, planes: int) -> np.ndarray:
    r = q.shape[0]
    b = q.reshape(r, -1, 1, 16)
    u = np.concatenate([b & 15, b >> 4], axis=2)
    return (u.astype(np.int8) - 8).reshape(1, r, -1)


def _pack_trits(v: np.ndarray, g: int) -> np.ndarray:
    # Per plane and 64-group, 16 bytes: byte j holds elements j, j+16, j+32, j+48 at bits 0, 2, 4, 6 (code v + 1).
    p, r, c = v.shape
    u = (v.astype(np.int16) + 1).astype(np.uint8).reshape(p, r, c // 64, 4, 16)
    b = u[:, :, :, 0] | (u[:, :, :, 1] << 2) | (u[:, :, :, 2] << 4) | (u[:, :, :, 3] << 6)  # [p, r, G, 16]
    return np.ascontiguousarray(b.transpose(1, 2, 0, 3)).reshape(r, -1)


def _unpack_trits(q: np.ndarray, g: int, planes: int) -> np.ndarray:
    r = q.shape[0]
    b = q.reshape(r, -1, planes, 1, 16)
    u = np.concatenate([(b >> s) & 3 for s in (0, 2, 4, 6)], axis=3)  # [r, G, p, 4, 16]
    return (u.astype(np.int8) - 1).transpose(2, 0, 1, 3, 4).reshape(planes, r, -1)


def _pack_bits(v: np.ndarray, g: int) -> np.ndarray:
    # Per 64-group, plane after plane, 8 bytes each: element j is bit j % 8 of byte j // 8.
    p, r, c = v.shape
    bits = np.packbits(v.astype(np.uint8).reshape(p, r, c // 64, 64), axis=-1, bitorder="little")
    return np.ascontiguousarray(bits.transpose(1, 2, 0, 3)).reshape(r, -1)


def _unpack_bits(q: np.ndarray, g: int, planes: int) -> np.ndarray:
    r = q.shape[0]
    bits = np.unpackbits(q.reshape(r, -1, planes, 8), axis=-1, bitorder="little")  # [r, G, p, 64]
    return bits.astype(np.int8).transpose(2, 0, 1, 3).reshape(planes, r, -1)


FORMATS: dict[str, WeightFormat] = {f.name: f for f in (
    WeightFormat("int8", 1, 0, 1, -127, 127, False, 8, _pack_int8, _unpack_int8),
    WeightFormat("int4", 2, 32, 1, -8, 7, False, 4, _pack_int4, _unpack_int4),
    WeightFormat("ternary", 3, 64, 1, -1, 1, False, 2, _pack_trits, _unpack_trits),
    WeightFormat("ptqtp", 4, 64, 2, -1, 1, False, 4, _pack_trits, _unpack_trits),
    WeightFormat("lut2", 5, 64, 2, 0, 1, True, 2, _pack_bits, _unpack_bits),
    WeightFormat("lut3", 6, 64, 3, 0, 1, True, 3, _pack_bits, _unpack_bits),
)}
FORMAT_BY_CODE = {f.code: f for f in FORMATS.values()}


def get_format(name: str) -> WeightFormat:
    """The table row for ``name``; ModelError listing the known formats otherwise."""
    if name not in FORMATS:
        raise ModelError(f"unknown weight format {name!r} (known: {', '.join(FORMATS)})")
    return FORMATS[name]


# ---- the packed arrays of a matrix ---------------------------------------------------------------

def check_matrix(w: np.ndarray, fmt_name: str, tensor: str = "weight") -> WeightFormat:
    """The format of ``fmt_name`` after checking that ``w`` can be stored in it.

    Raises ModelError (naming ``tensor``) for a non-matrix, columns that are not a multiple of the group
    size and of 32, or weights that are not finite.
    """
    fmt = get_format(fmt_name)
    if w.ndim != 2:
        raise ModelError(f"tensor '{tensor}': expected a matrix, got shape {w.shape}")
    c = w.shape[1]
    g = fmt.group_size(c)
    if c % g or c % 32:
        raise ModelError(f"tensor '{tensor}': {c} columns are not a multiple of the {fmt.name} group size "
                         f"{g} and of 32")
    if not np.isfinite(w).all():
        raise ModelError(f"tensor '{tensor}' has NaN or infinite weights")
    return fmt


def encode(values: np.ndarray, d: np.ndarray, m: np.ndarray | None, fmt_name: str) -> dict[str, np.ndarray]:
    """Lay out chosen numbers: plane values ``[planes, rows, cols]`` int8, scales ``d[rows, groups * planes]``
    (plane index fastest) and offsets ``m[rows, groups]`` (lut formats; else None) -> ``{"q", "d"[, "m"]}``."""
    fmt = get_format(fmt_name)
    p, r, c = values.shape
    g = fmt.group_size(c)
    if p != fmt.planes or values.min(initial=fmt.vmin) < fmt.vmin or values.max(initial=fmt.vmax) > fmt.vmax:
        raise ModelError(f"{fmt.name}: plane values out of range or wrong plane count {p}")
    out = {"q": fmt.pack_codes(values.astype(np.int8), g), "d": np.asarray(d, F32).astype(np.float16).reshape(r, -1)}
    if fmt.offset:
        out["m"] = np.asarray(m, F32).astype(np.float16).reshape(r, -1)
    return out


def plane_values(packed: dict[str, np.ndarray], fmt_name: str) -> np.ndarray:
    """The integer plane values ``[planes, rows, cols]`` int8 of a packed matrix."""
    fmt = get_format(fmt_name)
    q = packed["q"]
    cols = q.shape[1] * 8 // fmt.bits
    return fmt.unpack_codes(q, fmt.group_size(cols), fmt.planes)


def unpack(packed: dict[str, np.ndarray], fmt_name: str) -> np.ndarray:
    """Dequantize to float32 ``[rows, cols]``: ``w = d_0 v_0 (+ d_p v_p ...) (+ m)`` in that order."""
    fmt = get_format(fmt_name)
    v = plane_values(packed, fmt_name)
    _, r, c = v.shape
    g = fmt.group_size(c)
    d = packed["d"].astype(F32).reshape(r, c // g, 1, fmt.planes)
    vg = v.reshape(fmt.planes, r, c // g, g).astype(F32)
    w = d[..., 0] * vg[0]
    for p in range(1, fmt.planes):
        w = w + d[..., p] * vg[p]
    if fmt.offset:
        w = w + packed["m"].astype(F32).reshape(r, c // g, 1)
    return w.reshape(r, c)


# ---- activations and the reference mat-vec -------------------------------------------------------

BLOCK = 32  # activation block: one int8 scale per 32 values of a token; the mat-vec's float step


def quantize_act(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blockwise absmax int8: ``x[..., n]`` float32 -> (``q`` int8 in [-127, 127], ``scale`` float32
    [..., n / 32]).

    Per block of 32: ``scale = amax / 127`` and ``q = rint(x * (127 / amax))`` (ties to even), both in
    float32; an all-zero block gets scale 0 and q 0; a block holding NaN is treated as all zero.
    """
    x = x.astype(F32, copy=False)
    xb = x.reshape(x.shape[:-1] + (-1, BLOCK))
    amax = np.abs(xb).max(-1)
    amax = np.where(np.isnan(amax), F32(0), amax).astype(F32)
    ok = amax > 0
    inv = np.where(ok, F32(127) / np.where(ok, amax, F32(1)), F32(0)).astype(F32)
    with np.errstate(invalid="ignore"):  # inf * 0 = NaN is expected here and quantizes to 0
        v = xb * inv[..., None]
    v = np.where(np.isnan(v), F32(0), np.clip(v, F32(-127), F32(127)))
    return np.rint(v).astype(np.int8).reshape(x.shape), (amax / F32(127)).astype(F32)


def halving_sum(acc: np.ndarray) -> np.ndarray:
    """Fold the last axis (16 lanes) in halves: [i] + [i+8], [i] + [i+4], [i] + [i+2], [0] + [1]."""
    while acc.shape[-1] > 1:
        h = acc.shape[-1] // 2
        acc = acc[..., :h] + acc[..., h:]
    return acc[..., 0]


def matvec(packed: dict[str, np.ndarray], fmt_name: str, xq: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Reference ``y[t, r] = sum_c W[r, c] x[t, c]`` for int8 tokens ``xq[t, cols]`` with block scales
    ``xs[t, cols / 32]``: integer dots per 32-column block and plane, float32 in the module docstring's order."""
    fmt = get_format(fmt_name)
    v = plane_values(packed, fmt_name).astype(np.int64)
    planes, r, c = v.shape
    g = fmt.group_size(c)
    nb = c // BLOCK
    xb = xq.astype(np.int64).reshape(len(xq), nb, BLOCK)
    dots = np.einsum("prbj,tbj->ptrb", v.reshape(planes, r, nb, BLOCK), xb).astype(F32)  # exact: |dot| < 2^20
    sums = xb.sum(-1).astype(F32)  # [t, nb]
    group_of = np.arange(nb) * BLOCK // g
    d = packed["d"].astype(F32).reshape(r, c // g, planes)[:, group_of]  # [r, nb, planes]
    m = packed["m"].astype(F32).reshape(r, c // g)[:, group_of] if fmt.offset else None
    xs = xs.astype(F32)
    acc = np.zeros((len(xq), r), F32)
    for b in range(nb):
        t = d[None, :, b, 0] * dots[0, :, :, b]
        for p in range(1, planes):
            t = t + d[None, :, b, p] * dots[p, :, :, b]
        if m is not None:
            t = t + m[None, :, b] * sums[:, None, b]
        acc = acc + t * xs[:, None, b]
    return acc


def packed_nbytes(packed: dict[str, np.ndarray]) -> int:
    """Bytes a kernel reads for one pass over the matrix (codes, scales, offsets)."""
    return int(sum(a.nbytes for a in packed.values()))
