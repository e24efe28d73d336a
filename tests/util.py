"""Helpers for backend-vs-reference tests: single-op integer graphs and the bit-exact assertion."""

from __future__ import annotations

import numpy as np
from edgeq.ir import Graph, Node, Tensor
from edgeq.runtimes.executor import Executor
from edgeq.runtimes.registry import OPS


def make_graph(op: str, acts: dict[str, np.ndarray], consts: dict[str, np.ndarray], order: list[str],
               attrs: dict) -> tuple[Graph, dict[str, np.ndarray]]:
    """One ``op`` node reading ``order`` (names from acts or consts); output shape from the reference."""
    node = Node(op, "n0", list(order), ["y"], attrs)
    values = {**consts, **acts}
    y = OPS[op].reference(node, [values[i] for i in order if i])
    tensors = {k: Tensor(k, (1,) + v.shape[1:], v.dtype.name) for k, v in acts.items()}
    tensors["y"] = Tensor("y", (1,) + y.shape[1:], y.dtype.name)
    g = Graph([node], tensors, list(acts), ["y"], {}, dynamic_batch=True)
    for k, v in consts.items():
        g.add_const(k, v)
    return g, acts


def assert_bit_exact(graph: Graph, inputs: dict[str, np.ndarray], backend: str, threads: int = 1) -> None:
    """The backend's integer outputs (on ``threads`` threads) equal the reference's byte for byte (same
    dtype, int8 or int16)."""
    want = Executor(graph, "reference").run_quantized(inputs)
    ex = Executor(graph, backend)
    ex.set_threads(threads)
    got = ex.run_quantized(inputs)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        if not np.array_equal(got[k], want[k]):
            bad = np.argwhere(got[k] != want[k])[0]
            raise AssertionError(f"{backend} differs from reference at {tuple(bad)}: "
                                 f"{got[k][tuple(bad)]} vs {want[k][tuple(bad)]} ({graph.nodes[0].attrs})")
