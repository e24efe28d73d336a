"""A float32 TFLite model as edgeq's float graph, which the pipeline then calibrates and quantizes like an
ONNX model. The stored-order layout machinery is the int8 importer's (``tflite_import._Builder``)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import UnsupportedOpError
from edgeq.ir import Graph, Node, Tensor
from .tflite_import import NCHW, _ACTIVATIONS, _Builder
from .tflite_read import TFLiteOp, parse_tflite, read_bytes


class _FloatBuilder(_Builder):
    """A float32 TFLite model as edgeq's float graph (ONNX op names, window ops NCHW, fused activations as
    their own Relu/Clip nodes for ``run_passes`` to fuse again), to be calibrated and quantized like an
    ONNX model. The stored-order machinery is the int8 builder's; reshapes and copies become Reshape and
    Transpose nodes."""

    def tensor(self, i: int, name: str, shape: tuple[int, ...]) -> Tensor:
        return Tensor(name, shape, "float32")

    def finish(self) -> None:
        self.g.prune()  # run_passes fuses and the quantizer tabulates

    def check_types(self, edges: set[int]) -> None:
        for t in self.m.tensors:
            if t.dtype not in ("FLOAT32", "INT32", "INT64") or (t.dtype != "FLOAT32" and t.data is None):
                raise UnsupportedOpError(f"tensor '{t.name}' is {t.dtype} in a float TFLite model (a model mixing "
                                         "float and quantized tensors is not supported)")

    def reshape_node(self, y: str, x: str, shape: list[int]) -> Node:
        return Node("Reshape", y, [x], [y], {"shape": [int(v) for v in shape]})

    def permute_node(self, y: str, x: str, perm: list[int]) -> Node:
        return Node("Transpose", y, [x], [y], {"perm": [int(p) for p in perm]})

    def qp(self, i: int) -> tuple[float, int]:
        return 1.0, 0  # float tensors: the layout and PAD folding compare "quantizations", all equal

    def const(self, op: TFLiteOp, k: int, what: str) -> np.ndarray:
        return np.asarray(super().const(op, k, what))

    def node(self, op: TFLiteOp, kind: str, inputs: list[str], order: tuple[int, ...] | None = None, **attrs: Any) -> str:
        """Emit float node ``kind`` writing op's output (stored in ``order``), then its fused activation."""
        fused = op.options.get("FusedActivationFunction", 0)
        if fused not in _ACTIVATIONS:
            raise UnsupportedOpError(f"{op.code} (node {op.index}): fused activation {fused} is not supported")
        y = self.define(op.outputs[0], order)
        if _ACTIVATIONS[fused] is None:
            self.g.nodes.append(Node(kind, y, inputs, [y], attrs))
            return y
        pre = self.g.unique_name(y + "_preact")
        self.g.tensors[pre] = Tensor(pre, self.g.tensors[y].shape, "float32")
        self.g.nodes.append(Node(kind, pre, inputs, [pre], attrs))
        lo, hi = _ACTIVATIONS[fused]
        act = Node("Relu", y, [pre], [y]) if hi is None else Node("Clip", y, [pre], [y], {"min": lo, "max": hi})
        self.g.nodes.append(act)
        return y

    def weight(self, op: TFLiteOp, k: int, value: np.ndarray | None = None) -> str:
        v = self.const(op, k, "weights") if value is None else value
        return self.g.add_const(self.g.unique_name(f"{self.t(op.inputs[k]).name or 'w'}"), v.astype(np.float32))

    def _conv(self, op: TFLiteOp, w: np.ndarray, group: int) -> None:
        x = self._nchw_input(op)
        inputs = [x, self.weight(op, 1, w)]
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            inputs.append(self.weight(op, 2))
        self.node(op, "Conv", inputs, NCHW, **self.window(op, w.shape[2], w.shape[3]), group=group)

    def op_CONV_2D(self, op: TFLiteOp) -> None:
        w = self.const(op, 1, "filter")
        self._conv(op, w.transpose(0, 3, 1, 2), self.t(op.inputs[0]).shape[3] // w.shape[3])

    def op_DEPTHWISE_CONV_2D(self, op: TFLiteOp) -> None:
        self._conv(op, self.const(op, 1, "filter")[0].transpose(2, 0, 1)[:, None], self.t(op.inputs[0]).shape[3])

    def op_FULLY_CONNECTED(self, op: TFLiteOp) -> None:
        w = self.const(op, 1, "filter")
        xt = self.t(op.inputs[0])
        oc, k = w.shape
        if xt.shape[0] != 1 or int(np.prod(xt.shape[1:])) != k:
            raise UnsupportedOpError(f"FULLY_CONNECTED (node {op.index}): input {xt.shape} (one row per sample)")
        x, order = self.any_view(op.inputs[0])
        w = w.reshape((oc,) + xt.shape[1:]).transpose((0,) + order[1:]).reshape(oc, k)
        if len(xt.shape) != 2:
            flat = self.g.unique_name(x + "_flat")
            self.g.tensors[flat] = Tensor(flat, (1, k), "float32")
            self.g.nodes.append(self.reshape_node(flat, x, [1, k]))
            x = flat
        inputs = [x, self.weight(op, 1, w)] + ([self.weight(op, 2)] if len(op.inputs) > 2 and op.inputs[2] >= 0 else [])
        self.node(op, "FullyConnected", inputs)

    def _binary(self, op: TFLiteOp, kind: str) -> None:
        out_rank = len(self.t(op.outputs[0]).shape)
        acts = [i for i in op.inputs if self.t(i).data is None]
        order = self.any_view(acts[0])[1] if acts else tuple(range(out_rank))
        names = [self.view(i, order) if self.t(i).data is None else self.weight(
            op, k, self.t(i).data.reshape((1,) * (out_rank - self.t(i).data.ndim) + self.t(i).data.shape).transpose(order))
            for k, i in enumerate(op.inputs)]
        self.node(op, kind, names, order)

    def op_ADD(self, op: TFLiteOp) -> None:
        self._binary(op, "Add")

    def op_MUL(self, op: TFLiteOp) -> None:
        self._binary(op, "Mul")

    def op_MAX_POOL_2D(self, op: TFLiteOp) -> None:
        o = op.options
        self.node(op, "MaxPool", [self._nchw_input(op)], NCHW, kernel=[o["FilterHeight"], o["FilterWidth"]],
                  **self.window(op, o["FilterHeight"], o["FilterWidth"]))

    def op_AVERAGE_POOL_2D(self, op: TFLiteOp) -> None:
        o = op.options
        win = self.window(op, o["FilterHeight"], o["FilterWidth"])
        del win["dilations"]
        self.node(op, "AveragePool", [self._nchw_input(op)], NCHW, kernel=[o["FilterHeight"], o["FilterWidth"]],
                  count_include_pad=False, **win)

    def op_MEAN(self, op: TFLiteOp) -> None:
        rank = len(self.t(op.inputs[0]).shape)
        keep = len(self.t(op.outputs[0]).shape) == rank
        x, order = self.any_view(op.inputs[0]) if keep else (self.view(op.inputs[0], tuple(range(rank))),
                                                             tuple(range(rank)))
        axes = [order.index(int(a) % rank) for a in self.const(op, 1, "axes").reshape(-1)]
        self.node(op, "ReduceMean", [x], order if keep else None, axes=sorted(axes), keepdims=int(keep))

    def op_SOFTMAX(self, op: TFLiteOp) -> None:
        if op.options.get("Beta", 1.0) != 1.0:
            raise UnsupportedOpError(f"SOFTMAX (node {op.index}): beta {op.options['Beta']} in a float model")
        self.node(op, "Softmax", [self.view(op.inputs[0], tuple(range(len(self.t(op.inputs[0]).shape))))], axis=-1)

    def _unary(self, op: TFLiteOp, kind: str, **attrs: Any) -> None:
        x, order = self.any_view(op.inputs[0])
        self.node(op, kind, [x], order, **attrs)

    def op_LOGISTIC(self, op: TFLiteOp) -> None:
        self._unary(op, "Sigmoid")

    def op_TANH(self, op: TFLiteOp) -> None:
        self._unary(op, "Tanh")

    def op_HARD_SWISH(self, op: TFLiteOp) -> None:
        self._unary(op, "HardSwish")

    def op_RELU(self, op: TFLiteOp) -> None:
        self._unary(op, "Relu")

    def op_RELU6(self, op: TFLiteOp) -> None:
        self._unary(op, "Clip", min=0.0, max=6.0)

    def op_RELU_N1_TO_1(self, op: TFLiteOp) -> None:
        self._unary(op, "Clip", min=-1.0, max=1.0)

    def op_CONCATENATION(self, op: TFLiteOp) -> None:
        order = self.any_view(op.inputs[0])[1]
        axis = op.options["Axis"] % len(order)
        self.node(op, "Concat", [self.view(i, order) for i in op.inputs], order, axis=order.index(axis))


def import_float_tflite(model: str | Path | bytes) -> tuple[Graph, str] | None:
    """A float32 TFLite model as edgeq's float graph (for calibration) and the file's sha256; None when the
    model is quantized (see ``import_tflite``)."""
    data = read_bytes(model)
    m = parse_tflite(data)
    if any(t.dtype != "FLOAT32" for t in m.tensors if t.data is None) or \
            not any(t.dtype == "FLOAT32" for t in m.tensors if t.data is not None):
        return None
    return _FloatBuilder(m).run(), hashlib.sha256(data).hexdigest()
