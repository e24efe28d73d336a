"""Small int8 TFLite models written with the ``tflite`` schema package's builder functions (no TensorFlow).

``ModelWriter`` assembles tensors, buffers and operators into a .tflite flatbuffer; ``random_model``
draws one random fully-quantized model of a given kind (random shapes, strides, paddings, per-channel
scales, weights) for the bit-exactness tests against TFLite's reference kernels.
"""

from __future__ import annotations

from typing import Any

import flatbuffers
import numpy as np
import tflite

OP = tflite.BuiltinOperator
OPTIONS = tflite.BuiltinOptions
TYPES = {"int8": tflite.TensorType.INT8, "int32": tflite.TensorType.INT32, "float32": tflite.TensorType.FLOAT32,
         "int16": tflite.TensorType.INT16, "float16": tflite.TensorType.FLOAT16, "uint8": tflite.TensorType.UINT8,
         "int64": tflite.TensorType.INT64}
SAME, VALID = tflite.Padding.SAME, tflite.Padding.VALID
ACTS = {"none": 0, "relu": 1, "relu_n1_to_1": 2, "relu6": 3}


class ModelWriter:
    """Collects one subgraph and serializes it as a TFLite model (schema version 3)."""

    def __init__(self) -> None:
        self.buffers: list[bytes] = [b""]  # buffer 0: the empty sentinel
        self.tensors: list[dict[str, Any]] = []
        self.ops: list[tuple[int, list[int], list[int], str | None, dict[str, Any]]] = []
        self.codes: list[int] = []

    def tensor(self, name: str, shape: tuple[int, ...], dtype: str = "int8", scale: Any = None, zp: Any = None,
               data: np.ndarray | None = None, axis: int = 0) -> int:
        """Add a tensor (a constant when ``data`` is given) and return its index."""
        buf = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(data).tobytes())
            buf = len(self.buffers) - 1
        scales = None if scale is None else np.atleast_1d(np.asarray(scale, np.float32))
        zps = None if scales is None else np.broadcast_to(np.asarray(0 if zp is None else zp, np.int64), scales.shape)
        self.tensors.append(dict(name=name, shape=tuple(int(s) for s in shape), dtype=dtype, buffer=buf,
                                 scale=scales, zp=zps, axis=axis))
        return len(self.tensors) - 1

    def act(self, name: str, shape: tuple[int, ...], scale: float, zp: int) -> int:
        """An int8 activation tensor."""
        return self.tensor(name, shape, "int8", scale, zp)

    def op(self, code: int, inputs: list[int], outputs: list[int], options: str | None = None, **fields: Any) -> None:
        """Add an operator; ``options`` names its options table (e.g. "Conv2DOptions"), ``fields`` its fields."""
        self.ops.append((code, inputs, outputs, options, fields))

    def to_bytes(self, inputs: list[int], outputs: list[int]) -> bytes:
        """The finished .tflite file."""
        b = flatbuffers.Builder(1024)
        buffers = []
        for data in self.buffers:
            vec = b.CreateNumpyVector(np.frombuffer(data, np.uint8)) if data else None
            tflite.BufferStart(b)
            if vec is not None:
                tflite.BufferAddData(b, vec)
            buffers.append(tflite.BufferEnd(b))
        tensors = [self._tensor(b, t) for t in self.tensors]
        ops = []
        for code, ins, outs, options, fields in self.ops:
            if code not in self.codes:
                self.codes.append(code)
            opts = None
            if options is not None:
                getattr(tflite, options + "Start")(b)
                for k, v in fields.items():
                    getattr(tflite, f"{options}Add{k}")(b, v)
                opts = getattr(tflite, options + "End")(b)
            vin, vout = _ints(b, tflite.OperatorStartInputsVector, ins), _ints(b, tflite.OperatorStartOutputsVector, outs)
            tflite.OperatorStart(b)
            tflite.OperatorAddOpcodeIndex(b, self.codes.index(code))
            tflite.OperatorAddInputs(b, vin)
            tflite.OperatorAddOutputs(b, vout)
            if opts is not None:
                tflite.OperatorAddBuiltinOptionsType(b, getattr(OPTIONS, options))
                tflite.OperatorAddBuiltinOptions(b, opts)
            ops.append(tflite.OperatorEnd(b))
        codes = []
        for code in self.codes:
            tflite.OperatorCodeStart(b)
            tflite.OperatorCodeAddBuiltinCode(b, code)
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            tflite.OperatorCodeAddVersion(b, 1)
            codes.append(tflite.OperatorCodeEnd(b))
        vt = _offsets(b, tflite.SubGraphStartTensorsVector, tensors)
        vo = _offsets(b, tflite.SubGraphStartOperatorsVector, ops)
        vi, vout = _ints(b, tflite.SubGraphStartInputsVector, inputs), _ints(b, tflite.SubGraphStartOutputsVector, outputs)
        name = b.CreateString("main")
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, vt)
        tflite.SubGraphAddOperators(b, vo)
        tflite.SubGraphAddInputs(b, vi)
        tflite.SubGraphAddOutputs(b, vout)
        tflite.SubGraphAddName(b, name)
        sg = tflite.SubGraphEnd(b)
        vs = _offsets(b, tflite.ModelStartSubgraphsVector, [sg])
        vc = _offsets(b, tflite.ModelStartOperatorCodesVector, codes)
        vb = _offsets(b, tflite.ModelStartBuffersVector, buffers)
        desc = b.CreateString("edgeq test writer")
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, 3)
        tflite.ModelAddOperatorCodes(b, vc)
        tflite.ModelAddSubgraphs(b, vs)
        tflite.ModelAddDescription(b, desc)
        tflite.ModelAddBuffers(b, vb)
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())

    @staticmethod
    def _tensor(b: flatbuffers.Builder, t: dict[str, Any]) -> int:
        q = None
        if t["scale"] is not None:
            vs = b.CreateNumpyVector(t["scale"].astype(np.float32))
            vz = b.CreateNumpyVector(np.ascontiguousarray(t["zp"], np.int64))
            tflite.QuantizationParametersStart(b)
            tflite.QuantizationParametersAddScale(b, vs)
            tflite.QuantizationParametersAddZeroPoint(b, vz)
            tflite.QuantizationParametersAddQuantizedDimension(b, t["axis"])
            q = tflite.QuantizationParametersEnd(b)
        name = b.CreateString(t["name"])
        shape = _ints(b, tflite.TensorStartShapeVector, t["shape"])
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddType(b, TYPES[t["dtype"]])
        tflite.TensorAddBuffer(b, t["buffer"])
        tflite.TensorAddName(b, name)
        if q is not None:
            tflite.TensorAddQuantization(b, q)
        return tflite.TensorEnd(b)


def _ints(b: flatbuffers.Builder, start: Any, values: Any) -> int:
    start(b, len(values))
    for v in reversed(list(values)):
        b.PrependInt32(int(v))
    return b.EndVector()


def _offsets(b: flatbuffers.Builder, start: Any, values: list[int]) -> int:
    start(b, len(values))
    for v in reversed(values):
        b.PrependUOffsetTRelative(v)
    return b.EndVector()


# --- random models -------------------------------------------------------------------------------------

KINDS = ("conv", "depthwise", "pad_conv", "fc", "add", "mul", "maxpool", "avgpool", "mean", "softmax", "logistic", "tanh",
         "hard_swish", "relu", "reshape", "concat", "transpose", "sub", "div", "leaky_relu", "prelu", "strided_slice", "split",
         "resize_nearest", "resize_bilinear", "net", "decoder")


def _scale(rng: np.random.Generator) -> float:
    return float(np.float32(rng.uniform(0.004, 0.08)))


def _zp(rng: np.random.Generator) -> int:
    return int(rng.integers(-40, 41))


class _Draw:
    """Builds one random model op by op; each method returns the new int8 activation's index."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.w = rng, ModelWriter()
        self.shapes: dict[int, tuple[int, ...]] = {}
        self.q: dict[int, tuple[float, int]] = {}

    def act(self, name: str, shape: tuple[int, ...], scale: float | None = None, zp: int | None = None) -> int:
        s = _scale(self.rng) if scale is None else scale
        z = _zp(self.rng) if zp is None else zp
        i = self.w.act(name, shape, s, z)
        self.shapes[i], self.q[i] = shape, (s, z)
        return i

    def _out_scale(self, x: int, sw: np.ndarray, k: int) -> float:
        # 3 sigma of the accumulator (uniform int8 inputs and weights: sigma about 74 * 73 * sqrt(k)) spans
        # the int8 output range: few saturated outputs
        return float(np.float32(self.q[x][0] * float(np.mean(sw)) * np.sqrt(k) * 3 * 74 * 73 / 127))

    def _weights(self, name: str, shape: tuple[int, ...], channels: int, axis: int) -> tuple[int, np.ndarray, np.ndarray]:
        wq = self.rng.integers(-127, 128, size=shape).astype(np.int8)
        sw = self.rng.uniform(0.002, 0.02, size=channels).astype(np.float32)
        return self.w.tensor(name, shape, "int8", sw, 0, wq, axis=axis), wq, sw

    def _bias(self, name: str, n: int, x: int, sw: np.ndarray) -> int:
        b = self.rng.integers(-3000, 3000, size=n).astype(np.int32)
        return self.w.tensor(name, (n,), "int32", self.q[x][0] * sw, 0, b)

    def _window(self, size: int, k: int) -> tuple[int, int]:
        return int(self.rng.integers(1, min(size, k + 1, 3) + 1)), int(self.rng.choice([SAME, VALID]))

    @staticmethod
    def out_size(size: int, k: int, stride: int, pad: int, dil: int = 1) -> int:
        eff = (k - 1) * dil + 1
        return (size + stride - 1) // stride if pad == SAME else (size + stride - eff) // stride

    def conv(self, x: int, depthwise: bool = False, keep_shape: bool = False) -> int:
        """CONV_2D or DEPTHWISE_CONV_2D; ``keep_shape``: a depthwise stride-1 SAME one (a residual branch)."""
        r = self.rng
        _, h, wd, c = self.shapes[x]
        kh, kw = int(r.integers(1, min(h, 4) + 1)), int(r.integers(1, min(wd, 4) + 1))
        stride, pad = (1, SAME) if keep_shape else self._window(h, kh)
        dil = int(r.choice([1, 1, 2])) if (kh - 1) * 2 + 1 <= min(h, wd) and (kw - 1) * 2 + 1 <= min(h, wd) else 1
        oh, ow = self.out_size(h, kh, stride, pad, dil), self.out_size(wd, kw, stride, pad, dil)
        act = int(r.choice(list(ACTS.values())))
        if depthwise:
            mult = 1 if keep_shape else int(r.integers(1, 3))
            oc = c * mult
            wi, _, sw = self._weights("dw_w", (1, kh, kw, oc), oc, 3)
            k = kh * kw
        else:
            oc = int(r.integers(1, 9))
            wi, _, sw = self._weights("conv_w", (oc, kh, kw, c), oc, 0)
            k = kh * kw * c
        bi = self._bias("bias", oc, x, sw)
        y = self.act("conv_y" if not depthwise else "dw_y", (1, oh, ow, oc), self._out_scale(x, sw, k))
        if depthwise:
            self.w.op(OP.DEPTHWISE_CONV_2D, [x, wi, bi], [y], "DepthwiseConv2DOptions", Padding=pad, StrideW=stride,
                      StrideH=stride, DepthMultiplier=mult, DilationWFactor=dil, DilationHFactor=dil,
                      FusedActivationFunction=act)
        else:
            self.w.op(OP.CONV_2D, [x, wi, bi], [y], "Conv2DOptions", Padding=pad, StrideW=stride, StrideH=stride,
                      DilationWFactor=dil, DilationHFactor=dil, FusedActivationFunction=act)
        return y

    def fc(self, x: int) -> int:
        k = int(np.prod(self.shapes[x][1:]))
        oc = int(self.rng.integers(1, 48))
        per_channel = bool(self.rng.integers(0, 2))
        wi, _, sw = self._weights("fc_w", (oc, k), oc if per_channel else 1, 0)
        bi = self._bias("fc_b", oc, x, sw)
        y = self.act("fc_y", (1, oc), self._out_scale(x, sw, k))
        self.w.op(OP.FULLY_CONNECTED, [x, wi, bi], [y], "FullyConnectedOptions",
                  FusedActivationFunction=int(self.rng.choice([0, 1, 3])))
        return y

    def pool(self, x: int, avg: bool) -> int:
        _, h, wd, c = self.shapes[x]
        kh, kw = int(self.rng.integers(1, min(h, 3) + 1)), int(self.rng.integers(1, min(wd, 3) + 1))
        stride, pad = self._window(h, kh)
        y = self.act("pool_y", (1, self.out_size(h, kh, stride, pad), self.out_size(wd, kw, stride, pad), c),
                     *self.q[x])
        self.w.op(OP.AVERAGE_POOL_2D if avg else OP.MAX_POOL_2D, [x], [y], "Pool2DOptions", Padding=pad,
                  StrideW=stride, StrideH=stride, FilterWidth=kw, FilterHeight=kh,
                  FusedActivationFunction=int(self.rng.choice([0, 1, 3])))
        return y

    def binary(self, a: int, b: int, mul: bool, sub: bool = False) -> int:
        y = self.act("mul_y" if mul else "add_y", self.shapes[a],
                     self.q[a][0] * self.q[b][0] * 60 if mul else None)
        if mul:
            self.w.op(OP.MUL, [a, b], [y], "MulOptions", FusedActivationFunction=int(self.rng.choice([0, 1])))
        else:
            self.w.op(OP.SUB if sub else OP.ADD, [a, b], [y], "SubOptions" if sub else "AddOptions",
                      FusedActivationFunction=int(self.rng.choice([0, 1, 3])))
        return y

    def div(self, x: int) -> int:
        """x / c, c a constant int8 scalar (any of the shapes a converter writes for it), c != its zero point."""
        r = self.rng
        s2, z2 = _scale(r), _zp(r)
        c = int(r.choice([v for v in range(-128, 128) if v != z2]))
        sy = float(np.float32(self.q[x][0] / (s2 * abs(c - z2)) * r.uniform(0.5, 2.0)))
        shape = [(), (1,), (1, 1, 1, 1)][int(r.integers(0, 3))]
        ci = self.w.tensor("divisor", shape, "int8", s2, z2, np.full(shape, c, np.int8))
        y = self.act("div_y", self.shapes[x], sy)
        self.w.op(OP.DIV, [x, ci], [y], "DivOptions", FusedActivationFunction=int(r.choice([0, 1, 3])))
        return y

    def prelu(self, x: int) -> int:
        """PRELU with one alpha value, stored as a converter writes it: one per channel (all equal) or one."""
        r = self.rng
        sa, za = float(np.float32(r.uniform(0.002, 0.02))), int(r.integers(-20, 21))
        shape = (1, 1, self.shapes[x][-1]) if r.integers(0, 2) else (1,)
        ai = self.w.tensor("alpha", shape, "int8", sa, za, np.full(shape, int(r.integers(-128, 128)), np.int8))
        y = self.act("prelu_y", self.shapes[x])
        self.w.op(OP.PRELU, [x, ai], [y])
        return y

    def leaky_relu(self, x: int) -> int:
        y = self.act("leaky_y", self.shapes[x])
        self.w.op(OP.LEAKY_RELU, [x], [y], "LeakyReluOptions",
                  Alpha=float(np.float32(self.rng.choice([0.2, 0.01, 0.1, self.rng.uniform(-1.0, 2.0)]))))
        return y

    def strided_slice(self, x: int) -> int:
        """Random begin/end/strides (negative ones and out-of-range ends included), masks, shrunk axes."""
        r, shape = self.rng, self.shapes[x]
        begin, end, step = [0], [1], [1]
        begin_mask = end_mask = shrink = 0
        for k, n in enumerate(shape[1:], 1):
            s = int(r.choice([1, 1, 2, 3, -1, -2]))
            b, e = sorted(int(v) for v in r.integers(-n - 1, n + 2, size=2))
            b, e = (b, e) if s > 0 else (e, b)
            if r.random() < 0.15 and not shrink:
                shrink |= 1 << k
                b, e, s = int(r.integers(-n, n)), 0, 1
            begin_mask |= int(r.random() < 0.2) << k
            end_mask |= int(r.random() < 0.2) << k
            begin, end, step = begin + [b], end + [e], step + [s]
        index = tuple(slice(b if not begin_mask >> k & 1 else None, e if not end_mask >> k & 1 else None, s)
                      if not shrink >> k & 1 else b for k, (b, e, s) in enumerate(zip(begin, end, step)))
        out = np.empty(shape)[index].shape
        if 0 in out:  # an empty slice: take the whole tensor instead
            return self.strided_slice_full(x)
        y = self.act("slice_y", out, *self.q[x])
        consts = [self.w.tensor(n, (len(v),), "int32", data=np.array(v, np.int32))
                  for n, v in (("begin", begin), ("end", end), ("strides", step))]
        self.w.op(OP.STRIDED_SLICE, [x, *consts], [y], "StridedSliceOptions", BeginMask=begin_mask,
                  EndMask=end_mask, ShrinkAxisMask=shrink)
        return y

    def strided_slice_full(self, x: int) -> int:
        rank = len(self.shapes[x])
        y = self.act("slice_y", self.shapes[x], *self.q[x])
        consts = [self.w.tensor(n, (rank,), "int32", data=np.full(rank, v, np.int32))
                  for n, v in (("begin", 0), ("end", 0), ("strides", 1))]
        self.w.op(OP.STRIDED_SLICE, [x, *consts], [y], "StridedSliceOptions", BeginMask=(1 << rank) - 1,
                  EndMask=(1 << rank) - 1)
        return y

    def split(self, x: int) -> tuple[list[int], int]:
        """SPLIT into equal parts or SPLIT_V into random sizes (one maybe -1) along a non-batch axis."""
        shape = self.shapes[x]
        axis = int(self.rng.integers(1, len(shape)))
        n = shape[axis]
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        if self.rng.integers(0, 2) or n == 1:
            parts = int(self.rng.choice(divisors))
            sizes = [n // parts] * parts
        else:
            cuts = sorted(int(v) for v in self.rng.choice(np.arange(1, n), size=min(n - 1, int(self.rng.integers(1, 3))),
                                                          replace=False))
            sizes = list(np.diff([0, *cuts, n]))
        ys = [self.act("split_y", tuple(s if k == axis else d for k, d in enumerate(shape)), *self.q[x]) for s in sizes]
        ax = self.w.tensor("axis", (), "int32", data=np.array(axis - len(shape) * int(self.rng.integers(0, 2)), np.int32))
        if len(set(sizes)) == 1 and self.rng.integers(0, 2):
            self.w.op(OP.SPLIT, [ax, x], ys, "SplitOptions", NumSplits=len(sizes))
        else:
            given = list(sizes)
            if self.rng.integers(0, 2):
                given[int(self.rng.integers(0, len(given)))] = -1
            sz = self.w.tensor("size_splits", (len(given),), "int32", data=np.array(given, np.int32))
            self.w.op(OP.SPLIT_V, [x, sz, ax], ys, "SplitVOptions", NumSplits=len(sizes))
        return ys, axis

    def resize(self, x: int, bilinear: bool) -> int:
        _, h, wd, c = self.shapes[x]
        oh, ow = (int(self.rng.integers(1, 3 * n + 1)) for n in (h, wd))
        corners, half = [(False, False), (True, False), (False, True)][int(self.rng.integers(0, 3))]
        y = self.act("resize_y", (1, oh, ow, c), *self.q[x])
        size = self.w.tensor("size", (2,), "int32", data=np.array([oh, ow], np.int32))
        if bilinear:
            self.w.op(OP.RESIZE_BILINEAR, [x, size], [y], "ResizeBilinearOptions", AlignCorners=corners,
                      HalfPixelCenters=half)
        else:
            self.w.op(OP.RESIZE_NEAREST_NEIGHBOR, [x, size], [y], "ResizeNearestNeighborOptions",
                      AlignCorners=corners, HalfPixelCenters=half)
        return y

    def unary(self, x: int, code: int) -> int:
        fixed = {OP.LOGISTIC: (1 / 256, -128), OP.SOFTMAX: (1 / 256, -128)}.get(code, (None, None))
        y = self.act("unary_y", self.shapes[x], *fixed)
        if code == OP.SOFTMAX:
            self.w.op(code, [x], [y], "SoftmaxOptions", Beta=float(self.rng.choice([1.0, 0.5])))
        else:
            self.w.op(code, [x], [y])
        return y

    def mean(self, x: int) -> int:
        _, h, wd, c = self.shapes[x]
        keep = bool(self.rng.integers(0, 2))
        same = bool(self.rng.integers(0, 2))  # TFLite takes another path when the quantization is kept
        y = self.act("mean_y", (1, 1, 1, c) if keep else (1, c), *(self.q[x] if same else (None, None)))
        axes = self.w.tensor("axes", (2,), "int32", data=np.array([1, 2], np.int32))
        self.w.op(OP.MEAN, [x, axes], [y], "ReducerOptions", KeepDims=keep)
        return y

    def pad(self, x: int) -> int:
        p = np.zeros((4, 2), np.int32)
        p[1:3] = self.rng.integers(0, 3, size=(2, 2))
        shape = tuple(int(n + a + b) for n, (a, b) in zip(self.shapes[x], p))
        y = self.act("pad_y", shape, *self.q[x])
        self.w.op(OP.PAD, [x, self.w.tensor("paddings", (4, 2), "int32", data=p)], [y])
        return y

    def reshape(self, x: int, shape: tuple[int, ...]) -> int:
        y = self.act("reshape_y", shape, *self.q[x])
        self.w.op(OP.RESHAPE, [x, self.w.tensor("shape", (len(shape),), "int32", data=np.array(shape, np.int32))], [y])
        return y

    def transpose(self, x: int) -> int:
        rank = len(self.shapes[x])
        perm = (0, *(self.rng.permutation(rank - 1) + 1))
        p = self.w.tensor("perm", (rank,), "int32", data=np.array(perm, np.int32))
        y = self.act("transpose_y", tuple(self.shapes[x][k] for k in perm), *self.q[x])
        self.w.op(OP.TRANSPOSE, [x, p], [y])
        return y

    def concat(self, xs: list[int], axis: int) -> int:
        shape = list(self.shapes[xs[0]])
        shape[axis] = sum(self.shapes[x][axis] for x in xs)
        y = self.act("concat_y", tuple(shape), *self.q[xs[0]])
        self.w.op(OP.CONCATENATION, xs, [y], "ConcatenationOptions", Axis=axis, FusedActivationFunction=0)
        return y


def random_model(seed: int, kind: str) -> tuple[bytes, list[tuple[int, ...]]]:
    """A random int8 TFLite model of ``kind`` (see KINDS) and its input shapes."""
    rng = np.random.default_rng(seed)
    d = _Draw(rng)
    image = (1, int(rng.integers(3, 12)), int(rng.integers(3, 12)), int(rng.integers(1, 6)))
    x = d.act("input", (1, int(rng.integers(1, 40))) if kind == "fc" and rng.integers(0, 2) else image)
    inputs = [x]
    if kind in ("conv", "depthwise"):
        y = d.conv(x, kind == "depthwise")
    elif kind == "fc":
        y = d.fc(x)  # a 4-D input is flattened in NHWC order
    elif kind in ("add", "mul", "sub"):
        b = d.act("input_b", image)
        inputs.append(b)
        y = d.binary(x, b, kind == "mul", kind == "sub")
    elif kind == "leaky_relu":
        y = d.leaky_relu(x)
    elif kind == "prelu":
        y = d.prelu(x)
    elif kind == "div":
        y = d.div(x)
    elif kind == "strided_slice":
        y = d.strided_slice(d.conv(x) if rng.integers(0, 2) else x)  # a conv output is stored NCHW
    elif kind == "split":
        parts, axis = d.split(d.conv(x) if rng.integers(0, 2) else x)
        y = d.concat(parts[::-1], axis)  # every part reaches the output, in another order
    elif kind in ("resize_nearest", "resize_bilinear"):
        y = d.resize(d.conv(x) if rng.integers(0, 2) else x, kind == "resize_bilinear")
    elif kind in ("maxpool", "avgpool"):
        y = d.pool(x, kind == "avgpool")
    elif kind == "mean":
        y = d.mean(d.conv(x) if rng.integers(0, 2) else x)
    elif kind == "softmax":
        y = d.unary(d.reshape(x, (1, int(np.prod(image[1:])))) if rng.integers(0, 2) else x, OP.SOFTMAX)
    elif kind in ("logistic", "tanh", "relu", "hard_swish"):
        y = d.unary(x, {"logistic": OP.LOGISTIC, "tanh": OP.TANH, "relu": OP.RELU, "hard_swish": OP.HARD_SWISH}[kind])
    elif kind == "pad_conv":
        y = d.conv(d.pad(x), depthwise=bool(rng.integers(0, 2)))
    elif kind == "reshape":
        flat = d.reshape(x, (1, int(np.prod(image[1:]))))
        y = d.reshape(flat, (1, image[3], image[1], image[2])) if rng.integers(0, 2) else flat
    elif kind == "concat":
        shape = list(image)
        axis = int(rng.integers(1, 4))
        shape[axis] = int(rng.integers(1, 5))
        b = d.act("input_b", tuple(shape), *d.q[x])
        inputs.append(b)
        y = d.concat([x, b] if rng.integers(0, 2) else [b, x], axis)
    elif kind == "transpose":
        y = d.transpose(d.conv(x))
    elif kind == "net":
        h = d.conv(x)
        h = d.conv(h, depthwise=True)
        h = d.pool(h, bool(rng.integers(0, 2)))
        h = d.binary(h, d.conv(h, depthwise=True, keep_shape=True), mul=False) if rng.integers(0, 2) else h
        h = d.reshape(h, (1, int(np.prod(d.shapes[h][1:]))))
        y = d.unary(d.fc(h), OP.SOFTMAX if rng.integers(0, 2) else OP.LOGISTIC)
    elif kind == "decoder":
        h = d.conv(x)
        h = d.binary(h, d.conv(h, depthwise=True, keep_shape=True), mul=False, sub=bool(rng.integers(0, 2)))
        h = d.resize(h, bilinear=bool(rng.integers(0, 2)))
        parts, axis = d.split(h)
        h = d.concat(parts[::-1], axis)
        h = d.leaky_relu(d.conv(h)) if rng.integers(0, 2) else d.conv(h)
        y = d.strided_slice(h)
    else:
        raise ValueError(kind)
    return d.w.to_bytes(inputs, [y]), [d.shapes[i] for i in inputs]


# --- a trained model ---------------------------------------------------------------------------------

def _same_or_valid(size: tuple[int, int], k: tuple[int, int], strides: list[int], pads: list[int]) -> int | None:
    """The TFLite padding equal to the ONNX ``pads`` (t, l, b, r), or None when a PAD op is needed."""
    if not any(pads):
        return VALID
    same = []
    for n, kk, s in zip(size, k, strides):
        out = (n + s - 1) // s
        total = max((out - 1) * s + kk - n, 0)
        same.append((total // 2, total - total // 2))
    return SAME if [same[0][0], same[1][0], same[0][1], same[1][1]] == list(pads) else None


def from_float_graph(fg: Any, ranges: dict[str, tuple[float, float]] | None) -> bytes:
    """An int8 TFLite model of an edgeq float graph (after ``run_passes``) quantized with edgeq's calibrated
    ``ranges``: what the TFLite converter emits for the same network (per-channel symmetric weights, int32
    biases, pools and reshapes keeping their input's quantization, float32 input and output through
    QUANTIZE/DEQUANTIZE, PAD before a convolution whose padding SAME cannot express).
    Ops: Conv (plain or depthwise, fused Relu/Clip 0-6), HardSwish, MaxPool, AveragePool, Reshape,
    FullyConnected. ``ranges=None``: the float32 model instead (float weights, no QUANTIZE/DEQUANTIZE)."""
    from edgeq.converters.quantize import qparams

    w = ModelWriter()
    idx: dict[str, int] = {}
    q: dict[str, tuple[float, int]] = {}

    def nhwc(name: str) -> tuple[int, ...]:
        s = fg.tensors[name].shape
        return (s[0], s[2], s[3], s[1]) if len(s) == 4 else tuple(s)

    def act(name: str, quant: tuple[float, int] | None = None) -> int:
        if ranges is None:
            q[name] = (1.0, 0)
            idx[name] = w.tensor(name, nhwc(name), "float32")
            return idx[name]
        q[name] = quant or tuple(float(v) if i == 0 else v for i, v in enumerate(qparams(*ranges[name])))
        q[name] = (float(np.float32(q[name][0])), q[name][1])
        idx[name] = w.act(name, nhwc(name), *q[name])
        return idx[name]

    def weights(n: Any, tfl_w: np.ndarray, wf: np.ndarray, axis: int, per_channel: bool = True) -> tuple[int, int]:
        if ranges is None:
            b = fg.consts[n.inputs[2]] if len(n.inputs) > 2 else np.zeros(wf.shape[0], np.float32)
            return (w.tensor(n.name + "_w", tfl_w.shape, "float32", data=tfl_w.astype(np.float32)),
                    w.tensor(n.name + "_b", b.shape, "float32", data=b.astype(np.float32)))
        red = tuple(a for a in range(wf.ndim) if a != 0)
        amax = np.abs(wf).max(axis=red) if per_channel else np.full(wf.shape[0], np.abs(wf).max())
        sw = np.where(amax > 0, amax / 127, 1e-8).astype(np.float32)
        shape = [1] * tfl_w.ndim
        shape[axis] = -1
        wq = np.clip(np.round(tfl_w / sw.reshape(shape)), -127, 127).astype(np.int8)
        b = fg.consts[n.inputs[2]] if len(n.inputs) > 2 else np.zeros(wf.shape[0], np.float32)
        bs = (q[n.inputs[0]][0] * sw.astype(np.float64)).astype(np.float32)
        bq = np.round(b / bs).astype(np.int32)
        scales = sw if per_channel else sw[:1]
        return (w.tensor(n.name + "_w", tfl_w.shape, "int8", scales, 0, wq, axis=axis),
                w.tensor(n.name + "_b", (wf.shape[0],), "int32", bs if per_channel else bs[:1], 0, bq))

    x0 = fg.inputs[0]
    fin = act(x0) if ranges is None else w.tensor(x0 + "_float", nhwc(x0), "float32")
    if ranges is not None:
        w.op(OP.QUANTIZE, [fin], [act(x0)])
    for n in fg.nodes:
        x, y = n.inputs[0], n.outputs[0]
        a = n.attrs
        if n.op == "Conv":
            wf = fg.consts[n.inputs[1]]
            oc, cg, kh, kw = wf.shape
            _, h, wd, c = nhwc(x)
            pad = _same_or_valid((h, wd), (kh, kw), a["strides"], a["pads"])
            xin = idx[x]
            if pad is None:
                p = np.array([[0, 0], [a["pads"][0], a["pads"][2]], [a["pads"][1], a["pads"][3]], [0, 0]], np.int32)
                xin = w.tensor(n.name + "_padded", (1, h + p[1].sum(), wd + p[2].sum(), c),
                               "float32" if ranges is None else "int8", *(() if ranges is None else q[x]))
                w.op(OP.PAD, [idx[x], w.tensor(n.name + "_paddings", (4, 2), "int32", data=p)], [xin])
                pad = VALID
            act_code = {None: 0, "Relu": 1, "Clip": 3}[(a.get("act") or {}).get("op")]
            common = dict(Padding=pad, StrideW=a["strides"][1], StrideH=a["strides"][0], DilationWFactor=1,
                          DilationHFactor=1, FusedActivationFunction=act_code)
            if a["group"] == 1:
                wi, bi = weights(n, wf.transpose(0, 2, 3, 1), wf, 0)
                w.op(OP.CONV_2D, [xin, wi, bi], [act(y)], "Conv2DOptions", **common)
            else:  # depthwise: [OC, 1, KH, KW] -> [1, KH, KW, OC]
                wi, bi = weights(n, wf.transpose(1, 2, 3, 0), wf, 3)
                w.op(OP.DEPTHWISE_CONV_2D, [xin, wi, bi], [act(y)], "DepthwiseConv2DOptions",
                     DepthMultiplier=oc // c, **common)
        elif n.op == "HardSwish":
            w.op(OP.HARD_SWISH, [idx[x]], [act(y)])
        elif n.op in ("MaxPool", "AveragePool"):
            assert not any(a["pads"])
            w.op(OP.MAX_POOL_2D if n.op == "MaxPool" else OP.AVERAGE_POOL_2D, [idx[x]], [act(y, q[x])],
                 "Pool2DOptions", Padding=VALID, StrideW=a["strides"][1], StrideH=a["strides"][0],
                 FilterWidth=a["kernel"][1], FilterHeight=a["kernel"][0], FusedActivationFunction=0)
        elif n.op == "Reshape":
            shape = nhwc(y)
            w.op(OP.RESHAPE, [idx[x], w.tensor(n.name + "_shape", (len(shape),), "int32",
                                                 data=np.array(shape, np.int32))], [act(y, q[x])])
        elif n.op == "FullyConnected":
            wf = fg.consts[n.inputs[1]]
            wi, bi = weights(n, wf, wf, 0, per_channel=False)
            w.op(OP.FULLY_CONNECTED, [idx[x], wi, bi], [act(y)], "FullyConnectedOptions", FusedActivationFunction=0)
        else:
            raise ValueError(f"from_float_graph: no TFLite form for {n.op}")
    out = fg.outputs[0]
    if ranges is None:
        return w.to_bytes([fin], [idx[out]])
    fout = w.tensor(out + "_float", nhwc(out), "float32")
    w.op(OP.DEQUANTIZE, [idx[out]], [fout])
    return w.to_bytes([fin], [fout])


def float_model(seed: int) -> tuple[bytes, tuple[int, ...]]:
    """A random float32 TFLite network touching every op the float import maps: CONV_2D (RELU6), PAD +
    DEPTHWISE_CONV_2D, ADD (residual, fused RELU), MUL by a per-channel constant, LOGISTIC, TANH,
    HARD_SWISH, CONCATENATION along channels, TRANSPOSE, MAX_POOL_2D, AVERAGE_POOL_2D, MEAN, RESHAPE,
    FULLY_CONNECTED and SOFTMAX. Returns the model and its input shape."""
    rng = np.random.default_rng(seed)
    w = ModelWriter()
    h, wd, c = int(rng.integers(4, 10)), int(rng.integers(4, 10)), int(rng.integers(1, 5))
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32) * 0.5  # noqa: E731

    def t(name: str, shape: tuple[int, ...], data: np.ndarray | None = None) -> int:
        return w.tensor(name, shape, "float32", data=data)

    x = t("input", (1, h, wd, c))
    oc = int(rng.integers(2, 6))
    a = t("conv", (1, h, wd, oc))
    w.op(OP.CONV_2D, [x, t("cw", (oc, 3, 3, c), f32(oc, 3, 3, c)), t("cb", (oc,), f32(oc))], [a], "Conv2DOptions",
         Padding=SAME, StrideW=1, StrideH=1, DilationWFactor=1, DilationHFactor=1, FusedActivationFunction=3)
    p = t("padded", (1, h + 2, wd + 2, oc))
    w.op(OP.PAD, [a, w.tensor("pads", (4, 2), "int32", data=np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32))], [p])
    d = t("dw", (1, h, wd, oc))
    w.op(OP.DEPTHWISE_CONV_2D, [p, t("dww", (1, 3, 3, oc), f32(1, 3, 3, oc)), t("dwb", (oc,), f32(oc))], [d],
         "DepthwiseConv2DOptions", Padding=VALID, StrideW=1, StrideH=1, DepthMultiplier=1, DilationWFactor=1,
         DilationHFactor=1, FusedActivationFunction=0)
    r = t("res", (1, h, wd, oc))
    w.op(OP.ADD, [a, d], [r], "AddOptions", FusedActivationFunction=1)
    m = t("scaled", (1, h, wd, oc))
    w.op(OP.MUL, [r, t("gain", (oc,), f32(oc) + 1)], [m], "MulOptions", FusedActivationFunction=0)
    branches = []
    for code in (OP.LOGISTIC, OP.TANH, OP.HARD_SWISH):
        branches.append(t(f"unary{code}", (1, h, wd, oc)))
        w.op(code, [m], [branches[-1]])
    cat = t("cat", (1, h, wd, 3 * oc))
    w.op(OP.CONCATENATION, branches, [cat], "ConcatenationOptions", Axis=3, FusedActivationFunction=0)
    tr = t("transposed", (1, wd, h, 3 * oc))
    w.op(OP.TRANSPOSE, [cat, w.tensor("perm", (4,), "int32", data=np.array([0, 2, 1, 3], np.int32))], [tr])
    pooled = t("maxpool", (1, wd // 2, h // 2, 3 * oc))
    w.op(OP.MAX_POOL_2D, [tr], [pooled], "Pool2DOptions", Padding=VALID, StrideW=2, StrideH=2, FilterWidth=2,
         FilterHeight=2, FusedActivationFunction=0)
    avg = t("avgpool", (1, (wd // 2 + 1) // 2, (h // 2 + 1) // 2, 3 * oc))
    w.op(OP.AVERAGE_POOL_2D, [pooled], [avg], "Pool2DOptions", Padding=SAME, StrideW=2, StrideH=2, FilterWidth=2,
         FilterHeight=2, FusedActivationFunction=0)
    mean = t("mean", (1, 1, 1, 3 * oc))
    w.op(OP.MEAN, [avg, w.tensor("axes", (2,), "int32", data=np.array([1, 2], np.int32))], [mean], "ReducerOptions",
         KeepDims=True)
    flat = t("flat", (1, 3 * oc))
    w.op(OP.RESHAPE, [mean, w.tensor("shape", (2,), "int32", data=np.array([1, 3 * oc], np.int32))], [flat])
    k = int(rng.integers(2, 8))
    logits = t("logits", (1, k))
    w.op(OP.FULLY_CONNECTED, [flat, t("fw", (k, 3 * oc), f32(k, 3 * oc)), t("fb", (k,), f32(k))], [logits],
         "FullyConnectedOptions", FusedActivationFunction=0)
    y = t("probs", (1, k))
    w.op(OP.SOFTMAX, [logits], [y], "SoftmaxOptions", Beta=1.0)
    return w.to_bytes([x], [y, cat]), (1, h, wd, c)
