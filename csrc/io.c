/*
 * io.c - loops that finish a whole buffer, and the poll pump behind run() / communicate().
 *
 * Every function returns 0 or a positive errno (DESIGN.md).  None of them retries EINTR by itself: an
 * interrupted call returns EINTR with its progress kept (in *done, or in the pump's state), the Python side runs
 * its signal handlers (which may raise) and calls again.  So a signal never surfaces to the user as EINTR and a
 * Ctrl-C is never stuck behind a blocked read.
 *
 * The pump (pyproc_pump_run) sets the parent's pipe ends non-blocking (they are the parent's own open file
 * descriptions: the child's ends are unaffected), then loops: write what the stdin pipe accepts, read what the
 * output pipes hold, and only when no fd can make progress, poll them all together until the deadline.  A short
 * read or write means the pipe is empty or full, so that fd waits for poll; nothing is retried just to see EAGAIN.
 *
 * The output buffers the pump reads into (the chunk pool, map mode, the helper thread that faults pages in, the
 * handover to Python by pyproc_pump_take / pyproc_pump_copy) are in outbuf.c.  The job pool (pool.c) drives many
 * pumps from one epoll set through the single steps that pump.h exports (one write, one read).
 * Pipes that carry a lot are enlarged with F_SETPIPE_SZ (fewer wake-ups, bigger reads).
 */
#include "outbuf.h"
#include "pump.h"

#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MIN_FREE ((size_t)64 << 10)          /* room for at least this much per read once output is flowing */
#define BOOST_AFTER ((size_t)64 << 10)       /* enlarge a pipe once this much went through it (then naps) */
#define PIPE_BIG (1 << 20)                   /* the size asked for (the unprivileged maximum by default) */
#define WRITE_CHUNK ((size_t)1 << 20)
#define DRAIN_ROUNDS 64
/* Reading a stream that flows: once a pipe was enlarged (PIPE_BIG, so its writer does not block for a long while)
   and the reads since the last wait brought at least NAP_MIN bytes, the pump sleeps NAP_NS instead of polling,
   then reads what gathered.  Polling, it was woken by nearly every write to the emptied pipe: the wake-up pulled
   it onto the writer's CPU and preempted the writer, hundreds of times per 4 MiB (measured: 5x the context
   switches of a nap, and slower than subprocess, whose slower reads leave the pipe less often empty).  The nap is
   a ppoll that asks for no event: writes do not end it, the writer's close (POLLHUP) does, so the end of the
   output is seen at once.  A nap that brings less than NAP_MIN goes back to poll, so a quiet child costs
   nothing. */
#define NAP_NS ((int64_t)60000)
#define NAP_MIN ((size_t)4096)
#define BIG_PIPE_MIN (PIPE_BIG / 2)         /* a pipe that holds this much can be left alone for a nap */
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
}

/* The pump's fds are the parent's ends of pipes pyproc made (no O_APPEND, O_ASYNC, O_DIRECT to keep), so one
   F_SETFL does it. */
static int set_nonblocking(int fd)
{
    return fcntl(fd, F_SETFL, O_NONBLOCK) < 0 ? errno : 0;
}

void pyproc__pump_close_input(struct pyproc_pump *p)
{
    if (p->in_fd >= 0) {
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
            int err = set_nonblocking(p->in_fd);
            if (err)
                return err;
            if (p->in_len - p->in_pos > (size_t)(64 << 10))
                (void)fcntl(p->in_fd, F_SETPIPE_SZ, PIPE_BIG);  /* best effort: EPERM past the user's quota */
        }
    }
    for (int i = 0; i < 2; i++) {
        if (p->out_fd[i] < 0) {
            p->out_eof[i] = 1;
            continue;
        }
        int err = set_nonblocking(p->out_fd[i]);
        if (err)
            return err;
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

/* Output b flows into an enlarged pipe, in chunk mode (in map mode, naps were measured slower: 1 GiB capture). */
static int napping(const struct pyproc_outbuf *b)
{
    return b->big_pipe && !b->map_size;
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
        /* best effort: EPERM past the user's quota (then the pump keeps polling this pipe) */
        b->big_pipe = fcntl(p->out_fd[i], F_SETPIPE_SZ, PIPE_BIG) >= BIG_PIPE_MIN;
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
    if (!p->started) {
        int err = pump_start(p);
        if (err)
            return err;
    }
    int in_ready = 1, out_ready[2] = {0, 0};  /* outputs: poll first (a child rarely has written yet) */
    size_t seen = p->out[0].len + p->out[1].len;
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
        /* A stream is flowing into an enlarged pipe: nap, then read what gathered, instead of poll (see NAP_NS). */
        size_t total = p->out[0].len + p->out[1].len, got_since = total - seen;
        seen = total;
        if (!drain && p->in_fd < 0 && got_since >= NAP_MIN && (napping(&p->out[0]) || napping(&p->out[1]))) {
            int64_t nap = NAP_NS;
            if (p->deadline_ns >= 0) {
                int64_t left = p->deadline_ns - pyproc_monotonic_ns();
                if (left <= 0) {
                    p->outcome = PYPROC_PUMP_TIMEOUT;
                    return 0;
                }
                if (left < nap)
                    nap = left;
            }
            /* No events asked: a write does not wake this poll, the writer's close (POLLHUP) does. */
            struct pollfd fds[2];
            nfds_t n = 0;
            for (int i = 0; i < 2; i++)
                if (!p->out_eof[i])
                    fds[n++] = (struct pollfd){p->out_fd[i], 0, 0};
            struct timespec ts = {0, (long)nap};
            if (ppoll(fds, n, &ts, NULL) < 0)
                return errno;  /* EINTR included: the caller runs its handlers and calls again */
            for (nfds_t k = 0; k < n; k++)
                if (fds[k].revents & POLLNVAL)
                    return EBADF;
            out_ready[0] = !p->out_eof[0];
            out_ready[1] = !p->out_eof[1];
            continue;
        }

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
    int err = pump_run(p, drain);
    pyproc__helper_stop(&p->out[0]);
    pyproc__helper_stop(&p->out[1]);
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
