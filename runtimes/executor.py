"""Running an integer graph: on the reference kernels node by node, or as one compiled program.

Floats appear only at the boundary: ``quantize_inputs`` before the first op and ``dequantize_outputs``
after the last one. Everything in between is integer arithmetic.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import numpy as np

from edgeq.errors import BackendError, InputError
from edgeq.ir import Graph, Tensor
from .planner import MemoryPlan, plan_memory
from .program import compile_program, pack_consts
from .registry import OPS

BACKENDS = ("auto", "reference", "numba", "c")
_COMPILED = {"numba": "edgeq.runtimes.numba_backend", "c": "edgeq.runtimes.c_backend"}


def quantize(x: np.ndarray, t: Tensor) -> np.ndarray:
    """Float -> int8 with the tensor's (per-tensor) scale and zero point, rounding half to even.

    Computed in float32 (the C and Numba boundaries repeat it exactly); NaN maps to -128.
    """
    q = np.rint(np.asarray(x, dtype=np.float32) / np.float32(t.scale[0])) + np.float32(t.zero_point[0])
    return np.clip(np.nan_to_num(q, nan=-128.0), -128, 127).astype(np.int8)


def dequantize(q: np.ndarray, t: Tensor) -> np.ndarray:
    """int8 -> float32 with the tensor's scale and zero point."""
    return ((q.astype(np.int32) - t.zero_point[0]) * np.float32(t.scale[0])).astype(np.float32)


def load_backend(name: str) -> Any:
    """Import a compiled backend module (``numba``, ``c``, or ``auto``: c if it can be built, else numba)."""
    if name == "auto":
        try:
            return load_backend("c")
        except BackendError:
            return load_backend("numba")
    if name not in _COMPILED:
        raise BackendError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")
    module = importlib.import_module(_COMPILED[name])
    module.ensure_available()
    return module


class Executor:
    """Runs one integer graph on one backend; create once, call :meth:`run_quantized` many times."""

    def __init__(self, graph: Graph, backend: str = "auto", plan: MemoryPlan | None = None,
                 pool: np.ndarray | None = None, const_offsets: dict[str, int] | None = None):
        self.graph = graph
        self.backend_name = backend
        self.plan = plan or plan_memory(graph)
        self._qp: tuple[np.ndarray, np.ndarray] | None = None  # (scale, zero point) of inputs, outputs
        self._threads = 1
        self.node_threads: np.ndarray | None = None  # per node, once tuned (C backend, threads > 1)
        self._views: list | None = None
        if backend == "reference":
            self._backend = None
            return
        self._backend = load_backend(backend)
        self.backend_name = self._backend.__name__.rsplit(".", 1)[-1].removesuffix("_backend")
        if pool is None or const_offsets is None:
            pool, const_offsets = pack_consts(graph.consts)
        self._pool = pool
        self.program = compile_program(graph, self.plan, const_offsets)
        self._arena = np.zeros(max(self.program.arena_bytes, 1), dtype=np.int8)
        for a in (self.program.words, self.program.inputs, self.program.outputs):
            a.flags.writeable = False  # validated once by the backend; read-only keeps that true
        self._out_total = int(self.program.outputs[:, 1].sum())

    def set_threads(self, n: int) -> None:
        """Number of threads the compiled kernels may use. On the C backend, with n > 1, the next run
        first times every node at 1 and at n threads and gives each the faster (``node_threads``): many
        nodes of a small model lose more to waking a thread than they gain from it."""
        if self._backend is not None:
            self._backend.set_threads(n)
        self._threads = max(1, int(n))
        self.node_threads = None

    def _schedule(self, first_sample: Callable[[], np.ndarray]) -> dict[str, np.ndarray]:
        """Keyword arguments giving the backend the per-node thread counts, tuned on first use on the
        int8 input row ``first_sample()`` returns."""
        tune = getattr(self._backend, "tune_threads", None)
        if tune is None or self._threads <= 1:
            return {}
        if self.node_threads is None:
            prog = self.program
            self.node_threads = tune(prog.words, self._arena, self._pool, first_sample(), prog.inputs, prog.outputs,
                                     self._out_total, len(self.graph.nodes), self._threads)
            self.node_threads.flags.writeable = False
        return {"node_threads": self.node_threads}

    def check_inputs(self, inputs: dict[str, np.ndarray], dtype: str | None = None) -> int:
        """Validate names, shapes (and dtype if given) of ``inputs``; return the batch size."""
        g = self.graph
        if len(inputs) != len(g.inputs) or any(n not in inputs for n in g.inputs):
            missing = [n for n in g.inputs if n not in inputs]
            extra = [n for n in inputs if n not in g.inputs]
            what = f"missing input '{missing[0]}'" if missing else f"unknown input '{extra[0]}'"
            raise InputError(f"{what}; the model's inputs are {', '.join(g.inputs)}")
        batch = None
        for name in g.inputs:
            x, want = inputs[name], g.tensors[name].shape
            if dtype is not None and np.asarray(x).dtype != np.dtype(dtype):
                raise InputError(f"input '{name}' has dtype {np.asarray(x).dtype}, expected {dtype}")
            shape = np.shape(x)
            if shape[1:] != want[1:] or len(shape) != len(want) or not (g.dynamic_batch or shape[0] == want[0]):
                exp = ("N" if g.dynamic_batch else str(want[0])) + "".join(f"x{d}" for d in want[1:])
                raise InputError(f"input '{name}' has shape {'x'.join(map(str, shape)) or 'scalar'}, "
                                 f"expected {exp}")
            if shape and shape[0] < 1:
                raise InputError(f"input '{name}' has an empty batch (shape {shape})")
            if batch is not None and shape[0] != batch:
                raise InputError(f"inputs disagree on the batch size: {batch} and {shape[0]}")
            batch = shape[0]
        return batch

    def run_quantized(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Integer inputs -> integer outputs in the tensors' own types (int8; int16 in single-op test
        graphs): the bit-exact contract between backends. Compiled backends move raw bytes."""
        g = self.graph
        n = self.check_inputs(inputs, g.tensors[g.inputs[0]].dtype if len({g.tensors[k].dtype for k in g.inputs}) == 1
                              else None)
        if self._backend is None:
            return self._run_reference(inputs)
        prog = self.program
        in_buf = np.ascontiguousarray(np.concatenate(
            [np.ascontiguousarray(inputs[k], dtype=g.tensors[k].dtype).reshape(n, -1).view(np.int8) for k in g.inputs],
            axis=1))
        out_buf = np.empty((n, self._out_total), dtype=np.int8)
        self._backend.execute(prog.words, self._arena, self._pool, in_buf, prog.inputs, out_buf, prog.outputs,
                              **self._schedule(lambda: in_buf))
        return {k: v.view(g.tensors[k].dtype).reshape((n,) + g.tensors[k].shape[1:])
                for k, v in self._split(out_buf, n, raw=True).items()}

    def profile_nodes(self, inputs: dict[str, np.ndarray], runs: int = 20) -> np.ndarray:
        """Each node's median wall time in seconds over ``runs`` runs on the float ``inputs``, in graph
        order. C backend only: its program loop times every node (``omp_get_wtime``)."""
        if self._backend is None or not hasattr(self._backend, "tune_threads"):
            raise BackendError(f"per-node times need the C backend, not {self.backend_name}")
        g, prog = self.graph, self.program
        n = self.check_inputs(inputs)
        in_buf = np.ascontiguousarray(np.concatenate(
            [quantize(np.asarray(inputs[k], dtype=np.float32), g.tensors[k]).reshape(n, -1).view(np.int8)
             for k in g.inputs], axis=1))
        out_buf = np.empty((n, self._out_total), dtype=np.int8)
        seconds = np.zeros((max(1, int(runs)), len(g.nodes)))
        schedule = self._schedule(lambda: in_buf)
        for row in seconds:
            self._backend.execute(prog.words, self._arena, self._pool, in_buf, prog.inputs, out_buf, prog.outputs,
                                  node_seconds=row, **schedule)
        return np.median(seconds, axis=0)

    def _run_reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.run_reference_all(inputs).items() if k in self.graph.outputs}

    def run_reference_all(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Reference run returning every intermediate tensor (used for per-layer error reports)."""
        values: dict[str, np.ndarray] = dict(self.graph.consts)
        values.update(inputs)
        for node in self.graph.nodes:
            args = [values[i] for i in node.inputs if i]
            values[node.outputs[0]] = OPS[node.op].reference(node, args)
        return values

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """float inputs -> float outputs: quantize, run integer-only, dequantize."""
        n = self.check_inputs(inputs)
        execute_float = getattr(self._backend, "execute_float", None)
        if execute_float is None:
            q = {k: quantize(v, self.graph.tensors[k]) for k, v in inputs.items()}
            return {k: dequantize(v, self.graph.tensors[k]) for k, v in self.run_quantized(q).items()}
        # The compiled backends quantize into and dequantize out of the arena themselves (one call).
        g, prog = self.graph, self.program
        if len(g.inputs) == 1:
            x = np.ascontiguousarray(inputs[g.inputs[0]], dtype=np.float32).reshape(n, -1)
        else:
            x = np.concatenate([np.asarray(inputs[k], dtype=np.float32).reshape(n, -1) for k in g.inputs], axis=1)
        y = np.empty((n, self._out_total), dtype=np.float32)
        if self._qp is None:
            self._qp = tuple(np.array([[g.tensors[k].scale[0], g.tensors[k].zero_point[0]] for k in names],
                                      dtype=np.float32) for names in (g.inputs, g.outputs))
            for a in self._qp:
                a.flags.writeable = False
        first = lambda: np.concatenate([quantize(inputs[k][:1], g.tensors[k]).reshape(1, -1) for k in g.inputs], axis=1)
        execute_float(prog.words, self._arena, self._pool, x, prog.inputs, self._qp[0], y, prog.outputs, self._qp[1],
                      **self._schedule(first))
        return self._split(y, n)

    def _split(self, buf: np.ndarray, n: int, raw: bool = False) -> dict[str, np.ndarray]:
        """Per-output views of a [n, total] buffer (``raw``: byte columns, left unshaped)."""
        if self._views is None:  # (name, first column, last column, per-sample shape) of each output
            ends = np.cumsum(self.program.outputs[:, 1])
            self._views = [(k, int(e - size), int(e), self.graph.tensors[k].shape[1:])
                           for k, e, size in zip(self.graph.outputs, ends, self.program.outputs[:, 1])]
        if raw:
            return {k: np.ascontiguousarray(buf[:, a:b]) for k, a, b, _ in self._views}
        return {k: buf[:, a:b].reshape((n,) + shape) for k, a, b, shape in self._views}
