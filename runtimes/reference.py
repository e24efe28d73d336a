"""Reference kernels: the readable NumPy definition of every integer op (the living spec).

Every optimized kernel (Numba, C, cross-compiled C) must produce exactly these bytes. Tensors are NCHW
with the batch first; activations are int8, accumulators int64 here (the fast kernels use int32, which
the converter proves cannot overflow), requantization follows ``fixedpoint``.
"""

from __future__ import annotations

import numpy as np

from .fixedpoint import ADD_LEFT_SHIFT, multiply_by_quantized_multiplier as mbqm, rounded_div


def _finish(acc: np.ndarray, y_zp: int, act_min: int, act_max: int, lut: np.ndarray | None) -> np.ndarray:
    """Add the output zero point, clamp to the (fused) activation range, apply a fused table."""
    y = np.clip(acc + y_zp, act_min, act_max).astype(np.int8)
    return y if lut is None else lut[y.astype(np.int16) + 128]


def conv_out_size(size: int, k: int, stride: int, pad_begin: int, pad_end: int, dilation: int) -> int:
    """Output length of a convolution or pooling window along one axis (floor mode)."""
    return (size + pad_begin + pad_end - dilation * (k - 1) - 1) // stride + 1


def _windows(xp: np.ndarray, kh: int, kw: int, oh: int, ow: int, strides, dilations) -> np.ndarray:
    """The (oh, ow) grid of input values under kernel tap (kh, kw) of a padded NCHW tensor."""
    sh, sw = strides
    dh, dw = dilations
    return xp[:, :, kh * dh: kh * dh + sh * (oh - 1) + 1: sh, kw * dw: kw * dw + sw * (ow - 1) + 1: sw]


def conv(x, w, bias, mult, shift, lut=None, *, strides, pads, dilations, group, x_zp, y_zp,
         act_min, act_max):
    """Grouped 2-D convolution: acc = sum(w * (x - x_zp)) + bias, requantized per output channel."""
    n, c, h, wd = x.shape
    oc, cg, kh_n, kw_n = w.shape
    pt, pl, pb, pr = pads
    oh = conv_out_size(h, kh_n, strides[0], pt, pb, dilations[0])
    ow = conv_out_size(wd, kw_n, strides[1], pl, pr, dilations[1])
    # Padding with x_zp is padding x - x_zp with zeros: padded taps add nothing.
    xp = np.pad(x.astype(np.int64) - x_zp, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    wg = w.astype(np.int64).reshape(group, oc // group, cg, kh_n, kw_n)
    acc = np.zeros((n, group, oc // group, oh, ow), dtype=np.int64)
    for kh in range(kh_n):
        for kw in range(kw_n):
            taps = _windows(xp, kh, kw, oh, ow, strides, dilations).reshape(n, group, cg, oh, ow)
            acc += np.einsum("ngcij,goc->ngoij", taps, wg[:, :, :, kh, kw])
    acc = acc.reshape(n, oc, oh, ow) + bias.astype(np.int64)[None, :, None, None]
    acc = mbqm(acc, mult[None, :, None, None], shift[None, :, None, None])
    return _finish(acc, y_zp, act_min, act_max, lut)


def fully_connected(x, w, bias, mult, shift, lut=None, *, x_zp, y_zp, act_min, act_max):
    """y[n, o] = requant(sum_k w[o, k] * (x[n, k] - x_zp) + bias[o]), per-output-channel scales."""
    acc = (x.astype(np.int64) - x_zp) @ w.astype(np.int64).T + bias.astype(np.int64)
    return _finish(mbqm(acc, mult, shift), y_zp, act_min, act_max, lut)


def add(a, b, lut=None, *, a_zp, b_zp, y_zp, a_mult, a_shift, b_mult, b_shift, y_mult, y_shift,
        act_min, act_max):
    """TFLite int8 Add: both inputs lifted by 2^20, rescaled to a common scale, summed, rescaled."""
    sa = mbqm((a.astype(np.int64) - a_zp) << ADD_LEFT_SHIFT, a_mult, a_shift)
    sb = mbqm((b.astype(np.int64) - b_zp) << ADD_LEFT_SHIFT, b_mult, b_shift)
    return _finish(mbqm(sa + sb, y_mult, y_shift), y_zp, act_min, act_max, lut)


def mul(a, b, lut=None, *, a_zp, b_zp, y_zp, y_mult, y_shift, act_min, act_max):
    """TFLite int8 Mul: (a - a_zp) * (b - b_zp) rescaled by s_a * s_b / s_y."""
    prod = (a.astype(np.int64) - a_zp) * (b.astype(np.int64) - b_zp)
    return _finish(mbqm(prod, y_mult, y_shift), y_zp, act_min, act_max, lut)


def lut(x, table):
    """Any unary function of an int8 tensor with fixed scales: table[x + 128]."""
    return table[x.astype(np.int16) + 128]


def max_pool(x, *, kernel, strides, pads, dilations, act_min, act_max):
    """Max over each window; padded taps never win (they are below every int8)."""
    n, c, h, w = x.shape
    pt, pl, pb, pr = pads
    oh = conv_out_size(h, kernel[0], strides[0], pt, pb, dilations[0])
    ow = conv_out_size(w, kernel[1], strides[1], pl, pr, dilations[1])
    xp = np.pad(x.astype(np.int16), ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=-129)
    out = np.full((n, c, oh, ow), -129, dtype=np.int16)
    for kh in range(kernel[0]):
        for kw in range(kernel[1]):
            np.maximum(out, _windows(xp, kh, kw, oh, ow, strides, dilations), out=out)
    return np.clip(out, act_min, act_max).astype(np.int8)


def avg_pool(x, *, kernel, strides, pads, count_include_pad, x_zp, y_zp, act_min, act_max):
    """Mean of each window with TFLite's rounding; input and output share one scale."""
    n, c, h, w = x.shape
    pt, pl, pb, pr = pads
    oh = conv_out_size(h, kernel[0], strides[0], pt, pb, 1)
    ow = conv_out_size(w, kernel[1], strides[1], pl, pr, 1)
    xp = np.pad(x.astype(np.int64) - x_zp, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    valid = np.pad(np.ones((1, 1, h, w), dtype=np.int64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    acc = np.zeros((n, c, oh, ow), dtype=np.int64)
    count = np.zeros((1, 1, oh, ow), dtype=np.int64)
    for kh in range(kernel[0]):
        for kw in range(kernel[1]):
            acc += _windows(xp, kh, kw, oh, ow, strides, (1, 1))
            count += _windows(valid, kh, kw, oh, ow, strides, (1, 1))
    if count_include_pad:
        count[:] = kernel[0] * kernel[1]
    return _finish(rounded_div(acc, count), y_zp, act_min, act_max, None)


def softmax(x, table):
    """Integer softmax over the last axis; output scale 1/256, zero point -128.

    ``table[d]`` holds round(exp(-d * s_x) * 2^20) for d = max - x in [0, 255], so the sum is exact
    integer arithmetic and the result is a rounded integer division.
    """
    xi = x.astype(np.int64)
    e = table.astype(np.int64)[xi.max(axis=-1, keepdims=True) - xi]
    total = e.sum(axis=-1, keepdims=True)
    y = (e * 512 + total) // (2 * total) - 128
    return np.clip(y, -128, 127).astype(np.int8)


def concat(*xs, axis, x_zps, mults, shifts, y_zp):
    """Concatenate after rescaling every input to the output's quantization."""
    parts = [np.clip(mbqm(x.astype(np.int64) - zp, m, s) + y_zp, -128, 127)
             for x, zp, m, s in zip(xs, x_zps, mults, shifts)]
    return np.concatenate(parts, axis=axis).astype(np.int8)


def reshape(x, *, shape):
    """Same bytes, new shape; the batch dimension follows the input."""
    return x.reshape((x.shape[0],) + tuple(shape[1:]))


def copy_window(x, canvas=None, *, src, dst, size, out):
    """Copy the [C, h, w] window at ``src`` of x into ``canvas`` (or zeros of spatial size ``out``) at ``dst``.

    Patch-based inference is built from this one op: crop a patch (with its halo) out of a full
    tensor, and place a computed patch into the full output of the patched stage.
    """
    (sy, sx), (dy, dx), (h, w) = src, dst, size
    n, c, hi, wi = x.shape
    y = np.zeros((n, c, *out), dtype=np.int8) if canvas is None else canvas.copy()
    if h < 1 or w < 1 or sy < 0 or sx < 0 or dy < 0 or dx < 0 or sy + h > hi or sx + w > wi \
            or dy + h > y.shape[2] or dx + w > y.shape[3] or y.shape[:2] != (n, c):
        raise ValueError(f"window {size} at {src} -> {dst} does not fit {x.shape} -> {y.shape}")
    y[:, :, dy:dy + h, dx:dx + w] = x[:, :, sy:sy + h, sx:sx + w]
    return y
