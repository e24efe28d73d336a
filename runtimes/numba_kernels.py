"""Numba kernels: one compiled function per integer op, bit-exact with ``reference.py``.

Every kernel works on one sample: activations are flat int8 arrays in C order with the batch dimension
removed (CHW for images), constants are flat int8/int32 arrays, and shapes and quantization parameters
are plain ints. ``numba_backend`` decodes the program words and calls these; nothing here knows the
word layout.

Arithmetic follows ``fixedpoint.py``: convolution and fully-connected accumulators are int32 (the
converter proves they cannot overflow), requantization is done in int64 exactly as the reference does.

Numba types ``int32 op int32`` as int64; the accumulating statements store back into int32 arrays or
cast explicitly, so LLVM narrows the arithmetic to 32-bit lanes when it vectorizes.
"""

from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

from .fixedpoint import ADD_LEFT_SHIFT, INT32_MAX, INT32_MIN

# Below this many multiply-accumulates a layer runs on the calling thread: starting a parallel region
# costs a few microseconds, more than the whole layer. Measured on 2 cores; see _bench in the report.
PAR_MIN_MACS = 1 << 17
# Grouped convolutions with at least this many output channels per group pack an im2col tile once and
# reuse it for every channel of the group; below that (depthwise) the direct loop avoids the packing.
GEMM_MIN_OCG = 4
# Target elements of one output tile (int32 accumulators): keeps the tile in L1.
TILE_ELEMS = 2048
# Target bytes of one packed im2col tile (int16): keeps it in L2 while every channel of the group reads it.
COL_BYTES = 1 << 17

KIND_DIRECT, KIND_GEMM, KIND_FC = 0, 1, 2
BIN_ADD, BIN_MUL = 0, 1
POOL_MAX, POOL_AVG = 0, 1


# --------------------------------------------------------------------------------------------------
# Fixed-point helpers (fixedpoint.py, one scalar at a time, int64 in and out)

@njit(cache=True)
def srdhm(a, b):
    """SaturatingRoundingDoublingHighMul: round(a * b / 2^31), saturating INT32_MIN * INT32_MIN."""
    if a == INT32_MIN and b == INT32_MIN:
        return np.int64(INT32_MAX)
    ab = np.int64(a) * np.int64(b)
    # The nudge follows the sign of the product, then C-style truncation toward zero.
    if ab >= 0:
        return (ab + (1 << 30)) >> 31
    return -((-(ab + 1 - (1 << 30))) >> 31)


@njit(cache=True)
def rdbpot(x, exponent):
    """RoundingDivideByPOT: x / 2^exponent rounded half away from zero (exponent >= 0)."""
    x = np.int64(x)
    mask = (np.int64(1) << exponent) - 1
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if (x & mask) > threshold else 0)


@njit(cache=True)
def mbqm(x, mult, shift):
    """MultiplyByQuantizedMultiplier with edgeq's int32 saturation of the left-shifted input."""
    v = np.int64(x) << (shift if shift > 0 else 0)
    v = min(max(v, INT32_MIN), INT32_MAX)
    v = srdhm(v, mult)
    if shift < 0:
        v = rdbpot(v, -shift)
    return v


@njit(cache=True)
def rounded_div(acc, count):
    """Average-pool division rounding half away from zero; 0 when the window is empty (as NumPy's)."""
    if count <= 0:
        return np.int64(0)
    half = count // 2
    num = acc + half if acc > 0 else acc - half
    q = abs(num) // count
    return -q if num < 0 else q


@njit(cache=True)
def _finish(v, y_zp, lo, hi, lut):
    """Add the output zero point, clamp, wrap to int8 (as astype does), apply a fused table if any."""
    q = np.int8(min(max(v + y_zp, lo), hi))
    if lut.size:
        return lut[np.int64(q) + 128]
    return q


@njit(cache=True)
def _requant_row(acc, n, y, y0, mult, shift, y_zp, lo, hi, lut):
    """y[y0 : y0 + n] = requantized acc[:n] with one channel's multiplier and shift."""
    for i in range(n):
        y[y0 + i] = _finish(mbqm(acc[i], mult, shift), y_zp, lo, hi, lut)


@njit(cache=True)
def _valid_range(out_len, in_len, k, stride, pad, dil):
    """For each tap t, the outputs o whose input o*stride - pad + t*dil lies inside [0, in_len)."""
    lo = np.empty(k, np.int64)
    hi = np.empty(k, np.int64)
    for t in range(k):
        off = t * dil - pad
        a = -((off) // stride)                      # ceil(-off / stride)
        b = (in_len - 1 - off) // stride + 1
        lo[t] = min(max(a, 0), out_len)
        hi[t] = max(min(b, out_len), lo[t])
    return lo, hi


# --------------------------------------------------------------------------------------------------
# Convolution and fully connected. Both split their work into independent items (tiles of output)
# so one parallel driver can spread any of them over threads.
#
# Geometry tuple g: (C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, group)
# Quantization tuple q: (x_zp, y_zp, act_min, act_max)

@njit(cache=True)
def _direct_items(i0, i1, rows, x, w, bias, mult, shift, lut, y, g, q):
    """Output tiles i0..i1 (channel-major, `rows` output rows each) computed tap by tap.

    For each tap the valid output rows and columns are precomputed, so the innermost loop runs over a
    contiguous run of one accumulator row with no padding test (the depthwise case lives here).
    """
    C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, group = g
    x_zp, y_zp, lo, hi = q
    cg, ocg = C // group, OC // group
    n_tiles = (OH + rows - 1) // rows
    ohlo, ohhi = _valid_range(OH, H, KH, sh, pt, dh)
    owlo, owhi = _valid_range(OW, W, KW, sw, pl, dw)
    acc = np.empty(rows * OW, np.int32)
    for it in range(i0, i1):
        oc = it // n_tiles
        r0 = (it % n_tiles) * rows
        r1 = min(OH, r0 + rows)
        n = (r1 - r0) * OW
        acc[:n] = bias[oc]
        c0 = (oc // ocg) * cg
        for ci in range(cg):
            for kh in range(KH):
                a, b = max(ohlo[kh], r0), min(ohhi[kh], r1)
                for kw in range(KW):
                    wv = np.int32(w[((oc * cg + ci) * KH + kh) * KW + kw])
                    wz = wv * x_zp
                    m = owhi[kw] - owlo[kw]
                    for oh in range(a, b):
                        xs = ((c0 + ci) * H + oh * sh - pt + kh * dh) * W + owlo[kw] * sw - pl + kw * dw
                        ar = acc[(oh - r0) * OW + owlo[kw]:]
                        xr = x[xs:]
                        for j in range(m):
                            ar[j] += wv * xr[j * sw] - wz
        _requant_row(acc, n, y, oc * OH * OW + r0 * OW, mult[oc], shift[oc], y_zp, lo, hi, lut)


@njit(cache=True)
def _pack_tile(col, x, c0, r0, r1, g, x_zp, ohlo, ohhi, owlo, owhi):
    """im2col of output rows r0..r1 for input channels c0..c0+C/group: col[k, j] = x - x_zp, 0 in padding."""
    C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, group = g
    cg = C // group
    n = (r1 - r0) * OW
    for ci in range(cg):
        for kh in range(KH):
            for kw in range(KW):
                cr = col[(ci * KH + kh) * KW + kw]
                a, b = max(ohlo[kh], r0), min(ohhi[kh], r1)
                base = (c0 + ci) * H * W - pt * W + kh * dh * W - pl + kw * dw
                if sw == 1 and sh == 1 and OW == W and owlo[kw] == 0 and owhi[kw] == OW and a == r0 and b == r1:
                    # Rows follow each other in memory (pointwise convs): one flat run.
                    xr = x[base + r0 * W:]
                    for j in range(n):
                        cr[j] = xr[j] - x_zp
                    continue
                cr[:n] = 0
                for oh in range(a, b):
                    cw = cr[(oh - r0) * OW + owlo[kw]:]
                    xr = x[base + oh * sh * W + owlo[kw] * sw:]
                    for j in range(owhi[kw] - owlo[kw]):
                        cw[j] = xr[j * sw] - x_zp


@njit(cache=True)
def _gemm_items(i0, i1, rows, x, w, bias, mult, shift, lut, y, g, q):
    """Output tiles i0..i1 (group-major) as a small GEMM over a packed im2col tile.

    Four weights are applied per pass over the accumulator row, so each int32 accumulator is loaded and
    stored once per four multiply-adds instead of once per multiply-add.
    """
    C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, group = g
    x_zp, y_zp, lo, hi = q
    cg, ocg = C // group, OC // group
    K = cg * KH * KW
    n_tiles = (OH + rows - 1) // rows
    ohlo, ohhi = _valid_range(OH, H, KH, sh, pt, dh)
    owlo, owhi = _valid_range(OW, W, KW, sw, pl, dw)
    col = np.empty((K, rows * OW), np.int16)
    acc = np.empty(rows * OW, np.int32)
    for it in range(i0, i1):
        gi = it // n_tiles
        r0 = (it % n_tiles) * rows
        r1 = min(OH, r0 + rows)
        n = (r1 - r0) * OW
        _pack_tile(col, x, gi * cg, r0, r1, g, x_zp, ohlo, ohhi, owlo, owhi)
        for oc in range(gi * ocg, (gi + 1) * ocg):
            wr = w[oc * K:(oc + 1) * K]
            acc[:n] = bias[oc]
            k = 0
            while k + 4 <= K:
                w0, w1, w2, w3 = np.int32(wr[k]), np.int32(wr[k + 1]), np.int32(wr[k + 2]), np.int32(wr[k + 3])
                c0, c1, c2, c3 = col[k], col[k + 1], col[k + 2], col[k + 3]
                for j in range(n):
                    acc[j] += w0 * c0[j] + w1 * c1[j] + w2 * c2[j] + w3 * c3[j]
                k += 4
            while k < K:
                wk, ck = np.int32(wr[k]), col[k]
                for j in range(n):
                    acc[j] += wk * ck[j]
                k += 1
            _requant_row(acc, n, y, oc * OH * OW + r0 * OW, mult[oc], shift[oc], y_zp, lo, hi, lut)


@njit(cache=True)
def _fc_items(i0, i1, rows, x, w, bias, mult, shift, lut, y, g, q):
    """Output features i0..i1 as int32 dot products against (x - x_zp) widened once to int16."""
    K = g[0]
    x_zp, y_zp, lo, hi = q
    xs = np.empty(K, np.int16)
    for k in range(K):
        xs[k] = x[k] - x_zp
    for o in range(i0, i1):
        wr = w[o * K:(o + 1) * K]
        acc = np.int32(0)
        for k in range(K):
            acc = np.int32(acc + wr[k] * xs[k])
        y[o] = _finish(mbqm(acc + bias[o], mult[o], shift[o]), y_zp, lo, hi, lut)


@njit(cache=True)
def _items(kind, i0, i1, rows, x, w, bias, mult, shift, lut, y, g, q):
    """Run work items i0..i1 of one heavy kernel (conv direct, conv GEMM or fully connected)."""
    if kind == KIND_DIRECT:
        _direct_items(i0, i1, rows, x, w, bias, mult, shift, lut, y, g, q)
    elif kind == KIND_GEMM:
        _gemm_items(i0, i1, rows, x, w, bias, mult, shift, lut, y, g, q)
    else:
        _fc_items(i0, i1, rows, x, w, bias, mult, shift, lut, y, g, q)


@njit(cache=True, parallel=True)
def _items_parallel(kind, n_items, n_chunks, rows, x, w, bias, mult, shift, lut, y, g, q):
    """The same work split into n_chunks contiguous ranges, one per thread (each keeps its scratch)."""
    for t in prange(n_chunks):
        _items(kind, t * n_items // n_chunks, (t + 1) * n_items // n_chunks, rows,
               x, w, bias, mult, shift, lut, y, g, q)


@njit(cache=True)
def _run_items(kind, n_items, macs, rows, x, w, bias, mult, shift, lut, y, g, q):
    """Serial for small layers (a parallel region costs more than they do), else one chunk per thread."""
    threads = get_num_threads()
    if threads > 1 and n_items > 1 and macs >= PAR_MIN_MACS:
        _items_parallel(kind, n_items, min(threads, n_items), rows, x, w, bias, mult, shift, lut, y, g, q)
    else:
        _items(kind, 0, n_items, rows, x, w, bias, mult, shift, lut, y, g, q)


@njit(cache=True)
def conv_kind(C, OC, OH, OW, KH, KW, group):
    """Which conv path runs, and its tile height in output rows (exposed so tests can force a path)."""
    K = (C // group) * KH * KW
    if OC // group >= GEMM_MIN_OCG:
        rows = max(1, min(OH, TILE_ELEMS // OW, COL_BYTES // (2 * K * OW)))
        return KIND_GEMM, rows
    return KIND_DIRECT, max(1, min(OH, TILE_ELEMS // OW))


@njit(cache=True)
def conv_with(kind, rows, x, w, bias, mult, shift, lut, y, C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl,
              dh, dw, group, x_zp, y_zp, act_min, act_max):
    """:func:`conv` on an explicit path (KIND_DIRECT or KIND_GEMM) and tile height."""
    g = (C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, group)
    q = (x_zp, y_zp, act_min, act_max)
    n_tiles = (OH + rows - 1) // rows
    n_items = (OC if kind == KIND_DIRECT else group) * n_tiles
    macs = OC * OH * OW * (C // group) * KH * KW
    _run_items(kind, n_items, macs, rows, x, w, bias, mult, shift, lut, y, g, q)


@njit(cache=True)
def conv(x, w, bias, mult, shift, lut, y, C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, group,
         x_zp, y_zp, act_min, act_max):
    """QConv on one sample: x int8[C*H*W] -> y int8[OC*OH*OW], weights int8[OC, C/group, KH, KW].

    bias/mult/shift are int32[OC]; ``lut`` is an int8[256] table or an empty array. Pads are the top
    and left pads (the bottom/right ones are implied by OH/OW).
    """
    kind, rows = conv_kind(C, OC, OH, OW, KH, KW, group)
    conv_with(kind, rows, x, w, bias, mult, shift, lut, y, C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl,
              dh, dw, group, x_zp, y_zp, act_min, act_max)


@njit(cache=True)
def fully_connected(x, w, bias, mult, shift, lut, y, K, OC, x_zp, y_zp, act_min, act_max):
    """QFullyConnected on one sample: x int8[K] -> y int8[OC], weights int8[OC, K]."""
    g = (K, 1, 1, OC, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1)
    _run_items(KIND_FC, OC, OC * K, 1, x, w, bias, mult, shift, lut, y, g, (x_zp, y_zp, act_min, act_max))


# --------------------------------------------------------------------------------------------------
# Elementwise ops

@njit(cache=True)
def _broadcast(op, a, b, lut, y, dims, a_str, b_str, p, y_zp, lo, hi):
    """Shared 4-D broadcast loop of QAdd and QMul; ``p`` = (a_zp, b_zp, a_mult, a_shift, b_mult,
    b_shift, y_mult, y_shift) (QMul ignores the per-input rescales)."""
    a_zp, b_zp, a_mult, a_shift, b_mult, b_shift, y_mult, y_shift = p
    d0, d1, d2, d3 = dims
    i = 0
    for i0 in range(d0):
        for i1 in range(d1):
            for i2 in range(d2):
                ab = i0 * a_str[0] + i1 * a_str[1] + i2 * a_str[2]
                bb = i0 * b_str[0] + i1 * b_str[1] + i2 * b_str[2]
                for i3 in range(d3):
                    av = np.int64(a[ab + i3 * a_str[3]]) - a_zp
                    bv = np.int64(b[bb + i3 * b_str[3]]) - b_zp
                    if op == BIN_ADD:
                        # Each scaled input fits int32; their sum may not, mbqm saturates it as the
                        # reference's int64 path does.
                        v = (mbqm(av << ADD_LEFT_SHIFT, a_mult, a_shift)
                             + mbqm(bv << ADD_LEFT_SHIFT, b_mult, b_shift))
                    else:
                        v = av * bv
                    y[i] = _finish(mbqm(v, y_mult, y_shift), y_zp, lo, hi, lut)
                    i += 1


@njit(cache=True)
def add(a, b, lut, y, dims, a_strides, b_strides, a_zp, b_zp, y_zp, a_mult, a_shift, b_mult, b_shift,
        y_mult, y_shift, act_min, act_max):
    """QAdd: y = requant(mbqm((a-a_zp)<<20) + mbqm((b-b_zp)<<20)) over the 4-D output ``dims``.

    ``a_strides``/``b_strides`` are element strides of each operand read as ``dims`` (0 = broadcast).
    """
    _broadcast(BIN_ADD, a, b, lut, y, dims, a_strides, b_strides,
               (a_zp, b_zp, a_mult, a_shift, b_mult, b_shift, y_mult, y_shift), y_zp, act_min, act_max)


@njit(cache=True)
def mul(a, b, lut, y, dims, a_strides, b_strides, a_zp, b_zp, y_zp, y_mult, y_shift, act_min, act_max):
    """QMul: y = requant((a - a_zp) * (b - b_zp)) over the 4-D output ``dims`` (see :func:`add`)."""
    _broadcast(BIN_MUL, a, b, lut, y, dims, a_strides, b_strides,
               (a_zp, b_zp, 0, 0, 0, 0, y_mult, y_shift), y_zp, act_min, act_max)


@njit(cache=True)
def lut(x, table, y, count):
    """QLut: y[i] = table[x[i] + 128]."""
    for i in range(count):
        y[i] = table[np.int64(x[i]) + 128]


# --------------------------------------------------------------------------------------------------
# Pooling

@njit(cache=True)
def _pool(op, x, y, C, H, W, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, count_include_pad, x_zp, y_zp, lo, hi):
    """Shared window walk of max and average pooling: only taps inside the input are visited."""
    ohlo, ohhi = _valid_range(OH, H, KH, sh, pt, dh)
    owlo, owhi = _valid_range(OW, W, KW, sw, pl, dw)
    for c in range(C):
        xc = x[c * H * W:]
        yc = y[c * OH * OW:]
        for oh in range(OH):
            for ow in range(OW):
                best = np.int64(-129)  # below every int8: an empty window clamps to act_min
                total = np.int64(0)
                count = np.int64(0)
                for kh in range(KH):
                    if oh < ohlo[kh] or oh >= ohhi[kh]:
                        continue
                    xr = (oh * sh - pt + kh * dh) * W + ow * sw - pl
                    for kw in range(KW):
                        if ow < owlo[kw] or ow >= owhi[kw]:
                            continue
                        v = np.int64(xc[xr + kw * dw])
                        if op == POOL_MAX:
                            best = max(best, v)
                        else:
                            total += v - x_zp
                            count += 1
                if op == POOL_MAX:
                    yc[oh * OW + ow] = min(max(best, lo), hi)
                else:
                    if count_include_pad:
                        count = KH * KW
                    yc[oh * OW + ow] = np.int8(min(max(rounded_div(total, count) + y_zp, lo), hi))


@njit(cache=True)
def max_pool(x, y, C, H, W, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, act_min, act_max):
    """QMaxPool on one sample (CHW); padded taps never win."""
    _pool(POOL_MAX, x, y, C, H, W, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, 0, 0, 0, act_min, act_max)


@njit(cache=True)
def avg_pool(x, y, C, H, W, OH, OW, KH, KW, sh, sw, pt, pl, count_include_pad, x_zp, y_zp, act_min, act_max):
    """QAvgPool on one sample (CHW) with TFLite rounding; count_include_pad divides by KH*KW."""
    _pool(POOL_AVG, x, y, C, H, W, OH, OW, KH, KW, sh, sw, pt, pl, 1, 1, count_include_pad, x_zp, y_zp,
          act_min, act_max)


# --------------------------------------------------------------------------------------------------
# Softmax, concat, reshape

@njit(cache=True)
def softmax(x, table, y, rows, cols):
    """QSoftmax over the last axis: e = table[max - x], y = (e*512 + sum) // (2*sum) - 128, int64 sums."""
    for r in range(rows):
        xr = x[r * cols:(r + 1) * cols]
        yr = y[r * cols:(r + 1) * cols]
        m = np.int64(-128)
        for i in range(cols):
            m = max(m, np.int64(xr[i]))
        total = np.int64(0)
        for i in range(cols):
            total += table[m - xr[i]]
        for i in range(cols):
            e = np.int64(table[m - xr[i]])
            # NumPy's integer division by zero gives 0; an all-zero table row is not worth a crash.
            v = (e * 512 + total) // (2 * total) - 128 if total != 0 else np.int64(-128)
            yr[i] = min(max(v, -128), 127)


@njit(cache=True)
def concat_part(x, y, outer, inner, y_inner, y_pos, x_zp, mult, shift, y_zp):
    """Write one QConcat input: for each of ``outer`` blocks, ``inner`` rescaled values at y_pos.

    ``y_inner`` is the output's block length (sum of every input's ``inner``).
    """
    for o in range(outer):
        xo = x[o * inner:]
        yo = y[o * y_inner + y_pos:]
        for i in range(inner):
            yo[i] = min(max(mbqm(np.int64(xo[i]) - x_zp, mult, shift) + y_zp, -128), 127)


@njit(cache=True)
def move(arena, src, dst, count):
    """QReshape: memmove count bytes within the arena (a no-op when the planner aliased them)."""
    if src == dst:
        return
    if dst < src:
        for i in range(count):
            arena[dst + i] = arena[src + i]
    else:
        for i in range(count - 1, -1, -1):
            arena[dst + i] = arena[src + i]
