"""Float graph + calibrated ranges -> integer-only graph (the TFLite int8 scheme, REFERENCE.md section 1).

Weights: int8 symmetric per output channel. Activations: int8 asymmetric per tensor. Bias: int32 at scale
s_x * s_w. Requantization: int32 multiplier + shift from ``quantize_multiplier``. Unary functions become
256-entry tables; a table right after a Conv/FullyConnected/Add/Mul is fused into it.
"""

from __future__ import annotations

import math

import numpy as np

from edgeq.errors import ModelError, UnsupportedOpError
from edgeq.ir import Graph, Node, Tensor
from .float_ops import ACTIVATIONS

QMIN, QMAX = -128, 127
LUT_OPS = tuple(ACTIVATIONS)  # Relu, Clip, HardSigmoid, HardSwish, Sigmoid as standalone nodes
FIXED_OUTPUT = {"Sigmoid": (1 / 256, -128), "Softmax": (1 / 256, -128)}  # TFLite's fixed output scales


def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: m = mult * 2^(shift - 31) with mult in [2^30, 2^31)."""
    if m <= 0 or not math.isfinite(m):
        return 0, 0
    q, shift = math.frexp(m)
    mult = round(q * (1 << 31))
    if mult == 1 << 31:
        mult //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return int(mult), int(shift)


def qparams(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 scale and zero point covering [lo, hi] (always including 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255, 1e-8)
    zp = int(np.clip(round(QMIN - lo / scale), QMIN, QMAX))
    return float(scale), zp


def _q(value: float, scale: float, zp: int) -> int:
    return int(np.clip(round(value / scale) + zp, QMIN, QMAX))


def _act_bounds(act: dict | None, scale: float, zp: int) -> tuple[int, int]:
    """Fused Relu/Clip as an integer clamp range."""
    if act is None:
        return QMIN, QMAX
    if act["op"] == "Relu":
        return _q(0.0, scale, zp), QMAX
    lo = _q(act["min"], scale, zp) if "min" in act else QMIN
    hi = _q(act["max"], scale, zp) if "max" in act else QMAX
    return lo, hi


class _Quantizer:
    def __init__(self, fg: Graph, ranges: dict[str, tuple[float, float]]):
        self.fg, self.ranges = fg, ranges
        self.g = Graph([], {}, list(fg.inputs), list(fg.outputs), dynamic_batch=fg.dynamic_batch)
        self.qp: dict[str, tuple[float, int]] = {}

    def act(self, name: str, forced: tuple[float, int] | None = None) -> tuple[float, int]:
        """Quantization of an activation tensor (calibrated unless ``forced``); registers the int8 tensor."""
        if name not in self.qp:
            self.qp[name] = forced or qparams(*self.ranges[name])
            s, z = self.qp[name]
            self.g.tensors[name] = Tensor(name, self.fg.tensors[name].shape, "int8", [s], [z], None)
        return self.qp[name]

    def const_i8(self, base: str, value: np.ndarray) -> tuple[str, float, int]:
        """A float constant operand as an int8 per-tensor constant."""
        s, z = qparams(float(value.min()), float(value.max()))
        q = np.clip(np.round(value / s) + z, QMIN, QMAX).astype(np.int8)
        return self.g.add_const(self.g.unique_name(base + "_q"), q, scale=[s], zero_point=[z], axis=None), s, z

    def run(self) -> Graph:
        for name in self.fg.inputs:
            self.act(name)
        for node in self.fg.nodes:
            handler = getattr(self, "q_" + node.op, None)
            if handler is None:
                raise UnsupportedOpError(f"op {node.op} (node '{node.name}') cannot be quantized to int8 yet")
            handler(node)
        _fuse_tables(self.g)
        return self.g

    def _weighted(self, node: Node, op: str, attrs: dict) -> None:
        x, wname = node.inputs[0], node.inputs[1]
        w = self.fg.consts[wname]
        b = self.fg.consts[node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] else np.zeros(w.shape[0], np.float32)
        sx, zx = self.act(x)
        sy, zy = self.act(node.outputs[0])
        amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float64)
        sw = np.where(amax > 0, amax / 127, 1e-8)
        wq = np.clip(np.round(w / sw.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)
        bq = np.clip(np.round(b / (sx * sw)), -(2**31), 2**31 - 1).astype(np.int32)
        k = int(np.prod(w.shape[1:]))
        if k * 127 * 255 + int(np.abs(bq.astype(np.int64)).max()) >= 2**31:
            raise ModelError(f"node '{node.name}': int32 accumulator could overflow (K={k}); split the layer")
        mults, shifts = zip(*(quantize_multiplier(sx * s / sy) for s in sw))
        g, base = self.g, node.name
        inputs = [x, g.add_const(g.unique_name(base + "_wq"), wq, scale=sw.tolist(), zero_point=[0] * len(sw), axis=0),
                  g.add_const(g.unique_name(base + "_bq"), bq, scale=(sx * sw).tolist(), zero_point=[0] * len(sw), axis=0),
                  g.add_const(g.unique_name(base + "_mult"), np.array(mults, dtype=np.int32)),
                  g.add_const(g.unique_name(base + "_shift"), np.array(shifts, dtype=np.int32))]
        lo, hi = _act_bounds(node.attrs.get("act"), sy, zy)
        g.nodes.append(Node(op, node.name, inputs, list(node.outputs),
                            dict(attrs, x_zp=zx, y_zp=zy, act_min=lo, act_max=hi)))

    def q_Conv(self, node: Node) -> None:
        a = node.attrs
        self._weighted(node, "QConv", dict(strides=a["strides"], pads=a["pads"], dilations=a["dilations"],
                                           group=a["group"]))

    def q_FullyConnected(self, node: Node) -> None:
        if len(self.fg.tensors[node.inputs[0]].shape) != 2:
            raise UnsupportedOpError(f"node '{node.name}': MatMul/Gemm input must be [N, K] "
                                     f"(got {self.fg.tensors[node.inputs[0]].shape})")
        self._weighted(node, "QFullyConnected", {})

    def _binary_operands(self, node: Node) -> list[tuple[str, float, int]]:
        out = []
        for t in node.inputs:
            if t in self.fg.consts:
                out.append(self.const_i8(node.name, self.fg.consts[t]))
            else:
                out.append((t, *self.act(t)))
        return out

    def q_Add(self, node: Node) -> None:
        (a, sa, za), (b, sb, zb) = self._binary_operands(node)
        sy, zy = self.act(node.outputs[0])
        twice = 2 * max(sa, sb)
        am, ash = quantize_multiplier(sa / twice)
        bm, bsh = quantize_multiplier(sb / twice)
        ym, ysh = quantize_multiplier(twice / ((1 << 20) * sy))
        lo, hi = _act_bounds(node.attrs.get("act"), sy, zy)
        self.g.nodes.append(Node("QAdd", node.name, [a, b], list(node.outputs), dict(
            a_zp=za, b_zp=zb, y_zp=zy, a_mult=am, a_shift=ash, b_mult=bm, b_shift=bsh, y_mult=ym, y_shift=ysh,
            act_min=lo, act_max=hi)))

    def q_Mul(self, node: Node) -> None:
        (a, sa, za), (b, sb, zb) = self._binary_operands(node)
        sy, zy = self.act(node.outputs[0])
        ym, ysh = quantize_multiplier(sa * sb / sy)
        lo, hi = _act_bounds(node.attrs.get("act"), sy, zy)
        self.g.nodes.append(Node("QMul", node.name, [a, b], list(node.outputs), dict(
            a_zp=za, b_zp=zb, y_zp=zy, y_mult=ym, y_shift=ysh, act_min=lo, act_max=hi)))

    def _table(self, node: Node) -> None:
        sx, zx = self.act(node.inputs[0])
        sy, zy = self.act(node.outputs[0], FIXED_OUTPUT.get(node.op))
        real = (np.arange(QMIN, QMAX + 1, dtype=np.float64) - zx) * sx
        f = ACTIVATIONS[node.op](real, node.attrs)
        table = np.clip(np.round(f / sy) + zy, QMIN, QMAX).astype(np.int8)
        name = self.g.add_const(self.g.unique_name(node.name + "_table"), table)
        self.g.nodes.append(Node("QLut", node.name, [node.inputs[0], name], list(node.outputs), {}))

    q_Relu = q_Clip = q_HardSigmoid = q_HardSwish = q_Sigmoid = _table

    def _same_scale(self, node: Node, op: str, attrs: dict) -> None:
        """Ops whose output keeps the input's quantization (pools and reshapes, as in TFLite)."""
        qp = self.act(node.inputs[0])
        self.act(node.outputs[0], qp)
        self.g.nodes.append(Node(op, node.name, node.inputs[:1], list(node.outputs), attrs))

    def q_MaxPool(self, node: Node) -> None:
        self._same_scale(node, "QMaxPool", dict(node.attrs, act_min=QMIN, act_max=QMAX))

    def q_AveragePool(self, node: Node) -> None:
        zp = self.act(node.inputs[0])[1]
        self._same_scale(node, "QAvgPool", dict(node.attrs, x_zp=zp, y_zp=zp, act_min=QMIN, act_max=QMAX))

    def q_Reshape(self, node: Node) -> None:
        self._same_scale(node, "QReshape", dict(shape=node.attrs["shape"]))

    def q_Concat(self, node: Node) -> None:
        axis = node.attrs["axis"] % len(self.fg.tensors[node.outputs[0]].shape)
        if axis == 0:
            raise UnsupportedOpError(f"Concat node '{node.name}': concatenation along the batch axis")
        if any(i in self.fg.consts for i in node.inputs):
            raise UnsupportedOpError(f"Concat node '{node.name}': constant inputs are not supported")
        sy, zy = self.act(node.outputs[0])
        zps, mults, shifts = [], [], []
        for t in node.inputs:
            s, z = self.act(t)
            m, sh = (1 << 30, 1) if s == sy else quantize_multiplier(s / sy)
            zps.append(z), mults.append(m), shifts.append(sh)
        self.g.nodes.append(Node("QConcat", node.name, list(node.inputs), list(node.outputs),
                                 dict(axis=axis, x_zps=zps, mults=mults, shifts=shifts, y_zp=zy)))

    def q_Softmax(self, node: Node) -> None:
        rank = len(self.fg.tensors[node.inputs[0]].shape)
        if node.attrs["axis"] % rank != rank - 1:
            raise UnsupportedOpError(f"Softmax node '{node.name}': only the last axis is supported "
                                     f"(axis={node.attrs['axis']}, rank {rank})")
        sx, _ = self.act(node.inputs[0])
        self.act(node.outputs[0], FIXED_OUTPUT["Softmax"])
        table = np.round(np.exp(-np.arange(256) * sx) * (1 << 20)).astype(np.int32)
        name = self.g.add_const(self.g.unique_name(node.name + "_exp"), table)
        self.g.nodes.append(Node("QSoftmax", node.name, [node.inputs[0], name], list(node.outputs), {}))


def _fuse_tables(g: Graph) -> None:
    """Run a QLut inside the op producing its input when nothing else reads that tensor (same bytes out)."""
    producers, consumers = g.producers(), g.consumers()
    for lut in [n for n in g.nodes if n.op == "QLut"]:
        prod = producers.get(lut.inputs[0])
        ok = prod is not None and prod.op in ("QConv", "QFullyConnected", "QAdd", "QMul") \
            and len(consumers.get(lut.inputs[0], [])) == 1 and lut.inputs[0] not in g.outputs
        n_plain = 5 if prod is not None and prod.op in ("QConv", "QFullyConnected") else 2
        if not ok or len(prod.inputs) > n_plain:
            continue
        prod.inputs.append(lut.inputs[1])
        prod.outputs = list(lut.outputs)
        producers[lut.outputs[0]] = prod
        g.nodes.remove(lut)
    g.prune()


def quantize_graph(fg: Graph, ranges: dict[str, tuple[float, float]]) -> Graph:
    """Integer-only graph for ``fg`` given the calibrated float ranges of its activations."""
    return _Quantizer(fg, ranges).run()
