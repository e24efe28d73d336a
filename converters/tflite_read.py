"""Reading a .tflite file with the ``tflite`` package (the schema's generated flatbuffer reader) into plain
data, in one pass: every field the converters use, checked, so that a truncated or corrupt file fails here
with one line and the importers (``tflite_import``, ``tflite_float``) work on Python values only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError, ModelError

try:
    import tflite
except ImportError:  # an optional converter dependency (the runtime never needs it)
    raise ModelError("TFLite import needs the tflite package: pip install 'edgeq[tflite]'") from None

_OP_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}
_DTYPES = {"INT8": np.int8, "INT32": np.int32, "FLOAT32": np.float32, "UINT8": np.uint8, "INT16": np.int16,
           "INT64": np.int64, "FLOAT16": np.float16}
# TFLite op -> (its options table, the fields read from it)
_POOL = ("Pool2DOptions", ("Padding", "StrideW", "StrideH", "FilterWidth", "FilterHeight", "FusedActivationFunction"))
_OPTIONS: dict[str, tuple[str, tuple[str, ...]] | None] = {
    "CONV_2D": ("Conv2DOptions", ("Padding", "StrideW", "StrideH", "DilationWFactor", "DilationHFactor",
                                  "FusedActivationFunction")),
    "DEPTHWISE_CONV_2D": ("DepthwiseConv2DOptions", ("Padding", "StrideW", "StrideH", "DepthMultiplier",
                                                     "DilationWFactor", "DilationHFactor", "FusedActivationFunction")),
    "FULLY_CONNECTED": ("FullyConnectedOptions", ("FusedActivationFunction",)),
    "ADD": ("AddOptions", ("FusedActivationFunction",)),
    "MUL": ("MulOptions", ("FusedActivationFunction",)),
    "SUB": ("SubOptions", ("FusedActivationFunction",)),
    "DIV": ("DivOptions", ("FusedActivationFunction",)),
    "STRIDED_SLICE": ("StridedSliceOptions", ("BeginMask", "EndMask", "EllipsisMask", "NewAxisMask", "ShrinkAxisMask",
                                              "Offset")),
    "SPLIT": ("SplitOptions", ("NumSplits",)),
    "SPLIT_V": ("SplitVOptions", ("NumSplits",)),
    "LEAKY_RELU": ("LeakyReluOptions", ("Alpha",)),
    "RESIZE_BILINEAR": ("ResizeBilinearOptions", ("AlignCorners", "HalfPixelCenters")),
    "RESIZE_NEAREST_NEIGHBOR": ("ResizeNearestNeighborOptions", ("AlignCorners", "HalfPixelCenters")),
    "MAX_POOL_2D": _POOL,
    "AVERAGE_POOL_2D": _POOL,
    "SOFTMAX": ("SoftmaxOptions", ("Beta",)),
    "MEAN": ("ReducerOptions", ("KeepDims",)),
    "CONCATENATION": ("ConcatenationOptions", ("Axis", "FusedActivationFunction")),
    "RESHAPE": None, "SQUEEZE": None, "EXPAND_DIMS": None, "TRANSPOSE": None,
    "LOGISTIC": None, "TANH": None, "PRELU": None, "HARD_SWISH": None, "PAD": None, "RELU": None, "RELU6": None, "RELU_N1_TO_1": None,
    "QUANTIZE": None, "DEQUANTIZE": None,
}
SUPPORTED_OPS = tuple(sorted(_OPTIONS))


@dataclass
class TFLiteTensor:
    """One tensor: TFLite shape and type name, quantization, and constant contents."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # TFLite type name
    scale: np.ndarray | None
    zero_point: np.ndarray | None
    axis: int
    data: np.ndarray | None  # constant contents (TFLite layout), None for activations


@dataclass
class TFLiteOp:
    """One operator: its index in the subgraph, builtin name, tensor indices and the options read."""

    index: int
    code: str
    inputs: list[int]
    outputs: list[int]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TFLiteModel:
    """A TFLite model's one subgraph as plain data."""

    tensors: list[TFLiteTensor]
    ops: list[TFLiteOp]
    inputs: list[int]
    outputs: list[int]


def read_bytes(model: str | Path | bytes) -> bytes:
    """The model file's bytes (bytes given are returned as they are)."""
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    try:
        return Path(model).read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read TFLite model '{model}': {e.strerror}") from None


def _array(obj: Any, name: str) -> np.ndarray:
    """A flatbuffer vector as an array (the generated readers return 0 for an absent vector)."""
    if getattr(obj, name + "IsNone")():
        return np.zeros(0)
    return np.asarray(getattr(obj, name + "AsNumpy")())


def parse_tflite(data: bytes) -> TFLiteModel:
    """Every field the converter uses, read once; a malformed file raises ModelError here."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError("not a TFLite model: the file does not carry the TFL3 flatbuffer identifier")
    def count(n: int) -> int:  # a vector longer than the file could hold is a corrupt length, not a big model
        if n * 4 > len(data):
            raise ModelError(f"malformed TFLite file: a vector of {n} entries in {len(data)} bytes")
        return n

    try:
        m = tflite.Model.GetRootAsModel(data, 0)
        if count(m.SubgraphsLength()) != 1:
            raise ModelError(f"TFLite model has {m.SubgraphsLength()} subgraphs; edgeq converts single-subgraph models")
        sg = m.Subgraphs(0)
        codes = []
        for i in range(count(m.OperatorCodesLength())):
            oc = m.OperatorCodes(i)
            codes.append(_OP_NAMES.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "CUSTOM"))
        tensors = []
        for i in range(count(sg.TensorsLength())):
            t = sg.Tensors(i)
            dtype = _TYPE_NAMES.get(t.Type(), str(t.Type()))
            q = t.Quantization()
            scale = zp = None
            axis = 0
            if q is not None and not q.ScaleIsNone():
                scale, zp, axis = _array(q, "Scale").astype(np.float32), _array(q, "ZeroPoint").astype(np.int64), \
                    q.QuantizedDimension()
            buf = m.Buffers(t.Buffer()) if t.Buffer() < m.BuffersLength() else None
            raw = None
            if buf is not None and buf.Offset() > 1:  # stored after the flatbuffer (models over 2 GB)
                raw = np.frombuffer(data, np.uint8, buf.Size(), buf.Offset())
            elif buf is not None and not buf.DataIsNone() and buf.DataLength():
                raw = buf.DataAsNumpy()
            shape = tuple(int(v) for v in _array(t, "Shape"))
            value = None
            if raw is not None and dtype in _DTYPES:
                value = np.frombuffer(raw.tobytes(), _DTYPES[dtype]).reshape(shape)
            tensors.append(TFLiteTensor(t.Name().decode("utf-8", "replace"), shape, dtype, scale, zp, axis, value))
        ops = []
        for i in range(count(sg.OperatorsLength())):
            op = sg.Operators(i)
            code = codes[op.OpcodeIndex()] if op.OpcodeIndex() < len(codes) else "CUSTOM"
            options = {}
            spec = _OPTIONS.get(code)
            table = op.BuiltinOptions()
            if spec is not None and table is not None:
                opts = getattr(tflite, spec[0])()
                opts.Init(table.Bytes, table.Pos)
                options = {f: getattr(opts, f)() for f in spec[1]}
            ops.append(TFLiteOp(i, code, [int(v) for v in _array(op, "Inputs")], [int(v) for v in _array(op, "Outputs")],
                           options))
        inputs = [int(v) for v in _array(sg, "Inputs")]
        outputs = [int(v) for v in _array(sg, "Outputs")]
    except EdgeqError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, UnicodeDecodeError, AttributeError) as e:
        raise ModelError(f"malformed or truncated TFLite file ({type(e).__name__}: {e})") from None
    for i in [*inputs, *outputs, *(j for op in ops for j in op.inputs + op.outputs)]:
        if not -1 <= i < len(tensors):
            raise ModelError(f"malformed TFLite file: tensor index {i} out of range ({len(tensors)} tensors)")
    return TFLiteModel(tensors, ops, inputs, outputs)
