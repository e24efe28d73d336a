"""The Numba backend: runs a whole compiled program (see ``program.py``) in one jitted call.

Python enters compiled code once per inference; the per-sample loop, the decoding of every node
record and the dispatch on opcode all happen inside :func:`_run`, which calls the kernels of
``numba_kernels``. Everything is compiled with ``cache=True``, so only the first run on a machine pays
the compilation.

Convolutions keep their weights regrouped for the kernels in a per-program workspace, packed on the
first run and reused afterwards (as inference engines pre-pack weights when a model is loaded). The
kernels do no bounds checks, so every program is validated against its buffers before its first run.
:func:`execute_float` also moves the float boundary (quantize in, dequantize out) into the same call.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

import numpy as np

from edgeq.errors import BackendError
from .backend_args import need, need_program

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
    "QReshape", "QCopyWindow", "QStridedCopy", "QMatMul", "QConvTranspose", "QResize", "QLayerNorm",
    "QRequantize")],
    dtype=np.int64)
_MAX_MATMUL_K = 33000  # (255 * 255) * K stays below 2^31: the int32 accumulators cannot overflow
_MAX_LN_COLS = 4096    # keeps QLayerNorm's sum of squared deviations inside int64


# Program sanity limits: no shape word beyond this (so no products overflow), no scratch beyond 2 GiB.
_MAX_DIM = 1 << 20
_MAX_SCRATCH = 1 << 31
# Stand-ins for the unused sample buffers of _run (int8 when running floats, and the reverse).
_NO_I8 = np.zeros((0, 0), np.int8)
_NO_F32 = np.zeros((0, 0), np.float32)
_NO_QP = np.zeros((0, 2), np.float32)
_threads: int | None = None  # set by set_threads; numba.get_num_threads() costs ~0.5 us per call


def ensure_available() -> None:
    """Raise BackendError if Numba cannot be imported."""
    if _IMPORT_ERROR is not None:
        raise BackendError(f"the numba backend needs numba ({_IMPORT_ERROR}); install it with "
                           f"'pip install numba' or use backend='c'")


def set_threads(n: int) -> None:
    """Use ``n`` threads in the parallel kernels (clamped to 1..NUMBA_NUM_THREADS). The count the
    kernels plan with is process-wide, Numba's own setting is per thread: call this from the thread
    that runs the inferences."""
    global _threads
    ensure_available()
    _threads = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(_threads)


if _IMPORT_ERROR is None:
    @njit(cache=True)
    def _plan(words, codes):
        """Workspace (byte offset, bytes) of every node record, 64-byte aligned, and the total."""
        n, pc = 0, 0
        while pc < words.size:
            n, pc = n + 1, pc + words[pc + 1]
        plan = np.zeros((n, 2), np.int64)
        total, pc = 0, 0
        for i in range(n):
            if words[pc] == codes[0]:  # QConv: C OC OH OW KH KW sw dw group at 7 10 11 12 13 14 16 20 21
                wd = words[pc + 2:pc + words[pc + 1]]
                kind, _ = K.conv_kind(wd[7], wd[10], wd[11], wd[12], wd[13], wd[14], wd[16], wd[20], wd[21])
                size = K.conv_workspace(kind, wd[7], wd[10], wd[13], wd[14], wd[21])
                plan[i, 0], plan[i, 1] = total, size
                total += (size + 63) // 64 * 64
            pc += words[pc + 1]
        return plan, total

    @njit(cache=True)
    def _inside(off, size, limit, align):
        """Whether [off, off + size) lies within [0, limit) and off is a multiple of align."""
        return off >= 0 and size >= 0 and off + size <= limit and off % align == 0

    @njit(cache=True)
    def _bits_ok(bits):
        """An activation width word: 8 or 16."""
        return bits == 8 or bits == 16

    @njit(cache=True)
    def _check_node(op, wd, codes, arena_n, pool_n):
        """Operand spans and shape words of one node record are sane (the kernels do no bounds checks)."""
        n = wd.size
        if op == codes[0] or op == codes[1]:                     # QConv, QFullyConnected
            if (op == codes[0] and n != 28) or (op == codes[1] and (n != 14 or wd[13] < 0 or wd[13] > 1)):
                return False
            # Element widths (conv only) and their bytes: int8 or int16 activations.
            xb, yb = (wd[26] // 8, wd[27] // 8) if op == codes[0] else (1, 1)
            if op == codes[0] and (not _bits_ok(wd[26]) or not _bits_ok(wd[27]) or (wd[5] != -1 and yb != 1)):
                return False
            # Zero points are int8 values (the kernels' u8 and 32-bit arithmetic relies on it; the
            # converter never emits anything else), the clamp range lies within the output's type.
            q0 = 22 if op == codes[0] else 9
            lim = 127 if yb == 1 else 32767
            for k in range(q0, q0 + 4):
                if wd[k] < (-128 if k < q0 + 2 else -lim - 1) or wd[k] > (127 if k < q0 + 2 else lim):
                    return False
            if op == codes[0]:
                C, H, W, OC, OH, OW, KH, KW = wd[7], wd[8], wd[9], wd[10], wd[11], wd[12], wd[13], wd[14]
                sh, sw, pt, pl, dh, dw, group = wd[15], wd[16], wd[17], wd[18], wd[19], wd[20], wd[21]
                if min(C, H, W, OC, OH, OW, KH, KW, sh, sw, dh, dw, group) < 1 or min(pt, pl) < 0:
                    return False
                if max(C, H, W, OC, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl) > _MAX_DIM:
                    return False
                Hp, Wp = K._padded_size(H, W, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw)
                if C * Hp * Wp > _MAX_SCRATCH:  # the padded copy of the input the kernels allocate
                    return False
                if C % group or OC % group:
                    return False
                x_n, w_n, y_n = C * H * W, OC * (C // group) * KH * KW, OC * OH * OW
            else:
                k_in, OC = wd[7], wd[8]
                if k_in < 1 or OC < 1 or max(k_in, OC) > _MAX_DIM:
                    return False
                x_n, w_n, y_n = k_in, OC * k_in, OC
            return (_inside(wd[0], x_n * xb, arena_n, xb) and _inside(wd[1], w_n, pool_n, 1)
                    and _inside(wd[2], 4 * OC, pool_n, 4) and _inside(wd[3], 4 * OC, pool_n, 4)
                    and _inside(wd[4], 4 * OC, pool_n, 4) and (wd[5] == -1 or _inside(wd[5], 256, pool_n, 1))
                    and _inside(wd[6], y_n * yb, arena_n, yb))
        if op == codes[2] or op == codes[3]:                     # QAdd, QMul
            if n != (29 if op == codes[2] else 25) or min(wd[6], wd[7], wd[8], wd[9]) < 1:
                return False
            for k in range(2):
                if min(wd[10 + 4 * k], wd[11 + 4 * k], wd[12 + 4 * k], wd[13 + 4 * k]) < 0:
                    return False
                span = 1
                for i in range(4):
                    span += (wd[6 + i] - 1) * wd[10 + 4 * k + i]
                if not _inside(wd[2 * k], span, pool_n if wd[2 * k + 1] else arena_n, 1):
                    return False
            return ((wd[4] == -1 or _inside(wd[4], 256, pool_n, 1))
                    and _inside(wd[5], wd[6] * wd[7] * wd[8] * wd[9], arena_n, 1))
        if op == codes[4]:                                        # QLut
            if n != 6 or not _bits_ok(wd[4]) or not _bits_ok(wd[5]) or wd[3] < 0 or wd[3] > _MAX_SCRATCH:
                return False
            xb, yb = wd[4] // 8, wd[5] // 8
            table = _inside(wd[1], 256 * yb, pool_n, yb) if xb == 1 else _inside(wd[1], 2 * 513, pool_n, 2)
            return _inside(wd[0], wd[3] * xb, arena_n, xb) and table and _inside(wd[2], wd[3] * yb, arena_n, yb)
        if op == codes[16]:                                       # QRequantize
            if n != 9 or not _bits_ok(wd[3]) or not _bits_ok(wd[4]) or wd[2] < 0 or wd[2] > _MAX_SCRATCH:
                return False
            if min(wd[5], wd[6]) < -128 or max(wd[5], wd[6]) > 127 or wd[7] < -(1 << 31) or wd[7] >= (1 << 31):
                return False
            if wd[8] < -(1 << 31) or wd[8] >= (1 << 31):
                return False
            return _inside(wd[0], wd[2] * (wd[3] // 8), arena_n, wd[3] // 8) and \
                _inside(wd[1], wd[2] * (wd[4] // 8), arena_n, wd[4] // 8)
        if op == codes[5] or op == codes[6]:                      # QMaxPool, QAvgPool
            if n != (17 if op == codes[5] else 18):
                return False
            dh, dw = (wd[13], wd[14]) if op == codes[5] else (1, 1)
            C, H, W, OH, OW = wd[2], wd[3], wd[4], wd[5], wd[6]
            if min(C, H, W, OH, OW, wd[7], wd[8], wd[9], wd[10], dh, dw) < 1 or min(wd[11], wd[12]) < 0:
                return False
            if max(C, H, W, OH, OW, wd[7], wd[8], wd[9], wd[10], wd[11], wd[12], dh, dw) > _MAX_DIM:
                return False
            return _inside(wd[0], C * H * W, arena_n, 1) and _inside(wd[1], C * OH * OW, arena_n, 1)
        if op == codes[7]:                                        # QSoftmax
            return (n == 5 and min(wd[3], wd[4]) >= 1 and _inside(wd[0], wd[3] * wd[4], arena_n, 1)
                    and _inside(wd[1], 1024, pool_n, 4) and _inside(wd[2], wd[3] * wd[4], arena_n, 1))
        if op == codes[8]:                                        # QConcat
            if n < 4 or wd[2] < 1 or n != 4 + 5 * wd[2] or wd[1] < 1:
                return False
            y_inner = 0
            for i in range(wd[2]):
                inner = wd[5 + 5 * i]
                if inner < 1 or not _inside(wd[4 + 5 * i], wd[1] * inner, arena_n, 1):
                    return False
                y_inner += inner
            return _inside(wd[0], wd[1] * y_inner, arena_n, 1)
        if op == codes[9]:                                        # QReshape
            return n == 3 and _inside(wd[0], wd[2], arena_n, 1) and _inside(wd[1], wd[2], arena_n, 1)
        if op == codes[10]:                                       # QCopyWindow
            if n != 14 or min(wd[3], wd[4], wd[5], wd[6], wd[7], wd[12], wd[13]) < 1:
                return False
            if max(wd[3], wd[4], wd[5], wd[6], wd[7]) > _MAX_DIM or min(wd[8], wd[9], wd[10], wd[11]) < 0:
                return False
            if wd[8] + wd[12] > wd[4] or wd[9] + wd[13] > wd[5] or wd[10] + wd[12] > wd[6] or wd[11] + wd[13] > wd[7]:
                return False
            y_n = wd[3] * wd[6] * wd[7]
            return (_inside(wd[0], wd[3] * wd[4] * wd[5], arena_n, 1) and _inside(wd[2], y_n, arena_n, 1)
                    and (wd[1] == -1 or _inside(wd[1], y_n, arena_n, 1)))
        if op == codes[11]:                                       # QStridedCopy
            if n != 16 or wd[1] < 1 or wd[1] > _MAX_SCRATCH:
                return False
            lo_i, hi_i, count = wd[3], wd[3], 1
            for k in range(6):
                d, s = wd[4 + k], wd[10 + k]
                if d < 1 or d > _MAX_DIM or abs(s) > _MAX_SCRATCH:
                    return False
                count *= d
                if count > _MAX_SCRATCH:
                    return False
                if s < 0:
                    lo_i += (d - 1) * s
                else:
                    hi_i += (d - 1) * s
            return (lo_i >= 0 and hi_i < wd[1] and _inside(wd[0], wd[1], arena_n, 1)
                    and _inside(wd[2], count, arena_n, 1))
        if op == codes[12]:                                       # QMatMul
            if n != 20 or wd[2] not in (0, 1):
                return False
            B, M, Kk, N = wd[8], wd[9], wd[10], wd[11]
            if min(B, M, Kk, N) < 1 or max(B, M, N) > _MAX_DIM or Kk > _MAX_MATMUL_K:
                return False
            if min(wd[12], wd[13], wd[14]) < 0 or max(wd[12], wd[13], wd[14]) > _MAX_SCRATCH:
                return False
            for k in range(15, 20):
                if wd[k] < -128 or wd[k] > 127:
                    return False
            if B * M * max(Kk, N) > _MAX_SCRATCH:
                return False
            b_n = (B - 1) * wd[12] + (Kk - 1) * wd[13] + (N - 1) * wd[14] + 1
            return (_inside(wd[0], B * M * Kk, arena_n, 1) and _inside(wd[1], b_n, pool_n if wd[2] else arena_n, 1)
                    and _inside(wd[3], 4 * N, pool_n, 4) and _inside(wd[4], 4 * N, pool_n, 4)
                    and _inside(wd[5], 4 * N, pool_n, 4) and (wd[6] == -1 or _inside(wd[6], 256, pool_n, 1))
                    and _inside(wd[7], B * M * N, arena_n, 1))
        if op == codes[13]:                                       # QConvTranspose (QConv's words, int8)
            if n != 26:
                return False
            for k in range(22, 26):
                if wd[k] < -128 or wd[k] > 127:
                    return False
            C, H, W, OC, OH, OW, KH, KW = wd[7], wd[8], wd[9], wd[10], wd[11], wd[12], wd[13], wd[14]
            sh, sw, pt, pl, dh, dw, group = wd[15], wd[16], wd[17], wd[18], wd[19], wd[20], wd[21]
            if min(C, H, W, OC, OH, OW, KH, KW, sh, sw, dh, dw, group) < 1 or min(pt, pl) < 0:
                return False
            if max(C, H, W, OC, OH, OW, KH, KW, sh, sw, dh, dw, pt, pl) > _MAX_DIM or C % group or OC % group:
                return False
            if C * H * W > _MAX_SCRATCH or OC * OH * OW > _MAX_SCRATCH or (C // group) * KH * KW > _MAX_MATMUL_K:
                return False
            return (_inside(wd[0], C * H * W, arena_n, 1) and _inside(wd[1], OC * (C // group) * KH * KW, pool_n, 1)
                    and _inside(wd[2], 4 * OC, pool_n, 4) and _inside(wd[3], 4 * OC, pool_n, 4)
                    and _inside(wd[4], 4 * OC, pool_n, 4) and (wd[5] == -1 or _inside(wd[5], 256, pool_n, 1))
                    and _inside(wd[6], OC * OH * OW, arena_n, 1))
        if op == codes[14]:                                       # QResize
            if n != 10 or min(wd[4], wd[5], wd[6], wd[7], wd[8]) < 1 or wd[9] < -128 or wd[9] > 127:
                return False
            if max(wd[4], wd[5], wd[6], wd[7], wd[8]) > _MAX_DIM:
                return False
            if wd[4] * wd[5] * wd[6] > _MAX_SCRATCH or wd[4] * wd[7] * wd[8] > _MAX_SCRATCH:
                return False
            return (_inside(wd[0], wd[4] * wd[5] * wd[6], arena_n, 1) and _inside(wd[1], 12 * wd[7], pool_n, 4)
                    and _inside(wd[2], 12 * wd[8], pool_n, 4) and _inside(wd[3], wd[4] * wd[7] * wd[8], arena_n, 1))
        if op == codes[15]:                                       # QLayerNorm
            if n != 11 or wd[4] < 0 or wd[5] < 1 or wd[5] > _MAX_LN_COLS or wd[4] > _MAX_SCRATCH:
                return False
            if wd[8] < 0 or wd[8] > (1 << 40):
                return False
            for k in (6, 7, 9, 10):
                if wd[k] < -128 or wd[k] > 127:
                    return False
            return (_inside(wd[0], wd[4] * wd[5], arena_n, 1) and _inside(wd[1], 4 * wd[5], pool_n, 4)
                    and _inside(wd[2], 4 * wd[5], pool_n, 4) and _inside(wd[3], wd[4] * wd[5], arena_n, 1))
        return False

    @njit(cache=True)
    def _validate(words, codes, arena_n, pool_n, in_desc, in_width, out_desc, out_width):
        """-1 if the program and the I/O descriptors fit the buffers, else the first bad node's index
        (or -2 for the descriptors)."""
        for desc, width in ((in_desc, in_width), (out_desc, out_width)):
            total = 0
            for i in range(desc.shape[0]):
                if not _inside(desc[i, 0], desc[i, 1], arena_n, 1):
                    return -2
                total += desc[i, 1]
            if total != width:
                return -2
        pc, i = 0, 0
        while pc < words.size:
            if pc + 2 > words.size or words[pc + 1] < 2 or pc + words[pc + 1] > words.size:
                return i
            if not _check_node(words[pc], words[pc + 2:pc + words[pc + 1]], codes, arena_n, pool_n):
                return i
            pc += words[pc + 1]
            i += 1
        return -1

    @njit(cache=True)
    def _node(op, wd, arena, a16, p8, p16, p32, codes, ws, ws_ready, threads):
        """Decode one node record's words (layouts in registry.py) and call its kernel. ``a16`` and
        ``p16`` view the arena and the pool as int16 (int16 operands are 2-byte aligned)."""
        empty = p8[:0]
        if op == codes[0] and (wd[26] == 16 or wd[27] == 16):   # QConv with an int16 side
            oc = wd[10]
            w, bias = p8[wd[1]:], p32[wd[2] >> 2:(wd[2] >> 2) + oc]
            mult, shift = p32[wd[3] >> 2:(wd[3] >> 2) + oc], p32[wd[4] >> 2:(wd[4] >> 2) + oc]
            lut = p8[wd[5]:wd[5] + 256] if wd[5] >= 0 else empty
            xs = wd[7] * wd[8] * wd[9]
            if wd[26] == 8:
                K.conv_rows(arena[wd[0]:wd[0] + xs].copy(), w, bias, mult, shift, empty, a16[wd[6] >> 1:], wd[7], wd[8],
                            wd[9], wd[10], wd[11], wd[12], wd[13], wd[14], wd[15], wd[16], wd[17], wd[18], wd[19],
                            wd[20], wd[21], wd[22], wd[23], wd[24], wd[25])
            elif wd[27] == 8:
                K.conv_rows(a16[wd[0] >> 1:(wd[0] >> 1) + xs].copy(), w, bias, mult, shift, lut, arena[wd[6]:], wd[7],
                            wd[8], wd[9], wd[10], wd[11], wd[12], wd[13], wd[14], wd[15], wd[16], wd[17], wd[18],
                            wd[19], wd[20], wd[21], wd[22], wd[23], wd[24], wd[25])
            else:
                K.conv_rows(a16[wd[0] >> 1:(wd[0] >> 1) + xs].copy(), w, bias, mult, shift, empty, a16[wd[6] >> 1:],
                            wd[7], wd[8], wd[9], wd[10], wd[11], wd[12], wd[13], wd[14], wd[15], wd[16], wd[17],
                            wd[18], wd[19], wd[20], wd[21], wd[22], wd[23], wd[24], wd[25])
        elif op == codes[0] or op == codes[1]:                   # QConv, QFullyConnected
            is_conv = op == codes[0]
            oc = wd[10] if is_conv else wd[8]
            lut = p8[wd[5]:wd[5] + 256] if wd[5] >= 0 else empty
            x, y, w = arena[wd[0]:], arena[wd[6]:], p8[wd[1]:]
            bias = p32[wd[2] >> 2:(wd[2] >> 2) + oc]
            mult = p32[wd[3] >> 2:(wd[3] >> 2) + oc]
            shift = p32[wd[4] >> 2:(wd[4] >> 2) + oc]
            if is_conv:
                xs, ys = wd[7] * wd[8] * wd[9], wd[10] * wd[11] * wd[12]
                if wd[0] < wd[6] + ys and wd[6] < wd[0] + xs:
                    x = x[:xs].copy()  # a depthwise conv planned in place (planner.py): read a copy
                # K.conv is conv_kind + conv_with; calling the two here saves a level of linking, which
                # Numba pays for in compile time at every level above the kernels.
                kind, tile = K.conv_kind(wd[7], wd[10], wd[11], wd[12], wd[13], wd[14], wd[16], wd[20], wd[21])
                K.conv_with(kind, tile, x, w, bias, mult, shift, lut, y, wd[7], wd[8], wd[9], wd[10], wd[11],
                            wd[12], wd[13], wd[14], wd[15], wd[16], wd[17], wd[18], wd[19], wd[20], wd[21],
                            wd[22], wd[23], wd[24], wd[25], ws, ws_ready, threads)
            elif wd[13]:
                K.fully_connected_single(x, w, bias, mult, shift, lut, y, wd[7], wd[8], wd[9], wd[10], wd[11],
                                         wd[12])
            else:
                K.fully_connected(x, w, bias, mult, shift, lut, y, wd[7], wd[8], wd[9], wd[10], wd[11],
                                  wd[12], threads)
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
            if wd[4] == 8 and wd[5] == 8:
                K.lut(arena[wd[0]:], p8[wd[1]:wd[1] + 256], arena[wd[2]:], wd[3])
            elif wd[4] == 8:
                K.lut(arena[wd[0]:], p16[wd[1] >> 1:(wd[1] >> 1) + 256], a16[wd[2] >> 1:], wd[3])
            elif wd[5] == 8:
                K.lut_interp(a16[wd[0] >> 1:], p16[wd[1] >> 1:(wd[1] >> 1) + 513], arena[wd[2]:], wd[3], -128, 127)
            else:
                K.lut_interp(a16[wd[0] >> 1:], p16[wd[1] >> 1:(wd[1] >> 1) + 513], a16[wd[2] >> 1:], wd[3],
                             -32768, 32767)
        elif op == codes[16]:                                     # QRequantize
            x0, y0, cnt = wd[0], wd[1], wd[2]
            if wd[3] == 8 and wd[4] == 8:
                K.requantize(arena[x0:], arena[y0:], cnt, wd[5], wd[6], wd[7], wd[8], -128, 127)
            elif wd[3] == 8:
                K.requantize(arena[x0:], a16[y0 >> 1:], cnt, wd[5], wd[6], wd[7], wd[8], -32768, 32767)
            elif wd[4] == 8:
                K.requantize(a16[x0 >> 1:], arena[y0:], cnt, wd[5], wd[6], wd[7], wd[8], -128, 127)
            else:
                K.requantize(a16[x0 >> 1:], a16[y0 >> 1:], cnt, wd[5], wd[6], wd[7], wd[8], -32768, 32767)
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
            y_inner = np.int64(0)
            for i in range(n_in):
                y_inner += wd[4 + 5 * i + 1]
            pos = np.int64(0)
            for i in range(n_in):
                r = wd[4 + 5 * i:9 + 5 * i]
                K.concat_part(arena[r[0]:], y, outer, r[1], y_inner, pos, r[2], r[3], r[4], y_zp)
                pos += r[1]
        elif op == codes[9]:                                      # QReshape
            K.move(arena, wd[0], wd[1], wd[2])
        elif op == codes[10]:                                     # QCopyWindow
            K.copy_window(arena, wd[0], wd[1], wd[2], wd[3], wd[4], wd[5], wd[6], wd[7], wd[8], wd[9], wd[10],
                          wd[11], wd[12], wd[13])
        elif op == codes[11]:                                     # QStridedCopy
            K.strided_copy(arena[wd[0]:], arena[wd[2]:], wd[3], wd[4:10], wd[10:16])
        elif op == codes[12]:                                     # QMatMul
            N = wd[11]
            lut = p8[wd[6]:wd[6] + 256] if wd[6] >= 0 else empty
            b = p8[wd[1]:] if wd[2] else arena[wd[1]:]
            K.matmul(arena[wd[0]:], b, p32[wd[3] >> 2:(wd[3] >> 2) + N], p32[wd[4] >> 2:(wd[4] >> 2) + N],
                     p32[wd[5] >> 2:(wd[5] >> 2) + N], lut, arena[wd[7]:], wd[8], wd[9], wd[10], N, wd[12], wd[13],
                     wd[14], wd[15], wd[16], wd[17], wd[18], wd[19])
        elif op == codes[13]:                                     # QConvTranspose
            oc = wd[10]
            lut = p8[wd[5]:wd[5] + 256] if wd[5] >= 0 else empty
            K.conv_transpose(arena[wd[0]:], p8[wd[1]:], p32[wd[2] >> 2:(wd[2] >> 2) + oc],
                             p32[wd[3] >> 2:(wd[3] >> 2) + oc], p32[wd[4] >> 2:(wd[4] >> 2) + oc], lut,
                             arena[wd[6]:], wd[7], wd[8], wd[9], wd[10], wd[11], wd[12], wd[13], wd[14], wd[15],
                             wd[16], wd[17], wd[18], wd[19], wd[20], wd[21], wd[22], wd[23], wd[24], wd[25])
        elif op == codes[14]:                                     # QResize
            K.resize(arena[wd[0]:], p32[wd[1] >> 2:(wd[1] >> 2) + 3 * wd[7]], p32[wd[2] >> 2:(wd[2] >> 2) + 3 * wd[8]],
                     arena[wd[3]:], wd[4], wd[5], wd[6], wd[7], wd[8], wd[9])
        elif op == codes[15]:                                     # QLayerNorm
            K.layer_norm(arena[wd[0]:], p32[wd[1] >> 2:(wd[1] >> 2) + wd[5]], p32[wd[2] >> 2:(wd[2] >> 2) + wd[5]],
                         arena[wd[3]:], wd[4], wd[5], wd[6], wd[7], wd[8], wd[9], wd[10])
        else:
            raise ValueError("unknown opcode in program")

    @njit(cache=True)
    def _run(words, arena, pool, in_i8, in_f32, in_desc, in_qp, out_i8, out_f32, out_desc, out_qp, codes, ws,
             plan, ws_ready, threads):
        """Every sample: inputs -> arena, each node record in order, arena -> outputs.

        Samples come as int8 (``in_i8``/``out_i8``) or, when ``in_f32`` has rows, as float32 quantized
        and dequantized here exactly as executor.quantize and executor.dequantize do (float32 division,
        round half to even, NaN -> -128, clip; the unused pair is empty). One function serves both so
        the whole kernel library is compiled once.
        """
        p8 = pool.view(np.int8)
        # Constant offsets are 64-byte aligned, so int32 constants are whole elements of this view.
        p32 = pool[:pool.size // 4 * 4].view(np.int32)
        p16 = pool[:pool.size // 2 * 2].view(np.int16)
        a16 = arena[:arena.size // 2 * 2].view(np.int16)
        floats = in_f32.shape[0] > 0
        for b in range(max(in_i8.shape[0], in_f32.shape[0])):
            pos = 0
            for i in range(in_desc.shape[0]):
                off, n = in_desc[i, 0], in_desc[i, 1]
                if floats:
                    scale, zp = in_qp[i, 0], in_qp[i, 1]
                    for j in range(n):
                        q = np.rint(in_f32[b, pos + j] / scale) + zp
                        q = np.float32(-128.0) if np.isnan(q) else q
                        q = min(max(q, np.float32(-128.0)), np.float32(127.0))
                        arena[off + j] = np.int8(q)
                else:
                    for j in range(n):  # (element loops: a slice copy compiles a shape-check path)
                        arena[off + j] = in_i8[b, pos + j]
                pos += n
            pc, i = 0, 0
            while pc < words.size:
                n_words = words[pc + 1]
                _node(words[pc], words[pc + 2:pc + n_words], arena, a16, p8, p16, p32, codes,
                      ws[plan[i, 0]:plan[i, 0] + plan[i, 1]], ws_ready or b > 0, threads)
                pc += n_words
                i += 1
            pos = 0
            for i in range(out_desc.shape[0]):
                off, n = out_desc[i, 0], out_desc[i, 1]
                if floats:
                    # (q - zp) * scale is exact in float64, so rounding it once to float32 matches
                    # NumPy's int32 * float32 -> float64 -> float32 path.
                    scale, zp = np.float64(out_qp[i, 0]), np.int64(out_qp[i, 1])
                    for j in range(n):
                        out_f32[b, pos + j] = np.float32((np.int64(arena[off + j]) - zp) * scale)
                else:
                    for j in range(n):
                        out_i8[b, pos + j] = arena[off + j]
                pos += n

    def _tie_cache_to_kernels() -> None:
        """Numba invalidates a cached function only when its own file changes; _run inlines the kernels,
        so its cache must also go stale when numba_kernels.py changes (e.g. an editable install)."""
        here = os.path.abspath(__file__)
        files = [here, os.path.abspath(K.__file__), os.path.join(os.path.dirname(here), "fixedpoint.py")]
        stats = [os.stat(f) for f in files if os.path.exists(f)]
        stamp = (max(s.st_mtime for s in stats), sum(s.st_size for s in stats))
        for fn in (_run, _node, _plan, _validate, _check_node, _inside):
            try:
                fn._cache._cache_file._source_stamp = stamp
            except AttributeError:  # pragma: no cover - a Numba without this internal keeps its default
                pass

    _tie_cache_to_kernels()


@dataclass
class _Prepared:
    """A validated (program, buffers) combination and its workspace of packed weights (``ready`` once
    a run has filled them)."""

    refs: tuple                # weak references: words, pool, arena, in_desc, out_desc
    key: tuple                 # sample widths and array sizes
    ws: np.ndarray
    plan: np.ndarray
    ready: bool = False


_prepared: dict[int, _Prepared] = {}
_pool_copy: tuple[weakref.ref, np.ndarray] | None = None


def _prepare(words: np.ndarray, arena: np.ndarray, pool: np.ndarray, in_desc: np.ndarray, in_width: int,
             out_desc: np.ndarray, out_width: int) -> _Prepared:
    """Check the buffers and the program once per combination of arrays (by identity) and keep its
    workspace.

    The kernels index without bounds checks, so a program whose operands leave the arena or the pool
    (a corrupt or hostile bundle) is refused here. Editing the program, the descriptors or the
    constants in place between runs is not supported (it would skip the check and stale the packed
    weights); an Executor never does.
    """
    key = (in_width, out_width, words.size, arena.size, pool.size, in_desc.shape, out_desc.shape)
    entry = _prepared.get(id(words))
    if entry is not None and entry.key == key:
        r = entry.refs
        if r[0]() is words and r[1]() is pool and r[2]() is arena and r[3]() is in_desc and r[4]() is out_desc:
            return entry
    need_program("numba", words, arena, pool, in_desc, out_desc)
    bad = _validate(words, _OPCODES, arena.size, pool.size, in_desc, in_width, out_desc, out_width)
    if bad == -2:
        raise BackendError("numba backend: the input/output descriptors do not fit the arena or the sample "
                           "width")
    if bad >= 0:
        raise BackendError(f"numba backend: program node {bad} has operands outside the arena or the "
                           f"constants, or invalid sizes (corrupt bundle?)")
    plan, total = _plan(words, _OPCODES)
    raw = np.zeros(total + 64, np.uint8)
    start = -raw.ctypes.data % 64  # int32 corrections and 64-byte weight vectors: keep it aligned
    k = id(words)
    refs = (weakref.ref(words, lambda _: _prepared.pop(k, None)),) + tuple(
        weakref.ref(a) for a in (pool, arena, in_desc, out_desc))
    entry = _Prepared(refs, key, raw[start:start + total].view(np.int8), plan)
    _prepared[k] = entry
    return entry


def _writable(pool: np.ndarray) -> np.ndarray:
    """A writable copy of a read-only pool (e.g. a bundle mapped from bytes), made once per pool: Numba
    would otherwise compile every kernel a second time for read-only arrays."""
    global _pool_copy
    if pool.flags.writeable:
        return pool
    if _pool_copy is None or _pool_copy[0]() is not pool:
        _pool_copy = (weakref.ref(pool), np.array(pool, dtype=np.uint8))
    return _pool_copy[1]


def _thread_count() -> int:
    global _threads
    if _threads is None:
        _threads = numba.get_num_threads()
    return _threads


def execute_float(words: np.ndarray, arena: np.ndarray, pool: np.ndarray, x: np.ndarray, in_desc: np.ndarray,
                  in_qp: np.ndarray, y: np.ndarray, out_desc: np.ndarray, out_qp: np.ndarray) -> None:
    """:func:`execute` with the float boundary inside the compiled call: ``x`` float32 [N, input
    elements] is quantized into the arena with the (scale, zero point) rows of ``in_qp`` exactly as
    ``executor.quantize`` does (NaN -> -128), and the outputs are dequantized into ``y`` float32
    [N, output elements] as ``executor.dequantize`` does (``out_qp`` likewise)."""
    ensure_available()
    need("numba", x, np.float32, 2, "x")
    need("numba", y, np.float32, 2, "y", writable=True)
    for qp, desc, name in ((in_qp, in_desc, "in_qp"), (out_qp, out_desc, "out_qp")):
        need("numba", qp, np.float32, 2, name)
        if qp.shape != (desc.shape[0], 2):
            raise BackendError(f"numba backend: {name} must have one (scale, zero point) row per tensor")
    if x.shape[0] != y.shape[0]:
        raise BackendError(f"numba backend: {x.shape[0]} input samples but {y.shape[0]} output rows")
    prep = _prepare(words, arena, pool, in_desc, x.shape[1], out_desc, y.shape[1])
    _run(words, arena, _writable(pool), _NO_I8, x, in_desc, in_qp, _NO_I8, y, out_desc, out_qp, _OPCODES,
         prep.ws, prep.plan, prep.ready, _thread_count())
    prep.ready = prep.ready or x.shape[0] > 0


def execute(words: np.ndarray, arena: np.ndarray, pool: np.ndarray, in_buf: np.ndarray,
            in_desc: np.ndarray, out_buf: np.ndarray, out_desc: np.ndarray) -> None:
    """Run the program ``words`` on every sample of ``in_buf`` (int8 [N, in_total]) into ``out_buf``.

    ``in_desc``/``out_desc`` rows are (arena offset, bytes per sample); inputs and outputs are packed
    back to back in each row of ``in_buf``/``out_buf``. ``pool`` holds the constants (uint8).
    """
    ensure_available()
    need("numba", in_buf, np.int8, 2, "in_buf")
    need("numba", out_buf, np.int8, 2, "out_buf", writable=True)
    if in_buf.shape[0] != out_buf.shape[0]:
        raise BackendError(f"numba backend: {in_buf.shape[0]} input samples but {out_buf.shape[0]} output rows")
    prep = _prepare(words, arena, pool, in_desc, in_buf.shape[1], out_desc, out_buf.shape[1])
    _run(words, arena, _writable(pool), in_buf, _NO_F32, in_desc, _NO_QP, out_buf, _NO_F32, out_desc, _NO_QP,
         _OPCODES, prep.ws, prep.plan, prep.ready, _thread_count())
    prep.ready = prep.ready or in_buf.shape[0] > 0
