"""The ``.edgeq`` bundle: one file, deterministic, memory-mapped, validated before use (docs/bundle-format.md).

Layout: a 128-byte header, a JSON manifest, then the 64-byte-aligned constant blobs (the constant pool
the compiled backends read directly). Nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeq.errors import BundleError
from edgeq.ir import Graph, Node, Tensor
from edgeq.runtimes.executor import Executor
from edgeq.runtimes.planner import MemoryPlan
from edgeq.runtimes.program import BLOB_ALIGN, pack_consts
from edgeq.runtimes.reference import conv_out_size
from edgeq.runtimes.registry import OPS

MAGIC = b"EDGEQ\x00BN"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQQQQ32s")  # magic, version, header size, manifest off/len, data off/len, sha256
HEADER_SIZE = 128
DTYPES = ("int8", "int16", "uint8", "int32", "int64", "float32")
BLOB_DTYPES = DTYPES + ("float16",)  # float16: the scales of LLM weight formats (graph tensors never use it)
MAX_ELEMENTS = 1 << 31


def _align(n: int) -> int:
    return (n + BLOB_ALIGN - 1) // BLOB_ALIGN * BLOB_ALIGN


def write_atomic(path: str | Path, chunks: list[bytes]) -> None:
    """Write to a temporary file next to ``path``, fsync, then rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a bundle is an ordinary file
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def encode_container(manifest: dict[str, Any], consts: dict[str, np.ndarray]) -> list[bytes]:
    """Serialize a manifest and its constant arrays into the container's byte chunks (header, manifest,
    padding, blob pool); adds ``format_version`` and the ``blobs`` table (offset, size, dtype, shape, sha256)."""
    pool, offsets = pack_consts(consts)
    blobs = {}
    for name, off in offsets.items():
        arr = consts[name]
        raw = pool[off: off + arr.nbytes].tobytes()
        blobs[name] = {"offset": off, "nbytes": arr.nbytes, "dtype": arr.dtype.name, "shape": list(arr.shape),
                       "sha256": hashlib.sha256(raw).hexdigest()}
    manifest = {**manifest, "format_version": FORMAT_VERSION, "blobs": blobs}
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    data_off = _align(HEADER_SIZE + len(body))
    header = HEADER.pack(MAGIC, FORMAT_VERSION, HEADER_SIZE, HEADER_SIZE, len(body), data_off, pool.size,
                         hashlib.sha256(body).digest())
    return [header.ljust(HEADER_SIZE, b"\0"), body, b"\0" * (data_off - HEADER_SIZE - len(body)), pool.tobytes()]


def encode_bundle(graph: Graph, plan: MemoryPlan, meta: dict[str, Any]) -> list[bytes]:
    """Serialize a quantized graph, its memory plan and metadata into the bundle's byte chunks."""
    return encode_container({
        **meta,
        "graph": {"inputs": graph.inputs, "outputs": graph.outputs, "dynamic_batch": graph.dynamic_batch,
                  "nodes": [n.to_dict() for n in graph.nodes],
                  "tensors": [t.to_dict() for t in graph.tensors.values()]},
        "plan": {"offsets": plan.offsets, "arena_bytes": plan.arena_bytes, "strategy": plan.strategy,
                 "candidates": plan.candidates},
    }, graph.consts)


def write_bundle(path: str | Path, graph: Graph, plan: MemoryPlan, meta: dict[str, Any]) -> int:
    """Write the bundle atomically; returns its size in bytes."""
    chunks = encode_bundle(graph, plan, meta)
    write_atomic(path, chunks)
    return sum(len(c) for c in chunks)


class LoadedBundle:
    """A validated bundle: manifest, graph with constants as views of the mapped file, plan and pool."""

    def __init__(self, manifest: dict[str, Any], graph: Graph, plan: MemoryPlan, pool: np.ndarray,
                 const_offsets: dict[str, int], path: Path):
        self.manifest, self.graph, self.plan, self.pool = manifest, graph, plan, pool
        self.const_offsets, self.path = const_offsets, path


def _fail(path: Path, msg: str) -> BundleError:
    return BundleError(f"bad bundle '{path}': {msg}")


@dataclass
class Container:
    """A mapped, validated container: the manifest and every blob as a read-only view of the file."""

    manifest: dict[str, Any]
    blobs: dict[str, np.ndarray]
    offsets: dict[str, int]
    pool: np.ndarray
    path: Path

    @property
    def kind(self) -> str:
        """``"graph"`` (integer op graph, the default) or ``"llm"`` (edgeq.llm)."""
        return str(self.manifest.get("kind", "graph"))


def read_container(path: str | Path) -> Container:
    """Map and validate the container: header, manifest checksum, blob bounds/dtypes/checksums."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < HEADER_SIZE:
                raise _fail(path, f"file is {size} bytes, smaller than the {HEADER_SIZE}-byte header")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise BundleError(f"cannot open bundle '{path}': {e.strerror}") from None
    magic, version, hsize, m_off, m_len, d_off, d_len, digest = HEADER.unpack_from(mm, 0)
    if magic != MAGIC:
        raise _fail(path, "not an edgeq bundle (bad magic)")
    if version != FORMAT_VERSION:
        raise _fail(path, f"format version {version} is not supported (this edgeq reads version {FORMAT_VERSION})")
    if hsize != HEADER_SIZE or m_off != HEADER_SIZE or m_off + m_len > size:
        raise _fail(path, f"manifest [{m_off}, {m_off + m_len}) lies outside the {size}-byte file (truncated?)")
    if d_off % BLOB_ALIGN or d_off < m_off + m_len or d_off + d_len != size:
        raise _fail(path, f"data section [{d_off}, {d_off + d_len}) does not end at the file size {size} (truncated?)")
    body = mm[m_off: m_off + m_len]
    if hashlib.sha256(body).digest() != digest:
        raise _fail(path, "manifest checksum mismatch (corrupted file)")
    try:
        manifest = json.loads(body)
    except ValueError:
        raise _fail(path, "manifest is not valid JSON") from None
    pool = np.frombuffer(mm, dtype=np.uint8, count=d_len, offset=d_off)
    try:
        if not isinstance(manifest, dict):
            raise TypeError("manifest is not an object")
        blobs, offsets = _decode_blobs(manifest, pool, path)
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise _fail(path, f"malformed manifest ({type(e).__name__}: {e})") from None
    return Container(manifest, blobs, offsets, pool, path)


def read_bundle(path: str | Path) -> LoadedBundle:
    """Map and validate a graph bundle: the container, then the graph's ops, arena and shapes."""
    return graph_bundle(read_container(path))


def graph_bundle(c: Container) -> LoadedBundle:
    """The op graph of a validated container (BundleError if it holds another kind or is inconsistent)."""
    if c.kind != "graph":
        raise _fail(c.path, f"it holds a {c.kind!r} model, not an op graph (load it with edgeq.load)")
    try:
        graph, plan = _decode(c.manifest, c.blobs, c.path)
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise _fail(c.path, f"malformed manifest ({type(e).__name__}: {e})") from None
    return LoadedBundle(c.manifest, graph, plan, c.pool, c.offsets, c.path)


def _check_int(v: Any, what: str, path: Path, lo: int = -(1 << 31), hi: int = (1 << 31) - 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _fail(path, f"{what} = {v!r} is not an integer in [{lo}, {hi}]")
    return v


def _decode_blobs(manifest: dict[str, Any], pool: np.ndarray, path: Path) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    consts, offsets = {}, {}
    for name, b in manifest["blobs"].items():
        off = _check_int(b["offset"], f"blob '{name}' offset", path, 0, pool.size)
        nbytes = _check_int(b["nbytes"], f"blob '{name}' size", path, 0, pool.size)
        if b["dtype"] not in BLOB_DTYPES:
            raise _fail(path, f"blob '{name}' has unsupported dtype {b['dtype']!r}")
        shape = [_check_int(d, f"blob '{name}' shape", path, 0) for d in b["shape"]]
        dtype = np.dtype(b["dtype"])
        if off % BLOB_ALIGN or off + nbytes > pool.size:
            raise _fail(path, f"blob '{name}' [{off}, {off + nbytes}) points past the data section ({pool.size} bytes)")
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != nbytes:
            raise _fail(path, f"blob '{name}' size {nbytes} does not match shape {shape} of {dtype}")
        raw = pool[off: off + nbytes]
        if hashlib.sha256(raw).hexdigest() != b["sha256"]:
            raise _fail(path, f"blob '{name}' checksum mismatch (corrupted data)")
        consts[name] = raw.view(dtype).reshape(shape)
        offsets[name] = off
    return consts, offsets


def _decode(manifest: dict[str, Any], consts: dict[str, np.ndarray], path: Path) -> tuple[Graph, MemoryPlan]:
    gm = manifest["graph"]
    tensors = {}
    for t in gm["tensors"]:
        tensor = Tensor.from_dict(t)
        if tensor.dtype not in DTYPES or any(d < 1 or d > MAX_ELEMENTS for d in tensor.shape) \
                or tensor.size > MAX_ELEMENTS:
            raise _fail(path, f"tensor '{tensor.name}' has invalid dtype/shape {tensor.dtype} {tensor.shape}")
        tensors[tensor.name] = tensor
    nodes = [Node.from_dict(n) for n in gm["nodes"]]
    graph = Graph(nodes, tensors, list(gm["inputs"]), list(gm["outputs"]), consts, bool(gm["dynamic_batch"]))
    pm = manifest["plan"]
    plan = MemoryPlan({k: int(v) for k, v in pm["offsets"].items()}, int(pm["arena_bytes"]), str(pm["strategy"]),
                      {str(k): int(v) for k, v in pm.get("candidates", {}).items()})
    _validate_graph(graph, plan, path)
    return graph, plan


def _validate_graph(g: Graph, plan: MemoryPlan, path: Path) -> None:
    """Everything the compiled kernels will trust: ops, names, arena bounds, and shapes the reference agrees with."""
    for name in g.consts:
        if name not in g.tensors or g.tensors[name].shape != g.consts[name].shape:
            raise _fail(path, f"constant '{name}' does not match its tensor entry")
    for node in g.nodes:
        if node.op not in OPS:
            raise _fail(path, f"node '{node.name}' has unknown op {node.op!r}")
        for t in node.inputs + node.outputs:
            if t and t not in g.tensors:
                raise _fail(path, f"node '{node.name}' refers to unknown tensor '{t}'")
        for k, v in node.attrs.items():
            for x in (v if isinstance(v, list) else [v]):
                _check_int(int(x) if isinstance(x, bool) else x, f"node '{node.name}' attribute {k}", path)
        _check_window(node, g, path)
        if not isinstance(node.source_ops, list) or not all(isinstance(s, str) and s for s in node.source_ops):
            raise _fail(path, f"node '{node.name}' source_ops must be a list of op type names")
    _check_int(plan.arena_bytes, "arena size", path, 0, MAX_ELEMENTS)
    for name, t in g.tensors.items():
        if name in g.consts:
            continue
        if t.dtype not in ("int8", "int16") or not t.scale or not t.zero_point \
                or (t.dtype == "int16" and t.zero_point != [0]):
            raise _fail(path, f"activation '{name}' must be int8 with a scale and zero point, or int16 with zero "
                              f"point 0")
        off = plan.offsets.get(name)
        if off is None or off < 0 or off + t.sample_nbytes > plan.arena_bytes:
            raise _fail(path, f"activation '{name}' does not fit the arena ({off} + {t.sample_nbytes} > {plan.arena_bytes})")
    # The reference kernels recompute every shape from the attributes: a dry run at batch 1 proves the
    # declared shapes consistent, so the program words derived from them keep the kernels in bounds.
    try:
        values = Executor(g, "reference", plan).run_reference_all(
            {n: np.zeros(g.tensors[n].shape, dtype=np.int8) for n in g.inputs})
    except Exception as e:  # noqa: BLE001 - any failure means inconsistent shapes or attributes
        raise _fail(path, f"graph does not run on its declared shapes ({type(e).__name__}: {e})") from None
    for node in g.nodes:
        if node.attrs.get("x_bits", 8) != 8 * np.dtype(g.tensors[node.inputs[0]].dtype).itemsize:
            raise _fail(path, f"node '{node.name}' reads {node.inputs[0]} as {node.attrs['x_bits']}-bit")
        got, want = values[node.outputs[0]], g.tensors[node.outputs[0]]
        if got.shape != want.shape or got.dtype != np.dtype(want.dtype):
            raise _fail(path, f"node '{node.name}' produces {got.shape} {got.dtype}, manifest says {want.shape} {want.dtype}")


def _check_window(node: Node, g: Graph, path: Path) -> None:
    """Reject window attributes that would make the dry run allocate absurd sizes."""
    a = node.attrs
    if node.op not in ("QConv", "QMaxPool", "QAvgPool"):
        return
    x, y = g.tensors[node.inputs[0]].shape, g.tensors[node.outputs[0]].shape
    kernel = g.tensors[node.inputs[1]].shape[2:] if node.op == "QConv" else a["kernel"]
    if len(x) != 4 or len(y) != 4 or len(kernel) != 2 or len(a["strides"]) != 2 or len(a["pads"]) != 4:
        raise _fail(path, f"node '{node.name}' has malformed window attributes")
    dil = a.get("dilations", [1, 1])
    for i in range(2):
        if a["strides"][i] < 1 or dil[i] < 1 or min(a["pads"]) < 0 or kernel[i] < 1:
            raise _fail(path, f"node '{node.name}' has non-positive window attributes")
        if conv_out_size(x[2 + i], kernel[i], a["strides"][i], a["pads"][i], a["pads"][i + 2], dil[i]) != y[2 + i]:
            raise _fail(path, f"node '{node.name}' output size disagrees with its window attributes")
