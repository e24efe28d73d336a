"""Numba kernels: one compiled function per integer op, bit-exact with ``reference.py``.

Every kernel works on one sample: activations are flat int8 arrays in C order with the batch dimension
removed (CHW for images), constants are flat int8/int32 arrays, and shapes and quantization parameters
are plain ints. ``numba_backend`` decodes the program words and calls these; nothing here knows the
word layout.

Arithmetic follows ``fixedpoint.py``: convolution and fully-connected accumulators are int32 (the
converter proves they cannot overflow), requantization is done in int64 exactly as the reference does.

Convolutions run on unsigned activations u = x + 128 so that sum(w * (x - x_zp)) becomes
sum(w * u) - (x_zp + 128) * sum(w): padding is then the byte x_zp + 128 and the correction is one
constant per output channel. On CPUs with AVX512-VNNI the inner product is the ``vpdpbusd``
instruction (64 multiply-adds of u8 x s8 each), emitted through Numba intrinsics, in two layouts: a
channel-blocked one for convolutions with many output channels per group and a row one for depthwise
and thin groups. Elsewhere every convolution takes the direct path, plain loops LLVM vectorizes.

Performance notes for editing: Numba types ``int32 op int32`` as int64, so accumulating statements
store back into int32 arrays and LLVM narrows them; and a signed index costs a negative-index check
that stops LLVM from vectorizing, so hot loops index through :func:`_u`.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .fixedpoint import ADD_LEFT_SHIFT, INT32_MAX, INT32_MIN


def _target_has_vnni() -> bool:
    """Whether Numba compiles for a CPU with AVX512-VNNI (it honours NUMBA_CPU_NAME/NUMBA_CPU_FEATURES)."""
    try:
        from numba.core.codegen import get_host_cpu_features
        feats = numba.config.CPU_FEATURES if numba.config.CPU_FEATURES is not None else get_host_cpu_features()
    except Exception:  # pragma: no cover - unusual Numba builds: fall back to the portable paths
        return False
    on = set(f[1:] for f in feats.split(",") if f.startswith("+"))
    return {"avx512f", "avx512bw", "avx512vnni"} <= on


# Frozen into the compiled code. Numba's cache is keyed by CPU name and features, so a cache built on one
# CPU is never loaded on another that would disagree.
HAVE_VNNI = _target_has_vnni()

LANES = 16     # output channels per block: one 512-bit vector of int32 accumulators
NB = 8         # output positions per block: 8 accumulator vectors stay in registers
# Below this many multiply-accumulates a layer runs on the calling thread. Measured with 2 threads
# (OpenMP layer): a parallel region costs ~1 us, which doubles layers under ~70K MACs; from ~300K MACs
# two threads give 1.2-1.8x (the input packing before the region stays serial).
PAR_MIN_MACS = 1 << 18
# The blocked (channel-vector) path needs enough output channels per group to fill a vector; thinner
# groups (depthwise) take the direct per-channel path.
BLOCKED_MIN_OCG = 4
TILE_POS = 256       # output positions per work item of the blocked path
TILE_ELEMS = 4096    # accumulators per work item of the direct path (int32, stays in L1)

KIND_DIRECT, KIND_BLOCKED, KIND_ROWS, KIND_FC = 0, 1, 2, 3
BIN_ADD, BIN_MUL = 0, 1
POOL_MAX, POOL_AVG = 0, 1


# Numba re-initialises its threading layer when it loads a cached function that runs parallel loops,
# but it loses that hook for a cached caller compiled while its parallel callee came from the cache:
# calling such a kernel first in a process then crashes. Starting the threading layer up front is cheap.
numba.get_num_threads()


@njit(cache=True)
def _u(i):
    """``i`` as an unsigned index: Numba skips the negative-index fix-up, so the loop can vectorize."""
    return np.uint64(i)


# --------------------------------------------------------------------------------------------------
# Fixed-point helpers (fixedpoint.py, one scalar at a time, int64 in and out). Written with selects
# rather than early returns so that loops calling them vectorize.

@njit(cache=True)
def srdhm(a, b):
    """SaturatingRoundingDoublingHighMul: round(a * b / 2^31), saturating INT32_MIN * INT32_MIN.

    gemmlowp adds a nudge of 2^30 (or 1 - 2^30 below zero) and truncates toward zero; for negative
    products that equals flooring after adding 2^30, so one arithmetic shift does both cases.
    """
    q = (np.int64(a) * np.int64(b) + (1 << 30)) >> 31
    return np.int64(INT32_MAX) if (a == INT32_MIN and b == INT32_MIN) else q


@njit(cache=True)
def rdbpot(x, exponent):
    """RoundingDivideByPOT: x / 2^exponent rounded half away from zero (exponent >= 0).

    Same as gemmlowp's mask/threshold form: add half, minus one for negative x (ties then go down,
    away from zero), and shift; for exponent 0 nothing is added.
    """
    x = np.int64(x)
    half = (np.int64(1) << exponent) >> 1
    return (x + half - ((x >> 63) & (1 if exponent > 0 else 0))) >> exponent


@njit(cache=True)
def mbqm(x, mult, shift):
    """MultiplyByQuantizedMultiplier with edgeq's int32 saturation of the left-shifted input."""
    v = np.int64(x) << max(shift, 0)
    v = min(max(v, INT32_MIN), INT32_MAX)
    return rdbpot(srdhm(v, mult), max(-shift, 0))


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
def _clamp8(v, y_zp, lo, hi):
    """Add the output zero point, clamp to the activation range, wrap to int8 (as astype does)."""
    return np.int8(min(max(v + y_zp, lo), hi))


@njit(cache=True)
def _finish(v, y_zp, lo, hi, lut):
    """:func:`_clamp8`, then the fused table if any (one value; vector loops use _apply_lut)."""
    q = _clamp8(v, y_zp, lo, hi)
    if lut.size:
        return lut[np.int64(q) + 128]
    return q


@njit(cache=True, inline="always")  # called per row of a work item: as a call it cost ~0.2 us each
def _apply_lut(y, y0, n, lut):
    """y[y0:y0+n] = lut[y + 128] if there is a fused table: a separate pass, because a table lookup
    inside a requantization loop stops it from vectorizing."""
    if lut.size:
        for i in range(n):
            y[_u(y0 + i)] = lut[np.int64(y[_u(y0 + i)]) + 128]


@njit(cache=True)
def _valid_range(out_len, in_len, k, stride, pad, dil):
    """For each tap t, the outputs o whose input o*stride - pad + t*dil lies inside [0, in_len)."""
    lo = np.empty(k, np.int64)
    hi = np.empty(k, np.int64)
    for t in range(k):
        off = t * dil - pad
        a = -(off // stride)                        # ceil(-off / stride)
        b = (in_len - 1 - off) // stride + 1
        lo[t] = min(max(a, 0), out_len)
        hi[t] = max(min(b, out_len), lo[t])
    return lo, hi


# --------------------------------------------------------------------------------------------------
# Hand-written LLVM IR (Numba intrinsics) for what auto-vectorization does not reach: the VNNI dot
# product, register-blocked, and requantization in 32-bit lanes. Only the microkernels use x86
# intrinsics; they are compiled only when HAVE_VNNI (see _items).

_I32, _I64 = ir.IntType(32), ir.IntType(64)
_V16 = ir.VectorType(_I32, LANES)


def _splat(builder, value):
    """A 16-lane vector of the int32 ``value``."""
    zero = ir.Constant(_V16, None)
    return builder.shuffle_vector(builder.insert_element(zero, value, ir.Constant(_I32, 0)), zero,
                                  ir.Constant(_V16, None))


def _vpdpbusd(builder):
    """AVX512-VNNI ``vpdpbusd(acc, a, b)``: acc plus, per int32 lane, four u8 (a) x s8 (b) products."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16] * 3),
                                          "llvm.x86.avx512.vpdpbusd.512")


class _VecScale:
    """IR for ``rdbpot(srdhm(v, mult), right)`` on 16 int32 lanes: :func:`mbqm` without a left shift.

    Valid for right >= 0 (no left shift, hence no saturation of the input) and no INT32_MIN * INT32_MIN
    product (no saturation in srdhm); in 32-bit lanes where Numba's int64 typing would double the work
    of every step. RoundingDivideByPOT keeps gemmlowp's mask/threshold form, which cannot overflow 32
    bits. The constants are built once, where the object is created.
    """

    def __init__(self, builder, mult, right):
        self.b = b = builder
        self.v64 = ir.VectorType(_I64, 16)
        r32 = b.trunc(right, _I32)
        mask = b.sub(b.shl(ir.Constant(_I32, 1), r32), ir.Constant(_I32, 1))
        self.mult = b.sext(_splat(b, b.trunc(mult, _I32)), self.v64)  # sign-extended: a 32x32->64 multiply
        self.half = b.sext(_splat(b, ir.Constant(_I32, 1 << 30)), self.v64)
        self.s31 = b.sext(_splat(b, ir.Constant(_I32, 31)), self.v64)
        self.mask, self.thr = _splat(b, mask), _splat(b, b.ashr(mask, ir.Constant(_I32, 1)))
        self.right, self.sign = _splat(b, r32), _splat(b, ir.Constant(_I32, 31))

    def __call__(self, v):
        b = self.b
        x = b.trunc(b.ashr(b.add(b.mul(b.sext(v, self.v64), self.mult), self.half), self.s31), _V16)  # srdhm
        up = b.zext(b.icmp_signed(">", b.and_(x, self.mask), b.add(self.thr, b.lshr(x, self.sign))), _V16)
        return b.add(b.ashr(x, self.right), up)                                                   # rdbpot


class _VecClamp8:
    """IR for :func:`_clamp8` on 16 int32 lanes -> 16 int8: clamping to [lo - zp, hi - zp] before adding
    zp equals clamping after, and cannot overflow."""

    def __init__(self, builder, y_zp, lo, hi):
        self.b = b = builder
        fn = ir.FunctionType(_V16, [_V16, _V16])
        self.smax = cgutils.get_or_insert_function(b.module, fn, "llvm.smax.v16i32")
        self.smin = cgutils.get_or_insert_function(b.module, fn, "llvm.smin.v16i32")
        t32 = lambda value: b.trunc(value, _I32)  # noqa: E731
        self.zp = _splat(b, t32(y_zp))
        self.lo, self.hi = _splat(b, t32(b.sub(lo, y_zp))), _splat(b, t32(b.sub(hi, y_zp)))

    def __call__(self, x):
        b = self.b
        x = b.add(b.call(self.smin, [b.call(self.smax, [x, self.lo]), self.hi]), self.zp)
        return b.trunc(x, ir.VectorType(ir.IntType(8), 16))


class _VecRequant:
    """IR for ``clamp8(rdbpot(srdhm(int32(acc + corr), mult), right))`` on 16 int32 lanes -> 16 int8,
    under :class:`_VecScale`'s conditions (the int32 addition wraps, as the accumulator does)."""

    def __init__(self, builder, corr, mult, right, y_zp, lo, hi):
        self.b = builder
        self.corr = _splat(builder, builder.trunc(corr, _I32))
        self.scale, self.clamp = _VecScale(builder, mult, right), _VecClamp8(builder, y_zp, lo, hi)

    def __call__(self, acc):
        return self.clamp(self.scale(self.b.add(acc, self.corr)))


@intrinsic
def _requant16(typingctx, acc, a0, a_step, y, y0, y_step, rows, n, corr, mult, right, y_zp, lo, hi):
    """y[y0 + r*y_step + j] = clamp8(rdbpot(srdhm(int32(acc[a0 + r*a_step + j] + corr), mult), right))
    for r < rows, j < n (n >= 16), sixteen lanes at a time (see :class:`_VecRequant` for when it
    applies); the last vector of a row overlaps the previous one."""
    i64 = types.int64
    sig = types.void(acc, i64, i64, y, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64)

    def codegen(context, builder, signature, args):
        acc_v, a0, a_step, y_v, y0, y_step, rows, n, corr, mult, right, y_zp, lo, hi = args
        ap = context.make_array(signature.args[0])(context, builder, acc_v).data
        yp = context.make_array(signature.args[3])(context, builder, y_v).data
        requant = _VecRequant(builder, corr, mult, right, y_zp, lo, hi)
        c = lambda v: ir.Constant(_I64, v)  # noqa: E731
        count = builder.udiv(builder.add(n, c(15)), c(16))
        last = builder.sub(n, c(16))
        with cgutils.for_range(builder, rows) as row, cgutils.for_range(builder, count) as loop:
            start = builder.mul(loop.index, c(16))
            start = builder.select(builder.icmp_signed(">", start, last), last, start)
            src = builder.gep(ap, [builder.add(builder.add(a0, builder.mul(row.index, a_step)), start)])
            dst = builder.gep(yp, [builder.add(builder.add(y0, builder.mul(row.index, y_step)), start)])
            out = requant(builder.load(builder.bitcast(src, _V16.as_pointer()), align=4))
            builder.store(out, builder.bitcast(dst, out.type.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


# The blocked microkernel: blocks of NB output positions x LANES output channels.
#
# Activations: xb[group][CQ][Hp][Wp][4] uint8 (x + 128, four input channels interleaved, padding
# prebuilt); ``offs[p]`` is the byte offset of output position p's window corner inside one channel-quad
# plane, ``taps[t]`` the offset of kernel tap t from that corner, ``plane`` the bytes of one quad plane.
# Weights: wq[..][T][CQ][LANES][4] int8, 64 bytes per (tap, quad), starting at byte w0.
# For blocks b < n_blk (positions o0 + b*NB + j):
#   acc[o * stride + b*NB + j] = sum over taps and quads of the 4-byte dot products, lane o.
# Each lane's positions end up contiguous, so requantization runs along positions with one multiplier.

def _transpose_to_lanes(builder, vecs):
    """NB vectors of LANES lanes -> one vector whose element o*NB + j is vecs[j][o] (a shuffle tree)."""
    width = 1
    while len(vecs) > 1:
        n = len(vecs[0].type)          # elements per input: LANES * width
        merged = []
        for a, b in zip(vecs[0::2], vecs[1::2]):
            # Interleave groups of `width` elements: lane o's run of a, then lane o's run of b.
            mask = [(i // (2 * width)) * width + i % width + (n if i % (2 * width) >= width else 0)
                    for i in range(2 * n)]
            merged.append(builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, 2 * n), mask)))
        vecs, width = merged, 2 * width
    return vecs[0]


@intrinsic
def _dpbusd_tile(typingctx, xb, x0, offs, o0, n_blk, taps, n_taps, n_cq, plane, wq, w0, acc, stride):
    """The microkernel with AVX512-VNNI: per (tap, quad) one weight vector, NB broadcasts, NB vpdpbusd."""
    i64 = types.int64
    sig = types.void(xb, i64, offs, i64, i64, taps, i64, i64, i64, wq, i64, acc, i64)

    def codegen(context, builder, signature, args):
        xb_v, x0_v, offs_v, o0_v, nblk_v, taps_v, ntaps_v, ncq_v, plane_v, wq_v, w0_v, acc_v, stride_v = args

        def data(i, v):
            return context.make_array(signature.args[i])(context, builder, v).data

        xp, op, tp, wp, ap = data(0, xb_v), data(2, offs_v), data(5, taps_v), data(9, wq_v), data(11, acc_v)
        vnni = _vpdpbusd(builder)
        zero = ir.Constant(_V16, None)
        c64 = ir.Constant(_I64, 4 * LANES)
        accs = [cgutils.alloca_once(builder, _V16) for _ in range(NB)]  # promoted to registers by LLVM
        wbase = builder.gep(wp, [w0_v])
        with cgutils.for_range(builder, nblk_v) as blk:
            p0 = builder.add(o0_v, builder.mul(blk.index, ir.Constant(_I64, NB)))
            bases = [builder.gep(xp, [builder.add(x0_v, builder.load(builder.gep(
                op, [builder.add(p0, ir.Constant(_I64, j))])))]) for j in range(NB)]
            for a in accs:
                builder.store(zero, a)
            with cgutils.for_range(builder, ntaps_v) as tap:
                toff = builder.load(builder.gep(tp, [tap.index]))
                wt = builder.gep(wbase, [builder.mul(builder.mul(tap.index, ncq_v), c64)])
                with cgutils.for_range(builder, ncq_v) as quad:
                    wv = builder.load(builder.bitcast(builder.gep(wt, [builder.mul(quad.index, c64)]),
                                                      _V16.as_pointer()), align=1)
                    xo = builder.add(toff, builder.mul(quad.index, plane_v))
                    for j in range(NB):
                        a = builder.load(builder.bitcast(builder.gep(bases[j], [xo]), _I32.as_pointer()),
                                         align=1)
                        acc_j = builder.call(vnni, [builder.load(accs[j]), _splat(builder, a), wv])
                        builder.store(acc_j, accs[j])
            rows = _transpose_to_lanes(builder, [builder.load(a) for a in accs])
            v8 = ir.VectorType(_I32, NB)
            col = builder.mul(blk.index, ir.Constant(_I64, NB))
            for o in range(LANES):
                row = builder.shuffle_vector(rows, rows, ir.Constant(v8, list(range(o * NB, o * NB + NB))))
                dst = builder.gep(ap, [builder.add(builder.mul(ir.Constant(_I64, o), stride_v), col)])
                builder.store(row, builder.bitcast(dst, v8.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


# The rows microkernel (depthwise and thin groups): 16 consecutive outputs of one output channel per
# vector, the four bytes of a lane being four consecutive kernel columns.

@intrinsic
def _rows_dpbusd(typingctx, xb, x0, taps, n_taps, wq, w0, row_step, n_rows, ow_n, sw, acc, y, y0, fuse, corr,
                 mult, right, y_zp, lo, hi):
    """Per-channel convolution rows with AVX512-VNNI (the depthwise path), for unit dilation along rows.

    Output row r, columns ow0..ow0+15 (one vector of int32): for every tap group t (an input channel,
    a kernel row and four consecutive kernel columns), lane j multiplies the four input bytes at
    xb[x0 + r*row_step + taps[t] + (ow0 + j)*sw + b] (b < 4: a byte shuffle of one 64-byte load) with
    the four weights wq[w0 + 4t + b]. A last partial vector overlaps the previous one.

    With ``fuse`` (needs ow_n >= 16 and :class:`_VecRequant`'s conditions) the vector is requantized
    and stored to y[y0 + r*ow_n + ow0 + j]; otherwise it goes to acc[r*ow_n + ow0 + j], where rows
    narrower than 16 spill into the next row (computed afterwards) or the caller's 16-element slack.
    sw is 1 or 2. Fusing saves a call and an int32 round trip per channel, which is most of the cost
    of a depthwise layer on small images.
    """
    i64 = types.int64
    sig = types.void(xb, i64, taps, i64, wq, i64, i64, i64, i64, i64, acc, y, i64, i64, i64, i64, i64, i64,
                     i64, i64)

    def codegen(context, builder, signature, args):
        (xb_v, x0, taps_v, n_taps, wq_v, w0, row_step, n_rows, ow_n, sw, acc_v, y_v, y0, fuse, corr, mult,
         right, y_zp, lo, hi) = args

        def data(i, v):
            return context.make_array(signature.args[i])(context, builder, v).data

        xp, tp, wp, ap, yp = data(0, xb_v), data(2, taps_v), data(4, wq_v), data(10, acc_v), data(11, y_v)
        vnni = _vpdpbusd(builder)
        requant = _VecRequant(builder, corr, mult, right, y_zp, lo, hi)
        v64b = ir.VectorType(ir.IntType(8), 64)
        zero = ir.Constant(_V16, None)
        c = lambda v: ir.Constant(_I64, v)  # noqa: E731
        accv = cgutils.alloca_once(builder, _V16)
        n_chunks = builder.udiv(builder.add(ow_n, c(15)), c(16))
        last = builder.sub(ow_n, c(16))
        last = builder.select(builder.icmp_signed("<", last, c(0)), c(0), last)
        wbase = builder.gep(wp, [w0])

        def nest(stride, fused):
            mask = ir.Constant(ir.VectorType(_I32, 64), [j * stride + b for j in range(16) for b in range(4)])
            with cgutils.for_range(builder, n_rows) as row:
                rbase = builder.add(x0, builder.mul(row.index, row_step))
                with cgutils.for_range(builder, n_chunks) as chunk:
                    ow0 = builder.mul(chunk.index, c(16))
                    ow0 = builder.select(builder.icmp_signed(">", ow0, last), last, ow0)
                    cbase = builder.gep(xp, [builder.add(rbase, builder.mul(ow0, c(stride)))])
                    builder.store(zero, accv)
                    with cgutils.for_range(builder, n_taps) as tap:
                        src = builder.gep(cbase, [builder.load(builder.gep(tp, [tap.index]))])
                        raw = builder.load(builder.bitcast(src, v64b.as_pointer()), align=1)
                        quads = builder.shuffle_vector(raw, ir.Constant(v64b, None), mask)
                        wv = builder.load(builder.bitcast(builder.gep(wbase, [builder.mul(tap.index, c(4))]),
                                                          _I32.as_pointer()), align=1)
                        dot = [builder.load(accv), builder.bitcast(quads, _V16), _splat(builder, wv)]
                        builder.store(builder.call(vnni, dot), accv)
                    pos = builder.add(builder.mul(row.index, ow_n), ow0)
                    if fused:
                        out = requant(builder.load(accv))
                        dst = builder.gep(yp, [builder.add(y0, pos)])
                        builder.store(out, builder.bitcast(dst, out.type.as_pointer()), align=1)
                    else:
                        dst = builder.gep(ap, [pos])
                        builder.store(builder.load(accv), builder.bitcast(dst, _V16.as_pointer()), align=4)

        is_unit, is_fused = builder.icmp_signed("==", sw, c(1)), builder.icmp_signed("!=", fuse, c(0))
        with builder.if_else(is_fused) as (fused, plain):
            for branch, flag in ((fused, True), (plain, False)):
                with branch:
                    with builder.if_else(is_unit) as (unit, double):
                        with unit:
                            nest(1, flag)
                        with double:
                            nest(2, flag)
        return context.get_dummy_value()

    return sig, codegen


# --------------------------------------------------------------------------------------------------
# Convolution and fully connected. Both split their work into independent items (tiles of output) so
# one parallel driver can spread any of them over threads. All item functions share one signature:
#   (i0, i1, x, w, bias, xb, ws, offs, taps, mult, shift, lut, y, g, q, pk)
# Geometry g: (C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, group)
# Quantization q: (x_zp, y_zp, act_min, act_max)
# Plan pk: (Hp, Wp, tile) -- padded input size, work-item size (positions or output rows)
# Workspace ws (int8): per-output-channel corrections (int32), then the blocked path's packed weights.

@njit(cache=True)
def _corr_bytes(OC):
    return (OC * 4 + 63) // 64 * 64


@njit(cache=True)
def conv_workspace(kind, C, OC, KH, KW, group):
    """Bytes of workspace a conv of this shape needs on path ``kind`` (see :func:`conv`)."""
    cg, ocg = C // group, OC // group
    if kind == KIND_DIRECT:
        return _corr_bytes(OC)
    if kind == KIND_ROWS:
        return _corr_bytes(OC) + OC * cg * KH * ((KW + 3) // 4) * 4
    return _corr_bytes(OC) + group * ((ocg + LANES - 1) // LANES) * KH * KW * ((cg + 3) // 4) * 4 * LANES


@njit(cache=True)
def _pack_weights(kind, w, bias, ws, x_zp, C, OC, KH, KW, group):
    """Fill the workspace: corr[oc] = bias - (x_zp + 128) * sum(w[oc]) and the weights regrouped for
    the path: per (group, channel block, tap, quad, lane, 4) on the blocked path, per (oc, ci, kh, group
    of four kernel columns) on the VNNI rows path, with zeros past the real sizes."""
    cg, ocg, T = C // group, OC // group, KH * KW
    K = cg * T
    corr = ws[:OC * 4].view(np.int32)
    for oc in range(OC):
        s = np.int64(0)
        for k in range(K):
            s += w[_u(oc * K + k)]
        # int32 wrap-around is fine: the true accumulator fits int32, so modular sums land on it.
        corr[oc] = np.int32(bias[oc] - (x_zp + 128) * s)
    wq = ws[_corr_bytes(OC):]
    i = 0
    if kind == KIND_ROWS:
        for r in range(OC * cg * KH):
            for kw in range((KW + 3) // 4 * 4):
                wq[i] = w[r * KW + kw] if kw < KW else 0
                i += 1
    if kind != KIND_BLOCKED:
        return
    CQ, OCB = (cg + 3) // 4, (ocg + LANES - 1) // LANES
    for gi in range(group):
        for ob in range(OCB):
            for t in range(T):
                for cq in range(CQ):
                    for o in range(LANES):
                        oc = ob * LANES + o
                        for s4 in range(4):
                            ci = cq * 4 + s4
                            ok = oc < ocg and ci < cg
                            wq[i] = w[((gi * ocg + oc) * cg + ci) * T + t] if ok else 0
                            i += 1


@njit(cache=True)
def _padded_size(H, W, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw):
    """Input size with the top/left pads added and enough bottom/right padding for every window."""
    return (max(H + pt, (OH - 1) * sh + (KH - 1) * dh + 1), max(W + pl, (OW - 1) * sw + (KW - 1) * dw + 1))


@njit(cache=True)
def _pack_planes(x, xb, C, H, W, Hp, Wp, pt, pl, pad):
    """Direct path input: xb[c][Hp][Wp] = x + 128, ``pad`` in the border."""
    if Hp != H or Wp != W:
        xb[:] = pad
    for c in range(C):
        for h in range(H):
            s, d = (c * H + h) * W, (c * Hp + h + pt) * Wp + pl
            for i in range(W):
                xb[_u(d + i)] = np.uint8(np.int32(x[_u(s + i)]) + 128)


@njit(cache=True)
def _pack_quads(x, xb, C, H, W, Hp, Wp, pt, pl, pad, group):
    """Blocked path input: xb[g][cq][Hp][Wp][4], channels 4cq..4cq+3 of group g interleaved.

    Channels past the group's end repeat its last channel: their weights are zero, any finite byte works.
    """
    cg = C // group
    CQ = (cg + 3) // 4
    plane = Hp * Wp * 4
    if Hp != H or Wp != W:
        xb[:] = pad
    for gi in range(group):
        for cq in range(CQ):
            c0 = gi * cg + min(cq * 4, cg - 1)
            c1 = gi * cg + min(cq * 4 + 1, cg - 1)
            c2 = gi * cg + min(cq * 4 + 2, cg - 1)
            c3 = gi * cg + min(cq * 4 + 3, cg - 1)
            for h in range(H):
                d = (gi * CQ + cq) * plane + ((h + pt) * Wp + pl) * 4
                s0, s1, s2, s3 = (c0 * H + h) * W, (c1 * H + h) * W, (c2 * H + h) * W, (c3 * H + h) * W
                for i in range(W):
                    xb[_u(d + 4 * i)] = np.uint8(np.int32(x[_u(s0 + i)]) + 128)
                    xb[_u(d + 4 * i + 1)] = np.uint8(np.int32(x[_u(s1 + i)]) + 128)
                    xb[_u(d + 4 * i + 2)] = np.uint8(np.int32(x[_u(s2 + i)]) + 128)
                    xb[_u(d + 4 * i + 3)] = np.uint8(np.int32(x[_u(s3 + i)]) + 128)


@njit(cache=True, inline="always")  # called once per work item; as a call it runs markedly slower
def _store_rows(acc, a0, a_step, y, y0, y_step, rows, n, corr, mult, shift, ch, ch_step, q, lut):
    """Requantize ``rows`` runs of ``n`` accumulators: run r is acc[a0 + r*a_step:][:n] + corr[c], with
    channel c = ch + r*ch_step, stored to y[y0 + r*y_step:][:n].

    One call covers a whole work item: kernels pass offsets rather than slices and batch their rows,
    because each call or slice made per row costs tens of nanoseconds. Rows sharing a channel
    (ch_step 0) are a single vector pass.
    """
    y_zp, lo, hi = q[1], q[2], q[3]
    if ch_step == 0 and a_step == n and y_step == n:  # back-to-back rows of one channel: one long run
        n, rows = n * rows, 1
    span = max(rows, 1) if ch_step == 0 else 1  # rows per pass
    for r0 in range(0, rows, span):
        c = ch + r0 * ch_step
        cr, m, sf = corr[c], mult[c], shift[c]
        ar, yr = a0 + r0 * a_step, y0 + r0 * y_step
        # Bitwise &: with a short-circuit chain here LLVM compiles the vector pass about twice as slow.
        if (n >= 16) & (sf <= 0) & (m != INT32_MIN):
            _requant16(acc, ar, a_step, y, yr, y_step, span, n, cr, m, -sf, y_zp, lo, hi)
        else:
            for r in range(span):
                for j in range(n):
                    v = np.int32(np.int64(acc[_u(ar + r * a_step + j)]) + cr)  # int32 wrap, as acc's
                    y[_u(yr + r * y_step + j)] = _clamp8(mbqm(v, m, sf), y_zp, lo, hi)
    if lut.size:
        for r in range(rows):
            _apply_lut(y, y0 + r * y_step, n, lut)


@njit(cache=True)
def _blocked_items(i0, i1, x, w, bias, xb, ws, offs, taps, mult, shift, lut, y, g, q, pk):
    """Items = (group, tile of output positions, block of LANES output channels), in that nesting so a
    serial run reuses the tile's input across channel blocks; each item requantizes its channels' runs
    of positions straight into y."""
    C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, group = g
    Hp, Wp, tile = pk
    cg, ocg, T, P = C // group, OC // group, KH * KW, OH * OW
    CQ, OCB, plane = (cg + 3) // 4, (ocg + LANES - 1) // LANES, Hp * Wp * 4
    n_tiles = (P + tile - 1) // tile
    corr = ws[:OC * 4].view(np.int32)
    w_base = _corr_bytes(OC)
    acc = np.empty(LANES * tile, np.int32)
    for it in range(i0, i1):
        gi, ob = it // (n_tiles * OCB), it % OCB
        p_lo = (it // OCB) % n_tiles * tile
        n_pos = min(P, p_lo + tile) - p_lo
        n_blk = (n_pos + NB - 1) // NB
        w0 = w_base + (gi * OCB + ob) * T * CQ * 4 * LANES
        _dpbusd_tile(xb, gi * CQ * plane, offs, p_lo, n_blk, taps, T, CQ, plane, ws, w0, acc, tile)
        oc0 = gi * ocg + ob * LANES
        _store_rows(acc, 0, tile, y, oc0 * P + p_lo, P, min(LANES, ocg - ob * LANES), n_pos, corr, mult,
                    shift, oc0, 1, q, lut)


@njit(cache=True)
def _row_taps(acc, a0, a_step, x, b0, b_step, rows, n, stride, dil, w0, w1, w2):
    """For each row r: acc[a0 + r*a_step + j] += sum_k w_k * x[b0 + r*b_step + j*stride + k*dil], j < n,
    over three taps of one kernel row.

    Three taps per pass load and store each accumulator once per three multiply-adds; strides 1 and 2
    get their own loops so that LLVM vectorizes both.
    """
    for r in range(rows):
        a, c0 = a0 + r * a_step, b0 + r * b_step
        c1, c2 = c0 + dil, c0 + 2 * dil
        if stride == 1:
            for j in range(n):
                acc[_u(a + j)] += (w0 * np.int32(x[_u(c0 + j)]) + w1 * np.int32(x[_u(c1 + j)])
                                   + w2 * np.int32(x[_u(c2 + j)]))
        elif stride == 2:
            for j in range(n):
                acc[_u(a + j)] += (w0 * np.int32(x[_u(c0 + 2 * j)]) + w1 * np.int32(x[_u(c1 + 2 * j)])
                                   + w2 * np.int32(x[_u(c2 + 2 * j)]))
        else:
            for j in range(n):
                acc[_u(a + j)] += (w0 * np.int32(x[_u(c0 + j * stride)]) + w1 * np.int32(x[_u(c1 + j * stride)])
                                   + w2 * np.int32(x[_u(c2 + j * stride)]))


@njit(cache=True)
def _direct_items(i0, i1, x, w, bias, xb, ws, offs, taps, mult, shift, lut, y, g, q, pk):
    """Items = (output channel, band of output rows), computed tap by tap over whole rows: the path
    of every conv on CPUs without VNNI.

    The input is pre-padded (xb[c][Hp][Wp]), so every tap is valid and the inner loop is a plain
    vectorizable row update (_row_taps). With unit strides the accumulator rows are
    Wp long, so a band of rows is one contiguous run per tap (the columns past OW are computed and
    dropped), which saves a call per row on narrow images.
    """
    C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, group = g
    Hp, Wp, rows = pk
    cg, ocg = C // group, OC // group
    n_tiles = (OH + rows - 1) // rows
    flat = sh == 1 and sw == 1
    aw = Wp if flat else OW  # accumulator row length
    corr = ws[:OC * 4].view(np.int32)
    acc = np.empty(rows * aw + LANES, np.int32)
    for it in range(i0, i1):
        oc = it // n_tiles
        r0 = (it % n_tiles) * rows
        r1 = min(OH, r0 + rows)
        c0 = (oc // ocg) * cg
        acc[:] = 0
        for ci in range(cg):
            for kh in range(KH):
                wr = ((oc * cg + ci) * KH + kh) * KW
                for kw in range(0, KW, 3):  # taps in threes; a missing third (or second) tap has weight 0
                    w0 = np.int32(w[wr + kw])
                    w1 = np.int32(w[wr + kw + 1]) if kw + 1 < KW else np.int32(0)
                    w2 = np.int32(w[wr + kw + 2]) if kw + 2 < KW else np.int32(0)
                    b0 = ((c0 + ci) * Hp + r0 * sh + kh * dh) * Wp + kw * dw
                    if flat:
                        _row_taps(acc, 0, 0, xb, b0, 0, 1, (r1 - r0) * aw, 1, dw, w0, w1, w2)
                    else:
                        _row_taps(acc, 0, aw, xb, b0, sh * Wp, r1 - r0, OW, sw, dw, w0, w1, w2)
        _store_rows(acc, 0, aw, y, oc * OH * OW + r0 * OW, OW, r1 - r0, OW, corr, mult, shift, oc, 0, q, lut)


@njit(cache=True)
def _rows_items(i0, i1, x, w, bias, xb, ws, offs, taps, mult, shift, lut, y, g, q, pk):
    """The direct path's items on the VNNI rows microkernel (unit or double stride along rows, no
    dilation along rows): ``taps`` holds the input offset of each (channel, kernel row, column quad)."""
    C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, group = g
    Hp, Wp, rows = pk
    cg, ocg = C // group, OC // group
    n_tiles = (OH + rows - 1) // rows
    corr = ws[:OC * 4].view(np.int32)
    acc = np.empty(rows * OW + LANES, np.int32)
    w_base, n_t = _corr_bytes(OC), taps.size
    for it in range(i0, i1):
        oc = it // n_tiles
        r0 = (it % n_tiles) * rows
        r1 = min(OH, r0 + rows)
        c0 = (oc // ocg) * cg
        m, sf = mult[oc], shift[oc]
        fuse = (OW >= 16) & (sf <= 0) & (m != INT32_MIN) & (lut.size == 0)
        y0 = oc * OH * OW + r0 * OW
        _rows_dpbusd(xb, (c0 * Hp + r0 * sh) * Wp, taps, n_t, ws, w_base + oc * n_t * 4, sh * Wp, r1 - r0,
                     OW, sw, acc, y, y0, np.int64(fuse), corr[oc], m, -sf, q[1], q[2], q[3])
        if not fuse:
            _store_rows(acc, 0, OW, y, y0, OW, r1 - r0, OW, corr, mult, shift, oc, 0, q, lut)


@njit(cache=True)
def _fc_items(i0, i1, x, w, bias, xb, ws, offs, taps, mult, shift, lut, y, g, q, pk):
    """Output features i0..i1 as int32 dot products against (x - x_zp) widened once to int16."""
    K = g[0]
    x_zp, y_zp, lo, hi = q
    xs = np.empty(K, np.int16)
    for k in range(K):
        xs[k] = x[k] - x_zp
    for o in range(i0, i1):
        acc = np.int32(0)
        for k in range(K):
            acc = np.int32(acc + np.int32(w[_u(o * K + k)]) * np.int32(xs[_u(k)]))
        y[o] = _finish(mbqm(np.int32(acc + bias[o]), mult[o], shift[o]), y_zp, lo, hi, lut)


@njit(cache=True, inline="always")  # saves a call level (array arguments cost reference counting)
def _items(kind, i0, i1, x, w, bias, xb, ws, offs, taps, mult, shift, lut, y, g, q, pk):
    """Run work items i0..i1 of one heavy kernel."""
    if kind == KIND_DIRECT:
        _direct_items(i0, i1, x, w, bias, xb, ws, offs, taps, mult, shift, lut, y, g, q, pk)
    elif kind == KIND_ROWS:
        if HAVE_VNNI:  # a constant: elsewhere the VNNI kernels are never compiled (no such instruction)
            _rows_items(i0, i1, x, w, bias, xb, ws, offs, taps, mult, shift, lut, y, g, q, pk)
    elif kind == KIND_FC:
        _fc_items(i0, i1, x, w, bias, xb, ws, offs, taps, mult, shift, lut, y, g, q, pk)
    elif HAVE_VNNI:
        _blocked_items(i0, i1, x, w, bias, xb, ws, offs, taps, mult, shift, lut, y, g, q, pk)


@njit(cache=True, parallel=True)
def _items_parallel(kind, n_items, n_chunks, x, w, bias, xb, ws, offs, taps, mult, shift, lut, y, g, q, pk):
    """The same work split into n_chunks contiguous ranges, one per thread (each keeps its scratch)."""
    for t in prange(n_chunks):
        _items(kind, t * n_items // n_chunks, (t + 1) * n_items // n_chunks,
               x, w, bias, xb, ws, offs, taps, mult, shift, lut, y, g, q, pk)


@njit(cache=True, inline="always")
def _run_items(kind, n_items, macs, x, w, bias, xb, ws, offs, taps, mult, shift, lut, y, g, q, pk, threads):
    """Serial for small layers (a parallel region costs more than they do), else one chunk per thread.

    ``threads`` comes from the caller: numba.get_num_threads() inside jitted code defeats caching.
    """
    if threads > 1 and n_items > 1 and macs >= PAR_MIN_MACS:
        _items_parallel(kind, n_items, min(threads, n_items), x, w, bias, xb, ws, offs, taps, mult, shift, lut,
                        y, g, q, pk)
    else:
        _items(kind, np.int64(0), n_items, x, w, bias, xb, ws, offs, taps, mult, shift, lut, y, g, q, pk)


@njit(cache=True)
def conv_kind(C, OC, OH, OW, KH, KW, sw, dw, group):
    """The path a conv of this shape takes and its work-item size (positions or rows).

    With VNNI both the blocked and the rows microkernels apply; each is costed in dot-product
    instructions (the rows kernel wastes lanes on narrow rows and kernel widths not a multiple of
    four, the blocked one on channel counts not a multiple of 16 and 4) and the cheaper wins, with a
    margin for the blocked path's separate requantization pass. Without VNNI every conv takes the
    direct path (its vectorized row updates beat a plain-loop version of the blocked kernel).
    """
    cg, ocg = C // group, OC // group
    rows = max(1, min(OH, TILE_ELEMS // (OW + KW)))
    rows_ok = HAVE_VNNI and (sw == 1 or sw == 2) and dw == 1
    if HAVE_VNNI and ocg >= BLOCKED_MIN_OCG:
        blocked = group * ((ocg + LANES - 1) // LANES) * OH * OW * KH * KW * ((cg + 3) // 4)
        by_rows = OC * OH * ((OW + 15) // 16) * cg * KH * ((KW + 3) // 4)
        if not rows_ok or 4 * by_rows > 5 * blocked:
            return KIND_BLOCKED, TILE_POS
    return (KIND_ROWS if rows_ok else KIND_DIRECT), rows


@njit(cache=True)
def conv_with(kind, tile, x, w, bias, mult, shift, lut, y, C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl,
              dh, dw, group, x_zp, y_zp, act_min, act_max, ws, ws_ready, threads):
    """:func:`conv` on an explicit path and work-item size (tile: positions, a multiple of NB, on the
    blocked path; output rows on the direct and rows paths). Tests use it to reach every path."""
    g = (C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, group)
    q = (x_zp, y_zp, act_min, act_max)
    fresh = ws.size == 0
    if fresh:
        ws = np.empty(conv_workspace(kind, C, OC, KH, KW, group), np.int8)
    if fresh or not ws_ready:
        _pack_weights(kind, w, bias, ws, x_zp, C, OC, KH, KW, group)
    Hp, Wp = _padded_size(H, W, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw)
    pad = np.uint8(x_zp + 128)
    cg = C // group
    P = OH * OW
    if kind == KIND_DIRECT or kind == KIND_ROWS:
        # Slack: absent third taps, the dropped columns of the last row and 64-byte loads read past the
        # end (weight 0 or never stored).
        xb = np.empty(C * Hp * Wp + Wp + 3 * KW * dw + 64, np.uint8)
        _pack_planes(x, xb, C, H, W, Hp, Wp, pt, pl, pad)
        offs = np.empty(0, np.int64)
        # VNNI rows path: input offset of each (channel, kernel row, group of four columns).
        n_g = (KW + 3) // 4
        taps = np.empty(cg * KH * n_g if kind == KIND_ROWS else 0, np.int64)
        for t in range(taps.size):
            taps[t] = (t // (KH * n_g)) * Hp * Wp + (t // n_g) % KH * dh * Wp + t % n_g * 4
        n_items = OC * ((OH + tile - 1) // tile)
    else:
        n_other = group * ((OC // group + LANES - 1) // LANES)
        if threads > 1 and n_other < threads and OC * P * cg * KH * KW >= PAR_MIN_MACS:
            # Too few channel blocks to go round: split the positions instead.
            per = (P + threads - 1) // threads
            tile = max(NB, min(tile, (per + NB - 1) // NB * NB))
        xb = np.empty(group * ((cg + 3) // 4) * Hp * Wp * 4, np.uint8)
        _pack_quads(x, xb, C, H, W, Hp, Wp, pt, pl, pad, group)
        offs = np.zeros((P + NB - 1) // NB * NB, np.int64)  # the tail repeats position 0, never stored
        for oh in range(OH):
            for ow in range(OW):
                offs[oh * OW + ow] = (oh * sh * Wp + ow * sw) * 4
        taps = np.empty(KH * KW, np.int64)
        for t in range(KH * KW):
            taps[t] = ((t // KW) * dh * Wp + (t % KW) * dw) * 4
        n_items = group * ((P + tile - 1) // tile) * ((OC // group + LANES - 1) // LANES)
    macs = OC * P * cg * KH * KW
    pk = (Hp, Wp, tile)
    _run_items(kind, n_items, macs, x, w, bias, xb, ws, offs, taps, mult, shift, lut, y, g, q, pk, threads)


@njit(cache=True)
def conv(x, w, bias, mult, shift, lut, y, C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, group,
         x_zp, y_zp, act_min, act_max, ws, ws_ready, threads):
    """QConv on one sample: x int8[C*H*W] -> y int8[OC*OH*OW], weights int8[OC, C/group, KH, KW].

    bias/mult/shift are int32[OC]; ``lut`` is an int8[256] table or an empty array. Pads are the top
    and left pads (the bottom/right ones are implied by OH/OW). ``ws`` is this layer's workspace
    (``conv_workspace`` bytes of the path :func:`conv_kind` picks, 64-byte aligned) or an empty array;
    ``ws_ready`` says it already holds the packed weights from an earlier call. ``threads``: how many
    threads the layer may use.
    """
    kind, tile = conv_kind(C, OC, OH, OW, KH, KW, sw, dw, group)
    conv_with(kind, tile, x, w, bias, mult, shift, lut, y, C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl,
              dh, dw, group, x_zp, y_zp, act_min, act_max, ws, ws_ready, threads)


@njit(cache=True)
def conv_rows(x, w, bias, mult, shift, lut, y, C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, group,
              x_zp, y_zp, lo, hi):
    """QConv with int16 on either side (16x8 layers; x and y int8 or int16 arrays; a fused table only
    with an int8 y): one output row at a time, int64 accumulators, the row's valid output range per tap."""
    cg, ocg = C // group, OC // group
    acc = np.zeros(OW, np.int64)
    for oc in range(OC):
        g = oc // ocg
        for oh in range(OH):
            acc[:] = 0
            for c in range(cg):
                for kh in range(KH):
                    ih = oh * sh - pt + kh * dh
                    if ih < 0 or ih >= H:
                        continue
                    row = ((g * cg + c) * H + ih) * W
                    for kw in range(KW):
                        off = kw * dw - pl
                        wv = np.int64(w[((oc * cg + c) * KH + kh) * KW + kw])
                        o0 = max(0, (sw - 1 - off) // sw)
                        o1 = min(OW, (W - off + sw - 1) // sw)
                        for o in range(o0, o1):
                            acc[o] += wv * (np.int64(x[_u(row + o * sw + off)]) - x_zp)
            y0 = (oc * OH + oh) * OW
            for o in range(OW):
                v = mbqm(acc[o] + bias[oc], mult[oc], shift[oc]) + y_zp
                y[_u(y0 + o)] = min(max(v, lo), hi)
            _apply_lut(y, y0, OW, lut)


@njit(cache=True)
def fully_connected(x, w, bias, mult, shift, lut, y, K, OC, x_zp, y_zp, act_min, act_max, threads):
    """QFullyConnected on one sample: x int8[K] -> y int8[OC], weights int8[OC, K]."""
    # Non-literal ints, so this shares the compiled item drivers with conv (literals would specialize them).
    one, zero = np.int64(1), np.int64(0)
    g = (K, one, one, OC, one, one, one, one, one, one, zero, zero, one, one, one)
    none8, none64 = np.empty(0, np.uint8), np.empty(0, np.int64)
    _run_items(np.int64(KIND_FC), OC, OC * K, x, w, bias, none8, w[:0], none64, none64, mult, shift, lut, y, g,
               (x_zp, y_zp, act_min, act_max), (one, one, one), threads)


@njit(cache=True)
def fully_connected_single(x, w, bias, mult, shift, lut, y, K, OC, x_zp, y_zp, act_min, act_max):
    """QFullyConnected with TFLite's single rounding (fixedpoint.multiply_by_quantized_multiplier_single)
    on one sample. A plain loop: only TFLite imports use it, and their FC layers are small."""
    for o in range(OC):
        acc = np.int64(bias[o])
        row = o * K
        for k in range(K):
            acc += (np.int64(x[_u(k)]) - x_zp) * np.int64(w[_u(row + k)])
        total = 31 - min(max(np.int64(shift[o]), -31), 30)
        v = (min(max(acc, INT32_MIN), INT32_MAX) * np.int64(mult[o]) + (np.int64(1) << (total - 1))) >> total
        y[_u(o)] = min(max(v + y_zp, act_min), act_max)
    _apply_lut(y, 0, OC, lut)


# --------------------------------------------------------------------------------------------------
# Elementwise ops

@njit(cache=True)
def _term(op, v, zp, mult, shift):
    """One operand's contribution: QAdd lifts (v - zp) by 2^20 and rescales it, QMul keeps v - zp."""
    d = np.int64(v) - zp
    return mbqm(d << ADD_LEFT_SHIFT, mult, shift) if op == BIN_ADD else d


@njit(cache=True)
def _combine(op, ta, tb, p, y_zp, lo, hi):
    """Both terms into the output: QAdd sums them (int64; mbqm saturates as the reference's int64
    path does), QMul multiplies them; then requantize and clamp."""
    return _clamp8(mbqm(ta + tb if op == BIN_ADD else ta * tb, p[6], p[7]), y_zp, lo, hi)


@njit(cache=True)
def _merge_rows(dims, a_str, b_str):
    """``dims`` with inner dimensions folded into the row length while both operands walk them as one
    run (same shape, or both broadcast), so small tensors are not handled row by row."""
    d0, d1, d2, n = dims
    sa, sb = a_str[3], b_str[3]
    if a_str[2] == sa * n and b_str[2] == sb * n:
        n, d2 = n * d2, 1
        if a_str[1] == sa * n and b_str[1] == sb * n:
            n, d1 = n * d1, 1
            if a_str[0] == sa * n and b_str[0] == sb * n:
                n, d0 = n * d0, 1
    return d0, d1, d2, n


PAIR_TABLE_MIN = 1 << 17  # output elements from which QAdd/QMul read a table of every int8 pair


@njit(cache=True)
def _pair_table(op, p, y_zp, lo, hi, lut):
    """The output byte of every int8 pair: t[(a + 128) * 256 + b + 128], fused table included. Built
    with the same scalar steps as the direct loop, so a lookup gives its bytes exactly."""
    tb = np.empty(256, np.int64)
    for vb in range(256):
        tb[vb] = _term(op, vb - 128, p[1], p[4], p[5])
    t = np.empty(65536, np.int8)
    for va in range(256):
        ta = _term(op, va - 128, p[0], p[2], p[3])
        for vb in range(256):
            t[va * 256 + vb] = _combine(op, ta, tb[vb], p, y_zp, lo, hi)
    _apply_lut(t, 0, 65536, lut)
    return t


@njit(cache=True)
def _broadcast(op, a, b, lut, y, dims, a_str, b_str, p, y_zp, lo, hi):
    """Shared 4-D broadcast loop of QAdd and QMul; ``p`` = (a_zp, b_zp, a_mult, a_shift, b_mult,
    b_shift, y_mult, y_shift) (QMul ignores the per-input rescales).

    ``op`` is a literal, so each op gets its own compiled loops without a per-element branch. Along
    the innermost dimension an operand with stride 0 (broadcast) is scaled once per row, and the row
    loop then runs on the other operand alone; LLVM vectorizes the unit-stride cases.
    """
    a_zp, b_zp, a_mult, a_shift, b_mult, b_shift = p[0], p[1], p[2], p[3], p[4], p[5]
    d0, d1, d2, n = _merge_rows(dims, a_str, b_str)
    # Large outputs read every byte from a table of all (a, b) pairs (fused table included): building it
    # costs 65536 direct steps, a lookup several times less than one.
    pairs = _pair_table(op, p, y_zp, lo, hi, lut) if d0 * d1 * d2 * n >= PAIR_TABLE_MIN else lut[:0]
    sa, sb = a_str[3], b_str[3]
    i = 0
    for i0 in range(d0):
        for i1 in range(d1):
            for i2 in range(d2):
                ab = i0 * a_str[0] + i1 * a_str[1] + i2 * a_str[2]
                bb = i0 * b_str[0] + i1 * b_str[1] + i2 * b_str[2]
                if pairs.size:
                    for j in range(n):
                        y[_u(i + j)] = pairs[(np.int64(a[_u(ab + j * sa)]) + 128) * 256 +
                                             np.int64(b[_u(bb + j * sb)]) + 128]
                elif sb == 0:
                    tb = _term(op, b[bb], b_zp, b_mult, b_shift)
                    for j in range(n):
                        y[_u(i + j)] = _combine(op, _term(op, a[_u(ab + j * sa)], a_zp, a_mult, a_shift), tb, p,
                                                y_zp, lo, hi)
                elif sa == 0:
                    ta = _term(op, a[ab], a_zp, a_mult, a_shift)
                    for j in range(n):
                        y[_u(i + j)] = _combine(op, ta, _term(op, b[_u(bb + j * sb)], b_zp, b_mult, b_shift), p,
                                                y_zp, lo, hi)
                else:
                    for j in range(n):
                        y[_u(i + j)] = _combine(op, _term(op, a[_u(ab + j * sa)], a_zp, a_mult, a_shift),
                                                _term(op, b[_u(bb + j * sb)], b_zp, b_mult, b_shift), p,
                                                y_zp, lo, hi)
                i += n
    if not pairs.size:
        _apply_lut(y, 0, d0 * d1 * d2 * n, lut)


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
    zero = np.int64(0)
    _broadcast(BIN_MUL, a, b, lut, y, dims, a_strides, b_strides,
               (a_zp, b_zp, zero, zero, zero, zero, y_mult, y_shift), y_zp, act_min, act_max)


@njit(cache=True)
def lut(x, table, y, count):
    """QLut of an int8 x: y[i] = table[x[i] + 128] (table and y both int8 or both int16)."""
    for i in range(count):
        y[_u(i)] = table[_u(np.int64(x[_u(i)]) + 128)]


@njit(cache=True)
def lut_interp(x, table, y, count, lo, hi):
    """QLut of an int16 x: interpolation between 513 int16 samples (reference.lut), clamped to [lo, hi]."""
    for i in range(count):
        u = np.int64(x[_u(i)]) + 32768
        k = u >> 7
        t0 = np.int64(table[_u(k)])
        v = t0 + (((np.int64(table[_u(k + 1)]) - t0) * (u & 127) + 64) >> 7)
        y[_u(i)] = min(max(v, lo), hi)


@njit(cache=True)
def requantize(x, y, count, x_zp, y_zp, mult, shift, lo, hi):
    """QRequantize between int8 and int16 tensors: y = clip(mbqm(x - x_zp) + y_zp, lo, hi)."""
    for i in range(count):
        y[_u(i)] = min(max(mbqm(np.int64(x[_u(i)]) - x_zp, mult, shift) + y_zp, lo), hi)


# --------------------------------------------------------------------------------------------------
# Pooling

@njit(cache=True)
def _pool(op, x, y, C, H, W, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, count_include_pad, x_zp, y_zp, lo, hi):
    """Shared window walk of max and average pooling: only taps inside the input are visited.

    Valid tap ranges are precomputed (per kernel row for each output row, per output column for the
    kernel columns), so there is no bounds test per tap. Rows of at least 16 outputs loop over taps
    outside and the row inside (vectorizes); narrower rows walk each window; global pooling is one
    contiguous reduction per channel. Sums are int64 (no overflow for any window size).
    """
    if OH == 1 and OW == 1 and KH == H and KW == W and pt == 0 and pl == 0 and dh == 1 and dw == 1:
        n = H * W
        for c in range(C):
            base = c * n
            if op == POOL_MAX:
                m = np.int64(-129)  # below every int8: an empty max window clamps to act_min
                for i in range(n):
                    m = max(m, np.int64(x[_u(base + i)]))
                y[c] = min(max(m, lo), hi)
            else:
                t = np.int64(0)
                for i in range(n):
                    t += x[_u(base + i)]
                y[c] = np.int8(min(max(rounded_div(t - x_zp * n, n) + y_zp, lo), hi))
        return
    ohlo, ohhi = _valid_range(OH, H, KH, sh, pt, dh)
    owlo, owhi = _valid_range(OW, W, KW, sw, pl, dw)
    kwlo, kwhi = np.zeros(OW, np.int64), np.zeros(OW, np.int64)  # valid kernel columns per output column
    for ow in range(OW):
        s0 = ow * sw - pl  # input column of kernel column 0
        kwlo[ow], kwhi[ow] = max(0, -(s0 // dw)), max(0, min(KW, (W - 1 - s0) // dw + 1))
    acc = np.empty(OW, np.int64)
    start = -129 if op == POOL_MAX else 0
    wide = OW >= 16
    for c in range(C):
        for oh in range(OH):
            acc[:] = start
            n_rows = 0
            for kh in range(KH):
                if oh < ohlo[kh] or oh >= ohhi[kh]:
                    continue
                n_rows += 1
                xr = (c * H + oh * sh - pt + kh * dh) * W - pl
                if wide:
                    for kw in range(KW):
                        a, base = owlo[kw], xr + kw * dw + owlo[kw] * sw
                        n = owhi[kw] - a
                        # Unit and double strides get literal-stride loops, which vectorize.
                        if op == POOL_MAX and sw == 1:
                            for j in range(n):
                                acc[_u(a + j)] = max(acc[_u(a + j)], np.int64(x[_u(base + j)]))
                        elif op == POOL_MAX and sw == 2:
                            for j in range(n):
                                acc[_u(a + j)] = max(acc[_u(a + j)], np.int64(x[_u(base + 2 * j)]))
                        elif op == POOL_MAX:
                            for j in range(n):
                                acc[_u(a + j)] = max(acc[_u(a + j)], np.int64(x[_u(base + j * sw)]))
                        else:
                            for j in range(n):
                                acc[_u(a + j)] += x[_u(base + j * sw)]
                else:
                    for ow in range(OW):
                        base = xr + ow * sw
                        m = acc[ow]
                        for kw in range(kwlo[ow], kwhi[ow]):
                            v = np.int64(x[_u(base + kw * dw)])
                            m = max(m, v) if op == POOL_MAX else m + v
                        acc[ow] = m
            y0 = (c * OH + oh) * OW
            for ow in range(OW):
                if op == POOL_MAX:
                    y[y0 + ow] = min(max(acc[ow], lo), hi)
                else:
                    n = n_rows * (kwhi[ow] - kwlo[ow])
                    count = KH * KW if count_include_pad else n
                    y[y0 + ow] = np.int8(min(max(rounded_div(acc[ow] - x_zp * n, count) + y_zp, lo), hi))


@njit(cache=True)
def max_pool(x, y, C, H, W, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, act_min, act_max):
    """QMaxPool on one sample (CHW); padded taps never win."""
    zero = np.int64(0)
    _pool(np.int64(POOL_MAX), x, y, C, H, W, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, zero, zero, zero,
          act_min, act_max)


@njit(cache=True)
def avg_pool(x, y, C, H, W, OH, OW, KH, KW, sh, sw, pt, pl, count_include_pad, x_zp, y_zp, act_min, act_max):
    """QAvgPool on one sample (CHW) with TFLite rounding; count_include_pad divides by KH*KW."""
    one = np.int64(1)
    _pool(np.int64(POOL_AVG), x, y, C, H, W, OH, OW, KH, KW, sh, sw, pt, pl, one, one, count_include_pad, x_zp,
          y_zp, act_min, act_max)


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
    t = np.empty(256, np.int8)  # the rescaled byte of every input byte
    for v in range(256):
        t[v] = _clamp8(mbqm(np.int64(v - 128) - x_zp, mult, shift), y_zp, -128, 127)
    for o in range(outer):
        xo, yo = o * inner, o * y_inner + y_pos
        for i in range(inner):
            y[_u(yo + i)] = t[np.int64(x[_u(xo + i)]) + 128]


@njit(cache=True)
def move(arena, src, dst, count):
    """QReshape: memmove count bytes within the arena (a no-op when the planner aliased them)."""
    if src == dst:
        return
    if abs(dst - src) >= count:  # disjoint: one vectorized copy
        arena[dst:dst + count] = arena[src:src + count]
    elif dst < src:
        for i in range(count):
            arena[dst + i] = arena[src + i]
    else:
        for i in range(count - 1, -1, -1):
            arena[dst + i] = arena[src + i]


@njit(cache=True)
def copy_window(arena, x, canvas, y, C, H, W, OH, OW, sy, sx, dy, dx, h, w):
    """QCopyWindow within the arena: y = canvas (or zeros), then the h x w window of x at (sy, sx) -> (dy, dx)."""
    plane = OH * OW
    if canvas < 0:
        arena[y:y + C * plane] = 0
    else:
        move(arena, canvas, y, C * plane)
    for c in range(C):
        for r in range(h):
            src = x + c * H * W + (sy + r) * W + sx
            move(arena, src, y + c * plane + (dy + r) * OW + dx, w)


# --------------------------------------------------------------------------------------------------
# Layout, attention and upsampling ops (reference.strided_copy, matmul, conv_transpose, resize,
# layer_norm). Plain loops: the shapes of these ops in mobile models are small next to the convolutions.

@njit(cache=True)
def strided_copy(x, y, offset, dims, strides):
    """QStridedCopy: y (contiguous, 6-D ``dims``) gathers x[offset + sum i_k * strides[k]]."""
    o = 0
    for i0 in range(dims[0]):
        b0 = offset + i0 * strides[0]
        for i1 in range(dims[1]):
            b1 = b0 + i1 * strides[1]
            for i2 in range(dims[2]):
                b2 = b1 + i2 * strides[2]
                for i3 in range(dims[3]):
                    b3 = b2 + i3 * strides[3]
                    for i4 in range(dims[4]):
                        b4 = b3 + i4 * strides[4]
                        for i5 in range(dims[5]):
                            y[o] = x[b4 + i5 * strides[5]]
                            o += 1


@njit(cache=True)
def matmul(a, b, bias, mult, shift, lut, y, batch, M, K, N, b_bs, b_sk, b_sn, a_zp, b_zp, y_zp, lo, hi):
    """QMatMul: y[t, m, n] = requant(sum_k (a[t, m, k] - a_zp) * (b[t*b_bs + k*b_sk + n*b_sn] - b_zp) + bias[n]).

    Products fit int32 (|term| <= 255 * 255, K <= 33000 checked by the validator); the bias is added in int64.
    """
    acc = np.empty(N, np.int32)
    for t in range(batch):
        for m in range(M):
            arow = (t * M + m) * K
            acc[:] = 0
            if b_sk == 1:  # weights [N, K]: one contiguous dot product per column
                for n in range(N):
                    bn = t * b_bs + n * b_sn
                    s = np.int32(0)
                    for k in range(K):
                        s += (np.int32(a[arow + k]) - np.int32(a_zp)) * (np.int32(b[bn + k]) - np.int32(b_zp))
                    acc[n] = s
            else:
                for k in range(K):
                    av = np.int32(a[arow + k]) - np.int32(a_zp)
                    bk = t * b_bs + k * b_sk
                    for n in range(N):
                        acc[n] += av * (np.int32(b[bk + n * b_sn]) - np.int32(b_zp))
            yrow = (t * M + m) * N
            for n in range(N):
                y[yrow + n] = _finish(mbqm(np.int64(acc[n]) + bias[n], mult[n], shift[n]), y_zp, lo, hi, lut)


@njit(cache=True)
def conv_transpose(x, w, bias, mult, shift, lut, y, C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw,
                   group, x_zp, y_zp, lo, hi):
    """QConvTranspose as a gather: output (oy, ox) takes tap (ky, kx) from input ((oy + pt - ky*dh) / sh, ...)
    when that division is exact and lands inside the input."""
    cg, ocg = C // group, OC // group
    for oc in range(OC):
        g = oc // ocg
        for oy in range(OH):
            for ox in range(OW):
                acc = np.int32(0)
                for ic in range(cg):
                    c = g * cg + ic
                    for ky in range(KH):
                        ty = oy + pt - ky * dh
                        if ty < 0 or ty % sh != 0 or ty // sh >= H:
                            continue
                        for kx in range(KW):
                            tx = ox + pl - kx * dw
                            if tx < 0 or tx % sw != 0 or tx // sw >= W:
                                continue
                            xv = np.int32(x[(c * H + ty // sh) * W + tx // sw]) - np.int32(x_zp)
                            acc += xv * np.int32(w[((oc * cg + ic) * KH + ky) * KW + kx])
                y[(oc * OH + oy) * OW + ox] = _finish(mbqm(np.int64(acc) + bias[oc], mult[oc], shift[oc]),
                                                      y_zp, lo, hi, lut)


@njit(cache=True)
def _tap(table, r, size):
    """Row r of a resize table (i0, i1, w1), clamped into the input as reference._resize_taps does."""
    i0 = min(max(np.int64(table[3 * r]), 0), size - 1)
    i1 = min(max(np.int64(table[3 * r + 1]), 0), size - 1)
    w1 = min(max(np.int64(table[3 * r + 2]), 0), 2048)
    return i0, i1, w1


@njit(cache=True)
def resize(x, ytab, xtab, y, C, H, W, OH, OW, zp):
    """QResize: separable two-tap interpolation, weights of 2048, rounded at 2^22. Where both weights
    are 0 (nearest) the formula gives x[y0, x0] itself, which is then copied."""
    xs0, xs1, wxs = np.empty(OW, np.int64), np.empty(OW, np.int64), np.empty(OW, np.int64)
    for ox in range(OW):
        xs0[ox], xs1[ox], wxs[ox] = _tap(xtab, ox, W)
    nearest_x = not np.any(wxs)
    for c in range(C):
        for oy in range(OH):
            y0, y1, wy = _tap(ytab, oy, H)
            r0, r1, o = (c * H + y0) * W, (c * H + y1) * W, (c * OH + oy) * OW
            if wy == 0 and nearest_x:
                for ox in range(OW):
                    y[o + ox] = x[r0 + xs0[ox]]
                continue
            for ox in range(OW):
                x0, x1, wx = xs0[ox], xs1[ox], wxs[ox]
                top = (np.int64(x[r0 + x0]) - zp) * (2048 - wx) + (np.int64(x[r0 + x1]) - zp) * wx
                bot = (np.int64(x[r1 + x0]) - zp) * (2048 - wx) + (np.int64(x[r1 + x1]) - zp) * wx
                v = rdbpot(top * (2048 - wy) + bot * wy, 22) + zp
                y[o + ox] = min(max(v, -128), 127)


@njit(cache=True)
def isqrt(v):
    """floor(sqrt(v)) for v >= 0, digit by digit (reference.isqrt)."""
    root = np.int64(0)
    bit = np.int64(1) << 62
    while bit != 0:
        trial = root + bit
        if v >= trial:
            v -= trial
            root = (root >> 1) + bit
        else:
            root >>= 1
        bit >>= 2
    return root


@njit(cache=True)
def layer_norm(x, gamma, beta, y, rows, cols, x_zp, y_zp, eps, lo, hi):
    """QLayerNorm over rows of ``cols`` values (reference.layer_norm), int64 throughout."""
    for r in range(rows):
        base = r * cols
        total = np.int64(0)
        for i in range(cols):
            total += np.int64(x[base + i]) - x_zp
        ss = np.int64(0)
        for i in range(cols):
            c = cols * (np.int64(x[base + i]) - x_zp) - total
            ss += c * c
        std = max(isqrt(ss // cols + eps), 1)
        for i in range(cols):
            c = cols * (np.int64(x[base + i]) - x_zp) - total
            norm = rounded_div(c << 12, std)
            v = rdbpot(norm * np.int64(gamma[i]) + np.int64(beta[i]), 24) + y_zp
            y[base + i] = min(max(v, lo), hi)
