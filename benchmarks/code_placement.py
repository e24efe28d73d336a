"""Does a bundle's C speed depend on where the kernels' code sits in physical memory? (Linux only.)

On the 2-vCPU Firecracker VM this project is benchmarked on, rec's depthwise convolutions once ran at
0.41 ms or 1.37 ms per node depending on the host pages behind the loaded library's code (see
benchmarks/RESULTS.md, PP-OCR, session 5). This probe draws new placements inside one process: it copies
the library's executable mapping into fresh anonymous pages and ``mremap``s them over the original
(same addresses, new pages), then times every node with the C program loop (``Executor.profile_nodes``).
A build whose times stay put over the draws does not depend on the placement.

    python benchmarks/code_placement.py rec.edgeq --draws 10 --runs 15 [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics

import numpy as np

import edgeq

PROT_RW, PROT_RX = 0x1 | 0x2, 0x1 | 0x4
MAP_PRIVATE_ANON = 0x02 | 0x20
MREMAP_MAYMOVE_FIXED = 0x1 | 0x2


def code_mapping(fragment: str) -> tuple[int, int]:
    """Start and end address of the executable mapping of the shared object whose path has ``fragment``."""
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and fragment in fields[5] and fields[1].startswith("r-x"):
                lo, hi = (int(v, 16) for v in fields[0].split("-"))
                return lo, hi
    raise SystemExit(f"no executable mapping of '{fragment}' in this process")


def replace_pages(lo: int, hi: int) -> None:
    """Move the code in [lo, hi) onto new anonymous pages at the same addresses."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = libc.mremap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    n = hi - lo
    new = libc.mmap(None, n, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
    if new in (None, ctypes.c_void_p(-1).value):
        raise SystemExit(f"mmap failed (errno {ctypes.get_errno()})")
    ctypes.memmove(new, lo, n)
    if libc.mprotect(new, n, PROT_RX) != 0 or libc.mremap(new, n, n, MREMAP_MAYMOVE_FIXED, lo) != lo:
        raise SystemExit(f"could not move the code (errno {ctypes.get_errno()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--draws", type=int, default=10, help="placements drawn (the first is the library file's own)")
    ap.add_argument("--runs", type=int, default=15, help="runs per draw (median per node)")
    ap.add_argument("--json")
    args = ap.parse_args()
    bundle = edgeq.load(args.bundle, backend="c")
    ex = bundle.executor("c")
    rng = np.random.default_rng(0)
    inputs = {}
    for name in bundle.inputs:
        t = bundle.graph.tensors[name]
        lo, hi = (-128 - t.zero_point[0]) * t.scale[0], (127 - t.zero_point[0]) * t.scale[0]
        inputs[name] = rng.uniform(lo, hi, size=t.shape).astype(np.float32)
    ex.run(inputs)  # builds or loads the library
    lo, hi = code_mapping("_edgeq_c_")
    draws = []
    for d in range(args.draws):
        if d:
            replace_pages(lo, hi)
        draws.append(ex.profile_nodes(inputs, runs=args.runs))
    totals = [float(s.sum()) * 1e3 for s in draws]
    per_node = np.array(draws)
    spread = per_node.max(0) - per_node.min(0)
    worst = [int(i) for i in np.argsort(-spread)[:5]]
    result = {"bundle": args.bundle, "draws": args.draws, "runs": args.runs, "total_ms": totals,
              "total_ms_median": statistics.median(totals),
              "most_variable_nodes": [{"name": bundle.graph.nodes[i].name, "op": bundle.graph.nodes[i].op,
                                       "ms_min": float(per_node[:, i].min()) * 1e3,
                                       "ms_max": float(per_node[:, i].max()) * 1e3} for i in worst]}
    print(f"{args.bundle}: node-time sum over {args.draws} placements: "
          f"{min(totals):.2f}-{max(totals):.2f} ms (median {result['total_ms_median']:.2f})")
    for n in result["most_variable_nodes"]:
        print(f"  {n['op']:<12} {n['name']:<24} {n['ms_min']:.3f}-{n['ms_max']:.3f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
