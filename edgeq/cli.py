"""The ``edgeq`` command line. Exit status: 0 success, 2 user error (one line on stderr, no traceback)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import EdgeqError, InputError


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2, default=float) if args.json else text)


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_devices(args: argparse.Namespace) -> None:
    from .devices import list_devices
    rows = [{"id": d.id, "class": d.device_class, "core": d.core, "memory_bytes": d.ram_bytes,
             "flash_bytes": d.flash_bytes, "default_scheme": d.default_scheme, "name": d.name} for d in list_devices()]
    lines = [f"{'id':<12} {'class':<5} {'core':<12} {'memory':>10} {'flash':>10}  name"]
    lines += [f"{r['id']:<12} {r['class']:<5} {r['core']:<12} {_human(r['memory_bytes'] or None):>10} "
              f"{_human(r['flash_bytes'] or None):>10}  {r['name']}" for r in rows]
    _emit(args, {"devices": rows}, "\n".join(lines))


def _input_shapes(specs: list[str]) -> dict[str, tuple[int, ...]]:
    out = {}
    for spec in specs:
        name, _, dims = spec.rpartition("=")
        try:
            out[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise InputError(f"--input-shape '{spec}' must look like name=1x3x224x224") from None
        if not name or any(d < 1 for d in out[name]):
            raise InputError(f"--input-shape '{spec}' must look like name=1x3x224x224")
    return out


def _patch_mode(value: str) -> str | int:
    if value in ("auto", "off"):
        return value
    if value.isdigit() and 2 <= int(value) <= 16:
        return int(value)
    raise InputError(f"--patch must be auto, off or a patch count from 2 to 16, not '{value}'")


def cmd_convert(args: argparse.Namespace) -> None:
    from .bundle import write_atomic
    from .converters.pipeline import convert
    if args.model is not None and not Path(args.model).is_file():
        raise InputError(f"model file '{args.model}' does not exist")
    if args.model is not None and args.model.lower().endswith(".gguf"):
        from .llm_cli import cmd_convert_gguf
        if args.plot:
            raise InputError("--plot draws per-layer activation errors of ONNX/TFLite conversions; an LLM "
                             "conversion lists its weight errors in the report (--json)")
        return cmd_convert_gguf(args)
    if args.plot:
        from .plots import check_target, plot_layers
        check_target(args.plot)
    result = convert(args.model, device=args.device, output=args.output, scheme=args.scheme, calib=args.calib,
                     calib_method=args.calib_method, input_shapes=_input_shapes(args.input_shape),
                     preprocess=args.preprocess,
                     progress=not args.json and not args.quiet, patch=_patch_mode(args.patch),
                     mixed_precision=args.mixed_precision, int16_budget=args.int16_budget)
    r = result.report
    if args.report:
        write_atomic(args.report, [json.dumps(r, indent=2).encode()])
    cal = r["calibration"]
    lines = [f"wrote {r['output']} ({_human(r['bundle_bytes'])}) for {r['device']}, scheme {r['scheme']}, " +
             ("scales and zero points from the TFLite model" if cal["method"] == "tflite" else
              f"calibration {cal['method']} on {cal['samples']} samples")]
    if r["layers"]:
        lines.append(f"{'layer':<24} {'op':<16} {'bits':>4} {'SQNR dB':>8}")
    lines += [f"{l['name'][:24]:<24} {l['op']:<16} {l['bits']:>4} {l['sqnr_db']:>8.1f}" for l in r["layers"]]
    if "mixed_precision" in r:
        m = r["mixed_precision"]
        lines.append(f"mixed precision: {len(m['int16_tensors'])} of {len(m['candidates'])} candidate tensors int16 "
                     f"(+{_human(m['extra_bytes'])} of a {_human(m['budget_bytes'])} budget); output SQNR "
                     f"{m['int8_output_sqnr_db']} dB int8 -> {m['output_sqnr_db']} dB")
    s, b = r["size"], r["budget"]
    lines.append(f"weights: {_human(s['float_weights_bytes'])} float -> {_human(s['int8_weights_bytes'])} int8 "
                 f"({s['ratio']}x smaller); peak activation memory {_human(r['memory']['peak_activation_bytes'])}")
    lines.append(f"budget on {r['device']}: weights {_human(s['int8_weights_bytes'])} / {_human(b['weights_bytes'])}, "
                 f"activations {_human(r['memory']['peak_activation_bytes'])} / {_human(b['activation_bytes'])}: "
                 f"{'fits' if b['fits'] else 'DOES NOT FIT'}")
    p = r["patches"]
    if p["n_patch"]:
        lines.append(f"patch-based first stage: {p['n_patch']}x{p['n_patch']} patches over {p['split_nodes']} nodes, "
                     f"peak {_human(p['peak_activation_bytes'])} (layer by layer {_human(p['layer_by_layer_peak_bytes'])}), "
                     f"+{p['extra_macs_pct']}% MACs")
    lines += [f"output '{k}': max |float - int8| = {v:.4g} on {r['report_samples']} calibration samples"
              for k, v in r["output_max_abs_diff"].items()]
    if r["worst_layers"]:
        lines.append(f"worst layers by SQNR: {', '.join(r['worst_layers'])}")
    if "accuracy" in r:
        a = r["accuracy"]
        lines.append(f"held-out accuracy ({a['samples']} digits): float {a['float']:.2f}%, int8 {a['int8']:.2f}%")
    if args.plot:
        plot_layers(r, args.plot)
        lines.append(f"wrote {args.plot}")
    _emit(args, {**r, "plot": args.plot} if args.plot else r, "\n".join(lines))


def _read_inputs(path: str, bundle: Any) -> dict[str, np.ndarray]:
    from .llm_cli import is_llm
    from .npio import read_named_arrays
    if is_llm(bundle):  # no tensor inputs: text in, text out
        raise InputError("this is an LLM bundle: it takes text, not arrays (edgeq generate, chat, bench or "
                         "export --format gguf)")
    data = read_named_arrays(path, bundle.inputs, InputError, "input")
    for k, v in data.items():
        if v.dtype.kind != "f":
            raise InputError(f"input '{k}' has dtype {v.dtype}, expected float32")
    return data


def cmd_run(args: argparse.Namespace) -> None:
    from .api import load
    bundle = load(args.bundle, backend=args.backend)
    inputs = _read_inputs(args.input, bundle)
    if args.output and not args.output.endswith((".npy", ".npz")):
        raise InputError(f"output file '{args.output}' must be .npy or .npz")
    t0 = time.perf_counter()
    backend = bundle.executor().backend_name
    outputs = bundle.run(inputs)
    ms = (time.perf_counter() - t0) * 1e3
    data: dict[str, Any] = {"backend": backend, "latency_ms": ms}
    lines = [f"ran {args.bundle} on backend {backend} in {ms:.2f} ms (first run, including backend start-up)"]
    _emit(args, _outputs(args, outputs, data, lines), "\n".join(lines))


def _outputs(args: argparse.Namespace, outputs: dict[str, np.ndarray], data: dict[str, Any],
             lines: list[str]) -> dict[str, Any]:
    """Write ``outputs`` to ``--output`` (atomically) and describe them in ``data`` and ``lines``."""
    if args.output:
        from .bundle import write_atomic
        from .npio import encode_named_arrays
        write_atomic(args.output, [encode_named_arrays(args.output, outputs, InputError)])
    data.update(output_file=args.output, outputs={})
    for name, y in outputs.items():
        entry: dict[str, Any] = {"shape": list(y.shape)}
        if y.ndim == 2:
            entry["argmax"] = y.argmax(axis=1).tolist()
            shown = ", ".join(map(str, entry["argmax"][:20])) + (" ..." if len(entry["argmax"]) > 20 else "")
            lines.append(f"output '{name}' {y.shape}: argmax per sample: {shown}")
        else:
            lines.append(f"output '{name}' {y.shape}: min {y.min():.4g} max {y.max():.4g}")
        if y.size <= 4096:
            entry["values"] = y.tolist()
        data["outputs"][name] = entry
    if args.output:
        lines.append(f"wrote {args.output}")
    return data


def cmd_inspect(args: argparse.Namespace) -> None:
    from .api import load
    from .llm_cli import cmd_inspect as llm_inspect, is_llm
    bundle = load(args.bundle, backend="reference")
    if is_llm(bundle):
        return llm_inspect(args, bundle)
    s = bundle.summary()
    if args.plot:
        from .plots import plot_memory
        plot_memory(bundle.graph, bundle.plan, args.plot, f"{Path(args.bundle).name}: arena "
                    f"{s['memory']['peak_activation_bytes']} bytes ({s['memory']['plan_strategy']})")
        s["plot"] = args.plot
    lines = [f"{s['path']}: device {s['device']}, scheme {s['scheme']}, made by edgeq {s['producer']['version']} "
             f"from {s['source']['format']} {s['source']['sha256'][:12]}"]
    for kind in ("inputs", "outputs"):
        for t in s[kind]:
            lines.append(f"{kind[:-1]:<6} {t['name']}: {t['dtype']} {'x'.join(map(str, t['shape']))} "
                         f"scale {t['scale'][0]:.4g} zero point {t['zero_point'][0]}")
    lines.append("ops: " + ", ".join(f"{k} x{v}" for k, v in s["ops"].items()))
    for n in s["nodes"]:
        lines.append(f"  {n['op']:<16} {n['name']:<20} {', '.join(n['inputs'][:1])} -> {', '.join(n['outputs'])}")
    m = s["memory"]
    lines.append(f"weights {_human(m['weights_bytes'])}, peak activations {_human(m['peak_activation_bytes'])} "
                 f"({m['plan_strategy']}), {m['macs']} MACs, file {_human(m['file_bytes'])}")
    lines.append("arena by strategy: " + ", ".join(f"{k} {v}" for k, v in sorted(m["strategies"].items())))
    if "flash_estimate_bytes" in m:
        lines.append(f"MCU estimate: flash {_human(m['flash_estimate_bytes'])} (weights + program + kernels), RAM "
                     f"{_human(m['ram_estimate_bytes'])} (arena + {_human(m['stack_reserve_bytes'])} stack, of which "
                     f"{_human(m['scratch_bytes'])} kernel scratch); `edgeq sim` gives exact ELF sizes")
    if s["patches"]:
        p = s["patches"]
        lines.append(f"patch-based first stage: {p['n_patch']}x{p['n_patch']} over {p['split_nodes']} nodes, peak "
                     f"{_human(p['peak_activation_bytes'])} vs {_human(p['layer_by_layer_peak_bytes'])} layer by layer, "
                     f"+{p['extra_macs_pct']}% MACs")
    if args.plot:
        lines.append(f"wrote {args.plot}")
    _emit(args, s, "\n".join(lines))


def cmd_bench(args: argparse.Namespace) -> None:
    from .api import load
    from .llm_cli import cmd_bench as llm_bench, is_llm
    bundle = load(args.bundle, backend=args.backend)
    if is_llm(bundle):
        if args.per_node:
            raise InputError("--per-node times the nodes of op-graph bundles; an LLM bundle's bench reports "
                             "prefill and decode speed")
        return llm_bench(args, bundle)
    rng = np.random.default_rng(0)
    inputs = {}
    for name in bundle.inputs:
        t = bundle.graph.tensors[name]
        lo, hi = (-128 - t.zero_point[0]) * t.scale[0], (127 - t.zero_point[0]) * t.scale[0]
        inputs[name] = rng.uniform(lo, hi, size=(args.batch,) + t.shape[1:]).astype(np.float32)
    t0 = time.perf_counter()
    ex = bundle.executor()
    ex.set_threads(args.threads)
    ex.run(inputs)
    first = (time.perf_counter() - t0) * 1e3
    for _ in range(args.warmup):
        ex.run(inputs)
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        ex.run(inputs)
        times.append((time.perf_counter() - t) * 1e3)
    data = {"bundle": args.bundle, "backend": ex.backend_name, "threads": args.threads, "batch": args.batch,
            "runs": args.runs, "first_run_ms": first, "median_ms": statistics.median(times), "min_ms": min(times),
            "mean_ms": statistics.fmean(times), "max_ms": max(times)}
    tuned = ""
    if ex.node_threads is not None:  # C backend, threads > 1: chosen per node on the first run
        data["nodes_multithreaded"] = int(np.count_nonzero(ex.node_threads > 1))
        tuned = f"; {data['nodes_multithreaded']} of {len(ex.node_threads)} nodes run on {args.threads} threads"
    lines = [f"{args.bundle} on {ex.backend_name}, {args.threads} thread(s), batch {args.batch}: "
             f"median {data['median_ms']:.3f} ms, min {data['min_ms']:.3f} ms over {args.runs} runs; "
             f"first run (load + compile + thread tuning) {first:.1f} ms{tuned}"]
    if args.per_node:
        lines += _slowest_nodes(bundle.graph, ex.profile_nodes(inputs, runs=args.runs), args.per_node, data)
    _emit(args, data, "\n".join(lines))


def _slowest_nodes(graph: Any, seconds: np.ndarray, k: int, data: dict) -> list[str]:
    """The ``k`` slowest nodes (median per-node times of the C program loop) into ``data`` and as lines."""
    total = float(seconds.sum()) or 1.0
    order = np.argsort(-seconds, kind="stable")[:k]
    data["node_ms_total"] = total * 1e3
    data["slowest_nodes"] = [{"index": int(i), "name": graph.nodes[i].name, "op": graph.nodes[i].op,
                              "output_shape": list(graph.tensors[graph.nodes[i].outputs[0]].shape),
                              "ms": float(seconds[i]) * 1e3, "share": float(seconds[i]) / total} for i in order]
    lines = [f"per node (medians, sum {total * 1e3:.3f} ms), the {len(order)} slowest:"]
    lines += [f"  {n['ms']:8.3f} ms {100 * n['share']:5.1f}%  {n['op']:<14} {n['name']} "
              f"-> {'x'.join(map(str, n['output_shape']))}" for n in data["slowest_nodes"]]
    return lines


def _export_c(args: argparse.Namespace) -> None:
    from .export_c import DEFAULT_STACK_BYTES, export_c
    r = export_c(args.bundle, args.output, args.device, args.stack_bytes or DEFAULT_STACK_BYTES).to_dict()
    lines = [f"wrote {len(r['files'])} files to {r['directory']}: {', '.join(r['files'])}",
             f"arena {_human(r['arena_bytes'])} (static), constants {_human(r['pool_bytes'])} (const), "
             f"program {r['program_words']} words"]
    if r.get("device"):
        lines.append(f"firmware files for {r['device']}: link.ld, device.mk, edgeq_board.c/.h; stack reserve "
                     f"{_human(r['stack_bytes'])} (see apps/mcu_firmware/)")
    _emit(args, r, "\n".join(lines))


def _export_gguf(args: argparse.Namespace) -> None:
    from .llm_cli import cmd_export_gguf
    cmd_export_gguf(args)


# One entry per export format: name -> function(args) that writes the export and prints its report.
EXPORT_FORMATS = {"c": _export_c, "gguf": _export_gguf}


def cmd_export(args: argparse.Namespace) -> None:
    if args.format not in EXPORT_FORMATS:
        raise InputError(f"unknown export format '{args.format}'; choose one of {', '.join(EXPORT_FORMATS)}")
    EXPORT_FORMATS[args.format](args)


def cmd_sim(args: argparse.Namespace) -> None:
    from .api import load
    from .export_c import DEFAULT_STACK_BYTES, resolve_device
    from .mcu_sim import DEFAULT_TIMEOUT_S, simulate
    if args.output and not args.output.endswith((".npy", ".npz")):
        raise InputError(f"output file '{args.output}' must be .npy or .npz")
    bundle = load(args.bundle, backend="reference")
    inputs = _read_inputs(args.input, bundle)
    device = resolve_device(args.device)
    npu = _sim_npu(args, bundle, device, inputs)
    if npu is not None and args.no_qemu:
        data, lines = npu
        _emit(args, _outputs(args, data.pop("reference_outputs"), data, lines), "\n".join(lines))
        return
    if device.toolchain.emulator == "qemu-aarch64":
        _sim_linux(args, bundle, device, inputs, npu)
        return
    result = simulate(bundle._loaded, device, inputs, timeout=args.timeout or DEFAULT_TIMEOUT_S,
                      stack_bytes=args.stack_bytes or DEFAULT_STACK_BYTES, build_dir=args.build_dir, profile=args.profile)
    r = dict(result.report)
    f, ram, ins = r["flash"], r["ram"], r["instructions"]
    lines = [f"ran {args.bundle} on {r['device']} ({r['core']}) under {r['emulator']}: {r['samples']} sample(s), "
             f"{r['sim_wall_s']:.2f} s",
             f"ELF text {r['elf']['text']} B, data {r['elf']['data']} B, bss {r['elf']['bss']} B; "
             f"flash {_human(f['used_bytes'])} / {_human(f['budget_bytes'])}, "
             f"RAM {_human(ram['used_bytes'])} / {_human(ram['budget_bytes'])} "
             f"(arena {_human(ram['arena_bytes'])}, stack reserve {_human(ram['stack_reserve_bytes'])}, "
             f"used {_human(ram['stack_used_bytes'])})",
             f"{ins['median']:,} instructions per sample ({r['instructions_per_mac']} per MAC); "
             f"{r['est_ms_at_1_ipc']} ms at {r['clock_mhz']} MHz if 1 instruction per cycle"]
    if "nodes" in r:
        top = sorted(r["nodes"], key=lambda x: -x["instructions"])[:5]
        lines.append("most instructions: " + ", ".join(f"{x['name']} ({x['op']}) {x['instructions']:,}" for x in top))
    _emit(args, _outputs(args, result.outputs, r, lines), "\n".join(lines))


def _sim_npu(args: argparse.Namespace, bundle: Any, device: Any,
             inputs: dict[str, np.ndarray]) -> tuple[dict[str, Any], list[str]] | None:
    """The NPU report (default for profiles with an [npu] table, or asked for with --npu/--plot/--no-qemu):
    its JSON (with the reference outputs under "reference_outputs") and its lines; None when not wanted."""
    from .npu_sim import format_report, npu_device, plot_partitions, simulate_npu
    if not (device.npu or args.npu or args.plot or args.no_qemu):
        return None
    npu = npu_device(device)
    if args.plot:
        from .plots import check_target
        check_target(args.plot)
    report = simulate_npu(bundle._loaded, npu, inputs)
    lines = format_report(report, args.bundle)
    if args.plot:
        plot_partitions(report, args.plot)
        lines.append(f"wrote the partition map to {args.plot}")
    return {"npu": report.to_dict(), "reference_outputs": report.outputs}, lines


def _sim_linux(args: argparse.Namespace, bundle: Any, device: Any, inputs: dict[str, np.ndarray],
               npu: tuple[dict[str, Any], list[str]] | None = None) -> None:
    from .linux_sim import DEFAULT_TIMEOUT_S, simulate_linux
    if args.profile or args.stack_bytes:
        raise InputError(f"--profile and --stack-bytes apply to microcontroller profiles, not to {device.id}")
    result = simulate_linux(bundle._loaded, device, inputs, timeout=args.timeout or DEFAULT_TIMEOUT_S,
                            build_dir=args.build_dir)
    r = dict(result.report)
    lines = [f"ran {args.bundle} on {r['device']} ({r['core']}) under {r['emulator']}: {r['samples']} sample(s), "
             f"{r['sim_wall_s']:.2f} s",
             f"static executable {_human(r['executable_bytes'])}, arena {_human(r['arena_bytes'])}, "
             f"constants {_human(r['constants_bytes'])}; {r['macs_per_sample']:,} MACs per sample",
             f"{r['emulated_ms_per_sample']} ms per sample under emulation ({r['timing_note']})"]
    if npu is not None:  # the CPU build is checked against the same integer reference the NPU must match
        data, npu_lines = npu
        same = all(np.array_equal(result.outputs[k], v) for k, v in data["reference_outputs"].items())
        r["npu"] = data["npu"]
        r["cpu_build_matches_reference"] = same
        lines = npu_lines + lines + [f"CPU build outputs {'equal' if same else 'DIFFER FROM'} the integer reference"]
    _emit(args, _outputs(args, result.outputs, r, lines), "\n".join(lines))


def _parser() -> argparse.ArgumentParser:
    from . import finetune_cli, llm_cli
    from .export_c import DEFAULT_STACK_BYTES
    from .runtimes.executor import BACKENDS
    p = argparse.ArgumentParser(prog="edgeq", description="Trained model + target device -> verified on-device bundle.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(fn=fn)
        return sp

    add("devices", cmd_devices, "list the device profiles")
    c = add("convert", cmd_convert, "convert a model into a .edgeq bundle for a device")
    c.add_argument("model", nargs="?", help="ONNX model, fully-quantized int8 TFLite model (keeps its own scales: "
                                            "no --calib; see docs/tflite-import.md), or a llama-architecture GGUF "
                                            "LLM (default: the embedded digits sample CNN)")
    c.add_argument("--device", required=True, help="device profile id (see `edgeq devices`)")
    c.add_argument("-o", "--output", help="output bundle path (default: <model>.<device>.edgeq)")
    c.add_argument("--scheme", help="quantization scheme (default: the device's)")
    c.add_argument("--calib", help="calibration samples: .npy (one input), .npz keyed by input name, or a folder "
                                   "of images (see --preprocess)")
    c.add_argument("--preprocess", help="how calibration images become inputs, e.g. "
                                        "'resize=48x320,keep_ratio=1,mean=0.5,std=0.5,color=bgr' (keys: resize, "
                                        "keep_ratio, mean, std, scale, color, layout, pad)")
    c.add_argument("--calib-method", choices=["minmax", "percentile", "mse", "auto"],
                   help="range estimator (default: the device's); auto tries minmax, percentile and a hybrid and keeps "
                        "the one closest to the float model")
    c.add_argument("--input-shape", action="append", default=[], help="fix a dynamic input shape, e.g. x=1x3x224x224")
    c.add_argument("--report", help="also write the conversion report as JSON to this file")
    c.add_argument("--plot", metavar="FILE.png", help="draw the per-layer SQNR against the float model (int16 layers "
                                                      "in another colour, the worst named)")
    c.add_argument("--patch", default="auto",
                   help="patch-based inference of the first stage: auto (when needed to fit the device), off, or N (NxN)")
    c.add_argument("--mixed-precision", choices=["off", "auto"], default="off",
                   help="auto: promote the activations whose int8 noise costs most output SQNR to int16 (16x8 "
                        "layers), within --int16-budget")
    c.add_argument("--int16-budget", default="10%",
                   help="extra activation bytes mixed precision may spend: a share of the int8 activation bytes "
                        "(default 10%%) or bytes (64K, 1M)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    llm_cli.add_convert_args(c)
    r = add("run", cmd_run, "run a bundle on inputs")
    r.add_argument("bundle")
    r.add_argument("--input", required=True, help=".npy (one input) or .npz keyed by input name; float32")
    r.add_argument("-o", "--output", help="write dequantized outputs to .npy/.npz")
    r.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: c when a C compiler is available, else numba")
    i = add("inspect", cmd_inspect, "show a bundle's device, scheme, ops, tensors and memory")
    i.add_argument("bundle")
    i.add_argument("--plot", metavar="FILE.png", help="draw the arena timeline (tensors as boxes over time and offset)")
    b = add("bench", cmd_bench, "measure a bundle's latency")
    b.add_argument("bundle")
    b.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: c when a C compiler is available, else numba")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--runs", type=int, default=200)
    b.add_argument("--warmup", type=int, default=20)
    b.add_argument("--per-node", type=int, default=0, metavar="K",
                   help="also time every node (C backend) and list the K slowest")
    llm_cli.add_bench_args(b)
    e = add("export", cmd_export, "export a bundle: c (a C99 project for microcontrollers) or gguf (LLM bundles, for llama.cpp)")
    e.add_argument("bundle")
    e.add_argument("--format", default="c", help="export format: c (default) or gguf")
    e.add_argument("-o", "--output", required=True, help="output directory (c) or file (gguf)")
    e.add_argument("--device", help="also write firmware files (linker script, board support, device.mk) for this "
                                    "MCU profile id or profile .toml path")
    e.add_argument("--stack-bytes", type=int, help=f"stack reserve in the linker script (default {DEFAULT_STACK_BYTES})")
    s = add("sim", cmd_sim, "build a bundle's C for a device and run it under QEMU: qemu-system-arm for Cortex-M "
                            "profiles, qemu-aarch64 for AArch64 Linux profiles (rpi5); for NPU profiles "
                            "(android-npu) also the NPU partition report and latency estimate")
    s.add_argument("bundle")
    s.add_argument("--device", required=True, help="MCU, AArch64 Linux or NPU profile id (see `edgeq devices`) or a "
                                                   "profile .toml path")
    s.add_argument("--input", required=True, help=".npy (one input) or .npz keyed by input name; float32, batch first")
    s.add_argument("-o", "--output", help="write dequantized outputs to .npy/.npz")
    s.add_argument("--timeout", type=float, help="seconds before a run counts as hung (default 60 on MCUs, 120 on Linux)")
    s.add_argument("--stack-bytes", type=int, help=f"stack reserve in the linker script (default {DEFAULT_STACK_BYTES})")
    s.add_argument("--build-dir", help="keep the generated project, firmware and I/O files here")
    s.add_argument("--profile", action="store_true", help="run node by node and report each node's instructions")
    s.add_argument("--npu", action="store_true", help="add the NPU report (partitions, ORT verdict, latency estimate; "
                                                      "on by default for profiles with an [npu] table; docs/npu.md)")
    s.add_argument("--no-qemu", action="store_true", help="NPU report only: skip building and emulating the CPU code")
    s.add_argument("--plot", metavar="FILE.png", help="draw the NPU partition map (nodes colored NPU/CPU, time per "
                                                      "partition)")
    llm_cli.add_commands(add)
    finetune_cli.add_commands(add)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgeq`` command."""
    args = _parser().parse_args(argv)
    try:
        args.fn(args)
    except EdgeqError as e:
        print(f"edgeq: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgeq: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `edgeq inspect --json | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
