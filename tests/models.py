"""Small ONNX models built in the tests, covering every op and attribute form the importer accepts."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def zoo_model(opset: int = 17, seed: int = 0, batch: int | str = "N") -> onnx.ModelProto:
    """A conv net using Conv (SAME, dilation, groups), standalone BatchNorm, every activation, both pools
    (ceil_mode), Concat, Add/Mul with constants, a Shape->Gather->Concat->Reshape flatten, Gemm, MatMul
    and Softmax, with a dynamic batch dimension."""
    rng = np.random.default_rng(seed)
    w = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    nodes, inits = [], []

    def conv(name, x, cin, cout, k, **kw):
        inits.extend([_init(name + "_w", w(cout, cin // kw.get("group", 1), k, k)), _init(name + "_b", w(cout))])
        nodes.append(helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], name=name, **kw))
        return name

    def clip(name, x, lo, hi):
        if opset >= 11:
            inits.extend([_init(name + "_lo", np.float32(lo)), _init(name + "_hi", np.float32(hi))])
            nodes.append(helper.make_node("Clip", [x, name + "_lo", name + "_hi"], [name], name=name))
        else:
            nodes.append(helper.make_node("Clip", [x], [name], name=name, min=lo, max=hi))
        return name

    x = conv("c1", "x", 3, 8, 3, auto_pad="SAME_UPPER", strides=[2, 2])
    nodes.append(helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn"))
    inits += [_init("bn_s", 1 + w(8) * 0.1), _init("bn_b", w(8)), _init("bn_m", w(8)), _init("bn_v", 1 + np.abs(w(8)))]
    nodes.append(helper.make_node("Relu", ["bn"], ["r1"], name="r1"))
    x = conv("dw", "r1", 8, 8, 3, group=8, pads=[2, 2, 2, 2], dilations=[2, 2])
    x = clip("relu6", x, 0.0, 6.0)
    a = conv("pa", x, 8, 6, 1)
    nodes.append(helper.make_node("HardSwish", [a], ["hs"], name="hs") if opset >= 14 else
                 helper.make_node("Sigmoid", [a], ["hs"], name="hs"))
    b = conv("pb", x, 8, 4, 3, pads=[1, 1, 1, 1])
    nodes.append(helper.make_node("HardSigmoid", [b], ["hsig"], name="hsig", alpha=0.25, beta=0.4))
    nodes.append(helper.make_node("Concat", ["hs", "hsig"], ["cat"], name="cat", axis=1))
    inits.append(_init("addc", w(10, 1, 1)))
    nodes.append(helper.make_node("Add", ["cat", "addc"], ["add"], name="add"))
    inits.append(_init("mulc", np.float32(0.75)))
    nodes.append(helper.make_node("Mul", ["add", "mulc"], ["mul"], name="mul"))
    nodes.append(helper.make_node("MaxPool", ["mul"], ["mp"], name="mp", kernel_shape=[3, 3], strides=[2, 2],
                                  ceil_mode=1))
    nodes.append(helper.make_node("AveragePool", ["mp"], ["ap"], name="ap", kernel_shape=[2, 2], pads=[1, 1, 0, 0],
                                  count_include_pad=0))
    nodes.append(helper.make_node("Sigmoid", ["ap"], ["sg"], name="sg"))
    nodes.append(helper.make_node("Add", ["ap", "sg"], ["res"], name="res"))
    nodes.append(helper.make_node("Shape", ["res"], ["shp"], name="shp"))
    inits += [_init("zero", np.array(0, dtype=np.int64)), _init("minus1", np.array([-1], dtype=np.int64))]
    nodes.append(helper.make_node("Gather", ["shp", "zero"], ["n"], name="gather", axis=0))
    nodes.append(helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"], name="unsq") if opset >= 13 else
                 helper.make_node("Unsqueeze", ["n"], ["n1"], name="unsq", axes=[0]))
    if opset >= 13:
        inits.append(_init("ax0", np.array([0], dtype=np.int64)))
    nodes.append(helper.make_node("Concat", ["n1", "minus1"], ["newshape"], name="shape_cat", axis=0))
    nodes.append(helper.make_node("Reshape", ["res", "newshape"], ["flat"], name="flatten"))
    nodes.append(helper.make_node("Gemm", ["flat", "g_w", "g_b"], ["g"], name="gemm", alpha=0.5, beta=2.0))
    inits += [_init("g_w", w(300, 16) * 0.2), _init("g_b", w(16))]
    nodes.append(helper.make_node("Relu", ["g"], ["gr"], name="gr"))
    nodes.append(helper.make_node("MatMul", ["gr", "m_w"], ["logits"], name="matmul"))
    inits.append(_init("m_w", w(16, 5)))
    nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=-1 if opset >= 13 else 1))
    graph = helper.make_graph(nodes, "zoo", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 23, 21])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, 5]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def single_op_model(op: str, **attrs) -> onnx.ModelProto:
    """x [1, 4] -> op -> y: for unsupported-op tests."""
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], name="bad_node", **attrs)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def conv_chain_model(seed: int) -> onnx.ModelProto:
    """A random conv net for patch-based inference: a chain of convs (any kernel, stride, dilation,
    padding, depthwise or not), pools and activations with residual Adds where shapes allow, then
    global pooling and a classifier; input sizes are random and not square."""
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(12, 30)), int(rng.integers(12, 30))
    first = prev = (h, w)
    nodes, inits, c, x = [], [], 3, "x"
    for i in range(int(rng.integers(2, 7))):
        kind = rng.choice(["conv", "conv", "dw", "maxpool", "avgpool", "hardswish"])
        name = f"l{i}"
        k = int(rng.integers(1, 5))
        stride, dil = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        pads = [int(rng.integers(0, k)) for _ in range(4)]
        extent = (k - 1) * dil + 1
        if kind in ("conv", "dw") and min(h + pads[0] + pads[2], w + pads[1] + pads[3]) >= extent:
            cout = c if kind == "dw" else int(rng.integers(2, 9))
            group = c if kind == "dw" else 1
            inits += [_init(name + "_w", (rng.standard_normal((cout, c // group, k, k)) * 0.4).astype(np.float32)),
                      _init(name + "_b", (rng.standard_normal(cout) * 0.1).astype(np.float32))]
            nodes.append(helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], name=name, pads=pads,
                                          strides=[stride] * 2, dilations=[dil] * 2, group=group))
            h = (h + pads[0] + pads[2] - extent) // stride + 1
            w = (w + pads[1] + pads[3] - extent) // stride + 1
            if stride == 1 and cout == c and rng.random() < 0.5 and (h, w) == prev:
                nodes.append(helper.make_node("Add", [x, name], [name + "_res"], name=name + "_res"))
                name += "_res"
            c = cout
        elif kind in ("maxpool", "avgpool") and min(h, w) >= k:
            pads = [min(p, k - 1) for p in pads]
            op = "MaxPool" if kind == "maxpool" else "AveragePool"
            extra = {"count_include_pad": int(rng.integers(0, 2))} if op == "AveragePool" else {}
            nodes.append(helper.make_node(op, [x], [name], name=name, kernel_shape=[k, k], strides=[stride] * 2,
                                          pads=pads, **extra))
            h = (h + pads[0] + pads[2] - k) // stride + 1
            w = (w + pads[1] + pads[3] - k) // stride + 1
        else:
            nodes.append(helper.make_node("HardSwish" if kind == "hardswish" else "Relu", [x], [name], name=name))
        nodes.append(helper.make_node("Relu", [name], [name + "_r"], name=name + "_r"))
        x, prev = name + "_r", (h, w)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat"))
    inits += [_init("fc_w", (rng.standard_normal((c, 4)) * 0.5).astype(np.float32))]
    nodes.append(helper.make_node("MatMul", ["flat", "fc_w"], ["y"], name="fc"))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, *first])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
