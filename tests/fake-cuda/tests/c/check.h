/* Shared by the C checks of the fake driver: symbols by dlsym from the library the check opened
 * (`lib`), one "OK"/"FAIL" line per check, a monotonic clock. */
#ifndef FAKECUDA_CHECK_H
#define FAKECUDA_CHECK_H
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void *H;

static void *lib;
static int failures;
#define SYM(name) ((CUresult(*)())must(#name))
static void *must(const char *n) {
    void *p = dlsym(lib, n);
    if (!p) { printf("FAIL missing symbol %s\n", n); exit(2); }
    return p;
}
#define CHECK(cond, ...) do { if (cond) { printf("OK   "); } else { printf("FAIL "); failures++; } printf(__VA_ARGS__); printf("\n"); } while (0)
static double now_ms(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6; }
#endif
