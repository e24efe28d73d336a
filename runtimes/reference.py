"""Reference kernels: the readable NumPy definition of every integer op (the living spec).

Every optimized kernel (Numba, C, cross-compiled C) must produce exactly these bytes. Tensors are NCHW
with the batch first; activations are int8 (asymmetric) or, for the layers mixed precision promotes,
int16 (symmetric, zero point 0: TFLite's 16x8 scheme, weights stay int8); accumulators are int64 here (the
fast kernels use int32 where the converter proves it cannot overflow), requantization follows ``fixedpoint``.
Ops with an int16 variant take ``y_bits`` (8 or 16) for their output; the input width is the array's dtype.
"""

from __future__ import annotations

import numpy as np

from .fixedpoint import (ADD_LEFT_SHIFT, multiply_by_quantized_multiplier as mbqm,
                         multiply_by_quantized_multiplier_single as mbqm_single, rounded_div, rounding_divide_by_pot)


ACT_DTYPES = {8: np.int8, 16: np.int16}  # activation element types by width
LUT16_STEPS = 512  # intervals of the interpolated table of an int16 input (TFLite's int16 LUT layout)


def act_limits(bits: int) -> tuple[int, int]:
    """Value range of an activation of ``bits`` (8 or 16)."""
    info = np.iinfo(ACT_DTYPES[bits])
    return int(info.min), int(info.max)


def _finish(acc: np.ndarray, y_zp: int, act_min: int, act_max: int, lut: np.ndarray | None,
            y_bits: int = 8) -> np.ndarray:
    """Add the output zero point, clamp to the (fused) activation range, apply a fused table (int8 only)."""
    y = np.clip(acc + y_zp, act_min, act_max).astype(ACT_DTYPES[y_bits])
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
         act_min, act_max, y_bits=8):
    """Grouped 2-D convolution: acc = sum(w * (x - x_zp)) + bias, requantized per output channel.

    x is int8 or int16 and y is int8 or int16 (``y_bits``); the int64 accumulator saturates to int32 in
    the requantization (``fixedpoint``), which an int16 input can reach only with implausible data."""
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
    return _finish(acc, y_zp, act_min, act_max, lut, y_bits)


def fully_connected(x, w, bias, mult, shift, lut=None, *, x_zp, y_zp, act_min, act_max, single_rounding=False):
    """y[n, o] = requant(sum_k w[o, k] * (x[n, k] - x_zp) + bias[o]), per-output-channel scales.

    ``single_rounding``: requantize as TFLite's int8 FULLY_CONNECTED reference does (one rounding, set by
    the TFLite importer); otherwise with MultiplyByQuantizedMultiplier's two, as every other op."""
    acc = (x.astype(np.int64) - x_zp) @ w.astype(np.int64).T + bias.astype(np.int64)
    return _finish((mbqm_single if single_rounding else mbqm)(acc, mult, shift), y_zp, act_min, act_max, lut)


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


def lut(x, table, *, y_bits=8):
    """Any unary function with fixed scales. int8 x: table[x + 128] (the table's dtype is the output's).

    int16 x (TFLite's int16 LUT): ``table`` holds 513 int16 samples of the function at x = -32768 + 128 i;
    u = x + 32768 picks interval i = u >> 7 at fraction f = u & 127 and the result is
    t[i] + ((t[i+1] - t[i]) * f + 64 >> 7) (arithmetic shift), clamped to the output's range.
    """
    if x.dtype == np.int8:
        return table[x.astype(np.int16) + 128]
    u = x.astype(np.int64) + 32768
    i, f = u >> 7, u & 127
    t = table.astype(np.int64)
    y = t[i] + (((t[i + 1] - t[i]) * f + 64) >> 7)
    return np.clip(y, *act_limits(y_bits)).astype(ACT_DTYPES[y_bits])


def requantize(x, *, x_zp, y_zp, mult, shift, y_bits):
    """Between widths (int8 <-> int16) or scales: y = clamp(mbqm(x - x_zp, mult, shift) + y_zp)."""
    y = mbqm(x.astype(np.int64) - x_zp, mult, shift) + y_zp
    return np.clip(y, *act_limits(y_bits)).astype(ACT_DTYPES[y_bits])


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


def strided_copy(x, *, shape, strides, offset):
    """Gather a view of each sample: y[i] = x_sample.flat[offset + sum_k i_k * strides[k]].

    Transpose, Slice (any step) and their compositions are all this one op: the converter turns a
    permutation or a slice into the output shape, the element strides into the input and a start offset.
    """
    n = x.shape[0]
    index = np.full(tuple(shape), offset, dtype=np.int64)
    for k, (d, s) in enumerate(zip(shape, strides)):
        index += (np.arange(d, dtype=np.int64) * s).reshape((1,) * k + (d,) + (1,) * (len(shape) - k - 1))
    return x.reshape(n, -1)[:, index.reshape(-1)].reshape((n,) + tuple(shape))


def matmul(a, b, bias, mult, shift, lut=None, *, b_nk, a_zp, b_zp, y_zp, act_min, act_max):
    """y[..., m, n] = requant(sum_k (a[..., m, k] - a_zp) * (b[k, n] - b_zp) + bias[n]) per column n.

    ``b_nk`` 1: b is a constant [N, K] shared by every row (weights, zero point 0); 0: b is an
    activation [n, ..., K, N] with the same leading dimensions as a (attention's Q K^T and P V).
    """
    av = a.astype(np.int64) - a_zp
    bv = b.astype(np.int64) - b_zp
    acc = av @ (bv.T if b_nk else bv) + bias.astype(np.int64)
    return _finish(mbqm(acc, mult, shift), y_zp, act_min, act_max, lut)


def conv_transpose(x, w, bias, mult, shift, lut=None, *, strides, pads, dilations, group, out, x_zp, y_zp,
                   act_min, act_max):
    """Transposed 2-D convolution with weights regrouped as [OC, C/group, KH, KW]: every input pixel
    scatters w * (x - x_zp) onto the output grid at stride ``strides``; ``out`` is the output size after
    cropping ``pads`` (top, left) from the front of the full grid."""
    n, c, h, wd = x.shape
    oc, cg, kh_n, kw_n = w.shape
    sh, sw = strides
    dh, dw = dilations
    oh, ow = out
    full_h = max((h - 1) * sh + dh * (kh_n - 1) + 1, pads[0] + oh)
    full_w = max((wd - 1) * sw + dw * (kw_n - 1) + 1, pads[1] + ow)
    xg = (x.astype(np.int64) - x_zp).reshape(n, group, cg, h, wd)
    wg = w.astype(np.int64).reshape(group, oc // group, cg, kh_n, kw_n)
    acc = np.zeros((n, group, oc // group, full_h, full_w), dtype=np.int64)
    for kh in range(kh_n):
        for kw in range(kw_n):
            acc[:, :, :, kh * dh: kh * dh + (h - 1) * sh + 1: sh, kw * dw: kw * dw + (wd - 1) * sw + 1: sw] += \
                np.einsum("ngcij,goc->ngoij", xg, wg[:, :, :, kh, kw])
    acc = acc.reshape(n, oc, full_h, full_w)[:, :, pads[0]: pads[0] + oh, pads[1]: pads[1] + ow]
    acc = acc + bias.astype(np.int64)[None, :, None, None]
    acc = mbqm(acc, mult[None, :, None, None], shift[None, :, None, None])
    return _finish(acc, y_zp, act_min, act_max, lut)


RESIZE_ONE = 2048  # fixed-point 1.0 of the per-axis interpolation weights


def _resize_taps(table, size):
    """(i0, i1, w1) per output position, clamped into the input (the kernels clamp identically)."""
    t = table.astype(np.int64).reshape(-1, 3)
    return np.clip(t[:, 0], 0, size - 1), np.clip(t[:, 1], 0, size - 1), np.clip(t[:, 2], 0, RESIZE_ONE)


def resize(x, ytab, xtab, *, zp):
    """Separable 2-D resize (nearest or bilinear) on tables of taps computed by the converter.

    Row r of ``ytab`` (``xtab``) is (i0, i1, w1): output row r reads input rows i0 and i1 with weights
    2048 - w1 and w1 (nearest: w1 = 0). Input and output share one quantization; the weighted sum
    (scale 2^22) is rounded half away from zero.
    """
    d = x.astype(np.int64) - zp
    y0, y1, wy = _resize_taps(ytab, x.shape[2])
    x0, x1, wx = _resize_taps(xtab, x.shape[3])
    rows = d[:, :, y0, :] * (RESIZE_ONE - wy)[:, None] + d[:, :, y1, :] * wy[:, None]
    acc = rows[..., x0] * (RESIZE_ONE - wx) + rows[..., x1] * wx
    return np.clip(rounding_divide_by_pot(acc, 22) + zp, -128, 127).astype(np.int8)


def isqrt(v: np.ndarray) -> np.ndarray:
    """floor(sqrt(v)) of non-negative int64 values, exactly (the digit-by-digit method of the kernels)."""
    v = np.asarray(v, dtype=np.int64).copy()
    root = np.zeros_like(v)
    bit = np.int64(1) << 62
    while bit:
        trial = root + bit
        take = v >= trial
        v = np.where(take, v - trial, v)
        root = np.where(take, (root >> 1) + bit, root >> 1)
        bit >>= 2
    return root


LN_NORM_BITS = 12  # fraction bits of the normalised value (x - mean) / std
LN_OUT_BITS = 24   # fraction bits of gamma * normalised + beta before the final rounding


def layer_norm(x, gamma, beta, *, x_zp, y_zp, eps, act_min, act_max):
    """Integer-only LayerNorm over the last axis (I-LayerNorm style, REFERENCE.md section 1).

    With d = x - x_zp and C values per row: c = C*d - sum(d) is C times the deviation from the mean
    (exact), var = sum(c^2) // C + eps is C^2 times the variance (eps already in those units), std =
    isqrt(var), and the normalised value is round(c * 2^12 / std). ``gamma`` holds round(g / s_y * 2^12)
    and ``beta`` round(b / s_y * 2^24) (int32, saturated), so the output is
    round((norm * gamma + beta) / 2^24) + y_zp.
    """
    d = x.astype(np.int64) - x_zp
    cols = d.shape[-1]
    c = cols * d - d.sum(axis=-1, keepdims=True)
    var = (c * c).sum(axis=-1, keepdims=True) // cols + eps
    std = np.maximum(isqrt(var), 1)
    norm = rounded_div(c << LN_NORM_BITS, std)
    acc = norm * gamma.astype(np.int64) + beta.astype(np.int64)
    return np.clip(rounding_divide_by_pot(acc, LN_OUT_BITS) + y_zp, act_min, act_max).astype(np.int8)
