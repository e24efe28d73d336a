"""The LLM mat-vec in Numba (cache=True, no fastmath): one loop for every weight format, bit-exact with
``llm_formats.matvec``. ``edgeq.llm.numba_decoder`` plugs it into the reference decoder."""

from __future__ import annotations

import numba
import numpy as np

from . import llm_formats
from .llm_reference import Matrix

F32 = np.float32


@numba.njit(cache=True)
def _unpack_row(code: int, q: np.ndarray, cols: int, planes: int, out: np.ndarray) -> None:
    """Plane values of one packed row into out[planes, cols] (llm_formats._unpack_* layouts)."""
    if code == 1:  # int8
        for j in range(cols):
            out[0, j] = np.int8(q[j]) if q[j] < 128 else np.int8(np.int16(q[j]) - 256)
    elif code == 2:  # int4
        for g in range(cols // 32):
            for j in range(16):
                b = q[g * 16 + j]
                out[0, g * 32 + j] = (b & 15) - 8
                out[0, g * 32 + 16 + j] = (b >> 4) - 8
    elif code == 3 or code == 4:  # ternary, ptqtp
        k = 0
        for g in range(cols // 64):
            for p in range(planes):
                for j in range(16):
                    b = q[k + j]
                    for s in range(4):
                        out[p, g * 64 + 16 * s + j] = ((b >> (2 * s)) & 3) - 1
                k += 16
    else:  # lut2, lut3
        k = 0
        for g in range(cols // 64):
            for p in range(planes):
                for j in range(64):
                    out[p, g * 64 + j] = (q[k + j // 8] >> (j % 8)) & 1
                k += 8


@numba.njit(cache=True)
def _matvec(code: int, q: np.ndarray, d: np.ndarray, m: np.ndarray, has_m: bool, rows: int, cols: int, group: int,
            planes: int, xq: np.ndarray, xs: np.ndarray, y: np.ndarray) -> None:
    n = xq.shape[0]
    vals = np.zeros((planes, cols), np.int8)
    for r in range(rows):
        _unpack_row(code, q[r], cols, planes, vals)
        for t in range(n):
            acc = F32(0.0)
            for c in range(0, cols, 32):  # one activation block
                g = c // group
                xsum = 0
                for j in range(c, c + 32):
                    xsum += np.int32(xq[t, j])
                tt = F32(0.0)
                for p in range(planes):
                    dot = 0
                    for j in range(c, c + 32):
                        dot += np.int32(vals[p, j]) * np.int32(xq[t, j])
                    term = d[r, g * planes + p] * F32(dot)
                    tt = term if p == 0 else tt + term
                if has_m:
                    tt = tt + m[r, g] * F32(xsum)
                acc = acc + tt * xs[t, c // 32]
            y[t, r] = acc


_scales: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def matvec(mat: Matrix, xq: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Same contract as ``llm_reference.reference_matvec``."""
    fmt = llm_formats.get_format(mat.fmt)
    key = id(mat.arrays["d"])
    if key not in _scales or _scales[key][0] is not mat.arrays["d"]:
        m = mat.arrays["m"].astype(F32) if fmt.offset else np.zeros((1, 1), F32)
        _scales[key] = (mat.arrays["d"], mat.arrays["d"].astype(F32), m)
    _, d, m = _scales[key]
    y = np.empty((xq.shape[0], mat.rows), F32)
    _matvec(fmt.code, mat.arrays["q"].view(np.uint8), d, m, fmt.offset, mat.rows, mat.cols,
            fmt.group_size(mat.cols), fmt.planes, np.ascontiguousarray(xq, np.int8),
            np.ascontiguousarray(xs, F32), y)
    return y
