"""The C kernels under AddressSanitizer and UBSan: random single-op programs must run clean and exact.

The kernels are built with ``-fsanitize=address,undefined`` (``c_backend.build_sanitized``) and run in a
subprocess started with ``LD_PRELOAD`` of the compiler's libasan: an extension module cannot bring the
ASan runtime in by itself. Every case runs with its activations packed back to back in an arena of
exactly the right size and its constants packed back to back in an exactly sized pool (no alignment
padding beyond what int32 needs), rotating which tensor comes first and last, so a read or write past
either end of any operand lands in a redzone and aborts the run. A second build with tiny scratch
budgets forces the column-tiled, weight-chunked and scalar fallback paths.

Run one build by hand: ``python tests/test_c_sanitize.py <build dir> default|tiny`` under the same
environment as :func:`_child_env`.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from edgeq.errors import BackendError
from edgeq.ir import Graph
from edgeq.runtimes import c_backend
from edgeq.runtimes.executor import Executor
from edgeq.runtimes.planner import MemoryPlan, plan_memory
from edgeq.runtimes.program import compile_program
from edgeq.runtimes.reference import conv_out_size
from util import make_graph

BUDGETS = {
    "default": (),
    "native": ("-march=native",),  # the host's SIMD paths (AVX-512 / VNNI here)
    "tiny": ("-DEDGEQ_SCRATCH_BYTES=512", "-DEDGEQ_TILE_BYTES=256", "-DEDGEQ_PATCH_BYTES=256",
             "-DEDGEQ_WEIGHT_BYTES=2048", "-DEDGEQ_BAND_BYTES=8192"),
}
SANITIZER_REPORTS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer", "SUMMARY: ")


# ---- random single-op graphs ---------------------------------------------------------------------

def _i8(rng: np.random.Generator, shape) -> np.ndarray:
    x = rng.integers(-128, 128, size=shape).astype(np.int8)
    x.reshape(-1)[rng.random(x.size) < 0.1] = rng.choice(np.array([-128, 127], dtype=np.int8))
    return x


def _requant(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    mult = rng.integers(1 << 30, (1 << 31) - 1, size=n, endpoint=True)
    mult[rng.random(n) < 0.2] = (1 << 31) - 1
    shift = rng.integers(-20, 3, size=n)
    shift[rng.random(n) < 0.1] = rng.choice([-40, -31, 31, 40])  # the generic (non-vector) requant path
    return mult.astype(np.int32), shift.astype(np.int32)


def _conv(rng: np.random.Generator, c: int, h: int, w: int, ocg: int, group: int, k: tuple, strides, dil, pads):
    n = 2
    oc = ocg * group
    mult, shift = _requant(rng, oc)
    consts = {"w": _i8(rng, (oc, c // group, *k)), "b": rng.integers(-(1 << 20), 1 << 20, size=oc).astype(np.int32),
              "m": mult, "s": shift}
    order = ["x", "w", "b", "m", "s"]
    if rng.random() < 0.5:
        consts["lut"] = _i8(rng, 256)
        order.append("lut")
    attrs = dict(strides=list(strides), pads=list(pads), dilations=list(dil), group=group,
                 x_zp=int(rng.choice([-128, 127, int(rng.integers(-128, 128))])), y_zp=int(rng.integers(-128, 128)),
                 act_min=-128, act_max=int(rng.choice([127, 60])))
    return make_graph("QConv", {"x": _i8(rng, (n, c, h, w))}, consts, order, attrs)


def _random_conv(rng: np.random.Generator):
    while True:
        group = int(rng.choice([1, 1, 2, 3]))
        depthwise = rng.random() < 0.3
        cg = 1 if depthwise else int(rng.choice([1, 3, 8, 20]))
        c = cg * (int(rng.integers(2, 6)) if depthwise else group)
        group = c if depthwise else group
        ocg = int(rng.integers(1, 3)) if depthwise else int(rng.integers(1, 10))
        k = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        strides = [int(v) for v in rng.integers(1, 4, size=2)]
        dil = [int(v) for v in rng.integers(1, 3, size=2)]
        pads = [int(v) for v in rng.integers(0, 3, size=4)]
        h, w = int(rng.integers(1, 14)), int(rng.integers(1, 14))
        if min(conv_out_size(h, k[0], strides[0], pads[0], pads[2], dil[0]),
               conv_out_size(w, k[1], strides[1], pads[1], pads[3], dil[1])) >= 1:
            return _conv(rng, c, h, w, ocg, group, k, strides, dil, pads)


def _fc(rng: np.random.Generator):
    k, oc = int(rng.choice([1, 7, 64, 65, 300])), int(rng.integers(1, 20))
    mult, shift = _requant(rng, oc)
    consts = {"w": _i8(rng, (oc, k)), "b": rng.integers(-(1 << 20), 1 << 20, size=oc).astype(np.int32),
              "m": mult, "s": shift}
    attrs = dict(x_zp=int(rng.integers(-128, 128)), y_zp=int(rng.integers(-128, 128)), act_min=-128, act_max=127,
                 single_rounding=bool(rng.random() < 0.5))
    if attrs["single_rounding"]:  # TFLite's rounding; hostile shifts are clamped, never shifted past 62 bits
        consts["s"][0] = int(rng.choice([-90, 31, 90]))
    return make_graph("QFullyConnected", {"x": _i8(rng, (3, k))}, consts, ["x", "w", "b", "m", "s"], attrs)


def _binary(rng: np.random.Generator, op: str):
    out = tuple(int(v) for v in rng.integers(1, 6, size=int(rng.integers(1, 5))))
    other = tuple(d if rng.random() < 0.5 else 1 for d in out)
    acts, consts = {"a": _i8(rng, (2,) + out)}, {}
    if rng.random() < 0.5:
        consts["b"] = _i8(rng, other[int(rng.integers(0, len(other))):])  # lower-rank constant
    else:
        acts["b"] = _i8(rng, (2,) + other)
    zp = [int(v) for v in rng.integers(-128, 128, size=3)]
    attrs = dict(a_zp=zp[0], b_zp=zp[1], y_zp=zp[2], act_min=-128, act_max=127)
    mult, shift = _requant(rng, 3)
    if op == "QAdd":
        attrs.update(a_mult=int(mult[0]), a_shift=int(shift[0]), b_mult=int(mult[1]), b_shift=int(shift[1]),
                     y_mult=int(mult[2]), y_shift=int(shift[2]))
    else:
        attrs.update(y_mult=int(mult[2]), y_shift=int(shift[2]))
    order = ["a", "b"] if rng.random() < 0.5 else ["b", "a"]
    return make_graph(op, acts, consts, order, attrs)


def _pool(rng: np.random.Generator, op: str, wide: bool = False):
    while True:
        kernel = [int(v) for v in rng.integers(1, 5, size=2)]
        strides = [int(v) for v in rng.integers(1, 4, size=2)]
        dil = [int(v) for v in rng.integers(1, 3, size=2)] if op == "QMaxPool" else [1, 1]
        pads = [int(rng.integers(0, kernel[i % 2])) for i in range(4)]
        c, h, w = int(rng.integers(1, 5)), int(rng.integers(1, 12)), (300 if wide else int(rng.integers(1, 12)))
        if rng.random() < 0.2:  # global pooling: windows wider than the output row
            kernel, strides, dil, pads = [h, w], [1, 1], [1, 1], [0, 0, 0, 0]
        if min(conv_out_size(h, kernel[0], strides[0], pads[0], pads[2], dil[0]),
               conv_out_size(w, kernel[1], strides[1], pads[1], pads[3], dil[1])) >= 1:
            break
    attrs = dict(kernel=kernel, strides=strides, pads=pads, act_min=-128, act_max=127)
    if op == "QMaxPool":
        attrs["dilations"] = dil
    else:
        attrs.update(count_include_pad=bool(rng.random() < 0.5), x_zp=int(rng.integers(-128, 128)),
                     y_zp=int(rng.integers(-128, 128)))
    return make_graph(op, {"x": _i8(rng, (2, c, h, w))}, {}, ["x"], attrs)


def _softmax(rng: np.random.Generator):
    table = np.round(np.exp(-np.arange(256) * rng.uniform(0.01, 0.5)) * (1 << 20)).astype(np.int32)
    shape = (2,) + tuple(int(v) for v in rng.integers(1, 20, size=2))
    return make_graph("QSoftmax", {"x": _i8(rng, shape)}, {"t": table}, ["x", "t"], {})


def _concat(rng: np.random.Generator):
    axis, k = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    base = [int(v) for v in rng.integers(1, 6, size=3)]
    acts = {}
    for i in range(k):
        shape = list(base)
        shape[axis - 1] = int(rng.integers(1, 5))
        acts[f"x{i}"] = _i8(rng, (2, *shape))
    mult, shift = _requant(rng, k)
    attrs = dict(axis=axis, x_zps=[int(v) for v in rng.integers(-128, 128, size=k)], mults=[int(m) for m in mult],
                 shifts=[int(s) for s in shift], y_zp=int(rng.integers(-128, 128)))
    return make_graph("QConcat", acts, {}, list(acts), attrs)


def _lut(rng: np.random.Generator):
    return make_graph("QLut", {"x": _i8(rng, (2, 3, 5))}, {"t": _i8(rng, 256)}, ["x", "t"], {})


def _reshape(rng: np.random.Generator):
    return make_graph("QReshape", {"x": _i8(rng, (2, 3, 4))}, {}, ["x"], {"shape": [1, 12]})


def _copy_window(rng: np.random.Generator, canvas: bool):
    c, h, w, oh, ow = 3, 5, 7, 6, 4
    acts = {"x": _i8(rng, (2, c, h, w))}
    if canvas:
        acts["canvas"] = _i8(rng, (2, c, oh, ow))
    attrs = {"src": [1, 3], "dst": [2, 0], "size": [4, 4], "out": [oh, ow]}
    return make_graph("QCopyWindow", acts, {}, list(acts), attrs)


def _strided(rng: np.random.Generator, perm: tuple, step: int):
    """A transpose of a [2, 3, 4, 5] sample with a slice (step ``step``, maybe negative) on its last axis."""
    shape = (2, 3, 4, 5)
    strides = [60, 20, 5, 1]
    out = [shape[p] for p in perm]
    st_ = [strides[p] for p in perm]
    offset = 0
    if step < 0:
        offset += (out[-1] - 1) * st_[-1]
    out[-1] = len(range(0, out[-1], abs(step)))
    st_[-1] *= step
    attrs = {"shape": out, "strides": st_, "offset": offset}
    return make_graph("QStridedCopy", {"x": _i8(rng, (2,) + shape)}, {}, ["x"], attrs)


def _matmul(rng: np.random.Generator, weights: bool):
    m, k, n = int(rng.integers(1, 9)), int(rng.choice([1, 15, 64, 120])), int(rng.integers(1, 40))
    mult, shift = _requant(rng, n)
    consts = {"bias": rng.integers(-(1 << 20), 1 << 20, size=n).astype(np.int32), "m": mult, "s": shift}
    acts = {"a": _i8(rng, (2, 3, m, k))}
    if weights:
        consts["b"] = _i8(rng, (n, k))
    else:
        acts["b"] = _i8(rng, (2, 3, k, n))
    attrs = dict(b_nk=int(weights), a_zp=int(rng.integers(-128, 128)),
                 b_zp=0 if weights else int(rng.integers(-128, 128)), y_zp=int(rng.integers(-128, 128)),
                 act_min=-128, act_max=127)
    return make_graph("QMatMul", acts, consts, ["a", "b", "bias", "m", "s"], attrs)


def _conv_transpose(rng: np.random.Generator, k: int, stride: int, pad: int):
    c, oc, h, w = 3, 4, 5, 6
    full = [(h - 1) * stride + k, (w - 1) * stride + k]
    mult, shift = _requant(rng, oc)
    consts = {"w": _i8(rng, (oc, c, k, k)), "b": rng.integers(-(1 << 20), 1 << 20, size=oc).astype(np.int32),
              "m": mult, "s": shift}
    attrs = dict(strides=[stride, stride], pads=[pad] * 4, dilations=[1, 1], group=1,
                 out=[f - 2 * pad for f in full], x_zp=int(rng.integers(-128, 128)), y_zp=int(rng.integers(-128, 128)),
                 act_min=-128, act_max=127)
    return make_graph("QConvTranspose", {"x": _i8(rng, (2, c, h, w))}, consts, ["x", "w", "b", "m", "s"], attrs)


def _resize(rng: np.random.Generator, hostile: bool):
    c, h, w, oh, ow = 3, 4, 5, 8, 11
    tabs = {"yt": np.stack([np.arange(oh) // 2, np.minimum(np.arange(oh) // 2 + 1, h - 1), (np.arange(oh) % 2) * 1024],
                           axis=1).astype(np.int32),
            "xt": np.stack([np.arange(ow) * w // ow] * 2 + [np.zeros(ow, np.int64)], axis=1).astype(np.int32)}
    if hostile:  # out-of-range indices and weights are clamped, never read outside the input
        tabs["yt"] = rng.integers(-100, 5000, size=(oh, 3)).astype(np.int32)
    return make_graph("QResize", {"x": _i8(rng, (2, c, h, w))}, tabs, ["x", "yt", "xt"],
                      {"zp": int(rng.integers(-128, 128))})


def _shuffle(rng: np.random.Generator, w: int):
    """The 2x pixel shuffle of a lowered ConvTranspose: (C, 2, 2, H, W) -> (C, H, 2, W, 2)."""
    c, h = 3, 2
    attrs = {"shape": [c, h, 2, w, 2], "strides": [4 * h * w, w, 2 * h * w, 1, h * w], "offset": 0}
    return make_graph("QStridedCopy", {"x": _i8(rng, (2, c, 2, 2, h, w))}, {}, ["x"], attrs)


def _resize2x(rng: np.random.Generator):
    """Nearest 2x upsampling with rows of more than one vector (the C kernel's doubled-row path)."""
    c, h, w = 2, 3, 70
    tabs = {"yt": np.stack([np.arange(2 * h) // 2] * 2 + [np.zeros(2 * h, np.int64)], axis=1).astype(np.int32),
            "xt": np.stack([np.arange(2 * w) // 2] * 2 + [np.zeros(2 * w, np.int64)], axis=1).astype(np.int32)}
    return make_graph("QResize", {"x": _i8(rng, (2, c, h, w))}, tabs, ["x", "yt", "xt"], {"zp": int(rng.integers(-128, 128))})


def _layer_norm(rng: np.random.Generator, cols: int):
    consts = {"g": rng.integers(-(1 << 20), 1 << 20, size=cols).astype(np.int32),
              "b": rng.integers(-(1 << 31), (1 << 31) - 1, size=cols).astype(np.int32)}
    attrs = dict(x_zp=int(rng.integers(-128, 128)), y_zp=int(rng.integers(-128, 128)), eps=int(rng.integers(0, 1 << 20)),
                 act_min=-128, act_max=127)
    return make_graph("QLayerNorm", {"x": _i8(rng, (2, 7, cols))}, consts, ["x", "g", "b"], attrs)


def _i16(rng: np.random.Generator, shape) -> np.ndarray:
    x = rng.integers(-32768, 32768, size=shape).astype(np.int16)
    x.reshape(-1)[rng.random(x.size) < 0.1] = rng.choice(np.array([-32768, 32767], dtype=np.int16))
    return x


def _conv16(rng: np.random.Generator, x_bits: int, y_bits: int, c: int, k: int, group: int, w: int = 9):
    """16x8 convolutions; c * k * k > 509 reaches the int64 accumulators."""
    oc = 2 * group
    mult, shift = _requant(rng, oc)
    consts = {"w": _i8(rng, (oc, c // group, k, k)), "b": rng.integers(-(1 << 20), 1 << 20, size=oc).astype(np.int32),
              "m": mult, "s": (shift + (8 if y_bits == 16 else 0) - (8 if x_bits == 16 else 0)).astype(np.int32)}
    x = _i16(rng, (2, c, 5, w)) if x_bits == 16 else _i8(rng, (2, c, 5, w))
    attrs = dict(strides=[1, 2], pads=[1, 0, 1, 2], dilations=[1, 1], group=group, x_zp=0 if x_bits == 16 else 3,
                 y_zp=0 if y_bits == 16 else -5, act_min=-32768 if y_bits == 16 else -128,
                 act_max=32767 if y_bits == 16 else 127, x_bits=x_bits, y_bits=y_bits)
    return make_graph("QConv", {"x": x}, consts, ["x", "w", "b", "m", "s"], attrs)


def _lut16(rng: np.random.Generator, x_bits: int, y_bits: int):
    x = _i16(rng, (2, 37)) if x_bits == 16 else _i8(rng, (2, 37))
    t = _i16(rng, 513 if x_bits == 16 else 256) if x_bits == 16 or y_bits == 16 else _i8(rng, 256)
    return make_graph("QLut", {"x": x}, {"t": t}, ["x", "t"], dict(x_bits=x_bits, y_bits=y_bits))


def _requantize(rng: np.random.Generator, x_bits: int, y_bits: int):
    x = _i16(rng, (2, 41)) if x_bits == 16 else _i8(rng, (2, 41))
    mult, shift = _requant(rng, 1)
    attrs = dict(x_bits=x_bits, y_bits=y_bits, x_zp=0 if x_bits == 16 else 7, y_zp=0 if y_bits == 16 else -9,
                 mult=int(mult[0]), shift=int(shift[0]) + (8 if y_bits > x_bits else 0))
    return make_graph("QRequantize", {"x": x}, {}, ["x"], attrs)


def make_cases(seed: int = 0) -> list[tuple[Graph, dict]]:
    """A fixed set of single-op graphs covering every op and the layouts the kernels special-case."""
    rng = np.random.default_rng(seed)
    cases = [_random_conv(rng) for _ in range(24)]
    cases += [
        _conv(rng, 16, 16, 16, 16, 1, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),    # large enough to go parallel
        _conv(rng, 16, 12, 12, 16, 16, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),   # depthwise, stride 2
        _conv(rng, 64, 5, 5, 9, 1, (1, 1), (1, 1), (1, 1), (0, 0, 0, 0)),       # pointwise, dot path
        _conv(rng, 1, 3, 300, 3, 1, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),      # rows wider than a chunk
        _conv(rng, 40, 4, 4, 5, 1, (3, 3), (1, 2), (2, 1), (2, 0, 1, 2)),       # dot path, K not a multiple of 64
        _conv(rng, 37, 21, 40, 7, 1, (5, 3), (1, 1), (2, 1), (2, 0, 1, 2)),     # padded band, several bands
        _conv(rng, 16, 9, 5, 3, 1, (1, 2), (1, 1), (1, 2), (0, 2, 1, 1)),       # padded band, narrow rows
        _conv(rng, 24, 12, 80, 1, 24, (5, 5), (1, 1), (1, 1), (2, 2, 2, 2)),    # depthwise 5x5, two quads a row
        _conv(rng, 8, 11, 37, 1, 8, (7, 8), (2, 2), (1, 2), (3, 1, 0, 2)),      # depthwise 7x8, strided, dilated
    ]
    cases += [_fc(rng) for _ in range(5)]
    cases += [_binary(rng, op) for op in ("QAdd", "QMul") for _ in range(6)]
    cases += [_pool(rng, op) for op in ("QMaxPool", "QAvgPool") for _ in range(6)]
    cases += [_pool(rng, "QMaxPool", wide=True), _pool(rng, "QAvgPool", wide=True)]
    cases += [_softmax(rng) for _ in range(3)] + [_concat(rng) for _ in range(4)] + [_lut(rng), _reshape(rng)]
    cases += [_copy_window(rng, False), _copy_window(rng, True)]
    cases += [_strided(rng, (3, 1, 0, 2), 1), _strided(rng, (0, 2, 1, 3), -2), _strided(rng, (2, 3, 0, 1), 2)]
    cases += [_matmul(rng, w) for w in (True, False, True, False)]
    cases += [_conv_transpose(rng, 2, 2, 0), _conv_transpose(rng, 3, 2, 1), _conv_transpose(rng, 4, 3, 2)]
    cases += [_resize(rng, False), _resize(rng, True), _layer_norm(rng, 1), _layer_norm(rng, 120)]
    cases += [_shuffle(rng, 70), _shuffle(rng, 150), _resize2x(rng)]
    widths = [(8, 16), (16, 8), (16, 16)]
    cases += [_conv16(rng, xb, yb, c, k, g) for xb, yb in widths for c, k, g in ((4, 3, 1), (6, 1, 6), (80, 3, 1))]
    cases += [_conv16(rng, 16, 8, 3, 1, 1, w=300)]  # rows wider than a chunk
    cases += [_lut16(rng, xb, yb) for xb, yb in widths] + [_requantize(rng, xb, yb) for xb, yb in widths + [(8, 8)]]
    return cases


# ---- tight layouts ---------------------------------------------------------------------------------

def _tight_plan(graph: Graph, rotation: int) -> MemoryPlan:
    """Activations back to back, no alignment, the order rotated so each one is first and last in turn."""
    names = list(graph.inputs) + [o for n in graph.nodes for o in n.outputs]
    names = names[rotation % len(names):] + names[:rotation % len(names)]
    offsets, pos = {}, 0
    for name in names:
        size = np.dtype(graph.tensors[name].dtype).itemsize
        pos = (pos + size - 1) // size * size  # int16 activations: 2-byte aligned, nothing more
        offsets[name] = pos
        pos += graph.tensors[name].nbytes
    return MemoryPlan(offsets, pos, "tight")


def _tight_pool(graph: Graph, rotation: int) -> tuple[np.ndarray, dict[str, int]]:
    """Constants back to back, only int32 ones aligned (to 4), rotated like the activations."""
    names = sorted(graph.consts)
    if names:
        names = names[rotation % len(names):] + names[:rotation % len(names)]
    offsets, pos = {}, 0
    for name in names:
        value = graph.consts[name]
        pos = (pos + value.itemsize - 1) // value.itemsize * value.itemsize
        offsets[name] = pos
        pos += value.nbytes
    pool = np.zeros(pos, dtype=np.uint8)
    for name, off in offsets.items():
        raw = np.ascontiguousarray(graph.consts[name]).view(np.uint8).reshape(-1)
        pool[off: off + raw.size] = raw
    return pool, offsets


def run_case(backend: c_backend.CBackend, graph: Graph, inputs: dict, layout: int) -> dict[str, np.ndarray]:
    """Execute ``graph`` on ``backend`` with the tight layout number ``layout`` (-1: the real planner)."""
    if layout < 0:
        plan = plan_memory(graph)
        pool, offsets = _tight_pool(graph, 0)
    else:
        plan, (pool, offsets) = _tight_plan(graph, layout), _tight_pool(graph, layout)
    prog = compile_program(graph, plan, offsets)
    n = next(iter(inputs.values())).shape[0]
    in_buf = np.ascontiguousarray(np.concatenate([np.ascontiguousarray(inputs[k]).reshape(n, -1).view(np.int8)
                                                  for k in graph.inputs], axis=1))
    out_buf = np.empty((n, int(prog.outputs[:, 1].sum())), dtype=np.int8)
    arena = np.zeros(prog.arena_bytes, dtype=np.int8)
    backend.execute(prog.words, arena, pool, in_buf, prog.inputs, out_buf, prog.outputs)
    outs, pos = {}, 0
    for name, (_, size) in zip(graph.outputs, prog.outputs):
        outs[name] = np.ascontiguousarray(out_buf[:, pos: pos + size]).view(graph.tensors[name].dtype).reshape(
            (n,) + graph.tensors[name].shape[1:])
        pos += size
    return outs


def _child(directory: str, budget: str) -> int:
    """Run every case on the sanitized build (ASan must already be preloaded); 0 when all are exact."""
    backend = c_backend.build_sanitized(directory, BUDGETS[budget])
    backend.ensure_available()
    failures = 0
    for i, (graph, inputs) in enumerate(make_cases()):
        want = Executor(graph, "reference").run_quantized(inputs)
        n_tensors = len(graph.inputs) + 1 + len(graph.consts)
        for threads in (1, 2):
            backend.set_threads(threads)
            for layout in [-1, *range(n_tensors)]:
                got = run_case(backend, graph, inputs, layout)
                if not all(np.array_equal(got[k], want[k]) for k in want):
                    failures += 1
                    print(f"case {i} ({graph.nodes[0].op}, threads {threads}, layout {layout}) differs from the "
                          f"reference: {graph.nodes[0].attrs}", flush=True)
    print(f"ran {i + 1} cases, {failures} mismatches", flush=True)
    return 1 if failures else 0


# ---- the test ----------------------------------------------------------------------------------------

def _child_env(preload: str) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_PRELOAD"] = preload + (" " + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    env["OMP_WAIT_POLICY"] = "passive"
    return env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD of libasan is Linux-specific")
@pytest.mark.parametrize("budget", sorted(BUDGETS))
def test_kernels_clean_under_sanitizers(tmp_path_factory, budget):
    preload = c_backend.sanitizer_preload()
    if preload is None:
        pytest.skip("the C compiler has no AddressSanitizer runtime (libasan)")
    directory = tmp_path_factory.mktemp(f"asan-{budget}")
    try:
        c_backend.build_sanitized(directory, BUDGETS[budget]).build()
    except BackendError as err:
        pytest.skip(f"cannot build with sanitizers: {err}")
    proc = subprocess.run([sys.executable, __file__, str(directory), budget], env=_child_env(preload),
                          capture_output=True, text=True, timeout=900)
    report = [ln for ln in proc.stderr.splitlines() if any(tag in ln for tag in SANITIZER_REPORTS)]
    assert proc.returncode == 0 and not report, (
        f"sanitized run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    assert "0 mismatches" in proc.stdout, proc.stdout[-3000:]


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
