/*
 * edgeq firmware example: read float32 samples from input.npy on the host (ARM semihosting), quantize
 * them with the model's input scale and zero point, run the model, print each sample's class.
 *
 * Build and run (see README.md): `edgeq export BUNDLE --format c --device DEVICE -o model`, then
 * `make run`. On a real board, replace board_open/board_read with your sensor and board_puts with your
 * UART; model.h and edgeq_model_run stay the same.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "edgeq_board.h"
#include "model.h"

#if EDGEQ_MODEL_N_INPUTS != 1
#error "this example feeds one input; models with several inputs fill edgeq_model_run's inputs array"
#endif

/* Floats are read a chunk at a time and quantized straight into the model's arena (no input copy). */
#define CHUNK 64

static float x[CHUNK];

/* edgeq's input quantization (the same as `edgeq run`): round half to even in float32, clamp, NaN -> -128. */
static int8_t quantize(float v)
{
    float q = nearbyintf(v / EDGEQ_MODEL_INPUT0_SCALE) + (float)EDGEQ_MODEL_INPUT0_ZERO_POINT;
    q = q > 127.0f ? 127.0f : q;
    q = q > -128.0f ? q : -128.0f;
    return (int8_t)(int32_t)q;
}

/* Skip a .npy header and check it holds little-endian float32 in C order; return 0 on success. */
static int skip_npy_header(int32_t f)
{
    uint8_t pre[10];
    char header[512];
    uint32_t len;
    if (board_read(f, pre, sizeof pre) != 0 || memcmp(pre, "\x93NUMPY", 6) != 0 || pre[6] != 1)
        return -1;
    len = (uint32_t)pre[8] | (uint32_t)pre[9] << 8;
    if (len >= sizeof header || board_read(f, header, len) != 0)
        return -1;
    header[len] = '\0';
    return strstr(header, "'<f4'") && strstr(header, "'fortran_order': False") ? 0 : -1;
}

/* Read one sample, quantized into the model's input buffer; 0 on success, -1 at the end of the file. */
static int read_sample(int32_t f)
{
    int8_t *q = edgeq_model_input_buffer(0);
    uint32_t done, i, n;
    for (done = 0; done < EDGEQ_MODEL_INPUT0_BYTES; done += n) {
        n = EDGEQ_MODEL_INPUT0_BYTES - done < CHUNK ? EDGEQ_MODEL_INPUT0_BYTES - done : CHUNK;
        if (board_read(f, x, n * sizeof x[0]) != 0)
            return -1;
        for (i = 0; i < n; i++)
            q[done + i] = quantize(x[i]);
    }
    return 0;
}

int main(void)
{
    int32_t f = board_open("input.npy", BOARD_OPEN_RB);
    uint32_t sample = 0, i;
    if (f < 0 || skip_npy_header(f) != 0) {
        board_puts("cannot read input.npy (float32 .npy with samples of the model's input shape)\n");
        return 1;
    }
    while (read_sample(f) == 0) {
        const int8_t *scores = edgeq_model_output_buffer(0);
        uint32_t best = 0;
        if (edgeq_model_invoke() != 0) {
            board_puts("model error\n");
            return 2;
        }
        /* Dequantization is monotonic, so the class is the argmax of the int8 scores of output 0. */
        for (i = 1; i < EDGEQ_MODEL_OUTPUT0_BYTES; i++)
            best = scores[i] > scores[best] ? i : best;
        board_puts("sample ");
        board_put_u64(sample++);
        board_puts(": class ");
        board_put_u64(best);
        board_puts("\n");
    }
    board_close(f);
    return 0;
}
