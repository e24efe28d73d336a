"""``edgeq sim``: build a bundle's generated C for a Cortex-M device and run it under QEMU.

Steps: quantize the float inputs exactly as ``edgeq run`` does; export the C project with the device's
firmware files (``edgeq.export_c``); compile with the profile's ``arm-none-eabi-gcc`` flags and link
against a linker script whose FLASH/RAM lengths are the device's budgets (a model that does not fit
fails here, reported in one line); run ``qemu-system-arm -M <emulator_machine>`` with semihosting, the
int8 samples going in and coming out through host files; dequantize.

Instruction counts: QEMU runs with ``-icount shift=0``, so each guest instruction advances virtual time
by exactly 1 ns; the firmware reads SysTick (core clock) around every ``edgeq_model_run`` and times a
loop of known length, which converts ticks to instructions. It is an instruction count (resolution one
SysTick tick, tens of instructions), not a cycle count: QEMU models no pipeline, caches or flash wait
states. Stack: a static bound from ``-fcallgraph-info=su`` (every frame on the deepest call path, plus
INTERRUPT_AND_LIBRARY_STACK for what gcc does not see) and the measured high-water mark of a painted stack.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bundle import LoadedBundle, read_bundle
from .devices import DeviceProfile
from .errors import DoesNotFitError, FirmwareError, ToolchainError
from .export_c import (DEFAULT_STACK_BYTES, INSTALL_HINT, MCU_CFLAGS, MCU_LDFLAGS, MCU_LIBS, export_c, mcu_device)
from .runtimes.executor import Executor, dequantize, quantize
from .runtimes.registry import node_macs

__all__ = ["SimResult", "build_firmware", "elf_sizes", "read_outputs", "run_emulated", "run_firmware", "simulate",
           "stack_bound", "write_inputs"]

# Extra stack the static bound does not see: an exception frame with lazy FP state (up to 104 bytes on
# v7E-M/v8.1-M), SysTick_Handler's frame, and library leaf calls (memcpy, memset, 64-bit division).
INTERRUPT_AND_LIBRARY_STACK = 256
DEFAULT_TIMEOUT_S = 60.0
REPORT_LINE = re.compile(r"^EDGEQ_(CALIB|SAMPLE|STACK|RC|NODE) (\d+) (\d+)$")
_FIRMWARE_EXIT = {3: "host file I/O through semihosting failed", 70: "the firmware faulted (EDGEQ_FAULT)"}


@dataclass
class SimResult:
    """Outputs of a simulated run (float, dequantized; and the raw int8) plus the report ``--json`` prints."""

    outputs: dict[str, np.ndarray]
    outputs_q: dict[str, np.ndarray]
    report: dict[str, Any]


def find_tools(device: DeviceProfile, names: dict[str, str], install_hint: str) -> dict[str, str]:
    """Full paths of the programs ``names`` (role -> program) on PATH, or a one-line ToolchainError with
    the command that installs them."""
    found = {k: shutil.which(v) for k, v in names.items()}
    missing = [names[k] for k, v in found.items() if v is None]
    if missing:
        raise ToolchainError(f"{', '.join(missing)} not found on PATH (needed to simulate {device.id}); "
                             f"install with: {install_hint}")
    return {k: str(v) for k, v in found.items()}


def _tools(device: DeviceProfile) -> dict[str, str]:
    cc = device.toolchain.cc
    return find_tools(device, {"cc": cc, "size": cc[: -len("gcc")] + "size" if cc.endswith("gcc") else "size",
                               "qemu": device.toolchain.emulator}, INSTALL_HINT)


def _cache_dir() -> Path:
    from .runtimes.c_backend import cache_root
    return cache_root() / "mcu"


def _compile(cc: str, flags: Sequence[str], src: Path, obj: Path) -> str:
    """Compile one file (with a call-graph .ci beside the object); return the compiler's warnings."""
    cmd = [cc, *flags, "-fcallgraph-info=su", "-c", str(src), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=src.parent)
    if proc.returncode != 0:
        first = next((l for l in proc.stderr.splitlines() if "error" in l), proc.stderr.strip()[:300])
        raise ToolchainError(f"{Path(cc).name} failed on {src.name}: {first}")
    return proc.stderr.strip()


def _cached_kernels(cc: str, flags: Sequence[str], src: Path) -> tuple[Path, str]:
    """The kernels object for these flags, compiled once and kept in the cache (it is the slow file)."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([version, *flags, src.read_text()]).encode()).hexdigest()[:24]
    root = _cache_dir() / key
    obj = root / "edgeq_kernels.o"
    if obj.is_file() and (root / "edgeq_kernels.ci").is_file():
        return obj, (root / "warnings.txt").read_text()
    root.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".build-", dir=root.parent))
    try:
        shutil.copy(src, stage / src.name)
        shutil.copy(src.with_name("edgeq_kernels.h"), stage / "edgeq_kernels.h")
        warnings = _compile(cc, flags, stage / src.name, stage / "edgeq_kernels.o")
        (stage / "warnings.txt").write_text(warnings)
        try:
            os.replace(stage, root)
        except OSError:  # another process published the same build first
            pass
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return obj, (root / "warnings.txt").read_text()


def stack_bound(ci_files: Sequence[Path], root: str = "Reset_Handler") -> tuple[int, list[str]]:
    """Deepest call path from ``root`` in gcc ``-fcallgraph-info=su`` files: (bytes, function names).

    Functions without a recorded frame (library leaves) count as 0 bytes; recursion raises."""
    node = re.compile(r'node: \{ title: "([^"]+)" label: "([^"]*)"')
    edge = re.compile(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"')
    frames: dict[str, int] = {}
    calls: dict[str, set[str]] = {}
    for path in ci_files:
        for line in path.read_text().splitlines():
            if m := node.match(line):
                size = re.search(r"\\n(\d+) bytes", m.group(2))
                if size:
                    frames[m.group(1)] = int(size.group(1))
            elif m := edge.match(line):
                calls.setdefault(m.group(1), set()).add(m.group(2))

    @functools.lru_cache(maxsize=None)
    def deepest(fn: str, depth: int = 0) -> tuple[int, tuple[str, ...]]:
        if depth > 200:
            raise ToolchainError(f"call graph from {root} is recursive (through {fn}); no static stack bound")
        best: tuple[int, tuple[str, ...]] = (0, ())
        for callee in sorted(calls.get(fn, ())):
            best = max(best, deepest(callee, depth + 1))
        return frames.get(fn, 0) + best[0], (fn, *best[1])

    total, path = deepest(root)
    return total, [p.rsplit(":", 1)[-1] for p in path]


def _fit_error(device: DeviceProfile, stderr: str, arena: int, pool: int, stack: int) -> DoesNotFitError | None:
    over = {m.group(1): int(m.group(2)) for m in re.finditer(r"region `(\w+)' overflowed by (\d+) bytes", stderr)}
    if not over:
        return None
    parts = []
    if "RAM" in over:
        parts.append(f"RAM overflowed by {over['RAM']} bytes (budget {device.ram_bytes} bytes; arena {arena} + "
                     f"stack reserve {stack} + firmware data)")
    if "FLASH" in over:
        parts.append(f"FLASH overflowed by {over['FLASH']} bytes (budget {device.flash_bytes} bytes; "
                     f"constants {pool} + code)")
    return DoesNotFitError(f"model does not fit {device.id}: {'; '.join(parts)}")


def compile_project(cc: str, cflags: Sequence[str], project: Path, sources: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """Objects for the exported kernels (cached) and ``sources`` (in ``project``), and the compiler's warnings."""
    kernels_o, kwarn = _cached_kernels(cc, cflags, project / "edgeq_kernels.c")
    warnings = [kwarn] if kwarn else []
    objs = [kernels_o]
    for src in sources:
        obj = project / (src.stem + ".o")
        w = _compile(cc, [*cflags, f"-I{project}"], src, obj)
        warnings += [w] if w else []
        objs.append(obj)
    return objs, warnings


def build_firmware(project: Path, device: DeviceProfile, main_c: Path, arena: int = 0, pool: int = 0,
                   stack_bytes: int = DEFAULT_STACK_BYTES, extra_cflags: Sequence[str] = ()) -> dict[str, Any]:
    """Compile and link ``main_c`` with the exported project in ``project`` (which has the device files);
    ``extra_cflags`` go after the profile's flags (e.g. ``-DEDGEQ_NO_SIMD`` or scratch budgets).

    Returns {"elf": path, "warnings": [...], "stack_static_bytes": n, "stack_path": [...]}, where n is the
    deepest call path's frames plus INTERRUPT_AND_LIBRARY_STACK. Raises
    :class:`DoesNotFitError` when the link overflows a memory region, :class:`ToolchainError` otherwise."""
    tools = _tools(device)
    cflags = [*device.toolchain.cflags, *MCU_CFLAGS, *extra_cflags]
    objs, warnings = compile_project(tools["cc"], cflags, project, [main_c, project / "model.c", project / "edgeq_board.c"])
    elf = project / "fw.elf"
    cmd = [tools["cc"], *device.toolchain.cflags, *MCU_LDFLAGS, "-T", str(project / "link.ld"),
           *map(str, objs), *MCU_LIBS, "-o", str(elf)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=project)
    if proc.returncode != 0:
        fit = _fit_error(device, proc.stderr, arena, pool, stack_bytes)
        if fit is not None:
            raise fit
        lines = proc.stderr.strip().splitlines() or ["no message"]
        first = next((l for l in lines if "undefined reference" in l or "error:" in l), lines[-1])
        raise ToolchainError(f"linking the firmware for {device.id} failed: {first.split(': ', 1)[-1]}")
    cis = [o.with_suffix(".ci") for o in objs]
    static, path = stack_bound(cis)
    return {"elf": elf, "warnings": warnings, "stack_static_bytes": static + INTERRUPT_AND_LIBRARY_STACK,
            "stack_path": path}


def elf_sizes(elf: Path, device: DeviceProfile) -> dict[str, int]:
    """text/data/bss of an ELF from ``arm-none-eabi-size`` (berkeley format)."""
    out = subprocess.run([_tools(device)["size"], str(elf)], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
    return {"text": text, "data": data, "bss": bss}


def run_emulated(cmd: Sequence[str], workdir: Path, timeout: float, hung: str) -> subprocess.CompletedProcess:
    """Run an emulator command in ``workdir`` (no stdin, output captured); ``hung`` is the one-line
    FirmwareError raised when it outlives ``timeout`` seconds."""
    try:
        return subprocess.run(list(cmd), cwd=workdir, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise FirmwareError(hung) from None


def run_firmware(elf: Path, device: DeviceProfile, workdir: Path, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Run ``elf`` under qemu-system-arm in ``workdir`` (semihosting files are relative to it); return its
    console output. Raises :class:`FirmwareError` on a timeout, a fault or a non-zero exit status."""
    machine = device.toolchain.emulator_machine
    console = workdir / "console.txt"
    console.unlink(missing_ok=True)
    # The semihosting console goes to a file: on a pipe QEMU would mix it into its own stderr.
    cmd = [_tools(device)["qemu"], "-M", machine, "-display", "none", "-serial", "null", "-monitor", "null",
           "-chardev", f"file,id=con,path={console}", "-semihosting-config", "enable=on,target=native,chardev=con",
           "-icount", "shift=0", "-kernel", str(elf)]
    proc = run_emulated(cmd, workdir, timeout, f"firmware for {device.id} did not finish within {timeout:g} s under "
                        f"qemu-system-arm -M {machine} (hung?); add `-d int,guest_errors` to the QEMU command to see faults")
    out = console.read_text(errors="replace") if console.is_file() else ""
    if proc.returncode != 0:
        rc = re.search(r"^EDGEQ_RC \d+ (\d+)$", out, re.M)
        why = (f"edgeq_model_run returned -{rc.group(1)}" if rc else
               _FIRMWARE_EXIT.get(proc.returncode, (proc.stderr.strip() or out.strip())[-300:] or "no output"))
        raise FirmwareError(f"firmware for {device.id} exited with status {proc.returncode} under qemu-system-arm "
                            f"-M {machine}: {why}")
    return out


def simulate(bundle: str | Path | LoadedBundle, device: str | DeviceProfile, inputs: dict[str, np.ndarray],
             timeout: float = DEFAULT_TIMEOUT_S, stack_bytes: int = DEFAULT_STACK_BYTES,
             build_dir: str | Path | None = None, extra_cflags: Sequence[str] = (),
             profile: bool = False) -> SimResult:
    """Run float ``inputs`` (batch first) through the bundle's firmware for ``device`` under QEMU.

    Outputs equal ``edgeq run``'s bit for bit (same quantization, same integer program and kernels).
    ``build_dir`` keeps the project, firmware and I/O files there; by default a temporary directory.
    ``extra_cflags`` are added to every compile (see :func:`build_firmware`). ``profile`` runs the
    samples node by node and adds each node's instruction count to the report."""
    lb = bundle if isinstance(bundle, LoadedBundle) else read_bundle(bundle)
    dev = mcu_device(device)
    _tools(dev)
    with tempfile.TemporaryDirectory(prefix="edgeq-sim-") as tmp:
        work = (Path(build_dir) if build_dir is not None else Path(tmp)).resolve()
        t0 = time.perf_counter()
        exp = export_c(lb, work, dev, stack_bytes)
        main_c = work / "sim_main.c"
        main_c.write_text(("#define EDGEQ_SIM_PROFILE 1\n" if profile else "")
                          + resources.files("edgeq").joinpath("data", "mcu", "sim_main.c").read_text())
        fw = build_firmware(work, dev, main_c, exp.arena_bytes, exp.pool_bytes, stack_bytes, extra_cflags)
        need = fw["stack_static_bytes"]
        if need > stack_bytes:
            raise DoesNotFitError(f"stack reserve of {stack_bytes} bytes is below the kernels' static bound of {need} "
                                  f"bytes ({' -> '.join(fw['stack_path'])}); raise it with --stack-bytes")
        build_s = time.perf_counter() - t0
        n = write_inputs(lb, inputs, work)
        t1 = time.perf_counter()
        console = run_firmware(fw["elf"], dev, work, timeout)
        sim_s = time.perf_counter() - t1
        outputs, outputs_q = read_outputs(lb, exp.outputs, work, n, f"firmware for {dev.id}")
        sizes = elf_sizes(fw["elf"], dev)
    report = _report(dev, exp, fw, sizes, console, n, lb, build_s, sim_s, stack_bytes, extra_cflags)
    return SimResult(outputs, outputs_q, report)


def write_inputs(lb: LoadedBundle, inputs: dict[str, np.ndarray], work: Path) -> int:
    """Check and quantize float ``inputs`` as ``edgeq run`` does and write them to ``work/input.bin``
    (int8, samples back to back, inputs in model order); clears any old output.bin. Returns the batch."""
    g = lb.graph
    n = Executor(g, "reference", lb.plan).check_inputs(inputs)
    np.concatenate([quantize(inputs[k], g.tensors[k]).reshape(n, -1) for k in g.inputs], axis=1).tofile(work / "input.bin")
    (work / "output.bin").unlink(missing_ok=True)
    return n


def read_outputs(lb: LoadedBundle, entries: list[dict[str, Any]], work: Path, n: int,
                 who: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``work/output.bin`` split into the model's outputs: (dequantized, raw int8). ``who`` names the
    program in the error raised when it wrote the wrong number of bytes."""
    out_file = work / "output.bin"
    raw = np.fromfile(out_file, dtype=np.int8) if out_file.is_file() else np.zeros(0, np.int8)
    total = sum(e["bytes"] for e in entries)
    if raw.size != n * total:
        raise FirmwareError(f"{who} wrote {raw.size} output bytes, expected {n * total}")
    raw = raw.reshape(n, total)
    outputs_q, col = {}, 0
    for e in entries:
        outputs_q[e["name"]] = raw[:, col: col + e["bytes"]].reshape((n,) + tuple(lb.graph.tensors[e["name"]].shape[1:]))
        col += e["bytes"]
    return {k: dequantize(v, lb.graph.tensors[k]) for k, v in outputs_q.items()}, outputs_q


def _report(device: DeviceProfile, exp: Any, fw: dict[str, Any], sizes: dict[str, int], console: str, n: int,
            lb: LoadedBundle, build_s: float, sim_s: float, stack_bytes: int,
            extra_cflags: Sequence[str]) -> dict[str, Any]:
    calib, samples, stack_used = None, [], None
    node_ticks: dict[int, list[int]] = {}
    for line in console.splitlines():
        m = REPORT_LINE.match(line.strip())
        if not m:
            continue
        kind, a, b = m.group(1), int(m.group(2)), int(m.group(3))
        if kind == "CALIB":
            calib = (a, b)
        elif kind == "SAMPLE":
            samples.append(b)
        elif kind == "STACK":
            stack_used = a
        elif kind == "NODE":
            node_ticks.setdefault(a, []).append(b)
    if calib is None or len(samples) != n or stack_used is None:
        raise FirmwareError(f"firmware for {device.id} did not report its figures (console: {console.strip()[-200:]!r})")
    per_tick = 2 * calib[1] / calib[0]
    insns = [round(t * per_tick) for t in samples]
    median = int(statistics.median(insns))
    macs_per_node = [node_macs(nd, lb.graph) for nd in lb.graph.nodes]
    macs = sum(macs_per_node)
    report = {
        "device": device.id, "core": device.core, "clock_mhz": device.clock_mhz,
        "emulator": f"qemu-system-arm -M {device.toolchain.emulator_machine}",
        "cflags": [*device.toolchain.cflags, *MCU_CFLAGS, *extra_cflags], "samples": n,
        "elf": sizes,
        "flash": {"used_bytes": sizes["text"] + sizes["data"], "budget_bytes": device.flash_bytes,
                  "constants_bytes": exp.pool_bytes},
        "ram": {"used_bytes": sizes["data"] + sizes["bss"], "budget_bytes": device.ram_bytes,
                "arena_bytes": exp.arena_bytes, "stack_reserve_bytes": stack_bytes,
                "stack_static_bound_bytes": fw["stack_static_bytes"], "stack_static_path": fw["stack_path"],
                "stack_used_bytes": stack_used},
        "instructions": {
            "method": "qemu -icount shift=0 (1 ns per instruction); SysTick on the core clock read around "
                      "edgeq_model_run, converted with a timed loop of known length; an instruction count, "
                      "not cycles (no pipeline, cache or flash wait-state model)",
            "per_sample": insns, "median": median, "resolution": round(per_tick, 3),
        },
        "macs_per_sample": macs,
        "instructions_per_mac": round(median / macs, 2) if macs else None,
        "est_ms_at_1_ipc": round(median / (device.clock_mhz * 1e3), 3),
        "compiler_warnings": fw["warnings"],
        "build_s": round(build_s, 3), "sim_wall_s": round(sim_s, 3),
    }
    if node_ticks:
        report["nodes"] = [{"name": node.name, "op": node.op, "macs": m,
                            "instructions": round(statistics.median(node_ticks.get(i, [0])) * per_tick)}
                           for i, (node, m) in enumerate(zip(lb.graph.nodes, macs_per_node))]
    return report
