"""The C backend's float boundary (``c_backend.execute_float``) against executor.quantize / dequantize.

A one-node program (QReshape: the bytes pass through unchanged) isolates the boundary: quantizing x
into the arena and dequantizing the same bytes back must equal NumPy's ``dequantize(quantize(x))``
element for element, on ordinary values, ties (x exactly (k + 0.5) * scale), huge values, infinities
and, in the C contract, NaN -> -128 (NumPy's own NaN cast to int8 is platform-dependent).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from edgeq.errors import BackendError
from edgeq.ir import Graph, Node, Tensor
from edgeq.runtimes import c_backend
from edgeq.runtimes.executor import dequantize, quantize
from edgeq.runtimes.planner import plan_memory
from edgeq.runtimes.program import compile_program, pack_consts

try:
    c_backend.ensure_available()
except BackendError as err:  # pragma: no cover - no compiler
    pytest.skip(str(err), allow_module_level=True)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _program(n: int, x_t: Tensor, y_t: Tensor):
    node = Node("QReshape", "r", ["x"], ["y"], {"shape": [1, n]})
    g = Graph([node], {"x": x_t, "y": y_t}, ["x"], ["y"], {}, dynamic_batch=True)
    plan = plan_memory(g)
    pool, offsets = pack_consts(g.consts)
    prog = compile_program(g, plan, offsets)
    return prog, np.zeros(max(prog.arena_bytes, 1), np.int8), pool


def _values(rng: np.random.Generator, n: int, scale: float, zp: int) -> np.ndarray:
    k = rng.integers(-300, 300, size=n)
    kinds = rng.integers(0, 6, size=n)
    x = np.where(kinds == 0, (k + 0.5) * np.float64(scale),                # ties, in float64 then rounded
         np.where(kinds == 1, k * np.float64(scale),                       # exact multiples
         np.where(kinds == 2, rng.standard_normal(n) * 1e30,               # huge
         np.where(kinds == 3, rng.choice([np.inf, -np.inf, 0.0, -0.0, 3e38, -3e38], size=n),
                  rng.standard_normal(n) * scale * 100))))
    x = x.astype(np.float32)
    ties = np.float32((k + 0.5).astype(np.float32) * np.float32(scale))  # ties exact in float32 arithmetic
    x = np.where(kinds == 5, ties, x).astype(np.float32)
    return x


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's overflow warnings on huge inputs
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), batch=st.integers(1, 3),
       scale_exp=st.floats(-12, 4), zp=st.integers(-128, 127), out_zp=st.integers(-128, 127),
       out_scale_exp=st.floats(-12, 4))
def test_execute_float_matches_numpy(seed, n, batch, scale_exp, zp, out_zp, out_scale_exp):
    rng = np.random.default_rng(seed)
    scale = float(np.float32(2.0 ** scale_exp * rng.uniform(0.5, 1.5)))
    out_scale = float(np.float32(2.0 ** out_scale_exp))
    x_t = Tensor("x", (1, n), "int8", [scale], [zp])
    y_t = Tensor("y", (1, n), "int8", [out_scale], [out_zp])
    prog, arena, pool = _program(n, x_t, y_t)
    x = _values(rng, batch * n, scale, zp).reshape(batch, n)
    nan = rng.random(x.shape) < 0.05
    x[nan] = np.nan
    in_qp = np.array([[scale, zp]], np.float32)
    out_qp = np.array([[out_scale, out_zp]], np.float32)
    y = np.empty((batch, n), np.float32)
    c_backend.execute_float(prog.words, arena, pool, x, prog.inputs, in_qp, y, prog.outputs, out_qp)
    q = quantize(np.where(nan, np.float32(0), x), x_t)
    q[nan] = -128
    want = dequantize(q, y_t)
    assert want.dtype == np.float32
    np.testing.assert_array_equal(y.view(np.int32), want.view(np.int32))


def test_execute_float_rejects_bad_qparams():
    x_t = Tensor("x", (1, 4), "int8", [0.5], [0])
    prog, arena, pool = _program(4, x_t, Tensor("y", (1, 4), "int8", [0.5], [0]))
    x = np.zeros((1, 4), np.float32)
    y = np.empty((1, 4), np.float32)
    with pytest.raises(BackendError):
        c_backend.execute_float(prog.words, arena, pool, x, prog.inputs, np.zeros((2, 2), np.float32), y,
                                prog.outputs, np.zeros((1, 2), np.float32))
    with pytest.raises(BackendError):
        c_backend.execute_float(prog.words, arena, pool, x.astype(np.float64), prog.inputs,
                                np.ones((1, 2), np.float32), y, prog.outputs, np.ones((1, 2), np.float32))
