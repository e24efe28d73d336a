"""Graph passes on the float graph, run in this order by ``run_passes``:
fold constants -> infer shapes -> constant Sub/Div as Add/Mul -> HardSwish patterns -> fold BatchNorm ->
fuse clamp activations -> drop dead nodes.
"""

from __future__ import annotations

import numpy as np

from edgeq.errors import ModelError
from edgeq.ir import Graph, Node, Tensor
from .float_ops import FLOAT_OPS, run_float

FUSABLE_PRODUCERS = ("Conv", "FullyConnected", "Add")
CLAMP_ACTIVATIONS = ("Relu", "Clip")


def fold_constants(g: Graph) -> None:
    """Evaluate every node whose inputs are all constants (shape arithmetic and the like)."""
    kept = []
    for node in g.nodes:
        if all(i in g.consts for i in node.inputs if i):
            out = FLOAT_OPS[node.op](node, [g.consts[i] for i in node.inputs if i])
            g.add_const(node.outputs[0], np.asarray(out))
        else:
            kept.append(node)
    g.nodes = kept


def infer_shapes(g: Graph) -> None:
    """Run the float graph once at batch 1 on zeros to record every tensor's shape and dtype."""
    values = dict(g.consts)
    values.update({n: np.zeros(g.tensors[n].shape, dtype=np.float32) for n in g.inputs})
    for node in g.nodes:
        try:
            run_float([node], values)
        except Exception as e:  # noqa: BLE001 - numpy's error names the mismatch
            raise ModelError(f"{node.op} node '{node.name}' cannot run on its input shapes: {e}") from None
        out = values[node.outputs[0]]
        g.tensors[node.outputs[0]] = Tensor(node.outputs[0], tuple(out.shape), out.dtype.name)
        if node.op == "Reshape" and len(node.inputs) > 1:
            node.inputs = node.inputs[:1]
            node.attrs["shape"] = list(out.shape)
        if g.dynamic_batch and out.ndim and out.shape[0] != 1:
            raise ModelError(f"{node.op} node '{node.name}' moves the batch dimension (output shape {out.shape}); "
                             "export the model with a static batch of 1")


def _single_consumer(g: Graph, tensor: str) -> Node | None:
    users = g.consumers().get(tensor, [])
    return users[0] if len(users) == 1 and tensor not in g.outputs else None


def _replace_tensor(g: Graph, old: str, new: str) -> None:
    for node in g.nodes:
        node.inputs = [new if i == old else i for i in node.inputs]
    g.outputs = [new if o == old else o for o in g.outputs]


def fold_batchnorm(g: Graph) -> None:
    """Fold BatchNormalization into the Conv/FullyConnected feeding it; otherwise make it Mul + Add."""
    producers = g.producers()
    for bn in [n for n in g.nodes if n.op == "BatchNormalization"]:
        x, mul_name, add_name = bn.inputs
        mul, add = g.consts[mul_name].reshape(-1), g.consts[add_name].reshape(-1)
        prod = producers.get(x)
        if prod is not None and prod.op in ("Conv", "FullyConnected") and _single_consumer(g, x) is bn \
                and "act" not in prod.attrs:
            w = g.consts[prod.inputs[1]]
            b = g.consts[prod.inputs[2]] if len(prod.inputs) > 2 and prod.inputs[2] else np.zeros(w.shape[0], np.float32)
            wname = g.add_const(g.unique_name(prod.name + "_wbn"), (w * mul.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32))
            bname = g.add_const(g.unique_name(prod.name + "_bbn"), (b * mul + add).astype(np.float32))
            prod.inputs = [prod.inputs[0], wname, bname]
            prod.outputs = bn.outputs
            g.nodes.remove(bn)
        else:
            mid = g.unique_name(bn.name + "_scaled")
            g.tensors[mid] = Tensor(mid, g.tensors[x].shape, "float32")
            i = g.nodes.index(bn)
            g.nodes[i: i + 1] = [Node("Mul", bn.name + "_mul", [x, mul_name], [mid]),
                                 Node("Add", bn.name + "_add", [mid, add_name], bn.outputs)]


def fuse_activations(g: Graph) -> None:
    """Fold Relu/Relu6/Clip into the Conv/FullyConnected/Add producing their input (a clamp after requant)."""
    producers = g.producers()
    for act in [n for n in g.nodes if n.op in CLAMP_ACTIVATIONS]:
        prod = producers.get(act.inputs[0])
        if prod is None or prod.op not in FUSABLE_PRODUCERS or "act" in prod.attrs \
                or _single_consumer(g, act.inputs[0]) is not act:
            continue
        prod.attrs["act"] = {"op": act.op, **act.attrs}
        prod.outputs = act.outputs
        producers[act.outputs[0]] = prod
        g.nodes.remove(act)


def constant_sub_div(g: Graph) -> None:
    """x - c becomes x + (-c) and x / c becomes x * (1/c): the integer ops then cover them (HardSwish
    written as x * relu6(x + 3) / 6, normalisation constants)."""
    for i, node in enumerate(g.nodes):
        if node.op not in ("Sub", "Div") or len(node.inputs) != 2 or node.inputs[1] not in g.consts:
            continue
        c = np.asarray(g.consts[node.inputs[1]], dtype=np.float64)
        if node.op == "Div" and (not np.all(np.isfinite(c)) or np.any(c == 0)):
            continue
        value = (-c if node.op == "Sub" else 1.0 / c).astype(np.float32)
        name = g.add_const(g.unique_name(node.inputs[1] + ("_neg" if node.op == "Sub" else "_recip")), value)
        g.nodes[i] = Node("Add" if node.op == "Sub" else "Mul", node.name, [node.inputs[0], name], node.outputs)


def _scalar(g: Graph, name: str) -> float | None:
    if name not in g.consts or g.consts[name].size != 1:
        return None
    return float(np.asarray(g.consts[name]).reshape(()))


def fuse_hardswish(g: Graph) -> None:
    """x * clip(x + 3, 0, 6) / 6, as exporters often write HardSwish, becomes one HardSwish (one table)."""
    producers = g.producers()
    for scale in [n for n in g.nodes if n.op == "Mul"]:
        prod_mul = producers.get(scale.inputs[0])
        if not np.isclose(_scalar(g, scale.inputs[1]) or 0.0, 1 / 6) or prod_mul is None or prod_mul.op != "Mul":
            continue
        for x, r in (prod_mul.inputs, prod_mul.inputs[::-1]):
            clip, add = producers.get(r), None
            if clip is not None and clip.op == "Clip":
                add = producers.get(clip.inputs[0])
            if add is None or add.op != "Add" or add.inputs[0] != x or _scalar(g, add.inputs[1]) != 3.0:
                continue
            inner = (add.outputs[0], clip.outputs[0], prod_mul.outputs[0])
            if (clip.attrs.get("min"), clip.attrs.get("max")) != (0.0, 6.0) \
                    or any(_single_consumer(g, t) is None for t in inner):
                continue
            i = g.nodes.index(scale)
            g.nodes[i] = Node("HardSwish", scale.name, [x], scale.outputs)
            for dead in (add, clip, prod_mul):
                g.nodes.remove(dead)
            break


def run_passes(g: Graph) -> Graph:
    """The standard float pipeline; returns the same graph, rewritten."""
    fold_constants(g)
    infer_shapes(g)
    constant_sub_div(g)
    fuse_hardswish(g)
    fold_batchnorm(g)
    fuse_activations(g)
    g.prune()
    return g
