"""Calibration from a folder of images (--calib DIR --preprocess ...): the inputs it builds, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edgeq.converters.image_calib import load_image_folder, parse_preprocess
from edgeq.errors import CalibrationError


def _conv_model(path) -> None:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"])], [w])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())


def _images(folder, n=4, size=(20, 30)) -> list[np.ndarray]:
    folder.mkdir()
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        a = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"img{i}.png")
        out.append(a)
    return out


def test_folder_preprocessing_matches_hand_computation(tmp_path):
    imgs = _images(tmp_path / "imgs")
    x = load_image_folder(tmp_path / "imgs", "mean=0.5,std=0.25,color=bgr", progress=False)
    want = (np.stack(imgs)[..., ::-1].astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(x, want.transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-6)
    y = load_image_folder(tmp_path / "imgs", "resize=10x40,keep_ratio=1,pad=-1,layout=nhwc", progress=False)
    assert y.shape == (4, 10, 40, 3)
    assert np.all(y[:, :, 15:] == -1) and np.all(y[:, :, :15] >= 0)  # 20x30 -> 10x15, padded on the right


def test_cli_converts_with_an_image_folder(tmp_path):
    _conv_model(tmp_path / "m.onnx")
    _images(tmp_path / "imgs", n=5, size=(16, 16))
    out = subprocess.run([sys.executable, "-m", "edgeq.cli", "convert", str(tmp_path / "m.onnx"), "--device", "host",
                          "--calib", str(tmp_path / "imgs"), "--preprocess", "resize=12x14,mean=0.5,std=0.5",
                          "-o", str(tmp_path / "m.edgeq"), "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["calibration"]["samples"] == 5
    assert "12x14" not in out.stderr  # the dynamic H and W were fixed from the images
    from edgeq import load
    assert load(tmp_path / "m.edgeq").graph.tensors["x"].shape == (1, 3, 12, 14)


@pytest.mark.parametrize("spec, word", [("resize=12", "HxW"), ("bogus=1", "unknown item"), ("std=0", "std"),
                                        ("mean=1/2", "one per channel")])
def test_bad_preprocess_spec(spec, word):
    with pytest.raises(CalibrationError, match=word):
        parse_preprocess(spec)


def test_unreadable_image_is_a_one_line_error(tmp_path):
    _conv_model(tmp_path / "m.onnx")
    _images(tmp_path / "imgs", n=2, size=(8, 8))
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
    out = subprocess.run([sys.executable, "-m", "edgeq.cli", "convert", str(tmp_path / "m.onnx"), "--device", "host",
                          "--calib", str(tmp_path / "imgs"), "-o", str(tmp_path / "m.edgeq")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "broken.png" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "m.edgeq").exists()
