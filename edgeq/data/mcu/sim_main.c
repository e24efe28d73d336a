/*
 * edgeq sim firmware: runs the generated model on every sample of input.bin (int8, samples back to back,
 * EDGEQ_MODEL_INPUT_BYTES each, inputs in model order) and writes output.bin likewise. Samples are read
 * straight into the arena and written straight from it, so the firmware's RAM is the model's (arena and
 * stack) plus a few bytes. Reports through the console, one "EDGEQ_<WHAT> <a> <b>" line each, which
 * `edgeq sim` parses:
 *   EDGEQ_CALIB ticks n   SysTick ticks of a 2n-instruction loop (instructions per tick)
 *   EDGEQ_SAMPLE i ticks  ticks spent running sample i (edgeq_model_invoke)
 *   EDGEQ_STACK bytes 0   deepest stack use
 *   EDGEQ_RC i code       edgeq_model_invoke returned -code for sample i
 *   EDGEQ_NODE i ticks    with -DEDGEQ_SIM_PROFILE: node i's ticks in the sample just reported (the
 *                         sample then runs node by node, edgeq_model_invoke_node)
 * Exit status: 0 done, 3 host file I/O failed, 4 the model returned an error.
 */
#include <stdint.h>

#include "edgeq_board.h"
#include "model.h"

#define CALIB_LOOPS 1000000u

#ifdef EDGEQ_SIM_PROFILE
static uint64_t node_ticks[EDGEQ_MODEL_N_NODES + 1];

/* Node by node, each timed; the per-node figures are printed after the sample's total so that the
 * printing is not counted. */
static int invoke(void)
{
    int i, rc;
    for (i = 0; i < EDGEQ_MODEL_N_NODES; i++) {
        const uint64_t t0 = board_ticks();
        rc = edgeq_model_invoke_node(i);
        node_ticks[i] = board_ticks() - t0;
        if (rc != 0)
            return rc;
    }
    return 0;
}
#else
#define invoke edgeq_model_invoke
#endif

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
    int32_t fin, fout, len, i;
    uint32_t s, n;

    fin = board_open("input.bin", BOARD_OPEN_RB);
    fout = board_open("output.bin", BOARD_OPEN_WB);
    if (fin < 0 || fout < 0)
        return 3;
    len = board_flen(fin);
    if (len < 0 || len % EDGEQ_MODEL_INPUT_BYTES != 0)
        return 3;
    n = (uint32_t)len / EDGEQ_MODEL_INPUT_BYTES;
    report("EDGEQ_CALIB", board_calibrate(CALIB_LOOPS), CALIB_LOOPS);
    for (s = 0; s < n; s++) {
        uint64_t t0, t1;
        int rc;
        for (i = 0; i < EDGEQ_MODEL_N_INPUTS; i++)
            if (board_read(fin, edgeq_model_input_buffer(i), (uint32_t)edgeq_model_inputs[i].bytes) != 0)
                return 3;
        t0 = board_ticks();
        rc = invoke();
        t1 = board_ticks();
        if (rc != 0) {
            report("EDGEQ_RC", s, (uint64_t)-rc);
            return 4;
        }
        report("EDGEQ_SAMPLE", s, t1 - t0);
#ifdef EDGEQ_SIM_PROFILE
        for (i = 0; i < EDGEQ_MODEL_N_NODES; i++)
            report("EDGEQ_NODE", (uint64_t)i, node_ticks[i]);
#endif
        for (i = 0; i < EDGEQ_MODEL_N_OUTPUTS; i++)
            if (board_write(fout, edgeq_model_output_buffer(i), (uint32_t)edgeq_model_outputs[i].bytes) != 0)
                return 3;
    }
    board_close(fin);
    board_close(fout);
    report("EDGEQ_STACK", board_stack_used(), 0);
    return 0;
}
