"""Ops outside the fused patterns (converters/lower_ops.py): Pad, Split, standalone BatchNormalization,
ReduceMean/ReduceSum over any axes, Sub/Div between activations, Pow by a constant, Sqrt, Exp, Tanh, Neg,
Reciprocal, Abs. Each model is compared with onnxruntime (float) and run bit-exactly on every backend.
"""

from __future__ import annotations

import subprocess

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, shape_inference

import edgeq
from edgeq.converters.pipeline import sqnr_db
from edgeq.runtimes.executor import quantize

C = 4


def _model(nodes, inits: dict, outputs: list[str], x_shape=(C, 10, 12), opset: int = 13) -> bytes:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])], [],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    known = {v.name: v for v in model.graph.value_info}
    model.graph.output.extend(known[o] for o in outputs)
    return model.SerializeToString()


def _conv(rng, name: str, x: str, y: str, oc: int = C, ic: int = C, k: int = 3, pads=(1, 1, 1, 1)) -> tuple:
    w = (rng.standard_normal((oc, ic, k, k)) / np.sqrt(ic * k * k)).astype(np.float32)
    return (helper.make_node("Conv", [x, name + "_w"], [y], name=name, pads=list(pads)), {name + "_w": w})


def _case(name: str, rng: np.random.Generator) -> bytes:
    """A model exercising one group of ops."""
    n, inits = [], {}

    def add(node_and_inits):
        node, more = node_and_inits
        n.append(node)
        inits.update(more)

    if name == "pad":  # folded into a Conv; before a MaxPool it becomes a depthwise conv
        inits["p"] = np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)
        n.append(helper.make_node("Pad", ["x", "p"], ["xp"]))
        add(_conv(rng, "c1", "xp", "y1", pads=(0, 0, 0, 0)))
        n += [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Pad", ["r", "p"], ["rp"]),
              helper.make_node("MaxPool", ["rp"], ["y2"], kernel_shape=[3, 3])]
        return _model(n, inits, ["y1", "y2"])
    if name == "split":
        inits["s"] = np.array([1, 3], np.int64)
        add(_conv(rng, "c1", "x", "h"))
        n += [helper.make_node("Split", ["h", "s"], ["a", "b"], axis=1),
              helper.make_node("Split", ["x"], ["u", "v"], axis=3),
              helper.make_node("Add", ["u", "v"], ["y3"])]
        add(_conv(rng, "c2", "b", "y2", oc=2, ic=3))
        n.append(helper.make_node("Relu", ["a"], ["y1"]))
        return _model(n, inits, ["y1", "y2", "y3"])
    if name == "batchnorm":  # after an Add of two activations: nothing to fold it into
        add(_conv(rng, "c1", "x", "h"))
        n.append(helper.make_node("Add", ["h", "x"], ["s"]))
        inits.update({"g": rng.uniform(0.5, 2, C).astype(np.float32), "b": rng.standard_normal(C).astype(np.float32),
                      "m": rng.standard_normal(C).astype(np.float32), "v": rng.uniform(0.5, 2, C).astype(np.float32)})
        n += [helper.make_node("BatchNormalization", ["s", "g", "b", "m", "v"], ["bn"]),
              helper.make_node("Relu", ["bn"], ["y"])]
        return _model(n, inits, ["y"])
    if name == "reduce":  # squeeze-excite style mean, a channel mean and a sum over one axis
        add(_conv(rng, "c1", "x", "h"))
        n += [helper.make_node("ReduceMean", ["h"], ["m"], axes=[2, 3], keepdims=1),
              helper.make_node("Sigmoid", ["m"], ["gate"]),
              helper.make_node("Mul", ["h", "gate"], ["y1"]),
              helper.make_node("ReduceMean", ["h"], ["y2"], axes=[1], keepdims=0),
              helper.make_node("ReduceSum", ["x", "ax"], ["y3"], keepdims=1)]
        inits["ax"] = np.array([2], np.int64)
        return _model(n, inits, ["y1", "y2", "y3"])
    if name == "binary":  # differences and ratios of two activations, and a scalar minus an activation
        add(_conv(rng, "c1", "x", "h"))
        inits.update({"one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32)})
        n += [helper.make_node("Sigmoid", ["x"], ["sx"]),
              helper.make_node("Add", ["sx", "half"], ["den"]),
              helper.make_node("Sub", ["h", "x"], ["y1"]),
              helper.make_node("Div", ["h", "den"], ["y2"]),
              helper.make_node("Sub", ["one", "sx"], ["y3"])]
        return _model(n, inits, ["y1", "y2", "y3"])
    if name == "unary":
        add(_conv(rng, "c1", "x", "h"))
        inits.update({"three": np.array(3.0, np.float32), "eps": np.array(0.25, np.float32)})
        n += [helper.make_node("Pow", ["h", "three"], ["y1"]),
              helper.make_node("Abs", ["h"], ["a"]), helper.make_node("Sqrt", ["a"], ["y2"]),
              helper.make_node("Tanh", ["h"], ["y3"]),
              helper.make_node("Neg", ["x"], ["nx"]), helper.make_node("Exp", ["nx"], ["e"]),
              helper.make_node("Add", ["e", "eps"], ["ep"]), helper.make_node("Reciprocal", ["ep"], ["y4"])]
        return _model(n, inits, ["y1", "y2", "y3", "y4"])
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["pad", "split", "batchnorm", "reduce", "binary", "unary"])
def test_standalone_ops_integer_only_close_to_onnxruntime_and_bit_exact(name, tmp_path, backend):
    rng = np.random.default_rng(7)
    model = _case(name, rng)
    x = rng.standard_normal((24, C, 10, 12)).astype(np.float32)
    r = edgeq.convert(model, device="host", output=tmp_path / "m.edgeq", calib=x[:16], progress=False)
    b = edgeq.load(r.path)
    assert all(nd.op.startswith("Q") for nd in b.graph.nodes), {nd.op for nd in b.graph.nodes}
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    test = x[16:]
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": test})))
    q = {"x": quantize(test, b.graph.tensors["x"])}
    ref = b.run_quantized(q, backend="reference")
    got = b.run_quantized(q, backend=backend)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])
    out = b.run(test, backend=backend)
    for k, v in want.items():
        assert out[k].shape == v.shape, k
        assert sqnr_db(v, out[k]) > 25, (k, sqnr_db(v, out[k]))


def test_pad_folds_into_the_following_conv(tmp_path):
    model = _case("pad", np.random.default_rng(0))
    b = edgeq.load(edgeq.convert(model, device="host", output=tmp_path / "m.edgeq",
                                 calib=np.random.default_rng(1).standard_normal((8, C, 10, 12)).astype(np.float32),
                                 progress=False).path)
    convs = [nd for nd in b.graph.nodes if nd.op == "QConv"]
    # c1 took the pads; the MaxPool's Pad became one depthwise conv (a MaxPool pads with -inf, not 0)
    assert len(convs) == 2 and sorted(len(b.graph.tensors[c.inputs[1]].shape) and
                                      b.graph.tensors[c.inputs[1]].shape[1] for c in convs) == [1, C]


@pytest.mark.parametrize("node, why", [
    (helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect"), "only constant padding"),
    (helper.make_node("Pad", ["x", "p1"], ["y"]), "only non-negative padding of H and W"),
    (helper.make_node("ReduceMean", ["x"], ["y"], axes=[0]), "batch axis"),
])
def test_unsupported_forms_are_one_line_errors(node, why, tmp_path):
    inits = {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "p1": np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64)}
    path = tmp_path / "m.onnx"
    path.write_bytes(_model([node], {k: v for k, v in inits.items() if k in node.input}, ["y"]))
    np.save(tmp_path / "cal.npy", np.zeros((2, C, 10, 12), np.float32))
    out = subprocess.run(["edgeq", "convert", str(path), "--device", "host", "--calib", str(tmp_path / "cal.npy"),
                          "-o", str(tmp_path / "m.edgeq")], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and why in out.stderr, out.stderr
    assert not (tmp_path / "m.edgeq").exists()
