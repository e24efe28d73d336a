"""ONNX Resize, per axis, as the integer tables of ``QResize``: for every output position the two input
positions it reads and the weight of the second (out of ``reference.RESIZE_ONE``).

The coordinate transform and the rounding of nearest-neighbour indices follow the ONNX Resize spec;
bilinear weights are rounded to 1/2048 (exact for the common 2x and 4x half-pixel cases).
"""

from __future__ import annotations

import math

import numpy as np

from edgeq.runtimes.reference import RESIZE_ONE

COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
MODES = ("nearest", "linear")


def source_coordinate(out_pos: int, in_size: int, out_size: int, coord: str, scale: float) -> float:
    """Where output position ``out_pos`` samples the input (ONNX coordinate_transformation_mode)."""
    if coord == "half_pixel":
        return (out_pos + 0.5) / scale - 0.5
    if coord == "pytorch_half_pixel":
        return (out_pos + 0.5) / scale - 0.5 if out_size > 1 else 0.0
    if coord == "align_corners":
        return out_pos * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    if coord == "asymmetric":
        return out_pos / scale
    if coord == "tf_half_pixel_for_nn":
        return (out_pos + 0.5) / scale
    raise ValueError(f"unknown coordinate transformation mode '{coord}'")


def _nearest(x: float, mode: str) -> int:
    if mode == "round_prefer_floor":
        return math.ceil(x - 0.5)
    if mode == "round_prefer_ceil":
        return math.floor(x + 0.5)
    if mode == "floor":
        return math.floor(x)
    if mode == "ceil":
        return math.ceil(x)
    raise ValueError(f"unknown nearest mode '{mode}'")


def resize_taps(in_size: int, out_size: int, mode: str, coord: str, nearest_mode: str = "round_prefer_floor",
                scale: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output position of one axis: input positions i0, i1 and the float weight of i1."""
    scale = scale or out_size / in_size
    i0 = np.zeros(out_size, dtype=np.int64)
    i1 = np.zeros(out_size, dtype=np.int64)
    w1 = np.zeros(out_size, dtype=np.float64)
    for o in range(out_size):
        x = source_coordinate(o, in_size, out_size, coord, scale)
        if mode == "nearest":
            i0[o] = i1[o] = min(max(_nearest(x, nearest_mode), 0), in_size - 1)
            continue
        x = min(max(x, 0.0), in_size - 1.0)
        i0[o] = int(math.floor(x))
        i1[o] = min(i0[o] + 1, in_size - 1)
        w1[o] = x - i0[o]
    return i0, i1, w1


def resize_table(in_size: int, out_size: int, mode: str, coord: str, nearest_mode: str = "round_prefer_floor",
                 scale: float | None = None) -> np.ndarray:
    """int32 [out_size, 3] rows (i0, i1, w1) for one axis; ``scale`` defaults to out_size / in_size."""
    i0, i1, w1 = resize_taps(in_size, out_size, mode, coord, nearest_mode, scale)
    return np.stack([i0, i1, np.round(w1 * RESIZE_ONE)], axis=1).astype(np.int32)


def resize_float(x: np.ndarray, *, mode: str, coord: str, nearest_mode: str, size: list[int],
                 scales: list[float]) -> np.ndarray:
    """The float Resize of an NCHW tensor along H and W (the model's own arithmetic)."""
    out = x.astype(np.float32)
    for axis, (n_out, scale) in zip((2, 3), zip(size, scales)):
        i0, i1, w1 = resize_taps(out.shape[axis], n_out, mode, coord, nearest_mode, scale)
        if not w1.any():  # nearest (or an integer-aligned bilinear): a gather, no blend
            out = np.take(out, i0, axis=axis)
            continue
        shape = [1] * out.ndim
        shape[axis] = n_out
        w = w1.reshape(shape).astype(np.float32)
        out = np.take(out, i0, axis=axis) * (1 - w) + np.take(out, i1, axis=axis) * w
    return out.astype(np.float32)
