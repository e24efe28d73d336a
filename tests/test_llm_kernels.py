"""LLM weight formats and kernels: packing round trips, and the C and Numba mat-vecs / quantizer / whole
decoder bit-identical to the NumPy reference over random shapes, formats and values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from edgeq.errors import InputError, ModelError
from edgeq.converters.llm_quantize import quantize_matrix
from edgeq.runtimes import llm_c, llm_formats, llm_numba
from edgeq.runtimes.llm_reference import LLMConfig, Matrix, ReferenceDecoder, dot8, exp_f32
from llm_util import packed_weights, tiny_config

FORMATS = list(llm_formats.FORMATS)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _weights(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    w = rng.standard_normal((rows, cols)).astype(np.float32) * rng.choice([1e-3, 0.05, 3.0])
    w[rng.random(w.shape) < 0.02] *= 20  # outliers
    if rows > 1:
        w[0] = 0  # an all-zero row: zero scales must not divide by zero
    return w


def _acts(rng: np.random.Generator, n: int, cols: int) -> np.ndarray:
    x = rng.standard_normal((n, cols)).astype(np.float32) * rng.choice([1e-4, 1.0, 100.0])
    x[0, rng.integers(cols)] = 500.0
    if n > 1:
        x[1] = 0
    return x


@pytest.mark.parametrize("fmt", FORMATS)
def test_pack_layout_round_trip_and_error(fmt):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 192)).astype(np.float32) * 0.05
    p = quantize_matrix(w, fmt)
    f = llm_formats.FORMATS[fmt]
    v = llm_formats.plane_values(p, fmt)
    assert v.shape == (f.planes, 32, 192) and v.min() >= f.vmin and v.max() <= f.vmax
    assert np.array_equal(f.pack_codes(v, f.group_size(192)), p["q"])  # codes survive a round trip
    assert llm_formats.packed_nbytes(p) * 8 / w.size == pytest.approx(f.bits_per_weight(192))
    rel = np.sqrt(np.mean((llm_formats.unpack(p, fmt) - w) ** 2) / np.mean(w ** 2))
    # Expected relative error of each format on Gaussian weights (bits decide the bound).
    assert rel < {"int8": 0.01, "int4": 0.1, "ternary": 0.55, "ptqtp": 0.25, "lut2": 0.36, "lut3": 0.2}[fmt]


def test_fitted_scales_beat_plain_rounding():
    """lut2's least-squares plane scales must do better than uniform min/max 2-bit quantization."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((16, 256)).astype(np.float32)
    g = w.reshape(-1, 64)
    lo, hi = g.min(1, keepdims=True), g.max(1, keepdims=True)
    s = (hi - lo) / 3
    uniform = np.rint((g - lo) / s) * s + lo
    err_uniform = np.mean((uniform - g) ** 2)
    err_lut2 = np.mean((llm_formats.unpack(quantize_matrix(w, "lut2"), "lut2") - w) ** 2)
    assert err_lut2 < 0.9 * err_uniform


def test_pack_rejects_bad_matrices():
    with pytest.raises(ModelError, match="blk.0.attn_q.*multiple"):
        quantize_matrix(np.zeros((4, 48), np.float32), "ternary", tensor="blk.0.attn_q")
    with pytest.raises(ModelError, match="NaN"):
        quantize_matrix(np.full((4, 64), np.nan, np.float32), "int8", tensor="w")
    with pytest.raises(ModelError, match="unknown weight format"):
        quantize_matrix(np.zeros((4, 64), np.float32), "int3")


def test_exp_f32_accuracy():
    x = np.linspace(-80, 80, 20001, dtype=np.float32)
    rel = np.abs(exp_f32(x).astype(np.float64) / np.exp(x.astype(np.float64)) - 1)
    assert rel.max() < 1e-6


def test_dot8_order_is_the_documented_one():
    a = np.array([1e8, 1, -1e8, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], np.float32)
    b = np.ones(16, np.float32)
    # lanes: l0 = 1e8 + 1 -> 1e8 (float32), l1 = 1, l2 = -1e8, l3 = 1 -> ((1e8 + 1) + (-1e8 + 1)) = 0
    assert dot8(a, b) == np.float32(0.0)


@SETTINGS
@given(fmt=st.sampled_from(FORMATS), rows=st.integers(1, 40), blocks=st.integers(1, 40), n=st.integers(1, 19),
       seed=st.integers(0, 2**31 - 1))
def test_matvec_c_and_numba_bit_exact(fmt, rows, blocks, n, seed):
    """Any number of 32-blocks the format's group size allows, of rows (partial 16-row tiles) and of tokens
    (the C prefill's passes of 4 or 8 tokens and their remainders)."""
    rng = np.random.default_rng(seed)
    group = llm_formats.FORMATS[fmt].group or 32
    cols = 32 * blocks // group * group or group
    m = Matrix(fmt, rows, cols, quantize_matrix(_weights(rng, rows, cols), fmt))
    xq, xs = llm_formats.quantize_act(_acts(rng, n, cols))
    want = llm_formats.matvec(m.arrays, fmt, xq, xs)
    for got in (llm_c.matvec(m, xq, xs), llm_numba.matvec(m, xq, xs)):
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got.view(np.int32), want.view(np.int32))


@SETTINGS
@given(n=st.integers(1, 4), cols=st.sampled_from([32, 64, 96, 576]), seed=st.integers(0, 2**31 - 1))
def test_quantize_c_bit_exact(n, cols, seed):
    rng = np.random.default_rng(seed)
    x = _acts(rng, n, cols)
    x[rng.random(x.shape) < 0.01] = np.float32(np.inf) if seed % 3 == 0 else np.float32(np.nan)
    want_q, want_s = llm_formats.quantize_act(x)
    got_q, got_s = llm_c.quantize(x)
    assert np.array_equal(got_q, want_q)
    assert np.array_equal(got_s.view(np.int32), want_s.view(np.int32))


def test_matvec_float_combination_matches_dequantized_product():
    """The integer path computes W x: compare with the float product of the dequantized operands."""
    rng = np.random.default_rng(3)
    for fmt in FORMATS:
        w = _weights(rng, 24, 128)
        p = quantize_matrix(w, fmt)
        xq, xs = llm_formats.quantize_act(_acts(rng, 3, 128))
        y = llm_formats.matvec(p, fmt, xq, xs)
        ref = (xq * np.repeat(xs, 32, axis=1)).astype(np.float64) @ llm_formats.unpack(p, fmt).T.astype(np.float64)
        assert np.allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scheme=st.sampled_from(FORMATS), layers=st.integers(1, 2),
       heads=st.sampled_from([(2, 1), (4, 2), (4, 4), (8, 2), (6, 2)]), dim=st.sampled_from([32, 64, 128, 192]),
       ffn=st.sampled_from([64, 96, 128]), batch=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_c_decoder_bit_exact(scheme, layers, heads, dim, ffn, batch, seed):
    nh, nkv = heads
    group = llm_formats.FORMATS[scheme].group or 32
    assume(dim % group == 0 and ffn % group == 0 and (dim // nh) % 8 == 0)
    c = LLMConfig(n_layers=layers, dim=dim, n_heads=nh, n_kv_heads=nkv, head_dim=dim // nh, ffn_dim=ffn,
                  vocab=40, ctx=24, eps=1e-5, rope_base=10000.0)
    w = packed_weights(c, scheme, seed)
    toks = np.random.default_rng(seed).integers(0, 40, size=20)
    want = ReferenceDecoder(w).forward(toks, 0)
    dec = llm_c.CDecoder(w, max_batch=batch)
    got = np.concatenate([dec.forward(toks[:11], 0), dec.forward(toks[11:], 11)])  # prefill, then continue
    assert np.array_equal(got.view(np.int32), want.view(np.int32))
    last = dec.forward(toks, 0, all_logits=False)
    assert np.array_equal(last[0].view(np.int32), want[-1].view(np.int32))


def test_numba_decoder_bit_exact():
    from edgeq.llm import numba_decoder
    w = packed_weights(tiny_config(n_layers=1), "lut3", 5)
    toks = [3, 1, 4, 1, 5]
    assert np.array_equal(numba_decoder(w).forward(toks, 0), ReferenceDecoder(w).forward(toks, 0))


def test_c_matvec_needs_the_tiled_copy_where_the_path_uses_one():
    """On the AVX-512 path a matrix without its tiles is refused (the kernels would read a NULL pointer)."""
    b = llm_c.backend()
    b.ensure_available()
    ffi, lib = b._loaded()
    w = np.random.default_rng(4).standard_normal((20, 64)).astype(np.float32)
    refs = llm_c._Refs(ffi)
    mat = ffi.new("edgeq_llm_mat *")
    refs.mat(mat[0], Matrix("lut2", 20, 64, quantize_matrix(w, "lut2")))
    xq = np.zeros((1, 64), np.int8)
    xs, xsum, y = np.zeros((1, 2), np.float32), np.zeros((1, 2), np.int32), np.zeros((1, 20), np.float32)
    rc = lib.edgeq_llm_matvec(mat, ffi.from_buffer("int8_t[]", xq), ffi.from_buffer("float[]", xs),
                              ffi.from_buffer("int32_t[]", xsum), 1, ffi.from_buffer("float[]", y))
    size = lib.edgeq_llm_tiles_size(mat)
    tiled = ffi.string(lib.edgeq_llm_simd()).decode() == "avx512vnni"
    assert size == (2 * 2 * 128 + 3 * 32 * 2 if tiled else 0)  # a 32-row tile: 2 blocks x 2 planes, 3 x 32 float16
    assert rc == (0 if size == 0 else -1)


def test_c_decoder_rejects_bad_tokens_and_positions():
    w = packed_weights(tiny_config(n_layers=1, ctx=8), "int4")
    dec = llm_c.CDecoder(w, max_batch=4)
    with pytest.raises(InputError, match="context length"):
        dec.forward(np.arange(9) % 10, 0)
    from edgeq.errors import BackendError
    with pytest.raises(BackendError, match="vocabulary"):
        dec.forward([1, 96], 0)
