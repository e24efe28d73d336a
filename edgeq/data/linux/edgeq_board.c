/*
 * edgeq board support for AArch64 Linux user mode (qemu-aarch64, or the device itself): the board API of
 * edgeq_board.h on POSIX, so the same sim_main.c drives MCU firmware and Linux builds. There is no
 * instruction clock here: board_ticks is CLOCK_MONOTONIC in nanoseconds, which under QEMU measures the
 * emulation, not the device; `edgeq sim` reports it as such.
 */
#define _POSIX_C_SOURCE 200809L

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "edgeq_board.h"

int32_t board_open(const char *path, int32_t mode)
{
    int fd = mode == BOARD_OPEN_WB ? open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : open(path, O_RDONLY);
    return fd < 0 ? -1 : (int32_t)fd;
}

int32_t board_close(int32_t handle)
{
    return close(handle) == 0 ? 0 : -1;
}

/* Short reads and writes are retried: the semihosting contract is all-or-report-the-rest. */
int32_t board_read(int32_t handle, void *buf, uint32_t n)
{
    char *p = buf;
    while (n > 0) {
        ssize_t got = read(handle, p, n);
        if (got <= 0)
            break;
        p += got;
        n -= (uint32_t)got;
    }
    return (int32_t)n;
}

int32_t board_write(int32_t handle, const void *buf, uint32_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t put = write(handle, p, n);
        if (put <= 0)
            break;
        p += put;
        n -= (uint32_t)put;
    }
    return (int32_t)n;
}

int32_t board_flen(int32_t handle)
{
    struct stat st;
    if (fstat(handle, &st) != 0 || st.st_size > INT32_MAX)
        return -1;
    return (int32_t)st.st_size;
}

void board_puts(const char *s)
{
    fputs(s, stdout);
}

void board_put_u64(uint64_t v)
{
    printf("%llu", (unsigned long long)v);
}

void board_exit(int32_t status)
{
    exit(status);
}

uint64_t board_ticks(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t board_calibrate(uint32_t n)
{
    (void)n;
    return 1; /* no instruction clock: the report does not convert ticks to instructions */
}

uint32_t board_stack_used(void)
{
    return 0; /* Linux grows the stack on demand; there is no painted reserve to measure */
}
