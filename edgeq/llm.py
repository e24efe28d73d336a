"""LLM bundles at run time: validation, decoders (reference, numba, c), sampling, generation, perplexity.

Runtime side: imports numpy (and the compiled backends) only; it sees token ids, never text. Text goes
through ``edgeq.llm_text`` (tool side, llama_cpp).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .bundle import Container
from .errors import BackendError, BundleError, InputError
from .runtimes import llm_formats
from .runtimes.llm_reference import LLMConfig, LLMWeights, Matrix, ReferenceDecoder, matrix_shapes

BACKENDS = ("auto", "reference", "numba", "c")
DEFAULT_CTX = 2048  # KV cache positions allocated unless asked otherwise (the model may allow more)
MAX_DIM = 1 << 20


def _fail(path: Path, msg: str) -> BundleError:
    return BundleError(f"bad bundle '{path}': {msg}")


def _int(v: Any, what: str, path: Path, lo: int = 1, hi: int = MAX_DIM) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _fail(path, f"{what} = {v!r} is not an integer in [{lo}, {hi}]")
    return v


def parse_config(cfg: dict[str, Any], path: Path) -> LLMConfig:
    """The manifest's ``config``, checked for everything the kernels rely on."""
    c = LLMConfig(**{k: _int(cfg[k], f"config.{k}", path) for k in
                     ("n_layers", "dim", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "vocab", "ctx")},
                  eps=float(cfg["eps"]), rope_base=float(cfg["rope_base"]))
    if c.n_heads % c.n_kv_heads or c.head_dim % 8 or c.dim % 32 or (c.n_heads * c.head_dim) % 32 \
            or c.ffn_dim % 32 or not (0 < c.eps < 1) or not c.rope_base > 1:
        raise _fail(path, f"inconsistent config {cfg}")
    return c


def _matrix(name: str, spec: dict[str, Any], shape: tuple[int, int], blobs: dict[str, np.ndarray],
            path: Path) -> Matrix:
    fmt = llm_formats.FORMATS.get(spec.get("format"))
    if fmt is None:
        raise _fail(path, f"tensor '{name}' has unknown format {spec.get('format')!r}")
    rows, cols = shape
    if (spec.get("rows"), spec.get("cols")) != shape:
        raise _fail(path, f"tensor '{name}' is {spec.get('rows')}x{spec.get('cols')}, the config needs {rows}x{cols}")
    g = fmt.group_size(cols)
    if cols % g or cols % 32:
        raise _fail(path, f"tensor '{name}': {cols} columns do not fit the {fmt.name} group size {g}")
    want = {"q": ("int8" if fmt.name == "int8" else "uint8", (rows, cols * fmt.bits // 8)),
            "d": ("float16", (rows, cols // g * fmt.planes))}
    if fmt.offset:
        want["m"] = ("float16", (rows, cols // g))
    arrays = {}
    for part, (dtype, shp) in want.items():
        a = blobs.get(f"{name}.{part}")
        if a is None or a.dtype != np.dtype(dtype) or a.shape != shp:
            got = "missing" if a is None else f"{a.dtype} {list(a.shape)}"
            raise _fail(path, f"blob '{name}.{part}' is {got}, expected {dtype} {list(shp)}")
        arrays[part] = a
    return Matrix(fmt.name, rows, cols, arrays)


def parse_weights(manifest: dict[str, Any], blobs: dict[str, np.ndarray], path: Path) -> LLMWeights:
    """Config, matrices and norms of an LLM manifest, every blob checked against the config."""
    c = parse_config(manifest["config"], path)
    specs = manifest["tensors"]
    shapes = {f"blk.{i}.{k}": s for i in range(c.n_layers) for k, s in matrix_shapes(c).items()}
    shapes["token_embd"] = (c.vocab, c.dim)
    if "output" in specs:
        shapes["output"] = (c.vocab, c.dim)
    mats = {}
    for name, shape in shapes.items():
        if name not in specs:
            raise _fail(path, f"tensor '{name}' is missing")
        mats[name] = _matrix(name, specs[name], shape, blobs, path)
    if mats["token_embd"].fmt != "int8":
        raise _fail(path, "the embedding must be in the int8 format")
    norms = {}
    for name in [f"blk.{i}.{n}" for i in range(c.n_layers) for n in ("attn_norm", "ffn_norm")] + ["output_norm"]:
        a = blobs.get(name)
        if a is None or a.dtype != np.float32 or a.shape != (c.dim,):
            raise _fail(path, f"norm '{name}' must be float32 [{c.dim}]")
        norms[name] = a
    return LLMWeights(c, mats, norms)


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy when ``temperature`` <= 0; else softmax(logits / temperature) cut to the smallest set of
    tokens whose probability reaches ``top_p`` (nucleus sampling), drawn with ``rng``."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)
    top = order[:max(1, min(keep, order.size))]
    return int(rng.choice(top, p=p[top] / p[top].sum()))


def numba_decoder(weights: LLMWeights) -> ReferenceDecoder:
    """The reference decoder with the Numba mat-vec (bit-exact with the NumPy one)."""
    from .runtimes.llm_numba import matvec
    return ReferenceDecoder(weights, matvec)


class Session:
    """A decoder plus its position in the KV cache."""

    def __init__(self, decoder: Any, backend: str):
        self.decoder, self.backend, self.pos = decoder, backend, 0

    @property
    def ctx(self) -> int:
        """Positions the KV cache holds."""
        return self.decoder.c.ctx

    def reset(self) -> None:
        """Forget the context (the cache is overwritten from position 0)."""
        self.pos = 0

    def feed(self, tokens: list[int] | np.ndarray, all_logits: bool = False) -> np.ndarray:
        """Run ``tokens`` after the current context; logits of the last token [vocab] (or all, [n, vocab])."""
        toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if toks.size == 0:
            raise InputError("no tokens to run")
        if toks.min() < 0 or toks.max() >= self.decoder.c.vocab:
            raise InputError(f"token ids must lie in [0, {self.decoder.c.vocab})")
        if self.pos + toks.size > self.ctx:
            raise InputError(f"context full: {self.pos} + {toks.size} tokens exceed {self.ctx} positions "
                             f"(use a larger --ctx)")
        if isinstance(self.decoder, ReferenceDecoder):
            logits = self.decoder.forward(toks, self.pos)
            logits = logits if all_logits else logits[-1:]
        else:
            logits = self.decoder.forward(toks, self.pos, all_logits)
        self.pos += toks.size
        return logits if all_logits else logits[-1]

    def generate(self, prompt: list[int], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, stop: tuple[int, ...] = ()) -> Iterator[int]:
        """Yield up to ``max_tokens`` new token ids after ``prompt`` (stopping after a ``stop`` id or when
        the context is full)."""
        rng = np.random.default_rng(seed)
        logits = self.feed(prompt)
        for i in range(max_tokens):
            tok = sample(logits, temperature, top_p, rng)
            yield tok
            if tok in stop or self.pos >= self.ctx or i == max_tokens - 1:
                return
            logits = self.feed([tok])

    def perplexity(self, tokens: list[int], ctx: int = 512, windows: int = 4) -> dict[str, Any]:
        """exp(mean NLL) over non-overlapping ``ctx``-token windows (at most ``windows``), scoring the second
        half of each window: the windowing of llama.cpp's peer script (shared/peers/llama_cpp_smollm2.py)."""
        if ctx < 4 or ctx > self.ctx:
            raise InputError(f"--ctx {ctx} must lie in [4, {self.ctx}]")
        toks = np.asarray(tokens[: windows * ctx], dtype=np.int64)
        if toks.size < ctx:
            raise InputError(f"the text has {len(tokens)} tokens, fewer than one window of {ctx}")
        nll, n = 0.0, 0
        for s in range(0, toks.size - ctx + 1, ctx):
            chunk = toks[s: s + ctx]
            self.reset()
            idx = np.arange(ctx // 2 - 1, ctx - 1)
            lg = self.feed(chunk, all_logits=True)[idx].astype(np.float64)
            lg -= lg.max(1, keepdims=True)
            nll -= (lg[np.arange(idx.size), chunk[idx + 1]] - np.log(np.exp(lg).sum(1))).sum()
            n += idx.size
        return {"perplexity": float(np.exp(nll / n)), "tokens_scored": n, "windows": int(toks.size // ctx),
                "ctx": ctx}


class LLMBundle:
    """A loaded LLM bundle (``edgeq.load`` on a bundle whose manifest kind is ``llm``)."""

    def __init__(self, container: Container, backend: str = "auto"):
        self.container, self.manifest, self.path = container, container.manifest, container.path
        if backend not in BACKENDS:
            raise InputError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
        self.backend = backend
        try:
            self.weights = parse_weights(self.manifest, container.blobs, self.path)
            self.tokenizer_info = dict(self.manifest["tokenizer"])
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise _fail(self.path, f"malformed LLM manifest ({type(e).__name__}: {e})") from None

    @property
    def config(self) -> LLMConfig:
        """The decoder's shape."""
        return self.weights.config

    @property
    def scheme(self) -> str:
        """The weight scheme of the layer matrices."""
        return str(self.manifest["scheme"])

    def tokenizer_blob(self) -> np.ndarray:
        """The vocab-only GGUF the text front-end loads."""
        return self.container.blobs[self.tokenizer_info["blob"]]

    def bytes_per_token(self) -> int:
        """Bytes of weights read per decoded token."""
        return self.weights.bytes_per_token()

    def session(self, backend: str | None = None, ctx: int | None = None, threads: int | None = None,
                max_batch: int = 64) -> Session:
        """A decoder with a KV cache of ``ctx`` positions (default min(model context, 2048))."""
        name = backend or self.backend
        n_ctx = ctx or min(self.config.ctx, DEFAULT_CTX)
        if n_ctx < 1:
            raise InputError(f"context length must be positive, got {n_ctx}")
        w = dataclasses.replace(self.weights, config=dataclasses.replace(self.config, ctx=n_ctx))
        if name in ("auto", "c"):
            try:
                from .runtimes.llm_c import CDecoder
                dec = CDecoder(w, max_batch=max_batch)
                if threads:
                    dec.set_threads(threads)
                return Session(dec, "c")
            except BackendError:
                if name == "c":
                    raise
                name = "numba"
        if name == "numba":
            return Session(numba_decoder(w), "numba")
        return Session(ReferenceDecoder(w), "reference")

    def summary(self, device_bandwidth: float | None = None) -> dict[str, Any]:
        """What ``edgeq inspect --json`` prints for an LLM bundle."""
        m, c = self.manifest, self.config
        formats: dict[str, int] = {}
        for mat in self.weights.mats.values():
            formats[mat.fmt] = formats.get(mat.fmt, 0) + 1
        bpt = self.bytes_per_token()
        bw = device_bandwidth if device_bandwidth is not None else m["device"].get("mem_bandwidth_bytes_per_s", 0)
        return {"path": str(self.path), "kind": "llm", "device": m["device"]["id"], "scheme": self.scheme,
                "producer": m["producer"], "source": m["source"], "config": c.to_dict(),
                "formats": formats, "weights_bytes": sum(llm_formats.packed_nbytes(x.arrays) for x in
                                                        self.weights.mats.values()),
                "bytes_per_token": bpt,
                "predicted_decode_tokens_per_s": (bw / bpt) if bw else None,
                "memory": {"file_bytes": Path(self.path).stat().st_size},
                "report": m.get("report", {})}


def copy_bandwidth(nbytes: int = 1 << 27, repeats: int = 5) -> float:
    """Measured memory copy bandwidth in bytes/s (read + write, median of ``repeats`` copies of ``nbytes``)."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return 2 * src.nbytes / float(np.median(times))


__all__ = ["BACKENDS", "LLMBundle", "Session", "copy_bandwidth", "parse_weights", "sample"]
