"""On-device fine-tuning demo: the digits CNN meets a slanted writer (docs/training.md).

The embedded sample's 360 held-out digits are rotated by 30 degrees (bilinear, numpy only: a writer who
slants every digit; no download). 160 of them, with labels, are the on-device training set; the other 200
are the shifted test set. The INT8 bundle for the device is fine-tuned with every method and compared in
one run: accuracy on the shifted test set (and on the same 200 digits unrotated, to see forgetting),
bytes beyond inference and wall time. The QAS-tuned bundle is written atomically, reloaded, and run on
every backend, which must agree bit for bit. The split is also saved as train.npz / test.npz in --out.

    python apps/finetune/finetune_demo.py [--device stm32h7] [--epochs 20] [--out DIR] [--plot curves.png] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import edgeq
from edgeq.finetune import finetune, plot_training, write_tuned
from edgeq.runtimes.executor import quantize
from edgeq.sample import load_sample

METHODS = ("fp32", "sgd", "qas", "zo", "elastic")
ANGLE = 30.0
TRAIN = 160


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate [..., H, W] images about their centre (bilinear, zero outside)."""
    th = np.deg2rad(degrees)
    h, w = images.shape[-2:]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.mgrid[0:h, 0:w]
    ys = np.cos(th) * (yy - cy) - np.sin(th) * (xx - cx) + cy
    xs = np.sin(th) * (yy - cy) + np.cos(th) * (xx - cx) + cx
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0

    def at(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        inside = (a >= 0) & (a < h) & (b >= 0) & (b < w)
        return np.where(inside, images[..., np.clip(a, 0, h - 1), np.clip(b, 0, w - 1)], 0.0)

    return (at(y0, x0) * (1 - fy) * (1 - fx) + at(y0 + 1, x0) * fy * (1 - fx)
            + at(y0, x0 + 1) * (1 - fy) * fx + at(y0 + 1, x0 + 1) * fy * fx).astype(np.float32)


def shifted_split(seed: int = 0) -> dict[str, np.ndarray]:
    """The slanted-writer domain: rotated held-out digits split into train/test (plus the unrotated test)."""
    sample = load_sample()
    clean, labels = sample.x_test, sample.y_test
    order = np.random.default_rng(seed).permutation(len(labels))
    tr, te = order[:TRAIN], order[TRAIN:]
    shifted = rotate(clean, ANGLE)
    return {"x_train": shifted[tr], "y_train": labels[tr], "x_test": shifted[te], "y_test": labels[te],
            "x_test_clean": clean[te]}


def _accuracy(bundle: edgeq.api.Bundle, x: np.ndarray, y: np.ndarray) -> float:
    return float((bundle.run(x, backend="reference")["logits"].argmax(axis=1) == y).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="stm32h7")
    p.add_argument("--bundle", help="INT8 digits bundle (default: converted now with `edgeq convert`)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", default="finetune_out", help="directory for the bundles and the plot")
    p.add_argument("--plot", help="PNG of loss/accuracy curves and memory of every method")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(args.bundle) if args.bundle else out / "digits.edgeq"
    if not args.bundle:
        subprocess.run([sys.executable, "-m", "edgeq.cli", "convert", "--device", args.device, "-o", str(path), "-q"],
                       check=True, stdout=subprocess.DEVNULL)
    bundle = edgeq.load(path)
    d = shifted_split()
    # The same split as files, for trying `edgeq finetune` by hand.
    np.savez(out / "train.npz", x=d["x_train"], y=d["y_train"])
    np.savez(out / "test.npz", x=d["x_test"], y=d["y_test"])
    rows = [{"method": "none", "shifted_test": _accuracy(bundle, d["x_test"], d["y_test"]),
             "clean_test": _accuracy(bundle, d["x_test_clean"], d["y_test"]), "extra_bytes": 0,
             "total_bytes": bundle.plan.arena_bytes, "seconds": 0.0, "updates": "-"}]
    results = []
    qin = bundle.graph.tensors[bundle.graph.inputs[0]]
    for method in METHODS:
        r = finetune(bundle, d["x_train"], d["y_train"], args.device, method, epochs=args.epochs,
                     eval_data=(d["x_test"], d["y_test"]), progress=not args.json)
        results.append(r)
        clean_x = d["x_test_clean"] if method == "fp32" else quantize(d["x_test_clean"], qin)
        clean = float((r.trainer.logits(clean_x).argmax(axis=1) == d["y_test"]).mean())
        updates = (r.scheme.describe() if r.scheme else "") + (f"; SPSA {', '.join(r.zo_layers)}" if r.zo_layers else "")
        rows.append({"method": method, "shifted_test": r.accuracy[-1], "clean_test": clean,
                     "extra_bytes": r.memory.extra, "total_bytes": r.memory.total, "seconds": round(r.seconds, 2),
                     "updates": updates.lstrip("; ")})
    qas = results[METHODS.index("qas")]
    tuned_path = out / f"digits.{args.device}.qas.edgeq"
    write_tuned(bundle, qas, tuned_path)
    tuned = edgeq.load(tuned_path)
    xq = quantize(d["x_test"], qin)
    outputs = {b: tuned.run_quantized(xq, backend=b)["logits"] for b in ("reference", "numba", "c")}
    bit_exact = all(np.array_equal(outputs["reference"], v) for v in outputs.values())
    tuned_acc = float((outputs["c"].argmax(axis=1) == d["y_test"]).mean())
    if args.plot:
        plot_training(results, args.plot)
    report = {"device": args.device, "epochs": args.epochs, "shift": f"rotated {ANGLE:g} degrees",
              "train": TRAIN, "test": len(d["y_test"]), "rows": rows, "tuned_bundle": str(tuned_path),
              "tuned_bundle_shifted_test_c": tuned_acc, "backends_bit_exact": bit_exact}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"digits CNN on {args.device}; shift: digits rotated {ANGLE:g} degrees; {TRAIN} labelled shifted "
              f"digits for training, {len(d['y_test'])} for testing; {args.epochs} epochs, batch 16")
        print("| method | shifted test | same digits unrotated | bytes beyond inference | total bytes | time s | updates |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['method']} | {100 * r['shifted_test']:.1f}% | {100 * r['clean_test']:.1f}% | {r['extra_bytes']} "
                  f"| {r['total_bytes']} | {r['seconds']:.2f} | {r['updates']} |")
        print(f"wrote {tuned_path}: shifted test {100 * tuned_acc:.1f}% on the C backend; reference, numba and c "
              f"outputs {'identical' if bit_exact else 'DIFFER'}")
    return 0 if bit_exact else 1


if __name__ == "__main__":
    sys.exit(main())
