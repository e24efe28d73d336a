"""Raspberry-Pi-class ARM: `edgeq sim --device rpi5` cross-compiles a bundle's C with aarch64-linux-gnu-gcc
and runs it under qemu-aarch64 (user mode). Every comparison is bit for bit against the NumPy reference.

Covers every op (tests/test_c_sanitize.py's single-op cases), random conv nets through the whole importer,
the embedded sample, and the three PP-OCR models at small input sizes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeq
from edgeq.errors import ExportError
from edgeq.linux_sim import simulate_linux
from edgeq.runtimes.executor import Executor, quantize
from edgeq.sample import load_sample
from test_c_sanitize import make_cases
from test_mcu import _single_op_bundle, _zoo
from test_mixed_precision import _wide_range_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "ocr"))
import synth  # noqa: E402

# The C export takes int8 inputs and outputs; int16 kernels are covered inside models (test below).
CASES = [(g, acts) for g, acts in make_cases(seed=11)
         if all(g.tensors[k].dtype == "int8" for k in (*g.inputs, *g.outputs))]


def _reference_q(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    b = edgeq.load(path)
    return b.run_quantized({k: quantize(v, b.graph.tensors[k]) for k, v in inputs.items()}, backend="reference")


def _assert_bit_exact(path: Path, inputs: dict[str, np.ndarray], device: str = "rpi5") -> dict:
    got = simulate_linux(path, device, inputs)
    want = _reference_q(path, inputs)
    for k, v in want.items():
        assert np.array_equal(got.outputs_q[k], v), k
    return got.report


@pytest.mark.parametrize("start", range(0, len(CASES), 16))
def test_every_op_bit_exact_under_qemu_aarch64(start, tmp_path):
    """Each single-op case exported, built for cortex-a76 (armv8.2-a+dotprod) and run under qemu-aarch64."""
    for i, (graph, acts) in enumerate(CASES[start:start + 16]):
        path = _single_op_bundle(graph, tmp_path / f"op{start + i}.edgeq")
        want = Executor(graph, "reference").run_quantized(acts)
        got = simulate_linux(path, "rpi5", {k: v.astype(np.float32) for k, v in acts.items()})
        for k, v in want.items():
            assert np.array_equal(got.outputs_q[k], v), (graph.nodes[0].op, graph.nodes[0].attrs)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_convnets_bit_exact_under_qemu_aarch64(seed, tmp_path):
    path, inputs = _zoo(tmp_path, seed, "rpi5")
    report = _assert_bit_exact(path, inputs)
    assert report["samples"] == 5 and report["emulator"] == "qemu-aarch64 -cpu cortex-a76"
    assert report["compiler_warnings"] == []


def test_int16_layers_bit_exact_under_qemu_aarch64(tmp_path):
    """A model whose mixed-precision conversion makes tensors int16 (16x8 convs, int16 tables)."""
    x = np.random.default_rng(0).standard_normal((6, 4, 6, 6)).astype(np.float32)
    path = tmp_path / "mixed.edgeq"
    r = edgeq.convert(_wide_range_model(), device="rpi5", output=path, calib=x, calib_method="minmax",
                      progress=False, mixed_precision="auto", int16_budget="100%")
    assert r.report["mixed_precision"]["int16_tensors"]
    _assert_bit_exact(path, {"x": x})


def test_sample_on_the_npu_profiles_cpu_side(tmp_path):
    """android-npu's CPU fallback is AArch64 Linux too (armv8.2-a+dotprod baseline)."""
    path = tmp_path / "digits.edgeq"
    edgeq.convert(device="android-npu", output=path, progress=False)
    _assert_bit_exact(path, {"input": load_sample().x_test[:8]}, device="android-npu")


@pytest.mark.parametrize("kind", ["rec", "det", "cls"])
def test_ppocr_models_bit_exact_under_qemu_aarch64(kind, tmp_path):
    """The three PP-OCR models, converted for rpi5 at small sizes, run on the AArch64 build bit for bit."""
    if kind == "rec":
        _, cal = synth.rec_lines(8, seed=3, width=96, max_words=1)
        x = synth.rec_lines(2, seed=4, width=96, max_words=1)[1]
    elif kind == "det":
        cal = np.stack([synth.det_page(s, size=64)[0] for s in range(3)])
        x = np.stack([synth.det_page(9, size=64)[0]])
    else:
        _, cal = synth.rec_lines(8, seed=5, width=192, max_words=2)
        x = cal[:2]
    path = tmp_path / f"{kind}.edgeq"
    edgeq.convert(synth.model_paths()[kind], device="rpi5", output=path, calib=cal, progress=False)
    b = edgeq.load(path)
    _assert_bit_exact(path, {b.inputs[0]: x.astype(np.float32)})


def test_cli_sim_rpi5_json_and_errors(tmp_path):
    path = tmp_path / "digits.edgeq"
    edgeq.convert(device="rpi5", output=path, progress=False)
    x = load_sample().x_test[:3]
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run(["edgeq", "sim", str(path), "--device", "rpi5", "--input", str(tmp_path / "x.npy"),
                          "-o", str(tmp_path / "y.npy"), "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["device"] == "rpi5" and report["samples"] == 3 and "not of the device" in report["timing_note"]
    want = edgeq.load(path).run(x, backend="reference")
    assert np.array_equal(np.load(tmp_path / "y.npy"), want[edgeq.load(path).outputs[0]])

    bad = subprocess.run(["edgeq", "sim", str(path), "--device", "rpi5", "--input", str(tmp_path / "x.npy"),
                          "--profile"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--profile" in bad.stderr

    env = {**os.environ, "PATH": str(tmp_path / "empty")}
    (tmp_path / "empty").mkdir()
    missing = subprocess.run([sys.executable, "-m", "edgeq.cli", "sim", str(path), "--device", "rpi5", "--input",
                              str(tmp_path / "x.npy")], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert missing.returncode == 2 and "apt-get install gcc-aarch64-linux-gnu qemu-user" in missing.stderr
    assert missing.stderr.count("\n") == 1


def test_linux_sim_refuses_a_microcontroller_profile(tmp_path):
    path = tmp_path / "digits.edgeq"
    edgeq.convert(device="stm32f7", output=path, progress=False)
    with pytest.raises(ExportError, match="not an AArch64 Linux profile"):
        simulate_linux(path, "stm32f7", {"input": load_sample().x_test[:1]})
