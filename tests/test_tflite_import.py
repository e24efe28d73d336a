"""TFLite import: int8 .tflite models (written by tests/tflite_models.py) converted by edgeq must give
TFLite's own int8 outputs, byte for byte, on every backend. The oracle is LiteRT's reference kernels
(OpResolverType.BUILTIN_REF). LiteRT's FULLY_CONNECTED rounds once where its convolutions round twice; the
importer gives QFullyConnected that single rounding (test_fully_connected_rounding, docs/tflite-import.md)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from hypothesis import HealthCheck, given, settings, strategies as st

import edgeq
from edgeq.converters.tflite_import import import_tflite
from edgeq.converters.tflite_read import parse_tflite
from edgeq.errors import ModelError, UnsupportedOpError
from edgeq.runtimes.executor import Executor
from edgeq.converters.quantize import quantize_multiplier
from edgeq.runtimes.fixedpoint import multiply_by_quantized_multiplier
from tflite_models import KINDS, OP, VALID, ModelWriter, float_model, from_float_graph, random_model

BACKENDS = ("reference", "numba", "c")


def tflite_run(data: bytes, xs: list[np.ndarray], names: tuple[str, ...] = ()) -> tuple[np.ndarray, dict]:
    """TFLite's reference-kernel output for one batch-1 input set, and the named intermediate tensors."""
    it = Interpreter(model_content=data, experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                     experimental_preserve_all_tensors=bool(names))
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), xs):
        it.set_tensor(d["index"], x)
    it.invoke()
    index = {d["name"]: d["index"] for d in it.get_tensor_details()}
    return it.get_tensor(it.get_output_details()[0]["index"]), {n: it.get_tensor(index[n]) for n in names}


def convert(tmp_path, data: bytes, name: str = "m", device: str = "host") -> edgeq.api.Bundle:
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(data)
    return edgeq.load(edgeq.convert(path, device=device, output=tmp_path / f"{name}.edgeq", progress=False).path)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 2**31 - 1))
def test_random_models_match_tflite(tmp_path, kind, seed):
    data, shapes = random_model(seed, kind)
    rng = np.random.default_rng(seed)
    xs = [rng.integers(-128, 128, size=s).astype(np.int8) for s in shapes]
    want, _ = tflite_run(data, xs)
    b = convert(tmp_path, data)
    assert b.graph.inputs and [b.graph.tensors[i].shape for i in b.inputs] == shapes  # TFLite's layout
    for backend in BACKENDS:
        got = b.run_quantized(dict(zip(b.inputs, xs)), backend=backend)[b.outputs[0]]
        assert got.dtype == np.int8 and got.shape == want.shape
        assert np.array_equal(got, want), (kind, seed, backend, int((got != want).sum()))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1),
       kind=st.sampled_from(["logistic", "tanh", "hard_swish", "relu", "leaky_relu", "div", "prelu"]))
def test_unary_tables_cover_every_input(seed, kind):
    """Every one of the 256 int8 inputs, at random scales (and divisors): the table is TFLite's function exactly."""
    data, _ = random_model(seed, kind)
    x = np.arange(-128, 128, dtype=np.int8).reshape(1, 16, 16, 1)
    w = ModelWriter()  # the same op and quantization on a 16x16x1 input holding every value
    m = parse_tflite(data)
    t_in, t_out = m.tensors[m.ops[0].inputs[0]], m.tensors[m.ops[0].outputs[0]]
    i = w.act("x", x.shape, float(t_in.scale[0]), int(t_in.zero_point[0]))
    o = w.act("y", x.shape, float(t_out.scale[0]), int(t_out.zero_point[0]))
    if kind == "leaky_relu":
        w.op(OP.LEAKY_RELU, [i], [o], "LeakyReluOptions", Alpha=m.ops[0].options["Alpha"])
    elif kind in ("div", "prelu"):  # by the same constant divisor or alpha (one value)
        t = m.tensors[m.ops[0].inputs[1]]
        c = w.tensor("c", (1,), "int8", float(t.scale[0]), int(t.zero_point[0]), t.data.reshape(-1)[:1])
        if kind == "div":
            w.op(OP.DIV, [i, c], [o], "DivOptions", FusedActivationFunction=m.ops[0].options["FusedActivationFunction"])
        else:
            w.op(OP.PRELU, [i, c], [o])
    else:
        w.op({"logistic": OP.LOGISTIC, "tanh": OP.TANH, "hard_swish": OP.HARD_SWISH, "relu": OP.RELU}[kind], [i], [o])
    data = w.to_bytes([i], [o])
    want, _ = tflite_run(data, [x])
    g, _ = import_tflite(data)
    assert [n.op for n in g.nodes] == ["QLut"]
    assert np.array_equal(Executor(g, "reference").run_quantized({g.inputs[0]: x})[g.outputs[0]], want)


def test_fully_connected_rounding(tmp_path):
    """FULLY_CONNECTED: LiteRT's reference rounds acc * M once, (acc * mult + 2^(30 - shift)) >> (31 - shift),
    not twice as TFLite's MultiplyByQuantizedMultiplier (its CONV_2D) does; the imported QFullyConnected
    does the same on every backend. Seeds 12, 70 and 238 (found by search) have outputs where the two
    roundings part."""
    parted = 0
    for seed in (*range(9), 12, 70, 238):
        data, shapes = random_model(seed, "fc")
        rng = np.random.default_rng(seed)
        x = rng.integers(-128, 128, size=shapes[0]).astype(np.int8)
        want, _ = tflite_run(data, [x])
        b = convert(tmp_path, data, f"fc{seed}")
        fc = next(n for n in b.graph.nodes if n.op == "QFullyConnected")
        c = b.graph.consts
        w, bias, mult, shift = (c[n].astype(np.int64) for n in fc.inputs[1:5])
        acc = (x.reshape(1, -1).astype(np.int64) - fc.attrs["x_zp"]) @ w.T + bias  # the input is stored NHWC
        lo, hi = fc.attrs["act_min"], fc.attrs["act_max"]
        single = np.clip(((acc * mult + (1 << (30 - shift))) >> (31 - shift)) + fc.attrs["y_zp"], lo, hi)
        double = np.clip(multiply_by_quantized_multiplier(acc, mult, shift) + fc.attrs["y_zp"], lo, hi)
        assert np.array_equal(single, want) and fc.attrs["single_rounding"]
        for backend in BACKENDS:
            assert np.array_equal(b.run_quantized({b.inputs[0]: x}, backend=backend)[b.outputs[0]], want), backend
        parted += int((single != double).sum())
    assert parted > 0


def test_quantize_multiplier_ties(tmp_path):
    """TFLite's QuantizeMultiplier rounds the frexp mantissa * 2^31 half away from zero (Python's round():
    to even). Scales s_x = (1 + 2^-23) 2^-6, s_w = (1 + 2^-8) 2^-10, s_y = 2^8 make the per-channel
    multiplier double(s_x) * s_w / s_y = (1 + 2^-8 + 2^-23 + 2^-31) 2^-24 a tie; the bias puts accumulators
    where mult and mult - 1 give different outputs."""
    sx, sw, sy = np.float32((1 + 2**-23) * 2**-6), np.float32((1 + 2**-8) * 2**-10), 256.0
    m = float(sx) * float(sw) / sy
    mult, shift = quantize_multiplier(m)
    assert (mult, shift) == (2**30 + 2**22 + 2**7 + 1, -23) and round(math.frexp(m)[0] * 2**31) == mult - 1
    x = np.arange(-128, 128, dtype=np.int8).reshape(1, 16, 16, 1)
    acc = np.arange(-128, 128, dtype=np.int64)
    for k in range(20, 100):  # acc * mult / 2^31 just above R - 1/2, R = (k + 1/2) 2^23: a tie of the final shift
        bias = -(-((2 * (k * 2**23 + 2**22) - 1) << 30) // mult)
        part = multiply_by_quantized_multiplier(acc + bias, mult, shift) != \
            multiply_by_quantized_multiplier(acc + bias, mult - 1, shift)
        if part.any():
            break
    assert part.any()
    w = ModelWriter()
    i = w.act("x", x.shape, float(sx), 0)
    wi = w.tensor("w", (1, 1, 1, 1), "int8", [float(sw)], 0, np.ones((1, 1, 1, 1), np.int8))
    bi = w.tensor("b", (1,), "int32", [float(sx) * float(sw)], 0, np.array([bias], np.int32))
    o = w.act("y", x.shape, sy, 0)
    w.op(OP.CONV_2D, [i, wi, bi], [o], "Conv2DOptions", Padding=VALID, StrideW=1, StrideH=1, DilationWFactor=1,
         DilationHFactor=1, FusedActivationFunction=0)
    data = w.to_bytes([i], [o])
    want, _ = tflite_run(data, [x])
    assert np.array_equal(multiply_by_quantized_multiplier(acc + bias, mult, shift).reshape(want.shape), want)
    b = convert(tmp_path, data)
    for backend in BACKENDS:
        assert np.array_equal(b.run_quantized({b.inputs[0]: x}, backend=backend)[b.outputs[0]], want), backend


@pytest.mark.parametrize("sa, sb, sy", [(0.043353430926799774, 0.013772385194897652, 0.03701871633529663),
                                        (0.03673287853598595, 0.02518748864531517, 0.06675467640161514)])
def test_mul_multiplier_in_float(tmp_path, sa, sb, sy):
    """TFLite's MUL computes s_a * s_b / s_y in float (float scales), not double: these scales (found by
    search) give multipliers that part on 8 of the 65,536 input pairs; edgeq follows TFLite on all."""
    a = np.repeat(np.arange(-128, 128), 256).reshape(1, 256, 256, 1).astype(np.int8)
    bx = np.tile(np.arange(-128, 128), 256).reshape(1, 256, 256, 1).astype(np.int8)
    w = ModelWriter()
    ia, ib, iy = w.act("a", a.shape, sa, 3), w.act("b", a.shape, sb, -5), w.act("y", a.shape, sy, 7)
    w.op(OP.MUL, [ia, ib], [iy], "MulOptions", FusedActivationFunction=0)
    data = w.to_bytes([ia, ib], [iy])
    want, _ = tflite_run(data, [a, bx])
    double = np.clip(multiply_by_quantized_multiplier((a.astype(np.int64) - 3) * (bx.astype(np.int64) + 5),
                                                      *quantize_multiplier(sa * sb / sy)) + 7, -128, 127)
    assert (double != want).sum() == 8  # the double-precision multiplier would miss these
    b = convert(tmp_path, data)
    for backend in BACKENDS:
        assert np.array_equal(b.run_quantized(dict(zip(b.inputs, [a, bx])), backend=backend)[b.outputs[0]], want)


@pytest.fixture(scope="module")
def digits_tflite():
    """edgeq's embedded digits CNN (trained on scikit-learn digits) as an int8 TFLite model, quantized with
    edgeq's own min/max calibration ranges, with float32 input and output (QUANTIZE/DEQUANTIZE)."""
    from edgeq.converters.calibrate import collect_ranges
    from edgeq.converters.onnx_import import import_onnx
    from edgeq.converters.passes import run_passes
    from edgeq.sample import load_sample
    s = load_sample()
    fg, _ = import_onnx(s.model_path)
    run_passes(fg)
    ranges = collect_ranges(fg, {fg.inputs[0]: s.calib}, "minmax", progress=False)
    data = from_float_graph(fg, ranges)
    xs = s.x_test.transpose(0, 2, 3, 1)  # NHWC, as a TFLite user holds them
    q_in, q_logits, f_out = [], [], []
    for x in xs:
        f, t = tflite_run(data, [x[None]], ("input", "logits"))
        q_in.append(t["input"]), q_logits.append(t["logits"]), f_out.append(f)
    return data, s, xs, np.concatenate(q_in), np.concatenate(q_logits), np.concatenate(f_out)


def test_digits_cnn_from_tflite(tmp_path, digits_tflite):
    data, s, xs, q_in, q_logits, f_out = digits_tflite
    b = convert(tmp_path, data, "digits", device="rpi5")
    assert b.graph.tensors[b.inputs[0]].shape == (1, 16, 16, 1) and b.graph.dynamic_batch
    tfl_acc = float((f_out.argmax(1) == s.y_test).mean())
    assert tfl_acc >= 0.97  # the trained model survives int8 (float: 98.61% on these 360 held-out digits)
    for backend in BACKENDS:
        got = b.run_quantized({b.inputs[0]: q_in}, backend=backend)[b.outputs[0]]
        assert float((got.argmax(1) == s.y_test).mean()) == tfl_acc
        assert np.array_equal(got, q_logits), backend  # every logit byte of the 360 digits
    logits = b.run(xs, backend="c")[b.outputs[0]]  # float in, float out, as the TFLite model
    assert float((logits.argmax(1) == s.y_test).mean()) >= tfl_acc - 0.01


def test_digits_layers(digits_tflite):
    """Every layer of the digits model before the FULLY_CONNECTED equals TFLite's tensor byte for byte."""
    data, s, xs, q_in, *_ = digits_tflite
    g, _ = import_tflite(data)
    names = ("relu1", "clip2", "hswish3", "pool3", "relu4", "gap", "flat")  # (bn3: HARD_SWISH runs in its conv)
    stored = {t: (t if t in g.tensors else t + "_nchw") for t in names}
    g.outputs = list(stored.values())
    got = Executor(g, "reference").run_quantized({g.inputs[0]: q_in[:40]})
    for x, i in zip(xs[:40], range(40)):
        _, want = tflite_run(data, [x[None]], names)
        for t, e in stored.items():
            v = got[e][i:i + 1]
            v = v.transpose(0, 2, 3, 1) if e.endswith("_nchw") else v
            assert np.array_equal(v, want[t]), (t, i)


def test_float_edges(tmp_path, digits_tflite):
    """A float32 input/output model: the bundle's input is QUANTIZE's int8 tensor with its scale, its
    output DEQUANTIZE's input; edgeq.run takes and gives floats like the TFLite model."""
    data, *_ = digits_tflite
    b = convert(tmp_path, data, "digits")
    t_in, t_out = b.graph.tensors[b.inputs[0]], b.graph.tensors[b.outputs[0]]
    assert (t_in.dtype, t_out.dtype) == ("int8", "int8")
    assert t_in.scale[0] == pytest.approx(1 / 255) and t_in.zero_point == [-128]


def test_runtime_does_not_import_tflite(tmp_path, digits_tflite):
    b = convert(tmp_path, digits_tflite[0], "digits")
    code = ("import sys, numpy as np, edgeq; b = edgeq.load(sys.argv[1], backend='reference'); "
            "b.run(np.zeros((2, 16, 16, 1), np.float32)); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tflite', 'ai_edge_litert', 'flatbuffers') "
            "or m.startswith('edgeq.converters')]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "digits.edgeq")], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_convert_tflite(tmp_path, digits_tflite):
    (tmp_path / "digits.tflite").write_bytes(digits_tflite[0])
    out = subprocess.run(["edgeq", "convert", "digits.tflite", "--device", "stm32f7", "--json"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "digits.stm32f7.edgeq").is_file() and '"tflite"' in out.stdout


def _model_with(op: int, dtype: str = "int8") -> bytes:
    w = ModelWriter()
    scale = None if dtype in ("float32", "float16") else 0.05
    x = w.tensor("x", (1, 4), dtype, scale, 0)
    y = w.tensor("y", (1, 4), dtype, scale, 0)
    w.op(op, [x], [y])
    return w.to_bytes([x], [y])


def _mixed_model() -> bytes:
    """An int8 model with a float32 tensor in its middle."""
    w = ModelWriter()
    x = w.act("x", (1, 4), 0.05, 0)
    h = w.tensor("h", (1, 4), "float32")
    y = w.act("y", (1, 4), 0.05, 0)
    w.op(OP.DEQUANTIZE, [x], [h])
    w.op(OP.QUANTIZE, [h], [y])
    return w.to_bytes([x], [y])


def _slice_model(**masks: int) -> bytes:
    w = ModelWriter()
    x, y = w.act("x", (1, 4, 4, 2), 0.05, 0), w.act("y", (1, 2, 4, 2), 0.05, 0)
    consts = [w.tensor(n, (4,), "int32", data=np.array(v, np.int32))
              for n, v in (("begin", [0, 1, 0, 0]), ("end", [1, 3, 4, 2]), ("strides", [1, 1, 1, 1]))]
    w.op(OP.STRIDED_SLICE, [x, *consts], [y], "StridedSliceOptions", **masks)
    return w.to_bytes([x], [y])


def _div_model() -> bytes:
    w = ModelWriter()
    a, b, y = (w.act(n, (1, 4), 0.05, 0) for n in "aby")
    w.op(OP.DIV, [a, b], [y], "DivOptions", FusedActivationFunction=0)
    return w.to_bytes([a, b], [y])


def _prelu_model() -> bytes:
    w = ModelWriter()
    x, y = w.act("x", (1, 2, 2, 3), 0.05, 0), w.act("y", (1, 2, 2, 3), 0.05, 0)
    alpha = w.tensor("alpha", (1, 1, 3), "int8", 0.01, 0, np.array([10, 20, 30], np.int8).reshape(1, 1, 3))
    w.op(OP.PRELU, [x, alpha], [y])
    return w.to_bytes([x], [y])


BAD = {
    "garbage": (b"\x10\x99\x7f\x03TFL3" + np.random.default_rng(0).bytes(3000), "malformed"),
    "not_tflite": (b"hello world, not a model", "TFL3"),
    "unsupported_op": (_model_with(OP.LOG_SOFTMAX), "LOG_SOFTMAX (node 0) is not supported; supported: ADD"),
    "float16": (_model_with(OP.RELU, "float16"), "float16"),
    "int16": (_model_with(OP.RELU, "int16"), "tensor 'x' (of RELU node 0) is int16 (the 16x8 scheme)"),
    "mixed": (_mixed_model(), "float32 in an int8 model"),
    "uint8": (_model_with(OP.RELU, "uint8"), "tensor 'x' (of RELU node 0) is uint8 (the legacy scheme): edgeq imports int8"),
    "div_activations": (_div_model(), "DIV (node 0): only an activation divided by a constant int8 scalar"),
    "prelu_per_channel": (_prelu_model(), "PRELU (node 0): only one int8 alpha for every element"),
    "slice_ellipsis": (_slice_model(EllipsisMask=2), "STRIDED_SLICE (node 0): ellipsis_mask"),
    "slice_batch": (_slice_model(ShrinkAxisMask=1), "STRIDED_SLICE (node 0): shrinking the batch axis"),
}


@pytest.mark.parametrize("case", [*BAD, "truncated"])
def test_bad_models(tmp_path, case, digits_tflite):
    data, message = BAD[case] if case != "truncated" else (digits_tflite[0][:700], "malformed")
    path = tmp_path / "bad.tflite"
    path.write_bytes(data)
    with pytest.raises(ModelError):
        edgeq.convert(path, device="host", output=tmp_path / "x.edgeq", progress=False)
    out = subprocess.run(["edgeq", "convert", "bad.tflite", "--device", "host", "-o", "out.edgeq"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("edgeq: error:") and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "out.edgeq").exists() and not (tmp_path / "x.edgeq").exists()


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(8, 4000), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4))
def test_corrupted_models(digits_tflite, cut, flips):
    """Truncated or bit-flipped files: converted, or one ModelError; never another exception or a hang."""
    data = bytearray(digits_tflite[0])
    for pos, mask in flips:
        data[pos % len(data)] ^= mask
    data = bytes(data) if cut > 3900 else bytes(data[:cut])
    try:
        import_tflite(data)
    except ModelError:
        pass


@pytest.mark.parametrize("seed", range(4))
def test_float_models(tmp_path, seed):
    """A float32 TFLite model becomes edgeq's float graph (its outputs equal TFLite's float ones) and is
    calibrated like an ONNX model; the bundle keeps the NHWC input."""
    from edgeq.converters.float_ops import run_float
    from edgeq.converters.tflite_float import import_float_tflite
    data, shape = float_model(seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    it = Interpreter(model_content=data, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    want = [it.get_tensor(d["index"]) for d in it.get_output_details()]
    g, _ = import_float_tflite(data)
    got = run_float(g.nodes, {**g.consts, g.inputs[0]: x})
    for o, w in zip(g.outputs, want):
        np.testing.assert_allclose(got[o], w, atol=1e-5 * max(1.0, float(np.abs(w).max())))
    (tmp_path / "f.tflite").write_bytes(data)
    res = edgeq.convert(tmp_path / "f.tflite", device="host", calib=rng.standard_normal((32,) + shape[1:]).astype(np.float32),
                        output=tmp_path / "f.edgeq", progress=False)
    b = edgeq.load(res.path)
    assert b.graph.tensors[b.inputs[0]].shape == shape and res.report["layers"]
    probs = b.run(x)[b.outputs[0]]
    assert np.abs(probs - want[0]).max() < 0.05  # int8 after calibration on 32 random inputs


def test_digits_float_tflite(tmp_path):
    """The digits CNN as a float32 TFLite file, calibrated by edgeq from NHWC samples."""
    from edgeq.converters.onnx_import import import_onnx
    from edgeq.converters.passes import run_passes
    from edgeq.sample import load_sample
    s = load_sample()
    fg, _ = import_onnx(s.model_path)
    run_passes(fg)
    (tmp_path / "digits.tflite").write_bytes(from_float_graph(fg, None))
    np.save(tmp_path / "calib.npy", s.calib.transpose(0, 2, 3, 1))
    out = subprocess.run(["edgeq", "convert", "digits.tflite", "--device", "rpi5", "--calib", "calib.npy", "--json"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    b = edgeq.load(tmp_path / "digits.rpi5.edgeq")
    acc = float((b.run(s.x_test.transpose(0, 2, 3, 1))[b.outputs[0]].argmax(1) == s.y_test).mean())
    assert acc >= 0.97, acc
    out = subprocess.run(["edgeq", "convert", "digits.tflite", "--device", "rpi5", "-o", "nocalib.edgeq"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2 and "calibration data is required" in out.stderr
    assert not (tmp_path / "nocalib.edgeq").exists()


def test_unsupported_op_error_class(tmp_path):
    (tmp_path / "m.tflite").write_bytes(BAD["unsupported_op"][0])
    with pytest.raises(UnsupportedOpError, match="LOG_SOFTMAX"):
        edgeq.convert(tmp_path / "m.tflite", device="host", output=tmp_path / "m.edgeq", progress=False)


def test_calibration_options_rejected(tmp_path, digits_tflite):
    (tmp_path / "d.tflite").write_bytes(digits_tflite[0])
    with pytest.raises(edgeq.errors.CalibrationError, match="own scales"):
        edgeq.convert(tmp_path / "d.tflite", device="host", calib=np.zeros((4, 16, 16, 1), np.float32),
                      progress=False)
