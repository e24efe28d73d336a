"""Channel splitting: int8 per-tensor activations for tensors whose channels differ wildly in range.

A pointwise Conv (with its activation chain) feeding a depthwise Conv is the common mobile block; in
PP-LCNet some of its channels reach 50x the range of the others, and one per-tensor int8 scale then
rounds the small channels away. Both convs act on each channel separately, so the pair can be cut
into channel groups of similar range, each group with its own int8 scale, joined by a Concat whose
channel order the consumer convolutions absorb by permuting their weights. Everything stays int8 on
existing kernels; the split is chosen from per-channel ranges on calibration samples.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgeq.ir import Graph, Node, Tensor
from .float_ops import ACTIVATIONS

MAX_GROUPS = 3
MIN_GAIN = 4.0     # split only when the summed relative quantization noise drops by this factor
SAMPLES = 8        # calibration samples used for the per-channel ranges


def _groups(widths: np.ndarray, max_groups: int = MAX_GROUPS) -> tuple[list[np.ndarray], float, float]:
    """Channel groups (contiguous in order of range) minimising sum_c (group range / channel range)^2;
    returns them with the cost of one group and of the chosen split."""
    order = np.argsort(widths, kind="stable")
    w2 = np.maximum(widths[order], 1e-12) ** 2
    n = len(w2)
    inv2 = np.concatenate([[0.0], np.cumsum(1.0 / w2)])
    # cost[k][j]: best cost of the first j channels in k groups; cut[k][j]: where its last group starts.
    cost = np.full((max_groups + 1, n + 1), np.inf)
    cut = np.zeros((max_groups + 1, n + 1), dtype=np.int64)
    cost[0, 0] = 0.0
    for k in range(1, max_groups + 1):
        for j in range(1, n + 1):
            options = cost[k - 1, :j] + w2[j - 1] * (inv2[j] - inv2[:j])
            cut[k, j] = int(np.argmin(options))
            cost[k, j] = options[cut[k, j]]
    k = int(np.argmin(cost[1:, n])) + 1
    bounds, j = [], n
    for kk in range(k, 0, -1):
        bounds.insert(0, (int(cut[kk, j]), j))
        j = int(cut[kk, j])
    return [np.sort(order[a:b]) for a, b in bounds], float(cost[1, n]), float(cost[k, n])


def _is_pointwise(g: Graph, node: Node | None) -> bool:
    return node is not None and node.op == "Conv" and node.attrs["group"] == 1


def _is_depthwise(g: Graph, node: Node | None, channels: int) -> bool:
    return node is not None and node.op == "Conv" and node.attrs["group"] == channels and \
        g.consts[node.inputs[1]].shape[0] == channels


def _unary_run(g: Graph, start: str, consumers: dict) -> list[Node]:
    """The activation nodes reading ``start`` one after another, each the only reader of its input."""
    run, t = [], start
    while True:
        users = consumers.get(t, [])
        if len(users) != 1 or users[0].op not in ACTIVATIONS or t in g.outputs:
            return run
        run.append(users[0])
        t = users[0].outputs[0]


def _candidates(g: Graph) -> list[tuple[Node, list[Node], Node, list[Node], list[Node]]]:
    """(pointwise A, unary nodes between, depthwise B, unary nodes after B, consumers) chains that can be
    split; the consumers are convolutions over all channels, which absorb the new channel order."""
    producers, consumers = g.producers(), g.consumers()
    found = []
    for b in g.nodes:
        if b.op != "Conv" or b.attrs["group"] == 1:
            continue
        channels = g.consts[b.inputs[1]].shape[0]
        if not _is_depthwise(g, b, channels):
            continue
        between, t = [], b.inputs[0]
        node = producers.get(t)
        while node is not None and node.op in ACTIVATIONS and len(consumers.get(node.outputs[0], [])) == 1:
            between.insert(0, node)
            node = producers.get(node.inputs[0])
        if not _is_pointwise(g, node) or len(consumers.get(node.outputs[0], [])) != 1 \
                or len(consumers.get(b.inputs[0], [])) != 1 or any(o in g.outputs for o in (b.inputs[0], b.outputs[0])):
            continue
        after = _unary_run(g, b.outputs[0], consumers)
        out = after[-1].outputs[0] if after else b.outputs[0]
        users = consumers.get(out, [])
        if not users or out in g.outputs or any(u.op != "Conv" or u.attrs["group"] != 1 or u.inputs[0] != out
                                                for u in users):
            continue
        found.append((node, between, b, after, users))
    return found


def _part(g: Graph, base: str, whole: str, part: int, channels: int, parts_of: dict[str, tuple[str, int]]) -> str:
    """A new tensor: channels ``channels`` (part ``part``) of the tensor ``whole``."""
    name = g.unique_name(base)
    t = g.tensors[whole]
    g.tensors[name] = Tensor(name, (t.shape[0], channels) + tuple(t.shape[2:]), t.dtype)
    parts_of[name] = (whole, part)
    return name


def _take(g: Graph, name: str, base: str, index: np.ndarray, axis: int = 0) -> str:
    return g.add_const(g.unique_name(base), np.ascontiguousarray(np.take(g.consts[name], index, axis=axis)))


def _chain_tensors(cand: tuple) -> list[str]:
    """The tensors a split replaces by per-group parts: outputs of A, the nodes between, B, the nodes after."""
    a, between, b, after, _ = cand
    return [n.outputs[0] for n in [a] + between + [b] + after]


class SplitPlanner:
    """Chooses the splits of a graph from the first calibration samples, inside the one calibration pass
    (``calibrate``'s views): every part of a split tensor is a channel view of the unsplit tensor, so its
    range is gathered with the others and the split graph needs no float pass of its own."""

    def __init__(self, g: Graph):
        self.cands = _candidates(g)
        self.groups: dict[str, list[np.ndarray]] = {}  # depthwise conv name -> channel groups
        self.tensors = {t for cand in self.cands for t in _chain_tensors(cand)}
        self.samples = SAMPLES

    def decide(self, first: Callable[[str], np.ndarray]) -> dict[tuple[str, int], tuple[str, np.ndarray]]:
        """Split where the channel ranges over the first SAMPLES samples (``first(tensor)`` gives them)
        call for it; returns the views {(tensor, part): (tensor, channels)} of the tensors to be split."""
        views = {}
        for cand in self.cands:
            b = cand[2]
            # Ranges (including 0, as qparams does) of the tensor the depthwise conv reads.
            t = first(b.inputs[0])[:SAMPLES]
            widths = np.maximum(t.max(axis=(0, 2, 3)), 0) - np.minimum(t.min(axis=(0, 2, 3)), 0)
            groups, one, split = _groups(widths.astype(np.float64))
            if len(groups) < 2 or split * MIN_GAIN > one:
                continue
            self.groups[b.name] = groups
            views.update({(name, i): (name, idx) for name in _chain_tensors(cand) for i, idx in enumerate(groups)})
        return views


def split_wide_channels(g: Graph, groups: dict[str, list[np.ndarray]]) -> dict[str, tuple[str, int]]:
    """Split every pointwise -> (activations) -> depthwise pair whose depthwise conv has channel
    ``groups`` (from :class:`SplitPlanner`); returns {new tensor: (tensor it is a channel part of, part)}."""
    parts_of: dict[str, tuple[str, int]] = {}
    for a, between, b, after, users in _candidates(g):
        if b.name not in groups:
            continue
        parts = []
        for i, idx in enumerate(groups[b.name]):
            tag = f"{b.name}_part{i}"
            bias_a = a.inputs[2] if len(a.inputs) > 2 and a.inputs[2] else None
            a_in = [a.inputs[0], _take(g, a.inputs[1], tag + "_wa", idx)] + \
                ([_take(g, bias_a, tag + "_ba", idx)] if bias_a else [])
            x = _part(g, tag + "_a", a.outputs[0], i, len(idx), parts_of)
            nodes = [Node("Conv", tag + "_pw", a_in, [x], dict(a.attrs), list(a.source_ops))]
            for n in between:
                y = _part(g, tag + "_" + n.op.lower(), n.outputs[0], i, len(idx), parts_of)
                nodes.append(Node(n.op, f"{tag}_{n.name}", [x], [y], dict(n.attrs), list(n.source_ops)))
                x = y
            bias_b = b.inputs[2] if len(b.inputs) > 2 and b.inputs[2] else None
            b_in = [x, _take(g, b.inputs[1], tag + "_wb", idx)] + ([_take(g, bias_b, tag + "_bb", idx)] if bias_b else [])
            x = _part(g, tag + "_dw", b.outputs[0], i, len(idx), parts_of)
            nodes.append(Node("Conv", tag + "_dw", b_in, [x], dict(b.attrs, group=len(idx)), list(b.source_ops)))
            for n in after:
                y = _part(g, tag + "_" + n.op.lower(), n.outputs[0], i, len(idx), parts_of)
                nodes.append(Node(n.op, f"{tag}_{n.name}", [x], [y], dict(n.attrs), list(n.source_ops)))
                x = y
            parts.append((nodes, x))
        perm = np.concatenate(groups[b.name])
        for u in users:
            u.inputs = [u.inputs[0], _take(g, u.inputs[1], u.name + "_wperm", perm, axis=1)] + u.inputs[2:]
        last = after[-1] if after else b
        concat = Node("Concat", last.name, [o for _, o in parts], list(last.outputs), {"axis": 1}, list(last.source_ops))
        at = g.nodes.index(a)
        for n in [a] + between + [b] + after:
            g.nodes.remove(n)
        g.nodes[at:at] = [n for nodes, _ in parts for n in nodes] + [concat]
    if parts_of:
        g.prune()
    return parts_of
