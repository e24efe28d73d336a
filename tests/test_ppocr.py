"""PP-OCRv4 (rapidocr-onnxruntime's models) end to end: the float import matches onnxruntime, the INT8
bundles run bit-exactly on every backend, recognition reads rendered text, and the graph pieces these
models need (LayerNorm, attention, Resize, ConvTranspose) are integer-only.

Inputs are small (rec 48x96, det 96x96) so the suite stays fast; benchmarks/ measures full sizes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeq
from edgeq.converters.float_ops import run_float
from edgeq.converters.onnx_import import import_onnx
from edgeq.converters.passes import run_passes
from edgeq.converters.pipeline import sqnr_db

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "ocr"))
import synth  # noqa: E402

MODELS = synth.model_paths()
INTEGER_OPS_ONLY = {"QConv", "QFullyConnected", "QAdd", "QMul", "QLut", "QMaxPool", "QAvgPool", "QSoftmax", "QConcat",
                    "QReshape", "QStridedCopy", "QMatMul", "QConvTranspose", "QResize", "QLayerNorm", "QRequantize"}


def _ort(path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def rec_bundle(tmp_path_factory):
    _, cal = synth.rec_lines(12, seed=2, width=96, max_words=1)
    out = tmp_path_factory.mktemp("rec") / "rec.edgeq"
    return edgeq.convert(MODELS["rec"], device="rpi5", output=out, calib=cal, progress=False)


@pytest.fixture(scope="module")
def rec_mixed_bundle(tmp_path_factory):
    _, cal = synth.rec_lines(12, seed=2, width=96, max_words=1)
    out = tmp_path_factory.mktemp("rec16") / "rec16.edgeq"
    return edgeq.convert(MODELS["rec"], device="host", output=out, calib=cal, calib_method="minmax", progress=False,
                         mixed_precision="auto")


@pytest.fixture(scope="module")
def det_bundle(tmp_path_factory):
    cal = np.stack([synth.det_page(s, size=96)[0] for s in range(4)])
    out = tmp_path_factory.mktemp("det") / "det.edgeq"
    return edgeq.convert(MODELS["det"], device="host", output=out, calib=cal, calib_method="auto", progress=False)


@pytest.mark.parametrize("kind, shape", [("rec", (3, 48, 96)), ("det", (3, 64, 64))])
def test_float_import_matches_onnxruntime(kind, shape):
    """Shape subgraphs folded, LayerNorm/Swish/affine patterns fused: still the model's arithmetic."""
    x = np.random.default_rng(0).uniform(-1, 1, (2,) + shape).astype(np.float32)
    g, _ = import_onnx(MODELS[kind], None, {"": shape})
    run_passes(g)
    ops = {n.op for n in g.nodes}
    assert not ops & {"Shape", "Cast", "ReduceMean", "Sqrt", "Pow", "Div", "Sub", "BatchNormalization"}, ops
    if kind == "rec":
        assert {"LayerNorm", "MatMul", "Swish", "Transpose"} <= ops
    got = run_float(g.nodes, {**g.consts, g.inputs[0]: x})[g.outputs[0]]
    np.testing.assert_allclose(got, _ort(MODELS[kind], x), rtol=1e-3, atol=2e-4)


def _bit_exact(bundle, x: np.ndarray, backend: str) -> np.ndarray:
    b = edgeq.load(bundle.path)
    assert {n.op for n in b.graph.nodes} <= INTEGER_OPS_ONLY
    name = b.inputs[0]
    q = {name: np.clip(np.rint(x / b.graph.tensors[name].scale[0]) + b.graph.tensors[name].zero_point[0],
                       -128, 127).astype(np.int8)}
    want = b.run_quantized(q, backend="reference")
    got = b.run_quantized(q, backend=backend)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    return b.run(x, backend=backend)[b.outputs[0]]


def _bit_exact_and_reads(bundle, backend: str) -> None:
    """Bit-exact on ``backend``, and reads at least 3/4 of the rendered words fp32 reads right."""
    texts, x = synth.rec_lines(12, seed=5, width=96, max_words=1)
    probs = _bit_exact(bundle, x, backend)
    chars = synth.charset(MODELS["rec"])
    fp32 = synth.ctc_decode(_ort(MODELS["rec"], x), chars)
    got = synth.ctc_decode(probs, chars)
    right = [f.strip() == t for f, t in zip(fp32, texts)]
    agree = [q.strip() == t for q, t, r in zip(got, texts, right) if r]
    assert sum(right) >= 8 and np.mean(agree) >= 0.75, (texts, fp32, got)


def test_rec_int8_bit_exact_and_reads_text(rec_bundle, backend):
    _bit_exact_and_reads(rec_bundle, backend)


def test_rec_mixed_precision_bit_exact_and_reads_text(rec_mixed_bundle, backend):
    """int16 activations chosen automatically: still bit-exact on every backend, still reads the lines."""
    m = rec_mixed_bundle.report["mixed_precision"]
    assert m["int16_tensors"] and m["extra_bytes"] <= m["budget_bytes"], m
    assert "int16" in {t.dtype for t in edgeq.load(rec_mixed_bundle.path).graph.tensors.values()}
    _bit_exact_and_reads(rec_mixed_bundle, backend)


def test_det_int8_bit_exact_and_map_agrees(det_bundle, backend):
    page = synth.det_page(7, size=96)[0][None]
    got = _bit_exact(det_bundle, page, backend)
    want = _ort(MODELS["det"], page)
    a, b = got > 0.3, want > 0.3
    assert (a & b).sum() / max((a | b).sum(), 1) >= 0.6
    ops = {n.op for n in edgeq.load(det_bundle.path).graph.nodes}
    assert {"QResize", "QStridedCopy"} <= ops  # its 2x2/2 ConvTransposes run as 1x1 Conv + pixel shuffle
    auto = det_bundle.report["calibration"]["auto"]
    assert {"minmax", "percentile", "hybrid"} <= set(auto["output_sqnr_db"])
    assert auto["output_sqnr_db"][auto["chosen"]] == max(auto["output_sqnr_db"].values())


def test_cls_converts_for_rpi5(tmp_path):
    _, cal = synth.rec_lines(6, seed=3, width=192, max_words=1)
    r = edgeq.convert(MODELS["cls"], device="rpi5", output=tmp_path / "cls.edgeq", calib=cal, progress=False)
    probs = edgeq.load(r.path).run(cal)[r.report["layers"][-1]["tensor"]]
    np.testing.assert_allclose(probs, _ort(MODELS["cls"], cal), atol=0.1)


# ---- small synthetic graphs for the pieces -----------------------------------------------------------

def _model(nodes, inits, x_shape, y_shape, opset=13) -> bytes:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + x_shape[1:])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"] + y_shape[1:])],
                              [numpy_helper.from_array(v.astype(np.float32) if v.dtype.kind == "f" else v, k)
                               for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def _transformer_block(rng: np.random.Generator, t: int = 10, c: int = 16, heads: int = 2) -> bytes:
    """LayerNorm written out, q/k/v attention with a softmax, an MLP with SiLU, two residuals."""
    d = c // heads
    w = {k: rng.standard_normal(s).astype(np.float32) * 0.3 for k, s in
         (("wqkv", (c, 3 * c)), ("wo", (c, c)), ("w1", (c, 2 * c)), ("w2", (2 * c, c)), ("g", (c,)), ("b", (c,)))}
    w.update({"two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32),
              "qs": np.array(d ** -0.5, np.float32), "shape5": np.array([0, t, 3, heads, d], np.int64),
              "shape3": np.array([0, t, c], np.int64), "i0": np.array([0], np.int64), "i1": np.array([1], np.int64),
              "i2": np.array([2], np.int64), "i3": np.array([3], np.int64), "ax0": np.array([0], np.int64)})
    n = helper.make_node
    nodes = [n("ReduceMean", ["x"], ["m"], axes=[-1]), n("Sub", ["x", "m"], ["xc"]), n("Pow", ["xc", "two"], ["sq"]),
             n("ReduceMean", ["sq"], ["v"], axes=[-1]), n("Add", ["v", "eps"], ["ve"]), n("Sqrt", ["ve"], ["sd"]),
             n("Div", ["xc", "sd"], ["xn"]), n("Mul", ["xn", "g"], ["xg"]), n("Add", ["xg", "b"], ["ln"]),
             n("MatMul", ["ln", "wqkv"], ["qkv"]), n("Reshape", ["qkv", "shape5"], ["qkv5"]),
             n("Transpose", ["qkv5"], ["qkvt"], perm=[2, 0, 3, 1, 4])]
    for k, (lo, hi) in enumerate((("i0", "i1"), ("i1", "i2"), ("i2", "i3"))):
        nodes += [n("Slice", ["qkvt", lo, hi, "ax0"], [f"s{k}"]), n("Squeeze", [f"s{k}", "ax0"], [f"h{k}"])]
    nodes += [n("Mul", ["h0", "qs"], ["q"]), n("Transpose", ["h1"], ["kt"], perm=[0, 1, 3, 2]),
              n("MatMul", ["q", "kt"], ["att"]), n("Softmax", ["att"], ["p"], axis=-1), n("MatMul", ["p", "h2"], ["o"]),
              n("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]), n("Reshape", ["ot", "shape3"], ["o3"]),
              n("MatMul", ["o3", "wo"], ["proj"]), n("Add", ["x", "proj"], ["r1"]), n("MatMul", ["r1", "w1"], ["h"]),
              n("Sigmoid", ["h"], ["hs"]), n("Mul", ["h", "hs"], ["silu"]), n("MatMul", ["silu", "w2"], ["f"]),
              n("Add", ["r1", "f"], ["y"])]
    return _model(nodes, w, [1, t, c], [1, t, c])


def _upsampler(rng: np.random.Generator, mode: str, coord: str) -> bytes:
    """Resize x2 then ConvTranspose with a bias, a Relu and a standalone BatchNorm. Nearest: a 2x2/2
    ConvTranspose (becomes 1x1 Conv + pixel shuffle); linear: 3x3/2 with padding 1 and output_padding 1
    (overlapping taps: the QConvTranspose kernel)."""
    c = 4
    k, ct_attrs = (2, {}) if mode == "nearest" else (3, {"pads": [1, 1, 1, 1], "output_padding": [1, 1]})
    inits = {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 2, 2], np.float32),
             "wt": rng.standard_normal((c, 3, k, k)).astype(np.float32) * 0.5, "bt": rng.standard_normal(3) * 0.1,
             "bs": rng.uniform(0.5, 1.5, 3), "bb": rng.standard_normal(3) * 0.1, "bm": rng.standard_normal(3) * 0.1,
             "bv": rng.uniform(0.5, 1.5, 3)}
    kw = {"nearest_mode": "floor"} if mode == "nearest" else {}
    nodes = [helper.make_node("Resize", ["x", "roi", "scales"], ["r"], mode=mode, coordinate_transformation_mode=coord, **kw),
             helper.make_node("ConvTranspose", ["r", "wt", "bt"], ["ct"], kernel_shape=[k, k], strides=[2, 2], **ct_attrs),
             helper.make_node("Relu", ["ct"], ["a"]),
             helper.make_node("BatchNormalization", ["a", "bs", "bb", "bm", "bv"], ["y"])]
    return _model(nodes, {k: np.asarray(v) for k, v in inits.items()}, [1, c, 5, 6], [1, 3, 20, 24])


@pytest.mark.parametrize("case", ["transformer", "nearest-asymmetric", "linear-half_pixel", "linear-align_corners"])
def test_pieces_integer_only_and_close_to_onnxruntime(case, tmp_path, backend):
    rng = np.random.default_rng(1)
    if case == "transformer":
        model, x = _transformer_block(rng), rng.standard_normal((16, 1, 10, 16)).astype(np.float32)
    else:
        model, x = _upsampler(rng, *case.split("-")), rng.standard_normal((16, 1, 4, 5, 6)).astype(np.float32)
    x = x[:, 0]
    r = edgeq.convert(model, device="host", output=tmp_path / "m.edgeq", calib=x, progress=False)
    b = edgeq.load(r.path)
    ops = {n.op for n in b.graph.nodes}
    assert ops <= INTEGER_OPS_ONLY
    assert {"transformer": {"QLayerNorm", "QMatMul", "QStridedCopy", "QSoftmax"},
            "nearest-asymmetric": {"QResize", "QConv", "QStridedCopy"}}.get(case, {"QResize", "QConvTranspose"}) <= ops, ops
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    q = {"x": np.clip(np.rint(x / b.graph.tensors["x"].scale[0]) + b.graph.tensors["x"].zero_point[0],
                      -128, 127).astype(np.int8)}
    np.testing.assert_array_equal(b.run_quantized(q, backend=backend)["y"], b.run_quantized(q, backend="reference")["y"])
    assert sqnr_db(want, b.run(x, backend=backend)["y"]) > 20


def test_unsupported_resize_mode_is_a_one_line_error(tmp_path):
    model = _model([helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode="cubic")],
                   {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 2, 2], np.float32)}, [1, 2, 4, 4],
                   [1, 2, 8, 8])
    src = tmp_path / "cubic.onnx"
    src.write_bytes(model)
    np.save(tmp_path / "c.npy", np.zeros((2, 2, 4, 4), np.float32))
    out = subprocess.run([sys.executable, "-m", "edgeq.cli", "convert", str(src), "--device", "host", "--calib", str(tmp_path / "c.npy"),
                          "-o", str(tmp_path / "o.edgeq")], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "Resize" in out.stderr and "cubic" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "o.edgeq").exists()


def test_unfixable_dynamic_dimension_is_a_one_line_error(tmp_path):
    src = tmp_path / "rec.onnx"
    src.write_bytes(Path(MODELS["rec"]).read_bytes())
    out = subprocess.run([sys.executable, "-m", "edgeq.cli", "convert", str(src), "--device", "host", "-o", str(tmp_path / "o.edgeq")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "dynamic dimension" in out.stderr and "--input-shape" in out.stderr


def test_channel_split_rescues_small_channels(tmp_path, backend):
    """Pointwise -> Relu -> depthwise -> pointwise where two channels are 100x larger than the rest between
    the first two convs (the depthwise conv brings them back, as a folded BatchNorm does): one int8 scale
    would round the small channels away; the split keeps them."""
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((8, 4, 1, 1)).astype(np.float32)
    w1[:2] *= 100
    inits = {"w1": w1, "w2": rng.standard_normal((8, 1, 3, 3)).astype(np.float32),
             "w3": rng.standard_normal((4, 8, 1, 1)).astype(np.float32)}
    inits["w2"][:2] /= 100
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["a"]), n("Relu", ["a"], ["r"]),
             n("Conv", ["r", "w2"], ["d"], group=8, pads=[1, 1, 1, 1]), n("Conv", ["d", "w3"], ["y"])]
    model = _model(nodes, inits, [1, 4, 6, 6], [1, 4, 6, 6])
    x = rng.standard_normal((16, 4, 6, 6)).astype(np.float32)
    r = edgeq.convert(model, device="host", output=tmp_path / "m.edgeq", calib=x, calib_method="auto",
                      progress=False)
    assert r.report["calibration"]["auto"]["chosen"].endswith("+split"), r.report["calibration"]
    b = edgeq.load(r.path)
    assert "QConcat" in {n.op for n in b.graph.nodes}
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert sqnr_db(want, b.run(x, backend=backend)["y"]) > 25


def test_auto_calibration_scores_ctc_outputs_on_characters():
    """CTC output is mostly the blank class: agreeing on blanks must not hide wrong characters."""
    from edgeq.converters.pipeline import _top1_agreement
    want = np.zeros((1, 10, 5), np.float32)
    want[0, :, 0] = 1
    want[0, 3, 2] = want[0, 7, 4] = 2  # two characters among eight blanks
    got = want.copy()
    got[0, 3, 1] = got[0, 7, 1] = 3    # both characters wrong, every blank right
    assert _top1_agreement(want, got) == 0.0
    assert _top1_agreement(want, want) == 1.0
    balanced = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]  # a classifier: every sample counts
    assert _top1_agreement(balanced, balanced[::-1]) == np.mean(balanced.argmax(1) == balanced[::-1].argmax(1))
