"""Patch-based inference (MCUNetV2): run the memory-heavy first stage of a conv net patch by patch.

The first ``split`` nodes (the *stage*) are rewritten into n x n copies, one per spatial patch of the
stage's output, each computing only the window that patch needs (its receptive field, the *halo*
included). Patches are cropped out of the full input and placed into a full-size buffer of the stage's
output with ``QCopyWindow``; every other node is untouched. The result is an ordinary integer graph:
the memory planner, every backend and the C export run it without knowing it was patched, and its
output is bit-identical to layer-by-layer execution because each output pixel sees exactly the same
integer arithmetic (interior patch borders read real halo data, image borders keep the original
padding). Windows are traced backwards through any kernel size, stride, dilation and padding.

The search tries every split point and patch count, plans memory for each, and scores peak memory
against the extra MACs the halos cost; "no patches" is always a candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeq.errors import EdgeqError
from edgeq.ir import Graph, Node, Tensor
from edgeq.runtimes.planner import MemoryPlan, plan_memory
from edgeq.runtimes.registry import graph_macs

SPATIAL = ("QConv", "QMaxPool", "QAvgPool")
ELEMENTWISE = ("QLut", "QAdd", "QMul")
MAX_PATCHES = 8

Box = tuple[int, int, int, int]  # rows [y0, y1), columns [x0, x1)


class PatchError(EdgeqError):
    """The requested patch plan cannot be built for this graph."""


@dataclass
class PatchPlan:
    """A chosen plan (``n == 0``: layer by layer) and what every candidate would have cost."""

    n: int
    split: int                      # nodes in the patched stage
    graph: Graph
    memory: MemoryPlan
    macs: int
    base_macs: int
    base_peak: int
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-able description stored in the bundle and shown by ``convert``/``inspect``."""
        return {"n_patch": self.n, "split_nodes": self.split, "peak_activation_bytes": self.memory.arena_bytes,
                "layer_by_layer_peak_bytes": self.base_peak, "macs": self.macs, "layer_by_layer_macs": self.base_macs,
                "extra_macs_pct": round(100.0 * (self.macs - self.base_macs) / max(self.base_macs, 1), 2),
                "candidates": self.candidates}


def _is_4d_activation(graph: Graph, name: str) -> bool:
    return name not in graph.consts and len(graph.tensors[name].shape) == 4


def _data_inputs(node: Node) -> list[str]:
    """The operands that are data (not weights, requantization parameters or tables)."""
    return node.inputs[:2] if node.op in ("QAdd", "QMul") else node.inputs[:1]


def _patchable(node: Node, graph: Graph) -> bool:
    if node.op not in SPATIAL + ELEMENTWISE or not _is_4d_activation(graph, node.outputs[0]):
        return False
    for t in _data_inputs(node):
        if t in graph.consts:
            # A constant operand may vary per channel, never across space (a patch sees a window of it);
            # broadcasting aligns its last two dimensions with H and W.
            if any(d != 1 for d in graph.tensors[t].shape[-2:]):
                return False
        elif not _is_4d_activation(graph, t):
            return False
    return True


def split_points(graph: Graph) -> list[int]:
    """Stage lengths whose stage reads only the (single, 4-D) graph input and leaves one tensor behind."""
    if len(graph.inputs) != 1 or not _is_4d_activation(graph, graph.inputs[0]):
        return []
    points = []
    produced = {graph.inputs[0]}
    for split, node in enumerate(graph.nodes, start=1):
        if not _patchable(node, graph):
            break
        produced.update(node.outputs)
        later = {t for n in graph.nodes[split:] for t in n.inputs} | set(graph.outputs)
        if len(produced & later) == 1 and graph.inputs[0] not in later:
            points.append(split)
    return points


def _window(out: tuple[int, int], size: int, k: int, stride: int, pad: int, dil: int) -> tuple[int, int, int, int]:
    """Input rows [a, b) that output rows [o0, o1) read, and the padding the window needs on each side."""
    start = out[0] * stride - pad
    end = (out[1] - 1) * stride - pad + (k - 1) * dil + 1
    a, b = max(start, 0), min(end, size)
    return a, b, a - start, end - b


def _input_box(node: Node, graph: Graph, t: str, box: Box) -> tuple[Box, list[int] | None]:
    """The window of input ``t`` that output window ``box`` of ``node`` needs (and its new pads)."""
    shape = graph.tensors[t].shape
    if node.op in SPATIAL:
        a = node.attrs
        kernel = graph.tensors[node.inputs[1]].shape[2:] if node.op == "QConv" else a["kernel"]
        dil = a.get("dilations", [1, 1])
        ya, yb, pt, pb = _window(box[:2], shape[2], kernel[0], a["strides"][0], a["pads"][0], dil[0])
        xa, xb, pl, pr = _window(box[2:], shape[3], kernel[1], a["strides"][1], a["pads"][1], dil[1])
        return (ya, yb, xa, xb), [pt, pl, pb, pr]
    # Elementwise: the same window, or all of a dimension that broadcasts.
    y = (0, 1) if shape[2] == 1 else box[:2]
    x = (0, 1) if shape[3] == 1 else box[2:]
    return (*y, *x), None


def _union(a: Box | None, b: Box) -> Box:
    return b if a is None else (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _bounds(size: int, n: int) -> list[tuple[int, int]]:
    return [(i * size // n, (i + 1) * size // n) for i in range(n)]


class _Rewriter:
    """Builds the patched graph: n x n copies of the stage, crops and placements."""

    def __init__(self, graph: Graph, split: int, n: int):
        self.g, self.split, self.n = graph, split, n
        self.stage = graph.nodes[:split]
        produced = {graph.inputs[0]} | {o for nd in self.stage for o in nd.outputs}
        later = {t for nd in graph.nodes[split:] for t in nd.inputs} | set(graph.outputs)
        (self.boundary,) = produced & later
        self.nodes: list[Node] = []
        self.tensors: dict[str, Tensor] = dict(graph.tensors)

    def _tensor(self, like: str, name: str, box: Box) -> str:
        if box[1] <= box[0] or box[3] <= box[2]:
            raise PatchError(f"patch window of '{like}' is empty (a window that reads only padding)")
        t = self.g.tensors[like]
        self.tensors[name] = Tensor(name, (t.shape[0], t.shape[1], box[1] - box[0], box[3] - box[2]), t.dtype,
                                    t.scale, t.zero_point, t.axis)
        return name

    def _copy(self, src: str, src_box: Box, want: Box, name: str, canvas: str | None = None,
              out: tuple[int, int] | None = None) -> str:
        """QCopyWindow of window ``want`` out of ``src`` (which holds ``src_box``) into a new tensor (or canvas)."""
        h, w = want[1] - want[0], want[3] - want[2]
        attrs = {"src": [want[0] - src_box[0], want[2] - src_box[2]],
                 "dst": [want[0], want[2]] if out else [0, 0], "size": [h, w], "out": list(out or (h, w))}
        self.nodes.append(Node("QCopyWindow", f"{name}/copy", [src] + ([canvas] if canvas else []), [name], attrs))
        return name

    def patch(self, pi: int, pj: int, out_box: Box, canvas: str | None, last: bool) -> str:
        """Emit one patch; returns the name of the canvas after placing it."""
        g, tag = self.g, f"@p{pi}_{pj}"
        need: dict[str, Box] = {self.boundary: out_box}
        reads: dict[tuple[int, str], Box] = {}
        pads: dict[int, list[int] | None] = {}
        for idx in range(self.split - 1, -1, -1):
            node = self.stage[idx]
            box = need.get(node.outputs[0])
            if box is None:
                continue
            for t in _data_inputs(node):
                if t not in g.consts:
                    in_box, p = _input_box(node, g, t, box)
                    reads[idx, t], pads[idx] = in_box, p
                    need[t] = _union(need.get(t), in_box)
        src = g.inputs[0]
        local = {src: self._copy(src, (0, g.tensors[src].shape[2], 0, g.tensors[src].shape[3]), need[src],
                                 self._tensor(src, src + tag, need[src]))}
        crops: dict[tuple[str, Box], str] = {}
        for idx, node in enumerate(self.stage):
            out = node.outputs[0]
            if out not in need:
                continue
            inputs = []
            for t in node.inputs:
                if (idx, t) not in reads:
                    inputs.append(t)
                    continue
                box = reads[idx, t]
                if box != need[t]:
                    key = (t, box)
                    if key not in crops:
                        crops[key] = self._copy(local[t], need[t], box,
                                                self._tensor(t, f"{t}{tag}/{box[0]}_{box[2]}", box))
                    inputs.append(crops[key])
                else:
                    inputs.append(local[t])
            attrs = dict(node.attrs)
            if pads[idx] is not None:
                attrs["pads"] = pads[idx]
            local[out] = self._tensor(out, out + tag, need[out])
            self.nodes.append(Node(node.op, node.name + tag, inputs, [local[out]], attrs, list(node.source_ops)))
        shape = g.tensors[self.boundary].shape
        placed = self.boundary if last else self._tensor(self.boundary, f"{self.boundary}@canvas{pi}_{pj}",
                                                          (0, shape[2], 0, shape[3]))
        # The window this patch computed may be larger than its share (when the stage reads it too).
        src_box = need[self.boundary]
        return self._copy(local[self.boundary], src_box, out_box, placed, canvas, (shape[2], shape[3]))

    def build(self) -> Graph:
        shape = self.g.tensors[self.boundary].shape
        rows, cols = _bounds(shape[2], self.n), _bounds(shape[3], self.n)
        canvas = None
        for pi, r in enumerate(rows):
            for pj, c in enumerate(cols):
                last = pi == self.n - 1 and pj == self.n - 1
                canvas = self.patch(pi, pj, (*r, *c), canvas, last)
        nodes = self.nodes + self.g.nodes[self.split:]
        graph = Graph(nodes, self.tensors, list(self.g.inputs), list(self.g.outputs), dict(self.g.consts),
                      self.g.dynamic_batch)
        graph.prune()
        return graph


def patch_graph(graph: Graph, split: int, n: int) -> Graph:
    """Rewrite the first ``split`` nodes of ``graph`` into n x n patches (see the module docstring)."""
    if split not in split_points(graph):
        raise PatchError(f"cannot patch the first {split} nodes: the stage must read only the image input, use "
                         f"spatial or elementwise ops, and leave one tensor to the rest of the graph")
    shape = graph.tensors[graph.nodes[split - 1].outputs[0]].shape
    if n < 2 or n > min(shape[2], shape[3]):
        raise PatchError(f"{n} x {n} patches do not fit a {shape[2]}x{shape[3]} stage output")
    return _Rewriter(graph, split, n).build()


def plan_patches(graph: Graph, mode: str | int = "auto", budget_bytes: int | None = None,
                 inplace_depthwise: bool = False) -> PatchPlan:
    """Choose between layer-by-layer execution and every patch plan.

    ``mode``: ``"off"`` (layer by layer), an integer n (n x n patches, the split with the lowest peak) or
    ``"auto"``: the fewest MACs among plans whose peak fits ``budget_bytes`` (so layer by layer whenever it
    fits, or when there is no budget); when nothing fits, the lowest peak (ties broken by MACs).
    ``inplace_depthwise`` is passed to the memory planner.
    """
    base_plan = plan_memory(graph, inplace_depthwise=inplace_depthwise)
    base_macs = graph_macs(graph)
    base = PatchPlan(0, 0, graph, base_plan, base_macs, base_macs, base_plan.arena_bytes)
    # Patches only add MACs: layer by layer is the auto choice whenever it fits.
    if mode == "off" or (mode == "auto" and (budget_bytes is None or base_plan.arena_bytes <= budget_bytes)):
        return base
    counts = range(2, MAX_PATCHES + 1) if mode == "auto" else [int(mode)]
    plans = [] if mode != "auto" else [base]
    for split in split_points(graph):
        shape = graph.tensors[graph.nodes[split - 1].outputs[0]].shape
        for n in counts:
            if n > min(shape[2], shape[3]):
                continue
            try:
                pg = patch_graph(graph, split, n)
            except PatchError:
                continue
            plans.append(PatchPlan(n, split, pg, plan_memory(pg, inplace_depthwise=inplace_depthwise), graph_macs(pg),
                                   base_macs, base.base_peak))
    if not plans:
        raise PatchError(f"no {mode} x {mode} patch plan exists for this graph (stage outputs are too small or "
                         f"the first op cannot be patched)")
    fitting = [p for p in plans if budget_bytes is not None and p.memory.arena_bytes <= budget_bytes]
    if mode == "auto" and fitting:
        best = min(fitting, key=lambda p: (p.macs, p.memory.arena_bytes))
    else:
        best = min(plans, key=lambda p: (p.memory.arena_bytes, p.macs))
    best.candidates = [{"n_patch": p.n, "split_nodes": p.split, "peak_activation_bytes": p.memory.arena_bytes,
                        "macs": p.macs} for p in plans]
    return best
