"""``edgeq export --format c``: a bundle as a self-contained C99 project for microcontrollers.

The project is the bundle's program run by the same portable kernels as the host C backend
(``runtimes/c/edgeq_kernels.c``, copied verbatim behind a preamble of MCU-sized scratch budgets):

- ``model.c`` / ``model.h``: the constant pool as a const 64-aligned byte array (flash), the program
  words as a const int64 array, a static arena of exactly the planned size, the input/output
  descriptors with their scale and zero point, and ``edgeq_model_run``. Nothing allocates.
- ``edgeq_kernels.c`` / ``edgeq_kernels.h``: the kernels.

With an MCU device profile it also writes what a Cortex-M firmware needs: ``link.ld`` (FLASH and RAM
lengths are the device's budgets, so a model that does not fit fails to link), ``edgeq_board.c/.h``
(start-up, semihosting, SysTick) and ``device.mk`` (compiler, flags, QEMU machine) for Makefiles such
as ``apps/mcu_firmware/``. ``edgeq.mcu_sim`` builds and runs exactly these files.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .bundle import LoadedBundle, read_bundle
from .devices import DeviceProfile, get_device, load_profile
from .errors import ExportError, InputError
from .runtimes.program import compile_program

# Kernel scratch budgets for MCU builds (edgeq_kernels.h explains each). Chosen under QEMU on Cortex-M7
# (benchmarks/RESULTS.md): the plane-kernel input tile at 8 KB and the dot path's buffers at 2/2/8 KB take
# 17% fewer instructions on the MobileNetV2-style net and 50% fewer on the digits CNN than 2/1/1/4 KB
# (portable C), for 7 KB more stack.
MCU_SCRATCH: dict[str, int] = {
    "EDGEQ_SCRATCH_BYTES": 8192,
    "EDGEQ_TILE_BYTES": 2048,
    "EDGEQ_PATCH_BYTES": 2048,
    "EDGEQ_WEIGHT_BYTES": 8192,
}
# Stack reserved by the linker script. With MCU_SCRATCH the deepest kernel path (the dot convolution)
# needs about 24 KB by gcc's -fcallgraph-info bound (`edgeq sim --json` reports it for each build and
# refuses a reserve below it); the rest is room for an application's own frames.
DEFAULT_STACK_BYTES = 28672
# Flags every firmware build uses besides the profile's CPU flags.
MCU_CFLAGS = ("-std=c99", "-O2", "-ffunction-sections", "-fdata-sections", "-Wall", "-Wextra")
MCU_LDFLAGS = ("-nostartfiles", "--specs=nosys.specs", "-Wl,--gc-sections")
MCU_LIBS = ("-lm",)
# The two files a firmware adds to the portable project (its main.c is its own).
BOARD_SOURCES = ("model.c", "edgeq_kernels.c", "edgeq_board.c")

_KERNELS = "edgeq.runtimes"
INSTALL_HINT = "sudo apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"


@dataclass
class CExport:
    """What :func:`export_c` wrote."""

    directory: Path
    files: list[str]
    arena_bytes: int
    pool_bytes: int
    program_words: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    device: DeviceProfile | None = None
    stack_bytes: int | None = None
    scratch: dict[str, int] = field(default_factory=lambda: dict(MCU_SCRATCH))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (``edgeq export --json``)."""
        return {"directory": str(self.directory), "files": self.files, "arena_bytes": self.arena_bytes,
                "pool_bytes": self.pool_bytes, "program_words": self.program_words, "inputs": self.inputs,
                "outputs": self.outputs, "device": self.device.id if self.device else None,
                "stack_bytes": self.stack_bytes, "scratch": self.scratch}


def resolve_device(spec: str) -> DeviceProfile:
    """A device profile by id, or by path to a profile TOML file (e.g. a board of your own)."""
    if spec.endswith(".toml"):
        path = Path(spec)
        if not path.is_file():
            raise InputError(f"device profile file '{spec}' does not exist")
        return load_profile(path)
    return get_device(spec)


def mcu_device(spec: str | DeviceProfile) -> DeviceProfile:
    """Resolve ``spec`` and check that it is a Cortex-M profile edgeq can build firmware for."""
    device = resolve_device(spec) if isinstance(spec, str) else spec
    tc = device.toolchain
    if device.device_class != "mcu" or tc.emulator != "qemu-system-arm" or not tc.emulator_machine:
        raise ExportError(f"device '{device.id}' is not a Cortex-M microcontroller profile (class {device.device_class}, "
                          f"emulator {tc.emulator or 'none'}); MCU firmware needs class 'mcu' and qemu-system-arm")
    return device


def _template(name: str) -> str:
    return importlib.resources.files("edgeq").joinpath("data", "mcu", name).read_text()


def _fill(text: str, values: dict[str, Any]) -> str:
    missing = set(re.findall(r"@([A-Z_0-9]+)@", text)) - set(values)
    if missing:
        raise AssertionError(f"template placeholders without a value: {sorted(missing)}")
    return re.sub(r"@([A-Z_0-9]+)@", lambda m: str(values[m.group(1)]), text)


def _c_string(s: str) -> str:
    out = []
    for ch in s.encode():
        out.append(chr(ch) if 32 <= ch < 127 and ch not in b'"\\?' else f"\\{ch:03o}")
    return '"' + "".join(out) + '"'


def _c_float(x: float) -> str:
    # Hex float literals are exact: the constant is the float32 the host runtime uses, bit for bit.
    return float(np.float32(x)).hex() + "f"


_HEX = [f"0x{b:02x}" for b in range(256)]


def _rows(items: list[str], per_row: int) -> str:
    return "\n".join("    " + ", ".join(items[i:i + per_row]) + "," for i in range(0, len(items), per_row))


def _io_rows(lb: LoadedBundle, names: list[str]) -> tuple[list[dict[str, Any]], str]:
    g, plan = lb.graph, lb.plan
    entries, rows = [], []
    for name in names:
        t = g.tensors[name]
        shape = (1,) + tuple(t.shape[1:])
        entry = {"name": name, "shape": list(shape), "bytes": t.sample_nbytes, "arena_offset": plan.offsets[name],
                 "scale": float(np.float32(t.scale[0])), "zero_point": int(t.zero_point[0])}
        entries.append(entry)
        rows.append(f"    {{{_c_string(name)}, {entry['bytes']}, {entry['arena_offset']}, {len(shape)}, "
                    f"{{{', '.join(map(str, shape))}}}, {_c_float(entry['scale'])}, {entry['zero_point']}}},")
    return entries, "\n".join(rows)


def _io_macros(kind: str, entries: list[dict[str, Any]]) -> list[str]:
    lines = []
    for i, e in enumerate(entries):
        p = f"EDGEQ_MODEL_{kind}{i}"
        lines += [f"#define {p}_BYTES {e['bytes']}", f"#define {p}_SCALE {_c_float(e['scale'])}",
                  f"#define {p}_ZERO_POINT ({e['zero_point']})"]
    return lines


def _check_exportable(lb: LoadedBundle) -> None:
    for kind, names in (("input", lb.graph.inputs), ("output", lb.graph.outputs)):
        for name in names:
            t = lb.graph.tensors[name]
            if t.dtype != "int8" or t.scale is None or len(t.scale) != 1:
                raise ExportError(f"{kind} '{name}' is {t.dtype} without one per-tensor scale; "
                                  f"C export needs int8 inputs and outputs")


def render_model(lb: LoadedBundle) -> tuple[dict[str, str], dict[str, Any]]:
    """model.c and model.h for a loaded bundle, plus the figures :class:`CExport` reports."""
    _check_exportable(lb)
    prog = compile_program(lb.graph, lb.plan, lb.const_offsets)
    pool = np.asarray(lb.pool, dtype=np.uint8)
    inputs, in_rows = _io_rows(lb, lb.graph.inputs)
    outputs, out_rows = _io_rows(lb, lb.graph.outputs)
    ranks = [len(e["shape"]) for e in inputs + outputs]
    digest = hashlib.sha256(Path(lb.path).read_bytes()).hexdigest()
    words = [str(int(w)) for w in prog.words]
    starts = [0]
    while starts[-1] < len(prog.words):  # record layout: [opcode, n_words, ...]
        starts.append(starts[-1] + int(prog.words[starts[-1] + 1]))
    values = {
        "VERSION": __version__, "SOURCE": Path(lb.path).name.replace("*/", "* /"), "SHA256": digest,
        "ARENA_BYTES": prog.arena_bytes, "POOL_BYTES": pool.size, "PROGRAM_WORDS": len(words),
        "N_INPUTS": len(inputs), "N_OUTPUTS": len(outputs),
        "INPUT_BYTES": sum(e["bytes"] for e in inputs), "OUTPUT_BYTES": sum(e["bytes"] for e in outputs),
        "MAX_RANK": max(ranks), "IO_MACROS": "\n".join(_io_macros("INPUT", inputs) + _io_macros("OUTPUT", outputs)),
        # C has no zero-length arrays; an empty pool or program still gets one (unused) element.
        "POOL_LEN": max(pool.size, 1), "POOL": _rows([_HEX[b] for b in pool.tolist()] or ["0"], 16),
        "PROGRAM_LEN": max(len(words), 1), "PROGRAM": _rows(words or ["0"], 12),
        "ARENA_LEN": max(prog.arena_bytes, 1), "INPUTS": in_rows, "OUTPUTS": out_rows,
        "N_NODES": len(starts) - 1, "NODE_WORDS": _rows([str(w) for w in starts], 16),
    }
    files = {"model.h": _fill(_template("model.h.in"), values), "model.c": _fill(_template("model.c.in"), values)}
    figures = {"arena_bytes": prog.arena_bytes, "pool_bytes": int(pool.size), "program_words": len(words),
               "inputs": inputs, "outputs": outputs}
    return files, figures


def render_kernels() -> dict[str, str]:
    """The portable kernels, the .c behind a preamble that sets MCU scratch budgets unless overridden."""
    root = importlib.resources.files(_KERNELS).joinpath("c")
    preamble = ["/* edgeq export: MCU-sized kernel scratch (stack) budgets; override with -D on the command line,",
                " * or define EDGEQ_HOST_SCRATCH to keep the kernels' own (host-sized) budgets. */",
                "#ifndef EDGEQ_HOST_SCRATCH"]
    for key, value in MCU_SCRATCH.items():
        preamble += [f"#ifndef {key}", f"#define {key} {value}", "#endif"]
    preamble += ["#endif", '#line 1 "edgeq_kernels.c"']
    return {"edgeq_kernels.h": root.joinpath("edgeq_kernels.h").read_text(),
            "edgeq_kernels.c": "\n".join(preamble) + "\n" + root.joinpath("edgeq_kernels.c").read_text()}


def render_board(device: DeviceProfile, stack_bytes: int = DEFAULT_STACK_BYTES) -> dict[str, str]:
    """Linker script, board support and device.mk for ``device`` (an MCU profile)."""
    if stack_bytes < 1024 or stack_bytes % 8:
        raise ExportError(f"stack size {stack_bytes} must be a multiple of 8 and at least 1024 bytes")
    tc = device.toolchain
    link = _fill(_template("link.ld.in"), {"DEVICE": f"{device.id} ({device.name})", "FLASH_BYTES": device.flash_bytes,
                                           "RAM_BYTES": device.ram_bytes, "STACK_BYTES": stack_bytes})
    mk = "\n".join([
        f"# Generated by edgeq {__version__} for {device.id} ({device.name}); include it from a Makefile.",
        f"EDGEQ_DEVICE = {device.id}",
        f"EDGEQ_CC = {tc.cc}",
        f"EDGEQ_CPU_FLAGS = {' '.join(tc.cflags)}",
        f"EDGEQ_CFLAGS = {' '.join(MCU_CFLAGS)}",
        f"EDGEQ_LDFLAGS = {' '.join(MCU_LDFLAGS)}",
        "EDGEQ_LDSCRIPT = link.ld",
        f"EDGEQ_LIBS = {' '.join(MCU_LIBS)}",
        f"EDGEQ_SOURCES = {' '.join(BOARD_SOURCES)}",
        f"EDGEQ_QEMU = {tc.emulator}",
        f"EDGEQ_QEMU_MACHINE = {tc.emulator_machine}",
        f"EDGEQ_FLASH_BYTES = {device.flash_bytes}",
        f"EDGEQ_RAM_BYTES = {device.ram_bytes}",
        f"EDGEQ_STACK_BYTES = {stack_bytes}",
        "",
    ])
    return {"link.ld": link, "device.mk": mk, "edgeq_board.c": _template("edgeq_board.c"),
            "edgeq_board.h": _template("edgeq_board.h")}


def write_files(directory: Path, files: dict[str, str]) -> None:
    """Write ``files`` into ``directory``: staged next to it, then each renamed into place (never half-written)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".edgeq-export-", dir=directory))
    except OSError as e:
        raise ExportError(f"cannot write to '{directory}': {e.strerror or e}") from None
    try:
        for name, text in files.items():
            (stage / name).write_text(text)
        for name in files:
            os.replace(stage / name, directory / name)
    except OSError as e:
        raise ExportError(f"cannot write to '{directory}': {e.strerror or e}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def export_c(bundle: str | Path | LoadedBundle, directory: str | Path, device: str | DeviceProfile | None = None,
             stack_bytes: int = DEFAULT_STACK_BYTES) -> CExport:
    """Write the C project for ``bundle`` into ``directory``; with ``device`` (an MCU id or profile TOML
    path) also the firmware files for that device. Returns what was written."""
    lb = bundle if isinstance(bundle, LoadedBundle) else read_bundle(bundle)
    files, figures = render_model(lb)
    files.update(render_kernels())
    profile = mcu_device(device) if device is not None else None
    if profile is not None:
        files.update(render_board(profile, stack_bytes))
    out = Path(directory)
    write_files(out, files)
    return CExport(out, sorted(files), device=profile, stack_bytes=stack_bytes if profile else None, **figures)
