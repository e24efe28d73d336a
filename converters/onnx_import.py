"""ONNX -> float graph IR, using ``onnx`` for parsing, checking and shape inference.

The import normalises ONNX's many spellings into a few float ops: Gemm and MatMul with constant
weights become ``FullyConnected`` (weights [OC, K]); Flatten and Reshape become ``Reshape``;
GlobalAveragePool becomes ``AveragePool``; auto_pad and ceil_mode become explicit pads; Clip's min/max
inputs become attributes; Identity and Dropout disappear.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from edgeq.errors import ModelError, UnsupportedOpError
from edgeq.ir import Graph, Node, Tensor

OPSET_RANGE = (11, 21)
SUPPORTED_OPS = sorted([
    "Conv", "Gemm", "MatMul", "Add", "Mul", "Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "MaxPool",
    "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Concat", "Softmax", "BatchNormalization",
    "ConvTranspose", "Resize", "Transpose", "Gelu",
    # transformer pieces: LayerNorm written out (fused by passes.fuse_layer_norm), attention's MatMuls
    "ReduceMean", "Pow", "Sqrt",
    # standalone elementwise and layout ops, lowered to integer ops by converters/lower_ops.py
    "Pad", "Split", "ReduceSum", "Exp", "Tanh", "Neg", "Reciprocal", "Abs",
    # shape arithmetic, accepted when it folds to constants:
    "Constant", "Identity", "Dropout", "Shape", "Gather", "Unsqueeze", "Squeeze", "Slice", "Cast", "Sub", "Div",
])


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


def load_onnx(source: str | Path | bytes) -> tuple[onnx.ModelProto, str]:
    """Parse and check an ONNX model; returns it with the sha256 of its bytes."""
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read model '{source}': {e.strerror}") from None
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for garbage input
        raise ModelError(f"not a valid ONNX file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'decode error'})") from None
    if not model.graph.node and not model.graph.input:
        raise ModelError("not a valid ONNX file (no graph)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"invalid ONNX model: {str(e).splitlines()[0]}") from None
    return model, hashlib.sha256(data).hexdigest()


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise ModelError("model imports no default ONNX opset")


def _fix_input_shapes(model: onnx.ModelProto, inits: set[str], input_shapes: dict[str, tuple[int, ...]],
                      data_shapes: dict[str, tuple[int, ...]]) -> tuple[list[str], bool]:
    """Pin every dynamic input dimension (batch -> 1); return the input names and whether batch is dynamic.

    ``input_shapes`` (--input-shape) fixes whole shapes; ``data_shapes`` (the calibration data's sample
    shapes, batch excluded) fills the dynamic dimensions it covers.
    """
    names, dynamic = [], False
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        names.append(vi.name)
        if not vi.type.HasField("tensor_type"):
            raise ModelError(f"input '{vi.name}' is not a tensor")
        if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ModelError(f"input '{vi.name}' has element type "
                             f"{onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type)}; edgeq takes float inputs")
        dims = vi.type.tensor_type.shape.dim
        given = input_shapes.get(vi.name)
        if given is not None:
            if len(given) != len(dims):
                raise ModelError(f"--input-shape for '{vi.name}' has rank {len(given)}, the model's input has rank {len(dims)}")
            if given[0] == 1 and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
                dynamic = True  # a dynamic batch pinned to 1 for planning stays dynamic at run time
            for d, g in zip(dims, given):
                d.Clear()
                d.dim_value = int(g)
            continue
        seen = data_shapes.get(vi.name)
        if seen is not None and len(seen) + 1 != len(dims):
            raise ModelError(f"calibration data for '{vi.name}' has samples of rank {len(seen)}, the model's input "
                             f"has rank {len(dims)} (batch included)")
        for axis, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            if axis > 0 and seen is not None:
                d.Clear()
                d.dim_value = int(seen[axis - 1])
                continue
            if axis == 0:
                dynamic = True
                d.Clear()
                d.dim_value = 1
            else:
                label = d.dim_param or "?"
                raise ModelError(f"input '{vi.name}' has dynamic dimension '{label}' at axis {axis}; "
                                 f"fix it with --input-shape {vi.name}=1x... or calibration data")
    if not names:
        raise ModelError("model has no inputs")
    return names, dynamic


def _explicit_pads(attrs: dict, in_hw: tuple[int, int], kernel: list[int], strides: list[int],
                   dilations: list[int], name: str, ceil_mode: bool = False) -> list[int]:
    """ONNX pads/auto_pad/ceil_mode -> [top, left, bottom, right] for floor-mode windows."""
    auto = attrs.get("auto_pad", "NOTSET")
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4:
        raise UnsupportedOpError(f"node '{name}': only 2-D spatial ops are supported (pads={pads})")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * 4
        for i in range(2):
            eff = (kernel[i] - 1) * dilations[i] + 1
            out = -(-in_hw[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + eff - in_hw[i])
            small, big = total // 2, total - total // 2
            pads[i], pads[i + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0] * 4
    top, left, bottom, right = pads[0], pads[1], pads[2], pads[3]
    if ceil_mode:
        for i, (lo, hi) in enumerate(((top, bottom), (left, right))):
            eff = (kernel[i] - 1) * dilations[i] + 1
            span = in_hw[i] + lo + hi - eff
            extra = (strides[i] - span % strides[i]) % strides[i]
            # ONNX drops a last window that would start inside the end padding.
            if extra and (span // strides[i] + 1) * strides[i] < in_hw[i] + lo:
                if i == 0:
                    bottom += extra
                else:
                    right += extra
    return [top, left, bottom, right]


class _Importer:
    def __init__(self, model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]],
                 data_shapes: dict[str, tuple[int, ...]]):
        self.model = model
        inits = {t.name for t in model.graph.initializer}
        self.input_names, self.dynamic = _fix_input_shapes(model, inits, input_shapes, data_shapes)
        try:
            self.inferred = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"ONNX shape inference failed: {str(e).splitlines()[0]}") from None
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        g = self.inferred.graph
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            dims = vi.type.tensor_type.shape.dim
            known = all(d.HasField("dim_value") for d in dims) and vi.type.tensor_type.HasField("shape")
            self.shapes[vi.name] = tuple(d.dim_value for d in dims) if known else None
        self.graph = Graph([], {}, list(self.input_names), [o.name for o in model.graph.output],
                           dynamic_batch=self.dynamic)
        self.alias: dict[str, str] = {}
        self._values: dict[str, np.ndarray] = {}  # _run_prefix's shape run so far
        self._done = 0  # nodes of self.graph.nodes already in _values

    def name(self, t: str) -> str:
        while t in self.alias:
            t = self.alias[t]
        return t

    def shape(self, t: str) -> tuple[int, ...]:
        s = self.shapes.get(t)
        if s is None:
            self._run_prefix()
            s = self.shapes.get(t) or self.shapes.get(self.name(t))
        if s is None:
            raise ModelError(f"shape of tensor '{t}' could not be inferred")
        return s

    def _run_prefix(self) -> None:
        """Shapes ONNX inference left unknown (e.g. behind Shape -> Cast -> Concat): shape-run the nodes
        imported since the last call (every input dimension is fixed by now) and record every shape. The
        values are kept, so each node is evaluated once however many shapes are asked for."""
        from .float_ops import run_shapes
        values = self._values
        if not values:
            values.update({n: np.zeros(self.graph.tensors[n].shape, np.float32) for n in self.input_names})
        values.update(self.graph.consts)  # Constant nodes imported since add constants
        try:
            run_shapes(self.graph.nodes[self._done:], values)
        except Exception as e:  # noqa: BLE001 - numpy names the mismatch
            raise ModelError(f"cannot infer shapes of the imported graph: {e}") from None
        self._done = len(self.graph.nodes)
        for k, v in values.items():
            self.shapes[k] = tuple(np.shape(v))

    def const(self, t: str) -> np.ndarray | None:
        return self.graph.consts.get(self.name(t))

    def run(self) -> Graph:
        g = self.graph
        for name in self.input_names:
            g.tensors[name] = Tensor(name, self.shape(name), "float32")
        for init in self.model.graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.dtype.kind == "f":
                if not np.all(np.isfinite(arr)):
                    raise ModelError(f"initializer '{init.name}' contains NaN or Inf")
                arr = arr.astype(np.float32)
            g.add_const(init.name, arr)
        g.metadata = {p.key: p.value for p in self.model.metadata_props}
        for node in self.model.graph.node:
            first = len(g.nodes)
            self.node(node)
            for made in g.nodes[first:]:  # provenance (ir.Node.source_ops), kept by every later rewrite
                made.source_ops = [node.op_type]
        g.outputs = [self.name(o) for o in g.outputs]
        for o in self.model.graph.output:
            if self.name(o.name) in g.consts:
                raise ModelError(f"output '{o.name}' is a constant; nothing to run")
        return g

    def emit(self, op: str, node: onnx.NodeProto, inputs: list[str], attrs: dict, output: str | None = None) -> None:
        out = output or node.output[0]
        self.graph.nodes.append(Node(op, node.name or out, [self.name(i) if i else "" for i in inputs], [out], attrs))

    def node(self, node: onnx.NodeProto) -> None:
        op, a, name = node.op_type, _attrs(node), node.name or node.output[0]
        if node.domain not in ("", "ai.onnx") or op not in SUPPORTED_OPS:
            raise UnsupportedOpError(f"unsupported op {op} (node '{name}'); supported: {', '.join(SUPPORTED_OPS)}")
        ins = list(node.input)
        if op == "Constant":
            value = a.get("value")
            if value is None:
                for key in ("value_float", "value_int", "value_floats", "value_ints"):
                    if key in a:
                        value = np.array(a[key], dtype=np.float32 if "float" in key else np.int64)
            if value is None:
                raise UnsupportedOpError(f"unsupported Constant form in node '{name}'")
            self.graph.add_const(node.output[0], np.asarray(value))
        elif op == "Shape":
            dims = self.shape(ins[0])[a.get("start", 0): a.get("end", None)]
            self.graph.add_const(node.output[0], np.array(dims, dtype=np.int64))
        elif op in ("Identity", "Dropout"):
            self.alias[node.output[0]] = ins[0]
        elif op == "Conv":
            w = self.const(ins[1])
            if w is None or w.ndim != 4:
                raise UnsupportedOpError(f"Conv node '{name}': only 2-D convolution with constant weights is supported")
            kernel = list(w.shape[2:])
            strides, dil = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
            pads = _explicit_pads(a, self.shape(ins[0])[2:], kernel, strides, dil, name)
            self.emit("Conv", node, ins[:3], dict(strides=strides, pads=pads, dilations=dil, group=int(a.get("group", 1))))
        elif op in ("Gemm", "MatMul"):
            self.fully_connected(node, a, ins, name)
        elif op in ("MaxPool", "AveragePool"):
            if len(node.output) > 1 and node.output[1]:
                raise UnsupportedOpError(f"MaxPool node '{name}': the Indices output is not supported")
            kernel, strides = list(a["kernel_shape"]), list(a.get("strides", [1] * len(a["kernel_shape"])))
            if len(kernel) != 2:
                raise UnsupportedOpError(f"{op} node '{name}': only 2-D pooling is supported")
            dil = list(a.get("dilations", [1, 1]))
            ceil = bool(a.get("ceil_mode", 0))
            pads = _explicit_pads(a, self.shape(ins[0])[2:], kernel, strides, dil, name, ceil)
            if any(p >= kernel[i % 2] for i, p in enumerate(pads)):
                raise UnsupportedOpError(f"{op} node '{name}': padding as large as the window is not supported")
            if op == "MaxPool":
                self.emit("MaxPool", node, ins, dict(kernel=kernel, strides=strides, pads=pads, dilations=dil))
            else:
                include = bool(a.get("count_include_pad", 0))
                if include and ceil:
                    raise UnsupportedOpError(f"AveragePool node '{name}': ceil_mode with count_include_pad")
                if dil != [1, 1]:
                    raise UnsupportedOpError(f"AveragePool node '{name}': dilations are not supported")
                self.emit("AveragePool", node, ins, dict(kernel=kernel, strides=strides, pads=pads,
                                                         count_include_pad=include))
        elif op == "GlobalAveragePool":
            hw = list(self.shape(ins[0])[2:])
            if len(hw) != 2:
                raise UnsupportedOpError(f"GlobalAveragePool node '{name}': only 4-D inputs are supported")
            self.emit("AveragePool", node, ins, dict(kernel=hw, strides=[1, 1], pads=[0, 0, 0, 0], count_include_pad=False))
        elif op == "Flatten":
            shape = self.shape(ins[0])
            axis = int(a.get("axis", 1)) % max(len(shape), 1)
            self.emit("Reshape", node, ins[:1], dict(shape=[int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))]))
        elif op == "Reshape":
            if a.get("allowzero", 0):
                raise UnsupportedOpError(f"Reshape node '{name}': allowzero=1 is not supported")
            self.emit("Reshape", node, ins[:2], {})  # the target shape is resolved once constants are folded
        elif op == "Clip":
            lo = a.get("min", None)
            hi = a.get("max", None)
            if len(ins) > 1 and ins[1]:
                lo = self._scalar(ins[1], name)
            if len(ins) > 2 and ins[2]:
                hi = self._scalar(ins[2], name)
            attrs = {k: float(v) for k, v in (("min", lo), ("max", hi)) if v is not None}
            self.emit("Clip", node, ins[:1], attrs)
        elif op == "Softmax":  # the quantizer accepts the last axis only (where opset < 13 agrees)
            self.emit("Softmax", node, ins, dict(axis=int(a.get("axis", -1 if _opset(self.model) >= 13 else 1))))
        elif op == "BatchNormalization":
            scale, bias, mean, var = (self.const(i) for i in ins[1:5])
            if any(v is None for v in (scale, bias, mean, var)):
                raise UnsupportedOpError(f"BatchNormalization node '{name}': statistics must be constants")
            mul = scale / np.sqrt(var + a.get("epsilon", 1e-5))
            rank = len(self.shape(ins[0]))
            bshape = (-1,) + (1,) * (rank - 2)
            self.emit("BatchNormalization", node, ins[:1], {})
            # Kept as (mul, add) constants; a pass folds them into the producing Conv/FullyConnected.
            g = self.graph
            g.nodes[-1].inputs += [g.add_const(g.unique_name(name + "_mul"), mul.reshape(bshape).astype(np.float32)),
                                   g.add_const(g.unique_name(name + "_add"), (bias - mean * mul).reshape(bshape).astype(np.float32))]
        elif op == "Cast":
            self.emit("Cast", node, ins, dict(to=onnx.helper.tensor_dtype_to_np_dtype(a["to"]).name))
        elif op == "ConvTranspose":
            self.conv_transpose(node, a, ins, name)
        elif op == "Resize":
            self.resize(node, a, ins, name)
        elif op == "Pad":
            self.pad(node, a, ins, name)
        elif op == "Split":
            self.split(node, a, ins, name)
        elif op in ("ReduceMean", "ReduceSum"):
            axes = a.get("axes")
            if axes is None and len(ins) > 1 and ins[1]:
                axes = self.const(ins[1])
                if axes is None:
                    raise UnsupportedOpError(f"ReduceMean node '{name}': axes must be constant")
            if axes is None:
                axes = list(range(len(self.shape(ins[0]))))
            if not len(np.asarray(axes).reshape(-1)) and a.get("noop_with_empty_axes", 0):
                self.alias[node.output[0]] = ins[0]
                return
            self.emit(op, node, ins[:1], dict(axes=[int(v) for v in np.asarray(axes).reshape(-1)],
                                              keepdims=int(a.get("keepdims", 1))))
        elif op == "Transpose":
            perm = a["perm"] if "perm" in a else list(range(len(self.shape(ins[0]))))[::-1]
            self.emit("Transpose", node, ins, dict(perm=[int(p) for p in perm]))
        else:  # elementwise, activations and shape arithmetic keep their ONNX attributes
            self.emit(op, node, ins, {k: v for k, v in a.items() if isinstance(v, (int, float, str, list))})

    def pad(self, node: onnx.NodeProto, a: dict, ins: list[str], name: str) -> None:
        """Constant zero padding of H and W of a 4-D tensor (what convolution stems and SAME padding use)."""
        mode = a.get("mode", "constant")
        pads = a.get("pads") if len(ins) < 2 or not ins[1] else self.const(ins[1])
        value = self.const(ins[2]) if len(ins) > 2 and ins[2] else np.zeros(1)
        rank = len(self.shape(ins[0]))
        if len(ins) > 3 and ins[3]:
            raise UnsupportedOpError(f"Pad node '{name}': the axes input is not supported")
        if mode != "constant" or pads is None or value is None or np.any(np.asarray(value) != 0):
            raise UnsupportedOpError(f"Pad node '{name}': only constant padding with 0 and constant pads are "
                                     f"supported (mode {mode})")
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        begin, end = pads[:rank], pads[rank:]
        if rank != 4 or any(begin[:2]) or any(end[:2]) or min(pads) < 0:
            raise UnsupportedOpError(f"Pad node '{name}': only non-negative padding of H and W of a 4-D "
                                     f"tensor is supported (pads {pads})")
        self.emit("Pad", node, ins[:1], {"pads": [begin[2], begin[3], end[2], end[3]]})

    def split(self, node: onnx.NodeProto, a: dict, ins: list[str], name: str) -> None:
        """One Slice per output (each an integer gather once quantized)."""
        shape = self.shape(ins[0])
        axis = int(a.get("axis", 0)) % len(shape)
        sizes = a.get("split") if len(ins) < 2 or not ins[1] else self.const(ins[1])
        n = len(node.output)
        if sizes is None:
            if len(ins) > 1 and ins[1]:
                raise UnsupportedOpError(f"Split node '{name}': split sizes must be constant")
            step = -(-shape[axis] // n)
            sizes = [min(step, shape[axis] - k * step) for k in range(n)]
        sizes = [int(v) for v in np.asarray(sizes).reshape(-1)]
        if len(sizes) != n or sum(sizes) != shape[axis] or min(sizes) < 1:
            raise UnsupportedOpError(f"Split node '{name}': sizes {sizes} do not split axis {axis} of {shape} "
                                     f"into {n} outputs")
        g, start = self.graph, 0
        for out, size in zip(node.output, sizes):
            consts = [g.add_const(g.unique_name(f"{name}_{what}"), np.array([v], np.int64))
                      for what, v in (("start", start), ("end", start + size), ("axis", axis))]
            g.nodes.append(Node("Slice", f"{name}_{out}", [self.name(ins[0]), *consts], [out], {}))
            start += size

    def _scalar(self, t: str, name: str) -> float:
        v = self.const(t)
        if v is None or v.size != 1:
            raise UnsupportedOpError(f"node '{name}': Clip bounds must be constant scalars")
        return float(v.reshape(-1)[0])

    def conv_transpose(self, node: onnx.NodeProto, a: dict, ins: list[str], name: str) -> None:
        """ConvTranspose with constant weights, regrouped from [C, OC/group, KH, KW] to the Conv layout
        [OC, C/group, KH, KW]; the output size comes from shape inference (output_padding included)."""
        w = self.const(ins[1])
        if w is None or w.ndim != 4:
            raise UnsupportedOpError(f"ConvTranspose node '{name}': only 2-D with constant weights is supported")
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or "output_shape" in a:
            raise UnsupportedOpError(f"ConvTranspose node '{name}': auto_pad/output_shape are not supported; "
                                     "export with explicit pads")
        group = int(a.get("group", 1))
        c, ocg, kh, kw = w.shape
        wr = w.reshape(group, c // group, ocg, kh, kw).transpose(0, 2, 1, 3, 4).reshape(group * ocg, c // group, kh, kw)
        g = self.graph
        inputs = [ins[0], g.add_const(g.unique_name(name + "_w"), np.ascontiguousarray(wr, dtype=np.float32))]
        if len(ins) > 2 and ins[2]:
            if self.const(ins[2]) is None:
                raise UnsupportedOpError(f"ConvTranspose node '{name}': the bias must be a constant")
            inputs.append(ins[2])
        pads = list(a.get("pads", [0, 0, 0, 0])) if a.get("auto_pad", "NOTSET") == "NOTSET" else [0, 0, 0, 0]
        out = list(self.shape(node.output[0])[2:])
        self.emit("ConvTranspose", node, inputs, dict(strides=list(a.get("strides", [1, 1])), pads=pads,
                                                      dilations=list(a.get("dilations", [1, 1])), group=group, out=out))

    def resize(self, node: onnx.NodeProto, a: dict, ins: list[str], name: str) -> None:
        """Resize of H and W (nearest or linear) with the output size from shape inference."""
        from .resize_tables import COORDINATE_MODES, MODES, NEAREST_MODES
        mode = a.get("mode", "nearest")
        coord = a.get("coordinate_transformation_mode", "half_pixel")
        nearest = a.get("nearest_mode", "round_prefer_floor")
        if mode not in MODES or coord not in COORDINATE_MODES or nearest not in NEAREST_MODES or a.get("antialias", 0):
            raise UnsupportedOpError(f"Resize node '{name}': mode={mode}, coordinate_transformation_mode={coord}, "
                                     f"nearest_mode={nearest} is not supported (modes: {', '.join(MODES)}; "
                                     f"coordinate modes: {', '.join(COORDINATE_MODES)})")
        x_shape, out = self.shape(ins[0]), self.shape(node.output[0])
        if len(x_shape) != 4 or tuple(out[:2]) != tuple(x_shape[:2]):
            raise UnsupportedOpError(f"Resize node '{name}': only 4-D inputs resized along H and W are supported")
        scales = self.const(ins[2]) if len(ins) > 2 and ins[2] else None
        spatial = [float(v) for v in scales.reshape(-1)[2:]] if scales is not None and scales.size == 4 else \
            [o / i for o, i in zip(out[2:], x_shape[2:])]
        self.emit("Resize", node, ins[:1], dict(mode=mode, coord=coord, nearest_mode=nearest, size=list(out[2:]),
                                                scales=spatial))

    def fully_connected(self, node: onnx.NodeProto, a: dict, ins: list[str], name: str) -> None:
        w = self.const(ins[1])
        x_shape = self.shapes.get(ins[0])
        if node.op_type == "MatMul" and w is None and self.const(ins[0]) is None:
            self.emit("MatMul", node, ins, {})  # between two activations (attention)
            return
        if w is None or w.ndim != 2 or (x_shape is not None and (len(x_shape) < 2 or
                                                                 (node.op_type == "Gemm" and len(x_shape) != 2))):
            raise UnsupportedOpError(f"{node.op_type} node '{name}': only [..., K] x constant [K, M] is supported")
        if node.op_type == "Gemm":
            if a.get("transA", 0):
                raise UnsupportedOpError(f"Gemm node '{name}': transA=1 is not supported")
            w = w if a.get("transB", 0) else w.T
            w = w * a.get("alpha", 1.0)
            b = self.const(ins[2]) if len(ins) > 2 and ins[2] else None
            if len(ins) > 2 and ins[2] and b is None:
                raise UnsupportedOpError(f"Gemm node '{name}': C must be a constant")
            if b is not None:
                b = np.broadcast_to(b * a.get("beta", 1.0), (w.shape[0],)).astype(np.float32)
        else:
            w, b = w.T, None
        g = self.graph
        inputs = [self.name(ins[0]), g.add_const(g.unique_name(name + "_w"), np.ascontiguousarray(w, dtype=np.float32))]
        if b is not None:
            inputs.append(g.add_const(g.unique_name(name + "_b"), b))
        g.nodes.append(Node("FullyConnected", name, inputs, [node.output[0]], {}))


def import_onnx(source: str | Path | bytes, input_shapes: dict[str, tuple[int, ...]] | None = None,
                data_shapes: dict[str, tuple[int, ...]] | None = None) -> tuple[Graph, str]:
    """Read an ONNX model into a float :class:`Graph`; returns it with the model's sha256.

    Dynamic input dimensions are fixed by ``input_shapes`` (whole shapes, batch included) or else by
    ``data_shapes`` (per-sample shapes of the calibration data, keyed by input name; key "" stands for
    the only input).
    """
    model, digest = load_onnx(source)
    opset = _opset(model)
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise ModelError(f"ONNX opset {opset} is not supported (supported: {OPSET_RANGE[0]} to {OPSET_RANGE[1]})")
    data_shapes = dict(data_shapes or {})
    if "" in data_shapes:
        inits = {t.name for t in model.graph.initializer}
        names = [vi.name for vi in model.graph.input if vi.name not in inits]
        data_shapes = {names[0]: data_shapes[""]} if len(names) == 1 else {}
    return _Importer(model, input_shapes or {}, data_shapes).run(), digest
