/*
 * spawn.c - the engines (clone3/clone/vfork, posix_spawn, fork) and the child side.
 *
 * Everything between clone/vfork/fork and exec runs in child_main(), which keeps DESIGN.md's rules: only raw
 * syscalls and async-signal-safe calls, nothing allocated, everything prepared by the parent, and it never returns
 * (exec or _exit).  With the CLONE_VM engines the child reports a failure by writing it into the parent's memory
 * (as glibc's posix_spawn does): the parent is suspended until the child has exec'd or exited (CLONE_VFORK), so the
 * record is there when clone returns, and no error pipe (three syscalls) is needed.  The fork engine and
 * pyproc_exec_child() use a CLOEXEC pipe instead, since memory is not shared.
 */
#include "pyproc.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#if defined(__SANITIZE_ADDRESS__)
/* PYPROC_SANITIZE=1 builds.  A child on the clone stack leaves by exec or _exit, so the redzones ASan put around
   its frames stay in the (shared) shadow memory; the next child on the same stack, or whatever is mapped at that
   address once the stack is unmapped, would meet them as false "stack-buffer-underflow" reports.  The parent
   clears them before every clone and before unmapping the stack. */
#include <sanitizer/asan_interface.h>
#define UNPOISON_CHILD_STACK(start, size) __asan_unpoison_memory_region((start), (size))
#else
#define UNPOISON_CHILD_STACK(start, size) ((void)0)
#endif

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLONE_CLEAR_SIGHAND
#define CLONE_CLEAR_SIGHAND 0x100000000ULL
#endif

extern char **environ;

/* The kernel's struct clone_args, first version (CLONE_ARGS_SIZE_VER0 = 64 bytes). */
struct clone3_args {
    uint64_t flags;
    uint64_t pidfd;
    uint64_t child_tid;
    uint64_t parent_tid;
    uint64_t exit_signal;
    uint64_t stack;
    uint64_t stack_size;
    uint64_t tls;
};

/* The kernel's struct sigaction, large enough for every architecture's layout (x86_64 and arm64: 32 bytes). */
struct kernel_sigaction {
    void *handler;
    unsigned long flags;
    unsigned long rest[2];
};

#define KERNEL_SIGSET_SIZE (_NSIG / 8)
#define CHILD_STACK_SIZE (64 * 1024)

static int forced_fallbacks;

void pyproc_set_forced_fallbacks(int mask) { __atomic_store_n(&forced_fallbacks, mask, __ATOMIC_RELAXED); }
int pyproc_get_forced_fallbacks(void) { return __atomic_load_n(&forced_fallbacks, __ATOMIC_RELAXED); }

/* ---- the child side ------------------------------------------------------------------------------------------ */

struct child_ctx {
    const struct pyproc_spawn_request *req;
    sigset_t exec_mask;                /* the mask the new program starts with */
    int keep_mask;                     /* the child already has exec_mask (it inherited it): no sigprocmask */
    int reset_handlers;                /* caught signals -> SIG_DFL (the kernel did it with CLONE_CLEAR_SIGHAND) */
    int error_fd;                      /* >= 0: report failures to this pipe; < 0: into *shared */
    int parent_pid;
    int *moved_sources;                /* scratch, one per fd action, allocated by the parent */
    struct pyproc_spawn_result *shared;
};

static void child_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += n;
        len -= (size_t)n;
    }
}

static void __attribute__((noreturn)) child_fail(struct child_ctx *c, int stage, int index, int err)
{
    if (c->error_fd >= 0) {
        int32_t record[2] = {(int32_t)(stage | (index << 8)), (int32_t)err};
        child_write_all(c->error_fd, record, sizeof record);
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
static int child_is_kept(const int *keep, int n, int extra, int fd)
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
            if (fd != dir && !child_is_kept(keep, n, extra, fd))
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
        if (!child_is_kept(keep, n, extra, fd))
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
static int __attribute__((noinline)) child_main(void *arg)
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

/* ---- the parent side --------------------------------------------------------------------------------------- */

static int block_all_signals(sigset_t *old)
{
    sigset_t all;
    memset(&all, 0xff, sizeof all); /* glibc's internal signals too: no handler may run in a child sharing memory */
    return syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, old, KERNEL_SIGSET_SIZE) == 0 ? 0 : errno;
}

static void restore_signals(const sigset_t *old)
{
    /* Cannot fail with a valid mask; nothing sensible to do if it did. */
    (void)syscall(SYS_rt_sigprocmask, SIG_SETMASK, old, NULL, KERNEL_SIGSET_SIZE);
}

/* parent_mask may be NULL when the child keeps the parent's mask (exec_mask is then left unused). */
static int build_exec_mask(const struct pyproc_spawn_request *r, const sigset_t *parent_mask, sigset_t *out)
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

/* One stack per thread, mapped on first use and reused: with CLONE_VFORK the thread is suspended until the child
   has exec'd, so the stack is free again whenever clone returns. */
static pthread_key_t stack_key;
static pthread_once_t stack_key_once = PTHREAD_ONCE_INIT;
static __thread char *thread_stack;

static void unmap_stack(void *stack)
{
    UNPOISON_CHILD_STACK(stack, CHILD_STACK_SIZE); /* memory mapped here later must not inherit the redzones */
    munmap(stack, CHILD_STACK_SIZE);
}
static void make_stack_key(void) { (void)pthread_key_create(&stack_key, unmap_stack); }

static int child_stack(char **top)
{
    if (!thread_stack) {
        char *stack = mmap(NULL, CHILD_STACK_SIZE, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
        if (stack == MAP_FAILED)
            return errno;
        /* A guard page below the stack turns an overflow into a crash, not a scribble over other memory. */
        if (mprotect(stack, (size_t)sysconf(_SC_PAGESIZE), PROT_NONE) != 0) {
            int err = errno;
            munmap(stack, CHILD_STACK_SIZE);
            return err;
        }
        (void)pthread_once(&stack_key_once, make_stack_key);
        (void)pthread_setspecific(stack_key, stack);
        thread_stack = stack;
    }
    *top = thread_stack + CHILD_STACK_SIZE;
    return 0;
}

#define STRINGIFY_VALUE(x) #x
#define STRINGIFY(x) STRINGIFY_VALUE(x)

#if defined(__x86_64__) && defined(__NR_clone3)
/* clone3 with a function to run on the new stack: glibc has no public wrapper.  Returns the pid or -errno.
   The child starts on args->stack with every register as the parent had it, so fn and arg ride in r8/r9
   (preserved across syscall), and it never returns: fn ends in exec or _exit, and exit(fn()) is the backstop. */
long pyproc__clone3_run(struct clone3_args *args, size_t size, int (*fn)(void *), void *arg);
__asm__(".text\n"
        ".globl pyproc__clone3_run\n"
        ".hidden pyproc__clone3_run\n"
        ".type pyproc__clone3_run,@function\n"
        "pyproc__clone3_run:\n"
        "    mov %rdx, %r8\n"
        "    mov %rcx, %r9\n"
        "    mov $" STRINGIFY(__NR_clone3) ", %eax\n"
        "    syscall\n"
        "    test %rax, %rax\n"
        "    jnz 1f\n"
        "    xor %ebp, %ebp\n"
        "    mov %r9, %rdi\n"
        "    call *%r8\n"
        "    mov %eax, %edi\n"
        "    mov $" STRINGIFY(__NR_exit) ", %eax\n"
        "    syscall\n"
        "    hlt\n"
        "1:  ret\n"
        ".size pyproc__clone3_run, .-pyproc__clone3_run\n");
#define HAVE_CLONE3_RUN 1
#endif

static pid_t vfork_child(struct child_ctx *c)
{
    pid_t pid = vfork();
    if (pid == 0)
        child_main(c);
    return pid;
}

#define CLONE3_UNAVAILABLE (-1) /* spawn_clone3: this kernel (or a seccomp filter) refuses it; try the others */

/* clone3 with CLONE_CLEAR_SIGHAND.  The kernel resets the child's handlers as it creates it, so no handler can run
   in a child sharing our memory and signals need not be blocked around it: the child keeps this thread's mask
   (unless the request sets one), three rt_sigprocmask calls fewer than the other engines. */
static int spawn_clone3(struct child_ctx *c, int *pidfd, pid_t *pid)
{
#ifdef HAVE_CLONE3_RUN
    int forced = pyproc_get_forced_fallbacks();
    if (forced & PYPROC_FORCE_NO_CLONE3)
        return CLONE3_UNAVAILABLE;
    char *stack_top = NULL;
    int err = child_stack(&stack_top);
    if (err)
        return err;
    UNPOISON_CHILD_STACK(stack_top - CHILD_STACK_SIZE, CHILD_STACK_SIZE);
    if ((err = build_exec_mask(c->req, NULL, &c->exec_mask)) != 0)
        return err;
    c->keep_mask = !c->req->set_sigmask;
    c->reset_handlers = 0;
    *pidfd = -1;
    struct clone3_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_VM | CLONE_VFORK | CLONE_CLEAR_SIGHAND;
    if (!(forced & PYPROC_FORCE_NO_CLONE_PIDFD)) {
        args.flags |= CLONE_PIDFD;
        args.pidfd = (uint64_t)(uintptr_t)pidfd;
    }
    args.exit_signal = SIGCHLD;
    args.stack = (uint64_t)(uintptr_t)(stack_top - CHILD_STACK_SIZE);
    args.stack_size = CHILD_STACK_SIZE;
    long got = pyproc__clone3_run(&args, sizeof args, child_main, c);
    c->keep_mask = 0;
    if (got > 0) {
        *pid = (pid_t)got;
        return 0;
    }
    *pidfd = -1;
    /* ENOSYS: no clone3; EINVAL: no CLONE_CLEAR_SIGHAND (5.3, 5.4); EPERM: a seccomp filter refusing it. */
    return got == -ENOSYS || got == -EINVAL || got == -EPERM ? CLONE3_UNAVAILABLE : (int)-got;
#else
    (void)c;
    (void)pidfd;
    (void)pid;
    return CLONE3_UNAVAILABLE;
#endif
}

/* clone(2) -> vfork(2), with signals blocked by the caller; *pidfd = -1 when the kernel gave none. */
static int spawn_clone(struct child_ctx *c, int *pidfd, pid_t *pid)
{
    int forced = pyproc_get_forced_fallbacks();
    char *stack_top = NULL;
    int err = child_stack(&stack_top);
    if (err)
        return err;
    UNPOISON_CHILD_STACK(stack_top - CHILD_STACK_SIZE, CHILD_STACK_SIZE);
    *pidfd = -1;
    c->reset_handlers = 1;
    int flags = CLONE_VM | CLONE_VFORK | SIGCHLD;
    if (!(forced & PYPROC_FORCE_NO_CLONE_PIDFD)) {
        pid_t got = clone(child_main, stack_top, flags | CLONE_PIDFD, c, pidfd);
        if (got > 0) {
            *pid = got;
            return 0;
        }
        if (errno != EINVAL && errno != ENOSYS)
            return errno;
        *pidfd = -1;
    }
    pid_t got = clone(child_main, stack_top, flags, c);
    if (got > 0) {
        *pid = got;
        return 0;
    }
    if (errno != ENOSYS)
        return errno;
    got = vfork_child(c);
    if (got < 0)
        return errno;
    *pid = got;
    return 0;
}

static int spawn_fork(struct child_ctx *c, pid_t *pid)
{
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0)
        return errno;
    c->error_fd = pipefd[1];
    c->reset_handlers = 1;
    pid_t got = fork();
    if (got == 0)
        child_main(c);
    int err = got < 0 ? errno : 0;
    close(pipefd[1]);
    if (!err) {
        *pid = got;
        int have_record = 0;
        err = pyproc_read_child_error(pipefd[0], &have_record, c->shared);
        if (err) {
            /* The child's state is unknown: stop it (the caller reaps it) and report the parent's failure. */
            c->shared->fail_stage = PYPROC_STAGE_PARENT;
            kill(got, SIGKILL);
        }
    }
    close(pipefd[0]);
    return err;
}

int pyproc_read_child_error(int error_fd, int *got, struct pyproc_spawn_result *res)
{
    int32_t record[2];
    size_t have = 0;
    *got = 0;
    while (have < sizeof record) {
        ssize_t n = read(error_fd, (char *)record + have, sizeof record - have);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (n == 0)
            break;
        have += (size_t)n;
    }
    if (have == 0)
        return 0;
    if (have != sizeof record)
        return EBADMSG; /* a torn record: the child died while writing it */
    *got = 1;
    res->fail_stage = record[0] & 0xff;
    res->fail_index = record[0] >> 8;
    res->fail_errno = record[1];
    return 0;
}

/* posix_spawn expresses the fd plan, cwd, session, group, signal defaults and mask; the rest is refused (the
   Python layer raises a ValueError before getting here). */
static int spawn_posix(const struct pyproc_spawn_request *r, const sigset_t *exec_mask,
                       struct pyproc_spawn_result *res, pid_t *pid)
{
    if (r->umask >= 0 || r->n_rlimits || r->pdeathsig || r->no_new_privs || r->set_gid || r->set_groups ||
        r->set_uid || r->before_exec)
        return ENOTSUP;
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    int err = posix_spawn_file_actions_init(&actions);
    if (err)
        return err;
    err = posix_spawnattr_init(&attr);
    if (err) {
        posix_spawn_file_actions_destroy(&actions);
        return err;
    }
    int high = 3;
    for (int i = 0; i < r->n_fd_actions; i++) {
        if (r->fd_actions[i].target >= high)
            high = r->fd_actions[i].target + 1;
        if (r->fd_actions[i].source >= high)
            high = r->fd_actions[i].source + 1;
    }
    /* Moved sources go to fds above everything named in the plan, one each, closed after the plan. */
    int moved = 0;
    for (int i = 0; !err && i < r->n_fd_actions; i++)
        if (r->fd_actions[i].move_first && r->fd_actions[i].source != r->fd_actions[i].target)
            err = posix_spawn_file_actions_adddup2(&actions, r->fd_actions[i].source, high + moved++);
    moved = 0;
    for (int i = 0; !err && i < r->n_fd_actions; i++) {
        const struct pyproc_fd_action *a = &r->fd_actions[i];
        int source = a->source;
        if (a->move_first && a->source != a->target)
            source = high + moved++;
        err = posix_spawn_file_actions_adddup2(&actions, source, a->target); /* same fd: clears CLOEXEC */
    }
    for (int i = 0; !err && i < moved; i++)
        err = posix_spawn_file_actions_addclose(&actions, high + i);
    if (!err && r->close_fds) {
        int top = r->n_keep_fds ? r->keep_fds[r->n_keep_fds - 1] : 2;
        for (int fd = 3; !err && fd < top; fd++)
            if (!child_is_kept(r->keep_fds, r->n_keep_fds, -1, fd))
                err = posix_spawn_file_actions_addclose(&actions, fd); /* EBADF in the child is ignored */
        if (!err)
            err = posix_spawn_file_actions_addclosefrom_np(&actions, top + 1);
    }
    if (!err && r->cwd)
        err = posix_spawn_file_actions_addchdir_np(&actions, r->cwd);
    short flags = 0;
    if (!err && r->set_sigmask) {
        flags |= POSIX_SPAWN_SETSIGMASK;
        err = posix_spawnattr_setsigmask(&attr, exec_mask);
    }
    if (!err && r->restore_signals) {
        sigset_t defaults;
        sigemptyset(&defaults);
        sigaddset(&defaults, SIGPIPE);
        sigaddset(&defaults, SIGXFSZ);
        flags |= POSIX_SPAWN_SETSIGDEF;
        err = posix_spawnattr_setsigdefault(&attr, &defaults);
    }
    if (r->new_session)
        flags |= POSIX_SPAWN_SETSID;
    if (!err && r->process_group >= 0) {
        flags |= POSIX_SPAWN_SETPGROUP;
        err = posix_spawnattr_setpgroup(&attr, r->process_group);
    }
    if (!err)
        err = posix_spawnattr_setflags(&attr, flags);
    if (!err) {
        char *const *envp = r->envp ? r->envp : environ;
        int saved_errno = 0, saved_index = 0;
        for (int i = 0; i < r->n_exec_paths; i++) {
            err = posix_spawn(pid, r->exec_paths[i], &actions, &attr, r->argv, envp);
            if (!err)
                break;
            if (err != ENOENT && err != ENOTDIR && saved_errno == 0) {
                saved_errno = err;
                saved_index = i;
            }
        }
        if (err) {
            /* glibc reaped the child and does not say which step failed. */
            res->fail_stage = PYPROC_STAGE_POSIX_SPAWN;
            res->fail_index = saved_errno ? saved_index : r->n_exec_paths - 1;
            err = saved_errno ? saved_errno : err;
            res->fail_errno = err;
        }
    }
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&actions);
    return err;
}

static void reap(pid_t pid)
{
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
}

static int spawn_with_engine(struct child_ctx *c, int engine, struct pyproc_spawn_result *res)
{
    const struct pyproc_spawn_request *r = c->req;
    pid_t pid = 0;
    int pidfd = -1, err;
    sigset_t parent_mask;
    if (engine == PYPROC_ENGINE_POSIX_SPAWN) {
        if (pthread_sigmask(SIG_SETMASK, NULL, &parent_mask) != 0)
            return EINVAL;
        if ((err = build_exec_mask(r, &parent_mask, &c->exec_mask)) != 0)
            return err;
        err = spawn_posix(r, &c->exec_mask, res, &pid);
        if (err)
            return err;
    } else if (engine == PYPROC_ENGINE_CLONE && (err = spawn_clone3(c, &pidfd, &pid)) != CLONE3_UNAVAILABLE) {
        if (err)
            return err;
    } else {
        if ((err = block_all_signals(&parent_mask)) != 0)
            return err;
        err = build_exec_mask(r, &parent_mask, &c->exec_mask);
        if (!err) {
            switch (engine) {
            case PYPROC_ENGINE_CLONE:
                err = spawn_clone(c, &pidfd, &pid);
                break;
            case PYPROC_ENGINE_VFORK:
                c->reset_handlers = 1;
                pid = vfork_child(c);
                err = pid < 0 ? errno : 0;
                break;
            case PYPROC_ENGINE_FORK:
                err = spawn_fork(c, &pid);
                break;
            default:
                err = EINVAL;
            }
        }
        restore_signals(&parent_mask);
        if (err && pid > 0) /* the fork engine could not read the child's report */
            reap(pid);
        if (err)
            return err;
    }
    res->pid = pid;
    if (res->fail_errno) {
        if (pidfd >= 0)
            close(pidfd);
        if (res->fail_stage != PYPROC_STAGE_POSIX_SPAWN) /* glibc reaped its own */
            reap(pid);
        return res->fail_errno;
    }
    if (pidfd < 0 && (err = pyproc_pidfd_open(pid, &pidfd)) != 0) {
        /* The child runs the program, but without a pidfd the caller could not manage it safely. */
        kill(pid, SIGKILL);
        reap(pid);
        res->fail_stage = PYPROC_STAGE_PARENT;
        return err;
    }
    res->pidfd = pidfd;
    return 0;
}

/* Marks a failure the parent itself met (unless a step of the child was already named) and returns it. */
static int parent_failed(struct pyproc_spawn_result *res, int err)
{
    if (res->fail_stage == PYPROC_STAGE_NONE)
        res->fail_stage = PYPROC_STAGE_PARENT;
    if (!res->fail_errno)
        res->fail_errno = err;
    return err;
}

int pyproc_spawn(const struct pyproc_spawn_request *req, int engine, struct pyproc_spawn_result *res)
{
    memset(res, 0, sizeof *res);
    res->pidfd = -1;
    if (!req || !req->argv || req->n_exec_paths < 1 || req->n_fd_actions < 0 || req->n_keep_fds < 0 ||
        req->n_rlimits < 0 || req->n_sigmask_signals < 0 || req->n_groups < 0)
        return parent_failed(res, EINVAL);
    if (req->before_exec) /* Python code cannot run in a child that shares the parent's memory */
        return parent_failed(res, EINVAL);
    struct child_ctx c;
    memset(&c, 0, sizeof c);
    c.req = req;
    c.error_fd = -1;
    c.parent_pid = req->pdeathsig > 0 ? getpid() : 0; /* only the pdeathsig check reads it */
    c.shared = res;
    int scratch_on_stack[16];
    c.moved_sources = scratch_on_stack;
    if (req->n_fd_actions > 16 && !(c.moved_sources = malloc(sizeof(int) * (size_t)req->n_fd_actions)))
        return parent_failed(res, ENOMEM);
    int err = spawn_with_engine(&c, engine, res);
    if (c.moved_sources != scratch_on_stack)
        free(c.moved_sources);
    return err ? parent_failed(res, err) : 0;
}

int pyproc_spawn_child(const struct pyproc_spawn_request *req, const char *args, size_t args_len, int argc,
                       int engine, struct pyproc_child *child)
{
    memset(child, 0, sizeof *child);
    if (!args)
        return pyproc_spawn(req, engine, &child->spawn);
    child->spawn.pidfd = -1;
    if (!req || argc < 1)
        return parent_failed(&child->spawn, EINVAL);
    /* Split the packed strings here, in the parent: the array lives on this frame until the child has exec'd
       (CLONE_VM engines share it; fork copies it). */
    char *on_stack[32];
    char **argv = on_stack;
    if ((size_t)argc >= sizeof on_stack / sizeof *on_stack &&
        !(argv = malloc(sizeof(char *) * ((size_t)argc + 1))))
        return parent_failed(&child->spawn, ENOMEM);
    const char *at = args, *end = args + args_len;
    for (int i = 0; i < argc; i++) {
        if (at > end) { /* fewer strings than argc: the caller's packing is wrong */
            if (argv != on_stack)
                free(argv);
            return parent_failed(&child->spawn, EINVAL);
        }
        argv[i] = (char *)at;
        at += strlen(at) + 1;
    }
    argv[argc] = NULL;
    struct pyproc_spawn_request local = *req;
    local.argv = argv;
    if (!local.exec_paths) {
        local.exec_paths = (const char *const *)argv;
        local.n_exec_paths = 1;
    }
    int err = at == end + 1 ? pyproc_spawn(&local, engine, &child->spawn) : parent_failed(&child->spawn, EINVAL);
    if (argv != on_stack)
        free(argv);
    return err;
}

int pyproc_spawn_piped(const struct pyproc_spawn_request *req, const char *args, size_t args_len, int argc,
                       int engine, int pipes, struct pyproc_child *child, int parent_ends[3])
{
    int child_ends[3] = {-1, -1, -1};
    struct pyproc_fd_action actions[3];
    int n = 0, err = 0;
    parent_ends[0] = parent_ends[1] = parent_ends[2] = -1;
    if (!req || req->n_fd_actions != 0 || (pipes & PYPROC_STDERR_TO_STDOUT && pipes & PYPROC_PIPE_STDERR)) {
        memset(child, 0, sizeof *child);
        child->spawn.pidfd = -1;
        return parent_failed(&child->spawn, EINVAL);
    }
    for (int fd = 0; fd < 3; fd++) {
        int ends[2];
        if (!(pipes & (1 << fd)))
            continue;
        if (pipe2(ends, O_CLOEXEC) != 0) {
            err = errno;
            break;
        }
        child_ends[fd] = fd == 0 ? ends[0] : ends[1];
        parent_ends[fd] = fd == 0 ? ends[1] : ends[0];
        actions[n++] = (struct pyproc_fd_action){fd, child_ends[fd], 0};
    }
    if (!err && pipes & PYPROC_STDERR_TO_STDOUT)
        actions[n++] = (struct pyproc_fd_action){2, child_ends[1] >= 0 ? child_ends[1] : 1, 0};
    /* With the parent's fd 0, 1 or 2 closed a pipe end can land there: move such a source out of the way first,
       as the general fd plan does. */
    for (int a = 0; a < n; a++)
        for (int b = 0; b < n; b++)
            if (actions[a].source != actions[a].target && actions[a].source == actions[b].target)
                actions[a].move_first = 1;
    if (err) {
        memset(child, 0, sizeof *child);
        child->spawn.pidfd = -1;
        parent_failed(&child->spawn, err);
    } else {
        struct pyproc_spawn_request local = *req;
        local.fd_actions = actions;
        local.n_fd_actions = n;
        err = pyproc_spawn_child(&local, args, args_len, argc, engine, child);
    }
    for (int fd = 0; fd < 3; fd++) {
        if (child_ends[fd] >= 0)
            close(child_ends[fd]);
        if (err && parent_ends[fd] >= 0) {
            close(parent_ends[fd]);
            parent_ends[fd] = -1;
        }
    }
    return err;
}

void pyproc_exec_child(const struct pyproc_spawn_request *req, int error_fd)
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
    c.parent_pid = getppid();
    c.moved_sources = scratch;
    c.shared = &unused;
    if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, NULL, &current, KERNEL_SIGSET_SIZE) != 0 ||
        build_exec_mask(req, &current, &c.exec_mask) != 0)
        child_fail(&c, PYPROC_STAGE_SIGMASK, 0, EINVAL);
    child_main(&c);
    _exit(127);
}
