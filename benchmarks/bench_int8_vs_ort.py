"""edgeq INT8 (numba and c backends) against onnxruntime fp32 and onnxruntime quantize_static INT8
(QDQ, per-channel) on the digits sample and a MobileNetV2-style net, 1 and 2 threads, same run.

    python benchmarks/bench_int8_vs_ort.py [--runs 300] [--json out.json]

Latency is the median of interleaved rounds of float-in/float-out calls (edgeq includes its input
quantization and output dequantization). First-run times are measured in fresh processes: "cold" with
an empty Numba cache / C build cache, "warm" with the caches filled.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

import edgeq
from edgeq.sample import load_sample

sys.path.insert(0, str(Path(__file__).parent))
from convnets import mobilenet_v2_like  # noqa: E402


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, data: np.ndarray):
        self.items = iter([{name: data[i: i + 1]} for i in range(len(data))])

    def get_next(self):
        return next(self.items, None)


def _ort_session(path: str, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _time(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def first_run_ms(bundle: Path, backend: str, cache: str) -> float:
    """Load + first inference in a fresh process with the given cache directories."""
    code = ("import time,sys,numpy as np; t=time.perf_counter(); import edgeq; b=edgeq.load(sys.argv[1], backend=sys.argv[2]); "
            "x=np.zeros((1,)+b.graph.tensors[b.inputs[0]].shape[1:],np.float32); b.run(x); "
            "print((time.perf_counter()-t)*1e3)")
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, EDGEQ_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", code, str(bundle), backend], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_model(name: str, model: onnx.ModelProto, calib: np.ndarray, x: np.ndarray, runs: int, work: Path) -> dict:
    fp32 = work / f"{name}.onnx"
    onnx.save(model, fp32)
    qdq = work / f"{name}.qdq.onnx"
    quantize_static(str(fp32), str(qdq), _Reader("input", calib), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    bundle = edgeq.convert(fp32, device="host", calib=calib, output=work / f"{name}.edgeq", progress=False).path
    result = {"model": name, "input_shape": list(x.shape), "threads": {}}
    for threads in (1, 2):
        b = edgeq.load(bundle)
        candidates = {"ort_fp32": _ort_session(str(fp32), threads), "ort_int8_qdq": _ort_session(str(qdq), threads)}
        fns = {k: (lambda s=s: s.run(None, {"input": x})) for k, s in candidates.items()}
        for backend in ("numba", "c"):
            ex = b.executor(backend)
            ex.set_threads(threads)
            fns[f"edgeq_{backend}"] = lambda ex=ex: ex.run({"input": x})
        times: dict[str, list[float]] = {k: [] for k in fns}
        for fn in fns.values():
            _time(fn, 20)  # warm-up
        for _ in range(5):  # interleave rounds so background load hits every contender alike
            for k, fn in fns.items():
                times[k] += _time(fn, max(runs // 5, 1))
        med = {k: statistics.median(v) for k, v in times.items()}
        result["threads"][threads] = {
            "median_ms": med,
            "ratio_vs_ort_fp32": {k: med[k] / med["ort_fp32"] for k in med},
        }
    with tempfile.TemporaryDirectory() as cache:
        result["first_run_ms"] = {f"{be}_cold": first_run_ms(bundle, be, cache) for be in ("numba", "c")}
        result["first_run_ms"].update({f"{be}_cached": first_run_ms(bundle, be, cache) for be in ("numba", "c")})
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    s = load_sample()
    cases = [("digits_cnn", onnx.load(s.model_path), s.calib, s.x_test[:1]),
             ("mobilenet_v2_96", mobilenet_v2_like(), rng.standard_normal((32, 3, 96, 96)).astype(np.float32),
              rng.standard_normal((1, 3, 96, 96)).astype(np.float32))]
    results = []
    with tempfile.TemporaryDirectory() as work:
        for name, model, calib, x in cases:
            r = bench_model(name, model, calib, x, args.runs, Path(work))
            results.append(r)
            for t, v in r["threads"].items():
                row = "  ".join(f"{k} {m:.3f} ms ({v['ratio_vs_ort_fp32'][k]:.2f}x)" for k, m in v["median_ms"].items())
                print(f"{name} threads={t}: {row}")
            print(f"{name} first run ms: " + ", ".join(f"{k} {v:.0f}" for k, v in r["first_run_ms"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
