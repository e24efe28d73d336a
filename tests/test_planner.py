"""The memory planner: no two simultaneously live activations share bytes; aliasing is honoured."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

import edgeq
from edgeq.ir import Graph, Node, Tensor
from edgeq.runtimes.planner import plan_memory


def _random_graph(rng: np.random.Generator) -> Graph:
    """A random DAG of unary/binary int8 nodes (some reshapes) with random tensor sizes."""
    tensors = {"in": Tensor("in", (1, int(rng.integers(1, 300))), "int8")}
    names, nodes = ["in"], []
    for i in range(int(rng.integers(1, 25))):
        out = f"t{i}"
        if rng.random() < 0.2:
            src = names[int(rng.integers(0, len(names)))]
            nodes.append(Node("QReshape", f"n{i}", [src], [out]))
            tensors[out] = Tensor(out, tensors[src].shape, "int8")
        else:
            k = int(rng.integers(1, 3))
            ins = [names[int(j)] for j in rng.integers(max(0, len(names) - 4), len(names), size=k)]
            nodes.append(Node("QAdd" if k == 2 else "QLut", f"n{i}", ins, [out]))
            tensors[out] = Tensor(out, (1, int(rng.integers(1, 300))), "int8")
        names.append(out)
    outputs = [names[-1]] + ([names[len(names) // 2]] if rng.random() < 0.5 else [])
    return Graph(nodes, tensors, ["in"], outputs)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_live_tensors_never_overlap(seed):
    g = _random_graph(np.random.default_rng(seed))
    plan = plan_memory(g)
    end = len(g.nodes)
    first = {"in": 0}
    last = {"in": 0}
    for step, node in enumerate(g.nodes):
        for i in node.inputs:
            last[i] = step
        first[node.outputs[0]] = step
        last.setdefault(node.outputs[0], step)
    for o in g.outputs:
        last[o] = end
    alias = {n.outputs[0]: n.inputs[0] for n in g.nodes if n.op == "QReshape"}

    def root(t):
        while t in alias:
            t = alias[t]
        return t

    names = list(first)
    for i, a in enumerate(names):
        ra = plan.offsets[a], plan.offsets[a] + g.tensors[a].nbytes
        assert ra[1] <= plan.arena_bytes
        for b in names[i + 1:]:
            if root(a) == root(b):
                assert plan.offsets[a] == plan.offsets[b]
                continue
            # a buffer is live from its producer to its last reader (aliases extend the group's life)
            la = (min(first[t] for t in names if root(t) == root(a)), max(last[t] for t in names if root(t) == root(a)))
            lb = (min(first[t] for t in names if root(t) == root(b)), max(last[t] for t in names if root(t) == root(b)))
            if la[1] < lb[0] or lb[1] < la[0]:
                continue
            rb = plan.offsets[b], plan.offsets[b] + g.tensors[b].nbytes
            assert ra[1] <= rb[0] or rb[1] <= ra[0], (a, b, ra, rb)


def test_sample_arena_smaller_than_sum_of_activations(tmp_path):
    b = edgeq.load(edgeq.convert(device="host", output=tmp_path / "d.edgeq", progress=False).path)
    total = sum(t.nbytes for n, t in b.graph.tensors.items() if n not in b.graph.consts)
    largest_pair = max(b.graph.tensors[n.inputs[0]].nbytes + b.graph.tensors[n.outputs[0]].nbytes
                       for n in b.graph.nodes if n.op != "QReshape")
    arena = b.summary()["memory"]["peak_activation_bytes"]
    assert largest_pair <= arena < total
