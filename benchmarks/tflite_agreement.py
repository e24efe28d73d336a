"""How often edgeq's int8 outputs equal TFLite's, per op kind, on random int8 TFLite models.

For every kind of tests/tflite_models.py (random shapes, strides, paddings, per-channel scales, weights),
``--models`` seeds: the model runs in LiteRT's reference kernels (OpResolverType.BUILTIN_REF) and in its
default optimized kernels (AUTO: XNNPACK/ruy), and edgeq converts it and runs it on the reference, numba
and c backends (which must agree with each other). Prints a Markdown table for docs/tflite-import.md.

    python benchmarks/tflite_agreement.py --models 50
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

import edgeq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tflite_models import KINDS, random_model  # noqa: E402


def tflite_run(data: bytes, xs: list[np.ndarray], resolver: OpResolverType) -> np.ndarray:
    """The model's first output for one input set with the given TFLite kernels."""
    it = Interpreter(model_content=data, experimental_op_resolver_type=resolver)
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), xs):
        it.set_tensor(d["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=50, help="random models per kind")
    ap.add_argument("--first-seed", type=int, default=10000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    print("| kind | edgeq = TFLite reference (models) | elements differing | TFLite optimized = reference (models) | "
          "elements differing |\n|---|---|---|---|---|")
    totals = np.zeros(6, np.int64)
    for kind in KINDS:
        row = np.zeros(6, np.int64)  # edgeq equal, edgeq diff elements, optimized equal, optimized diff, elements, models
        for seed in range(args.first_seed, args.first_seed + args.models):
            data, shapes = random_model(seed, kind)
            rng = np.random.default_rng(seed)
            xs = [rng.integers(-128, 128, size=s).astype(np.int8) for s in shapes]
            want = tflite_run(data, xs, OpResolverType.BUILTIN_REF)
            fast = tflite_run(data, xs, OpResolverType.AUTO)
            (tmp / "m.tflite").write_bytes(data)
            b = edgeq.load(edgeq.convert(tmp / "m.tflite", device="host", output=tmp / "m.edgeq", progress=False).path)
            outs = [b.run_quantized(dict(zip(b.inputs, xs)), backend=be)[b.outputs[0]] for be in ("reference", "numba", "c")]
            if not all(np.array_equal(outs[0], o) for o in outs[1:]):
                raise SystemExit(f"{kind} seed {seed}: edgeq's backends disagree")
            d, f = int((outs[0] != want).sum()), int((fast != want).sum())
            row += [d == 0, d, f == 0, f, want.size, 1]
        totals += row
        print(f"| {kind} | {row[0]}/{row[5]} | {row[1]}/{row[4]} | {row[2]}/{row[5]} | {row[3]}/{row[4]} |", flush=True)
    print(f"| all | {totals[0]}/{totals[5]} | {totals[1]}/{totals[4]} | {totals[2]}/{totals[5]} | {totals[3]}/{totals[4]} |")


if __name__ == "__main__":
    main()
