"""Activation memory planning: one arena, every activation at a fixed offset.

Lifetimes come from the execution order. Two placement orders are tried (largest first, as TFLite
Micro's GreedyMemoryPlanner does, and earliest first, as TinyEngine does) and the smaller arena wins.
Some outputs share their input's bytes: always for ops with ``alias`` in the registry (a QReshape then
costs nothing at run time), and where safe for elementwise ops (``inplace``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeq.ir import Graph
from .registry import OPS

ALIGN = 16  # bytes; keeps every activation aligned for SIMD loads on every target


@dataclass
class MemoryPlan:
    """Arena offset of every activation (per sample), the arena size, and what each strategy reached."""

    offsets: dict[str, int]
    arena_bytes: int
    strategy: str
    candidates: dict[str, int] = field(default_factory=dict)  # strategy -> arena bytes


@dataclass
class _Buffer:
    names: list[str]
    size: int
    first: int
    last: int


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def lifetimes(graph: Graph) -> dict[str, tuple[int, int]]:
    """[first, last] step of every activation: produced (inputs: 0) to last read (outputs: the end)."""
    span: dict[str, list[int]] = {name: [0, 0] for name in graph.inputs}
    for step, node in enumerate(graph.nodes):
        for i in node.inputs:
            if i in span:
                span[i][1] = step
        for o in node.outputs:
            span[o] = [step, step]
    for name in graph.outputs:
        span[name][1] = len(graph.nodes)
    return {k: (a, b) for k, (a, b) in span.items()}


def _shared_input(graph: Graph, step: int, group: dict[str, _Buffer], life: dict[str, tuple[int, int]],
                  inplace: bool) -> str | None:
    """The input whose buffer this node's output takes over, if any."""
    node = graph.nodes[step]
    op = OPS[node.op]
    if op.alias is not None:
        src = node.inputs[op.alias] if len(node.inputs) > op.alias else ""
        return src if src in group else None
    if not inplace:
        return None
    size = graph.tensors[node.outputs[0]].sample_nbytes
    for i in op.inplace:
        src = node.inputs[i] if len(node.inputs) > i else ""
        buf = group.get(src)
        if buf is None or graph.tensors[src].sample_nbytes != size:
            continue
        # Every name in the buffer must be dead after this node, and no other operand of the node may
        # read the buffer through a differently sized (broadcast) view.
        if any(life[n][1] > step for n in buf.names):
            continue
        if any(group.get(t) is buf and graph.tensors[t].sample_nbytes != size for t in node.inputs if t):
            continue
        return src
    return None


def _buffers(graph: Graph, inplace: bool) -> list[_Buffer]:
    """Group tensors that share bytes and compute each buffer's size and live range [first, last]."""
    life = lifetimes(graph)
    group: dict[str, _Buffer] = {}
    for name in graph.inputs:
        group[name] = _Buffer([name], graph.tensors[name].sample_nbytes, 0, 0)
    for step, node in enumerate(graph.nodes):
        out = node.outputs[0]
        src = _shared_input(graph, step, group, life, inplace)
        if src is None:
            group[out] = _Buffer([out], graph.tensors[out].sample_nbytes, step, step)
        else:
            group[out] = group[src]
            group[out].names.append(out)
            group[out].size = max(group[out].size, graph.tensors[out].sample_nbytes)
    for name, buf in group.items():
        buf.last = max(buf.last, life[name][1])
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


ORDERS = {
    "greedy-by-size": lambda b: (-b.size, b.first),      # TFLite Micro's GreedyMemoryPlanner
    "first-fit-by-time": lambda b: (b.first, -b.size),   # TinyEngine
}


def plan_memory(graph: Graph, inplace: bool = True) -> MemoryPlan:
    """Place every activation of ``graph`` in one arena, trying each strategy and keeping the smallest.

    With ``inplace``, elementwise ops may also write over an input that dies at that op; each order is
    tried with and without that, since sharing can change which placement packs best.
    """
    best: MemoryPlan | None = None
    candidates: dict[str, int] = {}
    for use_inplace in ((False, True) if inplace else (False,)):
        buffers = _buffers(graph, use_inplace)
        for name, key in ORDERS.items():
            label = name + ("+inplace" if use_inplace else "")
            where, size = _place(sorted(buffers, key=key))
            candidates[label] = size
            if best is None or size < best.arena_bytes:
                best = MemoryPlan({n: where[id(b)] for b in buffers for n in b.names}, size, label)
    assert best is not None
    best.candidates = candidates
    return best
