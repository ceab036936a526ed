/*
 * dlsym_logger.c: an LD_PRELOAD library that logs every dlsym() call of the process, with the
 * library the handle belongs to, to the file named by $DLSYM_LOG (one "library<TAB>symbol" line
 * per call). Tests use it to check how a program reaches the driver (e.g. that the C workload
 * makes exactly one dlsym on libcuda, for cuGetProcAddress_v2, as the CUDA runtime does).
 *
 * Build: cc -O2 -Wall -Wextra -shared -fPIC -o libdlsym_logger.so dlsym_logger.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef void *(*dlsym_fn)(void *, const char *);

static dlsym_fn real_dlsym(void) {
    static dlsym_fn real;
    if (real == NULL) {
        real = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
        if (real == NULL) real = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
    }
    return real;
}

void *dlsym(void *handle, const char *symbol) {
    const char *path = getenv("DLSYM_LOG");
    if (path != NULL) {
        const char *lib = "?";
        struct link_map *map = NULL;
        if (handle == RTLD_DEFAULT) lib = "RTLD_DEFAULT";
        else if (handle == RTLD_NEXT) lib = "RTLD_NEXT";
        else if (dlinfo(handle, RTLD_DI_LINKMAP, &map) == 0 && map != NULL && map->l_name)
            lib = map->l_name;
        char line[1024];
        int n = snprintf(line, sizeof line, "%s\t%s\n", lib, symbol);
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0) {
            if (n > 0) {
                size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
                ssize_t w = write(fd, line, len);
                (void)w;
            }
            close(fd);
        }
    }
    dlsym_fn real = real_dlsym();
    return real ? real(handle, symbol) : NULL;
}
