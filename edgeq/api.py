"""The runtime's Python API: ``edgeq.load(path).run(inputs)``. Imports only numpy (+ numba/cffi backends)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .bundle import LoadedBundle, graph_bundle, read_container
from .errors import BundleError, InputError
from .runtimes.executor import Executor
from .runtimes.planner import MemoryPlan
from .runtimes.program import compile_program
from .runtimes.registry import graph_macs


# Flash taken by the portable kernels in an MCU build (arm-none-eabi-gcc 12 -O2, text of
# edgeq_kernels.o: cortex-m4 33.7 KB, m7 33.3 KB, m55 34.1 KB, m0plus 43.5 KB); `edgeq sim` reports the
# exact ELF sizes, this only feeds the estimate `inspect` shows before anything is built.
KERNEL_CODE_ESTIMATE_BYTES = 40 * 1024


class Bundle:
    """A loaded ``.edgeq`` bundle, ready to run on any backend (``reference``, ``numba``, ``c``)."""

    def __init__(self, loaded: LoadedBundle, backend: str = "auto"):
        self._loaded = loaded
        self.manifest: dict[str, Any] = loaded.manifest
        self.graph = loaded.graph
        self.backend = backend
        self._executors: dict[str, Executor] = {}

    @property
    def plan(self) -> MemoryPlan:
        """The memory plan stored in the bundle (arena offsets of every activation)."""
        return self._loaded.plan

    @property
    def inputs(self) -> list[str]:
        """Input tensor names."""
        return list(self.graph.inputs)

    @property
    def outputs(self) -> list[str]:
        """Output tensor names."""
        return list(self.graph.outputs)

    @property
    def metadata(self) -> dict[str, str]:
        """The source model's key/value metadata (e.g. ``character``, a recognizer's class list)."""
        source = self.manifest.get("source")
        meta = source.get("metadata", {}) if isinstance(source, dict) else None
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise BundleError(f"bad bundle '{self._loaded.path}': source metadata is not a map of strings")
        return dict(meta)

    def executor(self, backend: str | None = None) -> Executor:
        """The (cached) executor for ``backend`` (default: the bundle's backend)."""
        name = backend or self.backend
        if name not in self._executors:
            lb = self._loaded
            self._executors[name] = Executor(lb.graph, name, lb.plan, lb.pool, lb.const_offsets)
        return self._executors[name]

    def _as_dict(self, inputs: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if isinstance(inputs, dict):
            return inputs
        if len(self.graph.inputs) != 1:
            raise InputError(f"model has {len(self.graph.inputs)} inputs; pass a dict keyed by {', '.join(self.inputs)}")
        return {self.graph.inputs[0]: inputs}

    def run(self, inputs: np.ndarray | dict[str, np.ndarray], backend: str | None = None) -> dict[str, np.ndarray]:
        """Float inputs -> dequantized float outputs (integer-only in between)."""
        return self.executor(backend).run(self._as_dict(inputs))

    def run_quantized(self, inputs: np.ndarray | dict[str, np.ndarray], backend: str | None = None) -> dict[str, np.ndarray]:
        """int8 inputs -> int8 outputs, bit-identical on every backend."""
        return self.executor(backend).run_quantized(self._as_dict(inputs))

    def summary(self) -> dict[str, Any]:
        """What ``edgeq inspect --json`` prints: device, scheme, inputs/outputs, nodes and memory."""
        g, m = self.graph, self.manifest

        def tensor(name: str) -> dict[str, Any]:
            t = g.tensors[name].to_dict()
            if g.dynamic_batch:
                t["shape"][0] = "N"
            return t

        ops: dict[str, int] = {}
        for n in g.nodes:
            ops[n.op] = ops.get(n.op, 0) + 1
        weights = sum(int(v.nbytes) for v in g.consts.values())
        lb = self._loaded
        plan = lb.plan
        memory: dict[str, Any] = {
            "weights_bytes": weights, "peak_activation_bytes": plan.arena_bytes, "plan_strategy": plan.strategy,
            "strategies": plan.candidates, "macs": graph_macs(g), "file_bytes": Path(lb.path).stat().st_size}
        if m["device"].get("class") == "mcu":
            from .export_c import DEFAULT_STACK_BYTES, MCU_SCRATCH
            program_bytes = 8 * compile_program(g, plan, lb.const_offsets).words.size
            memory.update(scratch_bytes=sum(MCU_SCRATCH.values()), stack_reserve_bytes=DEFAULT_STACK_BYTES,
                          program_bytes=program_bytes,
                          flash_estimate_bytes=int(lb.pool.size) + program_bytes + KERNEL_CODE_ESTIMATE_BYTES,
                          ram_estimate_bytes=plan.arena_bytes + DEFAULT_STACK_BYTES)
        return {
            "path": str(self._loaded.path),
            "device": m["device"]["id"],
            "scheme": m["scheme"],
            "producer": m["producer"],
            "source": m["source"],
            "inputs": [tensor(n) for n in g.inputs],
            "outputs": [tensor(n) for n in g.outputs],
            "nodes": [{"name": n.name, "op": n.op, "inputs": n.inputs, "outputs": n.outputs} for n in g.nodes],
            "ops": ops,
            "tensors": len(g.tensors),
            "memory": memory,
            "patches": m.get("patches"),
        }


def load(path: str | Path, backend: str = "auto") -> Any:
    """Map and validate a bundle file; ``backend`` is the default for :meth:`Bundle.run`.

    Returns a :class:`Bundle` for op-graph bundles and an :class:`edgeq.llm.LLMBundle` for LLM bundles.
    """
    container = read_container(path)
    if container.kind == "llm":
        from .llm import LLMBundle
        return LLMBundle(container, backend)
    return Bundle(graph_bundle(container), backend)
