"""Automatic int16 mixed precision: the chosen tensors recover accuracy, respect the budget, and the
mixed bundle runs bit-exactly on every backend."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeq
from edgeq.converters.mixed_precision import parse_budget
from edgeq.converters.pipeline import sqnr_db
from edgeq.errors import InputError


def _wide_range_model(seed: int = 3) -> bytes:
    """Pointwise -> depthwise -> HardSwish -> pointwise. Two channels between the first two convs are 300x
    larger than the rest (the depthwise conv, with its per-channel weight scales, brings them back, as a
    folded BatchNorm does): one int8 scale rounds the small channels away (the PP-LCNetV3 pattern); an
    int16 tensor keeps them. The HardSwish output feeding the last conv is a second candidate (a table
    with an int16 output)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 4, 1, 1)).astype(np.float32)
    w1[:2] *= 300
    w2 = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    w2[:2] /= 300
    w3 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["h"]), n("Conv", ["h", "w2"], ["b"], group=8, pads=[1, 1, 1, 1]),
             n("HardSwish", ["b"], ["r"]), n("Conv", ["r", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
                              [numpy_helper.from_array(v, k) for k, v in (("w1", w1), ("w2", w2), ("w3", w3))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]).SerializeToString()


@pytest.fixture(scope="module")
def model_and_data():
    x = np.random.default_rng(0).standard_normal((16, 4, 6, 6)).astype(np.float32)
    model = _wide_range_model()
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return model, x, want


def test_mixed_precision_improves_sqnr_within_budget(model_and_data, tmp_path, backend):
    model, x, want = model_and_data
    plain = edgeq.convert(model, device="host", output=tmp_path / "int8.edgeq", calib=x, calib_method="minmax",
                          progress=False)
    mixed = edgeq.convert(model, device="host", output=tmp_path / "mixed.edgeq", calib=x, calib_method="minmax",
                          progress=False, mixed_precision="auto", int16_budget="100%")
    m = mixed.report["mixed_precision"]
    assert "h" in m["int16_tensors"], m
    assert m["extra_bytes"] <= m["budget_bytes"]
    assert m["output_sqnr_db"] > m["int8_output_sqnr_db"]
    b8, b16 = edgeq.load(plain.path), edgeq.load(mixed.path)
    assert b16.graph.tensors["h"].dtype == "int16" and "QRequantize" not in {n.op for n in b16.graph.nodes}
    s8, s16 = sqnr_db(want, b8.run(x, backend=backend)["y"]), sqnr_db(want, b16.run(x, backend=backend)["y"])
    assert s16 > s8 + 10, (s8, s16)
    bits = {l["tensor"]: l["bits"] for l in mixed.report["layers"]}
    assert bits["h"] == 16 and bits["y"] == 8
    q = {"x": np.clip(np.rint(x / b16.graph.tensors["x"].scale[0]) + b16.graph.tensors["x"].zero_point[0],
                      -128, 127).astype(np.int8)}
    np.testing.assert_array_equal(b16.run_quantized(q, backend=backend)["y"],
                                  b16.run_quantized(q, backend="reference")["y"])


def test_budget_limits_the_choice(model_and_data, tmp_path):
    model, x, _ = model_and_data
    one = 8 * 6 * 6  # int8 bytes of one 8-channel 6x6 tensor: room for exactly one promotion
    r = edgeq.convert(model, device="host", output=tmp_path / "m.edgeq", calib=x, calib_method="minmax",
                      progress=False, mixed_precision="auto", int16_budget=str(one))
    m = r.report["mixed_precision"]
    assert m["budget_bytes"] == one and len(m["int16_tensors"]) == 1 and m["extra_bytes"] <= one, m
    r = edgeq.convert(model, device="host", output=tmp_path / "z.edgeq", calib=x, calib_method="minmax",
                      progress=False, mixed_precision="auto", int16_budget="0")
    assert r.report["mixed_precision"]["int16_tensors"] == []
    assert {t.dtype for t in edgeq.load(r.path).graph.tensors.values()} <= {"int8", "int32"}


def test_budget_spec():
    assert parse_budget("25%", 1000) == 250 and parse_budget("2K", 0) == 2048 and parse_budget("1M", 0) == 1 << 20
    with pytest.raises(InputError, match="int16-budget"):
        parse_budget("lots", 1000)


def test_cli_reports_int16_layers_and_rejects_bad_budget(model_and_data, tmp_path):
    model, x, _ = model_and_data
    (tmp_path / "m.onnx").write_bytes(model)
    np.save(tmp_path / "x.npy", x)
    base = [sys.executable, "-m", "edgeq.cli", "convert", str(tmp_path / "m.onnx"), "--device", "host", "--calib",
            str(tmp_path / "x.npy"), "--calib-method", "minmax", "--mixed-precision", "auto", "--int16-budget",
            "100%", "-o", str(tmp_path / "m.edgeq")]
    out = subprocess.run(base + ["--json"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout)["mixed_precision"]
    assert "h" in m["int16_tensors"] and all("gain_db" in c for c in m["candidates"])
    bad = subprocess.run(base + ["--int16-budget", "lots"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert bad.returncode == 2 and bad.stderr.startswith("edgeq: error: --int16-budget") \
        and bad.stderr.count("\n") == 1, bad.stderr
