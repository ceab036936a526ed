/*
 * nvml_probe.c: reads NVML the way monitoring tools do (dlopen("libnvidia-ml.so.1") + dlsym)
 * and prints what it saw as JSON lines, with the nvmlReturn_t of every call. Used by the tests
 * of the fake NVML (and of the shim's NVML view).
 *
 * Build: cc -O2 -Wall -Wextra -o nvml_probe nvml_probe.c -ldl
 * Usage: nvml_probe            (every device: identity, memory v1/v2, processes v1/v2/v3)
 * Exit codes: 0 ran (NVML errors are data), 3 library or symbol missing.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
#define nvmlMemory_v2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; } nvmlProcessInfo_v1_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;

static void *lib;
static void *sym(const char *name) {
    void *f = dlsym(lib, name);
    if (f == NULL) {
        printf("{\"op\":\"dlsym\",\"symbol\":\"%s\",\"error\":\"missing\"}\n", name);
        exit(3);
    }
    return f;
}

#define MAX_PROCS 64

int main(void) {
    lib = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (lib == NULL) {
        printf("{\"op\":\"dlopen\",\"error\":\"%s\"}\n", dlerror());
        return 3;
    }
    nvmlReturn_t (*init)(void) = (nvmlReturn_t (*)(void))sym("nvmlInit_v2");
    nvmlReturn_t (*shutdown)(void) = (nvmlReturn_t (*)(void))sym("nvmlShutdown");
    nvmlReturn_t (*count_v2)(unsigned int *) = (nvmlReturn_t (*)(unsigned int *))sym("nvmlDeviceGetCount_v2");
    nvmlReturn_t (*by_index)(unsigned int, nvmlDevice_t *) =
        (nvmlReturn_t (*)(unsigned int, nvmlDevice_t *))sym("nvmlDeviceGetHandleByIndex_v2");
    nvmlReturn_t (*by_uuid)(const char *, nvmlDevice_t *) =
        (nvmlReturn_t (*)(const char *, nvmlDevice_t *))sym("nvmlDeviceGetHandleByUUID");
    nvmlReturn_t (*get_uuid)(nvmlDevice_t, char *, unsigned int) =
        (nvmlReturn_t (*)(nvmlDevice_t, char *, unsigned int))sym("nvmlDeviceGetUUID");
    nvmlReturn_t (*get_name)(nvmlDevice_t, char *, unsigned int) =
        (nvmlReturn_t (*)(nvmlDevice_t, char *, unsigned int))sym("nvmlDeviceGetName");
    nvmlReturn_t (*get_index)(nvmlDevice_t, unsigned int *) =
        (nvmlReturn_t (*)(nvmlDevice_t, unsigned int *))sym("nvmlDeviceGetIndex");
    nvmlReturn_t (*mem_v1)(nvmlDevice_t, nvmlMemory_t *) =
        (nvmlReturn_t (*)(nvmlDevice_t, nvmlMemory_t *))sym("nvmlDeviceGetMemoryInfo");
    nvmlReturn_t (*mem_v2)(nvmlDevice_t, nvmlMemory_v2_t *) =
        (nvmlReturn_t (*)(nvmlDevice_t, nvmlMemory_v2_t *))sym("nvmlDeviceGetMemoryInfo_v2");
    nvmlReturn_t (*procs_v1)(nvmlDevice_t, unsigned int *, nvmlProcessInfo_v1_t *) =
        (nvmlReturn_t (*)(nvmlDevice_t, unsigned int *, nvmlProcessInfo_v1_t *))sym(
            "nvmlDeviceGetComputeRunningProcesses");
    nvmlReturn_t (*procs_v3)(nvmlDevice_t, unsigned int *, nvmlProcessInfo_t *) =
        (nvmlReturn_t (*)(nvmlDevice_t, unsigned int *, nvmlProcessInfo_t *))sym(
            "nvmlDeviceGetComputeRunningProcesses_v3");
    nvmlReturn_t (*util)(nvmlDevice_t, nvmlUtilization_t *) =
        (nvmlReturn_t (*)(nvmlDevice_t, nvmlUtilization_t *))sym("nvmlDeviceGetUtilizationRates");
    const char *(*err_str)(nvmlReturn_t) = (const char *(*)(nvmlReturn_t))sym("nvmlErrorString");
    nvmlReturn_t (*driver_version)(char *, unsigned int) =
        (nvmlReturn_t (*)(char *, unsigned int))sym("nvmlSystemGetDriverVersion");

    unsigned int n = 0;
    nvmlReturn_t before = count_v2(&n);
    nvmlReturn_t r = init();
    char version[80] = "";
    nvmlReturn_t rv = driver_version(version, sizeof version);
    char tiny[2];
    nvmlReturn_t rv_small = driver_version(tiny, sizeof tiny);
    nvmlReturn_t rc = count_v2(&n);
    nvmlReturn_t rc_null = count_v2(NULL);
    printf("{\"op\":\"init\",\"uninitialized_count_result\":%d,\"result\":%d,\"driver_version\":\"%s\","
           "\"driver_version_result\":%d,\"small_buffer_result\":%d,\"count\":%u,"
           "\"count_result\":%d,\"null_count_result\":%d,\"error_string\":\"%s\"}\n",
           before, r, version, rv, rv_small, n, rc, rc_null, err_str(1));
    for (unsigned int i = 0; i < n; i++) {
        nvmlDevice_t dev = NULL, dev2 = NULL;
        nvmlReturn_t rh = by_index(i, &dev);
        char uuid[96] = "", name[96] = "";
        nvmlReturn_t ru = get_uuid(dev, uuid, sizeof uuid);
        nvmlReturn_t rn = get_name(dev, name, sizeof name);
        nvmlReturn_t rbu = by_uuid(uuid, &dev2);
        unsigned int idx = 999;
        nvmlReturn_t ri = get_index(dev, &idx);
        nvmlMemory_t m1 = {0, 0, 0};
        nvmlReturn_t rm1 = mem_v1(dev, &m1);
        nvmlMemory_v2_t m2;
        memset(&m2, 0, sizeof m2);
        nvmlReturn_t rm2_bad = mem_v2(dev, &m2); /* version 0: must be refused */
        m2.version = nvmlMemory_v2;
        nvmlReturn_t rm2 = mem_v2(dev, &m2);
        nvmlUtilization_t u = {0, 0};
        nvmlReturn_t rut = util(dev, &u);
        printf("{\"op\":\"device\",\"index\":%u,\"handle_result\":%d,\"uuid\":\"%s\",\"uuid_result\":%d,"
               "\"name\":\"%s\",\"name_result\":%d,\"by_uuid_result\":%d,\"by_uuid_same\":%s,"
               "\"index_result\":%d,\"index_reported\":%u,"
               "\"mem_v1\":{\"result\":%d,\"total\":%llu,\"free\":%llu,\"used\":%llu},"
               "\"mem_v2\":{\"bad_version_result\":%d,\"result\":%d,\"total\":%llu,\"reserved\":%llu,"
               "\"free\":%llu,\"used\":%llu},\"utilization\":{\"result\":%d,\"gpu\":%u,\"memory\":%u}}\n",
               i, rh, uuid, ru, name, rn, rbu, dev2 == dev ? "true" : "false", ri, idx, rm1,
               m1.total, m1.free, m1.used, rm2_bad, rm2, m2.total, m2.reserved, m2.free, m2.used,
               rut, u.gpu, u.memory);

        /* the *infoCount protocol: ask the size first, then fetch */
        unsigned int need = 0;
        nvmlReturn_t rq = procs_v3(dev, &need, NULL);
        nvmlProcessInfo_t procs[MAX_PROCS];
        unsigned int got = MAX_PROCS;
        nvmlReturn_t rp = procs_v3(dev, &got, procs);
        printf("{\"op\":\"processes\",\"index\":%u,\"query_result\":%d,\"required\":%u,\"result\":%d,"
               "\"count\":%u,\"processes\":[",
               i, rq, need, rp, got);
        for (unsigned int p = 0; rp == 0 && p < got && p < MAX_PROCS; p++)
            printf("%s{\"pid\":%u,\"used\":%llu,\"gpu_instance\":%u,\"compute_instance\":%u}",
                   p ? "," : "", procs[p].pid, procs[p].usedGpuMemory, procs[p].gpuInstanceId,
                   procs[p].computeInstanceId);
        nvmlProcessInfo_v1_t p1[MAX_PROCS];
        unsigned int got1 = MAX_PROCS;
        nvmlReturn_t rp1 = procs_v1(dev, &got1, p1);
        printf("],\"v1_result\":%d,\"v1_count\":%u,\"v1_processes\":[", rp1, got1);
        for (unsigned int p = 0; rp1 == 0 && p < got1 && p < MAX_PROCS; p++)
            printf("%s{\"pid\":%u,\"used\":%llu}", p ? "," : "", p1[p].pid, p1[p].usedGpuMemory);
        printf("]}\n");
    }
    nvmlReturn_t rs = shutdown();
    nvmlReturn_t rs2 = shutdown();
    unsigned int n2 = 0;
    nvmlReturn_t after = count_v2(&n2);
    printf("{\"op\":\"shutdown\",\"result\":%d,\"second_result\":%d,\"count_after_result\":%d}\n", rs,
           rs2, after);
    return 0;
}
