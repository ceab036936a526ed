/* An LD_PRELOAD library for gpumuxd that wins the race a container could try against the
 * daemon's socket creation: right after the daemon binds a socket whose path ends in the
 * name in $BIND_RACE_NAME, the socket file is moved aside and a symlink to $BIND_RACE_VICTIM
 * takes its place, as a process of the tenant (which can write the directory) would do. A
 * daemon that then changes the socket's mode by path changes the victim's instead.
 * Used by the hostile-tenant tests (issue #10, row 11). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real;
    if (!real) real = (bind_fn)dlsym(RTLD_NEXT, "bind");
    int rc = real(fd, addr, len);
    const char *name = getenv("BIND_RACE_NAME");
    const char *victim = getenv("BIND_RACE_VICTIM");
    if (rc != 0 || !name || !victim || addr->sa_family != AF_UNIX) return rc;
    const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
    size_t n = strlen(un->sun_path), m = strlen(name);
    if (n < m || !strstr(un->sun_path, name)) return rc;
    char aside[sizeof un->sun_path + 16];
    snprintf(aside, sizeof aside, "%s.aside", un->sun_path);
    if (rename(un->sun_path, aside) == 0 && symlink(victim, un->sun_path) == 0) {
        /* Told once, so the test knows the race was run. */
        fprintf(stderr, "bind_race: swapped %s for a symlink to %s\n", un->sun_path, victim);
    }
    return rc;
}
