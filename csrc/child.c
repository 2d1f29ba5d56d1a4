/*
 * child.c - the child side: everything that runs in a new child between clone/vfork/fork and exec.
 *
 * This file is the async-signal-safety boundary (DESIGN.md, "The child side"): all of its code runs, or may run, in
 * a child that shares the parent's memory (clone with CLONE_VM, vfork) or in a copy of a possibly multithreaded
 * parent (fork, and pyproc_exec_child after a fork done by the caller, such as Python's preexec_fn path).  So every
 * function here keeps DESIGN.md's rules: only raw syscalls and async-signal-safe calls, nothing allocated, no locks,
 * no stdio, everything prepared by the parent, and pyproc__child_main never returns (exec or _exit).  Nothing here
 * calls into another file of csrc/ (the one outside call is the caller's own before_exec hook, which only
 * pyproc_exec_child accepts).  Conversely nothing of spawn.c runs in a child except its ways in here, each the
 * first thing a new child does: vfork_child and spawn_fork call pyproc__child_main where vfork/fork return 0, and
 * clone(2) and the clone3 stub (pyproc__clone3_run) start it on the child stack.  Code that need not keep the rules
 * belongs in spawn.c; code added here must keep them.
 *
 * The parent calls two helpers of this file that are safe anywhere (pyproc__child_is_kept for posix_spawn's close
 * list, pyproc__build_exec_mask), and the forced-fallback switches live here because the child reads them.
 *
 * A failure goes to the parent through child_fail(): into the parent's memory with the CLONE_VM engines (see
 * spawn.c), else as one fixed-size record on a CLOEXEC pipe; then _exit(127).
 */
#include "child.h"

#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>

extern char **environ;

/* The kernel's struct sigaction, large enough for every architecture's layout (x86_64 and arm64: 32 bytes). */
struct kernel_sigaction {
    void *handler;
    unsigned long flags;
    unsigned long rest[2];
};

static int forced_fallbacks;

void pyproc_set_forced_fallbacks(int mask) { __atomic_store_n(&forced_fallbacks, mask, __ATOMIC_RELAXED); }
int pyproc_get_forced_fallbacks(void) { return __atomic_load_n(&forced_fallbacks, __ATOMIC_RELAXED); }

/* ---- the child side ------------------------------------------------------------------------------------------ */

int pyproc__child_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void __attribute__((noreturn)) child_fail(struct child_ctx *c, int stage, int index, int err)
{
    if (c->error_fd >= 0) {
        int32_t record[2] = {(int32_t)(stage | (index << 8)), (int32_t)err};
        (void)pyproc__child_write_all(c->error_fd, record, sizeof record); /* nowhere else to report it */
    } else {
        c->shared->fail_stage = stage;
        c->shared->fail_index = index;
        c->shared->fail_errno = err;
    }
    _exit(127);
}

static int child_sigaction(int sig, const struct kernel_sigaction *new_action, struct kernel_sigaction *old_action)
{
    return (int)syscall(SYS_rt_sigaction, sig, new_action, old_action, KERNEL_SIGSET_SIZE);
}

static int child_set_default(int sig)
{
    struct kernel_sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.handler = (void *)SIG_DFL;
    return child_sigaction(sig, &dfl, NULL);
}

static void child_reset_signals(struct child_ctx *c)
{
    const struct pyproc_spawn_request *r = c->req;
    if (c->reset_handlers) {
        for (int sig = 1; sig < _NSIG; sig++) {
            struct kernel_sigaction old;
            if (sig == SIGKILL || sig == SIGSTOP)
                continue;
            if (child_sigaction(sig, NULL, &old) != 0)
                continue; /* not a signal this kernel knows */
            if (old.handler != (void *)SIG_DFL && old.handler != (void *)SIG_IGN && child_set_default(sig) != 0)
                child_fail(c, PYPROC_STAGE_SIGNALS, sig, errno);
        }
    }
    if (r->restore_signals) {
        if (child_set_default(SIGPIPE) != 0)
            child_fail(c, PYPROC_STAGE_SIGNALS, SIGPIPE, errno);
        if (child_set_default(SIGXFSZ) != 0)
            child_fail(c, PYPROC_STAGE_SIGNALS, SIGXFSZ, errno);
    }
}

static void child_apply_fd_plan(struct child_ctx *c)
{
    const struct pyproc_spawn_request *r = c->req;
    int above_targets = 0;
    for (int i = 0; i < r->n_fd_actions; i++)
        if (r->fd_actions[i].target >= above_targets)
            above_targets = r->fd_actions[i].target + 1;
    if (c->error_fd >= 0 && c->error_fd < above_targets) {
        int moved = fcntl(c->error_fd, F_DUPFD_CLOEXEC, above_targets);
        if (moved < 0)
            child_fail(c, PYPROC_STAGE_DUP2, 0, errno);
        c->error_fd = moved;
    }
    /* A source that is also some step's target is first copied above every target, so the order of the steps
       never matters (swaps and cycles come out right). */
    for (int i = 0; i < r->n_fd_actions; i++) {
        const struct pyproc_fd_action *a = &r->fd_actions[i];
        c->moved_sources[i] = a->source;
        if (a->move_first && a->source != a->target) {
            int moved = fcntl(a->source, F_DUPFD_CLOEXEC, above_targets);
            if (moved < 0)
                child_fail(c, PYPROC_STAGE_DUP2, i, errno);
            c->moved_sources[i] = moved;
        }
    }
    for (int i = 0; i < r->n_fd_actions; i++) {
        const struct pyproc_fd_action *a = &r->fd_actions[i];
        int source = c->moved_sources[i];
        if (source == a->target) {
            if (fcntl(source, F_SETFD, 0) != 0)
                child_fail(c, PYPROC_STAGE_DUP2, i, errno);
        } else {
            while (dup2(source, a->target) < 0) {
                if (errno != EINTR && errno != EBUSY)
                    child_fail(c, PYPROC_STAGE_DUP2, i, errno);
            }
        }
    }
}

static int child_close_range(unsigned int first, unsigned int last)
{
#ifdef SYS_close_range
    if (!(pyproc_get_forced_fallbacks() & PYPROC_FORCE_NO_CLOSE_RANGE))
        return (int)syscall(SYS_close_range, first, last, 0) == 0 ? 0 : errno;
#else
    (void)first;
    (void)last;
#endif
    return ENOSYS;
}

/* Is fd one the child keeps?  keep is ascending; extra is one more fd (the error pipe) or -1. */
int pyproc__child_is_kept(const int *keep, int n, int extra, int fd)
{
    if (fd == extra)
        return 1;
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (keep[mid] == fd)
            return 1;
        if (keep[mid] < fd)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return 0;
}

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Fallback without close_range: the fds listed in /proc/self/fd (raw getdents64, no opendir: it mallocs). */
static int child_close_listed_fds(const int *keep, int n, int extra)
{
    if (pyproc_get_forced_fallbacks() & PYPROC_FORCE_NO_PROC_FD)
        return ENOSYS;
    int dir = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        return errno;
    char buf[1024] __attribute__((aligned(8)));
    for (;;) {
        long got = syscall(SYS_getdents64, dir, buf, sizeof buf);
        if (got < 0) {
            int err = errno;
            close(dir);
            return err;
        }
        if (got == 0)
            break;
        for (long off = 0; off < got;) {
            struct linux_dirent64 *entry = (struct linux_dirent64 *)(buf + off);
            off += entry->d_reclen;
            int fd = 0;
            const char *s = entry->d_name;
            if (*s < '0' || *s > '9')
                continue;
            for (; *s >= '0' && *s <= '9'; s++)
                fd = fd * 10 + (*s - '0');
            if (fd != dir && !pyproc__child_is_kept(keep, n, extra, fd))
                close(fd);
        }
    }
    close(dir);
    return 0;
}

static void child_close_other_fds(struct child_ctx *c)
{
    const struct pyproc_spawn_request *r = c->req;
    const int *keep = r->keep_fds;
    int n = r->n_keep_fds, extra = c->error_fd;
    /* Walk the kept fds (and the error pipe) in ascending order, closing every gap between them. */
    unsigned int next = 0;
    int i = 0, extra_done = extra < 0;
    int err = 0;
    for (;;) {
        int kept;
        if (i < n && (extra_done || keep[i] <= extra)) {
            kept = keep[i++];
            if (!extra_done && kept == extra)
                extra_done = 1;
        } else if (!extra_done) {
            kept = extra;
            extra_done = 1;
        } else {
            break;
        }
        if ((unsigned int)kept > next)
            err = err ? err : child_close_range(next, (unsigned int)kept - 1);
        if ((unsigned int)kept + 1 > next)
            next = (unsigned int)kept + 1;
    }
    if (!err)
        err = child_close_range(next, UINT_MAX);
    if (!err)
        return;
    if (child_close_listed_fds(keep, n, extra) == 0)
        return;
    /* Last resort: every possible fd up to the limit. */
    struct rlimit lim;
    int top = 65536;
    if (syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, NULL, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY &&
        lim.rlim_cur < (rlim_t)INT_MAX)
        top = (int)lim.rlim_cur;
    for (int fd = 3; fd < top; fd++)
        if (!pyproc__child_is_kept(keep, n, extra, fd))
            close(fd);
}

static void child_set_process_state(struct child_ctx *c)
{
    const struct pyproc_spawn_request *r = c->req;
    if (r->new_session && setsid() < 0)
        child_fail(c, PYPROC_STAGE_SETSID, 0, errno);
    if (r->process_group >= 0 && setpgid(0, r->process_group) != 0)
        child_fail(c, PYPROC_STAGE_SETPGID, 0, errno);
    if (r->umask >= 0)
        umask((mode_t)r->umask);
    for (int i = 0; i < r->n_rlimits; i++) {
        struct rlimit lim = {(rlim_t)r->rlimits[i].soft, (rlim_t)r->rlimits[i].hard};
        if (syscall(SYS_prlimit64, 0, r->rlimits[i].resource, &lim, NULL) != 0)
            child_fail(c, PYPROC_STAGE_RLIMIT, i, errno);
    }
    if (r->pdeathsig > 0) {
        if (prctl(PR_SET_PDEATHSIG, r->pdeathsig, 0, 0, 0) != 0)
            child_fail(c, PYPROC_STAGE_PDEATHSIG, 0, errno);
        /* The parent may have died before the prctl took effect: then no signal will come, so act now. */
        if (getppid() != c->parent_pid)
            kill(getpid(), r->pdeathsig);
    }
    if (r->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        child_fail(c, PYPROC_STAGE_NO_NEW_PRIVS, 0, errno);
    if (r->cwd && chdir(r->cwd) != 0)
        child_fail(c, PYPROC_STAGE_CHDIR, 0, errno);
    /* Raw syscalls: glibc's set*id wrappers signal every thread of the process, unsafe after vfork. */
    if (r->set_groups && syscall(SYS_setgroups, (size_t)r->n_groups, r->groups) != 0)
        child_fail(c, PYPROC_STAGE_SETGROUPS, 0, errno);
    if (r->set_gid && syscall(SYS_setregid, r->gid, r->gid) != 0)
        child_fail(c, PYPROC_STAGE_SETGID, 0, errno);
    if (r->set_uid && syscall(SYS_setreuid, r->uid, r->uid) != 0)
        child_fail(c, PYPROC_STAGE_SETUID, 0, errno);
}

static void __attribute__((noreturn)) child_exec(struct child_ctx *c)
{
    const struct pyproc_spawn_request *r = c->req;
    char *const *envp = r->envp ? r->envp : environ;
    int saved_errno = 0, saved_index = 0;
    /* As execvp: go on past candidates that do not exist, and report the first meaningful error. */
    for (int i = 0; i < r->n_exec_paths; i++) {
        execve(r->exec_paths[i], r->argv, envp);
        if (errno != ENOENT && errno != ENOTDIR && saved_errno == 0) {
            saved_errno = errno;
            saved_index = i;
        }
    }
    if (saved_errno == 0) {
        saved_errno = errno;
        saved_index = r->n_exec_paths - 1;
    }
    child_fail(c, PYPROC_STAGE_EXEC, saved_index, saved_errno);
}

/* The whole child side, in DESIGN.md's order.  noinline: it runs on its own stack frame below clone/vfork. */
int __attribute__((noinline)) pyproc__child_main(void *arg)
{
    struct child_ctx *c = arg;
    const struct pyproc_spawn_request *r = c->req;
    child_reset_signals(c);
    child_apply_fd_plan(c);
    child_set_process_state(c);
    if (r->before_exec) {
        int err = r->before_exec(r->before_exec_arg);
        if (err)
            child_fail(c, PYPROC_STAGE_BEFORE_EXEC, 0, err);
    }
    /* After before_exec (Python's preexec_fn), so that fds it opened do not reach the new program. */
    if (r->close_fds)
        child_close_other_fds(c);
    if (!c->keep_mask && syscall(SYS_rt_sigprocmask, SIG_SETMASK, &c->exec_mask, NULL, KERNEL_SIGSET_SIZE) != 0)
        child_fail(c, PYPROC_STAGE_SIGMASK, 0, errno);
    child_exec(c);
}

/* parent_mask may be NULL when the child keeps the parent's mask (exec_mask is then left unused). */
int pyproc__build_exec_mask(const struct pyproc_spawn_request *r, const sigset_t *parent_mask, sigset_t *out)
{
    if (!r->set_sigmask) {
        if (parent_mask)
            *out = *parent_mask;
        return 0;
    }
    sigemptyset(out);
    for (int i = 0; i < r->n_sigmask_signals; i++)
        if (sigaddset(out, r->sigmask_signals[i]) != 0)
            return EINVAL;
    return 0;
}

/* ---- the child side of a fork done by the caller -------------------------------------------------------------- */

void pyproc_exec_child(const struct pyproc_spawn_request *req, int error_fd, int parent_pid)
{
    struct child_ctx c;
    struct pyproc_spawn_result unused;
    sigset_t current;
    int n = req->n_fd_actions > 0 ? req->n_fd_actions : 1;
    int scratch[n];
    memset(&c, 0, sizeof c);
    c.req = req;
    c.error_fd = error_fd;
    c.reset_handlers = 1;
    c.parent_pid = parent_pid; /* (getppid() here would already be the reaper's pid if the parent died) */
    c.moved_sources = scratch;
    c.shared = &unused;
    if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, NULL, &current, KERNEL_SIGSET_SIZE) != 0 ||
        pyproc__build_exec_mask(req, &current, &c.exec_mask) != 0)
        child_fail(&c, PYPROC_STAGE_SIGMASK, 0, EINVAL);
    pyproc__child_main(&c);
    _exit(127);
}
