"""Float NumPy kernels for the float graph: used to fold constants, infer shapes, calibrate, and measure
the quantized model's error against the float model (checked against onnxruntime in the tests).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from edgeq.ir import Node
from .float_loops import CHAIN_CODES, chain, depthwise
from .resize_tables import resize_float

def _exp(x: np.ndarray) -> np.ndarray:
    # Below about -88 the sigmoid's exp(-x) overflows to inf and 1 / (1 + inf) is the exact 0: the
    # warning would only be noise in every conversion of a model with sigmoids.
    with np.errstate(over="ignore"):
        return np.exp(x)


ACTIVATIONS: dict[str, Callable[[np.ndarray, dict], np.ndarray]] = {
    "Relu": lambda x, a: np.maximum(x, 0),
    "Clip": lambda x, a: np.clip(x, a.get("min", -np.inf), a.get("max", np.inf)),
    "HardSigmoid": lambda x, a: _hard_sigmoid(np.multiply(x, a.get("alpha", 0.2), dtype=_float(x)), a.get("beta", 0.5)),
    "HardSwish": lambda x, a: _hard_sigmoid(np.divide(x, 6, dtype=_float(x)), 0.5, x),
    "Sigmoid": lambda x, a: 1 / (1 + _exp(-x)),
    # x * sigmoid(alpha * x): SiLU/Swish as exported (x * Sigmoid(x * alpha)), fused by passes.fuse_swish
    "Swish": lambda x, a: x / (1 + _exp(-a.get("alpha", 1.0) * x)),
    "Gelu": lambda x, a: _gelu(x, a.get("approximate", "none")),
    # consecutive unary steps fused by passes.fuse_unary_chains: one table once quantized
    "Chain": lambda x, a: _chain(x, a["steps"]),
    # standalone functions (converters/lower_ops.py): tables too; a table holds finite values, hence the guards
    "Sqrt": lambda x, a: np.sqrt(np.maximum(x, 0)),
    "Exp": lambda x, a: np.exp(np.minimum(x, 80)),
    "Tanh": lambda x, a: np.tanh(x),
    "Neg": lambda x, a: -x,
    "Reciprocal": lambda x, a: 1 / np.where(x == 0, np.finfo(np.float32).tiny, x),
    "Abs": lambda x, a: np.abs(x),
    "PowerOf": lambda x, a: np.power(x, a["p"]),
}


def _float(x: np.ndarray) -> np.dtype:
    return np.result_type(x, np.float32)


def _hard_sigmoid(t: np.ndarray, beta: float, times: np.ndarray | None = None) -> np.ndarray:
    """clip(t + beta, 0, 1) (* times), in place in the fresh ``t``: the same arithmetic as the plain
    expression without its three temporaries (these run on every 640x640 det feature map)."""
    t += beta
    np.clip(t, 0, 1, out=t)
    if times is not None:
        t *= times
    return t


def _chain(x: np.ndarray, steps: list[dict]) -> np.ndarray:
    if x.dtype == np.float32 and all(st["op"] in CHAIN_CODES and (st["op"] == "HardSwish" or type(st["c"]) is float)
                                     for st in steps):  # (a NumPy float64 constant would promote to float64)
        return chain(np.ascontiguousarray(x), np.array([CHAIN_CODES[st["op"]] for st in steps], dtype=np.int64),
                     np.array([st.get("c", 0.0) for st in steps], dtype=np.float32))
    for step in steps:
        if step["op"] == "Mul":
            x = x * step["c"]
        elif step["op"] == "Add":
            x = x + step["c"]
        else:
            x = ACTIVATIONS[step["op"]](x, step)
    return x


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return (0.5 * x * (1 + erf(np.asarray(x, dtype=np.float64) / math.sqrt(2)))).astype(np.asarray(x).dtype)


def _as_dtype(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``y`` in ``x``'s dtype, never ``x`` itself: converted only when the dtypes differ (a copy of a
    640x640 map per activation otherwise)."""
    return y.astype(x.dtype, copy=y is x)


def apply_activation(x: np.ndarray, act: dict | None) -> np.ndarray:
    """Apply a fused activation ``{"op": name, **attrs}`` (or nothing)."""
    return x if act is None else _as_dtype(ACTIVATIONS[act["op"]](x, act), x)


def _windows(x: np.ndarray, kernel, strides, pads, dilations, pad_value: float) -> np.ndarray:
    """(N, C, OH, OW, KH, KW) view of every kernel window over the padded input."""
    pt, pl, pb, pr = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=pad_value)
    kh = (kernel[0] - 1) * dilations[0] + 1
    kw = (kernel[1] - 1) * dilations[1] + 1
    v = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    return v[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]


def _tap(xp: np.ndarray, i: int, j: int, out_hw, strides, dilations) -> np.ndarray:
    """The input pixels kernel tap (i, j) meets at every output position: a strided view of ``xp``."""
    (oh, ow), (sh, sw), (dh, dw) = out_hw, strides, dilations
    return xp[:, :, i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw]


COLS_LIMIT = 1 << 24  # floats per im2col block: bounds the scratch of a large batch to 64 MB


def _conv_stride1(xp: np.ndarray, w: np.ndarray, out_hw, dilations, group: int) -> np.ndarray:
    """Stride-1 grouped convolution, one matrix product per group and kernel tap on the flattened padded
    input: tap (i, j) reads the contiguous run starting at row i, column j, so no im2col copy is made
    (1.5x faster on det's 3x3 convolutions). Each output row is computed over the full padded width and
    cropped."""
    n, c, hp, wp = xp.shape
    oc, cg, kh, kw = w.shape
    (oh, ow), (dh, dw) = out_hw, dilations
    flat = xp.reshape(n, group, cg, hp * wp)
    span = (oh - 1) * wp + ow
    y = np.zeros((n, group, oc // group, oh * wp), dtype=np.float32)
    prod = np.empty(y.shape[:-1] + (span,), dtype=np.float32)  # reused: fresh temporaries cost page faults
    wt = w.reshape(group, oc // group, cg, kh, kw)
    for i in range(kh):
        for j in range(kw):
            at = i * dh * wp + j * dw
            np.matmul(wt[:, :, :, i, j], flat[..., at: at + span], out=prod)
            y[..., :span] += prod
    return y.reshape(n, oc, oh, wp)[..., :ow]


def conv(x, w, b=None, *, strides, pads, dilations, group, act=None):
    """Grouped 2-D convolution, NCHW / OIHW, in float32: 1x1 as one BLAS matrix product, depthwise as
    one multiply-add per tap (float_loops.depthwise: a matrix product per channel would be a 1 x KH*KW
    one), other stride-1 ones by kernel taps (_conv_stride1), the rest over im2col columns."""
    n, c, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    pt, pl, pb, pr = pads
    oh = (h + pt + pb - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (wd + pl + pr - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    x = x.astype(np.float32, copy=False)
    w = w.astype(np.float32, copy=False)
    if cg == 1 and oc == group and not (kh == kw == 1 and tuple(strides) == (1, 1)):
        # y += x_tap * w_tap tap by tap in one pass over the map, the padding skipped (y + 0 * w is y)
        y = depthwise(np.ascontiguousarray(x), np.ascontiguousarray(w), oh, ow, *strides, *dilations, pt, pl)
    else:
        xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any(pads) else x
        if kh == kw == 1 and tuple(strides) == (1, 1):
            y = np.matmul(w.reshape(group, oc // group, cg), xp.reshape(n, group, cg, oh * ow))
        elif tuple(strides) == (1, 1):
            y = _conv_stride1(xp, w, (oh, ow), dilations, group)
        else:
            wm = w.reshape(group, oc // group, cg * kh * kw)
            y = np.empty((n, group, oc // group, oh * ow), dtype=np.float32)
            step = max(1, COLS_LIMIT // (c * kh * kw * oh * ow))
            for s in range(0, n, step):
                cols = np.empty((min(step, n - s), c, kh, kw, oh, ow), dtype=np.float32)
                for i in range(kh):
                    for j in range(kw):
                        cols[:, :, i, j] = _tap(xp[s: s + step], i, j, (oh, ow), strides, dilations)
                np.matmul(wm, cols.reshape(len(cols), group, cg * kh * kw, oh * ow), out=y[s: s + step])
    y = y.reshape(n, oc, oh, ow)
    if b is not None:
        y += b[None, :, None, None]  # y is always a fresh array here
    return apply_activation(y, act)


def fully_connected(x, w, b=None, *, act=None):
    """y = x @ w.T + b with w [OC, K]."""
    y = x @ w.T
    if b is not None:
        y = y + b
    return apply_activation(y.astype(np.float32), act)


def max_pool(x, *, kernel, strides, pads, dilations, act=None):
    """Max over windows; padding never wins."""
    return apply_activation(_windows(x, kernel, strides, pads, dilations, -np.inf).max(axis=(-2, -1)), act)


def avg_pool(x, *, kernel, strides, pads, count_include_pad, act=None):
    """Mean over windows, counting padding only when ``count_include_pad``."""
    total = _windows(x, kernel, strides, pads, (1, 1), 0.0).sum(axis=(-2, -1))
    if count_include_pad:
        return apply_activation((total / (kernel[0] * kernel[1])).astype(np.float32), act)
    ones = np.ones((1, 1) + x.shape[2:], dtype=np.float32)
    count = _windows(ones, kernel, strides, pads, (1, 1), 0.0).sum(axis=(-2, -1))
    return apply_activation((total / count).astype(np.float32), act)


def conv_transpose(x, w, b=None, *, strides, pads, dilations, group, out, act=None):
    """Transposed 2-D convolution with weights in the Conv layout [OC, C/group, KH, KW] (see the importer)."""
    n, c, h, wd = x.shape
    oc, cg, kh_n, kw_n = w.shape
    (sh, sw), (dh, dw) = strides, dilations
    full_h = max((h - 1) * sh + dh * (kh_n - 1) + 1, pads[0] + out[0])
    full_w = max((wd - 1) * sw + dw * (kw_n - 1) + 1, pads[1] + out[1])
    # Every tap's contribution in one matrix product per group, then scattered onto the output grid.
    wt = w.reshape(group, oc // group, cg, kh_n, kw_n).transpose(0, 3, 4, 1, 2).reshape(group, -1, cg)
    z = np.matmul(wt.astype(np.float32), x.astype(np.float32).reshape(n, group, cg, h * wd))
    z = z.reshape(n, group, kh_n, kw_n, oc // group, h, wd)
    y = np.zeros((n, group, oc // group, full_h, full_w), dtype=np.float32)
    for kh in range(kh_n):
        for kw in range(kw_n):
            y[:, :, :, kh * dh: kh * dh + (h - 1) * sh + 1: sh, kw * dw: kw * dw + (wd - 1) * sw + 1: sw] += \
                z[:, :, kh, kw]
    y = y.reshape(n, oc, full_h, full_w)[:, :, pads[0]: pads[0] + out[0], pads[1]: pads[1] + out[1]]
    if b is not None:
        y = y + b[None, :, None, None]
    return apply_activation(y.astype(np.float32), act)


def layer_norm(x, gamma, beta, *, eps):
    """LayerNorm over the last axis."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps) * gamma + beta).astype(np.float32)


def softmax(x, *, axis=-1):
    """Softmax along ``axis``."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def _binary(fn):
    return lambda n, xs: apply_activation(fn(xs[0], xs[1]), n.attrs.get("act"))


def _gather(n: Node, xs: list[np.ndarray]) -> np.ndarray:
    return np.take(xs[0], xs[1], axis=n.attrs.get("axis", 0))


def _slice(n: Node, xs: list[np.ndarray]) -> np.ndarray:
    x, starts, ends = xs[0], xs[1], xs[2]
    axes = xs[3] if len(xs) > 3 else np.arange(len(starts))
    steps = xs[4] if len(xs) > 4 else np.ones(len(starts), dtype=np.int64)
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[int(a)] = slice(int(s), int(e), int(st))
    return x[tuple(index)]


def _reshape(n: Node, xs: list[np.ndarray]) -> np.ndarray:
    shape = [int(d) for d in (n.attrs["shape"] if "shape" in n.attrs else xs[1])]
    # ONNX: 0 copies the input's dimension (allowzero=0); the batch follows the input.
    shape = [xs[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
    if "shape" in n.attrs:
        shape[0] = xs[0].shape[0]
    return xs[0].reshape(shape)


def _unsqueeze(n: Node, xs: list[np.ndarray]) -> np.ndarray:
    axes = n.attrs.get("axes", xs[1].tolist() if len(xs) > 1 else [])
    out = xs[0]
    for a in sorted(int(a) % (out.ndim + len(axes)) for a in axes):
        out = np.expand_dims(out, a)
    return out


def _squeeze(n: Node, xs: list[np.ndarray]) -> np.ndarray:
    axes = n.attrs.get("axes", xs[1].tolist() if len(xs) > 1 else None)
    return np.squeeze(xs[0], axis=None if axes is None else tuple(int(a) for a in axes))


FLOAT_OPS: dict[str, Callable[[Node, list[np.ndarray]], np.ndarray]] = {
    "Conv": lambda n, xs: conv(*xs, **n.attrs),
    "FullyConnected": lambda n, xs: fully_connected(*xs, **n.attrs),
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(lambda a, b: a / b if a.dtype.kind == "f" else a // b),
    "MaxPool": lambda n, xs: max_pool(xs[0], **n.attrs),
    "AveragePool": lambda n, xs: avg_pool(xs[0], **n.attrs),
    "Reshape": _reshape,
    "BatchNormalization": lambda n, xs: xs[0] * xs[1] + xs[2],
    "Concat": lambda n, xs: np.concatenate(xs, axis=n.attrs["axis"]),
    "Softmax": lambda n, xs: softmax(xs[0], axis=n.attrs.get("axis", -1)),
    # Only ever evaluated on constants (shape arithmetic), folded away before quantization:
    "Shape": lambda n, xs: np.array(xs[0].shape, dtype=np.int64),
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Cast": lambda n, xs: xs[0].astype(n.attrs["to"]),
    "ConvTranspose": lambda n, xs: conv_transpose(*xs, **n.attrs),
    "Resize": lambda n, xs: resize_float(xs[0], **n.attrs),
    "Transpose": lambda n, xs: np.transpose(xs[0], n.attrs["perm"]),
    "MatMul": lambda n, xs: np.matmul(xs[0], xs[1]).astype(np.float32),
    "ReduceMean": lambda n, xs: xs[0].mean(axis=tuple(n.attrs["axes"]), keepdims=bool(n.attrs["keepdims"])).astype(xs[0].dtype),
    "Pow": lambda n, xs: np.power(xs[0], xs[1]).astype(xs[0].dtype),
    "LayerNorm": lambda n, xs: layer_norm(*xs, **n.attrs),
    "ReduceSum": lambda n, xs: xs[0].sum(axis=tuple(n.attrs["axes"]), keepdims=bool(n.attrs["keepdims"])).astype(xs[0].dtype),
    "Pad": lambda n, xs: np.pad(xs[0], [(0, 0), (0, 0), *zip(n.attrs["pads"][:2], n.attrs["pads"][2:])]),
    **{k: (lambda f: lambda n, xs: _as_dtype(f(xs[0], n.attrs), xs[0]))(f) for k, f in ACTIVATIONS.items()},
}


def _window_out(size: int, lo: int, hi: int, kernel: int, stride: int, dilation: int) -> int:
    """Output length of a sliding window, as conv/_windows compute it (an empty window is an error)."""
    span = size + lo + hi - (kernel - 1) * dilation - 1
    if span < 0:
        raise ValueError(f"kernel {kernel} (dilation {dilation}) is larger than the padded input {size + lo + hi}")
    return span // stride + 1


def _pooled_shape(x: np.ndarray, kernel, strides, pads, dilations) -> tuple[int, ...]:
    pt, pl, pb, pr = pads
    n, c, h, w = x.shape
    return (n, c, _window_out(h, pt, pb, kernel[0], strides[0], dilations[0]),
            _window_out(w, pl, pr, kernel[1], strides[1], dilations[1]))


def _conv_shape(n: Node, xs: list[np.ndarray]) -> tuple[tuple[int, ...], np.dtype]:
    x, w, a = xs[0], xs[1], n.attrs
    if x.ndim != 4 or x.shape[1] != w.shape[1] * a["group"] or w.shape[0] % a["group"]:
        raise ValueError(f"input {x.shape} does not match weights {w.shape} in {a['group']} groups")
    _, _, oh, ow = _pooled_shape(x, w.shape[2:], a["strides"], a["pads"], a["dilations"])
    return (x.shape[0], w.shape[0], oh, ow), np.dtype(np.float32)


def _conv_transpose_shape(n: Node, xs: list[np.ndarray]) -> tuple[tuple[int, ...], np.dtype]:
    x, w, a = xs[0], xs[1], n.attrs
    if x.ndim != 4 or x.shape[1] != w.shape[1] * a["group"] or w.shape[0] % a["group"]:
        raise ValueError(f"input {x.shape} does not match weights {w.shape} in {a['group']} groups")
    return (x.shape[0], w.shape[0], *a["out"]), np.dtype(np.float32)


def _matmul_shape(a: np.ndarray, b: np.ndarray) -> tuple[int, ...]:
    if a.ndim < 2 or b.ndim < 2:  # vector operands: rare and small, numpy's own rules decide
        return np.matmul(a, b).shape
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: {a.shape} and {b.shape} do not match")
    return np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])


def _fc_shape(n: Node, xs: list[np.ndarray]) -> tuple[tuple[int, ...], np.dtype]:
    shape = _matmul_shape(xs[0], xs[1].T)
    if len(xs) > 2:
        shape = np.broadcast_shapes(shape, xs[2].shape)
    return shape, np.dtype(np.float32)


# Output shape and dtype of the ops whose float evaluation is costly (every multiply-accumulate of a
# convolution), exactly as FLOAT_OPS would produce them: infer_shapes runs these as shape rules only.
SHAPE_RULES: dict[str, Callable[[Node, list[np.ndarray]], tuple[tuple[int, ...], np.dtype]]] = {
    "Conv": _conv_shape,
    "ConvTranspose": _conv_transpose_shape,
    "FullyConnected": _fc_shape,
    "MatMul": lambda n, xs: (_matmul_shape(xs[0], xs[1]), np.dtype(np.float32)),
    "MaxPool": lambda n, xs: (_pooled_shape(xs[0], n.attrs["kernel"], n.attrs["strides"], n.attrs["pads"],
                                            n.attrs["dilations"]), xs[0].dtype),
    "AveragePool": lambda n, xs: (_pooled_shape(xs[0], n.attrs["kernel"], n.attrs["strides"], n.attrs["pads"],
                                                (1, 1)), np.dtype(np.float32)),
    "Resize": lambda n, xs: (xs[0].shape[:2] + tuple(n.attrs["size"]), np.dtype(np.float32)),
}


def run_shapes(nodes: list[Node], values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Like run_float, for shapes: the ops of SHAPE_RULES yield zeros of their output shape instead of
    being computed (np.zeros is lazily zeroed memory, so a 640x640 map costs no arithmetic). Every other
    op is evaluated, so shape arithmetic (Shape -> Gather -> Concat -> Reshape) sees the real shapes.
    Only shapes and dtypes of the results are meaningful."""
    for node in nodes:
        xs = [values[i] for i in node.inputs if i]
        rule = SHAPE_RULES.get(node.op)
        if rule is None:
            values[node.outputs[0]] = FLOAT_OPS[node.op](node, xs)
        else:
            shape, dtype = rule(node, xs)
            values[node.outputs[0]] = np.zeros(shape, dtype)
    return values


def run_float(nodes: list[Node], values: dict[str, np.ndarray], keep: Callable[[str], bool] | None = None,
              observe: Callable[[str, np.ndarray], None] | None = None) -> dict[str, np.ndarray]:
    """Evaluate ``nodes`` in order on ``values`` (inputs and constants); returns the values dict.

    ``observe(name, value)`` sees every node output as soon as it is computed. With ``keep``, a node
    output is dropped after its last reader unless ``keep(name)``: on large inputs (a batch of 640x640
    pages) holding every intermediate would take gigabytes.
    """
    last: dict[str, int] = {}
    if keep is not None:
        produced = {o for node in nodes for o in node.outputs}
        for at, node in enumerate(nodes):
            for i in node.inputs:
                if i in produced:
                    last[i] = at
    for at, node in enumerate(nodes):
        out = FLOAT_OPS[node.op](node, [values[i] for i in node.inputs if i])
        values[node.outputs[0]] = out
        if observe is not None:
            observe(node.outputs[0], out)
        if keep is not None:
            for i in set(node.inputs) | {node.outputs[0]}:
                if last.get(i, -1) <= at and i in values and i in produced and not keep(i):
                    del values[i]
    return values
