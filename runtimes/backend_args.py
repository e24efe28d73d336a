"""Argument checks shared by the compiled backends: their kernels index without bounds checks, so the
arrays they receive are checked for dtype, rank, contiguity and writability first."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeq.errors import BackendError


def need(backend: str, a: Any, dtype: type, ndim: int, name: str, writable: bool = False) -> None:
    """Raise BackendError unless ``a`` is a C-contiguous ``dtype`` array of rank ``ndim`` (writable if asked)."""
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != ndim or not a.flags.c_contiguous:
        got = f"{a.dtype}[{a.ndim}-D]" if isinstance(a, np.ndarray) else type(a).__name__
        raise BackendError(f"{backend} backend: {name} must be a C-contiguous {np.dtype(dtype).name} array with "
                           f"{ndim} dimension(s), got {got}")
    if writable and not a.flags.writeable:
        raise BackendError(f"{backend} backend: {name} must be writable")


def need_program(backend: str, words: Any, arena: Any, pool: Any, in_desc: Any, out_desc: Any) -> None:
    """The program buffers every backend receives: int64 words, int8 arena, uint8 pool, [n, 2] descriptors."""
    need(backend, words, np.int64, 1, "words")
    need(backend, arena, np.int8, 1, "arena", writable=True)
    need(backend, pool, np.uint8, 1, "pool")
    need(backend, in_desc, np.int64, 2, "in_desc")
    need(backend, out_desc, np.int64, 2, "out_desc")
    if in_desc.shape[1] != 2 or out_desc.shape[1] != 2:
        raise BackendError(f"{backend} backend: in_desc and out_desc must have two columns (offset, bytes)")
