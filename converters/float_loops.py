"""Numba loops for the costliest NumPy steps of the calibration pass, which NumPy runs as one pass over
the whole map per elementary step: depthwise convolutions (a padding copy, then a multiply pass and an
add pass per kernel tap: det's 320x320 maps went through memory 18 times for a 3x3 kernel) and fused
unary chains (PP-LCNet's HardSwish then affine: six passes). Here each row or block of values stays in
L1 while all its steps run.

The loops compute exactly what the NumPy code computed, so calibration ranges do not move: per value,
the same float32 operations in the same order (Numba does not contract a multiply and an add into a
fused multiply-add unless fastmath is on). Convolution taps on the zero padding are skipped: they added
+-0, which leaves every sum as it was (a sum starting from +0 is never -0).
tests/test_float_calibration.py checks both against the NumPy expressions bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64


@njit(cache=True, nogil=True)  # the calibration workers are threads
def depthwise(x: np.ndarray, w: np.ndarray, oh: int, ow: int, sh: int, sw: int, dh: int, dw: int,
              pt: int, pl: int) -> np.ndarray:
    """Depthwise convolution of the float32 input ``x`` [N, C, H, W], zero padded by ``pt`` rows on top
    and ``pl`` columns on the left (the rest follows from the output size), with ``w`` [C, 1, KH, KW]:
    y = 0, then y += x_tap * w_tap for the taps in row-major order (no bias). Column indices are
    unsigned: a signed one costs a negative-index check that stops LLVM from vectorizing the rows."""
    n, c, h, wd = x.shape
    kh, kw = w.shape[2], w.shape[3]
    y = np.zeros((n, c, oh, ow), dtype=np.float32)
    step = uint64(sw)
    for b in range(n):
        for ch in range(c):
            for r in range(oh):
                yr = y[b, ch, r]
                for i in range(kh):
                    ih = r * sh + i * dh - pt
                    if ih < 0 or ih >= h:
                        continue
                    xr = x[b, ch, ih]
                    for j in range(kw):
                        wv = w[ch, 0, i, j]
                        # outputs q whose column q * sw + j * dw - pl falls inside [0, wd)
                        first = max(0, (pl - j * dw + sw - 1) // sw)
                        end = min(ow, (wd - 1 + pl - j * dw) // sw + 1)
                        if end <= first:
                            continue
                        base = uint64(first * sw + j * dw - pl)
                        lo = uint64(first)
                        if sw == 1:
                            for q in range(lo, uint64(end)):
                                yr[q] += xr[q - lo + base] * wv
                        else:
                            for q in range(lo, uint64(end)):
                                yr[q] += xr[(q - lo) * step + base] * wv
    return y


# Unary steps chain() runs, by code: HardSwish, multiply by a constant, add a constant.
CHAIN_CODES = {"HardSwish": 0, "Mul": 1, "Add": 2}
_BLOCK = 4096  # values per block: they stay in L1 through every step


@njit(cache=True, nogil=True)
def chain(x: np.ndarray, codes: np.ndarray, consts: np.ndarray) -> np.ndarray:
    """The float32 steps ``codes`` (CHAIN_CODES, constants ``consts`` float32) applied to the
    contiguous float32 ``x``, block by block: HardSwish as t = x / 6, t = t + 0.5, t = min(max(t, 0),
    1), x * t (float_ops._hard_sigmoid; t is never -0 there, so the clamp order cannot flip a zero's
    sign), Mul / Add with the constant rounded to float32 as NumPy does for a Python float."""
    flat = x.reshape(-1)
    y = np.empty_like(flat)
    n = uint64(flat.size)
    six, half, zero, one = np.float32(6), np.float32(0.5), np.float32(0), np.float32(1)
    for s in range(uint64(0), n, uint64(_BLOCK)):
        e = min(n, s + uint64(_BLOCK))
        for i in range(s, e):
            y[i] = flat[i]
        for k in range(codes.size):
            c = consts[k]
            if codes[k] == 0:
                for i in range(s, e):
                    v = y[i]
                    t = v / six + half
                    y[i] = min(max(t, zero), one) * v
            elif codes[k] == 1:
                for i in range(s, e):
                    y[i] = y[i] * c
            else:
                for i in range(s, e):
                    y[i] = y[i] + c
    return y.reshape(x.shape)
