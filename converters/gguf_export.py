"""LLM bundle -> GGUF that llama.cpp runs (``edgeq export BUNDLE --format gguf -o OUT.gguf``).

Types: ``int4`` matrices become Q4_0 byte for byte (edgeq's int4 layout *is* Q4_0's: fp16 scale, byte j
holding elements j and j + 16 as q + 8). Ternary matrices become TQ2_0 (or TQ1_0) where the row length
is a multiple of 256, which llama.cpp requires; other rows, the int8 embedding/head and the formats
llama.cpp lacks (ptqtp, lut2, lut3) are written as Q8_0 of the dequantized weights (an almost lossless
copy: a 32-block scale of |w|max / 127 per block). Metadata (tokenizer, chat template) comes from the
bundle's vocab-only GGUF; the llama.* keys from the bundle's config.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.progress import Progress
from edgeq.runtimes import llm_formats
from edgeq.runtimes.llm_reference import Matrix
from .gguf_import import copy_field, require_gguf

TERNARY_TYPES = ("TQ2_0", "TQ1_0")


def _q4_0_blocks(m: Matrix) -> np.ndarray:
    """edgeq int4 arrays as Q4_0 blocks {fp16 d; u8 qs[16]} per 32 weights: [rows, cols / 32 * 18] bytes."""
    ng = m.cols // 32
    d = np.ascontiguousarray(m.arrays["d"]).view(np.uint8).reshape(m.rows, ng, 2)
    qs = np.ascontiguousarray(m.arrays["q"]).reshape(m.rows, ng, 16)
    return np.concatenate([d, qs], axis=2).reshape(m.rows, ng * 18)


def tensor_type(m: Matrix, ternary_type: str = "TQ2_0") -> str:
    """The GGUF type a packed matrix is exported as."""
    if m.fmt == "int4":
        return "Q4_0"
    if m.fmt == "ternary" and m.cols % 256 == 0:
        return ternary_type
    return "Q8_0"


def add_llama_config(writer: Any, c: Any) -> None:
    """Write the llama.* hyper-parameters of config ``c`` (an LLMConfig) into a gguf.GGUFWriter."""
    writer.add_block_count(c.n_layers)
    writer.add_context_length(c.ctx)
    writer.add_embedding_length(c.dim)
    writer.add_feed_forward_length(c.ffn_dim)
    writer.add_head_count(c.n_heads)
    writer.add_head_count_kv(c.n_kv_heads)
    writer.add_rope_freq_base(c.rope_base)
    writer.add_layer_norm_rms_eps(c.eps)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_vocab_size(c.vocab)


def export_gguf(bundle: Any, output: str | Path, ternary_type: str = "TQ2_0", progress: bool = True) -> dict[str, Any]:
    """Write ``bundle`` (an ``edgeq.llm.LLMBundle``) as a llama-architecture GGUF; returns a small report."""
    gguf = require_gguf()
    if ternary_type not in TERNARY_TYPES:
        raise EdgeqError(f"ternary type must be one of {', '.join(TERNARY_TYPES)}")
    out = Path(output)
    if not out.parent.exists():
        raise EdgeqError(f"output directory '{out.parent}' does not exist")
    c = bundle.config
    fd, vocab_path = tempfile.mkstemp(suffix=".gguf")
    with os.fdopen(fd, "wb") as f:
        f.write(bundle.tokenizer_blob().tobytes())
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    types: dict[str, int] = {}
    try:
        reader = gguf.GGUFReader(vocab_path)
        w = gguf.GGUFWriter(tmp, "llama")
        for key, f in reader.fields.items():
            if key.startswith(("GGUF.", "llama.")) or key in ("general.architecture", "general.file_type"):
                continue
            copy_field(w, key, f)
        add_llama_config(w, c)
        mats = bundle.weights.mats
        with Progress("exporting to GGUF", len(mats), enabled=progress) as bar:
            for name, m in mats.items():
                t = tensor_type(m, ternary_type)
                qt = gguf.GGMLQuantizationType[t]
                data = _q4_0_blocks(m) if t == "Q4_0" else gguf.quants.quantize(llm_formats.unpack(m.arrays, m.fmt), qt)
                w.add_tensor(f"{name}.weight", data, raw_dtype=qt)
                types[t] = types.get(t, 0) + 1
                bar.advance()
        for name, a in bundle.weights.norms.items():
            w.add_tensor(f"{name}.weight", np.ascontiguousarray(a, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        os.unlink(vocab_path)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"output": str(out), "bytes": out.stat().st_size, "tensor_types": types, "scheme": bundle.scheme}
