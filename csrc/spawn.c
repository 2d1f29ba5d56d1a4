/*
 * spawn.c - the engines (clone3/clone/vfork, posix_spawn, fork): the parent's side of starting a child.
 *
 * Everything between clone/vfork/fork and exec runs in child.c (pyproc__child_main), which keeps DESIGN.md's rules:
 * only raw syscalls and async-signal-safe calls, nothing allocated, everything prepared by the parent, and it never
 * returns (exec or _exit).  Nothing in this file runs in a child except the ways into child.c (vfork_child and
 * spawn_fork, where vfork/fork return 0; clone(2) and the clone3 stub, which start the child on its own stack).
 * With the CLONE_VM engines the child reports a failure by writing it into the parent's memory
 * (as glibc's posix_spawn does): the parent is suspended until the child has exec'd or exited (CLONE_VFORK), so the
 * record is there when clone returns, and no error pipe (three syscalls) is needed.  The fork engine and
 * pyproc_exec_child() use a CLOEXEC pipe instead, since memory is not shared.
 */
#include "child.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
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

/* The usable part of a child stack.  The child side (child.c) needs a few KiB; glibc's posix_spawn gives its child
   32 KiB plus the page size. */
#define CHILD_STACK_MIN ((size_t)64 * 1024)

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

/* One stack per thread, mapped on first use and reused: with CLONE_VFORK the thread is suspended until the child
   has exec'd, so the stack is free again whenever clone returns.  The mapping is one guard page (PROT_NONE: an
   overflow crashes instead of scribbling over other memory) below at least CHILD_STACK_MIN usable bytes, in whole
   pages of whatever size the kernel uses (4 KiB, 16 KiB, 64 KiB on some arm64 and ppc64le kernels). */
static pthread_key_t stack_key;
static pthread_once_t stack_key_once = PTHREAD_ONCE_INIT;
static __thread char *thread_stack;
static __thread size_t thread_stack_size; /* the whole mapping, guard page included */
static __thread size_t thread_stack_guard;
static __thread int thread_stack_wiped; /* MADV_WIPEONFORK is set on it (see child_stack, keep_stack_on_fork) */
static size_t forced_page_size;

void pyproc_set_forced_page_size(size_t page_size) { __atomic_store_n(&forced_page_size, page_size, __ATOMIC_RELAXED); }

static void unmap_stack(void *stack)
{
    /* (A key destructor runs in the exiting thread, whose thread-locals are still there.) */
    UNPOISON_CHILD_STACK(stack, thread_stack_size); /* memory mapped here later must not inherit the redzones */
    munmap(stack, thread_stack_size);
}
static void make_stack_key(void) { (void)pthread_key_create(&stack_key, unmap_stack); }

static int child_stack(char **bottom, size_t *size)
{
    if (!thread_stack) {
        size_t page = __atomic_load_n(&forced_page_size, __ATOMIC_RELAXED);
        if (!page) {
            long system_page = sysconf(_SC_PAGESIZE);
            page = system_page > 0 ? (size_t)system_page : 4096;
        }
        size_t usable = (CHILD_STACK_MIN + page - 1) / page * page;
        char *stack = mmap(NULL, page + usable, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
        if (stack == MAP_FAILED)
            return errno;
        if (mprotect(stack, page, PROT_NONE) != 0) {
            int err = errno;
            munmap(stack, page + usable);
            return err;
        }
#ifdef MADV_WIPEONFORK
        /* A fork() of this process (multiprocessing, os.fork) then neither copies the stack nor write-protects it:
           without this, the next child started on it took a copy-on-write fault on its top page after every fork
           (measured, issue 19).  A forked child gets zeroed pages here and can still spawn from this thread.  Best
           effort: kernels before 4.14 refuse it (EINVAL) and fork copies the stack as before. */
        thread_stack_wiped = madvise(stack + page, usable, MADV_WIPEONFORK) == 0;
#endif
        (void)pthread_once(&stack_key_once, make_stack_key);
        thread_stack_size = page + usable;
        thread_stack_guard = page;
        (void)pthread_setspecific(stack_key, stack);
        thread_stack = stack;
    }
    /* The child may use everything above the guard page; the stack grows down from bottom + size. */
    *bottom = thread_stack + thread_stack_guard;
    *size = thread_stack_size - thread_stack_guard;
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
        pyproc__child_main(c);
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
    char *stack = NULL;
    size_t stack_size = 0;
    int err = child_stack(&stack, &stack_size);
    if (err)
        return err;
    UNPOISON_CHILD_STACK(stack, stack_size);
    if ((err = pyproc__build_exec_mask(c->req, NULL, &c->exec_mask)) != 0)
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
    args.stack = (uint64_t)(uintptr_t)stack;
    args.stack_size = stack_size;
    long got = pyproc__clone3_run(&args, sizeof args, pyproc__child_main, c);
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
/* glibc's clone(2) stores the function and its argument on the child's stack, in the parent, before the call.  A
   tool that runs a CLONE_VM child as a fork of the parent (valgrind does) would hand the child a wiped copy of the
   stack, and the child would jump to NULL: this stack is copied on fork again once clone(2) uses it.  (clone3's
   child takes both from registers, pyproc__clone3_run.) */
static void keep_stack_on_fork(void)
{
#ifdef MADV_KEEPONFORK
    if (thread_stack_wiped && madvise(thread_stack + thread_stack_guard, thread_stack_size - thread_stack_guard,
                                      MADV_KEEPONFORK) == 0)
        thread_stack_wiped = 0;
#endif
}

static int spawn_clone(struct child_ctx *c, int *pidfd, pid_t *pid)
{
    int forced = pyproc_get_forced_fallbacks();
    char *stack = NULL;
    size_t stack_size = 0;
    int err = child_stack(&stack, &stack_size);
    if (err)
        return err;
    keep_stack_on_fork();
    UNPOISON_CHILD_STACK(stack, stack_size);
    char *stack_top = stack + stack_size;
    *pidfd = -1;
    c->reset_handlers = 1;
    int flags = CLONE_VM | CLONE_VFORK | SIGCHLD;
    if (!(forced & PYPROC_FORCE_NO_CLONE_PIDFD)) {
        pid_t got = clone(pyproc__child_main, stack_top, flags | CLONE_PIDFD, c, pidfd);
        if (got > 0) {
            *pid = got;
            return 0;
        }
        if (errno != EINVAL && errno != ENOSYS)
            return errno;
        *pidfd = -1;
    }
    pid_t got = clone(pyproc__child_main, stack_top, flags, c);
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
        pyproc__child_main(c);
    int err = got < 0 ? errno : 0;
    close(pipefd[1]);
    if (!err) {
        *pid = got;
        int have_record = 0;
        err = pyproc_read_child_error(pipefd[0], &have_record, c->shared);
        if (err) {
            /* The child's state is unknown: stop it (the caller reaps it) and report the parent's failure. */
            c->shared->fail_stage = PYPROC_STAGE_PARENT;
            (void)pyproc_send_signal(got, -1, SIGKILL); /* (not kill: with SIGCHLD ignored it may be gone) */
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
   Python layer raises a ValueError before getting here).  moved: scratch, one per fd action (c->moved_sources). */
static int spawn_posix(const struct pyproc_spawn_request *r, const sigset_t *exec_mask,
                       struct pyproc_spawn_result *res, pid_t *pid, int *moved)
{
    if (r->umask >= 0 || r->n_rlimits || r->pdeathsig || r->no_new_privs || r->set_gid || r->set_groups ||
        r->set_uid || r->before_exec)
        return ENOTSUP;
    /* A source that is also some step's target is copied first, here in the parent: F_DUPFD_CLOEXEC puts the copy
       on a number nothing else uses (a copy made in the child, on a number of our choosing, could land on an
       inheritable fd of the parent and take it from the child: close_fds=False), and close-on-exec keeps it from
       the program; the parent closes it after the spawn. */
    /* The copies go above every target of the plan: a copy on the lowest free number could be the target of an
       earlier step, which would replace it in the child before its own step read it. */
    int above_targets = 0;
    for (int i = 0; i < r->n_fd_actions; i++)
        if (r->fd_actions[i].target >= above_targets)
            above_targets = r->fd_actions[i].target + 1;
    int n_moved = 0, err = 0;
    for (int i = 0; i < r->n_fd_actions; i++) {
        const struct pyproc_fd_action *a = &r->fd_actions[i];
        moved[i] = -1;
        if (a->move_first && a->source != a->target) {
            if ((moved[i] = fcntl(a->source, F_DUPFD_CLOEXEC, above_targets)) < 0) {
                err = errno; /* (EMFILE: a failure of the parent's) */
                break;
            }
            n_moved++;
        }
    }
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    int have_actions = 0, have_attr = 0;
    if (!err && !(err = posix_spawn_file_actions_init(&actions)))
        have_actions = 1;
    if (!err && !(err = posix_spawnattr_init(&attr)))
        have_attr = 1;
    for (int i = 0; !err && i < r->n_fd_actions; i++) {
        const struct pyproc_fd_action *a = &r->fd_actions[i];
        int source = moved[i] >= 0 ? moved[i] : a->source;
        err = posix_spawn_file_actions_adddup2(&actions, source, a->target); /* same fd: clears CLOEXEC */
    }
    if (!err && r->close_fds) {
        int top = r->n_keep_fds ? r->keep_fds[r->n_keep_fds - 1] : 2;
        for (int fd = 3; !err && fd < top; fd++)
            if (!pyproc__child_is_kept(r->keep_fds, r->n_keep_fds, -1, fd))
                err = posix_spawn_file_actions_addclose(&actions, fd); /* EBADF in the child is ignored */
        if (!err)
            err = pyproc__spawn_addclosefrom(&actions, top + 1); /* ENOSYS: glibc < 2.34 */
    }
    if (!err && r->cwd)
        err = pyproc__spawn_addchdir(&actions, r->cwd); /* ENOSYS: glibc < 2.29 */
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
    if (have_attr)
        posix_spawnattr_destroy(&attr);
    if (have_actions)
        posix_spawn_file_actions_destroy(&actions);
    for (int i = 0; n_moved && i < r->n_fd_actions; i++)
        if (moved[i] >= 0)
            close(moved[i]);
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
        if ((err = pyproc__build_exec_mask(r, &parent_mask, &c->exec_mask)) != 0)
            return err;
        err = spawn_posix(r, &c->exec_mask, res, &pid, c->moved_sources);
        if (err)
            return err;
    } else if (engine == PYPROC_ENGINE_CLONE && (err = spawn_clone3(c, &pidfd, &pid)) != CLONE3_UNAVAILABLE) {
        if (err)
            return err;
    } else {
        if ((err = block_all_signals(&parent_mask)) != 0)
            return err;
        err = pyproc__build_exec_mask(r, &parent_mask, &c->exec_mask);
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
    /* The engines without CLONE_PIDFD open the pidfd now, after the exec.  With SIGCHLD ignored the kernel reaps a
       child as soon as it exits, and a fast one may be gone already: then it ran the program and nothing is left to
       manage (its pid may be someone else's by now: no signal, no error), and the caller gets no pidfd. */
    if (pidfd < 0 && (err = pyproc_pidfd_open(pid, &pidfd)) != 0) {
        /* EMFILE, ENOMEM...: the child runs the program, but without a pidfd the caller could not manage it safely.
           pyproc_send_signal checks that the pid is still our unreaped child before it kills. */
        (void)pyproc_send_signal(pid, -1, SIGKILL);
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
    int err = 0;
    parent_ends[0] = parent_ends[1] = parent_ends[2] = -1;
    memset(child, 0, sizeof *child); /* what a failure before pyproc_spawn_child reports through */
    child->spawn.pidfd = -1;
    if (!req || req->n_fd_actions < 0 || (pipes & PYPROC_STDERR_TO_STDOUT && pipes & PYPROC_PIPE_STDERR))
        return parent_failed(&child->spawn, EINVAL);
    /* The request's own steps first, then one per pipe (and stderr joined to stdout): a failed dup2's index says
       which. */
    int n = req->n_fd_actions, stdout_source = 1;
    struct pyproc_fd_action on_stack[16], *actions = on_stack;
    if (n + 3 > 16 && !(actions = malloc(sizeof *actions * (size_t)(n + 3))))
        return parent_failed(&child->spawn, ENOMEM);
    for (int a = 0; a < n; a++) {
        actions[a] = req->fd_actions[a];
        int target = actions[a].target;
        if ((target < 3 && pipes & (1 << target)) || (target == 2 && pipes & PYPROC_STDERR_TO_STDOUT))
            err = EINVAL; /* the request already says what this fd is */
        if (target == 1)
            stdout_source = actions[a].source;
    }
    for (int fd = 0; fd < 3 && !err; fd++) {
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
        actions[n++] = (struct pyproc_fd_action){2, child_ends[1] >= 0 ? child_ends[1] : stdout_source, 0};
    /* A source that is also a target is moved out of the way first, as the general fd plan does (with the parent's
       fd 0, 1 or 2 closed a pipe end can land there; a request's source can be a pipe's target). */
    for (int a = 0; a < n; a++) {
        actions[a].move_first = 0;
        for (int b = 0; b < n; b++)
            if (actions[a].source != actions[a].target && actions[a].source == actions[b].target)
                actions[a].move_first = 1;
    }
    if (err) {
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
    if (actions != on_stack)
        free(actions);
    return err;
}
