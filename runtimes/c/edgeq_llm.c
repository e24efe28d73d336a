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

/* ---- the mat-vec (llm_formats.matvec) ----------------------------------------------------------------
   A row is cut into chunks of 64 columns (a last chunk may hold 32) and a chunk into 16 lanes of 4
   columns: lane j of chunk k covers columns 64k + 4j .. 64k + 4j + 3. Per lane and plane the kernels take
   the exact integer dot of those 4 columns (one vpdpbusd / vdotq_s32 lane) and fold it into float lane j
   in the fixed order of llm_formats.matvec, so every SIMD width gives the same bits. xsum holds the sums
   of the quantized activations per 4 columns, xs the scales per 32-block. */

static int chunks_of(int cols)
{
    return (cols + 63) / 64;
}

/* float16 -> float32 of n values (exact on every path). */
static void h2f_n(const uint16_t *h, int n, float *out)
{
    int i = 0;
#if defined(__AVX512F__)
    for (; i < n; i += 16) {
        __mmask16 k = (__mmask16)(n - i >= 16 ? 0xffff : (1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(out + i, k, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, h + i)));
    }
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#endif
    for (; i < n; i++)
        out[i] = h2f(h[i]);
}

/* The scales (and offsets) of rows r0 .. r1-1 in float32, rows one after the other: ds[g * planes + p],
   ms[g] for the first row. */
static void row_scales(const edgeq_llm_mat *w, const fmt_info *f, int32_t r0, int32_t r1, float *ds, float *ms)
{
    int ng = f->group ? w->cols / f->group : 1;
    h2f_n(w->d + (size_t)r0 * ng * f->planes, (r1 - r0) * ng * f->planes, ds);
    if (f->offset)
        h2f_n(w->m + (size_t)r0 * ng, (r1 - r0) * ng, ms);
}

#define MAX_GROUPS (EDGEQ_LLM_MAX_COLS / 32)

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define SIMD_NAME "avx512vnni"
#define AVX512_PATH 1
#define INLINE static inline __attribute__((always_inline))

/* Codes of plane p in chunk k as unsigned bytes (v + the format's code offset) in column order; lanes past a
   32-column tail hold anything (they are never added). */
INLINE __m512i chunk_codes(const int fmt, const uint8_t *q, const int planes, int k, int p, int tail)
{
    if (fmt == EDGEQ_LLM_FMT_INT8) {
        __m512i a = tail ? _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(q + 64 * k)))
                         : _mm512_loadu_si512(q + 64 * k);
        return _mm512_xor_si512(a, _mm512_set1_epi8((char)0x80)); /* v + 128 */
    }
    if (fmt == EDGEQ_LLM_FMT_INT4) {
        /* two 32-groups of 16 bytes (low nibbles: elements 0-15, high: 16-31) -> [lo0, hi0, lo1, hi1] */
        __m256i h = tail ? _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)(q + 32 * k)))
                         : _mm256_loadu_si256((const __m256i *)(q + 32 * k));
        __m512i b = _mm512_broadcast_i64x4(h);
#if defined(__GFNI__)
        /* [bytes 0-15, 0-15, 16-31, 16-31], then one bit-matrix multiply per 128-bit lane picks the low or the
           high nibble (gf2p8affine: byte 7-i of the lane's matrix selects output bit i) */
        const __m512i nibble = _mm512_setr_epi64(0x0102040800000000LL, 0x0102040800000000LL, 0x1020408000000000LL,
                                                 0x1020408000000000LL, 0x0102040800000000LL, 0x0102040800000000LL,
                                                 0x1020408000000000LL, 0x1020408000000000LL);
        return _mm512_gf2p8affine_epi64_epi8(_mm512_shuffle_i64x2(b, b, 0x50), nibble, 0);
#else
        __m512i z = _mm512_mask_srli_epi16(b, 0xffff0000u, b, 4);
        z = _mm512_shuffle_i64x2(z, z, 0xd8);
        return _mm512_and_si512(z, _mm512_set1_epi8(15));
#endif
    }
    if (fmt == EDGEQ_LLM_FMT_TERNARY || fmt == EDGEQ_LLM_FMT_PTQTP) {
        /* byte j holds elements j, j+16, j+32, j+48 at bits 0, 2, 4, 6: 128-bit lane L takes bits 2L, 2L+1 */
        __m512i b = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(q + 16 * (k * planes + p))));
#if defined(__GFNI__)
        const __m512i trit = _mm512_setr_epi64(0x0102000000000000LL, 0x0102000000000000LL, 0x0408000000000000LL,
                                               0x0408000000000000LL, 0x1020000000000000LL, 0x1020000000000000LL,
                                               0x4080000000000000LL, 0x4080000000000000LL);
        return _mm512_gf2p8affine_epi64_epi8(b, trit, 0);
#else
        const __m512i shifts = _mm512_setr_epi64(0, 0, 0x0002000200020002LL, 0x0002000200020002LL,
                                                 0x0004000400040004LL, 0x0004000400040004LL,
                                                 0x0006000600060006LL, 0x0006000600060006LL);
        return _mm512_and_si512(_mm512_srlv_epi16(b, shifts), _mm512_set1_epi8(3));
#endif
    }
    {
        uint64_t bits;
        memcpy(&bits, q + 8 * (k * planes + p), 8);
        return _mm512_maskz_mov_epi8(_cvtu64_mask64(bits), _mm512_set1_epi8(1));
    }
}

/* The unsigned codes' offset as a shift (v + 2^shift), -1 for none: the dots are corrected by 2^shift xsum. */
static inline int code_shift(int fmt)
{
    return fmt == EDGEQ_LLM_FMT_INT8 ? 7 : fmt == EDGEQ_LLM_FMT_INT4 ? 3 : fmt <= EDGEQ_LLM_FMT_PTQTP ? 0 : -1;
}

/* [a x 8, b x 8] from two consecutive floats (only a in a tail: the upper lanes are unused). */
INLINE __m512 pair_vec(const float *p, int tail)
{
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    __m128 v = tail ? _mm_load_ss(p) : _mm_castpd_ps(_mm_load_sd((const double *)p));
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v));
}

/* Scale of plane p for chunk k's lanes. */
INLINE __m512 chunk_scale(const int fmt, const float *ds, const int planes, int k, int p, int tail)
{
    if (fmt == EDGEQ_LLM_FMT_INT8)
        return _mm512_set1_ps(ds[0]);
    if (fmt == EDGEQ_LLM_FMT_INT4)
        return pair_vec(ds + 2 * k, tail);
    return _mm512_set1_ps(ds[k * planes + p]);
}

static inline float fold16(__m512 acc)
{
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    return _mm_cvtss_f32(q);
}

/* Tiles: decode (one token) runs 8 rows at a time, batches 4 rows x 4 tokens (16 accumulators). */
#define DECODE_ROWS 8
#define BATCH_ROWS 4
#define BATCH_TOKENS 4

/* R rows x T tokens: y[t, r0 + i] for i < R, t < T (R, T, fmt constant after inlining: the codes of a chunk
   are decoded once for T tokens, the activations loaded once for R rows). */
INLINE void tile(const int fmt, const int planes, const int offset, const int R, const int T, const edgeq_llm_mat *w,
                 const float *ds, const float *ms, int dstride, int mstride, int32_t r0, const int8_t *xq, const float *xs,
                 const int32_t *xsum, float *y)
{
    const int cols = w->cols, nk = chunks_of(cols), nb = cols / 32, ns = cols / 4, shift = code_shift(fmt);
    const size_t row_bytes = (size_t)cols * FORMATS[fmt].bits / 8;
    const uint8_t *q = (const uint8_t *)w->q + (size_t)r0 * row_bytes;
    __m512 acc[DECODE_ROWS][BATCH_TOKENS];
    int i, t, k, p;
    for (i = 0; i < R; i++)
        for (t = 0; t < T; t++)
            acc[i][t] = _mm512_setzero_ps();
    for (k = 0; k < nk; k++) {
        const int tail = 64 * k + 32 == cols;
        const __mmask16 lanes = tail ? 0xff : 0xffff;
        __m512i x[4], corr[4];
        __m512 xsv[4], xsf[4];
        for (t = 0; t < T; t++) {
            __m512i s = _mm512_maskz_loadu_epi32(lanes, xsum + (size_t)t * ns + 16 * k);
            x[t] = tail ? _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(xq + (size_t)t * cols + 64 * k)))
                        : _mm512_loadu_si512(xq + (size_t)t * cols + 64 * k);
            corr[t] = shift < 0 ? _mm512_setzero_si512() : _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(s, shift));
            xsv[t] = pair_vec(xs + (size_t)t * nb + 2 * k, tail);
            if (offset)
                xsf[t] = _mm512_cvtepi32_ps(s);
        }
        for (i = 0; i < R; i++) {
            const uint8_t *qr = q + (size_t)i * row_bytes;
            const float *dr = ds + (size_t)i * dstride;
            __m512i c[MAX_PLANES];
            __m512 dv[MAX_PLANES], tt[4];
            for (p = 0; p < planes; p++) {
                c[p] = chunk_codes(fmt, qr, planes, k, p, tail);
                dv[p] = chunk_scale(fmt, dr, planes, k, p, tail);
            }
            for (t = 0; t < T; t++) {
                tt[t] = _mm512_mul_ps(dv[0], _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr[t], c[0], x[t])));
                for (p = 1; p < planes; p++)
                    tt[t] = _mm512_add_ps(tt[t], _mm512_mul_ps(dv[p], _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr[t], c[p], x[t]))));
                if (offset)
                    tt[t] = _mm512_add_ps(tt[t], _mm512_mul_ps(_mm512_set1_ps(ms[(size_t)i * mstride + k]), xsf[t]));
                acc[i][t] = _mm512_mask_add_ps(acc[i][t], lanes, acc[i][t], _mm512_mul_ps(tt[t], xsv[t]));
            }
        }
    }
    for (t = 0; t < T; t++)
        for (i = 0; i < R; i++)
            y[(size_t)t * w->rows + r0 + i] = fold16(acc[i][t]);
}

/* Rows r0 .. r1-1 (at most DECODE_ROWS) for all n tokens. */
INLINE void rows_fmt(const int fmt, const int planes, const int offset, const edgeq_llm_mat *w, int32_t r0, int32_t r1,
                     const int8_t *xq, const float *xs, const int32_t *xsum, int32_t n, float *y)
{
    float ds[DECODE_ROWS * MAX_PLANES * MAX_GROUPS], ms[DECODE_ROWS * MAX_GROUPS];
    const int ng = FORMATS[fmt].group ? w->cols / FORMATS[fmt].group : 1, dstride = ng * planes;
    const int cols = w->cols, nb = cols / 32, ns = cols / 4;
    int32_t r, t;
    row_scales(w, &FORMATS[fmt], r0, r1, ds, ms);
    if (n == 1) {
        if (r1 - r0 == DECODE_ROWS)
            tile(fmt, planes, offset, DECODE_ROWS, 1, w, ds, ms, dstride, ng, r0, xq, xs, xsum, y);
        else
            for (r = r0; r < r1; r++)
                tile(fmt, planes, offset, 1, 1, w, ds + (r - r0) * dstride, ms + (r - r0) * ng, dstride, ng, r, xq, xs,
                     xsum, y);
        return;
    }
    for (r = r0; r < r1;) {
        const int R = r1 - r >= BATCH_ROWS ? BATCH_ROWS : 1;
        const float *dr = ds + (r - r0) * dstride, *mr = ms + (r - r0) * ng;
        for (t = 0; t < n;) {
            const int T = n - t >= BATCH_TOKENS ? BATCH_TOKENS : 1;
            const int8_t *x = xq + (size_t)t * cols;
            const float *sx = xs + (size_t)t * nb;
            const int32_t *u = xsum + (size_t)t * ns;
            float *o = y + (size_t)t * w->rows;
            if (R == BATCH_ROWS && T == BATCH_TOKENS)
                tile(fmt, planes, offset, BATCH_ROWS, BATCH_TOKENS, w, dr, mr, dstride, ng, r, x, sx, u, o);
            else if (R == BATCH_ROWS)
                tile(fmt, planes, offset, BATCH_ROWS, 1, w, dr, mr, dstride, ng, r, x, sx, u, o);
            else if (T == BATCH_TOKENS)
                tile(fmt, planes, offset, 1, BATCH_TOKENS, w, dr, mr, dstride, ng, r, x, sx, u, o);
            else
                tile(fmt, planes, offset, 1, 1, w, dr, mr, dstride, ng, r, x, sx, u, o);
            t += T;
        }
        r += R;
    }
}

static void rows_any(const edgeq_llm_mat *w, int32_t r0, int32_t r1, const int8_t *xq, const float *xs,
                     const int32_t *xsum, int32_t n, float *y)
{
    switch (w->fmt) {
    case EDGEQ_LLM_FMT_INT8:
        rows_fmt(EDGEQ_LLM_FMT_INT8, 1, 0, w, r0, r1, xq, xs, xsum, n, y);
        break;
    case EDGEQ_LLM_FMT_INT4:
        rows_fmt(EDGEQ_LLM_FMT_INT4, 1, 0, w, r0, r1, xq, xs, xsum, n, y);
        break;
    case EDGEQ_LLM_FMT_TERNARY:
        rows_fmt(EDGEQ_LLM_FMT_TERNARY, 1, 0, w, r0, r1, xq, xs, xsum, n, y);
        break;
    case EDGEQ_LLM_FMT_PTQTP:
        rows_fmt(EDGEQ_LLM_FMT_PTQTP, 2, 0, w, r0, r1, xq, xs, xsum, n, y);
        break;
    case EDGEQ_LLM_FMT_LUT2:
        rows_fmt(EDGEQ_LLM_FMT_LUT2, 2, 1, w, r0, r1, xq, xs, xsum, n, y);
        break;
    default:
        rows_fmt(EDGEQ_LLM_FMT_LUT3, 3, 1, w, r0, r1, xq, xs, xsum, n, y);
        break;
    }
}
#define ROW_STEP DECODE_ROWS
#else
/* ---- portable paths: a row is unpacked into signed plane values, lane dots per chunk, float in C ---- */
#define ROW_STEP 1
#if defined(__AVX2__)
#define SIMD_NAME "avx2"
/* out[j] = sum of v * x over 4 columns 4j .. 4j+3, for 8 lanes (32 columns) */
static void dots8(const int8_t *v, const int8_t *x, int32_t *out)
{
    __m256i a = _mm256_loadu_si256((const __m256i *)v), b = _mm256_loadu_si256((const __m256i *)x);
    /* |v|, |x| <= 127: |v| * sign(x, v) pairs fit int16 */
    __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
    _mm256_storeu_si256((__m256i *)out, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}
#elif defined(__ARM_NEON) && defined(__aarch64__)
#if defined(__ARM_FEATURE_DOTPROD)
#define SIMD_NAME "neon-dotprod"
#else
#define SIMD_NAME "neon"
#endif
static int32x4_t dots4(int8x16_t a, int8x16_t x)
{
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(vdupq_n_s32(0), a, x);
#else
    return vpaddq_s32(vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(x))),
                      vpaddlq_s16(vmull_s8(vget_high_s8(a), vget_high_s8(x))));
#endif
}
static void dots8(const int8_t *v, const int8_t *x, int32_t *out)
{
    vst1q_s32(out, dots4(vld1q_s8(v), vld1q_s8(x)));
    vst1q_s32(out + 4, dots4(vld1q_s8(v + 16), vld1q_s8(x + 16)));
}
#else
#define SIMD_NAME "scalar"
static void dots8(const int8_t *v, const int8_t *x, int32_t *out)
{
    int j, i;
    for (j = 0; j < 8; j++) {
        int32_t s = 0;
        for (i = 0; i < 4; i++)
            s += (int32_t)v[4 * j + i] * x[4 * j + i];
        out[j] = s;
    }
}
#endif

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

/* The row's plane values v[p * cols + j]: int8 rows are used in place, other formats are unpacked into buf. */
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

/* One row times one token, in llm_formats.matvec's order. */
static float row_dot(const fmt_info *f, int cols, const int8_t *v, const float *ds, const float *ms, const int8_t *x,
                     const float *xs, const int32_t *xsum)
{
    int nk = chunks_of(cols), group = f->group ? f->group : cols, planes = f->planes, k, j, p;
    float acc[16] = {0};
    for (k = 0; k < nk; k++) {
        int nl = 64 * k + 32 == cols ? 8 : 16, c0 = 64 * k;
        int32_t dots[MAX_PLANES][16];
        for (p = 0; p < planes; p++)
            for (j = 0; j < nl; j += 8)
                dots8(v + (size_t)p * cols + c0 + 4 * j, x + c0 + 4 * j, dots[p] + j);
        for (j = 0; j < nl; j++) {
            int c = c0 + 4 * j, g = c / group;
            float t = ds[g * planes] * (float)dots[0][j];
            for (p = 1; p < planes; p++)
                t = t + ds[g * planes + p] * (float)dots[p][j];
            if (f->offset)
                t = t + ms[g] * (float)xsum[c / 4];
            acc[j] = acc[j] + t * xs[c / 32];
        }
    }
    for (j = 8; j >= 1; j /= 2)
        for (p = 0; p < j; p++)
            acc[p] = acc[p] + acc[p + j];
    return acc[0];
}

static void rows_any(const edgeq_llm_mat *w, int32_t r0, int32_t r1, const int8_t *xq, const float *xs,
                     const int32_t *xsum, int32_t n, float *y)
{
    const fmt_info *f = format_of(w->fmt);
    int8_t buf[MAX_PLANES * EDGEQ_LLM_MAX_COLS];
    float ds[MAX_PLANES * MAX_GROUPS], ms[MAX_GROUPS];
    int cols = w->cols;
    int32_t r, t;
    for (r = r0; r < r1; r++) {
        const int8_t *v = row_values(w, f, r, buf);
        row_scales(w, f, r, r + 1, ds, ms);
        for (t = 0; t < n; t++)
            y[(size_t)t * w->rows + r] = row_dot(f, cols, v, ds, ms, xq + (size_t)t * cols, xs + (size_t)t * (cols / 32),
                                                 xsum + (size_t)t * (cols / 4));
    }
}
#endif

/* ---- activations ----------------------------------------------------------------------------- */

void edgeq_llm_quantize(const float *x, int32_t n, int32_t cols, int8_t *xq, float *xs, int32_t *xsum)
{
    int32_t b, i, nb = cols / 32;
    for (b = 0; b < n * nb; b++) {
        const float *xb = x + (size_t)b * 32;
        int8_t *qb = xq + (size_t)b * 32;
        float amax = 0.0f, inv;
        int nan = 0;
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
        }
        for (i = 0; i < 8; i++)
            xsum[(size_t)b * 8 + i] = qb[4 * i] + qb[4 * i + 1] + qb[4 * i + 2] + qb[4 * i + 3];
    }
}

static int mat_ok(const edgeq_llm_mat *w, int32_t rows, int32_t cols)
{
    const fmt_info *f = format_of(w->fmt);
    return f && w->rows == rows && w->cols == cols && rows > 0 && cols > 0 && cols % 32 == 0 &&
           cols <= EDGEQ_LLM_MAX_COLS && (!f->group || cols % f->group == 0) && w->q && w->d &&
           (!f->offset || w->m);
}

/* Decode streams every weight once: asking for rows a little ahead keeps the memory system busy while the
   current ones are computed (the hardware prefetcher alone left a single thread well below the bandwidth it
   reaches on plain copies). */
#ifndef PREFETCH_ROWS
#define PREFETCH_ROWS 8
#endif
#if !defined(__GNUC__)
#define __builtin_prefetch(p, rw, loc) ((void)(p))
#endif
static void prefetch_span(const void *base, size_t row_bytes, int32_t r0, int32_t r1)
{
    const char *b = (const char *)base;
    size_t i, end = (size_t)r1 * row_bytes;
    for (i = (size_t)r0 * row_bytes; i < end; i += 64)
        __builtin_prefetch(b + i, 0, 0);
}

static void prefetch_rows(const edgeq_llm_mat *w, int32_t r0, int32_t r1)
{
    const fmt_info *f = &FORMATS[w->fmt];
    r1 = r1 < w->rows ? r1 : w->rows;
    if (r0 >= r1)
        return;
    prefetch_span(w->q, (size_t)w->cols * f->bits / 8, r0, r1);
}

/* Rows split across the threads of an enclosing parallel region (or run alone): call from every thread. */
static void matvec_rows(const edgeq_llm_mat *w, const int8_t *xq, const float *xs, const int32_t *xsum, int32_t n,
                        float *y)
{
    int32_t steps = (w->rows + ROW_STEP - 1) / ROW_STEP, s;
#pragma omp for schedule(static) nowait
    for (s = 0; s < steps; s++) {
        int32_t r0 = s * ROW_STEP, r1 = r0 + ROW_STEP < w->rows ? r0 + ROW_STEP : w->rows;
        if (n == 1)
            prefetch_rows(w, r0 + PREFETCH_ROWS, r1 + PREFETCH_ROWS);
        rows_any(w, r0, r1, xq, xs, xsum, n, y);
    }
}

/* Several matrices over the same activations in one parallel region: y[i] = mats[i] x. Each region wakes
   the worker threads (a futex round trip with passive waits), so q/k/v and gate/up share one. */
static void matvecs(int count, const edgeq_llm_mat *const *mats, const int8_t *xq, const float *xs,
                    const int32_t *xsum, int32_t n, float *const *ys)
{
#pragma omp parallel
    {
        int i;
        for (i = 0; i < count; i++)
            matvec_rows(mats[i], xq, xs, xsum, n, ys[i]);
    }
}

int edgeq_llm_matvec(const edgeq_llm_mat *w, const int8_t *xq, const float *xs, const int32_t *xsum, int32_t n,
                     float *y)
{
    if (!mat_ok(w, w->rows, w->cols))
        return EDGEQ_LLM_E_MODEL;
    matvecs(1, &w, xq, xs, xsum, n, &y);
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

/* Attention score slots (one per thread; attention runs on at most this many threads). */
#define SCORE_SLOTS(m) (4 * (m)->n_heads)
/* Position blocks of the key cache: [kv head][ctx / 16][head_dim][16], so the 16 scores of a block read
   head_dim contiguous vectors. */
#define POS_BLOCK 16
#define CTX_BLOCKS(m) (((m)->ctx + POS_BLOCK - 1) / POS_BLOCK)

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
    sizes[10] = (int64_t)SCORE_SLOTS(m) * CTX_BLOCKS(m) * POS_BLOCK; /* attention scores, a slot per thread */
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
    sizes[2] = max_batch * widest / 4;
    sizes[3] = (int64_t)m->n_layers * m->n_kv_heads * m->head_dim * CTX_BLOCKS(m) * POS_BLOCK;
    return EDGEQ_LLM_OK;
}

/* Quantize n rows of x [n, cols] and multiply by w: y [n, w->rows]. */
static void linear(edgeq_llm_state *s, work_t *w, const edgeq_llm_mat *mat, const float *x, int32_t n, float *y)
{
    edgeq_llm_quantize(x, n, mat->cols, s->xq, w->xs, s->xsum);
    edgeq_llm_matvec(mat, s->xq, w->xs, s->xsum, n, y);
}

/* Element-wise vector arithmetic (GCC/Clang vector extensions): every lane does exactly the scalar
   operations of llm_reference.py, so the bits do not depend on the SIMD width the compiler picks. */
typedef float vf16 __attribute__((vector_size(64)));
typedef float vf8 __attribute__((vector_size(32)));

/* Scores of one query against the 16 positions of key block kb, times kq_scale, into sc[0 .. 15]
   (llm_reference.dot8 order: dimension i into lane i % 8, lanes combined pairwise), in registers.
   (Vectors never cross a function boundary: their ABI would depend on the target flags.) */
static void scores16(const float *qh, const float *kb, int32_t hd, float scale, float *sc)
{
    vf16 l[8], r;
    int i, j;
    for (j = 0; j < 8; j++) {
        memcpy(&r, kb + (size_t)j * POS_BLOCK, sizeof r);
        l[j] = qh[j] * r;
    }
    for (i = 8; i < hd; i += 8)
        for (j = 0; j < 8; j++) {
            memcpy(&r, kb + (size_t)(i + j) * POS_BLOCK, sizeof r);
            l[j] = l[j] + qh[i + j] * r;
        }
    r = (((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))) * scale;
    memcpy(sc, &r, sizeof r);
}

/* o[0 .. NV vectors of VT) = sum over positions p in order of sc[p] * v[p] (rows kvd apart), then / total;
   the NV accumulators run side by side. One body for 64 dimensions in 16-wide vectors and 8 in 8-wide ones. */
#define WEIGH_VALUES(name, VT, NV)                                                                             \
    static void name(const float *v, int32_t kvd, const float *sc, int32_t n, float total, float *o)          \
    {                                                                                                        \
        const int w = (int)(sizeof(VT) / sizeof(float));                                                    \
        VT acc[NV], r;                                                                                       \
        int32_t p;                                                                                           \
        int u;                                                                                               \
        for (u = 0; u < NV; u++) {                                                                           \
            memcpy(&r, v + w * u, sizeof r);                                                                 \
            acc[u] = sc[0] * r;                                                                              \
        }                                                                                                    \
        for (p = 1; p < n; p++)                                                                              \
            for (u = 0; u < NV; u++) {                                                                       \
                memcpy(&r, v + (size_t)p * kvd + w * u, sizeof r);                                           \
                acc[u] = acc[u] + sc[p] * r;                                                                 \
            }                                                                                                \
        for (u = 0; u < NV; u++) {                                                                           \
            acc[u] = acc[u] / total;                                                                         \
            memcpy(o + w * u, &acc[u], sizeof acc[u]);                                                       \
        }                                                                                                    \
    }
WEIGH_VALUES(weigh_values64, vf16, 4)
WEIGH_VALUES(weigh_values8, vf8, 1)

/* One query head over positions 0 .. last (whole 16-position blocks are scored; the cache and sc are padded
   to them, and the scores past `last` are not used). sc: scratch of CTX_BLOCKS * 16 floats. */
static void attend(const edgeq_llm_model *m, const float *kt, const float *vc, const float *qh, int32_t h,
                   int32_t last, float *sc, float *o)
{
    int32_t hd = m->head_dim, kvd = m->n_kv_heads * hd, kvh = h / (m->n_heads / m->n_kv_heads);
    int32_t n = last + 1, p, j;
    const float *k = kt + (size_t)kvh * CTX_BLOCKS(m) * POS_BLOCK * hd, *v = vc + (size_t)kvh * hd;
    float mx, total;
    for (p = 0; p < n; p += POS_BLOCK)
        scores16(qh, k + (size_t)p * hd, hd, m->kq_scale, sc + p);
    mx = sc[0];
    for (p = 1; p < n; p++)
        mx = sc[p] > mx ? sc[p] : mx;
    for (p = 0; p < n; p++)
        sc[p] = exp_f32(sc[p] - mx);
    for (; p % POS_BLOCK; p++)
        sc[p] = 0.0f;
    {   /* position p into lane p % 16, lanes folded in halves (llm_reference) */
        vf16 lanes, r;
        float l[16];
        memcpy(&lanes, sc, sizeof lanes);
        for (p = POS_BLOCK; p < n; p += POS_BLOCK) {
            memcpy(&r, sc + p, sizeof r);
            lanes = lanes + r;
        }
        memcpy(l, &lanes, sizeof l);
        for (j = 8; j >= 1; j /= 2)
            for (p = 0; p < j; p++)
                l[p] = l[p] + l[p + j];
        total = l[0];
    }
    for (j = 0; j + 64 <= hd; j += 64)
        weigh_values64(v + j, kvd, sc, n, total, o + j);
    for (; j < hd; j += 8) /* head_dim is a multiple of 8 */
        weigh_values8(v + j, kvd, sc, n, total, o + j);
}

/* Attention of n tokens (token t at position pos + t, its keys and values already cached), one parallel loop
   over (token, head) pairs; each thread scores into its own slot of `scratch` (`slots` of them). */
static void attention(const edgeq_llm_model *m, const float *kt, const float *vc, const float *q, int32_t n,
                      int32_t pos, float *scratch, int32_t slots, float *out)
{
    int32_t qd = m->n_heads * m->head_dim, pairs = n * m->n_heads, i;
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads() < slots ? omp_get_max_threads() : slots;
#endif
    (void)slots, (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (i = 0; i < pairs; i++) {
        int32_t t = i / m->n_heads, h = i % m->n_heads, slot = 0;
#ifdef _OPENMP
        slot = omp_get_thread_num();
#endif
        attend(m, kt, vc, q + (size_t)t * qd + (size_t)h * m->head_dim, h, pos + t, scratch + (size_t)slot * CTX_BLOCKS(m) * POS_BLOCK,
               out + (size_t)t * qd + (size_t)h * m->head_dim);
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
        float *kc = s->k_cache + (size_t)l * CTX_BLOCKS(m) * POS_BLOCK * kvd, *vc = s->v_cache + (size_t)l * m->ctx * kvd;
        for (t = 0; t < n; t++)
            rmsnorm(w.x + (size_t)t * dim, L->attn_norm, dim, m->eps, w.xn + (size_t)t * dim);
        edgeq_llm_quantize(w.xn, n, dim, s->xq, w.xs, s->xsum);
        {
            const edgeq_llm_mat *mats[3] = {&L->wq, &L->wk, &L->wv};
            float *ys[3] = {w.q, w.k, w.v};
            matvecs(3, mats, s->xq, w.xs, s->xsum, n, ys);
        }
        for (t = 0; t < n; t++) {
            const float *cr = m->rope_cos + (size_t)(pos + t) * (hd / 2), *sr = m->rope_sin + (size_t)(pos + t) * (hd / 2);
            rope(w.q + (size_t)t * qd, m->n_heads, hd, cr, sr);
            rope(w.k + (size_t)t * kvd, m->n_kv_heads, hd, cr, sr);
            for (i = 0; i < kvd; i++)
                kc[(((size_t)(i / hd) * CTX_BLOCKS(m) + (pos + t) / POS_BLOCK) * hd + i % hd) * POS_BLOCK + (pos + t) % POS_BLOCK] =
                    w.k[(size_t)t * kvd + i];
            memcpy(vc + (size_t)(pos + t) * kvd, w.v + (size_t)t * kvd, sizeof(float) * kvd);
        }
        attention(m, kc, vc, w.q, n, pos, w.scores, SCORE_SLOTS(m), w.att);
        linear(s, &w, &L->wo, w.att, n, w.tmp);
        for (i = 0; i < n * dim; i++)
            w.x[i] = w.x[i] + w.tmp[i];
        for (t = 0; t < n; t++)
            rmsnorm(w.x + (size_t)t * dim, L->ffn_norm, dim, m->eps, w.xn + (size_t)t * dim);
        edgeq_llm_quantize(w.xn, n, dim, s->xq, w.xs, s->xsum);
        {
            const edgeq_llm_mat *mats[2] = {&L->gate, &L->up};
            float *ys[2] = {w.gate, w.up};
            matvecs(2, mats, s->xq, w.xs, s->xsum, n, ys);
        }
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
