"""Perplexity and bits per weight of edgeq's LLM schemes and llama.cpp's types on SmolLM2-135M (no speed).

edgeq side: `edgeq convert` of the Q4_1 source per scheme (``--quantizer``, default gptq), then
`edgeq perplexity` (4 windows of 512 tokens of pydoc_data.topics, second halves scored). llama.cpp side:
its own quantizer from the same file (bench_llm.llama_file) and the peer script's perplexity
(bench_llm.llama_ppl). Bits per weight are counted, not quoted: edgeq = bytes of the packed arrays / weights
(from the bundle's report); llama.cpp = bytes of each tensor in the GGUF (its type's block size) / elements,
read with the gguf package, with the type of every layer matrix listed (its 2/3-bit and ternary types
need rows that are multiples of 256, so most SmolLM2 matrices fall back to other types).

Run: python benchmarks/llm_quality.py [--schemes ...] [--types ...] [--quantizer gptq] [--calib-tokens N]
     [--mix '{"ffn_down": "lut3", "0.ffn_up": "int4"}'] [--out DIR] [--json F]
(``--mix`` overrides the schemes' recipes, converters/llm_convert.py ``tensor_format``: to try recipes.)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_llm import corpus, llama_file, llama_ppl, source  # noqa: E402


def llama_bpw(path: str) -> dict:
    """Layer-matrix and all-weight bits per weight of a GGUF and the types of its layer matrices."""
    r = gguf.GGUFReader(path)
    layer_bytes = layer_n = all_bytes = all_n = 0
    types: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for t in r.tensors:
        if len(t.shape) < 2:
            continue  # norms: float32 vectors on both sides, not counted as weights
        all_bytes, all_n = all_bytes + int(t.n_bytes), all_n + int(t.n_elements)
        if t.name.startswith("blk."):
            layer_bytes, layer_n = layer_bytes + int(t.n_bytes), layer_n + int(t.n_elements)
            types[t.name.split(".")[2]][t.tensor_type.name] += 1
    return {"file_bytes": os.path.getsize(path), "layer_bits_per_weight": 8 * layer_bytes / layer_n,
            "bits_per_weight": 8 * all_bytes / all_n, "layer_types": {k: dict(v) for k, v in types.items()}}


def edgeq_side(scheme: str, out: str, quantizer: str, text: str, calib_tokens: int, mix: dict | None) -> dict:
    from edgeq.converters.llm_calib import DEFAULT_TOKENS
    from edgeq.converters.llm_convert import convert_gguf
    dst = os.path.join(out, f"{scheme}.{quantizer}.edgeq")
    t = time.perf_counter()
    conv = convert_gguf(source(), "rpi5", scheme, dst, progress=False, quantizer=quantizer,
                        calib_tokens=calib_tokens or DEFAULT_TOKENS, mix=mix).report
    seconds = time.perf_counter() - t
    ppl = json.loads(subprocess.run([sys.executable, "-m", "edgeq.cli", "perplexity", dst, "--text", text, "--json"],
                                    check=True, capture_output=True, text=True).stdout)
    return {"perplexity": ppl["perplexity"], "layer_bits_per_weight": conv["layer_bits_per_weight"],
            "bits_per_weight": conv["bits_per_weight"], "formats": conv["formats"], "convert_seconds": round(seconds, 1),
            "file_bytes": os.path.getsize(dst)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", nargs="*", default=["int8", "int4", "ptqtp", "lut3", "lut2", "ternary"])
    ap.add_argument("--types", nargs="*", default=["Q8_0", "Q4_0", "Q3_K_M", "Q2_K", "TQ2_0", "TQ1_0"])
    ap.add_argument("--quantizer", default="gptq", choices=["gptq", "imatrix", "plain"])
    ap.add_argument("--calib-tokens", type=int, default=None, help="default: the converter's")
    ap.add_argument("--mix", type=json.loads, default=None, help="JSON recipe overrides, e.g. '{\"ffn_down\": \"lut3\"}'")
    ap.add_argument("--out", default="/tmp/edgeq_llm_quality")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    text = os.path.join(args.out, "pydoc_topics.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.write(corpus())
    res: dict[str, dict] = {}
    if args.types:
        from edgeq.llm_text import Tokenizer
        import edgeq
        from edgeq.converters.llm_convert import convert_gguf
        tok_bundle = os.path.join(args.out, "tokenizer.int8.edgeq")
        if not os.path.exists(tok_bundle):
            convert_gguf(source(), "rpi5", "int8", tok_bundle, progress=False)
        ids = Tokenizer(edgeq.load(tok_bundle)).encode(corpus(), add_bos=False)
        for t in args.types:
            path = llama_file(t, args.out)
            res[f"llama.cpp {t}"] = {"perplexity": llama_ppl(path, ids), **llama_bpw(path)}
            print(t, json.dumps(res[f"llama.cpp {t}"]), flush=True)
    for s in args.schemes:
        res[f"edgeq {s}"] = edgeq_side(s, args.out, args.quantizer, text, args.calib_tokens, args.mix)
        print(s, json.dumps(res[f"edgeq {s}"]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    print("| engine / scheme | perplexity | layer bits/weight | all-weight bits/weight | layer formats |")
    print("|---|---|---|---|---|")
    for k, v in res.items():
        fm = v.get("formats") or {m: "/".join(f"{t} x{n}" for t, n in c.items()) for m, c in v["layer_types"].items()}
        print(f"| {k} | {v['perplexity']:.2f} | {v['layer_bits_per_weight']:.3f} | {v['bits_per_weight']:.3f} | "
              + ", ".join(f"{a}: {b}" for a, b in fm.items()) + " |")


if __name__ == "__main__":
    main()
