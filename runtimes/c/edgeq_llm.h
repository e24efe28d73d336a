/*
 * edgeq LLM decoder kernels: C99 plus GCC/Clang vector extensions, bit-exact with
 * runtimes/llm_reference.py and runtimes/llm_formats.py.
 *
 * Weight formats (llm_formats.FORMATS; byte layouts in docs/llm-formats.md) share one mat-vec: integer dot
 * products per plane over each 32-column activation block, combined in float32 in the fixed order of
 * llm_formats.py (one convert and multiply per row, block and plane). Build with -ffp-contract=off (or
 * -std=c99, which implies it with GCC) and without -ffast-math: the float order is part of the spec.
 *
 * SIMD paths are chosen by compile-time macros: AVX-512 VNNI (__AVX512VNNI__, with GFNI code decoding when
 * __GFNI__; it runs on a copy of each matrix re-laid out in tiles of 16 or 32 rows, see edgeq_llm_make_tiles
 * and docs/llm-formats.md; lut2/lut3 by table lookups), AVX2,
 * AArch64 NEON with dotprod (__ARM_FEATURE_DOTPROD) or plain NEON, else scalar C. Rows of
 * a mat-vec and (token, head) pairs of attention are split across OpenMP threads when built with -fopenmp.
 * Float vector code only does element-wise IEEE operations in the spec's order, so every path gives the
 * same bits.
 *
 *   EDGEQ_LLM_MAX_COLS  longest matrix row the stack buffers hold (default 16384).
 */
#ifndef EDGEQ_LLM_H
#define EDGEQ_LLM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes. */
#define EDGEQ_LLM_OK 0
#define EDGEQ_LLM_E_MODEL (-1) /* inconsistent dimensions or unknown format */
#define EDGEQ_LLM_E_TOKEN (-2) /* token id outside the vocabulary */
#define EDGEQ_LLM_E_POS (-3)   /* positions past the context length */
#define EDGEQ_LLM_E_BATCH (-4) /* more tokens than the state was sized for */

/* ---- API (cffi binds this section) */

/* Format codes: llm_formats.WeightFormat.code. */
#define EDGEQ_LLM_FMT_INT8 1
#define EDGEQ_LLM_FMT_INT4 2
#define EDGEQ_LLM_FMT_TERNARY 3
#define EDGEQ_LLM_FMT_PTQTP 4
#define EDGEQ_LLM_FMT_LUT2 5
#define EDGEQ_LLM_FMT_LUT3 6

/* A packed matrix [rows, cols]: q codes, d float16 scales [rows, groups * planes], m float16 offsets
   [rows, groups] (lut formats; else NULL); tiles: the layout the compiled SIMD path multiplies, filled by
   edgeq_llm_make_tiles (NULL when edgeq_llm_tiles_size is 0). */
typedef struct {
    int32_t fmt;
    int32_t rows;
    int32_t cols;
    const void *q;
    const uint16_t *d;
    const uint16_t *m;
    const uint8_t *tiles;
} edgeq_llm_mat;

typedef struct {
    const float *attn_norm;
    const float *ffn_norm;
    edgeq_llm_mat wq;
    edgeq_llm_mat wk;
    edgeq_llm_mat wv;
    edgeq_llm_mat wo;
    edgeq_llm_mat gate;
    edgeq_llm_mat up;
    edgeq_llm_mat down;
} edgeq_llm_layer;

typedef struct {
    int32_t n_layers;
    int32_t dim;
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t ffn_dim;
    int32_t vocab;
    int32_t ctx;
    float eps;
    float kq_scale;
    const float *rope_cos; /* [ctx, head_dim / 2] */
    const float *rope_sin;
    const float *out_norm;
    edgeq_llm_mat embed; /* int8, [vocab, dim] */
    edgeq_llm_mat head;  /* [vocab, dim]; the embedding when tied */
    const edgeq_llm_layer *layers;
} edgeq_llm_model;

/* Buffers owned by the caller, sized by edgeq_llm_state_sizes for max_batch tokens per call. */
typedef struct {
    int32_t max_batch;
    float *k_cache; /* [n_layers, n_kv_heads, ctx / 16 (rounded up), head_dim, 16] (blocks for the scores) */
    float *v_cache; /* [n_layers, ctx, n_kv_heads, head_dim] */
    float *work;
    int8_t *xq;
    int32_t *xsum;  /* sums of the quantized activations per 32-block */
} edgeq_llm_state;

/* Bytes of the tiled copy of w the compiled SIMD path multiplies (0: it uses q, d, m as they are; -1: w is
   invalid). Every layer matrix and the head need edgeq_llm_make_tiles into a buffer of that size (kept
   alive as long as w) before edgeq_llm_validate / forward / matvec accept them. */
int64_t edgeq_llm_tiles_size(const edgeq_llm_mat *w);
int edgeq_llm_make_tiles(edgeq_llm_mat *w, uint8_t *buf);
/* sizes[0] floats of work, sizes[1] bytes of xq, sizes[2] int32 of xsum, sizes[3] floats of k_cache;
   EDGEQ_LLM_E_MODEL if invalid. */
int edgeq_llm_state_sizes(const edgeq_llm_model *m, int32_t max_batch, int64_t *sizes);
int edgeq_llm_validate(const edgeq_llm_model *m);
/* Run n tokens at positions pos .. pos+n-1; logits [n, vocab] (all_logits) or [vocab] (last token). */
int edgeq_llm_forward(const edgeq_llm_model *m, edgeq_llm_state *s, const int32_t *tokens, int32_t n,
                      int32_t pos, float *logits, int32_t all_logits);
/* The building blocks, exposed for the bit-exactness tests: xsum = sums of xq per 32-block; matvec
   allocates its own scratch for the bit-plane formats' activation tables (EDGEQ_LLM_E_MODEL if it cannot). */
void edgeq_llm_quantize(const float *x, int32_t n, int32_t cols, int8_t *xq, float *xs, int32_t *xsum);
int edgeq_llm_matvec(const edgeq_llm_mat *w, const int8_t *xq, const float *xs, const int32_t *xsum,
                     int32_t n, float *y);
void edgeq_llm_set_threads(int n);
int edgeq_llm_get_threads(void);
const char *edgeq_llm_simd(void);

#ifdef __cplusplus
}
#endif

#endif
