"""Float graph + calibrated ranges -> integer-only graph (the TFLite int8 scheme, REFERENCE.md section 1).

Weights: int8 symmetric per output channel. Activations: int8 asymmetric per tensor, or, for the tensors
in ``wide`` (chosen by ``mixed_precision``), int16 symmetric with zero point 0 (TFLite's 16x8 scheme).
Bias: int32 at scale s_x * s_w. Requantization: int32 multiplier + shift from ``quantize_multiplier``.
Unary functions become 256-entry tables (an int16 input: 513 interpolation samples); a table right after
a Conv/FullyConnected/Add/Mul is fused into it. Ops without an int16 kernel read an int8 copy of a wide
input made by a ``QRequantize`` node.
"""

from __future__ import annotations

import math

import numpy as np

from edgeq.errors import ModelError, UnsupportedOpError
from edgeq.ir import Graph, Node, Tensor
from edgeq.runtimes.reference import LN_NORM_BITS, LN_OUT_BITS, LUT16_STEPS, act_limits
from .float_ops import ACTIVATIONS
from .resize_tables import resize_table

QMIN, QMAX = -128, 127
LUT_OPS = tuple(ACTIVATIONS)  # Relu, Clip, HardSigmoid, HardSwish, Sigmoid, Swish, Gelu, Chain as standalone nodes
MATMUL_K_MAX = 33000  # the kernels' int32 accumulators hold K * 255 * 255
FIXED_OUTPUT = {"Sigmoid": (1 / 256, -128), "Softmax": (1 / 256, -128)}  # TFLite's fixed output scales
WIDE_INPUT_OPS = ("Conv",) + LUT_OPS  # float ops whose integer kernels read int16 inputs
WIDE_OUTPUT_OPS = ("Conv",) + LUT_OPS  # ... and write int16 outputs


def round_half_away(x: float) -> int:
    """TfLiteRound / std::round: half away from zero (Python's round() takes ties to even)."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier exactly: m = mult * 2^(shift - 31), |mult| in [2^30, 2^31), the frexp
    mantissa times 2^31 rounded half away from zero; a negative m keeps its sign (TFLite importer)."""
    if m == 0 or not math.isfinite(m):
        return 0, 0
    q, shift = math.frexp(m)
    mult = round_half_away(q * (1 << 31))  # q * 2^31 is exact in a double
    if abs(mult) == 1 << 31:
        mult //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return mult, shift


def qparams(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 scale and zero point covering [lo, hi] (always including 0)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255, 1e-8)
    zp = int(np.clip(round(QMIN - lo / scale), QMIN, QMAX))
    return float(scale), zp


def qparams16(lo: float, hi: float) -> tuple[float, int]:
    """Symmetric int16 scale (zero point 0) covering [lo, hi]."""
    return max(abs(lo), abs(hi), 1e-8 * 32767) / 32767, 0


def _q(value: float, scale: float, zp: int, bits: int = 8) -> int:
    return int(np.clip(round(value / scale) + zp, *act_limits(bits)))


def _act_bounds(act: dict | None, scale: float, zp: int, bits: int = 8) -> tuple[int, int]:
    """Fused Relu/Clip as an integer clamp range of an activation of ``bits``."""
    qmin, qmax = act_limits(bits)
    if act is None:
        return qmin, qmax
    if act["op"] == "Relu":
        return _q(0.0, scale, zp, bits), qmax
    lo = _q(act["min"], scale, zp, bits) if "min" in act else qmin
    hi = _q(act["max"], scale, zp, bits) if "max" in act else qmax
    return lo, hi


class _Quantizer:
    def __init__(self, fg: Graph, ranges: dict[str, tuple[float, float]], wide: frozenset[str] = frozenset()):
        # A shallow copy: int8 copies of wide tensors get float-side entries without touching the caller's graph.
        self.fg = Graph(fg.nodes, dict(fg.tensors), fg.inputs, fg.outputs, fg.consts, dynamic_batch=fg.dynamic_batch)
        self.ranges, self.wide = dict(ranges), wide
        self.g = Graph([], {}, list(fg.inputs), list(fg.outputs), dynamic_batch=fg.dynamic_batch)
        self.qp: dict[str, tuple[float, int]] = {}
        self.narrow_of: dict[str, str] = {}

    def bits(self, name: str) -> int:
        """Width of an activation: 16 for the tensors mixed precision promoted, else 8."""
        return 16 if name in self.wide else 8

    def act(self, name: str, forced: tuple[float, int] | None = None) -> tuple[float, int]:
        """Quantization of an activation tensor (calibrated unless ``forced``); registers the integer tensor."""
        if name not in self.qp:
            wide = name in self.wide
            self.qp[name] = qparams16(*self.ranges[name]) if wide else forced or qparams(*self.ranges[name])
            s, z = self.qp[name]
            self.g.tensors[name] = Tensor(name, self.fg.tensors[name].shape, "int16" if wide else "int8", [s], [z],
                                          None)
        return self.qp[name]

    def narrow(self, name: str) -> str:
        """An int8 copy of the wide tensor ``name`` (one QRequantize node, made once)."""
        if name not in self.narrow_of:
            out = self.g.unique_name(name + "_i8")
            self.fg.tensors[out] = self.fg.tensors[name]
            self.ranges[out] = self.ranges[name]
            sx, _ = self.act(name)
            sy, zy = self.act(out)
            m, sh = quantize_multiplier(sx / sy)
            self.g.nodes.append(Node("QRequantize", out, [name], [out],
                                     dict(x_bits=16, y_bits=8, x_zp=0, y_zp=zy, mult=m, shift=sh)))
            self.narrow_of[name] = out
        return self.narrow_of[name]

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
            if node.outputs[0] in self.wide and node.op not in WIDE_OUTPUT_OPS:
                raise UnsupportedOpError(f"node '{node.name}': {node.op} has no int16 output")
            first = len(self.g.nodes)
            if node.op not in WIDE_INPUT_OPS and any(i in self.wide for i in node.inputs):
                node = Node(node.op, node.name, [self.narrow(i) if i in self.wide else i for i in node.inputs],
                            node.outputs, node.attrs, node.source_ops)
            handler(node)
            for made in self.g.nodes[first:]:  # (a QRequantize made for this node's input serves it too)
                made.source_ops = list(node.source_ops)
        _fuse_tables(self.g)
        return self.g

    def _weighted(self, node: Node, op: str, attrs: dict) -> None:
        x, wname = node.inputs[0], node.inputs[1]
        w = self.fg.consts[wname]
        b = self.fg.consts[node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] else np.zeros(w.shape[0], np.float32)
        sx, zx = self.act(x)
        sy, zy = self.act(node.outputs[0])
        amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float64)
        k = int(np.prod(w.shape[1:]))
        # A channel with (near-)zero weights but a real bias: widen its weight scale until the bias fits
        # the int32 accumulator next to the largest possible sum of products. (An int16 input: the kernels
        # accumulate in int64 where needed, so only the bias itself must fit int32.)
        wide_x = self.bits(x) == 16
        products = 0 if wide_x else k * 127 * 255
        budget = 2**31 - 1 - products
        floor = np.abs(b.astype(np.float64)) / (sx * max(budget, 1)) * 1.01
        sw = np.maximum(np.where(amax > 0, amax / 127, 1e-8), floor)
        wq = np.clip(np.round(w / sw.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)
        bq = np.clip(np.round(b / (sx * sw)), -(2**31), 2**31 - 1).astype(np.int32)
        if products + int(np.abs(bq.astype(np.int64)).max()) >= 2**31:
            raise ModelError(f"node '{node.name}': int32 accumulator could overflow (K={k}); split the layer")
        mults, shifts = zip(*(quantize_multiplier(sx * s / sy) for s in sw))
        g, base = self.g, node.name
        inputs = [x, g.add_const(g.unique_name(base + "_wq"), wq, scale=sw.tolist(), zero_point=[0] * len(sw), axis=0),
                  g.add_const(g.unique_name(base + "_bq"), bq, scale=(sx * sw).tolist(), zero_point=[0] * len(sw), axis=0),
                  g.add_const(g.unique_name(base + "_mult"), np.array(mults, dtype=np.int32)),
                  g.add_const(g.unique_name(base + "_shift"), np.array(shifts, dtype=np.int32))]
        bits = {"x_bits": self.bits(x), "y_bits": self.bits(node.outputs[0])}
        if op != "QConv" and bits != {"x_bits": 8, "y_bits": 8}:
            raise UnsupportedOpError(f"node '{node.name}': {op} has no int16 variant")
        lo, hi = _act_bounds(node.attrs.get("act"), sy, zy, bits["y_bits"])
        g.nodes.append(Node(op, node.name, inputs, list(node.outputs),
                            dict(attrs, x_zp=zx, y_zp=zy, act_min=lo, act_max=hi,
                                 **({} if bits == {"x_bits": 8, "y_bits": 8} else bits))))

    def q_Conv(self, node: Node) -> None:
        a = node.attrs
        self._weighted(node, "QConv", dict(strides=a["strides"], pads=a["pads"], dilations=a["dilations"],
                                           group=a["group"]))

    def q_FullyConnected(self, node: Node) -> None:
        if len(self.fg.tensors[node.inputs[0]].shape) == 2:
            self._weighted(node, "QFullyConnected", {})
            return
        # A Linear layer over a sequence [N, ..., K]: every row against the same constant weights.
        k = self.fg.tensors[node.inputs[0]].shape[-1]
        if k > MATMUL_K_MAX:
            raise ModelError(f"node '{node.name}': reduction length {k} exceeds {MATMUL_K_MAX}")
        self._weighted(node, "QMatMul", {"b_nk": 1})
        q = self.g.nodes[-1]
        q.attrs["a_zp"], q.attrs["b_zp"] = q.attrs.pop("x_zp"), 0

    def q_ConvTranspose(self, node: Node) -> None:
        a = node.attrs
        self._weighted(node, "QConvTranspose", dict(strides=a["strides"], pads=a["pads"], dilations=a["dilations"],
                                                    group=a["group"], out=a["out"]))

    def q_MatMul(self, node: Node) -> None:
        """Between two activations: y = requant((a - za) @ (b - zb)), one scale for every column."""
        (a, sa, za), (b, sb, zb) = self._binary_operands(node)
        sy, zy = self.act(node.outputs[0])
        k = self.fg.tensors[node.inputs[0]].shape[-1]
        cols = self.fg.tensors[node.outputs[0]].shape[-1]
        if k > MATMUL_K_MAX:
            raise ModelError(f"MatMul node '{node.name}': reduction length {k} exceeds {MATMUL_K_MAX}")
        if self.fg.tensors[node.inputs[0]].shape[:-2] != self.fg.tensors[node.inputs[1]].shape[:-2]:
            raise UnsupportedOpError(f"MatMul node '{node.name}': broadcasting leading dimensions is not supported")
        m, sh = quantize_multiplier(sa * sb / sy)
        g, base = self.g, node.name
        consts = [g.add_const(g.unique_name(base + "_bias"), np.zeros(cols, np.int32)),
                  g.add_const(g.unique_name(base + "_mult"), np.full(cols, m, np.int32)),
                  g.add_const(g.unique_name(base + "_shift"), np.full(cols, sh, np.int32))]
        g.nodes.append(Node("QMatMul", node.name, [a, b, *consts], list(node.outputs),
                            dict(b_nk=0, a_zp=za, b_zp=zb, y_zp=zy, act_min=QMIN, act_max=QMAX)))

    def _view(self, node: Node, shape: list[int], strides: list[int], offset: int) -> None:
        """A gather that keeps the input's quantization (Transpose, Slice)."""
        self._same_scale(node, "QStridedCopy", dict(shape=[int(v) for v in shape],
                                                    strides=[int(v) for v in strides], offset=int(offset)))

    @staticmethod
    def _strides(shape: tuple[int, ...]) -> list[int]:
        return [int(np.prod(shape[k + 1:])) for k in range(len(shape))]

    def q_Transpose(self, node: Node) -> None:
        perm = node.attrs["perm"]
        if perm[0] != 0:
            raise UnsupportedOpError(f"Transpose node '{node.name}': moving the batch axis (perm={perm}) is not "
                                     "supported")
        shape = self.fg.tensors[node.inputs[0]].shape[1:]
        strides = self._strides(shape)
        self._view(node, [shape[p - 1] for p in perm[1:]], [strides[p - 1] for p in perm[1:]], 0)

    def q_Slice(self, node: Node) -> None:
        full = self.fg.tensors[node.inputs[0]].shape
        vals = [self.fg.consts.get(i) for i in node.inputs[1:]]
        if any(v is None for v in vals):
            raise UnsupportedOpError(f"Slice node '{node.name}': starts/ends/axes/steps must be constants")
        starts, ends = vals[0].reshape(-1), vals[1].reshape(-1)
        axes = vals[2].reshape(-1) if len(vals) > 2 else np.arange(len(starts))
        steps = vals[3].reshape(-1) if len(vals) > 3 else np.ones(len(starts), np.int64)
        shape = list(full[1:])
        strides = self._strides(tuple(shape))
        out, out_strides, offset = list(shape), list(strides), 0
        for s0, e0, ax, st in zip(starts, ends, axes, steps):
            ax = int(ax) % len(full)
            if ax == 0:
                raise UnsupportedOpError(f"Slice node '{node.name}': slicing the batch axis is not supported")
            start, stop, step = slice(int(s0), int(e0), int(st)).indices(full[ax])
            out[ax - 1] = len(range(start, stop, step))
            out_strides[ax - 1] = strides[ax - 1] * step
            offset += start * strides[ax - 1]
        if min(out) < 1:
            raise UnsupportedOpError(f"Slice node '{node.name}': empty slice")
        self._view(node, out, out_strides, offset)

    def q_Squeeze(self, node: Node) -> None:
        self._same_scale(node, "QReshape", dict(shape=list(self.fg.tensors[node.outputs[0]].shape)))

    q_Unsqueeze = q_Squeeze

    def q_Resize(self, node: Node) -> None:
        a = node.attrs
        _, _, h, w = self.fg.tensors[node.inputs[0]].shape
        tables = [self.g.add_const(self.g.unique_name(node.name + tag),
                                   resize_table(n_in, n_out, a["mode"], a["coord"], a["nearest_mode"], scale))
                  for tag, n_in, n_out, scale in (("_rows", h, a["size"][0], a["scales"][0]),
                                                  ("_cols", w, a["size"][1], a["scales"][1]))]
        qp = self.act(node.inputs[0])
        self.act(node.outputs[0], qp)
        self.g.nodes.append(Node("QResize", node.name, [node.inputs[0], *tables], list(node.outputs), {"zp": qp[1]}))

    def q_LayerNorm(self, node: Node) -> None:
        """Integer-only LayerNorm (reference.layer_norm): gamma and beta folded with the output scale."""
        x, gname, bname = node.inputs
        sx, zx = self.act(x)
        sy, zy = self.act(node.outputs[0])
        cols = self.fg.tensors[x].shape[-1]
        if cols > 4096:
            raise UnsupportedOpError(f"LayerNorm node '{node.name}': rows of {cols} values (at most 4096)")
        gamma = np.asarray(self.fg.consts[gname], np.float64).reshape(-1)
        beta = np.asarray(self.fg.consts[bname], np.float64).reshape(-1)
        lim = (-(2**31), 2**31 - 1)
        gq = np.clip(np.round(gamma / sy * 2**(LN_OUT_BITS - LN_NORM_BITS)), *lim).astype(np.int32)
        bq = np.clip(np.round(beta / sy * 2**LN_OUT_BITS), *lim).astype(np.int32)
        # eps in the kernel's units: the variance of C * (x - x_zp), i.e. (C / s_x)^2 times the real one.
        eps = int(min(round(node.attrs["eps"] * (cols / sx) ** 2), 1 << 40))
        g = self.g
        self.g.nodes.append(Node("QLayerNorm", node.name, [x, g.add_const(g.unique_name(node.name + "_gamma"), gq),
                                                           g.add_const(g.unique_name(node.name + "_beta"), bq)],
                                 list(node.outputs), dict(x_zp=zx, y_zp=zy, eps=eps, act_min=QMIN, act_max=QMAX)))

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
        x, y = node.inputs[0], node.outputs[0]
        sx, zx = self.act(x)
        sy, zy = self.act(y, FIXED_OUTPUT.get(node.op))
        bits = {"x_bits": self.bits(x), "y_bits": self.bits(y)}
        if bits["x_bits"] == 8:  # every int8 input value
            real = (np.arange(QMIN, QMAX + 1, dtype=np.float64) - zx) * sx
        else:  # the interpolation samples of reference.lut
            real = (np.arange(LUT16_STEPS + 1, dtype=np.float64) * 65536 / LUT16_STEPS - 32768) * sx
        f = ACTIVATIONS[node.op](real, node.attrs)
        dtype = np.int8 if bits == {"x_bits": 8, "y_bits": 8} else np.int16
        table = np.clip(np.round(f / sy) + zy, *act_limits(bits["y_bits"])).astype(dtype)
        name = self.g.add_const(self.g.unique_name(node.name + "_table"), table)
        self.g.nodes.append(Node("QLut", node.name, [x, name], list(node.outputs),
                                 {} if bits == {"x_bits": 8, "y_bits": 8} else bits))

    q_Relu = q_Clip = q_HardSigmoid = q_HardSwish = q_Sigmoid = q_Swish = q_Gelu = q_Chain = _table

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
    for lut in [n for n in g.nodes if n.op == "QLut" and not n.attrs]:  # int8 tables only
        prod = producers.get(lut.inputs[0])
        weighted = ("QConv", "QFullyConnected", "QMatMul", "QConvTranspose")
        ok = prod is not None and prod.op in weighted + ("QAdd", "QMul") \
            and len(consumers.get(lut.inputs[0], [])) == 1 and lut.inputs[0] not in g.outputs
        n_plain = 5 if prod is not None and prod.op in weighted else 2
        if not ok or len(prod.inputs) > n_plain:
            continue
        prod.inputs.append(lut.inputs[1])
        prod.outputs = list(lut.outputs)
        prod.absorb(lut)
        producers[lut.outputs[0]] = prod
        g.nodes.remove(lut)
    g.prune()


def quantize_graph(fg: Graph, ranges: dict[str, tuple[float, float]], wide: frozenset[str] = frozenset()) -> Graph:
    """Integer-only graph for ``fg`` given the calibrated float ranges of its activations; the tensors in
    ``wide`` (outputs of WIDE_OUTPUT_OPS, not graph inputs or outputs) become int16."""
    bad = [t for t in wide if t in fg.inputs or t in fg.outputs]
    if bad:
        raise UnsupportedOpError(f"tensor '{bad[0]}' is a model input or output; those stay int8")
    return _Quantizer(fg, ranges, frozenset(wide)).run()
