"""Per-node thread counts on the C backend (Executor.set_threads -> c_backend.tune_threads): measured on
the first run, never changing a result."""

from __future__ import annotations

import numpy as np
import pytest

import edgeq
from edgeq.errors import BackendError
from edgeq.runtimes import c_backend
from edgeq.runtimes.executor import quantize
from models import zoo_model


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("zoo") / "zoo.edgeq"
    calib = rng.standard_normal((16, 3, 23, 21)).astype(np.float32)
    edgeq.convert(zoo_model(seed=5).SerializeToString(), device="host", output=path, calib=calib, progress=False)
    return edgeq.load(path), rng.standard_normal((6, 3, 23, 21)).astype(np.float32)


def test_tuned_threads_give_the_same_bytes(zoo):
    b, x = zoo
    ex = b.executor("c")
    name = b.inputs[0]
    q = {name: quantize(x, b.graph.tensors[name])}
    ex.set_threads(1)
    want_q, want_f = ex.run_quantized(q), ex.run({name: x})
    assert ex.node_threads is None
    for run in (lambda: ex.run_quantized(q), lambda: ex.run({name: x})):
        ex.set_threads(2)
        got = run()
        assert ex.node_threads is not None and ex.node_threads.shape == (len(b.graph.nodes),)
        assert set(np.unique(ex.node_threads).tolist()) <= {1, 2}
        for k, v in (want_q if got[b.outputs[0]].dtype == np.int8 else want_f).items():
            np.testing.assert_array_equal(got[k], v)
    ex.set_threads(2)
    assert ex.node_threads is None  # a new thread count is tuned again


def test_node_seconds_are_measured_per_node(zoo):
    b, x = zoo
    ex = b.executor("c")
    prog, n = ex.program, len(b.graph.nodes)
    name = b.inputs[0]
    in_buf = quantize(x, b.graph.tensors[name]).reshape(len(x), -1)
    out = np.empty((len(x), int(prog.outputs[:, 1].sum())), np.int8)
    seconds = np.zeros(n)
    c_backend.execute(prog.words, ex._arena, ex._pool, in_buf, prog.inputs, out, prog.outputs,
                      np.ones(n, np.int8), seconds)
    if c_backend._default.has_openmp():
        assert np.all(seconds >= 0) and seconds.sum() > 0
    with pytest.raises(BackendError, match="differ in length"):
        c_backend.execute(prog.words, ex._arena, ex._pool, in_buf, prog.inputs, out, prog.outputs,
                          np.ones(n, np.int8), np.zeros(n - 1))
    with pytest.raises(BackendError, match="node_threads"):
        c_backend.execute(prog.words, ex._arena, ex._pool, in_buf, prog.inputs, out, prog.outputs,
                          np.ones(n, np.int32))
