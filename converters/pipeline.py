"""The conversion pipeline at a glance:

    import_onnx -> run_passes -> collect_ranges -> quantize_graph -> plan_memory -> write_bundle

plus the report a user reads before deploying: per-layer SQNR, sizes, peak memory against the device's
budgets, and the output error against the float model on the calibration data.
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from edgeq import __version__
from edgeq.bundle import write_bundle
from edgeq.devices import DeviceProfile, get_device
from edgeq.export_c import DEFAULT_STACK_BYTES
from edgeq.errors import CalibrationError, DoesNotFitError, EdgeqError, InputError
from edgeq.ir import Graph, Tensor
from edgeq.runtimes.executor import Executor, dequantize, quantize
from .calibrate import calibrate, check_calibration, collect_ranges, hybrid_ranges, load_calibration
from .channel_split import SplitPlanner, split_wide_channels
from .image_calib import load_image_folder
from .mixed_precision import DEFAULT_BUDGET, SAMPLES as MIXED_SAMPLES, choose_wide, parse_budget
from .float_ops import run_float
from .onnx_import import import_onnx
from .patches import PatchPlan, plan_patches
from .passes import run_passes
from .quantize import quantize_graph

IMPLEMENTED_SCHEMES = ("int8",)
REPORT_SAMPLES = 64  # calibration samples used for the error report (enough for stable SQNR)
AUTO_SAMPLES = 32    # calibration samples on which --calib-method auto compares its candidates
# ... at most as many as hold this many input values (auto; a few 640x640 pages give stable scores) or
# layer output values (the report), the report in runs of a quarter of that (its all-layer buffers)
SUBSET_VALUES = 1 << 22
REPORT_VALUES = 1 << 26
REPORT_WORKERS = 2   # runs of report samples in flight
AUTO_WORKERS = 2     # auto candidates quantized and scored at a time


@dataclass
class ConversionResult:
    """Where the bundle went and the conversion report (JSON-able)."""

    path: Path
    report: dict[str, Any]


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    return _db(*_signal_noise(ref, test))


def _signal_noise(ref: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    ref = ref.astype(np.float64)
    return float(np.sum(ref ** 2)), float(np.sum((ref - test) ** 2))


def _db(signal: float, noise: float) -> float:
    return float("inf") if noise == 0 else float(10 * np.log10(max(signal, 1e-30) / noise))


def _subset(data: dict[str, np.ndarray], graph: Graph, cap: int, budget: int, per_sample: int) -> tuple[int, int]:
    """(n, step): use the first n calibration samples, at most ``cap`` and ``budget`` values at
    ``per_sample`` values each, in runs of ``step`` samples (a quarter of the budget; a fixed-batch
    model runs its batch, n is then a multiple of it)."""
    total = next(iter(data.values())).shape[0]
    per_sample = max(per_sample, 1)
    n = max(1, min(cap, total, -(-budget // per_sample)))
    if graph.dynamic_batch:
        return n, max(1, min(n, budget // 4 // per_sample))
    step = graph.tensors[graph.inputs[0]].shape[0]
    if total < step:
        raise CalibrationError(f"the model has a fixed batch of {step}; give at least {step} calibration samples")
    return max(step, n - n % step), step


def _raw_calibration(calib: Any, preprocess: str | None, progress: bool) -> dict[str, np.ndarray] | None:
    """The calibration arrays before the model is imported (their shapes fix dynamic input dimensions);
    key "" stands for the only input. A folder holds images, read with the ``preprocess`` spec."""
    if calib is None:
        if preprocess:
            raise CalibrationError("--preprocess applies to a folder of calibration images (--calib DIR)")
        return None
    if isinstance(calib, (str, Path)) and Path(calib).is_dir():
        return {"": load_image_folder(calib, preprocess, progress)}
    if preprocess:
        raise CalibrationError("--preprocess applies to a folder of calibration images, not to arrays")
    if isinstance(calib, (str, Path)):
        return load_calibration(calib)
    if isinstance(calib, np.ndarray):
        return {"": calib}
    return dict(calib)


def _calibration(raw: dict[str, np.ndarray] | None, graph: Graph, sample: Any) -> dict[str, np.ndarray]:
    if raw is None:
        if sample is None:
            raise CalibrationError("calibration data is required: pass --calib FILE.npy|FILE.npz|DIR")
        return check_calibration({graph.inputs[0]: sample.calib}, graph)
    if "" in raw:
        if len(graph.inputs) != 1:
            raise CalibrationError(f"model has {len(graph.inputs)} inputs; give the calibration data as .npz keyed "
                                   f"by input name ({', '.join(graph.inputs)})")
        raw = {graph.inputs[0]: raw[""]}
    return check_calibration(raw, graph)


def _dequantize_codes(q: np.ndarray, t: Tensor) -> np.ndarray:
    """executor.dequantize of an int8 tensor as a lookup in its 256 dequantized codes (one pass over
    the tensor instead of three, the same values); wider tensors go through dequantize itself."""
    if q.dtype != np.int8:
        return dequantize(q, t)
    table = dequantize(np.arange(256, dtype=np.uint8).view(np.int8), t)  # indexed by the code's byte
    return table[q.view(np.uint8)]


def _report(fg: Graph, qg: Graph, calib: dict[str, np.ndarray], device: DeviceProfile, plan: PatchPlan,
            sample: Any) -> dict[str, Any]:
    # Every layer's integer output (int8 or int16) from the compiled backend (bit-exact with the reference
    # kernels) against the float graph's, a run of samples at a time; only the running sums are kept.
    every = copy.copy(qg)
    every.outputs = [o for node in qg.nodes for o in node.outputs[:1] if o in fg.tensors and o not in qg.inputs]
    n, step = _subset(calib, fg, REPORT_SAMPLES, REPORT_VALUES,
                      sum(int(np.prod(qg.tensors[o].shape[1:])) for o in every.outputs))
    ex = Executor(every, "auto")
    lock = threading.Lock()

    def run(i: int) -> dict[str, tuple[float, float]]:
        """(signal, noise) of every layer, and (0, max |error|) of every output, on samples [i, i + step)."""
        with lock:  # one arena
            raw = ex.run_quantized({k: quantize(v[i: i + step], qg.tensors[k]) for k, v in calib.items()})
        qvals = {k: _dequantize_codes(v, qg.tensors[k]) for k, v in raw.items()}
        got: dict[str, Any] = {}

        def observe(name: str, v: np.ndarray) -> None:
            if name in qvals:
                got[name] = _signal_noise(v, qvals[name])
            if name in qg.outputs:
                got[("max", name)] = float(np.abs(v - qvals[name]).max())

        run_float(fg.nodes, {**fg.consts, **{k: v[i: i + step] for k, v in calib.items()}}, keep=lambda t: False,
                  observe=observe)
        return got

    # Runs of samples on both cores (BLAS and NumPy release the GIL), then summed in sample order, as one
    # loop would.
    sums = {o: [0.0, 0.0] for o in every.outputs}
    max_diff = {o: 0.0 for o in qg.outputs}
    with ThreadPoolExecutor(REPORT_WORKERS) as pool:
        for got in pool.map(run, range(0, n, step)):
            for name in sums:
                sums[name][0] += got[name][0]
                sums[name][1] += got[name][1]
            for name in max_diff:
                max_diff[name] = max(max_diff[name], got[("max", name)])
    layers = [{"name": node.name, "op": node.op, "tensor": node.outputs[0],
               "bits": 8 * np.dtype(qg.tensors[node.outputs[0]].dtype).itemsize,
               "sqnr_db": round(_db(*sums[node.outputs[0]]), 2)}
              for node in qg.nodes if node.outputs[0] in sums]
    float_bytes = sum(int(v.nbytes) for v in fg.consts.values())
    int_bytes = sum(int(v.nbytes) for v in qg.consts.values())
    budget_w, budget_a = device.budget_weights_bytes, device.budget_activation_bytes
    arena = plan.memory.arena_bytes
    fits_w = budget_w is None or int_bytes <= budget_w
    fits_a = budget_a is None or arena <= budget_a
    report: dict[str, Any] = {
        "device": device.id,
        "layers": layers,
        "worst_layers": [l["name"] for l in sorted(layers, key=lambda l: l["sqnr_db"])[:3]],
        "size": {"float_weights_bytes": float_bytes, "int8_weights_bytes": int_bytes,
                 "ratio": round(float_bytes / max(int_bytes, 1), 2)},
        "memory": {"peak_activation_bytes": arena, "weights_bytes": int_bytes, "plan_strategy": plan.memory.strategy,
                   "strategies": plan.memory.candidates, "macs": plan.macs},
        "patches": plan.summary(),
        "budget": {"weights_bytes": budget_w, "activation_bytes": budget_a, "weights_fit": fits_w,
                   "activations_fit": fits_a, "fits": fits_w and fits_a},
        "output_max_abs_diff": max_diff,
        "report_samples": n,
    }
    if sample is not None:
        logits = Executor(qg, "auto").run({qg.inputs[0]: sample.x_test})[qg.outputs[0]]
        report["accuracy"] = {"float": sample.float_accuracy,
                              "int8": round(float((logits.argmax(1) == sample.y_test).mean() * 100), 2),
                              "samples": int(sample.y_test.size)}
    return report


def _top1_agreement(want: np.ndarray, got: np.ndarray) -> float:
    """How often the quantized top-1 class matches the float one. When one class is the float top-1 at
    most positions (CTC's blank, a background class) only the other positions count: agreeing on the
    filler says nothing about the characters."""
    top = want.argmax(-1).reshape(-1)
    hit = got.argmax(-1).reshape(-1) == top
    counts = np.bincount(top)
    mask = top != counts.argmax() if counts.max() > top.size // 2 else np.ones_like(hit)
    return float(hit[mask].mean()) if mask.any() else float(hit.mean())


def _auto_quantize(fg: Graph, data: dict[str, np.ndarray],
                   progress: bool) -> tuple[Graph, Graph, dict[str, Any]]:
    """Quantize with each candidate and keep the one whose outputs agree best with the float model on the
    first calibration samples (see _subset): top-1 agreement along the last axis when every output is a
    Softmax (class scores, CTC steps; see _top1_agreement), else the mean output SQNR. Candidates: the
    minmax, percentile and hybrid range sets, each without and with channel splitting
    (``channel_split``), all from one float pass over the calibration samples; a candidate with the same
    ranges as one already scored is that one. Returns the float graph the winner was quantized from, the
    integer graph and the scores."""
    n, _ = _subset(data, fg, AUTO_SAMPLES, SUBSET_VALUES, sum(int(np.prod(v.shape[1:])) for v in data.values()))
    inputs = {k: v[:n] for k, v in data.items()}
    planner = SplitPlanner(fg)
    cal = calibrate(fg, data, ("minmax", "percentile"), views=planner, keep_outputs=n, progress=progress)
    producers = fg.producers()
    classes = all(producers[o].op == "Softmax" for o in fg.outputs if o in producers)
    variants = [("", fg, {})]
    if planner.groups:
        split = copy.deepcopy(fg)
        variants.append(("+split", split, split_wide_channels(split, planner.groups)))
    keys, todo, same_as = [], [], {}  # every candidate in order; (key, graph, ranges) to score; repeats
    for suffix, g, parts_of in variants:
        sets = {m: {t: cal.ranges[m][parts_of.get(t, t)] for t in g.tensors
                    if t not in g.consts and parts_of.get(t, t) in cal.ranges[m]} for m in ("minmax", "percentile")}
        sets["hybrid"] = hybrid_ranges(g, sets["minmax"], sets["percentile"])
        for name, ranges in sets.items():
            keys.append(name + suffix)
            same = next((k for k, kg, r in todo if kg is g and r == ranges), None)
            if same is not None:
                same_as[name + suffix] = same
            else:
                todo.append((name + suffix, g, ranges))

    def score(item: tuple[str, Graph, dict]) -> tuple[Graph, Graph, float]:
        _, g, ranges = item
        qg = quantize_graph(g, ranges)
        got = Executor(qg, "auto").run(inputs)
        if classes:
            return g, qg, round(float(np.mean([_top1_agreement(cal.outputs[o], got[o]) for o in fg.outputs])), 4)
        return g, qg, round(float(np.mean([min(sqnr_db(cal.outputs[o], got[o]), 200.0) for o in fg.outputs])), 2)

    with ThreadPoolExecutor(AUTO_WORKERS) as pool:  # the compiled runs release the GIL
        done = dict(zip([k for k, _, _ in todo], pool.map(score, todo)))
    graphs = {key: done[same_as.get(key, key)][:2] for key in keys}
    scores = {key: done[same_as.get(key, key)][2] for key in keys}
    best = max(scores, key=scores.get)
    return (*graphs[best], {"chosen": best, ("top1_agreement" if classes else "output_sqnr_db"): scores,
                            "samples_compared": n})


def _plan(qg: Graph, profile: DeviceProfile, patch: str | int) -> PatchPlan:
    """Memory plan (and patch plan) for the device; a microcontroller model that cannot fit is an error."""
    mcu = profile.device_class == "mcu"
    # The firmware's stack (kernel scratch included) shares the RAM with the arena.
    budget = profile.ram_bytes - DEFAULT_STACK_BYTES if mcu else profile.budget_activation_bytes
    plan = plan_patches(qg, patch, budget, inplace_depthwise=mcu)
    if mcu and plan.memory.arena_bytes > budget:
        how = f"{plan.n}x{plan.n} patches" if plan.n else "layer by layer"
        hint = "" if patch == "auto" else "; try --patch auto"
        raise DoesNotFitError(f"model does not fit device '{profile.id}': the smallest activation peak found is "
                              f"{plan.memory.arena_bytes} bytes ({how}), the device has {budget} bytes of RAM for "
                              f"activations ({profile.ram_bytes} minus a {DEFAULT_STACK_BYTES}-byte stack){hint}")
    return plan


# One BLAS thread for the float passes: on a shared machine OpenBLAS's spinning workers made its GEMMs
# 10x slower (4 against 58 GFLOP/s, 2 cores at load 6); the C backend's threads are OpenMP, not limited.
@threadpool_limits.wrap(limits=1, user_api="blas")
def convert(model: str | Path | bytes | None = None, device: str = "host", output: str | Path | None = None,
            scheme: str | None = None, calib: Any = None, calib_method: str | None = None,
            input_shapes: dict[str, tuple[int, ...]] | None = None, progress: bool = True,
            patch: str | int = "auto", preprocess: str | None = None, mixed_precision: str = "off",
            int16_budget: str = DEFAULT_BUDGET) -> ConversionResult:
    """Convert an ONNX or int8 TFLite model (or, with ``model=None``, the embedded digits sample) into a ``.edgeq`` bundle.

    ``calib`` is a .npy/.npz path, a folder of images (read with the ``preprocess`` spec, see
    ``converters.image_calib``), an array (single input) or a dict of arrays keyed by input name.
    ``scheme`` and ``calib_method`` default to the device profile's choices. ``patch`` chooses
    patch-based inference for the first stage: ``"auto"`` (only when it is needed to fit the device),
    ``"off"``, or a patch count n (n x n patches). ``mixed_precision="auto"`` promotes activations to int16
    within ``int16_budget`` (see ``converters.mixed_precision``).
    """
    profile = get_device(device)
    tflite_float = None
    if isinstance(model, (str, Path)) and str(model).lower().endswith(".tflite") or \
            isinstance(model, bytes) and model[4:8] == b"TFL3":
        from .tflite_float import import_float_tflite
        from .tflite_import import convert_tflite
        tflite_float = import_float_tflite(model)  # a float model is calibrated below; an int8 one is not
        if tflite_float is None and (calib is not None or mixed_precision != "off" or (scheme or "int8") != "int8"):
            raise CalibrationError("an int8 TFLite model keeps its own scales: --calib, --scheme and "
                                   "--mixed-precision do not apply")
        if tflite_float is None:
            return convert_tflite(model, profile, output, patch, progress)
    if mixed_precision not in ("off", "auto"):
        raise InputError(f"--mixed-precision must be off or auto, not '{mixed_precision}'")
    parse_budget(int16_budget, 0)  # a bad budget fails before any work
    scheme = scheme or profile.default_scheme
    if scheme not in profile.schemes:
        raise EdgeqError(f"device '{profile.id}' does not support scheme '{scheme}' (supports: {', '.join(profile.schemes)})")
    if scheme not in IMPLEMENTED_SCHEMES:
        raise EdgeqError(f"scheme '{scheme}' is not available for ONNX models yet (available: {', '.join(IMPLEMENTED_SCHEMES)})")
    sample = None
    if model is None:
        from edgeq.sample import load_sample
        sample = load_sample()
        model = sample.model_path
    raw = _raw_calibration(calib, preprocess, progress)
    data_shapes = {k: tuple(np.shape(v)[1:]) for k, v in raw.items() if np.ndim(v) >= 1} if raw else None
    fg, digest = tflite_float or import_onnx(model, input_shapes, data_shapes)
    run_passes(fg)
    data = _calibration(raw, fg, sample)
    method = calib_method or profile.calibration
    if method == "auto":
        if mixed_precision == "auto":
            raise CalibrationError("--mixed-precision auto needs a fixed --calib-method (minmax, percentile or mse)")
        fg, qg, chosen = _auto_quantize(fg, data, progress)
    else:
        ranges = collect_ranges(fg, data, method, progress=progress)
        qg, chosen = quantize_graph(fg, ranges), None
    mixed = None
    if mixed_precision == "auto":
        n = min(MIXED_SAMPLES, next(iter(data.values())).shape[0])
        sub = {k: v[:n] for k, v in data.items()}
        want = run_float(fg.nodes, {**fg.consts, **sub})
        mixed = choose_wide(fg, ranges, sub, {o: want[o] for o in fg.outputs}, int16_budget, progress)
        qg = quantize_graph(fg, ranges, mixed.wide)
    plan = _plan(qg, profile, patch)
    report = _report(fg, qg, data, profile, plan, sample)
    if mixed is not None:
        report["mixed_precision"] = mixed.summary()
    name = "digits_cnn" if isinstance(model, Path) and sample else (Path(model).stem if not isinstance(model, bytes) else "model")
    out = Path(output) if output else Path(f"{name}.{profile.id}.edgeq")
    meta = {"device": profile.to_dict(), "scheme": scheme, "producer": {"name": "edgeq", "version": __version__},
            "source": {"format": "tflite" if tflite_float else "onnx", "sha256": digest, "name": name, "metadata": fg.metadata},
            "calibration": {"method": method, "samples": int(next(iter(data.values())).shape[0])}}
    if chosen:
        meta["calibration"]["auto"] = chosen
    if plan.n:
        meta["patches"] = plan.summary()
    report["bundle_bytes"] = write_bundle(out, plan.graph, plan.memory, meta)
    report["output"] = str(out)
    report["scheme"] = scheme
    report["calibration"] = meta["calibration"]
    return ConversionResult(out, report)
