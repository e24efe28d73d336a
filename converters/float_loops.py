"""Numba loops for the costliest NumPy step of the calibration pass: depthwise convolutions, which NumPy
ran as a padding copy, then a multiply pass and an add pass over the whole map per kernel tap (det's
320x320 maps went through memory 18 times for a 3x3 kernel; here each output row stays in L1 while its
taps accumulate).

The loop computes exactly what the NumPy code computed, so calibration ranges do not move: per output,
the same float32 multiply, then float32 add, tap after tap in row-major order, starting from zero (Numba
does not contract them into fused multiply-adds unless fastmath is on). Taps on the zero padding are
skipped: they added +-0, which leaves every sum as it was (a sum starting from +0 is never -0).
tests/test_float_calibration.py checks it against the NumPy expression bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64


@njit(cache=True)
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
