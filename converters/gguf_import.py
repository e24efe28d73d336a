"""GGUF (llama.cpp) import: Llama-architecture models -> edgeq LLM bundles.

The file is memory-mapped by ``gguf.GGUFReader``; each tensor is dequantized to float32 on its own
(``gguf.quants.dequantize``), packed into its edgeq format and dropped, so conversion never holds two
full copies of the model. The tokenizer is kept as a vocab-only GGUF (all metadata, no tensors) stored
as a blob; ``edgeq.llm_text`` loads it with ``llama_cpp`` at generate time.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgeq.errors import ModelError
from edgeq.runtimes.llm_reference import LAYER_MATS, LLMConfig, matrix_shapes

SUPPORTED_ARCHS = ("llama",)


def copy_field(writer: Any, key: str, field: Any) -> None:
    """Copy one metadata field of a gguf.GGUFReader into a gguf.GGUFWriter, arrays with their item type."""
    gguf = require_gguf()
    vt = field.types[0]
    writer.add_key_value(key, field.contents(), vt, sub_type=field.types[-1] if vt == gguf.GGUFValueType.ARRAY else None)


def require_gguf() -> Any:
    """The ``gguf`` module, or a ModelError saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise ModelError("reading GGUF needs the gguf package: pip install 'edgeq[llm]'") from None
    return gguf


class GGUFModel:
    """An opened, checked GGUF file: its config, metadata and tensors (not yet dequantized)."""

    def __init__(self, path: str | Path):
        gguf = require_gguf()
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model file '{path}' does not exist")
        try:
            self.reader = gguf.GGUFReader(str(self.path))
        except Exception as e:  # noqa: BLE001 - the reader raises many types on malformed or truncated files
            raise ModelError(f"cannot read GGUF '{self.path.name}': {type(e).__name__}: {e} "
                             f"(truncated or not a GGUF file?)") from None
        self.fields = self.reader.fields
        arch = self.value("general.architecture")
        if arch not in SUPPORTED_ARCHS:
            raise ModelError(f"GGUF '{self.path.name}' has architecture {arch!r}; edgeq imports "
                             f"{', '.join(SUPPORTED_ARCHS)} only")
        self.tensors = {t.name.removesuffix(".weight"): t for t in self.reader.tensors}
        self.config = self._config()
        self._check_shapes()

    def value(self, key: str, default: Any = None) -> Any:
        """A metadata value (scalar or list), or ``default`` when absent."""
        f = self.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"GGUF '{self.path.name}': metadata {key} is unreadable ({e})") from None

    def _need(self, key: str) -> Any:
        v = self.value(key)
        if v is None:
            raise ModelError(f"GGUF '{self.path.name}' lacks metadata {key}")
        return v

    def _config(self) -> LLMConfig:
        a = "llama"
        dim = int(self._need(f"{a}.embedding_length"))
        heads = int(self._need(f"{a}.attention.head_count"))
        emb = self.tensors.get("token_embd")
        if emb is None:
            raise ModelError(f"GGUF '{self.path.name}' has no tensor token_embd.weight")
        vocab = int(self.value(f"{a}.vocab_size", int(emb.shape[1])))
        cfg = LLMConfig(
            n_layers=int(self._need(f"{a}.block_count")), dim=dim, n_heads=heads,
            n_kv_heads=int(self.value(f"{a}.attention.head_count_kv", heads)),
            head_dim=int(self.value(f"{a}.rope.dimension_count", dim // max(heads, 1))),
            ffn_dim=int(self._need(f"{a}.feed_forward_length")), vocab=vocab,
            ctx=int(self.value(f"{a}.context_length", 2048)),
            eps=float(self.value(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_base=float(self.value(f"{a}.rope.freq_base", 10000.0)))
        if min(cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim, cfg.vocab) < 1 \
                or cfg.n_heads % cfg.n_kv_heads or cfg.head_dim * cfg.n_heads != cfg.dim or cfg.head_dim % 8:
            raise ModelError(f"GGUF '{self.path.name}': inconsistent llama config {cfg.to_dict()}")
        return cfg

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """(rows, cols) or (n,) of every tensor a llama model of this config must have."""
        c = self.config
        want: dict[str, tuple[int, ...]] = {"token_embd": (c.vocab, c.dim), "output_norm": (c.dim,)}
        for i in range(c.n_layers):
            for name, shape in matrix_shapes(c).items():
                want[f"blk.{i}.{name}"] = shape
            want[f"blk.{i}.attn_norm"] = want[f"blk.{i}.ffn_norm"] = (c.dim,)
        if "output" in self.tensors:
            want["output"] = (c.vocab, c.dim)
        return want

    def _check_shapes(self) -> None:
        for name, shape in self.expected_shapes().items():
            t = self.tensors.get(name)
            if t is None:
                raise ModelError(f"GGUF '{self.path.name}': tensor {name}.weight is missing")
            got = tuple(int(d) for d in reversed(t.shape))
            if got != shape:
                raise ModelError(f"GGUF '{self.path.name}': tensor {name}.weight has shape {list(got)}, "
                                 f"the config needs {list(shape)}")

    def load(self, name: str) -> np.ndarray:
        """One tensor dequantized to float32 in (rows, cols) order."""
        gguf = require_gguf()
        t = self.tensors[name]
        try:
            a = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:  # noqa: BLE001 - unsupported or damaged quantization blocks
            raise ModelError(f"GGUF '{self.path.name}': cannot dequantize tensor {name}.weight "
                             f"({t.tensor_type.name}): {e}") from None
        a = np.asarray(a, dtype=np.float32).reshape(tuple(int(d) for d in reversed(t.shape)))
        if not np.isfinite(a).all():
            raise ModelError(f"GGUF '{self.path.name}': tensor {name}.weight has NaN or infinite values")
        return a

    def tokenizer_gguf(self) -> bytes:
        """A vocab-only GGUF: every metadata key of this file, no tensors (what llama_cpp's vocab_only
        load needs for tokenizing and the chat template)."""
        gguf = require_gguf()
        fd, tmp = tempfile.mkstemp(suffix=".gguf")
        os.close(fd)
        try:
            w = gguf.GGUFWriter(tmp, "llama")
            for key, f in self.fields.items():
                if key.startswith("GGUF.") or key == "general.architecture":
                    continue
                copy_field(w, key, f)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            return Path(tmp).read_bytes()
        finally:
            os.unlink(tmp)

    def tokenizer_info(self) -> dict[str, Any]:
        """Special tokens and chat template from the metadata."""
        return {"bos": int(self.value("tokenizer.ggml.bos_token_id", -1)),
                "eos": int(self.value("tokenizer.ggml.eos_token_id", -1)),
                "add_bos": bool(self.value("tokenizer.ggml.add_bos_token", True)),
                "chat_template": str(self.value("tokenizer.chat_template", "") or "")}

    def sha256(self) -> str:
        """Digest of the whole file (streamed)."""
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def matrix_names(self) -> Iterator[str]:
        """The 2-D tensors in conversion order: layers, then embedding (and head)."""
        for i in range(self.config.n_layers):
            for m in LAYER_MATS:
                yield f"blk.{i}.{m}"
        yield "token_embd"
        if "output" in self.tensors:
            yield "output"

    def norm_names(self) -> list[str]:
        """The 1-D RMSNorm weights."""
        return [f"blk.{i}.{n}" for i in range(self.config.n_layers) for n in ("attn_norm", "ffn_norm")] \
            + ["output_norm"]
