"""The C backend: ``c/edgeq_kernels.c`` compiled with cffi on first use and cached on disk.

The kernels are portable C99; this module only turns them into a Python extension. cffi (API mode)
writes the wrapper source, the system C compiler builds it together with the kernels into
``$EDGEQ_CACHE_DIR/c/<hash>/`` (default ``~/.cache/edgeq/c/<hash>/``), where the hash covers the
sources, the flags, the interpreter and (with ``-march=native``) the CPU. Later imports just load the
cached library. Builds go to a private temporary directory and are published by an atomic rename, so
processes racing to build the same library never see a half-written file.

Flags: ``-O3 -std=c99 -march=native -fopenmp``, dropping ``-march=native`` and ``-fopenmp`` if the
compiler rejects them; ``EDGEQ_CFLAGS`` replaces the whole list. ``CC`` picks the compiler.

Module interface (see ``executor.py``): :func:`ensure_available`, :func:`set_threads`,
:func:`execute`. :func:`build_sanitized` builds the same sources with AddressSanitizer and
UBSan for tests (load it in a process started with ``LD_PRELOAD=`` :func:`sanitizer_preload`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgeq.errors import BackendError
from .backend_args import need, need_program

def _cdef(header: bytes, marker: str = "/* ---- Programs") -> str:
    """The declarations cffi binds: the header's section from ``marker`` on (one source for C and Python)."""
    text = header.decode()
    start = text.index(marker)
    return text[start: text.index("#ifdef __cplusplus", start)]

DEFAULT_FLAGS = ("-O3", "-std=c99", "-march=native", "-fopenmp")
# Dropped one by one (then together) when the compiler or linker rejects them.
OPTIONAL_FLAGS = ("-march=native", "-fopenmp")
SANITIZE_FLAGS = ("-O1", "-g", "-std=c99", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                  "-fno-sanitize-recover=all", "-fopenmp")
SOURCES = ("edgeq_kernels.c", "edgeq_kernels.h")

# Thread tuning (CBackend.tune_threads): timed runs per thread count, and the speed-up a node must show
# to be given more than one thread.
TUNE_RUNS = 5
TUNE_MARGIN = 0.10

# Return codes of the C entry points (edgeq_kernels.h).
ERRORS = {
    -1: "unknown opcode in the program",
    -2: "malformed program record",
    -3: "program parameter out of range",
    -4: "program operand outside the arena or constant pool",
    -5: "misaligned int32 constant in the pool",
    -6: "input/output descriptors do not match the buffers",
}

_NO_COMPILER = ("C backend unavailable: no C compiler found (install gcc, e.g. `apt-get install gcc`), "
                "the numba backend still works")

_PROBE = """
int edgeq_probe(int n)
{
    int i, s = 0;
#pragma omp parallel for reduction(+ : s)
    for (i = 0; i < n; i++)
        s += i;
    return s;
}
"""


@contextlib.contextmanager
def _source_dir() -> Iterator[Path]:
    """The installed ``edgeq.runtimes/c`` directory as a real path (extracted if packaged in a zip)."""
    with resources.as_file(resources.files("edgeq.runtimes") / "c") as path:
        yield Path(path)


def cache_root() -> Path:
    """Root of edgeq's on-disk caches: ``$EDGEQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgeq``, else
    ``~/.cache/edgeq``."""
    if os.environ.get("EDGEQ_CACHE_DIR"):
        return Path(os.environ["EDGEQ_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edgeq"


def find_compiler() -> list[str] | None:
    """The C compiler command (``$CC``, else the one Python was built with, else cc/gcc/clang)."""
    candidates = [os.environ.get("CC", ""), sysconfig.get_config_var("CC") or "", "cc", "gcc", "clang"]
    for cand in candidates:
        cmd = shlex.split(cand)
        if cmd and shutil.which(cmd[0]):
            return [shutil.which(cmd[0]) or cmd[0], *cmd[1:]]
    return None


def _first_error(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in lines:
        if "error" in ln.lower():
            return ln
    return lines[0] if lines else "unknown compiler failure"


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and feature flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            keep = [ln for ln in f if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(keep)))
    except OSError:
        return platform.processor() + platform.machine()


def _recorded_flags(build_dir: Path, requested: tuple[str, ...]) -> tuple[str, ...]:
    """The flags a cached library was built with (written next to it), or the requested ones."""
    try:
        return tuple((build_dir / "flags.txt").read_text().split())
    except OSError:
        return requested


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _link_flags() -> list[str]:
    return ["-fPIC", "-shared"] + (["-undefined", "dynamic_lookup"] if sys.platform == "darwin" else [])


class CBackend:
    """One build configuration of the kernels (flags + cache directory), loaded lazily.

    The module-level functions of ``c_backend`` delegate to the default instance; tests create others
    (e.g. :func:`build_sanitized`).
    """

    def __init__(self, flags: tuple[str, ...] | None = None, directory: Path | None = None,
                 tag: str = "c", probe: bool | None = None, sources: tuple[str, str] = SOURCES,
                 cdef_marker: str = "/* ---- Programs"):
        env_flags = os.environ.get("EDGEQ_CFLAGS")
        if flags is None:
            flags = tuple(shlex.split(env_flags)) if env_flags is not None else DEFAULT_FLAGS
            probe = env_flags is None if probe is None else probe
        self.requested_flags = tuple(flags)
        self.probe = bool(probe) if probe is not None else True
        self.directory = directory
        self.tag = tag
        self.sources, self.cdef_marker = sources, cdef_marker  # (C file, header), as in SOURCES
        self.flags_used: tuple[str, ...] | None = None
        self.library_path: Path | None = None
        self._lib: Any = None
        self._ffi: Any = None
        self._error: BackendError | None = None
        self._prepared: tuple | None = None  # last validated (program, arena, pool, descriptors), see execute
        self._qp_cache: list = [None, None]  # last (in_qp, out_qp) tables, see execute_float
        self._lock = threading.Lock()

    # ---- building ----------------------------------------------------------------------------

    def _key(self, cc: list[str], sources: dict[str, bytes]) -> str:
        import cffi

        h = hashlib.sha256()
        for name in sorted(sources):
            h.update(name.encode() + b"\0" + sources[name] + b"\0")
        parts = [" ".join(self.requested_flags), " ".join(cc), sys.implementation.cache_tag,
                 sysconfig.get_config_var("EXT_SUFFIX") or "", platform.machine(), cffi.__version__]
        if any("native" in f for f in self.requested_flags):
            parts.append(_cpu_id())
        h.update("\0".join(parts).encode())
        return h.hexdigest()[:16]

    def _choose_flags(self, cc: list[str], tmp: Path) -> list[str]:
        """The requested flags, minus optional ones the toolchain rejects (when probing is on)."""
        flags = list(self.requested_flags)
        attempts = [flags]
        if self.probe:
            optional = [f for f in OPTIONAL_FLAGS if f in flags]
            attempts += [[f for f in flags if f != drop] for drop in optional]
            attempts.append([f for f in flags if f not in optional])
        probe_c = tmp / "probe.c"
        probe_c.write_text(_PROBE)
        result = None
        for attempt in attempts:
            result = _run([*cc, *attempt, *_link_flags(), str(probe_c), "-o", str(tmp / "probe.so")], tmp)
            if result.returncode == 0:
                return attempt
        raise BackendError(f"C backend unavailable: {Path(cc[0]).name} rejected the flags "
                           f"'{' '.join(attempts[-1])}': {_first_error(result.stderr + result.stdout)}")

    def build(self) -> Path:
        """Compile the extension unless the cache already holds it; return the library path."""
        import cffi

        cc = find_compiler()
        if cc is None:
            raise BackendError(_NO_COMPILER)
        with _source_dir() as src:
            sources = {name: (src / name).read_bytes() for name in self.sources}
            key = self._key(cc, sources)
            module = f"_edgeq_{self.tag}_{key}"
            root = Path(self.directory) if self.directory is not None else cache_root() / "c"
            final_dir = root / key
            lib_path = final_dir / (module + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
            if lib_path.exists():
                self.flags_used = _recorded_flags(final_dir, self.requested_flags)
                return lib_path
            try:
                final_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise BackendError(f"C backend unavailable: cannot create the cache directory {final_dir} "
                                   f"({err.strerror}); set EDGEQ_CACHE_DIR to a writable directory") from err
            with _file_lock(root / f"{key}.lock"):
                if lib_path.exists():  # another process finished while we waited
                    self.flags_used = _recorded_flags(final_dir, self.requested_flags)
                    return lib_path
                tmp = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=root))
                try:
                    flags = self._choose_flags(cc, tmp)
                    ffi = cffi.FFI()
                    c_file, header = self.sources
                    ffi.cdef(_cdef(sources[header], self.cdef_marker))
                    ffi.set_source(module, f'#include "{header}"')
                    wrapper = tmp / f"{module}.c"
                    with contextlib.redirect_stdout(io.StringIO()):  # cffi announces the file it writes
                        ffi.emit_c_code(str(wrapper))
                    out = tmp / lib_path.name
                    cmd = [*cc, *flags, *_link_flags(), "-I", sysconfig.get_paths()["include"], "-I", str(src),
                           str(wrapper), str(src / c_file), "-o", str(out), "-lm"]
                    result = _run(cmd, tmp)
                    if result.returncode != 0:
                        raise BackendError(f"C backend unavailable: {Path(cc[0]).name} failed: "
                                           f"{_first_error(result.stderr + result.stdout)}")
                    (final_dir / "flags.txt").write_text(" ".join(flags) + "\n")
                    os.replace(out, lib_path)  # atomic: readers see no library or a complete one
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            self.flags_used = tuple(flags)
            return lib_path

    def _load(self) -> None:
        path = self.build()
        spec = importlib.util.spec_from_file_location(path.name.split(".")[0], path)
        if spec is None or spec.loader is None:
            raise BackendError(f"C backend unavailable: cannot load {path}")
        # Idle OpenMP workers sleep instead of spinning: one parallel region per op, on cores shared with
        # other processes, spinning workers made 2-thread runs 10-50x slower than 1 thread (RESULTS.md).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except ImportError as err:
            raise BackendError(f"C backend unavailable: cannot load {path.name}: {err}") from err
        self._ffi, self._lib, self.library_path = module.ffi, module.lib, path

    # ---- the backend interface ----------------------------------------------------------------

    def ensure_available(self) -> None:
        """Build (first use) and load the library; raise BackendError with a one-line reason if impossible."""
        if self._lib is not None:
            return
        with self._lock:
            if self._lib is not None:
                return
            if self._error is not None:
                raise self._error
            try:
                self._load()
            except BackendError as err:
                self._error = err
                raise

    def set_threads(self, n: int) -> None:
        """Threads the kernels may use (OpenMP builds; otherwise always 1)."""
        self.ensure_available()
        self._lib.edgeq_set_threads(max(1, int(n)))

    def get_threads(self) -> int:
        """Threads the kernels currently use."""
        self.ensure_available()
        return int(self._lib.edgeq_get_threads())

    def has_openmp(self) -> bool:
        """Whether the loaded library was built with OpenMP."""
        self.ensure_available()
        return bool(self._lib.edgeq_has_openmp())

    def _loaded(self) -> tuple[Any, Any]:
        """The cffi ``ffi`` and ``lib``, building or loading the extension on first use."""
        if self._lib is None:
            self.ensure_available()
        return self._ffi, self._lib

    def execute(self, words: np.ndarray, arena: np.ndarray, pool: np.ndarray, in_buf: np.ndarray,
                in_desc: np.ndarray, out_buf: np.ndarray, out_desc: np.ndarray,
                node_threads: np.ndarray | None = None, node_seconds: np.ndarray | None = None) -> None:
        """Run the program on every sample of ``in_buf`` into ``out_buf`` (see ``executor.py``).

        The program is checked against the buffers first (every operand inside the arena or pool), so
        a corrupt bundle raises BackendError instead of touching memory it does not own. The check and
        the buffer conversions are cached for the next call with the same program, arena and pool (an
        executor's steady state), and redone whenever their identity or the program's bytes change.
        Optional schedule, one entry per node record: ``node_threads`` (int8) threads each node runs
        with, ``node_seconds`` (float64, added to) each node's wall time.
        """
        ffi, lib = self._loaded()
        need("C", in_buf, np.int8, 2, "in_buf")
        need("C", out_buf, np.int8, 2, "out_buf", writable=True)
        if out_buf.shape[0] != in_buf.shape[0]:
            raise BackendError(f"C backend: {in_buf.shape[0]} input samples but {out_buf.shape[0]} output rows")
        c_words, c_arena, c_pool, c_in_desc, c_out_desc = self._buffers(words, arena, pool, in_desc, in_buf.shape[1],
                                                                         out_desc, out_buf.shape[1])
        _check(lib.edgeq_execute(c_words, words.size, c_arena, c_pool, ffi.from_buffer("int8_t[]", in_buf),
                                 in_buf.shape[0], in_buf.shape[1], c_in_desc, in_desc.shape[0],
                                 ffi.from_buffer("int8_t[]", out_buf, require_writable=True), out_buf.shape[1],
                                 c_out_desc, out_desc.shape[0], *self._schedule(node_threads, node_seconds)))

    def _schedule(self, node_threads: np.ndarray | None, node_seconds: np.ndarray | None) -> tuple[Any, Any, int]:
        """cffi arguments (threads pointer, seconds pointer, node count) of an optional schedule."""
        ffi = self._ffi
        if node_threads is None and node_seconds is None:
            return ffi.NULL, ffi.NULL, 0
        sizes = set()
        if node_threads is not None:
            need("C", node_threads, np.int8, 1, "node_threads")
            sizes.add(node_threads.size)
        if node_seconds is not None:
            need("C", node_seconds, np.float64, 1, "node_seconds", writable=True)
            sizes.add(node_seconds.size)
        if len(sizes) != 1:
            raise BackendError(f"C backend: node_threads and node_seconds differ in length ({sorted(sizes)})")
        return (ffi.NULL if node_threads is None else ffi.from_buffer("int8_t[]", node_threads),
                ffi.NULL if node_seconds is None else ffi.from_buffer("double[]", node_seconds, require_writable=True),
                sizes.pop())

    def tune_threads(self, words: np.ndarray, arena: np.ndarray, pool: np.ndarray, in_buf: np.ndarray,
                     in_desc: np.ndarray, out_desc: np.ndarray, out_bytes: int, n_nodes: int, threads: int,
                     runs: int = TUNE_RUNS) -> np.ndarray:
        """Threads per node, measured: the program runs ``runs`` times on the first sample of ``in_buf``
        with every node at 1 thread and ``runs`` times at ``threads``, interleaved; each node keeps the
        count with the smaller median time (1 unless ``threads`` is TUNE_MARGIN faster: a fork that
        barely pays is noise on a busy machine)."""
        one = np.ascontiguousarray(in_buf[:1])
        out = np.empty((1, out_bytes), dtype=np.int8)
        counts = (1, max(1, int(threads)))
        seconds = np.zeros((len(counts), runs, n_nodes))
        tables = [np.full(n_nodes, c, dtype=np.int8) for c in counts]
        self.execute(words, arena, pool, one, in_desc, out, out_desc, tables[1])  # warm caches and the pool
        for r in range(runs):
            for k, table in enumerate(tables):
                self.execute(words, arena, pool, one, in_desc, out, out_desc, table, seconds[k, r])
        median = np.median(seconds, axis=1)
        return np.where(median[1] < median[0] * (1 - TUNE_MARGIN), counts[1], counts[0]).astype(np.int8)

    def execute_float(self, words: np.ndarray, arena: np.ndarray, pool: np.ndarray, x: np.ndarray,
                      in_desc: np.ndarray, in_qp: np.ndarray, y: np.ndarray, out_desc: np.ndarray,
                      out_qp: np.ndarray, node_threads: np.ndarray | None = None) -> None:
        """:meth:`execute` with the float boundary inside C: ``x`` float32 [N, total input elements] is
        quantized into the arena with ``in_qp`` rows (scale, zero point) exactly as
        ``executor.quantize`` does, and the outputs are dequantized into ``y`` float32 [N, total output
        elements] as ``executor.dequantize`` does (``out_qp`` rows likewise). NaN quantizes to -128."""
        ffi, lib = self._loaded()
        need("C", x, np.float32, 2, "x")
        need("C", y, np.float32, 2, "y", writable=True)
        if y.shape[0] != x.shape[0]:
            raise BackendError(f"C backend: {x.shape[0]} input samples but {y.shape[0]} output rows")
        c_words, c_arena, c_pool, c_in_desc, c_out_desc = self._buffers(words, arena, pool, in_desc, x.shape[1],
                                                                         out_desc, y.shape[1])
        c_in_qp = self._qparams(in_qp, in_desc.shape[0], "in_qp", 0)
        c_out_qp = self._qparams(out_qp, out_desc.shape[0], "out_qp", 1)
        _check(lib.edgeq_execute_float(c_words, words.size, c_arena, c_pool, ffi.from_buffer("float[]", x),
                                       x.shape[0], x.shape[1], c_in_desc, c_in_qp, in_desc.shape[0],
                                       ffi.from_buffer("float[]", y, require_writable=True), y.shape[1],
                                       c_out_desc, c_out_qp, out_desc.shape[0], *self._schedule(node_threads, None)))

    def _qparams(self, qp: np.ndarray, n: int, name: str, slot: int) -> Any:
        """The cffi pointer of a [n, 2] float32 (scale, zero point) table, cached by identity."""
        cached = self._qp_cache[slot]
        if cached is not None and cached[0] is qp and (not qp.flags.writeable or cached[1] == qp.tobytes()):
            return cached[2]
        need("C", qp, np.float32, 2, name)
        if qp.shape != (n, 2):
            raise BackendError(f"C backend: {name} must have shape ({n}, 2) (scale, zero point per tensor), "
                               f"got {qp.shape}")
        ptr = self._ffi.from_buffer("float[]", qp)
        self._qp_cache[slot] = (qp, qp.tobytes(), ptr)
        return ptr

    def _buffers(self, words: np.ndarray, arena: np.ndarray, pool: np.ndarray, in_desc: np.ndarray, in_stride: int,
                 out_desc: np.ndarray, out_stride: int) -> tuple:
        """The cffi pointers of the unchanging buffers, validated once and cached by identity (and by the
        program's bytes, so a program edited in place is validated again)."""
        prepared = self._prepared
        if (prepared is None or prepared[0] is not words or prepared[1] is not arena or prepared[2] is not pool
                or prepared[3] is not in_desc or prepared[4] is not out_desc
                or prepared[5] != (in_stride, out_stride)
                or (_mutable(words, in_desc, out_desc)
                    and prepared[6] != words.tobytes() + in_desc.tobytes() + out_desc.tobytes())):
            prepared = self._prepare(words, arena, pool, in_desc, in_stride, out_desc, out_stride)
        return prepared[7]

    def _prepare(self, words: np.ndarray, arena: np.ndarray, pool: np.ndarray, in_desc: np.ndarray, in_stride: int,
                 out_desc: np.ndarray, out_stride: int) -> tuple:
        """Check types and the program against the buffers; keep the converted buffers for reuse."""
        ffi, lib = self._ffi, self._lib
        need_program("C", words, arena, pool, in_desc, out_desc)
        buffers = (ffi.from_buffer("int64_t[]", words), ffi.from_buffer("int8_t[]", arena, require_writable=True),
                   ffi.from_buffer("uint8_t[]", pool), ffi.from_buffer("int64_t[]", in_desc),
                   ffi.from_buffer("int64_t[]", out_desc))
        self._prepared = None
        _check(lib.edgeq_validate(buffers[0], words.size, arena.size, pool.size, buffers[3], in_desc.shape[0],
                                  in_stride, buffers[4], out_desc.shape[0], out_stride))
        prepared = (words, arena, pool, in_desc, out_desc, (in_stride, out_stride),
                    words.tobytes() + in_desc.tobytes() + out_desc.tobytes(), buffers)
        self._prepared = prepared
        return prepared  # not self._prepared: another thread may have prepared its own program since


def _mutable(*arrays: np.ndarray) -> bool:
    """Whether any array could have been edited in place since it was validated (read-only ones cannot)."""
    return any(a.flags.writeable for a in arrays)


def _check(rc: int) -> None:
    if rc != 0:
        raise BackendError(f"C backend: {ERRORS.get(rc, 'kernel failure')} (code {rc})")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise builds of one library across processes (best effort: the final rename is atomic anyway)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on the atomic rename alone
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_default = CBackend()


def ensure_available() -> None:
    """Build (on first use) and load the C kernels; raise BackendError with an actionable reason if not possible."""
    _default.ensure_available()


def set_threads(n: int) -> None:
    """Threads the C kernels may use (default 1; OpenMP builds only)."""
    _default.set_threads(n)


def execute(words: np.ndarray, arena: np.ndarray, pool: np.ndarray, in_buf: np.ndarray, in_desc: np.ndarray,
            out_buf: np.ndarray, out_desc: np.ndarray, node_threads: np.ndarray | None = None,
            node_seconds: np.ndarray | None = None) -> None:
    """Run a compiled program over a batch: see :meth:`CBackend.execute` and ``executor.py``."""
    _default.execute(words, arena, pool, in_buf, in_desc, out_buf, out_desc, node_threads, node_seconds)


def execute_float(words: np.ndarray, arena: np.ndarray, pool: np.ndarray, x: np.ndarray, in_desc: np.ndarray,
                  in_qp: np.ndarray, y: np.ndarray, out_desc: np.ndarray, out_qp: np.ndarray,
                  node_threads: np.ndarray | None = None) -> None:
    """Float32 in, float32 out, quantization inside C: see :meth:`CBackend.execute_float`."""
    _default.execute_float(words, arena, pool, x, in_desc, in_qp, y, out_desc, out_qp, node_threads)


def tune_threads(words: np.ndarray, arena: np.ndarray, pool: np.ndarray, in_buf: np.ndarray, in_desc: np.ndarray,
                 out_desc: np.ndarray, out_bytes: int, n_nodes: int, threads: int) -> np.ndarray:
    """Threads per node, measured: see :meth:`CBackend.tune_threads`."""
    return _default.tune_threads(words, arena, pool, in_buf, in_desc, out_desc, out_bytes, n_nodes, threads)


def flags_used() -> tuple[str, ...]:
    """Compiler flags of the loaded default library (after dropping rejected optional flags)."""
    _default.ensure_available()
    return _default.flags_used or ()


def build_sanitized(directory: str | os.PathLike, extra_flags: tuple[str, ...] = ()) -> CBackend:
    """The same kernels built with ``-fsanitize=address,undefined -fno-omit-frame-pointer -O1`` (plus
    ``extra_flags``, e.g. ``-DEDGEQ_SCRATCH_BYTES=256`` to force the small-budget code paths) into
    ``directory``; compiled on the first ``build()`` or ``ensure_available()``. Without extra flags the
    build adds ``-march=native`` (the x86 SIMD paths); with them it stays portable C.

    Loading it needs the ASan runtime first in the process: run the caller in a subprocess with
    ``LD_PRELOAD=sanitizer_preload()`` and ``ASAN_OPTIONS=detect_leaks=0``.
    """
    # The default budgets model the host, so they get -march=native (the SIMD kernels run under the
    # sanitizers; dropped if the compiler rejects it); reduced budgets model an MCU: portable C only.
    native = () if extra_flags else ("-march=native",)
    return CBackend(SANITIZE_FLAGS + native + tuple(extra_flags), Path(directory), tag="asan", probe=True)


def sanitizer_preload() -> str | None:
    """Path of the compiler's AddressSanitizer runtime (for LD_PRELOAD), or None if there is none."""
    cc = find_compiler()
    if cc is None:
        return None
    try:
        out = subprocess.run([*cc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
    return out if os.path.isabs(out) and os.path.exists(out) else None
