"""Benchmark models built here (random weights; speed does not depend on training): a MobileNetV2-style
net at 3x96x96 with depthwise/pointwise convs, ReLU6 and residual Adds."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mobilenet_v2_like(res: int = 96, width: int = 16, seed: int = 0) -> onnx.ModelProto:
    """Stem conv s2 -> 6 inverted-residual blocks (expand 1x1, dw 3x3, project 1x1) -> GAP -> FC 10."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    count = [0]

    def conv(x, cin, cout, k, stride=1, group=1, act=True):
        count[0] += 1
        name = f"conv{count[0]}"
        fan_in = cin // group * k * k
        w = (rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2 / fan_in)).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, name + "_w"),
                      numpy_helper.from_array((rng.standard_normal(cout) * 0.05).astype(np.float32), name + "_b")])
        nodes.append(helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], name=name, strides=[stride] * 2,
                                      pads=[k // 2] * 4, group=group))
        if not act:
            return name
        nodes.append(helper.make_node("Clip", [name, "zero", "six"], [name + "_r6"], name=name + "_r6"))
        return name + "_r6"

    inits += [numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.float32(6), "six")]
    x = conv("input", 3, width, 3, stride=2)
    c = width
    for i, (cout, stride) in enumerate([(16, 1), (24, 2), (24, 1), (32, 2), (32, 1), (64, 2)]):
        h = conv(x, c, c * 4, 1)
        h = conv(h, c * 4, c * 4, 3, stride=stride, group=c * 4)
        h = conv(h, c * 4, cout, 1, act=False)
        if stride == 1 and cout == c:
            nodes.append(helper.make_node("Add", [x, h], [f"res{i}"], name=f"res{i}"))
            h = f"res{i}"
        x, c = h, cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat"))
    inits += [numpy_helper.from_array((rng.standard_normal((10, c)) * 0.1).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(nodes, "mbv2ish", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, res, res])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
