"""Patch-based inference: patched graphs give layer-by-layer's bytes, the search and its errors."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

import edgeq
from edgeq.cli import main
from edgeq.export_c import DEFAULT_STACK_BYTES
from edgeq.converters.patches import PatchError, patch_graph, plan_patches, split_points
from edgeq.converters.pipeline import convert
from edgeq.runtimes.executor import Executor
from edgeq.runtimes.planner import plan_memory
from edgeq.runtimes.registry import graph_macs
from models import conv_chain_model, zoo_model


def _quantized(model, tmp_path, shape, seed=0):
    rng = np.random.default_rng(seed)
    calib = rng.standard_normal((8, *shape)).astype(np.float32)
    path = convert(model.SerializeToString(), device="host", output=tmp_path / "m.edgeq", calib=calib,
                   progress=False, patch="off").path
    return edgeq.load(path).graph


def _same(graph, patched, x, backend="reference"):
    want = Executor(graph, "reference").run_quantized({graph.inputs[0]: x})
    got = Executor(patched, backend).run_quantized({graph.inputs[0]: x})
    return all(np.array_equal(got[k], want[k]) for k in want)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_patched_chains_are_bit_exact(seed, tmp_path):
    model = conv_chain_model(seed)
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    g = _quantized(model, tmp_path, shape, seed)
    x = np.random.default_rng(seed).integers(-128, 128, size=(2, *shape)).astype(np.int8)
    points = split_points(g)
    assert points, "every chain starts with patchable ops"
    for split in points:
        out = g.tensors[g.nodes[split - 1].outputs[0]].shape
        for n in sorted({2, min(out[2], out[3], 4)}):
            if n <= min(out[2], out[3]):
                try:
                    pg = patch_graph(g, split, n)
                except PatchError:  # a window that reads only padding
                    continue
                assert _same(g, pg, x), (split, n)


def test_zoo_stage_with_dilation_and_padding(tmp_path, backend):
    g = _quantized(zoo_model(), tmp_path, (3, 23, 21))
    x = np.random.default_rng(1).integers(-128, 128, size=(3, 3, 23, 21)).astype(np.int8)
    assert split_points(g)
    for split in split_points(g):
        pg = patch_graph(g, split, 3)
        assert graph_macs(pg) >= graph_macs(g)
        assert _same(g, pg, x, backend)


def _mobilenet(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from convnets import mobilenet_v2_like
    return _quantized(mobilenet_v2_like(96), tmp_path, (3, 96, 96))


def test_mobilenet_patch_plan_cuts_peak_memory(tmp_path, backend):
    g = _mobilenet(tmp_path)
    base = plan_memory(g, inplace_depthwise=True).arena_bytes
    best = plan_patches(g, 3, inplace_depthwise=True)
    assert best.n == 3 and best.memory.arena_bytes < 0.5 * base
    x = np.random.default_rng(2).integers(-128, 128, size=(1, 3, 96, 96)).astype(np.int8)
    assert _same(g, best.graph, x, backend)


def test_auto_prefers_no_patches_when_everything_fits(tmp_path):
    g = _mobilenet(tmp_path)
    base = plan_patches(g, "off", inplace_depthwise=True)
    assert plan_patches(g, "auto", base.memory.arena_bytes, inplace_depthwise=True).n == 0
    tight = plan_patches(g, "auto", base.memory.arena_bytes // 2, inplace_depthwise=True)
    assert tight.n >= 2 and tight.memory.arena_bytes <= base.memory.arena_bytes // 2
    # Among plans that fit, auto pays the fewest extra MACs.
    fitting = [c for c in tight.candidates if c["peak_activation_bytes"] <= base.memory.arena_bytes // 2]
    assert tight.macs == min(c["macs"] for c in fitting)


def test_cli_patch_and_does_not_fit(tmp_path, capsys):
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((64, 3, 3, 3), np.float32) * 0.01, "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 96, 96])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 1, 1])], [w])
    model = tmp_path / "big.onnx"
    model.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    calib = tmp_path / "c.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((4, 3, 96, 96)).astype(np.float32))
    out = tmp_path / "big.edgeq"
    assert main(["convert", str(model), "--device", "nrf52840", "--calib", str(calib), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert not out.exists() and len(err.splitlines()) == 1
    assert "does not fit device 'nrf52840'" in err and "617472 bytes" in err and f"{262144 - DEFAULT_STACK_BYTES} bytes of RAM" in err, err
    assert main(["convert", "--device", "stm32f7", "--patch", "2", "-o", str(tmp_path / "d.edgeq"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["patches"]["n_patch"] == 2
    assert report["patches"]["peak_activation_bytes"] < report["patches"]["layer_by_layer_peak_bytes"]
    assert main(["convert", "--device", "stm32f7", "--patch", "one", "-o", str(tmp_path / "e.edgeq")]) == 2
    assert "--patch" in capsys.readouterr().err


def test_inspect_reports_memory_and_plots(tmp_path, capsys):
    out = tmp_path / "d.edgeq"
    assert main(["convert", "--device", "stm32f7", "--patch", "2", "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    png = tmp_path / "memory.png"
    assert main(["inspect", str(out), "--json", "--plot", str(png)]) == 0
    s = json.loads(capsys.readouterr().out)
    m = s["memory"]
    g = edgeq.load(out).graph
    assert m["peak_activation_bytes"] == min(m["strategies"].values()) == edgeq.load(out).plan.arena_bytes
    assert m["weights_bytes"] == sum(v.nbytes for v in g.consts.values())
    assert m["flash_estimate_bytes"] > m["weights_bytes"] + m["program_bytes"]
    assert m["scratch_bytes"] > 0 and m["macs"] == graph_macs(g)
    assert s["patches"]["n_patch"] == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
