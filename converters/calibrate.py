"""Calibration: run the float graph on user samples and pick an int8 range for every activation.

Methods: ``minmax`` (observed range), ``percentile`` (0.01/99.99 percentiles of all the values, robust
to outliers) and ``mse`` (the clipping range minimising the quantize-dequantize error on a sample of
the observed values), and
``auto``: the pipeline quantizes with minmax, percentile and a hybrid of the two (percentile for
convolution features, minmax for transformer operands), each with and without channel splitting, and
keeps the one whose outputs are closest to the float model's on the calibration samples.
"""

from __future__ import annotations

import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Protocol

import numpy as np

from edgeq.errors import CalibrationError
from edgeq.ir import Graph
from edgeq.npio import read_named_arrays
from edgeq.progress import Progress
from .float_ops import run_float

METHODS = ("minmax", "percentile", "mse", "auto")
SAMPLE_CAP = 1 << 16  # values kept per tensor for mse; enough for a stable estimate
PERCENTILE = 99.99   # the percentile method's upper bound (and 100 - PERCENTILE its lower one)
BATCH = 8            # samples per float forward pass, at most ...
BATCH_VALUES = 1 << 20  # ... input values: 640x640 pages go one by one (a batch of 8 pages ran 2x slower:
                        # its 200 MB temporaries are fresh mmaps, page-faulted on every op)
WORKERS = 2          # batches in flight: BLAS and NumPy's loops release the GIL, so each gets a core


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


def _largest(a: np.ndarray, k: int) -> np.ndarray:
    """The k largest values of ``a``, ascending. A threshold from a strided subsample picks about 2k
    candidates in one comparison pass (a full partition of a 640x640 feature map is 10x slower)."""
    if a.size > 64 * k:
        step = a.size // (16 * k)
        sub = a[::step]
        t = np.partition(sub, sub.size - 2 * (k // step + 1))[sub.size - 2 * (k // step + 1)]
        cand = a[a >= t]
        if cand.size >= k:  # at least k values >= t: the k largest are among them
            a = cand
    return np.sort(a if a.size <= k else np.partition(a, a.size - k)[a.size - k:])


def _smallest(a: np.ndarray, k: int) -> np.ndarray:
    """The k smallest values of ``a``, ascending."""
    return -_largest(-a, k)[::-1]


class RangeStats:
    """Running statistics of every observed tensor (or channel view) over the calibration batches, from
    which each method's range is computed at the end: min/max; for ``percentile`` the exact tails (the k
    smallest and largest values, k just enough for the PERCENTILE of all values; a sample's 0.01% tail
    would be a handful of values, and det's accuracy moved by 4 dB between two random draws); for ``mse``
    a bounded uniform sample."""

    def __init__(self, total: int, methods: tuple[str, ...], seed: int = 0):
        self.total = max(total, 1)  # samples in the whole pass
        self.tails, self.sampled = "percentile" in methods, "mse" in methods
        self.lo: dict[Hashable, float] = {}
        self.hi: dict[Hashable, float] = {}
        self.count: dict[Hashable, int] = {}  # values the whole pass will show
        self.low: dict[Hashable, np.ndarray] = {}
        self.high: dict[Hashable, np.ndarray] = {}
        self.kept: dict[Hashable, list[tuple[int, np.ndarray]]] = {}
        self.seed = seed

    def add(self, key: Hashable, v: np.ndarray, batch: int = 0) -> None:
        """Fold in batch number ``batch`` of ``key``'s values (the batch is the leading axis), in any order.
        ``v`` is scanned as it is (a cropped convolution output is strided: flattening would copy it)."""
        if self.tails:
            n = self.count.setdefault(key, self.total * (v.size // max(v.shape[0], 1)))
            k = int(np.ceil((n - 1) * (100 - PERCENTILE) / 100)) + 2
            low, high = self.low.get(key), self.high.get(key)
            if low is None:
                flat = v.reshape(-1)
                self.low[key], self.high[key] = _smallest(flat, k), _largest(flat, k)
            else:
                # Only values beyond the k-th kept one can enter a full tail; the batch's extremes (fast
                # reductions) tell whether any does: a ReLU's low tail of zeros never needs the scan.
                if low.size < k or v.min() < low[-1]:
                    self.low[key] = _smallest(np.concatenate((low, v.reshape(-1) if low.size < k else v[v < low[-1]])), k)
                if high.size < k or v.max() > high[0]:
                    self.high[key] = _largest(np.concatenate((high, v.reshape(-1) if high.size < k else v[v > high[0]])), k)
            # the tails hold the extremes too
            self.lo[key], self.hi[key] = float(self.low[key][0]), float(self.high[key][-1])
        else:
            self.lo[key] = min(self.lo.get(key, np.inf), float(v.min()))
            self.hi[key] = max(self.hi.get(key, -np.inf), float(v.max()))
        if self.sampled:
            flat = v.reshape(-1)
            # Each batch contributes its share of SAMPLE_CAP; small tensors are kept whole.
            take = -(-SAMPLE_CAP * v.shape[0] // self.total)
            rng = np.random.default_rng([self.seed, batch, zlib.crc32(repr(key).encode())])
            self.kept.setdefault(key, []).append((batch, flat.copy() if take >= flat.size else
                                                  flat[rng.integers(0, flat.size, take)]))

    def _value(self, key: Hashable, i: int) -> float:
        """The i-th smallest of all the values seen (within the kept tails)."""
        low, high, n = self.low[key], self.high[key], self.count[key]
        return float(low[i] if i < low.size else high[i - (n - high.size)])

    def percentile(self, key: Hashable, q: float) -> float:
        """np.percentile of all the values seen (linear interpolation), from the kept tails."""
        pos = q / 100 * (self.count[key] - 1)
        i = int(np.floor(pos))
        a, b = self._value(key, i), self._value(key, min(i + 1, self.count[key] - 1))
        return a + (b - a) * (pos - i)

    def ranges(self, method: str) -> dict[Hashable, tuple[float, float]]:
        """[lo, hi] of every key for ``method`` (minmax, percentile or mse)."""
        if method == "minmax":
            return {k: (self.lo[k], self.hi[k]) for k in self.lo}
        if method == "percentile":
            return {k: (self.percentile(k, 100 - PERCENTILE), self.percentile(k, PERCENTILE)) for k in self.lo}
        return {k: _mse_range(np.concatenate([v for _, v in sorted(self.kept[k], key=lambda bv: bv[0])]).astype(np.float64),
                              self.lo[k], self.hi[k]) for k in self.lo}


class Views(Protocol):
    """Channel views decided from the first calibration batch (see ``channel_split.SplitPlanner``)."""

    tensors: set[str]  # the tensors decide() reads
    samples: int       # ... over this many first samples

    def decide(self, first: Callable[[str], np.ndarray]) -> dict[Hashable, tuple[str, np.ndarray]]:
        """{view key: (tensor, channel indices)}, given ``first(t)``: the values of a tensor t of
        ``tensors`` over (at least) the first ``samples`` samples."""


@dataclass
class Calibration:
    """What one float pass over the calibration samples gathered."""

    ranges: dict[str, dict[Hashable, tuple[float, float]]]  # method -> tensor or view key -> [lo, hi]
    outputs: dict[str, np.ndarray]                           # graph outputs of the first samples


def calibrate(graph: Graph, calib: dict[str, np.ndarray], methods: tuple[str, ...], *, views: Views | None = None,
              keep_outputs: int = 0, progress: bool = True) -> Calibration:
    """One float pass over the calibration samples, in batches (WORKERS at a time), that gathers
    everything the methods need for every activation tensor and channel ``views`` (decided from the
    first samples), and the float outputs of the first ``keep_outputs`` samples. The result does not
    depend on the order the batches finish in."""
    for method in methods:
        if method not in METHODS[:3]:
            raise CalibrationError(f"unknown calibration method '{method}'; choose one of {', '.join(METHODS)}")
    n = next(iter(calib.values())).shape[0]
    stats = RangeStats(n, methods)
    lock = threading.Lock()
    # One lock per tensor: the workers fold different tensors' statistics at the same time (RangeStats
    # keeps each key's state apart), one tensor's batches one after the other.
    tensor_locks = {name: threading.Lock() for name in [*graph.inputs, *(o for nd in graph.nodes for o in nd.outputs)]}
    chosen: dict[Hashable, tuple[str, np.ndarray]] = {}
    by_tensor: dict[str, list[Hashable]] = {}
    outputs: dict[int, dict[str, np.ndarray]] = {}

    def add(name: str, v: np.ndarray, start: int) -> None:
        with tensor_locks[name]:
            stats.add(name, v, start)
            for key in by_tensor.get(name, ()):
                stats.add(key, v[:, chosen[key][1]], start)

    def run_batch(start: int, held: set[str], bar: Progress) -> dict[str, np.ndarray]:
        values = dict(graph.consts)
        values.update({k: v[start: start + batch] for k, v in calib.items()})
        for name in graph.inputs:
            add(name, values[name], start)
        run_float(graph.nodes, values, keep=(set(graph.outputs) | held).__contains__,
                  observe=lambda name, v: None if name in held else add(name, v, start))
        if start < keep_outputs:
            outputs[start] = {o: values[o][: keep_outputs - start].copy() for o in graph.outputs}
        with lock:
            bar.advance(min(batch, n - start))
        return {t: values[t] for t in held}

    per_sample = max(sum(int(np.prod(v.shape[1:])) for v in calib.values()), 1)
    batch = max(1, min(BATCH, BATCH_VALUES // per_sample))
    starts = list(range(0, n, batch))
    pending = []
    with Progress("calibrating", n, progress) as bar, ThreadPoolExecutor(WORKERS) as pool:
        if views is not None:  # the batches of the first views.samples first: they decide the views
            first = [start for start in starts if start < views.samples]
            held = dict(zip(first, pool.map(lambda start: run_batch(start, views.tensors, bar), first)))
            chosen.update(views.decide(lambda t: np.concatenate([held[s][t] for s in first])))
            for key, (t, _) in chosen.items():
                by_tensor.setdefault(t, []).append(key)

            def add_held(start: int) -> None:  # then their held tensors count like the others
                batch_values = held.pop(start)
                for t in sorted(views.tensors):
                    add(t, batch_values[t], start)

            pending = [pool.submit(add_held, start) for start in first]  # queued before the other batches
            starts = starts[len(first):]
        list(pool.map(lambda start: run_batch(start, set(), bar), starts))
        for done in pending:
            done.result()
    return Calibration({m: stats.ranges(m) for m in methods},
                       {o: np.concatenate([outputs[k][o] for k in sorted(outputs)]) for o in graph.outputs}
                       if outputs else {})


def collect_ranges(graph: Graph, calib: dict[str, np.ndarray], method: str = "minmax",
                   progress: bool = True) -> dict[str, tuple[float, float]]:
    """Float range [lo, hi] of every activation tensor over the calibration samples (one method)."""
    return calibrate(graph, calib, (method,), progress=progress).ranges[method]


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
