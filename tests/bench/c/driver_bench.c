/*
 * driver_bench.c: times CUDA driver calls the way an application's hot loop makes them, for
 * gpumux-bench (tests/bench). It reaches the driver exactly like the CUDA runtime does:
 * dlopen("libcuda.so.1"), ONE dlsym of "cuGetProcAddress_v2", then every entry point through
 * cuGetProcAddress_v2 at CUDA version 12090, so under LD_PRELOAD the shim's wrappers are what
 * gets timed for hooked names and the driver's own functions for the rest.
 *
 * Build: cc -O2 -Wall -Wextra -o driver_bench driver_bench.c -ldl
 *
 * Usage: driver_bench [--iters N] [--warmup W] [--chunks C] [--bytes B] [--launch-batch K]
 *
 * Each benchmark runs W untimed iterations, then N timed ones split into C equal chunks, each
 * timed with clock_gettime(CLOCK_MONOTONIC). It reports the median chunk (ns_per_op: robust
 * against a chunk that lost the CPU), the mean over all N and the fastest chunk.
 *
 * Output, one JSON object per line on stdout:
 *   {"op":"info","shim_loaded":B,"mem_free":F,"mem_total":T,"device_total":D}
 *   {"op":"bench","name":NAME,"iters":N,"ns_per_op":X,"mean_ns_per_op":Y,"min_ns_per_op":Z}
 *   {"op":"error","step":S,"call":C,"result":R}      (then exit 4)
 * Benchmarks (NAME):
 *   alloc_free   cuMemAlloc_v2(B bytes) + cuMemFree_v2, one pair per iteration (hooked)
 *   passthrough  cuCtxGetCurrent (not hooked: the driver's own function)
 *   totalmem     cuDeviceTotalMem_v2 (hooked, and cheap in the fake: the wrapper's own cost
 *                shows; in the shim's pass-through mode it is a passed-through hooked call)
 *   meminfo      cuMemGetInfo_v2 (hooked query)
 *   launch       cuLaunchKernel of spin(ns = 0) on a non-blocking stream: the time for the
 *                call to return; launches are issued in batches of K, and the stream is
 *                synchronised between batches outside the timed region
 *
 * Exit codes: 0 ok, 2 usage error, 3 the driver could not be loaded or initialised, 4 a
 * driver call failed during a benchmark.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- CUDA driver ABI (from the public driver API documentation) ---- */
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;

#define CUDA_SUCCESS 0
#define CUDA_ERROR_NOT_FOUND 500
#define CU_GET_PROC_ADDRESS_DEFAULT 0ULL
#define CUDA_VERSION_ASKED 12090
#define CU_STREAM_NON_BLOCKING 0x1

typedef CUresult (*pfn_cuGetProcAddress_v2)(const char *symbol, void **pfn, int cudaVersion,
                                            unsigned long long flags, int *symbolStatus);

/* Entry points by the name the runtime asks for (at 12090: the newest ABI of each). */
#define DRIVER_FUNCS(X)                                                                        \
    X(cuInit, (unsigned int flags))                                                            \
    X(cuDeviceGet, (CUdevice * dev, int ordinal))                                              \
    X(cuDeviceTotalMem, (size_t * bytes, CUdevice dev))                                        \
    X(cuDevicePrimaryCtxRetain, (CUcontext * ctx, CUdevice dev))                               \
    X(cuDevicePrimaryCtxRelease, (CUdevice dev))                                               \
    X(cuCtxSetCurrent, (CUcontext ctx))                                                        \
    X(cuCtxGetCurrent, (CUcontext * ctx))                                                      \
    X(cuMemGetInfo, (size_t * free_bytes, size_t * total_bytes))                               \
    X(cuMemAlloc, (CUdeviceptr * dptr, size_t bytes))                                          \
    X(cuMemFree, (CUdeviceptr dptr))                                                           \
    X(cuStreamCreate, (CUstream * stream, unsigned int flags))                                 \
    X(cuStreamSynchronize, (CUstream stream))                                                  \
    X(cuStreamDestroy, (CUstream stream))                                                      \
    X(cuModuleLoadData, (CUmodule * module, const void *image))                                \
    X(cuModuleGetFunction, (CUfunction * fn, CUmodule module, const char *name))               \
    X(cuModuleUnload, (CUmodule module))                                                       \
    X(cuLaunchKernel, (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,         \
                       unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,  \
                       CUstream stream, void **params, void **extra))

#define DECLARE_PFN(name, args)                                                                \
    typedef CUresult(*pfn_##name) args;                                                        \
    static pfn_##name p_##name;
DRIVER_FUNCS(DECLARE_PFN)
#undef DECLARE_PFN

/* The spin kernel (as tests/workloads/ptx/spin.ptx): the fake runs it for `ns` nanoseconds. */
static const char SPIN_PTX[] =
    ".version 7.0\n"
    ".target sm_50\n"
    ".address_size 64\n"
    "\n"
    ".visible .entry spin(\n"
    "    .param .u64 ns\n"
    ")\n"
    "{\n"
    "    .reg .pred %p<2>;\n"
    "    .reg .b64 %rd<6>;\n"
    "\n"
    "    ld.param.u64 %rd1, [ns];\n"
    "    mov.u64 %rd2, %globaltimer;\n"
    "$L__spin_loop:\n"
    "    mov.u64 %rd3, %globaltimer;\n"
    "    sub.s64 %rd4, %rd3, %rd2;\n"
    "    setp.lt.u64 %p1, %rd4, %rd1;\n"
    "    @%p1 bra $L__spin_loop;\n"
    "    ret;\n"
    "}\n";

/* ---- helpers ---- */
static void fail(const char *step, const char *call, CUresult r) {
    printf("{\"op\":\"error\",\"step\":\"%s\",\"call\":\"%s\",\"result\":%d}\n", step, call, r);
    fflush(stdout);
    exit(4);
}

/* Calls an entry point; on failure reports it and exits 4. */
#define CHECK(step, name, ...)                                                                 \
    do {                                                                                       \
        CUresult r_ = p_##name(__VA_ARGS__);                                                   \
        if (r_ != CUDA_SUCCESS) fail(step, #name, r_);                                         \
    } while (0)

static void usage(const char *msg) {
    fprintf(stderr, "driver_bench: %s\n", msg);
    fprintf(stderr, "usage: driver_bench [--iters N] [--warmup W] [--chunks C] [--bytes B] "
                    "[--launch-batch K]\n");
    exit(2);
}

static unsigned long long parse_count(const char *s, const char *what) {
    char *end = NULL;
    if (s == NULL || *s < '0' || *s > '9') usage(what);
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v == 0) usage(what);
    return v;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Timing of one benchmark: per-chunk ns/op and the total. */
struct timing {
    double *chunk_ns; /* ns per op of each chunk */
    unsigned long long chunks;
    unsigned long long ops;
    uint64_t total_ns;
};

static void report(const char *name, struct timing *t) {
    qsort(t->chunk_ns, t->chunks, sizeof(double), cmp_double);
    double median = t->chunks % 2 ? t->chunk_ns[t->chunks / 2]
                                  : (t->chunk_ns[t->chunks / 2 - 1] + t->chunk_ns[t->chunks / 2]) / 2;
    printf("{\"op\":\"bench\",\"name\":\"%s\",\"iters\":%llu,\"ns_per_op\":%.3f,"
           "\"mean_ns_per_op\":%.3f,\"min_ns_per_op\":%.3f}\n",
           name, t->ops, median, (double)t->total_ns / (double)t->ops, t->chunk_ns[0]);
    fflush(stdout);
}

/* ---- the benchmarks ---- */
static size_t alloc_bytes;

static void op_alloc_free(void) {
    CUdeviceptr p = 0;
    CHECK("alloc_free", cuMemAlloc, &p, alloc_bytes);
    CHECK("alloc_free", cuMemFree, p);
}

static volatile CUcontext sink_ctx;

static void op_passthrough(void) {
    CUcontext c = NULL;
    CHECK("passthrough", cuCtxGetCurrent, &c);
    sink_ctx = c;
}

static volatile size_t sink_size;
static CUdevice bench_dev;

static void op_totalmem(void) {
    size_t total_b = 0;
    CHECK("totalmem", cuDeviceTotalMem, &total_b, bench_dev);
    sink_size = total_b;
}

static void op_meminfo(void) {
    size_t free_b = 0, total_b = 0;
    CHECK("meminfo", cuMemGetInfo, &free_b, &total_b);
    sink_size = free_b + total_b;
}

/* Runs `op` warmup times, then iters times in `chunks` timed chunks. */
static void bench_loop(const char *name, void (*op)(void), unsigned long long warmup,
                       unsigned long long iters, unsigned long long chunks, double *buf) {
    for (unsigned long long i = 0; i < warmup; i++) op();
    unsigned long long per = iters / chunks;
    if (per == 0) per = 1;
    struct timing t = {buf, chunks, per * chunks, 0};
    for (unsigned long long c = 0; c < chunks; c++) {
        uint64_t t0 = now_ns();
        for (unsigned long long i = 0; i < per; i++) op();
        uint64_t dt = now_ns() - t0;
        t.total_ns += dt;
        t.chunk_ns[c] = (double)dt / (double)per;
    }
    report(name, &t);
}

/* cuLaunchKernel issue cost: batches of `batch` launches, synchronised outside the timer. */
static void bench_launch(CUfunction fn, CUstream stream, unsigned long long warmup,
                         unsigned long long iters, unsigned long long batch, double *buf) {
    unsigned long long ns = 0;
    void *params[] = {&ns};
    for (unsigned long long i = 0; i < warmup; i++)
        CHECK("launch", cuLaunchKernel, fn, 1, 1, 1, 1, 1, 1, 0, stream, params, NULL);
    CHECK("launch", cuStreamSynchronize, stream);
    unsigned long long batches = iters / batch;
    if (batches == 0) batches = 1;
    struct timing t = {buf, batches, batches * batch, 0};
    for (unsigned long long b = 0; b < batches; b++) {
        uint64_t t0 = now_ns();
        for (unsigned long long i = 0; i < batch; i++)
            CHECK("launch", cuLaunchKernel, fn, 1, 1, 1, 1, 1, 1, 0, stream, params, NULL);
        uint64_t dt = now_ns() - t0;
        CHECK("launch", cuStreamSynchronize, stream);
        t.total_ns += dt;
        t.chunk_ns[b] = (double)dt / (double)batch;
    }
    report("launch", &t);
}

/* Whether libgpumux is mapped into this process (the shim is loaded). */
static int shim_loaded(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (f == NULL) return 0;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f) != NULL) found = strstr(line, "libgpumux") != NULL;
    fclose(f);
    return found;
}

/* ---- driver loading: the runtime's way ---- */
static void load_driver(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (h == NULL) {
        fprintf(stderr, "driver_bench: dlopen(libcuda.so.1): %s\n", dlerror());
        exit(3);
    }
    pfn_cuGetProcAddress_v2 getproc = (pfn_cuGetProcAddress_v2)dlsym(h, "cuGetProcAddress_v2");
    if (getproc == NULL) {
        fprintf(stderr, "driver_bench: libcuda.so.1 has no cuGetProcAddress_v2\n");
        exit(3);
    }
#define RESOLVE(name, args)                                                                    \
    do {                                                                                       \
        int status_ = -1;                                                                      \
        void *fn_ = NULL;                                                                      \
        CUresult r_ = getproc(#name, &fn_, CUDA_VERSION_ASKED, CU_GET_PROC_ADDRESS_DEFAULT,    \
                              &status_);                                                       \
        if (r_ != CUDA_SUCCESS || status_ != 0 || fn_ == NULL) {                               \
            fprintf(stderr, "driver_bench: cuGetProcAddress_v2(%s) = %d (status %d)\n", #name, \
                    r_, status_);                                                              \
            exit(3);                                                                           \
        }                                                                                      \
        p_##name = (pfn_##name)fn_;                                                            \
    } while (0);
    DRIVER_FUNCS(RESOLVE)
#undef RESOLVE
    CUresult r = p_cuInit(0);
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "driver_bench: cuInit = %d\n", r);
        exit(3);
    }
}

int main(int argc, char **argv) {
    unsigned long long iters = 200000, warmup = 20000, chunks = 20, batch = 256;
    unsigned long long bytes = 1ULL << 20;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--iters") == 0) iters = parse_count(v, "bad --iters");
        else if (strcmp(a, "--warmup") == 0) warmup = parse_count(v, "bad --warmup");
        else if (strcmp(a, "--chunks") == 0) chunks = parse_count(v, "bad --chunks");
        else if (strcmp(a, "--bytes") == 0) bytes = parse_count(v, "bad --bytes");
        else if (strcmp(a, "--launch-batch") == 0) batch = parse_count(v, "bad --launch-batch");
        else usage("unknown argument");
        i++;
    }
    if (chunks > iters) chunks = iters;
    alloc_bytes = (size_t)bytes;
    unsigned long long slots = chunks > iters / batch ? chunks : iters / batch + 1;
    double *buf = calloc(slots, sizeof(double));
    if (buf == NULL) {
        fprintf(stderr, "driver_bench: out of host memory\n");
        return 3;
    }

    load_driver();
    CUdevice dev = 0;
    CUcontext ctx = NULL;
    CHECK("setup", cuDeviceGet, &dev, 0);
    CHECK("setup", cuDevicePrimaryCtxRetain, &ctx, dev);
    CHECK("setup", cuCtxSetCurrent, ctx);

    size_t free_b = 0, total_b = 0, dev_total = 0;
    CHECK("setup", cuMemGetInfo, &free_b, &total_b);
    CHECK("setup", cuDeviceTotalMem, &dev_total, dev);
    printf("{\"op\":\"info\",\"shim_loaded\":%s,\"mem_free\":%zu,\"mem_total\":%zu,"
           "\"device_total\":%zu}\n",
           shim_loaded() ? "true" : "false", free_b, total_b, dev_total);
    fflush(stdout);
    bench_dev = dev;

    bench_loop("alloc_free", op_alloc_free, warmup, iters, chunks, buf);
    bench_loop("passthrough", op_passthrough, warmup, iters, chunks, buf);
    bench_loop("totalmem", op_totalmem, warmup, iters, chunks, buf);
    bench_loop("meminfo", op_meminfo, warmup, iters, chunks, buf);

    CUmodule mod = NULL;
    CUfunction fn = NULL;
    CUstream stream = NULL;
    CHECK("launch", cuModuleLoadData, &mod, SPIN_PTX);
    CHECK("launch", cuModuleGetFunction, &fn, mod, "spin");
    CHECK("launch", cuStreamCreate, &stream, CU_STREAM_NON_BLOCKING);
    bench_launch(fn, stream, warmup < batch ? batch : warmup, iters, batch, buf);
    CHECK("teardown", cuStreamDestroy, stream);
    CHECK("teardown", cuModuleUnload, mod);
    CHECK("teardown", cuDevicePrimaryCtxRelease, dev);
    free(buf);
    return 0;
}
