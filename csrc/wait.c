/*
 * wait.c - reaping (wait4, so rusage comes with the status), waiting on pidfds with poll (no sleep loops), and
 * signals to a child through its pidfd (a recycled pid is never hit).  Never waitpid(-1): that steals other
 * code's children.
 *
 * A child's pidfd may be in use on several threads at once (one waits with a timeout, another signals, a third
 * reaps), and the reap closes it: once closed, its number is the next fd anyone opens, maybe the next child's
 * pidfd.  So a thread that passes the pidfd to a call holds it first (pyproc_child_hold_pidfd), and the reap only
 * retires it: the fd is closed by whichever comes last, the reap or the last holder.  The count lives in the
 * child's struct, next to what the reap fills in: the reap itself pays one atomic operation, no system call.
 */
#include "pyproc.h"

#include <poll.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static int64_t timeval_ns(struct timeval tv) { return (int64_t)tv.tv_sec * 1000000000 + (int64_t)tv.tv_usec * 1000; }

static void copy_rusage(struct pyproc_rusage *ru, const struct rusage *usage)
{
    ru->utime_ns = timeval_ns(usage->ru_utime);
    ru->stime_ns = timeval_ns(usage->ru_stime);
    ru->maxrss_kib = usage->ru_maxrss;
    ru->minflt = usage->ru_minflt;
    ru->majflt = usage->ru_majflt;
    ru->inblock = usage->ru_inblock;
    ru->oublock = usage->ru_oublock;
    ru->nvcsw = usage->ru_nvcsw;
    ru->nivcsw = usage->ru_nivcsw;
}

/* ---- a child's pidfd shared between threads ------------------------------------------------------------------ */

#define PIDFD_RETIRED 1 /* pidfd_uses: the child was reaped; no new holder */
#define PIDFD_HOLDER 2  /* pidfd_uses: one per thread holding the pidfd */

int pyproc_child_hold_pidfd(struct pyproc_child *child)
{
    int uses = __atomic_load_n(&child->pidfd_uses, __ATOMIC_ACQUIRE);
    do {
        if (uses & PIDFD_RETIRED)
            return ESRCH;
    } while (!__atomic_compare_exchange_n(&child->pidfd_uses, &uses, uses + PIDFD_HOLDER, 1, __ATOMIC_ACQ_REL,
                                          __ATOMIC_ACQUIRE));
    return 0;
}

void pyproc_child_release_pidfd(struct pyproc_child *child, int pidfd)
{
    /* The last holder of a retired pidfd closes it (a failed close leaves nothing to undo: the number is free). */
    if (__atomic_sub_fetch(&child->pidfd_uses, PIDFD_HOLDER, __ATOMIC_ACQ_REL) == PIDFD_RETIRED && pidfd >= 0)
        close(pidfd);
}

/* The child is reaped: no thread may take the pidfd any more; it is closed now if nobody holds it, else by the last
   holder.  Retiring twice closes nothing twice. */
static void retire_pidfd(struct pyproc_child *child, int pidfd)
{
    if (__atomic_fetch_or(&child->pidfd_uses, PIDFD_RETIRED, __ATOMIC_ACQ_REL) == 0 && pidfd >= 0)
        close(pidfd);
}

int pyproc_child_reap(struct pyproc_child *child, int pid, int pidfd, int nohang)
{
    struct rusage usage;
    int status = 0;
    child->reaped = 0;
    pid_t got = wait4(pid, &status, nohang ? WNOHANG : 0, &usage);
    if (got < 0) {
        int err = errno;
        if (err == ECHILD) /* reaped by someone else (SIGCHLD ignored, a waitpid(-1)): gone for good */
            retire_pidfd(child, pidfd);
        return err;
    }
    if (got == 0)
        return 0;
    child->reaped = 1;
    child->wait_status = status;
    child->returncode = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    copy_rusage(&child->rusage, &usage);
    retire_pidfd(child, pidfd);
    return 0;
}

static int64_t monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* poll with a nanosecond timeout (< 0: none); EINTR comes back with the time that was left. */
static int poll_for(struct pollfd *fds, nfds_t n, int64_t timeout_ns, int *ready, int64_t *remaining_ns)
{
    int64_t deadline = timeout_ns >= 0 ? monotonic_ns() + timeout_ns : 0;
    struct timespec limit = {timeout_ns / 1000000000, timeout_ns % 1000000000};
    int got = ppoll(fds, n, timeout_ns >= 0 ? &limit : NULL, NULL);
    if (got < 0) {
        int err = errno;
        if (remaining_ns) {
            int64_t left = timeout_ns >= 0 ? deadline - monotonic_ns() : -1;
            *remaining_ns = timeout_ns >= 0 && left < 0 ? 0 : left;
        }
        return err;
    }
    *ready = got;
    if (remaining_ns)
        *remaining_ns = 0;
    return 0;
}

int pyproc_wait_pidfd(int pidfd, int64_t timeout_ns, int *exited, int64_t *remaining_ns)
{
    struct pollfd fd = {pidfd, POLLIN, 0};
    int ready = 0;
    *exited = 0;
    int err = poll_for(&fd, 1, timeout_ns, &ready, remaining_ns);
    if (err)
        return err;
    if (ready && (fd.revents & POLLNVAL))
        return EBADF;
    *exited = ready > 0;
    return 0;
}

int pyproc_wait_any(const int *pidfds, int n, int64_t timeout_ns, int *index, int64_t *remaining_ns)
{
    *index = -1;
    if (n <= 0)
        return EINVAL;
    struct pollfd *fds = calloc((size_t)n, sizeof *fds);
    if (!fds)
        return ENOMEM;
    for (int i = 0; i < n; i++) {
        fds[i].fd = pidfds[i];
        fds[i].events = POLLIN;
    }
    int ready = 0;
    int err = poll_for(fds, (nfds_t)n, timeout_ns, &ready, remaining_ns);
    for (int i = 0; !err && ready > 0 && i < n; i++) {
        if (fds[i].revents & POLLNVAL) {
            err = EBADF;
        } else if (fds[i].revents) {
            *index = i;
            break;
        }
    }
    free(fds);
    return err;
}

int pyproc_child_wait_pidfd(struct pyproc_child *child, int pidfd, int64_t timeout_ns, int *exited,
                            int64_t *remaining_ns)
{
    if (pyproc_child_hold_pidfd(child) != 0) {
        *exited = 1; /* reaped by another thread: it has exited */
        if (remaining_ns)
            *remaining_ns = 0;
        return 0;
    }
    int err = pyproc_wait_pidfd(pidfd, timeout_ns, exited, remaining_ns);
    pyproc_child_release_pidfd(child, pidfd);
    return err;
}

int pyproc_child_send_signal(struct pyproc_child *child, int pid, int pidfd, int sig)
{
    if (pyproc_child_hold_pidfd(child) != 0)
        return ESRCH; /* reaped: its pid may be another process's by now, and its pidfd closed */
    int err = pyproc_send_signal(pid, pidfd, sig);
    pyproc_child_release_pidfd(child, pidfd);
    return err;
}

/* 0 while pid is a child of this process that nobody has reaped (running, stopped or a zombie); ECHILD once it was
   reaped (by us, by the kernel when SIGCHLD is ignored, or by someone's waitpid(-1)): its pid is free for reuse. */
static int unreaped_child(int pid)
{
    siginfo_t info;
    while (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0)
        if (errno != EINTR)
            return errno;
    return 0;
}

/* pidfd_open for an unreaped child: 0 with *pidfd, ESRCH when it is gone, ENOSYS without pidfds, or the errno. */
static int open_child_pidfd(int pid, int *pidfd)
{
    *pidfd = -1;
#ifdef SYS_pidfd_open
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd < 0)
        return errno;
    /* The kernel makes a pidfd close-on-exec (O_CLOEXEC is implied), so no child of ours inherits it.
       pid was ours when the caller decided to open it; if it was reaped since (SIGCHLD ignored), the pid may have
       gone to another process before the open.  Still an unreaped child now = the pidfd is our child's. */
    int err = unreaped_child(pid);
    if (err) {
        close(fd);
        return err == ECHILD ? ESRCH : err;
    }
    *pidfd = fd;
    return 0;
#else
    (void)pid;
    return ENOSYS;
#endif
}

static int pidfd_send_signal(int pidfd, int sig)
{
#ifdef SYS_pidfd_send_signal
    return syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) == 0 ? 0 : errno;
#else
    (void)pidfd;
    (void)sig;
    return ENOSYS;
#endif
}

int pyproc_send_signal(int pid, int pidfd, int sig)
{
    int err;
    if (pidfd >= 0) {
        err = pidfd_send_signal(pidfd, sig);
        if (err != ENOSYS) /* (ENOSYS: a seccomp filter that allows pidfds but not this call) */
            return err;
    } else {
        /* No pidfd (a kernel without them, a child that was gone when it was spawned, a Process made by hand): one
           for this call, so that a pid the kernel recycled after an unseen reap is never hit. */
        int own = -1;
        err = open_child_pidfd(pid, &own);
        if (!err) {
            err = pidfd_send_signal(own, sig);
            close(own);
            if (err != ENOSYS)
                return err;
        } else if (err == ESRCH) {
            return ESRCH;
        }
    }
    /* No pidfd to be had (ENOSYS before Linux 5.3, EMFILE...): kill(pid), if pid is still an unreaped child.  Only
       a reap between the check and the kill (in another thread, or by the kernel with SIGCHLD ignored) followed by
       the pid's reuse could make it hit another process: there is nothing better without pidfds. */
    if ((err = unreaped_child(pid)) != 0)
        return err == ECHILD ? ESRCH : err;
    return kill(pid, sig) == 0 ? 0 : errno;
}

int pyproc_pidfd_open(int pid, int *pidfd)
{
    int err = open_child_pidfd(pid, pidfd);
    return err == ENOSYS || err == ESRCH ? 0 : err;
}
