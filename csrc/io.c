/*
 * io.c - loops that finish a whole buffer, and the poll pump behind run() / communicate().
 *
 * Every function returns 0 or a positive errno (DESIGN.md).  None of them retries EINTR by itself: an
 * interrupted call returns EINTR with its progress kept (in *done, or in the pump's state), the Python side runs
 * its signal handlers (which may raise) and calls again.  So a signal never surfaces to the user as EINTR and a
 * Ctrl-C is never stuck behind a blocked read.
 *
 * The pump (pyproc_pump_run) sets the parent's pipe ends non-blocking (the child's ends are other open file
 * descriptions, unaffected), then loops: write what the stdin pipe accepts, read what the output pipes hold, and
 * only when no fd can make progress, poll them all together until the deadline.  A short read or write means the
 * pipe is empty or full, so that fd waits for poll; nothing is retried just to see EAGAIN.  The parent's ends may
 * be shared with the caller's file objects (communicate(), then proc.stdout.read() after a timeout), so their flags
 * are put back whenever the pump returns; run()'s pipes (own_outputs: nobody else sees them) skip that.
 *
 * The output buffers the pump reads into (the chunk pool, map mode, the helper thread that faults pages in, the
 * handover to Python by pyproc_pump_take / pyproc_pump_copy) are in outbuf.c.  The job pool (pool.c) drives many
 * pumps from one epoll set through the single steps that pump.h exports (one write, one read).
 * Pipes that carry a lot are enlarged with F_SETPIPE_SZ (fewer wake-ups, bigger reads).  The pump waits in poll
 * only, never in a timed sleep: a 60 us nap while a stream flowed (issue 3) made run() slower than subprocess from
 * 2 to 16 MiB on an idle machine (bench.medium, 0.75-0.94x; issue 19): a timed sleep lasted 160-190 us whatever
 * was asked, and meanwhile the writer spent up to 1.6x the CPU time per byte on the pages the pipe held.
 */
#include "outbuf.h"
#include "pump.h"

#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MIN_FREE ((size_t)64 << 10)          /* room for at least this much per read once output is flowing */
#define BOOST_AFTER ((size_t)64 << 10)       /* enlarge a pipe once this much went through it */
#define PIPE_BIG (1 << 20)                   /* the size asked for (the unprivileged maximum by default) */
#define WRITE_CHUNK ((size_t)1 << 20)
#define DRAIN_ROUNDS 64
#define HELPER_AFTER ((size_t)4 << 20)       /* output this large gets a helper thread that faults pages in */
#define HELPER_READ ((size_t)1 << 20)        /* most bytes a read asks for when the helper runs */

int64_t pyproc_monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* ---- SIGPIPE: a write to a pipe whose reader is gone must give EPIPE, not kill the process ------------------- */

int pyproc__sigpipe_is_default(void)
{
    struct sigaction old;
    if (sigaction(SIGPIPE, NULL, &old) != 0)
        return 1;
    return old.sa_handler != SIG_IGN;
}

/* write(2), with SIGPIPE blocked in this thread when it is not ignored, and a SIGPIPE this write raised
   consumed before the old mask comes back (a SIGPIPE that was already pending is left alone). */
static ssize_t write_nosigpipe(int fd, const void *buf, size_t n, int guard)
{
    if (!guard)
        return write(fd, buf, n);
    sigset_t pipe_set, old_mask, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigemptyset(&pending);
    sigpending(&pending);
    int was_pending = sigismember(&pending, SIGPIPE) == 1;
    if (pthread_sigmask(SIG_BLOCK, &pipe_set, &old_mask) != 0)
        return write(fd, buf, n);
    ssize_t got = write(fd, buf, n);
    int saved = errno;
    if (got < 0 && saved == EPIPE && !was_pending) {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    errno = saved;
    return got;
}

/* ---- full-buffer loops ------------------------------------------------------------------------------------- */

static int wait_fd(int fd, short events)
{
    struct pollfd one = {fd, events, 0};
    if (poll(&one, 1, -1) < 0)
        return errno;
    if (one.revents & POLLNVAL)
        return EBADF;
    return 0;  /* ready, or POLLERR/POLLHUP: the next read/write reports it */
}

int pyproc_read_full(int fd, char *buf, size_t n, size_t *done)
{
    while (*done < n) {
        ssize_t got = read(fd, buf + *done, n - *done);
        if (got > 0) {
            *done += (size_t)got;
        } else if (got == 0) {
            return 0;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int err = wait_fd(fd, POLLIN);
            if (err)
                return err;
        } else {
            return errno;
        }
    }
    return 0;
}

int pyproc_write_full(int fd, const char *buf, size_t n, size_t *done)
{
    int guard = pyproc__sigpipe_is_default();
    while (*done < n) {
        ssize_t got = write_nosigpipe(fd, buf + *done, n - *done, guard);
        if (got >= 0) {
            *done += (size_t)got;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int err = wait_fd(fd, POLLOUT);
            if (err)
                return err;
        } else {
            return errno;
        }
    }
    return 0;
}

/* ---- the pump ---------------------------------------------------------------------------------------------- */

void pyproc_pump_setup(struct pyproc_pump *p, int in_fd, const char *in_data, size_t in_len, int out_fd0,
                       int out_fd1, uint64_t max_output, size_t lead, size_t chunk_max, int own_outputs)
{
    memset(p, 0, sizeof *p);
    p->in_fd = in_fd;
    p->in_data = in_data;
    p->in_len = in_data ? in_len : 0;
    p->out_fd[0] = out_fd0;
    p->out_fd[1] = out_fd1;
    p->max_output = max_output;
    p->deadline_ns = -1;
    p->lead = lead;
    p->chunk_max = chunk_max;
    p->own_outputs = own_outputs;
    p->saved_flags[0] = p->saved_flags[1] = p->saved_flags[2] = -1;
}

/* run()'s pipes (own_outputs): pyproc made them with no other flag to keep and nobody else sees them, so one
   F_SETFL does it, once. */
static int set_nonblocking(int fd)
{
    return fcntl(fd, F_SETFL, O_NONBLOCK) < 0 ? errno : 0;
}

static int *pump_fd(struct pyproc_pump *p, int slot)
{
    return slot == 0 ? &p->in_fd : &p->out_fd[slot - 1];
}

/* Without own_outputs: O_NONBLOCK added to each live fd's flags for this call, the flags saved to be put back. */
static int pump_enter(struct pyproc_pump *p)
{
    for (int slot = 0; slot < 3; slot++) {
        int fd = *pump_fd(p, slot);
        p->saved_flags[slot] = -1;
        if (fd < 0 || (slot > 0 && p->out_eof[slot - 1]))
            continue;
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0)
            return errno;
        if (flags & O_NONBLOCK)
            continue;  /* the caller's own choice: left as it is */
        if (fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
            return errno;
        p->saved_flags[slot] = flags;
    }
    return 0;
}

/* Puts back the flags pump_enter changed; 0 or the first errno (which only a closed fd could give). */
static int pump_leave(struct pyproc_pump *p)
{
    int err = 0;
    for (int slot = 0; slot < 3; slot++) {
        int fd = *pump_fd(p, slot);
        if (p->saved_flags[slot] >= 0 && fd >= 0 && fcntl(fd, F_SETFL, p->saved_flags[slot]) < 0 && !err)
            err = errno;
        p->saved_flags[slot] = -1;
    }
    return err;
}

void pyproc__pump_close_input(struct pyproc_pump *p)
{
    if (p->in_fd >= 0) {
        /* The pump's own fd, but a dup of the caller's may share its open file description: flags back first (a
           failure changes nothing for the pump, which is done with the fd). */
        if (p->saved_flags[0] >= 0)
            (void)fcntl(p->in_fd, F_SETFL, p->saved_flags[0]);
        p->saved_flags[0] = -1;
        close(p->in_fd);  /* a pipe's close cannot fail in a way that leaves it open */
        p->in_fd = -1;
    }
}

static int pump_start(struct pyproc_pump *p)
{
    p->started = 1;
    if (p->in_fd >= 0) {
        if (p->in_pos >= p->in_len) {
            pyproc__pump_close_input(p);
        } else {
            p->sigpipe_default = pyproc__sigpipe_is_default();
            if (p->own_outputs) {
                int err = set_nonblocking(p->in_fd);
                if (err)
                    return err;
            }
            if (p->in_len - p->in_pos > (size_t)(64 << 10))
                (void)fcntl(p->in_fd, F_SETPIPE_SZ, PIPE_BIG);  /* best effort: EPERM past the user's quota */
        }
    }
    for (int i = 0; i < 2; i++) {
        if (p->out_fd[i] < 0) {
            p->out_eof[i] = 1;
            continue;
        }
        if (p->own_outputs) {
            int err = set_nonblocking(p->out_fd[i]);
            if (err)
                return err;
        }
    }
    return 0;
}

int pyproc__pump_write(struct pyproc_pump *p, int *ready, int *finished)
{
    size_t left = p->in_len - p->in_pos;
    size_t chunk = left < WRITE_CHUNK ? left : WRITE_CHUNK;
    *finished = 0;
    ssize_t got = write_nosigpipe(p->in_fd, p->in_data + p->in_pos, chunk, p->sigpipe_default);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            *ready = 0;
            return 0;
        }
        if (errno == EINTR)
            return EINTR;
        if (errno == EPIPE) {  /* the child closed its stdin: drop the rest */
            p->in_broken = 1;
            *finished = 1;
            return 0;
        }
        return errno;
    }
    p->in_pos += (size_t)got;
    if (p->in_pos >= p->in_len)
        *finished = 1;
    else if ((size_t)got < chunk)
        *ready = 0;
    return 0;
}

/* pyproc__pump_write, closing the input once it is finished. */
static int pump_write(struct pyproc_pump *p, int *ready)
{
    int finished = 0;
    int err = pyproc__pump_write(p, ready, &finished);
    if (finished)
        pyproc__pump_close_input(p);
    return err;
}

int pyproc__pump_read(struct pyproc_pump *p, int i, int *ready)
{
    struct pyproc_outbuf *b = &p->out[i];
    uint64_t allowed = p->max_output == UINT64_MAX ? UINT64_MAX : p->max_output + 1;  /* one more: to see it */
    if (allowed != UINT64_MAX && b->len >= allowed) {  /* at the limit (only while draining): nothing more */
        *ready = 0;
        return 0;
    }
    char *at;
    size_t room;
    if (!b->map_size && b->len <= p->chunk_max) {  /* at chunk_max: one more chunk, for the end of file */
        size_t k = b->len / CHUNK, off = b->len % CHUNK;
        if (k == b->nchunks) {
            int err = pyproc__chunks_add(b);
            if (err)
                return err;
        }
        at = b->chunks[k] + off;
        room = CHUNK - off;
    } else {
        if (!b->map_size || b->cap - b->len < MIN_FREE) {  /* !map_size: leaving chunk mode */
            size_t need = b->len + MIN_FREE;
            if (allowed != UINT64_MAX && need > allowed)
                need = (size_t)allowed;
            int err = pyproc__outbuf_reserve(b, need, p->lead);
            if (err)
                return err;
        }
        at = b->data + b->len;
        room = b->cap - b->len;
        if (!b->helper && b->len >= HELPER_AFTER)
            pyproc__helper_start(b);
        if (b->helper) {
            if (room > HELPER_READ)
                room = HELPER_READ;
            pyproc__helper_poke(b->helper, b->len + HELPER_AHEAD);
        } else {
            /* A big buffer is faulted in a whole stretch at a time, by one call instead of a fault per page, once
               less than MIN_FREE of it is left ahead of the reads: writers often send 4 KiB at a time, and one
               madvise per small read cost more than the faults it saved.  Reads stay inside the populated part,
               so the pages were just zeroed (still in the cache) when the pipe's data is copied in. */
            if (b->populated < b->len + MIN_FREE)
                pyproc__populate(b, b->len + POPULATE_STEP);
            if (b->populated > b->len && room > b->populated - b->len)
                room = b->populated - b->len;
        }
    }
    if (allowed != UINT64_MAX && allowed - b->len < room)
        room = (size_t)(allowed - b->len);
    ssize_t got = read(p->out_fd[i], at, room);
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            *ready = 0;
            return 0;
        }
        return errno;
    }
    if (got == 0) {
        p->out_eof[i] = 1;
        return 0;
    }
    b->len += (size_t)got;
    if ((size_t)got < room)
        *ready = 0;
    if (!b->boosted && b->len >= BOOST_AFTER) {
        b->boosted = 1;
        /* best effort: EPERM past the user's quota (the pipe keeps its size) */
        (void)fcntl(p->out_fd[i], F_SETPIPE_SZ, PIPE_BIG);
    }
    if (p->max_output != UINT64_MAX && b->len > p->max_output) {
        p->outcome = PYPROC_PUMP_LIMIT;
        p->limit_stream = i;
    }
    return 0;
}

static int pump_run(struct pyproc_pump *p, int drain)
{
    if (p->outcome != PYPROC_PUMP_RUNNING && !drain)
        return 0;
    int in_ready = 1, out_ready[2] = {0, 0};  /* outputs: poll first (a child rarely has written yet) */
    int rounds = 0;
    for (;;) {
        if (drain && rounds++ >= DRAIN_ROUNDS)
            return 0;
        if (!drain && p->deadline_ns >= 0 && pyproc_monotonic_ns() >= p->deadline_ns) {
            p->outcome = PYPROC_PUMP_TIMEOUT;
            return 0;
        }
        int active = 0, progressed = 0;
        if (!drain && p->in_fd >= 0) {
            active = 1;
            if (in_ready) {
                int err = pump_write(p, &in_ready);
                if (err)
                    return err;
                progressed = 1;
            }
        }
        for (int i = 0; i < 2; i++) {
            if (p->out_eof[i])
                continue;
            active = 1;
            if (out_ready[i]) {
                int err = pyproc__pump_read(p, i, &out_ready[i]);
                if (err)
                    return err;
                progressed = 1;
                if (p->outcome == PYPROC_PUMP_LIMIT && !drain)
                    return 0;
            }
        }
        if (!active) {
            if (!drain)
                p->outcome = PYPROC_PUMP_DONE;
            return 0;
        }
        if (progressed && (in_ready || out_ready[0] || out_ready[1]))
            continue;
        /* Nothing can move without waiting: poll every live fd together. */
        struct pollfd fds[3];
        int which[3];
        nfds_t n = 0;
        if (!drain && p->in_fd >= 0) {
            fds[n] = (struct pollfd){p->in_fd, POLLOUT, 0};
            which[n++] = -1;
        }
        for (int i = 0; i < 2; i++) {
            if (!p->out_eof[i] && p->out[i].len <= p->max_output) {
                fds[n] = (struct pollfd){p->out_fd[i], POLLIN, 0};
                which[n++] = i;
            }
        }
        struct timespec limit, *limit_p = NULL;
        if (drain) {
            limit = (struct timespec){0, 0};
            limit_p = &limit;
        } else if (p->deadline_ns >= 0) {
            int64_t left = p->deadline_ns - pyproc_monotonic_ns();
            if (left <= 0) {
                p->outcome = PYPROC_PUMP_TIMEOUT;
                return 0;
            }
            limit = (struct timespec){left / 1000000000, left % 1000000000};
            limit_p = &limit;
        }
        int got = ppoll(fds, n, limit_p, NULL);
        if (got < 0)
            return errno;  /* EINTR included: the caller runs its handlers and calls again */
        if (got == 0) {
            if (drain)
                return 0;
            continue;  /* the deadline check above decides */
        }
        for (nfds_t k = 0; k < n; k++) {
            if (fds[k].revents & POLLNVAL)
                return EBADF;
            if (!fds[k].revents)
                continue;
            /* POLLHUP / POLLERR too: the read sees EOF, the write EPIPE. */
            if (which[k] < 0)
                in_ready = 1;
            else
                out_ready[which[k]] = 1;
        }
    }
}

int pyproc_pump_run(struct pyproc_pump *p, int drain)
{
    int err = 0;
    if (!p->started)
        err = pump_start(p);
    if (!err && !p->own_outputs)
        err = pump_enter(p);
    if (!err)
        err = pump_run(p, drain);
    pyproc__helper_stop(&p->out[0]);
    pyproc__helper_stop(&p->out[1]);
    if (!p->own_outputs) {  /* every way out, EINTR and errors included */
        int restored = pump_leave(p);
        if (!err)
            err = restored;
    }
    return err;
}

void pyproc_pump_release(struct pyproc_pump *p)
{
    pyproc__pump_close_input(p);
    for (int i = 0; i < 2; i++) {
        pyproc__outbuf_free(&p->out[i]);
        if (p->own_outputs && p->out_fd[i] >= 0) {
            close(p->out_fd[i]);  /* a pipe's close cannot fail in a way that leaves it open */
            p->out_fd[i] = -1;
        }
    }
}

int pyproc_pump_finish(struct pyproc_pump *p, struct pyproc_child *child, int pid, int pidfd)
{
    pyproc_pump_release(p);
    return pyproc_child_reap(child, pid, pidfd, 0);
}
