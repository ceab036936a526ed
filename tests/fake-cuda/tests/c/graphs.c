/* CUDA graphs on the fake libcuda.so.1, through dlsym like an application: stream capture (and
 * the errors of illegal operations during a capture, by capture mode), explicit graphs with
 * kernel/memset/memcpy/host/event/empty nodes, instantiation, launch (dependency order, the
 * device time the kernels take), executable graph updates, and graph memory (address fixed at
 * the node, physical memory committed at launch and kept in the graph memory pool until
 * trimmed). Prints one line per check; the device must have 1 GiB. */
#include "check.h"
#include <pthread.h>

static const char *PTX =
    ".version 8.0\n.target sm_90\n.address_size 64\n"
    ".visible .entry spin(\n  .param .u64 spin_param_0\n)\n{\n  ret;\n}\n";

typedef struct { H func; unsigned grid[3], block[3], shmem; void **params; void **extra; } KernelNodeParams;
typedef struct { CUdeviceptr dst; size_t pitch; unsigned value, elem; size_t width, height; } MemsetNodeParams;
typedef struct { void (*fn)(void *); void *data; } HostNodeParams;
typedef struct {
    size_t srcX, srcY, srcZ, srcLOD; int srcType; const void *srcHost; CUdeviceptr srcDevice; H srcArray; void *r0; size_t srcPitch, srcHeight;
    size_t dstX, dstY, dstZ, dstLOD; int dstType; void *dstHost; CUdeviceptr dstDevice; H dstArray; void *r1; size_t dstPitch, dstHeight;
    size_t width, height, depth;
} Memcpy3D;
typedef struct {
    struct { int allocType, handleTypes, locType, locId; void *win32; size_t maxSize; unsigned short usage; unsigned char reserved[54]; } pool;
    const void *access; size_t accessCount; size_t bytesize; CUdeviceptr dptr;
} MemAllocNodeParams;

static H ctx, fn, stream;
static volatile int host_ran;
static void host_fn(void *p) { host_ran += *(int *)p; }

/* Captures `count` spin(ns) kernels on `stream` into a graph. */
static H capture_spins(int count, uint64_t ns) {
    void *args[] = {&ns};
    H g = NULL;
    if (SYM(cuStreamBeginCapture_v2)(stream, 0)) return NULL;
    for (int i = 0; i < count; i++) SYM(cuLaunchKernel)(fn, 1, 1, 1, 1, 1, 1, 0, stream, args, NULL);
    return SYM(cuStreamEndCapture)(stream, &g) ? NULL : g;
}

static uint64_t graph_mem(int attr) { uint64_t v = 0; SYM(cuDeviceGetGraphMemAttribute)(0, attr, &v); return v; }
static size_t device_free(void) { size_t f = 0, t = 0; SYM(cuMemGetInfo_v2)(&f, &t); return f; }

static void *other_thread_sync(void *arg) {
    SYM(cuCtxSetCurrent)(ctx);
    *(CUresult *)arg = SYM(cuCtxSynchronize)();
    return NULL;
}

int main(void) {
    lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) { printf("FAIL dlopen: %s\n", dlerror()); return 2; }
    H mod;
    if (SYM(cuInit)(0) || SYM(cuDevicePrimaryCtxRetain)(&ctx, 0) || SYM(cuCtxSetCurrent)(ctx) ||
        SYM(cuModuleLoadData)(&mod, PTX) || SYM(cuModuleGetFunction)(&fn, mod, "spin") ||
        SYM(cuStreamCreate)(&stream, 1))
        return 3;
    CUresult r;
    int st = -1;

    /* ---- capture ---- */
    uint64_t ns = 2000000; /* 2 ms */
    void *args[] = {&ns};
    CHECK(SYM(cuStreamBeginCapture_v2)(stream, 0) == 0, "begin capture (global)");
    SYM(cuStreamIsCapturing)(stream, &st);
    CHECK(st == 1, "capturing: status ACTIVE");
    for (int i = 0; i < 8; i++) SYM(cuLaunchKernel)(fn, 1, 1, 1, 1, 1, 1, 0, stream, args, NULL);
    unsigned long long id = 0; H cg = NULL; const H *deps = NULL; size_t ndeps = 0;
    CHECK(SYM(cuStreamGetCaptureInfo_v2)(stream, &st, &id, &cg, &deps, &ndeps) == 0 && st == 1 && id != 0 && cg && ndeps == 1,
          "capture info: id %llu, one dependency", id);
    CHECK(SYM(cuLaunchKernel)(fn, 1, 1, 1, 1, 1, 1, 0, NULL, args, NULL) == 0,
          "legacy stream work while a non-blocking stream captures is fine");
    CHECK(SYM(cuStreamSynchronize)(NULL) == 900, "but syncing it is unsafe during the thread's global capture");
    CHECK(SYM(cuStreamEndCapture)(stream, &cg) == 901, "... which invalidates the capture");
    CHECK(SYM(cuStreamBeginCapture_v2)(stream, 0) == 0, "capture again");
    for (int i = 0; i < 8; i++) SYM(cuLaunchKernel)(fn, 1, 1, 1, 1, 1, 1, 0, stream, args, NULL);
    SYM(cuStreamGetCaptureInfo_v2)(stream, &st, &id, &cg, &deps, &ndeps);
    ns = 99; /* the captured nodes keep the value they were given */
    H g = NULL;
    CHECK(SYM(cuStreamEndCapture)(stream, &g) == 0 && g == cg, "end capture -> the graph");
    SYM(cuStreamIsCapturing)(stream, &st);
    CHECK(st == 0, "after capture: status NONE");
    size_t n = 0;
    SYM(cuGraphGetNodes)(g, NULL, &n);
    H nodes[16]; size_t cap = 16;
    SYM(cuGraphGetNodes)(g, nodes, &cap);
    int type = -1; size_t nd = 9;
    SYM(cuGraphNodeGetType)(nodes[3], &type);
    SYM(cuGraphNodeGetDependencies)(nodes[3], NULL, &nd);
    CHECK(n == 8 && cap == 8 && type == 0 && nd == 1, "8 kernel nodes in a chain (%zu nodes)", n);
    KernelNodeParams kp;
    CHECK(SYM(cuGraphKernelNodeGetParams)(nodes[0], &kp) == 0 && kp.func == fn && *(uint64_t *)kp.params[0] == 2000000,
          "kernel node keeps its function and its copied argument");
    size_t ne = 0;
    SYM(cuGraphGetEdges)(g, NULL, NULL, &ne);
    CHECK(ne == 7, "7 edges");

    H exec = NULL, e0, e1;
    CHECK(SYM(cuGraphInstantiateWithFlags)(&exec, g, 0ULL) == 0, "instantiate");
    SYM(cuEventCreate)(&e0, 0);
    SYM(cuEventCreate)(&e1, 0);
    SYM(cuEventRecord)(e0, stream);
    double t0 = now_ms();
    for (int i = 0; i < 5; i++) r = SYM(cuGraphLaunch)(exec, stream);
    double launch_ms = now_ms() - t0;
    SYM(cuEventRecord)(e1, stream);
    SYM(cuEventSynchronize)(e1);
    float ms = 0;
    SYM(cuEventElapsedTime)(&ms, e0, e1);
    CHECK(r == 0 && launch_ms < 79, "5 launches are asynchronous (%.2f ms for 80 ms of kernels)", launch_ms);
    /* lower bounds are exact (the device is busy that long); upper bounds leave room for a busy host */
    CHECK(ms >= 79 && ms < 200, "5 x 8 x 2 ms kernels take %.1f ms on the device", ms);

    /* kernel node parameters of the executable graph */
    uint64_t ns10 = 10000000;
    void *args10[] = {&ns10};
    KernelNodeParams np = {fn, {1, 1, 1}, {1, 1, 1}, 0, args10, NULL};
    CHECK(SYM(cuGraphExecKernelNodeSetParams)(exec, nodes[0], &np) == 0, "exec kernel node set params");
    SYM(cuEventRecord)(e0, stream);
    SYM(cuGraphLaunch)(exec, stream);
    SYM(cuEventRecord)(e1, stream);
    SYM(cuEventSynchronize)(e1);
    SYM(cuEventElapsedTime)(&ms, e0, e1);
    CHECK(ms >= 23.5 && ms < 60, "one node now 10 ms: %.1f ms", ms);
    /* whole-graph update from a recapture with other arguments */
    H g2 = capture_spins(8, 1000000);
    unsigned long long upd[3] = {99, 0, 0};
    CHECK(g2 && SYM(cuGraphExecUpdate_v2)(exec, g2, upd) == 0 && upd[0] == 0, "exec update from a recapture");
    SYM(cuEventRecord)(e0, stream);
    SYM(cuGraphLaunch)(exec, stream);
    SYM(cuEventRecord)(e1, stream);
    SYM(cuEventSynchronize)(e1);
    SYM(cuEventElapsedTime)(&ms, e0, e1);
    CHECK(ms >= 7.5 && ms < 30, "updated: 8 x 1 ms = %.1f ms", ms);
    H g3 = capture_spins(3, 1000000);
    CHECK(SYM(cuGraphExecUpdate_v2)(exec, g3, upd) == 910 && upd[0] == 2, "other topology -> GRAPH_EXEC_UPDATE_FAILURE, TOPOLOGY_CHANGED");
    SYM(cuGraphDestroy)(g2);
    SYM(cuGraphDestroy)(g3);

    /* ---- illegal operations during capture ---- */
    SYM(cuStreamBeginCapture_v2)(stream, 0);
    CHECK(SYM(cuStreamSynchronize)(stream) == 900, "sync of a capturing stream -> STREAM_CAPTURE_UNSUPPORTED");
    SYM(cuStreamIsCapturing)(stream, &st);
    CHECK(st == 2, "the capture is invalidated");
    CHECK(SYM(cuLaunchKernel)(fn, 1, 1, 1, 1, 1, 1, 0, stream, args, NULL) == 901, "launch into it -> STREAM_CAPTURE_INVALIDATED");
    H gi = (H)1;
    CHECK(SYM(cuStreamEndCapture)(stream, &gi) == 901 && gi == NULL, "end -> INVALIDATED, no graph");

    CUdeviceptr dp;
    SYM(cuStreamBeginCapture_v2)(stream, 0);
    CHECK(SYM(cuMemAlloc_v2)(&dp, 4096) == 900, "cuMemAlloc during a global capture -> UNSUPPORTED");
    CHECK(SYM(cuStreamEndCapture)(stream, &gi) == 901, "... and the capture is invalidated");
    SYM(cuStreamBeginCapture_v2)(stream, 2);
    CHECK(SYM(cuMemAlloc_v2)(&dp, 4096) == 0 && SYM(cuMemFree_v2)(dp) == 0, "allowed during a relaxed capture");
    CHECK(SYM(cuStreamEndCapture)(stream, &gi) == 0, "relaxed capture ends fine");
    SYM(cuGraphDestroy)(gi);
    SYM(cuStreamBeginCapture_v2)(stream, 0);
    unsigned mode = 2;
    SYM(cuThreadExchangeStreamCaptureMode)(&mode);
    CHECK(mode == 0, "thread mode was global");
    CHECK(SYM(cuMemAlloc_v2)(&dp, 4096) == 0, "a relaxed thread may allocate during its own global capture");
    SYM(cuMemFree_v2)(dp);
    SYM(cuThreadExchangeStreamCaptureMode)(&mode);
    CHECK(SYM(cuStreamEndCapture)(stream, &gi) == 0, "capture survived");
    SYM(cuGraphDestroy)(gi);

    SYM(cuStreamBeginCapture_v2)(stream, 1);
    CUresult other = -1;
    pthread_t th;
    pthread_create(&th, NULL, other_thread_sync, &other);
    pthread_join(th, NULL);
    CHECK(other == 900, "another thread's cuCtxSynchronize during a capture -> UNSUPPORTED (%d)", other);
    CHECK(SYM(cuStreamEndCapture)(stream, &gi) == 901, "... and invalidates it, whatever the mode");

    H blocking;
    SYM(cuStreamCreate)(&blocking, 0);
    SYM(cuStreamBeginCapture_v2)(blocking, 1);
    CHECK(SYM(cuLaunchKernel)(fn, 1, 1, 1, 1, 1, 1, 0, NULL, args, NULL) == 906,
          "legacy stream work while a blocking stream captures -> STREAM_CAPTURE_IMPLICIT");
    CHECK(SYM(cuStreamEndCapture)(blocking, &gi) == 901, "... invalidated");

    /* fork/join across streams */
    H side, ev_fork, ev_join;
    SYM(cuStreamCreate)(&side, 1);
    SYM(cuEventCreate)(&ev_fork, 2);
    SYM(cuEventCreate)(&ev_join, 2);
    ns = 1000000;
    SYM(cuStreamBeginCapture_v2)(stream, 0);
    SYM(cuLaunchKernel)(fn, 1, 1, 1, 1, 1, 1, 0, stream, args, NULL);
    SYM(cuEventRecord)(ev_fork, stream);
    SYM(cuStreamWaitEvent)(side, ev_fork, 0);
    SYM(cuStreamIsCapturing)(side, &st);
    CHECK(st == 1, "a stream waiting on a captured event joins the capture");
    SYM(cuLaunchKernel)(fn, 1, 1, 1, 1, 1, 1, 0, side, args, NULL);
    SYM(cuLaunchKernel)(fn, 1, 1, 1, 1, 1, 1, 0, stream, args, NULL);
    H unjoined = NULL;
    SYM(cuEventRecord)(ev_join, side);
    SYM(cuStreamWaitEvent)(stream, ev_join, 0);
    CHECK(SYM(cuStreamEndCapture)(stream, &unjoined) == 0, "joined capture ends");
    n = 0;
    SYM(cuGraphGetNodes)(unjoined, NULL, &n);
    cap = 16;
    SYM(cuGraphGetRootNodes)(unjoined, nodes, &cap);
    CHECK(n == 3 && cap == 1, "fork/join graph: 3 nodes, 1 root");
    SYM(cuGraphDestroy)(unjoined);

    /* ---- explicit graph: memset -> memcpy to host -> host fn; event record ---- */
    CUdeviceptr buf;
    SYM(cuMemAlloc_v2)(&buf, 1 << 20);
    H eg, nset, ncpy, nhost, nempty, nrec;
    SYM(cuGraphCreate)(&eg, 0);
    MemsetNodeParams msp = {buf, 0, 0x5a5a5a5a, 4, 1024, 1};
    CHECK(SYM(cuGraphAddMemsetNode)(&nset, eg, NULL, 0, &msp, ctx) == 0, "memset node");
    uint32_t host[1024];
    memset(host, 0, sizeof host);
    Memcpy3D cp;
    memset(&cp, 0, sizeof cp);
    cp.srcType = 2; cp.srcDevice = buf; cp.dstType = 1; cp.dstHost = host; cp.width = sizeof host; cp.height = 1; cp.depth = 1;
    CHECK(SYM(cuGraphAddMemcpyNode)(&ncpy, eg, &nset, 1, &cp, ctx) == 0, "memcpy node after it");
    int add = 1;
    HostNodeParams hp = {host_fn, &add};
    CHECK(SYM(cuGraphAddHostNode)(&nhost, eg, &ncpy, 1, &hp) == 0, "host node after it");
    SYM(cuGraphAddEmptyNode)(&nempty, eg, &nhost, 1);
    H ev;
    SYM(cuEventCreate)(&ev, 0);
    SYM(cuGraphAddEventRecordNode)(&nrec, eg, &nempty, 1, ev);
    MemsetNodeParams bad = {0x1234, 0, 0, 4, 16, 1};
    H nbad;
    CHECK(SYM(cuGraphAddMemsetNode)(&nbad, eg, NULL, 0, &bad, ctx) == 1, "memset node on an unknown pointer -> INVALID_VALUE");
    H dup[2] = {nset, nset};
    CHECK(SYM(cuGraphAddEmptyNode)(&nbad, eg, dup, 2) == 1, "duplicate dependencies -> INVALID_VALUE");
    H eexec;
    CHECK(SYM(cuGraphInstantiateWithFlags)(&eexec, eg, 0ULL) == 0, "instantiate explicit graph");
    CHECK(SYM(cuGraphLaunch)(eexec, stream) == 0 && SYM(cuStreamSynchronize)(stream) == 0, "launch and sync");
    CHECK(host[0] == 0x5a5a5a5a && host[1023] == 0x5a5a5a5a && host_ran == 1, "memset, copy and host fn ran in order");
    CHECK(SYM(cuEventQuery)(ev) == 0, "event record node reached");
    SYM(cuGraphExecDestroy)(eexec);
    SYM(cuGraphDestroy)(eg);
    SYM(cuMemFree_v2)(buf);

    /* ---- graph memory ---- */
    size_t free0 = device_free();
    const size_t M = 256u << 20;
    H mg, nalloc, nk, nfree;
    SYM(cuGraphCreate)(&mg, 0);
    MemAllocNodeParams ap;
    memset(&ap, 0, sizeof ap);
    ap.pool.allocType = 1; ap.pool.locType = 1; ap.pool.locId = 0; ap.bytesize = M;
    CHECK(SYM(cuGraphAddMemAllocNode)(&nalloc, mg, NULL, 0, &ap) == 0 && ap.dptr != 0, "alloc node: address fixed at creation");
    KernelNodeParams knp = {fn, {1, 1, 1}, {1, 1, 1}, 0, args, NULL};
    SYM(cuGraphAddKernelNode)(&nk, mg, &nalloc, 1, &knp);
    H nms;
    MemsetNodeParams gms = {ap.dptr, 0, 7, 1, 4096, 1};
    CHECK(SYM(cuGraphAddMemsetNode)(&nms, mg, &nk, 1, &gms, ctx) == 0, "memset node on the graph allocation");
    CHECK(SYM(cuGraphAddMemFreeNode)(&nfree, mg, &nms, 1, ap.dptr) == 0, "free node");
    CHECK(SYM(cuGraphAddMemFreeNode)(&nbad, mg, &nfree, 1, ap.dptr) == 1, "second free of it -> INVALID_VALUE");
    CHECK(device_free() == free0, "nothing charged for the nodes");
    H mexec, mexec2;
    CHECK(SYM(cuGraphInstantiateWithFlags)(&mexec, mg, 0ULL) == 0, "instantiate");
    CHECK(SYM(cuGraphInstantiateWithFlags)(&mexec2, mg, 0ULL) == 1, "a second instantiation of a graph with memory nodes -> INVALID_VALUE");
    CHECK(device_free() == free0 && graph_mem(2) == 0, "instantiation commits nothing");
    CHECK(SYM(cuGraphLaunch)(mexec, stream) == 0, "launch");
    CHECK(free0 - device_free() == M && graph_mem(2) == M && graph_mem(0) == M, "launch committed %zu MiB (reserved %llu)",
          (free0 - device_free()) >> 20, (unsigned long long)graph_mem(2));
    SYM(cuGraphLaunch)(mexec, stream);
    SYM(cuStreamSynchronize)(stream);
    CHECK(free0 - device_free() == M && graph_mem(3) == M, "replay reuses the mapping");
    CHECK(SYM(cuGraphExecDestroy)(mexec) == 0, "exec destroy");
    CHECK(graph_mem(0) == 0 && graph_mem(2) == M && free0 - device_free() == M, "the pool keeps the memory after destroy");
    CHECK(SYM(cuDeviceGraphMemTrim)(0) == 0 && graph_mem(2) == 0 && device_free() == free0, "trim gives it back");
    CHECK(SYM(cuGraphInstantiateWithFlags)(&mexec, mg, 0ULL) == 0, "instantiate again after destroy");
    SYM(cuGraphLaunch)(mexec, stream);
    SYM(cuStreamSynchronize)(stream);
    CHECK(SYM(cuDeviceGraphMemTrim)(0) == 0 && graph_mem(2) == 0, "trim unmaps an idle graph");
    CHECK(SYM(cuGraphLaunch)(mexec, stream) == 0 && graph_mem(2) == M, "its next launch maps again");
    SYM(cuStreamSynchronize)(stream);
    SYM(cuGraphExecDestroy)(mexec);
    SYM(cuDeviceGraphMemTrim)(0);
    SYM(cuGraphDestroy)(mg);

    /* captured stream-ordered allocation that outlives the graph */
    CUdeviceptr live = 0;
    H ag, aexec;
    SYM(cuStreamBeginCapture_v2)(stream, 0);
    CHECK(SYM(cuMemAllocAsync)(&live, M, stream) == 0 && live != 0, "cuMemAllocAsync in capture: an alloc node");
    SYM(cuLaunchKernel)(fn, 1, 1, 1, 1, 1, 1, 0, stream, args, NULL);
    SYM(cuStreamEndCapture)(stream, &ag);
    CHECK(device_free() == free0, "nothing charged by the captured allocation");
    SYM(cuGraphInstantiateWithFlags)(&aexec, ag, 0ULL);
    CHECK(SYM(cuGraphLaunch)(aexec, stream) == 0 && free0 - device_free() == M, "launch commits it");
    SYM(cuStreamSynchronize)(stream);
    unsigned char probe[8] = {1};
    CHECK(SYM(cuMemcpyDtoH_v2)(probe, live, 8) == 0, "the live allocation is usable after the launch");
    CHECK(SYM(cuGraphLaunch)(aexec, stream) == 1, "relaunch while it is unfreed -> INVALID_VALUE");
    CHECK(SYM(cuMemFreeAsync)(live, stream) == 0 && SYM(cuGraphLaunch)(aexec, stream) == 0, "freed: relaunch works");
    SYM(cuStreamSynchronize)(stream);
    SYM(cuGraphExecDestroy)(aexec);
    CHECK(SYM(cuDeviceGraphMemTrim)(0) == 0 && free0 - device_free() == M, "a live allocation survives destroy and trim");
    CHECK(SYM(cuMemFree_v2)(live) == 0 && SYM(cuDeviceGraphMemTrim)(0) == 0 && device_free() == free0, "freed and trimmed: back");
    SYM(cuGraphDestroy)(ag);

    /* over the device's capacity: the launch fails, nothing is committed */
    H big, bexec, nbig;
    SYM(cuGraphCreate)(&big, 0);
    ap.bytesize = (size_t)2 << 30;
    SYM(cuGraphAddMemAllocNode)(&nbig, big, NULL, 0, &ap);
    SYM(cuGraphAddMemFreeNode)(&nbad, big, &nbig, 1, ap.dptr);
    CHECK(SYM(cuGraphInstantiateWithFlags)(&bexec, big, 0ULL) == 0, "instantiate a 2 GiB graph on a 1 GiB device");
    CHECK(SYM(cuGraphLaunch)(bexec, stream) == 2 && graph_mem(2) == 0 && device_free() == free0, "launch -> OUT_OF_MEMORY, nothing committed");
    SYM(cuGraphExecDestroy)(bexec);
    SYM(cuGraphDestroy)(big);

    SYM(cuGraphExecDestroy)(exec);
    SYM(cuGraphDestroy)(g);
    SYM(cuStreamDestroy_v2)(stream);
    CHECK(SYM(cuDevicePrimaryCtxRelease_v2)(0) == 0, "release primary");
    printf("%s (%d failures)\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
