"""The small typed graph that every stage shares: importers produce it, passes rewrite it, the quantizer
turns float ops into integer ops, the bundle stores it and the runtime executes it.

Float graphs use ONNX op names (``Conv``, ``Gemm``...); quantized graphs use the ``Q*`` ops of
``edgeq.runtimes.registry``. Shapes always carry the batch dimension first; a graph whose batch is
dynamic is stored at batch 1 and ``dynamic_batch`` says the runtime may run any batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Tensor:
    """A value in the graph: shape, element type and (for quantized tensors) its quantization."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32", "int8", "int32"
    scale: list[float] | None = None  # one per tensor, or one per channel along ``axis``
    zero_point: list[int] | None = None
    axis: int | None = None

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of one instance of the tensor."""
        return self.size * np.dtype(self.dtype).itemsize

    @property
    def sample_nbytes(self) -> int:
        """Bytes of one batch sample of an activation (the batch dimension comes first)."""
        return self.nbytes // max(self.shape[0], 1) if self.shape else self.nbytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form used by the bundle manifest."""
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.scale is not None:
            d.update(scale=self.scale, zero_point=self.zero_point, axis=self.axis)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Tensor":
        """Inverse of :meth:`to_dict`."""
        return Tensor(d["name"], tuple(int(s) for s in d["shape"]), d["dtype"], d.get("scale"),
                      d.get("zero_point"), d.get("axis"))


@dataclass
class Node:
    """One operation: op type, input/output tensor names and JSON-able attributes."""

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    # Provenance: the source model's op types (ONNX or TFLite names) this node was made from, kept through
    # every rewrite and fusion. A delegate (NNAPI, QNN) places source ops, not edgeq's integer ops, so the
    # NPU simulator needs them. Empty for nodes the importers did not stamp (and bundles older than it).
    source_ops: list[str] = field(default_factory=list)

    def absorb(self, *others: "Node") -> "Node":
        """Add the source ops of ``others`` (nodes fused into or replaced by this one); returns self."""
        self.source_ops = merged_sources(self, *others)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form used by the bundle manifest (``source_ops`` only when known)."""
        d = {"op": self.op, "name": self.name, "inputs": self.inputs, "outputs": self.outputs, "attrs": self.attrs}
        if self.source_ops:
            d["source_ops"] = list(self.source_ops)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Node":
        """Inverse of :meth:`to_dict`."""
        return Node(d["op"], d["name"], list(d["inputs"]), list(d["outputs"]), dict(d.get("attrs", {})),
                    list(d.get("source_ops", [])))


def merged_sources(*nodes: Node) -> list[str]:
    """The source ops of ``nodes`` in order of first appearance, each once."""
    return list(dict.fromkeys(s for n in nodes for s in n.source_ops))


@dataclass
class Graph:
    """Nodes in execution order, the tensors they connect, and constant tensor data."""

    nodes: list[Node]
    tensors: dict[str, Tensor]
    inputs: list[str]
    outputs: list[str]
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    dynamic_batch: bool = False
    # The source model's key/value metadata (ONNX metadata_props), e.g. a recognizer's character list:
    # it travels into the bundle so the device needs no copy of the source model.
    metadata: dict[str, str] = field(default_factory=dict)

    def producers(self) -> dict[str, Node]:
        """Map tensor name -> the node that writes it."""
        return {o: n for n in self.nodes for o in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        """Map tensor name -> nodes that read it (graph outputs are not nodes)."""
        users: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    users.setdefault(i, []).append(n)
        return users

    def add_const(self, name: str, value: np.ndarray, **quant: Any) -> str:
        """Register a constant tensor and return its name."""
        value = np.asarray(value)
        if not value.flags.c_contiguous:  # (np.ascontiguousarray would turn scalars into 1-d arrays)
            value = value.copy(order="C")
        self.consts[name] = value
        self.tensors[name] = Tensor(name, tuple(value.shape), value.dtype.name, **quant)
        return name

    def unique_name(self, base: str) -> str:
        """A tensor name not used yet in this graph."""
        name, i = base, 0
        while name in self.tensors:
            i += 1
            name = f"{base}_{i}"
        return name

    def prune(self) -> None:
        """Drop nodes whose outputs nobody reads and tensors nobody references."""
        live = set(self.outputs)
        kept: list[Node] = []
        for node in reversed(self.nodes):
            if any(o in live for o in node.outputs):
                kept.append(node)
                live.update(i for i in node.inputs if i)
        self.nodes = kept[::-1]
        live.update(self.inputs)
        self.tensors = {k: v for k, v in self.tensors.items() if k in live}
        self.consts = {k: v for k, v in self.consts.items() if k in live}
