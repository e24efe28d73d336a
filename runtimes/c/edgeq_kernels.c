/*
 * edgeq integer kernels (see edgeq_kernels.h for the contract).
 *
 * Convolutions accumulate w * (x - x_zp) exactly in int32 (see EDGEQ_K_INT32) and requantize per
 * output channel; they take one of three paths:
 *   - dot (patches of at least EDGEQ_DOT_MIN_K shared by several output channels): a tile of the input
 *     is copied channels-last as uint8 x + 128, each output position's patch is assembled from
 *     contiguous runs and zero padded to whole vectors, the weights are reordered to the same
 *     (kh, kw, c) order, and every output is a uint8 x int8 dot product (gcc: vpdpbusd with AVX-VNNI,
 *     pmaddwd/sdot elsewhere) corrected by (x_zp + 128) * sum(w).
 *   - plane (depthwise, first layers, short patches): for a tile of output rows the group's input is
 *     copied as int16 x - x_zp with the padding written out and strides split into phases, so every
 *     (channel, tap) is one unit-stride `acc[i] += w * x[i + offset]` over output positions, with
 *     EDGEQ_OC_BLOCK x EDGEQ_VPOS accumulators held in vector registers.
 *   - scalar: the last resort for patches no scratch budget fits.
 * With AVX-512 (VNNI) the host paths of their own sections come first: depthwise and few-channel first
 * layers as byte quads, stride-1 convolutions with many input channels over a padded band (implicit
 * im2col), other single-group convolutions as im2col tiles (pointwise).
 * Loops that matter are written with constant trip counts or whole-vector padding so gcc -O3 emits
 * them without scalar remainders. Nothing allocates: scratch is stack arrays sized by the budgets
 * below (edgeq_kernels.h lists them and the stack they imply).
 */
#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "edgeq_kernels.h"

#ifndef EDGEQ_SCRATCH_BYTES
#define EDGEQ_SCRATCH_BYTES 49152
#endif
#ifndef EDGEQ_TILE_BYTES
#define EDGEQ_TILE_BYTES 32768
#endif
#ifndef EDGEQ_PATCH_BYTES
#define EDGEQ_PATCH_BYTES 32768
#endif
#ifndef EDGEQ_WEIGHT_BYTES
#define EDGEQ_WEIGHT_BYTES 131072
#endif
#ifndef EDGEQ_PAR_MIN_WORK
#define EDGEQ_PAR_MIN_WORK 200000
#endif
#ifndef EDGEQ_PAR_MIN_ELEMS
#define EDGEQ_PAR_MIN_ELEMS 8192 /* elementwise ops: elements below which they stay single-threaded */
#endif
#if EDGEQ_SCRATCH_BYTES < 64 || EDGEQ_TILE_BYTES < 64 || EDGEQ_PATCH_BYTES < 128 || EDGEQ_WEIGHT_BYTES < 2048
#error "edgeq scratch budgets too small (see edgeq_kernels.h)"
#endif
/* Weights a dot-path job reorders at a time when a convolution's weights exceed EDGEQ_WEIGHT_BYTES
 * (then every job reorders its own, so this sits on every thread's stack). */
#define EDGEQ_WEIGHT_CHUNK (EDGEQ_WEIGHT_BYTES / 8)
/* Output positions the plane kernel and the pools process per pass (whole tile rows). */
#define EDGEQ_CHUNK 256
/* Output positions the plane kernel keeps in registers for each of EDGEQ_OC_BLOCK output channels:
 * EDGEQ_OC_BLOCK * EDGEQ_VPOS int32 must fit the vector register file (16 zmm with AVX-512, 16 ymm
 * with AVX2, 16 of NEON's 32 q registers). EDGEQ_CHUNK is a multiple of it. */
#ifndef EDGEQ_VPOS
#if defined(__AVX512F__)
#define EDGEQ_VPOS 64
#elif defined(__AVX2__)
#define EDGEQ_VPOS 32
#else
#define EDGEQ_VPOS 16
#endif
#endif
#if defined(__GNUC__)
#define EDGEQ_ALIGN64 __attribute__((aligned(64)))
#else
#define EDGEQ_ALIGN64
#endif
#if defined(__GNUC__)
#define EDGEQ_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define EDGEQ_ALWAYS_INLINE inline
#endif
/* The dot path: patches padded to a multiple of EDGEQ_KALIGN bytes (whole vectors, no remainder
 * loops); at most EDGEQ_DOT_POS positions per tile. It beats the plane kernel from patches of about
 * EDGEQ_DOT_MIN_K bytes on, unless padding wastes more than a quarter of a short patch (measured on
 * AVX-512 VNNI; see dot_worthwhile). */
#define EDGEQ_KALIGN 64
#define EDGEQ_DOT_POS 512
#ifndef EDGEQ_DOT_MIN_K
#define EDGEQ_DOT_MIN_K 64
#endif
/* Output channels computed together: each input row or patch is loaded once for all of them. */
#define EDGEQ_OC_BLOCK 4
/* Most kernel taps (KH * KW) the plane kernel and the pools' per-tap passes handle. */
#define EDGEQ_MAX_TAPS 256
/* Largest patch (C/group * KH * KW) for which no partial sum of w * (x - x_zp) can leave int32:
 * |w| <= 128 and |x - x_zp| <= 255. */
#define EDGEQ_K_INT32 65793
/* Bound on every dimension a program may use, so that window arithmetic stays within int32. */
#define EDGEQ_DIM_MAX ((int64_t)1 << 30)
/* Reduction length of QMatMul / QConvTranspose: 33000 * 255 * 255 < 2^31, so int32 sums cannot overflow. */
#define EDGEQ_MATMUL_K_MAX 33000
/* Row length of QLayerNorm: keeps the sum of squared (scaled) deviations inside int64. */
#define EDGEQ_LN_COLS_MAX 4096

static int edgeq_threads = 1;

#ifdef _OPENMP
#define EDGEQ_PRAGMA(x) _Pragma(#x)
/* Parallel loop over independent jobs, only when `cond` says the work pays for the fork. */
#define EDGEQ_PARALLEL_FOR(cond) \
    EDGEQ_PRAGMA(omp parallel for schedule(static) num_threads(edgeq_threads) if ((cond) && edgeq_threads > 1))
#else
#define EDGEQ_PARALLEL_FOR(cond)
#endif

void edgeq_set_threads(int n)
{
    edgeq_threads = n < 1 ? 1 : n;
}

int edgeq_get_threads(void)
{
#ifdef _OPENMP
    return edgeq_threads;
#else
    return 1;
#endif
}

int edgeq_has_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* ---- Shared pieces ------------------------------------------------------------------------------ */

static inline int32_t min_i32(int32_t a, int32_t b)
{
    return a < b ? a : b;
}

/* Arithmetic shift right without relying on how the compiler shifts negative values. */
static inline int32_t asr32(int32_t x, int32_t e)
{
    return x < 0 ? ~(~x >> e) : x >> e;
}

/* np.clip semantics: max with lo first, then min with hi (so hi wins if lo > hi). */
static inline int32_t clip_i64(int64_t v, int32_t lo, int32_t hi)
{
    if (v < lo)
        v = lo;
    if (v > hi)
        v = hi;
    return (int32_t)v;
}

/* Outputs o in [o_lo, o_hi) whose tap o * stride + off falls inside [0, n); result in [*lo, *hi). */
static void tap_range(int32_t o_lo, int32_t o_hi, int32_t stride, int32_t off, int32_t n, int32_t *lo,
                      int32_t *hi)
{
    int64_t first, end;
    int64_t room = (int64_t)n - off; /* taps before the end of the input */
    if (stride == 1) { /* the common case: no division */
        first = off >= 0 ? 0 : -(int64_t)off;
        end = room > 0 ? room : 0;
    } else {
        first = off >= 0 ? 0 : (-(int64_t)off + stride - 1) / stride;
        end = room > 0 ? (room + stride - 1) / stride : 0;
    }
    if (first < o_lo)
        first = o_lo;
    if (end > o_hi)
        end = o_hi;
    if (end < first)
        end = first;
    *lo = (int32_t)first;
    *hi = (int32_t)end;
}

/* ---- Cortex-M DSP extension (ARMv7E-M, v8-M Main with DSP): dual 16-bit multiply-accumulates, saturating adds.
 * EDGEQ_NO_SIMD turns these paths off too. */
#if defined(__ARM_FEATURE_DSP) && !defined(EDGEQ_NO_SIMD)
#define EDGEQ_ARM_DSP 1
#include <arm_acle.h>

static inline uint32_t load_u32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v); /* one LDR: ARMv7E-M and v8-M Main allow unaligned word loads */
    return v;
}

/* gcc folds this rotate into the extend instruction (SXTB16 rd, rm, ROR #8). */
static inline uint32_t ror8(uint32_t v)
{
    return v >> 8 | v << 24;
}
#else
#define EDGEQ_ARM_DSP 0
#endif

/* Everything needed to turn one output channel's accumulators into int8. */
typedef struct {
    int32_t bias, mult, shift, y_zp, lo, hi;
    const int8_t *lut;
} requant_t;

/* The generic MultiplyByQuantizedMultiplier of one accumulator (any shift), then zero point, clamp, table. */
static int8_t finish_one(int64_t v, const requant_t *q)
{
    const int8_t y = (int8_t)clip_i64((int64_t)edgeq_mbqm(v, q->mult, q->shift) + q->y_zp, q->lo, q->hi);
    return q->lut ? q->lut[y + 128] : y;
}

/* ---- x86 SIMD helpers (AVX-512 F/BW/DQ/VL; EDGEQ_NO_SIMD forces the portable C everywhere) ------ */
#if !defined(EDGEQ_NO_SIMD) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
    defined(__AVX512VL__)
#include <immintrin.h>
#define EDGEQ_AVX512 1
#else
#define EDGEQ_AVX512 0
#endif

#if EDGEQ_AVX512
/* Constants of one MultiplyByQuantizedMultiplier with an ordinary scale (0 <= left, right <= 31,
 * mult != INT32_MIN: SaturatingRoundingDoublingHighMul cannot saturate). */
typedef struct {
    __m512i mult, nudge, mask, half, sat_hi, sat_lo;
    int left, right;
} vmbqm_t;

static inline int mbqm_ordinary(int32_t mult, int32_t shift)
{
    return shift >= -31 && shift <= 31 && mult != INT32_MIN;
}

static inline vmbqm_t vmbqm_make(int32_t mult, int32_t shift)
{
    vmbqm_t m;
    m.left = shift > 0 ? shift : 0;
    m.right = shift > 0 ? 0 : -shift;
    m.mult = _mm512_set1_epi64(mult);
    m.nudge = _mm512_set1_epi64((int64_t)1 << 30);
    m.mask = _mm512_set1_epi32((int32_t)(((uint32_t)1 << m.right) - 1u));
    m.half = _mm512_set1_epi32((int32_t)((((uint32_t)1 << m.right) - 1u) >> 1));
    m.sat_hi = _mm512_set1_epi32(INT32_MAX >> m.left);
    m.sat_lo = _mm512_set1_epi32(asr32(INT32_MIN, m.left));
    return m;
}

/* edgeq_mbqm of 16 int32 values (exact: see requant_fast for the floor form of the doubling high mul). */
static inline __m512i vmbqm(__m512i v, const vmbqm_t *m)
{
    __m512i pe, po, r;
    if (m->left) {
        const __mmask16 hi = _mm512_cmpgt_epi32_mask(v, m->sat_hi), lo = _mm512_cmplt_epi32_mask(v, m->sat_lo);
        v = _mm512_sllv_epi32(v, _mm512_set1_epi32(m->left));
        v = _mm512_mask_mov_epi32(v, hi, _mm512_set1_epi32(INT32_MAX));
        v = _mm512_mask_mov_epi32(v, lo, _mm512_set1_epi32(INT32_MIN));
    }
    pe = _mm512_add_epi64(_mm512_mul_epi32(v, m->mult), m->nudge);
    po = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(v, 32), m->mult), m->nudge);
    /* bits 31..62 of each product: low half of pe >> 31, high half of po << 1 */
    r = _mm512_mask_blend_epi32((__mmask16)0xAAAA, _mm512_srli_epi64(pe, 31), _mm512_slli_epi64(po, 1));
    if (m->right) {
        const __m512i thr = _mm512_sub_epi32(m->half, _mm512_srai_epi32(r, 31));
        const __mmask16 up = _mm512_cmpgt_epi32_mask(_mm512_and_si512(r, m->mask), thr);
        r = _mm512_srai_epi32(r, m->right);
        r = _mm512_mask_add_epi32(r, up, r, _mm512_set1_epi32(1));
    }
    return r;
}

/* Store the low bytes of 16 int32 lanes, the first n (>= 1) of them (the masked memory form of vpmovdb
 * is slow on some cores: narrow in registers, then a plain or masked byte store). */
static inline void store16_i8(int8_t *y, __m512i v, int32_t n)
{
    const __m128i b = _mm512_cvtepi32_epi8(v);
    if (n >= 16)
        _mm_storeu_si128((__m128i *)y, b);
    else
        _mm_mask_storeu_epi8(y, (__mmask16)((1u << n) - 1u), b);
}

/* a + b saturated to int32. */
static inline __m512i vadds32(__m512i a, __m512i b)
{
    const __m512i s = _mm512_add_epi32(a, b);
    /* overflow iff a and b share a sign that s does not: sign bit of (a ^ s) & (b ^ s) */
    const __mmask16 ovf = _mm512_movepi32_mask(_mm512_ternarylogic_epi32(a, b, s, 0x42));
    const __m512i sat = _mm512_xor_si512(_mm512_srai_epi32(a, 31), _mm512_set1_epi32(INT32_MAX));
    return _mm512_mask_mov_epi32(s, ovf, sat);
}

/* requant_row for ordinary scales: 16 accumulators at a time, the tail masked. */
static void requant_row_avx512(const int32_t *acc, int32_t n, const requant_t *q, int8_t *y)
{
    const vmbqm_t m = vmbqm_make(q->mult, q->shift);
    const __m512i bias = _mm512_set1_epi32(q->bias), zp = _mm512_set1_epi32(q->y_zp);
    const __m512i lo = _mm512_set1_epi32(q->lo - q->y_zp), hi = _mm512_set1_epi32(q->hi - q->y_zp);
    int32_t i;
    for (i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
        __m512i v = vadds32(_mm512_maskz_loadu_epi32(k, acc + i), bias);
        v = vmbqm(v, &m);
        v = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(v, lo), hi), zp);
        store16_i8(y + i, v, n - i);
    }
}
#endif

/* requant_row for ordinary scales (|shift| <= 31, mult != INT32_MIN), branch-free so that it
 * vectorises. Exactness: |acc + bias| < 2^32, so a left shift <= 31 cannot overflow int64; without
 * mult == INT32_MIN SaturatingRoundingDoublingHighMul cannot saturate, and then its nudge-and-truncate
 * equals floor((a * b + 2^30) / 2^31) for every product (for a * b < 0 with u = a * b + 2^30, both
 * trunc((u - 2^31 + 1) / 2^31) and floor(u / 2^31) are 0 when u >= 0 and -ceil(-u / 2^31) when u < 0).
 * `left` is a constant at each call site, so the multiply disappears when shift <= 0. */
static EDGEQ_ALWAYS_INLINE void requant_fast(const int32_t *restrict acc, int32_t n, const requant_t *q,
                                             int8_t *restrict y, int left)
{
    const int64_t scale = (int64_t)1 << (q->shift > 0 ? q->shift : 0);
    const int32_t right = q->shift > 0 ? 0 : -q->shift;
    const int32_t mask = (int32_t)(((uint32_t)1 << right) - 1u), half = mask >> 1;
    const int64_t mult = q->mult, bias = q->bias;
    /* Clamp before adding the zero point: r may be close to INT32_MAX. */
    const int32_t y_zp = q->y_zp, lo = q->lo - q->y_zp, hi = q->hi - q->y_zp;
    int32_t i;
    for (i = 0; i < n; i++) {
        int64_t v = (int64_t)acc[i] + bias;
        int32_t r;
#if EDGEQ_ARM_DSP
        if (!left) { /* the int32 clamp of acc + bias is one saturating QADD; then one SMLAL */
            r = (int32_t)edgeq_asr64((int64_t)__qadd(acc[i], q->bias) * q->mult + ((int64_t)1 << 30), 31);
        } else
#endif
        {
            if (left)
                v *= scale;
            v = v > INT32_MAX ? INT32_MAX : (v < INT32_MIN ? INT32_MIN : v);
            r = (int32_t)edgeq_asr64(v * mult + ((int64_t)1 << 30), 31);
        }
        r = asr32(r, right) + ((r & mask) > half + (r < 0));
        r = r < lo ? lo : r;
        y[i] = (int8_t)((r > hi ? hi : r) + y_zp);
    }
}

/* y = lut?[clip(mbqm(acc + bias) + y_zp)] for a row of accumulators (reference._finish). */
static void requant_row(const int32_t *restrict acc, int32_t n, const requant_t *q, int8_t *restrict y)
{
    int32_t i;
    if (q->shift < -31 || q->shift > 31 || q->mult == INT32_MIN) {
        for (i = 0; i < n; i++)
            y[i] = finish_one((int64_t)acc[i] + q->bias, q);
        return;
    }
#if EDGEQ_AVX512
    requant_row_avx512(acc, n, q, y);
#else
    if (q->shift > 0)
        requant_fast(acc, n, q, y, 1);
    else
        requant_fast(acc, n, q, y, 0);
#endif
    if (q->lut)
        for (i = 0; i < n; i++)
            y[i] = q->lut[y[i] + 128];
}

/* ---- Convolution -------------------------------------------------------------------------------- */

typedef struct {
    const int8_t *x, *w;
    const int32_t *bias, *mult, *shift;
    const int8_t *lut;
    int8_t *y;
    int32_t C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, group, x_zp, y_zp, lo, hi;
    int32_t cg, ocg, K; /* input channels per group, output channels per group, patch length */
} conv_t;

static requant_t conv_requant(const conv_t *a, int32_t oc)
{
    requant_t q;
    q.bias = a->bias[oc];
    q.mult = a->mult[oc];
    q.shift = a->shift[oc];
    q.y_zp = a->y_zp;
    q.lo = a->lo;
    q.hi = a->hi;
    q.lut = a->lut;
    return q;
}

/* Output values: what requantization-bound kernels (depthwise) cost, rather than conv_work. */
static inline int64_t conv_outputs(const conv_t *a)
{
    return (int64_t)a->OC * a->OH * a->OW;
}

static int64_t conv_work(const conv_t *a)
{
    return (int64_t)a->OC * a->OH * a->OW * a->K;
}

/* Plane kernel tile geometry. */
typedef struct {
    int32_t KR, KC; /* furthest tap offset, in phase rows and phase columns */
    int32_t R, Wt;  /* output rows and columns per tile */
} plane_t;

/* Split a tap offset t * d into k * s + p (0 <= p < s) incrementally: advance from tap t to t + 1. */
static inline void phase_step(int32_t *k, int32_t *p, int32_t d, int32_t s)
{
    if (s == 1) {
        *k += d;
        return;
    }
    *p += d;
    *k += *p / s;
    *p %= s;
}

/* Pick the largest tile whose input copy fits EDGEQ_SCRATCH_BYTES (rows first, then narrower columns);
 * 0 when none does or when a partial sum could leave int32. */
static int plane_geometry(const conv_t *a, plane_t *pg)
{
    int64_t unit, wt, r;
    if (a->K > EDGEQ_K_INT32 || a->sh > 16 || a->sw > 16 || a->KH * a->KW > EDGEQ_MAX_TAPS)
        return 0;
    pg->KR = (int32_t)((int64_t)(a->KH - 1) * a->dh / a->sh);
    pg->KC = (int32_t)((int64_t)(a->KW - 1) * a->dw / a->sw);
    if (pg->KC >= EDGEQ_CHUNK || pg->KR > (1 << 20))
        return 0;
    unit = (int64_t)a->cg * a->sh * a->sw * (int64_t)sizeof(int16_t); /* one column of all phases */
    wt = a->OW < EDGEQ_CHUNK - pg->KC ? a->OW : EDGEQ_CHUNK - pg->KC;
    r = EDGEQ_SCRATCH_BYTES / (unit * (wt + pg->KC)) - pg->KR - 1;
    if (r < 1) {
        r = 1;
        wt = EDGEQ_SCRATCH_BYTES / (unit * (pg->KR + 2)) - pg->KC;
        if (wt < 1)
            return 0;
    }
    pg->R = (int32_t)(r < a->OH ? r : a->OH);
    pg->Wt = (int32_t)(wt < a->OW ? wt : a->OW);
    return 1;
}

/* The column phases of one input row: d[pw * phase_stride + q] = row[iw0 + q * sw + pw] - zp for q in
 * [lo[pw], hi[pw]), the columns inside the input. Unit stride is a plain widening copy; stride 2 gets a
 * pass producing both phases at once, a de-interleave gcc vectorises; other strides go phase by phase. */
static void widen_phases(int16_t *restrict d, int64_t phase_stride, const int8_t *restrict row, int32_t iw0,
                         int32_t sw, const int32_t *lo, const int32_t *hi, int16_t zp)
{
    int32_t pw, q, a = 0, b = 0; /* [a, b): the range the stride-2 pass already did */
    if (sw == 1) {
        for (q = lo[0]; q < hi[0]; q++)
            d[q] = (int16_t)(row[(int64_t)iw0 + q] - zp);
        return;
    }
    if (sw == 2) {
        int16_t *restrict d1 = d + phase_stride;
        a = lo[0] > lo[1] ? lo[0] : lo[1];
        b = hi[0] < hi[1] ? hi[0] : hi[1];
        for (q = a; q < b; q++) {
            d[q] = (int16_t)(row[(int64_t)iw0 + 2 * q] - zp);
            d1[q] = (int16_t)(row[(int64_t)iw0 + 2 * q + 1] - zp);
        }
        if (b < a)
            b = a;
    }
    for (pw = 0; pw < sw; pw++) {
        int16_t *restrict dp = d + pw * phase_stride;
        const int32_t end = hi[pw] < a ? hi[pw] : a;
        for (q = lo[pw]; q < end; q++)
            dp[q] = (int16_t)(row[(int64_t)iw0 + pw + (int64_t)q * sw] - zp);
        for (q = lo[pw] > b ? lo[pw] : b; q < hi[pw]; q++)
            dp[q] = (int16_t)(row[(int64_t)iw0 + pw + (int64_t)q * sw] - zp);
    }
}

/* Copy the input under output rows [oh0, oh0 + R) x columns [ow0, ow0 + Wt) of group g into Xp as
 * int16 x - x_zp, zero where the window leaves the input, split by stride phase so that every tap of
 * the tile reads one contiguous, unit-stride range. Layout [c][row phase][column phase][Rq][Wq]. */
static void plane_build(const conv_t *a, const plane_t *pg, int32_t g, int32_t oh0, int32_t R, int32_t ow0,
                        int32_t Wt, int16_t *Xp)
{
    const int32_t Rq = R + pg->KR + 1, Wq = Wt + pg->KC;
    const int32_t ih0 = oh0 * a->sh - a->pt, iw0 = ow0 * a->sw - a->pl;
    const int64_t plane = (int64_t)Rq * Wq, per_channel = plane * a->sh * a->sw;
    const int16_t zp = (int16_t)a->x_zp;
    int32_t lo[16], hi[16]; /* valid columns of each column phase (sw <= 16 by plane_geometry) */
    int32_t c, ph, pw, r;
    for (pw = 0; pw < a->sw; pw++)
        tap_range(0, Wq, a->sw, iw0 + pw, a->W, &lo[pw], &hi[pw]);
    for (c = 0; c < a->cg; c++) {
        const int8_t *xc = a->x + ((int64_t)g * a->cg + c) * a->H * a->W;
        int16_t *dc = Xp + c * per_channel;
        memset(dc, 0, sizeof(int16_t) * (size_t)per_channel); /* padding; valid segments overwrite it */
        for (ph = 0; ph < a->sh; ph++) {
            for (r = 0; r < Rq; r++) {
                const int32_t ih = ih0 + r * a->sh + ph;
                if (ih >= 0 && ih < a->H)
                    widen_phases(dc + (int64_t)ph * a->sw * plane + (int64_t)r * Wq, plane,
                                 xc + (int64_t)ih * a->W, iw0, a->sw, lo, hi, zp);
            }
        }
    }
}

/* Where the plane kernel reads: one tile's input copy, where each tap starts in it, and the stride
 * between input channels. */
typedef struct {
    const int16_t *xp;
    int32_t tap[EDGEQ_MAX_TAPS]; /* offset of tap kh * KW + kw: its phase plane + row and column shift */
    int64_t per_channel;
} tile_t;

#if EDGEQ_ARM_DSP
/* The plane kernel on a Cortex-M with DSP: two output positions per 32-bit load of the int16 copy,
 * SMLABB / SMLATB multiplying the low / high one by the channel's weight, so the 2 x nb sums of a
 * position pair stay in registers (the generic loop's nb x np sums would live in memory on a
 * 13-register core). The same int32 sums, so bit-exact; np is even (EDGEQ_VPOS multiples). */
static EDGEQ_ALWAYS_INLINE void plane_kernel(const conv_t *a, const tile_t *tl, int64_t pos, const int8_t *w0,
                                             int32_t nb, int32_t np, int32_t *out)
{
    const int32_t taps = a->KH * a->KW;
    int32_t j, t, tap, c;
    for (t = 0; t < np; t += 2) {
        int32_t lo[EDGEQ_OC_BLOCK] = {0, 0, 0, 0}, hi[EDGEQ_OC_BLOCK] = {0, 0, 0, 0};
        if (a->cg == 1) { /* depthwise: no channel loop to set up per tap (it cost more than the MACs) */
#pragma GCC unroll 9
            for (tap = 0; tap < taps; tap++) {
                const int32_t x2 = (int32_t)load_u32(tl->xp + tl->tap[tap] + pos + t);
#pragma GCC unroll 4
                for (j = 0; j < nb; j++) {
                    const int32_t wv = w0[(int64_t)j * a->K + tap];
                    lo[j] = __smlabb(x2, wv, lo[j]);
                    hi[j] = __smlatb(x2, wv, hi[j]);
                }
            }
        }
        for (tap = 0; a->cg > 1 && tap < taps; tap++) {
            const int16_t *src = tl->xp + tl->tap[tap] + pos + t;
            const int8_t *wt = w0 + tap;
            for (c = 0; c < a->cg; c++, src += tl->per_channel, wt += taps) {
                const int32_t x2 = (int32_t)load_u32(src);
#pragma GCC unroll 4 /* constant nb at every call: the sums become registers */
                for (j = 0; j < nb; j++) {
                    const int32_t wv = wt[(int64_t)j * a->K];
                    lo[j] = __smlabb(x2, wv, lo[j]);
                    hi[j] = __smlatb(x2, wv, hi[j]);
                }
            }
        }
#pragma GCC unroll 4
        for (j = 0; j < nb; j++) {
            out[j * np + t] = lo[j];
            out[j * np + t + 1] = hi[j];
        }
    }
}
#else
/* acc[j][t] = sum over input channels c and taps of w[oc0 + j][c][tap] * x[c](tap)[pos + t] for `np`
 * positions from `pos`, x[c](tap) being channel c's copy shifted to the tap. `nb` and `np` are
 * constants at every call site (plane_kernel_at), so the nb * np accumulators live in registers. */
static EDGEQ_ALWAYS_INLINE void plane_kernel(const conv_t *a, const tile_t *tl, int64_t pos, const int8_t *w0,
                                             int32_t nb, int32_t np, int32_t *out)
{
    int32_t acc[EDGEQ_OC_BLOCK * EDGEQ_VPOS];
    const int32_t taps = a->KH * a->KW;
    int32_t j, t, tap, c;
    for (j = 0; j < nb * np; j++)
        acc[j] = 0;
    for (tap = 0; tap < taps; tap++) {
        const int16_t *src = tl->xp + tl->tap[tap] + pos;
        const int8_t *wt = w0 + tap;
        for (c = 0; c < a->cg; c++, src += tl->per_channel, wt += taps) {
            for (j = 0; j < nb; j++) {
                const int32_t wv = wt[(int64_t)j * a->K];
                for (t = 0; t < np; t++)
                    acc[j * np + t] += wv * src[t];
            }
        }
    }
    for (j = 0; j < nb * np; j++)
        out[j] = acc[j];
}
#endif

/* Run the register block for nb output channels over the `n` positions from `pos` (n a multiple of
 * EDGEQ_VPOS); out[j * n + t]. Fewer channels get proportionally more positions per block. */
static void plane_kernel_at(const conv_t *a, const tile_t *tl, int64_t pos, int32_t n, const int8_t *w0,
                            int32_t nb, int32_t *out)
{
    int32_t blk[EDGEQ_OC_BLOCK * EDGEQ_VPOS];
    int32_t i = 0, j, t;
    while (i < n) {
        int32_t np = EDGEQ_VPOS;
        switch (nb) {
        case 1:
            if (n - i >= 4 * EDGEQ_VPOS) {
                np = 4 * EDGEQ_VPOS;
                plane_kernel(a, tl, pos + i, w0, 1, 4 * EDGEQ_VPOS, blk);
            } else {
                plane_kernel(a, tl, pos + i, w0, 1, EDGEQ_VPOS, blk);
            }
            break;
        case 2: plane_kernel(a, tl, pos + i, w0, 2, EDGEQ_VPOS, blk); break;
        case 3: plane_kernel(a, tl, pos + i, w0, 3, EDGEQ_VPOS, blk); break;
        default: plane_kernel(a, tl, pos + i, w0, EDGEQ_OC_BLOCK, EDGEQ_VPOS, blk); break;
        }
        for (j = 0; j < nb; j++)
            for (t = 0; t < np; t++)
                out[j * n + i + t] = blk[j * np + t];
        i += np;
    }
}

/* Output-channel blocks [b0, b1) of group g over one tile whose input is in Xp. Works on chunks of
 * whole tile rows, including the KC columns of garbage that let every tap be one contiguous range,
 * rounded up to whole register blocks (plane_job leaves EDGEQ_VPOS elements of zeroed slack after Xp
 * for the last one); requantizes whole blocks, then copies the real columns out. */
static void plane_blocks(const conv_t *a, const plane_t *pg, int32_t g, int32_t oh0, int32_t R, int32_t ow0,
                         int32_t Wt, const int16_t *Xp, int32_t b0, int32_t b1)
{
    int32_t acc[EDGEQ_OC_BLOCK * EDGEQ_CHUNK];
    int8_t out[EDGEQ_CHUNK];
    tile_t tl;
    const int32_t Rq = R + pg->KR + 1, Wq = Wt + pg->KC;
    const int32_t Rc = EDGEQ_CHUNK / Wq; /* >= 1: Wq <= EDGEQ_CHUNK by plane_geometry */
    const int64_t plane = (int64_t)Rq * Wq;
    int32_t b, j, r0, rr, kh, kw, kr = 0, ph = 0;
    tl.xp = Xp;
    tl.per_channel = plane * a->sh * a->sw;
    for (kh = 0; kh < a->KH; kh++) {
        int32_t kc = 0, pw = 0;
        for (kw = 0; kw < a->KW; kw++) {
            tl.tap[kh * a->KW + kw] = (int32_t)(((int64_t)ph * a->sw + pw) * plane + (int64_t)kr * Wq + kc);
            phase_step(&kc, &pw, a->dw, a->sw);
        }
        phase_step(&kr, &ph, a->dh, a->sh);
    }
    for (b = b0; b < b1; b++) {
        const int32_t oc0 = g * a->ocg + b * EDGEQ_OC_BLOCK;
        const int32_t nb = min_i32(EDGEQ_OC_BLOCK, a->ocg - b * EDGEQ_OC_BLOCK);
        for (r0 = 0; r0 < R; r0 += Rc) {
            const int32_t rc = min_i32(Rc, R - r0);
            const int32_t n = (rc * Wq + EDGEQ_VPOS - 1) / EDGEQ_VPOS * EDGEQ_VPOS;
            plane_kernel_at(a, &tl, (int64_t)r0 * Wq, n, a->w + (int64_t)oc0 * a->K, nb, acc);
            for (j = 0; j < nb; j++) {
                const requant_t q = conv_requant(a, oc0 + j);
                int8_t *yj = a->y + ((int64_t)oc0 + j) * a->OH * a->OW + (int64_t)(oh0 + r0) * a->OW + ow0;
                requant_row(acc + j * n, n, &q, out);
                for (rr = 0; rr < rc; rr++)
                    memcpy(yj + (int64_t)rr * a->OW, out + rr * Wq, (size_t)Wt);
            }
        }
    }
}

/* One job: tile (g, row tile, column tile) and a share of its output-channel blocks, with its own copy
 * of the input (threads that split one tile's channels each build it: cheaper than synchronising). */
static void plane_job(const conv_t *a, const plane_t *pg, int64_t job, int32_t n_rt, int32_t n_ct, int32_t n_parts)
{
    int16_t Xp[EDGEQ_SCRATCH_BYTES / sizeof(int16_t) + EDGEQ_VPOS];
    const int32_t n_blocks = (a->ocg + EDGEQ_OC_BLOCK - 1) / EDGEQ_OC_BLOCK;
    const int32_t part = (int32_t)(job % n_parts);
    const int64_t tile = job / n_parts;
    const int32_t ct = (int32_t)(tile % n_ct), rt = (int32_t)(tile / n_ct % n_rt), g = (int32_t)(tile / n_ct / n_rt);
    const int32_t oh0 = rt * pg->R, ow0 = ct * pg->Wt;
    const int32_t R = min_i32(pg->R, a->OH - oh0), Wt = min_i32(pg->Wt, a->OW - ow0);
    const int32_t b0 = (int32_t)((int64_t)n_blocks * part / n_parts);
    const int32_t b1 = (int32_t)((int64_t)n_blocks * (part + 1) / n_parts);
    if (b0 >= b1)
        return;
    plane_build(a, pg, g, oh0, R, ow0, Wt, Xp);
    memset(Xp + (int64_t)a->cg * a->sh * a->sw * (R + pg->KR + 1) * (Wt + pg->KC), 0, sizeof(int16_t) * EDGEQ_VPOS);
    plane_blocks(a, pg, g, oh0, R, ow0, Wt, Xp, b0, b1);
}

static void conv_plane(const conv_t *a, const plane_t *pg)
{
    const int32_t n_rt = (a->OH + pg->R - 1) / pg->R, n_ct = (a->OW + pg->Wt - 1) / pg->Wt;
    const int64_t n_tiles = (int64_t)a->group * n_rt * n_ct;
    const int32_t n_blocks = (a->ocg + EDGEQ_OC_BLOCK - 1) / EDGEQ_OC_BLOCK;
    const int64_t work = conv_work(a);
    /* Few tiles for many threads: split each tile's output channels instead. */
    const int32_t n_parts = (edgeq_threads > 1 && work >= EDGEQ_PAR_MIN_WORK && n_tiles < 2 * edgeq_threads)
                                ? min_i32(edgeq_threads, n_blocks)
                                : 1;
    const int64_t n_jobs = n_tiles * n_parts;
    int64_t job;
    (void)work;
    EDGEQ_PARALLEL_FOR(work >= EDGEQ_PAR_MIN_WORK && n_jobs > 1)
    for (job = 0; job < n_jobs; job++)
        plane_job(a, pg, job, n_rt, n_ct, n_parts);
}

/* ---- Dot path: channels-last tiles and patch dot products ------------------------------------- */

/* Geometry of the dot path for one convolution. */
typedef struct {
    int32_t Kp;       /* patch length rounded up to EDGEQ_KALIGN (patches and weights zero padded) */
    int32_t R, OWt;   /* output rows and columns per tile */
    int32_t wblocks;  /* output-channel blocks whose reordered weights fit EDGEQ_WEIGHT_CHUNK */
} dot_t;

/* Input rows / columns a tile of R x OWt outputs reads. */
static int64_t dot_span(int64_t out, int32_t stride, int32_t k, int32_t dil)
{
    return (out - 1) * stride + (int64_t)(k - 1) * dil + 1;
}

/* Whether dot products are worth it for this patch length (see EDGEQ_DOT_MIN_K). */
static int dot_worthwhile(int32_t K)
{
    const int64_t Kp = ((int64_t)K + EDGEQ_KALIGN - 1) / EDGEQ_KALIGN * EDGEQ_KALIGN;
    return K >= EDGEQ_DOT_MIN_K && (K >= 4 * EDGEQ_KALIGN || 4 * (int64_t)K >= 3 * Kp);
}

/* Pick the tile: as many whole output rows as the channels-last copy and the patches allow, else a
 * narrower column band. 0 if even one output does not fit. */
static int dot_geometry(const conv_t *a, dot_t *d)
{
    int64_t R, OWt;
    if (a->K > EDGEQ_K_INT32)
        return 0;
    d->Kp = (a->K + EDGEQ_KALIGN - 1) / EDGEQ_KALIGN * EDGEQ_KALIGN;
    if ((int64_t)2 * d->Kp > EDGEQ_PATCH_BYTES || (int64_t)EDGEQ_OC_BLOCK * d->Kp > EDGEQ_WEIGHT_CHUNK)
        return 0;
    d->wblocks = (int32_t)(EDGEQ_WEIGHT_CHUNK / ((int64_t)EDGEQ_OC_BLOCK * d->Kp));
    for (OWt = a->OW; OWt >= 1; OWt = OWt > 8 ? OWt / 2 : OWt - 1) {
        const int64_t row_bytes = dot_span(OWt, a->sw, a->KW, a->dw) * a->cg;
        for (R = a->OH; R >= 1; R = R > 8 ? R / 2 : R - 1) {
            if (R * OWt * d->Kp <= EDGEQ_PATCH_BYTES && R * OWt <= EDGEQ_DOT_POS &&
                dot_span(R, a->sh, a->KH, a->dh) * row_bytes <= EDGEQ_TILE_BYTES) {
                d->R = (int32_t)R;
                d->OWt = (int32_t)OWt;
                return 1;
            }
        }
    }
    return 0;
}

/* Channels-last copy of the input under a tile, as uint8 x + 128 with padding written as x_zp + 128
 * (so padded taps contribute w * (x_zp - x_zp) = 0 after the zero-point correction). Four channels
 * are interleaved per pass so the byte scatter vectorises. */
static void dot_build_tile(const conv_t *a, int32_t g, int32_t oh0, int32_t R, int32_t ow0, int32_t OWt,
                           uint8_t *restrict B)
{
    const int32_t Rin = (int32_t)dot_span(R, a->sh, a->KH, a->dh);
    const int32_t Win = (int32_t)dot_span(OWt, a->sw, a->KW, a->dw);
    const int32_t ih0 = oh0 * a->sh - a->pt, iw0 = ow0 * a->sw - a->pl, cg = a->cg;
    const uint8_t pad = (uint8_t)(a->x_zp + 128);
    const int64_t plane = (int64_t)a->H * a->W;
    const int8_t *xg = a->x + (int64_t)g * cg * plane;
    int32_t r, c, q, lo, hi;
    tap_range(0, Win, 1, iw0, a->W, &lo, &hi);
    for (r = 0; r < Rin; r++) {
        const int32_t ih = ih0 + r;
        uint8_t *row = B + (int64_t)r * Win * cg;
        if (ih < 0 || ih >= a->H || lo >= hi) {
            memset(row, pad, (size_t)Win * (size_t)cg);
            continue;
        }
        memset(row, pad, (size_t)lo * (size_t)cg);
        memset(row + (int64_t)hi * cg, pad, (size_t)(Win - hi) * (size_t)cg);
        for (c = 0; c < cg; c += 4) {
            const int8_t *s0 = xg + c * plane + (int64_t)ih * a->W; /* row start; column iw0 + q */
            uint8_t *d = row + c;
            if (c + 4 <= cg) {
                const int8_t *s1 = s0 + plane, *s2 = s1 + plane, *s3 = s2 + plane;
                for (q = lo; q < hi; q++) {
                    d[(int64_t)q * cg + 0] = (uint8_t)(s0[iw0 + q] + 128);
                    d[(int64_t)q * cg + 1] = (uint8_t)(s1[iw0 + q] + 128);
                    d[(int64_t)q * cg + 2] = (uint8_t)(s2[iw0 + q] + 128);
                    d[(int64_t)q * cg + 3] = (uint8_t)(s3[iw0 + q] + 128);
                }
            } else {
                int32_t k;
                for (k = 0; k < cg - c; k++)
                    for (q = lo; q < hi; q++)
                        d[(int64_t)q * cg + k] = (uint8_t)(s0[k * plane + iw0 + q] + 128);
            }
        }
    }
}

/* Patch rows P[t] (t over the tile's positions, row-major) in (kh, kw, c) order, zero padded to Kp:
 * each kernel row is one contiguous copy from the channels-last tile when dilation is 1. */
static void dot_build_patches(const conv_t *a, const dot_t *d, int32_t R, int32_t OWt, const uint8_t *B,
                              uint8_t *restrict P)
{
    const int32_t Win = (int32_t)dot_span(OWt, a->sw, a->KW, a->dw), cg = a->cg;
    const int32_t run = a->dw == 1 ? a->KW * cg : cg, runs = a->dw == 1 ? 1 : a->KW;
    int32_t r, q, kh, kw;
    for (r = 0; r < R; r++) {
        for (q = 0; q < OWt; q++) {
            uint8_t *p = P + ((int64_t)r * OWt + q) * d->Kp;
            for (kh = 0; kh < a->KH; kh++) {
                const uint8_t *src = B + ((int64_t)(r * a->sh + kh * a->dh) * Win + (int64_t)q * a->sw) * cg;
                for (kw = 0; kw < runs; kw++, p += run)
                    memcpy(p, src + (int64_t)kw * a->dw * cg, (size_t)run);
            }
            memset(p, 0, (size_t)(d->Kp - a->K));
        }
    }
}

/* One weight row from (c, tap) to (tap, c) order. `taps` is a constant at the 3x3 call site, which
 * lets gcc turn the strided reads into vector shuffles. */
static EDGEQ_ALWAYS_INLINE void transpose_row(int8_t *restrict dst, const int8_t *restrict src, int32_t cg,
                                              int32_t taps)
{
    int32_t c, t;
    for (t = 0; t < taps; t++) /* contiguous writes, strided reads */
        for (c = 0; c < cg; c++)
            dst[(int64_t)t * cg + c] = src[(int64_t)c * taps + t];
}

/* Reorder the weights of output-channel blocks [b0, b0 + nblk) of group g from OIHW to
 * Wr[block][j][(kh, kw, c)], zero padded to Kp and to whole blocks; wsum = sum of each row. */
static void dot_reorder_weights(const conv_t *a, const dot_t *d, int32_t g, int32_t b0, int32_t nblk,
                                int8_t *restrict Wr, int32_t *restrict wsum)
{
    const int32_t taps = a->KH * a->KW, rows = nblk * EDGEQ_OC_BLOCK;
    int32_t i, k;
    for (i = 0; i < rows; i++) {
        const int32_t o = b0 * EDGEQ_OC_BLOCK + i;
        int8_t *dst = Wr + (int64_t)i * d->Kp;
        int32_t sum = 0;
        memset(dst + a->K, 0, (size_t)(d->Kp - a->K));
        if (o < a->ocg) {
            const int8_t *src = a->w + ((int64_t)g * a->ocg + o) * a->K;
            if (taps == 1)
                memcpy(dst, src, (size_t)a->K);
            else if (taps == 9)
                transpose_row(dst, src, a->cg, 9);
            else
                transpose_row(dst, src, a->cg, taps);
            for (k = 0; k < a->K; k++)
                sum += src[k];
        } else {
            memset(dst, 0, (size_t)a->K);
        }
        wsum[i] = sum;
    }
}

/* s[j] += sum_k P0[k] * w_j[k], s[4 + j] += sum_k P1[k] * w_j[k] for four weight rows (stride Kp):
 * eight sums held in vector registers, uint8 x int8 so gcc emits vpdpbusd (AVX-VNNI) where it can.
 * Kp <= EDGEQ_K_INT32 rounded up bounds every partial sum by 255 * 128 * Kp < 2^31. */
#if EDGEQ_ARM_DSP
/* Cortex-M DSP extension: four bytes per step. UXTB16 / SXTB16 split a word into its even and its odd
 * bytes as two 16-bit lanes (the odd ones after a rotate by 8), and SMLAD adds both lane products to
 * an accumulator: 4 MACs in 2 SMLADs. Exact int32 sums (Kp is a multiple of 4), so bit-exact with the
 * loop below. */
static void dot4x2(const uint8_t *restrict p0, const uint8_t *restrict p1, const int8_t *restrict w, int32_t Kp,
                   int32_t s[2 * EDGEQ_OC_BLOCK])
{
    int32_t acc[2 * EDGEQ_OC_BLOCK] = {0, 0, 0, 0, 0, 0, 0, 0};
    int32_t k, j;
    for (k = 0; k < Kp; k += 4) {
        const uint32_t u = load_u32(p0 + k), v = load_u32(p1 + k);
        const int16x2_t ue = (int16x2_t)__uxtb16(u), uo = (int16x2_t)__uxtb16(ror8(u));
        const int16x2_t ve = (int16x2_t)__uxtb16(v), vo = (int16x2_t)__uxtb16(ror8(v));
        for (j = 0; j < EDGEQ_OC_BLOCK; j++) {
            const int32_t wj = (int32_t)load_u32(w + (int64_t)j * Kp + k);
            const int16x2_t we = __sxtb16(wj), wo = __sxtb16((int32_t)ror8((uint32_t)wj));
            acc[j] = __smlad(ue, we, __smlad(uo, wo, acc[j]));
            acc[EDGEQ_OC_BLOCK + j] = __smlad(ve, we, __smlad(vo, wo, acc[EDGEQ_OC_BLOCK + j]));
        }
    }
    for (j = 0; j < 2 * EDGEQ_OC_BLOCK; j++)
        s[j] = acc[j];
}
#else
static void dot4x2(const uint8_t *restrict p0, const uint8_t *restrict p1, const int8_t *restrict w, int32_t Kp,
                   int32_t s[2 * EDGEQ_OC_BLOCK])
{
    const int8_t *w0 = w, *w1 = w + Kp, *w2 = w1 + Kp, *w3 = w2 + Kp;
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0, k;
    for (k = 0; k < Kp; k++) {
        const int32_t u = p0[k], v = p1[k];
        a0 += u * w0[k];
        a1 += u * w1[k];
        a2 += u * w2[k];
        a3 += u * w3[k];
        b0 += v * w0[k];
        b1 += v * w1[k];
        b2 += v * w2[k];
        b3 += v * w3[k];
    }
    s[0] = a0;
    s[1] = a1;
    s[2] = a2;
    s[3] = a3;
    s[4] = b0;
    s[5] = b1;
    s[6] = b2;
    s[7] = b3;
}
#endif

/* One tile of the dot path: group, first output row and column, size. */
typedef struct {
    int32_t g, oh0, ow0, R, OWt;
} dtile_t;

/* Tile number `tile`, counting row tiles x column tiles within each group. */
static dtile_t dot_tile(const conv_t *a, const dot_t *d, int64_t tile, int32_t n_rt, int32_t n_ct)
{
    dtile_t t;
    const int32_t ct = (int32_t)(tile % n_ct), rt = (int32_t)(tile / n_ct % n_rt);
    t.g = (int32_t)(tile / n_ct / n_rt);
    t.oh0 = rt * d->R;
    t.ow0 = ct * d->OWt;
    t.R = min_i32(d->R, a->OH - t.oh0);
    t.OWt = min_i32(d->OWt, a->OW - t.ow0);
    return t;
}

/* Output-channel blocks [bc, bc + nblk) of a tile whose patches are in P, with their weights
 * reordered in wr / ws: dot products, zero-point correction, requantization, copy out. */
static void dot_compute(const conv_t *a, const dot_t *d, const dtile_t *tl, const uint8_t *P, const int8_t *wr,
                        const int32_t *ws, int32_t bc, int32_t nblk)
{
    int32_t acc[EDGEQ_OC_BLOCK][EDGEQ_DOT_POS];
    int8_t out[EDGEQ_DOT_POS];
    const int32_t T = tl->R * tl->OWt;
    const int32_t corr = a->x_zp + 128; /* sum w * (u - corr) == sum w * (x - x_zp) */
    int32_t b, j, t, r;
    for (b = 0; b < nblk; b++) {
        const int8_t *wb = wr + (int64_t)b * EDGEQ_OC_BLOCK * d->Kp;
        const int32_t oc0 = tl->g * a->ocg + (bc + b) * EDGEQ_OC_BLOCK;
        const int32_t nb = min_i32(EDGEQ_OC_BLOCK, a->ocg - (bc + b) * EDGEQ_OC_BLOCK);
        for (t = 0; t < T; t += 2) {
            const uint8_t *p0 = P + (int64_t)t * d->Kp;
            const uint8_t *p1 = t + 1 < T ? p0 + d->Kp : p0; /* odd tile: last position twice */
            int32_t s[2 * EDGEQ_OC_BLOCK];
            dot4x2(p0, p1, wb, d->Kp, s);
            for (j = 0; j < EDGEQ_OC_BLOCK; j++) {
                const int32_t c = corr * ws[b * EDGEQ_OC_BLOCK + j];
                acc[j][t] = s[j] - c;
                if (t + 1 < T)
                    acc[j][t + 1] = s[EDGEQ_OC_BLOCK + j] - c;
            }
        }
        for (j = 0; j < nb; j++) {
            const requant_t q = conv_requant(a, oc0 + j);
            int8_t *yj = a->y + ((int64_t)oc0 + j) * a->OH * a->OW + (int64_t)tl->oh0 * a->OW + tl->ow0;
            requant_row(acc[j], T, &q, out);
            for (r = 0; r < tl->R; r++)
                memcpy(yj + (int64_t)r * a->OW, out + r * tl->OWt, (size_t)tl->OWt);
        }
    }
}

/* One job of the dot path: output-channel blocks [b0, b1) over tiles [t0, t1) (all of one group when
 * weights_outer). Weights come from `pre` (reordered once for the whole convolution) when given;
 * otherwise they are reordered a chunk at a time, either per tile (tiles outer) or once per job with
 * the tiles rebuilt for every chunk (weights outer), whichever conv_dot estimated cheaper. */
static void dot_job(const conv_t *a, const dot_t *d, int64_t t0, int64_t t1, int32_t b0, int32_t b1, int32_t n_rt,
                    int32_t n_ct, const int8_t *pre, const int32_t *pre_sum, int weights_outer)
{
    uint8_t B[EDGEQ_TILE_BYTES];
    uint8_t P[EDGEQ_PATCH_BYTES];
    int8_t Wr[EDGEQ_WEIGHT_CHUNK];
    int32_t wsum[EDGEQ_WEIGHT_CHUNK / EDGEQ_KALIGN];
    const int32_t n_blocks = (a->ocg + EDGEQ_OC_BLOCK - 1) / EDGEQ_OC_BLOCK;
    int64_t t;
    int32_t bc;
    if (b0 >= b1)
        return;
    if (weights_outer && !pre) {
        const int32_t g = dot_tile(a, d, t0, n_rt, n_ct).g;
        for (bc = b0; bc < b1; bc += d->wblocks) {
            const int32_t nblk = min_i32(d->wblocks, b1 - bc);
            dot_reorder_weights(a, d, g, bc, nblk, Wr, wsum);
            for (t = t0; t < t1; t++) {
                const dtile_t tl = dot_tile(a, d, t, n_rt, n_ct);
                dot_build_tile(a, tl.g, tl.oh0, tl.R, tl.ow0, tl.OWt, B);
                dot_build_patches(a, d, tl.R, tl.OWt, B, P);
                dot_compute(a, d, &tl, P, Wr, wsum, bc, nblk);
            }
        }
        return;
    }
    for (t = t0; t < t1; t++) {
        const dtile_t tl = dot_tile(a, d, t, n_rt, n_ct);
        dot_build_tile(a, tl.g, tl.oh0, tl.R, tl.ow0, tl.OWt, B);
        dot_build_patches(a, d, tl.R, tl.OWt, B, P);
        if (pre) {
            const int64_t first = (int64_t)tl.g * n_blocks + b0; /* block index over all groups */
            dot_compute(a, d, &tl, P, pre + first * EDGEQ_OC_BLOCK * d->Kp, pre_sum + first * EDGEQ_OC_BLOCK, b0,
                        b1 - b0);
            continue;
        }
        for (bc = b0; bc < b1; bc += d->wblocks) {
            const int32_t nblk = min_i32(d->wblocks, b1 - bc);
            dot_reorder_weights(a, d, tl.g, bc, nblk, Wr, wsum);
            dot_compute(a, d, &tl, P, Wr, wsum, bc, nblk);
        }
    }
}

static void conv_dot(const conv_t *a, const dot_t *d)
{
    int8_t pre[EDGEQ_WEIGHT_BYTES];
    int32_t pre_sum[EDGEQ_WEIGHT_BYTES / EDGEQ_KALIGN];
    const int32_t n_rt = (a->OH + d->R - 1) / d->R, n_ct = (a->OW + d->OWt - 1) / d->OWt;
    const int64_t tiles_per_group = (int64_t)n_rt * n_ct, n_tiles = a->group * tiles_per_group;
    const int32_t n_blocks = (a->ocg + EDGEQ_OC_BLOCK - 1) / EDGEQ_OC_BLOCK;
    const int64_t w_bytes = (int64_t)n_blocks * EDGEQ_OC_BLOCK * d->Kp; /* reordered weights per group */
    const int64_t work = conv_work(a);
    const int par = edgeq_threads > 1 && work >= EDGEQ_PAR_MIN_WORK;
    /* Reorder all weights once when they fit: every tile reuses them. */
    const int whole = a->group * w_bytes <= EDGEQ_WEIGHT_BYTES;
    /* Otherwise compare reordering every weight once per tile with rebuilding every tile once per
     * weight chunk (both cost about a cycle per byte moved; patch copies move faster). */
    const int64_t tile_bytes = dot_span(d->R, a->sh, a->KH, a->dh) * dot_span(d->OWt, a->sw, a->KW, a->dw) * a->cg +
                               (int64_t)d->R * d->OWt * d->Kp / 8;
    const int64_t n_chunks = (n_blocks + d->wblocks - 1) / d->wblocks;
    const int weights_outer = !whole && n_chunks * tile_bytes < w_bytes;
    int64_t job, n_jobs;
    int32_t n_parts, g;
    if (whole)
        for (g = 0; g < a->group; g++)
            dot_reorder_weights(a, d, g, 0, n_blocks, pre + (int64_t)g * n_blocks * EDGEQ_OC_BLOCK * d->Kp,
                                pre_sum + (int64_t)g * n_blocks * EDGEQ_OC_BLOCK);
    if (weights_outer) {
        /* One job per group and share of its output channels, each walking all of the group's tiles. */
        n_parts = par ? min_i32(edgeq_threads, n_blocks) : 1;
        n_jobs = (int64_t)a->group * n_parts;
    } else {
        /* One job per tile, or per share of a tile's output channels when tiles are too few to share. */
        n_parts = par && n_tiles < 2 * edgeq_threads ? min_i32(edgeq_threads, n_blocks) : 1;
        n_jobs = n_tiles * n_parts;
    }
    (void)par;
    EDGEQ_PARALLEL_FOR(par && n_jobs > 1)
    for (job = 0; job < n_jobs; job++) {
        const int32_t part = (int32_t)(job % n_parts);
        const int64_t unit = job / n_parts; /* a group (weights outer) or a tile */
        const int32_t b0 = (int32_t)((int64_t)n_blocks * part / n_parts);
        const int32_t b1 = (int32_t)((int64_t)n_blocks * (part + 1) / n_parts);
        if (weights_outer)
            dot_job(a, d, unit * tiles_per_group, (unit + 1) * tiles_per_group, b0, b1, n_rt, n_ct, NULL, NULL, 1);
        else
            dot_job(a, d, unit, unit + 1, b0, b1, n_rt, n_ct, whole ? pre : NULL, whole ? pre_sum : NULL, 0);
    }
}

#if EDGEQ_AVX512
/* Requantize 16 accumulators one by one (any scale), lane by lane from the register: out of line, and
 * no stack copy (gcc assumes a local vector array 64-byte aligned, which ASan's fake frames break). */
static __attribute__((noinline)) void requant16_any(__m512i acc, const requant_t *q, int8_t *y, int32_t n_valid)
{
    int32_t i;
    for (i = 0; i < n_valid && i < 16; i++) {
        y[i] = finish_one((int64_t)_mm_cvtsi128_si32(_mm512_castsi512_si128(acc)) + q->bias, q);
        acc = _mm512_alignr_epi32(acc, acc, 1);
    }
}

/* Requantize 16 accumulators of output channel q (n_valid of them stored) into y; ordinary scales
 * vectorised, others one by one. */
static inline void requant16(__m512i acc, const requant_t *q, const vmbqm_t *m, int ordinary, int8_t *y,
                             int32_t n_valid)
{
    int32_t i;
    if (ordinary) {
        __m512i v = vmbqm(vadds32(acc, _mm512_set1_epi32(q->bias)), m);
        v = _mm512_max_epi32(v, _mm512_set1_epi32(q->lo - q->y_zp));
        v = _mm512_min_epi32(v, _mm512_set1_epi32(q->hi - q->y_zp));
        store16_i8(y, _mm512_add_epi32(v, _mm512_set1_epi32(q->y_zp)), n_valid);
        if (q->lut)
            for (i = 0; i < n_valid && i < 16; i++)
                y[i] = q->lut[y[i] + 128];
    } else {
        requant16_any(acc, q, y, n_valid);
    }
}

/* Requantization of accumulators already holding acc + bias, for the common case (mult > 0, shift in
 * [-31, 29]) when a bound proves |acc + bias| * 2^left < 2^29: then the left shift cannot saturate and
 * with p = v * mult + 2^30 (v the shifted value), SaturatingRoundingDoublingHighMul is r = floor(p / 2^31)
 * and RoundingDivideByPOT(r, e) = floor((r + 2^(e-1) - [r < 0]) / 2^e) for e >= 1. Both steps fold
 * into Y = floor((p + 2^(30+e)) / 2^31) = r + 2^(e-1) (|Y| < 2^31), corrected by -1 where p < 0, i.e.
 * where v < -floor(2^30 / mult), then one arithmetic shift by e. */
typedef struct {
    __m512i mult, add, thr, lo, hi, zp;
    __m128i left, right;
    int kind; /* FASTQ_LEFT if shift > 0, | FASTQ_CLAMP if [lo, hi] is narrower than int8 */
} fastq_t;

#define FASTQ_LEFT 1
#define FASTQ_CLAMP 2

/* Bound of |sum w * (x - x_zp) + bias| for a channel whose weights have absolute sum wabs. */
static inline int64_t fastq_bound(int64_t wabs, int32_t bias)
{
    return wabs * 255 + (bias < 0 ? -(int64_t)bias : (int64_t)bias);
}

static inline int fastq_make(const requant_t *q, int64_t bound, fastq_t *f)
{
    const int32_t left = q->shift > 0 ? q->shift : 0, e = q->shift > 0 ? 0 : -q->shift;
    if (q->mult <= 0 || q->shift < -31 || q->shift > 28 || bound >= ((int64_t)1 << 29) >> left) {
        memset(f, 0, sizeof *f);
        return 0;
    }
    f->mult = _mm512_set1_epi64(q->mult);
    f->add = _mm512_set1_epi64(((int64_t)1 << 30) + (e ? (int64_t)1 << (30 + e) : 0));
    f->thr = _mm512_set1_epi32(e ? -(int32_t)(((int64_t)1 << 30) / q->mult) : INT32_MIN);
    f->lo = _mm512_set1_epi32(q->lo);
    f->hi = _mm512_set1_epi32(q->hi);
    f->zp = _mm512_set1_epi32(q->y_zp);
    f->left = _mm_cvtsi32_si128(left);
    f->right = _mm_cvtsi32_si128(e);
    f->kind = (left ? FASTQ_LEFT : 0) | (q->lo > -128 || q->hi < 127 ? FASTQ_CLAMP : 0);
    return 1;
}

/* MultiplyByQuantizedMultiplier of 16 values within the bound of f (see fastq_t). */
static EDGEQ_ALWAYS_INLINE __m512i fastq_core(__m512i v, const fastq_t *f)
{
    __m512i pe, po, y;
    v = _mm512_sll_epi32(v, f->left);
    pe = _mm512_add_epi64(_mm512_mul_epi32(v, f->mult), f->add);
    po = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(v, 32), f->mult), f->add);
    y = _mm512_mask_blend_epi32((__mmask16)0xAAAA, _mm512_srli_epi64(pe, 31), _mm512_slli_epi64(po, 1));
    y = _mm512_mask_sub_epi32(y, _mm512_cmplt_epi32_mask(v, f->thr), y, _mm512_set1_epi32(1));
    return _mm512_sra_epi32(y, f->right);
}

/* 16 values acc + bias (see fastq_t) to int8, before any table; clamps [lo, hi]. */
static EDGEQ_ALWAYS_INLINE __m512i fastq_vec(__m512i v, const fastq_t *f)
{
    return _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(fastq_core(v, f), f->zp), f->lo), f->hi);
}

/* fastq_vec narrowed to int8 for a constant kind (no shift when shift <= 0; the saturating narrowing
 * is the clamp when [lo, hi] is the whole int8 range). */
static EDGEQ_ALWAYS_INLINE __m128i fastq_bytes(__m512i v, const fastq_t *f, int kind)
{
    __m512i pe, po, y;
    if (kind & FASTQ_LEFT)
        v = _mm512_sll_epi32(v, f->left);
    pe = _mm512_add_epi64(_mm512_mul_epi32(v, f->mult), f->add);
    po = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(v, 32), f->mult), f->add);
    y = _mm512_mask_blend_epi32((__mmask16)0xAAAA, _mm512_srli_epi64(pe, 31), _mm512_slli_epi64(po, 1));
    y = _mm512_mask_sub_epi32(y, _mm512_cmplt_epi32_mask(v, f->thr), y, _mm512_set1_epi32(1));
    y = _mm512_add_epi32(_mm512_sra_epi32(y, f->right), f->zp);
    if (kind & FASTQ_CLAMP)
        y = _mm512_min_epi32(_mm512_max_epi32(y, f->lo), f->hi);
    return _mm512_cvtsepi32_epi8(y);
}

static EDGEQ_ALWAYS_INLINE void fastq16(__m512i v, const fastq_t *f, const int8_t *lut, int8_t *y, int32_t n_valid)
{
    int32_t i;
    store16_i8(y, fastq_vec(v, f), n_valid);
    if (lut)
        for (i = 0; i < n_valid && i < 16; i++)
            y[i] = lut[y[i] + 128];
}

/* ---- Depthwise (one input channel per output channel), AVX-512 --------------------------------
 * Per channel, a band of input rows is widened to int32 x - x_zp with the padding written as zeros and
 * the columns split into sw phases, so every tap of a row of outputs is one unit-stride load; 16
 * outputs per vector, the taps' weights broadcast once per channel, requantized from registers. */
#define EDGEQ_DW_SCRATCH (EDGEQ_SCRATCH_BYTES / 4)

static int dw_fits(const conv_t *a, int32_t *Lq, int32_t *band)
{
    int64_t lq, rows, per_row;
    const int32_t owv = (a->OW + 15) / 16 * 16;
    if (a->cg != 1 || a->ocg != 1 || a->sw > 2 || a->KH * a->KW > 25 || a->K > EDGEQ_K_INT32)
        return 0;
    lq = owv + (int64_t)(a->KW - 1) * a->dw / a->sw + 1;
    per_row = lq * a->sw;
    for (rows = a->OH; rows >= 1; rows = rows > 1 ? rows / 2 : 0) {
        const int64_t in_rows = (rows - 1) * a->sh + (int64_t)(a->KH - 1) * a->dh + 1;
        if (in_rows * per_row <= EDGEQ_DW_SCRATCH) {
            *Lq = (int32_t)lq;
            *band = (int32_t)rows;
            return 1;
        }
    }
    return 0;
}

static void dw_channel(const conv_t *a, int32_t c, int32_t Lq, int32_t band, int32_t *buf)
{
    const int8_t *xc = a->x + (int64_t)c * a->H * a->W;
    const int8_t *wc = a->w + (int64_t)c * a->K;
    const int32_t taps = a->KH * a->KW, sw = a->sw, row_len = Lq * sw;
    const requant_t q = conv_requant(a, c);
    const int ordinary = mbqm_ordinary(q.mult, q.shift);
    const vmbqm_t m = vmbqm_make(ordinary ? q.mult : 0, ordinary ? q.shift : 0);
    const __m512i zp = _mm512_set1_epi32(a->x_zp);
    __m512i wv[25];
    int32_t toff[25];
    int32_t t, kh, kw, oh0, r, j, ow;
    for (kh = 0; kh < a->KH; kh++)
        for (kw = 0; kw < a->KW; kw++) {
            const int32_t col = kw * a->dw;
            t = kh * a->KW + kw;
            wv[t] = _mm512_set1_epi32(wc[t]);
            toff[t] = kh * a->dh * row_len + (col % sw) * Lq + col / sw;
        }
    for (oh0 = 0; oh0 < a->OH; oh0 += band) {
        const int32_t R = min_i32(band, a->OH - oh0);
        const int32_t in_rows = (R - 1) * a->sh + (a->KH - 1) * a->dh + 1;
        const int32_t ih0 = oh0 * a->sh - a->pt;
        /* build: padded row r holds input row ih0 + r, column j * sw + p - pl in phase p at j */
        for (r = 0; r < in_rows; r++) {
            int32_t *dst = buf + (int64_t)r * row_len;
            const int32_t ih = ih0 + r;
            memset(dst, 0, sizeof(int32_t) * (size_t)row_len);
            if (ih < 0 || ih >= a->H)
                continue;
            {
                const int8_t *src = xc + (int64_t)ih * a->W;
                int32_t p;
                for (p = 0; p < sw; p++) {
                    /* phase p, index j: input column j * sw + p - pl, inside [0, W) */
                    int32_t jlo, jhi;
                    tap_range(0, Lq, sw, p - a->pl, a->W, &jlo, &jhi);
                    if (sw == 1) {
                        const int8_t *s0 = src - a->pl;
                        for (j = jlo; j + 16 <= jhi; j += 16)
                            _mm512_storeu_si512((void *)(dst + j),
                                                _mm512_sub_epi32(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(s0 + j))), zp));
                        for (; j < jhi; j++)
                            dst[j] = s0[j] - a->x_zp;
                    } else {
                        int32_t *dp = dst + p * Lq;
                        const int8_t *s0 = src + p - a->pl;
                        for (j = jlo; j < jhi; j++)
                            dp[j] = s0[(int64_t)j * sw] - a->x_zp;
                    }
                }
            }
        }
        for (r = 0; r < R; r++) {
            const int32_t *rowp = buf + (int64_t)r * a->sh * row_len;
            int8_t *yr = a->y + (int64_t)c * a->OH * a->OW + (int64_t)(oh0 + r) * a->OW;
            for (ow = 0; ow < a->OW; ow += 32) {
                __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
                const int two = a->OW - ow > 16;
                for (t = 0; t < taps; t++) {
                    const int32_t *src = rowp + toff[t] + ow;
                    acc0 = _mm512_add_epi32(acc0, _mm512_mullo_epi32(wv[t], _mm512_loadu_si512((const void *)src)));
                    if (two)
                        acc1 = _mm512_add_epi32(acc1, _mm512_mullo_epi32(wv[t], _mm512_loadu_si512((const void *)(src + 16))));
                }
                requant16(acc0, &q, &m, ordinary, yr + ow, a->OW - ow);
                if (two)
                    requant16(acc1, &q, &m, ordinary, yr + ow + 16, a->OW - ow - 16);
            }
        }
    }
}

static int conv_depthwise(const conv_t *a)
{
    int32_t Lq, band, c;
    if (!dw_fits(a, &Lq, &band))
        return 0;
    EDGEQ_PARALLEL_FOR(conv_work(a) >= EDGEQ_PAR_MIN_WORK && a->C > 1)
    for (c = 0; c < a->C; c++) {
        int32_t buf[EDGEQ_DW_SCRATCH + 32];
        dw_channel(a, c, Lq, band, buf);
    }
    return 1;
}
#endif

#if EDGEQ_AVX512 && defined(__AVX512VNNI__) && defined(__AVX512VBMI__)
/* Depthwise with rows of up to 8 taps (3x3, 5x5 and the like), VNNI: every needed input row is turned
 * once into quads q_g[i] = (u[i*sw+4g*dw], ..., u[i*sw+(4g+3)*dw]) of u = x + 128 (padding: x_zp + 128,
 * taps past KW weigh 0), one vpermb per group g of four taps and 16 outputs; an output row is then
 * KH * G vpdpbusd per 16 outputs (G = ceil(KW / 4)), corrected by (x_zp + 128) * sum(w) (the exact
 * sum of w * (x - x_zp), < 2^31). */
#define EDGEQ_DWQ_ROW 1024 /* padded input row bytes at most */
#define EDGEQ_DWQ_GROUPS 2 /* quads per tap row at most: KW <= 8 */

static int32_t dwq_groups(const conv_t *a)
{
    return (a->KW + 3) / 4;
}

/* Bytes of a padded row the quads read (16 * (owv / 16 - 1) * sw + 64), rounded up to whole vectors:
 * the row stride of the scratch (packed, not a power of two: no cache-set aliasing between rows). */
static int64_t dwq_stride(const conv_t *a)
{
    const int64_t owv = (a->OW + 15) / 16 * 16;
    return ((owv - 16) * a->sw + 64 + 63) / 64 * 64;
}

static int dwq_fits(const conv_t *a, int32_t *band)
{
    const int64_t owv = (a->OW + 15) / 16 * 16, stride = dwq_stride(a), G = dwq_groups(a);
    int64_t rows;
    if (a->cg != 1 || a->ocg != 1 || G > EDGEQ_DWQ_GROUPS || a->KH > 16 ||
        15 * a->sw + (int64_t)(a->KW - 1) * a->dw >= 64 ||
        (owv - 1) * a->sw + (int64_t)(a->KW - 1) * a->dw + 64 > EDGEQ_DWQ_ROW ||
        (int64_t)a->W + a->pl > EDGEQ_DWQ_ROW - 64 || a->pl >= 64)
        return 0;
    for (rows = a->OH; rows >= 1; rows = rows > 1 ? rows / 2 : 0) {
        const int64_t in_rows = (rows - 1) * a->sh + (int64_t)(a->KH - 1) * a->dh + 1;
        if (in_rows * G * owv * 4 <= EDGEQ_SCRATCH_BYTES && in_rows * stride <= EDGEQ_SCRATCH_BYTES) {
            *band = (int32_t)rows;
            return 1;
        }
    }
    return 0;
}

/* The byte shuffles of a layer: the quads of each group of four taps of a padded row (idx[g]), and a
 * row's first 64 bytes moved right by pl. */
static void dwq_indices(const conv_t *a, __m512i *idx, __m512i *sidx)
{
    uint8_t ib[64];
    int32_t v, k, g;
    for (g = 0; g < dwq_groups(a); g++) {
        for (v = 0; v < 16; v++)
            for (k = 0; k < 4; k++)
                ib[4 * v + k] = (uint8_t)(v * a->sw + (4 * g + k < a->KW ? 4 * g + k : 0) * a->dw);
        idx[g] = _mm512_loadu_si512((const void *)ib);
    }
    for (v = 0; v < 64; v++)
        ib[v] = (uint8_t)((v - a->pl) & 63);
    *sidx = _mm512_loadu_si512((const void *)ib);
}

/* Padded row ih of plane xc as u = x + 128 (x_zp + 128 outside the input), `used` bytes rounded up to
 * whole vectors; column j of the row holds input column j - pl. */
static EDGEQ_ALWAYS_INLINE void dwq_row(const conv_t *a, const int8_t *xc, int32_t ih, uint8_t *row, int32_t used,
                                        __m512i sidx)
{
    const __m512i flip = _mm512_set1_epi8((char)0x80), zpv = _mm512_set1_epi8((char)a->x_zp);
    const __m512i padv = _mm512_xor_si512(zpv, flip);
    const int8_t *src;
    int32_t o = 0;
    if (ih < 0 || ih >= a->H) {
        for (; o < used; o += 64)
            _mm512_storeu_si512((void *)(row + o), padv);
        return;
    }
    src = xc + (int64_t)ih * a->W;
    if (a->pl > 0) {
        const __mmask64 k0 = (__mmask64)(~0ull >> (64 - min_i32(a->W, 64)));
        const __mmask64 kk = (__mmask64)(~0ull >> (64 - min_i32(a->W, 64 - a->pl))) << a->pl;
        const __m512i raw = _mm512_maskz_loadu_epi8(k0, src);
        _mm512_storeu_si512((void *)row, _mm512_xor_si512(_mm512_mask_permutexvar_epi8(zpv, kk, sidx, raw), flip));
        o = 64;
    }
    for (; o < used; o += 64) {
        const int32_t start = o - a->pl, n = a->W - start;
        if (n <= 0) {
            _mm512_storeu_si512((void *)(row + o), padv);
        } else {
            const __mmask64 k = n >= 64 ? ~(__mmask64)0 : (__mmask64)(~0ull >> (64 - n));
            _mm512_storeu_si512((void *)(row + o), _mm512_xor_si512(_mm512_mask_loadu_epi8(zpv, k, src + start), flip));
        }
    }
}

/* Output rows [oh0, oh0 + R) of channel c for KH == 3 on the fast requantization path (constant kind). */
static EDGEQ_ALWAYS_INLINE void dwq_rows3(const conv_t *a, int32_t c, int32_t oh0, int32_t R, const uint8_t *rows,
                                          int64_t stride, __m512i idx, __m512i init, const __m512i *wq,
                                          const fastq_t *f, int kind)
{
    const fastq_t fl = *f;
    const __m512i w0 = wq[0], w1 = wq[1], w2 = wq[2];
    const int64_t rs = (int64_t)a->dh * stride;
    const int32_t nv = (a->OW + 15) / 16, nfull = a->OW / 16;
    int32_t r, v;
    for (r = 0; r < R; r++) {
        int8_t *yr = a->y + (int64_t)c * a->OH * a->OW + (int64_t)(oh0 + r) * a->OW;
        const uint8_t *base = rows + (int64_t)r * a->sh * stride;
        for (v = 0; v < nv; v++) {
            const uint8_t *src = base + 16 * v * a->sw;
            __m512i acc = _mm512_dpbusd_epi32(init, _mm512_permutexvar_epi8(idx, _mm512_loadu_si512((const void *)src)), w0);
            __m128i b;
            acc = _mm512_dpbusd_epi32(acc, _mm512_permutexvar_epi8(idx, _mm512_loadu_si512((const void *)(src + rs))), w1);
            acc = _mm512_dpbusd_epi32(acc, _mm512_permutexvar_epi8(idx, _mm512_loadu_si512((const void *)(src + 2 * rs))), w2);
            b = fastq_bytes(acc, &fl, kind);
            if (v < nfull)
                _mm_storeu_si128((__m128i *)(yr + 16 * v), b);
            else
                _mm_mask_storeu_epi8(yr + 16 * v, (__mmask16)((1u << (a->OW - 16 * v)) - 1u), b);
        }
    }
}

static void dwq_channel(const conv_t *a, int32_t c, int32_t band, uint32_t *qbuf, uint8_t *rows, const __m512i *idx,
                        __m512i sidx)
{
    const int8_t *xc = a->x + (int64_t)c * a->H * a->W;
    const int8_t *wc = a->w + (int64_t)c * a->K;
    const int32_t owv = (a->OW + 15) / 16 * 16, nv = owv / 16, G = dwq_groups(a), taps = a->KH * G;
    const int32_t used = 16 * (nv - 1) * a->sw + 64; /* row bytes the quads read (<= EDGEQ_DWQ_ROW) */
    const int64_t stride = dwq_stride(a);
    const requant_t q = conv_requant(a, c);
    const int ordinary = mbqm_ordinary(q.mult, q.shift);
    vmbqm_t m;
    __m512i wq[16 * EDGEQ_DWQ_GROUPS], init;
    int64_t toff[16 * EDGEQ_DWQ_GROUPS]; /* qbuf offset of tap row t = kh * G + g from an output row's base */
    int32_t kh, kw, g, t, oh0, r, v, wsum = 0, wabs = 0;
    fastq_t f;
    int fast;
    for (kh = 0; kh < a->KH; kh++)
        for (g = 0; g < G; g++) {
            uint32_t wv = 0;
            for (kw = 4 * g; kw < min_i32(4 * g + 4, a->KW); kw++) {
                const int32_t w = wc[kh * a->KW + kw];
                wv |= (uint32_t)(uint8_t)w << (8 * (kw - 4 * g));
                wsum += w;
                wabs += w < 0 ? -w : w;
            }
            wq[kh * G + g] = _mm512_set1_epi32((int32_t)wv);
            toff[kh * G + g] = ((int64_t)kh * a->dh * G + g) * owv;
        }
    fast = fastq_make(&q, fastq_bound(wabs, q.bias), &f);
    if (!fast)
        m = vmbqm_make(ordinary ? q.mult : 0, ordinary ? q.shift : 0);
    /* Exact in int32 wrap-around: the true accumulator is < 2^31 in magnitude (and, on the fast path,
     * so is the accumulator plus the bias). */
    init = _mm512_set1_epi32((int32_t)((fast ? (uint32_t)q.bias : 0u) - (uint32_t)(a->x_zp + 128) * (uint32_t)wsum));
    for (oh0 = 0; oh0 < a->OH; oh0 += band) {
        const int32_t R = min_i32(band, a->OH - oh0);
        const int32_t in_rows = (R - 1) * a->sh + (a->KH - 1) * a->dh + 1;
        const int32_t ih0 = oh0 * a->sh - a->pt;
        /* Pass 1: padded rows of u = x + 128. Pass 2: quads. (A vpermb right after the unaligned
         * stores of its own row would stall on store forwarding.) */
        for (r = 0; r < in_rows; r++)
            dwq_row(a, xc, ih0 + r, rows + (int64_t)r * stride, used, sidx);
        if (fast && !q.lut && a->KH == 3 && G == 1) { /* the common 3x3 case: quads built in registers */
            switch (f.kind) {
            case 0: dwq_rows3(a, c, oh0, R, rows, stride, idx[0], init, wq, &f, 0); break;
            case FASTQ_LEFT: dwq_rows3(a, c, oh0, R, rows, stride, idx[0], init, wq, &f, FASTQ_LEFT); break;
            case FASTQ_CLAMP: dwq_rows3(a, c, oh0, R, rows, stride, idx[0], init, wq, &f, FASTQ_CLAMP); break;
            default: dwq_rows3(a, c, oh0, R, rows, stride, idx[0], init, wq, &f, FASTQ_LEFT | FASTQ_CLAMP); break;
            }
            continue;
        }
        /* qbuf row (r, g) holds the quads of group g of padded row r */
        for (r = 0; r < in_rows; r++) {
            const uint8_t *row = rows + (int64_t)r * stride;
            for (g = 0; g < G; g++) {
                uint32_t *dst = qbuf + ((int64_t)r * G + g) * owv;
                for (v = 0; v < nv; v++)
                    _mm512_storeu_si512((void *)(dst + 16 * v),
                                        _mm512_permutexvar_epi8(idx[g], _mm512_loadu_si512((const void *)(row + 16 * v * a->sw))));
            }
        }
        for (r = 0; r < R; r++) {
            int8_t *yr = a->y + (int64_t)c * a->OH * a->OW + (int64_t)(oh0 + r) * a->OW;
            const uint32_t *base = qbuf + (int64_t)r * a->sh * G * owv;
            for (v = 0; v < nv; v += 2) {
                __m512i acc0 = init, acc1 = init;
                const int two = v + 1 < nv;
                for (t = 0; t < taps; t++) {
                    const uint32_t *src = base + toff[t] + 16 * v;
                    acc0 = _mm512_dpbusd_epi32(acc0, _mm512_loadu_si512((const void *)src), wq[t]);
                    if (two)
                        acc1 = _mm512_dpbusd_epi32(acc1, _mm512_loadu_si512((const void *)(src + 16)), wq[t]);
                }
                if (fast) {
                    fastq16(acc0, &f, q.lut, yr + 16 * v, a->OW - 16 * v);
                    if (two)
                        fastq16(acc1, &f, q.lut, yr + 16 * v + 16, a->OW - 16 * v - 16);
                    continue;
                }
                requant16(acc0, &q, &m, ordinary, yr + 16 * v, a->OW - 16 * v);
                if (two)
                    requant16(acc1, &q, &m, ordinary, yr + 16 * v + 16, a->OW - 16 * v - 16);
            }
        }
    }
}

/* ---- Dense convolutions with few input channels and rows of up to 4 taps (first layers) ----------
 * The depthwise quads summed over input channels: per output vector of 16 pixels, for every
 * (c, kh) one vpermb of a padded input row gives the quads of the kw taps, and each output channel
 * adds them with one vpdpbusd against its broadcast weight quad; 8 output channels per pass. */
#define EDGEQ_CQ_OCB 8
#define EDGEQ_CQ_MAX_W 2048 /* weight quads (OC * C * KH) the stack holds */

static int cq_fits(const conv_t *a, int32_t *band)
{
    const int64_t stride = dwq_stride(a);
    int64_t rows;
    if (a->group != 1 || a->KW > 4 || a->KH * a->KW < 2 || 15 * a->sw + 3 * a->dw >= 64 || a->OW < 16 ||
        (int64_t)a->C * a->KH > 32 || (int64_t)a->OC * a->C * a->KH > EDGEQ_CQ_MAX_W ||
        ((a->OW + 15) / 16 * 16 - 1) * a->sw + (int64_t)(a->KW - 1) * a->dw + 64 > EDGEQ_DWQ_ROW ||
        (int64_t)a->W + a->pl > EDGEQ_DWQ_ROW - 64 || a->pl >= 64)
        return 0;
    /* bands small enough for the scratch and, with threads, at least two per thread */
    for (rows = a->OH; rows >= 1; rows = rows > 1 ? rows / 2 : 0) {
        const int64_t in_rows = (rows - 1) * a->sh + (int64_t)(a->KH - 1) * a->dh + 1;
        if (in_rows * stride * a->C <= EDGEQ_SCRATCH_BYTES &&
            (edgeq_threads == 1 || rows == 1 || (a->OH + rows - 1) / rows >= 2 * edgeq_threads)) {
            *band = (int32_t)rows;
            return 1;
        }
    }
    return 0;
}

static EDGEQ_ALWAYS_INLINE void cq_block(const conv_t *a, const uint8_t *rows, int64_t stride, int32_t in_rows,
                                        int32_t oh0, int32_t R, int32_t oc0, int32_t nb, const int32_t *wq,
                                        const int32_t *sums, __m512i idx)
{
    const int32_t CK = a->C * a->KH, owv = (a->OW + 15) / 16 * 16, nv = owv / 16;
    const uint32_t corr = (uint32_t)(a->x_zp + 128);
    fastq_t f[EDGEQ_CQ_OCB];
    requant_t q[EDGEQ_CQ_OCB];
    vmbqm_t m[EDGEQ_CQ_OCB];
    int fast[EDGEQ_CQ_OCB], ordinary[EDGEQ_CQ_OCB];
    __m512i init[EDGEQ_CQ_OCB];
    int32_t j, r, v, c, kh;
    for (j = 0; j < nb; j++) {
        q[j] = conv_requant(a, oc0 + j);
        fast[j] = fastq_make(&q[j], fastq_bound(sums[2 * (oc0 + j) + 1], q[j].bias), &f[j]);
        ordinary[j] = mbqm_ordinary(q[j].mult, q[j].shift);
        m[j] = vmbqm_make(ordinary[j] ? q[j].mult : 0, ordinary[j] ? q[j].shift : 0);
        init[j] = _mm512_set1_epi32((int32_t)((fast[j] ? (uint32_t)q[j].bias : 0u) - corr * (uint32_t)sums[2 * (oc0 + j)]));
    }
    for (r = 0; r < R; r++) {
        for (v = 0; v < nv; v++) {
            __m512i acc[EDGEQ_CQ_OCB];
            for (j = 0; j < nb; j++)
                acc[j] = init[j];
            for (c = 0; c < a->C; c++)
                for (kh = 0; kh < a->KH; kh++) {
                    const uint8_t *src = rows + ((int64_t)c * in_rows + r * a->sh + kh * a->dh) * stride + 16 * v * a->sw;
                    const __m512i qv = _mm512_permutexvar_epi8(idx, _mm512_loadu_si512((const void *)src));
                    const int32_t *w = wq + (int64_t)oc0 * CK + c * a->KH + kh;
                    for (j = 0; j < nb; j++)
                        acc[j] = _mm512_dpbusd_epi32(acc[j], qv, _mm512_set1_epi32(w[(int64_t)j * CK]));
                }
            for (j = 0; j < nb; j++) {
                int8_t *y = a->y + ((int64_t)(oc0 + j) * a->OH + oh0 + r) * a->OW + 16 * v;
                if (fast[j])
                    fastq16(acc[j], &f[j], a->lut, y, a->OW - 16 * v);
                else
                    requant16(acc[j], &q[j], &m[j], ordinary[j], y, a->OW - 16 * v);
            }
        }
    }
}

static void cq_band(const conv_t *a, int32_t band, int32_t oh0, const int32_t *wq, const int32_t *sums, __m512i idx,
                    __m512i sidx)
{
    EDGEQ_ALIGN64 uint8_t rows[EDGEQ_SCRATCH_BYTES];
    const int64_t stride = dwq_stride(a);
    const int32_t owv = (a->OW + 15) / 16 * 16, used = 16 * (owv / 16 - 1) * a->sw + 64;
    const int32_t R = min_i32(band, a->OH - oh0);
    const int32_t in_rows = (R - 1) * a->sh + (a->KH - 1) * a->dh + 1, ih0 = oh0 * a->sh - a->pt;
    int32_t c, r, oc;
    for (c = 0; c < a->C; c++)
        for (r = 0; r < in_rows; r++)
            dwq_row(a, a->x + (int64_t)c * a->H * a->W, ih0 + r, rows + ((int64_t)c * in_rows + r) * stride, used, sidx);
    for (oc = 0; oc + EDGEQ_CQ_OCB <= a->OC; oc += EDGEQ_CQ_OCB)
        cq_block(a, rows, stride, in_rows, oh0, R, oc, EDGEQ_CQ_OCB, wq, sums, idx);
    switch (a->OC - oc) {
    case 7: cq_block(a, rows, stride, in_rows, oh0, R, oc, 7, wq, sums, idx); break;
    case 6: cq_block(a, rows, stride, in_rows, oh0, R, oc, 6, wq, sums, idx); break;
    case 5: cq_block(a, rows, stride, in_rows, oh0, R, oc, 5, wq, sums, idx); break;
    case 4: cq_block(a, rows, stride, in_rows, oh0, R, oc, 4, wq, sums, idx); break;
    case 3: cq_block(a, rows, stride, in_rows, oh0, R, oc, 3, wq, sums, idx); break;
    case 2: cq_block(a, rows, stride, in_rows, oh0, R, oc, 2, wq, sums, idx); break;
    case 1: cq_block(a, rows, stride, in_rows, oh0, R, oc, 1, wq, sums, idx); break;
    default: break;
    }
}

static int conv_quads(const conv_t *a)
{
    int32_t wq[EDGEQ_CQ_MAX_W], sums[2 * EDGEQ_CQ_MAX_W];
    int32_t band, n_bands, b, oc, c, kh, kw;
    __m512i idx, sidx;
    if (!cq_fits(a, &band))
        return 0;
    dwq_indices(a, &idx, &sidx);
    for (oc = 0; oc < a->OC; oc++) { /* OC <= EDGEQ_CQ_MAX_W (C * KH >= 1) */
        int32_t sum = 0, sabs = 0;
        for (c = 0; c < a->C; c++)
            for (kh = 0; kh < a->KH; kh++) {
                const int8_t *w = a->w + (((int64_t)oc * a->C + c) * a->KH + kh) * a->KW;
                uint32_t v = 0;
                for (kw = 0; kw < a->KW; kw++) {
                    v |= (uint32_t)(uint8_t)w[kw] << (8 * kw);
                    sum += w[kw];
                    sabs += w[kw] < 0 ? -w[kw] : w[kw];
                }
                wq[(int64_t)oc * a->C * a->KH + c * a->KH + kh] = (int32_t)v;
            }
        sums[2 * oc] = sum;
        sums[2 * oc + 1] = sabs;
    }
    n_bands = (a->OH + band - 1) / band;
    EDGEQ_PARALLEL_FOR(conv_work(a) >= EDGEQ_PAR_MIN_WORK && n_bands > 1)
    for (b = 0; b < n_bands; b++)
        cq_band(a, band, b * band, wq, sums, idx, sidx);
    return 1;
}

static int conv_depthwise_quads(const conv_t *a)
{
    int32_t band, c;
    __m512i idx[EDGEQ_DWQ_GROUPS], sidx;
    if (!dwq_fits(a, &band))
        return 0;
    dwq_indices(a, idx, &sidx);
    EDGEQ_PARALLEL_FOR((conv_work(a) >= EDGEQ_PAR_MIN_WORK || conv_outputs(a) >= EDGEQ_PAR_MIN_ELEMS / 2) && a->C > 1)
    for (c = 0; c < a->C; c++) {
        EDGEQ_ALIGN64 uint32_t qbuf[EDGEQ_SCRATCH_BYTES / 4];
        EDGEQ_ALIGN64 uint8_t rows[EDGEQ_SCRATCH_BYTES];
        dwq_channel(a, c, band, qbuf, rows, idx, sidx);
    }
    return 1;
}
#endif

#if EDGEQ_AVX512 && defined(__AVX512VNNI__)
/* ---- Pointwise (1x1, stride 1, no padding, one group) with AVX-512 VNNI --------------------------
 * y[oc][p] = sum_c w[oc][c] * (x[c][p] - x_zp): a tile of pixels is packed as uint8 x + 128 with four
 * channels interleaved per 32-bit lane ([c / 4][p][4]), so vpdpbusd adds four channels' products per
 * lane; 4 output channels x 64 pixels of accumulators, corrected by (x_zp + 128) * sum(w). */
#define EDGEQ_PW_TILE 256
#ifndef EDGEQ_PW_TILE_DIRECT
#define EDGEQ_PW_TILE_DIRECT 1024 /* pixels per tile of a plain 1x1 convolution (no im2col rows) */
#endif
#define EDGEQ_PW_OCB 4
#define EDGEQ_PW_OCB_MAX 8 /* output channels per block when a tile is one vector of pixels */
#ifndef EDGEQ_GM_MIN_OW
#define EDGEQ_GM_MIN_OW 16
#endif

/* Row of im2col tap k (k = (c * KH + kh) * KW + kw) for output pixels [p0, p0 + np): int8, the
 * padding as x_zp (which the zero-point correction cancels). */
static void gm_row(const conv_t *a, int32_t k, int32_t p0, int32_t np, int8_t *restrict d)
{
    const int32_t khw = a->KH * a->KW, c = k / khw, kh = (k / a->KW) % a->KH, kw = k % a->KW;
    const int8_t *xc = a->x + (int64_t)c * a->H * a->W;
    const int32_t off = kw * a->dw - a->pl;
    int32_t p = p0, oh = p0 / a->OW, ow0 = p0 % a->OW;
    while (p < p0 + np) {
        const int32_t n = min_i32(a->OW - ow0, p0 + np - p);
        const int32_t ih = oh * a->sh - a->pt + kh * a->dh;
        if (ih < 0 || ih >= a->H) {
            memset(d, a->x_zp, (size_t)n);
        } else {
            const int8_t *row = xc + (int64_t)ih * a->W;
            int32_t lo, hi, i;
            tap_range(ow0, ow0 + n, a->sw, off, a->W, &lo, &hi);
            if (lo > ow0)
                memset(d, a->x_zp, (size_t)(lo - ow0));
            if (a->sw == 1) {
                if (hi - lo > 32)
                    memcpy(d + (lo - ow0), row + lo + off, (size_t)(hi - lo));
                else
                    for (i = lo; i < hi; i++)
                        d[i - ow0] = row[i + off];
            } else {
                i = lo;
#if defined(__AVX512VBMI__)
                if (a->sw == 2) {
                    const __m512i idx = _mm512_set_epi8(126, 124, 122, 120, 118, 116, 114, 112, 110, 108, 106, 104,
                        102, 100, 98, 96, 94, 92, 90, 88, 86, 84, 82, 80, 78, 76, 74, 72, 70, 68, 66, 64, 62, 60, 58,
                        56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32, 30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10,
                        8, 6, 4, 2, 0);
                    for (; i < hi; i += 64) {
                        const int32_t m = min_i32(64, hi - i), need = 2 * m - 1;
                        const int8_t *src = row + (int64_t)i * 2 + off;
                        const __mmask64 k0 = need >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << need) - 1);
                        const __mmask64 k1 = need > 64 ? (((__mmask64)1 << (need - 64)) - 1) : 0;
                        const __m512i v0 = _mm512_maskz_loadu_epi8(k0, src);
                        const __m512i v1 = _mm512_maskz_loadu_epi8(k1, src + 64);
                        const __mmask64 ks = m >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << m) - 1);
                        _mm512_mask_storeu_epi8(d + (i - ow0), ks, _mm512_permutex2var_epi8(v0, idx, v1));
                    }
                }
#endif
                for (; i < hi; i++)
                    d[i - ow0] = row[(int64_t)i * a->sw + off];
            }
            if (hi < ow0 + n)
                memset(d + (hi - ow0), a->x_zp, (size_t)(ow0 + n - hi));
        }
        d += n;
        p += n;
        ow0 = 0;
        oh++;
    }
}

/* Pack patches of pixels [p0, p0 + np) as uint8 x + 128, four taps per 32-bit lane: [k / 4][p][4]
 * (taps past K repeat a real row: their weights are zero). */
#if defined(__AVX512VBMI__)
#define EDGEQ_SMALL_TAPS 25
/* Whether pw_pack_small applies: every input plane and the output plane fit one vector. */
static int pw_small(const conv_t *a)
{
    return (int64_t)a->H * a->W <= 64 && (int64_t)a->OH * a->OW <= 64 && a->KH * a->KW <= EDGEQ_SMALL_TAPS;
}

/* pw_pack for small planes: each tap row of the im2col matrix is one byte permute of its channel's
 * plane (outside taps masked to x_zp), four rows interleaved in registers. */
static void pw_pack_small(const conv_t *a, int32_t np, int32_t npv, uint8_t *restrict xp)
{
    const int32_t taps = a->KH * a->KW, K = a->K, K4 = (K + 3) / 4, HW = a->H * a->W, nl = npv / 16;
    const __m512i zpv = _mm512_set1_epi8((char)a->x_zp), flip = _mm512_set1_epi8((char)0x80);
    const __mmask64 kplane = (__mmask64)(~0ull >> (64 - HW));
    __m512i tidx[EDGEQ_SMALL_TAPS], plane = _mm512_setzero_si512();
    __mmask64 tmask[EDGEQ_SMALL_TAPS];
    uint8_t ib[EDGEQ_SMALL_TAPS][64];
    int32_t t, p, k4, j, c_loaded = -1;
    for (t = 0; t < taps; t++) {
        const int32_t kh = t / a->KW, kw = t % a->KW;
        uint64_t m = 0;
        memset(ib[t], 0, 64);
        int32_t oh = 0, ow = 0;
        for (p = 0; p < np; p++) {
            const int32_t ih = oh * a->sh - a->pt + kh * a->dh, iw = ow * a->sw - a->pl + kw * a->dw;
            if (ih >= 0 && ih < a->H && iw >= 0 && iw < a->W) {
                ib[t][p] = (uint8_t)(ih * a->W + iw);
                m |= 1ull << p;
            }
            if (++ow == a->OW) {
                ow = 0;
                oh++;
            }
        }
        tmask[t] = (__mmask64)m;
    }
    for (t = 0; t < taps; t++) /* loaded after all the byte stores */
        tidx[t] = _mm512_loadu_si512((const void *)ib[t]);
    for (k4 = 0; k4 < K4; k4++) {
        uint8_t *d = xp + (int64_t)k4 * npv * 4;
        __m512i r[4], a0, a1, b0, b1, q[4];
        for (j = 0; j < 4; j++) {
            const int32_t k = 4 * k4 + j < K ? 4 * k4 + j : K - 1, c = k / taps;
            if (c != c_loaded) {
                plane = _mm512_maskz_loadu_epi8(kplane, a->x + (int64_t)c * HW);
                c_loaded = c;
            }
            r[j] = _mm512_xor_si512(_mm512_mask_permutexvar_epi8(zpv, tmask[k % taps], tidx[k % taps], plane), flip);
        }
        a0 = _mm512_unpacklo_epi8(r[0], r[1]);
        a1 = _mm512_unpackhi_epi8(r[0], r[1]);
        b0 = _mm512_unpacklo_epi8(r[2], r[3]);
        b1 = _mm512_unpackhi_epi8(r[2], r[3]);
        q[0] = _mm512_unpacklo_epi16(a0, b0); /* per 128-bit lane L: pixels 16L + 0..3 */
        q[1] = _mm512_unpackhi_epi16(a0, b0);
        q[2] = _mm512_unpacklo_epi16(a1, b1);
        q[3] = _mm512_unpackhi_epi16(a1, b1);
        for (j = 0; j < 4; j++) {
            _mm_storeu_si128((__m128i *)(d + 16 * j), _mm512_castsi512_si128(q[j]));
            if (nl > 1)
                _mm_storeu_si128((__m128i *)(d + 64 + 16 * j), _mm512_extracti32x4_epi32(q[j], 1));
            if (nl > 2)
                _mm_storeu_si128((__m128i *)(d + 128 + 16 * j), _mm512_extracti32x4_epi32(q[j], 2));
            if (nl > 3)
                _mm_storeu_si128((__m128i *)(d + 192 + 16 * j), _mm512_extracti32x4_epi32(q[j], 3));
        }
    }
}
#endif

/* Bytes [0, n) of four int8 rows as uint8 x + 128, interleaved: d[4 * p + j] = r[j][p] + 128. */
static EDGEQ_ALWAYS_INLINE void interleave4(uint8_t *restrict d, const int8_t *const r[4], int32_t n)
{
    const __m128i flip = _mm_set1_epi8((char)0x80);
    int32_t p = 0, j;
    for (; p + 16 <= n; p += 16) {
        const __m128i x0 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(r[0] + p)), flip);
        const __m128i x1 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(r[1] + p)), flip);
        const __m128i x2 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(r[2] + p)), flip);
        const __m128i x3 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(r[3] + p)), flip);
        const __m128i a0 = _mm_unpacklo_epi8(x0, x1), a1 = _mm_unpackhi_epi8(x0, x1);
        const __m128i b0 = _mm_unpacklo_epi8(x2, x3), b1 = _mm_unpackhi_epi8(x2, x3);
        _mm_storeu_si128((__m128i *)(d + 4 * p), _mm_unpacklo_epi16(a0, b0));
        _mm_storeu_si128((__m128i *)(d + 4 * p + 16), _mm_unpackhi_epi16(a0, b0));
        _mm_storeu_si128((__m128i *)(d + 4 * p + 32), _mm_unpacklo_epi16(a1, b1));
        _mm_storeu_si128((__m128i *)(d + 4 * p + 48), _mm_unpackhi_epi16(a1, b1));
    }
    for (; p < n; p++)
        for (j = 0; j < 4; j++)
            d[4 * p + j] = (uint8_t)(r[j][p] + 128);
}

static void pw_pack(const conv_t *a, int32_t p0, int32_t np, int32_t npv, uint8_t *restrict xp, int8_t *rows)
{
    const int64_t P = (int64_t)a->H * a->W;
    const int32_t K = a->K, K4 = (K + 3) / 4;
    const int direct = a->KH == 1 && a->KW == 1 && a->sh == 1 && a->sw == 1 && a->pt == 0 && a->pl == 0 &&
                       a->OH == a->H && a->OW == a->W;
    int32_t c4, j;
#if defined(__AVX512VBMI__)
    if (!direct && p0 == 0 && np == a->OH * a->OW && pw_small(a)) {
        pw_pack_small(a, np, npv, xp);
        return;
    }
#endif
    for (c4 = 0; c4 < K4; c4++) {
        uint8_t *d = xp + (int64_t)c4 * npv * 4;
        const int8_t *r[4];
        for (j = 0; j < 4; j++) {
            const int32_t k = 4 * c4 + j < K ? 4 * c4 + j : K - 1;
            if (direct) {
                r[j] = a->x + (int64_t)k * P + p0;
            } else if (4 * c4 + j < K) {
                gm_row(a, k, p0, np, rows + (int64_t)j * EDGEQ_PW_TILE);
                r[j] = rows + (int64_t)j * EDGEQ_PW_TILE;
            } else {
                r[j] = r[0];
            }
        }
        interleave4(d, r, np);
        memset(d + 4 * (int64_t)np, 0, (size_t)(npv - np) * 4);
    }
}

/* Weight quad c4 of output channel row w (zero beyond C). */
static inline int32_t pw_wquad(const int8_t *w, int32_t C, int32_t c4)
{
    uint32_t v = 0;
    int32_t j;
    if (4 * c4 + 4 <= C) {
        memcpy(&v, w + 4 * c4, 4);
        return (int32_t)v;
    }
    for (j = 0; j < 4 && 4 * c4 + j < C; j++)
        v |= (uint32_t)(uint8_t)w[4 * c4 + j] << (8 * j);
    return (int32_t)v;
}

#ifndef EDGEQ_PW_MAX_OC
#define EDGEQ_PW_MAX_OC 1024 /* output channels whose weight sums one call precomputes (on the stack) */
#endif

/* sum(w) and sum(|w|) of one output channel's row of C weights. */
static inline void pw_row_sums(const int8_t *restrict wr, int32_t C, int32_t *sum, int32_t *sabs)
{
#if EDGEQ_AVX512 /* byte sums by vpsadbw: of w + 128 (masked lanes 0, corrected below) and of |w| */
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    __m512i s = _mm512_setzero_si512(), t = _mm512_setzero_si512();
    int32_t c;
    for (c = 0; c < C; c += 64) {
        const __mmask64 k = C - c >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (C - c)) - 1);
        const __m512i v = _mm512_maskz_loadu_epi8(k, wr + c);
        s = _mm512_add_epi64(s, _mm512_sad_epu8(_mm512_maskz_mov_epi8(k, _mm512_xor_si512(v, flip)),
                                                _mm512_setzero_si512()));
        t = _mm512_add_epi64(t, _mm512_sad_epu8(_mm512_abs_epi8(v), _mm512_setzero_si512()));
    }
    *sum = (int32_t)(_mm512_reduce_add_epi64(s) - (int64_t)128 * C);
    *sabs = (int32_t)_mm512_reduce_add_epi64(t);
#else
    int32_t c, s = 0, t = 0;
    for (c = 0; c < C; c++) {
        const int32_t v = wr[c];
        s += v;
        t += v < 0 ? -v : v;
    }
    *sum = s;
    *sabs = t;
#endif
}

/* Requantization state of the output channels of one pw_block. */
typedef struct {
    __m512i init[EDGEQ_PW_OCB_MAX]; /* accumulator start: bias (fast path) minus (x_zp + 128) * sum(w) */
    fastq_t f[EDGEQ_PW_OCB_MAX];
    vmbqm_t m[EDGEQ_PW_OCB_MAX];
    requant_t q[EDGEQ_PW_OCB_MAX];
    int fast[EDGEQ_PW_OCB_MAX], ordinary[EDGEQ_PW_OCB_MAX];
} pwq_t;

/* MultiplyByQuantizedMultiplier of fastq_bytes before the zero point, for a constant kind. */
static EDGEQ_ALWAYS_INLINE __m512i fastq_raw(__m512i v, const fastq_t *f, int kind)
{
    __m512i pe, po, y;
    if (kind & FASTQ_LEFT)
        v = _mm512_sll_epi32(v, f->left);
    pe = _mm512_add_epi64(_mm512_mul_epi32(v, f->mult), f->add);
    po = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(v, 32), f->mult), f->add);
    y = _mm512_mask_blend_epi32((__mmask16)0xAAAA, _mm512_srli_epi64(pe, 31), _mm512_slli_epi64(po, 1));
    y = _mm512_mask_sub_epi32(y, _mm512_cmplt_epi32_mask(v, f->thr), y, _mm512_set1_epi32(1));
    return _mm512_sra_epi32(y, f->right);
}

/* 64 outputs of one channel from 4 vectors of acc + bias: narrowed together with saturating packs (the
 * zero point added in int16, the clamp [lo, hi] on int8: both commute with the saturations), one store. */
static EDGEQ_ALWAYS_INLINE void fastq_store64(int8_t *y, __m512i v0, __m512i v1, __m512i v2, __m512i v3,
                                              const fastq_t *f, const requant_t *q, int kind)
{
    const __m512i zp = _mm512_set1_epi16((short)q->y_zp);
    const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    const __m512i h0 = _mm512_adds_epi16(_mm512_packs_epi32(fastq_raw(v0, f, kind), fastq_raw(v1, f, kind)), zp);
    const __m512i h1 = _mm512_adds_epi16(_mm512_packs_epi32(fastq_raw(v2, f, kind), fastq_raw(v3, f, kind)), zp);
    __m512i b = _mm512_packs_epi16(h0, h1); /* 128-bit lane l: v0..v3 lanes 4l..4l+3 */
    if (kind & FASTQ_CLAMP)
        b = _mm512_min_epi8(_mm512_max_epi8(b, _mm512_set1_epi8((char)q->lo)), _mm512_set1_epi8((char)q->hi));
    _mm512_storeu_si512((void *)y, _mm512_permutexvar_epi32(order, b));
}

/* Output of channel j of a 4x4 block: 4 whole vectors of accumulators straight from registers. */
static EDGEQ_ALWAYS_INLINE void pw_out4(const pwq_t *s, int32_t j, int8_t *yr, __m512i v0, __m512i v1, __m512i v2,
                                       __m512i v3)
{
    const fastq_t *f = &s->f[j];
    if (s->fast[j]) {
        switch (f->kind) {
        case 0: fastq_store64(yr, v0, v1, v2, v3, f, &s->q[j], 0); break;
        case FASTQ_CLAMP: fastq_store64(yr, v0, v1, v2, v3, f, &s->q[j], FASTQ_CLAMP); break;
        case FASTQ_LEFT: fastq_store64(yr, v0, v1, v2, v3, f, &s->q[j], FASTQ_LEFT); break;
        default: fastq_store64(yr, v0, v1, v2, v3, f, &s->q[j], FASTQ_LEFT | FASTQ_CLAMP); break;
        }
    } else {
        requant16(v0, &s->q[j], &s->m[j], s->ordinary[j], yr, 16);
        requant16(v1, &s->q[j], &s->m[j], s->ordinary[j], yr + 16, 16);
        requant16(v2, &s->q[j], &s->m[j], s->ordinary[j], yr + 32, 16);
        requant16(v3, &s->q[j], &s->m[j], s->ordinary[j], yr + 48, 16);
    }
}

static EDGEQ_ALWAYS_INLINE int32_t pw_load_quad(const int8_t *w)
{
    int32_t v;
    memcpy(&v, w, 4);
    return v;
}

#define PW_DP4(A0, A1, A2, A3, W)                                                                                \
    do {                                                                                                         \
        const __m512i w_ = (W);                                                                                  \
        A0 = _mm512_dpbusd_epi32(A0, x0, w_);                                                                    \
        A1 = _mm512_dpbusd_epi32(A1, x1, w_);                                                                    \
        A2 = _mm512_dpbusd_epi32(A2, x2, w_);                                                                    \
        A3 = _mm512_dpbusd_epi32(A3, x3, w_);                                                                    \
    } while (0)

/* The 4 output channels x 4 vectors of 16 whole pixels block, no table: 16 named accumulators, the weight
 * quads broadcast from memory, requantized from registers. */
static void pw_core44(const conv_t *a, const uint8_t *xp, int32_t npv, int32_t p0, int32_t oc0, int32_t pv,
                      const pwq_t *s)
{
    const int32_t C = a->K, C4w = C / 4;
    const int64_t P = (int64_t)a->OH * a->OW, step = (int64_t)npv * 4;
    const int8_t *w0 = a->w + (int64_t)oc0 * C, *w1 = w0 + C, *w2 = w1 + C, *w3 = w2 + C;
    const uint8_t *src = xp + (int64_t)pv * 4;
    __m512i a00 = s->init[0], a01 = a00, a02 = a00, a03 = a00;
    __m512i a10 = s->init[1], a11 = a10, a12 = a10, a13 = a10;
    __m512i a20 = s->init[2], a21 = a20, a22 = a20, a23 = a20;
    __m512i a30 = s->init[3], a31 = a30, a32 = a30, a33 = a30;
    int8_t *y = a->y + (int64_t)oc0 * P + p0 + pv;
    int32_t c4;
    for (c4 = 0; c4 < C4w; c4++, src += step) {
        const __m512i x0 = _mm512_loadu_si512((const void *)src), x1 = _mm512_loadu_si512((const void *)(src + 64));
        const __m512i x2 = _mm512_loadu_si512((const void *)(src + 128));
        const __m512i x3 = _mm512_loadu_si512((const void *)(src + 192));
        PW_DP4(a00, a01, a02, a03, _mm512_set1_epi32(pw_load_quad(w0 + 4 * c4)));
        PW_DP4(a10, a11, a12, a13, _mm512_set1_epi32(pw_load_quad(w1 + 4 * c4)));
        PW_DP4(a20, a21, a22, a23, _mm512_set1_epi32(pw_load_quad(w2 + 4 * c4)));
        PW_DP4(a30, a31, a32, a33, _mm512_set1_epi32(pw_load_quad(w3 + 4 * c4)));
    }
    if (C4w * 4 < C) {
        const __m512i x0 = _mm512_loadu_si512((const void *)src), x1 = _mm512_loadu_si512((const void *)(src + 64));
        const __m512i x2 = _mm512_loadu_si512((const void *)(src + 128));
        const __m512i x3 = _mm512_loadu_si512((const void *)(src + 192));
        PW_DP4(a00, a01, a02, a03, _mm512_set1_epi32(pw_wquad(w0, C, C4w)));
        PW_DP4(a10, a11, a12, a13, _mm512_set1_epi32(pw_wquad(w1, C, C4w)));
        PW_DP4(a20, a21, a22, a23, _mm512_set1_epi32(pw_wquad(w2, C, C4w)));
        PW_DP4(a30, a31, a32, a33, _mm512_set1_epi32(pw_wquad(w3, C, C4w)));
    }
    pw_out4(s, 0, y, a00, a01, a02, a03);
    pw_out4(s, 1, y + P, a10, a11, a12, a13);
    pw_out4(s, 2, y + 2 * P, a20, a21, a22, a23);
    pw_out4(s, 3, y + 3 * P, a30, a31, a32, a33);
}

/* nv (1..4) vectors of 16 pixels from pv, nb (1..4) output channels from oc0. */
static EDGEQ_ALWAYS_INLINE void pw_core(const conv_t *a, const uint8_t *xp, int32_t npv, int32_t np, int32_t p0,
                                        int32_t oc0, int32_t nb, int32_t pv, int32_t nv, const pwq_t *s)
{
    const int32_t C = a->K, C4 = (C + 3) / 4;
    const int64_t P = (int64_t)a->OH * a->OW;
    __m512i acc[EDGEQ_PW_OCB_MAX][4];
    int32_t j, c4, v;
    for (j = 0; j < nb; j++)
        for (v = 0; v < nv; v++)
            acc[j][v] = s->init[j];
    for (c4 = 0; c4 < C4; c4++) {
        const uint8_t *src = xp + ((int64_t)c4 * npv + pv) * 4;
        __m512i xv[4];
        for (v = 0; v < nv; v++)
            xv[v] = _mm512_loadu_si512((const void *)(src + 64 * v));
        for (j = 0; j < nb; j++) {
            const __m512i wq = _mm512_set1_epi32(pw_wquad(a->w + (int64_t)(oc0 + j) * C, C, c4));
            for (v = 0; v < nv; v++)
                acc[j][v] = _mm512_dpbusd_epi32(acc[j][v], xv[v], wq);
        }
    }
    if (pv + 16 * nv <= np && !a->lut) { /* whole vectors: unmasked stores, accumulators stay in registers */
        for (j = 0; j < nb; j++) {
            int8_t *yr = a->y + (int64_t)(oc0 + j) * P + p0 + pv;
            if (s->fast[j]) {
                switch (s->f[j].kind) {
                case 0:
                    for (v = 0; v < nv; v++)
                        _mm_storeu_si128((__m128i *)(yr + 16 * v), fastq_bytes(acc[j][v], &s->f[j], 0));
                    break;
                case FASTQ_CLAMP:
                    for (v = 0; v < nv; v++)
                        _mm_storeu_si128((__m128i *)(yr + 16 * v), fastq_bytes(acc[j][v], &s->f[j], FASTQ_CLAMP));
                    break;
                default:
                    for (v = 0; v < nv; v++)
                        _mm_storeu_si128((__m128i *)(yr + 16 * v),
                                         fastq_bytes(acc[j][v], &s->f[j], FASTQ_LEFT | FASTQ_CLAMP));
                    break;
                }
            } else {
                for (v = 0; v < nv; v++)
                    requant16(acc[j][v], &s->q[j], &s->m[j], s->ordinary[j], yr + 16 * v, 16);
            }
        }
        return;
    }
    for (j = 0; j < nb; j++) {
        int8_t *yr = a->y + (int64_t)(oc0 + j) * P + p0;
        if (s->fast[j]) {
            for (v = 0; v < nv && pv + 16 * v < np; v++)
                fastq16(acc[j][v], &s->f[j], a->lut, yr + pv + 16 * v, np - pv - 16 * v);
        } else {
            for (v = 0; v < nv && pv + 16 * v < np; v++)
                requant16(acc[j][v], &s->q[j], &s->m[j], s->ordinary[j], yr + pv + 16 * v, np - pv - 16 * v);
        }
    }
}

/* Requantization state of output channels [oc0, oc0 + nb), from their weight sums (``sums`` as pairs of
 * sum(w), sum(|w|) per channel, or NULL to compute them from the rows of K weights). */
static EDGEQ_ALWAYS_INLINE void pwq_setup(const conv_t *a, int32_t oc0, int32_t nb, const int32_t *sums, pwq_t *s)
{
    const int32_t C = a->K;
    const uint32_t corr = (uint32_t)(a->x_zp + 128);
    int32_t j;
    for (j = 0; j < nb; j++) {
        int32_t sum, sabs;
        if (sums) {
            sum = sums[2 * (oc0 + j)];
            sabs = sums[2 * (oc0 + j) + 1];
        } else {
            pw_row_sums(a->w + (int64_t)(oc0 + j) * C, C, &sum, &sabs);
        }
        s->q[j] = conv_requant(a, oc0 + j);
        s->fast[j] = fastq_make(&s->q[j], fastq_bound(sabs, s->q[j].bias), &s->f[j]);
        s->ordinary[j] = mbqm_ordinary(s->q[j].mult, s->q[j].shift);
        if (!s->fast[j])
            s->m[j] = vmbqm_make(s->ordinary[j] ? s->q[j].mult : 0, s->ordinary[j] ? s->q[j].shift : 0);
        /* int32 wrap-around is exact: the true accumulator (plus the bias, when added) is < 2^31 */
        s->init[j] = _mm512_set1_epi32((int32_t)((s->fast[j] ? (uint32_t)s->q[j].bias : 0u) - corr * (uint32_t)sum));
    }
}

static EDGEQ_ALWAYS_INLINE void pw_block(const conv_t *a, const uint8_t *xp, int32_t npv, int32_t np, int32_t p0,
                                         int32_t oc0, int32_t nb, const int32_t *sums)
{
    pwq_t s;
    int32_t pv;
    pwq_setup(a, oc0, nb, sums, &s);
    if (nb == 4 && !a->lut) {
        for (pv = 0; pv + 64 <= np; pv += 64)
            pw_core44(a, xp, npv, p0, oc0, pv, &s);
    } else {
        pv = 0;
    }
    for (; pv + 64 <= npv; pv += 64)
        pw_core(a, xp, npv, np, p0, oc0, nb, pv, 4, &s);
    switch ((npv - pv) / 16) {
    case 3: pw_core(a, xp, npv, np, p0, oc0, nb, pv, 3, &s); break;
    case 2: pw_core(a, xp, npv, np, p0, oc0, nb, pv, 2, &s); break;
    case 1: pw_core(a, xp, npv, np, p0, oc0, nb, pv, 1, &s); break;
    default: break;
    }
}

static void pw_tile(const conv_t *a, int32_t p0, int32_t np, int32_t oc_lo, int32_t oc_hi, uint8_t *xp, int8_t *rows,
                    const int32_t *sums)
{
    const int32_t npv = (np + 15) / 16 * 16;
    int32_t oc;
    pw_pack(a, p0, np, npv, xp, rows);
    if (npv == 16) { /* one vector per channel: more channels per block for independent chains */
        for (oc = oc_lo; oc + EDGEQ_PW_OCB_MAX <= oc_hi; oc += EDGEQ_PW_OCB_MAX)
            pw_block(a, xp, npv, np, p0, oc, EDGEQ_PW_OCB_MAX, sums);
        switch (oc_hi - oc) {
        case 7: pw_block(a, xp, npv, np, p0, oc, 7, sums); break;
        case 6: pw_block(a, xp, npv, np, p0, oc, 6, sums); break;
        case 5: pw_block(a, xp, npv, np, p0, oc, 5, sums); break;
        case 4: pw_block(a, xp, npv, np, p0, oc, 4, sums); break;
        case 3: pw_block(a, xp, npv, np, p0, oc, 3, sums); break;
        case 2: pw_block(a, xp, npv, np, p0, oc, 2, sums); break;
        case 1: pw_block(a, xp, npv, np, p0, oc, 1, sums); break;
        default: break;
        }
        return;
    }
    for (oc = oc_lo; oc + EDGEQ_PW_OCB <= oc_hi; oc += EDGEQ_PW_OCB)
        pw_block(a, xp, npv, np, p0, oc, EDGEQ_PW_OCB, sums);
    switch (oc_hi - oc) {
    case 3: pw_block(a, xp, npv, np, p0, oc, 3, sums); break;
    case 2: pw_block(a, xp, npv, np, p0, oc, 2, sums); break;
    case 1: pw_block(a, xp, npv, np, p0, oc, 1, sums); break;
    default: break;
    }
}

static void pw_job(const conv_t *a, int64_t job, int32_t n_parts, int64_t pt, int64_t P, const int32_t *sums)
{
    uint8_t xp[EDGEQ_PATCH_BYTES];
    int8_t rows[4 * EDGEQ_PW_TILE];
    /* part-major: with a static schedule each thread gets one share of every tile (balanced even when
     * the last tile is short) */
    const int64_t n_tiles = (P + pt - 1) / pt, tile = job % n_tiles;
    const int32_t part = (int32_t)(job / n_tiles);
    const int32_t nbk = (a->OC + EDGEQ_PW_OCB - 1) / EDGEQ_PW_OCB;
    const int32_t lo = min_i32(a->OC, (int32_t)((int64_t)nbk * part / n_parts) * EDGEQ_PW_OCB);
    const int32_t hi = min_i32(a->OC, (int32_t)((int64_t)nbk * (part + 1) / n_parts) * EDGEQ_PW_OCB);
    const int32_t p0 = (int32_t)(tile * pt);
    if (lo < hi)
        pw_tile(a, p0, (int32_t)(P - p0 < pt ? P - p0 : pt), lo, hi, xp, rows, sums);
}

/* Any single-group convolution (and fully connected layers with few weights) as im2col tiles and
 * VNNI dot products: pixels in lanes, output channels broadcast. */
static int conv_pointwise(const conv_t *a)
{
    const int64_t P = (int64_t)a->OH * a->OW;
    const int32_t C4 = (a->K + 3) / 4;
    int64_t pt, n_tiles, job, n_jobs;
    int32_t n_parts;
    int32_t sum_buf[2 * EDGEQ_PW_MAX_OC];
    const int32_t *sums = NULL;
    int par;
    const int direct = a->KH == 1 && a->KW == 1 && a->sh == 1 && a->sw == 1 && a->pt == 0 && a->pl == 0 &&
                       a->OH == a->H && a->OW == a->W;
    if (a->group != 1 || a->K > EDGEQ_K_INT32 || (P < 16 && (int64_t)a->K * a->OC > 65536))
        return 0;
    if (!direct && a->OW < EDGEQ_GM_MIN_OW
#if defined(__AVX512VBMI__)
        && !(pw_small(a) && P <= EDGEQ_PW_TILE / 4) /* one tile, packed by pw_pack_small */
#endif
    ) /* short rows: packing costs more than the old paths */
        return 0;
    pt = direct ? EDGEQ_PW_TILE_DIRECT : EDGEQ_PW_TILE;
    while (pt > 16 && (int64_t)C4 * 4 * pt > EDGEQ_PATCH_BYTES)
        pt /= 2;
    if ((int64_t)C4 * 4 * pt > EDGEQ_PATCH_BYTES)
        return 0;
    if (a->OC <= EDGEQ_PW_MAX_OC) { /* weight sums once per call rather than once per tile */
        int32_t oc;
        for (oc = 0; oc < a->OC; oc++)
            pw_row_sums(a->w + (int64_t)oc * a->K, a->K, &sum_buf[2 * oc], &sum_buf[2 * oc + 1]);
        sums = sum_buf;
    }
    n_tiles = (P + pt - 1) / pt;
    n_parts = 1;
    par = edgeq_threads > 1 && conv_work(a) >= EDGEQ_PAR_MIN_WORK;
    if (par && n_tiles < 2 * edgeq_threads) {
        n_parts = edgeq_threads; /* few tiles: threads share each tile's output channels */
    } else if (par && n_tiles % edgeq_threads) { /* even out the tiles per thread */
        const int64_t want = (n_tiles + edgeq_threads - 1) / edgeq_threads * edgeq_threads;
        pt = ((P + want - 1) / want + 15) / 16 * 16;
        n_tiles = (P + pt - 1) / pt;
    }
    n_jobs = n_tiles * n_parts;
#ifdef _OPENMP
    if (par && n_jobs > 1) {
        EDGEQ_PRAGMA(omp parallel for schedule(static) num_threads(edgeq_threads))
        for (job = 0; job < n_jobs; job++)
            pw_job(a, job, n_parts, pt, P, sums);
        return 1;
    }
#endif
    for (job = 0; job < n_jobs; job++)
        pw_job(a, job, n_parts, pt, P, sums);
    return 1;
}

/* ---- Stride-1 convolutions with many input channels: implicit im2col over a padded band -------------
 * A band of input rows is packed once as uint8 x + 128, four channels per 32-bit lane, the padding (x_zp)
 * written out and every row widened to Wp = OW + (KW - 1) * dw columns: [c4][position][4]. Output
 * position m = r * Wp + ow meets tap (kh, kw) at position m + kh * dh * Wp + kw * dw, a constant offset,
 * so each (channel quad, tap) pair is one vector load per 16 positions and no patch is copied (the im2col
 * tiles above copy K bytes per output and, with a long K, get only 32 pixels per tile). Positions with
 * ow >= OW fall on a row's padding: computed, then dropped. The sums are exact, so the order of the
 * pairs does not matter. */
#ifndef EDGEQ_BAND_BYTES
#define EDGEQ_BAND_BYTES 131072
#endif
#define EDGEQ_BAND_QUADS 4096 /* (channel quad, tap) pairs at most: their offsets live on the stack */
#define EDGEQ_BAND_MAX_W 1024 /* padded row width at most */
#define EDGEQ_BAND_MIN_C 16   /* fewer input channels: the packing costs more than the copies it saves */

typedef struct {
    int32_t Wp, R, rows, C4, taps, nq; /* row width, output rows per band, input rows per band, quads */
    int64_t plane;                     /* positions per channel quad, past the furthest read of a band */
    int32_t n_bands;
} band_t;

static int64_t band_plane(const conv_t *a, int32_t Wp, int32_t R)
{
    const int64_t m = ((int64_t)R * Wp + 63) / 64 * 64;
    return (m + (int64_t)(a->KH - 1) * a->dh * Wp + (int64_t)(a->KW - 1) * a->dw + 15) / 16 * 16;
}

static int band_geometry(const conv_t *a, band_t *b)
{
    int32_t R;
    b->Wp = a->OW + (a->KW - 1) * a->dw;
    b->C4 = (a->C + 3) / 4;
    b->taps = a->KH * a->KW;
    b->nq = b->C4 * b->taps;
    if (a->group != 1 || a->sh != 1 || a->sw != 1 || b->taps < 2 || a->C < EDGEQ_BAND_MIN_C || a->pt < 0 ||
        a->pl < 0 || a->K > EDGEQ_K_INT32 || a->OC > EDGEQ_PW_MAX_OC || b->Wp > EDGEQ_BAND_MAX_W || b->nq > EDGEQ_BAND_QUADS ||
        (int64_t)(a->OC + 3) / 4 * 4 * b->nq * 4 > EDGEQ_WEIGHT_BYTES ||
        (int64_t)b->C4 * 4 * band_plane(a, b->Wp, 1) > EDGEQ_BAND_BYTES)
        return 0;
    for (R = 1; R < a->OH && (int64_t)b->C4 * 4 * band_plane(a, b->Wp, R + 1) <= EDGEQ_BAND_BYTES; R++)
        ;
    b->n_bands = (a->OH + R - 1) / R;
    if (edgeq_threads > 1 && conv_work(a) >= EDGEQ_PAR_MIN_WORK) /* whole rounds of bands per thread */
        b->n_bands = (b->n_bands + edgeq_threads - 1) / edgeq_threads * edgeq_threads;
    b->R = (a->OH + b->n_bands - 1) / b->n_bands;
    b->n_bands = (a->OH + b->R - 1) / b->R;
    b->rows = b->R + (a->KH - 1) * a->dh;
    b->plane = band_plane(a, b->Wp, b->R);
    return 1;
}

/* Input rows [ih0, ih0 + rows) of every channel into the band layout (rows outside the image and
 * channels past C as x_zp; the slack after the last row zero). */
static void band_pack(const conv_t *a, const band_t *b, int32_t ih0, uint8_t *restrict xb)
{
    int8_t rows[5][EDGEQ_BAND_MAX_W]; /* one per lane, their padding written once; the last all padding */
    const int8_t *r[4];
    const int32_t Wp = b->Wp, n_in = min_i32(a->W, Wp - a->pl);
    int32_t c4, rr, j;
    for (j = 0; j < 5; j++)
        memset(rows[j], a->x_zp, (size_t)Wp);
    for (c4 = 0; c4 < b->C4; c4++) {
        uint8_t *d = xb + (int64_t)c4 * b->plane * 4;
        for (rr = 0; rr < b->rows; rr++, d += (int64_t)Wp * 4) {
            const int32_t ih = ih0 + rr;
            for (j = 0; j < 4; j++) {
                const int32_t c = 4 * c4 + j;
                if (ih < 0 || ih >= a->H || c >= a->C) {
                    r[j] = rows[4];
                } else {
                    memcpy(rows[j] + a->pl, a->x + ((int64_t)c * a->H + ih) * a->W, (size_t)n_in);
                    r[j] = rows[j];
                }
            }
            interleave4(d, r, Wp);
        }
        memset(d, 0, (size_t)(b->plane - (int64_t)b->rows * Wp) * 4);
    }
}

/* 4 output channels x 64 positions from position 0 of src: nq (channel quad, tap) pairs at byte offsets
 * offs, weight quads wq[j * nq + pair] for channel j; requantized (no table) into out[j]. */
static void band_core(const uint8_t *src, const int64_t *offs, int32_t nq, const int32_t *wq, const pwq_t *s,
                      int8_t out[4][64])
{
    const int32_t *w0 = wq, *w1 = w0 + nq, *w2 = w1 + nq, *w3 = w2 + nq;
    __m512i a00 = s->init[0], a01 = a00, a02 = a00, a03 = a00;
    __m512i a10 = s->init[1], a11 = a10, a12 = a10, a13 = a10;
    __m512i a20 = s->init[2], a21 = a20, a22 = a20, a23 = a20;
    __m512i a30 = s->init[3], a31 = a30, a32 = a30, a33 = a30;
    int32_t q;
    for (q = 0; q < nq; q++) {
        const uint8_t *p = src + offs[q];
        const __m512i x0 = _mm512_loadu_si512((const void *)p), x1 = _mm512_loadu_si512((const void *)(p + 64));
        const __m512i x2 = _mm512_loadu_si512((const void *)(p + 128));
        const __m512i x3 = _mm512_loadu_si512((const void *)(p + 192));
        PW_DP4(a00, a01, a02, a03, _mm512_set1_epi32(w0[q]));
        PW_DP4(a10, a11, a12, a13, _mm512_set1_epi32(w1[q]));
        PW_DP4(a20, a21, a22, a23, _mm512_set1_epi32(w2[q]));
        PW_DP4(a30, a31, a32, a33, _mm512_set1_epi32(w3[q]));
    }
    pw_out4(s, 0, out[0], a00, a01, a02, a03);
    pw_out4(s, 1, out[1], a10, a11, a12, a13);
    pw_out4(s, 2, out[2], a20, a21, a22, a23);
    pw_out4(s, 3, out[3], a30, a31, a32, a33);
}
#undef PW_DP4

/* Output rows [oh0, oh0 + R) of every channel: pack the band, then 4 channels x 64 positions at a time,
 * the positions of each output row copied out (through the table, if any). */
static void band_job(const conv_t *a, const band_t *b, int32_t band, const int32_t *wq, const int64_t *offs,
                     const int32_t *sums)
{
    EDGEQ_ALIGN64 uint8_t xb[EDGEQ_BAND_BYTES];
    int8_t out[4][64];
    const int32_t oh0 = band * b->R, R = min_i32(b->R, a->OH - oh0), Wp = b->Wp, end = R * Wp;
    const int64_t P = (int64_t)a->OH * a->OW;
    int32_t oc0, m0, j;
    pwq_t s;
    band_pack(a, b, oh0 - a->pt, xb);
    for (oc0 = 0; oc0 < a->OC; oc0 += 4) {
        const int32_t nb = min_i32(4, a->OC - oc0);
        pwq_setup(a, oc0, nb, sums, &s);
        for (j = 0; j < 4; j++) {
            if (j >= nb) { /* rows of zero weights past OC: any valid state, their outputs are dropped */
                s.init[j] = s.init[0];
                s.f[j] = s.f[0];
                s.m[j] = s.m[0];
                s.q[j] = s.q[0];
                s.fast[j] = s.fast[0];
                s.ordinary[j] = s.ordinary[0];
            }
            s.q[j].lut = NULL; /* applied when the rows are copied out */
        }
        for (m0 = 0; m0 < end; m0 += 64) {
            const int32_t stop = min_i32(m0 + 64, end);
            band_core(xb + (int64_t)m0 * 4, offs, b->nq, wq + (int64_t)oc0 * b->nq, &s, out);
            for (j = 0; j < nb; j++) {
                int8_t *yc = a->y + (int64_t)(oc0 + j) * P + (int64_t)oh0 * a->OW;
                int32_t m = m0;
                while (m < stop) {
                    const int32_t r = m / Wp, ow = m - r * Wp, n = min_i32(Wp - ow, stop - m);
                    if (ow < a->OW) {
                        const int32_t k = min_i32(n, a->OW - ow);
                        int8_t *dst = yc + (int64_t)r * a->OW + ow;
                        const int8_t *got = out[j] + (m - m0);
                        int32_t i;
                        if (a->lut)
                            for (i = 0; i < k; i++)
                                dst[i] = a->lut[got[i] + 128];
                        else
                            memcpy(dst, got, (size_t)k);
                    }
                    m += n;
                }
            }
        }
    }
}

static int conv_band(const conv_t *a)
{
    band_t b;
    int32_t sums[2 * EDGEQ_PW_MAX_OC], wq[EDGEQ_WEIGHT_BYTES / 4];
    int64_t offs[EDGEQ_BAND_QUADS];
    int32_t oc, c4, t, j, band;
    if (!band_geometry(a, &b))
        return 0;
    for (oc = 0; oc < a->OC; oc++)
        pw_row_sums(a->w + (int64_t)oc * a->K, a->K, &sums[2 * oc], &sums[2 * oc + 1]);
    for (oc = 0; oc < (a->OC + 3) / 4 * 4; oc++) /* quads (4 channels, one tap), zero past C and OC */
        for (c4 = 0; c4 < b.C4; c4++)
            for (t = 0; t < b.taps; t++) {
                uint32_t v = 0;
                for (j = 0; j < 4 && oc < a->OC; j++)
                    if (4 * c4 + j < a->C)
                        v |= (uint32_t)(uint8_t)a->w[((int64_t)oc * a->C + 4 * c4 + j) * b.taps + t] << (8 * j);
                wq[((int64_t)oc * b.C4 + c4) * b.taps + t] = (int32_t)v;
            }
    for (c4 = 0; c4 < b.C4; c4++)
        for (t = 0; t < b.taps; t++)
            offs[c4 * b.taps + t] =
                (c4 * b.plane + (int64_t)(t / a->KW) * a->dh * b.Wp + (int64_t)(t % a->KW) * a->dw) * 4;
    EDGEQ_PARALLEL_FOR(conv_work(a) >= EDGEQ_PAR_MIN_WORK && b.n_bands > 1)
    for (band = 0; band < b.n_bands; band++)
        band_job(a, &b, band, wq, offs, sums);
    return 1;
}
#endif

/* ---- Convolution of any activation width ----------------------------------------------------------
 * One body for int8 and int16 inputs and outputs (TFLite's 16x8 layers, chosen by mixed precision), and
 * the int8 path's last resort when no scratch budget fits: blocks of up to EDGEQ_ROWS_OCB output channels
 * of one group share each input row, rows of up to EDGEQ_CHUNK outputs accumulate tap by tap in ACC,
 * which is int32 only where K * 128 * max|x - x_zp| provably fits (conv_rows picks), else int64. */
#define EDGEQ_ROWS_OCB 4

#define EDGEQ_CONV_ROWS(NAME, XT, YT, ACC)                                                                   \
    static void NAME(const conv_t *a, const XT *x, YT *y)                                                    \
    {                                                                                                        \
        const int32_t per_group = (a->ocg + EDGEQ_ROWS_OCB - 1) / EDGEQ_ROWS_OCB;                            \
        int32_t job;                                                                                         \
        EDGEQ_PARALLEL_FOR(conv_work(a) >= EDGEQ_PAR_MIN_WORK && a->group * per_group > 1)                   \
        for (job = 0; job < a->group * per_group; job++) {                                                   \
            const int32_t g = job / per_group, oc0 = g * a->ocg + (job % per_group) * EDGEQ_ROWS_OCB;        \
            const int32_t nb = min_i32(EDGEQ_ROWS_OCB, (g + 1) * a->ocg - oc0);                              \
            const XT *xg = x + (int64_t)g * a->cg * a->H * a->W;                                             \
            const int8_t *wo = a->w + (int64_t)oc0 * a->K;                                                   \
            int32_t oh, ow0;                                                                                 \
            for (oh = 0; oh < a->OH; oh++) {                                                                 \
                for (ow0 = 0; ow0 < a->OW; ow0 += EDGEQ_CHUNK) {                                             \
                    const int32_t n = min_i32(EDGEQ_CHUNK, a->OW - ow0);                                     \
                    ACC acc[EDGEQ_ROWS_OCB][EDGEQ_CHUNK];                                                    \
                    int32_t c, kh, kw, i, j;                                                                 \
                    for (j = 0; j < nb; j++)                                                                 \
                        for (i = 0; i < n; i++)                                                              \
                            acc[j][i] = 0;                                                                   \
                    for (c = 0; c < a->cg; c++) {                                                            \
                        for (kh = 0; kh < a->KH; kh++) {                                                     \
                            const int32_t ih = oh * a->sh - a->pt + kh * a->dh;                              \
                            const XT *row = xg + ((int64_t)c * a->H + ih) * a->W;                            \
                            if (ih < 0 || ih >= a->H)                                                        \
                                continue;                                                                    \
                            for (kw = 0; kw < a->KW; kw++) {                                                 \
                                const int32_t off = kw * a->dw - a->pl;                                      \
                                const int64_t tap = ((int64_t)c * a->KH + kh) * a->KW + kw;                  \
                                int32_t lo, hi;                                                              \
                                tap_range(ow0, ow0 + n, a->sw, off, a->W, &lo, &hi);                        \
                                if (a->sw == 1 && nb == EDGEQ_ROWS_OCB) { /* the hot case: vectorizes */     \
                                    const ACC w0 = wo[tap], w1 = wo[a->K + tap], w2 = wo[2 * a->K + tap];    \
                                    const ACC w3 = wo[3 * a->K + tap];                                       \
                                    for (i = lo; i < hi; i++) {                                              \
                                        const ACC v = (ACC)(row[i + off] - a->x_zp);                         \
                                        acc[0][i - ow0] += w0 * v;                                           \
                                        acc[1][i - ow0] += w1 * v;                                           \
                                        acc[2][i - ow0] += w2 * v;                                           \
                                        acc[3][i - ow0] += w3 * v;                                           \
                                    }                                                                        \
                                } else {                                                                     \
                                    for (j = 0; j < nb; j++) {                                               \
                                        const ACC wv = wo[j * a->K + tap];                                   \
                                        if (a->sw == 1) /* depthwise and short groups: still contiguous */   \
                                            for (i = lo; i < hi; i++)                                        \
                                                acc[j][i - ow0] += wv * (ACC)(row[i + off] - a->x_zp);       \
                                        else                                                                 \
                                            for (i = lo; i < hi; i++)                                        \
                                                acc[j][i - ow0] +=                                           \
                                                    wv * (ACC)(row[(int64_t)i * a->sw + off] - a->x_zp);     \
                                    }                                                                        \
                                }                                                                            \
                            }                                                                                \
                        }                                                                                    \
                    }                                                                                        \
                    for (j = 0; j < nb; j++) {                                                               \
                        const requant_t q = conv_requant(a, oc0 + j);                                        \
                        YT *yr = y + ((int64_t)(oc0 + j) * a->OH + oh) * a->OW + ow0;                        \
                        if (sizeof(ACC) == 4 && sizeof(YT) == 1) { /* the vector requantization of int8 */ \
                            requant_row((const int32_t *)acc[j], n, &q, (int8_t *)yr);                       \
                            continue;                                                                        \
                        }                                                                                    \
                        for (i = 0; i < n; i++) {                                                            \
                            const int32_t v = clip_i64(                                                      \
                                (int64_t)edgeq_mbqm((int64_t)acc[j][i] + q.bias, q.mult, q.shift) + q.y_zp, q.lo, \
                                q.hi);                                                                       \
                            yr[i] = (YT)(q.lut ? q.lut[v + 128] : v);                                        \
                        }                                                                                    \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }

EDGEQ_CONV_ROWS(conv_rows_8_8_32, int8_t, int8_t, int32_t)
EDGEQ_CONV_ROWS(conv_rows_8_8_64, int8_t, int8_t, int64_t)
EDGEQ_CONV_ROWS(conv_rows_8_16_32, int8_t, int16_t, int32_t)
EDGEQ_CONV_ROWS(conv_rows_8_16_64, int8_t, int16_t, int64_t)
EDGEQ_CONV_ROWS(conv_rows_16_8_32, int16_t, int8_t, int32_t)
EDGEQ_CONV_ROWS(conv_rows_16_8_64, int16_t, int8_t, int64_t)
EDGEQ_CONV_ROWS(conv_rows_16_16_32, int16_t, int16_t, int32_t)
EDGEQ_CONV_ROWS(conv_rows_16_16_64, int16_t, int16_t, int64_t)

/* The instance of EDGEQ_CONV_ROWS for these widths (8 or 16 bits) and this patch length. A 1x1 stride-1
 * convolution without padding runs as one row of H * W pixels (long contiguous rows). */
static void conv_rows(const conv_t *c, const void *x, int32_t x_bits, void *y, int32_t y_bits)
{
    const int64_t dx = x_bits == 16 ? 32768 + 128 : 255; /* max |x - x_zp| with x_zp an int8 */
    const int narrow = (int64_t)c->K * 128 * dx <= INT32_MAX;
    conv_t flat = *c;
    const conv_t *a = &flat;
    if (c->KH == 1 && c->KW == 1 && c->sh == 1 && c->sw == 1 && c->pt == 0 && c->pl == 0 && c->OH == c->H &&
        c->OW == c->W && (int64_t)c->H * c->W <= INT32_MAX) {
        flat.W = flat.OW = c->H * c->W;
        flat.H = flat.OH = 1;
    }
#define EDGEQ_CONV_PICK(XB, YB)                                                                              \
    if (x_bits == XB && y_bits == YB) {                                                                      \
        if (narrow)                                                                                          \
            conv_rows_##XB##_##YB##_32(a, x, y);                                                             \
        else                                                                                                 \
            conv_rows_##XB##_##YB##_64(a, x, y);                                                             \
        return;                                                                                              \
    }
    EDGEQ_CONV_PICK(8, 8)
    EDGEQ_CONV_PICK(8, 16)
    EDGEQ_CONV_PICK(16, 8)
    EDGEQ_CONV_PICK(16, 16)
#undef EDGEQ_CONV_PICK
}

void edgeq_conv_wide(const void *x, int32_t x_bits, const int8_t *w, const int32_t *bias, const int32_t *mult,
                     const int32_t *shift, const int8_t *lut, void *y, int32_t y_bits,
                     int32_t C, int32_t H, int32_t W, int32_t OC, int32_t OH, int32_t OW, int32_t KH, int32_t KW,
                     int32_t sh, int32_t sw, int32_t pt, int32_t pl, int32_t dh, int32_t dw, int32_t group,
                     int32_t x_zp, int32_t y_zp, int32_t act_min, int32_t act_max)
{
    conv_t a;
    plane_t pg;
    dot_t dg;
    const int narrow = x_bits == 8 && y_bits == 8; /* the tuned int8 kernels below */
    a.x = narrow ? (const int8_t *)x : NULL;
    a.y = narrow ? (int8_t *)y : NULL;
    a.w = w;
    a.bias = bias;
    a.mult = mult;
    a.shift = shift;
    a.lut = lut;
    a.C = C;
    a.H = H;
    a.W = W;
    a.OC = OC;
    a.OH = OH;
    a.OW = OW;
    a.KH = KH;
    a.KW = KW;
    a.sh = sh;
    a.sw = sw;
    a.pt = pt;
    a.pl = pl;
    a.dh = dh;
    a.dw = dw;
    a.group = group;
    a.x_zp = x_zp;
    a.y_zp = y_zp;
    a.lo = act_min;
    a.hi = act_max;
    a.cg = C / group;
    a.ocg = OC / group;
    a.K = a.cg * KH * KW;
    if (!narrow) {
        conv_rows(&a, x, x_bits, y, y_bits);
        return;
    }
    /* Long patches shared by several output channels go to dot products; short patches (depthwise,
     * first layers) to the plane kernel; what fits neither to the row loop. */
#if EDGEQ_AVX512 && defined(__AVX512VNNI__) && defined(__AVX512VBMI__)
    if (conv_depthwise_quads(&a) || conv_quads(&a))
        return;
#endif
#if EDGEQ_AVX512
    if (conv_depthwise(&a))
        return;
#endif
#if EDGEQ_AVX512 && defined(__AVX512VNNI__)
    if (conv_band(&a) || conv_pointwise(&a))
        return;
#endif
    if (dot_worthwhile(a.K) && a.ocg >= 2 && dot_geometry(&a, &dg))
        conv_dot(&a, &dg);
    else if (plane_geometry(&a, &pg))
        conv_plane(&a, &pg);
    else
        conv_rows(&a, a.x, 8, a.y, 8);
}

void edgeq_conv(const int8_t *x, const int8_t *w, const int32_t *bias, const int32_t *mult,
                const int32_t *shift, const int8_t *lut, int8_t *y,
                int32_t C, int32_t H, int32_t W, int32_t OC, int32_t OH, int32_t OW, int32_t KH, int32_t KW,
                int32_t sh, int32_t sw, int32_t pt, int32_t pl, int32_t dh, int32_t dw, int32_t group,
                int32_t x_zp, int32_t y_zp, int32_t act_min, int32_t act_max)
{
    edgeq_conv_wide(x, 8, w, bias, mult, shift, lut, y, 8, C, H, W, OC, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw,
                    group, x_zp, y_zp, act_min, act_max);
}

void edgeq_fc(const int8_t *x, const int8_t *w, const int32_t *bias, const int32_t *mult,
              const int32_t *shift, const int8_t *lut, int8_t *y, int32_t K, int32_t OC,
              int32_t x_zp, int32_t y_zp, int32_t act_min, int32_t act_max)
{
    /* A fully connected layer is a 1x1 convolution of a K-channel 1x1 image. */
    edgeq_conv(x, w, bias, mult, shift, lut, y, K, 1, 1, OC, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, x_zp, y_zp,
               act_min, act_max);
}

void edgeq_fc_single(const int8_t *x, const int8_t *w, const int32_t *bias, const int32_t *mult,
                     const int32_t *shift, const int8_t *lut, int8_t *y, int32_t K, int32_t OC,
                     int32_t x_zp, int32_t y_zp, int32_t act_min, int32_t act_max)
{
    int32_t o, k;
    for (o = 0; o < OC; o++) {
        const int8_t *wr = w + (int64_t)o * K;
        const int32_t s = shift[o] < -31 ? -31 : (shift[o] > 30 ? 30 : shift[o]);
        int64_t acc = bias[o], v;
        for (k = 0; k < K; k++)
            acc += (int64_t)(x[k] - x_zp) * wr[k];
        acc = clip_i64(acc, INT32_MIN, INT32_MAX);
        v = (acc * mult[o] + ((int64_t)1 << (30 - s))) >> (31 - s);
        y[o] = (int8_t)clip_i64(v + y_zp, act_min, act_max);
        if (lut)
            y[o] = lut[y[o] + 128];
    }
}

/* ---- Elementwise binary ops --------------------------------------------------------------------- */

enum { BIN_ADD, BIN_MUL };

typedef struct {
    int kind;
    int32_t a_zp, b_zp, y_zp, a_mult, a_shift, b_mult, b_shift, y_mult, y_shift, lo, hi;
} binop_t;

/* One output value of Add (inputs lifted by 2^20, rescaled, summed in int64) or Mul. */
static inline int8_t binop_value(const binop_t *o, int32_t av, int32_t bv)
{
    int32_t raw;
    if (o->kind == BIN_ADD) {
        /* |x - zp| <= 255, so the lift by 2^20 fits int32; the sum of two rescaled values may not. */
        const int64_t sa = edgeq_mbqm((int64_t)(av - o->a_zp) * (1 << 20), o->a_mult, o->a_shift);
        const int64_t sb = edgeq_mbqm((int64_t)(bv - o->b_zp) * (1 << 20), o->b_mult, o->b_shift);
        raw = edgeq_mbqm(sa + sb, o->y_mult, o->y_shift);
    } else {
        raw = edgeq_mbqm((int64_t)((av - o->a_zp) * (bv - o->b_zp)), o->y_mult, o->y_shift);
    }
    return (int8_t)clip_i64((int64_t)raw + o->y_zp, o->lo, o->hi);
}

#if EDGEQ_AVX512
/* 16 int8 of an operand with element stride 1 (loaded) or 0 (broadcast), as int32 minus the zero point. */
static inline __m512i binary_load(const int8_t *p, int32_t stride, __mmask16 k, int32_t zp)
{
    const __m512i v = stride ? _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, p)) : _mm512_set1_epi32(p[0]);
    return _mm512_sub_epi32(v, _mm512_set1_epi32(zp));
}

/* One output row of Add / Mul, 16 values at a time. |x - zp| <= 255, so the Add lift by 2^20 and the Mul
 * product fit int32. With `fast` every MultiplyByQuantizedMultiplier is within a fastq bound
 * (binary_fast); otherwise the scales are ordinary (vmbqm) and the sum of the two rescaled Add inputs is
 * saturated to int32, which gives the reference's int64 result after its saturated left shift. Always
 * inlined with a constant `fast`, so each caller gets its own loop. */
static EDGEQ_ALWAYS_INLINE void binary_row(const binop_t *o, int fast, const vmbqm_t *va, const vmbqm_t *vb,
                                           const vmbqm_t *vy, const fastq_t *fa, const fastq_t *fb,
                                           const fastq_t *fy, const int8_t *a, int32_t as, const int8_t *b,
                                           int32_t bs, int8_t *y, int32_t n)
{
    const __m512i lo = _mm512_set1_epi32(o->lo - o->y_zp), hi = _mm512_set1_epi32(o->hi - o->y_zp);
    const __m512i zp = _mm512_set1_epi32(o->y_zp);
    int32_t i;
    for (i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
        const __m512i av = _mm512_slli_epi32(binary_load(a + (int64_t)i * as, as, k, o->a_zp), o->kind == BIN_ADD ? 20 : 0);
        const __m512i bv = _mm512_slli_epi32(binary_load(b + (int64_t)i * bs, bs, k, o->b_zp), o->kind == BIN_ADD ? 20 : 0);
        __m512i r;
        if (o->kind == BIN_ADD)
            r = fast ? _mm512_add_epi32(fastq_core(av, fa), fastq_core(bv, fb)) : vadds32(vmbqm(av, va), vmbqm(bv, vb));
        else
            r = _mm512_mullo_epi32(av, bv);
        if (fast)
            r = fastq_vec(r, fy);
        else
            r = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(vmbqm(r, vy), lo), hi), zp);
        store16_i8(y + i, r, n - i);
    }
}

/* Whether Add / Mul can use binary_row_fast: the lifted inputs (|x - zp| * 2^20 <= 255 * 2^20) and the
 * value requantized last (their rescaled sum, at most the sum of the shifted bounds; or the product,
 * <= 255^2) are within the fastq bounds. */
static int binary_fast(const binop_t *o, fastq_t *fa, fastq_t *fb, fastq_t *fy)
{
    requant_t q;
    int64_t bound = 65025;
    q.bias = 0;
    q.y_zp = o->y_zp;
    q.lo = o->lo;
    q.hi = o->hi;
    q.lut = NULL;
    if (o->kind == BIN_ADD) {
        const int64_t lift = (int64_t)255 << 20;
        q.mult = o->a_mult;
        q.shift = o->a_shift;
        if (!fastq_make(&q, lift, fa))
            return 0;
        q.mult = o->b_mult;
        q.shift = o->b_shift;
        if (!fastq_make(&q, lift, fb))
            return 0;
        /* |MBQM(v)| <= |v| * 2^left (mult < 2^31) */
        bound = (lift << (o->a_shift > 0 ? o->a_shift : 0)) + (lift << (o->b_shift > 0 ? o->b_shift : 0));
    }
    q.mult = o->y_mult;
    q.shift = o->y_shift;
    return fastq_make(&q, bound, fy);
}
#endif

/* Broadcast traversal shared by Add and Mul; `o->kind` is a constant at each (inlined) call site. */
static inline void binary_op(const binop_t *o, const int8_t *a, const int8_t *b, const int8_t *lut, int8_t *y,
                             const int32_t dims[4], const int32_t a_strides[4], const int32_t b_strides[4])
{
    const int64_t total = (int64_t)dims[0] * dims[1] * dims[2] * dims[3];
    int64_t yi = 0, i;
    int32_t i0, i1, i2, i3, k, d[4], as[4], bs[4];
    /* Fold outer dimensions into the innermost one while both operands stay linear in it (whole
     * contiguous tensors become one row). */
    for (k = 0; k < 4; k++) {
        d[k] = dims[k];
        as[k] = a_strides[k];
        bs[k] = b_strides[k];
    }
    for (k = 2; k >= 0; k--) {
        if (d[k] == 1)
            continue;
        if ((int64_t)as[k] != (int64_t)as[3] * d[3] || (int64_t)bs[k] != (int64_t)bs[3] * d[3])
            break;
        d[3] *= d[k]; /* <= the element count, which fits int32 */
        d[k] = 1;
    }
#if EDGEQ_AVX512
    const int vec = mbqm_ordinary(o->y_mult, o->y_shift) &&
                    (o->kind != BIN_ADD || (mbqm_ordinary(o->a_mult, o->a_shift) && mbqm_ordinary(o->b_mult, o->b_shift)));
    vmbqm_t va, vb, vy;
    fastq_t fa, fb, fy;
    const int fast = vec && binary_fast(o, &fa, &fb, &fy);
    if (vec) {
        va = vmbqm_make(o->a_mult, o->a_shift);
        vb = vmbqm_make(o->b_mult, o->b_shift);
        vy = vmbqm_make(o->y_mult, o->y_shift);
    }
    if (fast && edgeq_threads > 1 && d[0] == 1 && d[1] == 1 && d[2] == 1 && as[3] <= 1 && bs[3] <= 1 &&
        d[3] >= EDGEQ_PAR_MIN_ELEMS) {
        /* one long row (whole tensors): threads take slices of it */
        const int32_t n = d[3], n_parts = edgeq_threads;
        int32_t part;
        EDGEQ_PARALLEL_FOR(1)
        for (part = 0; part < n_parts; part++) {
            const int32_t lo = (int32_t)((int64_t)n * part / n_parts) / 64 * 64;
            const int32_t hi = part + 1 == n_parts ? n : (int32_t)((int64_t)n * (part + 1) / n_parts) / 64 * 64;
            if (lo < hi)
                binary_row(o, 1, &va, &vb, &vy, &fa, &fb, &fy, a + (int64_t)lo * as[3], as[3],
                           b + (int64_t)lo * bs[3], bs[3], y + lo, hi - lo);
        }
        if (lut)
            for (i = 0; i < total; i++)
                y[i] = lut[y[i] + 128];
        return;
    }
#endif
    for (i0 = 0; i0 < d[0]; i0++)
        for (i1 = 0; i1 < d[1]; i1++)
            for (i2 = 0; i2 < d[2]; i2++) {
                const int8_t *ar = a + (int64_t)i0 * as[0] + (int64_t)i1 * as[1] + (int64_t)i2 * as[2];
                const int8_t *br = b + (int64_t)i0 * bs[0] + (int64_t)i1 * bs[1] + (int64_t)i2 * bs[2];
                int8_t *yr = y + yi;
#if EDGEQ_AVX512
                if (fast && (as[3] <= 1 && bs[3] <= 1)) {
                    binary_row(o, 1, &va, &vb, &vy, &fa, &fb, &fy, ar, as[3], br, bs[3], yr, d[3]);
                } else if (vec && (as[3] <= 1 && bs[3] <= 1)) {
                    binary_row(o, 0, &va, &vb, &vy, &fa, &fb, &fy, ar, as[3], br, bs[3], yr, d[3]);
                } else
#endif
                if (as[3] == 1 && bs[3] == 1) {
                    for (i3 = 0; i3 < d[3]; i3++)
                        yr[i3] = binop_value(o, ar[i3], br[i3]);
                } else {
                    for (i3 = 0; i3 < d[3]; i3++)
                        yr[i3] = binop_value(o, ar[(int64_t)i3 * as[3]], br[(int64_t)i3 * bs[3]]);
                }
                yi += d[3];
            }
    if (lut)
        for (i = 0; i < total; i++)
            y[i] = lut[y[i] + 128];
}

void edgeq_add(const int8_t *a, const int8_t *b, const int8_t *lut, int8_t *y, const int32_t dims[4],
               const int32_t a_strides[4], const int32_t b_strides[4], int32_t a_zp, int32_t b_zp,
               int32_t y_zp, int32_t a_mult, int32_t a_shift, int32_t b_mult, int32_t b_shift,
               int32_t y_mult, int32_t y_shift, int32_t act_min, int32_t act_max)
{
    binop_t o;
    o.kind = BIN_ADD;
    o.a_zp = a_zp;
    o.b_zp = b_zp;
    o.y_zp = y_zp;
    o.a_mult = a_mult;
    o.a_shift = a_shift;
    o.b_mult = b_mult;
    o.b_shift = b_shift;
    o.y_mult = y_mult;
    o.y_shift = y_shift;
    o.lo = act_min;
    o.hi = act_max;
    binary_op(&o, a, b, lut, y, dims, a_strides, b_strides);
}

void edgeq_mul(const int8_t *a, const int8_t *b, const int8_t *lut, int8_t *y, const int32_t dims[4],
               const int32_t a_strides[4], const int32_t b_strides[4], int32_t a_zp, int32_t b_zp,
               int32_t y_zp, int32_t y_mult, int32_t y_shift, int32_t act_min, int32_t act_max)
{
    binop_t o;
    memset(&o, 0, sizeof o);
    o.kind = BIN_MUL;
    o.a_zp = a_zp;
    o.b_zp = b_zp;
    o.y_zp = y_zp;
    o.y_mult = y_mult;
    o.y_shift = y_shift;
    o.lo = act_min;
    o.hi = act_max;
    binary_op(&o, a, b, lut, y, dims, a_strides, b_strides);
}

/* ---- Table, pools, softmax, concat, reshape ----------------------------------------------------- */

/* ---- Tables and requantization for every activation width (one body per kind, instantiated for int8
 * and int16 element types) ---- */

/* int8 x: y = table[x + 128], the table already in y's type. */
#define EDGEQ_LUT_DIRECT(NAME, YT)                                                                           \
    static void NAME(const int8_t *x, const YT *table, YT *y, int32_t count)                                 \
    {                                                                                                        \
        int32_t i;                                                                                           \
        for (i = 0; i < count; i++)                                                                          \
            y[i] = table[x[i] + 128];                                                                        \
    }

/* int16 x: linear interpolation between 513 int16 samples (reference.lut), clamped to [LO, HI]. */
#define EDGEQ_LUT_INTERP(NAME, YT, LO, HI)                                                                   \
    static void NAME(const int16_t *x, const int16_t *table, YT *y, int32_t count)                           \
    {                                                                                                        \
        int32_t i;                                                                                           \
        for (i = 0; i < count; i++) {                                                                        \
            const int32_t u = (int32_t)x[i] + 32768, k = u >> 7;                                             \
            const int32_t d = ((int32_t)table[k + 1] - table[k]) * (u & 127) + 64;                           \
            y[i] = (YT)clip_i64((int64_t)table[k] + asr32(d, 7), LO, HI);                                    \
        }                                                                                                    \
    }

/* y = clip(mbqm(x - x_zp) + y_zp) to [LO, HI] (reference.requantize). */
#define EDGEQ_REQUANT(NAME, XT, YT, LO, HI)                                                                  \
    static void NAME(const XT *x, YT *y, int32_t count, int32_t x_zp, int32_t y_zp, int32_t mult,           \
                     int32_t shift)                                                                          \
    {                                                                                                        \
        int32_t i;                                                                                           \
        for (i = 0; i < count; i++)                                                                          \
            y[i] = (YT)clip_i64((int64_t)edgeq_mbqm((int64_t)x[i] - x_zp, mult, shift) + y_zp, LO, HI);     \
    }

EDGEQ_LUT_DIRECT(lut_8_8, int8_t)
EDGEQ_LUT_DIRECT(lut_8_16, int16_t)
EDGEQ_LUT_INTERP(lut_16_8, int8_t, INT8_MIN, INT8_MAX)
EDGEQ_LUT_INTERP(lut_16_16, int16_t, INT16_MIN, INT16_MAX)
EDGEQ_REQUANT(requant_8_8, int8_t, int8_t, INT8_MIN, INT8_MAX)
EDGEQ_REQUANT(requant_8_16, int8_t, int16_t, INT16_MIN, INT16_MAX)
EDGEQ_REQUANT(requant_16_8, int16_t, int8_t, INT8_MIN, INT8_MAX)
EDGEQ_REQUANT(requant_16_16, int16_t, int16_t, INT16_MIN, INT16_MAX)

void edgeq_lut(const int8_t *x, const int8_t *table, int8_t *y, int32_t count)
{
    lut_8_8(x, table, y, count);
}

void edgeq_lut_wide(const void *x, int32_t x_bits, const void *table, void *y, int32_t y_bits, int32_t count)
{
    if (x_bits == 8 && y_bits == 8)
        lut_8_8(x, table, y, count);
    else if (x_bits == 8)
        lut_8_16(x, table, y, count);
    else if (y_bits == 8)
        lut_16_8(x, table, y, count);
    else
        lut_16_16(x, table, y, count);
}

void edgeq_requantize(const void *x, int32_t x_bits, void *y, int32_t y_bits, int32_t count, int32_t x_zp,
                      int32_t y_zp, int32_t mult, int32_t shift)
{
    if (x_bits == 8 && y_bits == 8)
        requant_8_8(x, y, count, x_zp, y_zp, mult, shift);
    else if (x_bits == 8)
        requant_8_16(x, y, count, x_zp, y_zp, mult, shift);
    else if (y_bits == 8)
        requant_16_8(x, y, count, x_zp, y_zp, mult, shift);
    else
        requant_16_16(x, y, count, x_zp, y_zp, mult, shift);
}

/* fixedpoint.rounded_div: divide, rounding half away from zero; NumPy's x // 0 == 0 for empty windows. */
static int64_t rounded_div(int64_t acc, int64_t count)
{
    int64_t num, q;
    if (count == 0)
        return 0;
    num = acc > 0 ? acc + count / 2 : acc - count / 2;
    q = (num < 0 ? -num : num) / count;
    return num < 0 ? -q : q;
}

enum { POOL_MAX, POOL_AVG };

typedef struct {
    int32_t C, H, W, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, count_include_pad, x_zp, y_zp, lo, hi;
} pool_t;

/* Fold one input value into a pool accumulator. */
static EDGEQ_ALWAYS_INLINE int32_t pool_fold(int kind, int32_t acc, int32_t v, int32_t x_zp)
{
    if (kind == POOL_MAX)
        return v > acc ? v : acc;
    return acc + (v - x_zp);
}

/* One output value from its accumulator: max clamps; avg divides by the tap count with TFLite's
 * rounding, then adds the output zero point and clamps. */
static EDGEQ_ALWAYS_INLINE int8_t pool_finish(const pool_t *p, int kind, int64_t acc, int64_t count)
{
    if (kind == POOL_AVG)
        acc = rounded_div(acc, p->count_include_pad ? (int64_t)p->KH * p->KW : count) + p->y_zp;
    return (int8_t)clip_i64(acc, p->lo, p->hi);
}

/* Whether a whole window's sum of (x - x_zp) fits the int32 accumulators of the row-pass order. */
static int pool_window_int32(const pool_t *p)
{
    return (int64_t)p->KH * p->KW <= INT32_MAX / 255;
}

/* One channel of a pool with at least as many outputs per row as window columns: each tap is one
 * pass over a row of outputs, which vectorises across outputs. Column ranges depend only on the
 * column tile, so they are computed once per tile. */
static EDGEQ_ALWAYS_INLINE void pool_rows(const pool_t *p, int kind, const int8_t *x, int8_t *y)
{
    const int32_t init = kind == POOL_MAX ? -129 : 0; /* below every int8: padded taps never win */
    int32_t acc[EDGEQ_CHUNK], cols[EDGEQ_CHUNK], klo[EDGEQ_MAX_TAPS], khi[EDGEQ_MAX_TAPS];
    int32_t oh, ow0, i, kh, kw;
    for (ow0 = 0; ow0 < p->OW; ow0 += EDGEQ_CHUNK) {
        const int32_t n = min_i32(EDGEQ_CHUNK, p->OW - ow0);
        for (i = 0; i < n; i++)
            cols[i] = 0;
        for (kw = 0; kw < p->KW; kw++) {
            tap_range(ow0, ow0 + n, p->sw, kw * p->dw - p->pl, p->W, &klo[kw], &khi[kw]);
            for (i = klo[kw]; i < khi[kw]; i++)
                cols[i - ow0]++;
        }
        for (oh = 0; oh < p->OH; oh++) {
            const int32_t ih0 = oh * p->sh - p->pt;
            int32_t kh_lo, kh_hi;
            tap_range(0, p->KH, p->dh, ih0, p->H, &kh_lo, &kh_hi);
            for (i = 0; i < n; i++)
                acc[i] = init;
            for (kh = kh_lo; kh < kh_hi; kh++) {
                for (kw = 0; kw < p->KW; kw++) {
                    const int32_t off = kw * p->dw - p->pl;
                    const int8_t *row = x + (int64_t)(ih0 + kh * p->dh) * p->W + off;
                    int32_t *a = acc - ow0;
                    if (p->sw == 1) { /* the vectorisable case gets its own loop */
                        for (i = klo[kw]; i < khi[kw]; i++)
                            a[i] = pool_fold(kind, a[i], row[i], p->x_zp);
                    } else {
                        for (i = klo[kw]; i < khi[kw]; i++)
                            a[i] = pool_fold(kind, a[i], row[(int64_t)i * p->sw], p->x_zp);
                    }
                }
            }
            for (i = 0; i < n; i++)
                y[(int64_t)oh * p->OW + ow0 + i] = pool_finish(p, kind, acc[i], (int64_t)(kh_hi - kh_lo) * cols[i]);
        }
    }
}

/* One channel of a pool with wide windows (e.g. global pooling): each output reduces its window's
 * contiguous row segments, in int64. */
static EDGEQ_ALWAYS_INLINE void pool_windows(const pool_t *p, int kind, const int8_t *x, int8_t *y)
{
    const int64_t init = kind == POOL_MAX ? -129 : 0;
    int32_t oh, ow, kh, kw;
    for (oh = 0; oh < p->OH; oh++) {
        const int32_t ih0 = oh * p->sh - p->pt;
        int32_t kh_lo, kh_hi;
        tap_range(0, p->KH, p->dh, ih0, p->H, &kh_lo, &kh_hi);
        for (ow = 0; ow < p->OW; ow++) {
            const int32_t iw0 = ow * p->sw - p->pl;
            int32_t kw_lo, kw_hi;
            int64_t total = init;
            tap_range(0, p->KW, p->dw, iw0, p->W, &kw_lo, &kw_hi);
            for (kh = kh_lo; kh < kh_hi; kh++) {
                const int8_t *row = x + (int64_t)(ih0 + kh * p->dh) * p->W + iw0;
                int64_t a = init;
                for (kw = kw_lo; kw < kw_hi; kw++)
                    a = kind == POOL_MAX ? (row[(int64_t)kw * p->dw] > a ? row[(int64_t)kw * p->dw] : a)
                                         : a + (row[(int64_t)kw * p->dw] - p->x_zp);
                total = kind == POOL_MAX ? (a > total ? a : total) : total + a;
            }
            y[(int64_t)oh * p->OW + ow] = pool_finish(p, kind, total, (int64_t)(kh_hi - kh_lo) * (kw_hi - kw_lo));
        }
    }
}

/* Every window entirely inside the input (no padding taps): every tap counts. */
static int pool_inside(const pool_t *p)
{
    return p->pt == 0 && p->pl == 0 && (int64_t)(p->OH - 1) * p->sh + (int64_t)(p->KH - 1) * p->dh < p->H &&
           (int64_t)(p->OW - 1) * p->sw + (int64_t)(p->KW - 1) * p->dw < p->W;
}

/* Small max pools with all windows inside: plain loops, no tap ranges. */
static void maxpool_inside(const pool_t *p, const int8_t *x, int8_t *y)
{
    const int64_t in_plane = (int64_t)p->H * p->W;
    int32_t c, oh, ow, kh, kw;
    if (p->KH == 2 && p->KW == 2 && p->sh == 2 && p->sw == 2 && p->dh == 1 && p->dw == 1 && p->lo == -128 &&
        p->hi == 127) {
        for (c = 0; c < p->C; c++) {
            const int8_t *xc = x + c * in_plane;
            for (oh = 0; oh < p->OH; oh++) {
                const int8_t *r0 = xc + (int64_t)(2 * oh) * p->W, *r1 = r0 + p->W;
                for (ow = 0; ow < p->OW; ow++) {
                    const int8_t a0 = r0[2 * ow] > r0[2 * ow + 1] ? r0[2 * ow] : r0[2 * ow + 1];
                    const int8_t a1 = r1[2 * ow] > r1[2 * ow + 1] ? r1[2 * ow] : r1[2 * ow + 1];
                    y[ow] = a0 > a1 ? a0 : a1;
                }
                y += p->OW;
            }
        }
        return;
    }
    for (c = 0; c < p->C; c++) {
        const int8_t *xc = x + c * in_plane;
        for (oh = 0; oh < p->OH; oh++) {
            for (ow = 0; ow < p->OW; ow++) {
                int32_t m = -128;
                for (kh = 0; kh < p->KH; kh++) {
                    const int8_t *r = xc + (int64_t)(oh * p->sh + kh * p->dh) * p->W + (int64_t)ow * p->sw;
                    for (kw = 0; kw < p->KW; kw++) {
                        const int32_t v = r[(int64_t)kw * p->dw];
                        m = v > m ? v : m;
                    }
                }
                *y++ = (int8_t)clip_i64(m, p->lo, p->hi);
            }
        }
    }
}

/* Global average pool (one window covering the whole plane, int32 sums). */
static void avgpool_global(const pool_t *p, const int8_t *x, int8_t *y)
{
    const int32_t n = p->H * p->W;
    int32_t c, i;
    for (c = 0; c < p->C; c++) {
        const int8_t *xc = x + (int64_t)c * n;
        int32_t s = 0, num, q;
        for (i = 0; i < n; i++)
            s += xc[i];
        s -= n * p->x_zp;
        num = s > 0 ? s + n / 2 : s - n / 2;
        q = (num < 0 ? -num : num) / n;
        y[c] = (int8_t)clip_i64((int64_t)(num < 0 ? -q : q) + p->y_zp, p->lo, p->hi);
    }
}

static EDGEQ_ALWAYS_INLINE void pool_all(const pool_t *p, int kind, const int8_t *x, int8_t *y)
{
    const int64_t work = (int64_t)p->C * p->OH * p->OW * p->KH * p->KW;
    const int64_t in_plane = (int64_t)p->H * p->W, out_plane = (int64_t)p->OH * p->OW;
    const int rows = p->OW >= p->KW && p->KW <= EDGEQ_MAX_TAPS && pool_window_int32(p);
    int32_t c;
    (void)work;
    if (work < EDGEQ_PAR_MIN_WORK && pool_inside(p)) {
        if (kind == POOL_MAX) {
            maxpool_inside(p, x, y);
            return;
        }
        /* |sum| <= 255 * H * W + |zp| * H * W fits int32 and so does the rounding term */
        if (p->OH == 1 && p->OW == 1 && p->KH == p->H && p->KW == p->W && (int64_t)p->H * p->W <= (1 << 22)) {
            avgpool_global(p, x, y);
            return;
        }
    }
    EDGEQ_PARALLEL_FOR(work >= EDGEQ_PAR_MIN_WORK && p->C > 1)
    for (c = 0; c < p->C; c++) {
        if (rows)
            pool_rows(p, kind, x + c * in_plane, y + c * out_plane);
        else
            pool_windows(p, kind, x + c * in_plane, y + c * out_plane);
    }
}

void edgeq_maxpool(const int8_t *x, int8_t *y, int32_t C, int32_t H, int32_t W, int32_t OH, int32_t OW,
                   int32_t KH, int32_t KW, int32_t sh, int32_t sw, int32_t pt, int32_t pl, int32_t dh,
                   int32_t dw, int32_t act_min, int32_t act_max)
{
    pool_t p = {C, H, W, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, 0, 0, 0, act_min, act_max};
    pool_all(&p, POOL_MAX, x, y);
}

void edgeq_avgpool(const int8_t *x, int8_t *y, int32_t C, int32_t H, int32_t W, int32_t OH, int32_t OW,
                   int32_t KH, int32_t KW, int32_t sh, int32_t sw, int32_t pt, int32_t pl,
                   int32_t count_include_pad, int32_t x_zp, int32_t y_zp, int32_t act_min, int32_t act_max)
{
    pool_t p = {C, H, W, OH, OW, KH, KW, sh, sw, pt, pl, 1, 1, count_include_pad, x_zp, y_zp, act_min, act_max};
    pool_all(&p, POOL_AVG, x, y);
}

/* Python's a // b for b != 0 (floor division), which the reference uses. */
static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0)))
        q--;
    return q;
}

void edgeq_softmax(const int8_t *x, const int32_t *table, int8_t *y, int32_t rows, int32_t cols)
{
    int32_t r, i;
    for (r = 0; r < rows; r++) {
        const int8_t *xr = x + (int64_t)r * cols;
        int8_t *yr = y + (int64_t)r * cols;
        int32_t m = -128;
        int64_t total = 0;
        for (i = 0; i < cols; i++)
            m = xr[i] > m ? xr[i] : m;
        for (i = 0; i < cols; i++)
            total += table[m - xr[i]];
        for (i = 0; i < cols; i++) {
            /* NumPy's integer division by zero gives 0; a table of zeros therefore yields -128. */
            const int64_t q = total == 0 ? 0 : floor_div((int64_t)table[m - xr[i]] * 512 + total, 2 * total);
            yr[i] = (int8_t)clip_i64(q - 128, -128, 127);
        }
    }
}

static inline int8_t concat_value(int32_t v, int32_t x_zp, int32_t mult, int32_t shift, int32_t y_zp)
{
    return (int8_t)clip_i64((int64_t)edgeq_mbqm(v - x_zp, mult, shift) + y_zp, -128, 127);
}

void edgeq_concat_part(const int8_t *x, int8_t *y, int32_t outer, int32_t inner, int32_t y_inner,
                       int32_t y_col, int32_t x_zp, int32_t mult, int32_t shift, int32_t y_zp)
{
    int32_t o, i;
    /* The result depends on the int8 value only: past 256 elements a table is cheaper than requantizing. */
    if ((int64_t)outer * inner > 256) {
        int8_t table[256];
        for (i = 0; i < 256; i++)
            table[i] = concat_value(i - 128, x_zp, mult, shift, y_zp);
        for (o = 0; o < outer; o++) {
            const int8_t *src = x + (int64_t)o * inner;
            int8_t *dst = y + (int64_t)o * y_inner + y_col;
            for (i = 0; i < inner; i++)
                dst[i] = table[src[i] + 128];
        }
        return;
    }
    for (o = 0; o < outer; o++)
        for (i = 0; i < inner; i++)
            y[(int64_t)o * y_inner + y_col + i] = concat_value(x[(int64_t)o * inner + i], x_zp, mult, shift, y_zp);
}

void edgeq_reshape(const int8_t *x, int8_t *y, int32_t count)
{
    if (x != y && count > 0)
        memmove(y, x, (size_t)count);
}

void edgeq_copy_window(const int8_t *x, const int8_t *canvas, int8_t *y, int32_t C, int32_t H, int32_t W,
                       int32_t OH, int32_t OW, int32_t sy, int32_t sx, int32_t dy, int32_t dx, int32_t h, int32_t w)
{
    int32_t c, r;
    const size_t plane = (size_t)OH * (size_t)OW;
    if (canvas == NULL)
        memset(y, 0, (size_t)C * plane);
    else if (canvas != y)
        memmove(y, canvas, (size_t)C * plane);
    for (c = 0; c < C; c++)
        for (r = 0; r < h; r++)
            memmove(y + c * plane + (size_t)(dy + r) * (size_t)OW + (size_t)dx,
                    x + (size_t)c * (size_t)H * (size_t)W + (size_t)(sy + r) * (size_t)W + (size_t)sx, (size_t)w);
}

/* ---- Layout, attention and upsampling ops -------------------------------------------------------
 * Portable loops (reference.strided_copy, matmul, conv_transpose, resize, layer_norm): these ops are
 * small next to the convolutions of the mobile models that use them. */

/* Clamp an int64 to [lo, hi] and apply the optional table. */
static int8_t clamp_lut(int64_t v, int32_t lo, int32_t hi, const int8_t *lut)
{
    const int8_t q = (int8_t)(v < lo ? lo : v > hi ? hi : v);
    return lut ? lut[(int32_t)q + 128] : q;
}

/* y[2 i] = p[i], y[2 i + 1] = q[i] for i < n: the interleave of a 2x pixel shuffle (ConvTranspose 2x2/2). */
static void interleave2(int8_t *restrict y, const int8_t *restrict p, const int8_t *restrict q, int32_t n)
{
    int32_t i = 0;
#if EDGEQ_AVX512
    for (; i + 64 <= n; i += 64) {
        const __m512i a = _mm512_loadu_si512((const void *)(p + i)), b = _mm512_loadu_si512((const void *)(q + i));
        /* unpack works within 128-bit lanes: lo/hi of lane L hold pixels 16L..16L+7 and 16L+8..16L+15 */
        const __m512i lo = _mm512_unpacklo_epi8(a, b), hi = _mm512_unpackhi_epi8(a, b);
        _mm512_storeu_si512((void *)(y + 2 * i), _mm512_permutex2var_epi64(lo, _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0), hi));
        _mm512_storeu_si512((void *)(y + 2 * i + 64),
                            _mm512_permutex2var_epi64(lo, _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4), hi));
    }
#endif
    for (; i < n; i++) {
        y[2 * i] = p[i];
        y[2 * i + 1] = q[i];
    }
}

void edgeq_strided_copy(const int8_t *x, int8_t *y, int64_t offset, const int32_t dims[6], const int32_t strides[6])
{
    int64_t o = 0;
    int32_t i0, i1, i2, i3, i4, i5;
    for (i0 = 0; i0 < dims[0]; i0++)
        for (i1 = 0; i1 < dims[1]; i1++)
            for (i2 = 0; i2 < dims[2]; i2++)
                for (i3 = 0; i3 < dims[3]; i3++) {
                    const int64_t b = offset + (int64_t)i0 * strides[0] + (int64_t)i1 * strides[1] +
                                      (int64_t)i2 * strides[2] + (int64_t)i3 * strides[3];
                    if (dims[5] == 2 && strides[4] == 1 && dims[4] >= 16) { /* a 2x pixel shuffle's rows */
                        interleave2(y + o, x + b, x + b + strides[5], dims[4]);
                        o += 2 * (int64_t)dims[4];
                        continue;
                    }
                    for (i4 = 0; i4 < dims[4]; i4++) {
                        const int64_t c = b + (int64_t)i4 * strides[4];
                        if (strides[5] == 1 && dims[5] >= 16) {
                            memcpy(y + o, x + c, (size_t)dims[5]);
                            o += dims[5];
                            continue;
                        }
                        for (i5 = 0; i5 < dims[5]; i5++)
                            y[o++] = x[c + (int64_t)i5 * strides[5]];
                    }
                }
}

/* Dot product of contiguous rows (the weights case, b [N, K]): a loop the compiler vectorizes. */
static int32_t dot_rows(const int8_t *restrict a, const int8_t *restrict b, int32_t K, int32_t a_zp, int32_t b_zp)
{
    int32_t k, acc = 0;
    for (k = 0; k < K; k++)
        acc += ((int32_t)a[k] - a_zp) * ((int32_t)b[k] - b_zp);
    return acc;
}

#define MATMUL_COLS 256 /* accumulators of the row-times-matrix path, on the stack */

void edgeq_matmul(const int8_t *a, const int8_t *b, const int32_t *bias, const int32_t *mult, const int32_t *shift,
                  const int8_t *lut, int8_t *y, int32_t batch, int32_t M, int32_t K, int32_t N, int64_t b_bs,
                  int64_t b_sk, int64_t b_sn, int32_t a_zp, int32_t b_zp, int32_t y_zp, int32_t act_min,
                  int32_t act_max)
{
    int32_t t, m, k, n, n0;
    for (t = 0; t < batch; t++)
        for (m = 0; m < M; m++) {
            const int8_t *ar = a + ((int64_t)t * M + m) * K;
            const int8_t *bt = b + t * b_bs;
            int8_t *yr = y + ((int64_t)t * M + m) * N;
            if (b_sk == 1 || b_sn != 1) {
                for (n = 0; n < N; n++) {
                    const int8_t *bc = bt + n * b_sn;
                    int32_t acc = 0;
                    if (b_sk == 1)
                        acc = dot_rows(ar, bc, K, a_zp, b_zp);
                    else
                        for (k = 0; k < K; k++)
                            acc += ((int32_t)ar[k] - a_zp) * ((int32_t)bc[k * b_sk] - b_zp);
                    yr[n] = clamp_lut((int64_t)edgeq_mbqm((int64_t)acc + bias[n], mult[n], shift[n]) + y_zp,
                                      act_min, act_max, lut);
                }
                continue;
            }
            /* b [K, N] with contiguous rows (attention): accumulate row k of b into a block of columns. */
            for (n0 = 0; n0 < N; n0 += MATMUL_COLS) {
                const int32_t nb = N - n0 < MATMUL_COLS ? N - n0 : MATMUL_COLS;
                int32_t acc[MATMUL_COLS];
                for (n = 0; n < nb; n++)
                    acc[n] = 0;
                for (k = 0; k < K; k++) {
                    const int32_t av = (int32_t)ar[k] - a_zp;
                    const int8_t *br = bt + k * b_sk + n0;
                    for (n = 0; n < nb; n++)
                        acc[n] += av * ((int32_t)br[n] - b_zp);
                }
                for (n = 0; n < nb; n++)
                    yr[n0 + n] = clamp_lut((int64_t)edgeq_mbqm((int64_t)acc[n] + bias[n0 + n], mult[n0 + n],
                                                               shift[n0 + n]) + y_zp, act_min, act_max, lut);
            }
        }
}

void edgeq_conv_transpose(const int8_t *x, const int8_t *w, const int32_t *bias, const int32_t *mult,
                          const int32_t *shift, const int8_t *lut, int8_t *y, int32_t C, int32_t H, int32_t W,
                          int32_t OC, int32_t OH, int32_t OW, int32_t KH, int32_t KW, int32_t sh, int32_t sw,
                          int32_t pt, int32_t pl, int32_t dh, int32_t dw, int32_t group, int32_t x_zp,
                          int32_t y_zp, int32_t act_min, int32_t act_max)
{
    const int32_t cg = C / group, ocg = OC / group;
    int32_t oc, oy, ox, ic, ky, kx;
    for (oc = 0; oc < OC; oc++) {
        const int32_t g = oc / ocg;
        for (oy = 0; oy < OH; oy++)
            for (ox = 0; ox < OW; ox++) {
                int32_t acc = 0;
                for (ic = 0; ic < cg; ic++) {
                    const int8_t *xc = x + (int64_t)(g * cg + ic) * H * W;
                    const int8_t *wc = w + ((int64_t)oc * cg + ic) * KH * KW;
                    for (ky = 0; ky < KH; ky++) {
                        const int64_t ty = (int64_t)oy + pt - (int64_t)ky * dh;
                        if (ty < 0 || ty % sh != 0 || ty / sh >= H)
                            continue;
                        for (kx = 0; kx < KW; kx++) {
                            const int64_t tx = (int64_t)ox + pl - (int64_t)kx * dw;
                            if (tx < 0 || tx % sw != 0 || tx / sw >= W)
                                continue;
                            acc += ((int32_t)xc[(ty / sh) * W + tx / sw] - x_zp) * (int32_t)wc[ky * KW + kx];
                        }
                    }
                }
                y[((int64_t)oc * OH + oy) * OW + ox] =
                    clamp_lut((int64_t)edgeq_mbqm((int64_t)acc + bias[oc], mult[oc], shift[oc]) + y_zp, act_min,
                              act_max, lut);
            }
    }
}

/* Row r of a resize table (i0, i1, w1), clamped into the input as reference._resize_taps does. */
static void resize_tap(const int32_t *table, int32_t r, int32_t size, int32_t *i0, int32_t *i1, int64_t *w1)
{
    const int32_t a = table[3 * r], b = table[3 * r + 1], w = table[3 * r + 2];
    *i0 = a < 0 ? 0 : a > size - 1 ? size - 1 : a;
    *i1 = b < 0 ? 0 : b > size - 1 ? size - 1 : b;
    *w1 = w < 0 ? 0 : w > 2048 ? 2048 : w;
}

/* The first source index of output index r (what nearest copies). */
static int32_t resize_first(const int32_t *table, int32_t r, int32_t size)
{
    int32_t i0, i1;
    int64_t w1;
    resize_tap(table, r, size, &i0, &i1, &w1);
    return i0;
}

void edgeq_resize(const int8_t *x, const int32_t *ytab, const int32_t *xtab, int8_t *y, int32_t C, int32_t H,
                  int32_t W, int32_t OH, int32_t OW, int32_t zp)
{
    int32_t c, oy, ox, y0, y1, x0, x1;
    int64_t wy, wx;
    int nearest = 1;
    for (ox = 0; ox < OW; ox++) {
        resize_tap(xtab, ox, W, &x0, &x1, &wx);
        nearest &= wx == 0;
    }
    for (oy = 0; oy < OH; oy++) {
        resize_tap(ytab, oy, H, &y0, &y1, &wy);
        nearest &= wy == 0;
    }
    if (nearest) { /* every weight 0 (nearest neighbour): a gather, the arithmetic below gives the same bytes */
        int doubled = OW == 2 * W; /* column ox reads ox / 2: two copies of each byte, interleaved */
        for (ox = 0; ox < OW && doubled; ox++) {
            resize_tap(xtab, ox, W, &x0, &x1, &wx);
            doubled = x0 == ox / 2;
        }
        for (c = 0; c < C; c++)
            for (oy = 0; oy < OH; oy++) {
                const int8_t *r0;
                int8_t *yr = y + ((int64_t)c * OH + oy) * OW;
                resize_tap(ytab, oy, H, &y0, &y1, &wy);
                if (oy > 0 && y0 == resize_first(ytab, oy - 1, H)) { /* the row above read the same input row */
                    memcpy(yr, yr - OW, (size_t)OW);
                    continue;
                }
                r0 = x + ((int64_t)c * H + y0) * W;
                if (doubled) {
                    interleave2(yr, r0, r0, W);
                    continue;
                }
                for (ox = 0; ox < OW; ox++) {
                    resize_tap(xtab, ox, W, &x0, &x1, &wx);
                    yr[ox] = r0[x0];
                }
            }
        return;
    }
    for (c = 0; c < C; c++)
        for (oy = 0; oy < OH; oy++) {
            const int8_t *r0, *r1;
            resize_tap(ytab, oy, H, &y0, &y1, &wy);
            r0 = x + ((int64_t)c * H + y0) * W;
            r1 = x + ((int64_t)c * H + y1) * W;
            for (ox = 0; ox < OW; ox++) {
                int64_t top, bot, v;
                resize_tap(xtab, ox, W, &x0, &x1, &wx);
                top = ((int64_t)r0[x0] - zp) * (2048 - wx) + ((int64_t)r0[x1] - zp) * wx;
                bot = ((int64_t)r1[x0] - zp) * (2048 - wx) + ((int64_t)r1[x1] - zp) * wx;
                v = edgeq_rdbpot(top * (2048 - wy) + bot * wy, 22) + zp;
                y[((int64_t)c * OH + oy) * OW + ox] = (int8_t)(v < -128 ? -128 : v > 127 ? 127 : v);
            }
        }
}

/* floor(sqrt(v)) for v >= 0, digit by digit (reference.isqrt). */
static int64_t isqrt64(int64_t v)
{
    int64_t root = 0, bit = (int64_t)1 << 62;
    while (bit != 0) {
        const int64_t trial = root + bit;
        if (v >= trial) {
            v -= trial;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    return root;
}

void edgeq_layer_norm(const int8_t *x, const int32_t *gamma, const int32_t *beta, int8_t *y, int32_t rows,
                      int32_t cols, int32_t x_zp, int32_t y_zp, int64_t eps, int32_t act_min, int32_t act_max)
{
    int32_t r, i;
    for (r = 0; r < rows; r++) {
        const int8_t *xr = x + (int64_t)r * cols;
        int8_t *yr = y + (int64_t)r * cols;
        int64_t total = 0, ss = 0, std;
        for (i = 0; i < cols; i++)
            total += (int64_t)xr[i] - x_zp;
        for (i = 0; i < cols; i++) {
            const int64_t c = (int64_t)cols * ((int64_t)xr[i] - x_zp) - total;
            ss += c * c;
        }
        std = isqrt64(ss / cols + eps);
        if (std < 1)
            std = 1;
        for (i = 0; i < cols; i++) {
            const int64_t c = (int64_t)cols * ((int64_t)xr[i] - x_zp) - total;
            /* c * 2^12 written as a product: left shifts of negative values are undefined in C. */
            const int64_t norm = rounded_div(c * 4096, std);
            const int64_t v = edgeq_rdbpot(norm * gamma[i] + beta[i], 24) + y_zp;
            yr[i] = (int8_t)(v < act_min ? act_min : v > act_max ? act_max : v);
        }
    }
}

/* ---- Program decoding --------------------------------------------------------------------------- */

/* Where operands live; with `validate` set only check operand spans against the sizes, else run.
 * A schedule (n_nodes > 0) gives node i node_threads[i] threads and/or adds its wall time to
 * node_seconds[i]; nodes past n_nodes run unscheduled. */
typedef struct {
    int8_t *arena;
    const uint8_t *pool;
    int64_t arena_bytes, pool_bytes;
    int validate;
    const int8_t *node_threads;
    double *node_seconds;
    int64_t n_nodes;
} ctx_t;

static double wall_seconds(void)
{
#ifdef _OPENMP
    return omp_get_wtime();
#else
    return 0.0; /* single-threaded builds have no thread counts to choose between */
#endif
}

#define CHECK(cond)                  \
    do {                             \
        if (!(cond))                 \
            return EDGEQ_E_PARAM;    \
    } while (0)
#define TRY(expr)                    \
    do {                             \
        const int rc_ = (expr);      \
        if (rc_ != EDGEQ_OK)         \
            return rc_;              \
    } while (0)

static int in_range(int64_t v, int64_t lo, int64_t hi)
{
    return v >= lo && v <= hi;
}

static int is_dim(int64_t v)
{
    return in_range(v, 1, EDGEQ_DIM_MAX);
}

static int is_i8(int64_t v)
{
    return in_range(v, -128, 127);
}

static int is_i32(int64_t v)
{
    return in_range(v, INT32_MIN, INT32_MAX);
}

/* a * b * c for positive factors, or -1 once the product passes INT32_MAX (kernels index in int32). */
static int64_t count3(int64_t a, int64_t b, int64_t c)
{
    int64_t n = a;
    if (n < 0 || b < 0 || c < 0)
        return -1;
    if (b != 0 && n > INT32_MAX / b)
        return -1;
    n *= b;
    if (c != 0 && n > INT32_MAX / c)
        return -1;
    return n * c;
}

/* Check that [off, off + bytes) lies in the arena (or pool) and is aligned; in run mode only the
 * alignment of the actual address can be checked. */
static int span(const ctx_t *cx, int64_t off, int64_t bytes, int in_pool, int64_t align)
{
    if (off < 0 || bytes < 0)
        return EDGEQ_E_BOUNDS;
    if (cx->validate) {
        const int64_t size = in_pool ? cx->pool_bytes : cx->arena_bytes;
        if (off > size || bytes > size - off)
            return EDGEQ_E_BOUNDS;
        if (off % align != 0)
            return EDGEQ_E_ALIGN;
    } else if (in_pool && align > 1 && ((uintptr_t)(cx->pool + off)) % (uintptr_t)align != 0) {
        return EDGEQ_E_ALIGN;
    }
    return EDGEQ_OK;
}

/* Optional fused table: -1 (none) or 256 int8 in the pool. */
static int lut_span(const ctx_t *cx, int64_t off)
{
    if (off == -1)
        return EDGEQ_OK;
    return span(cx, off, 256, 1, 1);
}

static const int8_t *lut_ptr(const ctx_t *cx, int64_t off)
{
    return off == -1 ? NULL : (const int8_t *)(cx->pool + off);
}

/* Window geometry shared by conv and pools: the furthest tap stays within int32 index arithmetic. */
static int window_ok(int64_t out, int64_t stride, int64_t pad, int64_t k, int64_t dil)
{
    return is_dim(out) && is_dim(stride) && in_range(pad, 0, EDGEQ_DIM_MAX) && is_dim(k) && is_dim(dil) &&
           (out - 1) * stride + (k - 1) * dil <= EDGEQ_DIM_MAX;
}

/* An activation width word: 8 or 16 bits. */
static int is_bits(int64_t v)
{
    return v == 8 || v == 16;
}

/* A clamp bound fits the activation type of `bits`. */
static int is_act(int64_t v, int64_t bits)
{
    return bits == 8 ? is_i8(v) : in_range(v, INT16_MIN, INT16_MAX);
}

/* words: x w bias mult shift lut y | C H W OC OH OW KH KW | sh sw pt pl dh dw group | x_zp y_zp min max |
 *        x_bits y_bits */
static int op_conv(const ctx_t *cx, const int64_t *v, int64_t n)
{
    int64_t xs, ys, ws, cg, c, xb, yb;
    int per_channel;
    if (n != 28)
        return EDGEQ_E_RECORD;
    CHECK(is_dim(v[7]) && is_dim(v[8]) && is_dim(v[9]) && is_dim(v[10]) && is_dim(v[21]));
    CHECK(window_ok(v[11], v[15], v[17], v[13], v[19]) && window_ok(v[12], v[16], v[18], v[14], v[20]));
    CHECK(v[7] % v[21] == 0 && v[10] % v[21] == 0);
    CHECK(is_bits(v[26]) && is_bits(v[27]) && (v[5] == -1 || v[27] == 8));
    CHECK(is_i8(v[22]) && is_i8(v[23]) && is_act(v[24], v[27]) && is_act(v[25], v[27]));
    xb = v[26] / 8; /* bytes per element */
    yb = v[27] / 8;
    cg = v[7] / v[21];
    xs = count3(v[7], v[8], v[9]);
    ys = count3(v[10], v[11], v[12]);
    ws = count3(v[10], cg, count3(v[13], v[14], 1));
    CHECK(xs > 0 && ys > 0 && ws > 0 && count3(cg, v[13], v[14]) > 0);
    TRY(span(cx, v[0], xs * xb, 0, xb));
    TRY(span(cx, v[1], ws, 1, 1));
    TRY(span(cx, v[2], 4 * v[10], 1, 4));
    TRY(span(cx, v[3], 4 * v[10], 1, 4));
    TRY(span(cx, v[4], 4 * v[10], 1, 4));
    TRY(lut_span(cx, v[5]));
    TRY(span(cx, v[6], ys * yb, 0, yb));
    if (cx->validate)
        return EDGEQ_OK;
    /* A depthwise conv planned in place (output overlapping its input, planner.py): one channel at a
     * time in ascending order, so every output channel lands only on input channels already read. */
    per_channel = v[21] == v[7] && v[10] == v[7] && v[0] < v[6] + ys * yb && v[6] < v[0] + xs * xb;
    for (c = 0; c < (per_channel ? v[7] : 1); c++) {
        const int64_t ch = per_channel ? c : 0, nc = per_channel ? 1 : v[7];
        edgeq_conv_wide(cx->arena + v[0] + ch * v[8] * v[9] * xb, (int32_t)v[26],
                        (const int8_t *)(cx->pool + v[1]) + ch * v[13] * v[14], (const int32_t *)(cx->pool + v[2]) + ch,
                        (const int32_t *)(cx->pool + v[3]) + ch, (const int32_t *)(cx->pool + v[4]) + ch,
                        lut_ptr(cx, v[5]), cx->arena + v[6] + ch * v[11] * v[12] * yb, (int32_t)v[27],
                        (int32_t)nc, (int32_t)v[8], (int32_t)v[9], (int32_t)(per_channel ? 1 : v[10]),
                        (int32_t)v[11], (int32_t)v[12], (int32_t)v[13], (int32_t)v[14], (int32_t)v[15],
                        (int32_t)v[16], (int32_t)v[17], (int32_t)v[18], (int32_t)v[19], (int32_t)v[20],
                        (int32_t)(per_channel ? 1 : v[21]), (int32_t)v[22], (int32_t)v[23], (int32_t)v[24],
                        (int32_t)v[25]);
    }
    return EDGEQ_OK;
}

/* words: x w bias mult shift lut y | K OC | x_zp y_zp min max | single_rounding */
static int op_fc(const ctx_t *cx, const int64_t *v, int64_t n)
{
    int64_t ws;
    if (n != 14)
        return EDGEQ_E_RECORD;
    CHECK(is_dim(v[7]) && is_dim(v[8]) && in_range(v[13], 0, 1));
    CHECK(is_i8(v[9]) && is_i8(v[10]) && is_i8(v[11]) && is_i8(v[12]));
    ws = count3(v[7], v[8], 1);
    CHECK(ws > 0);
    TRY(span(cx, v[0], v[7], 0, 1));
    TRY(span(cx, v[1], ws, 1, 1));
    TRY(span(cx, v[2], 4 * v[8], 1, 4));
    TRY(span(cx, v[3], 4 * v[8], 1, 4));
    TRY(span(cx, v[4], 4 * v[8], 1, 4));
    TRY(lut_span(cx, v[5]));
    TRY(span(cx, v[6], v[8], 0, 1));
    if (!cx->validate)
        (v[13] ? edgeq_fc_single : edgeq_fc)(
            cx->arena + v[0], (const int8_t *)(cx->pool + v[1]), (const int32_t *)(cx->pool + v[2]),
            (const int32_t *)(cx->pool + v[3]), (const int32_t *)(cx->pool + v[4]), lut_ptr(cx, v[5]),
            cx->arena + v[6], (int32_t)v[7], (int32_t)v[8], (int32_t)v[9], (int32_t)v[10], (int32_t)v[11],
            (int32_t)v[12]);
    return EDGEQ_OK;
}

/* One broadcast operand: bytes it spans given the output dims and its strides, and where it lives. */
static int operand_span(const ctx_t *cx, int64_t off, int64_t is_const, const int64_t *dims, const int64_t *strides)
{
    int64_t extent = 1;
    int i;
    CHECK(is_const == 0 || is_const == 1);
    for (i = 0; i < 4; i++) {
        CHECK(in_range(strides[i], 0, INT32_MAX));
        extent += (dims[i] - 1) * strides[i];
        CHECK(extent <= INT32_MAX);
    }
    return span(cx, off, extent, (int)is_const, 1);
}

static const int8_t *operand_ptr(const ctx_t *cx, int64_t off, int64_t is_const)
{
    return is_const ? (const int8_t *)(cx->pool + off) : cx->arena + off;
}

/* words: a a_const b b_const lut y | d0 d1 d2 d3 | a_strides[4] b_strides[4] | quant... min max */
static int op_binary(const ctx_t *cx, const int64_t *v, int64_t n, int kind)
{
    const int64_t *q;
    int32_t d[4], as[4], bs[4];
    int i;
    if (n != (kind == BIN_ADD ? 29 : 25))
        return EDGEQ_E_RECORD;
    q = v + 18; /* quantization words */
    for (i = 0; i < 4; i++)
        CHECK(is_dim(v[6 + i]));
    CHECK(count3(v[6], v[7], count3(v[8], v[9], 1)) > 0);
    CHECK(is_i8(q[0]) && is_i8(q[1]) && is_i8(q[2]) && is_i8(q[n - 20]) && is_i8(q[n - 19]));
    for (i = 3; i < n - 20; i++)
        CHECK(is_i32(q[i]));
    TRY(operand_span(cx, v[0], v[1], v + 6, v + 10));
    TRY(operand_span(cx, v[2], v[3], v + 6, v + 14));
    TRY(lut_span(cx, v[4]));
    TRY(span(cx, v[5], count3(v[6], v[7], count3(v[8], v[9], 1)), 0, 1));
    if (cx->validate)
        return EDGEQ_OK;
    for (i = 0; i < 4; i++) {
        d[i] = (int32_t)v[6 + i];
        as[i] = (int32_t)v[10 + i];
        bs[i] = (int32_t)v[14 + i];
    }
    if (kind == BIN_ADD)
        edgeq_add(operand_ptr(cx, v[0], v[1]), operand_ptr(cx, v[2], v[3]), lut_ptr(cx, v[4]), cx->arena + v[5], d,
                  as, bs, (int32_t)q[0], (int32_t)q[1], (int32_t)q[2], (int32_t)q[3], (int32_t)q[4], (int32_t)q[5],
                  (int32_t)q[6], (int32_t)q[7], (int32_t)q[8], (int32_t)q[9], (int32_t)q[10]);
    else
        edgeq_mul(operand_ptr(cx, v[0], v[1]), operand_ptr(cx, v[2], v[3]), lut_ptr(cx, v[4]), cx->arena + v[5], d,
                  as, bs, (int32_t)q[0], (int32_t)q[1], (int32_t)q[2], (int32_t)q[3], (int32_t)q[4], (int32_t)q[5],
                  (int32_t)q[6]);
    return EDGEQ_OK;
}

/* words: x table y count */
/* words: x table y count x_bits y_bits (table: 256 entries of y's type for int8 x, 513 int16 for int16 x) */
static int op_lut(const ctx_t *cx, const int64_t *v, int64_t n)
{
    if (n != 6)
        return EDGEQ_E_RECORD;
    CHECK(in_range(v[3], 0, INT32_MAX) && is_bits(v[4]) && is_bits(v[5]));
    TRY(span(cx, v[0], v[3] * (v[4] / 8), 0, v[4] / 8));
    TRY(v[4] == 8 ? span(cx, v[1], 256 * (v[5] / 8), 1, v[5] / 8) : span(cx, v[1], 2 * 513, 1, 2));
    TRY(span(cx, v[2], v[3] * (v[5] / 8), 0, v[5] / 8));
    if (!cx->validate)
        edgeq_lut_wide(cx->arena + v[0], (int32_t)v[4], cx->pool + v[1], cx->arena + v[2], (int32_t)v[5],
                       (int32_t)v[3]);
    return EDGEQ_OK;
}

/* words: x y count x_bits y_bits x_zp y_zp mult shift */
static int op_requantize(const ctx_t *cx, const int64_t *v, int64_t n)
{
    if (n != 9)
        return EDGEQ_E_RECORD;
    CHECK(in_range(v[2], 0, INT32_MAX) && is_bits(v[3]) && is_bits(v[4]));
    CHECK(is_i8(v[5]) && is_i8(v[6]) && is_i32(v[7]) && is_i32(v[8]));
    TRY(span(cx, v[0], v[2] * (v[3] / 8), 0, v[3] / 8));
    TRY(span(cx, v[1], v[2] * (v[4] / 8), 0, v[4] / 8));
    if (!cx->validate)
        edgeq_requantize(cx->arena + v[0], (int32_t)v[3], cx->arena + v[1], (int32_t)v[4], (int32_t)v[2],
                         (int32_t)v[5], (int32_t)v[6], (int32_t)v[7], (int32_t)v[8]);
    return EDGEQ_OK;
}

/* max: x y | C H W OH OW KH KW | sh sw pt pl dh dw | min max
 * avg: x y | C H W OH OW KH KW | sh sw pt pl | count_include_pad x_zp y_zp min max */
static int op_pool(const ctx_t *cx, const int64_t *v, int64_t n, int kind)
{
    const int is_max = kind == POOL_MAX;
    int64_t dh, dw, xs, ys;
    const int64_t *q;
    if (n != (is_max ? 17 : 18))
        return EDGEQ_E_RECORD;
    dh = is_max ? v[13] : 1;
    dw = is_max ? v[14] : 1;
    q = v + (is_max ? 15 : 13); /* [cip x_zp y_zp] min max */
    CHECK(is_dim(v[2]) && is_dim(v[3]) && is_dim(v[4]));
    CHECK(window_ok(v[5], v[9], v[11], v[7], dh) && window_ok(v[6], v[10], v[12], v[8], dw));
    CHECK(count3(v[7], v[8], 1) > 0);
    if (!is_max) {
        CHECK((q[0] == 0 || q[0] == 1) && is_i8(q[1]) && is_i8(q[2]));
        q += 3;
    }
    CHECK(is_i8(q[0]) && is_i8(q[1]));
    xs = count3(v[2], v[3], v[4]);
    ys = count3(v[2], v[5], v[6]);
    CHECK(xs > 0 && ys > 0);
    TRY(span(cx, v[0], xs, 0, 1));
    TRY(span(cx, v[1], ys, 0, 1));
    if (cx->validate)
        return EDGEQ_OK;
    if (is_max)
        edgeq_maxpool(cx->arena + v[0], cx->arena + v[1], (int32_t)v[2], (int32_t)v[3], (int32_t)v[4],
                      (int32_t)v[5], (int32_t)v[6], (int32_t)v[7], (int32_t)v[8], (int32_t)v[9], (int32_t)v[10],
                      (int32_t)v[11], (int32_t)v[12], (int32_t)dh, (int32_t)dw, (int32_t)q[0], (int32_t)q[1]);
    else
        edgeq_avgpool(cx->arena + v[0], cx->arena + v[1], (int32_t)v[2], (int32_t)v[3], (int32_t)v[4],
                      (int32_t)v[5], (int32_t)v[6], (int32_t)v[7], (int32_t)v[8], (int32_t)v[9], (int32_t)v[10],
                      (int32_t)v[11], (int32_t)v[12], (int32_t)v[13], (int32_t)v[14], (int32_t)v[15],
                      (int32_t)q[0], (int32_t)q[1]);
    return EDGEQ_OK;
}

/* words: x table y rows cols */
static int op_softmax(const ctx_t *cx, const int64_t *v, int64_t n)
{
    int64_t count;
    if (n != 5)
        return EDGEQ_E_RECORD;
    CHECK(in_range(v[3], 0, INT32_MAX) && is_dim(v[4]));
    count = count3(v[3], v[4], 1);
    CHECK(count >= 0);
    TRY(span(cx, v[0], count, 0, 1));
    TRY(span(cx, v[1], 256 * 4, 1, 4));
    TRY(span(cx, v[2], count, 0, 1));
    if (!cx->validate)
        edgeq_softmax(cx->arena + v[0], (const int32_t *)(cx->pool + v[1]), cx->arena + v[2], (int32_t)v[3],
                      (int32_t)v[4]);
    return EDGEQ_OK;
}

/* words: y outer n_inputs y_zp | per input: x inner x_zp mult shift */
static int op_concat(const ctx_t *cx, const int64_t *v, int64_t n)
{
    int64_t total = 0, col = 0, i;
    if (n < 4 || !in_range(v[2], 1, (n - 4) / 5) || n != 4 + 5 * v[2])
        return EDGEQ_E_RECORD;
    CHECK(is_dim(v[1]) && is_i8(v[3]));
    for (i = 0; i < v[2]; i++) {
        const int64_t *p = v + 4 + 5 * i;
        CHECK(is_dim(p[1]) && is_i8(p[2]) && is_i32(p[3]) && is_i32(p[4]));
        total += p[1];
        CHECK(count3(v[1], total, 1) > 0);
        TRY(span(cx, p[0], v[1] * p[1], 0, 1));
    }
    TRY(span(cx, v[0], v[1] * total, 0, 1));
    if (cx->validate)
        return EDGEQ_OK;
    for (i = 0; i < v[2]; i++) {
        const int64_t *p = v + 4 + 5 * i;
        edgeq_concat_part(cx->arena + p[0], cx->arena + v[0], (int32_t)v[1], (int32_t)p[1], (int32_t)total,
                          (int32_t)col, (int32_t)p[2], (int32_t)p[3], (int32_t)p[4], (int32_t)v[3]);
        col += p[1];
    }
    return EDGEQ_OK;
}

/* words: x y count */
static int op_reshape(const ctx_t *cx, const int64_t *v, int64_t n)
{
    if (n != 3)
        return EDGEQ_E_RECORD;
    CHECK(in_range(v[2], 0, INT32_MAX));
    TRY(span(cx, v[0], v[2], 0, 1));
    TRY(span(cx, v[1], v[2], 0, 1));
    if (!cx->validate)
        edgeq_reshape(cx->arena + v[0], cx->arena + v[1], (int32_t)v[2]);
    return EDGEQ_OK;
}

/* words: x canvas y | C H W OH OW | sy sx dy dx h w */
static int op_copy_window(const ctx_t *cx, const int64_t *v, int64_t n)
{
    int64_t xs, ys;
    if (n != 14)
        return EDGEQ_E_RECORD;
    CHECK(is_dim(v[3]) && is_dim(v[4]) && is_dim(v[5]) && is_dim(v[6]) && is_dim(v[7]));
    CHECK(is_dim(v[12]) && is_dim(v[13]));
    CHECK(in_range(v[8], 0, v[4] - v[12]) && in_range(v[9], 0, v[5] - v[13]));
    CHECK(in_range(v[10], 0, v[6] - v[12]) && in_range(v[11], 0, v[7] - v[13]));
    xs = count3(v[3], v[4], v[5]);
    ys = count3(v[3], v[6], v[7]);
    CHECK(xs > 0 && ys > 0);
    TRY(span(cx, v[0], xs, 0, 1));
    if (v[1] != -1)
        TRY(span(cx, v[1], ys, 0, 1));
    TRY(span(cx, v[2], ys, 0, 1));
    if (!cx->validate)
        edgeq_copy_window(cx->arena + v[0], v[1] == -1 ? NULL : cx->arena + v[1], cx->arena + v[2], (int32_t)v[3],
                          (int32_t)v[4], (int32_t)v[5], (int32_t)v[6], (int32_t)v[7], (int32_t)v[8],
                          (int32_t)v[9], (int32_t)v[10], (int32_t)v[11], (int32_t)v[12], (int32_t)v[13]);
    return EDGEQ_OK;
}

/* words: x x_count y offset | dims[6] | strides[6] */
static int op_strided_copy(const ctx_t *cx, const int64_t *v, int64_t n)
{
    int64_t lo, hi, count = 1;
    int32_t dims[6], strides[6];
    int k;
    if (n != 16)
        return EDGEQ_E_RECORD;
    CHECK(in_range(v[1], 1, INT32_MAX));
    lo = hi = v[3];
    for (k = 0; k < 6; k++) {
        const int64_t d = v[4 + k], s = v[10 + k];
        CHECK(is_dim(d) && in_range(s, -(int64_t)INT32_MAX, INT32_MAX));
        count = count3(count, d, 1);
        CHECK(count > 0);
        if (s < 0)
            lo += (d - 1) * s;
        else
            hi += (d - 1) * s;
        dims[k] = (int32_t)d;
        strides[k] = (int32_t)s;
    }
    CHECK(lo >= 0 && hi < v[1]);
    TRY(span(cx, v[0], v[1], 0, 1));
    TRY(span(cx, v[2], count, 0, 1));
    if (!cx->validate)
        edgeq_strided_copy(cx->arena + v[0], cx->arena + v[2], v[3], dims, strides);
    return EDGEQ_OK;
}

/* words: a b b_const bias mult shift lut y | batch M K N | b_batch_stride b_k_stride b_n_stride |
 *        a_zp b_zp y_zp min max */
static int op_matmul(const ctx_t *cx, const int64_t *v, int64_t n)
{
    int64_t a_n, y_n, b_n;
    int k;
    if (n != 20)
        return EDGEQ_E_RECORD;
    CHECK(v[2] == 0 || v[2] == 1);
    CHECK(is_dim(v[8]) && is_dim(v[9]) && in_range(v[10], 1, EDGEQ_MATMUL_K_MAX) && is_dim(v[11]));
    for (k = 12; k < 15; k++)
        CHECK(in_range(v[k], 0, INT32_MAX));
    for (k = 15; k < 20; k++)
        CHECK(is_i8(v[k]));
    a_n = count3(v[8], v[9], v[10]);
    y_n = count3(v[8], v[9], v[11]);
    CHECK(a_n > 0 && y_n > 0);
    b_n = (v[8] - 1) * v[12] + (v[10] - 1) * v[13] + (v[11] - 1) * v[14] + 1;
    CHECK(b_n <= INT32_MAX);
    TRY(span(cx, v[0], a_n, 0, 1));
    TRY(span(cx, v[1], b_n, (int)v[2], 1));
    TRY(span(cx, v[3], 4 * v[11], 1, 4));
    TRY(span(cx, v[4], 4 * v[11], 1, 4));
    TRY(span(cx, v[5], 4 * v[11], 1, 4));
    TRY(lut_span(cx, v[6]));
    TRY(span(cx, v[7], y_n, 0, 1));
    if (!cx->validate)
        edgeq_matmul(cx->arena + v[0], operand_ptr(cx, v[1], v[2]), (const int32_t *)(cx->pool + v[3]),
                     (const int32_t *)(cx->pool + v[4]), (const int32_t *)(cx->pool + v[5]), lut_ptr(cx, v[6]),
                     cx->arena + v[7], (int32_t)v[8], (int32_t)v[9], (int32_t)v[10], (int32_t)v[11], v[12], v[13],
                     v[14], (int32_t)v[15], (int32_t)v[16], (int32_t)v[17], (int32_t)v[18], (int32_t)v[19]);
    return EDGEQ_OK;
}

/* words as op_conv: x w bias mult shift lut y | C H W OC OH OW KH KW | sh sw pt pl dh dw group |
 * x_zp y_zp min max (weights [OC, C/group, KH, KW]) */
static int op_conv_transpose(const ctx_t *cx, const int64_t *v, int64_t n)
{
    int64_t xs, ys, ws, cg;
    if (n != 26)
        return EDGEQ_E_RECORD;
    CHECK(is_dim(v[7]) && is_dim(v[8]) && is_dim(v[9]) && is_dim(v[10]) && is_dim(v[11]) && is_dim(v[12]));
    CHECK(is_dim(v[13]) && is_dim(v[14]) && is_dim(v[15]) && is_dim(v[16]) && is_dim(v[19]) && is_dim(v[20]));
    CHECK(in_range(v[17], 0, EDGEQ_DIM_MAX) && in_range(v[18], 0, EDGEQ_DIM_MAX) && is_dim(v[21]));
    CHECK(v[7] % v[21] == 0 && v[10] % v[21] == 0);
    CHECK(is_i8(v[22]) && is_i8(v[23]) && is_i8(v[24]) && is_i8(v[25]));
    cg = v[7] / v[21];
    CHECK(in_range(count3(cg, v[13], v[14]), 1, EDGEQ_MATMUL_K_MAX));
    /* The furthest input coordinate a tap can ask for stays in int64 range. */
    CHECK(v[11] + v[17] <= EDGEQ_DIM_MAX && v[12] + v[18] <= EDGEQ_DIM_MAX);
    xs = count3(v[7], v[8], v[9]);
    ys = count3(v[10], v[11], v[12]);
    ws = count3(v[10], cg, count3(v[13], v[14], 1));
    CHECK(xs > 0 && ys > 0 && ws > 0);
    TRY(span(cx, v[0], xs, 0, 1));
    TRY(span(cx, v[1], ws, 1, 1));
    TRY(span(cx, v[2], 4 * v[10], 1, 4));
    TRY(span(cx, v[3], 4 * v[10], 1, 4));
    TRY(span(cx, v[4], 4 * v[10], 1, 4));
    TRY(lut_span(cx, v[5]));
    TRY(span(cx, v[6], ys, 0, 1));
    if (!cx->validate)
        edgeq_conv_transpose(cx->arena + v[0], (const int8_t *)(cx->pool + v[1]), (const int32_t *)(cx->pool + v[2]),
                             (const int32_t *)(cx->pool + v[3]), (const int32_t *)(cx->pool + v[4]),
                             lut_ptr(cx, v[5]), cx->arena + v[6], (int32_t)v[7], (int32_t)v[8], (int32_t)v[9],
                             (int32_t)v[10], (int32_t)v[11], (int32_t)v[12], (int32_t)v[13], (int32_t)v[14],
                             (int32_t)v[15], (int32_t)v[16], (int32_t)v[17], (int32_t)v[18], (int32_t)v[19],
                             (int32_t)v[20], (int32_t)v[21], (int32_t)v[22], (int32_t)v[23], (int32_t)v[24],
                             (int32_t)v[25]);
    return EDGEQ_OK;
}

/* words: x ytab xtab y | C H W OH OW | zp */
static int op_resize(const ctx_t *cx, const int64_t *v, int64_t n)
{
    int64_t xs, ys;
    if (n != 10)
        return EDGEQ_E_RECORD;
    CHECK(is_dim(v[4]) && is_dim(v[5]) && is_dim(v[6]) && is_dim(v[7]) && is_dim(v[8]) && is_i8(v[9]));
    xs = count3(v[4], v[5], v[6]);
    ys = count3(v[4], v[7], v[8]);
    CHECK(xs > 0 && ys > 0 && count3(v[7], 12, 1) > 0 && count3(v[8], 12, 1) > 0);
    TRY(span(cx, v[0], xs, 0, 1));
    TRY(span(cx, v[1], 12 * v[7], 1, 4));
    TRY(span(cx, v[2], 12 * v[8], 1, 4));
    TRY(span(cx, v[3], ys, 0, 1));
    if (!cx->validate)
        edgeq_resize(cx->arena + v[0], (const int32_t *)(cx->pool + v[1]), (const int32_t *)(cx->pool + v[2]),
                     cx->arena + v[3], (int32_t)v[4], (int32_t)v[5], (int32_t)v[6], (int32_t)v[7], (int32_t)v[8],
                     (int32_t)v[9]);
    return EDGEQ_OK;
}

/* words: x gamma beta y | rows cols | x_zp y_zp eps min max */
static int op_layer_norm(const ctx_t *cx, const int64_t *v, int64_t n)
{
    int64_t count;
    if (n != 11)
        return EDGEQ_E_RECORD;
    CHECK(in_range(v[4], 0, INT32_MAX) && in_range(v[5], 1, EDGEQ_LN_COLS_MAX));
    CHECK(is_i8(v[6]) && is_i8(v[7]) && in_range(v[8], 0, (int64_t)1 << 40) && is_i8(v[9]) && is_i8(v[10]));
    count = count3(v[4], v[5], 1);
    CHECK(count >= 0);
    TRY(span(cx, v[0], count, 0, 1));
    TRY(span(cx, v[1], 4 * v[5], 1, 4));
    TRY(span(cx, v[2], 4 * v[5], 1, 4));
    TRY(span(cx, v[3], count, 0, 1));
    if (!cx->validate)
        edgeq_layer_norm(cx->arena + v[0], (const int32_t *)(cx->pool + v[1]), (const int32_t *)(cx->pool + v[2]),
                         cx->arena + v[3], (int32_t)v[4], (int32_t)v[5], (int32_t)v[6], (int32_t)v[7], v[8],
                         (int32_t)v[9], (int32_t)v[10]);
    return EDGEQ_OK;
}

/* Decode (and run, unless validating) every record; reads only words[0, n_words). */
static int walk_program(const ctx_t *cx, const int64_t *words, int64_t n_words)
{
    int64_t pos = 0, node = 0;
    const int threads = edgeq_threads;
    if (n_words < 0)
        return EDGEQ_E_RECORD;
    for (; pos < n_words; node++) {
        int64_t len;
        const int64_t *body;
        int rc;
        const int scheduled = !cx->validate && node < cx->n_nodes;
        double t0 = 0.0;
        if (n_words - pos < 2)
            return EDGEQ_E_RECORD;
        len = words[pos + 1];
        if (len < 2 || len > n_words - pos)
            return EDGEQ_E_RECORD;
        body = words + pos + 2;
        if (scheduled && cx->node_threads)
            edgeq_threads = cx->node_threads[node] < 1 ? 1 : cx->node_threads[node];
        if (scheduled && cx->node_seconds)
            t0 = wall_seconds();
        switch (words[pos]) {
        case EDGEQ_OP_CONV: rc = op_conv(cx, body, len - 2); break;
        case EDGEQ_OP_FC: rc = op_fc(cx, body, len - 2); break;
        case EDGEQ_OP_ADD: rc = op_binary(cx, body, len - 2, BIN_ADD); break;
        case EDGEQ_OP_MUL: rc = op_binary(cx, body, len - 2, BIN_MUL); break;
        case EDGEQ_OP_LUT: rc = op_lut(cx, body, len - 2); break;
        case EDGEQ_OP_MAXPOOL: rc = op_pool(cx, body, len - 2, POOL_MAX); break;
        case EDGEQ_OP_AVGPOOL: rc = op_pool(cx, body, len - 2, POOL_AVG); break;
        case EDGEQ_OP_SOFTMAX: rc = op_softmax(cx, body, len - 2); break;
        case EDGEQ_OP_CONCAT: rc = op_concat(cx, body, len - 2); break;
        case EDGEQ_OP_RESHAPE: rc = op_reshape(cx, body, len - 2); break;
        case EDGEQ_OP_COPY_WINDOW: rc = op_copy_window(cx, body, len - 2); break;
        case EDGEQ_OP_STRIDED_COPY: rc = op_strided_copy(cx, body, len - 2); break;
        case EDGEQ_OP_MATMUL: rc = op_matmul(cx, body, len - 2); break;
        case EDGEQ_OP_CONV_TRANSPOSE: rc = op_conv_transpose(cx, body, len - 2); break;
        case EDGEQ_OP_RESIZE: rc = op_resize(cx, body, len - 2); break;
        case EDGEQ_OP_LAYER_NORM: rc = op_layer_norm(cx, body, len - 2); break;
        case EDGEQ_OP_REQUANTIZE: rc = op_requantize(cx, body, len - 2); break;
        default: rc = EDGEQ_E_OPCODE; break;
        }
        edgeq_threads = threads;
        if (scheduled && cx->node_seconds)
            cx->node_seconds[node] += wall_seconds() - t0;
        if (rc != EDGEQ_OK)
            return rc;
        pos += len;
    }
    return EDGEQ_OK;
}

static int run_scheduled(const int64_t *words, int64_t n_words, int8_t *arena, const uint8_t *pool,
                         const int8_t *node_threads, double *node_seconds, int64_t n_nodes)
{
    ctx_t cx;
    cx.arena = arena;
    cx.pool = pool;
    cx.arena_bytes = 0;
    cx.pool_bytes = 0;
    cx.validate = 0;
    cx.node_threads = node_threads;
    cx.node_seconds = node_seconds;
    cx.n_nodes = node_threads || node_seconds ? n_nodes : 0;
    return walk_program(&cx, words, n_words);
}

int edgeq_run_program(const int64_t *words, int64_t n_words, int8_t *arena, const uint8_t *pool)
{
    return run_scheduled(words, n_words, arena, pool, NULL, NULL, 0);
}

/* Descriptor rows [offset, bytes] packed back to back within `stride`; with arena_bytes >= 0 each
 * must also lie inside the arena. */
static int check_desc(const int64_t *desc, int64_t n, int64_t stride, int64_t arena_bytes)
{
    int64_t i, used = 0;
    if (n < 0 || stride < 0)
        return EDGEQ_E_IO;
    for (i = 0; i < n; i++) {
        const int64_t off = desc[2 * i], bytes = desc[2 * i + 1];
        if (off < 0 || bytes < 0 || bytes > stride - used)
            return EDGEQ_E_IO;
        if (arena_bytes >= 0 && (off > arena_bytes || bytes > arena_bytes - off))
            return EDGEQ_E_IO;
        used += bytes;
    }
    return EDGEQ_OK;
}

int edgeq_execute(const int64_t *words, int64_t n_words, int8_t *arena, const uint8_t *pool,
                  const int8_t *in_buf, int64_t batch, int64_t in_stride, const int64_t *in_desc, int64_t n_in,
                  int8_t *out_buf, int64_t out_stride, const int64_t *out_desc, int64_t n_out,
                  const int8_t *node_threads, double *node_seconds, int64_t n_nodes)
{
    int64_t b, i;
    if (batch < 0)
        return EDGEQ_E_IO;
    TRY(check_desc(in_desc, n_in, in_stride, -1));
    TRY(check_desc(out_desc, n_out, out_stride, -1));
    for (b = 0; b < batch; b++) {
        const int8_t *src = in_buf + b * in_stride;
        int8_t *dst = out_buf + b * out_stride;
        for (i = 0; i < n_in; i++) {
            memcpy(arena + in_desc[2 * i], src, (size_t)in_desc[2 * i + 1]);
            src += in_desc[2 * i + 1];
        }
        TRY(run_scheduled(words, n_words, arena, pool, node_threads, node_seconds, n_nodes));
        for (i = 0; i < n_out; i++) {
            memcpy(dst, arena + out_desc[2 * i], (size_t)out_desc[2 * i + 1]);
            dst += out_desc[2 * i + 1];
        }
    }
    return EDGEQ_OK;
}

/* ---- Float boundary ------------------------------------------------------------------------------
 * Exactly executor.quantize / executor.dequantize in float32 (no -ffast-math: the division, the
 * rounding to nearest even and the comparisons must be IEEE). */

/* Branch-free so that it vectorises; NaN fails both comparisons and ends at -128. */
static void quantize_row(const float *restrict x, int64_t n, float scale, float zp, int8_t *restrict d)
{
    int64_t k;
    for (k = 0; k < n; k++) {
        float q = nearbyintf(x[k] / scale) + zp;
        q = q > 127.0f ? 127.0f : q;
        q = q > -128.0f ? q : -128.0f;
        d[k] = (int8_t)(int32_t)q;
    }
}

static void dequantize_row(const int8_t *restrict q, int64_t n, float scale, int32_t zp, float *restrict y)
{
    int64_t k;
    for (k = 0; k < n; k++)
        y[k] = (float)((int32_t)q[k] - zp) * scale;
}

int edgeq_execute_float(const int64_t *words, int64_t n_words, int8_t *arena, const uint8_t *pool,
                        const float *x, int64_t batch, int64_t x_stride, const int64_t *in_desc,
                        const float *in_qp, int64_t n_in, float *y, int64_t y_stride, const int64_t *out_desc,
                        const float *out_qp, int64_t n_out, const int8_t *node_threads, double *node_seconds,
                        int64_t n_nodes)
{
    int64_t b, i;
    if (batch < 0)
        return EDGEQ_E_IO;
    TRY(check_desc(in_desc, n_in, x_stride, -1));
    TRY(check_desc(out_desc, n_out, y_stride, -1));
    for (b = 0; b < batch; b++) {
        const float *src = x + b * x_stride;
        float *dst = y + b * y_stride;
        for (i = 0; i < n_in; i++) {
            const int64_t n = in_desc[2 * i + 1];
            quantize_row(src, n, in_qp[2 * i], in_qp[2 * i + 1], arena + in_desc[2 * i]);
            src += n;
        }
        TRY(run_scheduled(words, n_words, arena, pool, node_threads, node_seconds, n_nodes));
        for (i = 0; i < n_out; i++) {
            const int64_t n = out_desc[2 * i + 1];
            dequantize_row(arena + out_desc[2 * i], n, out_qp[2 * i], (int32_t)out_qp[2 * i + 1], dst);
            dst += n;
        }
    }
    return EDGEQ_OK;
}

int edgeq_validate(const int64_t *words, int64_t n_words, int64_t arena_bytes, int64_t pool_bytes,
                   const int64_t *in_desc, int64_t n_in, int64_t in_stride,
                   const int64_t *out_desc, int64_t n_out, int64_t out_stride)
{
    ctx_t cx;
    if (arena_bytes < 0 || pool_bytes < 0)
        return EDGEQ_E_BOUNDS;
    TRY(check_desc(in_desc, n_in, in_stride, arena_bytes));
    TRY(check_desc(out_desc, n_out, out_stride, arena_bytes));
    cx.arena = NULL;
    cx.pool = NULL;
    cx.arena_bytes = arena_bytes;
    cx.pool_bytes = pool_bytes;
    cx.validate = 1;
    cx.node_threads = NULL;
    cx.node_seconds = NULL;
    cx.n_nodes = 0;
    return walk_program(&cx, words, n_words);
}
