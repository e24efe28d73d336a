"""Zeroth-order fine-tuning: SPSA with the seed trick, and ElasticZO's split (REFERENCE.md section 4).

One SPSA step needs two forward passes and one seed: seed s -> z ~ N(0, I); L+ = L(theta + eps z),
L- = L(theta - eps z); g = (L+ - L-) / (2 eps); regenerate z from s; theta -= lr g z. Nothing of the size
of theta besides theta itself is stored, so training memory is inference + the parameters + a seed.

On an int8 graph theta are the int8 weights in their own units (one unit = s_W): a perturbation is
rint(eps z) and an update rint(lr g z), both clamped to [-127, 127]. The perturbed weights are formed
layer by layer while the forward pass reads them (a device adds the regenerated perturbation on the fly),
so the stored weights are never perturbed and need no restoring.

ElasticZO: the first layers by SPSA, the last ones by backprop (the sparse update with QAS), which needs
only the activations of those last layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgeq.errors import InputError
from edgeq.ir import Graph
from .backprop import cross_entropy, forward_int8
from .sparse_update import WEIGHT_MAX, SparseTrainer, trainable_nodes

Params = dict[str, np.ndarray]


def perturbation(seed: int, params: Params) -> dict[str, np.ndarray]:
    """z ~ N(0, I) for every parameter array, regenerated identically from ``seed`` (names in sorted order)."""
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(params[k].shape) for k in sorted(params)}


def _moved(params: Params, z: dict[str, np.ndarray], step: float, integer: bool) -> Params:
    """params + step z (for int8 weights: rounded and clamped)."""
    if not integer:
        return {k: params[k] + step * z[k] for k in params}
    return {k: np.clip(params[k].astype(np.float64) + np.rint(step * z[k]), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
            for k in params}


def spsa_step(params: Params, loss: Callable[[Params], float], seed: int, eps: float, lr: float,
              integer: bool = False) -> tuple[float, float]:
    """One SPSA step on ``params`` in place; returns (g, (L+ + L-) / 2).

    ``integer``: the arrays are int8 weights, perturbed by rint(eps z) and updated by rint(lr g z).
    """
    z = perturbation(seed, params)
    l_plus = loss(_moved(params, z, eps, integer))
    l_minus = loss(_moved(params, z, -eps, integer))
    g = (l_plus - l_minus) / (2 * eps)
    del z  # only the seed survives the two forward passes; z is regenerated for the update
    z = perturbation(seed, params)
    for k, v in _moved(params, z, -lr * g, integer).items():
        params[k][...] = v
    return g, (l_plus + l_minus) / 2


@dataclass
class ZOTrainer:
    """SPSA on the int8 weights of ``layers``; ``consts`` (default: copies of the graph's) is shared with a
    backprop trainer in the ElasticZO split."""

    graph: Graph
    layers: tuple[str, ...]
    lr: float
    eps: float = 1.0
    seed: int = 0
    consts: dict[str, np.ndarray] | None = None
    _seeds: np.random.Generator = field(init=False)
    _keys: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        nodes = {n.name: n for n in trainable_nodes(self.graph)}
        missing = [n for n in self.layers if n not in nodes]
        if missing or not self.layers:
            raise InputError(f"zeroth-order layers must be conv/FC layers of the graph (got {missing or 'none'})")
        if self.consts is None:
            self.consts = dict(self.graph.consts)
        self._keys = {name: nodes[name].inputs[1] for name in self.layers}
        for key in self._keys.values():
            if self.consts[key] is self.graph.consts[key]:
                self.consts[key] = self.consts[key].copy()
        self._seeds = np.random.default_rng(self.seed)

    def step(self, x_q: np.ndarray, labels: np.ndarray, seed: int | None = None) -> float:
        """One SPSA step on a batch (``seed``: the step's seed, default the next of the trainer's stream);
        returns the mean of the two perturbed losses."""
        seed = int(self._seeds.integers(1 << 62)) if seed is None else seed
        weights = {name: self.consts[key] for name, key in self._keys.items()}

        def loss(w: Params) -> float:
            consts = dict(self.consts)
            consts.update({self._keys[name]: v for name, v in w.items()})
            return cross_entropy(forward_int8(self.graph, x_q, consts)[0], labels)[0]

        return spsa_step(weights, loss, seed, self.eps, self.lr, integer=True)[1]

    def logits(self, x_q: np.ndarray) -> np.ndarray:
        """Real logits of the current integer model."""
        return forward_int8(self.graph, x_q, self.consts)[0]


@dataclass
class ElasticTrainer:
    """ElasticZO: SPSA for the layers before the sparse update's earliest layer, backprop for the rest."""

    bp: SparseTrainer
    zo: ZOTrainer

    @property
    def consts(self) -> dict[str, np.ndarray]:
        """The integer constants both parts update."""
        return self.bp.consts

    def step(self, x_q: np.ndarray, labels: np.ndarray) -> float:
        """A backprop step of the last layers, then an SPSA step of the first ones; returns the BP loss."""
        loss = self.bp.step(x_q, labels)
        self.zo.step(x_q, labels)
        return loss

    def logits(self, x_q: np.ndarray) -> np.ndarray:
        """Real logits of the current integer model."""
        return self.bp.logits(x_q)
