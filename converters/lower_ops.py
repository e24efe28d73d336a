"""Float ops with no integer kernel of their own, rewritten into ops that have one (run by
``passes.run_passes`` after the pattern fusions, so LayerNorm and friends are already gone):

- Pad (constant 0 on H/W) -> folded into the next Conv or AveragePool(count_include_pad) when that
  is its only reader, else a depthwise 1x1 Conv with unit weights and those pads (a conv pads with the
  input's zero point, i.e. with real 0; unit weights at equal scales requantize exactly);
- BatchNormalization that folds into no producer -> a depthwise 1x1 Conv (weights = scale, bias = shift);
- ReduceMean / ReduceSum -> reduced axes moved last, an AveragePool over them, reshaped back (x count for
  the sum);
- Pow by a constant -> the unary PowerOf, so that it chains with its neighbours like Sqrt, Exp, Tanh, Neg,
  Reciprocal and Abs; whichever of these is left alone after ``fuse_unary_chains`` becomes a one-step
  Chain (one table) in :func:`unary_tables`;
- Sub / Div of two activations -> Add of a negated / Mul of a reciprocal table of the second operand; a
  scalar constant minus / over an activation -> one table.

Each becomes integer ops already in the registry, so every backend, the C export and the simulators run
them unchanged.
"""

from __future__ import annotations

import numpy as np

from edgeq.errors import UnsupportedOpError
from edgeq.ir import Graph, Node, Tensor

TABLE_OPS = ("Sqrt", "Exp", "Tanh", "Neg", "Reciprocal", "Abs", "PowerOf")


def _new(g: Graph, base: str) -> str:
    name = g.unique_name(base)
    g.tensors[name] = Tensor(name, (), "float32")
    return name


def _depthwise(g: Graph, node: Node, x: str, scale: np.ndarray, shift: np.ndarray, pads: list[int]) -> Node:
    c = scale.size
    w = g.add_const(g.unique_name(node.name + "_dw_w"), scale.reshape(c, 1, 1, 1).astype(np.float32))
    b = g.add_const(g.unique_name(node.name + "_dw_b"), shift.reshape(c).astype(np.float32))
    return Node("Conv", node.name, [x, w, b], list(node.outputs),
                dict(strides=[1, 1], pads=pads, dilations=[1, 1], group=c))


def _pad(g: Graph, node: Node) -> list[Node]:
    hw = node.attrs["pads"]  # [top, left, bottom, right]
    users = g.consumers().get(node.outputs[0], [])
    reader = users[0] if len(users) == 1 and node.outputs[0] not in g.outputs else None
    # A Conv pads with real 0 as well, and so does an AveragePool that counts the padding; a MaxPool does not.
    if reader is not None and reader.inputs[0] == node.outputs[0] and \
            (reader.op == "Conv" or reader.op == "AveragePool" and reader.attrs["count_include_pad"]):
        reader.attrs["pads"] = [p + q for p, q in zip(reader.attrs["pads"], hw)]
        reader.inputs[0] = node.inputs[0]
        reader.absorb(node)
        return []
    c = g.tensors[node.inputs[0]].shape[1]
    return [_depthwise(g, node, node.inputs[0], np.ones(c), np.zeros(c), hw)]


def _batchnorm(g: Graph, node: Node) -> list[Node]:
    shape = g.tensors[node.inputs[0]].shape
    if len(shape) != 4:
        raise UnsupportedOpError(f"BatchNormalization node '{node.name}': a standalone BatchNormalization needs a "
                                 f"4-D input (got {len(shape)}-D) or a Conv/Gemm before it to fold into")
    mul, add = g.consts[node.inputs[1]].reshape(-1), g.consts[node.inputs[2]].reshape(-1)
    return [_depthwise(g, node, node.inputs[0], mul, add, [0, 0, 0, 0])]


def _reduce(g: Graph, node: Node) -> list[Node]:
    shape = g.tensors[node.inputs[0]].shape
    rank = len(shape)
    axes = sorted({a % rank for a in node.attrs["axes"]})
    if 0 in axes:
        raise UnsupportedOpError(f"{node.op} node '{node.name}': reducing over the batch axis is not supported")
    kept = [a for a in range(1, rank) if a not in axes]
    count = int(np.prod([shape[a] for a in axes]))
    rest = int(np.prod([shape[a] for a in kept]))
    x, nodes = node.inputs[0], []
    if axes != list(range(rank - len(axes), rank)):
        moved = _new(g, node.name + "_moved")
        nodes.append(Node("Transpose", node.name + "_move", [x], [moved], {"perm": [0, *kept, *axes]}))
        x = moved
    flat, pooled = _new(g, node.name + "_rows"), _new(g, node.name + "_pooled")
    nodes += [Node("Reshape", node.name + "_rows", [x], [flat], {"shape": [shape[0], 1, rest, count]}),
              Node("AveragePool", node.name, [flat], [pooled],
                   dict(kernel=[1, count], strides=[1, 1], pads=[0, 0, 0, 0], count_include_pad=False))]
    out_shape = [1 if a in axes else shape[a] for a in range(rank)] if node.attrs.get("keepdims", 1) else \
        [shape[0]] + [shape[a] for a in kept]
    out_shape[0] = shape[0]
    if node.op == "ReduceSum":
        mean = _new(g, node.name + "_mean")
        nodes.append(Node("Reshape", node.name + "_back", [pooled], [mean], {"shape": out_shape}))
        c = g.add_const(g.unique_name(node.name + "_count"), np.array(count, np.float32))
        nodes.append(Node("Mul", node.name + "_sum", [mean, c], list(node.outputs), {}))
    else:
        nodes.append(Node("Reshape", node.name + "_back", [pooled], list(node.outputs), {"shape": out_shape}))
    return nodes


def _power(g: Graph, node: Node) -> list[Node]:
    p = g.consts.get(node.inputs[1])
    if p is None or p.size != 1:
        raise UnsupportedOpError(f"Pow node '{node.name}': the exponent must be a constant scalar")
    return [Node("PowerOf", node.name, node.inputs[:1], list(node.outputs), {"p": float(p.reshape(-1)[0])})]


def _binary(g: Graph, node: Node) -> list[Node]:
    inverse = {"op": "Neg" if node.op == "Sub" else "Reciprocal"}
    a = g.consts.get(node.inputs[0])
    if a is not None:
        if a.size != 1:
            raise UnsupportedOpError(f"{node.op} node '{node.name}': a constant tensor {node.op.lower()} an "
                                     "activation is not supported (a scalar is)")
        steps = [inverse, {"op": "Add" if node.op == "Sub" else "Mul", "c": float(a.reshape(-1)[0])}]
        return [Node("Chain", node.name, [node.inputs[1]], list(node.outputs), {"steps": steps})]
    b = _new(g, node.name + "_" + inverse["op"].lower())
    return [Node("Chain", node.name + "_" + inverse["op"].lower(), [node.inputs[1]], [b], {"steps": [inverse]}),
            Node("Add" if node.op == "Sub" else "Mul", node.name, [node.inputs[0], b], list(node.outputs),
                 dict(node.attrs))]


def lower_standalone_ops(g: Graph) -> bool:
    """Rewrite Pad, BatchNormalization, ReduceMean/ReduceSum, Pow and Sub/Div between activations as in the
    module docstring; returns whether anything changed (the caller then re-infers shapes)."""
    rules = {"Pad": _pad, "BatchNormalization": _batchnorm, "ReduceMean": _reduce, "ReduceSum": _reduce,
             "Pow": _power, "Sub": _binary, "Div": _binary}
    changed = False
    for node in list(g.nodes):
        rule = rules.get(node.op)
        if rule is None or node.op in ("Sub", "Div") and node.inputs[1] in g.consts:
            continue  # (a constant second operand became Add/Mul in passes.constant_sub_div)
        i = g.nodes.index(node)
        g.nodes[i: i + 1] = [made.absorb(node) for made in rule(g, node)]
        changed = True
    return changed


def unary_tables(g: Graph) -> None:
    """The unary functions ``fuse_unary_chains`` left alone become one-step Chains (one table each)."""
    for i, node in enumerate(g.nodes):
        if node.op in TABLE_OPS:
            g.nodes[i] = Node("Chain", node.name, node.inputs[:1], list(node.outputs),
                              {"steps": [{"op": node.op, **node.attrs}]}, node.source_ops)
