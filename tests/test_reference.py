"""The reference kernels against independent definitions (onnxruntime's float ops, plain formulas)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

from edgeq.runtimes import fixedpoint as fp, reference as ref


def _ort_run(node: onnx.NodeProto, x: np.ndarray, inits: list[onnx.TensorProto]) -> np.ndarray:
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


IDENTITY = dict(mult=1 << 30, shift=1)  # requantization by exactly 1.0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_conv_matches_onnxruntime(seed):
    rng = np.random.default_rng(seed)
    group = int(rng.integers(1, 3))
    cg, ocg = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    k = [int(v) for v in rng.integers(1, 4, size=2)]
    strides, dil = [int(v) for v in rng.integers(1, 3, size=2)], [int(v) for v in rng.integers(1, 3, size=2)]
    pads = [int(v) for v in rng.integers(0, 2, size=4)]
    h, w = 8, 7
    x = rng.integers(-3, 4, size=(2, group * cg, h, w)).astype(np.int8)
    wt = rng.integers(-2, 3, size=(group * ocg, cg, *k)).astype(np.int8)
    bias = rng.integers(-5, 6, size=group * ocg).astype(np.int32)
    oc = group * ocg
    got = ref.conv(x, wt, bias, np.full(oc, IDENTITY["mult"], np.int32), np.full(oc, IDENTITY["shift"], np.int32),
                   strides=strides, pads=pads, dilations=dil, group=group, x_zp=0, y_zp=0, act_min=-128,
                   act_max=127)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=strides, pads=[pads[0], pads[1], pads[2], pads[3]],
                            dilations=dil, group=group)
    inits = [helper.make_tensor("w", TensorProto.FLOAT, wt.shape, wt.astype(np.float32).ravel()),
             helper.make_tensor("b", TensorProto.FLOAT, bias.shape, bias.astype(np.float32))]
    want = _ort_run(node, x.astype(np.float32), inits)
    np.testing.assert_array_equal(got.astype(np.float32), np.clip(want, -128, 127))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), op=st.sampled_from(["MaxPool", "AveragePool"]))
def test_pools_match_onnxruntime(seed, op):
    rng = np.random.default_rng(seed)
    k = [int(v) for v in rng.integers(1, 4, size=2)]
    strides = [int(v) for v in rng.integers(1, 3, size=2)]
    pads = [int(rng.integers(0, k[i % 2])) for i in range(4)]
    include = int(rng.integers(0, 2))
    x = rng.integers(-128, 128, size=(1, 3, 9, 8)).astype(np.int8)
    if op == "MaxPool":
        got = ref.max_pool(x, kernel=k, strides=strides, pads=pads, dilations=[1, 1], act_min=-128, act_max=127)
        node = helper.make_node(op, ["x"], ["y"], kernel_shape=k, strides=strides, pads=pads)
        np.testing.assert_array_equal(got, _ort_run(node, x.astype(np.float32), []))
    else:
        got = ref.avg_pool(x, kernel=k, strides=strides, pads=pads, count_include_pad=include, x_zp=0, y_zp=0,
                           act_min=-128, act_max=127)
        node = helper.make_node(op, ["x"], ["y"], kernel_shape=k, strides=strides, pads=pads,
                                count_include_pad=include)
        want = _ort_run(node, x.astype(np.float32), [])
        assert np.abs(got.astype(np.float32) - want).max() <= 0.5 + 1e-4  # integer rounding of the mean


def test_fixed_point_against_exact_rational():
    rng = np.random.default_rng(0)
    x = rng.integers(-(1 << 24), 1 << 24, size=20000)
    mult = rng.integers(1 << 30, (1 << 31) - 1, size=20000)
    shift = rng.integers(-20, 3, size=20000)
    got = fp.multiply_by_quantized_multiplier(x, mult, shift)
    exact = x.astype(object) * mult.astype(object) * [2 ** int(s) for s in shift]
    # double rounding (high-mul then shift) may differ from a single rounding by at most 1
    want = np.array([round(v / 2**31) for v in exact], dtype=np.float64)
    assert np.abs(got - want).max() <= 1


def test_rounding_divide_by_pot_half_away_from_zero():
    assert fp.rounding_divide_by_pot(np.array([5, -5, 6, -6, 7, -7]), 1).tolist() == [3, -3, 3, -3, 4, -4]
    assert fp.saturating_rounding_doubling_high_mul(fp.INT32_MIN, fp.INT32_MIN) == fp.INT32_MAX


def test_softmax_close_to_float():
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, size=(4, 10)).astype(np.int8)
    s = 0.1
    table = np.round(np.exp(-np.arange(256) * s) * (1 << 20)).astype(np.int32)
    got = (ref.softmax(x, table).astype(np.float64) + 128) / 256
    xf = x.astype(np.float64)
    e = np.exp(s * (xf - xf.max(axis=1, keepdims=True)))
    assert np.abs(got - e / e.sum(axis=1, keepdims=True)).max() <= 1 / 256 + 1e-9
