/* edgeq LLM decoder kernels; see edgeq_llm.h. Every function mirrors runtimes/llm_reference.py or
   runtimes/llm_formats.py operation for operation. */
#include "edgeq_llm.h"

#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512BW__) || defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#ifndef EDGEQ_LLM_MAX_COLS
#define EDGEQ_LLM_MAX_COLS 16384
#endif
#define MAX_PLANES 3

/* ---- the format table (llm_formats.FORMATS) ---------------------------------------------------- */

typedef struct {
    int group;  /* 0: one group per row */
    int planes;
    int bits;   /* stored code bits per weight */
    int offset; /* per-group float offset m */
} fmt_info;

static const fmt_info FORMATS[7] = {
    {0, 0, 0, 0},  /* unused code 0 */
    {0, 1, 8, 0},  /* int8 */
    {32, 1, 4, 0}, /* int4 */
    {64, 1, 2, 0}, /* ternary */
    {64, 2, 4, 0}, /* ptqtp */
    {64, 2, 2, 1}, /* lut2 */
    {64, 3, 3, 1}, /* lut3 */
};

static const fmt_info *format_of(int32_t fmt)
{
    return fmt >= EDGEQ_LLM_FMT_INT8 && fmt <= EDGEQ_LLM_FMT_LUT3 ? &FORMATS[fmt] : 0;
}

/* float16 bits -> float32, exact. */
static float h2f(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    float f;
    if (e == 0) {
        f = (float)man * 5.9604644775390625e-8f; /* man * 2^-24: exact */
        memcpy(&u, &f, 4);
        u |= sign;
    } else if (e == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((e + 112u) << 23) | (man << 13);
    }
    memcpy(&f, &u, 4);
    return f;
}

/* ---- integer dot products per 32-block: out[j] = sum_i v[32j+i] x[32j+i] for j < nblk <= 16, 0 beyond;
   xsum[j] = sum_i x[32j+i] (used by the VNNI path's sign correction) ---------------------------------- */

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define SIMD_NAME "avx512vnni"
#define AVX512_PATH 1
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline __m512i block_dots_v(const int8_t *v, const int8_t *x, const int32_t *xsum, int nblk)
{
    /* vpdpbusd multiplies unsigned by signed bytes: (v + 128) * x, corrected by 128 * sum(x) below. Each
       register holds two blocks as 8 partial sums each; three rounds of unpack/shuffle + add fold the
       eight registers into one vector of 16 block sums (in a permuted order, undone by one permute). */
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const __m512i order = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
    __m512i s[8], t[4], u[2], r;
    int k;
    for (k = 0; k < 8; k++) {
        int left = nblk - 2 * k;
        __m512i a, b;
        if (left >= 2) {
            a = _mm512_loadu_si512(v + 64 * k);
            b = _mm512_loadu_si512(x + 64 * k);
        } else if (left == 1) {
            a = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(v + 64 * k)));
            b = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(x + 64 * k)));
        } else {
            s[k] = _mm512_setzero_si512();
            continue;
        }
        s[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(a, flip), b);
    }
    for (k = 0; k < 4; k++)
        t[k] = _mm512_add_epi32(_mm512_unpacklo_epi32(s[2 * k], s[2 * k + 1]),
                                _mm512_unpackhi_epi32(s[2 * k], s[2 * k + 1]));
    for (k = 0; k < 2; k++)
        u[k] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * k], t[2 * k + 1]),
                                _mm512_unpackhi_epi64(t[2 * k], t[2 * k + 1]));
    r = _mm512_add_epi32(_mm512_shuffle_i32x4(u[0], u[1], 0x88), _mm512_shuffle_i32x4(u[0], u[1], 0xdd));
    r = _mm512_permutexvar_epi32(order, r);
    r = _mm512_sub_epi32(r, _mm512_slli_epi32(_mm512_maskz_loadu_epi32((__mmask16)((1u << nblk) - 1), xsum), 7));
    return _mm512_maskz_mov_epi32((__mmask16)((1u << nblk) - 1), r);
}

/* Scales of blocks c0 .. c0+15 for plane p: h[((c0 + j) / per) * stride + p] from the float16 row (per
   is 1 or 2 blocks per group, or the row is one group). */
static __m512 scale_vec(const uint16_t *h, int stride, int p, int per, int ng, int c0)
{
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int g0 = c0 / per, n = (ng - g0) * stride;
    __m512i idx;
    __m512 lo, hi;
    if (ng == 1)
        return _mm512_set1_ps(h2f(h[p]));
    n = n > 32 ? 32 : n;
    idx = _mm512_add_epi32(_mm512_mullo_epi32(per == 1 ? iota : _mm512_srli_epi32(iota, 1), _mm512_set1_epi32(stride)),
                           _mm512_set1_epi32(p));
    lo = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16((__mmask16)(n >= 16 ? 0xffffu : (1u << n) - 1), h + g0 * stride));
    hi = n > 16 ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16((__mmask16)((1u << (n - 16)) - 1), h + g0 * stride + 16))
                : _mm512_setzero_ps();
    return _mm512_permutex2var_ps(lo, idx, hi);
}

/* Expanded scales of one row (ds[p * nbpad + b], ms[b]), converted once and reused by every token. */
static void row_scales(const edgeq_llm_mat *w, const fmt_info *f, int32_t r, int nbpad, float *ds, float *ms)
{
    int nb = w->cols / 32, per = (f->group ? f->group : w->cols) / 32, ng = nb / per, c0, p;
    const uint16_t *drow = w->d + (size_t)r * ng * f->planes, *mrow = f->offset ? w->m + (size_t)r * ng : 0;
    for (c0 = 0; c0 < nbpad; c0 += 16) {
        for (p = 0; p < f->planes; p++)
            _mm512_storeu_ps(ds + p * nbpad + c0, scale_vec(drow, f->planes, p, per, ng, c0));
        if (mrow)
            _mm512_storeu_ps(ms + c0, scale_vec(mrow, 1, 0, per, ng, c0));
    }
}

/* One row times one token, llm_formats.matvec's order with the 16 lanes in one register. */
static float row_dot(const fmt_info *f, int cols, const int8_t *v, const float *ds, const float *ms, int nbpad,
                     const int8_t *x, const float *xs, const int32_t *xsum)
{
    int nb = cols / 32, c0, p;
    __m512 acc = _mm512_setzero_ps();
    __m256 h;
    __m128 q;
    for (c0 = 0; c0 < nb; c0 += 16) {
        int nblk = nb - c0 < 16 ? nb - c0 : 16;
        __mmask16 k = (__mmask16)((1u << nblk) - 1);
        __m512 t = _mm512_mul_ps(_mm512_loadu_ps(ds + c0),
                                 _mm512_cvtepi32_ps(block_dots_v(v + c0 * 32, x + c0 * 32, xsum + c0, nblk)));
        for (p = 1; p < f->planes; p++)
            t = _mm512_add_ps(t, _mm512_mul_ps(_mm512_loadu_ps(ds + p * nbpad + c0),
                                               _mm512_cvtepi32_ps(block_dots_v(v + (size_t)p * cols + c0 * 32,
                                                                               x + c0 * 32, xsum + c0, nblk))));
        if (f->offset)
            t = _mm512_add_ps(t, _mm512_mul_ps(_mm512_loadu_ps(ms + c0),
                                               _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(k, xsum + c0))));
        acc = _mm512_mask_add_ps(acc, k, acc, _mm512_mul_ps(t, _mm512_maskz_loadu_ps(k, xs + c0)));
    }
    h = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
    q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    return _mm_cvtss_f32(q);
}
#else
#if defined(__AVX2__)
#define SIMD_NAME "avx2"
static int32_t dot32(const int8_t *a, const int8_t *x)
{
    __m256i lo = _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)a)),
                                   _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x)));
    __m256i hi = _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(a + 16))),
                                   _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(x + 16))));
    __m256i acc = _mm256_add_epi32(lo, hi);
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}
#elif defined(__ARM_NEON) && defined(__aarch64__)
#if defined(__ARM_FEATURE_DOTPROD)
#define SIMD_NAME "neon-dotprod"
#else
#define SIMD_NAME "neon"
#endif
static int32_t dot32(const int8_t *a, const int8_t *x)
{
    int8x16_t a0 = vld1q_s8(a), a1 = vld1q_s8(a + 16), x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
#if defined(__ARM_FEATURE_DOTPROD)
    return vaddvq_s32(vdotq_s32(vdotq_s32(vdupq_n_s32(0), a0, x0), a1, x1));
#else
    /* |a|, |x| <= 127: two products fit int16 */
    int16x8_t p = vmlal_s8(vmull_s8(vget_low_s8(a0), vget_low_s8(x0)), vget_high_s8(a0), vget_high_s8(x0));
    int16x8_t q = vmlal_s8(vmull_s8(vget_low_s8(a1), vget_low_s8(x1)), vget_high_s8(a1), vget_high_s8(x1));
    return vaddvq_s32(vpadalq_s16(vpaddlq_s16(p), q));
#endif
}
#else
#define SIMD_NAME "scalar"
static int32_t dot32(const int8_t *a, const int8_t *x)
{
    int32_t s = 0;
    int i;
    for (i = 0; i < 32; i++)
        s += (int32_t)a[i] * x[i];
    return s;
}
#endif
static void block_dots(const int8_t *v, const int8_t *x, const int32_t *xsum, int nblk, int32_t *out)
{
    int j;
    (void)xsum;
    for (j = 0; j < 16; j++)
        out[j] = j < nblk ? dot32(v + 32 * j, x + 32 * j) : 0;
}
#endif

#ifndef AVX512_PATH
/* float16 -> float32 of n values (exact on every path). */
static void h2f_n(const uint16_t *h, int n, float *out)
{
    int i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#endif
    for (; i < n; i++)
        out[i] = h2f(h[i]);
}
#endif

/* ---- unpacking one row into plane values v[p * cols + j] (llm_formats._unpack_*) ---------------- */

/* The unpackers write 16 (int4), 64 (trits) or 64 (bits) values per step; the AVX-512 versions do one
   step in a few instructions, the portable ones are loops the compiler vectorizes. */
#ifdef AVX512_PATH
static void unpack_int4(const uint8_t *q, int cols, int8_t *v)
{
    const __m512i eight = _mm512_set1_epi8(8), low = _mm512_set1_epi8(15);
    int g = 0;
    for (; g + 64 <= cols; g += 64, q += 32) {
        /* two groups: lanes [lo nibbles g0, hi nibbles g0, lo g1, hi g1] */
        __m512i b = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)q));
        __m512i z = _mm512_mask_srli_epi16(b, 0xffff0000u, b, 4); /* upper 256 bits: the high nibbles */
        z = _mm512_shuffle_i64x2(z, z, 0xd8);                     /* [lo0, hi0, lo1, hi1] */
        _mm512_storeu_si512(v + g, _mm512_sub_epi8(_mm512_and_si512(z, low), eight));
    }
    for (; g < cols; g += 32, q += 16) {
        int j;
        for (j = 0; j < 16; j++) {
            v[g + j] = (int8_t)((q[j] & 15) - 8);
            v[g + 16 + j] = (int8_t)((q[j] >> 4) - 8);
        }
    }
}

static void unpack_trits(const uint8_t *q, int cols, int planes, int8_t *v)
{
    const __m512i shifts = _mm512_setr_epi64(0, 0, 0x0002000200020002ll, 0x0002000200020002ll, 0x0004000400040004ll,
                                             0x0004000400040004ll, 0x0006000600060006ll, 0x0006000600060006ll);
    const __m512i three = _mm512_set1_epi8(3), one = _mm512_set1_epi8(1);
    int g, p;
    for (g = 0; g < cols; g += 64)
        for (p = 0; p < planes; p++, q += 16) {
            __m512i b = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)q));
            __m512i t = _mm512_and_si512(_mm512_srlv_epi16(b, shifts), three);
            _mm512_storeu_si512(v + (size_t)p * cols + g, _mm512_sub_epi8(t, one));
        }
}

static void unpack_bits(const uint8_t *q, int cols, int planes, int8_t *v)
{
    const __m512i one = _mm512_set1_epi8(1);
    int g, p;
    for (g = 0; g < cols; g += 64)
        for (p = 0; p < planes; p++, q += 8) {
            uint64_t m;
            memcpy(&m, q, 8);
            _mm512_storeu_si512(v + (size_t)p * cols + g, _mm512_maskz_mov_epi8((__mmask64)m, one));
        }
}
#else
static void unpack_int4(const uint8_t *q, int cols, int8_t *v)
{
    int g, j;
    for (g = 0; g < cols; g += 32, q += 16)
        for (j = 0; j < 16; j++) {
            v[g + j] = (int8_t)((q[j] & 15) - 8);
            v[g + 16 + j] = (int8_t)((q[j] >> 4) - 8);
        }
}

static void unpack_trits(const uint8_t *q, int cols, int planes, int8_t *v)
{
    int g, p, j, k;
    for (g = 0; g < cols; g += 64)
        for (p = 0; p < planes; p++, q += 16) {
            int8_t *o = v + (size_t)p * cols + g;
            for (k = 0; k < 4; k++)
                for (j = 0; j < 16; j++)
                    o[16 * k + j] = (int8_t)(((q[j] >> (2 * k)) & 3) - 1);
        }
}

static void unpack_bits(const uint8_t *q, int cols, int planes, int8_t *v)
{
    int g, p, j;
    for (g = 0; g < cols; g += 64)
        for (p = 0; p < planes; p++, q += 8) {
            int8_t *o = v + (size_t)p * cols + g;
            uint64_t m;
            memcpy(&m, q, 8); /* element j is bit j (little-endian bytes) */
            for (j = 0; j < 64; j++)
                o[j] = (int8_t)((m >> j) & 1);
        }
}
#endif

/* The row's plane values: int8 rows are used in place, other formats are unpacked into buf. */
static const int8_t *row_values(const edgeq_llm_mat *w, const fmt_info *f, int32_t r, int8_t *buf)
{
    size_t row_bytes = (size_t)w->cols * f->bits / 8;
    const uint8_t *q = (const uint8_t *)w->q + (size_t)r * row_bytes;
    switch (w->fmt) {
    case EDGEQ_LLM_FMT_INT8:
        return (const int8_t *)q;
    case EDGEQ_LLM_FMT_INT4:
        unpack_int4(q, w->cols, buf);
        break;
    case EDGEQ_LLM_FMT_TERNARY:
    case EDGEQ_LLM_FMT_PTQTP:
        unpack_trits(q, w->cols, f->planes, buf);
        break;
    default:
        unpack_bits(q, w->cols, f->planes, buf);
        break;
    }
    return buf;
}

/* ---- activations ----------------------------------------------------------------------------- */

void edgeq_llm_quantize(const float *x, int32_t n, int32_t cols, int8_t *xq, float *xs, int32_t *xsum)
{
    int32_t b, i, nb = cols / 32;
    for (b = 0; b < n * nb; b++) {
        const float *xb = x + (size_t)b * 32;
        int8_t *qb = xq + (size_t)b * 32;
        float amax = 0.0f, inv;
        int nan = 0;
        int32_t s = 0;
        for (i = 0; i < 32; i++) {
            float a = fabsf(xb[i]);
            nan |= a != a;
            amax = a > amax ? a : amax;
        }
        if (nan)
            amax = 0.0f;
        inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        xs[b] = amax / 127.0f;
        for (i = 0; i < 32; i++) {
            float v = xb[i] * inv;
            v = v != v ? 0.0f : (v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v));
            qb[i] = (int8_t)rintf(v);
            s += qb[i];
        }
        xsum[b] = s;
    }
}

/* ---- the mat-vec --------------------------------------------------------------------------- */

#ifndef AVX512_PATH
/* Per-block float scales of one row: ds[p * nbpad + b] = d_p of block b's group, ms[b] = m (lut formats);
   zero past the row's nb blocks so the 16-block chunks can run whole. */
static void row_scales(const edgeq_llm_mat *w, const fmt_info *f, int32_t r, int nbpad, float *ds, float *ms)
{
    int cols = w->cols, per = (f->group ? f->group : cols) / 32, nb = cols / 32, ng = nb / per, b, g, p;
    float tmp[MAX_PLANES * EDGEQ_LLM_MAX_COLS / 32];
    h2f_n(w->d + (size_t)r * ng * f->planes, ng * f->planes, tmp);
    for (p = 0; p < f->planes; p++) {
        float *o = ds + p * nbpad;
        for (g = 0; g < ng; g++)
            for (b = 0; b < per; b++)
                *o++ = tmp[g * f->planes + p];
        for (b = nb; b < nbpad; b++)
            *o++ = 0.0f;
    }
    if (f->offset) {
        h2f_n(w->m + (size_t)r * ng, ng, tmp);
        for (g = 0; g < ng; g++)
            for (b = 0; b < per; b++)
                ms[g * per + b] = tmp[g];
        for (b = nb; b < nbpad; b++)
            ms[b] = 0.0f;
    }
}
#endif

#ifndef AVX512_PATH
/* One row times one token (llm_formats.matvec): 16-block chunks, lane j of acc takes block 16c + j. */
static float row_dot(const fmt_info *f, int cols, const int8_t *v, const float *ds, const float *ms, int nbpad,
                     const int8_t *x, const float *xs, const int32_t *xsum)
{
    int nb = cols / 32, c0, j, p;
    float acc[16] = {0};
    for (c0 = 0; c0 < nb; c0 += 16) {
        int nblk = nb - c0 < 16 ? nb - c0 : 16;
        int32_t dots[16];
        float t[16];
        block_dots(v + c0 * 32, x + c0 * 32, xsum + c0, nblk, dots);
        for (j = 0; j < 16; j++)
            t[j] = ds[c0 + j] * (float)dots[j];
        for (p = 1; p < f->planes; p++) {
            block_dots(v + (size_t)p * cols + c0 * 32, x + c0 * 32, xsum + c0, nblk, dots);
            for (j = 0; j < 16; j++)
                t[j] = t[j] + ds[p * nbpad + c0 + j] * (float)dots[j];
        }
        if (f->offset)
            for (j = 0; j < nblk; j++)
                t[j] = t[j] + ms[c0 + j] * (float)xsum[c0 + j];
        for (j = 0; j < nblk; j++)
            acc[j] = acc[j] + t[j] * xs[c0 + j];
    }
    for (j = 8; j >= 1; j /= 2)
        for (p = 0; p < j; p++)
            acc[p] = acc[p] + acc[p + j];
    return acc[0];
}
#endif

static int mat_ok(const edgeq_llm_mat *w, int32_t rows, int32_t cols)
{
    const fmt_info *f = format_of(w->fmt);
    return f && w->rows == rows && w->cols == cols && rows > 0 && cols > 0 && cols % 32 == 0 &&
           cols <= EDGEQ_LLM_MAX_COLS && (!f->group || cols % f->group == 0) && w->q && w->d &&
           (!f->offset || w->m);
}

/* Decode streams every weight once: asking for a row a few rows ahead keeps the memory system busy while
   the current row is computed (the hardware prefetcher alone left a single thread well below the
   bandwidth it reaches on plain copies; 8 rows ahead measured best, +15% decode at 1 thread). */
#ifndef PREFETCH_ROWS
#define PREFETCH_ROWS 8
#endif
static void prefetch_row(const edgeq_llm_mat *w, const fmt_info *f, int32_t r)
{
#if defined(__GNUC__)
    size_t row_bytes = (size_t)w->cols * f->bits / 8, i;
    const char *q = (const char *)w->q + (size_t)r * row_bytes;
    if (r >= w->rows)
        return;
    for (i = 0; i < row_bytes; i += 64)
        __builtin_prefetch(q + i, 0, 0);
#else
    (void)w, (void)f, (void)r;
#endif
}

int edgeq_llm_matvec(const edgeq_llm_mat *w, const int8_t *xq, const float *xs, const int32_t *xsum, int32_t n,
                     float *y)
{
    const fmt_info *f = format_of(w->fmt);
    int32_t r;
    if (!mat_ok(w, w->rows, w->cols))
        return EDGEQ_LLM_E_MODEL;
#pragma omp parallel for schedule(static)
    for (r = 0; r < w->rows; r++) {
        int8_t buf[MAX_PLANES * EDGEQ_LLM_MAX_COLS];
        float ds[MAX_PLANES * (EDGEQ_LLM_MAX_COLS / 32 + 16)], ms[EDGEQ_LLM_MAX_COLS / 32 + 16];
        int nbpad = (w->cols / 32 + 15) / 16 * 16;
        const int8_t *v;
        prefetch_row(w, f, r + PREFETCH_ROWS);
        v = row_values(w, f, r, buf);
        int32_t t;
        row_scales(w, f, r, nbpad, ds, ms);
        for (t = 0; t < n; t++) {
            size_t xo = (size_t)t * (w->cols / 32);
            y[(size_t)t * w->rows + r] = row_dot(f, w->cols, v, ds, ms, nbpad, xq + xo * 32, xs + xo, xsum + xo);
        }
    }
    return EDGEQ_LLM_OK;
}

/* ---- float32 blocks (llm_reference.py) -------------------------------------------------------- */

static float dot8(const float *a, const float *b, int n)
{
    float l[8];
    int i, j;
    for (j = 0; j < 8; j++)
        l[j] = a[j] * b[j];
    for (i = 8; i < n; i += 8)
        for (j = 0; j < 8; j++)
            l[j] = l[j] + a[i + j] * b[i + j];
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

static inline float exp_f32(float x)
{
    static const float c[7] = {(float)(1.0 / 720), (float)(1.0 / 120), (float)(1.0 / 24), (float)(1.0 / 6),
                               0.5f, 1.0f, 1.0f};
    const float log2e = (float)1.44269504088896341, ln2_hi = 0.693359375f, ln2_lo = (float)-2.12194440e-4;
    float k, r, p, scale;
    uint32_t bits;
    int i;
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    k = rintf(x * log2e);
    r = (x - k * ln2_hi) - k * ln2_lo;
    p = c[0];
    for (i = 1; i < 7; i++)
        p = p * r + c[i];
    bits = (uint32_t)((int32_t)k + 127) << 23;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

static void rmsnorm(const float *x, const float *w, int n, float eps, float *y)
{
    float r = 1.0f / sqrtf(dot8(x, x, n) / (float)n + eps);
    int i;
    for (i = 0; i < n; i++)
        y[i] = (x[i] * r) * w[i];
}

static void rope(float *x, int heads, int hd, const float *cos_row, const float *sin_row)
{
    int h, i;
    for (h = 0; h < heads; h++, x += hd)
        for (i = 0; i < hd / 2; i++) {
            float x0 = x[2 * i], x1 = x[2 * i + 1];
            x[2 * i] = x0 * cos_row[i] - x1 * sin_row[i];
            x[2 * i + 1] = x0 * sin_row[i] + x1 * cos_row[i];
        }
}

/* ---- the decoder ---------------------------------------------------------------------------- */

typedef struct {
    float *x, *xn, *q, *k, *v, *att, *gate, *up, *tmp, *xs, *scores;
} work_t;

static int64_t max3(int64_t a, int64_t b, int64_t c)
{
    int64_t m = a > b ? a : b;
    return m > c ? m : c;
}

static int64_t layout(const edgeq_llm_model *m, int32_t nb, float *base, work_t *w)
{
    int64_t qd = (int64_t)m->n_heads * m->head_dim, kvd = (int64_t)m->n_kv_heads * m->head_dim, off = 0;
    float *p[11];
    int64_t sizes[11];
    int i;
    sizes[0] = sizes[1] = sizes[8] = (int64_t)nb * m->dim;
    sizes[2] = sizes[5] = nb * qd;
    sizes[3] = sizes[4] = nb * kvd;
    sizes[6] = sizes[7] = (int64_t)nb * m->ffn_dim;
    sizes[9] = (int64_t)nb * (max3(m->dim, m->ffn_dim, (int64_t)m->n_heads * m->head_dim) / 32);
    sizes[10] = (int64_t)m->n_heads * 9 * m->ctx; /* per head: 8 score lanes + the scores */
    for (i = 0; i < 11; i++) {
        p[i] = base ? base + off : 0;
        off += (sizes[i] + 15) / 16 * 16;
    }
    if (w) {
        w->x = p[0], w->xn = p[1], w->q = p[2], w->k = p[3], w->v = p[4], w->att = p[5];
        w->gate = p[6], w->up = p[7], w->tmp = p[8], w->xs = p[9], w->scores = p[10];
    }
    return off;
}

int edgeq_llm_validate(const edgeq_llm_model *m)
{
    int32_t qd, kvd, l;
    if (m->n_layers < 1 || m->dim < 1 || m->n_heads < 1 || m->n_kv_heads < 1 || m->head_dim < 8 ||
        m->head_dim % 8 || m->n_heads % m->n_kv_heads || m->ctx < 1 || m->vocab < 1 || m->ffn_dim < 1 ||
        !m->rope_cos || !m->rope_sin || !m->out_norm || !m->layers)
        return EDGEQ_LLM_E_MODEL;
    qd = m->n_heads * m->head_dim;
    kvd = m->n_kv_heads * m->head_dim;
    if (m->embed.fmt != EDGEQ_LLM_FMT_INT8 || !mat_ok(&m->embed, m->vocab, m->dim) ||
        !mat_ok(&m->head, m->vocab, m->dim) || qd % 32 || m->dim % 8)
        return EDGEQ_LLM_E_MODEL;
    for (l = 0; l < m->n_layers; l++) {
        const edgeq_llm_layer *L = &m->layers[l];
        if (!L->attn_norm || !L->ffn_norm || !mat_ok(&L->wq, qd, m->dim) || !mat_ok(&L->wk, kvd, m->dim) ||
            !mat_ok(&L->wv, kvd, m->dim) || !mat_ok(&L->wo, m->dim, qd) || !mat_ok(&L->gate, m->ffn_dim, m->dim) ||
            !mat_ok(&L->up, m->ffn_dim, m->dim) || !mat_ok(&L->down, m->dim, m->ffn_dim))
            return EDGEQ_LLM_E_MODEL;
    }
    return EDGEQ_LLM_OK;
}

int edgeq_llm_state_sizes(const edgeq_llm_model *m, int32_t max_batch, int64_t *sizes)
{
    int64_t widest = max3(m->dim, m->ffn_dim, (int64_t)m->n_heads * m->head_dim);
    if (edgeq_llm_validate(m) != EDGEQ_LLM_OK || max_batch < 1)
        return EDGEQ_LLM_E_MODEL;
    sizes[0] = layout(m, max_batch, 0, 0);
    sizes[1] = max_batch * widest;
    sizes[2] = max_batch * widest / 32;
    return EDGEQ_LLM_OK;
}

/* Quantize n rows of x [n, cols] and multiply by w: y [n, w->rows]. */
static void linear(edgeq_llm_state *s, work_t *w, const edgeq_llm_mat *mat, const float *x, int32_t n, float *y)
{
    edgeq_llm_quantize(x, n, mat->cols, s->xq, w->xs, s->xsum);
    edgeq_llm_matvec(mat, s->xq, w->xs, s->xsum, n, y);
}

/* One token's attention over positions 0 .. last. The key cache is transposed, [kv head][dim][ctx], so the
   lane-ordered score products (llm_reference.dot8: dimension i into lane i % 8) run along positions in
   contiguous, vectorizable loops; the values stay [ctx][kv dim]. */
static void attention(const edgeq_llm_model *m, const float *kt, const float *vc, const float *q, int32_t last,
                      float *scratch, float *out)
{
    int32_t hd = m->head_dim, kvd = m->n_kv_heads * hd, ctx = m->ctx, h;
#pragma omp parallel for schedule(static)
    for (h = 0; h < m->n_heads; h++) {
        int32_t kvh = h / (m->n_heads / m->n_kv_heads), n = last + 1, i, j, p;
        const float *qh = q + (size_t)h * hd, *k = kt + (size_t)kvh * hd * ctx;
        float *lane = scratch + (size_t)h * 9 * ctx, *sc = lane + (size_t)8 * ctx, *o = out + (size_t)h * hd;
        float mx, total;
        for (j = 0; j < 8; j++)
            for (p = 0; p < n; p++)
                lane[(size_t)j * ctx + p] = qh[j] * k[(size_t)j * ctx + p];
        for (i = 8; i < hd; i += 8)
            for (j = 0; j < 8; j++) {
                float qv = qh[i + j], *l = lane + (size_t)j * ctx;
                const float *kr = k + (size_t)(i + j) * ctx;
                for (p = 0; p < n; p++)
                    l[p] = l[p] + qv * kr[p];
            }
        for (p = 0; p < n; p++) {
            const float *l = lane + p;
            sc[p] = (((l[0] + l[ctx]) + (l[2 * ctx] + l[3 * ctx])) + ((l[4 * ctx] + l[5 * ctx]) + (l[6 * ctx] + l[7 * ctx]))) *
                    m->kq_scale;
        }
        mx = sc[0];
        for (p = 1; p < n; p++)
            mx = sc[p] > mx ? sc[p] : mx;
        for (p = 0; p < n; p++)
            sc[p] = exp_f32(sc[p] - mx);
        total = sc[0];
        for (p = 1; p < n; p++)
            total = total + sc[p];
        for (j = 0; j < hd; j++)
            o[j] = sc[0] * vc[(size_t)kvh * hd + j];
        for (p = 1; p < n; p++) {
            const float *vp = vc + (size_t)p * kvd + (size_t)kvh * hd;
            float e = sc[p];
            for (j = 0; j < hd; j++)
                o[j] = o[j] + e * vp[j];
        }
        for (j = 0; j < hd; j++)
            o[j] = o[j] / total;
    }
}

int edgeq_llm_forward(const edgeq_llm_model *m, edgeq_llm_state *s, const int32_t *tokens, int32_t n,
                      int32_t pos, float *logits, int32_t all_logits)
{
    int32_t dim = m->dim, hd = m->head_dim, qd = m->n_heads * hd, kvd = m->n_kv_heads * hd, ffn = m->ffn_dim;
    int32_t t, l, i;
    work_t w;
    if (edgeq_llm_validate(m) != EDGEQ_LLM_OK)
        return EDGEQ_LLM_E_MODEL;
    if (n < 1 || n > s->max_batch)
        return EDGEQ_LLM_E_BATCH;
    if (pos < 0 || pos > m->ctx - n)
        return EDGEQ_LLM_E_POS;
    for (t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= m->vocab)
            return EDGEQ_LLM_E_TOKEN;
    layout(m, s->max_batch, s->work, &w);
    for (t = 0; t < n; t++) {
        const int8_t *e = (const int8_t *)m->embed.q + (size_t)tokens[t] * dim;
        float d = h2f(m->embed.d[tokens[t]]);
        for (i = 0; i < dim; i++)
            w.x[(size_t)t * dim + i] = d * (float)e[i];
    }
    for (l = 0; l < m->n_layers; l++) {
        const edgeq_llm_layer *L = &m->layers[l];
        float *kc = s->k_cache + (size_t)l * m->ctx * kvd, *vc = s->v_cache + (size_t)l * m->ctx * kvd;
        for (t = 0; t < n; t++)
            rmsnorm(w.x + (size_t)t * dim, L->attn_norm, dim, m->eps, w.xn + (size_t)t * dim);
        edgeq_llm_quantize(w.xn, n, dim, s->xq, w.xs, s->xsum);
        edgeq_llm_matvec(&L->wq, s->xq, w.xs, s->xsum, n, w.q);
        edgeq_llm_matvec(&L->wk, s->xq, w.xs, s->xsum, n, w.k);
        edgeq_llm_matvec(&L->wv, s->xq, w.xs, s->xsum, n, w.v);
        for (t = 0; t < n; t++) {
            const float *cr = m->rope_cos + (size_t)(pos + t) * (hd / 2), *sr = m->rope_sin + (size_t)(pos + t) * (hd / 2);
            rope(w.q + (size_t)t * qd, m->n_heads, hd, cr, sr);
            rope(w.k + (size_t)t * kvd, m->n_kv_heads, hd, cr, sr);
            for (i = 0; i < kvd; i++)
                kc[(size_t)i * m->ctx + pos + t] = w.k[(size_t)t * kvd + i];
            memcpy(vc + (size_t)(pos + t) * kvd, w.v + (size_t)t * kvd, sizeof(float) * kvd);
        }
        for (t = 0; t < n; t++)
            attention(m, kc, vc, w.q + (size_t)t * qd, pos + t, w.scores, w.att + (size_t)t * qd);
        linear(s, &w, &L->wo, w.att, n, w.tmp);
        for (i = 0; i < n * dim; i++)
            w.x[i] = w.x[i] + w.tmp[i];
        for (t = 0; t < n; t++)
            rmsnorm(w.x + (size_t)t * dim, L->ffn_norm, dim, m->eps, w.xn + (size_t)t * dim);
        edgeq_llm_quantize(w.xn, n, dim, s->xq, w.xs, s->xsum);
        edgeq_llm_matvec(&L->gate, s->xq, w.xs, s->xsum, n, w.gate);
        edgeq_llm_matvec(&L->up, s->xq, w.xs, s->xsum, n, w.up);
        for (i = 0; i < n * ffn; i++) {
            float g = w.gate[i];
            w.gate[i] = (g / (1.0f + exp_f32(-g))) * w.up[i];
        }
        linear(s, &w, &L->down, w.gate, n, w.tmp);
        for (i = 0; i < n * dim; i++)
            w.x[i] = w.x[i] + w.tmp[i];
    }
    t = all_logits ? 0 : n - 1;
    for (i = t; i < n; i++)
        rmsnorm(w.x + (size_t)i * dim, m->out_norm, dim, m->eps, w.xn + (size_t)i * dim);
    linear(s, &w, &m->head, w.xn + (size_t)t * dim, n - t, logits);
    return EDGEQ_LLM_OK;
}

void edgeq_llm_set_threads(int n)
{
#ifdef _OPENMP
    omp_set_num_threads(n < 1 ? 1 : n);
#else
    (void)n;
#endif
}

int edgeq_llm_get_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

const char *edgeq_llm_simd(void)
{
    return SIMD_NAME;
}
