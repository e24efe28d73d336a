/* edgeq LLM decoder kernels; see edgeq_llm.h. Every function mirrors runtimes/llm_reference.py or
   runtimes/llm_formats.py operation for operation. */
#include "edgeq_llm.h"

#include <math.h>
#include <stdlib.h>
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

#if !defined(__GNUC__)
#define __builtin_prefetch(p, rw, loc) ((void)(p))
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
   Per output row and token, for each 32-column activation block b in order (g = the weight group holding
   it): the exact int32 dot product of every plane over the block's 32 columns, then float32
   t = d_0[g] * float(dot_0) (+ d_p[g] * float(dot_p) ...) (+ m[g] * float(xsum[b])), acc = acc + t * xs[b].
   xsum holds the sums of the quantized activations per 32-block, xs their scales. Every path keeps this
   order, so every SIMD width gives the same bits. */

static int mat_ok(const edgeq_llm_mat *w, int32_t rows, int32_t cols)
{
    const fmt_info *f = format_of(w->fmt);
    return f && w->rows == rows && w->cols == cols && rows > 0 && cols > 0 && cols % 32 == 0 &&
           cols <= EDGEQ_LLM_MAX_COLS && (!f->group || cols % f->group == 0) && w->q && w->d &&
           (!f->offset || w->m);
}

static int groups_of(const fmt_info *f, int cols)
{
    return f->group ? cols / f->group : 1;
}

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

/* Tokens per pass of the bit-plane formats' table lookups (AVX-512; 1 and 4 were 15-20% slower). */
#define BIT_BATCH_TOKENS 2

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define SIMD_NAME "avx512vnni"
#define INLINE static inline __attribute__((always_inline))
/* The loops over quads, planes and tokens have constant trip counts: unrolled, their vectors stay in
   registers (GCC at -O2 keeps the loops and spills the code registers to the stack). */
#define UNROLL _Pragma("GCC unroll 8")

/* ---- AVX-512: row tiles ------------------------------------------------------------------------------
   edgeq_llm_make_tiles re-lays a matrix out once at load time in tiles of 16 rows, so that lane i of a
   register is row i of the tile: one vpdpbusd multiplies 4 columns of 16 rows by 4 activations broadcast
   to every lane, a 32-column block's dot products of 16 rows come out of 8 of them in one register, and
   the float steps run on 16 rows at once with no horizontal sum. Tile layout, weight group after weight
   group: for each 32-block of the group, for each plane, the codes of the block's 8 quads of 4 columns
   (quad j: columns 4j .. 4j+3):
     int8     512 bytes: quad j at 64 j, byte 4 i + k = v + 128 of row i, column 4 j + k
     int4     256 bytes: 64-byte unit u, byte 4 i + k: low nibble quad u, high nibble quad u + 4 (v + 8)
     trits    128 bytes: unit u, byte 4 i + k, bits 2 s, 2 s + 1: quad u + 2 s (v + 1)
   then the group's float16 scales [plane][tile rows] and offsets [tile rows] (one stream: with the scales in
   a region of their own, decode read memory at half the speed); rows past the matrix's end are zero. Codes
   stay unsigned for vpdpbusd: each dot starts at -bias * xsum[b].
   The bit planes (lut2, lut3) take tiles of 32 rows and no vpdpbusd: per block and plane, 4 units of 32
   bytes, byte i of unit u = row i's bits of quad u (low nibble, bit k = column 4 u + k) and of quad u + 4
   (high nibble). Each nibble indexes a table of the 16 sums of its quad's 4 activations over the subsets
   (built once per token, build_luts), and one vpermw looks up 32 rows at once: 8 lookups and 7 int16 adds
   give a block's dots for 32 rows, against 16 mask expansions and 16 vpdpbusd per 32 rows before. */
#define TILE_ROWS 16
#define BIT_TILE_ROWS 32

static int is_bits(int fmt)
{
    return fmt >= EDGEQ_LLM_FMT_LUT2;
}

static int tile_rows(int fmt)
{
    return is_bits(fmt) ? BIT_TILE_ROWS : TILE_ROWS;
}

static int block_bytes(int fmt)
{
    return fmt == EDGEQ_LLM_FMT_INT8 ? 512 : fmt == EDGEQ_LLM_FMT_INT4 ? 256 : 128;
}

static int code_bias(int fmt)
{
    return fmt == EDGEQ_LLM_FMT_INT8 ? 128 : fmt == EDGEQ_LLM_FMT_INT4 ? 8 : fmt <= EDGEQ_LLM_FMT_PTQTP ? 1 : 0;
}

/* 32-blocks per weight group, and bytes per group in a tile. */
static int group_blocks(int fmt, int cols)
{
    return FORMATS[fmt].group ? FORMATS[fmt].group / 32 : cols / 32;
}

static size_t group_bytes(int fmt, int cols)
{
    const fmt_info *f = &FORMATS[fmt];
    return (size_t)group_blocks(fmt, cols) * f->planes * block_bytes(fmt) + (f->planes + f->offset) * tile_rows(fmt) * 2;
}

static size_t tile_bytes(const edgeq_llm_mat *w)
{
    return (groups_of(&FORMATS[w->fmt], w->cols) * group_bytes(w->fmt, w->cols) + 63) / 64 * 64;
}

int64_t edgeq_llm_tiles_size(const edgeq_llm_mat *w)
{
    return mat_ok(w, w->rows, w->cols) ? (int64_t)tile_bytes(w) * ((w->rows + tile_rows(w->fmt) - 1) / tile_rows(w->fmt))
                                       : -1;
}

int edgeq_llm_make_tiles(edgeq_llm_mat *w, uint8_t *buf)
{
    const fmt_info *f = format_of(w->fmt);
    int8_t vals[MAX_PLANES * EDGEQ_LLM_MAX_COLS];
    int32_t r;
    if (edgeq_llm_tiles_size(w) < 0)
        return EDGEQ_LLM_E_MODEL;
    {
        const int cols = w->cols, nb = cols / 32, ng = groups_of(f, cols), planes = f->planes, fmt = w->fmt;
        const int bb = block_bytes(fmt), bias = code_bias(fmt), gb = group_blocks(fmt, cols), tr = tile_rows(fmt);
        const size_t tb = tile_bytes(w), gbytes = group_bytes(fmt, cols);
        memset(buf, 0, tb * ((w->rows + tr - 1) / tr));
        for (r = 0; r < w->rows; r++) {
            const int8_t *v = row_values(w, f, r, vals);
            uint8_t *base = buf + (size_t)(r / tr) * tb;
            int i = r % tr, b, p, j, g;
            for (b = 0; b < nb; b++)
                for (p = 0; p < planes; p++) {
                    uint8_t *blk = base + (b / gb) * gbytes + (size_t)((b % gb) * planes + p) * bb;
                    for (j = 0; j < 32; j++) {
                        int q = j / 4, at = 4 * i + j % 4;
                        unsigned u = (unsigned)(v[(size_t)p * cols + 32 * b + j] + bias);
                        if (fmt == EDGEQ_LLM_FMT_INT8)
                            blk[64 * q + at] = (uint8_t)u;
                        else if (fmt == EDGEQ_LLM_FMT_INT4)
                            blk[64 * (q % 4) + at] |= (uint8_t)(u << (4 * (q / 4)));
                        else if (fmt <= EDGEQ_LLM_FMT_PTQTP)
                            blk[64 * (q % 2) + at] |= (uint8_t)(u << (2 * (q / 2)));
                        else
                            blk[32 * (q % 4) + i] |= (uint8_t)(u << (4 * (q / 4) + j % 4));
                    }
                }
            for (g = 0; g < ng; g++) {
                uint16_t *sd = (uint16_t *)(base + g * gbytes + (size_t)gb * planes * bb);
                for (p = 0; p < planes; p++)
                    sd[p * tr + i] = w->d[((size_t)r * ng + g) * planes + p];
                if (f->offset)
                    sd[planes * tr + i] = w->m[(size_t)r * ng + g];
            }
        }
    }
    w->tiles = buf;
    return EDGEQ_LLM_OK;
}

static int mat_ready(const edgeq_llm_mat *w, int32_t rows, int32_t cols)
{
    return mat_ok(w, rows, cols) && w->tiles;
}

/* The 8 quads' codes of one (block, plane) of a tile, as unsigned bytes, lane i = row i. */
INLINE void block_codes(const int fmt, const uint8_t *blk, __m512i *c)
{
    int j;
    if (fmt == EDGEQ_LLM_FMT_INT8) {
        UNROLL
        for (j = 0; j < 8; j++)
            c[j] = _mm512_loadu_si512(blk + 64 * j);
    } else if (fmt == EDGEQ_LLM_FMT_INT4) {
        UNROLL
        for (j = 0; j < 4; j++) {
            __m512i b = _mm512_loadu_si512(blk + 64 * j);
            c[j] = _mm512_and_si512(b, _mm512_set1_epi8(15));
#if defined(__GFNI__)
            /* gf2p8affine: byte 7-i of the matrix selects output bit i (here bits 4-7 -> 0-3) */
            c[j + 4] = _mm512_gf2p8affine_epi64_epi8(b, _mm512_set1_epi64(0x1020408000000000LL), 0);
#else
            c[j + 4] = _mm512_and_si512(_mm512_srli_epi16(b, 4), _mm512_set1_epi8(15));
#endif
        }
    } else {
        UNROLL
        for (j = 0; j < 2; j++) {
            __m512i b = _mm512_loadu_si512(blk + 64 * j);
#if defined(__GFNI__)
            c[j] = _mm512_gf2p8affine_epi64_epi8(b, _mm512_set1_epi64(0x0102000000000000LL), 0);
            c[j + 2] = _mm512_gf2p8affine_epi64_epi8(b, _mm512_set1_epi64(0x0408000000000000LL), 0);
            c[j + 4] = _mm512_gf2p8affine_epi64_epi8(b, _mm512_set1_epi64(0x1020000000000000LL), 0);
            c[j + 6] = _mm512_gf2p8affine_epi64_epi8(b, _mm512_set1_epi64(0x4080000000000000LL), 0);
#else
            c[j] = _mm512_and_si512(b, _mm512_set1_epi8(3));
            c[j + 2] = _mm512_and_si512(_mm512_srli_epi16(b, 2), _mm512_set1_epi8(3));
            c[j + 4] = _mm512_and_si512(_mm512_srli_epi16(b, 4), _mm512_set1_epi8(3));
            c[j + 6] = _mm512_and_si512(_mm512_srli_epi16(b, 6), _mm512_set1_epi8(3));
#endif
        }
    }
}

/* s + the dot products of the 16 rows of codes c with 4 activations at x, broadcast to every lane straight
   from memory (vpdpbusd's embedded broadcast). Written as an asm statement because, from intrinsics, the
   compiler hoisted the broadcasts out of the plane loop (the same activations serve every plane) and
   spilled 32 registers of them to the stack every block: 30% of lut2's prefill time. */
INLINE __m512i dot4(__m512i s, __m512i c, const int8_t *x)
{
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(s) : "v"(c), "m"(*(const int32_t(*)[1])x));
    return s;
}

/* Dot products of the 16 rows of codes c with the 32 activations xb, starting from start (two independent
   sums: faster than one, even with several tokens in flight). */
INLINE __m512i block_dot(const __m512i *c, const int8_t *xb, int32_t start)
{
    __m512i s[2];
    int j;
    s[0] = _mm512_set1_epi32(start);
    s[1] = _mm512_setzero_si512();
    UNROLL
    for (j = 0; j < 8; j++)
        s[j % 2] = dot4(s[j % 2], c[j], xb + 4 * j);
    return _mm512_add_epi32(s[0], s[1]);
}

/* Decode streams every weight once: the passes ask for the codes this far ahead of the ones they read (tiles
   are contiguous, so this reaches into the next tile), which keeps enough lines in flight for one thread
   to approach the copy bandwidth. */
#ifndef PREFETCH_AHEAD
#define PREFETCH_AHEAD 4096
#endif

/* Block b of a tile (gb blocks per group, gbytes per group, bb code bytes per plane): the start of its codes,
   all planes, and (sd) its group's scales and offsets; in decode, asks for the codes PREFETCH_AHEAD on. */
INLINE const uint8_t *block_at(const uint8_t *tile, int b, int gb, size_t gbytes, int planes, int bb, int prefetch,
                               const uint16_t **sd)
{
    const uint8_t *grp = tile + (b / gb) * gbytes, *codes = grp + (size_t)(b % gb) * planes * bb;
    int o;
    *sd = (const uint16_t *)(grp + (size_t)gb * planes * bb);
    for (o = 0; prefetch && o < planes * bb; o += 64)
        __builtin_prefetch(codes + o + PREFETCH_AHEAD, 0, 0);
    return codes;
}

/* Tokens per pass in prefill: the codes of a block are decoded once for them. 8 was 8-13% faster than 4
   for the one-plane formats; with two or three planes 8 spills registers (lut2 1.6x slower). */
#define MAX_BATCH_TOKENS 8
#define BATCH_TOKENS(fmt) ((fmt) <= EDGEQ_LLM_FMT_TERNARY ? MAX_BATCH_TOKENS : 4)

/* Tile `tile` (16 rows) times T tokens: y[t * rows + 16 tile + i] (fmt, planes, offset, T constant after
   inlining). */
INLINE void tile_pass(const int fmt, const int planes, const int offset, const int T, const edgeq_llm_mat *w,
                      int32_t tile, const int8_t *xq, const float *xs, const int32_t *xsum, float *y)
{
    const int cols = w->cols, nb = cols / 32, bb = block_bytes(fmt), bias = code_bias(fmt), gb = group_blocks(fmt, cols);
    const size_t gbytes = group_bytes(fmt, cols);
    const uint8_t *base = w->tiles + (size_t)tile * tile_bytes(w);
    const int32_t left = w->rows - tile * TILE_ROWS;
    const __mmask16 rows = left >= TILE_ROWS ? 0xffff : (__mmask16)((1u << left) - 1);
    __m512 acc[MAX_BATCH_TOKENS], tt[MAX_BATCH_TOKENS];
    int b, p, t;
    UNROLL
    for (t = 0; t < T; t++)
        acc[t] = tt[t] = _mm512_setzero_ps();
    for (b = 0; b < nb; b++) {
        const uint16_t *sd;
        const uint8_t *codes = block_at(base, b, gb, gbytes, planes, bb, T == 1, &sd);
        for (p = 0; p < planes; p++) {
            __m512i c[8];
            const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sd + p * TILE_ROWS)));
            block_codes(fmt, codes + (size_t)p * bb, c);
            UNROLL
            for (t = 0; t < T; t++) {
                __m512i s = block_dot(c, xq + (size_t)t * cols + 32 * b, -bias * xsum[(size_t)t * nb + b]);
                __m512 f = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(s));
                tt[t] = p ? _mm512_add_ps(tt[t], f) : f;
            }
        }
        if (offset) {
            const __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sd + planes * TILE_ROWS)));
            UNROLL
            for (t = 0; t < T; t++)
                tt[t] = _mm512_add_ps(tt[t], _mm512_mul_ps(mv, _mm512_set1_ps((float)xsum[(size_t)t * nb + b])));
        }
        UNROLL
        for (t = 0; t < T; t++)
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(tt[t], _mm512_set1_ps(xs[(size_t)t * nb + b])));
    }
    UNROLL
    for (t = 0; t < T; t++)
        _mm512_mask_storeu_ps(y + (size_t)t * w->rows + (size_t)tile * TILE_ROWS, rows, acc[t]);
}

/* The activations' subset sums for the bit planes: lut[(t * cols / 4 + q) * 32 + p] = the sum of x[4 q + k] over
   the bits k of p % 16 (the 16 sums twice, so a vpermw of 32 lanes indexes them with a nibble), int16
   (|sum| <= 508; a 32-block's 8 add up to at most 4064). Items i0 .. i1-1 of the n * cols / 4. */
static void build_luts(const int8_t *xq, int32_t i0, int32_t i1, int16_t *lut)
{
    static const __mmask32 bit[4] = {0xaaaaaaaau, 0xccccccccu, 0xf0f0f0f0u, 0xff00ff00u};
    int32_t i;
    int k;
    for (i = i0; i < i1; i++) {
        __m512i e = _mm512_setzero_si512();
        UNROLL
        for (k = 0; k < 4; k++)
            e = _mm512_mask_add_epi16(e, bit[k], e, _mm512_set1_epi16(xq[4 * i + k]));
        _mm512_storeu_si512(lut + 32 * (size_t)i, e);
    }
}

/* Tile `tile` (32 rows) of a bit-plane format times T tokens, from the tables of build_luts. */
INLINE void tile_pass_bits(const int fmt, const int planes, const int T, const edgeq_llm_mat *w, int32_t tile,
                           const int16_t *lut, const float *xs, const int32_t *xsum, float *y)
{
    const int cols = w->cols, nb = cols / 32, nq = cols / 4, bb = block_bytes(fmt), gb = group_blocks(fmt, cols);
    const size_t gbytes = group_bytes(fmt, cols);
    const uint8_t *base = w->tiles + (size_t)tile * tile_bytes(w);
    const int32_t left = w->rows - tile * BIT_TILE_ROWS;
    const __mmask16 rows[2] = {left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1),
                               left >= 32 ? 0xffff : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0};
    __m512 acc[4][2], tt[4][2];
    int b, p, t, h, j;
    UNROLL
    for (t = 0; t < T; t++)
        acc[t][0] = acc[t][1] = tt[t][0] = tt[t][1] = _mm512_setzero_ps();
    for (b = 0; b < nb; b++) {
        const uint16_t *sd;
        const uint8_t *codes = block_at(base, b, gb, gbytes, planes, bb, T == 1, &sd);
        for (p = 0; p < planes; p++) {
            const uint8_t *blk = codes + (size_t)p * bb;
            __m512i idx[8];
            __m512 dv[2];
            UNROLL
            for (j = 0; j < 4; j++) {
                idx[j] = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(blk + 32 * j)));
                idx[j + 4] = _mm512_srli_epi16(idx[j], 4); /* vpermw reads the low 5 bits: the tables are doubled */
            }
            UNROLL
            for (h = 0; h < 2; h++)
                dv[h] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sd + p * BIT_TILE_ROWS + 16 * h)));
            UNROLL
            for (t = 0; t < T; t++) {
                const int16_t *lt = lut + ((size_t)t * nq + 8 * b) * 32;
                __m512i s0 = _mm512_permutexvar_epi16(idx[0], _mm512_loadu_si512(lt));
                __m512i s1 = _mm512_permutexvar_epi16(idx[1], _mm512_loadu_si512(lt + 32));
                UNROLL
                for (j = 2; j < 8; j += 2) {
                    s0 = _mm512_add_epi16(s0, _mm512_permutexvar_epi16(idx[j], _mm512_loadu_si512(lt + 32 * j)));
                    s1 = _mm512_add_epi16(s1, _mm512_permutexvar_epi16(idx[j + 1], _mm512_loadu_si512(lt + 32 * j + 32)));
                }
                s0 = _mm512_add_epi16(s0, s1);
                UNROLL
                for (h = 0; h < 2; h++) {
                    __m512i d = _mm512_cvtepi16_epi32(h ? _mm512_extracti64x4_epi64(s0, 1) : _mm512_castsi512_si256(s0));
                    __m512 f = _mm512_mul_ps(dv[h], _mm512_cvtepi32_ps(d));
                    tt[t][h] = p ? _mm512_add_ps(tt[t][h], f) : f;
                }
            }
        }
        UNROLL
        for (h = 0; h < 2; h++) {
            const __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sd + planes * BIT_TILE_ROWS + 16 * h)));
            UNROLL
            for (t = 0; t < T; t++) {
                tt[t][h] = _mm512_add_ps(tt[t][h], _mm512_mul_ps(mv, _mm512_set1_ps((float)xsum[(size_t)t * nb + b])));
                acc[t][h] = _mm512_add_ps(acc[t][h], _mm512_mul_ps(tt[t][h], _mm512_set1_ps(xs[(size_t)t * nb + b])));
            }
        }
    }
    UNROLL
    for (t = 0; t < T; t++)
        UNROLL
        for (h = 0; h < 2; h++)
            _mm512_mask_storeu_ps(y + (size_t)t * w->rows + (size_t)tile * BIT_TILE_ROWS + 16 * h, rows[h], acc[t][h]);
}

INLINE void tiles_fmt(const int fmt, const int planes, const int offset, const edgeq_llm_mat *w, int32_t tile,
                      const int8_t *xq, const float *xs, const int32_t *xsum, const int16_t *lut, int32_t n, float *y)
{
    const int cols = w->cols, nb = cols / 32;
    int32_t t;
    if (is_bits(fmt)) {
        for (t = 0; t + BIT_BATCH_TOKENS <= n; t += BIT_BATCH_TOKENS)
            tile_pass_bits(fmt, planes, BIT_BATCH_TOKENS, w, tile, lut + (size_t)t * cols * 8, xs + (size_t)t * nb,
                           xsum + (size_t)t * nb, y + (size_t)t * w->rows);
        for (; t < n; t++)
            tile_pass_bits(fmt, planes, 1, w, tile, lut + (size_t)t * cols * 8, xs + (size_t)t * nb,
                           xsum + (size_t)t * nb, y + (size_t)t * w->rows);
        return;
    }
    for (t = 0; t + BATCH_TOKENS(fmt) <= n; t += BATCH_TOKENS(fmt))
        tile_pass(fmt, planes, offset, BATCH_TOKENS(fmt), w, tile, xq + (size_t)t * cols, xs + (size_t)t * nb,
                  xsum + (size_t)t * nb, y + (size_t)t * w->rows);
    for (; t < n; t++)
        tile_pass(fmt, planes, offset, 1, w, tile, xq + (size_t)t * cols, xs + (size_t)t * nb, xsum + (size_t)t * nb,
                  y + (size_t)t * w->rows);
}

/* One function per format (kept apart: inlined into one switch, the code generated for one format changed
   with the others', ternary prefill by 25%). */
#define TILES_FN(name, fmt, planes, offset)                                                                   \
    static __attribute__((noinline)) void name(const edgeq_llm_mat *w, int32_t tile, const int8_t *xq,       \
                                               const float *xs, const int32_t *xsum, const int16_t *lut,    \
                                               int32_t n, float *y)                                          \
    {                                                                                                        \
        tiles_fmt(fmt, planes, offset, w, tile, xq, xs, xsum, lut, n, y);                                    \
    }
TILES_FN(tiles_int8, EDGEQ_LLM_FMT_INT8, 1, 0)
TILES_FN(tiles_int4, EDGEQ_LLM_FMT_INT4, 1, 0)
TILES_FN(tiles_ternary, EDGEQ_LLM_FMT_TERNARY, 1, 0)
TILES_FN(tiles_ptqtp, EDGEQ_LLM_FMT_PTQTP, 2, 0)
TILES_FN(tiles_lut2, EDGEQ_LLM_FMT_LUT2, 2, 1)
TILES_FN(tiles_lut3, EDGEQ_LLM_FMT_LUT3, 3, 1)

/* Step s of a mat-vec: tile s for all n tokens. */
static void matvec_step(const edgeq_llm_mat *w, int32_t s, const int8_t *xq, const float *xs, const int32_t *xsum,
                        const int16_t *lut, int32_t n, float *y)
{
    static void (*const fns[7])(const edgeq_llm_mat *, int32_t, const int8_t *, const float *, const int32_t *,
                                const int16_t *, int32_t, float *) = {0, tiles_int8, tiles_int4, tiles_ternary,
                                                                      tiles_ptqtp, tiles_lut2, tiles_lut3};
    fns[w->fmt](w, s, xq, xs, xsum, lut, n, y);
}

/* int16 words of activation tables per column (build_luts) */
#define LUT_WORDS_PER_COL 8

static int step_rows(int fmt)
{
    return tile_rows(fmt);
}
/* The tile passes prefetch PREFETCH_AHEAD bytes ahead as they go in decode; asking for a whole tile at its
   start instead (a burst of up to 150 lines) made int8 decode 25% slower. */
static void prefetch_step(const edgeq_llm_mat *w, int32_t s)
{
    (void)w, (void)s;
}
#else
/* ---- portable paths: a row is unpacked into signed plane values, one row and token at a time ---- */
#define LUT_WORDS_PER_COL 0

static int step_rows(int fmt)
{
    (void)fmt;
    return 1;
}

static int is_bits(int fmt)
{
    (void)fmt;
    return 0; /* no activation tables here */
}

static void build_luts(const int8_t *xq, int32_t i0, int32_t i1, int16_t *lut)
{
    (void)xq, (void)i0, (void)i1, (void)lut;
}

int64_t edgeq_llm_tiles_size(const edgeq_llm_mat *w)
{
    return mat_ok(w, w->rows, w->cols) ? 0 : -1;
}

int edgeq_llm_make_tiles(edgeq_llm_mat *w, uint8_t *buf)
{
    (void)buf;
    return mat_ok(w, w->rows, w->cols) ? EDGEQ_LLM_OK : EDGEQ_LLM_E_MODEL;
}

static int mat_ready(const edgeq_llm_mat *w, int32_t rows, int32_t cols)
{
    return mat_ok(w, rows, cols);
}

#define MAX_GROUPS (EDGEQ_LLM_MAX_COLS / 32)

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

#if defined(__AVX2__)
#define SIMD_NAME "avx2"
/* sum of v * x over 32 columns */
static int32_t dot32(const int8_t *v, const int8_t *x)
{
    __m256i a = _mm256_loadu_si256((const __m256i *)v), b = _mm256_loadu_si256((const __m256i *)x);
    /* |v|, |x| <= 127: |v| * sign(x, v) pairs fit int16 */
    __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a)),
                                  _mm256_set1_epi16(1));
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
    return _mm_cvtsi128_si32(h);
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
static int32_t dot32(const int8_t *v, const int8_t *x)
{
    return vaddvq_s32(vaddq_s32(dots4(vld1q_s8(v), vld1q_s8(x)), dots4(vld1q_s8(v + 16), vld1q_s8(x + 16))));
}
#else
#define SIMD_NAME "scalar"
static int32_t dot32(const int8_t *v, const int8_t *x)
{
    int32_t s = 0;
    int i;
    for (i = 0; i < 32; i++)
        s += (int32_t)v[i] * x[i];
    return s;
}
#endif

/* One row times one token, in llm_formats.matvec's order. */
static float row_dot(const fmt_info *f, int cols, const int8_t *v, const float *ds, const float *ms, const int8_t *x,
                     const float *xs, const int32_t *xsum)
{
    int group = f->group ? f->group : cols, planes = f->planes, b, p;
    float acc = 0.0f;
    for (b = 0; b < cols / 32; b++) {
        int g = 32 * b / group;
        float t = ds[g * planes] * (float)dot32(v + 32 * b, x + 32 * b);
        for (p = 1; p < planes; p++)
            t = t + ds[g * planes + p] * (float)dot32(v + (size_t)p * cols + 32 * b, x + 32 * b);
        if (f->offset)
            t = t + ms[g] * (float)xsum[b];
        acc = acc + t * xs[b];
    }
    return acc;
}

/* Step s of a mat-vec: row s for all n tokens. */
static void matvec_step(const edgeq_llm_mat *w, int32_t r, const int8_t *xq, const float *xs, const int32_t *xsum,
                        const int16_t *lut, int32_t n, float *y)
{
    const fmt_info *f = format_of(w->fmt);
    int8_t buf[MAX_PLANES * EDGEQ_LLM_MAX_COLS];
    float ds[MAX_PLANES * MAX_GROUPS], ms[MAX_GROUPS];
    const int cols = w->cols, ng = groups_of(f, cols);
    const int8_t *v = row_values(w, f, r, buf);
    int32_t t;
    (void)lut;
    h2f_n(w->d + (size_t)r * ng * f->planes, ng * f->planes, ds);
    if (f->offset)
        h2f_n(w->m + (size_t)r * ng, ng, ms);
    for (t = 0; t < n; t++)
        y[(size_t)t * w->rows + r] = row_dot(f, cols, v, ds, ms, xq + (size_t)t * cols, xs + (size_t)t * (cols / 32),
                                             xsum + (size_t)t * (cols / 32));
}

/* Decode streams every weight once: asking for the next row while the current one is computed keeps the
   memory system busy (the hardware prefetcher alone left a single thread well below the bandwidth it
   reaches on plain copies). */
static void prefetch_step(const edgeq_llm_mat *w, int32_t r)
{
    const size_t len = (size_t)w->cols * FORMATS[w->fmt].bits / 8;
    const char *p = (const char *)w->q + (size_t)r * len;
    size_t i;
    if (r >= w->rows)
        return;
    for (i = 0; i < len; i += 64)
        __builtin_prefetch(p + i, 0, 0);
}
#endif

/* ---- activations ----------------------------------------------------------------------------- */

#if defined(__AVX512F__)
/* One 32-block with the scalar loop's exact results: max is order-free, NaN blocks are zeroed the same way,
   x * inv, clamp and round-to-nearest-even are element-wise. */
static void quantize_block(const float *xb, int8_t *qb, float *xs, int32_t *xsum)
{
    const __m512 a = _mm512_loadu_ps(xb), b = _mm512_loadu_ps(xb + 16);
    const int nan = (_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q)) != 0;
    const float amax = nan ? 0.0f : _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    __m512i q[2];
    int h;
    *xs = amax / 127.0f;
    for (h = 0; h < 2; h++) {
        __m512 v = _mm512_mul_ps(h ? b : a, inv);
        v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);
        v = _mm512_max_ps(_mm512_min_ps(v, _mm512_set1_ps(127.0f)), _mm512_set1_ps(-127.0f));
        q[h] = _mm512_cvtps_epi32(v); /* the current rounding mode, as rintf */
        _mm_storeu_si128((__m128i *)(qb + 16 * h), _mm512_cvtepi32_epi8(q[h]));
    }
    *xsum = _mm512_reduce_add_epi32(_mm512_add_epi32(q[0], q[1]));
}
#else
static void quantize_block(const float *xb, int8_t *qb, float *xs, int32_t *xsum)
{
    float amax = 0.0f, inv;
    int32_t sum = 0;
    int nan = 0, i;
    for (i = 0; i < 32; i++) {
        float a = fabsf(xb[i]);
        nan |= a != a;
        amax = a > amax ? a : amax;
    }
    if (nan)
        amax = 0.0f;
    inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    *xs = amax / 127.0f;
    for (i = 0; i < 32; i++) {
        float v = xb[i] * inv;
        v = v != v ? 0.0f : (v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v));
        qb[i] = (int8_t)rintf(v);
        sum += qb[i];
    }
    *xsum = sum;
}
#endif

void edgeq_llm_quantize(const float *x, int32_t n, int32_t cols, int8_t *xq, float *xs, int32_t *xsum)
{
    int32_t b;
    for (b = 0; b < n * (cols / 32); b++)
        quantize_block(x + (size_t)b * 32, xq + (size_t)b * 32, xs + b, xsum + b);
}

/* Steps split across the threads of an enclosing parallel region (or run alone): call from every thread. */
static void matvec_rows(const edgeq_llm_mat *w, const int8_t *xq, const float *xs, const int32_t *xsum,
                        const int16_t *lut, int32_t n, float *y)
{
    int32_t steps = (w->rows + step_rows(w->fmt) - 1) / step_rows(w->fmt), s, t;
    if (n > 1 && is_bits(w->fmt)) {
        /* tokens outermost: a pass's tables (cols * 64 bytes a token) stay in L1 for all the thread's tiles
           (the static schedule gives each thread the same tiles for every pass) */
        const int32_t cols = w->cols, nb = cols / 32, nt = BIT_BATCH_TOKENS;
        for (t = 0; t < n; t += nt) {
#pragma omp for schedule(static) nowait
            for (s = 0; s < steps; s++)
                matvec_step(w, s, xq + (size_t)t * cols, xs + (size_t)t * nb, xsum + (size_t)t * nb,
                            lut + (size_t)t * cols * LUT_WORDS_PER_COL, n - t < nt ? n - t : nt,
                            y + (size_t)t * w->rows);
        }
        return;
    }
#pragma omp for schedule(static) nowait
    for (s = 0; s < steps; s++) {
        if (n == 1)
            prefetch_step(w, s + 1);
        matvec_step(w, s, xq, xs, xsum, lut, n, y);
    }
}

/* Several matrices over the same activations (n tokens of cols) in one parallel region: y[i] = mats[i] x.
   Each region wakes the worker threads (a futex round trip with passive waits), so q/k/v and gate/up share
   one. lut: scratch of n * cols * LUT_WORDS_PER_COL int16 for the bit-plane formats' tables. */
static void matvecs(int count, const edgeq_llm_mat *const *mats, const int8_t *xq, const float *xs,
                    const int32_t *xsum, int16_t *lut, int32_t n, float *const *ys)
{
    int i, bits = 0;
    for (i = 0; i < count; i++)
        bits |= is_bits(mats[i]->fmt);
#pragma omp parallel
    {
        int j;
        if (bits) { /* the tables, split across the threads, all built before any mat-vec reads them */
            int32_t items = n * (mats[0]->cols / 4), s, steps = (items + 63) / 64;
#pragma omp for schedule(static)
            for (s = 0; s < steps; s++)
                build_luts(xq, 64 * s, 64 * s + 64 < items ? 64 * s + 64 : items, lut);
        }
        for (j = 0; j < count; j++)
            matvec_rows(mats[j], xq, xs, xsum, lut, n, ys[j]);
    }
}

int edgeq_llm_matvec(const edgeq_llm_mat *w, const int8_t *xq, const float *xs, const int32_t *xsum, int32_t n,
                     float *y)
{
    int16_t *lut;
    if (!mat_ready(w, w->rows, w->cols) || n < 1)
        return EDGEQ_LLM_E_MODEL;
    lut = malloc(sizeof(int16_t) * ((size_t)n * w->cols * LUT_WORDS_PER_COL + 1));
    if (!lut)
        return EDGEQ_LLM_E_MODEL;
    matvecs(1, &w, xq, xs, xsum, lut, n, &y);
    free(lut);
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

/* Query heads that share a key/value head are attended together, up to HEADS_MAX at a time: V is read
   once for them, and their independent sums keep the vector units busy (one head alone waits on the
   latency of its additions: the weighted sum of V runs over positions in order). The portable paths take
   one head at a time (16-wide vectors there span several registers). */
#if defined(__AVX512F__)
#define HEADS_MAX 4
#else
#define HEADS_MAX 1
#endif

/* Attention score slots of HEADS_MAX score rows (one per thread; attention runs on at most this many
   threads). */
#define SCORE_SLOTS(m) ((m)->n_heads)
/* Position blocks of the key cache: [kv head][ctx / 16][head_dim][16], so the 16 scores of a block read
   head_dim contiguous vectors. */
#define POS_BLOCK 16
#define CTX_BLOCKS(m) (((m)->ctx + POS_BLOCK - 1) / POS_BLOCK)

typedef struct {
    float *x, *xn, *q, *k, *v, *att, *gate, *up, *tmp, *xs, *scores;
    int16_t *lut;
} work_t;

static int64_t max3(int64_t a, int64_t b, int64_t c)
{
    int64_t m = a > b ? a : b;
    return m > c ? m : c;
}

static int64_t layout(const edgeq_llm_model *m, int32_t nb, float *base, work_t *w)
{
    int64_t qd = (int64_t)m->n_heads * m->head_dim, kvd = (int64_t)m->n_kv_heads * m->head_dim, off = 0;
    float *p[12];
    int64_t sizes[12];
    int i;
    sizes[0] = sizes[1] = sizes[8] = (int64_t)nb * m->dim;
    sizes[2] = sizes[5] = nb * qd;
    sizes[3] = sizes[4] = nb * kvd;
    sizes[6] = sizes[7] = (int64_t)nb * m->ffn_dim;
    sizes[9] = (int64_t)nb * (max3(m->dim, m->ffn_dim, (int64_t)m->n_heads * m->head_dim) / 32);
    sizes[10] = (int64_t)SCORE_SLOTS(m) * HEADS_MAX * CTX_BLOCKS(m) * POS_BLOCK; /* attention scores, a slot per thread */
    sizes[11] = (int64_t)nb * max3(m->dim, m->ffn_dim, qd) * LUT_WORDS_PER_COL / 2; /* int16 tables (matvecs) */
    for (i = 0; i < 12; i++) {
        p[i] = base ? base + off : 0;
        off += (sizes[i] + 15) / 16 * 16;
    }
    if (w) {
        w->x = p[0], w->xn = p[1], w->q = p[2], w->k = p[3], w->v = p[4], w->att = p[5];
        w->gate = p[6], w->up = p[7], w->tmp = p[8], w->xs = p[9], w->scores = p[10], w->lut = (int16_t *)p[11];
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
        !mat_ready(&m->head, m->vocab, m->dim) || qd % 32 || m->dim % 8)
        return EDGEQ_LLM_E_MODEL;
    for (l = 0; l < m->n_layers; l++) {
        const edgeq_llm_layer *L = &m->layers[l];
        if (!L->attn_norm || !L->ffn_norm || !mat_ready(&L->wq, qd, m->dim) || !mat_ready(&L->wk, kvd, m->dim) ||
            !mat_ready(&L->wv, kvd, m->dim) || !mat_ready(&L->wo, m->dim, qd) || !mat_ready(&L->gate, m->ffn_dim, m->dim) ||
            !mat_ready(&L->up, m->ffn_dim, m->dim) || !mat_ready(&L->down, m->dim, m->ffn_dim))
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
    sizes[3] = (int64_t)m->n_layers * m->n_kv_heads * m->head_dim * CTX_BLOCKS(m) * POS_BLOCK;
    return EDGEQ_LLM_OK;
}

/* Quantize n rows of x [n, cols] and multiply by w: y [n, w->rows]. */
static void linear(edgeq_llm_state *s, work_t *w, const edgeq_llm_mat *mat, const float *x, int32_t n, float *y)
{
    edgeq_llm_quantize(x, n, mat->cols, s->xq, w->xs, s->xsum);
    matvecs(1, &mat, s->xq, w->xs, s->xsum, w->lut, n, &y);
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

/* For heads i < H: o[i * hd + ...] (NV vectors of VT) = sum over positions p in order of sc[i * stride + p] *
   v[p] (rows kvd apart), then / total[i]. One body for 64 dimensions in 16-wide vectors and 8 in 8-wide ones;
   H is a constant after inlining. */
#define WEIGH_VALUES(name, VT, NV)                                                                             \
    static inline __attribute__((always_inline)) void name(const float *v, int32_t kvd, const float *sc,     \
                                                           int32_t stride, int32_t n, const float *total,    \
                                                           float *o, int32_t hd, const int H)                \
    {                                                                                                        \
        const int w = (int)(sizeof(VT) / sizeof(float));                                                    \
        VT acc[HEADS_MAX][NV], r;                                                                            \
        int32_t p;                                                                                           \
        int u, i;                                                                                            \
        for (u = 0; u < NV; u++) {                                                                           \
            memcpy(&r, v + w * u, sizeof r);                                                                 \
            for (i = 0; i < H; i++)                                                                          \
                acc[i][u] = sc[i * stride] * r;                                                              \
        }                                                                                                    \
        for (p = 1; p < n; p++)                                                                              \
            for (u = 0; u < NV; u++) {                                                                       \
                memcpy(&r, v + (size_t)p * kvd + w * u, sizeof r);                                           \
                for (i = 0; i < H; i++)                                                                      \
                    acc[i][u] = acc[i][u] + sc[i * stride + p] * r;                                          \
            }                                                                                                \
        for (i = 0; i < H; i++)                                                                              \
            for (u = 0; u < NV; u++) {                                                                       \
                acc[i][u] = acc[i][u] / total[i];                                                            \
                memcpy(o + (size_t)i * hd + w * u, &acc[i][u], sizeof acc[i][u]);                            \
            }                                                                                                \
    }
WEIGH_VALUES(weigh_values64, vf16, 4)
WEIGH_VALUES(weigh_values8, vf8, 1)

/* Softmax numerators of n scores in place (zeros up to the next 16-position block), returns their total:
   position p into lane p % 16, lanes folded in halves (llm_reference). */
static float softmax16(float *sc, int32_t n)
{
    vf16 lanes, r;
    float l[16], mx = sc[0];
    int32_t p, j;
    for (p = 1; p < n; p++)
        mx = sc[p] > mx ? sc[p] : mx;
    for (p = 0; p < n; p++)
        sc[p] = exp_f32(sc[p] - mx);
    for (; p % POS_BLOCK; p++)
        sc[p] = 0.0f;
    memcpy(&lanes, sc, sizeof lanes);
    for (p = POS_BLOCK; p < n; p += POS_BLOCK) {
        memcpy(&r, sc + p, sizeof r);
        lanes = lanes + r;
    }
    memcpy(l, &lanes, sizeof l);
    for (j = 8; j >= 1; j /= 2)
        for (p = 0; p < j; p++)
            l[p] = l[p] + l[p + j];
    return l[0];
}

/* Query heads h0 .. h0 + H - 1 (H <= HEADS_MAX, one key/value head) of one token over positions 0 .. last
   (whole 16-position blocks are scored; the cache and sc are padded to them, and the scores past `last` are
   not used). q, o: head h0's query and output (the others follow, head_dim apart); sc: scratch of
   HEADS_MAX * CTX_BLOCKS * 16 floats. */
static inline __attribute__((always_inline)) void attend(const edgeq_llm_model *m, const float *kt, const float *vc,
                                                         const float *q, int32_t h0, const int H, int32_t last,
                                                         float *sc, float *o)
{
    int32_t hd = m->head_dim, kvd = m->n_kv_heads * hd, kvh = h0 / (m->n_heads / m->n_kv_heads);
    int32_t n = last + 1, stride = CTX_BLOCKS(m) * POS_BLOCK, p, j;
    const float *k = kt + (size_t)kvh * stride * hd, *v = vc + (size_t)kvh * hd;
    float total[HEADS_MAX];
    int i;
    for (i = 0; i < H; i++) {
        for (p = 0; p < n; p += POS_BLOCK)
            scores16(q + (size_t)i * hd, k + (size_t)p * hd, hd, m->kq_scale, sc + (size_t)i * stride + p);
        total[i] = softmax16(sc + (size_t)i * stride, n);
    }
    for (j = 0; j + 64 <= hd; j += 64)
        weigh_values64(v + j, kvd, sc, stride, n, total, o + j, hd, H);
    for (; j < hd; j += 8) /* head_dim is a multiple of 8 */
        weigh_values8(v + j, kvd, sc, stride, n, total, o + j, hd, H);
}

/* The most heads of one key/value group, at most HEADS_MAX, that divide it evenly. */
static int heads_per_pass(const edgeq_llm_model *m)
{
    int g = m->n_heads / m->n_kv_heads, h = HEADS_MAX;
    while (g % h)
        h--;
    return h;
}

/* Attention of n tokens (token t at position pos + t, its keys and values already cached), one parallel loop
   over (token, group of heads) pairs, dealt out round robin (later tokens attend to more positions); each
   thread scores into its own slot of `scratch` (`slots` of them). */
static void attention(const edgeq_llm_model *m, const float *kt, const float *vc, const float *q, int32_t n,
                      int32_t pos, float *scratch, int32_t slots, float *out)
{
    const int H = heads_per_pass(m);
    int32_t qd = m->n_heads * m->head_dim, passes = m->n_heads / H, units = n * passes, i;
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads() < slots ? omp_get_max_threads() : slots;
#endif
    (void)slots, (void)threads;
#pragma omp parallel for schedule(static, 1) num_threads(threads)
    for (i = 0; i < units; i++) {
        int32_t t = i / passes, h0 = i % passes * H, slot = 0;
        const float *qh = q + (size_t)t * qd + (size_t)h0 * m->head_dim;
        float *sc, *o = out + (size_t)t * qd + (size_t)h0 * m->head_dim;
#ifdef _OPENMP
        slot = omp_get_thread_num();
#endif
        sc = scratch + (size_t)slot * HEADS_MAX * CTX_BLOCKS(m) * POS_BLOCK;
        switch (H) { /* H constant in each call: its loops unroll and its sums stay in registers */
#if HEADS_MAX == 4
        case 4:
            attend(m, kt, vc, qh, h0, 4, pos + t, sc, o);
            break;
        case 3:
            attend(m, kt, vc, qh, h0, 3, pos + t, sc, o);
            break;
        case 2:
            attend(m, kt, vc, qh, h0, 2, pos + t, sc, o);
            break;
#endif
        default:
            attend(m, kt, vc, qh, h0, 1, pos + t, sc, o);
        }
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
            matvecs(3, mats, s->xq, w.xs, s->xsum, w.lut, n, ys);
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
            matvecs(2, mats, s->xq, w.xs, s->xsum, w.lut, n, ys);
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
