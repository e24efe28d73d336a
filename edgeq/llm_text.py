"""Text front-end of LLM bundles (tool side): tokenizer and chat template through llama_cpp.

The bundle carries a vocab-only GGUF (the source model's tokenizer.* metadata, no tensors);
``llama_cpp.Llama(vocab_only=True)`` loads it, so tokenization is llama.cpp's own, not a re-implementation.
The decoder runtime never imports this module.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from .errors import EdgeqError


_LOG_SINK: Any = None  # keeps the ctypes callback alive


def _llama_cpp() -> Any:
    global _LOG_SINK
    try:
        import llama_cpp
    except ImportError:
        raise EdgeqError("text in and out of an LLM bundle needs llama-cpp-python: pip install 'edgeq[llm]'") from None
    if _LOG_SINK is None:  # llama.cpp logs context details to stderr even with verbose=False
        _LOG_SINK = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_LOG_SINK, None)
    return llama_cpp


class Tokenizer:
    """Tokenize / detokenize / apply the chat template of an LLM bundle."""

    def __init__(self, bundle: Any):
        llama_cpp = _llama_cpp()
        info = bundle.tokenizer_info
        fd, self._path = tempfile.mkstemp(suffix=".gguf", prefix="edgeq-vocab-")
        with os.fdopen(fd, "wb") as f:
            f.write(bundle.tokenizer_blob().tobytes())
        try:
            self._llm = llama_cpp.Llama(model_path=self._path, vocab_only=True, verbose=False, n_ctx=8)
        except Exception as e:  # noqa: BLE001 - llama_cpp raises ValueError/RuntimeError on bad files
            raise EdgeqError(f"cannot load the bundle's tokenizer: {e}") from None
        finally:
            os.unlink(self._path)
        self.bos, self.eos, self.add_bos = int(info["bos"]), int(info["eos"]), bool(info["add_bos"])
        self.chat_template = str(info.get("chat_template") or "")
        self._formatter = None
        if self.chat_template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
            vocab = self._llm
            self._formatter = Jinja2ChatFormatter(
                template=self.chat_template,
                eos_token=vocab.detokenize([self.eos], special=True).decode(errors="replace") if self.eos >= 0 else "",
                bos_token=vocab.detokenize([self.bos], special=True).decode(errors="replace") if self.bos >= 0 else "")

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text`` (special tokens like <|im_start|> recognised)."""
        bos = self.add_bos if add_bos is None else add_bos
        return list(self._llm.tokenize(text.encode(), add_bos=bos, special=True))

    def decode(self, tokens: list[int]) -> str:
        """Text of ``tokens`` (special tokens rendered)."""
        return self._llm.detokenize(list(tokens), special=False).decode(errors="replace")

    def piece_decoder(self) -> "PieceDecoder":
        """An incremental decoder for streaming output."""
        return PieceDecoder(self)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The model's chat template applied to ``messages`` (with the assistant turn opened)."""
        if self._formatter is None:
            raise EdgeqError("this model has no chat template (tokenizer.chat_template is missing in its GGUF)")
        return self._formatter(messages=messages).prompt

    def stop_tokens(self) -> tuple[int, ...]:
        """Token ids that end a reply: end-of-sequence plus the template's end-of-turn marker if it is a token."""
        stops = {self.eos} if self.eos >= 0 else set()
        for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
            ids = self._llm.tokenize(marker.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                stops.add(ids[0])
        return tuple(sorted(stops))


class PieceDecoder:
    """Turns a growing token list into text increments without splitting UTF-8 characters."""

    def __init__(self, tok: Tokenizer):
        self.tok, self.tokens, self.text = tok, [], ""

    def add(self, token: int) -> str:
        """Append ``token``; return the newly completed text."""
        self.tokens.append(token)
        text = self.tok.decode(self.tokens)
        if text.endswith("\ufffd"):
            return ""
        new, self.text = text[len(self.text):], text
        return new
