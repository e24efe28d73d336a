"""The Numba backend: runs a whole compiled program (see ``program.py``) in one jitted call.

Python enters compiled code once per inference; the per-sample loop, the decoding of every node
record and the dispatch on opcode all happen inside :func:`_run`, which calls the kernels of
``numba_kernels``. Everything is compiled with ``cache=True``, so only the first run on a machine pays
the compilation.
"""

from __future__ import annotations

import os

import numpy as np

from edgeq.errors import BackendError

try:  # numba is a hard dependency, but a broken install should produce a one-line error, not a traceback
    import numba
    from numba import njit
    from . import numba_kernels as K
    _IMPORT_ERROR = None
except Exception as exc:  # pragma: no cover - depends on the environment
    numba = None
    _IMPORT_ERROR = exc

from .registry import OPS

# Opcodes are passed to the jitted code as data rather than baked in as globals: a cached compilation
# can then never disagree with registry.py.
_OPCODES = np.array([OPS[name].opcode for name in (
    "QConv", "QFullyConnected", "QAdd", "QMul", "QLut", "QMaxPool", "QAvgPool", "QSoftmax", "QConcat",
    "QReshape")], dtype=np.int64)


def ensure_available() -> None:
    """Raise BackendError if Numba cannot be imported."""
    if _IMPORT_ERROR is not None:
        raise BackendError(f"the numba backend needs numba ({_IMPORT_ERROR}); install it with "
                           f"'pip install numba' or use backend='c'")


def set_threads(n: int) -> None:
    """Use ``n`` threads in the parallel kernels (clamped to 1..NUMBA_NUM_THREADS); applies to the
    calling thread, which is the one that calls :func:`execute`."""
    ensure_available()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


if _IMPORT_ERROR is None:
    @njit(cache=True)
    def _node(op, wd, arena, p8, p32, codes):
        """Decode one node record's words (layouts in registry.py) and call its kernel."""
        empty = p8[:0]
        if op == codes[0] or op == codes[1]:                     # QConv, QFullyConnected
            is_conv = op == codes[0]
            oc = wd[10] if is_conv else wd[8]
            lut = p8[wd[5]:wd[5] + 256] if wd[5] >= 0 else empty
            x, y, w = arena[wd[0]:], arena[wd[6]:], p8[wd[1]:]
            bias = p32[wd[2] >> 2:(wd[2] >> 2) + oc]
            mult = p32[wd[3] >> 2:(wd[3] >> 2) + oc]
            shift = p32[wd[4] >> 2:(wd[4] >> 2) + oc]
            if is_conv:
                K.conv(x, w, bias, mult, shift, lut, y, wd[7], wd[8], wd[9], wd[10], wd[11], wd[12], wd[13],
                       wd[14], wd[15], wd[16], wd[17], wd[18], wd[19], wd[20], wd[21], wd[22], wd[23],
                       wd[24], wd[25])
            else:
                K.fully_connected(x, w, bias, mult, shift, lut, y, wd[7], wd[8], wd[9], wd[10], wd[11],
                                  wd[12])
        elif op == codes[2] or op == codes[3]:                   # QAdd, QMul
            a = p8[wd[0]:] if wd[1] else arena[wd[0]:]
            b = p8[wd[2]:] if wd[3] else arena[wd[2]:]
            lut = p8[wd[4]:wd[4] + 256] if wd[4] >= 0 else empty
            y = arena[wd[5]:]
            dims = (wd[6], wd[7], wd[8], wd[9])
            a_str = (wd[10], wd[11], wd[12], wd[13])
            b_str = (wd[14], wd[15], wd[16], wd[17])
            if op == codes[2]:
                K.add(a, b, lut, y, dims, a_str, b_str, wd[18], wd[19], wd[20], wd[21], wd[22], wd[23],
                      wd[24], wd[25], wd[26], wd[27], wd[28])
            else:
                K.mul(a, b, lut, y, dims, a_str, b_str, wd[18], wd[19], wd[20], wd[21], wd[22], wd[23],
                      wd[24])
        elif op == codes[4]:                                      # QLut
            K.lut(arena[wd[0]:], p8[wd[1]:wd[1] + 256], arena[wd[2]:], wd[3])
        elif op == codes[5]:                                      # QMaxPool
            K.max_pool(arena[wd[0]:], arena[wd[1]:], wd[2], wd[3], wd[4], wd[5], wd[6], wd[7], wd[8],
                       wd[9], wd[10], wd[11], wd[12], wd[13], wd[14], wd[15], wd[16])
        elif op == codes[6]:                                      # QAvgPool
            K.avg_pool(arena[wd[0]:], arena[wd[1]:], wd[2], wd[3], wd[4], wd[5], wd[6], wd[7], wd[8],
                       wd[9], wd[10], wd[11], wd[12], wd[13], wd[14], wd[15], wd[16], wd[17])
        elif op == codes[7]:                                      # QSoftmax
            K.softmax(arena[wd[0]:], p32[wd[1] >> 2:(wd[1] >> 2) + 256], arena[wd[2]:], wd[3], wd[4])
        elif op == codes[8]:                                      # QConcat
            y, outer, n_in, y_zp = arena[wd[0]:], wd[1], wd[2], wd[3]
            y_inner = 0
            for i in range(n_in):
                y_inner += wd[4 + 5 * i + 1]
            pos = 0
            for i in range(n_in):
                r = wd[4 + 5 * i:9 + 5 * i]
                K.concat_part(arena[r[0]:], y, outer, r[1], y_inner, pos, r[2], r[3], r[4], y_zp)
                pos += r[1]
        elif op == codes[9]:                                      # QReshape
            K.move(arena, wd[0], wd[1], wd[2])
        else:
            raise ValueError("unknown opcode in program")

    @njit(cache=True)
    def _run(words, arena, pool, in_buf, in_desc, out_buf, out_desc, codes):
        """Every sample: inputs -> arena, each node record in order, arena -> outputs."""
        p8 = pool.view(np.int8)
        # Constant offsets are 64-byte aligned, so int32 constants are whole elements of this view.
        p32 = pool[:pool.size // 4 * 4].view(np.int32)
        for b in range(in_buf.shape[0]):
            pos = 0
            for i in range(in_desc.shape[0]):
                off, n = in_desc[i, 0], in_desc[i, 1]
                arena[off:off + n] = in_buf[b, pos:pos + n]
                pos += n
            pc = 0
            while pc < words.size:
                n_words = words[pc + 1]
                _node(words[pc], words[pc + 2:pc + n_words], arena, p8, p32, codes)
                pc += n_words
            pos = 0
            for i in range(out_desc.shape[0]):
                off, n = out_desc[i, 0], out_desc[i, 1]
                out_buf[b, pos:pos + n] = arena[off:off + n]
                pos += n

    def _tie_cache_to_kernels() -> None:
        """Numba invalidates a cached function only when its own file changes; _run inlines the kernels,
        so its cache must also go stale when numba_kernels.py changes (e.g. an editable install)."""
        here = os.path.abspath(__file__)
        files = [here, os.path.abspath(K.__file__), os.path.join(os.path.dirname(here), "fixedpoint.py")]
        stats = [os.stat(f) for f in files if os.path.exists(f)]
        stamp = (max(s.st_mtime for s in stats), sum(s.st_size for s in stats))
        for fn in (_run, _node):
            try:
                fn._cache._cache_file._source_stamp = stamp
            except AttributeError:  # pragma: no cover - a Numba without this internal keeps its default
                pass

    _tie_cache_to_kernels()

_pool_copy: tuple[object, np.ndarray] | None = None


def _writable(pool: np.ndarray) -> np.ndarray:
    """A writable view of the pool: a read-only one (e.g. a bundle mapped from bytes) would make Numba
    compile every kernel a second time for read-only arrays. The copy is made once per pool."""
    global _pool_copy
    if pool.flags.writeable:
        return pool
    if _pool_copy is None or _pool_copy[0] is not pool:
        _pool_copy = (pool, np.array(pool, dtype=np.uint8))
    return _pool_copy[1]


def execute(words: np.ndarray, arena: np.ndarray, pool: np.ndarray, in_buf: np.ndarray,
            in_desc: np.ndarray, out_buf: np.ndarray, out_desc: np.ndarray) -> None:
    """Run the program ``words`` on every sample of ``in_buf`` (int8 [N, in_total]) into ``out_buf``.

    ``in_desc``/``out_desc`` rows are (arena offset, bytes per sample); inputs and outputs are packed
    back to back in each row of ``in_buf``/``out_buf``. ``pool`` holds the constants (uint8).
    """
    ensure_available()
    _run(words, arena, _writable(pool), in_buf, in_desc, out_buf, out_desc, _OPCODES)
