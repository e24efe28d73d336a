/*
 * Minimal Cortex-M board support for edgeq firmware run under QEMU (or a debugger): start-up, ARM
 * semihosting for host file I/O and console output, and an instruction clock.
 *
 * No libc stdio and no heap: semihosting calls are made directly (BKPT 0xAB), so the firmware's size is
 * the model's plus a few hundred bytes, not newlib's printf.
 */
#ifndef EDGEQ_BOARD_H
#define EDGEQ_BOARD_H

#include <stdint.h>

/* Semihosting open modes (ARM "Semihosting for AArch32 and AArch64", SYS_OPEN). */
#define BOARD_OPEN_RB 1
#define BOARD_OPEN_WB 5

/* Host file I/O. board_open returns a handle or -1; board_read/board_write return the number of bytes
 * NOT transferred (0 on success), as SYS_READ/SYS_WRITE do. */
int32_t board_open(const char *path, int32_t mode);
int32_t board_close(int32_t handle);
int32_t board_read(int32_t handle, void *buf, uint32_t n);
int32_t board_write(int32_t handle, const void *buf, uint32_t n);
/* Length of an open file in bytes, or -1. */
int32_t board_flen(int32_t handle);

/* Console output (the host's stdout). */
void board_puts(const char *s);
void board_put_u64(uint64_t v);

/* Stop the emulator with an exit status (SYS_EXIT_EXTENDED). */
void board_exit(int32_t status) __attribute__((noreturn));

/* SysTick ticks since start-up, on the core clock, 64-bit (wraps counted by the SysTick interrupt).
 * Under `qemu -icount shift=0` every instruction advances virtual time by 1 ns, so ticks are
 * instructions times (core clock / 1 GHz); board_calibrate measures that ratio. */
uint64_t board_ticks(void);
/* Ticks taken by a loop of exactly 2 * n instructions (subs + bne). */
uint64_t board_calibrate(uint32_t n);
/* Deepest stack use so far in bytes (the stack is painted at reset). */
uint32_t board_stack_used(void);

#endif /* EDGEQ_BOARD_H */
