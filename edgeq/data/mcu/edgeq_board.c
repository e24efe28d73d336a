/*
 * Start-up, semihosting and SysTick for edgeq firmware (see edgeq_board.h). Memory symbols come from
 * the linker script edgeq writes (link.ld): __data_load, __data_start/end, __bss_start/end,
 * __stack_bottom, __stack_top.
 */
#include <stdint.h>
#include <string.h>

#include "edgeq_board.h"

extern int main(void);

extern uint32_t __data_load[], __data_start[], __data_end[], __bss_start[], __bss_end[];
extern uint32_t __stack_bottom[], __stack_top[];

#define STACK_PAINT 0xA5A5A5A5u

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SYST_RELOAD 0x00FFFFFFu
#define CPACR (*(volatile uint32_t *)0xE000ED88u)

static volatile uint32_t systick_wraps;

/* ---- Semihosting ------------------------------------------------------------------------------ */

static int32_t semihost(int32_t op, const void *arg)
{
    register int32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

int32_t board_open(const char *path, int32_t mode)
{
    const uint32_t args[3] = {(uint32_t)(uintptr_t)path, (uint32_t)mode, (uint32_t)strlen(path)};
    return semihost(0x01, args);
}

int32_t board_close(int32_t handle)
{
    const uint32_t args[1] = {(uint32_t)handle};
    return semihost(0x02, args);
}

int32_t board_write(int32_t handle, const void *buf, uint32_t n)
{
    const uint32_t args[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)buf, n};
    return semihost(0x05, args);
}

int32_t board_read(int32_t handle, void *buf, uint32_t n)
{
    const uint32_t args[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)buf, n};
    return semihost(0x06, args);
}

int32_t board_flen(int32_t handle)
{
    const uint32_t args[1] = {(uint32_t)handle};
    return semihost(0x0C, args);
}

void board_puts(const char *s)
{
    semihost(0x04, s);
}

void board_put_u64(uint64_t v)
{
    char buf[21];
    int i = 20;
    buf[i] = '\0';
    do {
        buf[--i] = (char)('0' + (int)(v % 10u));
        v /= 10u;
    } while (v != 0u);
    board_puts(buf + i);
}

void board_exit(int32_t status)
{
    /* ADP_Stopped_ApplicationExit with a status word; QEMU exits with that status. */
    const uint32_t args[2] = {0x20026u, (uint32_t)status};
    semihost(0x20, args);
    for (;;) {
    }
}

/* ---- Clock and stack ---------------------------------------------------------------------------- */

void SysTick_Handler(void)
{
    systick_wraps++;
}

uint64_t board_ticks(void)
{
    uint32_t wraps, now;
    do {
        wraps = systick_wraps;
        now = SYST_CVR;
    } while (wraps != systick_wraps);
    return (uint64_t)wraps * (SYST_RELOAD + 1u) + (SYST_RELOAD - now);
}

uint64_t board_calibrate(uint32_t n)
{
    uint64_t t0 = board_ticks(), t1;
    /* gcc wraps Thumb-1 inline assembly in `.syntax divided`; say unified for this one loop. */
    __asm__ volatile(".syntax unified\n1:\tsubs %0, %0, #1\n\tbne 1b\n\t.syntax divided" : "+l"(n) : : "cc");
    t1 = board_ticks();
    return t1 - t0;
}

uint32_t board_stack_used(void)
{
    const uint32_t *p = __stack_bottom;
    while (p < __stack_top && *p == STACK_PAINT)
        p++;
    return (uint32_t)((uintptr_t)__stack_top - (uintptr_t)p);
}

/* ---- Reset and faults --------------------------------------------------------------------------- */

void Reset_Handler(void) __attribute__((noreturn));
void Reset_Handler(void)
{
    uint32_t *p, sp;
    memcpy(__data_start, __data_load, (size_t)((uintptr_t)__data_end - (uintptr_t)__data_start));
    memset(__bss_start, 0, (size_t)((uintptr_t)__bss_end - (uintptr_t)__bss_start));
    /* Paint the unused stack (up to a little below our own frame) so board_stack_used can find the
     * deepest write. */
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (p = __stack_bottom; (uintptr_t)p < sp - 64u; p++)
        *p = STACK_PAINT;
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    /* Hard-float and Helium code traps (NOCP) until CP10/CP11 are enabled. */
    CPACR |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    SYST_RVR = SYST_RELOAD;
    SYST_CVR = 0u;
    SYST_CSR = 7u; /* core clock, interrupt on wrap, enabled */
    board_exit(main());
}

static void Fault_Handler(void)
{
    board_puts("EDGEQ_FAULT\n");
    board_exit(70);
}

/* Cortex-M vector table: initial stack pointer, then the exception handlers. */
__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))(uintptr_t)__stack_top,
    Reset_Handler,
    Fault_Handler, /* NMI */
    Fault_Handler, /* HardFault */
    Fault_Handler, /* MemManage */
    Fault_Handler, /* BusFault */
    Fault_Handler, /* UsageFault */
    Fault_Handler, /* SecureFault (v8-M) */
    0, 0, 0,
    Fault_Handler, /* SVCall */
    Fault_Handler, /* DebugMonitor */
    0,
    Fault_Handler, /* PendSV */
    SysTick_Handler,
};
