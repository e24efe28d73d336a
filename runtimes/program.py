"""Lowering a planned integer graph to a program: the flat int64 words the compiled backends run.

Program layout: for each node, ``[opcode, n_words, *op_words]`` (``n_words`` counts the whole record),
op words as documented beside each encoder in ``registry.py``. Activations live in one int8 arena at
planner offsets; constants live in one 64-byte-aligned pool (the bundle's data section).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeq.ir import Graph
from .planner import MemoryPlan
from .registry import OPS

BLOB_ALIGN = 64


def pack_consts(consts: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, int]]:
    """Lay constants out back to back (sorted by name, 64-byte aligned) in one uint8 pool."""
    offsets: dict[str, int] = {}
    pos = 0
    for name in sorted(consts):
        offsets[name] = pos
        pos += (consts[name].nbytes + BLOB_ALIGN - 1) // BLOB_ALIGN * BLOB_ALIGN
    pool = np.zeros(pos, dtype=np.uint8)
    for name, off in offsets.items():
        raw = np.ascontiguousarray(consts[name]).view(np.uint8).reshape(-1)
        pool[off: off + raw.size] = raw
    return pool, offsets


@dataclass
class Program:
    """Everything a compiled backend needs besides the constant pool."""

    words: np.ndarray                       # int64 program
    arena_bytes: int
    inputs: np.ndarray                      # int64 [n_in, 2]: arena offset, bytes per sample
    outputs: np.ndarray                     # int64 [n_out, 2]


class _Context:
    def __init__(self, graph: Graph, plan: MemoryPlan, const_offsets: dict[str, int]):
        self.graph, self.plan, self.const_offsets = graph, plan, const_offsets

    def act(self, name: str) -> int:
        return self.plan.offsets[name]

    def const(self, name: str) -> int:
        return self.const_offsets[name]

    def is_const(self, name: str) -> bool:
        return name in self.graph.consts

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.graph.tensors[name].shape
        # Constants broadcast against activations keep their own rank (right-aligned).
        return tuple(shape) if self.is_const(name) and not _has_batch(self.graph, name) else tuple(shape[1:])


def _has_batch(graph: Graph, name: str) -> bool:
    """A constant carries a (size-1) batch dimension when its rank equals its consumers' output rank."""
    for node in graph.nodes:
        if name in node.inputs and node.op in ("QAdd", "QMul"):
            return len(graph.tensors[name].shape) == len(graph.tensors[node.outputs[0]].shape)
    return False


def compile_program(graph: Graph, plan: MemoryPlan, const_offsets: dict[str, int]) -> Program:
    """Encode every node of ``graph`` (already planned) as program words."""
    ctx = _Context(graph, plan, const_offsets)
    words: list[int] = []
    for node in graph.nodes:
        op = OPS[node.op]
        body = [int(v) for v in op.encode(node, ctx)]
        words += [op.opcode, len(body) + 2, *body]

    def io(names: list[str]) -> np.ndarray:
        return np.array([[plan.offsets[n], graph.tensors[n].sample_nbytes] for n in names], dtype=np.int64)

    return Program(np.array(words, dtype=np.int64), plan.arena_bytes, io(graph.inputs), io(graph.outputs))
