"""On-device fine-tuning: backward pass, QAS, memory planner, SPSA, the digits demo, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeq
from edgeq.cli import main
from edgeq.converters.quantize import quantize_multiplier
from edgeq.errors import DoesNotFitError
from edgeq.finetune import finetune, write_tuned
from edgeq.ir import Graph, Node, Tensor
from edgeq.runtimes import backprop as bp
from edgeq.runtimes.executor import Executor, quantize
from edgeq.runtimes.planner import plan_memory
from edgeq.runtimes.sparse_update import SparseTrainer, UpdateScheme, integer_gradients, qas_scale
from edgeq.runtimes.train_memory import plan_scheme, scheme_memory, zo_memory
from edgeq.runtimes.zeroth_order import ZOTrainer, perturbation, spsa_step

APP = Path(__file__).resolve().parents[1] / "apps" / "finetune"
sys.path.insert(0, str(APP))
import finetune_demo  # noqa: E402


def _layer(g: Graph, op: str, name: str, x: str, y: str, w: np.ndarray, s_w: np.ndarray, s_y: float, y_zp: int,
           attrs: dict, act: tuple[int, int] = (-128, 127), lut: np.ndarray | None = None, s_mid: float | None = None,
           rng: np.random.Generator | None = None) -> None:
    """Add a conv/FC node with int8 weights w (scales s_w), a random int32 bias and exact multipliers."""
    tx = g.tensors[x]
    s_out = s_mid if lut is not None else s_y
    mults = [quantize_multiplier(tx.scale[0] * s / s_out) for s in s_w]
    bias = rng.integers(-300, 300, size=w.shape[0]).astype(np.int32)
    inputs = [x, g.add_const(f"{name}_w", w, scale=list(s_w), zero_point=[0] * len(s_w), axis=0),
              g.add_const(f"{name}_b", bias), g.add_const(f"{name}_m", np.array([m for m, _ in mults], np.int32)),
              g.add_const(f"{name}_s", np.array([s for _, s in mults], np.int32))]
    if lut is not None:
        inputs.append(g.add_const(f"{name}_lut", lut))
    g.nodes.append(Node(op, name, inputs, [y], {**attrs, "x_zp": tx.zero_point[0], "y_zp": y_zp,
                                                   "act_min": act[0], "act_max": act[1]}))


def tiny_graph(seed: int = 0) -> Graph:
    """conv(ReLU) -> maxpool -> depthwise conv (fused table) -> avgpool -> reshape -> FC, int8 throughout."""
    rng = np.random.default_rng(seed)
    g = Graph([], {}, ["x"], ["logits"], dynamic_batch=True)

    def act(name: str, shape: tuple, scale: float, zp: int) -> None:
        g.tensors[name] = Tensor(name, shape, "int8", [scale], [zp], None)

    act("x", (1, 2, 6, 6), 0.05, -10)
    act("c1", (1, 4, 6, 6), 0.04, -128)
    act("p1", (1, 4, 3, 3), 0.04, -128)
    act("c2", (1, 4, 2, 2), 0.03, -20)
    act("a2", (1, 4, 1, 1), 0.03, -20)
    act("f", (1, 4), 0.03, -20)
    act("logits", (1, 3), 0.1, 5)
    conv = {"strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1}
    _layer(g, "QConv", "conv1", "x", "c1", rng.integers(-127, 128, (4, 2, 3, 3)).astype(np.int8),
           np.array([0.01, 0.02, 0.015, 0.012]), 0.04, -128, conv, act=(-128, 127), rng=rng)
    g.nodes.append(Node("QMaxPool", "pool1", ["c1"], ["p1"], {"kernel": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0],
                                                              "dilations": [1, 1], "act_min": -128, "act_max": 127}))
    codes = np.arange(-128, 128)
    table = np.clip(np.round(60 * np.tanh((codes + 20) / 50.0)) - 20, -128, 127).astype(np.int8)  # a smooth table
    _layer(g, "QConv", "dw", "p1", "c2", rng.integers(-127, 128, (4, 1, 3, 3)).astype(np.int8),
           np.array([0.02, 0.01, 0.03, 0.025]), 0.03, -20, {**conv, "strides": [2, 2], "group": 4},
           act=(-100, 120), lut=table, s_mid=0.05, rng=rng)
    g.nodes.append(Node("QAvgPool", "gap", ["c2"], ["a2"], {"kernel": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0],
                                                            "count_include_pad": 0, "x_zp": -20, "y_zp": -20,
                                                            "act_min": -128, "act_max": 127}))
    g.nodes.append(Node("QReshape", "flat", ["a2"], ["f"], {"shape": [1, 4]}))
    _layer(g, "QFullyConnected", "fc", "f", "logits", rng.integers(-127, 128, (3, 4)).astype(np.int8),
           np.array([0.02, 0.03, 0.025]), 0.1, 5, {}, rng=rng)
    return g


def test_backward_matches_finite_differences():
    g = tiny_graph()
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.4, 1.0, (3, 2, 6, 6))
    labels = np.array([0, 2, 1])
    names = ["conv1", "dw", "fc"]
    params = {n.name: bp.real_params(g, n) for n in g.nodes if n.name in names}
    logits, tape = bp.forward_real(g, x, params, first="conv1")
    grads = {}
    bp.backward(g, tape, bp.cross_entropy(logits, labels)[1], "conv1", set(names),
                lambda node, gw, gb: grads.__setitem__(node.name, (gw, gb)), params=params)
    assert set(grads) == set(names)

    def loss(p: dict) -> float:
        return bp.cross_entropy(bp.forward_real(g, x, p)[0], labels)[0]

    h = 1e-6
    for name in names:
        for which in (0, 1):
            base = params[name][which]
            for flat in rng.choice(base.size, size=min(6, base.size), replace=False):
                bumped = []
                for sign in (1, -1):
                    arr = base.copy()
                    arr.flat[flat] += sign * h
                    p = dict(params)
                    p[name] = (arr, params[name][1]) if which == 0 else (params[name][0], arr)
                    bumped.append(loss(p))
                numeric = (bumped[0] - bumped[1]) / (2 * h)
                assert grads[name][which].flat[flat] == pytest.approx(numeric, rel=1e-5, abs=1e-8), (name, which, flat)


def test_int8_forward_is_the_executor_and_the_tape_stops_at_the_first_layer():
    g = tiny_graph()
    xq = np.random.default_rng(2).integers(-128, 128, (4, 2, 6, 6)).astype(np.int8)
    logits, tape = bp.forward_int8(g, xq, first="dw")
    out = g.tensors["logits"]
    ref = Executor(g, "reference", plan_memory(g)).run_quantized({"x": xq})["logits"]
    np.testing.assert_array_equal(logits, (ref.astype(np.float64) - out.zero_point[0]) * out.scale[0])
    assert set(tape.inputs) == {"dw", "gap", "flat", "fc"}
    seen = []
    bp.backward(g, tape, np.ones_like(logits), "dw", {"dw", "fc"}, lambda n, gw, gb: seen.append(n.name))
    assert seen == ["fc", "dw"]  # applied as they arrive, last layer first


def test_qas_hand_built():
    g_w = np.array([[2.0, -1.0], [4.0, 0.5]])  # gradients w.r.t. the int8 weights, two output channels
    g_b = np.array([3.0, -6.0])
    s_w, s_x = np.array([0.5, 0.25]), 0.1
    w, b = qas_scale(g_w, g_b, s_w, s_x)
    np.testing.assert_allclose(w, [[8.0, -4.0], [64.0, 8.0]])
    np.testing.assert_allclose(b, [3.0 / 0.05 ** 2, -6.0 / 0.025 ** 2])
    # One QAS step in integer units, times the scale, is the fp32 SGD step in real units.
    real_w, real_b = np.array([[0.3, -0.2], [1.0, 2.0]]), np.array([0.7, -0.1])
    iw, ib = qas_scale(*integer_gradients(real_w, real_b, s_w, s_x), s_w, s_x)
    np.testing.assert_allclose(iw * s_w[:, None], real_w)
    np.testing.assert_allclose(ib * s_w * s_x, real_b)


def test_sparse_update_changes_only_the_scheme_and_keeps_multipliers():
    g = tiny_graph()
    xq = np.random.default_rng(3).integers(-128, 128, (8, 2, 6, 6)).astype(np.int8)
    labels = np.arange(8) % 3
    t = SparseTrainer(g, UpdateScheme(("fc", "dw"), (("fc", 0.5),)), lr=5.0)
    t.step(xq, labels)
    changed = {k for k in g.consts if not np.array_equal(g.consts[k], t.consts[k])}
    assert changed <= {"fc_w", "fc_b", "dw_b"} and "fc_w" in changed
    cols = [i for i in range(4) if not np.array_equal(g.consts["fc_w"][:, i], t.consts["fc_w"][:, i])]
    assert len(cols) <= 2 and t.consts["fc_w"].dtype == np.int8 and np.abs(t.consts["fc_w"]).max() <= 127


def test_memory_counted_by_hand_and_the_choice_follows_the_budget():
    g = tiny_graph()
    plan = plan_memory(g)
    # fc bias only: nothing saved; gradients: 3 logits + 3 bias floats = 24; parameters: 3 int32 = 12.
    m = scheme_memory(g, plan, UpdateScheme(("fc",)))
    assert (m.saved_activations, m.gradients, m.parameters, m.extra) == (0, 24, 12, 36)
    # fc + dw biases, fc weights (all 4 inputs): saved f (4 bytes) for fc's weights and dw's pre-table codes
    # (c2, 16 bytes); gradients peak at dw: its output 16 floats + (its input is not needed) + 4 bias floats = 80,
    # vs fc: (3 + 4) floats + 12 weights + 3 biases = 88 -> 88; parameters 12 int8 + 3 int32 + 4 int32 = 40.
    m = scheme_memory(g, plan, UpdateScheme(("fc", "dw"), (("fc", 1.0),)))
    assert (m.saved_activations, m.gradients, m.parameters) == (20, 88, 40)
    assert scheme_memory(g, plan, UpdateScheme(("fc", "dw"), (("fc", 1.0),)), batch=2).saved_activations == 40
    assert zo_memory(g, plan, ("conv1", "fc")).extra == 72 + 12 + 16
    assert plan_scheme(g, plan, 36)[0] == UpdateScheme(("fc",))
    assert plan_scheme(g, plan, 10_000)[0].weights  # room for weights: the planner takes them
    assert plan_scheme(g, plan, 10_000)[1].parameters > plan_scheme(g, plan, 60)[1].parameters
    with pytest.raises(DoesNotFitError, match="36 bytes"):
        plan_scheme(g, plan, 35)
    g.nodes[1].op = "QConcat"  # an op the backward pass cannot go through: conv1 is out of reach
    assert "conv1" not in plan_scheme(g, plan, 10**6)[0].layers


def test_spsa_seed_trick_and_convex_descent():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((6, 4))
    target = rng.standard_normal(6)

    def loss(p: dict) -> float:
        return float(((a @ p["t"] - target) ** 2).sum())

    z1, z2 = perturbation(7, {"t": np.zeros(4)}), perturbation(7, {"t": np.zeros(4)})
    np.testing.assert_array_equal(z1["t"], z2["t"])
    p1, p2, p3 = ({"t": np.zeros(4)} for _ in range(3))
    spsa_step(p1, loss, 11, 1e-3, 0.01)
    spsa_step(p2, loss, 11, 1e-3, 0.01)
    spsa_step(p3, loss, 12, 1e-3, 0.01)
    np.testing.assert_array_equal(p1["t"], p2["t"])
    assert not np.array_equal(p1["t"], p3["t"])
    p = {"t": np.zeros(4)}
    start = loss(p)
    for s in range(300):
        spsa_step(p, loss, s, 1e-3, 0.005)
    optimum = loss({"t": np.linalg.lstsq(a, target, rcond=None)[0]})
    assert loss(p) - optimum < 0.1 * (start - optimum)
    # The int8 trainer: the same step seed gives the same weights.
    g = tiny_graph()
    xq = rng.integers(-128, 128, (4, 2, 6, 6)).astype(np.int8)
    t1, t2 = ZOTrainer(g, ("conv1", "fc"), 5.0), ZOTrainer(g, ("conv1", "fc"), 5.0)
    t1.step(xq, np.arange(4) % 3, seed=99)
    t2.step(xq, np.arange(4) % 3, seed=99)
    for k in ("conv1_w", "fc_w"):
        np.testing.assert_array_equal(t1.consts[k], t2.consts[k])


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ft") / "digits.edgeq"
    edgeq.convert(device="stm32h7", output=path, progress=False)
    return path


@pytest.fixture(scope="module")
def shifted() -> dict:
    return finetune_demo.shifted_split()


def test_qas_recovers_the_shifted_digits_and_the_tuned_bundle_is_bit_exact(digits, shifted, tmp_path):
    d = shifted
    r = finetune(digits, d["x_train"], d["y_train"], "stm32h7", "qas", epochs=12,
                 eval_data=(d["x_test"], d["y_test"]))
    before, after = r.accuracy[0], r.accuracy[-1]
    assert before < 0.5 and after > before + 0.2, (before, after)
    assert r.memory.extra <= r.budget_bytes
    out = tmp_path / "tuned.edgeq"
    write_tuned(digits, r, out)
    tuned = edgeq.load(out)
    assert tuned.manifest["finetune"]["method"] == "qas"
    xq = quantize(d["x_test"], tuned.graph.tensors["input"])
    outs = [tuned.run_quantized(xq, backend=b)["logits"] for b in ("reference", "numba", "c")]
    for o in outs[1:]:
        np.testing.assert_array_equal(outs[0], o)
    acc = float((outs[0].argmax(axis=1) == d["y_test"]).mean())
    assert acc == pytest.approx(after)


def test_cli_json_and_plot(digits, shifted, tmp_path, capsys):
    data = tmp_path / "train.npz"
    np.savez(data, x=shifted["x_train"][:48], y=shifted["y_train"][:48])
    out = tmp_path / "t.edgeq"
    rc = main(["finetune", str(digits), "--data", str(data), "--device", "stm32h7", "--method", "elastic",
               "--epochs", "2", "--out", str(out), "--json", "--plot", str(tmp_path / "curve.png")])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0 and out.exists()
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r["zo_layers"] and r["scheme"]["bias"] and r["memory"]["extra"] <= r["budget_bytes"]
    assert len(r["accuracy"]) == 3 and r["output_bytes"] == out.stat().st_size


def _fails(capsys, argv: list[str], needle: str, tmp_path: Path) -> None:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("edgeq: error: ") and needle in err, err
    assert not [p.name for p in tmp_path.iterdir() if p.suffix in (".edgeq", ".tmp") or p.name.startswith(".")]


def test_cli_bad_input(digits, shifted, tmp_path, capsys):
    out = str(tmp_path / "o.edgeq")
    base = ["finetune", str(digits), "--device", "stm32h7", "--out", out, "--data"]
    cases = {"shape": dict(x=np.zeros((4, 1, 8, 8), np.float32), y=np.zeros(4, np.int64)),
             "labels must lie": dict(x=shifted["x_train"][:4], y=np.array([0, 1, 2, 10])),
             "one per input": dict(x=shifted["x_train"][:4], y=np.zeros(3, np.int64))}
    for needle, arrays in cases.items():
        np.savez(tmp_path / "d.npz", **arrays)
        _fails(capsys, base + [str(tmp_path / "d.npz")], needle, tmp_path)
    np.save(tmp_path / "x.npy", shifted["x_train"][:4])
    _fails(capsys, base + [str(tmp_path / "x.npy")], "must be an .npz", tmp_path)
    np.savez(tmp_path / "d.npz", x=shifted["x_train"][:4], y=shifted["y_train"][:4])
    _fails(capsys, base + [str(tmp_path / "d.npz"), "--budget", "100"], "does not fit", tmp_path)
    (tmp_path / "x.edgeq.txt").write_text("not a bundle " * 20)
    _fails(capsys, ["finetune", str(tmp_path / "x.edgeq.txt"), "--data", str(tmp_path / "d.npz"), "--device", "stm32h7",
                    "--out", out], "bad magic", tmp_path)


def test_finetune_stays_on_the_runtime_side():
    code = ("import sys, edgeq.finetune, edgeq.finetune_cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'gguf', 'llama_cpp') "
            "or m.startswith('edgeq.converters')]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stdout + out.stderr
