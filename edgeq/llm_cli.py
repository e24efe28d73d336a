"""The LLM commands of the ``edgeq`` CLI: convert (GGUF), generate, chat, bench, perplexity, inspect.

``edgeq/cli.py`` owns the parser and dispatches here for ``.gguf`` models and ``kind: llm`` bundles.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import InputError

EVAL_CTX, EVAL_WINDOWS = 256, 2  # the perplexity check `convert` runs for risky schemes


def is_llm(bundle: Any) -> bool:
    """Whether a loaded bundle is an LLM bundle."""
    return getattr(bundle, "manifest", {}).get("kind") == "llm"


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    from .cli import _emit as emit
    emit(args, data, text)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def builtin_text() -> str:
    """Evaluation text shipped with Python (the peer script's corpus): pydoc_data.topics, sorted, 60k chars."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics))[:60000]


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"cannot read text file '{path}': {e.strerror}") from None


def _load(path: str, backend: str = "auto") -> Any:
    # Sleeping (not spinning) OpenMP waits: with busy-wait barriers, one core taken by another process
    # stalls every layer (measured 1-5 tokens/s instead of 120 at 2 threads on a loaded 2-core machine).
    # Only effective before the OpenMP runtime starts; an explicit OMP_WAIT_POLICY wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    from .api import load
    b = load(path, backend=backend)
    if not is_llm(b):
        raise InputError(f"'{path}' is not an LLM bundle (convert a .gguf model to get one)")
    return b


# ---- convert ----------------------------------------------------------------------------------

def add_convert_args(p: argparse.ArgumentParser) -> None:
    """Options that only apply to GGUF models."""
    p.add_argument("--eval-text", help="GGUF models: text file for the perplexity check (default: Python's "
                                        "pydoc topics)")
    p.add_argument("--eval", choices=["auto", "always", "never"], default="auto",
                   help="GGUF models: measure perplexity after converting (auto: for ternary/ptqtp/lut2)")
    p.add_argument("--quantizer", choices=["gptq", "imatrix", "plain"], default="gptq",
                   help="GGUF models: gptq = error compensation with calibration statistics (default), imatrix = "
                        "importance-weighted fits only, plain = no calibration")
    p.add_argument("--calib-text", help="GGUF models: UTF-8 calibration text (default: docstrings of standard-library "
                                         "modules, disjoint from the default evaluation text)")
    p.add_argument("--calib-tokens", type=int, help="GGUF models: calibration tokens used (default 8192, "
                                                    "converters.llm_calib.DEFAULT_TOKENS)")


def cmd_convert_gguf(args: argparse.Namespace) -> None:
    """``edgeq convert MODEL.gguf --device D --scheme S``."""
    from .converters.llm_convert import RISKY, convert_gguf
    res = convert_gguf(args.model, device=args.device, scheme=args.scheme, output=args.output,
                       progress=not args.json and not args.quiet, quantizer=args.quantizer,
                       calib_text=_read_text(args.calib_text) if args.calib_text else None,
                       **({"calib_tokens": args.calib_tokens} if args.calib_tokens else {}))
    r = res.report
    q = r["quantizer"]
    lines = [f"wrote {r['output']} ({_mb(r['bundle_bytes'])}) for {r['device']}: layers {r['scheme']} "
             f"({r['layer_bits_per_weight']:.2f} bits/weight; "
             + ", ".join(f"{k} x{v}" for k, v in r["formats"].items()) + f"), embedding and head {r['head_format']}; "
             f"all weights {r['bits_per_weight']:.2f} bits/weight",
             f"quantizer {q['method']}" + (f", calibrated on {q['tokens']} tokens ({q['source']})" if "tokens" in q else "")
             + f", {q['seconds']:.0f} s",
             f"weights read per token: {_mb(r['bytes_per_token'])}"
             + (f" -> predicted decode on {r['device']}: {r['predicted_decode_tokens_per_s']:.0f} tokens/s "
                f"(memory bandwidth / bytes per token)" if r["predicted_decode_tokens_per_s"] else ""),
             f"mean relative weight error {r['mean_relative_weight_error']:.4f}; worst: "
             + ", ".join(f"{k} {v:.3f}" for k, v in r["worst_tensors"].items())]
    if args.eval == "always" or (args.eval == "auto" and r["scheme"] in RISKY):
        text = _read_text(args.eval_text) if args.eval_text else builtin_text()
        ppl = _perplexity(str(res.path), text, EVAL_CTX, EVAL_WINDOWS, "auto", 2)
        r["perplexity"] = ppl
        lines.append(f"perplexity {ppl['perplexity']:.2f} ({ppl['tokens_scored']} tokens, ctx {ppl['ctx']})")
    if r["warning"]:
        msg = f"WARNING: {r['warning']}" + (f" (perplexity {r['perplexity']['perplexity']:.4g})"
                                            if "perplexity" in r else "")
        print("!" * 80 + f"\n{msg}\n" + "!" * 80, file=sys.stderr)
        lines.append(msg)
    _emit(args, r, "\n".join(lines))


# ---- generate / chat ----------------------------------------------------------------------------

def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register generate, chat and perplexity (``add`` is cli._parser's helper)."""
    from .llm import BACKENDS

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("bundle")
        p.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: c when a compiler exists, else numba")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--ctx", type=int, help="KV cache positions (default: min(model context, 2048))")

    def sampling(p: argparse.ArgumentParser) -> None:
        p.add_argument("--max-tokens", type=int, default=128)
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        p.add_argument("--top-p", type=float, default=0.95)
        p.add_argument("--seed", type=int, default=0)

    g = add("generate", cmd_generate, "continue a prompt with an LLM bundle")
    common(g)
    sampling(g)
    g.add_argument("--prompt", required=True)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    c = add("chat", cmd_chat, "chat with an LLM bundle (the GGUF's chat template); one message per input line")
    common(c)
    sampling(c)
    c.add_argument("--system", help="system message")
    p = add("perplexity", cmd_perplexity, "perplexity of an LLM bundle on a text file")
    common(p)
    p.add_argument("--text", required=True, help="UTF-8 text file")
    p.set_defaults(ctx=512)
    p.add_argument("--windows", type=int, default=4, help="at most this many ctx-token windows")


def _check_sampling(args: argparse.Namespace) -> None:
    if args.max_tokens < 1:
        raise InputError("--max-tokens must be at least 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise InputError("--temperature must be >= 0 and --top-p in (0, 1]")
    if args.threads < 1:
        raise InputError("--threads must be at least 1")


def cmd_generate(args: argparse.Namespace) -> None:
    """``edgeq generate BUNDLE --prompt ...``: streams text (or prints JSON at the end)."""
    from .llm_text import Tokenizer
    _check_sampling(args)
    bundle = _load(args.bundle, args.backend)
    tok = Tokenizer(bundle)
    text = tok.chat_prompt([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    ids = tok.encode(text)
    session = bundle.session(ctx=args.ctx, threads=args.threads)
    out, pieces = [], tok.piece_decoder()
    t0 = time.perf_counter()
    t_first = None
    for t in session.generate(ids, args.max_tokens, args.temperature, args.top_p, args.seed, tok.stop_tokens()):
        if t_first is None:
            t_first = time.perf_counter()
        out.append(t)
        piece = pieces.add(t) if t not in tok.stop_tokens() else ""
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    t1 = time.perf_counter()
    decode_s = t1 - (t_first or t1)
    data = {"text": tok.decode([t for t in out if t not in tok.stop_tokens()]), "prompt_tokens": len(ids),
            "generated_tokens": len(out), "tokens": out, "backend": session.backend,
            "prefill_tokens_per_s": len(ids) / max((t_first or t1) - t0, 1e-9),
            "decode_tokens_per_s": (len(out) - 1) / decode_s if len(out) > 1 and decode_s > 0 else None}
    if args.json:
        _emit(args, data, "")
    else:
        print()


def cmd_chat(args: argparse.Namespace) -> None:
    """``edgeq chat BUNDLE``: read user messages line by line from stdin, answer each."""
    import json
    from .llm_text import Tokenizer
    _check_sampling(args)
    bundle = _load(args.bundle, args.backend)
    tok = Tokenizer(bundle)
    session = bundle.session(ctx=args.ctx, threads=args.threads)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    cached: list[int] = []  # tokens whose keys/values are in the session's cache
    stops = tok.stop_tokens()
    interactive = sys.stdin.isatty() and not args.json
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        ids = tok.encode(tok.chat_prompt(messages))
        if len(ids) + args.max_tokens > session.ctx:
            raise InputError(f"the conversation ({len(ids)} tokens) no longer fits the context of {session.ctx}; "
                             f"restart with a larger --ctx")
        # Reuse the longest cached prefix: only the new part of the conversation is run.
        keep = 0
        while keep < min(len(cached), len(ids) - 1) and cached[keep] == ids[keep]:
            keep += 1
        session.pos = keep
        reply: list[int] = []
        pieces = tok.piece_decoder()
        for t in session.generate(ids[keep:], args.max_tokens, args.temperature, args.top_p, args.seed, stops):
            reply.append(t)
            if t not in stops and not args.json:
                sys.stdout.write(pieces.add(t))
                sys.stdout.flush()
        cached = (ids + reply)[:session.pos]  # the last reply token was sampled but never run
        text = tok.decode([t for t in reply if t not in stops])
        messages.append({"role": "assistant", "content": text})
        if args.json:
            print(json.dumps({"role": "assistant", "content": text, "tokens": len(reply)}), flush=True)
        else:
            print(flush=True)


# ---- export -----------------------------------------------------------------------------------------

def cmd_export_gguf(args: argparse.Namespace) -> None:
    """``edgeq export LLM_BUNDLE --format gguf -o OUT.gguf``."""
    from .converters.gguf_export import export_gguf
    if not args.output.lower().endswith(".gguf"):
        raise InputError(f"output file '{args.output}' must end in .gguf")
    r = export_gguf(_load(args.bundle, "reference"), args.output, progress=not args.json)
    _emit(args, r, f"wrote {r['output']} ({_mb(r['bytes'])}): "
                   + ", ".join(f"{k} x{v}" for k, v in r["tensor_types"].items()))


# ---- perplexity / bench / inspect ---------------------------------------------------------------

def _perplexity(path: str, text: str, ctx: int, windows: int, backend: str, threads: int) -> dict[str, Any]:
    from .llm_text import Tokenizer
    bundle = _load(path, backend)
    ids = Tokenizer(bundle).encode(text, add_bos=False)
    session = bundle.session(ctx=ctx, threads=threads)
    t = time.perf_counter()
    r = session.perplexity(ids, ctx, windows)
    r.update(backend=session.backend, seconds=round(time.perf_counter() - t, 2))
    return r


def cmd_perplexity(args: argparse.Namespace) -> None:
    """``edgeq perplexity BUNDLE --text FILE``: llama.cpp's peer-script windowing (second half scored)."""
    if args.windows < 1:
        raise InputError("--windows must be at least 1")
    r = _perplexity(args.bundle, _read_text(args.text), args.ctx, args.windows, args.backend, args.threads)
    _emit(args, r, f"perplexity {r['perplexity']:.3f} over {r['tokens_scored']} tokens ({r['windows']} windows of "
                   f"{r['ctx']}, backend {r['backend']}, {r['seconds']} s)")


def add_bench_args(p: argparse.ArgumentParser) -> None:
    """LLM options of ``edgeq bench``."""
    p.add_argument("--prompt-tokens", type=int, default=128, help="LLM bundles: prefill length")
    p.add_argument("--decode-tokens", type=int, default=64, help="LLM bundles: tokens decoded per run")
    p.add_argument("--repeats", type=int, default=3, help="LLM bundles: runs (medians reported)")


def bench(bundle: Any, threads: int, prompt_tokens: int, decode_tokens: int, repeats: int,
          backend: str | None = None) -> dict[str, Any]:
    """Prefill and decode speed (medians over ``repeats``), bytes per token and the bandwidth fraction."""
    from .llm import copy_bandwidth
    if min(threads, prompt_tokens, decode_tokens, repeats) < 1:
        raise InputError("--threads, --prompt-tokens, --decode-tokens and --repeats must be at least 1")
    session = bundle.session(backend=backend, ctx=prompt_tokens + decode_tokens, threads=threads,
                             max_batch=min(prompt_tokens, 64))
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, bundle.config.vocab, size=prompt_tokens)
    prefill, decode = [], []
    for _ in range(repeats):
        session.reset()
        t = time.perf_counter()
        logits = session.feed(prompt)
        prefill.append(prompt_tokens / (time.perf_counter() - t))
        tok = int(np.argmax(logits))
        t = time.perf_counter()
        for _ in range(decode_tokens):
            tok = int(np.argmax(session.feed([tok])))
        decode.append(decode_tokens / (time.perf_counter() - t))
    bw = copy_bandwidth()
    bpt = bundle.bytes_per_token()
    dec = statistics.median(decode)
    simd = session.decoder.simd() if hasattr(session.decoder, "simd") else None
    return {"bundle": str(bundle.path), "backend": session.backend, "simd": simd, "threads": threads,
            "scheme": bundle.scheme, "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens,
            "repeats": repeats, "prefill_tokens_per_s": statistics.median(prefill), "decode_tokens_per_s": dec,
            "bytes_per_token": bpt, "measured_copy_bandwidth_bytes_per_s": bw,
            "bandwidth_limit_tokens_per_s": bw / bpt, "bandwidth_fraction": dec * bpt / bw}


def cmd_bench(args: argparse.Namespace, bundle: Any) -> None:
    """``edgeq bench LLM_BUNDLE``."""
    r = bench(bundle, args.threads, args.prompt_tokens, args.decode_tokens, args.repeats, args.backend)
    _emit(args, r, f"{r['bundle']} ({r['scheme']}) on {r['backend']}/{r['simd']}, {r['threads']} thread(s): "
                   f"prefill {r['prefill_tokens_per_s']:.1f} tokens/s ({r['prompt_tokens']} tokens), decode "
                   f"{r['decode_tokens_per_s']:.1f} tokens/s; {_mb(r['bytes_per_token'])} of weights per token = "
                   f"{r['bandwidth_fraction'] * 100:.0f}% of the measured copy bandwidth "
                   f"({r['measured_copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s)")


def cmd_inspect(args: argparse.Namespace, bundle: Any) -> None:
    """``edgeq inspect LLM_BUNDLE``."""
    s = bundle.summary()
    c = s["config"]
    lines = [f"{s['path']}: LLM for {s['device']}, scheme {s['scheme']}, made by edgeq {s['producer']['version']} "
             f"from {s['source']['name']} ({s['source']['format']} {s['source']['sha256'][:12]})",
             f"llama: {c['n_layers']} layers, width {c['dim']}, heads {c['n_heads']}/{c['n_kv_heads']} (q/kv), "
             f"ffn {c['ffn_dim']}, vocab {c['vocab']}, context {c['ctx']}",
             "matrix formats: " + ", ".join(f"{k} x{v}" for k, v in s["formats"].items()),
             f"weights {_mb(s['weights_bytes'])}, read per token {_mb(s['bytes_per_token'])}, "
             f"file {_mb(s['memory']['file_bytes'])}"]
    if s["predicted_decode_tokens_per_s"]:
        lines.append(f"predicted decode on {s['device']}: {s['predicted_decode_tokens_per_s']:.0f} tokens/s "
                     f"(memory bandwidth / bytes per token)")
    if s["report"].get("warning"):
        lines.append(f"WARNING: {s['report']['warning']}")
    _emit(args, s, "\n".join(lines))


__all__ = ["add_bench_args", "add_commands", "add_convert_args", "bench", "cmd_convert_gguf",
           "is_llm"]
