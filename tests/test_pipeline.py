"""End to end: ONNX import against onnxruntime, quantized accuracy, bundle round trip, backends bit-exact."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import edgeq
from edgeq.converters.float_ops import run_float
from edgeq.converters.pipeline import sqnr_db
from edgeq.converters.onnx_import import import_onnx
from edgeq.converters.passes import run_passes
from edgeq.sample import load_sample
from models import zoo_model


@pytest.fixture(scope="module")
def sample_bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("b") / "digits.edgeq"
    return edgeq.convert(device="rpi5", output=path, progress=False)


@pytest.mark.parametrize("opset", [11, 13, 17, 21])
def test_import_matches_onnxruntime(opset):
    model = zoo_model(opset)
    x = np.random.default_rng(opset).standard_normal((3, 3, 23, 21)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    g, _ = import_onnx(model.SerializeToString())
    run_passes(g)
    assert "BatchNormalization" not in [n.op for n in g.nodes]  # folded into the conv
    assert "Relu" not in [n.op for n in g.nodes]  # fused into the producers
    got = run_float(g.nodes, {**g.consts, "x": x})
    for name, w in zip(["prob", "logits"], want):
        np.testing.assert_allclose(got[name], w, rtol=1e-4, atol=1e-5)


def test_sample_int8_accuracy_within_one_point(sample_bundle):
    acc = sample_bundle.report["accuracy"]
    assert acc["samples"] == 360
    assert acc["int8"] >= acc["float"] - 1.0, acc
    layers = sample_bundle.report["layers"]
    assert all(l["sqnr_db"] > 20 for l in layers), layers


def test_sample_bundle_all_backends_bit_exact(sample_bundle, backend):
    b = edgeq.load(sample_bundle.path)
    s = load_sample()
    q = b.executor("reference").run({"input": s.x_test[:1]})  # warm: also checks float path runs
    assert q["logits"].shape == (1, 10)
    x = {"input": np.clip(np.rint(s.x_test / b.graph.tensors["input"].scale[0]) - 128, -128, 127).astype(np.int8)}
    want = b.run_quantized(x, backend="reference")["logits"]
    got = b.run_quantized(x, backend=backend)["logits"]
    np.testing.assert_array_equal(got, want)
    y = b.run(s.x_test, backend=backend)["logits"]
    assert (y.argmax(1) == s.y_test).mean() * 100 >= s.float_accuracy - 1.0


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_zoo_quantized_close_to_float_and_bit_exact(tmp_path, method, backend):
    model = zoo_model(17, seed=3)
    rng = np.random.default_rng(5)
    calib = rng.standard_normal((32, 3, 23, 21)).astype(np.float32)
    res = edgeq.convert(model.SerializeToString(), device="host", calib=calib, calib_method=method,
                        output=tmp_path / "zoo.edgeq", progress=False)
    b = edgeq.load(res.path)
    assert b.graph.dynamic_batch
    ops = {n["op"] for n in b.summary()["nodes"]}
    assert {"QConv", "QAdd", "QMul", "QConcat", "QMaxPool", "QAvgPool", "QFullyConnected", "QSoftmax"} <= ops
    x = rng.standard_normal((7, 3, 23, 21)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    ref = b.run(x, backend="reference")
    assert sqnr_db(want[1], ref["logits"]) > 15
    assert np.abs(want[0] - ref["prob"]).max() < 0.1
    q = {"x": rng.integers(-128, 128, size=(7, 3, 23, 21)).astype(np.int8)}
    for name, v in b.run_quantized(q, backend="reference").items():
        np.testing.assert_array_equal(b.run_quantized(q, backend=backend)[name], v)


def test_bundles_are_deterministic(tmp_path):
    a = edgeq.convert(device="stm32f7", output=tmp_path / "a.edgeq", progress=False)
    b = edgeq.convert(device="stm32f7", output=tmp_path / "b.edgeq", progress=False)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.report["budget"]["fits"] and a.report["budget"]["activation_bytes"] == 320 * 1024


def test_runtime_does_not_import_converter(sample_bundle):
    code = ("import sys, numpy as np, edgeq; b = edgeq.load(sys.argv[1], backend='reference'); "
            "b.run(np.zeros((2, 1, 16, 16), np.float32)); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'gguf', 'llama_cpp') "
            "or m.startswith('edgeq.converters')]; print(bad); sys.exit(1 if bad else 0)")
    # From another directory, so the checkout's source folders cannot shadow the installed package.
    out = subprocess.run([sys.executable, "-c", code, str(sample_bundle.path)], capture_output=True, text=True,
                         cwd=sample_bundle.path.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_fixed_batch_model(tmp_path, backend):
    model = zoo_model(17, seed=4, batch=2)
    rng = np.random.default_rng(2)
    res = edgeq.convert(model.SerializeToString(), device="host", calib=rng.standard_normal((4, 3, 23, 21)).astype(np.float32),
                        output=tmp_path / "fixed.edgeq", progress=False)
    b = edgeq.load(res.path)
    assert not b.graph.dynamic_batch
    q = {"x": rng.integers(-128, 128, size=(2, 3, 23, 21)).astype(np.int8)}
    want = b.run_quantized(q, backend="reference")
    for name, v in b.run_quantized(q, backend=backend).items():
        np.testing.assert_array_equal(v, want[name])
    with pytest.raises(edgeq.EdgeqError, match="expected 2x3x23x21"):
        b.run(np.zeros((3, 3, 23, 21), np.float32))


def test_exported_hardswish_and_constant_sub_div(tmp_path, backend):
    """x * clip(x + 3, 0, 6) / 6 becomes one HardSwish table; Sub/Div by constants become Add/Mul."""
    from onnx import TensorProto, helper, numpy_helper
    c = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    nodes = [helper.make_node("Sub", ["x", "mean"], ["centered"]),
             helper.make_node("Div", ["centered", "std"], ["norm"]),
             helper.make_node("Add", ["norm", "three"], ["a3"]),
             helper.make_node("Clip", ["a3", "zero", "six"], ["r6"]),
             helper.make_node("Mul", ["norm", "r6"], ["m"]),
             helper.make_node("Div", ["m", "six"], ["y"])]
    inits = [c("mean", np.array([0.5, -0.2, 0.1]).reshape(3, 1, 1)), c("std", np.array([0.5, 2.0, 1.5]).reshape(3, 1, 1)),
             c("three", 3.0), c("zero", 0.0), c("six", 6.0)]
    graph = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = (np.random.default_rng(0).standard_normal((16, 3, 8, 8)) * 3).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    g, _ = import_onnx(model.SerializeToString())
    run_passes(g)
    assert [n.op for n in g.nodes] == ["Add", "Mul", "HardSwish"]
    np.testing.assert_allclose(run_float(g.nodes, {**g.consts, "x": x})["y"], want, rtol=1e-5, atol=1e-5)
    b = edgeq.load(edgeq.convert(model.SerializeToString(), device="host", output=tmp_path / "hs.edgeq", calib=x,
                                 progress=False).path)
    assert sqnr_db(want, b.run(x, backend=backend)["y"]) > 30


def test_bench_per_node_times(sample_bundle):
    """``edgeq bench --per-node``: the C program loop's node times, slowest first, summing near the run time."""
    out = subprocess.run([sys.executable, "-m", "edgeq.cli", "bench", str(sample_bundle.path), "--backend", "c",
                          "--runs", "20", "--warmup", "2", "--per-node", "3", "--json"],
                         capture_output=True, text=True, cwd=sample_bundle.path.parent, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    nodes = data["slowest_nodes"]
    graph = edgeq.load(sample_bundle.path).graph
    assert len(nodes) == 3 and [n["ms"] for n in nodes] == sorted((n["ms"] for n in nodes), reverse=True)
    assert all(graph.nodes[n["index"]].name == n["name"] and n["ms"] > 0 for n in nodes)
    assert 0 < data["node_ms_total"] <= data["max_ms"] * 1.5
    bad = subprocess.run([sys.executable, "-m", "edgeq.cli", "bench", str(sample_bundle.path), "--backend", "numba",
                          "--runs", "1", "--warmup", "0", "--per-node", "3"],
                         capture_output=True, text=True, cwd=sample_bundle.path.parent, timeout=300)
    assert bad.returncode == 2 and "C backend" in bad.stderr and "Traceback" not in bad.stderr


def test_convert_plot_per_layer_sqnr(tmp_path):
    """``edgeq convert --plot``: a PNG of the per-layer SQNR, written atomically; a missing folder is an
    error before any work."""
    png = tmp_path / "layers.png"
    out = subprocess.run([sys.executable, "-m", "edgeq.cli", "convert", "--device", "rpi5", "-o",
                          str(tmp_path / "d.edgeq"), "--plot", str(png), "--json"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["plot"] == str(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    bad = subprocess.run([sys.executable, "-m", "edgeq.cli", "convert", "--device", "rpi5", "-o",
                          str(tmp_path / "e.edgeq"), "--plot", str(tmp_path / "no" / "x.png")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and not (tmp_path / "e.edgeq").exists()
