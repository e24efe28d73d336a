"""Memory of on-device training, and the sparse-update scheme that fits a budget.

What a device must hold on top of inference (bytes, for a batch of ``batch`` samples):

- saved activations: what the backward pass reads after the forward pass is over. A layer whose weights
  are updated keeps its int8 input (only the selected channels of a dense layer); a layer with a clamp or
  a table keeps its int8 pre-activation codes (the mask / the table slope); a max pool keeps its input
  (the winning tap). Biases and average pools need nothing saved. A tensor kept for two reasons counts once.
- gradient buffers (float32): at each node of the backward graph, the gradient of its output and of its
  input (none at the earliest updated layer, where the backward graph stops), plus that layer's own
  weight-slice and bias gradient. Updates are applied as soon as a gradient exists, so parameter
  gradients never pile up: the peak over nodes counts.
- trainable parameters: the updated int8 weight slices and int32 biases, which must live in RAM (the
  rest stays in flash).
- optimizer state: 0 (plain SGD, no momentum).

Zeroth-order training keeps only the updated parameters, the seed and two losses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from edgeq.errors import DoesNotFitError, InputError
from edgeq.ir import Graph, Node
from .backprop import TRAINABLE_OPS, region
from .planner import MemoryPlan
from .sparse_update import UpdateScheme, channel_axis, channel_count, trainable_nodes

GRAD_BYTES = 4  # float32 gradients
SEED_BYTES = 8 + 2 * 4  # a 64-bit seed and the two float32 losses of an SPSA step
RATIOS = (0.125, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class TrainMemory:
    """Bytes of one training configuration on top of the inference arena."""

    arena: int
    saved_activations: int
    gradients: int
    parameters: int
    optimizer_state: int = 0
    seed: int = 0

    @property
    def extra(self) -> int:
        """Bytes training needs beyond inference."""
        return self.saved_activations + self.gradients + self.parameters + self.optimizer_state + self.seed

    @property
    def total(self) -> int:
        """Inference arena plus :attr:`extra`."""
        return self.arena + self.extra

    def to_dict(self) -> dict[str, int]:
        """JSON-able form with the totals."""
        return {**asdict(self), "extra": self.extra, "total": self.total}


def _sample_bytes(graph: Graph, name: str) -> int:
    return graph.tensors[name].sample_nbytes


def _has_activation(graph: Graph, node: Node) -> bool:
    """True when the node's output is clamped narrower than its type, or goes through a table."""
    a = node.attrs
    lut = len(node.inputs) > 5 and bool(node.inputs[5])
    return node.op == "QLut" or lut or (node.op in TRAINABLE_OPS + ("QMaxPool",)
                                        and (a["act_min"] > -128 or a["act_max"] < 127))


def _weight_slice(graph: Graph, node: Node, ratio: float) -> tuple[int, float]:
    """(weight elements updated, share of the input tensor that must be saved for them)."""
    w = graph.tensors[node.inputs[1]]
    axis = channel_axis(node, w)
    keep = channel_count(ratio, w.shape[axis])
    share = keep / w.shape[axis] if axis == 1 else 1.0
    return w.size // w.shape[axis] * keep, share


def scheme_memory(graph: Graph, plan: MemoryPlan, scheme: UpdateScheme, batch: int = 1,
                  element_bytes: int = 1) -> TrainMemory:
    """Bytes the sparse update ``scheme`` needs (see the module docstring for what is counted).

    ``element_bytes``: 1 for the int8 graph; 4 counts the same job on the float32 model (activations and
    weights of four bytes)."""
    first = scheme.first(graph)
    weights = dict(scheme.weights)
    saved: dict[str, int] = {}
    peak_grad = params = 0
    for node in region(graph, first):
        x, y = node.inputs[0], node.outputs[0]
        param_grad = 0
        if node.name in weights:
            elems, share = _weight_slice(graph, node, weights[node.name])
            saved[x] = max(saved.get(x, 0), math.ceil(_sample_bytes(graph, x) * share) * batch * element_bytes)
            params += elems * element_bytes
            param_grad += elems * GRAD_BYTES
        if node.name in scheme.bias:
            oc = graph.tensors[node.inputs[2]].size
            params += 4 * oc
            param_grad += oc * GRAD_BYTES
        if node.op == "QMaxPool":
            saved[x] = _sample_bytes(graph, x) * batch * element_bytes
        if _has_activation(graph, node):
            saved[f"{y}:pre-activation"] = _sample_bytes(graph, y) * batch * element_bytes
        elems_out = graph.tensors[y].size // graph.tensors[y].shape[0]
        elems_in = graph.tensors[x].size // graph.tensors[x].shape[0] if node.name != first else 0
        peak_grad = max(peak_grad, (elems_out + elems_in) * GRAD_BYTES * batch + param_grad)
    return TrainMemory(plan.arena_bytes * batch * element_bytes, sum(saved.values()), peak_grad, params)


def zo_memory(graph: Graph, plan: MemoryPlan, layers: tuple[str, ...], batch: int = 1) -> TrainMemory:
    """Bytes of zeroth-order training of the int8 weights of ``layers``: inference, the weights in RAM
    and one seed (z is regenerated from it, never stored)."""
    nodes = {n.name: n for n in graph.nodes}
    params = sum(graph.tensors[nodes[n].inputs[1]].size for n in layers)
    return TrainMemory(plan.arena_bytes * batch, 0, 0, params, 0, SEED_BYTES)


def candidate_schemes(graph: Graph, max_layers: int | None = None) -> list[UpdateScheme]:
    """Biases of the last n conv/FC layers (n <= ``max_layers``), plus the weights of the last m <= n of
    them at one channel ratio; weights only in the later half of the layers (the Tiny Training Engine's
    finding: early layers' weights cost the most memory for the least accuracy)."""
    names = [n.name for n in trainable_nodes(graph)]
    late = math.ceil(len(names) / 2)
    out = []
    for n in range(1, min(len(names), max_layers or len(names)) + 1):
        bias = tuple(reversed(names[-n:]))
        out.append(UpdateScheme(bias))
        for m in range(1, min(n, late) + 1):
            for r in RATIOS:
                out.append(UpdateScheme(bias, tuple((name, r) for name in bias[:m])))
    return out


def plan_scheme(graph: Graph, plan: MemoryPlan, budget: int, batch: int = 1,
                max_layers: int | None = None) -> tuple[UpdateScheme, TrainMemory]:
    """Among :func:`candidate_schemes`, the one updating the most parameter bytes whose extra bytes fit
    ``budget`` (ties: fewer bytes).

    Schemes whose backward graph would cross an op it cannot go through (see ``backprop.BACKWARD_OPS``) are
    skipped. Raises DoesNotFitError (one line) when not even the bias of the last layer fits.
    """
    best = None
    for s in candidate_schemes(graph, max_layers):
        try:
            mem = scheme_memory(graph, plan, s, batch)
        except InputError:  # its backward graph crosses an op the backward pass cannot go through
            continue
        if mem.extra <= budget:
            key = (mem.parameters, -mem.extra)
            if best is None or key > best[0]:
                best = (key, s, mem)
    if best is None:
        smallest = scheme_memory(graph, plan, candidate_schemes(graph)[0], batch)  # InputError if none is usable
        raise DoesNotFitError(f"training does not fit: even the last layer's bias needs {smallest.extra} bytes beyond "
                              f"inference, the budget is {budget} bytes")
    return best[1], best[2]
