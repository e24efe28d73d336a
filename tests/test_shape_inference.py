"""Shape inference by shape rules (float_ops.run_shapes: convolutions, pools, matrix products and Resize
are not computed) gives exactly the shapes and dtypes of a full float run, on the PP-OCR models at small
sizes and on the zoo model, before and after the float passes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeq.converters.float_ops import run_float, run_shapes
from edgeq.converters.onnx_import import import_onnx
from edgeq.converters.passes import run_passes
from models import zoo_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "ocr"))
import synth  # noqa: E402

SIZES = {"det": (1, 3, 96, 160), "rec": (1, 3, 48, 96), "cls": (1, 3, 48, 192)}


def _model(name: str) -> tuple[bytes, str, tuple[int, ...]]:
    if name == "zoo":
        m = zoo_model()
        shape = (2,) + tuple(d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim[1:])
    else:
        m = onnx.load(str(synth.model_paths()[name]))
        shape = SIZES[name]
    return m.SerializeToString(), m.graph.input[0].name, shape


def _full_run(g, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = dict(g.consts)
    values.update({n: rng.standard_normal(g.tensors[n].shape).astype(np.float32) for n in g.inputs})
    return run_float(g.nodes, values)


@pytest.mark.parametrize("name", ["det", "rec", "cls", "zoo"])
def test_shape_run_matches_float_run(name):
    data, in_name, shape = _model(name)
    g, _ = import_onnx(data, input_shapes={in_name: shape})
    # The imported graph (as the importer's own shape queries see it)
    full = _full_run(g)
    values = dict(g.consts)
    values.update({n: np.zeros(g.tensors[n].shape, np.float32) for n in g.inputs})
    shapes = run_shapes(g.nodes, values)
    produced = [n.outputs[0] for n in g.nodes]
    assert [(shapes[t].shape, shapes[t].dtype) for t in produced] == [(full[t].shape, full[t].dtype) for t in produced]
    # ... and the recorded shapes after the passes (infer_shapes runs by shape rules)
    run_passes(g)
    full = _full_run(g, seed=1)
    heavy = {"Conv", "ConvTranspose", "FullyConnected", "MatMul", "MaxPool", "AveragePool", "Resize"}
    assert heavy & {n.op for n in g.nodes}, "the model must exercise the shape rules"
    for node in g.nodes:
        t = node.outputs[0]
        assert (g.tensors[t].shape, g.tensors[t].dtype) == (full[t].shape, full[t].dtype.name), (node.op, t)
