"""The mobile-NPU simulator (``edgeq sim BUNDLE --device android-npu``): which nodes of a bundle an NPU
reached through ONNX Runtime (NNAPI / QNN) would run, how the graph splits into NPU and CPU partitions,
ORT's usability verdict, and a latency estimate from a documented model (docs/npu.md).

A node goes to the NPU when every source op it was made from (``ir.Node.source_ops``, recorded by the
importers and kept through fusions) is in the profile's ``[npu] ops`` list and its integer form meets
``[npu.constraints]``: integer tensors only, activation dtypes the NPU has (edgeq's int8 is the NPU's uint8
shifted by 128, exactly), 16-bit activations only with a 16a8w recipe, weight dtype and per-channel scales
the NPU takes, tensor rank, and the output quantization the accelerator fixes for some ops. Everything
else falls back to the CPU. Contiguous runs in execution order form partitions.

Nothing here runs on an NPU: functionally the NPU partitions must reproduce edgeq's integer reference,
whose outputs the report shows; the times are an estimate from ``[npu.latency]``, never a measurement.

Runtime side: NumPy only (matplotlib lazily for the picture); never onnx or edgeq.converters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .bundle import LoadedBundle, read_bundle
from .devices import DeviceProfile, get_device, list_devices, load_profile
from .errors import InputError
from .ir import Graph, Node
from .runtimes.executor import Executor, dequantize, quantize
from .runtimes.registry import OPS, node_macs

__all__ = ["NpuReport", "npu_device", "simulate_npu", "check_integer_only", "plot_partitions"]

ESTIMATE_NOTE = ("estimated from the latency model of docs/npu.md with the device profile's [npu.latency] "
                 "constants (assumptions); not a measurement")
# For nodes without recorded provenance (bundles made before source_ops): the ONNX op each integer op
# usually comes from. QLut is absent on purpose: which activation a table computes is unknown.
NOMINAL_SOURCE = {"QConv": "Conv", "QFullyConnected": "Gemm", "QAdd": "Add", "QMul": "Mul", "QMaxPool": "MaxPool",
                  "QAvgPool": "AveragePool", "QSoftmax": "Softmax", "QConcat": "Concat", "QReshape": "Reshape",
                  "QCopyWindow": "Slice", "QStridedCopy": "Transpose", "QMatMul": "MatMul",
                  "QConvTranspose": "ConvTranspose", "QResize": "Resize", "QLayerNorm": "LayerNormalization",
                  "QRequantize": "QuantizeLinear"}
INTEGER_DTYPES = frozenset({"int8", "uint8", "int16", "uint16", "int32", "int64"})
WEIGHTED = ("QConv", "QFullyConnected", "QConvTranspose", "QMatMul")
LATENCY_KEYS = ("npu_int8_macs_per_s", "npu_int16_macs_factor", "npu_bytes_per_s", "cpu_int8_macs_per_s",
                "cpu_bytes_per_s", "handoff_s", "boundary_bytes_per_s")


@dataclass
class NodePlacement:
    """Where one node runs, why, and what the latency model charges for it."""

    index: int
    name: str
    op: str
    source_ops: list[str]
    device: str  # "npu" or "cpu"
    reason: str | None  # why it falls back: "op: ...", "dtype: ..." or "shape: ..."
    macs: int
    bytes: int
    time_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return dict(self.__dict__)


@dataclass
class Partition:
    """A contiguous run of nodes on one device; NPU partitions also pay one hand-off and their boundary tensors."""

    index: int
    device: str
    nodes: list[int]
    inputs: list[str]
    outputs: list[str]
    macs: int
    compute_s: float
    boundary_bytes: int = 0
    transfer_s: float = 0.0
    reference_outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def time_s(self) -> float:
        """Compute plus hand-off time of the partition."""
        return self.compute_s + self.transfer_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        d = {k: v for k, v in self.__dict__.items() if k != "reference_outputs" or self.device == "npu"}
        d["time_s"] = self.time_s
        return d


@dataclass
class NpuReport:
    """The NPU simulation of one bundle on one device (see :func:`simulate_npu`)."""

    device: str
    provenance: str
    nodes: list[NodePlacement]
    partitions: list[Partition]
    verdict: str
    integer_only: bool
    integer_violations: list[str]
    total_macs: int
    estimate: dict[str, Any]
    outputs: dict[str, np.ndarray]

    @property
    def npu_partitions(self) -> list[Partition]:
        """The partitions placed on the NPU."""
        return [p for p in self.partitions if p.device == "npu"]

    @property
    def npu_node_fraction(self) -> float:
        """Share of the nodes on the NPU."""
        return sum(n.device == "npu" for n in self.nodes) / max(len(self.nodes), 1)

    @property
    def npu_mac_fraction(self) -> float:
        """Share of the multiply-accumulates on the NPU."""
        return sum(n.macs for n in self.nodes if n.device == "npu") / max(self.total_macs, 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the reference outputs as shape/dtype/sha256/range summaries)."""
        return {
            "device": self.device, "provenance": self.provenance, "nodes": len(self.nodes),
            "partitions": len(self.partitions), "npu_partitions": len(self.npu_partitions),
            "npu_node_fraction": round(self.npu_node_fraction, 4), "npu_mac_fraction": round(self.npu_mac_fraction, 4),
            "total_macs": self.total_macs, "verdict": self.verdict,
            "verdict_rule": "ORT usability checker: 1 NPU partition with >75% of the nodes -> YES; 1 with >50% -> "
                            "MAYBE; 2 with >75% -> MAYBE; else NO",
            "fallback_nodes": [{"name": n.name, "op": n.op, "source_ops": n.source_ops, "reason": n.reason}
                               for n in self.nodes if n.device == "cpu"],
            "integer_only": self.integer_only, "integer_violations": self.integer_violations,
            "estimate": self.estimate, "partition_list": [p.to_dict() for p in self.partitions],
            "node_list": [n.to_dict() for n in self.nodes],
        }


def npu_device(spec: str | Path | DeviceProfile) -> DeviceProfile:
    """Resolve a profile id or .toml path and check it describes an NPU with the simulator's tables."""
    if isinstance(spec, DeviceProfile):
        device = spec
    elif str(spec).endswith(".toml"):
        if not Path(spec).is_file():
            raise InputError(f"device profile file '{spec}' does not exist")
        device = load_profile(Path(spec))
    else:
        device = get_device(str(spec))
    if not device.npu:
        have = ", ".join(d.id for d in list_devices() if d.npu) or "none"
        raise InputError(f"device '{device.id}' has no [npu] table: no NPU report (NPU profiles: {have})")
    missing = [k for k in LATENCY_KEYS if not isinstance(device.npu.get("latency", {}).get(k), (int, float))]
    if missing or not isinstance(device.npu.get("constraints"), dict):
        what = f"[npu.latency] {missing[0]}" if missing else "[npu.constraints]"
        raise InputError(f"device '{device.id}': the NPU simulator needs a numeric {what} (see docs/npu.md)")
    return device


def _sources(node: Node) -> list[str]:
    if node.source_ops:
        return list(node.source_ops)
    return [NOMINAL_SOURCE[node.op]] if node.op in NOMINAL_SOURCE else []


def _npu_dtype(dtype: str, allowed: list[str]) -> str | None:
    """The NPU activation type an edgeq one maps onto exactly (int8 -> uint8 is a +128 shift), if any."""
    for cand in {"int8": ("int8", "uint8"), "int16": ("int16", "uint16")}.get(dtype, ()):
        if cand in allowed:
            return cand
    return None


def _fallback_reason(node: Node, g: Graph, npu: Mapping[str, Any], op_list: frozenset[str]) -> str | None:
    """Why ``node`` cannot run on the NPU (category first: op / dtype / shape), or None if it can."""
    sources = _sources(node)
    if not sources:
        return f"op: no recorded source ops (bundle predates source_ops) and {node.op} has no nominal ONNX op"
    missing = [s for s in sources if s not in op_list]
    if missing:
        return f"op: {', '.join(missing)} not in the profile's NPU op list"
    cons = npu["constraints"]
    tensors = [t for t in node.inputs + node.outputs if t]
    for t in tensors:
        if g.tensors[t].dtype not in INTEGER_DTYPES and cons.get("integer_only", True):
            return f"dtype: {g.tensors[t].dtype} tensor '{t}' (the NPU recipes are integer-only)"
    acts = [t for t in tensors if t not in g.consts]
    for t in acts:
        dt = g.tensors[t].dtype
        if _npu_dtype(dt, list(npu["activation_dtypes"])) is None:
            return f"dtype: {dt} activation '{t}' has no NPU type (activation dtypes: {', '.join(npu['activation_dtypes'])})"
        if dt == "int16" and "16a8w" not in npu.get("recipes", []):
            return f"dtype: int16 activation '{t}' needs the 16a8w recipe"
    if node.op in WEIGHTED and len(node.inputs) > 1 and node.inputs[1] in g.consts:
        w = g.tensors[node.inputs[1]]
        if w.dtype not in npu["weight_dtypes"]:
            return f"dtype: {w.dtype} weights (weight dtypes: {', '.join(npu['weight_dtypes'])})"
        if w.scale and len(w.scale) > 1 and not npu.get("per_channel_weights", False):
            return "dtype: per-channel weight scales and the NPU takes per-tensor only"
    rank = int(cons.get("max_rank", 0))
    for t in acts:
        if rank and len(g.tensors[t].shape) > rank:
            return f"shape: '{t}' is {len(g.tensors[t].shape)}-D (the NPU takes at most {rank}-D)"
    out = g.tensors[node.outputs[0]]
    bits = 8 * np.dtype(out.dtype).itemsize
    fixed = cons.get("fixed_output_quant", {}).get(f"{sources[-1]}.a{bits}")
    if fixed is not None and out.scale:
        scale, zp = float(out.scale[0]), int(out.zero_point[0]) + (1 << (bits - 1))  # to the unsigned encoding
        if not (np.isclose(scale, fixed[0], rtol=1e-6, atol=0) and zp == int(fixed[1])):
            return (f"dtype: the NPU fixes {sources[-1]}'s {bits}-bit output at scale {fixed[0]:.6g} zero point "
                    f"{fixed[1]}; this one is scale {scale:.6g} zero point {zp} (unsigned)")
    return None


def _node_bytes(node: Node, g: Graph) -> int:
    """Bytes a node moves per sample: its activation inputs and output, and its constants."""
    return sum(g.tensors[t].nbytes if t in g.consts else g.tensors[t].sample_nbytes
               for t in dict.fromkeys(node.inputs + node.outputs) if t)


def _node_time(node: Node, g: Graph, device: str, lat: Mapping[str, float], macs: int, nbytes: int) -> float:
    if device == "npu":
        wide = any(g.tensors[t].dtype == "int16" for t in node.inputs + node.outputs if t and t not in g.consts)
        rate = lat["npu_int8_macs_per_s"] * (lat["npu_int16_macs_factor"] if wide else 1.0)
        return max(macs / rate, nbytes / lat["npu_bytes_per_s"])
    return max(macs / lat["cpu_int8_macs_per_s"], nbytes / lat["cpu_bytes_per_s"])


def check_integer_only(graph: Graph, nodes: list[Node]) -> list[str]:
    """Float arithmetic among ``nodes`` (an NPU partition): a node op outside the integer op registry, or a
    tensor read or written in a non-integer dtype. Returns one line per violation (empty: integer-only)."""
    bad = []
    for n in nodes:
        if n.op not in OPS:
            bad.append(f"node '{n.name}': op {n.op} is not an integer op")
        for t in n.inputs + n.outputs:
            if t and graph.tensors[t].dtype not in INTEGER_DTYPES:
                bad.append(f"node '{n.name}': tensor '{t}' is {graph.tensors[t].dtype}")
    return bad


def verdict(n_npu_partitions: int, node_fraction: float) -> str:
    """ORT's usability-checker verdict (REFERENCE.md section 2) from the NPU partitions and node share."""
    if n_npu_partitions == 1 and node_fraction > 0.75:
        return "YES"
    if n_npu_partitions == 1 and node_fraction > 0.5 or n_npu_partitions == 2 and node_fraction > 0.75:
        return "MAYBE"
    return "NO"


def _partitions(g: Graph, placed: list[NodePlacement], lat: Mapping[str, float]) -> list[Partition]:
    runs: list[list[int]] = []
    for p in placed:
        if runs and placed[runs[-1][-1]].device == p.device:
            runs[-1].append(p.index)
        else:
            runs.append([p.index])
    users = g.consumers()
    out = []
    for k, idx in enumerate(runs):
        nodes = [g.nodes[i] for i in idx]
        made = {o for n in nodes for o in n.outputs}
        ins = list(dict.fromkeys(t for n in nodes for t in n.inputs if t and t not in g.consts and t not in made))
        inside = {id(n) for n in nodes}
        outs = [t for n in nodes for t in n.outputs
                if t in g.outputs or any(id(u) not in inside for u in users.get(t, []))]
        part = Partition(k, placed[idx[0]].device, idx, ins, outs, sum(placed[i].macs for i in idx),
                         sum(placed[i].time_s for i in idx))
        if part.device == "npu":  # the app and the fallback ops live on the CPU: every NPU call is a round trip
            part.boundary_bytes = sum(g.tensors[t].sample_nbytes for t in ins + outs)
            part.transfer_s = lat["handoff_s"] + part.boundary_bytes / lat["boundary_bytes_per_s"]
        out.append(part)
    return out


def _summary(name: str, v: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(v[:1])
    return {"tensor": name, "shape": list(a.shape), "dtype": a.dtype.name, "min": int(a.min()), "max": int(a.max()),
            "sha256": hashlib.sha256(a.tobytes()).hexdigest()}


def simulate_npu(bundle: str | Path | LoadedBundle, device: str | Path | DeviceProfile = "android-npu",
                 inputs: Mapping[str, np.ndarray] | None = None) -> NpuReport:
    """Simulate ``bundle`` on an NPU device profile (one with ``[npu]``, ``[npu.constraints]`` and
    ``[npu.latency]`` tables): node placement with the reason for every fallback, partitions, ORT's verdict,
    an integer-only check of the NPU partitions, and the latency estimate (per node, per partition, total,
    and the all-CPU time for comparison). ``inputs`` (float, keyed by input name, batch first) are run
    through the integer reference; the report keeps the tensors each NPU partition must hand back (first
    sample) and the dequantized outputs. Without inputs the reference runs on the inputs' zero points."""
    dev = npu_device(device)
    loaded = bundle if isinstance(bundle, LoadedBundle) else read_bundle(bundle)
    g, npu, lat = loaded.graph, dev.npu, dev.npu["latency"]
    fmt = loaded.manifest.get("source", {}).get("format", "onnx")
    key = "tflite_ops" if fmt == "tflite" else "ops"
    op_list = frozenset(npu.get(key, []))
    stamped = sum(bool(n.source_ops) for n in g.nodes)
    provenance = "recorded" if stamped == len(g.nodes) else \
        "partly recorded, the rest inferred from edgeq ops" if stamped else "inferred from edgeq ops (bundle predates source_ops)"
    placed = []
    for i, node in enumerate(g.nodes):
        reason = _fallback_reason(node, g, npu, op_list) if op_list else f"op: the profile lists no [npu] {key}"
        where = "cpu" if reason else "npu"
        macs, nbytes = node_macs(node, g), _node_bytes(node, g)
        placed.append(NodePlacement(i, node.name, node.op, _sources(node), where, reason, macs, nbytes,
                                    _node_time(node, g, where, lat, macs, nbytes)))
    parts = _partitions(g, placed, lat)
    violations = [v for p in parts if p.device == "npu" for v in check_integer_only(g, [g.nodes[i] for i in p.nodes])]
    executor = Executor(g, "reference", loaded.plan)
    if inputs is None:
        inputs = {k: np.zeros(g.tensors[k].shape, np.float32) for k in g.inputs}
    executor.check_inputs(dict(inputs))
    values = executor.run_reference_all({k: quantize(v, g.tensors[k]) for k, v in inputs.items()})
    for p in parts:
        if p.device == "npu":
            p.reference_outputs = [_summary(t, values[t]) for t in p.outputs]
    outputs = {k: dequantize(values[k], g.tensors[k]) for k in g.outputs}
    total = sum(p.time_s for p in parts)
    all_cpu = sum(_node_time(n, g, "cpu", lat, p.macs, p.bytes) for n, p in zip(g.nodes, placed))
    estimate = {"note": ESTIMATE_NOTE, "total_ms": total * 1e3, "all_cpu_ms": all_cpu * 1e3,
                "npu_compute_ms": sum(p.compute_s for p in parts if p.device == "npu") * 1e3,
                "cpu_compute_ms": sum(p.compute_s for p in parts if p.device == "cpu") * 1e3,
                "transfer_ms": sum(p.transfer_s for p in parts) * 1e3,
                "constants": {k: lat[k] for k in LATENCY_KEYS}}
    n_npu = sum(p.device == "npu" for p in parts)
    report = NpuReport(dev.id, provenance, placed, parts, "NO", not violations, violations,
                       sum(p.macs for p in placed), estimate, outputs)
    report.verdict = verdict(n_npu, report.npu_node_fraction)
    return report


def _time(seconds: float) -> str:
    return f"{seconds * 1e6:.3g} us" if seconds < 1e-4 else f"{seconds * 1e3:.3g} ms"


def format_report(r: NpuReport, bundle: str) -> list[str]:
    """The human-readable lines of ``edgeq sim`` for a report."""
    e = r.estimate
    lines = [f"NPU simulation of {bundle} on {r.device}: {len(r.nodes)} nodes, {len(r.partitions)} partitions "
             f"({len(r.npu_partitions)} on the NPU); source ops {r.provenance}",
             f"on the NPU: {r.npu_node_fraction:.1%} of the nodes, {r.npu_mac_fraction:.1%} of the {r.total_macs:,} "
             f"MACs; ORT usability verdict: {r.verdict}",
             f"integer-only NPU partitions: {'yes' if r.integer_only else 'NO: ' + '; '.join(r.integer_violations)}",
             f"latency ESTIMATE (a model, not a measurement): {_time(e['total_ms'] / 1e3)} (NPU compute "
             f"{_time(e['npu_compute_ms'] / 1e3)}, CPU compute {_time(e['cpu_compute_ms'] / 1e3)}, hand-offs "
             f"{_time(e['transfer_ms'] / 1e3)}); all on the CPU: {_time(e['all_cpu_ms'] / 1e3)}"]
    for p in r.partitions:
        first, last = r.nodes[p.nodes[0]].name, r.nodes[p.nodes[-1]].name
        extra = f" + hand-off {_time(p.transfer_s)} ({p.boundary_bytes:,} B)" if p.device == "npu" else ""
        lines.append(f"  partition {p.index} {p.device.upper()}: {len(p.nodes)} nodes ({first} .. {last}), "
                     f"{_time(p.compute_s)}{extra}")
    fallbacks = [n for n in r.nodes if n.device == "cpu"]
    if fallbacks:
        lines.append("fallback nodes:")
        lines += [f"  {n.name} ({n.op} from {'+'.join(n.source_ops) or '?'}): {n.reason}" for n in fallbacks]
    return lines


def plot_partitions(r: NpuReport, path: str | Path, title: str = "") -> None:
    """Write a PNG of the partition map: one bar per node along the graph, colored NPU/CPU, its height the
    node's estimated time, each partition labeled with its time (needs matplotlib)."""
    from .plots import pyplot, save_png
    plt = pyplot()
    from matplotlib.patches import Patch
    colors = {"npu": "#4c78a8", "cpu": "#e45756"}
    fig, ax = plt.subplots(figsize=(max(8.0, min(24.0, len(r.nodes) * 0.08 + 6)), 4.5), dpi=110)
    times_us = [n.time_s * 1e6 for n in r.nodes]
    ax.bar(range(len(r.nodes)), times_us, width=1.0, color=[colors[n.device] for n in r.nodes], edgecolor="none")
    top = max(times_us + [1e-3])
    for p in r.partitions:
        lo, hi = p.nodes[0] - 0.5, p.nodes[-1] + 0.5
        ax.axvspan(lo, hi, color=colors[p.device], alpha=0.12, linewidth=0)
        label = f"{p.device.upper()} {_time(p.time_s)}"
        ax.text((lo + hi) / 2, top * 1.04, label, ha="center", va="bottom", fontsize=7, rotation=90 if hi - lo < 8 else 0)
    ax.set_ylim(0, top * 1.45)
    ax.set_xlim(-0.5, len(r.nodes) - 0.5)
    ax.set_xlabel("node (execution order)")
    ax.set_ylabel("estimated time per node (us)")
    e = r.estimate
    ax.set_title(title or f"{r.device}: {len(r.npu_partitions)} NPU partitions, {r.npu_node_fraction:.0%} of nodes "
                          f"on NPU, verdict {r.verdict}; estimated {_time(e['total_ms'] / 1e3)} (model, not measured)",
                 fontsize=9)
    ax.legend([Patch(color=colors["npu"]), Patch(color=colors["cpu"])], ["NPU", "CPU fallback"], fontsize=8, ncol=2,
              loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    save_png(fig, path)
