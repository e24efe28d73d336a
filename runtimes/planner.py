"""Activation memory planning: one arena, every activation at a fixed offset.

Lifetimes come from the execution order. Two placement orders are tried (largest first, as TFLite
Micro's GreedyMemoryPlanner does, and earliest first, as TinyEngine does) and the smaller arena wins.
A QReshape output shares its input's bytes (the reshape then costs nothing at run time).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeq.ir import Graph

ALIGN = 16  # bytes; keeps every activation aligned for SIMD loads on every target


@dataclass
class MemoryPlan:
    """Arena offset of every activation (per sample) and the arena size."""

    offsets: dict[str, int]
    arena_bytes: int
    strategy: str


@dataclass
class _Buffer:
    names: list[str]
    size: int
    first: int
    last: int


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _buffers(graph: Graph) -> list[_Buffer]:
    """Group aliased tensors and compute each buffer's size and live range [first, last] in steps."""
    group: dict[str, _Buffer] = {}
    end = len(graph.nodes)
    for name in graph.inputs:
        group[name] = _Buffer([name], graph.tensors[name].sample_nbytes, 0, 0)
    for step, node in enumerate(graph.nodes):
        for i in node.inputs:
            if i in group:
                group[i].last = max(group[i].last, step)
        for o in node.outputs:
            src = node.inputs[0] if node.op == "QReshape" else None
            if src in group:
                buf = group[src]
                buf.names.append(o)
            else:
                buf = _Buffer([o], graph.tensors[o].sample_nbytes, step, step)
            group[o] = buf
    for name in graph.outputs:
        group[name].last = end
    unique = {id(b): b for b in group.values()}
    return list(unique.values())


def _place(buffers: list[_Buffer]) -> tuple[dict[int, int], int]:
    placed: list[tuple[int, int, _Buffer]] = []
    where: dict[int, int] = {}
    for buf in buffers:
        live = sorted((off, off + _align(b.size)) for off, _, b in placed
                      if not (b.last < buf.first or buf.last < b.first))
        offset = 0
        for lo, hi in live:
            if offset + buf.size <= lo:
                break
            offset = max(offset, hi)
        placed.append((offset, offset + _align(buf.size), buf))
        where[id(buf)] = offset
    return where, max((hi for _, hi, _ in placed), default=0)


def plan_memory(graph: Graph) -> MemoryPlan:
    """Place every activation of ``graph`` in one arena, trying each strategy and keeping the smallest."""
    buffers = _buffers(graph)
    strategies = {
        "greedy-by-size": sorted(buffers, key=lambda b: (-b.size, b.first)),
        "first-fit-by-time": sorted(buffers, key=lambda b: (b.first, -b.size)),
    }
    best: MemoryPlan | None = None
    for name, order in strategies.items():
        where, size = _place(order)
        if best is None or size < best.arena_bytes:
            offsets = {n: where[id(b)] for b in buffers for n in b.names}
            best = MemoryPlan(offsets, size, name)
    assert best is not None
    return best
