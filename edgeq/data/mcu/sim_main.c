/*
 * edgeq sim firmware: runs the generated model on every sample of input.bin (int8, samples back to back,
 * EDGEQ_MODEL_INPUT_BYTES each, inputs in model order) and writes output.bin likewise. Reports through
 * the console, one "EDGEQ_<WHAT> <numbers>" line each, which `edgeq sim` parses:
 *   EDGEQ_CALIB ticks n   SysTick ticks of a 2n-instruction loop (instructions per tick)
 *   EDGEQ_SAMPLE i ticks  ticks spent in edgeq_model_run for sample i
 *   EDGEQ_STACK bytes     deepest stack use
 * Exit status: 0 done, 3 host file I/O failed, 4 the model returned an error (EDGEQ_RC follows).
 */
#include <stdint.h>

#include "edgeq_board.h"
#include "model.h"

#define CALIB_LOOPS 1000000u

static int8_t in_buf[EDGEQ_MODEL_INPUT_BYTES];
static int8_t out_buf[EDGEQ_MODEL_OUTPUT_BYTES];

static void report(const char *what, uint64_t a, uint64_t b)
{
    board_puts(what);
    board_puts(" ");
    board_put_u64(a);
    board_puts(" ");
    board_put_u64(b);
    board_puts("\n");
}

int main(void)
{
    const int8_t *inputs[EDGEQ_MODEL_N_INPUTS];
    int8_t *outputs[EDGEQ_MODEL_N_OUTPUTS];
    int32_t fin, fout, len, i, off;
    uint32_t s, n;

    fin = board_open("input.bin", BOARD_OPEN_RB);
    fout = board_open("output.bin", BOARD_OPEN_WB);
    if (fin < 0 || fout < 0)
        return 3;
    len = board_flen(fin);
    if (len < 0 || len % EDGEQ_MODEL_INPUT_BYTES != 0)
        return 3;
    n = (uint32_t)len / EDGEQ_MODEL_INPUT_BYTES;
    for (i = 0, off = 0; i < EDGEQ_MODEL_N_INPUTS; off += edgeq_model_inputs[i].bytes, i++)
        inputs[i] = in_buf + off;
    for (i = 0, off = 0; i < EDGEQ_MODEL_N_OUTPUTS; off += edgeq_model_outputs[i].bytes, i++)
        outputs[i] = out_buf + off;
    report("EDGEQ_CALIB", board_calibrate(CALIB_LOOPS), CALIB_LOOPS);
    for (s = 0; s < n; s++) {
        uint64_t t0, t1;
        int rc;
        if (board_read(fin, in_buf, sizeof in_buf) != 0)
            return 3;
        t0 = board_ticks();
        rc = edgeq_model_run(inputs, outputs);
        t1 = board_ticks();
        if (rc != 0) {
            report("EDGEQ_RC", s, (uint64_t)-rc);
            return 4;
        }
        report("EDGEQ_SAMPLE", s, t1 - t0);
        if (board_write(fout, out_buf, sizeof out_buf) != 0)
            return 3;
    }
    board_close(fin);
    board_close(fout);
    report("EDGEQ_STACK", board_stack_used(), 0);
    return 0;
}
