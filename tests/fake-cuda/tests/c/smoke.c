/* Smoke test of the fake libcuda.so.1 through dlopen/dlsym and cuGetProcAddress, like a real
 * application: devices, contexts, memory (data really moves), PTX modules, asynchronous launches,
 * events (timing accuracy), stream-ordered allocation, OOM. Prints one line per check. */
#include "check.h"
#include <sys/wait.h>
#include <unistd.h>

static const char *PTX =
    ".version 8.0\n.target sm_90\n.address_size 64\n"
    ".visible .entry spin(\n  .param .u64 spin_param_0\n)\n{\n  ret;\n}\n"
    ".visible .entry other(\n  .param .u64 p\n)\n{\n  ret;\n}\n";

/* `smoke spin KERNEL_MS TOTAL_MS`: saturate device 0 with back-to-back spin kernels. */
static int spin_mode(int kernel_ms, int total_ms) {
    H ctx, mod, fn;
    if (SYM(cuInit)(0) || SYM(cuDevicePrimaryCtxRetain)(&ctx, 0) || SYM(cuCtxSetCurrent)(ctx) ||
        SYM(cuModuleLoadData)(&mod, PTX) || SYM(cuModuleGetFunction)(&fn, mod, "spin"))
        return 3;
    uint64_t ns = (uint64_t)kernel_ms * 1000000ull;
    void *args[] = {&ns};
    double end = now_ms() + total_ms;
    while (now_ms() < end) {
        /* Keep a few kernels queued, like a real saturating workload. */
        for (int i = 0; i < 4; i++)
            if (SYM(cuLaunchKernel)(fn, 1, 1, 1, 1, 1, 1, 0, NULL, args, NULL)) return 4;
        if (SYM(cuCtxSynchronize)()) return 5;
    }
    return 0;
}

int main(int argc, char **argv) {
    lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) { printf("FAIL dlopen: %s\n", dlerror()); return 2; }
    if (argc == 4 && strcmp(argv[1], "spin") == 0) return spin_mode(atoi(argv[2]), atoi(argv[3]));
    CUresult r;
    int n = -1;
    r = SYM(cuDeviceGetCount)(&n);
    CHECK(r == 3, "cuDeviceGetCount before cuInit -> NOT_INITIALIZED (%d)", r);
    CHECK(SYM(cuInit)(0) == 0, "cuInit");
    CHECK(SYM(cuDeviceGetCount)(&n) == 0 && n >= 1, "cuDeviceGetCount = %d", n);
    CHECK(SYM(cuDeviceGetCount)(NULL) == 1, "null output -> INVALID_VALUE");
    CUdevice dev;
    CHECK(SYM(cuDeviceGet)(&dev, 0) == 0, "cuDeviceGet");
    CHECK(SYM(cuDeviceGet)(&dev, 99) == 101, "cuDeviceGet(99) -> INVALID_DEVICE");
    char name[64];
    SYM(cuDeviceGetName)(name, 64, 0);
    CHECK(strcmp(name, "gpumux Fake GPU") == 0, "name '%s'", name);
    size_t total = 0;
    SYM(cuDeviceTotalMem_v2)(&total, 0);
    CHECK(total > 0, "total %zu", total);
    int major = 0, minor = -1, pools = 0, bad = 0;
    SYM(cuDeviceGetAttribute)(&major, 75, 0);
    SYM(cuDeviceGetAttribute)(&minor, 76, 0);
    SYM(cuDeviceGetAttribute)(&pools, 115, 0);
    CHECK(major == 9 && minor == 0 && pools == 1, "CC %d.%d, pools %d", major, minor, pools);
    CHECK(SYM(cuDeviceGetAttribute)(&bad, 9999, 0) == 1, "bad attribute -> INVALID_VALUE");

    void *pa = NULL, *pb = NULL; int st = -1;
    CUresult (*gpa)(const char *, void **, int, unsigned long long, int *) = must("cuGetProcAddress_v2");
    gpa("cuMemAlloc", &pa, 3020, 0, &st);
    CHECK(pa == dlsym(lib, "cuMemAlloc_v2") && st == 0, "cuGetProcAddress cuMemAlloc@3020 -> cuMemAlloc_v2");
    gpa("cuMemAlloc", &pb, 2000, 0, &st);
    CHECK(pb == dlsym(lib, "cuMemAlloc"), "cuGetProcAddress cuMemAlloc@2000 -> cuMemAlloc");
    gpa("cuLaunchKernel", &pb, 7000, 2, &st);
    CHECK(pb == dlsym(lib, "cuLaunchKernel_ptsz"), "ptsz flag -> cuLaunchKernel_ptsz");
    r = gpa("cuLaunchKernel", &pb, 4000, 2, &st);
    CHECK(r == 0 && st == 2 && pb == NULL, "ptsz flag before _ptsz -> VERSION_NOT_SUFFICIENT");
    /* Like NVIDIA's driver: _v2 answers an unknown name with CUDA_SUCCESS and a status. */
    r = gpa("cuNoSuch", &pb, 12000, 0, &st);
    CHECK(r == 0 && st == 1 && pb == NULL, "unknown -> SYMBOL_NOT_FOUND");

    CUdeviceptr d0;
    CHECK(SYM(cuMemAlloc_v2)(&d0, 16) == 201, "cuMemAlloc without context -> INVALID_CONTEXT");
    H ctx;
    CHECK(SYM(cuDevicePrimaryCtxRetain)(&ctx, 0) == 0, "retain primary");
    CHECK(SYM(cuCtxSetCurrent)(ctx) == 0, "set current");

    size_t free0, tot0, free1, tot1;
    SYM(cuMemGetInfo_v2)(&free0, &tot0);
    const size_t N = 1 << 20;
    CUdeviceptr a, b;
    CHECK(SYM(cuMemAlloc_v2)(&a, N) == 0 && SYM(cuMemAlloc_v2)(&b, N) == 0, "two 1 MiB allocations");
    SYM(cuMemGetInfo_v2)(&free1, &tot1);
    CHECK(free0 - free1 == 2 * N && tot0 == total, "mem info: free dropped by %zu", free0 - free1);
    CHECK(SYM(cuMemAlloc_v2)(&d0, 0) == 1, "0-byte alloc -> INVALID_VALUE");
    CHECK(SYM(cuMemAlloc_v2)(&d0, total) == 2, "over-capacity alloc -> OUT_OF_MEMORY");
    unsigned char *h = malloc(N), *back = malloc(N);
    for (size_t i = 0; i < N; i++) h[i] = (unsigned char)(i * 7);
    CHECK(SYM(cuMemcpyHtoD_v2)(a, h, N) == 0, "HtoD");
    CHECK(SYM(cuMemcpyDtoD_v2)(b, a, N) == 0, "DtoD");
    CHECK(SYM(cuMemcpyDtoH_v2)(back, b, N) == 0 && memcmp(h, back, N) == 0, "DtoH bytes match");
    CHECK(SYM(cuMemcpyHtoD_v2)(a + N - 8, h, 16) == 1, "copy past allocation end -> INVALID_VALUE");
    CHECK(SYM(cuMemcpyDtoH_v2)(back, (CUdeviceptr)0x1234, 4) == 1, "unknown device pointer -> INVALID_VALUE");
    SYM(cuMemsetD32_v2)(a, 0xdeadbeefu, N / 4);
    SYM(cuMemcpyDtoH_v2)(back, a, 8);
    CHECK(((uint32_t *)back)[1] == 0xdeadbeefu, "memset D32");

    H mod, fn, fn2;
    CHECK(SYM(cuModuleLoadData)(&mod, PTX) == 0, "load PTX");
    CHECK(SYM(cuModuleGetFunction)(&fn, mod, "spin") == 0, "get spin");
    CHECK(SYM(cuModuleGetFunction)(&fn2, mod, "missing") == 500, "missing function -> NOT_FOUND");
    H s, e0, e1;
    SYM(cuStreamCreate)(&s, 0);
    SYM(cuEventCreate)(&e0, 0);
    SYM(cuEventCreate)(&e1, 0);
    double worst = 0;
    for (int i = 0; i < 5; i++) {
        uint64_t ns = 20000000ull; /* 20 ms */
        void *args[] = {&ns};
        SYM(cuEventRecord)(e0, s);
        double t0 = now_ms();
        r = SYM(cuLaunchKernel)(fn, 1, 1, 1, 32, 1, 1, 0, s, args, NULL);
        double launch = now_ms() - t0;
        SYM(cuEventRecord)(e1, s);
        CUresult q = SYM(cuEventQuery)(e1);
        SYM(cuEventSynchronize)(e1);
        float ms = 0;
        SYM(cuEventElapsedTime)(&ms, e0, e1);
        double err = (ms - 20.0) / 20.0;
        if (err < 0) err = -err;
        if (err > worst) worst = err;
        if (i == 0) {
            CHECK(r == 0 && launch < 5.0, "launch is asynchronous (%.3f ms)", launch);
            CHECK(q == 600, "event not ready while the kernel runs");
        }
        printf("     event elapsed %.3f ms for a 20 ms kernel\n", ms);
    }
    CHECK(worst < 0.05, "event timing error %.2f%% (< 5%%)", worst * 100);

    /* Legacy NULL stream orders after blocking stream s. */
    uint64_t ns = 30000000ull;
    void *args[] = {&ns};
    double t0 = now_ms();
    SYM(cuLaunchKernel)(fn, 1, 1, 1, 1, 1, 1, 0, s, args, NULL);
    SYM(cuStreamSynchronize)(NULL);
    double waited = now_ms() - t0;
    CHECK(waited >= 29.0, "NULL stream waits for blocking stream (%.1f ms)", waited);

    CHECK(SYM(cuLaunchKernel)(fn, 0, 1, 1, 1, 1, 1, 0, s, args, NULL) == 1, "grid 0 -> INVALID_VALUE");
    CHECK(SYM(cuLaunchKernel)(fn, 1, 1, 1, 2048, 1, 1, 0, s, args, NULL) == 1, "block 2048 -> INVALID_VALUE");

    /* Stream-ordered allocation: memory returns when the free executes. */
    CUdeviceptr c;
    size_t fa, fb, fc, tt;
    SYM(cuMemGetInfo_v2)(&fa, &tt);
    CHECK(SYM(cuMemAllocAsync)(&c, 4 * N, s) == 0, "cuMemAllocAsync");
    SYM(cuMemGetInfo_v2)(&fb, &tt);
    ns = 50000000ull;
    SYM(cuLaunchKernel)(fn, 1, 1, 1, 1, 1, 1, 0, s, args, NULL);
    CHECK(SYM(cuMemFreeAsync)(c, s) == 0, "cuMemFreeAsync");
    CHECK(SYM(cuMemFreeAsync)(c, s) == 1, "double async free -> INVALID_VALUE");
    SYM(cuMemGetInfo_v2)(&fc, &tt);
    CHECK(fa - fb == 4 * N && fc == fb, "async alloc charged; not returned before the free executes");
    SYM(cuStreamSynchronize)(s);
    SYM(cuMemGetInfo_v2)(&fc, &tt);
    CHECK(fc == fa, "returned after the free executed");

    /* A forked child is a new process: it must cuInit again and gets its own accounting. */
    pid_t pid = fork();
    if (pid == 0) {
        CUdeviceptr x;
        H cctx;
        int ok = SYM(cuMemAlloc_v2)(&x, 64) == 3;
        ok = ok && SYM(cuInit)(0) == 0 && SYM(cuDevicePrimaryCtxRetain)(&cctx, 0) == 0;
        ok = ok && SYM(cuCtxSetCurrent)(cctx) == 0 && SYM(cuMemAlloc_v2)(&x, N) == 0;
        size_t f, t;
        ok = ok && SYM(cuMemGetInfo_v2)(&f, &t) == 0;
        _exit(ok ? 0 : 1);
    }
    int status = -1;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "forked child: NOT_INITIALIZED until cuInit, then works");
    size_t fd, td;
    SYM(cuMemGetInfo_v2)(&fd, &td);
    CHECK(fd == fa, "the exited child's memory is reclaimed");

    CHECK(SYM(cuMemFree_v2)(a) == 0 && SYM(cuMemFree_v2)(a) == 1, "free, double free -> INVALID_VALUE");
    SYM(cuMemFree_v2)(b);
    SYM(cuStreamDestroy_v2)(s);
    SYM(cuModuleUnload)(mod);
    CHECK(SYM(cuDevicePrimaryCtxRelease_v2)(0) == 0, "release primary");
    printf("%s (%d failures)\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
