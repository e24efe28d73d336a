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
    members: dict[str, int]  # tensor -> byte offset inside the buffer
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
        if any(life[n][1] > step for n in buf.members):
            continue
        if any(group.get(t) is buf and graph.tensors[t].sample_nbytes != size for t in node.inputs if t):
            continue
        return src
    return None


def _depthwise_plane(graph: Graph, step: int, group: dict[str, _Buffer], life: dict[str, tuple[int, int]]) -> int:
    """Bytes of one output channel if this node is a depthwise conv that may run in place, else 0.

    TinyEngine's trick: output channel c goes where input channel c - 1 was, so input and output need
    N + 1 channels instead of 2N. The kernels then compute channel after channel in ascending order
    (each output channel only covers input channels that were already consumed).
    """
    node = graph.nodes[step]
    if node.op != "QConv":
        return 0
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
    c, oc = x.shape[1], y.shape[1]
    buf = group.get(node.inputs[0])
    if buf is None or node.attrs["group"] != c or oc != c or c < 2:
        return 0
    plane, in_plane = y.sample_nbytes // c, x.sample_nbytes // c
    if plane > in_plane or buf.size != x.sample_nbytes or any(life[n][1] > step for n in buf.members):
        return 0
    return plane


def _buffers(graph: Graph, inplace: bool, inplace_depthwise: bool = False) -> list[_Buffer]:
    """Group tensors that share bytes and compute each buffer's size and live range [first, last]."""
    life = lifetimes(graph)
    group: dict[str, _Buffer] = {}
    for name in graph.inputs:
        group[name] = _Buffer({name: 0}, graph.tensors[name].sample_nbytes, 0, 0)
    for step, node in enumerate(graph.nodes):
        out = node.outputs[0]
        size = graph.tensors[out].sample_nbytes
        src = _shared_input(graph, step, group, life, inplace)
        plane = _depthwise_plane(graph, step, group, life) if inplace_depthwise and src is None else 0
        if plane:
            buf = group[node.inputs[0]]
            buf.members = {n: off + plane for n, off in buf.members.items()}
            buf.members[out] = 0
            buf.size += plane
            group[out] = buf
        elif src is None:
            group[out] = _Buffer({out: 0}, size, step, step)
        else:
            group[out] = group[src]
            group[out].members[out] = group[src].members[src]
            group[out].size = max(group[out].size, group[out].members[out] + size)
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


def plan_memory(graph: Graph, inplace: bool = True, inplace_depthwise: bool = False) -> MemoryPlan:
    """Place every activation of ``graph`` in one arena, trying each strategy and keeping the smallest.

    With ``inplace``, elementwise ops may also write over an input that dies at that op; with
    ``inplace_depthwise`` (for microcontrollers: it trades some speed for memory) depthwise convolutions
    may too. Each order is tried with and without sharing, since sharing can change which placement
    packs best.
    """
    best: MemoryPlan | None = None
    candidates: dict[str, int] = {}
    variants = {"": (False, False)}
    if inplace:
        variants["+inplace"] = (True, False)
    if inplace_depthwise:
        variants["+inplace+depthwise"] = (inplace, True)
    for suffix, (elementwise, depthwise) in variants.items():
        buffers = _buffers(graph, elementwise, depthwise)
        for name, key in ORDERS.items():
            where, size = _place(sorted(buffers, key=key))
            candidates[name + suffix] = size
            if best is None or size < best.arena_bytes:
                best = MemoryPlan({n: where[id(b)] + off for b in buffers for n, off in b.members.items()}, size,
                                  name + suffix)
    assert best is not None
    best.candidates = candidates
    return best
