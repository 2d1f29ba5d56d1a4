/*
 * wait.c - reaping (wait4, so rusage comes with the status), waiting on pidfds with poll (no sleep loops), and
 * signals to a child through its pidfd (a recycled pid is never hit).  Never waitpid(-1): that steals other
 * code's children.
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

int pyproc_child_reap(struct pyproc_child *child, int pid, int pidfd, int nohang)
{
    struct rusage usage;
    int status = 0;
    child->reaped = 0;
    pid_t got = wait4(pid, &status, nohang ? WNOHANG : 0, &usage);
    if (got < 0)
        return errno;
    if (got == 0)
        return 0;
    child->reaped = 1;
    child->wait_status = status;
    child->returncode = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    copy_rusage(&child->rusage, &usage);
    /* A failed close leaves nothing to undo: the child is reaped and the fd number is released either way. */
    if (pidfd >= 0)
        close(pidfd);
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

int pyproc_send_signal(int pid, int pidfd, int sig)
{
#ifdef SYS_pidfd_send_signal
    if (pidfd >= 0) {
        if (syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) == 0)
            return 0;
        if (errno != ENOSYS)
            return errno;
    }
#else
    (void)pidfd;
#endif
    return kill(pid, sig) == 0 ? 0 : errno;
}

int pyproc_pidfd_open(int pid, int *pidfd)
{
    *pidfd = -1;
#ifdef SYS_pidfd_open
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd >= 0) {
        /* Older kernels make it without close-on-exec; no child of ours may inherit it. */
        *pidfd = fd;
        return 0;
    }
    return errno == ENOSYS ? 0 : errno;
#else
    (void)pid;
    return 0;
#endif
}
