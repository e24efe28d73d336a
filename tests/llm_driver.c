/* Test driver for runtimes/c/edgeq_llm.c outside Python (cross-compiled for AArch64 and run under qemu,
   or built for the host without SIMD flags). Reads a model + tokens file written by
   tests/test_llm_native.py from stdin, runs edgeq_llm_forward in batches, writes all logits (float32) to
   stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeq_llm.h"

static void *read_array(void)
{
    long long n;
    void *p;
    if (fread(&n, sizeof n, 1, stdin) != 1 || n < 0)
        exit(3);
    p = malloc(n ? (size_t)n : 1);
    if (!p || (n && fread(p, 1, (size_t)n, stdin) != (size_t)n))
        exit(4);
    return n ? p : NULL;
}

static void read_mat(edgeq_llm_mat *m)
{
    int32_t h[3];
    if (fread(h, sizeof h, 1, stdin) != 1)
        exit(5);
    m->fmt = h[0], m->rows = h[1], m->cols = h[2];
    m->q = read_array();
    m->d = read_array();
    m->m = read_array();
    m->tiles = NULL;
}

/* The tiled copy the compiled SIMD path multiplies (edgeq_llm.h). */
static void tile_mat(edgeq_llm_mat *m)
{
    int64_t size = edgeq_llm_tiles_size(m);
    uint8_t *buf;
    if (size < 0)
        exit(6);
    buf = malloc(size ? (size_t)size : 1);
    if (!buf || edgeq_llm_make_tiles(m, buf) != 0)
        exit(7);
}

int main(void)
{
    int32_t h[10], i, j, rc, n_tokens, max_batch;
    float f[2];
    int64_t sizes[4];
    edgeq_llm_model m;
    edgeq_llm_layer *layers;
    edgeq_llm_state s;
    int32_t *tokens;
    float *logits;
    if (fread(h, sizeof h, 1, stdin) != 1 || fread(f, sizeof f, 1, stdin) != 1)
        return 2;
    m.n_layers = h[0], m.dim = h[1], m.n_heads = h[2], m.n_kv_heads = h[3], m.head_dim = h[4];
    m.ffn_dim = h[5], m.vocab = h[6], m.ctx = h[7], n_tokens = h[8], max_batch = h[9];
    m.eps = f[0], m.kq_scale = f[1];
    m.rope_cos = read_array();
    m.rope_sin = read_array();
    m.out_norm = read_array();
    read_mat(&m.embed);
    read_mat(&m.head);
    tile_mat(&m.head);
    layers = calloc((size_t)m.n_layers, sizeof *layers);
    for (i = 0; i < m.n_layers; i++) {
        layers[i].attn_norm = read_array();
        layers[i].ffn_norm = read_array();
        edgeq_llm_mat *mats[7] = {&layers[i].wq, &layers[i].wk, &layers[i].wv, &layers[i].wo, &layers[i].gate,
                                  &layers[i].up, &layers[i].down};
        for (j = 0; j < 7; j++) {
            read_mat(mats[j]);
            tile_mat(mats[j]);
        }
    }
    m.layers = layers;
    tokens = read_array();
    if ((rc = edgeq_llm_state_sizes(&m, max_batch, sizes)) != 0)
        return 10 - rc;
    s.max_batch = max_batch;
    s.k_cache = calloc((size_t)sizes[3], sizeof(float));
    s.v_cache = calloc((size_t)m.n_layers * m.ctx * m.n_kv_heads * m.head_dim, sizeof(float));
    s.work = calloc((size_t)sizes[0], sizeof(float));
    s.xq = calloc((size_t)sizes[1], 1);
    s.xsum = calloc((size_t)sizes[2] + 1, sizeof(int32_t));
    logits = malloc(sizeof(float) * (size_t)max_batch * m.vocab);
    for (i = 0; i < n_tokens; i += max_batch) {
        int32_t n = n_tokens - i < max_batch ? n_tokens - i : max_batch;
        if ((rc = edgeq_llm_forward(&m, &s, tokens + i, n, i, logits, 1)) != 0)
            return 20 - rc;
        fwrite(logits, sizeof(float), (size_t)n * m.vocab, stdout);
    }
    fprintf(stderr, "%s\n", edgeq_llm_simd());
    return 0;
}
