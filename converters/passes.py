"""Graph passes on the float graph, run in this order by ``run_passes``:
fold constants -> batch-moving transpose+slice rewritten -> infer shapes -> float casts dropped ->
LayerNorm and Swish patterns -> constant Sub/Div as Add/Mul -> HardSwish patterns -> scales and bias Adds
folded into weights -> fold BatchNorm -> standalone Pad/BatchNorm/Reduce/Pow/Sub/Div lowered to ops with
integer kernels (lower_ops.py) -> scales and biases again -> fuse clamp activations -> unary chains as one
table, lone unary functions as one table -> non-overlapping ConvTranspose as 1x1 Conv + pixel shuffle -> large sequence Linear
layers as 1x1 Conv -> drop dead nodes.
"""

from __future__ import annotations

import numpy as np

from edgeq.errors import ModelError
from edgeq.ir import Graph, Node, Tensor, merged_sources
from .float_ops import ACTIVATIONS, FLOAT_OPS, run_shapes
from .lower_ops import lower_standalone_ops, unary_tables

FUSABLE_PRODUCERS = ("Conv", "ConvTranspose", "FullyConnected", "Add")
WEIGHTED = ("Conv", "ConvTranspose", "FullyConnected")
SEQUENCE_CONV_MIN_MACS = 1 << 20  # smaller sequence Linear layers stay one QMatMul
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
    """Record every tensor's shape and dtype from one shape run of the graph at batch 1 on zeros
    (float_ops.run_shapes: convolutions and the like by shape rules, the cheap ops evaluated)."""
    values = dict(g.consts)
    values.update({n: np.zeros(g.tensors[n].shape, dtype=np.float32) for n in g.inputs})
    for node in g.nodes:
        try:
            run_shapes([node], values)
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
        if prod is not None and prod.op in WEIGHTED and _single_consumer(g, x) is bn \
                and "act" not in prod.attrs:
            w = g.consts[prod.inputs[1]]
            b = g.consts[prod.inputs[2]] if len(prod.inputs) > 2 and prod.inputs[2] else np.zeros(w.shape[0], np.float32)
            wname = g.add_const(g.unique_name(prod.name + "_wbn"), (w * mul.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32))
            bname = g.add_const(g.unique_name(prod.name + "_bbn"), (b * mul + add).astype(np.float32))
            prod.inputs = [prod.inputs[0], wname, bname]
            prod.outputs = bn.outputs
            prod.absorb(bn)
            g.nodes.remove(bn)
        else:
            mid = g.unique_name(bn.name + "_scaled")
            g.tensors[mid] = Tensor(mid, g.tensors[x].shape, "float32")
            i = g.nodes.index(bn)
            g.nodes[i: i + 1] = [Node("Mul", bn.name + "_mul", [x, mul_name], [mid]).absorb(bn),
                                 Node("Add", bn.name + "_add", [mid, add_name], bn.outputs).absorb(bn)]


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
        prod.absorb(act)
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
        g.nodes[i] = Node("Add" if node.op == "Sub" else "Mul", node.name, [node.inputs[0], name], node.outputs,
                          source_ops=node.source_ops)


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
            g.nodes[i] = Node("HardSwish", scale.name, [x], scale.outputs,
                              source_ops=merged_sources(add, clip, prod_mul, scale))
            for dead in (add, clip, prod_mul):
                g.nodes.remove(dead)
            break


def _const_input(g: Graph, node: Node) -> tuple[str, np.ndarray] | None:
    """(activation input, constant value) of a binary node with exactly one constant operand."""
    a, b = node.inputs[:2]
    if (a in g.consts) == (b in g.consts):
        return None
    return (b, g.consts[a]) if a in g.consts else (a, g.consts[b])


def split_batch_transposes(g: Graph) -> None:
    """Transpose(perm[0] != 0) -> Slice(axis 0, one index) -> Squeeze(0), as exporters write the q/k/v
    split of attention, becomes Slice on the source axis -> Squeeze -> Transpose: the batch stays first."""
    consumers = g.consumers()
    for tr in [n for n in g.nodes if n.op == "Transpose" and n.attrs["perm"][0] != 0]:
        users = consumers.get(tr.outputs[0], [])
        perm = tr.attrs["perm"]
        plans = []
        for sl in users:
            sq = consumers.get(sl.outputs[0], [])
            if sl.op != "Slice" or len(sq) != 1 or sq[0].op != "Squeeze" or sl.outputs[0] in g.outputs:
                break
            vals = [g.consts.get(i) for i in sl.inputs[1:]]
            axes = vals[2] if len(vals) > 2 else np.array([0])
            steps = vals[3] if len(vals) > 3 else np.array([1])
            sq_axes = sq[0].attrs.get("axes", g.consts[sq[0].inputs[1]].tolist() if len(sq[0].inputs) > 1 else None)
            if any(v is None for v in vals) or list(np.asarray(axes).reshape(-1)) != [0] or \
                    list(np.asarray(steps).reshape(-1)) != [1] or sq_axes != [0]:
                break
            start, end = int(vals[0].reshape(-1)[0]), int(vals[1].reshape(-1)[0])
            if end != start + 1 or start < 0:
                break
            plans.append((sl, sq[0], start))
        else:
            src = perm[0]
            rest = [p - (p > src) for p in perm[1:]]
            for sl, sq, start in plans:
                base = sl.name
                consts = [g.add_const(g.unique_name(base + k), np.array(v, dtype=np.int64))
                          for k, v in (("_starts", [start]), ("_ends", [start + 1]), ("_axes", [src]))]
                picked, squeezed = g.unique_name(base + "_picked"), g.unique_name(base + "_squeezed")
                made = merged_sources(tr, sl, sq)
                new = [Node("Slice", base, [tr.inputs[0], *consts], [picked], source_ops=made),
                       Node("Squeeze", base + "_squeeze", [picked], [squeezed], {"axes": [src]}, made),
                       Node("Transpose", base + "_transpose", [squeezed], list(sq.outputs), {"perm": rest}, made)]
                i = g.nodes.index(sl)
                g.nodes[i: i + 1] = new
                g.nodes.remove(sq)
            g.nodes.remove(tr)


def drop_float_casts(g: Graph) -> None:
    """Cast float32 -> float32 on activations (exporters' shape bookkeeping) is the identity."""
    for node in [n for n in g.nodes if n.op == "Cast"]:
        src = node.inputs[0]
        if node.attrs["to"] == "float32" and g.tensors[src].dtype == "float32":
            _replace_tensor(g, node.outputs[0], src)
            g.nodes.remove(node)


def fuse_swish(g: Graph) -> None:
    """x * Sigmoid(x) and x * Sigmoid(alpha * x) become one Swish (a single table once quantized)."""
    producers = g.producers()
    for mul in [n for n in g.nodes if n.op == "Mul" and len(n.inputs) == 2]:
        for x, s in (mul.inputs, mul.inputs[::-1]):
            sig = producers.get(s)
            if sig is None or sig.op != "Sigmoid" or x in g.consts:
                continue
            inner, alpha = producers.get(sig.inputs[0]), 1.0
            if sig.inputs[0] != x:
                pair = _const_input(g, inner) if inner is not None and inner.op == "Mul" else None
                if pair is None or pair[0] != x or pair[1].size != 1:
                    continue
                alpha = float(pair[1].reshape(-1)[0])
            dead = [sig] + ([inner] if sig.inputs[0] != x else [])
            if any(_single_consumer(g, d.outputs[0]) is None for d in dead):
                continue
            g.nodes[g.nodes.index(mul)] = Node("Swish", mul.name, [x], list(mul.outputs), {"alpha": alpha},
                                               merged_sources(*dead, mul))
            for d in dead:
                g.nodes.remove(d)
            break


def fuse_layer_norm(g: Graph) -> None:
    """ReduceMean -> Sub -> Pow 2 -> ReduceMean -> Add eps -> Sqrt -> Div [-> Mul gamma] [-> Add beta] over
    the last axis (LayerNorm as exporters write it) becomes one LayerNorm node."""
    producers = g.producers()

    def last_axis_mean(node: Node | None) -> bool:
        if node is None or node.op != "ReduceMean" or not node.attrs["keepdims"]:
            return False
        rank = len(g.tensors[node.inputs[0]].shape)
        return [a % rank for a in node.attrs["axes"]] == [rank - 1]

    for div in [n for n in g.nodes if n.op == "Div"]:
        sub, sqrt = producers.get(div.inputs[0]), producers.get(div.inputs[1])
        if sub is None or sub.op != "Sub" or sqrt is None or sqrt.op != "Sqrt":
            continue
        mean = producers.get(sub.inputs[1])
        add_eps = producers.get(sqrt.inputs[0])
        pair = _const_input(g, add_eps) if add_eps is not None and add_eps.op == "Add" else None
        var = producers.get(pair[0]) if pair else None
        pw = producers.get(var.inputs[0]) if last_axis_mean(var) else None
        if not (last_axis_mean(mean) and mean.inputs[0] == sub.inputs[0] and pw is not None and pw.op == "Pow"
                and pw.inputs[0] == sub.outputs[0] and _scalar(g, pw.inputs[1]) == 2.0 and pair[1].size == 1):
            continue
        inner = [mean, sub, pw, var, add_eps, sqrt]
        if any(_single_consumer(g, n.outputs[0]) is None for n in (pw, var, add_eps, sqrt, mean)) \
                or len(g.consumers().get(sub.outputs[0], [])) != 2:
            continue
        cols = g.tensors[sub.inputs[0]].shape[-1]
        gamma, beta, last = np.ones(cols, np.float32), np.zeros(cols, np.float32), div
        for op, target in (("Mul", "gamma"), ("Add", "beta")):
            users = g.consumers().get(last.outputs[0], [])
            nxt = users[0] if len(users) == 1 and last.outputs[0] not in g.outputs else None
            c = _const_input(g, nxt) if nxt is not None and nxt.op == op else None
            if c is None or c[0] != last.outputs[0] or c[1].size not in (1, cols) or \
                    c[1].reshape(-1).size != c[1].size or (c[1].ndim and c[1].shape[-1] != c[1].size):
                break
            if target == "gamma":
                gamma = np.broadcast_to(c[1].reshape(-1), (cols,)).astype(np.float32)
            else:
                beta = np.broadcast_to(c[1].reshape(-1), (cols,)).astype(np.float32)
            inner.append(last)
            last = nxt
        names = [g.add_const(g.unique_name(div.name + "_gamma"), gamma),
                 g.add_const(g.unique_name(div.name + "_beta"), beta)]
        ln = Node("LayerNorm", div.name, [sub.inputs[0], *names], list(last.outputs),
                  {"eps": float(pair[1].reshape(-1)[0])}, merged_sources(*inner, last))
        g.nodes[g.nodes.index(last)] = ln
        for n in inner:
            if n is not last and n in g.nodes:
                g.nodes.remove(n)
        producers = g.producers()


def _channel_vector(c: np.ndarray, oc: int, channel_axis: int) -> np.ndarray | None:
    """A constant operand as one value per output channel (scalar broadcast), or None if it is not one."""
    if c.size == 1:
        return np.full(oc, float(c.reshape(-1)[0]), np.float32)
    if c.size == oc and c.ndim >= -channel_axis and c.shape[channel_axis] == oc:
        return c.reshape(-1).astype(np.float32)
    return None


def fold_bias_adds(g: Graph) -> None:
    """Conv/ConvTranspose/FullyConnected followed by an Add of a scalar or per-channel constant: the
    constant joins the bias (MatMul + Add as exporters write Linear layers)."""
    producers = g.producers()
    for add in [n for n in g.nodes if n.op == "Add"]:
        pair = _const_input(g, add)
        prod = producers.get(pair[0]) if pair else None
        if prod is None or prod.op not in WEIGHTED or "act" in prod.attrs \
                or _single_consumer(g, pair[0]) is not add:
            continue
        oc = g.consts[prod.inputs[1]].shape[0]
        extra = _channel_vector(pair[1], oc, -1 if prod.op == "FullyConnected" else -3)
        if extra is None or pair[1].ndim > len(g.tensors[add.outputs[0]].shape):
            continue
        b = g.consts[prod.inputs[2]] if len(prod.inputs) > 2 and prod.inputs[2] else np.zeros(oc, np.float32)
        bname = g.add_const(g.unique_name(prod.name + "_bias"), (b + extra).astype(np.float32))
        prod.inputs = [prod.inputs[0], prod.inputs[1], bname]
        prod.outputs = list(add.outputs)
        prod.absorb(add)
        producers[add.outputs[0]] = prod
        g.nodes.remove(add)


def fold_conv_affine(g: Graph) -> None:
    """Conv/ConvTranspose/FullyConnected followed by a Mul with a scalar or per-output-channel constant
    (PP-LCNet's learnable affine blocks, standalone BatchNorm halves): the scale joins weights and bias."""
    producers = g.producers()
    for mul in [n for n in g.nodes if n.op == "Mul"]:
        pair = _const_input(g, mul)
        prod = producers.get(pair[0]) if pair else None
        if prod is None or prod.op not in WEIGHTED or "act" in prod.attrs or _single_consumer(g, pair[0]) is not mul:
            continue
        w = g.consts[prod.inputs[1]]
        oc = w.shape[0]
        scale = _channel_vector(pair[1], oc, -1 if prod.op == "FullyConnected" else -3)
        if scale is None or pair[1].ndim > len(g.tensors[mul.outputs[0]].shape):
            continue
        b = g.consts[prod.inputs[2]] if len(prod.inputs) > 2 and prod.inputs[2] else np.zeros(oc, np.float32)
        wname = g.add_const(g.unique_name(prod.name + "_wscaled"),
                            (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32))
        bname = g.add_const(g.unique_name(prod.name + "_bscaled"), (b * scale).astype(np.float32))
        prod.inputs = [prod.inputs[0], wname, bname]
        prod.outputs = list(mul.outputs)
        prod.absorb(mul)
        producers[mul.outputs[0]] = prod
        g.nodes.remove(mul)


def _unary_step(g: Graph, node: Node) -> dict | None:
    """The node as one step of a unary chain: an activation, or Mul/Add by a scalar constant."""
    if node.op in ACTIVATIONS and node.op != "Chain" and len([i for i in node.inputs if i]) == 1:
        return {"op": node.op, **node.attrs}
    if node.op in ("Mul", "Add") and len(node.inputs) == 2:
        pair = _const_input(g, node)
        if pair is not None and pair[1].size == 1 and \
                len(g.tensors[node.outputs[0]].shape) == len(g.tensors[pair[0]].shape):
            return {"op": node.op, "c": float(pair[1].reshape(-1)[0])}
    return None


def fuse_unary_chains(g: Graph) -> None:
    """Runs of unary steps (activations and scalar Mul/Add, each read only by the next) with at least one
    activation become one Chain node: one table instead of one requantization per step."""
    consumers = g.consumers()
    i = 0
    while i < len(g.nodes):
        run, node = [], g.nodes[i]
        while True:
            step = _unary_step(g, node)
            if step is None:
                break
            run.append((node, step))
            users = consumers.get(node.outputs[0], [])
            if len(users) != 1 or node.outputs[0] in g.outputs:
                break
            node = users[0]
        if len(run) >= 2 and any(s["op"] not in ("Mul", "Add") for _, s in run):
            first, last = run[0][0], run[-1][0]
            x = first.inputs[0] if first.op in ACTIVATIONS else _const_input(g, first)[0]
            chain = Node("Chain", last.name, [x], list(last.outputs), {"steps": [s for _, s in run]},
                         merged_sources(*(n for n, _ in run)))
            g.nodes[g.nodes.index(last)] = chain
            for n, _ in run[:-1]:
                g.nodes.remove(n)
            consumers = g.consumers()
        i += 1


def pixel_shuffle_conv_transpose(g: Graph) -> bool:
    """ConvTranspose whose kernel equals its stride (no overlap, no padding: the usual 2x upsampler) is a
    1x1 Conv with OC*KH*KW outputs followed by a depth-to-space permutation: the fast pointwise kernels do
    the arithmetic and the permutation is a reshape/transpose (an integer gather). Returns whether the
    graph changed (its new tensors then need infer_shapes)."""
    changed = False
    for ct in [n for n in g.nodes if n.op == "ConvTranspose"]:
        a = ct.attrs
        w = g.consts[ct.inputs[1]]
        oc, c, kh, kw = w.shape
        # (The input's recorded shape may be a placeholder left by an earlier rewrite; the output's is not.)
        n, (oh, ow) = g.tensors[ct.outputs[0]].shape[0], a["out"]
        h, wd = oh // kh, ow // kw
        if a["group"] != 1 or list(a["strides"]) != [kh, kw] or any(a["pads"]) or a["dilations"] != [1, 1] \
                or oh % kh or ow % kw:
            continue
        b = g.consts[ct.inputs[2]] if len(ct.inputs) > 2 and ct.inputs[2] else np.zeros(oc, np.float32)
        wname = g.add_const(g.unique_name(ct.name + "_w1x1"),
                            np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(oc * kh * kw, c, 1, 1)))
        bname = g.add_const(g.unique_name(ct.name + "_b1x1"), np.repeat(b, kh * kw).astype(np.float32))
        conv_out, split, moved = (g.unique_name(ct.name + s) for s in ("_taps", "_split", "_moved"))
        conv_attrs = dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1)
        if "act" in a:
            conv_attrs["act"] = a["act"]
        new = [Node("Conv", ct.name, [ct.inputs[0], wname, bname], [conv_out], conv_attrs),
               Node("Reshape", ct.name + "_split", [conv_out], [split], {"shape": [n, oc, kh, kw, h, wd]}),
               Node("Transpose", ct.name + "_shuffle", [split], [moved], {"perm": [0, 1, 4, 2, 5, 3]}),
               Node("Reshape", ct.name + "_merge", [moved], list(ct.outputs), {"shape": [n, oc, h * kh, wd * kw]})]
        _splice(g, ct, new)
        changed = True
    return changed


def _splice(g: Graph, old: Node, new: list[Node]) -> None:
    """Replace ``old`` by ``new`` in place (they inherit its source ops); new intermediate tensors get shapes
    from the next infer_shapes."""
    for node in new:
        node.absorb(old)
        for o in node.outputs:
            if o not in old.outputs:
                g.tensors[o] = Tensor(o, (), "float32")
    i = g.nodes.index(old)
    g.nodes[i: i + 1] = new


def sequence_linear_as_conv(g: Graph) -> bool:
    """A Linear layer over a sequence [N, T, K] runs as a 1x1 convolution over T pixels between two
    transposes: the pointwise kernels (VNNI, blocked, threaded) do the arithmetic; the transposes are
    cheap gathers next to T * K * OC multiply-accumulates. Returns whether the graph changed (its new
    tensors then need infer_shapes)."""
    changed = False
    for fc in [n for n in g.nodes if n.op == "FullyConnected" and len(g.tensors[n.inputs[0]].shape) == 3]:
        n, t, k = g.tensors[fc.inputs[0]].shape
        w = g.consts[fc.inputs[1]]
        oc = w.shape[0]
        if t * k * oc < SEQUENCE_CONV_MIN_MACS:
            continue
        names = [g.unique_name(fc.name + s) for s in ("_kt", "_k1t", "_o1t", "_ot")]
        wname = g.add_const(g.unique_name(fc.name + "_w1x1"), np.ascontiguousarray(w.reshape(oc, k, 1, 1)))
        conv_in = [names[1], wname] + fc.inputs[2:3]
        attrs = dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], group=1)
        if "act" in fc.attrs:
            attrs["act"] = fc.attrs["act"]
        new = [Node("Transpose", fc.name + "_in", [fc.inputs[0]], [names[0]], {"perm": [0, 2, 1]}),
               Node("Reshape", fc.name + "_4d", [names[0]], [names[1]], {"shape": [n, k, 1, t]}),
               Node("Conv", fc.name, conv_in, [names[2]], attrs),
               Node("Reshape", fc.name + "_3d", [names[2]], [names[3]], {"shape": [n, oc, t]}),
               Node("Transpose", fc.name + "_out", [names[3]], list(fc.outputs), {"perm": [0, 2, 1]})]
        _splice(g, fc, new)
        changed = True
    return changed


def run_passes(g: Graph) -> Graph:
    """The standard float pipeline; returns the same graph, rewritten."""
    fold_constants(g)
    split_batch_transposes(g)
    infer_shapes(g)
    drop_float_casts(g)
    fuse_layer_norm(g)
    fuse_swish(g)
    constant_sub_div(g)
    fuse_hardswish(g)
    fold_conv_affine(g)
    fold_bias_adds(g)
    fold_batchnorm(g)
    if lower_standalone_ops(g):
        infer_shapes(g)
    fold_conv_affine(g)
    fold_bias_adds(g)
    fuse_activations(g)
    fuse_unary_chains(g)
    unary_tables(g)
    # Neither rewrite reads a shape the other leaves as a placeholder: one shape run serves both.
    if pixel_shuffle_conv_transpose(g) | sequence_linear_as_conv(g):
        infer_shapes(g)
    g.prune()
    return g
