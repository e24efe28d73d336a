"""The mobile-NPU simulator (edgeq/npu_sim.py): provenance through fusions, placement and partitions with
known answers, ORT's verdict rule, the latency model's arithmetic, the integer-only check, real bundles
(digits, PP-OCR cls) and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeq
from edgeq.bundle import read_bundle, write_bundle
from edgeq.errors import InputError
from edgeq.ir import Graph, Node, Tensor
from edgeq.npu_sim import check_integer_only, simulate_npu, verdict
from edgeq.sample import load_sample

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "ocr"))
import synth  # noqa: E402

PROFILE = resources.files("edgeq.device_profiles").joinpath("android-npu.toml").read_text()


def _model(chain: list[str], c: int = 4, hw: int = 8, seed: int = 0) -> bytes:
    """x -> the ops of ``chain`` in a row (Conv is 3x3 same-padded c->c, MaxPool 2x2 stride 1 padded)."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i, op in enumerate(chain):
        y = f"t{i}"
        if op == "Conv":
            inits += [numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.3).astype(np.float32), f"w{i}"),
                      numpy_helper.from_array((rng.standard_normal(c) * 0.1).astype(np.float32), f"b{i}")]
            nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [y], name=f"conv{i}", pads=[1, 1, 1, 1]))
        elif op == "MaxPool":
            nodes.append(helper.make_node("MaxPool", [x], [y], name=f"pool{i}", kernel_shape=[2, 2],
                                          pads=[0, 0, 1, 1]))
        else:
            nodes.append(helper.make_node(op, [x], [y], name=f"{op.lower()}{i}"))
        x = y
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, c, hw, hw])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _bundle(tmp_path: Path, chain: list[str], name: str = "m") -> Path:
    calib = np.random.default_rng(1).standard_normal((8, 4, 8, 8)).astype(np.float32)
    out = tmp_path / f"{name}.edgeq"
    edgeq.convert(_model(chain), device="android-npu", output=out, calib=calib, calib_method="minmax", progress=False)
    return out


def _profile(tmp_path: Path, text: str = PROFILE, name: str = "npu.toml") -> Path:
    path = tmp_path / name  # a profile's id is its file's stem
    path.write_text(text.replace('id = "android-npu"', f'id = "{path.stem}"'))
    return path


def test_provenance_survives_fusion(tmp_path):
    """Conv + HardSwish becomes one QConv with a fused table: both source ops are recorded, and the node
    falls back because HardSwish is not in NNAPI's list (the fusion does not hide it)."""
    path = _bundle(tmp_path, ["Conv", "HardSwish", "Conv", "Relu"])
    nodes = read_bundle(path).graph.nodes
    assert [(n.op, n.source_ops) for n in nodes] == [("QConv", ["Conv", "HardSwish"]), ("QConv", ["Conv", "Relu"])]
    manifest = read_bundle(path).manifest
    assert manifest["graph"]["nodes"][0]["source_ops"] == ["Conv", "HardSwish"]
    r = simulate_npu(path)
    assert [n.device for n in r.nodes] == ["cpu", "npu"]
    assert r.nodes[0].reason == "op: HardSwish not in the profile's NPU op list"


def test_bundle_without_provenance_still_loads(tmp_path):
    """Bundles written before source_ops load; the simulator falls back on each op's nominal ONNX op
    and cannot place a table whose activation is unknown."""
    path = _bundle(tmp_path, ["Conv", "Relu", "MaxPool", "Sigmoid", "Conv"])
    b = read_bundle(path)
    for n in b.graph.nodes:
        n.source_ops = []
    meta = {k: v for k, v in b.manifest.items() if k not in ("graph", "plan", "blobs")}
    old = tmp_path / "old.edgeq"
    write_bundle(old, b.graph, b.plan, meta)
    assert "source_ops" not in read_bundle(old).manifest["graph"]["nodes"][0]
    r = simulate_npu(old)
    assert r.provenance == "inferred from edgeq ops (bundle predates source_ops)"
    assert [(n.op, n.device) for n in r.nodes] == [("QConv", "npu"), ("QMaxPool", "npu"), ("QLut", "cpu"),
                                                   ("QConv", "npu")]
    assert "no recorded source ops" in r.nodes[2].reason


def test_partitions_and_verdict_follow_the_profile(tmp_path):
    one = simulate_npu(_bundle(tmp_path, ["Conv", "Relu", "Conv"], "a"))
    assert (len(one.partitions), one.npu_node_fraction, one.verdict) == (1, 1.0, "YES")
    path = _bundle(tmp_path, ["Conv", "Relu", "MaxPool", "HardSwish", "Conv"], "b")
    r = simulate_npu(path)
    assert [p.device for p in r.partitions] == ["npu", "cpu", "npu"]
    assert [p.nodes for p in r.partitions] == [[0, 1], [2], [3]]
    assert r.npu_node_fraction == 0.75 and r.verdict == "NO"  # 2 NPU partitions need more than 75%
    assert [(f["name"], f["reason"]) for f in r.to_dict()["fallback_nodes"]] == \
        [("hardswish3", "op: HardSwish not in the profile's NPU op list")]
    # The partition boundaries: what the first NPU partition hands back is what the CPU partition reads.
    assert r.partitions[0].outputs == r.partitions[1].inputs
    more = _profile(tmp_path, PROFILE.replace('"GlobalAveragePool",', '"GlobalAveragePool", "HardSwish",'))
    r2 = simulate_npu(path, more)
    assert (len(r2.partitions), r2.verdict) == (1, "YES")
    fewer = _profile(tmp_path, PROFILE.replace('"GlobalAveragePool",', '"GlobalAveragePool", "HardSwish",')
                     .replace('"Conv",', ''), "fewer.toml")
    r3 = simulate_npu(path, fewer)
    assert [p.device for p in r3.partitions] == ["cpu", "npu", "cpu"] and r3.verdict == "NO"  # 1 NPU partition, 50%


@pytest.mark.parametrize("parts,frac,want", [(1, 0.76, "YES"), (1, 0.75, "MAYBE"), (1, 0.51, "MAYBE"),
                                             (1, 0.5, "NO"), (2, 0.76, "MAYBE"), (2, 0.75, "NO"),
                                             (3, 0.99, "NO"), (0, 0.0, "NO")])
def test_verdict_rule(parts, frac, want):
    assert verdict(parts, frac) == want


def test_latency_arithmetic(tmp_path):
    """The estimate recomputed here from the formulas of docs/npu.md with distinctive constants."""
    lat = dict(npu_int8_macs_per_s=1e9, npu_int16_macs_factor=0.5, npu_bytes_per_s=2e6, cpu_int8_macs_per_s=1e8,
               cpu_bytes_per_s=3e6, handoff_s=1e-3, boundary_bytes_per_s=5e5)
    text = PROFILE.split("[npu.latency]")[0] + "[npu.latency]\n" + "".join(f"{k} = {v!r}\n" for k, v in lat.items())
    dev = _profile(tmp_path, text)
    path = _bundle(tmp_path, ["Conv", "Relu", "MaxPool", "HardSwish", "Conv"])
    r = simulate_npu(path, dev)
    act = 4 * 8 * 8  # every activation is int8 [1, 4, 8, 8]
    conv_bytes = 2 * act + 4 * 4 * 9 + 4 * 4 * 3  # in, out, int8 weights, int32 bias/mult/shift
    conv_macs = 4 * 8 * 8 * 4 * 9
    t_conv = max(conv_macs / 1e9, conv_bytes / 2e6)
    t_pool = 2 * act / 2e6
    t_lut = max(0, (2 * act + 256) / 3e6)  # on the CPU: input, output, the 256-byte table
    hand = 1e-3 + 2 * act / 5e5  # one tensor in, one out
    want = [t_conv + t_pool + hand, t_lut, t_conv + hand]
    assert [p.time_s for p in r.partitions] == pytest.approx(want, rel=1e-12)
    assert r.estimate["total_ms"] == pytest.approx(sum(want) * 1e3, rel=1e-12)
    all_cpu = 2 * max(conv_macs / 1e8, conv_bytes / 3e6) + 2 * act / 3e6 + t_lut
    assert r.estimate["all_cpu_ms"] == pytest.approx(all_cpu * 1e3, rel=1e-12)
    assert "not a measurement" in r.estimate["note"]


def test_float_tensors_are_caught(tmp_path):
    """A float tensor keeps its nodes off the NPU; the partition check flags float ops and tensors."""
    b = read_bundle(_bundle(tmp_path, ["Conv", "Relu", "Conv"]))
    mid = b.graph.nodes[0].outputs[0]
    b.graph.tensors[mid] = Tensor(mid, b.graph.tensors[mid].shape, "float32")
    r = simulate_npu(b)
    assert [n.device for n in r.nodes] == ["cpu", "cpu"] and r.nodes[0].reason.startswith("dtype: float32")
    g = Graph([Node("QConv", "c", ["x"], ["y"]), Node("Dequantize", "dq", ["y"], ["z"])],
              {"x": Tensor("x", (1, 4), "int8"), "y": Tensor("y", (1, 4), "int8"), "z": Tensor("z", (1, 4), "float32")},
              ["x"], ["z"])
    assert check_integer_only(g, g.nodes[:1]) == []
    assert check_integer_only(g, g.nodes) == ["node 'dq': op Dequantize is not an integer op",
                                              "node 'dq': tensor 'z' is float32"]


def test_int16_needs_the_16a8w_recipe(tmp_path):
    b = read_bundle(_bundle(tmp_path, ["Conv", "Relu", "Conv"]))
    mid = b.graph.nodes[0].outputs[0]
    b.graph.tensors[mid] = Tensor(mid, b.graph.tensors[mid].shape, "int16", [0.01], [0])
    assert [n.device for n in simulate_npu(b).nodes] == ["npu", "npu"]
    no16 = _profile(tmp_path, PROFILE.replace('recipes = ["8a8w", "16a8w", "16a4w"]', 'recipes = ["8a8w"]'))
    r = simulate_npu(b, no16)
    assert [n.reason for n in r.nodes] == [f"dtype: int16 activation '{mid}' needs the 16a8w recipe"] * 2


def test_tflite_bundles_use_tflite_op_names(tmp_path):
    """An int8 TFLite model's nodes record TFLite op codes, checked against the profile's tflite_ops."""
    from tflite_models import random_model
    model, _ = random_model(3, "net")
    path = tmp_path / "t.edgeq"
    edgeq.convert(model, device="android-npu", output=path, progress=False)
    r = simulate_npu(path)
    assert {s for n in r.nodes for s in n.source_ops} == {"CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "ADD",
                                                          "RESHAPE", "FULLY_CONNECTED", "SOFTMAX"}
    assert r.verdict == "YES"
    r2 = simulate_npu(path, _profile(tmp_path, PROFILE.replace('"SOFTMAX", ', '')))
    assert [(n.op, n.reason) for n in r2.nodes if n.device == "cpu"] == \
        [("QSoftmax", "op: SOFTMAX not in the profile's NPU op list")]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("digits") / "digits.edgeq"
    edgeq.convert(device="android-npu", output=path, progress=False)
    return path


def test_digits_report(digits):
    path = digits
    x = load_sample().x_test[:3]
    r = simulate_npu(path, "android-npu", {"input": x})
    assert r.provenance == "recorded" and all(n.source_ops for n in r.nodes)
    assert [i for p in r.partitions for i in p.nodes] == list(range(len(r.nodes)))
    assert r.integer_only and r.verdict in ("YES", "MAYBE", "NO")
    assert 0 < r.npu_mac_fraction <= 1 and r.total_macs == edgeq.load(path).summary()["memory"]["macs"]
    np.testing.assert_array_equal(r.outputs["logits"], edgeq.load(path, backend="reference").run(x)["logits"])
    assert r.estimate["total_ms"] == pytest.approx(sum(p.time_s for p in r.partitions) * 1e3)


def test_ppocr_cls_report(tmp_path):
    _, cal = synth.rec_lines(6, seed=3, width=192, max_words=1)
    path = tmp_path / "cls.edgeq"
    edgeq.convert(synth.model_paths()["cls"], device="android-npu", output=path, calib=cal, progress=False)
    r = simulate_npu(path, "android-npu", {"x": cal[:2]})
    assert r.provenance == "recorded" and r.integer_only
    # PP-LCNet writes HardSwish as Add/Clip/Mul/Div (all on NNAPI's list) and uses HardSigmoid (not on it).
    assert ["Conv", "BatchNormalization", "Add", "Clip", "Mul", "Div"] in [n.source_ops for n in r.nodes]
    assert [n.name for n in r.nodes if n.device == "cpu"] == [n.name for n in r.nodes if "HardSigmoid" in n.source_ops]
    assert {n.reason for n in r.nodes if n.device == "cpu"} == {"op: HardSigmoid not in the profile's NPU op list"}
    assert len(r.npu_partitions) > 2 and r.verdict == "NO"
    for p in r.npu_partitions:  # what each NPU partition must hand back: the integer reference's tensors
        assert [o["tensor"] for o in p.reference_outputs] == p.outputs
    out = edgeq.load(path, backend="reference").run(cal[:2])
    for k, v in out.items():
        np.testing.assert_array_equal(r.outputs[k], v)


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["edgeq", "sim", *args], capture_output=True, text=True, cwd=tmp_path)


def test_simulator_imports_no_converter(digits):
    """The runtime-side rule: the simulator needs neither onnx nor edgeq.converters (nor matplotlib
    unless it draws)."""
    code = ("import sys; from edgeq.npu_sim import simulate_npu; r = simulate_npu(sys.argv[1]); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'matplotlib', 'tflite') "
            "or m.startswith('edgeq.converters')]; print(bad, r.verdict); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code, str(digits)], capture_output=True, text=True, cwd=digits.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli(tmp_path, digits):
    path = digits
    np.save(tmp_path / "x.npy", load_sample().x_test[:2])
    x = str(tmp_path / "x.npy")
    png = tmp_path / "map.png"
    done = _cli(tmp_path, str(path), "--device", "android-npu", "--input", x, "--json", "--plot", str(png))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["cpu_build_matches_reference"] is True and data["npu"]["verdict"] in ("YES", "MAYBE", "NO")
    assert data["npu"]["partitions"] == len(data["npu"]["partition_list"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    only = _cli(tmp_path, str(path), "--device", "android-npu", "--input", x, "--no-qemu", "--json")
    assert only.returncode == 0 and "cpu_build_matches_reference" not in json.loads(only.stdout)
    assert json.loads(only.stdout)["npu"] == data["npu"]
    text = _cli(tmp_path, str(path), "--device", "android-npu", "--input", x, "--no-qemu")
    assert "ESTIMATE (a model, not a measurement)" in text.stdout
    no_latency = _profile(tmp_path, PROFILE.split("[npu.latency]")[0], "nolat.toml")
    (tmp_path / "junk.edgeq").write_bytes(b"not a bundle at all" * 16)
    for args, words in [(["--device", "rpi5", "--npu"], "has no [npu] table"),
                        (["--device", "stm32h7", "--plot", "p.png"], "has no [npu] table"),
                        (["--device", str(no_latency), "--no-qemu"], "[npu.latency]")]:
        bad = _cli(tmp_path, str(path), "--input", x, *args)
        assert bad.returncode == 2 and bad.stderr.startswith("edgeq: error:") and words in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    junk = _cli(tmp_path, str(tmp_path / "junk.edgeq"), "--device", "android-npu", "--input", x)
    assert junk.returncode == 2 and "not an edgeq bundle" in junk.stderr
    assert not (tmp_path / "p.png").exists()


def test_profile_tables_are_data():
    """Every latency constant and constraint the simulator reads is in the TOML, with a comment."""
    npu = tomllib.loads(PROFILE)["npu"]
    assert set(npu["latency"]) == {"npu_int8_macs_per_s", "npu_int16_macs_factor", "npu_bytes_per_s",
                                   "cpu_int8_macs_per_s", "cpu_bytes_per_s", "handoff_s", "boundary_bytes_per_s"}
    with pytest.raises(InputError, match="no \\[npu\\] table"):
        simulate_npu(Path("unused"), "rpi5")
