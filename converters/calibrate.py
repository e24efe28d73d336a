"""Calibration: run the float graph on user samples and pick an int8 range for every activation.

Methods: ``minmax`` (observed range), ``percentile`` (0.01/99.99 percentiles, robust to outliers) and
``mse`` (the clipping range minimising the quantize-dequantize error on the observed values), and
``auto``: the pipeline quantizes with minmax, percentile and a hybrid of the two (percentile for
convolution features, minmax for transformer operands), each with and without channel splitting, and
keeps the one whose outputs are closest to the float model's on the calibration samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeq.errors import CalibrationError
from edgeq.ir import Graph
from edgeq.npio import read_named_arrays
from edgeq.progress import Progress
from .float_ops import run_float

METHODS = ("minmax", "percentile", "mse", "auto")
SAMPLE_CAP = 1 << 16  # values kept per tensor for percentile/mse; enough for stable estimates


def load_calibration(path: str | Path) -> dict[str, np.ndarray]:
    """Read a .npy (N samples of the only input, keyed "") or .npz (keyed by input name)."""
    return read_named_arrays(path, [""], CalibrationError, "calibration")


def check_calibration(data: dict[str, np.ndarray], graph: Graph) -> dict[str, np.ndarray]:
    """Validate names, dtypes and shapes of calibration arrays against the graph's inputs."""
    out = {}
    for name in graph.inputs:
        if name not in data:
            raise CalibrationError(f"calibration data has no array for input '{name}' (has: {', '.join(data) or 'none'})")
        x = np.asarray(data[name])
        if x.dtype.kind not in "fiu":
            raise CalibrationError(f"calibration data for '{name}' has dtype {x.dtype}; expected float32")
        want = graph.tensors[name].shape
        if x.ndim != len(want) or x.shape[1:] != want[1:] or x.shape[0] < 1:
            raise CalibrationError(f"calibration data for '{name}' has shape {x.shape}; expected N x "
                                   f"{'x'.join(map(str, want[1:]))}")
        if not np.all(np.isfinite(x)):
            raise CalibrationError(f"calibration data for '{name}' contains NaN or Inf")
        out[name] = x.astype(np.float32)
    return out


def _mse_range(values: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    best, best_err = (lo, hi), np.inf
    for alpha in np.linspace(0.3, 1.0, 36):
        a, b = min(alpha * lo, 0.0), max(alpha * hi, 0.0)
        scale = max((b - a) / 255, 1e-12)
        zp = np.round(-128 - a / scale)
        dq = (np.clip(np.round(values / scale) + zp, -128, 127) - zp) * scale
        err = float(np.mean((dq - values) ** 2))
        if err < best_err:
            best, best_err = (a, b), err
    return best


def collect_range_sets(graph: Graph, calib: dict[str, np.ndarray], methods: tuple[str, ...], batch: int = 16,
                       progress: bool = True) -> dict[str, dict[str, tuple[float, float]]]:
    """Float range [lo, hi] of every activation tensor for each of ``methods``, in one pass over the
    calibration samples."""
    for method in methods:
        if method not in METHODS[:3]:
            raise CalibrationError(f"unknown calibration method '{method}'; choose one of {', '.join(METHODS)}")
    n = next(iter(calib.values())).shape[0]
    rng = np.random.default_rng(0)
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    kept: dict[str, list[np.ndarray]] = {}
    sampled = any(m != "minmax" for m in methods)
    with Progress("calibrating", n, progress) as bar:
        for start in range(0, n, batch):
            values = dict(graph.consts)
            values.update({k: v[start: start + batch] for k, v in calib.items()})
            run_float(graph.nodes, values)
            for name, t in graph.tensors.items():
                if name in graph.consts:
                    continue
                v = values[name].reshape(-1)
                lo[name] = min(lo.get(name, np.inf), float(v.min()))
                hi[name] = max(hi.get(name, -np.inf), float(v.max()))
                if sampled:
                    take = min(v.size, SAMPLE_CAP * batch // max(n, 1) + 1)
                    kept.setdefault(name, []).append(rng.choice(v, size=take, replace=False))
            bar.advance(min(batch, n - start))
    out: dict[str, dict[str, tuple[float, float]]] = {m: {} for m in methods}
    for name in lo:
        sample = np.concatenate(kept[name]).astype(np.float64) if sampled else None
        for method in methods:
            if method == "minmax":
                out[method][name] = (lo[name], hi[name])
            elif method == "percentile":
                out[method][name] = (float(np.percentile(sample, 0.01)), float(np.percentile(sample, 99.99)))
            else:
                out[method][name] = _mse_range(sample, lo[name], hi[name])
    return out


def collect_ranges(graph: Graph, calib: dict[str, np.ndarray], method: str = "minmax", batch: int = 16,
                   progress: bool = True) -> dict[str, tuple[float, float]]:
    """Float range [lo, hi] of every activation tensor over the calibration samples (one method)."""
    return collect_range_sets(graph, calib, (method,), batch, progress)[method]


def full_range_tensors(graph: Graph) -> set[str]:
    """Operands of LayerNorm, Softmax and activation MatMuls: clipping an attention logit or a LayerNorm
    outlier dimension costs more than the resolution it buys, so these keep their min/max range."""
    keep: set[str] = set()
    for n in graph.nodes:
        if n.op in ("LayerNorm", "Softmax", "MatMul") or \
                (n.op == "FullyConnected" and len(graph.tensors[n.inputs[0]].shape) > 2):
            keep.update(i for i in n.inputs if i and i not in graph.consts)
            keep.update(n.outputs)
    return keep


def hybrid_ranges(graph: Graph, minmax: dict[str, tuple[float, float]],
                  percentile: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Percentile ranges (robust for convolution features), min/max for :func:`full_range_tensors`."""
    keep = full_range_tensors(graph)
    return {k: minmax[k] if k in keep else percentile[k] for k in minmax}
