/*
 * edgeq integer kernels: portable C99, no allocation, no OS calls.
 *
 * The same sources build the host extension (runtimes/c_backend.py, via cffi), and are meant to build
 * unchanged for Cortex-M (arm-none-eabi-gcc) and AArch64. Every kernel reproduces
 * runtimes/reference.py byte for byte; the fixed-point helpers below mirror runtimes/fixedpoint.py,
 * including its int64 (NumPy) behaviour on hostile shifts, so no input can make backends disagree.
 *
 * Layout: activations are per-sample int8 tensors (batch removed, NCHW -> CHW); weights are OIHW int8;
 * bias / mult / shift are int32 per output channel. A program is the flat int64 word list written by
 * runtimes/program.py: per node [opcode, n_words, *op_words], op words as documented in registry.py.
 *
 * Tuning knobs (define on the compiler command line). Kernels keep their scratch on the stack; with the
 * defaults a convolution needs about 280 KB of stack on the calling thread and 150 KB on each OpenMP
 * worker (set OMP_STACKSIZE if your platform's thread stacks are smaller). An MCU build would use e.g.
 * -DEDGEQ_SCRATCH_BYTES=2048 -DEDGEQ_TILE_BYTES=1024 -DEDGEQ_PATCH_BYTES=1024 -DEDGEQ_WEIGHT_BYTES=4096.
 *   EDGEQ_SCRATCH_BYTES  input tile of the plane convolution kernel (default 49152).
 *   EDGEQ_TILE_BYTES     channels-last input tile of the dot convolution path (32768).
 *   EDGEQ_PATCH_BYTES    assembled patches of the dot path (32768).
 *   EDGEQ_WEIGHT_BYTES   weights reordered once per convolution by the dot path (131072); larger weight
 *                        sets are reordered by each job, an eighth of this at a time.
 *   EDGEQ_BAND_BYTES     packed input band of the AVX-512 VNNI path for stride-1 convolutions with many
 *                        input channels and 2+ taps, per thread (131072; fewer rows per band when smaller).
 *   EDGEQ_PAR_MIN_WORK   multiply-accumulates below which an op stays single-threaded (200000).
 *   EDGEQ_PAR_MIN_ELEMS  elements below which Add / Mul stay single-threaded (8192; depthwise
 *                        convolutions also go parallel from half as many outputs).
 *   EDGEQ_PW_TILE_DIRECT pixels per tile of a plain 1x1 convolution on the VNNI path (1024; fewer when
 *                        EDGEQ_PATCH_BYTES cannot hold the tile's packed input channels).
 *   EDGEQ_PW_MAX_OC      output channels whose weight sums the im2col/VNNI path computes once per call on
 *                        the stack (1024; more are summed per tile).
 *   EDGEQ_VPOS           output positions per register block of the plane kernel (64 with AVX-512,
 *                        32 with AVX2, else 16).
 */
#ifndef EDGEQ_KERNELS_H
#define EDGEQ_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes of edgeq_run_program / edgeq_execute / edgeq_validate. */
#define EDGEQ_OK 0
#define EDGEQ_E_OPCODE (-1) /* unknown opcode */
#define EDGEQ_E_RECORD (-2) /* record truncated, or its length does not match the op's layout */
#define EDGEQ_E_PARAM (-3)  /* a dimension, zero point, clamp or multiplier out of range */
#define EDGEQ_E_BOUNDS (-4) /* an operand lies outside the arena or pool (edgeq_validate) */
#define EDGEQ_E_ALIGN (-5)  /* an int32 constant is not 4-byte aligned */
#define EDGEQ_E_IO (-6)     /* input/output descriptors inconsistent with the buffers */

/* Opcodes: runtimes/registry.py OPS. */
#define EDGEQ_OP_CONV 1
#define EDGEQ_OP_FC 2
#define EDGEQ_OP_ADD 3
#define EDGEQ_OP_MUL 4
#define EDGEQ_OP_LUT 5
#define EDGEQ_OP_MAXPOOL 6
#define EDGEQ_OP_AVGPOOL 7
#define EDGEQ_OP_SOFTMAX 8
#define EDGEQ_OP_CONCAT 9
#define EDGEQ_OP_RESHAPE 10
#define EDGEQ_OP_COPY_WINDOW 11
#define EDGEQ_OP_STRIDED_COPY 12
#define EDGEQ_OP_MATMUL 13
#define EDGEQ_OP_CONV_TRANSPOSE 14
#define EDGEQ_OP_RESIZE 15
#define EDGEQ_OP_LAYER_NORM 16
#define EDGEQ_OP_REQUANTIZE 17

/* ---- Fixed-point helpers (runtimes/fixedpoint.py) ------------------------------------------------ */

/* Two's-complement reinterpretation of a uint64 without implementation-defined conversions. */
static inline int64_t edgeq_u2s64(uint64_t u)
{
    return u <= (uint64_t)INT64_MAX ? (int64_t)u : -(int64_t)(~u) - 1;
}

/* Arithmetic right shift written so that it does not depend on how the compiler shifts negatives. */
static inline int64_t edgeq_asr64(int64_t x, int e)
{
    return x < 0 ? ~(~x >> e) : x >> e;
}

/* gemmlowp SaturatingRoundingDoublingHighMul: round(a * b / 2^31), the one overflow case saturated. */
static inline int32_t edgeq_srdhm(int32_t a, int32_t b)
{
    int64_t ab, nudge;
    if (a == INT32_MIN && b == INT32_MIN)
        return INT32_MAX;
    ab = (int64_t)a * (int64_t)b;
    nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    /* C division truncates toward zero, exactly as fixedpoint._trunc_shift31. */
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

/* gemmlowp RoundingDivideByPOT (round half away from zero), exponent >= 0. Exponents of 64 and more
 * follow NumPy's int64 shifts (1 << e == 0, x >> e == sign), as the reference does. */
static inline int64_t edgeq_rdbpot(int64_t x, int64_t exponent)
{
    int64_t mask, q, threshold;
    if (exponent >= 64) {
        mask = -1;
        q = x < 0 ? -1 : 0;
        threshold = -1 + (x < 0);
    } else {
        mask = edgeq_u2s64(((uint64_t)1 << exponent) - 1u);
        q = edgeq_asr64(x, (int)exponent);
        threshold = (mask >> 1) + (x < 0);
    }
    return q + ((x & mask) > threshold);
}

/* TFLite MultiplyByQuantizedMultiplier with edgeq's saturated left shift. The left shift wraps like
 * NumPy's int64 shift before saturating, so even shifts far beyond any real scale agree with the
 * reference. */
static inline int32_t edgeq_mbqm(int64_t x, int32_t mult, int32_t shift)
{
    int64_t left = shift > 0 ? shift : 0;
    int64_t right = shift > 0 ? 0 : -(int64_t)shift;
    int64_t s = left >= 64 ? 0 : edgeq_u2s64((uint64_t)x << left);
    if (s > INT32_MAX)
        s = INT32_MAX;
    if (s < INT32_MIN)
        s = INT32_MIN;
    return (int32_t)edgeq_rdbpot(edgeq_srdhm((int32_t)s, mult), right);
}

/* ---- Kernels ------------------------------------------------------------------------------------
 * Preconditions (checked by edgeq_run_program when it decodes a record): every dimension >= 1, every
 * element count <= INT32_MAX, zero points and clamps within [-128, 127], group divides C and OC.
 * `lut` may be NULL (no fused table); otherwise y = lut[y + 128] after clamping. */

/* Grouped 2-D convolution, per-output-channel requantization (reference.conv). Bottom/right padding
 * is implied by OH/OW. */
void edgeq_conv(const int8_t *x, const int8_t *w, const int32_t *bias, const int32_t *mult,
                const int32_t *shift, const int8_t *lut, int8_t *y,
                int32_t C, int32_t H, int32_t W, int32_t OC, int32_t OH, int32_t OW, int32_t KH, int32_t KW,
                int32_t sh, int32_t sw, int32_t pt, int32_t pl, int32_t dh, int32_t dw, int32_t group,
                int32_t x_zp, int32_t y_zp, int32_t act_min, int32_t act_max);

/* edgeq_conv for int8 or int16 activations (x_bits, y_bits: 8 or 16; TFLite's 16x8 scheme): int16
 * tensors are int16_t arrays, clamps lie in the output type's range; a fused table needs y_bits == 8. */
void edgeq_conv_wide(const void *x, int32_t x_bits, const int8_t *w, const int32_t *bias, const int32_t *mult,
                     const int32_t *shift, const int8_t *lut, void *y, int32_t y_bits,
                     int32_t C, int32_t H, int32_t W, int32_t OC, int32_t OH, int32_t OW, int32_t KH, int32_t KW,
                     int32_t sh, int32_t sw, int32_t pt, int32_t pl, int32_t dh, int32_t dw, int32_t group,
                     int32_t x_zp, int32_t y_zp, int32_t act_min, int32_t act_max);

/* Fully connected: y[o] = requant(sum_k w[o, k] * (x[k] - x_zp) + bias[o]) (reference.fully_connected). */
void edgeq_fc(const int8_t *x, const int8_t *w, const int32_t *bias, const int32_t *mult,
              const int32_t *shift, const int8_t *lut, int8_t *y, int32_t K, int32_t OC,
              int32_t x_zp, int32_t y_zp, int32_t act_min, int32_t act_max);

/* The same with TFLite's single rounding ((acc * mult + 2^(30 - shift)) >> (31 - shift), acc saturated
 * to int32 and shift clamped to [-31, 30]: fixedpoint.multiply_by_quantized_multiplier_single), as
 * TFLite's int8 FULLY_CONNECTED reference kernel requantizes. */
void edgeq_fc_single(const int8_t *x, const int8_t *w, const int32_t *bias, const int32_t *mult,
                     const int32_t *shift, const int8_t *lut, int8_t *y, int32_t K, int32_t OC,
                     int32_t x_zp, int32_t y_zp, int32_t act_min, int32_t act_max);

/* TFLite int8 Add over a 4-D broadcast: dims = output shape, *_strides = element strides of each
 * operand (0 where broadcast). */
void edgeq_add(const int8_t *a, const int8_t *b, const int8_t *lut, int8_t *y, const int32_t dims[4],
               const int32_t a_strides[4], const int32_t b_strides[4], int32_t a_zp, int32_t b_zp,
               int32_t y_zp, int32_t a_mult, int32_t a_shift, int32_t b_mult, int32_t b_shift,
               int32_t y_mult, int32_t y_shift, int32_t act_min, int32_t act_max);

/* TFLite int8 Mul over a 4-D broadcast (same operand layout as edgeq_add). */
void edgeq_mul(const int8_t *a, const int8_t *b, const int8_t *lut, int8_t *y, const int32_t dims[4],
               const int32_t a_strides[4], const int32_t b_strides[4], int32_t a_zp, int32_t b_zp,
               int32_t y_zp, int32_t y_mult, int32_t y_shift, int32_t act_min, int32_t act_max);

/* y[i] = table[x[i] + 128]. */
void edgeq_lut(const int8_t *x, const int8_t *table, int8_t *y, int32_t count);

/* Tables for any widths (reference.lut): int8 x reads 256 entries of y's type; int16 x interpolates
 * between 513 int16 samples. */
void edgeq_lut_wide(const void *x, int32_t x_bits, const void *table, void *y, int32_t y_bits, int32_t count);

/* y = clip(mbqm(x - x_zp, mult, shift) + y_zp) between int8 and int16 tensors (reference.requantize). */
void edgeq_requantize(const void *x, int32_t x_bits, void *y, int32_t y_bits, int32_t count, int32_t x_zp,
                      int32_t y_zp, int32_t mult, int32_t shift);

/* Max pool; padded taps never win, an all-padding window yields act_min. */
void edgeq_maxpool(const int8_t *x, int8_t *y, int32_t C, int32_t H, int32_t W, int32_t OH, int32_t OW,
                   int32_t KH, int32_t KW, int32_t sh, int32_t sw, int32_t pt, int32_t pl, int32_t dh,
                   int32_t dw, int32_t act_min, int32_t act_max);

/* Average pool with TFLite rounding; counts only taps inside the input unless count_include_pad. */
void edgeq_avgpool(const int8_t *x, int8_t *y, int32_t C, int32_t H, int32_t W, int32_t OH, int32_t OW,
                   int32_t KH, int32_t KW, int32_t sh, int32_t sw, int32_t pt, int32_t pl,
                   int32_t count_include_pad, int32_t x_zp, int32_t y_zp, int32_t act_min, int32_t act_max);

/* Integer softmax over rows of `cols` values; table = int32[256] of round(exp(-d * s_x) * 2^20). */
void edgeq_softmax(const int8_t *x, const int32_t *table, int8_t *y, int32_t rows, int32_t cols);

/* One input of a concatenation: rows of `inner` values requantized into rows of `y_inner` values of y,
 * starting at column `y_col`. */
void edgeq_concat_part(const int8_t *x, int8_t *y, int32_t outer, int32_t inner, int32_t y_inner,
                       int32_t y_col, int32_t x_zp, int32_t mult, int32_t shift, int32_t y_zp);

/* Copy (memmove) `count` bytes unless source and destination coincide. */
void edgeq_reshape(const int8_t *x, int8_t *y, int32_t count);

/* y = canvas (zeros when canvas is NULL; canvas may be y itself), then the h x w window of every channel
 * of x (C x H x W) at row sy, column sx is copied into y (C x OH x OW) at row dy, column dx. The building
 * block of patch-based inference: crop a patch with its halo, place a computed patch. */
void edgeq_copy_window(const int8_t *x, const int8_t *canvas, int8_t *y, int32_t C, int32_t H, int32_t W,
                       int32_t OH, int32_t OW, int32_t sy, int32_t sx, int32_t dy, int32_t dx, int32_t h, int32_t w);

/* y (contiguous, 6-D dims) = x[offset + sum_k i_k * strides[k]]: Transpose and Slice (reference.strided_copy). */
void edgeq_strided_copy(const int8_t *x, int8_t *y, int64_t offset, const int32_t dims[6], const int32_t strides[6]);

/* y[t, m, n] = requant(sum_k (a[t, m, k] - a_zp) * (b[t*b_bs + k*b_sk + n*b_sn] - b_zp) + bias[n]), per-column
 * mult/shift (reference.matmul); K <= 33000. */
void edgeq_matmul(const int8_t *a, const int8_t *b, const int32_t *bias, const int32_t *mult, const int32_t *shift,
                  const int8_t *lut, int8_t *y, int32_t batch, int32_t M, int32_t K, int32_t N, int64_t b_bs,
                  int64_t b_sk, int64_t b_sn, int32_t a_zp, int32_t b_zp, int32_t y_zp, int32_t act_min,
                  int32_t act_max);

/* Transposed convolution, weights [OC, C/group, KH, KW], output cropped by pt/pl (reference.conv_transpose). */
void edgeq_conv_transpose(const int8_t *x, const int8_t *w, const int32_t *bias, const int32_t *mult,
                          const int32_t *shift, const int8_t *lut, int8_t *y, int32_t C, int32_t H, int32_t W,
                          int32_t OC, int32_t OH, int32_t OW, int32_t KH, int32_t KW, int32_t sh, int32_t sw,
                          int32_t pt, int32_t pl, int32_t dh, int32_t dw, int32_t group, int32_t x_zp,
                          int32_t y_zp, int32_t act_min, int32_t act_max);

/* Separable two-tap resize on tables of (i0, i1, w1) rows, weights of 2048 (reference.resize). */
void edgeq_resize(const int8_t *x, const int32_t *ytab, const int32_t *xtab, int8_t *y, int32_t C, int32_t H,
                  int32_t W, int32_t OH, int32_t OW, int32_t zp);

/* Integer-only LayerNorm over rows of `cols` values (reference.layer_norm); cols <= 4096. */
void edgeq_layer_norm(const int8_t *x, const int32_t *gamma, const int32_t *beta, int8_t *y, int32_t rows,
                      int32_t cols, int32_t x_zp, int32_t y_zp, int64_t eps, int32_t act_min, int32_t act_max);

/* ---- Programs ----------------------------------------------------------------------------------- */

/* Run every node record of a program on one sample. Returns EDGEQ_OK or a negative EDGEQ_E_* code;
 * never reads outside words[0, n_words). Operand offsets are trusted: check them once with
 * edgeq_validate. */
int edgeq_run_program(const int64_t *words, int64_t n_words, int8_t *arena, const uint8_t *pool);

/* For each of `batch` samples: copy the inputs (packed back to back in in_buf + b * in_stride, placed
 * by in_desc rows [arena offset, bytes]) into the arena, run the program, copy the outputs out.
 * Optional schedule over the first n_nodes node records (NULL pointers for none): node i runs with
 * node_threads[i] threads (at most what edgeq_set_threads allows is the caller's business) and its wall
 * time in seconds is added to node_seconds[i] (OpenMP builds; 0 otherwise). */
int edgeq_execute(const int64_t *words, int64_t n_words, int8_t *arena, const uint8_t *pool,
                  const int8_t *in_buf, int64_t batch, int64_t in_stride, const int64_t *in_desc, int64_t n_in,
                  int8_t *out_buf, int64_t out_stride, const int64_t *out_desc, int64_t n_out,
                  const int8_t *node_threads, double *node_seconds, int64_t n_nodes);

/* edgeq_execute with float32 inputs and outputs: x rows of x_stride floats are quantized into the
 * arena (in_qp rows [scale, zero point]: q = clamp(rint(x / scale) + zp, -128, 127) in float32, half to
 * even, NaN -> -128), outputs dequantized as (q - zp) * scale (out_qp rows likewise). Descriptor
 * byte counts are element counts (int8). The schedule is edgeq_execute's. */
int edgeq_execute_float(const int64_t *words, int64_t n_words, int8_t *arena, const uint8_t *pool,
                        const float *x, int64_t batch, int64_t x_stride, const int64_t *in_desc,
                        const float *in_qp, int64_t n_in, float *y, int64_t y_stride, const int64_t *out_desc,
                        const float *out_qp, int64_t n_out, const int8_t *node_threads, double *node_seconds,
                        int64_t n_nodes);

/* Check a program and its I/O descriptors against buffer sizes without running it: every record
 * decodes, and every operand it reads or writes lies inside the arena or pool. */
int edgeq_validate(const int64_t *words, int64_t n_words, int64_t arena_bytes, int64_t pool_bytes,
                   const int64_t *in_desc, int64_t n_in, int64_t in_stride,
                   const int64_t *out_desc, int64_t n_out, int64_t out_stride);

/* Threads the kernels may use (1 without OpenMP); values < 1 mean 1. */
void edgeq_set_threads(int n);
int edgeq_get_threads(void);
/* 1 if the library was built with OpenMP. */
int edgeq_has_openmp(void);

#ifdef __cplusplus
}
#endif

#endif /* EDGEQ_KERNELS_H */
