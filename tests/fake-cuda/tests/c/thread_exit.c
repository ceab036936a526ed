/*
 * thread_exit.c: releases the primary context from thread-exit destructors that run after the
 * driver's own thread-local state is gone, as cuda.core does from a C++ `thread_local` at process
 * exit. A driver must answer (CUDA_SUCCESS), never panic or crash.
 *
 * A destructor registered with __cxa_thread_atexit_impl (what a C++ `thread_local` uses) before
 * the thread's first driver call runs after the driver's thread-locals, which register later
 * (destructors run in reverse order). Done on a second thread (at pthread exit) and on the main
 * thread (at exit()).
 *
 * Prints one line per destructor: "<where> retain=<r> current=<r> release=<r> ctx=<0|1>".
 * Build: cc -O1 -Wall -o thread_exit thread_exit.c -ldl -pthread
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

typedef int (*fn_init)(unsigned);
typedef int (*fn_retain)(void **, int);
typedef int (*fn_release)(int);
typedef int (*fn_set)(void *);
typedef int (*fn_get)(void **);

extern int __cxa_thread_atexit_impl(void (*)(void *), void *, void *);
extern void *__dso_handle;

static fn_retain retain;
static fn_release release;
static fn_set set_current;
static fn_get get_current;
static int retain_result[2];

static void release_at_exit(void *arg) {
    const char *where = arg;
    void *ctx = (void *)1;
    int current = get_current(&ctx);
    int r = release(0);
    printf("%s retain=%d current=%d release=%d ctx=%d\n", where,
           retain_result[where[0] == 't'], current, r, ctx != NULL);
    fflush(stdout);
}

/* Registers the destructor first, then retains the primary context and makes it current. */
static void use_device(const char *where) {
    __cxa_thread_atexit_impl(release_at_exit, (void *)where, &__dso_handle);
    void *ctx = NULL;
    retain_result[where[0] == 't'] = retain(&ctx, 0);
    set_current(ctx);
}

static void *thread_main(void *arg) {
    (void)arg;
    use_device("thread");
    return NULL;
}

int main(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) {
        fprintf(stderr, "dlopen libcuda.so.1: %s\n", dlerror());
        return 3;
    }
    fn_init init = (fn_init)dlsym(h, "cuInit");
    retain = (fn_retain)dlsym(h, "cuDevicePrimaryCtxRetain");
    release = (fn_release)dlsym(h, "cuDevicePrimaryCtxRelease_v2");
    set_current = (fn_set)dlsym(h, "cuCtxSetCurrent");
    get_current = (fn_get)dlsym(h, "cuCtxGetCurrent");
    if (!init || !retain || !release || !set_current || !get_current || init(0) != 0) {
        fprintf(stderr, "the driver is incomplete or cuInit failed\n");
        return 3;
    }
    pthread_t t;
    pthread_create(&t, NULL, thread_main, NULL);
    pthread_join(t, NULL);
    use_device("main");
    exit(0);
}
