"""The op registry: for every integer op, its reference kernel and its program encoding.

Optimized kernels do not live here as Python callables: the Numba and C backends each run a whole
program in one call (so Python overhead is paid once per inference, not once per op) and dispatch on
the ``opcode`` below. ``encode`` turns a node into the int64 words those kernels read; the word layout
of each op is written next to its encoder and is the contract between this file, ``numba_kernels.py``
and ``c/edgeq_kernels.c`` (tests check every backend against ``reference`` for every op).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from edgeq.ir import Graph, Node
from . import reference as ref

NONE = -1  # offset of an absent optional operand (e.g. no fused table)


class EncodeContext(Protocol):
    """What an encoder may ask about the planned graph (see ``program.compile_program``)."""

    def act(self, name: str) -> int: ...          # byte offset of an activation in the arena
    def const(self, name: str) -> int: ...        # byte offset of a constant in the constant pool
    def is_const(self, name: str) -> bool: ...
    def shape(self, name: str) -> tuple[int, ...]:  # per-sample shape (batch dimension removed)
        ...


@dataclass(frozen=True)
class OpDef:
    """One integer op: how the reference runs it and how compiled backends receive it."""

    name: str
    opcode: int
    reference: Callable[[Node, list[np.ndarray]], np.ndarray]
    encode: Callable[[Node, EncodeContext], list[int]]
    # Memory planning: the output always shares the bytes of input ``alias`` (a reshape, a window placed
    # into its canvas); or it may overwrite any input in ``inplace`` that dies at this node, because the
    # kernels read each element before writing the same element of the output (elementwise ops).
    alias: int | None = None
    inplace: tuple[int, ...] = ()


def _optional(ctx: EncodeContext, node: Node, i: int) -> int:
    return ctx.const(node.inputs[i]) if len(node.inputs) > i and node.inputs[i] else NONE


def _clamp(a: dict) -> list[int]:
    return [a["act_min"], a["act_max"]]


def _bits(a: dict) -> list[int]:
    """Element widths (8 or 16) of the input and output activations of ops with int16 variants."""
    return [a.get("x_bits", 8), a.get("y_bits", 8)]


# --- QConv: [x, w, bias, mult, shift, lut?] -> y
# words: x w bias mult shift lut y | C H W OC OH OW KH KW | sh sw pt pl dh dw group | x_zp y_zp min max |
#        x_bits y_bits   (x and y each int8 or int16; a fused table only with int8 x and y)
def _enc_conv(n: Node, ctx: EncodeContext) -> list[int]:
    a = n.attrs
    c, h, w = ctx.shape(n.inputs[0])
    oc, oh, ow = ctx.shape(n.outputs[0])
    kh, kw = ctx.shape(n.inputs[1])[2:]
    return [ctx.act(n.inputs[0]), *(ctx.const(t) for t in n.inputs[1:5]), _optional(ctx, n, 5),
            ctx.act(n.outputs[0]), c, h, w, oc, oh, ow, kh, kw, *a["strides"], a["pads"][0], a["pads"][1],
            *a["dilations"], a["group"], a["x_zp"], a["y_zp"], *_clamp(a), *_bits(a)]


def _ref_conv(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.conv(*x, **{k: v for k, v in n.attrs.items() if k != "x_bits"})


# --- QFullyConnected: [x, w, bias, mult, shift, lut?] -> y ; x is [N, K], w is [OC, K]
# words: x w bias mult shift lut y | K OC | x_zp y_zp min max | single_rounding
def _enc_fc(n: Node, ctx: EncodeContext) -> list[int]:
    a = n.attrs
    k, oc = ctx.shape(n.inputs[0])[-1], ctx.shape(n.outputs[0])[-1]
    return [ctx.act(n.inputs[0]), *(ctx.const(t) for t in n.inputs[1:5]), _optional(ctx, n, 5),
            ctx.act(n.outputs[0]), k, oc, a["x_zp"], a["y_zp"], *_clamp(a), int(bool(a.get("single_rounding")))]


def _ref_fc(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.fully_connected(*x, **n.attrs)


def broadcast_strides(shape: tuple[int, ...], out: tuple[int, ...]) -> list[int]:
    """Element strides of ``shape`` read as the 4-D ``out`` (right-aligned, 0 where broadcast)."""
    shape = (1,) * (4 - len(shape)) + tuple(shape)
    strides, step = [0] * 4, 1
    for i in range(3, -1, -1):
        strides[i] = step if shape[i] != 1 else 0
        step *= shape[i]
    return strides


def _binary_header(n: Node, ctx: EncodeContext) -> list[int]:
    out = ctx.shape(n.outputs[0])
    if len(out) > 4:
        raise ValueError(f"{n.op} {n.name}: more than 4 dimensions per sample")
    out4 = (1,) * (4 - len(out)) + tuple(out)
    words = []
    for t in n.inputs[:2]:
        words += [ctx.const(t) if ctx.is_const(t) else ctx.act(t), int(ctx.is_const(t))]
    words += [_optional(ctx, n, 2), ctx.act(n.outputs[0]), *out4]
    for t in n.inputs[:2]:
        words += broadcast_strides(ctx.shape(t), out4)
    return words


# --- QAdd / QMul: [a, b, lut?] -> y, either operand may be a constant, numpy broadcasting
# words: a a_const b b_const lut y | d0 d1 d2 d3 | a_strides[4] b_strides[4] | quant... min max
def _enc_add(n: Node, ctx: EncodeContext) -> list[int]:
    a = n.attrs
    return _binary_header(n, ctx) + [a[k] for k in ("a_zp", "b_zp", "y_zp", "a_mult", "a_shift", "b_mult",
                                                    "b_shift", "y_mult", "y_shift")] + _clamp(a)


def _enc_mul(n: Node, ctx: EncodeContext) -> list[int]:
    a = n.attrs
    return _binary_header(n, ctx) + [a[k] for k in ("a_zp", "b_zp", "y_zp", "y_mult", "y_shift")] + _clamp(a)


def _ref_add(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.add(*x, **n.attrs)


def _ref_mul(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.mul(*x, **n.attrs)


# --- QLut: [x, table] -> y ; words: x table y count x_bits y_bits
# table: int8 x -> 256 entries of y's type; int16 x -> 513 int16 interpolation samples (reference.lut)
def _enc_lut(n: Node, ctx: EncodeContext) -> list[int]:
    return [ctx.act(n.inputs[0]), ctx.const(n.inputs[1]), ctx.act(n.outputs[0]),
            int(np.prod(ctx.shape(n.inputs[0]))), *_bits(n.attrs)]


def _ref_lut(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.lut(*x, y_bits=n.attrs.get("y_bits", 8))


# --- QRequantize: [x] -> y, between int8 and int16 (or two scales)
# words: x y count x_bits y_bits x_zp y_zp mult shift
def _enc_requantize(n: Node, ctx: EncodeContext) -> list[int]:
    a = n.attrs
    return [ctx.act(n.inputs[0]), ctx.act(n.outputs[0]), int(np.prod(ctx.shape(n.inputs[0]))), *_bits(a),
            a["x_zp"], a["y_zp"], a["mult"], a["shift"]]


def _ref_requantize(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.requantize(x[0], **{k: v for k, v in n.attrs.items() if k != "x_bits"})


# --- QMaxPool: [x] -> y ; words: x y | C H W OH OW KH KW | sh sw pt pl dh dw | min max
def _enc_maxpool(n: Node, ctx: EncodeContext) -> list[int]:
    a = n.attrs
    c, h, w = ctx.shape(n.inputs[0])
    _, oh, ow = ctx.shape(n.outputs[0])
    return [ctx.act(n.inputs[0]), ctx.act(n.outputs[0]), c, h, w, oh, ow, *a["kernel"], *a["strides"],
            a["pads"][0], a["pads"][1], *a["dilations"], *_clamp(a)]


def _ref_maxpool(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.max_pool(*x, **n.attrs)


# --- QAvgPool: [x] -> y ; words: x y | C H W OH OW KH KW | sh sw pt pl | count_include_pad x_zp y_zp min max
def _enc_avgpool(n: Node, ctx: EncodeContext) -> list[int]:
    a = n.attrs
    c, h, w = ctx.shape(n.inputs[0])
    _, oh, ow = ctx.shape(n.outputs[0])
    return [ctx.act(n.inputs[0]), ctx.act(n.outputs[0]), c, h, w, oh, ow, *a["kernel"], *a["strides"],
            a["pads"][0], a["pads"][1], int(a["count_include_pad"]), a["x_zp"], a["y_zp"], *_clamp(a)]


def _ref_avgpool(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.avg_pool(*x, **n.attrs)


# --- QSoftmax: [x, table(int32[256])] -> y over the last axis ; words: x table y rows cols
def _enc_softmax(n: Node, ctx: EncodeContext) -> list[int]:
    shape = ctx.shape(n.inputs[0])
    cols = shape[-1]
    return [ctx.act(n.inputs[0]), ctx.const(n.inputs[1]), ctx.act(n.outputs[0]),
            int(np.prod(shape)) // cols, cols]


def _ref_softmax(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.softmax(*x)


# --- QConcat: [x0, x1, ...] -> y along attrs["axis"] (>= 1)
# words: y outer n_inputs y_zp | per input: x inner x_zp mult shift
def _enc_concat(n: Node, ctx: EncodeContext) -> list[int]:
    a = n.attrs
    axis = a["axis"] - 1  # per-sample axis
    out = ctx.shape(n.outputs[0])
    words = [ctx.act(n.outputs[0]), int(np.prod(out[:axis])), len(n.inputs), a["y_zp"]]
    for t, zp, m, s in zip(n.inputs, a["x_zps"], a["mults"], a["shifts"]):
        words += [ctx.act(t), int(np.prod(ctx.shape(t)[axis:])), zp, m, s]
    return words


def _ref_concat(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.concat(*x, **n.attrs)


# --- QReshape: [x] -> y ; words: x y count (a no-op when the planner aliased y onto x)
def _enc_reshape(n: Node, ctx: EncodeContext) -> list[int]:
    return [ctx.act(n.inputs[0]), ctx.act(n.outputs[0]), int(np.prod(ctx.shape(n.inputs[0])))]


def _ref_reshape(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.reshape(x[0], **n.attrs)


# --- QCopyWindow: [x, canvas?] -> y ; y = canvas (or zeros), then y[:, dy:dy+h, dx:dx+w] = x[:, sy:sy+h, sx:sx+w]
# words: x canvas y | C H W OH OW | sy sx dy dx h w
def _enc_copy_window(n: Node, ctx: EncodeContext) -> list[int]:
    a = n.attrs
    c, h, w = ctx.shape(n.inputs[0])
    _, oh, ow = ctx.shape(n.outputs[0])
    canvas = ctx.act(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] else NONE
    return [ctx.act(n.inputs[0]), canvas, ctx.act(n.outputs[0]), c, h, w, oh, ow, *a["src"], *a["dst"], *a["size"]]


def _ref_copy_window(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.copy_window(*x, **n.attrs)


STRIDED_RANK = 6  # dimensions of a QStridedCopy view (per sample); unused leading ones have size 1


# --- QStridedCopy: [x] -> y, Transpose and Slice as one gather
# words: x x_count y offset | dims[6] | strides[6]   (element strides into x, may be negative)
def _enc_strided(n: Node, ctx: EncodeContext) -> list[int]:
    a = n.attrs
    pad = STRIDED_RANK - len(a["shape"])
    if pad < 0:
        raise ValueError(f"{n.op} {n.name}: more than {STRIDED_RANK} dimensions per sample")
    return [ctx.act(n.inputs[0]), int(np.prod(ctx.shape(n.inputs[0]))), ctx.act(n.outputs[0]), a["offset"],
            *([1] * pad + list(a["shape"])), *([0] * pad + list(a["strides"]))]


def _ref_strided(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.strided_copy(x[0], **n.attrs)


# --- QMatMul: [a, b, bias, mult, shift, lut?] -> y ; a [..., M, K], b constant [N, K] or activation [..., K, N]
# words: a b b_const bias mult shift lut y | batch M K N | b_batch_stride b_k_stride b_n_stride |
#        a_zp b_zp y_zp min max      (bias, mult, shift: int32[N]; y [batch, M, N])
def _enc_matmul(n: Node, ctx: EncodeContext) -> list[int]:
    a = n.attrs
    a_shape, y_shape = ctx.shape(n.inputs[0]), ctx.shape(n.outputs[0])
    m, k, cols = a_shape[-2] if len(a_shape) > 1 else 1, a_shape[-1], y_shape[-1]
    batch = int(np.prod(a_shape[:-2])) if len(a_shape) > 2 else 1
    const = ctx.is_const(n.inputs[1])
    strides = [0, 1, k] if a["b_nk"] else [k * cols, cols, 1]
    b_off = ctx.const(n.inputs[1]) if const else ctx.act(n.inputs[1])
    return [ctx.act(n.inputs[0]), b_off, int(const), *(ctx.const(t) for t in n.inputs[2:5]), _optional(ctx, n, 5),
            ctx.act(n.outputs[0]), batch, m, k, cols, *strides, a["a_zp"], a["b_zp"], a["y_zp"], *_clamp(a)]


def _ref_matmul(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.matmul(*x, **n.attrs)


# --- QConvTranspose: [x, w [OC, C/group, KH, KW], bias, mult, shift, lut?] -> y ; words as QConv without x_bits y_bits
def _enc_conv_transpose(n: Node, ctx: EncodeContext) -> list[int]:
    return _enc_conv(n, ctx)[:-2]  # int8 only: no width words


def _ref_conv_transpose(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.conv_transpose(*x, **n.attrs)


# --- QResize: [x, ytab int32[OH, 3], xtab int32[OW, 3]] -> y ; words: x ytab xtab y | C H W OH OW | zp
def _enc_resize(n: Node, ctx: EncodeContext) -> list[int]:
    c, h, w = ctx.shape(n.inputs[0])
    _, oh, ow = ctx.shape(n.outputs[0])
    return [ctx.act(n.inputs[0]), ctx.const(n.inputs[1]), ctx.const(n.inputs[2]), ctx.act(n.outputs[0]),
            c, h, w, oh, ow, n.attrs["zp"]]


def _ref_resize(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.resize(*x, **n.attrs)


# --- QLayerNorm: [x, gamma int32[C], beta int32[C]] -> y over the last axis
# words: x gamma beta y | rows cols | x_zp y_zp eps min max
def _enc_layer_norm(n: Node, ctx: EncodeContext) -> list[int]:
    a = n.attrs
    shape = ctx.shape(n.inputs[0])
    return [ctx.act(n.inputs[0]), ctx.const(n.inputs[1]), ctx.const(n.inputs[2]), ctx.act(n.outputs[0]),
            int(np.prod(shape)) // shape[-1], shape[-1], a["x_zp"], a["y_zp"], a["eps"], *_clamp(a)]


def _ref_layer_norm(n: Node, x: list[np.ndarray]) -> np.ndarray:
    return ref.layer_norm(*x, **n.attrs)


OPS: dict[str, OpDef] = {op.name: op for op in [
    OpDef("QConv", 1, _ref_conv, _enc_conv),
    OpDef("QFullyConnected", 2, _ref_fc, _enc_fc),
    OpDef("QAdd", 3, _ref_add, _enc_add, inplace=(0, 1)),
    OpDef("QMul", 4, _ref_mul, _enc_mul, inplace=(0, 1)),
    OpDef("QLut", 5, _ref_lut, _enc_lut, inplace=(0,)),
    OpDef("QMaxPool", 6, _ref_maxpool, _enc_maxpool),
    OpDef("QAvgPool", 7, _ref_avgpool, _enc_avgpool),
    OpDef("QSoftmax", 8, _ref_softmax, _enc_softmax),
    OpDef("QConcat", 9, _ref_concat, _enc_concat),
    OpDef("QReshape", 10, _ref_reshape, _enc_reshape, alias=0),
    OpDef("QCopyWindow", 11, _ref_copy_window, _enc_copy_window, alias=1),
    OpDef("QStridedCopy", 12, _ref_strided, _enc_strided),
    OpDef("QMatMul", 13, _ref_matmul, _enc_matmul),
    OpDef("QConvTranspose", 14, _ref_conv_transpose, _enc_conv_transpose),
    OpDef("QResize", 15, _ref_resize, _enc_resize),
    OpDef("QLayerNorm", 16, _ref_layer_norm, _enc_layer_norm),
    OpDef("QRequantize", 17, _ref_requantize, _enc_requantize),
]}


def node_macs(node: Node, graph: Graph) -> int:
    """Multiply-accumulates of one node per sample (convolutions and matrix products; else 0)."""
    if node.op == "QConv":
        _, cg, kh, kw = graph.tensors[node.inputs[1]].shape
        return graph.tensors[node.outputs[0]].size // graph.tensors[node.outputs[0]].shape[0] * cg * kh * kw
    if node.op == "QFullyConnected":
        oc, k = graph.tensors[node.inputs[1]].shape
        return oc * k
    if node.op == "QMatMul":
        return graph.tensors[node.outputs[0]].sample_nbytes * graph.tensors[node.inputs[0]].shape[-1]
    if node.op == "QConvTranspose":
        oc, _, kh, kw = graph.tensors[node.inputs[1]].shape
        return graph.tensors[node.inputs[0]].sample_nbytes * oc // node.attrs["group"] * kh * kw
    return 0


def graph_macs(graph: Graph) -> int:
    """Multiply-accumulates of one inference (per sample)."""
    return sum(node_macs(n, graph) for n in graph.nodes)
