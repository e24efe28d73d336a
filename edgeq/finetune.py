"""On-device fine-tuning of an INT8 bundle under a device's memory budget (docs/training.md).

``finetune(bundle, x, y, device="stm32h7", method="qas")`` picks what to update so that training fits
the device's RAM beside the inference arena, trains with the integer forward pass, and returns the tuned
constants; :func:`write_tuned` writes them as a new bundle (atomically). Methods:

- ``qas``: sparse update (backprop through the last layers only) with quantization-aware scaling;
- ``sgd``: the same on the raw integer gradients (int8 SGD without QAS, for comparison);
- ``zo``: zeroth-order SPSA on the int8 weights of every conv/FC layer (forward passes only);
- ``elastic``: ElasticZO, SPSA for the first layers and the QAS sparse update for the last ones;
- ``fp32``: SGD of the float model with the ``qas`` scheme (a reference point; nothing to write).

Runtime side: imports only numpy (matplotlib for the optional plot).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .api import Bundle, load
from .bundle import write_bundle
from .devices import get_device
from .errors import DoesNotFitError, InputError
from .ir import Graph
from .progress import Progress
from .runtimes.executor import quantize
from .runtimes.planner import MemoryPlan
from .runtimes.sparse_update import FloatTrainer, SparseTrainer, UpdateScheme, trainable_nodes
from .runtimes.train_memory import TrainMemory, plan_scheme, scheme_memory, zo_memory
from .runtimes.zeroth_order import ElasticTrainer, ZOTrainer

METHODS = ("qas", "sgd", "zo", "elastic", "fp32")
DEFAULT_LR = {"qas": 0.1, "sgd": 0.1, "fp32": 0.1, "zo": 2.0}  # zo: in int8 weight units per unit of g z
ELASTIC_BP_LAYERS = 2  # ElasticZO: the last two conv/FC layers by backprop, the earlier ones by SPSA


class _Trainer(Protocol):
    def step(self, x: np.ndarray, labels: np.ndarray) -> float: ...
    def logits(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class FinetuneResult:
    """What one fine-tuning run did: the scheme, its memory, its curves and the tuned constants."""

    method: str
    device: str
    scheme: UpdateScheme | None       # the backprop part (None for zo)
    zo_layers: tuple[str, ...]        # the SPSA part (empty for qas/sgd/fp32)
    memory: TrainMemory
    budget_bytes: int
    losses: list[float] = field(default_factory=list)       # mean training loss per epoch
    accuracy: list[float] = field(default_factory=list)     # eval accuracy before training, then per epoch
    seconds: float = 0.0
    consts: dict[str, np.ndarray] = field(default_factory=dict)  # the tuned integer constants (not fp32)
    trainer: Any = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (what ``edgeq finetune --json`` prints)."""
        return {"method": self.method, "device": self.device,
                "scheme": self.scheme.to_dict() if self.scheme else None, "zo_layers": list(self.zo_layers),
                "memory": self.memory.to_dict(), "budget_bytes": self.budget_bytes, "losses": self.losses,
                "accuracy": self.accuracy, "seconds": self.seconds}


def training_budget(device: str, arena_bytes: int) -> int:
    """Bytes a device leaves for training: RAM minus the inference arena (and, on a microcontroller, the
    firmware's stack reserve). A profile without a RAM figure leaves an unlimited budget."""
    from .export_c import DEFAULT_STACK_BYTES
    profile = get_device(device)
    if not profile.ram_bytes:
        return 1 << 62
    reserve = DEFAULT_STACK_BYTES if profile.device_class == "mcu" else 0
    return profile.ram_bytes - arena_bytes - reserve


def check_data(bundle: Bundle, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate labelled training data against a classifier bundle; InputError naming the problem."""
    g = bundle.graph
    if len(g.inputs) != 1 or len(g.outputs) != 1 or len(g.tensors[g.outputs[0]].shape) != 2:
        raise InputError("fine-tuning needs a classifier bundle: one input and one [N, classes] output")
    want = g.tensors[g.inputs[0]].shape[1:]
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != len(want) + 1 or x.shape[1:] != want or x.shape[0] < 1:
        raise InputError(f"training inputs have shape {'x'.join(map(str, x.shape))}, expected Nx"
                         f"{'x'.join(map(str, want))}")
    if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
        raise InputError("training inputs must be finite floats")
    classes = g.tensors[g.outputs[0]].shape[1]
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"labels must be {x.shape[0]} integers (one per input), got {y.dtype} {list(y.shape)}")
    if y.min() < 0 or y.max() >= classes:
        raise InputError(f"labels must lie in [0, {classes - 1}], got [{y.min()}, {y.max()}]")
    return x.astype(np.float32), y.astype(np.int64)


def load_data(path: str | Path, bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """Read ``x`` (float inputs) and ``y`` (int labels) from an .npz file and validate them."""
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"cannot read training data '{path}': {e}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise InputError(f"training data '{path}' must be an .npz holding arrays 'x' (inputs) and 'y' (labels), "
                         f"not a single array")
    try:
        with z:
            if "x" not in z or "y" not in z:
                raise InputError(f"'{path}' must hold arrays 'x' (inputs) and 'y' (labels), has {sorted(z.files)}")
            x, y = z["x"], z["y"]
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"cannot read training data '{path}': {e}") from None
    return check_data(bundle, x, y)


def _accuracy(trainer: _Trainer, x: np.ndarray, y: np.ndarray) -> float:
    return float((trainer.logits(x).argmax(axis=1) == y).mean())


def finetune(bundle: str | Path | Bundle, x: np.ndarray, y: np.ndarray, device: str, method: str = "qas", *,
             epochs: int = 20, batch: int = 16, lr: float | None = None, eps: float = 1.0, seed: int = 0,
             budget_bytes: int | None = None, eval_data: tuple[np.ndarray, np.ndarray] | None = None,
             progress: bool = False) -> FinetuneResult:
    """Fine-tune an int8 classifier bundle on labelled data within a device's memory budget.

    Args:
        bundle: a ``.edgeq`` path or a loaded :class:`edgeq.api.Bundle`.
        x, y: float inputs [N, ...] (the model's input shape) and integer labels [N].
        device: device profile id; its RAM minus the inference arena is the budget.
        method: one of :data:`METHODS`.
        epochs, batch, lr, eps, seed: SGD/SPSA settings (``lr`` default per method, ``eps`` for SPSA).
        budget_bytes: overrides the device's budget (bytes beyond inference).
        eval_data: (x, y) to measure accuracy on after every epoch (default: the training data).
        progress: draw a progress bar on stderr.

    Returns:
        A :class:`FinetuneResult`; ``write_tuned`` turns it into a bundle.

    Raises:
        InputError on bad data or arguments, DoesNotFitError when not even one bias fits the budget.
    """
    b = bundle if isinstance(bundle, Bundle) else load(bundle)
    if not isinstance(b, Bundle):
        raise InputError("fine-tuning needs an op-graph bundle, not an LLM bundle")
    if method not in METHODS:
        raise InputError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    if epochs < 1 or batch < 1:
        raise InputError("epochs and batch must be at least 1")
    x, y = check_data(b, x, y)
    ex, ey = check_data(b, *eval_data) if eval_data is not None else (x, y)
    g, plan = b.graph, b.plan
    budget = training_budget(device, plan.arena_bytes * batch) if budget_bytes is None else budget_bytes
    lr = DEFAULT_LR.get(method, DEFAULT_LR["qas"]) if lr is None else lr
    trainer, scheme, zo_layers, memory = _make_trainer(g, plan, method, budget, batch, lr, eps, seed)
    qin = g.tensors[g.inputs[0]]
    xs, exs = (x, ex) if method == "fp32" else (quantize(x, qin), quantize(ex, qin))
    result = FinetuneResult(method, device, scheme, zo_layers, memory, budget, trainer=trainer)
    result.accuracy.append(_accuracy(trainer, exs, ey))
    rng = np.random.default_rng(seed)
    steps = -(-x.shape[0] // batch)
    start = time.perf_counter()
    with Progress(f"fine-tuning ({method})", epochs * steps, enabled=progress) as bar:
        for _ in range(epochs):
            order = rng.permutation(x.shape[0])
            losses = []
            for k in range(0, x.shape[0], batch):
                idx = order[k: k + batch]
                losses.append(trainer.step(xs[idx], y[idx]))
                bar.advance()
            result.losses.append(float(np.mean(losses)))
            result.accuracy.append(_accuracy(trainer, exs, ey))
    result.seconds = time.perf_counter() - start
    result.consts = {} if method == "fp32" else trainer.consts
    return result


def _make_trainer(g: Graph, plan: MemoryPlan, method: str, budget: int, batch: int, lr: float, eps: float,
                  seed: int) -> tuple[_Trainer, UpdateScheme | None, tuple[str, ...], TrainMemory]:
    layers = tuple(n.name for n in trainable_nodes(g))
    if method == "zo":
        memory = zo_memory(g, plan, layers, batch)
        _check_fits(memory, budget, "zeroth-order training")
        return ZOTrainer(g, layers, lr, eps, seed), None, layers, memory
    scheme, memory = plan_scheme(g, plan, budget, batch, ELASTIC_BP_LAYERS if method == "elastic" else None)
    if method == "fp32":  # the same scheme with float32 activations and weights
        return FloatTrainer(g, scheme, lr), scheme, (), scheme_memory(g, plan, scheme, batch, element_bytes=4)
    bp = SparseTrainer(g, scheme, lr, qas=method != "sgd")
    if method != "elastic":
        return bp, scheme, (), memory
    first = layers.index(scheme.first(g))
    zo_layers = layers[:first]
    if not zo_layers:
        return bp, scheme, (), memory
    zo_mem = zo_memory(g, plan, zo_layers, batch)
    memory = TrainMemory(memory.arena, memory.saved_activations, memory.gradients,
                         memory.parameters + zo_mem.parameters, memory.optimizer_state, zo_mem.seed)
    _check_fits(memory, budget, "ElasticZO training")
    return ElasticTrainer(bp, ZOTrainer(g, zo_layers, DEFAULT_LR["zo"], eps, seed, consts=bp.consts)), scheme, \
        zo_layers, memory


def _check_fits(memory: TrainMemory, budget: int, what: str) -> None:
    if memory.extra > budget:
        raise DoesNotFitError(f"{what} does not fit: it needs {memory.extra} bytes beyond inference, the budget is "
                              f"{budget} bytes")


def write_tuned(bundle: str | Path | Bundle, result: FinetuneResult, out: str | Path) -> int:
    """Write the bundle with the tuned constants to ``out`` atomically; returns its size in bytes."""
    if not result.consts:
        raise InputError(f"method '{result.method}' trains the float model: there is no int8 bundle to write")
    b = bundle if isinstance(bundle, Bundle) else load(bundle)
    g = b.graph
    tuned = Graph(g.nodes, g.tensors, g.inputs, g.outputs, {k: np.ascontiguousarray(v) for k, v in result.consts.items()},
                  g.dynamic_batch)
    meta = {k: v for k, v in b.manifest.items() if k not in ("graph", "plan", "blobs", "format_version")}
    meta["finetune"] = {k: v for k, v in result.to_dict().items() if k in ("method", "device", "scheme", "zo_layers")}
    try:
        return write_bundle(out, tuned, b.plan, meta)
    except OSError as e:
        raise InputError(f"cannot write '{out}': {e.strerror}") from None


def plot_training(results: list[FinetuneResult], path: str | Path) -> None:
    """PNG: accuracy per epoch of each result and the bytes each needs beyond inference."""
    from .plots import pyplot, save_png
    plt = pyplot()
    fig, (ax_loss, ax_acc, ax_mem) = plt.subplots(1, 3, figsize=(14, 4.2), dpi=110)
    for r in results:
        if r.losses:
            ax_loss.plot(range(1, len(r.losses) + 1), r.losses, label=r.method)
        ax_acc.plot(range(len(r.accuracy)), [100 * a for a in r.accuracy], label=r.method)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy (epoch 0: before)")
    ax_mem.bar([r.method for r in results], [r.memory.extra for r in results], color="#4c78a8")
    ax_mem.set(ylabel="bytes beyond inference", title="training memory")
    for ax in (ax_loss, ax_acc):
        ax.legend(fontsize=8)
    save_png(fig, path)


__all__ = ["METHODS", "FinetuneResult", "check_data", "finetune", "load_data", "plot_training", "training_budget",
           "write_tuned"]
