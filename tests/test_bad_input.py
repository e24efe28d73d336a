"""Bad input gets one clear line on stderr, exit status 2, and leaves no output file behind."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import edgeq
from edgeq.bundle import HEADER, HEADER_SIZE, read_bundle
from edgeq.cli import main
from edgeq.errors import BundleError
from models import single_op_model, zoo_model


def fails(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI, expect exit 2 and exactly one error line mentioning every needle."""
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("edgeq: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("b") / "digits.edgeq"
    edgeq.convert(device="host", output=path, progress=False)
    return path


@pytest.fixture
def calib(tmp_path) -> Path:
    p = tmp_path / "calib.npy"
    np.save(p, np.random.default_rng(0).standard_normal((4, 3, 23, 21)).astype(np.float32))
    return p


def _no_outputs(tmp_path: Path) -> None:
    left = [p.name for p in tmp_path.iterdir() if p.suffix in (".edgeq", ".tmp") or p.name.startswith(".")]
    assert not left, left


def test_not_onnx(tmp_path, capsys):
    (tmp_path / "m.onnx").write_text("hello, not a model")
    fails(capsys, ["convert", str(tmp_path / "m.onnx"), "--device", "host", "-o", str(tmp_path / "o.edgeq")],
          "ONNX")
    _no_outputs(tmp_path)


def test_truncated_onnx(tmp_path, capsys, calib):
    data = zoo_model().SerializeToString()
    (tmp_path / "m.onnx").write_bytes(data[: len(data) // 2])
    fails(capsys, ["convert", str(tmp_path / "m.onnx"), "--device", "host", "--calib", str(calib),
                   "-o", str(tmp_path / "o.edgeq")])
    _no_outputs(tmp_path)


def test_unsupported_op_names_op_node_and_list(tmp_path, capsys):
    onnx.save(single_op_model("LpNormalization"), tmp_path / "m.onnx")
    fails(capsys, ["convert", str(tmp_path / "m.onnx"), "--device", "host", "-o", str(tmp_path / "o.edgeq")],
          "LpNormalization", "bad_node", "supported:", "Conv")
    _no_outputs(tmp_path)


def test_nan_weights(tmp_path, capsys, calib):
    model = zoo_model()
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w.flat[3] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, model.graph.initializer[0].name))
    onnx.save(model, tmp_path / "m.onnx")
    fails(capsys, ["convert", str(tmp_path / "m.onnx"), "--device", "host", "--calib", str(calib),
                   "-o", str(tmp_path / "o.edgeq")], "NaN", model.graph.initializer[0].name)
    _no_outputs(tmp_path)


def test_model_without_inputs(tmp_path, capsys):
    node = onnx.helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(np.ones(3, np.float32)))
    g = onnx.helper.make_graph([node], "g", [], [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3])])
    onnx.save(onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    fails(capsys, ["convert", str(tmp_path / "m.onnx"), "--device", "host", "-o", str(tmp_path / "o.edgeq")], "no inputs")
    _no_outputs(tmp_path)


@pytest.mark.parametrize("bad", ["shape", "dtype", "nan"])
def test_bad_calibration(tmp_path, capsys, bad):
    onnx.save(zoo_model(), tmp_path / "m.onnx")
    x = {"shape": np.zeros((4, 3, 22, 21), np.float32), "dtype": np.zeros((4, 3, 23, 21), np.complex64),
         "nan": np.full((4, 3, 23, 21), np.nan, np.float32)}[bad]
    np.save(tmp_path / "c.npy", x)
    fails(capsys, ["convert", str(tmp_path / "m.onnx"), "--device", "host", "--calib", str(tmp_path / "c.npy"),
                   "-o", str(tmp_path / "o.edgeq")], "calibration data for 'x'")
    _no_outputs(tmp_path)


def test_unknown_device_lists_known(tmp_path, capsys):
    fails(capsys, ["convert", "--device", "pdp11", "-o", str(tmp_path / "o.edgeq")], "pdp11", "rpi5", "stm32f7")
    _no_outputs(tmp_path)


@pytest.mark.parametrize("case", ["shape", "dtype", "name", "empty"])
def test_run_wrong_input(tmp_path, capsys, bundle, case):
    x = {"shape": np.zeros((2, 1, 16, 15), np.float32), "dtype": np.zeros((2, 1, 16, 16), np.int64),
         "name": None, "empty": np.zeros((0, 1, 16, 16), np.float32)}[case]
    inp = tmp_path / ("x.npz" if case == "name" else "x.npy")
    if case == "name":
        np.savez(inp, wrong=np.zeros((1, 1, 16, 16), np.float32))
    else:
        np.save(inp, x)
    out = tmp_path / "y.npy"
    fails(capsys, ["run", str(bundle), "--input", str(inp), "-o", str(out)], "input")
    assert not out.exists()


def _rewrite_manifest(src: Path, dst: Path, edit) -> None:
    """Edit the manifest and re-seal its checksum, as a hostile producer could."""
    import hashlib
    raw = bytearray(src.read_bytes())
    magic, ver, hs, m_off, m_len, d_off, d_len, _ = HEADER.unpack_from(raw, 0)
    manifest = json.loads(raw[m_off: m_off + m_len])
    edit(manifest)
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    data = bytes(raw[d_off: d_off + d_len])
    new_d_off = max(d_off, (HEADER_SIZE + len(body) + 63) // 64 * 64)  # a grown manifest moves the data
    header = HEADER.pack(magic, ver, hs, m_off, len(body), new_d_off, d_len, hashlib.sha256(body).digest())
    dst.write_bytes(header.ljust(HEADER_SIZE, b"\0") + body + b"\0" * (new_d_off - HEADER_SIZE - len(body)) + data)


def _blob(manifest: dict) -> dict:
    return next(iter(sorted(manifest["blobs"].items())))[1]


BUNDLE_CASES = {
    "flipped byte": (lambda raw: raw[:-10] + bytes([raw[-10] ^ 0x01]) + raw[-9:], "checksum"),
    "truncated": (lambda raw: raw[: len(raw) - 100], "truncated"),
    "header only": (lambda raw: raw[:64], "smaller than"),
    "bad magic": (lambda raw: b"NOTEDGEQ" + raw[8:], "magic"),
    "future version": (lambda raw: raw[:8] + struct.pack("<I", 99) + raw[12:], "version 99"),
    "manifest bit flip": (lambda raw: raw[:200] + bytes([raw[200] ^ 0x20]) + raw[201:], "checksum"),
}


@pytest.mark.parametrize("case", sorted(BUNDLE_CASES))
def test_corrupt_bundles(tmp_path, capsys, bundle, case):
    mutate, needle = BUNDLE_CASES[case]
    bad = tmp_path / "bad.edgeq"
    bad.write_bytes(mutate(bundle.read_bytes()))
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 16, 16), np.float32))
    fails(capsys, ["run", str(bad), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")], needle)
    fails(capsys, ["inspect", str(bad)], needle)
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize("case", ["blob past end", "blob size vs shape", "unknown op", "arena overflow",
                                  "inconsistent shape", "huge pads"])
def test_hostile_manifests(tmp_path, bundle, case):
    def edit(m):
        if case == "blob past end":
            _blob(m)["offset"] = 1 << 20
        elif case == "blob size vs shape":
            _blob(m)["shape"] = [10**6]
        elif case == "unknown op":
            m["graph"]["nodes"][0]["op"] = "QEvil"
        elif case == "arena overflow":
            m["plan"]["arena_bytes"] = 16
        elif case == "inconsistent shape":
            m["graph"]["tensors"][-1]["shape"] = [1, 11]
        else:
            m["graph"]["nodes"][0]["attrs"]["pads"] = [10**9, 0, 0, 0]
    bad = tmp_path / "bad.edgeq"
    _rewrite_manifest(bundle, bad, edit)
    with pytest.raises(BundleError, match="bad bundle"):
        read_bundle(bad)


def test_cli_entry_point_exit_status(tmp_path):
    """The installed `edgeq` script itself (not just main()) exits 2 with one line."""
    out = subprocess.run([sys.executable, "-m", "edgeq.cli", "inspect", str(tmp_path / "missing.edgeq")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
