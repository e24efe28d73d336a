"""Activation memory and MACs on microcontrollers: TFLite Micro's planner vs edgeq's, layer by layer and
patch-based.

For each model: the arena TFLite Micro's GreedyMemoryPlanner algorithm gives (largest first, no sharing:
edgeq's ``greedy-by-size`` strategy, the baseline until a .tflite export exists to run tflite-micro
itself), edgeq's layer-by-layer arena (best of greedy-by-size and first-fit-by-time, with in-place
elementwise and depthwise ops), and edgeq's best patch plan within a MAC budget (default +15%).

Run: python benchmarks/bench_mcu_memory.py [--max-extra-macs 15] [--cls PATH.onnx]
(--cls defaults to the PP-OCR mobile direction classifier of an installed rapidocr-onnxruntime.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import edgeq
from edgeq.converters.patches import plan_patches
from edgeq.converters.pipeline import convert

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convnets import mobilenet_v2_like  # noqa: E402


def _cls_model(path: str | None) -> Path | None:
    if path:
        return Path(path)
    try:
        import rapidocr_onnxruntime
    except ImportError:
        return None
    found = sorted(Path(rapidocr_onnxruntime.__file__).parent.glob("models/*cls*.onnx"))
    return found[0] if found else None


def _graph(model, shape: tuple[int, ...], out: Path, name: str):
    calib = np.random.default_rng(0).uniform(-1, 1, (8, *shape)).astype(np.float32)
    src = model if isinstance(model, (str, Path)) else model.SerializeToString()
    shapes = {"x": (1, *shape)} if isinstance(model, (str, Path)) else None
    res = convert(src, device="host", output=out / f"{name}.edgeq", calib=calib, progress=False, patch="off",
                  input_shapes=shapes)
    return edgeq.load(res.path).graph


def measure(name: str, graph, max_extra_macs: float) -> dict:
    """Arena bytes and MACs for the TFLM-style baseline, edgeq layer by layer, and edgeq patched."""
    every = plan_patches(graph, "auto", budget_bytes=0, inplace_depthwise=True)  # budget 0: keep all candidates
    base = next(c for c in every.candidates if c["n_patch"] == 0)
    layer = plan_patches(graph, "off", inplace_depthwise=True)
    allowed = [c for c in every.candidates if c["macs"] <= base["macs"] * (1 + max_extra_macs / 100)]
    best = min(allowed, key=lambda c: (c["peak_activation_bytes"], c["macs"]))
    tflm = layer.memory.candidates["greedy-by-size"]
    lbl = layer.memory.arena_bytes
    return {"model": name, "input": "x".join(map(str, graph.tensors[graph.inputs[0]].shape[1:])),
            "macs": base["macs"], "tflm_greedy_arena": tflm, "edgeq_layer_arena": lbl,
            "edgeq_layer_strategy": layer.memory.strategy, "layer_vs_tflm": round(lbl / tflm, 3),
            "patch": f"{best['n_patch']}x{best['n_patch']} @ {best['split_nodes']} nodes" if best["n_patch"] else "none",
            "edgeq_patch_arena": best["peak_activation_bytes"],
            "patch_vs_layer": round(best["peak_activation_bytes"] / lbl, 3),
            "patch_vs_tflm": round(best["peak_activation_bytes"] / tflm, 3),
            "extra_macs_pct": round(100 * (best["macs"] / base["macs"] - 1), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-extra-macs", type=float, default=15.0, help="MAC budget of patch plans, percent")
    ap.add_argument("--cls", help="PP-OCR cls ONNX model (default: from rapidocr-onnxruntime if installed)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        sample = edgeq.load(convert(device="host", output=out / "digits.edgeq", progress=False, patch="off").path)
        rows.append(measure("digits CNN (sample)", sample.graph, args.max_extra_macs))
        for res, width in ((96, 16), (144, 16), (160, 24)):
            g = _graph(mobilenet_v2_like(res, width), (3, res, res), out, f"mbv2_{res}")
            rows.append(measure(f"MobileNetV2-style w{width}", g, args.max_extra_macs))
        cls = _cls_model(args.cls)
        if cls is not None:
            rows.append(measure("PP-OCR mobile cls", _graph(cls, (3, 48, 192), out, "cls"), args.max_extra_macs))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    cols = ["model", "input", "macs", "tflm_greedy_arena", "edgeq_layer_arena", "layer_vs_tflm", "patch",
            "edgeq_patch_arena", "patch_vs_layer", "patch_vs_tflm", "extra_macs_pct"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
