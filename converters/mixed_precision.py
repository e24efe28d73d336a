"""Automatic int16 mixed precision (HAWQ-style: per-layer sensitivity, then a choice under a budget).

Candidates are the activations that feed a convolution and that a Conv or a table op (QLut) produces:
int8 noise on a convolution's input is what pointwise layers amplify (PP-LCNetV3). Sensitivity is
measured, not estimated from a Hessian: for each candidate alone promoted to int16 (TFLite's 16x8
scheme, see ``quantize``), the gain in output SQNR (dB, mean over the outputs) against the float model
on calibration samples, relative to pure int8. Candidates are then tried greedily by gain per extra
activation byte (one byte per element of each int16 tensor) while the budget lasts, each kept only if
the joint graph's output SQNR rises (forward selection); candidates that did not gain alone are never
tried.

Budget (``--int16-budget``): extra activation bytes, as ``"N%"`` of the int8 bytes of all activations
or as a byte count (``"64K"``, ``"1M"``, ``"4096"``). The arena grows by at most that much (less when the
memory planner reuses the bytes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeq.errors import InputError
from edgeq.ir import Graph
from edgeq.progress import Progress
from edgeq.runtimes.executor import Executor
from .quantize import WIDE_OUTPUT_OPS, quantize_graph

SAMPLES = 16  # calibration samples each candidate is scored on
DEFAULT_BUDGET = "10%"


@dataclass
class MixedChoice:
    """The tensors promoted to int16 and why (JSON-able through :meth:`summary`)."""

    wide: frozenset[str]
    budget_bytes: int
    base_sqnr_db: float
    final_sqnr_db: float
    scores: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Report form: budget, SQNR before/after, and each candidate's measured gain and fate."""
        return {"criterion": "output SQNR gain (dB) of promoting one tensor alone to int16, per extra byte; "
                             "kept if the joint output SQNR rises",
                "budget_bytes": self.budget_bytes, "extra_bytes": sum(s["extra_bytes"] for s in self.scores
                                                                      if s["int16"]),
                "int8_output_sqnr_db": round(self.base_sqnr_db, 2), "output_sqnr_db": round(self.final_sqnr_db, 2),
                "int16_tensors": sorted(self.wide), "candidates": self.scores}


def parse_budget(spec: str, activation_bytes: int) -> int:
    """``"25%"`` of ``activation_bytes``, or bytes with an optional K/M suffix."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%|[kKmM]?)\s*", str(spec))
    if not m:
        raise InputError(f"--int16-budget '{spec}': expected a percentage (25%) or bytes (64K, 1M, 4096)")
    value, unit = float(m.group(1)), m.group(2).upper()
    if unit == "%":
        return int(activation_bytes * value / 100)
    return int(value * {"": 1, "K": 1024, "M": 1 << 20}[unit])


def candidates(fg: Graph) -> list[str]:
    """Activations produced by a Conv or a table op and read by a Conv (never model inputs/outputs)."""
    consumers = fg.consumers()
    out = []
    for node in fg.nodes:
        t = node.outputs[0]
        if node.op in WIDE_OUTPUT_OPS and t not in fg.outputs and \
                any(c.op == "Conv" and c.inputs[0] == t for c in consumers.get(t, [])):
            out.append(t)
    return out


def _output_sqnr(qg: Graph, inputs: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    got = Executor(qg, "auto").run(inputs)
    vals = []
    for o, ref in want.items():
        noise = float(np.sum((ref.astype(np.float64) - got[o]) ** 2))
        signal = float(np.sum(ref.astype(np.float64) ** 2))
        vals.append(200.0 if noise == 0 else min(10 * np.log10(max(signal, 1e-30) / noise), 200.0))
    return float(np.mean(vals))


def choose_wide(fg: Graph, ranges: dict[str, tuple[float, float]], data: dict[str, np.ndarray],
                want: dict[str, np.ndarray], budget: str = DEFAULT_BUDGET, progress: bool = True) -> MixedChoice:
    """Pick the int16 tensors for ``fg`` under ``budget``; ``want`` holds the float outputs on ``data``."""
    n = min(SAMPLES, next(iter(data.values())).shape[0])
    inputs = {k: v[:n] for k, v in data.items()}
    want = {k: v[:n] for k, v in want.items()}
    act_bytes = sum(t.sample_nbytes // 4 for name, t in fg.tensors.items() if name not in fg.consts
                    and t.dtype == "float32")  # int8 bytes of every activation
    limit = parse_budget(budget, act_bytes)
    base = _output_sqnr(quantize_graph(fg, ranges), inputs, want)
    cands = candidates(fg)
    scores = []
    with Progress("int16 sensitivity", len(cands), enabled=progress) as bar:
        for t in cands:
            gain = _output_sqnr(quantize_graph(fg, ranges, frozenset([t])), inputs, want) - base
            extra = fg.tensors[t].sample_nbytes // 4
            scores.append({"tensor": t, "gain_db": round(gain, 3), "extra_bytes": extra, "int16": False})
            bar.advance()
    # Forward selection in order of gain per byte: a candidate joins only if the joint graph's output
    # SQNR rises (single-tensor gains do not simply add up: rec's best set at a 5% budget beat a larger one).
    spent, wide, best = 0, set(), base
    for s in sorted(scores, key=lambda s: s["gain_db"] / max(s["extra_bytes"], 1), reverse=True):
        if s["gain_db"] <= 0 or spent + s["extra_bytes"] > limit:
            continue
        joint = _output_sqnr(quantize_graph(fg, ranges, frozenset(wide | {s["tensor"]})), inputs, want)
        s["joint_sqnr_db"] = round(joint, 3)
        if joint > best:
            spent, best = spent + s["extra_bytes"], joint
            wide.add(s["tensor"])
            s["int16"] = True
    return MixedChoice(frozenset(wide), limit, base, best, scores)
