/*
 * driver_workload.c: a CUDA driver API workload that reaches the driver exactly the
 * way the CUDA runtime does: dlopen("libcuda.so.1"), ONE dlsym of
 * "cuGetProcAddress_v2", then every entry point through cuGetProcAddress_v2 at
 * CUDA version 12090 (so e.g. "cuMemAlloc" yields the cuMemAlloc_v2 ABI).
 *
 * No cuda.h: the few types and prototypes are declared here from the documented ABI.
 * Every result is printed as one JSON object per line on stdout, flushed at once, with
 * the CUresult of every driver call that matters.
 *
 * Build: cc -O2 -Wall -Wextra -pthread -o driver_workload driver_workload.c -ldl
 *
 * Usage:
 *   driver_workload info
 *   driver_workload ops "<script>"        e.g. "alloc:a:900MiB alloc:b:200MiB free:a meminfo"
 *       ops: KIND:NAME:SIZE (alloc pitch managed async pool vmm array array3d), free:NAME,
 *       meminfo, memcpy-check:NAME, spin:NS[:COUNT], launch:NS[:COUNT], sync, sleep:MS,
 *       legacy-launch:COUNT (COUNT calls each of cuLaunch, cuLaunchGrid, cuLaunchGridAsync
 *       and cuLaunchCooperativeKernelMultiDevice with the spin function; their results),
 *       device:N, reset (primary context reset: the driver frees its allocations),
 *       nocontext (no current context on this thread, as NCCL/vLLM create VMM memory),
 *       graph:NAME:SIZE (a graph allocating SIZE in an allocation node and freeing it in a free
 *       node, instantiated), graph-launch:NAME (launch + synchronize: the driver commits the
 *       graph's memory), graph-destroy:NAME (executable graph and graph), graph-trim
 *       (cuDeviceGraphMemTrim; reports the graph memory the driver still holds)
 *       ctx:NAME (cuCtxCreate on the current device; the primary context stays current),
 *       module:NAME (cuModuleLoadData of the spin PTX), library:NAME (cuLibraryLoadData of
 *       it), drop:NAME (destroys / unloads what NAME made)
 *   driver_workload spin --ns N [--count K]
 *   driver_workload stress --threads T --seconds S --max-bytes B [--seed X]
 *   driver_workload hold --bytes N --seconds S
 *   driver_workload fork --parent-bytes N --child-bytes M
 *       the parent allocates N and forks; the child initialises CUDA itself (a forked child
 *       cannot use its parent's context), allocates M and exits; both report
 *   driver_workload load --ns N --seconds S [--batch B] [--pause-ms P] [--own-context 1] [--report-ms R]
 *                        [--linger-s L] [--gap-us G]
 *       repeatedly: launch B spin(N) kernels, synchronize, pause P ms; reports how long each
 *       batch waited beyond its own kernel time (its wait for the device), p50/p99/max.
 *       G > 0: G µs of host time between two launches of a batch (a launcher late to launch,
 *       as on a busy host: the device may run dry within the batch).
 *       R > 0: after a batch, at most every R ms, a "load-progress" line with the kernels
 *       completed so far and when (CLOCK_MONOTONIC ms), plus one after the last batch.
 *       L > 0: after the report, keep the process and its context alive, idle, L seconds
 *   driver_workload graph --ns N --kernels K --seconds S [--batch B] [--pause-ms P] [--mem M]
 *                         [--report-ms R] [--linger-s L] [--capture-pause-ms C]
 *       a decode-like step: K spin(N) kernels (with --mem, between a stream-ordered allocation
 *       of M bytes and its free) captured ONCE into a CUDA graph (C > 0: C ms of host work
 *       between captured launches, as a framework tracing a model), instantiated, uploaded, then
 *       replayed like `load`: B launches of the graph, synchronize, pause P ms; reports as `load`
 *       does (op "graph"), kernels counted per node
 *   driver_workload launch-rate [--ns N] [--count K] [--batch B] [--warmup W]
 *       launches K spin(N) kernels, synchronizing only after every B; reports the time spent
 *       inside the launch calls, ns per launch (overall, median and fastest batch)
 *   driver_workload interactive --rate R --kernels K --ns N --seconds S [--seed X] [--device D]
 *       an interactive service: requests arrive at random (a Poisson process of R per second,
 *       from seed X), each K spin(N) kernels launched back to back then a stream synchronize;
 *       served one at a time, in order (a request that arrives while another is served waits).
 *       Reports each request's latency from its arrival to its completion (latencies_ms, in
 *       arrival order) and its arrival (arrivals_ms, CLOCK_MONOTONIC ms), p50/p99/p999/max, the
 *       requests served, and when it started and ended (CLOCK_MONOTONIC ms)
 *   driver_workload queue --ns N --seconds S [--depth D]
 *       keeps D spin(N) kernels queued on its stream for S seconds (an event after each
 *       kernel; before launching another it waits for the event D kernels back), then reports
 *       the kernels run, the event-measured time from before the first to after the last
 *       (event_ms: equal to kernels x N when the device ran them back to back), its
 *       CLOCK_MONOTONIC start and end (start_ms, end_ms)
 *
 * Exit codes: 0 the command ran (driver errors are reported as data), 2 usage error,
 * 3 the driver could not be loaded or cuInit failed.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- CUDA driver ABI (from the public driver API documentation) ---- */
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUmod_st *CUmodule;
typedef struct CUlib_st *CUlibrary;
typedef struct CUfunc_st *CUfunction;
typedef struct CUmemPoolHandle_st *CUmemoryPool;
typedef struct CUarray_st *CUarray;
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphNode_st *CUgraphNode;
typedef struct CUgraphExec_st *CUgraphExec;

#define CUDA_SUCCESS 0
#define CUDA_ERROR_OUT_OF_MEMORY 2
#define CUDA_ERROR_NOT_FOUND 500
#define CU_GET_PROC_ADDRESS_DEFAULT 0ULL
#define CUDA_VERSION_ASKED 12090
#define CU_MEM_ATTACH_GLOBAL 0x1
#define CU_EVENT_DEFAULT 0x0
#define CU_STREAM_NON_BLOCKING 0x1
#define CU_AD_FORMAT_FLOAT 0x20
#define CU_MEM_ALLOCATION_TYPE_PINNED 0x1
#define CU_MEM_HANDLE_TYPE_NONE 0x0
#define CU_MEM_LOCATION_TYPE_DEVICE 0x1
#define CU_MEM_ALLOC_GRANULARITY_MINIMUM 0x0
#define CU_MEM_ACCESS_FLAGS_PROT_READWRITE 0x3
#define CU_STREAM_CAPTURE_MODE_THREAD_LOCAL 1
#define CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT 2

typedef enum {
    CU_GET_PROC_ADDRESS_SUCCESS = 0,
    CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND = 1,
    CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT = 2
} CUdriverProcAddressQueryResult;

typedef struct {
    int type; /* CUmemLocationType */
    int id;
} CUmemLocation;

typedef struct {
    int type;                 /* CUmemAllocationType */
    int requestedHandleTypes; /* CUmemAllocationHandleType */
    CUmemLocation location;
    void *win32HandleMetaData;
    struct {
        unsigned char compressionType;
        unsigned char gpuDirectRDMACapable;
        unsigned short usage;
        unsigned char reserved[4];
    } allocFlags;
} CUmemAllocationProp;

typedef struct {
    CUmemLocation location;
    int flags; /* CUmemAccess_flags */
} CUmemAccessDesc;

typedef struct {
    size_t Width;
    size_t Height;
    int Format; /* CUarray_format */
    unsigned int NumChannels;
} CUDA_ARRAY_DESCRIPTOR;

typedef struct {
    size_t Width;
    size_t Height;
    size_t Depth;
    int Format; /* CUarray_format */
    unsigned int NumChannels;
    unsigned int Flags;
} CUDA_ARRAY3D_DESCRIPTOR;

/* CUmemPoolProps (88 bytes in every CUDA 11.2+ header) */
typedef struct {
    int allocType; /* CUmemAllocationType */
    int handleTypes;
    CUmemLocation location;
    void *win32SecurityAttributes;
    size_t maxSize;
    unsigned short usage;
    unsigned char reserved[54];
} CUmemPoolProps;

typedef struct {
    CUmemPoolProps poolProps;
    const CUmemAccessDesc *accessDescs;
    size_t accessDescCount;
    size_t bytesize;
    CUdeviceptr dptr;
} CUDA_MEM_ALLOC_NODE_PARAMS;

typedef CUresult (*pfn_cuGetProcAddress_v2)(const char *symbol, void **pfn, int cudaVersion,
                                            unsigned long long flags,
                                            CUdriverProcAddressQueryResult *symbolStatus);

/*
 * Every entry point used, by the name the runtime asks for. Asked at 12090 the driver
 * hands back the newest ABI of each name it has (cuMemAlloc -> cuMemAlloc_v2, ...); the
 * prototypes below are those of a CUDA 12.4 driver (NVIDIA's 550, which the fake answers
 * like): cuCtxCreate is cuCtxCreate_v3 there (_v4 arrived with 12.5).
 */
#define DRIVER_FUNCS(X)                                                                        \
    X(cuInit, (unsigned int flags))                                                            \
    X(cuDriverGetVersion, (int *version))                                                      \
    X(cuGetErrorName, (CUresult error, const char **str))                                      \
    X(cuDeviceGetCount, (int *count))                                                          \
    X(cuDeviceGet, (CUdevice * dev, int ordinal))                                              \
    X(cuDeviceGetName, (char *name, int len, CUdevice dev))                                    \
    X(cuDeviceTotalMem, (size_t * bytes, CUdevice dev))                                        \
    X(cuDevicePrimaryCtxRetain, (CUcontext * ctx, CUdevice dev))                               \
    X(cuDevicePrimaryCtxRelease, (CUdevice dev))                                               \
    X(cuDevicePrimaryCtxReset, (CUdevice dev))                                                 \
    X(cuCtxSetCurrent, (CUcontext ctx))                                                        \
    X(cuCtxCreate, (CUcontext * ctx, void *affinity, int n_affinity, unsigned int flags,      \
                    CUdevice dev))                                                             \
    X(cuCtxSynchronize, (void))                                                                \
    X(cuMemGetInfo, (size_t * free_bytes, size_t * total_bytes))                               \
    X(cuMemAlloc, (CUdeviceptr * dptr, size_t bytes))                                          \
    X(cuMemFree, (CUdeviceptr dptr))                                                           \
    X(cuMemAllocPitch, (CUdeviceptr * dptr, size_t * pitch, size_t width, size_t height,        \
                        unsigned int elem))                                                    \
    X(cuMemAllocManaged, (CUdeviceptr * dptr, size_t bytes, unsigned int flags))               \
    X(cuMemAllocAsync, (CUdeviceptr * dptr, size_t bytes, CUstream stream))                    \
    X(cuMemFreeAsync, (CUdeviceptr dptr, CUstream stream))                                     \
    X(cuDeviceGetDefaultMemPool, (CUmemoryPool * pool, CUdevice dev))                          \
    X(cuMemAllocFromPoolAsync,                                                                 \
      (CUdeviceptr * dptr, size_t bytes, CUmemoryPool pool, CUstream stream))                  \
    X(cuMemGetAllocationGranularity,                                                           \
      (size_t * granularity, const CUmemAllocationProp *prop, int option))                     \
    X(cuMemCreate, (CUmemGenericAllocationHandle * handle, size_t size,                        \
                    const CUmemAllocationProp *prop, unsigned long long flags))                \
    X(cuMemRelease, (CUmemGenericAllocationHandle handle))                                     \
    X(cuMemAddressReserve, (CUdeviceptr * ptr, size_t size, size_t alignment, CUdeviceptr addr, \
                            unsigned long long flags))                                         \
    X(cuMemAddressFree, (CUdeviceptr ptr, size_t size))                                        \
    X(cuMemMap, (CUdeviceptr ptr, size_t size, size_t offset,                                  \
                 CUmemGenericAllocationHandle handle, unsigned long long flags))               \
    X(cuMemUnmap, (CUdeviceptr ptr, size_t size))                                              \
    X(cuMemSetAccess,                                                                          \
      (CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count))               \
    X(cuArrayCreate, (CUarray * arr, const CUDA_ARRAY_DESCRIPTOR *desc))                       \
    X(cuArray3DCreate, (CUarray * arr, const CUDA_ARRAY3D_DESCRIPTOR *desc))                   \
    X(cuArrayDestroy, (CUarray arr))                                                           \
    X(cuMemcpyHtoD, (CUdeviceptr dst, const void *src, size_t bytes))                          \
    X(cuMemcpyDtoH, (void *dst, CUdeviceptr src, size_t bytes))                                \
    X(cuStreamCreate, (CUstream * stream, unsigned int flags))                                 \
    X(cuStreamSynchronize, (CUstream stream))                                                  \
    X(cuStreamDestroy, (CUstream stream))                                                      \
    X(cuEventCreate, (CUevent * event, unsigned int flags))                                    \
    X(cuEventRecord, (CUevent event, CUstream stream))                                         \
    X(cuEventSynchronize, (CUevent event))                                                     \
    X(cuEventElapsedTime, (float *ms, CUevent start, CUevent end))                             \
    X(cuEventDestroy, (CUevent event))                                                         \
    X(cuModuleLoadData, (CUmodule * module, const void *image))                                \
    X(cuModuleGetFunction, (CUfunction * fn, CUmodule module, const char *name))               \
    X(cuModuleUnload, (CUmodule module))                                                       \
    X(cuCtxDestroy, (CUcontext ctx))                                                           \
    X(cuLibraryLoadData, (CUlibrary * lib, const void *code, void *jit_opts, void **jit_vals,  \
                          unsigned int n_jit, void *lib_opts, void **lib_vals,                 \
                          unsigned int n_lib))                                                 \
    X(cuLibraryUnload, (CUlibrary lib))                                                        \
    X(cuLaunchKernel, (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,         \
                       unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,  \
                       CUstream stream, void **params, void **extra))                          \
    X(cuLaunch, (CUfunction f))                                                                \
    X(cuLaunchGrid, (CUfunction f, int grid_width, int grid_height))                           \
    X(cuLaunchGridAsync, (CUfunction f, int grid_width, int grid_height, CUstream stream))      \
    X(cuLaunchCooperativeKernelMultiDevice,                                                    \
      (void *params, unsigned int num_devices, unsigned int flags))                            \
    X(cuStreamBeginCapture, (CUstream stream, int mode))                                       \
    X(cuStreamEndCapture, (CUstream stream, CUgraph * graph))                                  \
    X(cuGraphCreate, (CUgraph * graph, unsigned int flags))                                    \
    X(cuGraphAddMemAllocNode, (CUgraphNode * node, CUgraph graph, const CUgraphNode *deps,      \
                               size_t ndeps, CUDA_MEM_ALLOC_NODE_PARAMS *params))              \
    X(cuGraphAddMemFreeNode, (CUgraphNode * node, CUgraph graph, const CUgraphNode *deps,       \
                              size_t ndeps, CUdeviceptr dptr))                                 \
    X(cuGraphInstantiateWithFlags,                                                             \
      (CUgraphExec * exec, CUgraph graph, unsigned long long flags))                           \
    X(cuGraphUpload, (CUgraphExec exec, CUstream stream))                                      \
    X(cuGraphLaunch, (CUgraphExec exec, CUstream stream))                                      \
    X(cuGraphExecDestroy, (CUgraphExec exec))                                                  \
    X(cuGraphDestroy, (CUgraph graph))                                                         \
    X(cuDeviceGraphMemTrim, (CUdevice dev))                                                    \
    X(cuDeviceGetGraphMemAttribute, (CUdevice dev, int attr, void *value))

#define DECLARE_PFN(name, args)                                                                \
    typedef CUresult(*pfn_##name) args;                                                        \
    static pfn_##name p_##name;
DRIVER_FUNCS(DECLARE_PFN)

/* Calls an entry point; a name the driver did not hand out reads as CUDA_ERROR_NOT_FOUND. */
#define CU(name, ...) (p_##name ? p_##name(__VA_ARGS__) : CUDA_ERROR_NOT_FOUND)

/* The spin kernel: tests/workloads/ptx/spin.ptx, verbatim (a test keeps the two in sync). */
static const char SPIN_PTX[] =
    /* PTX-BEGIN */
    "//\n"
    "// spin: occupy the device for `ns` nanoseconds (measured on %globaltimer).\n"
    "// The fake driver simulates it by its name and first parameter; a real GPU runs it.\n"
    "//\n"
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
    "}\n"
    /* PTX-END */
    ;

/* ---- output ---- */
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

/* Prints one JSON object (the caller's fields, without braces) and flushes. */
__attribute__((format(printf, 1, 2))) static void emit(const char *fmt, ...) {
    va_list ap;
    pthread_mutex_lock(&out_lock);
    fputc('{', stdout);
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputs("}\n", stdout);
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
}

/* JSON-escapes s into buf (always NUL-terminated). */
static const char *json_str(const char *s, char *buf, size_t cap) {
    size_t o = 0;
    for (; s && *s && o + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(buf + o, cap - o, "\\u%04x", c);
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o] = '\0';
    return buf;
}

/* The driver's name for a CUresult ("CUDA_SUCCESS", "CUDA_ERROR_OUT_OF_MEMORY", ...). */
static const char *err_name(CUresult r) {
    const char *s = NULL;
    if (CU(cuGetErrorName, r, &s) != CUDA_SUCCESS || s == NULL) return "unknown";
    return s;
}

static void die_usage(const char *msg) {
    fprintf(stderr, "driver_workload: %s\n", msg);
    fprintf(stderr,
            "usage: driver_workload info\n"
            "       driver_workload ops \"<op> <op> ...\"\n"
            "       driver_workload spin --ns N [--count K]\n"
            "       driver_workload stress --threads T --seconds S --max-bytes B [--seed X]\n"
            "       driver_workload hold --bytes N --seconds S\n"
            "       driver_workload load --ns N --seconds S [--batch B] [--pause-ms P]\n"
            "                            [--report-ms R] [--linger-s L] [--gap-us G]\n"
            "       driver_workload graph --ns N --kernels K --seconds S [--batch B] [--pause-ms P]\n"
            "                             [--mem M] [--report-ms R] [--linger-s L]\n"
            "                             [--capture-pause-ms C]\n"
            "       driver_workload launch-rate [--ns N] [--count K] [--batch B] [--warmup W]\n"
            "       driver_workload queue --ns N --seconds S [--depth D]\n"
            "       driver_workload interactive --rate R --kernels K --ns N --seconds S [--seed X]\n"
            "                                   [--device D]\n");
    exit(2);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static unsigned long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

/* Parses "123", "4KiB", "900MiB", "2GiB" (also K/M/G, KB/MB/GB as binary units). */
static int parse_u64(const char *s, unsigned long long *out) {
    char *end = NULL;
    if (s == NULL || !isdigit((unsigned char)*s)) return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0) return -1;
    unsigned long long mult = 1;
    if (*end == '\0' || strcmp(end, "B") == 0) mult = 1;
    else if (strcmp(end, "KiB") == 0 || strcmp(end, "K") == 0 || strcmp(end, "KB") == 0) mult = 1ULL << 10;
    else if (strcmp(end, "MiB") == 0 || strcmp(end, "M") == 0 || strcmp(end, "MB") == 0) mult = 1ULL << 20;
    else if (strcmp(end, "GiB") == 0 || strcmp(end, "G") == 0 || strcmp(end, "GB") == 0) mult = 1ULL << 30;
    else return -1;
    if (v != 0 && mult > ~0ULL / v) return -1;
    *out = v * mult;
    return 0;
}

static unsigned long long need_u64(const char *s, const char *what) {
    unsigned long long v;
    if (parse_u64(s, &v) != 0) {
        char msg[256];
        snprintf(msg, sizeof msg, "bad %s: '%s'", what, s ? s : "(missing)");
        die_usage(msg);
    }
    return v;
}

/* ---- driver loading: the runtime's way ---- */
static void resolve(pfn_cuGetProcAddress_v2 getproc, const char *name, void **slot) {
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    void *fn = NULL;
    CUresult r = getproc(name, &fn, CUDA_VERSION_ASKED, CU_GET_PROC_ADDRESS_DEFAULT, &status);
    if (r != CUDA_SUCCESS || status != CU_GET_PROC_ADDRESS_SUCCESS || fn == NULL) {
        emit("\"op\":\"getproc\",\"symbol\":\"%s\",\"result\":%d,\"status\":%d", name, r,
             (int)status);
        fn = NULL;
    }
    *slot = fn;
}

/* Loads the driver and cuInit()s it; exits 3 when that fails. */
static void load_driver(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (h == NULL) {
        char buf[512];
        emit("\"op\":\"dlopen\",\"error\":\"%s\"", json_str(dlerror(), buf, sizeof buf));
        exit(3);
    }
    pfn_cuGetProcAddress_v2 getproc = (pfn_cuGetProcAddress_v2)dlsym(h, "cuGetProcAddress_v2");
    if (getproc == NULL) {
        emit("\"op\":\"dlsym\",\"symbol\":\"cuGetProcAddress_v2\",\"error\":\"not found\"");
        exit(3);
    }
#define RESOLVE(name, args) resolve(getproc, #name, (void **)&p_##name);
    DRIVER_FUNCS(RESOLVE)
#undef RESOLVE
    CUresult r = CU(cuInit, 0);
    if (r != CUDA_SUCCESS) {
        emit("\"op\":\"init\",\"result\":%d,\"error\":\"%s\"", r, err_name(r));
        exit(3);
    }
}

/* ---- contexts ---- */
#define MAX_DEVICES 16
static CUcontext primary[MAX_DEVICES];
static CUstream streams[MAX_DEVICES];
static int current_device = -1;

/* Makes device `dev`'s primary context current (retaining it once). */
static CUresult use_device(int dev) {
    if (dev < 0 || dev >= MAX_DEVICES) return 101; /* CUDA_ERROR_INVALID_DEVICE */
    CUresult r;
    if (primary[dev] == NULL) {
        CUdevice d;
        r = CU(cuDeviceGet, &d, dev);
        if (r != CUDA_SUCCESS) return r;
        r = CU(cuDevicePrimaryCtxRetain, &primary[dev], d);
        if (r != CUDA_SUCCESS) {
            primary[dev] = NULL;
            return r;
        }
    }
    r = CU(cuCtxSetCurrent, primary[dev]);
    if (r == CUDA_SUCCESS) current_device = dev;
    return r;
}

/* The program's stream on the current device (created on first use). */
static CUresult get_stream(CUstream *out) {
    if (streams[current_device] == NULL) {
        CUresult r = CU(cuStreamCreate, &streams[current_device], CU_STREAM_NON_BLOCKING);
        if (r != CUDA_SUCCESS) {
            streams[current_device] = NULL;
            return r;
        }
    }
    *out = streams[current_device];
    return CUDA_SUCCESS;
}

static void release_all_devices(void) {
    for (int d = 0; d < MAX_DEVICES; d++) {
        if (primary[d] == NULL) continue;
        CU(cuCtxSetCurrent, primary[d]);
        if (streams[d] != NULL) CU(cuStreamDestroy, streams[d]);
        streams[d] = NULL;
        CUdevice dev;
        if (CU(cuDeviceGet, &dev, d) == CUDA_SUCCESS) CU(cuDevicePrimaryCtxRelease, dev);
        primary[d] = NULL;
    }
}

/* ---- the spin kernel ---- */
static CUmodule modules[MAX_DEVICES];
static CUfunction spin_fn[MAX_DEVICES];

static CUresult get_spin(CUfunction *out) {
    if (spin_fn[current_device] == NULL) {
        CUresult r = CU(cuModuleLoadData, &modules[current_device], SPIN_PTX);
        if (r != CUDA_SUCCESS) return r;
        r = CU(cuModuleGetFunction, &spin_fn[current_device], modules[current_device], "spin");
        if (r != CUDA_SUCCESS) return r;
    }
    *out = spin_fn[current_device];
    return CUDA_SUCCESS;
}

/* Loads the driver, makes device `dev` current and gets the spin kernel and the stream. */
static CUresult open_spin(int dev, CUfunction *fn, CUstream *stream) {
    load_driver();
    CUresult r = use_device(dev);
    if (r == CUDA_SUCCESS) r = get_spin(fn);
    if (r == CUDA_SUCCESS) r = get_stream(stream);
    return r;
}

/*
 * Launches `spin(ns)` `count` times on the program's stream between two events. Reports
 * how long the launches took to return (launch_ms: small when launches are asynchronous),
 * the wall time until the end event completed, and the event-measured time. With
 * wait == 0 it returns right after the launches (op "launch").
 */
static void do_spin(unsigned long long ns, unsigned long long count, int wait) {
    const char *op = wait ? "spin" : "launch";
    CUfunction fn = NULL;
    CUstream stream = NULL;
    CUresult r = get_spin(&fn);
    if (r != CUDA_SUCCESS) {
        emit("\"op\":\"%s\",\"ns\":%llu,\"count\":%llu,\"step\":\"module\",\"result\":%d,"
             "\"error\":\"%s\"", op, ns, count, r, err_name(r));
        return;
    }
    r = get_stream(&stream);
    if (r != CUDA_SUCCESS) {
        emit("\"op\":\"%s\",\"ns\":%llu,\"count\":%llu,\"step\":\"stream\",\"result\":%d,"
             "\"error\":\"%s\"", op, ns, count, r, err_name(r));
        return;
    }
    CUevent start = NULL, end = NULL;
    CUresult r_ev = CU(cuEventCreate, &start, CU_EVENT_DEFAULT);
    if (r_ev == CUDA_SUCCESS) r_ev = CU(cuEventCreate, &end, CU_EVENT_DEFAULT);
    if (r_ev != CUDA_SUCCESS) {
        emit("\"op\":\"%s\",\"ns\":%llu,\"count\":%llu,\"step\":\"event\",\"result\":%d,"
             "\"error\":\"%s\"", op, ns, count, r_ev, err_name(r_ev));
        return;
    }
    unsigned long long param = ns;
    void *params[1] = {&param};
    double t0 = now_ms();
    CUresult r_rec = CU(cuEventRecord, start, stream);
    CUresult r_launch = CUDA_SUCCESS;
    unsigned long long launched = 0;
    for (unsigned long long i = 0; i < count; i++) {
        r_launch = CU(cuLaunchKernel, fn, 1, 1, 1, 1, 1, 1, 0, stream, params, NULL);
        if (r_launch != CUDA_SUCCESS) break;
        launched++;
    }
    if (r_rec == CUDA_SUCCESS) r_rec = CU(cuEventRecord, end, stream);
    double t1 = now_ms();
    if (!wait) {
        CUresult res = r_launch != CUDA_SUCCESS ? r_launch : r_rec;
        emit("\"op\":\"launch\",\"ns\":%llu,\"count\":%llu,\"launched\":%llu,\"launch_ms\":%.3f,"
             "\"launch_result\":%d,\"result\":%d",
             ns, count, launched, t1 - t0, r_launch, res);
        /* the events are left to the context: destroying them now is also legal, do it */
        CU(cuEventDestroy, start);
        CU(cuEventDestroy, end);
        return;
    }
    CUresult r_sync = CU(cuEventSynchronize, end);
    CUresult r_ssync = CU(cuStreamSynchronize, stream);
    double t2 = now_ms();
    float ev_ms = -1.0f;
    CUresult r_el = CU(cuEventElapsedTime, &ev_ms, start, end);
    CU(cuEventDestroy, start);
    CU(cuEventDestroy, end);
    CUresult res = r_launch;
    if (res == CUDA_SUCCESS) res = r_rec;
    if (res == CUDA_SUCCESS) res = r_sync;
    if (res == CUDA_SUCCESS) res = r_ssync;
    if (res == CUDA_SUCCESS) res = r_el;
    emit("\"op\":\"spin\",\"ns\":%llu,\"count\":%llu,\"launched\":%llu,\"launch_ms\":%.3f,"
         "\"wall_ms\":%.3f,\"event_ms\":%.3f,\"launch_result\":%d,\"record_result\":%d,"
         "\"sync_result\":%d,\"elapsed_result\":%d,\"result\":%d",
         ns, count, launched, t1 - t0, t2 - t0, (double)ev_ms, r_launch, r_rec, r_sync, r_el,
         res);
}

/* ---- allocations ---- */
enum kind { K_ALLOC, K_PITCH, K_MANAGED, K_ASYNC, K_POOL, K_VMM, K_ARRAY, K_ARRAY3D };
static const char *const KIND_NAMES[] = {"alloc", "pitch", "managed", "async",
                                         "pool",  "vmm",   "array",   "array3d"};
#define N_KINDS (sizeof KIND_NAMES / sizeof KIND_NAMES[0])

struct allocation {
    char name[64];
    enum kind kind;
    int device;
    CUdeviceptr ptr;
    size_t size; /* bytes the driver was asked for (after pitch / granularity / array shape) */
    CUarray array;
    CUmemGenericAllocationHandle handle;
    struct allocation *next;
};
static struct allocation *allocations;

static struct allocation *find_alloc(const char *name) {
    for (struct allocation *a = allocations; a; a = a->next)
        if (strcmp(a->name, name) == 0) return a;
    return NULL;
}

/* Performs one allocation; fills a->ptr/array/handle/size. Reports through emit. */
static void do_alloc(enum kind kind, const char *name, unsigned long long bytes) {
    if (find_alloc(name) != NULL) {
        fprintf(stderr, "driver_workload: allocation name '%s' already in use\n", name);
        exit(2);
    }
    struct allocation a;
    memset(&a, 0, sizeof a);
    snprintf(a.name, sizeof a.name, "%s", name);
    a.kind = kind;
    a.device = current_device;
    a.size = (size_t)bytes;
    CUresult r = CUDA_SUCCESS;
    const char *step = KIND_NAMES[kind];
    char extra[256] = "";
    switch (kind) {
    case K_ALLOC:
        step = "cuMemAlloc";
        r = CU(cuMemAlloc, &a.ptr, (size_t)bytes);
        break;
    case K_PITCH: {
        /* rows of up to 64 KiB of 4-byte elements */
        size_t width = bytes < 65536 ? (size_t)bytes : 65536;
        if (width < 4) width = 4;
        size_t height = (size_t)((bytes + width - 1) / width);
        if (height == 0) height = 1;
        size_t pitch = 0;
        step = "cuMemAllocPitch";
        r = CU(cuMemAllocPitch, &a.ptr, &pitch, width, height, 4);
        a.size = pitch * height;
        snprintf(extra, sizeof extra, ",\"width\":%zu,\"height\":%zu,\"pitch\":%zu", width,
                 height, pitch);
        break;
    }
    case K_MANAGED:
        step = "cuMemAllocManaged";
        r = CU(cuMemAllocManaged, &a.ptr, (size_t)bytes, CU_MEM_ATTACH_GLOBAL);
        break;
    case K_ASYNC:
    case K_POOL: {
        CUstream s = NULL;
        step = "cuStreamCreate";
        r = get_stream(&s);
        if (r != CUDA_SUCCESS) break;
        if (kind == K_ASYNC) {
            step = "cuMemAllocAsync";
            r = CU(cuMemAllocAsync, &a.ptr, (size_t)bytes, s);
        } else {
            CUdevice d;
            CUmemoryPool pool = NULL;
            step = "cuDeviceGetDefaultMemPool";
            r = CU(cuDeviceGet, &d, current_device);
            if (r == CUDA_SUCCESS) r = CU(cuDeviceGetDefaultMemPool, &pool, d);
            if (r != CUDA_SUCCESS) break;
            step = "cuMemAllocFromPoolAsync";
            r = CU(cuMemAllocFromPoolAsync, &a.ptr, (size_t)bytes, pool, s);
        }
        if (r != CUDA_SUCCESS) break;
        step = "cuStreamSynchronize";
        r = CU(cuStreamSynchronize, s);
        break;
    }
    case K_VMM: {
        CUmemAllocationProp prop;
        memset(&prop, 0, sizeof prop);
        prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
        prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = current_device;
        size_t gran = 0;
        step = "cuMemGetAllocationGranularity";
        r = CU(cuMemGetAllocationGranularity, &gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
        if (r != CUDA_SUCCESS) break;
        if (gran == 0) gran = 2u << 20;
        a.size = (size_t)((bytes + gran - 1) / gran * gran);
        if (a.size == 0) a.size = gran;
        snprintf(extra, sizeof extra, ",\"granularity\":%zu", gran);
        step = "cuMemCreate";
        r = CU(cuMemCreate, &a.handle, a.size, &prop, 0ULL);
        if (r != CUDA_SUCCESS) break;
        step = "cuMemAddressReserve";
        r = CU(cuMemAddressReserve, &a.ptr, a.size, 0, 0, 0ULL);
        if (r != CUDA_SUCCESS) {
            CU(cuMemRelease, a.handle);
            break;
        }
        step = "cuMemMap";
        r = CU(cuMemMap, a.ptr, a.size, 0, a.handle, 0ULL);
        if (r != CUDA_SUCCESS) {
            CU(cuMemAddressFree, a.ptr, a.size);
            CU(cuMemRelease, a.handle);
            break;
        }
        CUmemAccessDesc desc;
        memset(&desc, 0, sizeof desc);
        desc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        desc.location.id = current_device;
        desc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        step = "cuMemSetAccess";
        r = CU(cuMemSetAccess, a.ptr, a.size, &desc, 1);
        if (r != CUDA_SUCCESS) {
            CU(cuMemUnmap, a.ptr, a.size);
            CU(cuMemAddressFree, a.ptr, a.size);
            CU(cuMemRelease, a.handle);
        }
        break;
    }
    case K_ARRAY: {
        /* float4 elements (16 bytes), rows of up to 8192 elements */
        unsigned long long elems = (bytes + 15) / 16;
        if (elems == 0) elems = 1;
        CUDA_ARRAY_DESCRIPTOR d;
        memset(&d, 0, sizeof d);
        d.Width = (size_t)(elems < 8192 ? elems : 8192);
        d.Height = (size_t)((elems + d.Width - 1) / d.Width);
        d.Format = CU_AD_FORMAT_FLOAT;
        d.NumChannels = 4;
        a.size = d.Width * d.Height * 16;
        snprintf(extra, sizeof extra, ",\"width\":%zu,\"height\":%zu", d.Width, d.Height);
        step = "cuArrayCreate";
        r = CU(cuArrayCreate, &a.array, &d);
        break;
    }
    case K_ARRAY3D: {
        /* float4 elements, 256 x 256 x depth (narrower when small) */
        unsigned long long elems = (bytes + 15) / 16;
        if (elems == 0) elems = 1;
        CUDA_ARRAY3D_DESCRIPTOR d;
        memset(&d, 0, sizeof d);
        d.Width = (size_t)(elems < 256 ? elems : 256);
        unsigned long long rows = (elems + d.Width - 1) / d.Width;
        d.Height = (size_t)(rows < 256 ? rows : 256);
        d.Depth = (size_t)((rows + d.Height - 1) / d.Height);
        d.Format = CU_AD_FORMAT_FLOAT;
        d.NumChannels = 4;
        a.size = d.Width * d.Height * d.Depth * 16;
        snprintf(extra, sizeof extra, ",\"width\":%zu,\"height\":%zu,\"depth\":%zu", d.Width,
                 d.Height, d.Depth);
        step = "cuArray3DCreate";
        r = CU(cuArray3DCreate, &a.array, &d);
        break;
    }
    }
    if (r == CUDA_SUCCESS) {
        struct allocation *p = malloc(sizeof *p);
        if (p == NULL) {
            perror("malloc");
            exit(2);
        }
        *p = a;
        p->next = allocations;
        allocations = p;
        emit("\"op\":\"%s\",\"name\":\"%s\",\"device\":%d,\"bytes\":%llu,\"size\":%zu%s,"
             "\"result\":0",
             KIND_NAMES[kind], a.name, a.device, bytes, a.size, extra);
    } else {
        emit("\"op\":\"%s\",\"name\":\"%s\",\"device\":%d,\"bytes\":%llu,\"size\":%zu%s,"
             "\"step\":\"%s\",\"result\":%d,\"error\":\"%s\"",
             KIND_NAMES[kind], a.name, a.device, bytes, a.size, extra, step, r, err_name(r));
    }
}

/* Frees one allocation by the API matching how it was made; returns the first failure. */
static CUresult free_one(struct allocation *a, const char **step) {
    CUresult r = CUDA_SUCCESS;
    int prev = current_device;
    if (a->device != current_device) use_device(a->device);
    switch (a->kind) {
    case K_ALLOC:
    case K_PITCH:
    case K_MANAGED:
        *step = "cuMemFree";
        r = CU(cuMemFree, a->ptr);
        break;
    case K_ASYNC:
    case K_POOL: {
        CUstream s = NULL;
        *step = "cuStreamCreate";
        r = get_stream(&s);
        if (r != CUDA_SUCCESS) break;
        *step = "cuMemFreeAsync";
        r = CU(cuMemFreeAsync, a->ptr, s);
        if (r != CUDA_SUCCESS) break;
        *step = "cuStreamSynchronize";
        r = CU(cuStreamSynchronize, s);
        break;
    }
    case K_VMM: {
        CUresult r1 = CU(cuMemUnmap, a->ptr, a->size);
        CUresult r2 = CU(cuMemRelease, a->handle);
        CUresult r3 = CU(cuMemAddressFree, a->ptr, a->size);
        *step = r1 ? "cuMemUnmap" : r2 ? "cuMemRelease" : "cuMemAddressFree";
        r = r1 ? r1 : r2 ? r2 : r3;
        break;
    }
    case K_ARRAY:
    case K_ARRAY3D:
        *step = "cuArrayDestroy";
        r = CU(cuArrayDestroy, a->array);
        break;
    }
    if (prev != current_device && prev >= 0) use_device(prev);
    return r;
}

static void do_free(const char *name) {
    struct allocation **pp = &allocations;
    while (*pp && strcmp((*pp)->name, name) != 0) pp = &(*pp)->next;
    if (*pp == NULL) {
        fprintf(stderr, "driver_workload: free of unknown allocation '%s'\n", name);
        exit(2);
    }
    struct allocation *a = *pp;
    const char *step = "";
    CUresult r = free_one(a, &step);
    emit("\"op\":\"free\",\"name\":\"%s\",\"kind\":\"%s\",\"device\":%d,\"size\":%zu,"
         "\"step\":\"%s\",\"result\":%d%s%s%s",
         a->name, KIND_NAMES[a->kind], a->device, a->size, step, r,
         r ? ",\"error\":\"" : "", r ? err_name(r) : "", r ? "\"" : "");
    *pp = a->next;
    free(a);
}

static void do_meminfo(void) {
    size_t fr = 0, tot = 0;
    CUresult r = CU(cuMemGetInfo, &fr, &tot);
    emit("\"op\":\"meminfo\",\"device\":%d,\"free\":%zu,\"total\":%zu,\"result\":%d",
         current_device, fr, tot, r);
}

/* H2D a pattern, D2H it back and compare (up to 64 MiB of a linear allocation). */
static void do_memcpy_check(const char *name) {
    struct allocation *a = find_alloc(name);
    if (a == NULL) {
        fprintf(stderr, "driver_workload: memcpy-check of unknown allocation '%s'\n", name);
        exit(2);
    }
    if (a->kind == K_ARRAY || a->kind == K_ARRAY3D) {
        emit("\"op\":\"memcpy-check\",\"name\":\"%s\",\"error\":\"not a linear allocation\"",
             name);
        return;
    }
    size_t n = a->size < (64u << 20) ? a->size : (64u << 20);
    unsigned char *src = malloc(n ? n : 1), *dst = malloc(n ? n : 1);
    if (!src || !dst) {
        perror("malloc");
        exit(2);
    }
    unsigned int x = 0x9e3779b9u ^ (unsigned int)n;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        src[i] = (unsigned char)x;
    }
    memset(dst, 0, n);
    int prev = current_device;
    if (a->device != current_device) use_device(a->device);
    CUresult r1 = CU(cuMemcpyHtoD, a->ptr, src, n);
    CUresult r2 = CU(cuMemcpyDtoH, dst, a->ptr, n);
    if (prev != current_device) use_device(prev);
    size_t mismatches = 0;
    for (size_t i = 0; i < n; i++) mismatches += src[i] != dst[i];
    emit("\"op\":\"memcpy-check\",\"name\":\"%s\",\"bytes\":%zu,\"h2d_result\":%d,"
         "\"d2h_result\":%d,\"mismatches\":%zu,\"match\":%s,\"result\":%d",
         name, n, r1, r2, mismatches, mismatches == 0 && !r1 && !r2 ? "true" : "false",
         r1 ? r1 : r2);
    free(src);
    free(dst);
}

/* ---- subcommands ---- */
static int cmd_info(void) {
    int version = 0, count = 0;
    CUresult rv = CU(cuDriverGetVersion, &version);
    CUresult rc = CU(cuDeviceGetCount, &count);
    emit("\"op\":\"info\",\"driver_version\":%d,\"version_result\":%d,\"devices\":%d,"
         "\"result\":%d",
         version, rv, count, rc);
    for (int i = 0; i < count && i < MAX_DEVICES; i++) {
        CUdevice d = 0;
        char name[256] = "", esc[600];
        size_t total = 0, fr = 0, tot = 0;
        CUresult r = CU(cuDeviceGet, &d, i);
        CUresult rn = r ? r : CU(cuDeviceGetName, name, (int)sizeof name, d);
        CUresult rt = r ? r : CU(cuDeviceTotalMem, &total, d);
        CUresult ru = use_device(i);
        CUresult rm = ru ? ru : CU(cuMemGetInfo, &fr, &tot);
        emit("\"op\":\"device\",\"index\":%d,\"name\":\"%s\",\"total_mem\":%zu,"
             "\"free\":%zu,\"total\":%zu,\"name_result\":%d,\"total_mem_result\":%d,"
             "\"ctx_result\":%d,\"meminfo_result\":%d,\"result\":%d",
             i, json_str(name, esc, sizeof esc), total, fr, tot, rn, rt, ru, rm,
             r ? r : rn ? rn : rt ? rt : ru ? ru : rm);
    }
    return 0;
}

static int valid_name(const char *s) {
    if (*s == '\0' || strlen(s) >= 64) return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.') return 0;
    return 1;
}

/*
 * Resets the current device's primary context: the driver destroys it and every
 * allocation made in it; the program forgets them and retains a fresh context.
 */
static void do_reset(void) {
    int dev = current_device < 0 ? 0 : current_device;
    CUresult r = CU(cuDevicePrimaryCtxReset, dev);
    if (r == CUDA_SUCCESS) {
        for (struct allocation **a = &allocations; *a;) {
            if ((*a)->device == dev && (*a)->kind != K_VMM) {
                struct allocation *gone = *a;
                *a = gone->next;
                free(gone);
            } else {
                a = &(*a)->next;
            }
        }
        primary[dev] = NULL;
        streams[dev] = NULL;
        spin_fn[dev] = NULL;
        modules[dev] = NULL;
        r = use_device(dev);
    }
    emit("\"op\":\"reset\",\"device\":%d,\"result\":%d", dev, r);
}

/*
 * The launch entry points besides cuLaunchKernel (the pre-4.0 API and the multi-device
 * cooperative launch), each `count` times with the spin function; reports the last result of
 * each (the launch gate sees every call).
 */
static void do_legacy_launch(unsigned long long count) {
    CUfunction fn = NULL;
    CUstream stream = NULL;
    CUresult r = get_spin(&fn);
    if (r == CUDA_SUCCESS) r = get_stream(&stream);
    if (r != CUDA_SUCCESS) {
        emit("\"op\":\"legacy-launch\",\"step\":\"setup\",\"result\":%d,\"error\":\"%s\"", r,
             err_name(r));
        return;
    }
    CUresult r_launch = CUDA_SUCCESS, r_grid = CUDA_SUCCESS, r_async = CUDA_SUCCESS,
             r_multi = CUDA_SUCCESS;
    for (unsigned long long i = 0; i < count; i++) {
        r_launch = CU(cuLaunch, fn);
        r_grid = CU(cuLaunchGrid, fn, 1, 1);
        r_async = CU(cuLaunchGridAsync, fn, 1, 1, stream);
        r_multi = CU(cuLaunchCooperativeKernelMultiDevice, NULL, 0, 0);
    }
    emit("\"op\":\"legacy-launch\",\"count\":%llu,\"launch\":%d,\"grid\":%d,\"grid_async\":%d,"
         "\"multi_device\":%d",
         count, r_launch, r_grid, r_async, r_multi);
}

/* ---- named graphs with graph memory (ops graph:, graph-launch:, graph-destroy:, graph-trim) ---- */
#define MAX_GRAPHS 16
static struct {
    char name[64];
    CUgraph graph;
    CUgraphExec exec;
} graphs[MAX_GRAPHS];

static int find_graph(const char *name) {
    for (int i = 0; i < MAX_GRAPHS; i++)
        if (graphs[i].graph && strcmp(graphs[i].name, name) == 0) return i;
    return -1;
}

/* What the driver's graph memory pool holds for this process (-1 if it cannot tell). */
static long long graph_reserved(void) {
    unsigned long long v = 0;
    CUdevice d;
    if (CU(cuDeviceGet, &d, current_device) != CUDA_SUCCESS ||
        CU(cuDeviceGetGraphMemAttribute, d, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT, &v) != CUDA_SUCCESS)
        return -1;
    return (long long)v;
}

/* A graph that allocates `bytes` (allocation node) and frees it (free node), instantiated. */
static void do_graph(const char *name, unsigned long long bytes) {
    int slot = -1;
    for (int i = 0; i < MAX_GRAPHS && slot < 0; i++)
        if (!graphs[i].graph) slot = i;
    if (find_graph(name) >= 0 || slot < 0) {
        fprintf(stderr, "driver_workload: graph name '%s' in use or too many graphs\n", name);
        exit(2);
    }
    CUgraph g = NULL;
    CUgraphExec e = NULL;
    CUgraphNode alloc = NULL, fr = NULL;
    CUDA_MEM_ALLOC_NODE_PARAMS p;
    memset(&p, 0, sizeof p);
    p.poolProps.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.poolProps.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.poolProps.location.id = current_device;
    p.bytesize = (size_t)bytes;
    const char *step = "cuGraphCreate";
    CUresult r = CU(cuGraphCreate, &g, 0);
    if (r == CUDA_SUCCESS) {
        step = "cuGraphAddMemAllocNode";
        r = CU(cuGraphAddMemAllocNode, &alloc, g, NULL, 0, &p);
    }
    if (r == CUDA_SUCCESS) {
        step = "cuGraphAddMemFreeNode";
        r = CU(cuGraphAddMemFreeNode, &fr, g, &alloc, 1, p.dptr);
    }
    if (r == CUDA_SUCCESS) {
        step = "cuGraphInstantiateWithFlags";
        r = CU(cuGraphInstantiateWithFlags, &e, g, 0ULL);
    }
    if (r == CUDA_SUCCESS) {
        snprintf(graphs[slot].name, sizeof graphs[slot].name, "%s", name);
        graphs[slot].graph = g;
        graphs[slot].exec = e;
    } else if (g) {
        CU(cuGraphDestroy, g);
    }
    emit("\"op\":\"graph\",\"name\":\"%s\",\"bytes\":%llu,\"step\":\"%s\",\"result\":%d%s%s%s",
         name, bytes, step, r, r ? ",\"error\":\"" : "", r ? err_name(r) : "", r ? "\"" : "");
}

static void do_graph_op(const char *verb, const char *name) {
    int i = name ? find_graph(name) : -1;
    if (name && i < 0) {
        fprintf(stderr, "driver_workload: unknown graph '%s'\n", name);
        exit(2);
    }
    CUresult r;
    if (strcmp(verb, "graph-launch") == 0) {
        CUstream s = NULL;
        r = get_stream(&s);
        if (r == CUDA_SUCCESS) r = CU(cuGraphLaunch, graphs[i].exec, s);
        if (r == CUDA_SUCCESS) r = CU(cuStreamSynchronize, s);
    } else if (strcmp(verb, "graph-destroy") == 0) {
        r = CU(cuGraphExecDestroy, graphs[i].exec);
        CUresult r2 = CU(cuGraphDestroy, graphs[i].graph);
        if (r == CUDA_SUCCESS) r = r2;
        graphs[i].graph = NULL;
        graphs[i].exec = NULL;
    } else {
        CUdevice d;
        r = CU(cuDeviceGet, &d, current_device);
        if (r == CUDA_SUCCESS) r = CU(cuDeviceGraphMemTrim, d);
    }
    emit("\"op\":\"%s\",\"name\":\"%s\",\"reserved\":%lld,\"result\":%d%s%s%s", verb,
         name ? name : "", graph_reserved(), r, r ? ",\"error\":\"" : "", r ? err_name(r) : "",
         r ? "\"" : "");
}

/* ---- contexts, modules and libraries made by name (ctx:, module:, library:, drop:) ---- */
enum made_kind { M_CTX, M_MODULE, M_LIBRARY };
static const char *const MADE_NAMES[] = {"ctx", "module", "library"};
struct made {
    char name[64];
    enum made_kind kind;
    void *handle;
    struct made *next;
};
static struct made *made_list;

static void do_make(enum made_kind kind, const char *name) {
    for (struct made *m = made_list; m; m = m->next)
        if (strcmp(m->name, name) == 0) {
            fprintf(stderr, "driver_workload: name '%s' already in use\n", name);
            exit(2);
        }
    void *h = NULL;
    CUresult r;
    if (kind == M_CTX) {
        CUdevice d;
        r = CU(cuDeviceGet, &d, current_device);
        if (r == CUDA_SUCCESS) r = CU(cuCtxCreate, (CUcontext *)&h, NULL, 0, 0, d);
        /* the new context was pushed: make the primary context current again */
        if (r == CUDA_SUCCESS) CU(cuCtxSetCurrent, primary[current_device]);
    } else if (kind == M_MODULE) {
        r = CU(cuModuleLoadData, (CUmodule *)&h, SPIN_PTX);
    } else {
        r = CU(cuLibraryLoadData, (CUlibrary *)&h, SPIN_PTX, NULL, NULL, 0, NULL, NULL, 0);
    }
    if (r == CUDA_SUCCESS) {
        struct made *m = calloc(1, sizeof *m);
        if (m == NULL) {
            perror("calloc");
            exit(2);
        }
        snprintf(m->name, sizeof m->name, "%s", name);
        m->kind = kind;
        m->handle = h;
        m->next = made_list;
        made_list = m;
    }
    emit("\"op\":\"%s\",\"name\":\"%s\",\"device\":%d,\"result\":%d%s%s%s", MADE_NAMES[kind],
         name, current_device, r, r ? ",\"error\":\"" : "", r ? err_name(r) : "", r ? "\"" : "");
}

static void do_drop(const char *name) {
    struct made **pp = &made_list;
    while (*pp && strcmp((*pp)->name, name) != 0) pp = &(*pp)->next;
    if (*pp == NULL) {
        fprintf(stderr, "driver_workload: drop of unknown name '%s'\n", name);
        exit(2);
    }
    struct made *m = *pp;
    CUresult r = m->kind == M_CTX      ? CU(cuCtxDestroy, (CUcontext)m->handle)
                 : m->kind == M_MODULE ? CU(cuModuleUnload, (CUmodule)m->handle)
                                       : CU(cuLibraryUnload, (CUlibrary)m->handle);
    emit("\"op\":\"drop\",\"name\":\"%s\",\"kind\":\"%s\",\"result\":%d", name,
         MADE_NAMES[m->kind], r);
    *pp = m->next;
    free(m);
}

/* One op token, "verb[:arg[:arg]]"; with run == 0 it is only validated. */
static void run_op(char *tok, int run) {
    char *parts[4] = {0};
    int n = 0;
    for (char *save = NULL, *p = strtok_r(tok, ":", &save); p && n < 4;
         p = strtok_r(NULL, ":", &save))
        parts[n++] = p;
    const char *verb = parts[0];
    char msg[300];
    if (verb == NULL) die_usage("empty op");
    for (size_t k = 0; k < N_KINDS; k++) {
        if (strcmp(verb, KIND_NAMES[k]) != 0) continue;
        if (n != 3 || !valid_name(parts[1])) {
            snprintf(msg, sizeof msg, "usage: %s:NAME:BYTES", verb);
            die_usage(msg);
        }
        unsigned long long bytes = need_u64(parts[2], "size");
        if (run) do_alloc((enum kind)k, parts[1], bytes);
        return;
    }
    if (strcmp(verb, "free") == 0 || strcmp(verb, "memcpy-check") == 0) {
        if (n != 2 || !valid_name(parts[1])) {
            snprintf(msg, sizeof msg, "usage: %s:NAME", verb);
            die_usage(msg);
        }
        if (run && verb[0] == 'f') do_free(parts[1]);
        else if (run) do_memcpy_check(parts[1]);
    } else if (strcmp(verb, "graph") == 0) {
        if (n != 3 || !valid_name(parts[1])) die_usage("usage: graph:NAME:BYTES");
        unsigned long long bytes = need_u64(parts[2], "size");
        if (run) do_graph(parts[1], bytes);
    } else if (strcmp(verb, "graph-launch") == 0 || strcmp(verb, "graph-destroy") == 0) {
        if (n != 2 || !valid_name(parts[1])) die_usage("usage: graph-launch:NAME / graph-destroy:NAME");
        if (run) do_graph_op(verb, parts[1]);
    } else if (strcmp(verb, "graph-trim") == 0) {
        if (n != 1) die_usage("usage: graph-trim");
        if (run) do_graph_op(verb, NULL);
    } else if (strcmp(verb, "ctx") == 0 || strcmp(verb, "module") == 0 ||
               strcmp(verb, "library") == 0 || strcmp(verb, "drop") == 0) {
        if (n != 2 || !valid_name(parts[1])) {
            snprintf(msg, sizeof msg, "usage: %s:NAME", verb);
            die_usage(msg);
        }
        if (run && verb[0] == 'd') do_drop(parts[1]);
        else if (run) do_make(verb[0] == 'c' ? M_CTX : verb[0] == 'm' ? M_MODULE : M_LIBRARY,
                              parts[1]);
    } else if (strcmp(verb, "meminfo") == 0) {
        if (n != 1) die_usage("usage: meminfo");
        if (run) do_meminfo();
    } else if (strcmp(verb, "nocontext") == 0) {
        if (n != 1) die_usage("usage: nocontext");
        if (run) {
            CUresult r = CU(cuCtxSetCurrent, NULL);
            emit("\"op\":\"nocontext\",\"result\":%d", r);
        }
    } else if (strcmp(verb, "reset") == 0) {
        if (n != 1) die_usage("usage: reset");
        if (run) do_reset();
    } else if (strcmp(verb, "sync") == 0) {
        if (n != 1) die_usage("usage: sync");
        if (run) {
            double t0 = now_ms();
            CUresult r = p_cuCtxSynchronize ? p_cuCtxSynchronize() : CUDA_ERROR_NOT_FOUND;
            emit("\"op\":\"sync\",\"wall_ms\":%.3f,\"result\":%d", now_ms() - t0, r);
        }
    } else if (strcmp(verb, "sleep") == 0) {
        if (n != 2) die_usage("usage: sleep:MS");
        unsigned long long ms = need_u64(parts[1], "milliseconds");
        if (run) {
            struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
            }
            emit("\"op\":\"sleep\",\"ms\":%llu", ms);
        }
    } else if (strcmp(verb, "spin") == 0 || strcmp(verb, "launch") == 0) {
        if (n < 2 || n > 3) die_usage("usage: spin:NS[:COUNT] / launch:NS[:COUNT]");
        unsigned long long ns = need_u64(parts[1], "nanoseconds");
        unsigned long long count = n == 3 ? need_u64(parts[2], "count") : 1;
        if (run) do_spin(ns, count, verb[0] == 's');
    } else if (strcmp(verb, "legacy-launch") == 0) {
        if (n != 2) die_usage("usage: legacy-launch:COUNT");
        unsigned long long count = need_u64(parts[1], "count");
        if (run) do_legacy_launch(count);
    } else if (strcmp(verb, "device") == 0) {
        if (n != 2) die_usage("usage: device:N");
        unsigned long long d = need_u64(parts[1], "device");
        if (run) {
            CUresult r = use_device((int)d);
            emit("\"op\":\"device\",\"device\":%llu,\"result\":%d", d, r);
        }
    } else {
        snprintf(msg, sizeof msg, "unknown op '%s'", verb);
        die_usage(msg);
    }
}

static int cmd_ops(int argc, char **argv) {
    if (argc < 1) die_usage("ops needs a script");
    /* the script is every remaining argument, split on whitespace */
    size_t len = 1;
    for (int i = 0; i < argc; i++) len += strlen(argv[i]) + 1;
    char *script = calloc(len, 1), *copy = calloc(len, 1);
    if (!script || !copy) {
        perror("calloc");
        return 2;
    }
    for (int i = 0; i < argc; i++) {
        strcat(script, argv[i]);
        strcat(script, " ");
    }
    /* validate the whole script before touching the driver */
    memcpy(copy, script, len);
    for (char *save = NULL, *t = strtok_r(copy, " \t\n", &save); t;
         t = strtok_r(NULL, " \t\n", &save))
        run_op(t, 0);
    load_driver();
    CUresult r = use_device(0);
    if (r != CUDA_SUCCESS) {
        emit("\"op\":\"device\",\"device\":0,\"result\":%d,\"error\":\"%s\"", r, err_name(r));
        return 0;
    }
    for (char *save = NULL, *t = strtok_r(script, " \t\n", &save); t;
         t = strtok_r(NULL, " \t\n", &save))
        run_op(t, 1);
    int left = 0;
    for (struct allocation *a = allocations; a; a = a->next) left++;
    emit("\"op\":\"done\",\"allocations_left\":%d", left);
    free(script);
    free(copy);
    return 0;
}

/* Parses "--flag VALUE" pairs into the slots named in `flags` (NULL-terminated). */
static void parse_flags(int argc, char **argv, const char *const *flags, const char **values) {
    for (int i = 0; i < argc; i++) {
        int found = 0;
        for (int f = 0; flags[f]; f++) {
            if (strcmp(argv[i], flags[f]) == 0) {
                if (i + 1 >= argc) die_usage("flag needs a value");
                values[f] = argv[++i];
                found = 1;
                break;
            }
        }
        if (!found) {
            char msg[300];
            snprintf(msg, sizeof msg, "unknown argument '%s'", argv[i]);
            die_usage(msg);
        }
    }
}

static int cmd_spin(int argc, char **argv) {
    static const char *const flags[] = {"--ns", "--count", "--device", NULL};
    const char *v[3] = {NULL, "1", "0"};
    parse_flags(argc, argv, flags, v);
    unsigned long long ns = need_u64(v[0], "--ns");
    unsigned long long count = need_u64(v[1], "--count");
    unsigned long long dev = need_u64(v[2], "--device");
    load_driver();
    CUresult r = use_device((int)dev);
    if (r != CUDA_SUCCESS) {
        emit("\"op\":\"spin\",\"step\":\"context\",\"result\":%d,\"error\":\"%s\"", r,
             err_name(r));
        return 0;
    }
    do_spin(ns, count, 1);
    release_all_devices();
    return 0;
}

/* ---- fork: a child process of a CUDA process ---- */
#include <sys/wait.h>
static int cmd_fork(int argc, char **argv) {
    static const char *const flags[] = {"--parent-bytes", "--child-bytes", NULL};
    const char *v[2] = {NULL, NULL};
    parse_flags(argc, argv, flags, v);
    unsigned long long parent_bytes = need_u64(v[0], "--parent-bytes");
    unsigned long long child_bytes = need_u64(v[1], "--child-bytes");
    load_driver();
    CUdeviceptr p = 0;
    CUresult r = use_device(0);
    if (r == CUDA_SUCCESS) r = CU(cuMemAlloc, &p, (size_t)parent_bytes);
    emit("\"op\":\"parent-alloc\",\"pid\":%d,\"bytes\":%llu,\"result\":%d", (int)getpid(),
         parent_bytes, r);
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 2;
    }
    if (child == 0) {
        memset(primary, 0, sizeof primary);
        memset(streams, 0, sizeof streams);
        current_device = -1;
        CUresult ri = CU(cuInit, 0);
        CUdeviceptr c = 0;
        CUresult rc = ri == CUDA_SUCCESS ? use_device(0) : ri;
        if (rc == CUDA_SUCCESS) rc = CU(cuMemAlloc, &c, (size_t)child_bytes);
        emit("\"op\":\"child-alloc\",\"pid\":%d,\"bytes\":%llu,\"init_result\":%d,\"result\":%d",
             (int)getpid(), child_bytes, ri, rc);
        if (rc == CUDA_SUCCESS) CU(cuMemFree, c);
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    CUresult rf = p ? CU(cuMemFree, p) : CUDA_SUCCESS;
    emit("\"op\":\"parent-done\",\"child_status\":%d,\"free_result\":%d", status, rf);
    release_all_devices();
    return 0;
}

/* ---- queue: a deep, steady queue of kernels, paced by events ---- */
static int cmd_queue(int argc, char **argv) {
    static const char *const flags[] = {"--ns", "--seconds", "--depth", "--device", NULL};
    const char *v[4] = {NULL, NULL, "8", "0"};
    parse_flags(argc, argv, flags, v);
    unsigned long long ns = need_u64(v[0], "--ns");
    unsigned long long seconds = need_u64(v[1], "--seconds");
    unsigned long long depth = need_u64(v[2], "--depth");
    unsigned long long dev = need_u64(v[3], "--device");
    if (depth == 0 || depth > 1024) die_usage("--depth must be 1..1024");
    load_driver();
    CUfunction fn = NULL;
    CUstream stream = NULL;
    CUresult r = use_device((int)dev);
    if (r == CUDA_SUCCESS) r = get_spin(&fn);
    if (r == CUDA_SUCCESS) r = get_stream(&stream);
    CUevent first = NULL, *ev = calloc(depth, sizeof *ev);
    if (ev == NULL) {
        perror("calloc");
        return 2;
    }
    if (r == CUDA_SUCCESS) r = CU(cuEventCreate, &first, CU_EVENT_DEFAULT);
    for (unsigned long long i = 0; i < depth && r == CUDA_SUCCESS; i++)
        r = CU(cuEventCreate, &ev[i], CU_EVENT_DEFAULT);
    if (r != CUDA_SUCCESS) {
        emit("\"op\":\"queue\",\"step\":\"setup\",\"result\":%d,\"error\":\"%s\"", r, err_name(r));
        return 0;
    }
    unsigned long long param = ns;
    void *params[1] = {&param};
    double start = now_ms();
    unsigned long long kernels = 0;
    r = CU(cuEventRecord, first, stream);
    while (r == CUDA_SUCCESS && now_ms() - start < (double)seconds * 1000.0) {
        CUevent slot = ev[kernels % depth];
        /* the event D kernels back: after it, D - 1 kernels are still queued */
        if (kernels >= depth) r = CU(cuEventSynchronize, slot);
        if (r == CUDA_SUCCESS) r = CU(cuLaunchKernel, fn, 1, 1, 1, 1, 1, 1, 0, stream, params, NULL);
        if (r == CUDA_SUCCESS) r = CU(cuEventRecord, slot, stream);
        if (r == CUDA_SUCCESS) kernels++;
    }
    CUresult r_sync = CU(cuStreamSynchronize, stream);
    double end = now_ms();
    float ev_ms = -1.0f;
    CUresult r_el = kernels ? CU(cuEventElapsedTime, &ev_ms, first, ev[(kernels - 1) % depth])
                            : CUDA_SUCCESS;
    CU(cuEventDestroy, first);
    for (unsigned long long i = 0; i < depth; i++) CU(cuEventDestroy, ev[i]);
    free(ev);
    if (r == CUDA_SUCCESS) r = r_sync;
    if (r == CUDA_SUCCESS) r = r_el;
    emit("\"op\":\"queue\",\"pid\":%d,\"ns\":%llu,\"depth\":%llu,\"kernels\":%llu,"
         "\"event_ms\":%.3f,\"start_ms\":%.3f,\"end_ms\":%.3f,\"result\":%d,\"error\":\"%s\"",
         (int)getpid(), ns, depth, kernels, (double)ev_ms, start, end, r, r ? err_name(r) : "");
    release_all_devices();
    return 0;
}

/* ---- load: saturating (pause 0) or interactive (pause > 0) device use ---- */
static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* What one launch of the load loop is: a spin kernel, or a CUDA graph of kernels. */
struct work {
    CUfunction fn;
    CUgraphExec exec;
    unsigned long long kernels; /* per launch */
    unsigned long long ns;      /* device time per launch */
    const char *mode;
    unsigned long long gap_us;  /* host time between two launches of a batch */
};

static CUresult launch_work(const struct work *w, CUstream stream, void **params) {
    if (w->exec) return CU(cuGraphLaunch, w->exec, stream);
    return CU(cuLaunchKernel, w->fn, 1, 1, 1, 1, 1, 1, 0, stream, params, NULL);
}

/* The load loop (see `load`), reporting as ops "load-start", "load-progress" and "load". */
static int run_load(const struct work *w, CUstream stream, unsigned long long batch,
                    unsigned long long seconds, unsigned long long pause_ms,
                    unsigned long long report_ms, unsigned long long linger_s) {
    CUresult r = CUDA_SUCCESS;
    unsigned long long ns = w->ns;
    emit("\"op\":\"load-start\",\"pid\":%d,\"mode\":\"%s\"", (int)getpid(), w->mode);
    size_t cap = 1024, n = 0;
    double *waits = malloc(cap * sizeof *waits);
    if (waits == NULL) {
        perror("malloc");
        return 2;
    }
    unsigned long long param = ns;
    void *params[1] = {&param};
    double start = now_ms(), own_ms = (double)(batch * ns) / 1e6;
    double end = start, reported = start;
    unsigned long long kernels = 0;
    while (r == CUDA_SUCCESS && now_ms() - start < (double)seconds * 1000.0) {
        double t0 = now_ms();
        for (unsigned long long i = 0; i < batch && r == CUDA_SUCCESS; i++) {
            if (i > 0 && w->gap_us) usleep((useconds_t)w->gap_us);
            r = launch_work(w, stream, params);
            if (r == CUDA_SUCCESS) kernels += w->kernels;
        }
        if (r == CUDA_SUCCESS) r = CU(cuStreamSynchronize, stream);
        double t1 = now_ms();
        if (r == CUDA_SUCCESS) end = t1;
        if (r == CUDA_SUCCESS && report_ms && t1 - reported >= (double)report_ms) {
            /* every kernel launched so far has completed: the stream is synchronized */
            emit("\"op\":\"load-progress\",\"t_ms\":%.3f,\"kernels\":%llu,\"batches\":%zu", t1,
                 kernels, n + 1);
            reported = t1;
        }
        double wait = t1 - t0 - own_ms;
        if (n == cap) {
            cap *= 2;
            double *grown = realloc(waits, cap * sizeof *waits);
            if (grown == NULL) {
                perror("realloc");
                return 2;
            }
            waits = grown;
        }
        waits[n++] = wait < 0 ? 0 : wait;
        if (pause_ms) usleep((useconds_t)(pause_ms * 1000));
    }
    double wall = now_ms() - start;
    if (report_ms && reported < end) {
        emit("\"op\":\"load-progress\",\"t_ms\":%.3f,\"kernels\":%llu,\"batches\":%zu", end,
             kernels, n);
    }
    qsort(waits, n, sizeof *waits, cmp_double);
    double p50 = n ? waits[n / 2] : 0, p99 = n ? waits[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] : 0;
    double max = n ? waits[n - 1] : 0;
    emit("\"op\":\"load\",\"mode\":\"%s\",\"pid\":%d,\"kernels\":%llu,\"batches\":%zu,\"wall_ms\":%.1f,"
         "\"start_ms\":%.3f,\"end_ms\":%.3f,"
         "\"wait_p50_ms\":%.3f,\"wait_p99_ms\":%.3f,\"wait_max_ms\":%.3f,\"result\":%d,"
         "\"error\":\"%s\"",
         w->mode, (int)getpid(), kernels, n, wall, start, end, p50, p99, max, r, r ? err_name(r) : "");
    free(waits);
    if (linger_s) {
        /* idle but alive: the context stays, no launches */
        emit("\"op\":\"linger\",\"seconds\":%llu", linger_s);
        sleep((unsigned int)linger_s);
    }
    release_all_devices();
    return 0;
}


static int cmd_load(int argc, char **argv) {
    static const char *const flags[] = {"--ns",       "--seconds",  "--batch",
                                        "--pause-ms", "--device",   "--report-ms",
                                        "--linger-s", "--own-context", "--gap-us", NULL};
    const char *v[9] = {NULL, NULL, "4", "0", "0", "0", "0", "0", "0"};
    parse_flags(argc, argv, flags, v);
    unsigned long long ns = need_u64(v[0], "--ns");
    unsigned long long seconds = need_u64(v[1], "--seconds");
    unsigned long long batch = need_u64(v[2], "--batch");
    unsigned long long pause_ms = need_u64(v[3], "--pause-ms");
    unsigned long long dev = need_u64(v[4], "--device");
    unsigned long long report_ms = need_u64(v[5], "--report-ms");
    unsigned long long linger_s = need_u64(v[6], "--linger-s");
    unsigned long long own_context = need_u64(v[7], "--own-context");
    unsigned long long gap_us = need_u64(v[8], "--gap-us");
    if (batch == 0) die_usage("--batch must be positive");
    load_driver();
    CUresult r;
    if (own_context) {
        /* A context of its own (cuCtxCreate), not the device's primary context. */
        CUcontext ctx = NULL;
        r = CU(cuCtxCreate, &ctx, NULL, 0, 0, (CUdevice)dev);
        if (r == CUDA_SUCCESS) current_device = (int)dev;
    } else {
        r = use_device((int)dev);
    }
    CUfunction fn = NULL;
    CUstream stream = NULL;
    if (r == CUDA_SUCCESS) r = get_spin(&fn);
    if (r == CUDA_SUCCESS) r = get_stream(&stream);
    if (r != CUDA_SUCCESS) {
        emit("\"op\":\"load\",\"step\":\"setup\",\"result\":%d,\"error\":\"%s\"", r, err_name(r));
        return 0;
    }
    struct work w = {fn, NULL, 1, ns, "kernel", gap_us};
    return run_load(&w, stream, batch, seconds, pause_ms, report_ms, linger_s);
}

/* ---- graph: a decode-like step captured once into a CUDA graph, replayed ---- */
static int cmd_graph(int argc, char **argv) {
    static const char *const flags[] = {"--ns",       "--kernels",   "--seconds",  "--batch",
                                        "--pause-ms", "--device",    "--report-ms", "--linger-s",
                                        "--mem",      "--capture-pause-ms", NULL};
    const char *v[10] = {NULL, "8", NULL, "1", "0", "0", "0", "0", "0", "0"};
    parse_flags(argc, argv, flags, v);
    unsigned long long ns = need_u64(v[0], "--ns");
    unsigned long long count = need_u64(v[1], "--kernels");
    unsigned long long seconds = need_u64(v[2], "--seconds");
    unsigned long long batch = need_u64(v[3], "--batch");
    unsigned long long pause_ms = need_u64(v[4], "--pause-ms");
    unsigned long long dev = need_u64(v[5], "--device");
    unsigned long long report_ms = need_u64(v[6], "--report-ms");
    unsigned long long linger_s = need_u64(v[7], "--linger-s");
    unsigned long long mem = need_u64(v[8], "--mem");
    unsigned long long capture_pause_ms = need_u64(v[9], "--capture-pause-ms");
    if (batch == 0 || count == 0) die_usage("--batch and --kernels must be positive");
    load_driver();
    CUresult r = use_device((int)dev);
    CUfunction fn = NULL;
    CUstream stream = NULL;
    const char *step = "setup";
    if (r == CUDA_SUCCESS) r = get_spin(&fn);
    if (r == CUDA_SUCCESS) r = get_stream(&stream);
    /* capture one step: [alloc workspace] K kernels [free workspace] */
    CUgraph graph = NULL;
    CUgraphExec exec = NULL;
    unsigned long long param = ns;
    void *params[1] = {&param};
    if (r == CUDA_SUCCESS) {
        step = "capture";
        r = CU(cuStreamBeginCapture, stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
    }
    if (r == CUDA_SUCCESS) {
        CUdeviceptr workspace = 0;
        CUresult rc = mem ? CU(cuMemAllocAsync, &workspace, (size_t)mem, stream) : CUDA_SUCCESS;
        for (unsigned long long i = 0; i < count && rc == CUDA_SUCCESS; i++) {
            if (capture_pause_ms) usleep((useconds_t)(capture_pause_ms * 1000));
            rc = CU(cuLaunchKernel, fn, 1, 1, 1, 1, 1, 1, 0, stream, params, NULL);
        }
        if (rc == CUDA_SUCCESS && mem) rc = CU(cuMemFreeAsync, workspace, stream);
        r = CU(cuStreamEndCapture, stream, &graph);
        if (rc != CUDA_SUCCESS) r = rc;
    }
    if (r == CUDA_SUCCESS) {
        step = "instantiate";
        r = CU(cuGraphInstantiateWithFlags, &exec, graph, 0ULL);
    }
    if (r == CUDA_SUCCESS) {
        step = "upload";
        r = CU(cuGraphUpload, exec, stream);
    }
    if (r != CUDA_SUCCESS) {
        emit("\"op\":\"load\",\"mode\":\"graph\",\"step\":\"%s\",\"result\":%d,\"error\":\"%s\"",
             step, r, err_name(r));
        return 0;
    }
    struct work w = {fn, exec, count, count * ns, "graph", 0};
    int rc = run_load(&w, stream, batch, seconds, pause_ms, report_ms, linger_s);
    return rc;
}

/* ---- interactive: requests arriving at random, each a burst of kernels and a sync ---- */
static unsigned long long xorshift64(unsigned long long *s);

/* -ln(x) for 0 < x <= 1 (no libm): x = m * 2^e with m in [1, 2), ln m = 2 atanh((m-1)/(m+1)). */
static double neg_ln(double x) {
    int e = 0;
    while (x < 1.0) {
        x *= 2.0;
        e--;
    }
    double z = (x - 1.0) / (x + 1.0), z2 = z * z, term = z, sum = 0.0;
    for (int k = 1; k < 40; k += 2) {
        sum += term / k;
        term *= z2;
    }
    return -(2.0 * sum + e * 0.69314718055994530942);
}

/* Sleeps until CLOCK_MONOTONIC `ms`. */
static void sleep_until_ms(double ms) {
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1e3);
    ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1e3) * 1e6);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static int cmd_interactive(int argc, char **argv) {
    static const char *const flags[] = {"--rate", "--kernels", "--ns", "--seconds",
                                        "--seed", "--device",  NULL};
    const char *v[6] = {NULL, "20", NULL, NULL, "1", "0"};
    parse_flags(argc, argv, flags, v);
    unsigned long long rate = need_u64(v[0], "--rate");
    unsigned long long kernels = need_u64(v[1], "--kernels");
    unsigned long long ns = need_u64(v[2], "--ns");
    unsigned long long seconds = need_u64(v[3], "--seconds");
    unsigned long long seed = need_u64(v[4], "--seed");
    unsigned long long dev = need_u64(v[5], "--device");
    if (rate == 0 || kernels == 0) die_usage("--rate and --kernels must be positive");
    CUfunction fn = NULL;
    CUstream stream = NULL;
    CUresult r = open_spin((int)dev, &fn, &stream);
    if (r != CUDA_SUCCESS) {
        emit("\"op\":\"interactive\",\"step\":\"setup\",\"result\":%d,\"error\":\"%s\"", r,
             err_name(r));
        return 0;
    }
    unsigned long long param = ns;
    void *params[1] = {&param};
    /* one warm-up request outside the measurement (module and stream first use) */
    for (unsigned long long k = 0; k < kernels && r == CUDA_SUCCESS; k++)
        r = CU(cuLaunchKernel, fn, 1, 1, 1, 1, 1, 1, 0, stream, params, NULL);
    if (r == CUDA_SUCCESS) r = CU(cuStreamSynchronize, stream);
    size_t cap = 1024, n = 0;
    double *lat = malloc(cap * sizeof *lat), *arr = malloc(cap * sizeof *arr);
    if (lat == NULL || arr == NULL) {
        perror("malloc");
        return 2;
    }
    unsigned long long rng = seed * 0x9E3779B97F4A7C15ULL + 1;
    double start = now_ms(), end_at = start + (double)seconds * 1e3, arrival = start;
    emit("\"op\":\"interactive-start\",\"pid\":%d,\"start_ms\":%.3f", (int)getpid(), start);
    double done = start;
    while (r == CUDA_SUCCESS) {
        double u = (double)(xorshift64(&rng) >> 11) / 9007199254740992.0; /* [0, 1) */
        arrival += neg_ln(1.0 - u) / (double)rate * 1e3;
        if (arrival >= end_at) break;
        if (now_ms() < arrival) sleep_until_ms(arrival);
        for (unsigned long long k = 0; k < kernels && r == CUDA_SUCCESS; k++)
            r = CU(cuLaunchKernel, fn, 1, 1, 1, 1, 1, 1, 0, stream, params, NULL);
        if (r == CUDA_SUCCESS) r = CU(cuStreamSynchronize, stream);
        done = now_ms();
        if (r != CUDA_SUCCESS) break;
        if (n == cap) {
            cap *= 2;
            double *grown = realloc(lat, cap * sizeof *lat), *grown_arr;
            if (grown == NULL) {
                perror("realloc");
                return 2;
            }
            lat = grown;
            grown_arr = realloc(arr, cap * sizeof *arr);
            if (grown_arr == NULL) {
                perror("realloc");
                return 2;
            }
            arr = grown_arr;
        }
        arr[n] = arrival;
        lat[n++] = done - arrival;
    }
    /* the latencies and arrivals in arrival order, then the latencies sorted for percentiles */
    size_t len = 64 + n * 24;
    char *list = malloc(len), *p = list, *arrivals = malloc(len), *q = arrivals;
    if (list == NULL || arrivals == NULL) {
        perror("malloc");
        return 2;
    }
    *p = '\0';
    *q = '\0';
    for (size_t i = 0; i < n; i++) {
        p += snprintf(p, len - (size_t)(p - list), "%s%.3f", i ? "," : "", lat[i]);
        q += snprintf(q, len - (size_t)(q - arrivals), "%s%.3f", i ? "," : "", arr[i]);
    }
    qsort(lat, n, sizeof *lat, cmp_double);
#define PCT(q) (n ? lat[(size_t)((double)(n - 1) * (q) + 0.5)] : 0.0)
    emit("\"op\":\"interactive\",\"pid\":%d,\"requests\":%zu,\"kernels\":%llu,\"ns\":%llu,"
         "\"rate\":%llu,\"start_ms\":%.3f,\"end_ms\":%.3f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
         "\"p999_ms\":%.3f,\"max_ms\":%.3f,\"latencies_ms\":[%s],\"arrivals_ms\":[%s],"
         "\"result\":%d,\"error\":\"%s\"",
         (int)getpid(), n, kernels, ns, rate, start, done, PCT(0.5), PCT(0.99), PCT(0.999),
         n ? lat[n - 1] : 0.0, list, arrivals, r, r ? err_name(r) : "");
#undef PCT
    free(list);
    free(arrivals);
    free(arr);
    free(lat);
    release_all_devices();
    return 0;
}

/* ---- launch-rate: what one launch call costs (issue only, rarely synchronized) ---- */
static int cmd_launch_rate(int argc, char **argv) {
    static const char *const flags[] = {"--ns", "--count", "--batch", "--warmup", "--device",
                                        NULL};
    const char *v[5] = {"0", "100000", "1024", "1000", "0"};
    parse_flags(argc, argv, flags, v);
    unsigned long long ns = need_u64(v[0], "--ns");
    unsigned long long count = need_u64(v[1], "--count");
    unsigned long long batch = need_u64(v[2], "--batch");
    unsigned long long warmup = need_u64(v[3], "--warmup");
    unsigned long long dev = need_u64(v[4], "--device");
    if (batch == 0 || count == 0) die_usage("--count and --batch must be positive");
    CUfunction fn = NULL;
    CUstream stream = NULL;
    CUresult r = open_spin((int)dev, &fn, &stream);
    if (r != CUDA_SUCCESS) {
        emit("\"op\":\"launch-rate\",\"step\":\"setup\",\"result\":%d,\"error\":\"%s\"", r,
             err_name(r));
        return 0;
    }
    unsigned long long param = ns;
    void *params[1] = {&param};
    /* warm-up: first launches (and, under gpumux, the wait for the slice) are not timed */
    for (unsigned long long i = 0; i < warmup && r == CUDA_SUCCESS; i++) {
        r = CU(cuLaunchKernel, fn, 1, 1, 1, 1, 1, 1, 0, stream, params, NULL);
        if (r == CUDA_SUCCESS && (i + 1) % batch == 0) r = CU(cuStreamSynchronize, stream);
    }
    if (r == CUDA_SUCCESS) r = CU(cuStreamSynchronize, stream);
    size_t batches = (size_t)((count + batch - 1) / batch), n = 0;
    double *per = malloc(batches * sizeof *per);
    if (per == NULL) {
        perror("malloc");
        return 2;
    }
    unsigned long long launched = 0, in_calls = 0, t_start = now_ns();
    while (r == CUDA_SUCCESS && launched < count) {
        unsigned long long k = count - launched < batch ? count - launched : batch, done = 0;
        unsigned long long t0 = now_ns();
        for (; done < k; done++) {
            r = CU(cuLaunchKernel, fn, 1, 1, 1, 1, 1, 1, 0, stream, params, NULL);
            if (r != CUDA_SUCCESS) break;
        }
        unsigned long long t1 = now_ns();
        launched += done;
        in_calls += t1 - t0;
        if (done) per[n++] = (double)(t1 - t0) / (double)done;
        if (r == CUDA_SUCCESS) r = CU(cuStreamSynchronize, stream);
    }
    double wall_ms = (double)(now_ns() - t_start) / 1e6;
    qsort(per, n, sizeof *per, cmp_double);
    emit("\"op\":\"launch-rate\",\"pid\":%d,\"ns\":%llu,\"count\":%llu,\"batch\":%llu,"
         "\"launched\":%llu,\"ns_per_launch\":%.2f,\"median_batch_ns_per_launch\":%.2f,"
         "\"min_batch_ns_per_launch\":%.2f,\"wall_ms\":%.3f,\"result\":%d,\"error\":\"%s\"",
         (int)getpid(), ns, count, batch, launched,
         launched ? (double)in_calls / (double)launched : 0.0, n ? per[n / 2] : 0.0,
         n ? per[0] : 0.0, wall_ms, r, r ? err_name(r) : "");
    free(per);
    release_all_devices();
    return 0;
}

/* ---- stress ---- */
#define STRESS_LIVE 16
#define STRESS_CODES 16
struct stress_thread {
    pthread_t tid;
    int index;
    unsigned long long seed, max_bytes;
    double deadline;
    unsigned long long allocs, ooms, frees, ctx_errors;
    int codes[STRESS_CODES];
    unsigned long long code_counts[STRESS_CODES];
    int n_codes;
};

static void stress_count(struct stress_thread *t, CUresult r) {
    for (int i = 0; i < t->n_codes; i++)
        if (t->codes[i] == r) {
            t->code_counts[i]++;
            return;
        }
    if (t->n_codes < STRESS_CODES) {
        t->codes[t->n_codes] = r;
        t->code_counts[t->n_codes++] = 1;
    }
}

static unsigned long long xorshift64(unsigned long long *s) {
    unsigned long long x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void *stress_main(void *arg) {
    struct stress_thread *t = arg;
    CUresult r = CU(cuCtxSetCurrent, primary[0]);
    if (r != CUDA_SUCCESS) {
        t->ctx_errors++;
        stress_count(t, r);
        return NULL;
    }
    unsigned long long rng = t->seed * 0x9E3779B97F4A7C15ULL + (unsigned long long)t->index + 1;
    CUdeviceptr live[STRESS_LIVE];
    int n_live = 0;
    while (now_ms() < t->deadline) {
        unsigned long long x = xorshift64(&rng);
        if (n_live < STRESS_LIVE && (n_live == 0 || (x & 1))) {
            size_t size = (size_t)(1 + (xorshift64(&rng) % t->max_bytes));
            CUdeviceptr p = 0;
            r = CU(cuMemAlloc, &p, size);
            if (r == CUDA_SUCCESS) {
                t->allocs++;
                live[n_live++] = p;
            } else if (r == CUDA_ERROR_OUT_OF_MEMORY) {
                t->ooms++;
            } else {
                stress_count(t, r);
            }
        } else {
            int i = (int)((x >> 1) % (unsigned long long)n_live);
            r = CU(cuMemFree, live[i]);
            if (r == CUDA_SUCCESS) t->frees++;
            else stress_count(t, r);
            live[i] = live[--n_live];
        }
    }
    while (n_live > 0) {
        r = CU(cuMemFree, live[--n_live]);
        if (r == CUDA_SUCCESS) t->frees++;
        else stress_count(t, r);
    }
    return NULL;
}

static int cmd_stress(int argc, char **argv) {
    static const char *const flags[] = {"--threads", "--seconds", "--max-bytes", "--seed", NULL};
    const char *v[4] = {"4", "1", "64MiB", "1"};
    parse_flags(argc, argv, flags, v);
    unsigned long long threads = need_u64(v[0], "--threads");
    unsigned long long seconds_ms = 0;
    {
        /* seconds may be fractional: "0.5" */
        char *end = NULL;
        double s = strtod(v[1], &end);
        if (end == v[1] || *end != '\0' || s < 0) die_usage("bad --seconds");
        seconds_ms = (unsigned long long)(s * 1000.0);
    }
    unsigned long long max_bytes = need_u64(v[2], "--max-bytes");
    unsigned long long seed = need_u64(v[3], "--seed");
    if (threads == 0 || threads > 256 || max_bytes == 0) die_usage("bad --threads/--max-bytes");
    load_driver();
    CUresult r = use_device(0);
    if (r != CUDA_SUCCESS) {
        emit("\"op\":\"stress\",\"step\":\"context\",\"result\":%d", r);
        return 0;
    }
    size_t free_before = 0, free_after = 0, total = 0;
    CUresult rb = CU(cuMemGetInfo, &free_before, &total);
    struct stress_thread *ts = calloc((size_t)threads, sizeof *ts);
    if (!ts) {
        perror("calloc");
        return 2;
    }
    double start = now_ms();
    for (unsigned long long i = 0; i < threads; i++) {
        ts[i].index = (int)i;
        ts[i].seed = seed;
        ts[i].max_bytes = max_bytes;
        ts[i].deadline = start + (double)seconds_ms;
        if (pthread_create(&ts[i].tid, NULL, stress_main, &ts[i]) != 0) {
            perror("pthread_create");
            return 2;
        }
    }
    unsigned long long allocs = 0, ooms = 0, frees = 0;
    int codes[STRESS_CODES * 4];
    unsigned long long counts[STRESS_CODES * 4];
    int n_codes = 0;
    for (unsigned long long i = 0; i < threads; i++) {
        pthread_join(ts[i].tid, NULL);
        allocs += ts[i].allocs;
        ooms += ts[i].ooms;
        frees += ts[i].frees;
        for (int c = 0; c < ts[i].n_codes; c++) {
            int k = 0;
            while (k < n_codes && codes[k] != ts[i].codes[c]) k++;
            if (k == n_codes && n_codes < STRESS_CODES * 4) {
                codes[n_codes] = ts[i].codes[c];
                counts[n_codes++] = 0;
            }
            if (k < n_codes) counts[k] += ts[i].code_counts[c];
        }
    }
    double wall = now_ms() - start;
    CUresult ra = CU(cuMemGetInfo, &free_after, &total);
    char errs[2048] = "";
    size_t o = 0;
    unsigned long long other = 0;
    for (int k = 0; k < n_codes && o + 64 < sizeof errs; k++) {
        o += (size_t)snprintf(errs + o, sizeof errs - o, "%s\"%d\":%llu", k ? "," : "", codes[k],
                              counts[k]);
        other += counts[k];
    }
    emit("\"op\":\"stress\",\"threads\":%llu,\"wall_ms\":%.1f,\"allocs\":%llu,\"ooms\":%llu,"
         "\"frees\":%llu,\"other_errors\":%llu,\"errors\":{%s},\"free_before\":%zu,"
         "\"free_after\":%zu,\"total\":%zu,\"meminfo_result\":%d,\"result\":%d",
         threads, wall, allocs, ooms, frees, other, errs, free_before, free_after, total,
         rb ? rb : ra, other ? -1 : 0);
    free(ts);
    release_all_devices();
    return 0;
}

static int cmd_hold(int argc, char **argv) {
    static const char *const flags[] = {"--bytes", "--seconds", "--device", NULL};
    const char *v[3] = {NULL, "3600", "0"};
    parse_flags(argc, argv, flags, v);
    unsigned long long bytes = need_u64(v[0], "--bytes");
    unsigned long long seconds = need_u64(v[1], "--seconds");
    unsigned long long dev = need_u64(v[2], "--device");
    load_driver();
    CUresult r = use_device((int)dev);
    CUdeviceptr p = 0;
    if (r == CUDA_SUCCESS) r = CU(cuMemAlloc, &p, (size_t)bytes);
    emit("\"op\":\"hold\",\"pid\":%d,\"device\":%llu,\"bytes\":%llu,\"seconds\":%llu,"
         "\"result\":%d,\"error\":\"%s\"",
         (int)getpid(), dev, bytes, seconds, r, r ? err_name(r) : "");
    if (r != CUDA_SUCCESS) return 0;
    sleep((unsigned int)seconds);
    r = CU(cuMemFree, p);
    emit("\"op\":\"release\",\"bytes\":%llu,\"result\":%d", bytes, r);
    release_all_devices();
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) die_usage("missing subcommand");
    const char *cmd = argv[1];
    int rc;
    if (strcmp(cmd, "info") == 0) {
        if (argc != 2) die_usage("info takes no arguments");
        load_driver();
        rc = cmd_info();
        release_all_devices();
    } else if (strcmp(cmd, "ops") == 0) {
        rc = cmd_ops(argc - 2, argv + 2);
    } else if (strcmp(cmd, "spin") == 0) {
        rc = cmd_spin(argc - 2, argv + 2);
    } else if (strcmp(cmd, "stress") == 0) {
        rc = cmd_stress(argc - 2, argv + 2);
    } else if (strcmp(cmd, "hold") == 0) {
        rc = cmd_hold(argc - 2, argv + 2);
    } else if (strcmp(cmd, "fork") == 0) {
        rc = cmd_fork(argc - 2, argv + 2);
    } else if (strcmp(cmd, "load") == 0) {
        rc = cmd_load(argc - 2, argv + 2);
    } else if (strcmp(cmd, "graph") == 0) {
        rc = cmd_graph(argc - 2, argv + 2);
    } else if (strcmp(cmd, "launch-rate") == 0) {
        rc = cmd_launch_rate(argc - 2, argv + 2);
    } else if (strcmp(cmd, "queue") == 0) {
        rc = cmd_queue(argc - 2, argv + 2);
    } else if (strcmp(cmd, "interactive") == 0) {
        rc = cmd_interactive(argc - 2, argv + 2);
    } else {
        die_usage("unknown subcommand");
        rc = 2;
    }
    return rc;
}
