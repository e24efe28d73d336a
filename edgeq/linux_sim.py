"""``edgeq sim`` for AArch64 Linux profiles (``rpi5``, the CPU side of ``android-npu``): the bundle's
generated C, cross-compiled and run under user-mode QEMU.

Steps: quantize the float inputs exactly as ``edgeq run`` does; export the C project (``edgeq.export_c``,
no firmware files); compile it with the profile's ``aarch64-linux-gnu-gcc`` flags, statically linked,
with the Linux board support (``edgeq/data/linux/edgeq_board.c``) behind the same ``sim_main.c`` the
microcontroller firmware uses; run ``qemu-aarch64 -cpu <emulator_cpu>``; dequantize.

This verifies that the C the device compiles gives ``edgeq run``'s outputs bit for bit. It does not time
the device: user-mode QEMU has no instruction counter (Debian's qemu-user ships no TCG plugins), so the
report gives the emulation's wall time, labelled as such.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bundle import LoadedBundle, read_bundle
from .devices import DeviceProfile
from .errors import ExportError, FirmwareError, ToolchainError
from .export_c import MCU_CFLAGS, export_c, resolve_device
from .mcu_sim import (REPORT_LINE, SimResult, compile_project, find_tools, read_outputs, run_emulated,
                       write_inputs)
from .runtimes.registry import node_macs

__all__ = ["linux_device", "simulate_linux"]

INSTALL_HINT = "sudo apt-get install gcc-aarch64-linux-gnu qemu-user"
DEFAULT_TIMEOUT_S = 120.0
# A Linux stack (8 MiB) holds the kernels' host-sized scratch, so the same code paths run as on the host.
LINUX_CFLAGS = ("-DEDGEQ_HOST_SCRATCH",)
LINUX_LDFLAGS = ("-static",)


def linux_device(spec: str | DeviceProfile) -> DeviceProfile:
    """Resolve ``spec`` and check that it is an AArch64 Linux profile run under ``qemu-aarch64``."""
    device = resolve_device(spec) if isinstance(spec, str) else spec
    if device.toolchain.emulator != "qemu-aarch64":
        raise ExportError(f"device '{device.id}' is not an AArch64 Linux profile (emulator "
                          f"{device.toolchain.emulator or 'none'}); this simulator needs qemu-aarch64")
    return device


def _tools(device: DeviceProfile) -> dict[str, str]:
    return find_tools(device, {"cc": device.toolchain.cc, "qemu": device.toolchain.emulator}, INSTALL_HINT)


def build_linux(project: Path, device: DeviceProfile, extra_cflags: Sequence[str] = ()) -> dict[str, Any]:
    """Compile and statically link the exported ``project`` with ``sim_main.c`` and the Linux board for
    ``device``. Returns {"exe": path, "warnings": [...], "cflags": [...]}."""
    tools = _tools(device)
    cflags = [*device.toolchain.cflags, *MCU_CFLAGS, *LINUX_CFLAGS, *extra_cflags]
    data = resources.files("edgeq").joinpath("data")
    (project / "sim_main.c").write_text(data.joinpath("mcu", "sim_main.c").read_text())
    (project / "edgeq_board.h").write_text(data.joinpath("mcu", "edgeq_board.h").read_text())
    (project / "edgeq_board.c").write_text(data.joinpath("linux", "edgeq_board.c").read_text())
    objs, warnings = compile_project(tools["cc"], cflags, project,
                                     [project / n for n in ("sim_main.c", "model.c", "edgeq_board.c")])
    exe = project / "model.elf"
    proc = subprocess.run([tools["cc"], *LINUX_LDFLAGS, *map(str, objs), "-lm", "-o", str(exe)],
                          capture_output=True, text=True, cwd=project)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no message"]
        raise ToolchainError(f"linking for {device.id} failed: {lines[-1].split(': ', 1)[-1]}")
    return {"exe": exe, "warnings": warnings, "cflags": cflags}


def run_linux(exe: Path, device: DeviceProfile, workdir: Path, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Run ``exe`` under ``qemu-aarch64 -cpu <emulator_cpu>`` in ``workdir``; return its stdout. Raises
    :class:`FirmwareError` on a timeout, a crash or a non-zero exit status."""
    cmd = [_tools(device)["qemu"]]
    if device.toolchain.emulator_cpu:
        cmd += ["-cpu", device.toolchain.emulator_cpu]
    cmd.append(str(exe))
    proc = run_emulated(cmd, workdir, timeout,
                        f"program for {device.id} did not finish within {timeout:g} s under qemu-aarch64 (hung?)")
    if proc.returncode != 0:
        why = {3: "file I/O failed", 4: "edgeq_model_invoke returned an error"}.get(
            proc.returncode, (proc.stderr.strip() or proc.stdout.strip())[-300:] or "killed by a signal")
        raise FirmwareError(f"program for {device.id} exited with status {proc.returncode} under qemu-aarch64: {why}")
    return proc.stdout


def simulate_linux(bundle: str | Path | LoadedBundle, device: str | DeviceProfile, inputs: dict[str, np.ndarray],
                   timeout: float = DEFAULT_TIMEOUT_S, build_dir: str | Path | None = None,
                   extra_cflags: Sequence[str] = ()) -> SimResult:
    """Run float ``inputs`` (batch first) through the bundle's C for ``device`` under qemu-aarch64.

    Outputs equal ``edgeq run``'s bit for bit. ``build_dir`` keeps the project, program and I/O files;
    by default a temporary directory. ``extra_cflags`` go after the profile's flags (e.g. ``-O3``)."""
    lb = bundle if isinstance(bundle, LoadedBundle) else read_bundle(bundle)
    dev = linux_device(device)
    _tools(dev)
    g = lb.graph
    with tempfile.TemporaryDirectory(prefix="edgeq-sim-") as tmp:
        work = (Path(build_dir) if build_dir is not None else Path(tmp)).resolve()
        t0 = time.perf_counter()
        exp = export_c(lb, work)
        build = build_linux(work, dev, extra_cflags)
        build_s = time.perf_counter() - t0
        n = write_inputs(lb, inputs, work)
        t1 = time.perf_counter()
        console = run_linux(build["exe"], dev, work, timeout)
        sim_s = time.perf_counter() - t1
        outputs, outputs_q = read_outputs(lb, exp.outputs, work, n, f"program for {dev.id}")
        exe_bytes = build["exe"].stat().st_size
    ns = [int(m.group(3)) for line in console.splitlines()
          if (m := REPORT_LINE.match(line.strip())) and m.group(1) == "SAMPLE"]
    if len(ns) != n:
        raise FirmwareError(f"program for {dev.id} did not report its samples (output: {console.strip()[-200:]!r})")
    report = {
        "device": dev.id, "core": dev.core, "clock_mhz": dev.clock_mhz,
        "emulator": f"qemu-aarch64 -cpu {dev.toolchain.emulator_cpu}".strip(), "samples": n,
        "cflags": build["cflags"], "executable_bytes": exe_bytes,
        "arena_bytes": exp.arena_bytes, "constants_bytes": exp.pool_bytes,
        "macs_per_sample": sum(node_macs(nd, g) for nd in g.nodes),
        "emulated_ms_per_sample": round(statistics.median(ns) / 1e6, 3),
        "timing_note": "wall time of the emulation on this host, not of the device: user-mode QEMU has no "
                       "instruction counter",
        "compiler_warnings": build["warnings"],
        "build_s": round(build_s, 3), "sim_wall_s": round(sim_s, 3),
    }
    return SimResult(outputs, outputs_q, report)
