"""The converter's fast float side: the BLAS/im2col float convolutions against a direct definition, the
one-pass calibration collector against ranges computed from every activation value, channel-split views
against calibrating the split graph itself, and the report's all-layer run against the reference kernels.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgeq.converters import calibrate as calibration
from edgeq.converters.calibrate import RangeStats, calibrate, _largest, _smallest
from edgeq.converters.channel_split import SplitPlanner, split_wide_channels
from edgeq.converters import float_ops
from edgeq.converters.float_ops import conv, conv_transpose, run_float
from edgeq.converters.onnx_import import import_onnx
from edgeq.converters.passes import run_passes
from edgeq.converters.pipeline import _db, _plan, _report, _signal_noise, sqnr_db
from edgeq.converters.quantize import quantize_graph
from edgeq.devices import get_device
from edgeq.runtimes.executor import Executor, dequantize, quantize
from models import zoo_model


def _direct_conv(x, w, b, strides, pads, dilations, group):
    """Convolution by its definition, in float64: every output is a sum over its window."""
    n, c, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (xp.shape[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    y = np.zeros((n, oc, oh, ow))
    for o in range(oc):
        g = o // (oc // group)
        for i in range(kh):
            for j in range(kw):
                win = xp[:, g * cg: (g + 1) * cg, i * dilations[0]: i * dilations[0] + (oh - 1) * strides[0] + 1: strides[0],
                         j * dilations[1]: j * dilations[1] + (ow - 1) * strides[1] + 1: strides[1]]
                y[:, o] += np.einsum("nchw,c->nhw", win, w[o, :, i, j].astype(np.float64))
    return y + b[None, :, None, None]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_fast_conv_matches_direct_definition(data):
    """Pointwise, general (im2col, chunked batches), grouped and depthwise convolutions, any padding."""
    d = data.draw
    group = d(st.integers(1, 3))
    kind = d(st.sampled_from(["general", "depthwise", "pointwise"]))
    cg = 1 if kind == "depthwise" else d(st.integers(1, 4))
    mult = 1 if kind == "depthwise" else d(st.integers(1, 3))
    k = (1, 1) if kind == "pointwise" else (d(st.integers(1, 4)), d(st.integers(1, 4)))
    strides = (1, 1) if kind == "pointwise" else (d(st.integers(1, 2)), d(st.integers(1, 2)))
    dil = (d(st.integers(1, 2)), d(st.integers(1, 2)))
    pads = tuple(d(st.integers(0, 2)) for _ in range(4))
    rng = np.random.default_rng(d(st.integers(0, 2**31)))
    n = d(st.integers(1, 3))
    h, w_ = d(st.integers(max(k[0] * dil[0], 1), 9)), d(st.integers(max(k[1] * dil[1], 1), 9))
    x = rng.standard_normal((n, group * cg, h, w_)).astype(np.float32)
    w = rng.standard_normal((group * mult, cg) + k).astype(np.float32)
    b = rng.standard_normal(group * mult).astype(np.float32)
    chunked = d(st.booleans())  # a one-float im2col budget: the batch goes through one sample at a time
    old_limit, float_ops.COLS_LIMIT = float_ops.COLS_LIMIT, 1 if chunked else float_ops.COLS_LIMIT
    try:
        got = conv(x, w, b, strides=strides, pads=pads, dilations=dil, group=group)
    finally:
        float_ops.COLS_LIMIT = old_limit
    want = _direct_conv(x, w, b, strides, pads, dil, group)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_depthwise_loop_equals_numpy_tap_sums(data):
    """float_loops.depthwise gives the bits of the NumPy expression it replaced (y = 0, then y += x_tap *
    w_tap in float32 over the zero-padded input, taps in row-major order), so calibration ranges stay
    the same: any stride, dilation, asymmetric padding (wider than the kernel too), batch."""
    d = data.draw
    k = (d(st.integers(1, 5)), d(st.integers(1, 5)))
    strides = (d(st.integers(1, 3)), d(st.integers(1, 3)))
    dil = (d(st.integers(1, 2)), d(st.integers(1, 2)))
    pads = tuple(d(st.integers(0, 6)) for _ in range(4))
    rng = np.random.default_rng(d(st.integers(0, 2**31)))
    n, c = d(st.integers(1, 2)), d(st.integers(1, 5))
    h, w_ = d(st.integers(1, 40)), d(st.integers(1, 80))
    x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = 0.0
    w = rng.standard_normal((c, 1) + k).astype(np.float32)
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - (k[0] - 1) * dil[0] - 1) // strides[0] + 1
    ow = (xp.shape[3] - (k[1] - 1) * dil[1] - 1) // strides[1] + 1
    if oh < 1 or ow < 1:
        return
    want = np.zeros((n, c, oh, ow), dtype=np.float32)
    for i in range(k[0]):
        for j in range(k[1]):
            tap = xp[:, :, i * dil[0]: i * dil[0] + (oh - 1) * strides[0] + 1: strides[0],
                     j * dil[1]: j * dil[1] + (ow - 1) * strides[1] + 1: strides[1]]
            want += tap * w[:, 0, i, j, None, None]
    got = conv(x, w, None, strides=strides, pads=pads, dilations=dil, group=c)
    assert got.dtype == np.float32 and np.array_equal(got.view(np.int32), want.view(np.int32))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_chain_loop_equals_numpy_steps(data):
    """float_loops.chain (HardSwish, Mul and Add by Python floats) gives the bits of the NumPy steps,
    large, tiny and infinite values included; a float64 NumPy constant keeps the NumPy path (it promotes)."""
    d = data.draw
    rng = np.random.default_rng(d(st.integers(0, 2**31)))
    steps = [{"op": d(st.sampled_from(["HardSwish", "Mul", "Add"]))} for _ in range(d(st.integers(1, 4)))]
    for s in steps:
        if s["op"] != "HardSwish":
            s["c"] = float(rng.standard_normal() * 10.0 ** int(rng.integers(-3, 3)))
    x = (rng.standard_normal((d(st.integers(1, 2)), 3, d(st.integers(1, 70)), 9)) * 10).astype(np.float32)
    x.reshape(-1)[rng.random(x.size) < 0.05] = rng.choice(np.array([0, -3, 3, 1e-40, 3e38, np.inf, -np.inf], np.float32))
    want = x
    for s in steps:
        if s["op"] == "HardSwish":
            t = np.divide(want, 6, dtype=np.float32)
            t += 0.5
            want = np.clip(t, 0, 1) * want
        else:
            want = want * s["c"] if s["op"] == "Mul" else want + s["c"]
    got = float_ops.FLOAT_OPS["Chain"](float_ops.Node("Chain", "c", ["x"], ["y"], {"steps": steps}), [x])
    assert got.dtype == np.float32 and np.array_equal(got.view(np.int32), want.view(np.int32))
    wide = [dict(s, c=np.float64(s["c"])) if "c" in s else s for s in steps]
    assert float_ops._chain(x, wide).dtype == (np.float64 if any("c" in s for s in wide) else np.float32)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_conv_transpose_matches_direct_definition(data):
    d = data.draw
    rng = np.random.default_rng(d(st.integers(0, 2**31)))
    group, cg, ocg = d(st.integers(1, 2)), d(st.integers(1, 3)), d(st.integers(1, 3))
    k = (d(st.integers(1, 3)), d(st.integers(1, 3)))
    s = (d(st.integers(1, 3)), d(st.integers(1, 3)))
    n, h, w_ = d(st.integers(1, 2)), d(st.integers(1, 5)), d(st.integers(1, 5))
    x = rng.standard_normal((n, group * cg, h, w_)).astype(np.float32)
    w = rng.standard_normal((group * ocg, cg) + k).astype(np.float32)
    full = ((h - 1) * s[0] + k[0], (w_ - 1) * s[1] + k[1])
    want = np.zeros((n, group * ocg) + full)
    for o in range(group * ocg):
        g = o // ocg
        for i in range(h):
            for j in range(w_):
                want[:, o, i * s[0]: i * s[0] + k[0], j * s[1]: j * s[1] + k[1]] += \
                    np.einsum("nc,ckl->nkl", x[:, g * cg: (g + 1) * cg, i, j].astype(np.float64), w[o].astype(np.float64))
    got = conv_transpose(x, w, None, strides=s, pads=(0, 0), dilations=(1, 1), group=group, out=full)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _zoo_graph():
    g, _ = import_onnx(zoo_model(17, seed=5).SerializeToString())
    run_passes(g)
    return g


def test_run_float_observe_and_keep():
    """observe sees every node output as computed; keep drops what no later node reads and is not kept."""
    g = _zoo_graph()
    x = np.random.default_rng(0).standard_normal((3, 3, 23, 21)).astype(np.float32)
    full = run_float(g.nodes, {**g.consts, "x": x})
    seen = {}
    lean = run_float(g.nodes, {**g.consts, "x": x}, keep=set(g.outputs).__contains__,
                     observe=lambda name, v: seen.setdefault(name, v.copy()))
    assert set(seen) == {n.outputs[0] for n in g.nodes}
    for name, v in seen.items():
        np.testing.assert_array_equal(v, full[name])
    produced = {n.outputs[0] for n in g.nodes}
    assert {k for k in lean if k in produced} == set(g.outputs)


def test_tails_are_exact():
    rng = np.random.default_rng(1)
    for trial in range(100):
        a = rng.standard_normal(int(rng.integers(1, 100000))).astype(np.float32)
        if trial % 2:
            a = np.round(np.maximum(a, 0), 1)  # ties and a tail of zeros
        k = int(rng.integers(1, 200))
        assert np.array_equal(_largest(a, k), np.sort(a)[-k:])
        assert np.array_equal(_smallest(a, k), np.sort(a)[:k])


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_range_stats_percentile_equals_numpy_on_all_values(data):
    """Batches in any order: min/max and the percentiles of every value seen, not of a sample."""
    d = data.draw
    rng = np.random.default_rng(d(st.integers(0, 2**31)))
    per = (d(st.integers(1, 4)), d(st.integers(1, 300)))
    sizes = d(st.lists(st.integers(1, 30), min_size=1, max_size=5))
    batches = [(rng.standard_normal((b,) + per) ** 3).astype(np.float32) for b in sizes]
    stats = RangeStats(sum(sizes), ("minmax", "percentile"))
    for i in d(st.permutations(range(len(batches)))):
        stats.add("t", batches[i], i)
    every = np.concatenate([b.reshape(-1) for b in batches]).astype(np.float64)
    assert stats.ranges("minmax")["t"] == (every.min(), every.max())
    lo, hi = stats.ranges("percentile")["t"]
    np.testing.assert_allclose([lo, hi], np.percentile(every, [0.01, 99.99]), rtol=1e-9, atol=1e-9)


def test_one_pass_equals_ranges_of_every_activation():
    """calibrate's ranges for several methods at once equal min/max and percentiles taken over every value of
    every activation (what a per-method pass over all the samples computes); mse is deterministic."""
    g = _zoo_graph()
    x = np.random.default_rng(2).standard_normal((2 * calibration.BATCH + 3, 3, 23, 21)).astype(np.float32)
    cal = calibrate(g, {"x": x}, ("minmax", "percentile", "mse"), keep_outputs=5, progress=False)
    full = run_float(g.nodes, {**g.consts, "x": x})
    activations = [n for n in g.tensors if n not in g.consts]
    assert set(cal.ranges["minmax"]) == set(activations)
    for name in activations:
        v = full[name].astype(np.float64)
        # (a batch of 8 and one of 19 may round a BLAS product differently in the last bit)
        np.testing.assert_allclose(cal.ranges["minmax"][name], (v.min(), v.max()), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cal.ranges["percentile"][name], np.percentile(v, [0.01, 99.99]), rtol=1e-5, atol=1e-6)
    for o in g.outputs:
        np.testing.assert_allclose(cal.outputs[o], full[o][:5], rtol=1e-5, atol=1e-6)
    again = calibrate(g, {"x": x}, ("mse",), progress=False)
    assert again.ranges["mse"] == cal.ranges["mse"]


def _split_model(rng: np.random.Generator) -> bytes:
    """Pointwise -> HardSwish -> depthwise -> Relu -> pointwise, two channels 100x the others."""
    w1 = rng.standard_normal((8, 4, 1, 1)).astype(np.float32)
    w1[:2] *= 100
    w2 = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    w2[:2] /= 100
    inits = {"w1": w1, "w2": w2, "w3": rng.standard_normal((4, 8, 1, 1)).astype(np.float32)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["a"]), n("HardSwish", ["a"], ["h"]),
             n("Conv", ["h", "w2"], ["d"], group=8, pads=[1, 1, 1, 1]), n("Relu", ["d"], ["r"]),
             n("Conv", ["r", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]).SerializeToString()


@pytest.mark.parametrize("batch_values", [calibration.BATCH_VALUES, 1])
def test_split_views_equal_calibrating_the_split_graph(batch_values, monkeypatch):
    """The parts of a split tensor get the ranges calibrating the split graph itself would give them (also
    when the views are decided from several one-sample batches)."""
    monkeypatch.setattr(calibration, "BATCH_VALUES", batch_values)
    rng = np.random.default_rng(3)
    g, _ = import_onnx(_split_model(rng))
    run_passes(g)
    x = rng.standard_normal((19, 4, 6, 6)).astype(np.float32)
    planner = SplitPlanner(g)
    cal = calibrate(g, {"x": x}, ("minmax", "percentile"), views=planner, progress=False)
    assert planner.groups, "the wide channels should be split"
    split = copy.deepcopy(g)
    parts_of = split_wide_channels(split, planner.groups)
    assert parts_of and all(t in split.tensors for t in parts_of)
    direct = calibrate(split, {"x": x}, ("minmax", "percentile"), progress=False)
    for m in ("minmax", "percentile"):
        for t in split.tensors:
            if t in split.consts:
                continue
            np.testing.assert_allclose(cal.ranges[m][parts_of.get(t, t)], direct.ranges[m][t], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run_float(split.nodes, {**split.consts, "x": x})["y"],
                               run_float(g.nodes, {**g.consts, "x": x})["y"], rtol=1e-4, atol=1e-4)


def test_report_layers_equal_the_reference_run():
    """The report's per-layer SQNR (compiled backend, every layer an output) equals the one computed from
    the reference kernels' intermediates."""
    g = _zoo_graph()
    x = np.random.default_rng(4).standard_normal((6, 3, 23, 21)).astype(np.float32)
    qg = quantize_graph(g, calibrate(g, {"x": x}, ("minmax",), progress=False).ranges["minmax"])
    host = get_device("host")
    report = _report(g, qg, {"x": x}, host, _plan(qg, host, "off"), None)
    ref = Executor(qg, "reference").run_reference_all({"x": quantize(x, qg.tensors["x"])})
    fvals = run_float(g.nodes, {**g.consts, "x": x})
    assert report["report_samples"] == 6 and report["layers"]
    for layer in report["layers"]:
        t = layer["tensor"]
        want = round(_db(*_signal_noise(fvals[t], dequantize(ref[t], qg.tensors[t]))), 2)
        assert layer["sqnr_db"] == pytest.approx(want, abs=0.011), layer
    for o in qg.outputs:
        assert report["output_max_abs_diff"][o] == pytest.approx(
            float(np.abs(fvals[o] - dequantize(ref[o], qg.tensors[o])).max()), rel=1e-5, abs=1e-6)
    assert sqnr_db(fvals[qg.outputs[0]], fvals[qg.outputs[0]]) == float("inf")
