/*
 * cow.c - copy-on-write and fork-cost measurement.
 *
 * Every figure is taken here, in C, with CLOCK_MONOTONIC around the work itself (DESIGN.md, "Measurement"):
 *  - pyproc_cow_region_create makes the parent's memory in a known state (4 KiB / THP / hugetlb pages; clean,
 *    dirty or fragmented) and times its first touch;
 *  - pyproc_cow_fork_sample times fork+_exit+wait, fork+exec+wait or pyproc_spawn+wait from the process as it is;
 *  - pyproc_cow_touch_sample forks a child that runs only C: it times read-touch, write-touch (the copies) and
 *    rewrite of every 4 KiB page, counts its minor faults with getrusage, and sends one fixed-size record back
 *    through a pipe before _exit.
 * The children here only touch memory and make raw syscalls (clock_gettime, getrusage, write, execve, _exit):
 * nothing that is unsafe after fork in a multithreaded process.
 */
#include "pyproc.h"
#include "child.h"

#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/resource.h>

/* The unit of every per-page figure (the "per 4 KiB page touched"), not a kernel constant: the system's
   page size comes from sysconf, the THP size from the caller (sysfs). */
#define SMALL_PAGE 4096ULL

extern char **environ;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* cannot fail with this clock and a valid pointer */
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t minor_faults(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0; /* cannot fail with RUSAGE_SELF */
    return (int64_t)ru.ru_minflt;
}

/* The touch loops: one byte in every 4 KiB page.  Never instrumented by a sanitizer build: ASan's shadow-memory
   checks would add their own page faults to the ones measured. */
#if defined(__GNUC__) && (__GNUC__ >= 8 || defined(__clang__))
#define NO_SANITIZE __attribute__((noinline, no_sanitize("address", "undefined")))
#else
#define NO_SANITIZE __attribute__((noinline))
#endif

static NO_SANITIZE uint64_t read_pages(volatile const char *p, uint64_t n)
{
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; i++)
        sum += (unsigned char)p[i * SMALL_PAGE];
    return sum;
}

static NO_SANITIZE void write_pages(volatile char *p, uint64_t n, uint64_t salt)
{
    for (uint64_t i = 0; i < n; i++)
        p[i * SMALL_PAGE] = (char)(i + salt);
}

static int64_t major_faults(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (int64_t)ru.ru_majflt;
}

/* ---- the parent's region ------------------------------------------------------------------------------------- */

int pyproc_cow_region_create(uint64_t size, int pages, int state, uint64_t thp_size, struct pyproc_cow_region *out)
{
    memset(out, 0, sizeof *out);
    long sys_page = sysconf(_SC_PAGESIZE);
    if (sys_page <= 0)
        return EINVAL;
    uint64_t page = (uint64_t)sys_page;
    if (size == 0 || size % SMALL_PAGE != 0 || size % page != 0 || size > (uint64_t)SIZE_MAX / 2)
        return EINVAL;
    if (state != PYPROC_COW_CLEAN && state != PYPROC_COW_DIRTY && state != PYPROC_COW_FRAGMENTED)
        return EINVAL;
    size_t map_size = (size_t)size;
    int flags = MAP_PRIVATE | MAP_ANONYMOUS;
    switch (pages) {
    case PYPROC_COW_PAGES_4K:
        break;
    case PYPROC_COW_PAGES_THP:
        if (thp_size < page || thp_size > (1ULL << 40) || (thp_size & (thp_size - 1)) != 0)
            return EINVAL;
        map_size += (size_t)thp_size; /* slack to start the region on a huge page boundary */
        break;
    case PYPROC_COW_PAGES_HUGETLB:
        if (state == PYPROC_COW_FRAGMENTED)
            return EINVAL; /* mprotect works on whole huge pages there */
        flags |= MAP_HUGETLB;
        break;
    default:
        return EINVAL;
    }
    char *map = mmap(NULL, map_size, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (map == MAP_FAILED)
        return errno;
    char *addr = map;
    if (pages == PYPROC_COW_PAGES_THP) {
        addr = (char *)(((uintptr_t)map + (uintptr_t)thp_size - 1) & ~(uintptr_t)(thp_size - 1));
        if (madvise(addr, (size_t)size, MADV_HUGEPAGE) != 0) {
            int err = errno;
            munmap(map, map_size);
            return err;
        }
    } else if (pages == PYPROC_COW_PAGES_4K) {
        /* A 4 KiB region stays 4 KiB even where THP is "always". */
        (void)madvise(addr, (size_t)size, MADV_NOHUGEPAGE); /* EINVAL without THP support: nothing to undo */
    }
    out->addr = addr;
    out->size = size;
    out->map_addr = map;
    out->map_size = map_size;
    out->pages = pages;
    out->state = state;
    if (state == PYPROC_COW_CLEAN)
        return 0;

    volatile char *p = addr;
    uint64_t n = size / SMALL_PAGE;
    int64_t f0 = minor_faults();
    int64_t t0 = now_ns();
    write_pages(p, n, 1);
    int64_t t1 = now_ns();
    out->touch_minflt = minor_faults() - f0;
    out->touch_ns = t1 - t0;

    if (state == PYPROC_COW_FRAGMENTED) {
        t0 = now_ns();
        for (uint64_t i = 1; i < size / page; i += 2) {
            if (mprotect(addr + i * page, (size_t)page, PROT_READ) != 0) {
                int err = errno; /* ENOMEM: vm.max_map_count reached */
                munmap(map, map_size);
                memset(out, 0, sizeof *out);
                return err;
            }
            out->n_protected++;
        }
        out->protect_ns = now_ns() - t0;
    }
    return 0;
}

int pyproc_cow_region_destroy(struct pyproc_cow_region *region)
{
    if (!region->map_addr)
        return 0;
    if (munmap(region->map_addr, (size_t)region->map_size) != 0)
        return errno;
    memset(region, 0, sizeof *region);
    return 0;
}

/* ---- fork / spawn cost ---------------------------------------------------------------------------------------- */

static int reap(pid_t pid, int *wait_status)
{
    for (;;) {
        pid_t got = waitpid(pid, wait_status, 0);
        if (got == pid)
            return 0;
        if (got < 0 && errno != EINTR)
            return errno;
    }
}

int pyproc_cow_fork_sample(int method, const struct pyproc_spawn_request *req, int engine, int64_t *ns,
                           int *wait_status, struct pyproc_spawn_result *res)
{
    memset(res, 0, sizeof *res);
    res->pidfd = -1;
    *ns = 0;
    *wait_status = 0;
    if (method != PYPROC_COW_FORK_EXIT && (!req || !req->argv || req->n_exec_paths < 1))
        return EINVAL;
    char *const *envp = NULL;
    if (method == PYPROC_COW_FORK_EXEC)
        envp = req->envp ? req->envp : environ; /* looked up before the clock starts */
    pid_t pid;
    int err;
    int64_t t0 = now_ns();
    switch (method) {
    case PYPROC_COW_FORK_EXIT:
        pid = fork();
        if (pid == 0)
            _exit(0);
        if (pid < 0)
            return errno;
        break;
    case PYPROC_COW_FORK_EXEC:
        pid = fork();
        if (pid == 0) {
            execve(req->exec_paths[0], req->argv, envp);
            _exit(127);
        }
        if (pid < 0)
            return errno;
        break;
    case PYPROC_COW_SPAWN:
        err = pyproc_spawn(req, engine, res);
        if (err) {
            res->pid = 0; /* pyproc_spawn reaped a child that failed */
            return err;
        }
        pid = res->pid;
        break;
    default:
        return EINVAL;
    }
    err = reap(pid, wait_status);
    int64_t t1 = now_ns();
    if (res->pidfd >= 0) {
        close(res->pidfd);
        res->pidfd = -1;
    }
    if (err)
        return err;
    *ns = t1 - t0;
    return 0;
}

/* ---- copy-on-write, measured in a child ----------------------------------------------------------------------- */

/* The child: only memory touches and raw syscalls; never returns. */
static void __attribute__((noreturn, noinline)) touch_child(const struct pyproc_cow_region *r, int fd)
{
    struct pyproc_cow_child_record rec;
    memset(&rec, 0, sizeof rec);
    volatile char *p = r->addr;
    uint64_t n = r->size / SMALL_PAGE;
    int64_t maj0 = major_faults();

    int64_t f0 = minor_faults();
    int64_t t0 = now_ns();
    uint64_t sum = read_pages(p, n);
    int64_t t1 = now_ns();
    rec.read_minflt = minor_faults() - f0;
    rec.read_ns = t1 - t0;

    f0 = minor_faults();
    t0 = now_ns();
    write_pages(p, n, 2);
    t1 = now_ns();
    rec.write_minflt = minor_faults() - f0;
    rec.write_ns = t1 - t0;

    f0 = minor_faults();
    t0 = now_ns();
    write_pages(p, n, 3);
    t1 = now_ns();
    rec.rewrite_minflt = minor_faults() - f0;
    rec.rewrite_ns = t1 - t0;

    rec.majflt = major_faults() - maj0;
    rec.pages = (int64_t)n;
    rec.checksum = sum;
    _exit(pyproc__child_write_all(fd, &rec, sizeof rec) == 0 ? 0 : 126);
}

int pyproc_cow_touch_sample(const struct pyproc_cow_region *region, struct pyproc_cow_child_record *out,
                            int *wait_status)
{
    memset(out, 0, sizeof *out);
    *wait_status = 0;
    if (!region->addr || region->size == 0 || region->state != PYPROC_COW_DIRTY)
        return EINVAL; /* COW needs pages present in the parent, all of them writable */
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0)
        return errno;
    pid_t pid = fork();
    if (pid == 0) {
        close(pipefd[0]);
        touch_child(region, pipefd[1]);
    }
    int err = pid < 0 ? errno : 0;
    close(pipefd[1]);
    size_t have = 0;
    while (!err && have < sizeof *out) {
        ssize_t n = read(pipefd[0], (char *)out + have, sizeof *out - have);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            err = errno;
            kill(pid, SIGKILL);
            break;
        }
        if (n == 0)
            break;
        have += (size_t)n;
    }
    close(pipefd[0]);
    if (pid > 0) {
        int reap_err = reap(pid, wait_status);
        if (!err)
            err = reap_err;
    }
    if (!err && have != sizeof *out)
        err = EBADMSG;
    return err;
}
