"""The LLM C kernels outside the host extension: the AArch64 NEON paths cross-compiled and run under
qemu-aarch64 (Cortex-A76 with dotprod, and plain ARMv8 NEON), the portable scalar and the AVX2 paths, and
the AVX-512 path under AddressSanitizer + UBSan. Each runs tests/llm_driver.c on random models in every
weight format and must reproduce the NumPy reference decoder's logits bit for bit."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeq.runtimes import llm_formats
from edgeq.runtimes.c_backend import _source_dir
from edgeq.runtimes.llm_reference import LLMConfig, ReferenceDecoder, rope_tables
from llm_util import packed_weights

DRIVER = Path(__file__).parent / "llm_driver.c"
# 3 query heads per key/value head: AVX-512 attends them together (attention in edgeq_llm.c)
CONFIG = LLMConfig(n_layers=2, dim=192, n_heads=6, n_kv_heads=2, head_dim=32, ffn_dim=576, vocab=40, ctx=16,
                   eps=1e-5, rope_base=10000.0)
TOKENS = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], np.int32)
MAX_BATCH = 10  # batches of 10 and 1: the AVX-512 prefill's 8-token passes and remainders
SYSROOT = "/usr/aarch64-linux-gnu"


def _array(a) -> bytes:
    raw = b"" if a is None else np.ascontiguousarray(a).tobytes()
    return struct.pack("<q", len(raw)) + raw


def _mat(m) -> bytes:
    code = llm_formats.get_format(m.fmt).code
    return struct.pack("<3i", code, m.rows, m.cols) + _array(m.arrays["q"]) + _array(m.arrays["d"]) + \
        _array(m.arrays.get("m"))


def serialize(w) -> bytes:
    """Model + tokens in the driver's input format."""
    c = w.config
    cos, sin = rope_tables(c)
    out = [struct.pack("<10i", c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.vocab, c.ctx,
                       len(TOKENS), MAX_BATCH),
           struct.pack("<2f", c.eps, float(np.float32(1 / np.sqrt(c.head_dim)))),
           _array(cos), _array(sin), _array(w.norms["output_norm"]), _mat(w.mats["token_embd"]), _mat(w.head)]
    for i in range(c.n_layers):
        p = f"blk.{i}."
        out += [_array(w.norms[p + "attn_norm"]), _array(w.norms[p + "ffn_norm"])]
        out += [_mat(w.mats[p + n]) for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                                              "ffn_down")]
    out.append(_array(TOKENS))
    return b"".join(out)


def _build(cc: str, flags: list[str], out: Path) -> Path:
    with _source_dir() as src:
        cmd = [cc, "-std=c99", "-ffp-contract=off", "-Wall", "-Wextra", *flags, "-I", str(src), str(DRIVER),
               str(src / "edgeq_llm.c"), "-o", str(out), "-lm"]
        r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr, r.stderr
    return out


def _run_all(cmd: list[str], expect_simd: str, env: dict[str, str] | None = None) -> None:
    for seed, scheme in enumerate(llm_formats.FORMATS):
        w = packed_weights(CONFIG, scheme, seed)
        want = ReferenceDecoder(w).forward(TOKENS, 0)
        r = subprocess.run(cmd, input=serialize(w), capture_output=True, timeout=300, env=env)
        assert r.returncode == 0, (scheme, r.returncode, r.stderr.decode()[-2000:])
        assert r.stderr.decode().strip().splitlines()[-1] == expect_simd
        got = np.frombuffer(r.stdout, np.float32).reshape(want.shape)
        assert np.array_equal(got.view(np.int32), want.view(np.int32)), scheme


@pytest.mark.parametrize("march,simd", [("armv8.2-a+dotprod", "neon-dotprod"), ("armv8-a", "neon")])
def test_aarch64_under_qemu_bit_exact(tmp_path, march, simd):
    if not shutil.which("aarch64-linux-gnu-gcc") or not shutil.which("qemu-aarch64"):
        pytest.fail("install gcc-aarch64-linux-gnu and qemu-user (see .ci/run)")
    exe = _build("aarch64-linux-gnu-gcc", ["-O2", f"-march={march}", "-fopenmp"], tmp_path / "driver")
    _run_all(["qemu-aarch64", "-cpu", "cortex-a76", "-L", SYSROOT, str(exe)], simd)


def _native_simd() -> str:
    flags = Path("/proc/cpuinfo").read_text()
    return "avx512vnni" if "avx512_vnni" in flags else "avx2" if " avx2" in flags else "scalar"


# The host's own path without GFNI covers the AVX-512 CPUs that lack it (the other tests build with it here).
@pytest.mark.parametrize("flags,simd", [(["-mno-avx", "-mno-f16c"], "scalar"), (["-mavx2", "-mf16c"], "avx2"),
                                        (["-march=native", "-mno-gfni"], "native")])
def test_x86_scalar_avx2_and_no_gfni_paths_bit_exact(tmp_path, flags, simd):
    if simd == "avx2" and " avx2" not in Path("/proc/cpuinfo").read_text():
        pytest.fail("this test needs an x86 CPU with AVX2")
    exe = _build("gcc", ["-O2", *flags, "-Wno-unknown-pragmas"], tmp_path / "driver")  # no OpenMP: 1 thread
    _run_all([str(exe)], _native_simd() if simd == "native" else simd)


def test_native_simd_under_sanitizers_bit_exact(tmp_path):
    exe = _build("gcc", ["-O1", "-g", "-march=native", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                         "-fno-sanitize-recover=all", "-fopenmp"], tmp_path / "driver")
    expect = _native_simd()
    # The driver does not free its model (it exits); leaks are not what this test looks for.
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1", "UBSAN_OPTIONS": "halt_on_error=1",
           "OMP_NUM_THREADS": "2"}
    _run_all([str(exe)], expect, env)
