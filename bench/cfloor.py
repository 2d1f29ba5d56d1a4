"""The C floors: small C programs the benchmark builds itself (with cc) and runs, so that every Python figure can be
set against what the same work costs in plain C on this machine.

- ``minimal``: a static executable whose ``_start`` calls exit(0) by a raw syscall (no libc, no dynamic loader):
  what is left of "spawn+wait" is the kernel's own work.
- ``spawnloop N ARGV...``: vfork+execve+waitpid of ARGV, N times; prints one line per iteration (ns).
- ``readloop N ARGV...``: runs ARGV with its stdout on a pipe and read()s it to EOF into freshly malloc'd memory
  (default pipe size, buffer doubled with realloc), N times; prints "ns bytes" per iteration.
- ``pipeloop N SIZE ARGV...``: writes SIZE bytes to ARGV's stdin and reads its stdout back to EOF (one poll loop,
  non-blocking pipes, no shell), N times; prints "ns bytes" per iteration.
- ``spawnparts ROUNDS ARGV...``: what each step of a CLONE_VM spawn costs (the pidfd, rusage, signal resets,
  closing fds), each way timed in C, interleaved (bench.spawnparts reads it).
- ``jobloop K N ARGV...``: runs ARGV N times, K children at a time, each with stdout and stderr on pipes of its
  own read to end of file (one poll over every pipe), each reaped; prints "ns bytes" for the whole batch.
- ``libfloor.so``: the spawn, read and pipe loops as functions (one iteration per call), for pytest-benchmark.

Everything is built once into a cache directory keyed by a hash of the sources and the compiler's version.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class NoCompilerError(RuntimeError):
    """No working C compiler: the C floors (and so the benchmark) cannot be built."""


_MINIMAL_C = r"""
/* The smallest program Linux can run: no libc, no loader; _start calls exit(0) by a raw syscall. */
#if defined(__x86_64__)
__asm__(".globl _start\n_start:\n\tmov $60, %eax\n\txor %edi, %edi\n\tsyscall\n");
#elif defined(__aarch64__)
__asm__(".globl _start\n_start:\n\tmov x8, #93\n\tmov x0, #0\n\tsvc #0\n");
#elif defined(__i386__)
__asm__(".globl _start\n_start:\n\tmov $1, %eax\n\txor %ebx, %ebx\n\tint $0x80\n");
#else
#error "minimal executable: unsupported architecture (x86_64, aarch64, i386)"
#endif
"""

_COMMON_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Helpers shared by the floors (spawnparts uses neither). */
#define MAYBE_UNUSED __attribute__((unused))

/* waitpid, EINTR retried; 0 if the child exited 0, else -1 (errno set) or its status. */
static MAYBE_UNUSED int reap(pid_t pid)
{
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    return (WIFEXITED(status) && WEXITSTATUS(status) == 0) ? 0 : status;
}

/* vfork + (dup2 of the given pipe ends onto 0 / 1 / 2; -1: inherited) + execve; -1 on failure. */
static MAYBE_UNUSED pid_t start(char *const argv[], int in_fd, int out_fd, int err_fd)
{
    pid_t pid = vfork();
    if (pid == 0) {
        if (in_fd >= 0 && dup2(in_fd, 0) < 0)
            _exit(126);
        if (out_fd >= 0 && dup2(out_fd, 1) < 0)
            _exit(126);
        if (err_fd >= 0 && dup2(err_fd, 2) < 0)
            _exit(126);
        execve(argv[0], argv, environ);
        _exit(127);
    }
    return pid;
}
"""

_SPAWN_C = r"""
/* The spawn floor: vfork + execve + waitpid. */
int floor_spawn_once(char *const argv[])
{
    pid_t pid = start(argv, -1, -1, -1);
    if (pid < 0)
        return -1;
    return reap(pid);
}

/* One spawn+wait timed in C (ns), or -1: the floor from whatever process calls it (the Python worker). */
long long floor_spawn_timed(char *const argv[])
{
    long long t0 = now_ns();
    if (floor_spawn_once(argv) != 0)
        return -1;
    return now_ns() - t0;
}

#ifndef FLOOR_LIB
/* Runs n iterations; prints their times (ns) on one line. */
static int batch(long n, char *const argv[])
{
    long long *t = malloc((size_t)(n > 0 ? n : 1) * sizeof *t);
    if (n <= 0 || !t) {
        fprintf(stderr, "spawnloop: bad count or out of memory\n");
        free(t);
        return 2;
    }
    for (long i = 0; i < n; i++) {
        long long t0 = now_ns();
        int rc = floor_spawn_once(argv);
        t[i] = now_ns() - t0;
        if (rc != 0) {
            fprintf(stderr, "spawnloop: %s failed (%s, status %d)\n", argv[0], strerror(errno), rc);
            free(t);
            return 1;
        }
    }
    for (long i = 0; i < n; i++)
        printf(i + 1 < n ? "%lld " : "%lld\n", t[i]);
    fflush(stdout);
    free(t);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: spawnloop N PROGRAM [ARGS...]   (N = -: read counts from stdin, one per line)\n");
        return 2;
    }
    if (strcmp(argv[1], "-") != 0)
        return batch(strtol(argv[1], NULL, 10), argv + 2);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        int rc = batch(strtol(line, NULL, 10), argv + 2);
        if (rc)
            return rc;
    }
    return 0;
}
#endif
"""

_READ_C = r"""
/* The capture floor: read a child's stdout to EOF into fresh malloc'd memory (default pipe size). */
long long floor_read_all(char *const argv[])
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
    pid_t pid = start(argv, -1, p[1], -1);
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        return -1;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    long long result = -1;
    for (;;) {
        if (!buf)
            break;
        if (len == cap) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger)
                break;
            buf = bigger;
            cap *= 2;
        }
        ssize_t got = read(p[0], buf + len, cap - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            break;
        if (got == 0) {
            result = (long long)len;
            break;
        }
        len += (size_t)got;
    }
    close(p[0]);
    free(buf);
    if (reap(pid) != 0)
        return -1;
    return result;
}

/* The medium-capture floor (bench.medium): the least a reader of a child's output pays, as far as measured (issue
   19).  Both outputs on pipes, non-blocking, polled together; stdout's pipe enlarged to 1 MiB once 64 KiB came;
   reads of up to 256 KiB into buf (cap bytes, reused by every call, so its pages are present: no result is made);
   stderr read into a small scratch buffer.  A blocking read() loop was measured slower than pyproc and subprocess
   from 2 to 16 MiB: the reader's pattern changes what the writer pays.  Bytes of stdout, or -1. */
long long floor_read_poll(char *const argv[], char *buf, size_t cap)
{
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) < 0)
        return -1;
    if (pipe2(err, O_CLOEXEC) < 0) {
        close(out[0]);
        close(out[1]);
        return -1;
    }
    pid_t pid = start(argv, -1, out[1], err[1]);
    close(out[1]);
    close(err[1]);
    if (pid < 0) {
        close(out[0]);
        close(err[0]);
        return -1;
    }
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    struct pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    size_t len = 0;
    int boosted = 0, failed = 0;
    char scratch[4096];
    while (!failed && (fds[0].fd >= 0 || fds[1].fd >= 0)) {
        if (poll(fds, 2, -1) < 0) {
            failed = errno != EINTR;
            continue;
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !fds[i].revents)
                continue;
            for (;;) {
                char *at = i ? scratch : buf + len;
                size_t room = i ? sizeof scratch : cap - len;
                if (!i && room > 262144)
                    room = 262144;
                ssize_t got = room ? read(fds[i].fd, at, room) : -1;
                if (got > 0) {
                    if (!i)
                        len += (size_t)got;
                    if (!i && !boosted && len >= 65536) {
                        boosted = 1;
                        fcntl(fds[i].fd, F_SETPIPE_SZ, 1 << 20);
                    }
                    if ((size_t)got < room)
                        break;
                    continue;
                }
                if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR) || !room) {
                    failed = got != 0;
                    close(fds[i].fd);
                    fds[i].fd = -1;
                }
                break;
            }
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0)
            close(fds[i].fd);
    if (reap(pid) != 0 || failed)
        return -1;
    return (long long)len;
}

#ifndef FLOOR_LIB
/* n iterations, one "ns bytes" line each. */
static int batch(long n, char *const argv[])
{
    for (long i = 0; i < n; i++) {
        long long t0 = now_ns();
        long long got = floor_read_all(argv);
        long long dt = now_ns() - t0;
        if (got < 0) {
            fprintf(stderr, "readloop: %s failed: %s\n", argv[0], strerror(errno));
            return 1;
        }
        printf("%lld %lld\n", dt, got);
    }
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: readloop N PROGRAM [ARGS...]   (N = -: counts from stdin; '.' ends each batch)\n");
        return 2;
    }
    if (strcmp(argv[1], "-") != 0)
        return batch(strtol(argv[1], NULL, 10), argv + 2);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        int rc = batch(strtol(line, NULL, 10), argv + 2);
        if (rc)
            return rc;
        printf(".\n");
        fflush(stdout);
    }
    return 0;
}
#endif
"""

_PIPE_C = r"""
/* The round-trip floor: SIZE bytes into a child's stdin and its stdout back, one poll loop, no shell. */
long long floor_pipe(char *const argv[], const char *in, size_t size)
{
    int pin[2], pout[2];
    if (pipe2(pin, O_CLOEXEC) < 0)
        return -1;
    if (pipe2(pout, O_CLOEXEC) < 0) {
        close(pin[0]);
        close(pin[1]);
        return -1;
    }
    pid_t pid = start(argv, pin[0], pout[1], -1);
    close(pin[0]);
    close(pout[1]);
    if (pid < 0) {
        close(pin[1]);
        close(pout[0]);
        return -1;
    }
    fcntl(pin[1], F_SETFL, O_NONBLOCK);
    fcntl(pout[0], F_SETFL, O_NONBLOCK);
    size_t cap = 1 << 16, len = 0, sent = 0;
    char *buf = malloc(cap);
    int wfd = pin[1], rfd = pout[0], failed = buf == NULL;
    if (size == 0) {
        close(wfd);
        wfd = -1;
    }
    while (!failed && rfd >= 0) {
        struct pollfd fds[2] = {{rfd, POLLIN, 0}, {wfd, POLLOUT, 0}};
        if (poll(fds, wfd >= 0 ? 2 : 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            failed = 1;
            break;
        }
        if (wfd >= 0 && fds[1].revents) {
            ssize_t put = write(wfd, in + sent, size - sent);
            if (put > 0)
                sent += (size_t)put;
            else if (put < 0 && errno != EAGAIN && errno != EINTR)
                failed = 1;
            if (sent == size || failed) {
                close(wfd);
                wfd = -1;
            }
        }
        if (fds[0].revents) {
            for (;;) {
                if (len == cap) {
                    char *bigger = realloc(buf, cap * 2);
                    if (!bigger) {
                        failed = 1;
                        break;
                    }
                    buf = bigger;
                    cap *= 2;
                }
                ssize_t got = read(rfd, buf + len, cap - len);
                if (got > 0) {
                    len += (size_t)got;
                    continue;
                }
                if (got == 0) {
                    close(rfd);
                    rfd = -1;
                } else if (errno != EAGAIN && errno != EINTR) {
                    failed = 1;
                }
                break;
            }
        }
    }
    if (wfd >= 0)
        close(wfd);
    if (rfd >= 0)
        close(rfd);
    free(buf);
    if (reap(pid) != 0 || failed)
        return -1;
    return (long long)len;
}

#ifndef FLOOR_LIB
/* n iterations, one "ns bytes" line each. */
static int batch(long n, char *const argv[], const char *in, size_t size)
{
    for (long i = 0; i < n; i++) {
        long long t0 = now_ns();
        long long got = floor_pipe(argv, in, size);
        long long dt = now_ns() - t0;
        if (got < 0) {
            fprintf(stderr, "pipeloop: %s failed: %s\n", argv[0], strerror(errno));
            return 1;
        }
        printf("%lld %lld\n", dt, got);
    }
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: pipeloop N SIZE PROGRAM [ARGS...]   (N = -: counts from stdin; '.' ends each "
                        "batch)\n");
        return 2;
    }
    size_t size = (size_t)strtoull(argv[2], NULL, 10);
    char *in = malloc(size ? size : 1);
    if (!in) {
        fprintf(stderr, "pipeloop: out of memory\n");
        return 2;
    }
    memset(in, 'x', size);
    int rc = 0;
    if (strcmp(argv[1], "-") != 0) {
        rc = batch(strtol(argv[1], NULL, 10), argv + 3, in, size);
    } else {
        char line[64];
        while (!rc && fgets(line, sizeof line, stdin)) {
            rc = batch(strtol(line, NULL, 10), argv + 3, in, size);
            printf(".\n");
            fflush(stdout);
        }
    }
    free(in);
    return rc;
}
#endif
"""

_PARTS_C = r"""
/* spawnparts ROUNDS PROGRAM: what each step of a CLONE_VM spawn costs, timed here.  Each way below is a spawn+wait
   of PROGRAM; the ways run interleaved (10 calls each per round, in bench.harness.balanced_order: each way follows
   every other one equally often); at the end one
   line per way gives the median of its 10 calls in each round: "way ns ns ...".  The capture ways also put the
   child's stdout and stderr on pipes and read both to end of file (poll), as run(capture=True) does.  The parent
   ignores SIGPIPE and SIGXFSZ, as a Python parent does, so the child's resets are real work. */
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

enum { PIDFD = 1, PIDFD_OPEN = 2, RUSAGE = 4, SIGNALS = 8, CLOSE_FDS = 16, VFORK = 32, CAPTURE = 64 };
static const struct { const char *name; int steps; } ways[] = {
    {"vfork+execve+waitpid", VFORK},
    {"clone", 0},
    {"clone+CLONE_PIDFD", PIDFD},
    {"clone+pidfd_open", PIDFD_OPEN},
    {"clone+wait4_rusage", RUSAGE},
    {"clone+reset_2_signals", SIGNALS},
    {"clone+close_range", CLOSE_FDS},
    {"clone+all_of_pyproc", PIDFD | RUSAGE | SIGNALS | CLOSE_FDS},
    {"clone+capture_2_pipes", CAPTURE},
    {"clone+all_of_pyproc+capture", PIDFD | RUSAGE | SIGNALS | CLOSE_FDS | CAPTURE},
};
#define N_WAYS ((int)(sizeof ways / sizeof *ways))
#define BATCH 10

struct child_args { char *const *argv; int steps; int out_fd, err_fd; };

static int child(void *p)
{
    const struct child_args *a = p;
    if (a->steps & SIGNALS) {
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        if (sigaction(SIGPIPE, &dfl, NULL) != 0 || sigaction(SIGXFSZ, &dfl, NULL) != 0)
            _exit(126);
    }
    if (a->steps & CAPTURE && (dup2(a->out_fd, 1) < 0 || dup2(a->err_fd, 2) < 0))
        _exit(126);
    if (a->steps & CLOSE_FDS && syscall(SYS_close_range, 3, ~0U, 0) != 0)
        _exit(126);
    execve(a->argv[0], a->argv, environ);
    _exit(127);
}

static char *stack_top;

/* Reads both pipes to end of file (what a capture does; the bytes are dropped); 0 or -1. */
static int drain(int fd0, int fd1)
{
    struct pollfd fds[2] = {{fd0, POLLIN, 0}, {fd1, POLLIN, 0}};
    char buf[65536];
    int open_fds = 2;
    while (open_fds > 0) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !fds[i].revents)
                continue;
            ssize_t got = read(fds[i].fd, buf, sizeof buf);
            if (got < 0 && errno != EINTR)
                return -1;
            if (got == 0) {
                fds[i].fd = -1;
                open_fds--;
            }
        }
    }
    return 0;
}

/* One spawn+wait by the given steps; its time in ns, or -1. */
static long long one(char *const argv[], int steps)
{
    long long t0 = now_ns();
    int out[2] = {-1, -1}, err[2] = {-1, -1};
    if (steps & CAPTURE && (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0))
        return -1;
    struct child_args a = {argv, steps, out[1], err[1]};
    int pidfd = -1;
    pid_t pid;
    if (steps & VFORK) {
        pid = vfork();
        if (pid == 0)
            child(&a);
    } else {
        int flags = CLONE_VM | CLONE_VFORK | SIGCHLD | (steps & PIDFD ? CLONE_PIDFD : 0);
        pid = clone(child, stack_top, flags, &a, &pidfd);
    }
    if (pid < 0)
        return -1;
    if (steps & PIDFD_OPEN && (pidfd = (int)syscall(SYS_pidfd_open, pid, 0)) < 0)
        return -1;
    if (steps & CAPTURE && (close(out[1]) != 0 || close(err[1]) != 0 || drain(out[0], err[0]) != 0 ||
                            close(out[0]) != 0 || close(err[0]) != 0))
        return -1;
    int status;
    struct rusage usage;
    pid_t got;
    do
        got = steps & RUSAGE ? wait4(pid, &status, 0, &usage) : waitpid(pid, &status, 0);
    while (got < 0 && errno == EINTR);
    if (pidfd >= 0 && close(pidfd) != 0)
        return -1;
    if (got < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return -1;
    return now_ns() - t0;
}

/* The k-th way of round r: row r of a Williams design (bench.harness.balanced_order, the same rows). */
static int way_at(int r, int k)
{
    int rows = N_WAYS % 2 ? 2 * N_WAYS : N_WAYS, row = r % rows;
    if (row >= N_WAYS) { /* odd N_WAYS: the second half are the first rows reversed */
        row -= N_WAYS;
        k = N_WAYS - 1 - k;
    }
    int first = k % 2 ? (k + 1) / 2 : (N_WAYS - k / 2) % N_WAYS; /* 0, 1, n-1, 2, n-2, ... */
    return (first + row) % N_WAYS;
}

static int by_value(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc < 3 || atoi(argv[1]) < 1) {
        fprintf(stderr, "usage: spawnparts ROUNDS PROGRAM [ARGS...]\n");
        return 2;
    }
    int rounds = atoi(argv[1]);
    size_t stack_size = 64 * 1024;
    char *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    long long *medians = malloc(sizeof(long long) * (size_t)rounds * N_WAYS);
    if (stack == MAP_FAILED || !medians) {
        fprintf(stderr, "spawnparts: out of memory\n");
        return 1;
    }
    stack_top = stack + stack_size;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);
    for (int r = -1; r < rounds; r++) { /* round -1 warms every way up */
        for (int k = 0; k < N_WAYS; k++) {
            int w = way_at(r < 0 ? 0 : r, k);
            long long t[BATCH];
            for (int i = 0; i < BATCH; i++) {
                if ((t[i] = one(argv + 2, ways[w].steps)) < 0) {
                    fprintf(stderr, "spawnparts: %s of %s failed (%s)\n", ways[w].name, argv[2], strerror(errno));
                    return 1;
                }
            }
            qsort(t, BATCH, sizeof *t, by_value);
            if (r >= 0)
                medians[(size_t)w * (size_t)rounds + (size_t)r] = (t[BATCH / 2 - 1] + t[BATCH / 2]) / 2;
        }
    }
    for (int w = 0; w < N_WAYS; w++) {
        printf("%s", ways[w].name);
        for (int r = 0; r < rounds; r++)
            printf(" %lld", medians[(size_t)w * (size_t)rounds + (size_t)r]);
        printf("\n");
    }
    return 0;
}
"""

_JOBS_C = r"""
/* The job-pool floor: PROGRAM run N times, K at a time.  Each child gets its stdout and stderr on pipes of its own;
   one poll over every open pipe reads them to end of file, then the child is reaped and its slot starts the next
   job.  Waiting for a child whose pipes are both at end of file blocks at most for the rest of its exit (exit closes
   its files just before it becomes a zombie), as ninja does. */
#include <signal.h>

struct job { pid_t pid; int open_pipes; };

static struct job *jobs;
static struct pollfd *fds; /* fds[2i], fds[2i + 1]: job i's stdout and stderr read ends; fd -1 once closed */
static int slots;

/* Starts PROGRAM in slot i; 0, or -1 with errno set. */
static int start_job(int i, char *const argv[])
{
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) < 0)
        return -1;
    if (pipe2(err, O_CLOEXEC) < 0) {
        int saved = errno;
        close(out[0]);
        close(out[1]);
        errno = saved;
        return -1;
    }
    pid_t pid = start(argv, -1, out[1], err[1]);
    int saved = errno;
    close(out[1]);
    close(err[1]);
    if (pid < 0) {
        close(out[0]);
        close(err[0]);
        errno = saved;
        return -1;
    }
    jobs[i].pid = pid;
    jobs[i].open_pipes = 2;
    fds[2 * i] = (struct pollfd){out[0], POLLIN, 0};
    fds[2 * i + 1] = (struct pollfd){err[0], POLLIN, 0};
    return 0;
}

/* After a failure: every running child killed and reaped, every pipe closed. */
static void abandon(void)
{
    for (int i = 0; i < slots; i++) {
        for (int j = 2 * i; j < 2 * i + 2; j++) {
            if (fds[j].fd >= 0)
                close(fds[j].fd);
            fds[j].fd = -1;
        }
        if (jobs[i].pid > 0) {
            kill(jobs[i].pid, SIGKILL);
            reap(jobs[i].pid);
        }
        jobs[i].pid = 0;
    }
}

/* Runs n jobs, `slots` at a time; the bytes read from their stdout and stderr, or -1 (said on stderr; nothing is
   left running). */
static long long run_jobs(long n, char *const argv[])
{
    static char buf[65536];
    long started = 0, finished = 0;
    long long bytes = 0;
    const char *failed = NULL;
    for (int i = 0; i < slots && started < n && !failed; i++, started++) {
        if (start_job(i, argv) < 0)
            failed = "start";
    }
    while (finished < n && !failed) {
        if (poll(fds, (nfds_t)(2 * slots), -1) < 0) {
            if (errno != EINTR)
                failed = "poll";
            continue;
        }
        for (int j = 0; j < 2 * slots && !failed; j++) {
            if (fds[j].fd < 0 || !fds[j].revents)
                continue;
            ssize_t got = read(fds[j].fd, buf, sizeof buf);
            if (got > 0) {
                bytes += got;
                continue;
            }
            if (got < 0) {
                if (errno != EINTR)
                    failed = "read";
                continue;
            }
            close(fds[j].fd);
            fds[j].fd = -1;
            int i = j / 2;
            if (--jobs[i].open_pipes > 0)
                continue;
            int rc = reap(jobs[i].pid);
            jobs[i].pid = 0;
            if (rc != 0) {
                if (rc > 0 && WIFEXITED(rc))
                    fprintf(stderr, "jobloop: %s failed: exit status %d\n", argv[0], WEXITSTATUS(rc));
                else if (rc > 0)
                    fprintf(stderr, "jobloop: %s failed: killed by signal %d\n", argv[0], WTERMSIG(rc));
                else
                    fprintf(stderr, "jobloop: waitpid failed: %s\n", strerror(errno));
                abandon();
                return -1;
            }
            finished++;
            if (started < n) {
                if (start_job(i, argv) < 0)
                    failed = "start";
                else
                    started++;
            }
        }
    }
    if (failed) {
        fprintf(stderr, "jobloop: %s of %s failed: %s\n", failed, argv[0], strerror(errno));
        abandon();
        return -1;
    }
    return bytes;
}

/* A positive count from text, or -1. */
static long count(const char *text, long most)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || (*end && *end != '\n') || v < 1 || v > most)
        return -1;
    return v;
}

/* One batch of n jobs: "ns bytes" on stdout; 0, or 1 on failure. */
static int batch(long n, char *const argv[])
{
    long long t0 = now_ns();
    long long got = run_jobs(n, argv);
    long long dt = now_ns() - t0;
    if (got < 0)
        return 1;
    printf("%lld %lld\n", dt, got);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    slots = argc >= 4 ? (int)count(argv[1], 4096) : -1;
    long n = argc >= 4 && strcmp(argv[2], "-") != 0 ? count(argv[2], 1L << 40) : 0;
    if (slots < 1 || n < 0) {
        fprintf(stderr, "usage: jobloop K N PROGRAM [ARGS...]   (K: 1-4096 children at a time; N = -: counts "
                        "from stdin, one per line, '.' ends each batch)\n");
        return 2;
    }
    jobs = calloc((size_t)slots, sizeof *jobs);
    fds = calloc((size_t)slots * 2, sizeof *fds);
    if (!jobs || !fds) {
        fprintf(stderr, "jobloop: out of memory\n");
        return 1;
    }
    for (int j = 0; j < 2 * slots; j++)
        fds[j].fd = -1;
    if (n > 0)
        return batch(n, argv + 3);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        long m = count(line, 1L << 40);
        if (m < 0) {
            fprintf(stderr, "jobloop: not a count: %s", line);
            return 2;
        }
        if (batch(m, argv + 3))
            return 1;
        printf(".\n");
        fflush(stdout);
    }
    return 0;
}
"""

_SOURCES = {"minimal": _MINIMAL_C, "spawnloop": _SPAWN_C, "readloop": _READ_C, "pipeloop": _PIPE_C,
            "spawnparts": _PARTS_C, "jobloop": _JOBS_C}

_PROGRAMS = tuple(_SOURCES)
"""The executables built ("minimal" first: it alone is built without libc)."""


@dataclass(frozen=True)
class Floors:
    """Paths of the built C floors."""

    minimal: Path
    spawnloop: Path
    readloop: Path
    pipeloop: Path
    spawnparts: Path
    jobloop: Path
    libfloor: Path
    compiler: str

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items()}


def compiler() -> tuple[str, str]:
    """The C compiler to use and its --version output: $CC, else cc, gcc or clang on PATH, the first that runs
    (`--version` exits 0); NoCompilerError (one line) when none does."""
    tried = []
    for label, name in (("$CC", os.environ.get("CC")), ("cc", "cc"), ("gcc", "gcc"), ("clang", "clang")):
        if not name:
            continue
        path = shutil.which(name.split()[0])
        if not path:
            tried.append(f"{label}: not found")
            continue
        try:
            proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{label} ({path}): {exc}")
            continue
        if proc.returncode == 0:
            return path, proc.stdout
        tried.append(f"{label} ({path}): exits {proc.returncode}")
    raise NoCompilerError(
        f"no C compiler found ({'; '.join(tried)}): the benchmark builds its C floors itself; "
        "install one (e.g. apt-get install gcc) or set CC")


def cache_dir() -> Path:
    """$PYPROC_BENCH_CACHE, else $XDG_CACHE_HOME/pyproc-bench, else ~/.cache/pyproc-bench."""
    explicit = os.environ.get("PYPROC_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyproc-bench"


def _run_cc(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NoCompilerError(f"building a C floor failed: {' '.join(cmd)}\n{proc.stderr.strip()}")


def build(directory: Path | None = None) -> Floors:
    """Builds the C floors (once: cached by a hash of the sources and the compiler) and returns their paths."""
    cc, version = compiler()
    digest = hashlib.sha256()
    for part in (version, platform.machine(), _COMMON_C, *_SOURCES.values()):
        digest.update(part.encode())
    out = (directory or cache_dir()) / digest.hexdigest()[:16]
    floors = Floors(out / "minimal", out / "spawnloop", out / "readloop", out / "pipeloop", out / "spawnparts",
                    out / "jobloop", out / "libfloor.so", version.splitlines()[0] if version else cc)
    programs = (*_PROGRAMS, "libfloor.so")
    if all((out / name).exists() for name in programs):
        return floors
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"tmp-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    try:
        (tmp / "minimal.c").write_text(_MINIMAL_C)
        _run_cc([cc, "-nostdlib", "-static", "-O2", "-o", str(tmp / "minimal"), str(tmp / "minimal.c")])
        lib_sources = []
        for name in _PROGRAMS[1:]:
            src = tmp / f"{name}.c"
            src.write_text(_COMMON_C + _SOURCES[name])
            lib_sources.append(str(src))
            _run_cc([cc, "-O2", "-Wall", "-Wextra", "-o", str(tmp / name), str(src)])
        lib_src = tmp / "libfloor.c"
        lib_src.write_text(_COMMON_C + _SPAWN_C + _READ_C + _PIPE_C)
        _run_cc([cc, "-O2", "-Wall", "-Wextra", "-shared", "-fPIC", "-DFLOOR_LIB", "-o", str(tmp / "libfloor.so"),
                 str(lib_src)])
        for name in programs:
            os.replace(tmp / name, out / name)  # atomic: a concurrent build never sees half a file
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return floors
