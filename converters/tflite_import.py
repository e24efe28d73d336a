"""TFLite import: a fully-quantized int8 ``.tflite`` model -> edgeq's integer graph, directly (float32
models: ``tflite_float``; reading the file: ``tflite_read``).

An int8 model already carries TFLite's scales and zero points, so there is no calibration: every TFLite op
maps onto the integer ops of ``runtimes/registry.py`` with its multipliers computed as TFLite's kernels
compute them (``QuantizeMultiplier`` on ``double(s_in) * s_w / s_out``), which makes edgeq's int8 outputs
byte-equal to TFLite's reference kernels (docs/tflite-import.md says where they are not).

Layout: TFLite is NHWC, edgeq's window ops are NCHW. Every tensor here has a *stored* axis order (stored
axis k is TFLite axis ``order[k]``); an op that needs another order gets a copy made once per tensor and
order, so model inputs and outputs keep TFLite's layout and RESHAPE keeps TFLite's flattening.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeq.errors import ModelError, UnsupportedOpError
from edgeq.ir import Graph, Node, Tensor
from edgeq.runtimes.fixedpoint import (multiply_by_quantized_multiplier, rounding_divide_by_pot,
                                       saturating_rounding_doubling_high_mul)
from edgeq.runtimes.reference import conv_out_size
from edgeq.runtimes.registry import STRIDED_RANK
from .quantize import QMAX, QMIN, _fuse_tables, quantize_multiplier, round_half_away
from .tflite_read import SUPPORTED_OPS, TFLiteModel, TFLiteOp, TFLiteTensor, parse_tflite, read_bytes

NCHW = (0, 3, 1, 2)  # stored order of a 4-D tensor for the window ops: stored axis k = NHWC axis NCHW[k]
_ACTIVATIONS = {0: None, 1: (0.0, None), 2: (-1.0, 1.0), 3: (0.0, 6.0)}  # fused NONE, RELU, RELU_N1_TO_1, RELU6


def _same_pads(size: int, k: int, stride: int, dilation: int, padding: int) -> tuple[int, int, int]:
    """(output size, pad before, pad after) as TFLite's ComputePaddingHeightWidth (padding 0 SAME, 1 VALID)."""
    eff = (k - 1) * dilation + 1
    out = (size + stride - 1) // stride if padding == 0 else (size + stride - eff) // stride
    total = max((out - 1) * stride + eff - size, 0)
    return out, total // 2, total - total // 2


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


class _Builder:
    def __init__(self, model: TFLiteModel):
        self.m = model
        self.g = Graph([], {}, [], [])
        self.stored: dict[int, dict[tuple[int, ...], str]] = {}  # tensor -> {stored order: edgeq name}
        self.pads: dict[int, tuple[int, list[int]]] = {}  # folded PAD output -> (its input, extra pads t l b r)

    # --- tensors ---------------------------------------------------------------------------------------
    def t(self, i: int) -> TFLiteTensor:
        return self.m.tensors[i]

    def qp(self, i: int) -> tuple[float, int]:
        """(scale, zero point) of int8 activation ``i``: per tensor, as TFLite requires."""
        t = self.t(i)
        if t.scale is None or t.scale.size != 1:
            raise ModelError(f"tensor '{t.name}': an int8 activation needs one scale and zero point")
        return float(t.scale[0]), int(t.zero_point[0]) if t.zero_point.size else 0

    def define(self, i: int, order: tuple[int, ...] | None = None) -> str:
        """Register activation ``i`` stored in ``order`` (TFLite's by default) and return its name."""
        t = self.t(i)
        order = order or tuple(range(len(t.shape)))
        base = t.name if order == tuple(range(len(t.shape))) else t.name + "_nchw"
        name = self.g.unique_name(base or f"t{i}")
        self.g.tensors[name] = self.tensor(i, name, tuple(t.shape[k] for k in order))
        self.stored.setdefault(i, {})[order] = name
        return name

    def tensor(self, i: int, name: str, shape: tuple[int, ...]) -> Tensor:
        """The graph tensor of activation ``i``: int8 with TFLite's scale and zero point."""
        if self.t(i).dtype != "INT8":
            raise ModelError(f"tensor '{self.t(i).name}' is {self.t(i).dtype}; edgeq imports fully-quantized int8 "
                             "TFLite models (int8 activations, optionally float32 at the inputs and outputs)")
        s, z = self.qp(i)
        return Tensor(name, shape, "int8", [s], [z], None)

    def view(self, i: int, order: tuple[int, ...]) -> str:
        """Tensor ``i`` stored in ``order``: a copy from the order it has (a view when only size-1 axes
        move), made once."""
        have = self.stored[i]
        if order in have:
            return have[order]
        src_order, src = next(iter(have.items()))
        shape = self.t(i).shape
        # stored axis k of the result is stored axis q[k] of the source
        q = [_inverse(src_order)[order[k]] for k in range(len(order))]
        if q[0] != 0 and not _moves_only_ones(shape, src_order, order):
            raise UnsupportedOpError(f"tensor '{self.t(i).name}': moving the batch axis is not supported")
        name = self.define(i, order)
        if _moves_only_ones(shape, src_order, order):
            self.g.nodes.append(self.reshape_node(name, src, [shape[k] for k in order]))
        else:
            self.g.nodes.append(self.permute_node(name, src, q))
        return name

    def reshape_node(self, y: str, x: str, shape: list[int]) -> Node:
        return Node("QReshape", y, [x], [y], {"shape": [int(v) for v in shape]})

    def permute_node(self, y: str, x: str, perm: list[int]) -> Node:
        """y = x transposed by ``perm`` (batch first): a gather with the permuted strides."""
        src_shape = self.g.tensors[x].shape[1:]
        strides = [int(np.prod(src_shape[k + 1:])) for k in range(len(src_shape))]
        return Node("QStridedCopy", y, [x], [y], {"shape": [int(src_shape[k - 1]) for k in perm[1:]],
                                                 "strides": [strides[k - 1] for k in perm[1:]], "offset": 0})

    def any_view(self, i: int) -> tuple[str, tuple[int, ...]]:
        order, name = next(iter(self.stored[i].items()))
        return name, order

    def const(self, op: TFLiteOp, k: int, what: str) -> np.ndarray:
        i = op.inputs[k] if k < len(op.inputs) else -1
        if i < 0 or self.t(i).data is None:
            raise UnsupportedOpError(f"{op.code} (node {op.index}): the {what} must be a constant")
        return self.t(i).data

    def act_bounds(self, op: TFLiteOp, i: int) -> tuple[int, int]:
        """The fused activation as an int8 clamp on output ``i`` (TFLite's CalculateActivationRangeQuantized)."""
        fused = op.options.get("FusedActivationFunction", 0)
        if fused not in _ACTIVATIONS:
            raise UnsupportedOpError(f"{op.code} (node {op.index}): fused activation {fused} is not supported "
                                     "(supported: NONE, RELU, RELU_N1_TO_1, RELU6)")
        if _ACTIVATIONS[fused] is None:
            return QMIN, QMAX
        s, z = self.qp(i)
        lo, hi = _ACTIVATIONS[fused]
        q = lambda f: z + round_half_away(float(np.float32(f) / np.float32(s)))  # noqa: E731 (float math as TFLite)
        return max(QMIN, q(lo)), QMAX if hi is None else min(QMAX, q(hi))

    # --- ops -------------------------------------------------------------------------------------------
    def weighted(self, op: TFLiteOp, qop: str, w: np.ndarray, w_scale: np.ndarray, x: str, attrs: dict) -> None:
        """QConv / QFullyConnected with TFLite's bias and per-channel multipliers; ``w`` is already in
        edgeq's layout, output channel first."""
        oc = w.shape[0]
        sx, zx = self.qp(op.inputs[0])
        sy, zy = self.qp(op.outputs[0])
        sw = np.broadcast_to(w_scale.astype(np.float32), (oc,))
        bias = np.zeros(oc, np.int32)
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            bias = self.const(op, 2, "bias").astype(np.int64).reshape(-1)
            if bias.size != oc:
                raise ModelError(f"{op.code} (node {op.index}): {bias.size} biases for {oc} output channels")
            if self.t(op.inputs[2]).dtype != "INT32":
                raise UnsupportedOpError(f"{op.code} (node {op.index}): bias of type {self.t(op.inputs[2]).dtype} "
                                         "(int8 models carry int32 biases)")
        k = int(np.prod(w.shape[1:]))
        if k * 127 * 255 + int(np.abs(bias).max(initial=0)) >= 2**31:
            raise ModelError(f"{op.code} (node {op.index}): int32 accumulator could overflow (K={k})")
        # TFLite, per channel: static_cast<double>(input_scale) * filter_scale / output_scale; a per-tensor
        # FULLY_CONNECTED (GetQuantizedConvolutionMultipler) multiplies the two scales in float32 first.
        if qop == "QFullyConnected" and w_scale.size == 1:
            mults, shifts = zip(*[quantize_multiplier(float(np.float32(sx) * sw[0]) / sy)] * oc)
        else:
            mults, shifts = zip(*(quantize_multiplier(float(sx) * float(s) / float(sy)) for s in sw))
        g, base = self.g, self.t(op.outputs[0]).name or qop
        y = self.define(op.outputs[0], attrs.pop("order", None))
        lo, hi = self.act_bounds(op, op.outputs[0])
        inputs = [x, g.add_const(g.unique_name(base + "_wq"), w.astype(np.int8), scale=sw.tolist(),
                                 zero_point=[0] * oc, axis=0),
                  g.add_const(g.unique_name(base + "_bq"), bias.astype(np.int32)),
                  g.add_const(g.unique_name(base + "_mult"), np.array(mults, np.int32)),
                  g.add_const(g.unique_name(base + "_shift"), np.array(shifts, np.int32))]
        g.nodes.append(Node(qop, y, inputs, [y], dict(attrs, x_zp=zx, y_zp=zy, act_min=lo, act_max=hi)))

    def window(self, op: TFLiteOp, kh: int, kw: int) -> dict:
        """strides, pads, dilations of a window op on the NCHW input, checked against TFLite's output shape."""
        o = op.options
        _, h, w, _ = self.t(op.inputs[0]).shape  # (after a folded PAD: the padded size)
        dh, dw = o.get("DilationHFactor", 1), o.get("DilationWFactor", 1)
        oh, pt, pb = _same_pads(h, kh, o["StrideH"], dh, o["Padding"])
        ow, pl, pr = _same_pads(w, kw, o["StrideW"], dw, o["Padding"])
        if (oh, ow) != tuple(self.t(op.outputs[0]).shape[1:3]) or min(oh, ow) < 1 or \
                conv_out_size(h, kh, o["StrideH"], pt, pb, dh) != oh:
            raise ModelError(f"{op.code} (node {op.index}): output shape {self.t(op.outputs[0]).shape} does not "
                             f"match the window (expected {oh}x{ow})")
        extra = self.pads.get(op.inputs[0], (None, [0, 0, 0, 0]))[1]
        return {"strides": [o["StrideH"], o["StrideW"]], "pads": [v + e for v, e in zip([pt, pl, pb, pr], extra)],
                "dilations": [dh, dw]}

    def _nchw_input(self, op: TFLiteOp) -> str:
        if len(self.t(op.inputs[0]).shape) != 4:
            raise UnsupportedOpError(f"{op.code} (node {op.index}): input must be 4-D NHWC")
        return self.view(self.pads.get(op.inputs[0], (op.inputs[0],))[0], NCHW)

    def fold_pad(self, op: TFLiteOp, users: list[TFLiteOp]) -> bool:
        """A PAD of H and W feeding only a convolution becomes that convolution's padding (TFLite pads int8
        with the zero point, as edgeq's QConv does)."""
        p = self.const(op, 1, "paddings").reshape(-1, 2)
        if len(users) != 1 or users[0].code not in ("CONV_2D", "DEPTHWISE_CONV_2D") or users[0].inputs[0] != \
                op.outputs[0] or p.shape[0] != 4 or p[0].any() or p[3].any() or (p < 0).any():
            return False
        self._same_quant(op)
        self.pads[op.outputs[0]] = (op.inputs[0], [int(p[1, 0]), int(p[2, 0]), int(p[1, 1]), int(p[2, 1])])
        return True

    def op_PAD(self, op: TFLiteOp) -> None:
        raise UnsupportedOpError(f"PAD (node {op.index}) is supported only on H and W right before a CONV_2D or "
                                 "DEPTHWISE_CONV_2D (it becomes the convolution's padding)")

    def _weights(self, op: TFLiteOp) -> tuple[np.ndarray, np.ndarray]:
        w = self.const(op, 1, "filter")
        t = self.t(op.inputs[1])
        if t.dtype != "INT8" or t.scale is None:
            raise UnsupportedOpError(f"{op.code} (node {op.index}): filter of type {t.dtype} (int8 models have "
                                     "int8 filters with per-channel scales)")
        if np.any(t.zero_point != 0):
            raise ModelError(f"{op.code} (node {op.index}): int8 filters must be symmetric (zero point 0)")
        channel_axis = 3 if op.code == "DEPTHWISE_CONV_2D" else 0
        if t.scale.size not in (1, w.shape[channel_axis]) or (t.scale.size > 1 and t.axis != channel_axis):
            raise ModelError(f"{op.code} (node {op.index}): {t.scale.size} filter scales along axis {t.axis} for "
                             f"filter {w.shape} (per-channel scales go along axis {channel_axis})")
        return w, t.scale

    def op_CONV_2D(self, op: TFLiteOp) -> None:
        x = self._nchw_input(op)
        w, sw = self._weights(op)
        c = self.t(op.inputs[0]).shape[3]
        if c % w.shape[3]:
            raise ModelError(f"CONV_2D (node {op.index}): {c} input channels, filter depth {w.shape[3]}")
        self.weighted(op, "QConv", w.transpose(0, 3, 1, 2), sw, x,
                      dict(self.window(op, w.shape[1], w.shape[2]), group=c // w.shape[3], order=NCHW))

    def op_DEPTHWISE_CONV_2D(self, op: TFLiteOp) -> None:
        x = self._nchw_input(op)
        w, sw = self._weights(op)
        c = self.t(op.inputs[0]).shape[3]
        if w.shape[3] != c * op.options["DepthMultiplier"] and w.shape[3] % c:
            raise ModelError(f"DEPTHWISE_CONV_2D (node {op.index}): filter {w.shape} for {c} channels")
        # TFLite output channel ic * multiplier + m reads input channel ic: edgeq's grouped conv, group = C
        self.weighted(op, "QConv", w[0].transpose(2, 0, 1)[:, None], sw, x,
                      dict(self.window(op, w.shape[1], w.shape[2]), group=c, order=NCHW))

    def op_FULLY_CONNECTED(self, op: TFLiteOp) -> None:
        w, sw = self._weights(op)
        xt = self.t(op.inputs[0])
        oc, k = w.shape
        y_shape = self.t(op.outputs[0]).shape
        if xt.shape[0] != 1 or int(np.prod(xt.shape[1:])) != k or y_shape != (1, oc):
            raise UnsupportedOpError(f"FULLY_CONNECTED (node {op.index}): input {xt.shape} -> {y_shape} (edgeq takes "
                                     f"one row of {k} values per sample)")
        x, order = self.any_view(op.inputs[0])
        # Read the input in the order it is stored: permute the weight columns instead of the activation.
        w = w.reshape((oc,) + xt.shape[1:]).transpose((0,) + order[1:]).reshape(oc, k)
        if len(xt.shape) != 2:
            flat = self.g.unique_name(x + "_flat")
            self.g.tensors[flat] = Tensor(flat, (1, k), "int8", *([v] for v in self.qp(op.inputs[0])), None)
            self.g.nodes.append(Node("QReshape", flat, [x], [flat], {"shape": [1, k]}))
            x = flat
        self.weighted(op, "QFullyConnected", w, sw, x, {"single_rounding": True})  # as LiteRT's reference FC

    def _operands(self, op: TFLiteOp) -> tuple[list[str], tuple[int, ...]]:
        """Both operands of a binary op in one stored order (the first activation's), constants included."""
        out_rank = len(self.t(op.outputs[0]).shape)
        acts = [i for i in op.inputs if self.t(i).data is None]
        order = self.any_view(acts[0])[1] if acts else tuple(range(out_rank))
        if len(order) != out_rank:
            raise UnsupportedOpError(f"{op.code} (node {op.index}): broadcasting an activation of lower rank")
        names = []
        for i in op.inputs:
            t = self.t(i)
            if t.data is None:
                names.append(self.view(i, order))
                continue
            if t.dtype != "INT8":
                raise UnsupportedOpError(f"{op.code} (node {op.index}): constant operand of type {t.dtype}")
            s, z = self.qp(i)
            v = t.data.reshape((1,) * (out_rank - t.data.ndim) + t.data.shape).transpose(order)
            names.append(self.g.add_const(self.g.unique_name((t.name or "c") + "_q"), v, scale=[s], zero_point=[z],
                                          axis=None))
        return names, order

    def op_ADD(self, op: TFLiteOp) -> None:
        (a, b), order = self._operands(op)
        (sa, za), (sb, zb) = self.qp(op.inputs[0]), self.qp(op.inputs[1])
        sy, zy = self.qp(op.outputs[0])
        # TFLite's int8 Add: both inputs << 20, rescaled to twice the larger input scale, summed, rescaled
        twice = 2 * float(max(np.float32(sa), np.float32(sb)))
        am, ash = quantize_multiplier(sa / twice)
        bm, bsh = quantize_multiplier(sb / twice)
        ym, ysh = quantize_multiplier(twice / ((1 << 20) * sy))
        lo, hi = self.act_bounds(op, op.outputs[0])
        y = self.define(op.outputs[0], order)
        self.g.nodes.append(Node("QAdd", y, [a, b], [y], dict(
            a_zp=za, b_zp=zb, y_zp=zy, a_mult=am, a_shift=ash, b_mult=bm, b_shift=bsh, y_mult=ym, y_shift=ysh,
            act_min=lo, act_max=hi)))

    def op_MUL(self, op: TFLiteOp) -> None:
        (a, b), order = self._operands(op)
        (sa, za), (sb, zb) = self.qp(op.inputs[0]), self.qp(op.inputs[1])
        sy, zy = self.qp(op.outputs[0])
        ym, ysh = quantize_multiplier(float(np.float32(sa) * np.float32(sb) / np.float32(sy)))  # float math, as TFLite
        lo, hi = self.act_bounds(op, op.outputs[0])
        y = self.define(op.outputs[0], order)
        self.g.nodes.append(Node("QMul", y, [a, b], [y], dict(
            a_zp=za, b_zp=zb, y_zp=zy, y_mult=ym, y_shift=ysh, act_min=lo, act_max=hi)))

    def op_DIV(self, op: TFLiteOp) -> None:
        """x / c for a constant scalar c: a QLut of TFLite's integer DivElementwise. A divisor that is an
        activation would need a 256 x 256 table op, which edgeq's runtime does not have."""
        t = self.t(op.inputs[1])
        if self.t(op.inputs[0]).data is not None or t.data is None or t.data.size != 1 or t.dtype != "INT8" or \
                self.t(op.inputs[0]).shape != self.t(op.outputs[0]).shape:
            raise UnsupportedOpError(f"DIV (node {op.index}): only an activation divided by a constant int8 scalar "
                                     "is supported")
        (s1, z1), (s2, z2), (sy, zy) = self.qp(op.inputs[0]), self.qp(op.inputs[1]), self.qp(op.outputs[0])
        d = int(t.data.reshape(-1)[0]) - z2
        if d == 0:
            raise ModelError(f"DIV (node {op.index}): the divisor is its zero point (a division by zero)")
        f32 = np.float32
        mult, shift = quantize_multiplier(float(f32(s1) / (f32(s2) * f32(sy))))  # float math, as TFLite
        lo, hi = self.act_bounds(op, op.outputs[0])
        self.table(op, lambda v: np.clip(zy + _divide(np.sign(d) * (v - z1), abs(d), mult, shift, op), lo, hi))

    def op_SUB(self, op: TFLiteOp) -> None:
        # TFLite's int8 SUB is its ADD arithmetic (same shifts and multipliers) subtracting the rescaled second
        # input; MultiplyByQuantizedMultiplier is odd in the multiplier, so a negated one subtracts exactly.
        self.op_ADD(op)
        self.g.nodes[-1].attrs["b_mult"] *= -1

    def _same_quant(self, op: TFLiteOp, i: int = 0, o: int = 0) -> None:
        if self.qp(op.inputs[i]) != self.qp(op.outputs[o]):
            raise ModelError(f"{op.code} (node {op.index}): input and output quantization differ "
                             f"({self.qp(op.inputs[i])} vs {self.qp(op.outputs[o])}); TFLite requires them equal")

    def _pool(self, op: TFLiteOp, qop: str, extra: dict) -> None:
        self._same_quant(op)
        x = self._nchw_input(op)
        win = self.window(op, op.options["FilterHeight"], op.options["FilterWidth"])
        lo, hi = self.act_bounds(op, op.outputs[0])
        y = self.define(op.outputs[0], NCHW)
        self.g.nodes.append(Node(qop, y, [x], [y], dict(win, kernel=[op.options["FilterHeight"],
                                                                     op.options["FilterWidth"]],
                                                        act_min=lo, act_max=hi, **extra)))

    def op_MAX_POOL_2D(self, op: TFLiteOp) -> None:
        self._pool(op, "QMaxPool", {})

    def op_AVERAGE_POOL_2D(self, op: TFLiteOp) -> None:
        # TFLite averages the raw int8 values (input and output share scale and zero point): zero points 0
        # here give the same sum, count and rounding.
        self._pool(op, "QAvgPool", {"count_include_pad": 0, "x_zp": 0, "y_zp": 0})
        del self.g.nodes[-1].attrs["dilations"]

    def op_MEAN(self, op: TFLiteOp) -> None:
        axes = sorted(int(a) % 4 for a in self.const(op, 1, "axes").reshape(-1))
        if len(self.t(op.inputs[0]).shape) != 4 or axes != [1, 2]:
            raise UnsupportedOpError(f"MEAN (node {op.index}): only over H and W of a 4-D tensor (axes {axes})")
        # TFLite's integer QuantizedMeanOrSum: MultiplyByQuantizedMultiplier(sum(x - z_x), m', s') + z_y where
        # 1 / (H*W) is folded into QuantizeMultiplier(s_x / s_y) by an integer division: m' = (m << k) / (H*W),
        # s' = s - k, k = min(floor(log2(H*W)), 32, 31 + s). A depthwise QConv with a kernel of ones over
        # the whole plane computes exactly that.
        _, h, w, c = self.t(op.inputs[0]).shape
        (sx, zx), (sy, zy) = self.qp(op.inputs[0]), self.qp(op.outputs[0])
        m, sh = quantize_multiplier(sx / sy)
        k = min((h * w).bit_length() - 1, 32, 31 + sh)
        x = self.view(op.inputs[0], NCHW)
        keep = len(self.t(op.outputs[0]).shape) == 4
        y = self.define(op.outputs[0], NCHW) if keep else self.g.unique_name(self.t(op.outputs[0]).name + "_nchw")
        if not keep:
            self.g.tensors[y] = Tensor(y, (1, c, 1, 1), "int8", [sy], [zy], None)
        g = self.g
        consts = [g.add_const(g.unique_name(y + "_ones"), np.ones((c, 1, h, w), np.int8), scale=[1.0] * c,
                              zero_point=[0] * c, axis=0),
                  g.add_const(g.unique_name(y + "_bias"), np.zeros(c, np.int32)),
                  g.add_const(g.unique_name(y + "_mult"), np.full(c, (m << k) // (h * w), np.int32)),
                  g.add_const(g.unique_name(y + "_shift"), np.full(c, sh - k, np.int32))]
        g.nodes.append(Node("QConv", y, [x, *consts], [y], dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1],
                                                               group=c, x_zp=zx, y_zp=zy, act_min=QMIN, act_max=QMAX)))
        if not keep:
            flat = self.define(op.outputs[0])
            g.nodes.append(Node("QReshape", flat, [y], [flat], {"shape": [1, c]}))

    def op_SOFTMAX(self, op: TFLiteOp) -> None:
        rank = len(self.t(op.inputs[0]).shape)
        x = self.view(op.inputs[0], tuple(range(rank)))
        sx, _ = self.qp(op.inputs[0])
        if self.qp(op.outputs[0]) != (1 / 256, -128):
            raise ModelError(f"SOFTMAX (node {op.index}): int8 output must have scale 1/256 and zero point -128")
        beta = float(op.options.get("Beta", 1.0))
        table = np.round(np.exp(-np.arange(256) * sx * beta) * (1 << 20)).astype(np.int32)
        y = self.define(op.outputs[0])
        self.g.nodes.append(Node("QSoftmax", y, [x, self.g.add_const(self.g.unique_name(y + "_exp"), table)], [y], {}))

    def table(self, op: TFLiteOp, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        """A unary op as a 256-entry QLut; ``fn`` maps every int8 input value to TFLite's int8 output."""
        x, order = self.any_view(op.inputs[0])
        values = fn(np.arange(QMIN, QMAX + 1, dtype=np.int64))
        y = self.define(op.outputs[0], order)
        self.g.nodes.append(Node("QLut", y, [x, self.g.add_const(self.g.unique_name(y + "_table"),
                                                                 np.clip(values, QMIN, QMAX).astype(np.int8))], [y], {}))

    def _float_table(self, op: TFLiteOp, f: Callable[[np.ndarray], np.ndarray]) -> None:
        # TFLite's PopulateLookupTable, in float32 as there: round(f(s_x * (v - z_x)) * (1 / s_y)) + z_y
        (sx, zx), (sy, zy) = self.qp(op.inputs[0]), self.qp(op.outputs[0])
        with np.errstate(over="ignore"):  # exp overflows to inf, then 1 / (1 + inf) = 0, as in C
            self.table(op, lambda v: (_round_half_away(f(np.float32(sx) * (v - zx).astype(np.float32))
                                                       * (np.float32(1) / np.float32(sy))) + np.float32(zy))
                          .astype(np.int64))

    def op_LOGISTIC(self, op: TFLiteOp) -> None:
        self._float_table(op, lambda v: np.float32(1) / (np.float32(1) + np.exp(-v)))

    def op_TANH(self, op: TFLiteOp) -> None:
        self._float_table(op, np.tanh)

    def _requant_table(self, op: TFLiteOp, lo: float | None, hi: float | None) -> None:
        """TFLite's integer ReluX / Requantize: y = z_y + mbqm(x - z_x, s_x / s_y), clamped to [lo, hi]."""
        (sx, zx), (sy, zy) = self.qp(op.inputs[0]), self.qp(op.outputs[0])
        # ReluPrepare divides the two float scales in float; QUANTIZE casts them to double first
        m, sh = quantize_multiplier(sx / sy if op.code == "QUANTIZE" else float(np.float32(sx) / np.float32(sy)))
        qmin = QMIN if lo is None else max(QMIN, zy + round_half_away(float(np.float32(lo) / np.float32(sy))))
        qmax = QMAX if hi is None else min(QMAX, zy + round_half_away(float(np.float32(hi) / np.float32(sy))))
        self.table(op, lambda v: np.clip(zy + multiply_by_quantized_multiplier(v - zx, m, sh), qmin, qmax))

    def op_RELU(self, op: TFLiteOp) -> None:
        self._requant_table(op, 0.0, None)

    def op_RELU6(self, op: TFLiteOp) -> None:
        self._requant_table(op, 0.0, 6.0)

    def op_RELU_N1_TO_1(self, op: TFLiteOp) -> None:
        self._requant_table(op, -1.0, 1.0)

    def op_QUANTIZE(self, op: TFLiteOp) -> None:  # int8 -> int8 at another scale (float inputs are handled at the edge)
        if self.t(op.inputs[0]).dtype != "INT8":
            raise UnsupportedOpError(f"QUANTIZE (node {op.index}): only at a model input, or int8 -> int8")
        self._requant_table(op, None, None)

    def op_LEAKY_RELU(self, op: TFLiteOp) -> None:
        # TFLite's QuantizeLeakyRelu: x - z_x >= 0 rescaled by s_x / s_y, below 0 by s_x * alpha / s_y, both
        # multipliers computed in float (float scales and alpha) before QuantizeMultiplier
        (sx, zx), (sy, zy) = self.qp(op.inputs[0]), self.qp(op.outputs[0])
        f32 = np.float32
        identity = quantize_multiplier(float(f32(sx) / f32(sy)))
        alpha = quantize_multiplier(float(f32(sx) * f32(op.options.get("Alpha", 0.0)) / f32(sy)))
        self.table(op, lambda v: zy + np.where(v >= zx, multiply_by_quantized_multiplier(v - zx, *identity),
                                                multiply_by_quantized_multiplier(v - zx, *alpha)))

    def op_PRELU(self, op: TFLiteOp) -> None:
        # TFLite's int8 Prelu: x - z_x >= 0 rescaled by s_x / s_y, below 0 (x - z_x) * (alpha - z_alpha) by
        # s_x * s_alpha / s_y (float math); one table when every alpha is the same
        alpha = self.const(op, 1, "alpha")
        if self.t(op.inputs[1]).dtype != "INT8" or np.unique(alpha).size != 1 or \
                self.t(op.inputs[0]).shape != self.t(op.outputs[0]).shape:
            raise UnsupportedOpError(f"PRELU (node {op.index}): only one int8 alpha for every element is supported "
                                     "(per-channel alphas would need a table per channel)")
        (sx, zx), (sa, za), (sy, zy) = self.qp(op.inputs[0]), self.qp(op.inputs[1]), self.qp(op.outputs[0])
        f32 = np.float32
        identity = quantize_multiplier(float(f32(sx) / f32(sy)))
        negative = quantize_multiplier(float(f32(sx) * f32(sa) / f32(sy)))
        a = int(alpha.reshape(-1)[0]) - za
        self.table(op, lambda v: zy + np.where(v >= zx, multiply_by_quantized_multiplier(v - zx, *identity),
                                                multiply_by_quantized_multiplier((v - zx) * a, *negative)))

    def op_HARD_SWISH(self, op: TFLiteOp) -> None:
        (sx, zx), (sy, zy) = self.qp(op.inputs[0]), self.qp(op.outputs[0])
        self.table(op, lambda v: _hard_swish(v, sx, zx, sy, zy))

    def op_RESHAPE(self, op: TFLiteOp) -> None:
        rank = len(self.t(op.inputs[0]).shape)
        x = self.view(op.inputs[0], tuple(range(rank)))  # TFLite's flattening order
        shape = list(self.t(op.outputs[0]).shape)
        if int(np.prod(shape)) != int(np.prod(self.t(op.inputs[0]).shape)) or not shape or shape[0] != \
                self.t(op.inputs[0]).shape[0]:
            raise UnsupportedOpError(f"{op.code} (node {op.index}): {self.t(op.inputs[0]).shape} -> {tuple(shape)} "
                                     "(the batch dimension must stay first)")
        self._same_quant(op)
        y = self.define(op.outputs[0])
        self.g.nodes.append(self.reshape_node(y, x, shape))

    op_SQUEEZE = op_EXPAND_DIMS = op_RESHAPE

    def op_TRANSPOSE(self, op: TFLiteOp) -> None:
        perm = tuple(int(p) for p in self.const(op, 1, "permutation").reshape(-1))
        self._same_quant(op)
        x, order = self.any_view(op.inputs[0])
        # Output axis j is input axis perm[j]: store the output in the order that reads the input as stored.
        out_order = tuple(_inverse(perm)[a] for a in order)
        name = self.define(op.outputs[0], out_order)
        self.g.nodes.append(self.reshape_node(name, x, list(self.g.tensors[name].shape)))

    def op_CONCATENATION(self, op: TFLiteOp) -> None:
        if op.options.get("FusedActivationFunction", 0):
            raise UnsupportedOpError(f"CONCATENATION (node {op.index}): fused activation is not supported")
        y_q = self.qp(op.outputs[0])
        if any(self.qp(i) != y_q for i in op.inputs):
            raise ModelError(f"CONCATENATION (node {op.index}): int8 inputs must share the output's scale and zero "
                             "point (as TFLite requires)")
        rank = len(self.t(op.outputs[0]).shape)
        axis = op.options["Axis"] % rank
        if axis == 0:
            raise UnsupportedOpError(f"CONCATENATION (node {op.index}): along the batch axis")
        order = self.any_view(op.inputs[0])[1]
        xs = [self.view(i, order) for i in op.inputs]
        y = self.define(op.outputs[0], order)
        n = len(xs)
        self.g.nodes.append(Node("QConcat", y, xs, [y], dict(axis=order.index(axis), x_zps=[y_q[1]] * n,
                                                             mults=[1 << 30] * n, shifts=[1] * n, y_zp=y_q[1])))

    def gather(self, op: TFLiteOp, i: int, o: int, pick: Callable[[np.ndarray], np.ndarray]) -> None:
        """Output ``o`` of ``op`` as one QStridedCopy of activation ``i``: ``pick`` takes an array of input
        element numbers in TFLite's axis order to the output's (a basic slice, so affine in the output
        index), which gives the copy's shape, strides and offset in the input's stored order."""
        self._same_quant(op, op.inputs.index(i), op.outputs.index(o))
        shape, out_shape = self.t(i).shape, self.t(o).shape
        x, order = self.any_view(i)
        if len(out_shape) != len(shape) or order[0] != 0:  # a rank change: through TFLite's flattening order
            order = tuple(range(len(shape)))
            x = self.view(i, order)
        number = np.arange(int(np.prod(shape))).reshape([shape[k] for k in order]).transpose(_inverse(order))
        picked = pick(number)
        if picked.size != int(np.prod(out_shape)) or (len(out_shape) == len(shape) and picked.shape != out_shape):
            raise ModelError(f"{op.code} (node {op.index}): output {out_shape} but the slice gives {picked.shape}")
        if picked.size == 0 or picked.shape[0] != 1 or shape[0] != 1:
            raise UnsupportedOpError(f"{op.code} (node {op.index}): {shape} -> {out_shape} (a non-empty slice of "
                                     "a batch-1 tensor keeping the batch axis is supported)")
        sample = picked.transpose(order)[0]
        if sample.ndim > STRIDED_RANK:
            raise UnsupportedOpError(f"{op.code} (node {op.index}): more than {STRIDED_RANK + 1} dimensions")
        strides = [int(sample[(0,) * k + (1,)].flat[0] - sample.flat[0]) if d > 1 else 0
                   for k, d in enumerate(sample.shape)]
        full = (1, *sample.shape)
        if picked.shape == out_shape:
            y = self.define(o, order)
        else:  # shrunk axes: copy at full rank in TFLite's order, then reshape (an alias)
            y = self.g.unique_name(self.t(o).name + "_full")
            self.g.tensors[y] = Tensor(y, full, "int8", *([v] for v in self.qp(o)), None)
        self.g.nodes.append(Node("QStridedCopy", y, [x], [y], {"shape": [int(d) for d in sample.shape],
                                                               "strides": strides, "offset": int(sample.flat[0])}))
        if picked.shape != out_shape:
            flat = self.define(o)
            self.g.nodes.append(self.reshape_node(flat, y, list(out_shape)))

    def op_STRIDED_SLICE(self, op: TFLiteOp) -> None:
        o = op.options
        if o.get("EllipsisMask", 0) or o.get("NewAxisMask", 0) or o.get("Offset", False):
            raise UnsupportedOpError(f"STRIDED_SLICE (node {op.index}): ellipsis_mask, new_axis_mask and offset "
                                     "are not supported")
        if o.get("ShrinkAxisMask", 0) & 1:
            raise UnsupportedOpError(f"STRIDED_SLICE (node {op.index}): shrinking the batch axis is not supported")
        begin, end, step = (self.const(op, k, what).reshape(-1).astype(np.int64)
                            for k, what in ((1, "begin"), (2, "end"), (3, "strides")))
        rank = len(self.t(op.inputs[0]).shape)
        if not len(begin) == len(end) == len(step) == rank or not step.all():
            raise ModelError(f"STRIDED_SLICE (node {op.index}): begin/end/strides of lengths {len(begin)}, "
                             f"{len(end)}, {len(step)} (non-zero strides) for a rank-{rank} input")
        index = []
        for k in range(rank):  # TFLite's StridedSlice follows NumPy's basic slicing (masks: the whole axis)
            if o.get("ShrinkAxisMask", 0) >> k & 1:  # one element at begin (the begin mask still applies)
                n = self.t(op.inputs[0]).shape[k]
                b = (0 if step[k] > 0 else n - 1) if o.get("BeginMask", 0) >> k & 1 else int(begin[k]) % n
                index.append(slice(b, b + 1))
            else:
                index.append(slice(None if o.get("BeginMask", 0) >> k & 1 else int(begin[k]),
                                   None if o.get("EndMask", 0) >> k & 1 else int(end[k]), int(step[k])))
        self.gather(op, op.inputs[0], op.outputs[0], lambda a: a[tuple(index)])

    def _split(self, op: TFLiteOp, x: int, axis_input: int, sizes: list[int] | None) -> None:
        shape = self.t(x).shape
        axis = int(self.const(op, axis_input, "axis").reshape(-1)[0]) % len(shape)
        sizes = sizes or [shape[axis] // len(op.outputs)] * len(op.outputs)
        if -1 in sizes:  # SPLIT_V: one size may be left to infer
            sizes[sizes.index(-1)] = shape[axis] - sum(sizes) - 1
        if len(sizes) != len(op.outputs) or sum(sizes) != shape[axis] or min(sizes) < 1:
            raise UnsupportedOpError(f"{op.code} (node {op.index}): sizes {sizes} along axis {axis} of {shape}")
        starts = np.cumsum([0, *sizes])
        for o, b, e in zip(op.outputs, starts, starts[1:]):
            self.gather(op, x, o, lambda a, b=int(b), e=int(e): a[(slice(None),) * axis + (slice(b, e),)])

    def op_SPLIT(self, op: TFLiteOp) -> None:  # inputs: axis, x
        self._split(op, op.inputs[1], 0, None)

    def op_SPLIT_V(self, op: TFLiteOp) -> None:  # inputs: x, size_splits, axis
        sizes = [int(v) for v in self.const(op, 1, "size_splits").reshape(-1)]
        self._split(op, op.inputs[0], 2, sizes)

    def _resize(self, op: TFLiteOp, taps: Callable[[int, int, bool, bool], np.ndarray]) -> None:
        """RESIZE_* as QResize with zero point 0: TFLite interpolates the raw int8 values (input and output
        share the quantization) and rounds the sum half away from zero, as QResize does."""
        self._same_quant(op)
        _, h, w, _ = self.t(op.inputs[0]).shape
        _, oh, ow, _ = self.t(op.outputs[0]).shape
        size = [int(v) for v in self.const(op, 1, "size").reshape(-1)]
        if size != [oh, ow]:
            raise ModelError(f"{op.code} (node {op.index}): size {size} but output {self.t(op.outputs[0]).shape}")
        corners, half = bool(op.options.get("AlignCorners", False)), bool(op.options.get("HalfPixelCenters", False))
        x = self._nchw_input(op)
        g = self.g
        y = self.define(op.outputs[0], NCHW)
        g.nodes.append(Node("QResize", y, [x, g.add_const(g.unique_name(y + "_ytab"), taps(h, oh, corners, half)),
                                           g.add_const(g.unique_name(y + "_xtab"), taps(w, ow, corners, half))],
                            [y], {"zp": 0}))

    def op_RESIZE_NEAREST_NEIGHBOR(self, op: TFLiteOp) -> None:
        self._resize(op, _nearest_taps)

    def op_RESIZE_BILINEAR(self, op: TFLiteOp) -> None:
        self._resize(op, lambda n, out, corners, half: _bilinear_taps(op, n, out, corners, half))

    # --- the graph -------------------------------------------------------------------------------------
    def run(self) -> Graph:
        m = self.m
        consumers: dict[int, list[TFLiteOp]] = {}
        for op in m.ops:
            for i in op.inputs:
                consumers.setdefault(i, []).append(op)
        producers = {o: op for op in m.ops for o in op.outputs}
        skip: set[int] = set()
        inputs, outputs = [], []
        for i in m.inputs:  # a float input feeding one QUANTIZE: the bundle's input is that int8 tensor
            users = consumers.get(i, [])
            if self.t(i).dtype == "FLOAT32" and len(users) == 1 and users[0].code == "QUANTIZE":
                skip.add(users[0].index)
                i = users[0].outputs[0]
            inputs.append(i)
        for op in m.ops:
            if op.code == "PAD" and op.outputs[0] not in m.outputs and self.fold_pad(op, consumers.get(op.outputs[0], [])):
                skip.add(op.index)
        for i in m.outputs:
            op = producers.get(i)
            if self.t(i).dtype == "FLOAT32" and op is not None and op.code == "DEQUANTIZE":
                skip.add(op.index)
                i = op.inputs[0]
            outputs.append(i)
        self.check_types(set(m.inputs) | set(m.outputs))
        self.g.dynamic_batch = all(t.shape[:1] == (1,) for t in m.tensors if t.data is None and t.shape)
        for i in inputs:
            self.g.inputs.append(self.define(i))
        for op in m.ops:
            if op.index in skip:
                continue
            handler = getattr(self, "op_" + op.code, None)
            if handler is None:
                raise UnsupportedOpError(f"TFLite op {op.code} (node {op.index}) is not supported; supported: "
                                         f"{', '.join(SUPPORTED_OPS)}")
            first = len(self.g.nodes)
            handler(op)
            for made in self.g.nodes[first:]:  # provenance (ir.Node.source_ops): TFLite's op code names
                made.source_ops = [op.code]
        for i in outputs:
            if i not in self.stored:
                raise ModelError(f"output tensor '{self.t(i).name}' is not computed by any supported op")
            first = len(self.g.nodes)
            self.g.outputs.append(self.view(i, tuple(range(len(self.t(i).shape)))))
            for made in self.g.nodes[first:]:  # back to the model's stored layout: what TFLite's TRANSPOSE does
                made.source_ops = ["TRANSPOSE" if made.op in ("QStridedCopy", "Transpose") else "RESHAPE"]
        self.finish()
        return self.g

    def finish(self) -> None:
        """Tables (LOGISTIC, HARD_SWISH, ...) run inside the convolution or add before them when nothing
        else reads its output: the same bytes, one pass and one buffer less."""
        _fuse_tables(self.g)  # (prunes too)

    def check_types(self, edges: set[int]) -> None:
        """Only int8 activations and weights, int32 biases and shapes; float32 at the model's edges."""
        for i, t in enumerate(self.m.tensors):
            if t.dtype == "INT8" or (t.dtype in ("INT32", "INT64") and t.data is not None) or \
                    (t.dtype == "FLOAT32" and i in edges):
                continue
            what = {"FLOAT16": "float16", "INT16": "int16 (the 16x8 scheme)", "UINT8": "uint8 (the legacy scheme)",
                    "FLOAT32": "float32 in an int8 model"}.get(t.dtype, t.dtype)
            user = next((op for op in self.m.ops if i in op.inputs + op.outputs), None)
            where = f" (of {user.code} node {user.index})" if user is not None else ""
            raise UnsupportedOpError(f"tensor '{t.name}'{where} is {what}: edgeq imports int8 TFLite models (int8 "
                                     "activations and weights, int32 biases, float32 only at the inputs and outputs) "
                                     "and float32 ones (calibrated like an ONNX model)")


def _moves_only_ones(shape: tuple[int, ...], a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """True when storing ``shape`` in order ``a`` or ``b`` gives the same bytes (only size-1 axes move)."""
    return [k for k in a if shape[k] != 1] == [k for k in b if shape[k] != 1]


def _saturating_shl(x: np.ndarray, e: int) -> np.ndarray:
    """gemmlowp SaturatingRoundingMultiplyByPOT<e> for e > 0."""
    return np.clip(np.asarray(x, np.int64) << e, -2**31, 2**31 - 1)


def _reciprocal(d: int) -> tuple[int, int]:
    """TFLite's GetReciprocal(d, 31) for d > 0: (1/d as a Q0.31 raw value scaled by 2^bits, bits), from
    gemmlowp's one_over_one_plus_x_for_x_in_0_1 (three Newton-Raphson steps in fixed point)."""
    srdhm = saturating_rounding_doubling_high_mul
    headroom_plus_one = 32 - d.bit_length()
    a = (d << headroom_plus_one) - (1 << 31)  # FixedPoint<int32, 0> in [0, 1)
    half = (a + 2**31 - 1 + 1) // 2  # RoundingHalfSum(a, One) of non-negative values
    x = 1515870810 + int(srdhm(half, -1010580540))  # 48/17 - 32/17 * half, Q2.29
    for _ in range(3):
        x = x + int(_saturating_shl(srdhm(x, (1 << 29) - int(srdhm(half, x))), 2))
    return int(_saturating_shl(x, 1)), 31 - headroom_plus_one


def _divide(v1: np.ndarray, d: int, mult: int, shift: int, op: TFLiteOp) -> np.ndarray:
    """TFLite's int8 DivElementwise for numerators ``v1`` (offsets applied, divisor's sign moved in) and a
    positive divisor ``d``, before the output zero point."""
    inv, recip_shift = _reciprocal(d)
    v1 = np.asarray(v1, np.int64)
    headroom = np.where(v1 >= 0, 32 - _bit_length(v1) - 1, 32 - _bit_length(2 * -v1 - 1))  # CountLeadingSignBits
    total = shift - recip_shift - headroom
    if (total > 0).any():
        raise UnsupportedOpError(f"DIV (node {op.index}): a quotient multiplier above TFLite's range")
    unscaled = saturating_rounding_doubling_high_mul(v1 << headroom, inv)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(unscaled, mult), -total)


def _bit_length(v: np.ndarray) -> np.ndarray:
    return np.array([int(x).bit_length() for x in np.asarray(v).reshape(-1)], np.int64).reshape(np.shape(v))


def _nearest_taps(size: int, out: int, corners: bool, half: bool) -> np.ndarray:
    """QResize rows (i, i, 0) of TFLite's GetNearestNeighbor, in its float32 arithmetic."""
    f32 = np.float32
    scale = f32(size - 1) / f32(out - 1) if corners and out > 1 else f32(size) / f32(out)
    pos = (np.arange(out, dtype=np.float32) + f32(0.5 if half else 0.0)) * scale
    i = np.minimum((_round_half_away(pos) if corners else np.floor(pos)).astype(np.int64), size - 1)
    i = np.maximum(i, 0) if half else i
    return np.stack([i, i, np.zeros_like(i)], 1).astype(np.int32)


def _bilinear_taps(op: TFLiteOp, size: int, out: int, corners: bool, half: bool) -> np.ndarray:
    """QResize rows (i0, i1, w1) of TFLite's ResizeBilinearInteger: positions in 1/1024 steps, weights
    (1024 - f, f) for rows i0, i1; QResize weighs in 1/2048, so w1 = 2f (the 2^20 sum becomes 2^22, the
    same rounding). When i0 = i1 the weights only split one row: w1 = 0 gives the same sum."""
    scale = ((size - 1 << 10) + (out - 1) // 2) // (out - 1) if corners and out > 1 else ((size << 10) + out // 2) // out
    pos = np.arange(out, dtype=np.int64) * scale + ((scale // 2 - (1 << 9)) if half else 0)
    trunc = lambda a: np.sign(a) * (np.abs(a) >> 10)  # noqa: E731 (C's division by 1024)
    i0, i1 = np.maximum(trunc(pos), 0), np.minimum(trunc(pos + 1023), size - 1)
    if (i0 > size - 1).any():  # TFLite would read past the input here
        raise UnsupportedOpError(f"RESIZE_BILINEAR (node {op.index}): {size} -> {out} samples outside the input")
    w1 = np.where(i0 == i1, 0, 2 * (pos - (i0 << 10)))
    return np.stack([i0, i1, w1], 1).astype(np.int32)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.where(x < 0, -np.floor(-x + np.float32(0.5)), np.floor(x + np.float32(0.5))).astype(np.float32)


def _srdhm16(a: np.ndarray, b: int) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int16: round(a * b / 2^15), C's truncating division."""
    ab = a * b
    v = ab + np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    out = np.where(v >= 0, v >> 15, -((-v) >> 15))
    return np.where((a == -32768) & (b == -32768), 32767, out)


def _int16_multiplier(m: float) -> tuple[int, int]:
    """QuantizeMultiplier then TFLite's DownScaleInt32ToInt16Multiplier."""
    mult, exponent = quantize_multiplier(m)
    return (32767 if mult >= 2**31 - 1 - (1 << 15) else (mult + (1 << 15)) >> 16), exponent


def _hard_swish(v: np.ndarray, sx: float, zx: int, sy: float, zy: int) -> np.ndarray:
    """TFLite's reference int8 HardSwish (16-bit fixed point), for every input value ``v``."""
    f32 = np.float32
    hires_scale = f32(1.0 / 128.0) * f32(sx)
    out_mult, out_exp = _int16_multiplier(float(hires_scale / f32(sy)))
    relu_mult, relu_exp = _int16_multiplier(float(hires_scale / (f32(3.0) / f32(32768.0))))
    sat16 = lambda a: np.clip(a, -32768, 32767)  # noqa: E731
    hires = (v - zx) * 128
    pre_out = _srdhm16(hires, out_mult)
    relu = hires
    if relu_exp > 0:
        relu = sat16(relu << (relu_exp - 1))
    relu = _srdhm16(relu, relu_mult)
    if relu_exp > 0:
        relu = sat16(relu << 1)
    if relu_exp < 0:
        relu = rounding_divide_by_pot(relu, -relu_exp)
    relu = (relu + (1 << 15)) >> 1
    prod = relu * pre_out  # SaturatingDoublingHighMul: truncating, no rounding
    pre = np.where(prod >= 0, prod >> 15, -((-prod) >> 15))
    pre = np.where((relu == -32768) & (pre_out == -32768), 32767, pre)
    return rounding_divide_by_pot(pre, -out_exp) + zy


def import_tflite(model: str | Path | bytes) -> tuple[Graph, str]:
    """Parse a fully-quantized int8 TFLite model into an integer-only edgeq graph; returns it and the sha256
    of the file. TFLite's scales, zero points and integer weights are kept as they are."""
    data = read_bytes(model)
    return _Builder(parse_tflite(data)).run(), hashlib.sha256(data).hexdigest()


def convert_tflite(model: str | Path | bytes, profile: Any, output: str | Path | None, patch: str | int = "auto",
                   progress: bool = True) -> Any:
    """``edgeq convert`` for a TFLite model: import, plan memory (patches when the device needs them),
    write the bundle; the report has the sizes, memory and budget checks (no float model to compare with)."""
    from edgeq import __version__
    from edgeq.bundle import write_bundle
    from .pipeline import ConversionResult, _plan

    qg, digest = import_tflite(model)
    plan = _plan(qg, profile, patch)
    name = Path(model).stem if isinstance(model, (str, Path)) else "model"
    out = Path(output) if output else Path(f"{name}.{profile.id}.edgeq")
    calibration = {"method": "tflite", "samples": 0}  # TFLite's own scales and zero points
    meta = {"device": profile.to_dict(), "scheme": "int8", "producer": {"name": "edgeq", "version": __version__},
            "source": {"format": "tflite", "sha256": digest, "name": name, "metadata": {}},
            "calibration": calibration}
    if plan.n:
        meta["patches"] = plan.summary()
    weights = sum(int(v.size) for k, v in qg.consts.items() if k.endswith("_wq"))
    int_bytes = sum(int(v.nbytes) for v in qg.consts.values())
    arena, budget_w, budget_a = plan.memory.arena_bytes, profile.budget_weights_bytes, profile.budget_activation_bytes
    fits_w, fits_a = budget_w is None or int_bytes <= budget_w, budget_a is None or arena <= budget_a
    report: dict[str, Any] = {
        "device": profile.id, "layers": [], "worst_layers": [], "output_max_abs_diff": {}, "report_samples": 0,
        "size": {"float_weights_bytes": 4 * weights, "int8_weights_bytes": int_bytes,
                 "ratio": round(4 * weights / max(int_bytes, 1), 2)},
        "memory": {"peak_activation_bytes": arena, "weights_bytes": int_bytes, "plan_strategy": plan.memory.strategy,
                   "strategies": plan.memory.candidates, "macs": plan.macs},
        "patches": plan.summary(),
        "budget": {"weights_bytes": budget_w, "activation_bytes": budget_a, "weights_fit": fits_w,
                   "activations_fit": fits_a, "fits": fits_w and fits_a},
        "nodes": len(qg.nodes),
    }
    report["bundle_bytes"] = write_bundle(out, plan.graph, plan.memory, meta)
    report.update(output=str(out), scheme="int8", calibration=calibration)
    return ConversionResult(out, report)
