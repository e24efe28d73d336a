"""Microcontroller path: `edgeq export --format c` on the host compiler and `edgeq sim` under QEMU Cortex-M.

Every comparison is bit for bit against the host runtime (`edgeq run`: the C backend, and the NumPy
reference for the int8 outputs). Models: the embedded digits CNN and random-weight conv nets built from
tests/models.py's zoo_model (every op the importer supports), over batches of several inputs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

import edgeq
from edgeq.devices import list_devices
from edgeq.errors import DoesNotFitError, FirmwareError
from edgeq.export_c import export_c, mcu_device
from edgeq.mcu_sim import build_firmware, run_firmware, simulate
from edgeq.bundle import write_bundle
from edgeq.runtimes.executor import Executor, quantize
from edgeq.runtimes.planner import plan_memory
from edgeq.sample import load_sample
from models import zoo_model
from test_c_sanitize import _binary, _fc, _random_conv

REPO = Path(__file__).resolve().parents[1]

MCU_DEVICES = [d.id for d in list_devices() if d.device_class == "mcu"]
HOST_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror"]

HOST_MAIN = r"""
#include <stdio.h>
#include "model.h"

/* argv[1]: int8 samples back to back; argv[2]: int8 outputs back to back. */
int main(int argc, char **argv)
{
    static int8_t in[EDGEQ_MODEL_INPUT_BYTES], out[EDGEQ_MODEL_OUTPUT_BYTES];
    const int8_t *ip[EDGEQ_MODEL_N_INPUTS];
    int8_t *op[EDGEQ_MODEL_N_OUTPUTS];
    FILE *fi, *fo;
    int i, off, rc;
    if (argc != 3 || !(fi = fopen(argv[1], "rb")) || !(fo = fopen(argv[2], "wb")))
        return 3;
    for (i = 0, off = 0; i < EDGEQ_MODEL_N_INPUTS; off += edgeq_model_inputs[i].bytes, i++)
        ip[i] = in + off;
    for (i = 0, off = 0; i < EDGEQ_MODEL_N_OUTPUTS; off += edgeq_model_outputs[i].bytes, i++)
        op[i] = out + off;
    while (fread(in, 1, sizeof in, fi) == sizeof in) {
        if ((rc = edgeq_model_run(ip, op)) != 0)
            return 10 - rc;
        fwrite(out, 1, sizeof out, fo);
    }
    fclose(fi);
    return fclose(fo) != 0;
}
"""


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    path = tmp_path_factory.mktemp("digits") / "digits.edgeq"
    edgeq.convert(device="stm32f7", output=path, progress=False)
    return path, {"input": load_sample().x_test[:6]}


def _zoo(tmp: Path, seed: int, device: str):
    rng = np.random.default_rng(seed)
    path = tmp / f"zoo{seed}.edgeq"
    calib = rng.standard_normal((16, 3, 23, 21)).astype(np.float32)
    edgeq.convert(zoo_model(seed=seed).SerializeToString(), device=device, output=path, calib=calib, progress=False)
    return path, {"x": rng.standard_normal((5, 3, 23, 21)).astype(np.float32) * 1.5}


@pytest.fixture(scope="module", params=["off", 2])
def mobilenet(request, tmp_path_factory):
    """benchmarks/convnets.py's MobileNetV2-style net at 3x96x96 (random weights), layer by layer and with
    a 2x2 patch-based first stage."""
    spec = importlib.util.spec_from_file_location("convnets", REPO / "benchmarks" / "convnets.py")
    convnets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convnets)
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("mnet") / f"mnet_{request.param}.edgeq"
    calib = rng.standard_normal((4, 3, 96, 96)).astype(np.float32)
    edgeq.convert(convnets.mobilenet_v2_like().SerializeToString(), device="nrf52840", output=path, calib=calib,
                  progress=False, patch=request.param)
    return path, {"input": rng.standard_normal((2, 3, 96, 96)).astype(np.float32)}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return _zoo(tmp_path_factory.mktemp("zoo"), 3, "cortex-m55")


def _int8_batch(bundle: edgeq.api.Bundle, inputs: dict[str, np.ndarray]) -> np.ndarray:
    g = bundle.graph
    n = len(next(iter(inputs.values())))
    return np.concatenate([quantize(inputs[k], g.tensors[k]).reshape(n, -1) for k in g.inputs], axis=1)


def _assert_same_as_run(bundle_path: Path, inputs: dict[str, np.ndarray], raw: np.ndarray) -> None:
    """raw int8 outputs (samples back to back) == reference int8, and dequantized == `edgeq run` (C backend)."""
    b = edgeq.load(bundle_path)
    q = {k: quantize(v, b.graph.tensors[k]) for k, v in inputs.items()}
    want_q = b.run_quantized(q, backend="reference")
    want_f = b.run(inputs, backend="c")
    n = len(next(iter(inputs.values())))
    raw = raw.reshape(n, -1)
    col = 0
    for name in b.outputs:
        width = int(np.prod(want_q[name].shape[1:]))
        got = raw[:, col: col + width].reshape(want_q[name].shape)
        col += width
        np.testing.assert_array_equal(got, want_q[name], err_msg=name)
    assert col == raw.shape[1]
    for name, y in _dequantize_raw(b, raw).items():
        assert y.dtype == np.float32 and np.array_equal(y, want_f[name]), name


def _dequantize_raw(b: edgeq.api.Bundle, raw: np.ndarray) -> dict[str, np.ndarray]:
    from edgeq.runtimes.executor import dequantize
    out, col = {}, 0
    for name in b.outputs:
        t = b.graph.tensors[name]
        width = t.sample_nbytes
        out[name] = dequantize(raw[:, col: col + width].reshape((-1,) + t.shape[1:]), t)
        col += width
    return out


def _host_build_and_run(bundle_path: Path, inputs: dict[str, np.ndarray], tmp: Path, extra: list[str]) -> np.ndarray:
    proj = tmp / "proj"
    export_c(bundle_path, proj)
    (proj / "host_main.c").write_text(HOST_MAIN)
    exe = proj / "model_host"
    cmd = ["gcc", *HOST_FLAGS, *extra, "model.c", "edgeq_kernels.c", "host_main.c", "-lm", "-o", str(exe)]
    build = subprocess.run(cmd, cwd=proj, capture_output=True, text=True)
    assert build.returncode == 0 and not build.stderr.strip(), build.stderr
    _int8_batch(edgeq.load(bundle_path), inputs).tofile(proj / "in.bin")
    run = subprocess.run([str(exe), "in.bin", "out.bin"], cwd=proj, capture_output=True, text=True)
    assert run.returncode == 0 and not run.stderr, (run.returncode, run.stderr[-2000:])
    return np.fromfile(proj / "out.bin", dtype=np.int8)


# ---- host C ---------------------------------------------------------------------------------------

def test_export_host_c_digits_bit_exact(digits, tmp_path):
    path, inputs = digits
    raw = _host_build_and_run(path, inputs, tmp_path, ["-O2"])
    _assert_same_as_run(path, inputs, raw)


@pytest.mark.parametrize("seed", [1, 2])
def test_export_host_c_random_convnets_bit_exact(seed, tmp_path):
    path, inputs = _zoo(tmp_path, seed, "stm32f7")
    raw = _host_build_and_run(path, inputs, tmp_path, ["-O2"])
    _assert_same_as_run(path, inputs, raw)


def test_export_host_c_mobilenet_bit_exact(mobilenet, tmp_path):
    path, inputs = mobilenet
    raw = _host_build_and_run(path, inputs, tmp_path, ["-O2"])
    _assert_same_as_run(path, inputs, raw)


def test_export_host_c_under_sanitizers(zoo, tmp_path):
    path, inputs = zoo
    raw = _host_build_and_run(path, inputs, tmp_path, ["-O1", "-g", "-fsanitize=address,undefined",
                                                      "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"])
    _assert_same_as_run(path, inputs, raw)


def test_export_writes_exact_arena_and_const_pool(digits, tmp_path):
    path, _ = digits
    b = edgeq.load(path)
    r = export_c(path, tmp_path / "p", device="nrf52840")
    model_c = (tmp_path / "p" / "model.c").read_text()
    arena = b._loaded.plan.arena_bytes
    assert r.arena_bytes == arena and f"static int8_t arena[{arena}]" in model_c
    assert f"static const uint8_t pool[{b._loaded.pool.size}]" in model_c and "malloc" not in model_c
    link = (tmp_path / "p" / "link.ld").read_text()
    dev = mcu_device("nrf52840")
    assert f"LENGTH = {dev.flash_bytes}" in link and f"LENGTH = {dev.ram_bytes}" in link
    assert not list((tmp_path / "p").glob(".edgeq-export-*"))  # staging directory cleaned up


# ---- QEMU -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", MCU_DEVICES)
def test_sim_sample_every_mcu_profile_bit_exact(device, digits):
    path, inputs = digits
    r = simulate(path, device, inputs)
    raw = np.concatenate([r.outputs_q[k].reshape(len(inputs["input"]), -1) for k in r.outputs_q], axis=1)
    _assert_same_as_run(path, inputs, raw)
    rep = r.report
    assert rep["compiler_warnings"] == []
    assert rep["flash"]["used_bytes"] <= rep["flash"]["budget_bytes"]
    assert rep["ram"]["used_bytes"] <= rep["ram"]["budget_bytes"]
    assert rep["ram"]["arena_bytes"] == edgeq.load(path)._loaded.plan.arena_bytes
    # The measured stack stays under the static bound, which stays under the reserve.
    assert 0 < rep["ram"]["stack_used_bytes"] <= rep["ram"]["stack_static_bound_bytes"] < rep["ram"]["stack_reserve_bytes"]
    # Same program every sample: instruction counts agree to within a few SysTick ticks.
    ins = rep["instructions"]["per_sample"]
    assert len(ins) == 6 and min(ins) > rep["macs_per_sample"] and max(ins) - min(ins) < 10 * rep["instructions"]["resolution"]


@pytest.mark.parametrize("device", ["stm32f7", "cortex-m55"])
def test_sim_random_convnet_bit_exact(device, zoo):
    path, inputs = zoo
    r = simulate(path, device, inputs)
    n = len(inputs["x"])
    raw = np.concatenate([r.outputs_q[k].reshape(n, -1) for k in edgeq.load(path).outputs], axis=1)
    _assert_same_as_run(path, inputs, raw)


@pytest.mark.parametrize("device", ["nrf52840", "stm32f7"])
def test_sim_mobilenet_bit_exact(device, mobilenet):
    path, inputs = mobilenet
    if "_2" in path.stem:  # the patch plan really is one: windows are copied out patch by patch
        assert "QCopyWindow" in [n.op for n in edgeq.load(path).graph.nodes]
    r = simulate(path, device, inputs)
    _assert_same_as_run(path, inputs, np.concatenate([v.reshape(2, -1) for v in r.outputs_q.values()], axis=1))
    assert r.report["ram"]["used_bytes"] <= r.report["ram"]["budget_bytes"]


def test_app_firmware_prints_the_classes_edgeq_run_gives(digits, tmp_path):
    path, inputs = digits
    app = tmp_path / "app"
    shutil.copytree(REPO / "apps" / "mcu_firmware", app)
    export_c(path, app / "model", device="rp2040")
    np.save(app / "input.npy", inputs["input"])
    out = subprocess.run(["make", "run"], cwd=app, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    want = edgeq.load(path).run(inputs["input"], backend="c")["logits"].argmax(1)
    got = [int(line.rsplit(" ", 1)[1]) for line in out.stdout.splitlines() if line.startswith("sample ")]
    assert got == want.tolist()


def _single_op_bundle(graph, path: Path) -> Path:
    """A bundle of one random integer op (tests/test_c_sanitize.py generators); scale 1, zero point 0 at
    the boundary so that float inputs holding int8 values quantize to themselves."""
    for name in (*graph.inputs, *graph.outputs):
        graph.tensors[name].scale, graph.tensors[name].zero_point = [1.0], [0]
    write_bundle(path, graph, plan_memory(graph), {"device": {"id": "test"}, "scheme": "int8"})
    return path


@pytest.mark.parametrize("seed", range(16))
def test_sim_random_convs_bit_exact_with_and_without_dsp(seed, tmp_path):
    """Random convolutions (plane and dot paths, every stride/dilation/group form) and FCs on the DSP cores
    (Cortex-M4/M7/M55: the SMLAD/SMLABB kernels) and on the M0+ (portable loops), against the reference."""
    rng = np.random.default_rng(1000 + seed)
    graph, acts = _fc(rng) if seed % 5 == 4 else _random_conv(rng)
    if seed % 3 == 0:  # biases at the int32 limits: acc + bias saturates (the DSP requantization's QADD)
        b = graph.consts["b"]
        graph.consts["b"] = np.where(rng.random(b.shape) < 0.5, 2**31 - 1 - b % 64, -(2**31) + b % 64).astype(np.int32)
    path = _single_op_bundle(graph, tmp_path / "op.edgeq")
    device = ["nrf52840", "stm32f7", "cortex-m55", "rp2040"][seed % 4]
    want = Executor(graph, "reference").run_quantized(acts)["y"]
    got = simulate(path, device, {"x": acts["x"].astype(np.float32)}).outputs_q["y"]
    assert np.array_equal(got, want), (device, graph.nodes[0].attrs, graph.tensors["x"].shape)


@pytest.mark.parametrize("op", ["QAdd", "QMul"])
def test_sim_two_input_model_bit_exact(op, tmp_path):
    """Several inputs: packed back to back per sample in model order, each read into its arena slot."""
    rng = np.random.default_rng(7)
    graph, acts = _binary(rng, op)
    while len(acts) != 2:
        graph, acts = _binary(rng, op)
    path = _single_op_bundle(graph, tmp_path / "op.edgeq")
    want = Executor(graph, "reference").run_quantized(acts)["y"]
    got = simulate(path, "stm32f7", {k: v.astype(np.float32) for k, v in acts.items()}).outputs_q["y"]
    np.testing.assert_array_equal(got, want)


def test_dsp_kernels_are_compiled_for_dsp_cores_only(digits, tmp_path):
    path, inputs = digits
    for device, dsp in (("nrf52840", True), ("cortex-m55", True), ("rp2040", False)):
        simulate(path, device, {"input": inputs["input"][:1]}, build_dir=tmp_path / device)
        asm = subprocess.run(["arm-none-eabi-objdump", "-d", str(tmp_path / device / "fw.elf")], capture_output=True,
                             text=True, check=True).stdout
        assert ("smlatb" in asm and "smlad" in asm) == dsp, device


def test_sim_profile_per_node_instructions_add_up(zoo):
    path, inputs = zoo
    plain = simulate(path, "nrf52840", inputs)
    prof = simulate(path, "nrf52840", inputs, profile=True)
    for k in plain.outputs_q:
        np.testing.assert_array_equal(prof.outputs_q[k], plain.outputs_q[k])
    nodes, total = prof.report["nodes"], prof.report["instructions"]["median"]
    assert [n["name"] for n in nodes] == [n.name for n in edgeq.load(path).graph.nodes]
    assert all(n["instructions"] > 0 for n in nodes)
    # Node by node costs only the per-node call and timer reads: within 1% of one invoke.
    assert abs(sum(n["instructions"] for n in nodes) - total) < 0.01 * total
    assert abs(total - plain.report["instructions"]["median"]) < 0.01 * total


def _tiny_profile(tmp: Path, ram: int, flash: int) -> Path:
    text = resources.files("edgeq.device_profiles").joinpath("nrf52840.toml").read_text()
    text = text.replace('id = "nrf52840"', 'id = "tiny"').replace("ram_bytes = 262144", f"ram_bytes = {ram}")
    text = text.replace("flash_bytes = 1048576", f"flash_bytes = {flash}")
    path = tmp / "tiny.toml"
    path.write_text(text)
    return path


def test_sim_model_too_big_for_ram_says_so(digits, tmp_path):
    path, inputs = digits
    profile = _tiny_profile(tmp_path, ram=16384, flash=1048576)
    with pytest.raises(DoesNotFitError, match=r"model does not fit tiny: RAM overflowed by \d+ bytes \(budget 16384"):
        simulate(path, str(profile), inputs)


def test_cli_sim_model_too_big_for_flash_exit_2(digits, tmp_path):
    path, inputs = digits
    profile = _tiny_profile(tmp_path, ram=262144, flash=8192)
    np.save(tmp_path / "x.npy", inputs["input"])
    out = subprocess.run([sys.executable, "-m", "edgeq.cli", "sim", str(path), "--device", str(profile), "--input",
                          "x.npy", "-o", "y.npy"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not fit tiny: FLASH overflowed by" in lines[0] and "budget 8192" in lines[0]
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize("device_id, body, match, timeout", [
    ("stm32f7", "    for (;;) {\n    }\n", r"did not finish within 1 s .*-d int,guest_errors", 1.0),
    ("nrf52840", '    __asm__ volatile("udf #0");\n    return 0;\n', r"exited with status 70 .*the firmware faulted", 20.0),
], ids=["hang", "fault"])
def test_sim_bad_firmware_is_reported(digits, tmp_path, device_id, body, match, timeout):
    path, _ = digits
    device = mcu_device(device_id)
    export_c(path, tmp_path, device)
    main_c = tmp_path / "bad.c"
    main_c.write_text("int main(void)\n{\n" + body + "}\n")
    fw = build_firmware(tmp_path, device, main_c)
    with pytest.raises(FirmwareError, match=match):
        run_firmware(fw["elf"], device, tmp_path, timeout=timeout)


def test_cli_sim_json_and_timeout(digits, tmp_path):
    path, inputs = digits
    np.save(tmp_path / "x.npy", inputs["input"][:2])
    ok = subprocess.run([sys.executable, "-m", "edgeq.cli", "sim", str(path), "--device", "stm32h7", "--input", "x.npy",
                         "-o", "y.npy", "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    rep = json.loads(ok.stdout)
    assert set(rep["elf"]) == {"text", "data", "bss"} and rep["ram"]["budget_bytes"] == 524288
    assert rep["instructions"]["median"] > 0 and "icount" in rep["instructions"]["method"]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), edgeq.load(path).run(inputs["input"][:2], backend="c")["logits"])
    hung = subprocess.run([sys.executable, "-m", "edgeq.cli", "sim", str(path), "--device", "stm32h7", "--input",
                           "x.npy", "-o", "z.npy", "--timeout", "0.001"], capture_output=True, text=True, cwd=tmp_path)
    assert hung.returncode == 2 and "did not finish within" in hung.stderr and len(hung.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "z.npy").exists()


def test_cli_sim_missing_toolchain_names_install_command(digits, tmp_path):
    path, inputs = digits
    np.save(tmp_path / "x.npy", inputs["input"][:1])
    env = dict(os.environ, PATH=str(tmp_path / "empty"))
    out = subprocess.run([sys.executable, "-m", "edgeq.cli", "sim", str(path), "--device", "nrf52840", "--input", "x.npy"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 2
    assert "arm-none-eabi-gcc" in out.stderr and "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm" in out.stderr


def test_cli_export_rejects_unknown_format_and_non_mcu_device(digits, tmp_path):
    path, _ = digits
    for extra, msg in ((["--format", "nope"], "unknown export format 'nope'"),
                       (["--device", "rpi5"], "not a Cortex-M microcontroller profile")):
        out = subprocess.run([sys.executable, "-m", "edgeq.cli", "export", str(path), "-o", "d", *extra],
                             capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 2 and msg in out.stderr, out.stderr
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
