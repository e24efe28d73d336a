"""The memory planner: no two simultaneously live activations share bytes; aliasing is honoured."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

import edgeq
from edgeq.ir import Graph, Node, Tensor
from edgeq.runtimes.planner import MemoryPlan, lifetimes, plan_memory
from edgeq.runtimes.executor import Executor
from edgeq.runtimes.registry import OPS
from util import make_graph


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


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), inplace=st.booleans())
def test_live_tensors_never_overlap(seed, inplace):
    """Bytes are shared only by a declared alias or by an elementwise op overwriting an input that dies there."""
    g = _random_graph(np.random.default_rng(seed))
    plan = plan_memory(g, inplace=inplace)
    life = lifetimes(g)
    parent = {t: t for t in life}

    def root(t):
        while parent[t] != t:
            t = parent[t]
        return t

    for step, node in enumerate(g.nodes):
        out, op = node.outputs[0], OPS[node.op]
        if op.alias is not None:
            assert plan.offsets[out] == plan.offsets[node.inputs[op.alias]]
            parent[out] = root(node.inputs[op.alias])
        elif plan.offsets[out] in [plan.offsets[i] for i in node.inputs]:
            src = node.inputs[[plan.offsets[i] for i in node.inputs].index(plan.offsets[out])]
            members = [t for t in life if root(t) == root(src)]
            if all(life[t][1] <= step for t in members) and g.tensors[src].nbytes == g.tensors[out].nbytes:
                assert inplace and OPS[node.op].inplace
                parent[out] = root(src)
    groups: dict[str, list[str]] = {}
    for t in life:
        groups.setdefault(root(t), []).append(t)
    spans = {r: (min(life[t][0] for t in ts), max(life[t][1] for t in ts),
                 plan.offsets[r], max(plan.offsets[t] + g.tensors[t].nbytes for t in ts)) for r, ts in groups.items()}
    for ts in groups.values():
        assert len({plan.offsets[t] for t in ts}) == 1
    roots = list(spans)
    for i, a in enumerate(roots):
        fa, la, lo_a, hi_a = spans[a]
        assert hi_a <= plan.arena_bytes
        for b in roots[i + 1:]:
            fb, lb, lo_b, hi_b = spans[b]
            if la < fb or lb < fa:
                continue
            assert hi_a <= lo_b or hi_b <= lo_a, (a, b, spans[a], spans[b])


def test_inplace_never_larger():
    for seed in range(50):
        g = _random_graph(np.random.default_rng(seed))
        assert plan_memory(g).arena_bytes <= plan_memory(g, inplace=False).arena_bytes


def test_sample_arena_smaller_than_sum_of_activations(tmp_path):
    b = edgeq.load(edgeq.convert(device="host", output=tmp_path / "d.edgeq", progress=False).path)
    total = sum(t.nbytes for n, t in b.graph.tensors.items() if n not in b.graph.consts)
    largest_pair = max(b.graph.tensors[n.inputs[0]].nbytes + b.graph.tensors[n.outputs[0]].nbytes
                       for n in b.graph.nodes if n.op != "QReshape")
    arena = b.summary()["memory"]["peak_activation_bytes"]
    assert largest_pair <= arena < total


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_inplace_depthwise_bit_exact(seed, backend):
    """A depthwise conv planned in place (N + 1 channels) gives the reference's bytes on every backend."""
    rng = np.random.default_rng(seed)
    c, h, w = int(rng.integers(2, 40)), int(rng.integers(3, 12)), int(rng.integers(3, 12))
    k, stride = int(rng.choice([1, 3, 5])), int(rng.integers(1, 3))
    mult = rng.integers(1 << 30, 1 << 31, size=c).astype(np.int32)
    consts = {"w": rng.integers(-128, 128, size=(c, 1, k, k)).astype(np.int8),
              "b": rng.integers(-1000, 1000, size=c).astype(np.int32), "m": mult,
              "s": rng.integers(-10, 0, size=c).astype(np.int32)}
    attrs = dict(strides=[stride, stride], pads=[k // 2] * 4, dilations=[1, 1], group=c, x_zp=3, y_zp=-5,
                 act_min=-128, act_max=127)
    x = rng.integers(-128, 128, size=(2, c, h, w)).astype(np.int8)
    graph, inputs = make_graph("QConv", {"x": x}, consts, ["x", "w", "b", "m", "s"], attrs)
    plane = graph.tensors["y"].nbytes // c
    plan = plan_memory(graph, inplace_depthwise=True)
    assert plan.arena_bytes <= plan_memory(graph).arena_bytes
    if stride == 1:
        assert plan.strategy.endswith("+depthwise") and plan.offsets["x"] - plan.offsets["y"] == plane
    # The in-place layout itself (output one channel below the input), whatever the planner chose.
    tight = MemoryPlan({"x": plane, "y": 0}, plane + graph.tensors["x"].nbytes, "test")
    want = Executor(graph, "reference").run_quantized(inputs)["y"]
    for p in (plan, tight):
        got = Executor(graph, backend, p).run_quantized(inputs)["y"]
        assert np.array_equal(got, want)
