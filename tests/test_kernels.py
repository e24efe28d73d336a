"""Every compiled backend against the reference kernels, op by op, over random shapes and values."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from util import assert_bit_exact, make_graph

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def i8(rng: np.random.Generator, shape) -> np.ndarray:
    """Random int8 with the extremes over-represented."""
    x = rng.integers(-128, 128, size=shape, dtype=np.int64)
    edge = rng.random(size=shape) < 0.1
    return np.where(edge, rng.choice([-128, 127], size=shape), x).astype(np.int8)


def requant(rng: np.random.Generator, n: int, lo: int = -14, hi: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel multipliers in [2^30, 2^31) and shifts in [lo, hi]."""
    mult = rng.integers(1 << 30, (1 << 31) - 1, size=n, endpoint=True).astype(np.int32)
    return mult, rng.integers(lo, hi, size=n, endpoint=True).astype(np.int32)


def conv_consts(rng: np.random.Generator, oc: int, cg: int, kh: int, kw: int) -> tuple[dict, list]:
    """Random weights (never -128), bias, requantization and maybe a fused table for a (transposed) conv."""
    mult, shift = requant(rng, oc)
    consts = {"w": np.clip(i8(rng, (oc, cg, kh, kw)), -127, 127).astype(np.int8),
              "b": rng.integers(-(1 << 16), 1 << 16, size=oc).astype(np.int32), "m": mult, "s": shift}
    order = ["x", "w", "b", "m", "s"]
    maybe_lut(rng, consts, order)
    return consts, order


def act_range(rng: np.random.Generator) -> tuple[int, int]:
    """No clamp, a fused ReLU-like clamp, or a narrow range."""
    lo = int(rng.choice([-128, int(rng.integers(-128, 0)), 0]))
    return lo, int(rng.integers(max(lo, -1), 128))


def maybe_lut(rng: np.random.Generator, consts: dict, order: list) -> None:
    if rng.random() < 0.3:
        consts["lut"] = i8(rng, 256)
        order.append("lut")


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), depthwise=st.booleans(), pointwise=st.booleans(), wide=st.booleans())
def test_conv(backend, seed, depthwise, pointwise, wide):
    """``wide`` planes (rows of 16-70 pixels, many channels) reach the SIMD tile paths of the C kernels."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3))
    group = int(rng.integers(1, 4))
    cg = 1 if depthwise else int(rng.integers(1, 5))
    ocg = int(rng.integers(1, 3)) if depthwise else int(rng.integers(1, 5))
    kh, kw = (1, 1) if pointwise else tuple(int(v) for v in rng.integers(1, 9 if rng.random() < 0.3 else 5, size=2))
    dil = [1, 1] if pointwise else [int(v) for v in rng.integers(1, 3, size=2)]
    strides = [int(v) for v in rng.integers(1, 4, size=2)]
    pads = [0, 0, 0, 0] if pointwise else [int(v) for v in rng.integers(0, 3, size=4)]
    min_h = max(1, dil[0] * (kh - 1) + 1 - pads[0] - pads[2])
    min_w = max(1, dil[1] * (kw - 1) + 1 - pads[1] - pads[3])
    h = int(rng.integers(min_h, max(24 if wide else 12, min_h + 1)))
    w = int(rng.integers(min_w, max(70 if wide else 12, min_w + 1)))
    if wide and not depthwise:
        cg, ocg = int(rng.integers(1, 40)), int(rng.integers(1, 20))
    oc = group * ocg
    x = i8(rng, (n, group * cg, h, w))
    consts, order = conv_consts(rng, oc, cg, kh, kw)
    lo, hi = act_range(rng)
    attrs = dict(strides=strides, pads=pads, dilations=dil, group=group, x_zp=int(rng.integers(-128, 128)),
                 y_zp=int(rng.integers(-128, 128)), act_min=lo, act_max=hi)
    assert_bit_exact(*make_graph("QConv", {"x": x}, consts, order, attrs), backend)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), threads=st.sampled_from([1, 2]))
def test_conv_band(backend, seed, threads):
    """Stride-1 convolutions with many input channels and 2+ taps (the C kernels' padded-band path): odd
    channel and output-channel counts, dilations, asymmetric padding, fused clamps and tables, and maps
    tall enough to take several bands, on 1 and 2 threads."""
    rng = np.random.default_rng(seed)
    c, oc = int(rng.integers(16, 100)), int(rng.integers(1, 14))
    kh, kw = (int(v) for v in rng.integers(1, 6, size=2))
    if kh * kw == 1:
        kw = 3
    dil = [int(v) for v in rng.integers(1, 3, size=2)]
    pads = [int(v) for v in rng.integers(0, 3, size=4)]
    h = int(rng.integers(max(1, dil[0] * (kh - 1) + 1 - pads[0] - pads[2]), 48))
    w = int(rng.integers(max(1, dil[1] * (kw - 1) + 1 - pads[1] - pads[3]), 90))
    x = i8(rng, (int(rng.integers(1, 3)), c, h, w))
    consts, order = conv_consts(rng, oc, c, kh, kw)
    lo, hi = act_range(rng)
    attrs = dict(strides=[1, 1], pads=pads, dilations=dil, group=1, x_zp=int(rng.integers(-128, 128)),
                 y_zp=int(rng.integers(-128, 128)), act_min=lo, act_max=hi)
    assert_bit_exact(*make_graph("QConv", {"x": x}, consts, order, attrs), backend, threads)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_fully_connected(backend, seed):
    rng = np.random.default_rng(seed)
    n, k, oc = int(rng.integers(1, 4)), int(rng.integers(1, 80)), int(rng.integers(1, 20))
    mult, shift = requant(rng, oc)
    consts = {"w": np.clip(i8(rng, (oc, k)), -127, 127).astype(np.int8),
              "b": rng.integers(-(1 << 16), 1 << 16, size=oc).astype(np.int32), "m": mult, "s": shift}
    order = ["x", "w", "b", "m", "s"]
    maybe_lut(rng, consts, order)
    lo, hi = act_range(rng)
    attrs = dict(x_zp=int(rng.integers(-128, 128)), y_zp=int(rng.integers(-128, 128)), act_min=lo, act_max=hi,
                 single_rounding=bool(rng.random() < 0.5))
    if attrs["single_rounding"] and rng.random() < 0.2:  # shifts outside TFLite's [-31, 30] are clamped
        consts["s"] = rng.choice([-60, -32, -31, 30, 31, 45], size=oc).astype(np.int32)
    assert_bit_exact(*make_graph("QFullyConnected", {"x": i8(rng, (n, k))}, consts, order, attrs), backend)


def _broadcast_shapes(rng: np.random.Generator) -> tuple[tuple, tuple, bool]:
    """Output per-sample shape and one operand's shape that broadcasts to it (maybe a constant)."""
    rank = int(rng.integers(1, 5))
    out = tuple(int(v) for v in rng.integers(1, 6, size=rank))
    other = tuple(d if rng.random() < 0.5 else 1 for d in out)
    as_const = bool(rng.random() < 0.5)
    if as_const and rng.random() < 0.5:
        other = other[int(rng.integers(0, rank)):]  # constants may have a lower rank
    return out, other, as_const


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), op=st.sampled_from(["QAdd", "QMul"]), swap=st.booleans(),
       large=st.booleans())
def test_add_mul(backend, seed, op, swap, large):
    """``large`` tensors (> 2^17 elements) reach the Numba pair-table path."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3))
    out, other, as_const = _broadcast_shapes(rng)
    if large:
        f = -(-150_000 // int(np.prod(out)))
        if len(other) == len(out) and other[0] == out[0]:
            other = (other[0] * f,) + other[1:]
        out = (out[0] * f,) + out[1:]
    acts = {"a": i8(rng, (n,) + out)}
    consts: dict = {}
    if as_const:
        consts["b"] = i8(rng, other if len(other) < len(out) else (1,) + other)
    else:
        acts["b"] = i8(rng, (n,) + other)
    order = ["b", "a"] if swap else ["a", "b"]
    if rng.random() < 0.3:
        consts["lut"] = i8(rng, 256)
        order.append("lut")
    lo, hi = act_range(rng)
    zp = [int(v) for v in rng.integers(-128, 128, size=3)]
    attrs = dict(a_zp=zp[0], b_zp=zp[1], y_zp=zp[2], act_min=lo, act_max=hi)
    if op == "QAdd":
        (am, bm, ym), (ash, bsh, ysh) = requant(rng, 3, -12, 0)
        attrs.update(a_mult=int(am), a_shift=int(ash), b_mult=int(bm), b_shift=int(bsh), y_mult=int(ym),
                     y_shift=int(ysh) - 8)
    else:
        (ym,), (ysh,) = requant(rng, 1, -16, 2)
        attrs.update(y_mult=int(ym), y_shift=int(ysh))
    assert_bit_exact(*make_graph(op, acts, consts, order, attrs), backend)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), op=st.sampled_from(["QMaxPool", "QAvgPool"]), fast=st.booleans())
def test_pools(backend, seed, op, fast):
    """``fast``: the common 2x2/stride-2 and global-average windows the C kernels special-case."""
    rng = np.random.default_rng(seed)
    kernel = [int(v) for v in rng.integers(1, 5, size=2)]
    strides = [int(v) for v in rng.integers(1, 4, size=2)]
    pads = [int(rng.integers(0, kernel[i % 2])) for i in range(4)]  # ONNX: pad smaller than the window
    dil = [int(v) for v in rng.integers(1, 3, size=2)] if op == "QMaxPool" else [1, 1]
    h = int(rng.integers(max(1, dil[0] * (kernel[0] - 1) + 1 - pads[0] - pads[2]), 12))
    w = int(rng.integers(max(1, dil[1] * (kernel[1] - 1) + 1 - pads[1] - pads[3]), 12))
    if fast:
        h, w = (int(v) for v in rng.integers(1, 20, size=2))
        kernel, strides, pads, dil = ([h, w], [1, 1], [0] * 4, [1, 1]) if op == "QAvgPool" else \
            ([2, 2], [2, 2], [0] * 4, [1, 1])
        h, w = max(h, kernel[0]), max(w, kernel[1])
    x = i8(rng, (int(rng.integers(1, 3)), int(rng.integers(1, 40 if fast else 6)), h, w))
    lo, hi = act_range(rng)
    attrs = dict(kernel=kernel, strides=strides, pads=pads, act_min=lo, act_max=hi)
    if op == "QMaxPool":
        attrs["dilations"] = dil
    else:
        zp = int(rng.integers(-128, 128))
        attrs.update(count_include_pad=bool(rng.random() < 0.5), x_zp=zp, y_zp=zp)
    assert_bit_exact(*make_graph(op, {"x": x}, {}, ["x"], attrs), backend)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_lut(backend, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 7, size=int(rng.integers(2, 5))))
    graph = make_graph("QLut", {"x": i8(rng, shape)}, {"t": i8(rng, 256)}, ["x", "t"], {})
    assert_bit_exact(*graph, backend)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_softmax(backend, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 40, size=int(rng.integers(2, 4))))
    scale = float(rng.uniform(0.005, 0.5))
    table = np.round(np.exp(-np.arange(256) * scale) * (1 << 20)).astype(np.int32)
    assert_bit_exact(*make_graph("QSoftmax", {"x": i8(rng, shape)}, {"t": table}, ["x", "t"], {}), backend)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_concat(backend, seed):
    rng = np.random.default_rng(seed)
    n, axis, k = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
    base = [int(v) for v in rng.integers(1, 6, size=3)]
    acts = {}
    for i in range(k):
        shape = list(base)
        shape[axis - 1] = int(rng.integers(1, 5))
        acts[f"x{i}"] = i8(rng, (n, *shape))
    mult, shift = requant(rng, k, -3, 1)
    identity = rng.random(size=k) < 0.3  # inputs already at the output scale: mult 2^30, shift 1
    attrs = dict(axis=axis, x_zps=[int(v) for v in rng.integers(-128, 128, size=k)],
                 mults=[1 << 30 if e else int(m) for e, m in zip(identity, mult)],
                 shifts=[1 if e else int(s) for e, s in zip(identity, shift)], y_zp=int(rng.integers(-128, 128)))
    assert_bit_exact(*make_graph("QConcat", acts, {}, list(acts), attrs), backend)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_reshape(backend, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 6, size=3))
    x = i8(rng, (int(rng.integers(1, 3)),) + shape)
    graph = make_graph("QReshape", {"x": x}, {}, ["x"], {"shape": [1, int(np.prod(shape))]})
    assert_bit_exact(*graph, backend)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), canvas=st.booleans())
def test_copy_window(backend, seed, canvas):
    rng = np.random.default_rng(seed)
    c, h, w = (int(v) for v in rng.integers(1, 9, size=3))
    n = int(rng.integers(1, 3))
    x = i8(rng, (n, c, h, w))
    wh, ww = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
    oh, ow = int(rng.integers(wh, wh + 6)), int(rng.integers(ww, ww + 6))
    attrs = {"src": [int(rng.integers(0, h - wh + 1)), int(rng.integers(0, w - ww + 1))],
             "dst": [int(rng.integers(0, oh - wh + 1)), int(rng.integers(0, ow - ww + 1))],
             "size": [wh, ww], "out": [oh, ow]}
    acts = {"x": x, "canvas": i8(rng, (n, c, oh, ow))} if canvas else {"x": x}
    assert_bit_exact(*make_graph("QCopyWindow", acts, {}, list(acts), attrs), backend)


def _transpose_or_slice(rng: np.random.Generator, shape: tuple) -> dict:
    """QStridedCopy attributes of a random permutation of ``shape`` followed by a random slice."""
    rank = len(shape)
    strides = [int(np.prod(shape[k + 1:])) for k in range(rank)]
    perm = [int(p) for p in rng.permutation(rank)]
    out, st_, offset = [], [], 0
    for p in perm:
        d, s = shape[p], strides[p]
        step = int(rng.choice([1, 1, 2, -1]))
        if step > 0:
            start = int(rng.integers(0, d))
            count = len(range(start, d, step))
        else:
            start = int(rng.integers(0, d))
            count = start + 1
        count = int(rng.integers(1, count + 1))
        offset += start * s
        out.append(count)
        st_.append(step * s)
    return {"shape": out, "strides": st_, "offset": offset}


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_strided_copy(backend, seed):
    rng = np.random.default_rng(seed)
    shape = [int(v) for v in rng.integers(1, 6, size=int(rng.integers(1, 7)))]
    if rng.random() < 0.5:  # one long axis: the C kernel copies contiguous rows whole
        shape[int(rng.integers(0, len(shape)))] = int(rng.integers(16, 150))
    attrs = _transpose_or_slice(rng, tuple(shape))
    if rng.random() < 0.25:  # a 2x pixel shuffle, (C, 2, 2, H, W) -> (C, H, 2, W, 2): interleaved rows
        c, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(1, 150))
        shape = [c, 2, 2, h, w]
        attrs = {"shape": [c, h, 2, w, 2], "strides": [4 * h * w, w, 2 * h * w, 1, h * w], "offset": 0}
    x = i8(rng, (int(rng.integers(1, 3)),) + tuple(shape))
    assert_bit_exact(*make_graph("QStridedCopy", {"x": x}, {}, ["x"], attrs), backend)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), weights=st.booleans())
def test_matmul(backend, seed, weights):
    """Constant weights [N, K] (a Linear layer on a sequence) or two activations (attention)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3))
    lead = tuple(int(v) for v in rng.integers(1, 4, size=int(rng.integers(0, 3))))
    m, k, cols = (int(v) for v in rng.integers(1, 40, size=3))
    acts = {"a": i8(rng, (n,) + lead + (m, k))}
    mult, shift = requant(rng, cols, -18, 0)
    consts = {"bias": rng.integers(-(1 << 16), 1 << 16, size=cols).astype(np.int32), "m": mult, "s": shift}
    if weights:
        consts["b"] = np.clip(i8(rng, (cols, k)), -127, 127).astype(np.int8)
    else:
        acts["b"] = i8(rng, (n,) + lead + (k, cols))
    order = ["a", "b", "bias", "m", "s"]
    maybe_lut(rng, consts, order)
    lo, hi = act_range(rng)
    attrs = dict(b_nk=int(weights), a_zp=int(rng.integers(-128, 128)),
                 b_zp=0 if weights else int(rng.integers(-128, 128)), y_zp=int(rng.integers(-128, 128)),
                 act_min=lo, act_max=hi)
    assert_bit_exact(*make_graph("QMatMul", acts, consts, order, attrs), backend)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_conv_transpose(backend, seed):
    rng = np.random.default_rng(seed)
    group = int(rng.integers(1, 3))
    cg, ocg = (int(v) for v in rng.integers(1, 5, size=2))
    kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
    strides = [int(v) for v in rng.integers(1, 4, size=2)]
    dil = [int(v) for v in rng.integers(1, 3, size=2)]
    h, w = (int(v) for v in rng.integers(1, 9, size=2))
    pads = [int(rng.integers(0, kh)), int(rng.integers(0, kw))]
    full = [(h - 1) * strides[0] + dil[0] * (kh - 1) + 1, (w - 1) * strides[1] + dil[1] * (kw - 1) + 1]
    extra = [int(rng.integers(0, s)) for s in strides]  # ONNX output_padding
    out = [max(1, f - 2 * p + e) for f, p, e in zip(full, pads, extra)]
    oc = group * ocg
    consts, order = conv_consts(rng, oc, cg, kh, kw)
    lo, hi = act_range(rng)
    attrs = dict(strides=strides, pads=pads + pads, dilations=dil, group=group, out=out,
                 x_zp=int(rng.integers(-128, 128)), y_zp=int(rng.integers(-128, 128)), act_min=lo, act_max=hi)
    x = i8(rng, (int(rng.integers(1, 3)), group * cg, h, w))
    assert_bit_exact(*make_graph("QConvTranspose", {"x": x}, consts, order, attrs), backend)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(["nearest", "linear"]),
       coord=st.sampled_from(["asymmetric", "half_pixel", "align_corners"]))
def test_resize(backend, seed, mode, coord):
    from edgeq.converters.resize_tables import resize_table
    rng = np.random.default_rng(seed)
    c, h, w = (int(v) for v in rng.integers(1, 7, size=3))
    oh, ow = int(rng.integers(1, 3 * h + 1)), int(rng.integers(1, 3 * w + 1))
    tabs = {"yt": resize_table(h, oh, mode, coord, "floor"), "xt": resize_table(w, ow, mode, coord, "round_prefer_floor")}
    if rng.random() < 0.2:  # hostile tables: the kernels clamp indices and weights like the reference
        tabs["yt"] = rng.integers(-5, 3000, size=(oh, 3)).astype(np.int32)
    x = i8(rng, (int(rng.integers(1, 3)), c, h, w))
    graph = make_graph("QResize", {"x": x}, tabs, ["x", "yt", "xt"], {"zp": int(rng.integers(-128, 128))})
    assert_bit_exact(*graph, backend)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1))
def test_layer_norm(backend, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 6, size=int(rng.integers(0, 3)))) + (int(rng.integers(1, 200)),)
    cols = shape[-1]
    x = i8(rng, (int(rng.integers(1, 3)),) + shape)
    if rng.random() < 0.2:
        x[...] = x.reshape(-1)[0]  # constant rows: zero variance
    consts = {"g": rng.integers(-(1 << 20), 1 << 20, size=cols).astype(np.int32),
              "b": rng.integers(-(1 << 31), (1 << 31) - 1, size=cols).astype(np.int32)}
    lo, hi = act_range(rng)
    attrs = dict(x_zp=int(rng.integers(-128, 128)), y_zp=int(rng.integers(-128, 128)),
                 eps=int(rng.choice([0, 1, int(rng.integers(0, 1 << 30))])), act_min=lo, act_max=hi)
    assert_bit_exact(*make_graph("QLayerNorm", {"x": x}, consts, ["x", "g", "b"], attrs), backend)


def i16(rng: np.random.Generator, shape, scale: int = 32768) -> np.ndarray:
    """Random int16 (16x8 activations) with the extremes over-represented; ``scale`` narrows the values."""
    x = rng.integers(-scale, scale, size=shape, dtype=np.int64)
    edge = rng.random(size=shape) < 0.1
    return np.where(edge, rng.choice([-32768, 32767], size=shape), x).astype(np.int16)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), x_bits=st.sampled_from([8, 16]), y_bits=st.sampled_from([8, 16]),
       depthwise=st.booleans(), pointwise=st.booleans())
def test_conv_int16(backend, seed, x_bits, y_bits, depthwise, pointwise):
    """16x8 convolutions (int16 input and/or output, int8 weights); long patches reach the int64 path."""
    rng = np.random.default_rng(seed)
    n, group = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    cg = 1 if depthwise else int(rng.integers(1, 5)) * int(rng.choice([1, 1, 80]))
    ocg = int(rng.integers(1, 4))
    kh, kw = (1, 1) if pointwise else tuple(int(v) for v in rng.integers(1, 4, size=2))
    dil = [1, 1] if pointwise else [int(v) for v in rng.integers(1, 3, size=2)]
    strides = [int(v) for v in rng.integers(1, 3, size=2)]
    pads = [0, 0, 0, 0] if pointwise else [int(v) for v in rng.integers(0, 3, size=4)]
    h = int(rng.integers(max(1, dil[0] * (kh - 1) + 1 - pads[0] - pads[2]), 10))
    w = int(rng.integers(max(1, dil[1] * (kw - 1) + 1 - pads[1] - pads[3]), 300 if pointwise else 20))
    oc = group * ocg
    x = i16(rng, (n, group * cg, h, w)) if x_bits == 16 else i8(rng, (n, group * cg, h, w))
    consts, order = conv_consts(rng, oc, cg, kh, kw)
    consts.pop("lut", None)
    order = order[:5]
    if y_bits == 8 and rng.random() < 0.5:  # a fused table only behind an int8 output
        consts["lut"] = i8(rng, 256)
        order.append("lut")
    if y_bits == 16:
        consts["s"] = (consts["s"] + 8).astype(np.int32)
    if x_bits == 16:
        consts["s"] = (consts["s"] - 8).astype(np.int32)
    lo, hi = (-32768, int(rng.choice([32767, int(rng.integers(0, 32767))]))) if y_bits == 16 else act_range(rng)
    attrs = dict(strides=strides, pads=pads, dilations=dil, group=group,
                 x_zp=0 if x_bits == 16 else int(rng.integers(-128, 128)), y_zp=0 if y_bits == 16 else
                 int(rng.integers(-128, 128)), act_min=lo, act_max=hi, x_bits=x_bits, y_bits=y_bits)
    assert_bit_exact(*make_graph("QConv", {"x": x}, consts, order, attrs), backend)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), x_bits=st.sampled_from([8, 16]), y_bits=st.sampled_from([8, 16]))
def test_lut_int16(backend, seed, x_bits, y_bits):
    """Tables into or out of int16: direct int16 entries for int8 x, 513 interpolated samples for int16 x."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 300)))
    x = i16(rng, shape) if x_bits == 16 else i8(rng, shape)
    size = 513 if x_bits == 16 else 256
    table = i16(rng, size) if y_bits == 16 or x_bits == 16 else i8(rng, size)
    if x_bits == 16 and y_bits == 8:  # samples near the int8 range, some beyond it (clamped)
        table = rng.integers(-200, 200, size=size).astype(np.int16)
    assert_bit_exact(*make_graph("QLut", {"x": x}, {"t": table}, ["x", "t"], dict(x_bits=x_bits, y_bits=y_bits)),
                     backend)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), x_bits=st.sampled_from([8, 16]), y_bits=st.sampled_from([8, 16]))
def test_requantize(backend, seed, x_bits, y_bits):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 300)))
    x = i16(rng, shape) if x_bits == 16 else i8(rng, shape)
    mult, shift = requant(rng, 1, -20, 10)
    attrs = dict(x_bits=x_bits, y_bits=y_bits, x_zp=0 if x_bits == 16 else int(rng.integers(-128, 128)),
                 y_zp=0 if y_bits == 16 else int(rng.integers(-128, 128)), mult=int(mult[0]), shift=int(shift[0]))
    assert_bit_exact(*make_graph("QRequantize", {"x": x}, {}, ["x"], attrs), backend)


def test_c_backend_shared_by_threads():
    """Two executors on the one C library in two threads (as --calib-method auto scores its candidates):
    each gets its own program's outputs, never the other's cached buffers."""
    from concurrent.futures import ThreadPoolExecutor
    from edgeq.runtimes.executor import Executor
    rng = np.random.default_rng(7)
    cases = []
    for oc in (3, 5):
        x = i8(rng, (1, 4, 6, 7))
        consts, order = conv_consts(rng, oc, 4, 3, 3)
        attrs = dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1, x_zp=3, y_zp=-2, act_min=-128,
                     act_max=127)
        graph, inputs = make_graph("QConv", {"x": x}, consts, order, attrs)
        cases.append((Executor(graph, "c"), inputs, Executor(graph, "reference").run_quantized(inputs)))

    def hammer(case) -> bool:
        ex, inputs, want = case
        return all(all(np.array_equal(ex.run_quantized(inputs)[k], want[k]) for k in want) for _ in range(300))

    with ThreadPoolExecutor(2) as pool:
        assert all(pool.map(hammer, cases))
