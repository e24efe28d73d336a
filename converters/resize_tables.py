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


def resize_table(in_size: int, out_size: int, mode: str, coord: str, nearest_mode: str = "round_prefer_floor",
                 scale: float | None = None) -> np.ndarray:
    """int32 [out_size, 3] rows (i0, i1, w1) for one axis; ``scale`` defaults to out_size / in_size."""
    scale = scale or out_size / in_size
    rows = np.zeros((out_size, 3), dtype=np.int32)
    for o in range(out_size):
        x = source_coordinate(o, in_size, out_size, coord, scale)
        if mode == "nearest":
            i = min(max(_nearest(x, nearest_mode), 0), in_size - 1)
            rows[o] = (i, i, 0)
            continue
        x = min(max(x, 0.0), in_size - 1.0)
        i0 = int(math.floor(x))
        rows[o] = (i0, min(i0 + 1, in_size - 1), int(round((x - i0) * RESIZE_ONE)))
    return rows
