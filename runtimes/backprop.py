"""Gradients of an int8 graph in real units: the backward pass on-device fine-tuning runs.

The forward pass is the integer one (the reference kernels of ``registry``); the backward pass works on
the real-valued (dequantized) quantities the integer graph stands for: a conv/FC layer computes
``a = conv(x, W) + b`` with ``x = s_x (x_q - zp_x)``, ``W = s_W w_q`` and ``b = s_x s_W b_q``, then its
fused activation (the clamp ``[act_min, act_max]`` in the codes of the pre-activation, and a fused table).
Rounding is passed straight through (the Tiny Training Engine's choice), so the same backward code also
differentiates :func:`forward_real`, the float64 model the integer graph approximates; the tests check it
against finite differences on that model.

The backward graph is pruned: it stops at the earliest layer being updated (no input gradient is
computed there), and a callback receives each layer's parameter gradients as soon as they exist, after
that layer's input gradient has been computed with the old weights, so it may update in place.
Imports only numpy (runtime side).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgeq.errors import InputError
from edgeq.ir import Graph, Node
from .reference import _windows, conv_out_size
from .registry import OPS

TRAINABLE_OPS = ("QConv", "QFullyConnected")
# Ops the backward pass can go through; anything else between the loss and the earliest updated layer
# makes the update scheme unusable for that graph.
BACKWARD_OPS = TRAINABLE_OPS + ("QMaxPool", "QAvgPool", "QReshape", "QLut")

# node name -> (W, b) in real units; the integer graph's constants when absent
RealParams = dict[str, tuple[np.ndarray, np.ndarray]]
# called as grads arrive: (node, dL/dW, dL/db), both real-valued, full layer shapes
GradSink = Callable[[Node, np.ndarray, np.ndarray], None]


@dataclass(frozen=True)
class LayerQuant:
    """The scales of one conv/FC node: what turns its integers into real values and back."""

    s_x: float            # input scale
    x_zp: int
    s_w: np.ndarray       # per output channel weight scale (float64)
    s_mid: np.ndarray     # per output channel scale of the pre-activation codes (= s_x s_W / M)
    mid_zp: int           # zero point of those codes (the node's y_zp)
    act_min: int
    act_max: int
    lut: np.ndarray | None  # fused table (int8 codes of the output tensor), or None
    s_y: float            # output tensor scale
    y_zp: int


def multiplier_value(mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The real multiplier M = mult * 2^(shift - 31) a fixed-point (mult, shift) pair stands for."""
    return np.asarray(mult, dtype=np.float64) * np.exp2(np.asarray(shift, dtype=np.float64) - 31)


def layer_quant(graph: Graph, node: Node) -> LayerQuant:
    """Scales of a QConv/QFullyConnected node; s_W comes from the effective multiplier
    (s_W = M s_y / s_x, REFERENCE.md section 4) unless a fused table hides s_y, then from the weight tensor."""
    a = node.attrs
    tx, ty = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
    m = multiplier_value(graph.consts[node.inputs[3]], graph.consts[node.inputs[4]])
    s_x, s_y = float(tx.scale[0]), float(ty.scale[0])
    lut = graph.consts[node.inputs[5]] if len(node.inputs) > 5 and node.inputs[5] else None
    oc = m.size
    if lut is None:
        s_w = m * s_y / s_x
        s_mid = np.full(oc, s_y)
    else:
        wscale = graph.tensors[node.inputs[1]].scale
        if not wscale:
            raise InputError(f"node '{node.name}' has a fused table and no weight scales: cannot train it")
        s_w = np.broadcast_to(np.asarray(wscale, dtype=np.float64), (oc,)).copy()
        s_mid = s_x * s_w / m
    return LayerQuant(s_x, int(tx.zero_point[0]), s_w, s_mid, int(a["y_zp"]), int(a["act_min"]), int(a["act_max"]),
                      lut, s_y, int(ty.zero_point[0]))


def real_params(graph: Graph, node: Node, consts: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of a conv/FC node in real units (float64), from ``consts`` (default: the graph's)."""
    consts = graph.consts if consts is None else consts
    q = layer_quant(graph, node)
    w = consts[node.inputs[1]].astype(np.float64)
    s_w = q.s_w.reshape((-1,) + (1,) * (w.ndim - 1))
    return w * s_w, consts[node.inputs[2]].astype(np.float64) * q.s_x * q.s_w


def _bcast(v: np.ndarray, ndim: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast over [N, C, ...]."""
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


def _table_real(lut: np.ndarray, u: np.ndarray, integer: bool) -> tuple[np.ndarray, np.ndarray]:
    """A 256-entry table at codes ``u``: (value, slope d value / d u), both in output codes.

    Integer codes (the int8 forward): the table entry and its central difference. Real codes (the
    float model): linear interpolation between entries and the slope of that segment.
    """
    t = lut.astype(np.float64)
    if integer:
        i = u.astype(np.int64) + 128
        up, down = np.minimum(i + 1, 255), np.maximum(i - 1, 0)
        return t[i], (t[up] - t[down]) / (up - down)
    pos = np.clip(u + 128.0, 0.0, 255.0)
    i = np.minimum(np.floor(pos).astype(np.int64), 254)
    return np.interp(pos, np.arange(256.0), t), t[i + 1] - t[i]


def _activation(q: LayerQuant, a: np.ndarray, integer: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pre-activation (real, or integer codes when ``integer``) -> (real output, dy/da)."""
    nd = a.ndim
    s_mid = _bcast(q.s_mid, nd)
    u = a if integer else a / s_mid + q.mid_zp
    inside = (u > q.act_min) & (u < q.act_max)
    u = np.clip(u, q.act_min, q.act_max)
    if q.lut is None:
        return (u - q.mid_zp) * s_mid, inside * 1.0
    v, dv = _table_real(q.lut, u, integer)
    return (v - q.y_zp) * q.s_y, inside * dv * q.s_y / s_mid


def _conv_attrs(node: Node) -> tuple:
    a = node.attrs
    return tuple(a["strides"]), tuple(a["pads"]), tuple(a["dilations"]), int(a["group"])


def _conv_real(x: np.ndarray, w: np.ndarray, node: Node) -> np.ndarray:
    """Real-valued grouped convolution without bias (zero padding: x is already centred on its zero point)."""
    strides, (pt, pl, pb, pr), dil, group = _conv_attrs(node)
    n, _, h, wd = x.shape
    oc, cg, kh_n, kw_n = w.shape
    oh = conv_out_size(h, kh_n, strides[0], pt, pb, dil[0])
    ow = conv_out_size(wd, kw_n, strides[1], pl, pr, dil[1])
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    wg = w.reshape(group, oc // group, cg, kh_n, kw_n)
    acc = np.zeros((n, group, oc // group, oh, ow))
    for kh in range(kh_n):
        for kw in range(kw_n):
            taps = _windows(xp, kh, kw, oh, ow, strides, dil).reshape(n, group, cg, oh, ow)
            acc += np.einsum("ngcij,goc->ngoij", taps, wg[:, :, :, kh, kw])
    return acc.reshape(n, oc, oh, ow)


def _conv_backward(x: np.ndarray, w: np.ndarray, ga: np.ndarray, node: Node, want_weight: bool,
                   want_input: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(dL/dW or None, dL/dx or None) of :func:`_conv_real` given dL/da."""
    strides, (pt, pl, pb, pr), dil, group = _conv_attrs(node)
    n, c, h, wd = x.shape
    oc, cg, kh_n, kw_n = w.shape
    _, _, oh, ow = ga.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    gxp = np.zeros_like(xp) if want_input else None
    wg = w.reshape(group, oc // group, cg, kh_n, kw_n)
    gag = ga.reshape(n, group, oc // group, oh, ow)
    gw = np.zeros((group, oc // group, cg, kh_n, kw_n)) if want_weight else None
    for kh in range(kh_n):
        for kw in range(kw_n):
            if gw is not None:
                taps = _windows(xp, kh, kw, oh, ow, strides, dil).reshape(n, group, cg, oh, ow)
                gw[:, :, :, kh, kw] = np.einsum("ngcij,ngoij->goc", taps, gag)
            if gxp is not None:
                view = _windows(gxp, kh, kw, oh, ow, strides, dil)
                view += np.einsum("ngoij,goc->ngcij", gag, wg[:, :, :, kh, kw]).reshape(n, c, oh, ow)
    gx = None if gxp is None else gxp[:, :, pt: pt + h, pl: pl + wd]
    return None if gw is None else gw.reshape(w.shape), gx


def _pool_geometry(node: Node, x_shape: tuple[int, ...]) -> tuple[int, int, tuple, tuple, tuple]:
    a = node.attrs
    _, _, h, w = x_shape
    pt, pl, pb, pr = a["pads"]
    dil = tuple(a.get("dilations", (1, 1)))
    oh = conv_out_size(h, a["kernel"][0], a["strides"][0], pt, pb, dil[0])
    ow = conv_out_size(w, a["kernel"][1], a["strides"][1], pl, pr, dil[1])
    return oh, ow, tuple(a["strides"]), dil, (pt, pl, pb, pr)


def _max_pool_real(x: np.ndarray, node: Node) -> tuple[np.ndarray, np.ndarray]:
    """(max over each window, winning tap index) of a real tensor; the first maximal tap wins."""
    kh_n, kw_n = node.attrs["kernel"]
    oh, ow, strides, dil, (pt, pl, pb, pr) = _pool_geometry(node, x.shape)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=-np.inf)
    best = np.full(x.shape[:2] + (oh, ow), -np.inf)
    arg = np.zeros(best.shape, dtype=np.int64)
    for kh in range(kh_n):
        for kw in range(kw_n):
            v = _windows(xp, kh, kw, oh, ow, strides, dil)
            better = v > best
            best = np.where(better, v, best)
            arg = np.where(better, kh * kw_n + kw, arg)
    return best, arg


def _max_pool_backward(x: np.ndarray, gy: np.ndarray, node: Node) -> np.ndarray:
    kh_n, kw_n = node.attrs["kernel"]
    oh, ow, strides, dil, (pt, pl, pb, pr) = _pool_geometry(node, x.shape)
    _, arg = _max_pool_real(x, node)
    gxp = np.zeros((x.shape[0], x.shape[1], x.shape[2] + pt + pb, x.shape[3] + pl + pr))
    for kh in range(kh_n):
        for kw in range(kw_n):
            view = _windows(gxp, kh, kw, oh, ow, strides, dil)
            view += np.where(arg == kh * kw_n + kw, gy, 0.0)
    return gxp[:, :, pt: pt + x.shape[2], pl: pl + x.shape[3]]


def _avg_counts(node: Node, x_shape: tuple[int, ...]) -> np.ndarray:
    """Number of taps averaged at each output position (as the integer kernel counts them)."""
    a = node.attrs
    oh, ow, strides, dil, (pt, pl, pb, pr) = _pool_geometry(node, x_shape)
    if a["count_include_pad"]:
        return np.full((1, 1, oh, ow), float(a["kernel"][0] * a["kernel"][1]))
    valid = np.pad(np.ones((1, 1) + tuple(x_shape[2:])), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    count = np.zeros((1, 1, oh, ow))
    for kh in range(a["kernel"][0]):
        for kw in range(a["kernel"][1]):
            count += _windows(valid, kh, kw, oh, ow, strides, dil)
    return count


def _avg_pool_real(x: np.ndarray, node: Node, backward: np.ndarray | None = None) -> np.ndarray:
    """Window means of x, or (``backward`` = dL/dy) the gradient dL/dx of that mean."""
    kh_n, kw_n = node.attrs["kernel"]
    oh, ow, strides, dil, (pt, pl, pb, pr) = _pool_geometry(node, x.shape)
    count = _avg_counts(node, x.shape)
    xp = np.pad(np.zeros_like(x) if backward is not None else x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    out = np.zeros(x.shape[:2] + (oh, ow))
    for kh in range(kh_n):
        for kw in range(kw_n):
            view = _windows(xp, kh, kw, oh, ow, strides, dil)
            if backward is None:
                out += view
            else:
                view += backward / count
    return out / count if backward is None else xp[:, :, pt: pt + x.shape[2], pl: pl + x.shape[3]]


def _lut_quant(graph: Graph, node: Node) -> LayerQuant:
    """A standalone QLut seen as an identity layer followed by its table."""
    tx, ty = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
    if graph.consts[node.inputs[1]].size != 256:
        raise InputError(f"node '{node.name}': fine-tuning goes through int8 tables only")
    s_x, zp = float(tx.scale[0]), int(tx.zero_point[0])
    return LayerQuant(s_x, zp, np.ones(1), np.full(1, s_x), zp, -128, 127, graph.consts[node.inputs[1]],
                      float(ty.scale[0]), int(ty.zero_point[0]))


@dataclass
class Tape:
    """What the backward pass needs from the forward pass, per node of the backward region:
    the node's real input and dy/da of its activation (the mask of a clamp, the slope of a table)."""

    inputs: dict[str, np.ndarray]
    slopes: dict[str, np.ndarray]


def region(graph: Graph, first: str) -> list[Node]:
    """The nodes from ``first`` to the end: the forward region whose values the backward pass reads."""
    names = [n.name for n in graph.nodes]
    if first not in names:
        raise InputError(f"no node named '{first}' in the graph")
    nodes = graph.nodes[names.index(first):]
    bad = [n for n in nodes if n.op not in BACKWARD_OPS]
    if bad:
        raise InputError(f"fine-tuning cannot differentiate through {bad[0].op} (node '{bad[0].name}'); "
                         f"update only layers after it")
    return nodes


def forward_int8(graph: Graph, x_q: np.ndarray, consts: dict[str, np.ndarray] | None = None,
                 first: str | None = None) -> tuple[np.ndarray, Tape]:
    """Integer forward pass on the reference kernels; returns the real-valued logits and the tape of the
    nodes from ``first`` on (empty tape when None). ``consts`` replaces the graph's constants."""
    values: dict[str, np.ndarray] = dict(graph.consts if consts is None else consts)
    values[graph.inputs[0]] = x_q
    taped = {n.name for n in region(graph, first)} if first is not None else set()
    tape = Tape({}, {})
    for node in graph.nodes:
        args = [values[i] for i in node.inputs if i]
        if node.name not in taped:
            values[node.outputs[0]] = OPS[node.op].reference(node, args)
            continue
        tx = graph.tensors[node.inputs[0]]
        tape.inputs[node.name] = (args[0].astype(np.float64) - tx.zero_point[0]) * tx.scale[0]
        if node.op in TRAINABLE_OPS:
            mid = OPS[node.op].reference(node, args[:5])  # the pre-table codes: the table is applied below
            q = layer_quant(graph, node)
            values[node.outputs[0]] = mid if q.lut is None else q.lut[mid.astype(np.int16) + 128]
            tape.slopes[node.name] = _activation(q, mid.astype(np.float64), integer=True)[1]
        elif node.op == "QLut":
            values[node.outputs[0]] = OPS[node.op].reference(node, args)
            tape.slopes[node.name] = _activation(_lut_quant(graph, node), args[0].astype(np.float64), True)[1]
        else:
            values[node.outputs[0]] = y = OPS[node.op].reference(node, args)
            if node.op == "QMaxPool":  # its clamp range, as a mask on the output codes
                a = node.attrs
                inside = ((y > a["act_min"]) | (a["act_min"] == -128)) & ((y < a["act_max"]) | (a["act_max"] == 127))
                tape.slopes[node.name] = inside * 1.0
    out = graph.tensors[graph.outputs[0]]
    return (values[graph.outputs[0]].astype(np.float64) - out.zero_point[0]) * out.scale[0], tape


def forward_real(graph: Graph, x: np.ndarray, params: RealParams | None = None,
                 first: str | None = None) -> tuple[np.ndarray, Tape]:
    """The float64 model the integer graph approximates (no rounding): real input -> real logits, and
    the tape of the nodes from ``first`` on. ``params`` overrides (W, b) of conv/FC nodes."""
    params = params or {}
    values: dict[str, np.ndarray] = {graph.inputs[0]: np.asarray(x, dtype=np.float64)}
    taped = {n.name for n in region(graph, first)} if first is not None else set()
    tape = Tape({}, {})
    for node in region(graph, graph.nodes[0].name):
        x_in = values[node.inputs[0]]
        if node.name in taped:
            tape.inputs[node.name] = x_in
        if node.op in TRAINABLE_OPS:
            w, b = params.get(node.name) or real_params(graph, node)
            a = _conv_real(x_in, w, node) if node.op == "QConv" else x_in @ w.T
            y, slope = _activation(layer_quant(graph, node), a + _bcast(b, a.ndim), integer=False)
        elif node.op == "QLut":
            y, slope = _activation(_lut_quant(graph, node), x_in, integer=False)
        elif node.op == "QMaxPool":
            y, slope = _max_pool_real(x_in, node)[0], np.ones(1)
        elif node.op == "QAvgPool":
            y, slope = _avg_pool_real(x_in, node), np.ones(1)
        else:
            y, slope = x_in.reshape((x_in.shape[0],) + tuple(node.attrs["shape"][1:])), np.ones(1)
        if node.name in taped:
            tape.slopes[node.name] = slope
        values[node.outputs[0]] = y
    return values[graph.outputs[0]], tape


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy over the batch and its gradient w.r.t. the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = logits.shape[0]
    loss = float(-np.log(np.maximum(p[np.arange(n), labels], 1e-300)).mean())
    p[np.arange(n), labels] -= 1.0
    return loss, p / n


def backward(graph: Graph, tape: Tape, grad_logits: np.ndarray, first: str, trainable: set[str],
             sink: GradSink, params: RealParams | None = None,
             consts: dict[str, np.ndarray] | None = None) -> None:
    """Backpropagate dL/dlogits through the nodes from ``first`` to the output.

    For every node named in ``trainable`` the sink receives (dL/dW, dL/db) in real units right after the
    node's input gradient has been computed (so the sink may update the weights at once and free its
    gradient). The input gradient of ``first`` itself is never computed: the backward graph stops there.
    Weights come from ``params`` (real) or else ``consts`` (integer, default: the graph's).
    """
    params = params or {}
    grads: dict[str, np.ndarray] = {graph.outputs[0]: grad_logits}
    for node in reversed(region(graph, first)):
        gy = grads.pop(node.outputs[0], None)
        if gy is None:
            continue
        x = tape.inputs[node.name]
        want_input = node.name != first
        gx = None
        if node.op in TRAINABLE_OPS:
            w, _ = params.get(node.name) or real_params(graph, node, consts)
            ga = gy * tape.slopes[node.name]
            train = node.name in trainable
            if node.op == "QConv":
                gw, gx = _conv_backward(x, w, ga, node, train, want_input)
                gb = ga.sum(axis=(0, 2, 3))
            else:
                gw, gb = ga.T @ x, ga.sum(axis=0)
                gx = ga @ w if want_input else None
            if train:
                sink(node, gw, gb)
        elif not want_input:
            continue
        elif node.op == "QLut":
            gx = gy * tape.slopes[node.name]
        elif node.op == "QMaxPool":
            gx = _max_pool_backward(x, gy * tape.slopes[node.name], node)
        elif node.op == "QAvgPool":
            gx = _avg_pool_real(x, node, backward=gy)
        else:
            gx = gy.reshape(x.shape)
        if gx is not None:
            src = node.inputs[0]
            grads[src] = grads[src] + gx if src in grads else gx
