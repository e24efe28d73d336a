"""Sparse update with quantization-aware scaling (QAS): the Tiny Training Engine's on-device SGD step.

Only some parameters change: the int32 biases of the last n conv/FC layers and, in chosen layers, the int8
weights of a ratio of channels (largest L2 norm first: input channels of a dense layer, output channels of
a grouped/depthwise one). Scales never change, so the bundle's requantization multipliers (M = s_x s_W /
s_y) stay exactly right; an updated weight is rounded and clamped to [-127, 127], a bias to int32.

QAS (REFERENCE.md section 4): the gradient w.r.t. an int8 weight is G_W~ = s_W G_W (G_W: w.r.t. the real
weight), which makes ||W~|| / ||G_W~|| off by s_W^-2 from the float model; QAS divides by s_W^2 per output
channel (and a bias gradient by (s_W s_x)^2), so that one SGD step on the integers is the fp32 SGD step
in real units. Without QAS the same learning rate moves the integers by about s_W^2 times less.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from edgeq.errors import InputError
from edgeq.ir import Graph, Node
from .backprop import (TRAINABLE_OPS, RealParams, Tape, backward, cross_entropy, forward_int8, forward_real, layer_quant,
                       real_params)
from .fixedpoint import INT32_MAX, INT32_MIN

WEIGHT_MAX = 127  # int8 weights are symmetric (TFLite: [-127, 127])


@dataclass(frozen=True)
class UpdateScheme:
    """Which parameters a sparse update changes: biases of ``bias`` layers, and for each
    ``(layer, ratio)`` in ``weights`` the int8 weights of that ratio of its channels."""

    bias: tuple[str, ...]
    weights: tuple[tuple[str, float], ...] = ()

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer the scheme touches."""
        return tuple(dict.fromkeys(self.bias + tuple(n for n, _ in self.weights)))

    def first(self, graph: Graph) -> str:
        """The earliest touched layer in execution order: where the backward pass stops."""
        order = [n.name for n in graph.nodes]
        return min(self.layers, key=order.index)

    def describe(self) -> str:
        """One line: e.g. ``biases of fc, conv4; weights fc 100%, conv4 25%``."""
        w = ", ".join(f"{n} {r:.0%}" for n, r in self.weights)
        return f"biases of {', '.join(self.bias) or 'none'}" + (f"; weights {w}" if w else "")

    def to_dict(self) -> dict:
        """JSON-able form (reports and the tuned bundle's manifest)."""
        return {"bias": list(self.bias), "weights": [[n, r] for n, r in self.weights]}


def trainable_nodes(graph: Graph) -> list[Node]:
    """The conv/FC nodes of a graph in execution order."""
    return [n for n in graph.nodes if n.op in TRAINABLE_OPS]


def channel_axis(node: Node, w: np.ndarray) -> int:
    """The weight axis a channel ratio selects along: input channels (1) of a dense conv/FC layer,
    output channels (0) of a grouped one, whose per-group input is a single channel."""
    return 0 if node.op == "QConv" and node.attrs["group"] > 1 else 1


def channel_count(ratio: float, channels: int) -> int:
    """Channels a ratio keeps (at least one)."""
    return max(1, math.ceil(ratio * channels - 1e-9))


def select_channels(node: Node, w: np.ndarray, ratio: float) -> np.ndarray:
    """Indices (ascending) of the ``ratio`` of channels with the largest weight L2 norm."""
    axis = channel_axis(node, w)
    norms = np.sqrt((w.astype(np.float64) ** 2).sum(axis=tuple(i for i in range(w.ndim) if i != axis)))
    keep = channel_count(ratio, w.shape[axis])
    return np.sort(np.argsort(-norms, kind="stable")[:keep])


def channel_index(node: Node, w: np.ndarray, channels: np.ndarray) -> tuple:
    """The index selecting ``channels`` along the weight's :func:`channel_axis`."""
    idx: list = [slice(None)] * w.ndim
    idx[channel_axis(node, w)] = channels
    return tuple(idx)


def check_scheme(graph: Graph, scheme: UpdateScheme) -> None:
    """InputError unless every layer the scheme names is a conv/FC node and every ratio is in (0, 1]."""
    names = {n.name for n in trainable_nodes(graph)}
    for name in scheme.layers:
        if name not in names:
            raise InputError(f"update scheme names '{name}', which is not a conv/FC layer of the graph")
    for name, r in scheme.weights:
        if not 0 < r <= 1:
            raise InputError(f"channel ratio {r} of layer '{name}' is not in (0, 1]")
    if not scheme.layers:
        raise InputError("update scheme updates nothing")


def qas_scale(g_w: np.ndarray, g_b: np.ndarray, s_w: np.ndarray, s_x: float) -> tuple[np.ndarray, np.ndarray]:
    """Quantization-aware scaling of the gradients w.r.t. the int8 weights (G_W~) and int32 biases (G_b~):
    G_W~ / s_W^2 per output channel and G_b~ / (s_W s_x)^2."""
    s_w = np.asarray(s_w, dtype=np.float64)
    return g_w / s_w.reshape((-1,) + (1,) * (g_w.ndim - 1)) ** 2, g_b / (s_w * s_x) ** 2


def integer_gradients(g_w: np.ndarray, g_b: np.ndarray, s_w: np.ndarray, s_x: float) -> tuple[np.ndarray, np.ndarray]:
    """Real-unit gradients (dL/dW, dL/db) -> gradients w.r.t. the int8 weights and int32 biases:
    W = s_W W~ gives G_W~ = s_W G_W; b = s_W s_x b~ gives G_b~ = s_W s_x G_b."""
    s_w = np.asarray(s_w, dtype=np.float64)
    return g_w * s_w.reshape((-1,) + (1,) * (g_w.ndim - 1)), g_b * s_w * s_x


class _Backprop(ABC):
    """SGD by backprop over a scheme: subclasses say how to run forward and where the weights live."""

    graph: Graph
    scheme: UpdateScheme
    _first: str

    @abstractmethod
    def _forward(self, x: np.ndarray, first: str | None = None) -> tuple[np.ndarray, Tape]:
        """(real logits, tape of the nodes from ``first``) of a batch."""

    @abstractmethod
    def _weights(self) -> dict:
        """Where ``backward`` finds the current weights (integer ``consts`` or real ``params``)."""

    @abstractmethod
    def _apply(self, node: Node, g_w: np.ndarray, g_b: np.ndarray) -> None:
        """Apply one layer's update (called by ``backward`` as soon as its gradients exist)."""

    def step(self, x: np.ndarray, labels: np.ndarray) -> float:
        """One SGD step on a batch (int8 inputs for the integer model, real for the float one); returns the
        batch loss before the step."""
        logits, tape = self._forward(x, self._first)
        loss, grad = cross_entropy(logits, labels)
        backward(self.graph, tape, grad, self._first, set(self.scheme.layers), self._apply, **self._weights())
        return loss

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Real logits of the current model."""
        return self._forward(x)[0]


@dataclass
class SparseTrainer(_Backprop):
    """Trains an int8 graph in place with SGD on a sparse update scheme.

    ``consts`` are writable copies of the updated constants (the rest stay views of the bundle);
    ``qas=False`` is plain int8 SGD on the integer gradients, for comparison.
    """

    graph: Graph
    scheme: UpdateScheme
    lr: float
    qas: bool = True
    consts: dict[str, np.ndarray] = field(init=False)
    channels: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        check_scheme(self.graph, self.scheme)
        g = self.graph
        nodes = {n.name: n for n in g.nodes}
        self.consts = dict(g.consts)
        self.channels = {}
        for name in self.scheme.bias:
            b = nodes[name].inputs[2]
            self.consts[b] = g.consts[b].copy()
        for name, ratio in self.scheme.weights:
            w = nodes[name].inputs[1]
            self.consts[w] = g.consts[w].copy()
            self.channels[name] = select_channels(nodes[name], g.consts[w], ratio)
        self._first = self.scheme.first(g)

    def _apply(self, node: Node, g_w: np.ndarray, g_b: np.ndarray) -> None:
        """Scale and apply one layer's update as soon as its gradient exists (no gradient buffer kept)."""
        q = layer_quant(self.graph, node)
        gi_w, gi_b = integer_gradients(g_w, g_b, q.s_w, q.s_x)
        if self.qas:
            gi_w, gi_b = qas_scale(gi_w, gi_b, q.s_w, q.s_x)
        if node.name in self.scheme.bias:
            b = self.consts[node.inputs[2]]
            b[...] = np.clip(np.rint(b - self.lr * gi_b), INT32_MIN, INT32_MAX).astype(np.int32)
        if node.name in self.channels:
            w = self.consts[node.inputs[1]]
            idx = channel_index(node, w, self.channels[node.name])
            part = w[idx].astype(np.float64) - self.lr * gi_w[idx]
            w[idx] = np.clip(np.rint(part), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)

    def _forward(self, x: np.ndarray, first: str | None = None) -> tuple[np.ndarray, Tape]:
        return forward_int8(self.graph, x, self.consts, first)

    def _weights(self) -> dict:
        return {"consts": self.consts}


@dataclass
class FloatTrainer(_Backprop):
    """fp32-style SGD (float64 here) on the float model the integer graph stands for, same scheme: the
    reference point QAS aims at."""

    graph: Graph
    scheme: UpdateScheme
    lr: float
    params: RealParams = field(init=False)
    masks: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        check_scheme(self.graph, self.scheme)
        g = self.graph
        nodes = {n.name: n for n in trainable_nodes(g)}
        self.params = {name: real_params(g, n) for name, n in nodes.items()}
        self.masks = {}
        weights = dict(self.scheme.weights)
        for name, n in nodes.items():
            w = self.params[name][0]
            mask = np.zeros(w.shape, dtype=bool)
            if name in weights:
                mask[channel_index(n, w, select_channels(n, g.consts[n.inputs[1]], weights[name]))] = True
            self.masks[name] = mask
        self._first = self.scheme.first(g)

    def _apply(self, node: Node, g_w: np.ndarray, g_b: np.ndarray) -> None:
        w, b = self.params[node.name]
        w = w - self.lr * g_w * self.masks[node.name]
        if node.name in self.scheme.bias:
            b = b - self.lr * g_b
        self.params[node.name] = (w, b)

    def _forward(self, x: np.ndarray, first: str | None = None) -> tuple[np.ndarray, Tape]:
        return forward_real(self.graph, x, self.params, first)

    def _weights(self) -> dict:
        return {"params": self.params}
