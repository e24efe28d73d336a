"""GGUF -> LLM bundle -> generate / chat / perplexity / bench / inspect / export, through the CLI, plus bad
input (other architectures, truncated files, wrong shapes, damaged bundles)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeq
from edgeq.bundle import encode_container, read_container, write_atomic
from edgeq.errors import BundleError, ModelError
from edgeq.converters.llm_quantize import quantize_matrix
from edgeq.runtimes import llm_formats
from llm_util import smollm2_path, tiny_config, write_tiny_gguf


def edgeq_cli(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeq.cli", *args], capture_output=True, text=True, cwd=cwd,
                          input=stdin, timeout=600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A random 2-layer llama with SmolLM2's real tokenizer and chat template."""
    d = tmp_path_factory.mktemp("llm")
    return write_tiny_gguf(d / "tiny.gguf", tiny_config(dim=64, ffn_dim=128, ctx=256), tokenizer_from=smollm2_path())


@pytest.fixture(scope="module")
def tiny_int4(tiny) -> Path:
    out = tiny.parent / "tiny.int4.edgeq"
    r = edgeq_cli("convert", str(tiny), "--device", "rpi5", "--scheme", "int4", "-o", str(out), "--json",
                  cwd=tiny.parent)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["scheme"] == "int4" and rep["layer_bits_per_weight"] == 4.5
    # rpi5's predicted decode speed is its bandwidth over the bundle's bytes per token
    assert rep["predicted_decode_tokens_per_s"] == round(10e9 / rep["bytes_per_token"], 1)
    return out


def test_convert_every_scheme_and_backends_agree(tiny, tmp_path):
    from edgeq.converters.llm_convert import convert_gguf
    toks = [1, 200, 3000, 45000, 7]
    for scheme in ("int8", "int4", "ternary", "ptqtp", "lut2", "lut3"):
        res = convert_gguf(tiny, "rpi5", scheme, tmp_path / f"{scheme}.edgeq", progress=False)
        b = edgeq.load(res.path)
        assert b.scheme == scheme and b.config.vocab == 49152
        from edgeq.converters.llm_convert import tensor_format
        assert all(m.fmt == tensor_format(k, scheme) for k, m in b.weights.mats.items())
        assert b.weights.mats["blk.1.ffn_up"].fmt == scheme
        assert (res.report["warning"] is not None) == (scheme in ("ternary", "ptqtp", "lut2"))
        want = b.session("reference", ctx=8).feed(toks, all_logits=True)
        for backend in ("c", "numba"):
            got = b.session(backend, ctx=8).feed(toks, all_logits=True)
            assert np.array_equal(got, want), (scheme, backend)


def test_import_dequantizes_quantized_sources(tmp_path):
    """A Q8_0 source converts to int8 weights within int8 rounding of gguf's own dequantization."""
    import gguf
    from edgeq.converters.gguf_import import GGUFModel
    path = write_tiny_gguf(tmp_path / "q8.gguf", qtype="Q8_0")
    g = GGUFModel(path)
    t = g.tensors["blk.1.ffn_down"]
    want = gguf.quants.dequantize(t.data, t.tensor_type)
    assert np.array_equal(g.load("blk.1.ffn_down"), want) and want.shape == (64, 128)
    w = llm_formats.unpack(quantize_matrix(want, "int8"), "int8")
    assert np.abs(w - want).max() <= np.abs(want).max(1).max() / 127


@pytest.mark.parametrize("damage,needle", [
    ({"arch": "gpt2"}, "architecture 'gpt2'"),
    ({"bad_shape": "blk.1.ffn_up"}, "blk.1.ffn_up.weight"),
    ({"drop": "blk.0.attn_k"}, "blk.0.attn_k.weight is missing"),
    ({"truncate": True}, "truncated"),
])
def test_bad_gguf_one_line_error_no_output(tmp_path, damage, needle):
    path = tmp_path / "bad.gguf"
    truncate = damage.pop("truncate", False)
    write_tiny_gguf(path, **damage)
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "bad.edgeq"
    r = edgeq_cli("convert", str(path), "--device", "rpi5", "--scheme", "int4", "-o", str(out), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeq: error:") and needle in lines[0], r.stderr
    assert not out.exists() and not list(tmp_path.glob(".bad.edgeq*"))


def test_damaged_llm_bundles_are_rejected(tiny_int4, tmp_path):
    c = read_container(tiny_int4)
    # a flipped byte inside a weight blob
    raw = bytearray(tiny_int4.read_bytes())
    off = c.pool.ctypes.data - np.frombuffer(c.pool.base, np.uint8).ctypes.data  # data section offset
    raw[off + c.offsets["blk.0.ffn_up.q"] + 5] ^= 1
    bad = tmp_path / "flip.edgeq"
    bad.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="blk.0.ffn_up.q.*checksum"):
        edgeq.load(bad)
    # a manifest whose tensor table disagrees with the config
    manifest = {k: v for k, v in c.manifest.items() if k not in ("blobs", "format_version")}
    manifest["tensors"] = dict(manifest["tensors"], **{"blk.1.attn_q": {"format": "int4", "rows": 32, "cols": 64}})
    write_atomic(tmp_path / "shape.edgeq", encode_container(manifest, dict(c.blobs)))
    with pytest.raises(BundleError, match="blk.1.attn_q"):
        edgeq.load(tmp_path / "shape.edgeq")
    # a blob with the wrong shape for its format
    blobs = dict(c.blobs)
    blobs["blk.0.attn_v.d"] = blobs["blk.0.attn_v.d"][:, :1].copy()
    write_atomic(tmp_path / "blob.edgeq", encode_container(manifest | {"tensors": c.manifest["tensors"]}, blobs))
    with pytest.raises(BundleError, match="blk.0.attn_v.d"):
        edgeq.load(tmp_path / "blob.edgeq")
    # a graph-bundle reader refuses an LLM bundle with a clear message
    from edgeq.bundle import read_bundle
    with pytest.raises(BundleError, match="'llm' model"):
        read_bundle(tiny_int4)


def test_generate_is_deterministic_and_backend_independent(tiny_int4):
    outs = []
    for backend in ("c", "reference", "c"):
        r = edgeq_cli("generate", str(tiny_int4), "--prompt", "Hello there", "--max-tokens", "6", "--json",
                      "--backend", backend, cwd=tiny_int4.parent)
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout))
    assert outs[0]["tokens"] == outs[1]["tokens"] == outs[2]["tokens"] and len(outs[0]["tokens"]) >= 1
    assert outs[0]["prompt_tokens"] == 2 and isinstance(outs[0]["text"], str)
    sampled = [json.loads(edgeq_cli("generate", str(tiny_int4), "--prompt", "Hi", "--max-tokens", "8", "--json",
                                    "--temperature", "1.5", "--seed", str(s), cwd=tiny_int4.parent).stdout)["tokens"]
               for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]


def test_chat_perplexity_bench_inspect_json(tiny_int4, tmp_path):
    r = edgeq_cli("chat", str(tiny_int4), "--max-tokens", "4", "--json", cwd=tmp_path, stdin="Hi!\nAnd again?\n")
    assert r.returncode == 0, r.stderr
    replies = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(replies) == 2 and all(x["role"] == "assistant" for x in replies)
    text = tmp_path / "t.txt"
    from edgeq.llm_cli import builtin_text
    text.write_text(builtin_text()[:6000])
    r = edgeq_cli("perplexity", str(tiny_int4), "--text", str(text), "--ctx", "64", "--windows", "3", "--json",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["windows"] == 3 and p["tokens_scored"] == 3 * 32 and 1 < p["perplexity"] < math.inf
    r = edgeq_cli("bench", str(tiny_int4), "--threads", "1", "--prompt-tokens", "16", "--decode-tokens", "4",
                  "--repeats", "1", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)
    assert b["prefill_tokens_per_s"] > 0 and b["decode_tokens_per_s"] > 0 and 0 < b["bandwidth_fraction"]
    assert b["bytes_per_token"] == edgeq.load(tiny_int4).bytes_per_token()
    r = edgeq_cli("inspect", str(tiny_int4), "--json", cwd=tmp_path)
    s = json.loads(r.stdout)
    assert s["kind"] == "llm" and s["formats"] == {"int4": 14, "int8": 1}
    assert s["predicted_decode_tokens_per_s"] == pytest.approx(10e9 / s["bytes_per_token"])
    r = edgeq_cli("perplexity", str(tiny_int4), "--text", str(tmp_path / "missing.txt"), cwd=tmp_path)
    assert r.returncode == 2 and "missing.txt" in r.stderr


def test_export_gguf_runs_in_llama_cpp_with_the_same_perplexity(tiny_int4, tmp_path):
    import gguf
    from edgeq.llm_cli import builtin_text
    from edgeq.llm_text import Tokenizer
    out = tmp_path / "tiny.gguf"
    r = edgeq_cli("export", str(tiny_int4), "--format", "gguf", "-o", str(out), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tensor_types"] == {"Q4_0": 14, "Q8_0": 1}
    b = edgeq.load(tiny_int4)
    reader = gguf.GGUFReader(out)
    t = next(t for t in reader.tensors if t.name == "blk.1.ffn_gate.weight")
    m = b.weights.mats["blk.1.ffn_gate"]  # int4 -> Q4_0 is lossless
    assert np.array_equal(gguf.quants.dequantize(t.data, t.tensor_type), llm_formats.unpack(m.arrays, "int4"))
    ctx = 128
    ids = Tokenizer(b).encode(builtin_text(), add_bos=False)
    ours = b.session("c", ctx=ctx).perplexity(ids, ctx, 2)["perplexity"]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_llm import llama_ppl  # the peer's perplexity, measured as the benchmark measures it
    theirs = llama_ppl(str(out), ids, ctx, windows=2)
    assert abs(ours / theirs - 1) < 0.02, (ours, theirs)


def test_runtime_side_imports_no_converter_or_text_stack(tiny_int4):
    code = ("import sys, edgeq; b = edgeq.load(sys.argv[1]); s = b.session('c', ctx=8); s.feed([1, 2, 3]); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('onnx', 'gguf', 'llama_cpp') "
            "or m.startswith('edgeq.converters') or m == 'edgeq.llm_text']; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code, str(tiny_int4)], capture_output=True, text=True,
                       cwd=tiny_int4.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def test_smollm2_int4_answers_coherently(tmp_path):
    """The real model converted to int4 answers a factual question (greedy, chat template)."""
    out = tmp_path / "smol.edgeq"
    r = edgeq_cli("convert", smollm2_path(), "--device", "rpi5", "--scheme", "int4", "-o", str(out), "-q",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = edgeq_cli("generate", str(out), "--prompt", "What is the capital of France?", "--chat", "--max-tokens", "16",
                  "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Paris" in json.loads(r.stdout)["text"]


def test_model_errors_are_edgeq_errors():
    from edgeq.converters.gguf_import import GGUFModel
    with pytest.raises(ModelError, match="does not exist"):
        GGUFModel("/nonexistent.gguf")


def test_array_commands_refuse_llm_bundles(tiny_int4, tmp_path):
    """run / sim take arrays and bench --per-node times graph nodes: on an LLM bundle, one line and status 2."""
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    for args in (["run", str(tiny_int4), "--input", str(tmp_path / "x.npy")],
                 ["sim", str(tiny_int4), "--device", "rpi5", "--input", str(tmp_path / "x.npy")],
                 ["bench", str(tiny_int4), "--per-node", "3"]):
        r = edgeq_cli(*args, cwd=tmp_path)
        assert r.returncode == 2 and "LLM bundle" in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
