"""Pictures on request: the arena timeline of a bundle's memory plan (``edgeq inspect --plot FILE.png``) and
the per-layer error of a conversion (``edgeq convert ... --plot FILE.png``).

The arena timeline:
Every activation is a box: horizontally the steps during which it is live (from the op that writes it
to the last op that reads it), vertically its bytes in the arena. Patch-based stages show as many
small boxes at the start; in-place ops as boxes that continue where their input ended. A patched bundle
gets a second panel: the input window each patch reads (its share plus the halo) over the input image.
"""

from __future__ import annotations

from pathlib import Path

from .bundle import write_atomic
from .errors import InputError
from .ir import Graph
from .runtimes.planner import MemoryPlan, lifetimes

_COLORS = {"QConv": "#4c78a8", "QFullyConnected": "#72b7b2", "QAdd": "#f58518", "QMul": "#e45756",
           "QLut": "#54a24b", "QMaxPool": "#b279a2", "QAvgPool": "#9d755d", "QCopyWindow": "#bab0ac"}


def plot_memory(graph: Graph, plan: MemoryPlan, path: str | Path, title: str = "") -> None:
    """Write a PNG of the arena timeline of ``plan`` (needs matplotlib: ``pip install edgeq[all]``)."""
    plt = pyplot()
    from matplotlib.patches import Rectangle

    producer = {n.outputs[0]: n.op for n in graph.nodes}
    crops = [n.attrs for n in graph.nodes if n.op == "QCopyWindow" and n.inputs[0] == graph.inputs[0]]
    if crops:
        fig, (ax, px) = plt.subplots(1, 2, figsize=(15, 5.5), dpi=110, gridspec_kw={"width_ratios": [3, 1]})
        _patches_panel(px, graph, crops, Rectangle)
    else:
        fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    for name, (first, last) in lifetimes(graph).items():
        size = graph.tensors[name].sample_nbytes
        op = producer.get(name, "input")
        ax.add_patch(Rectangle((first, plan.offsets[name]), last - first + 1, size, linewidth=0.4,
                               edgecolor="black", facecolor=_COLORS.get(op, "#cccccc"), alpha=0.8))
        if size >= plan.arena_bytes * 0.08 and last - first >= 1:
            ax.text(first + 0.1, plan.offsets[name] + size / 2, name[:18], fontsize=6, va="center")
    ax.set_xlim(0, len(graph.nodes) + 1)
    ax.set_ylim(0, max(plan.arena_bytes, 1))
    ax.set_xlabel("step (op index)")
    ax.set_ylabel("arena offset (bytes)")
    ax.set_title(title or f"arena {plan.arena_bytes} bytes ({plan.strategy})")
    handles = [Rectangle((0, 0), 1, 1, facecolor=c) for c in _COLORS.values()] + [Rectangle((0, 0), 1, 1, facecolor="#cccccc")]
    ax.legend(handles, list(_COLORS) + ["input/other"], fontsize=7, loc="upper center", ncol=9,
              bbox_to_anchor=(0.5, -0.12), frameon=False)
    save_png(fig, path)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or InputError saying how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'edgeq[all]' (or pip install matplotlib)") from None
    return plt


def check_target(path: str | Path) -> None:
    """InputError now, before the work a picture is drawn after, if it could not be written: no
    matplotlib, or no such folder."""
    pyplot()
    if not Path(path).resolve().parent.is_dir():
        raise InputError(f"--plot: directory '{Path(path).parent}' does not exist")


def save_png(fig, path: str | Path) -> None:
    """Lay out ``fig``, write it to ``path`` as a PNG atomically (never a half-written file) and close it."""
    import io
    import matplotlib.pyplot as plt
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    try:
        write_atomic(path, [buf.getvalue()])
    except OSError as e:
        raise InputError(f"cannot write '{path}': {e.strerror}") from None


def plot_layers(report: dict, path: str | Path, title: str = "") -> None:
    """Write a PNG of a conversion report's per-layer SQNR against the float model, in graph order: one bar
    per quantized layer, int16 layers in another colour, the worst layers named."""
    plt = pyplot()
    layers = report.get("layers") or []
    if not layers:
        raise InputError("the conversion report has no per-layer errors to plot")
    sqnr = [float(l["sqnr_db"]) for l in layers]
    wide = [int(l.get("bits", 8)) > 8 for l in layers]
    fig, ax = plt.subplots(figsize=(max(8.0, min(24.0, 0.09 * len(layers) + 6)), 4.8), dpi=110)
    ax.bar(range(len(layers)), sqnr, width=0.85, color=["#f58518" if w else "#4c78a8" for w in wide])
    worst = set(report.get("worst_layers") or [])
    for i, l in enumerate(layers):
        if l["name"] in worst:
            ax.annotate(l["name"][:22], (i, sqnr[i]), xytext=(0, 8), textcoords="offset points", fontsize=6,
                        rotation=60, ha="left", color="#b00000")
    ax.set_xlim(-1, len(layers))
    if len(layers) <= 40:
        ax.set_xticks(range(len(layers)), [l["name"][:16] for l in layers], rotation=60, ha="right", fontsize=6)
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("SQNR vs float (dB)")
    mp = report.get("mixed_precision")
    extra = (f"; {len(mp['int16_tensors'])} tensors int16, output {mp['int8_output_sqnr_db']} -> "
             f"{mp['output_sqnr_db']} dB" if mp else "")
    ax.set_title(title or f"{Path(str(report.get('output', ''))).name}: per-layer SQNR (higher is better){extra}",
                 fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c) for c in ("#4c78a8", "#f58518")]
    ax.legend(handles, ["int8 output", "int16 output"], fontsize=7, loc="lower right")
    save_png(fig, path)


def _patches_panel(ax, graph: Graph, crops: list[dict], rectangle) -> None:
    """The input image with the window every patch reads (overlaps are the recomputed halos)."""
    _, _, h, w = graph.tensors[graph.inputs[0]].shape
    ax.add_patch(rectangle((0, 0), w, h, facecolor="#eeeeee", edgecolor="black"))
    for i, a in enumerate(crops):
        (y, x), (ph, pw) = a["src"], a["size"]
        ax.add_patch(rectangle((x, y), pw, ph, fill=False, linewidth=1.2, edgecolor=f"C{i % 10}"))
    ax.set_xlim(-1, w + 1)
    ax.set_ylim(h + 1, -1)
    ax.set_aspect("equal")
    ax.set_title(f"{len(crops)} patches: input windows with halos ({h}x{w})")
