/*
 * pool.c - many children at once (pyproc.run_many): one loop, GIL released, keeps `jobs` children running.
 *
 * Jobs are submitted into slots and started in order, through the same spawn as run() (pyproc_spawn_piped: the
 * default engine, pipes made with the spawn).  Every running child's pidfd and pipe ends sit in one epoll set; the
 * loop waits on it, feeds inputs and reads outputs with the pump's single steps (pump.h: the same buffers and chunk
 * pool as run()), reaps with wait4 (rusage) into the caller's struct pyproc_child, kills jobs past their deadline
 * (the whole group when the child leads one), and as soon as a job is done starts the next queued one and returns,
 * so the caller builds results while the children run.  With block = 0 one pass never waits: an event loop watches
 * epfd (readable when there is work) and calls it.
 *
 * Every fd here is the pool's own: the pipes come from pyproc_spawn_piped, the pidfd from the spawn.  Each is in the
 * epoll set with EPOLLONESHOT: an event disarms it, and the pool re-arms it (EPOLL_CTL_MOD) only to wait on it
 * again.  An fd closed while armed leaves the set first (a copy held by a concurrent fork in another thread would
 * otherwise keep it there, reporting events for a slot that has moved on); one closed right after its event (an
 * output at end of file, the input written, the pidfd of a child that exited) is disarmed, inert until the kernel
 * drops it with the file: no EPOLL_CTL_DEL, three syscalls fewer per job.  An output whose writers are all gone
 * (EPOLLHUP) is read to end of file at once, without another round of epoll_wait.  A child is reaped only once its outputs reached end of
 * file (or it was killed): until then its pid, which is its group's id when it leads one, cannot be reused, so a
 * kill of the group is safe.  The pidfd is closed by the reap and never used after.  A child reaped by someone else
 * (wait4 gives ECHILD, e.g. SIGCHLD ignored) ends with status_lost; on kernels without pidfds, exits are found by
 * wait4 WNOHANG at growing intervals.
 *
 * Every function returns 0 or a positive errno; EINTR from a wait or a write comes back to the caller with the
 * state kept, so that Python's signal handlers run (a Ctrl-C then closes the pool: pyproc_pool_close kills and
 * reaps every child).
 */
#include "outbuf.h"
#include "pump.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>

/* What an epoll event is about: the low bits of its data (the slot is above them). */
#define KIND_PIDFD 0
#define KIND_IN 1
#define KIND_OUT0 2
#define KIND_OUT1 3
#define KIND_BITS 2

#define MAX_EVENTS 64
#define DRAIN_READS 64                     /* reads of a killed job's pipe, without waiting, before it is closed */
#define RECHECK_FIRST_NS ((int64_t)500000) /* no pidfd: wait4 WNOHANG after 0.5 ms, then doubling up to 50 ms */
#define RECHECK_MAX_NS ((int64_t)50000000)

static int *fd_of(struct pyproc_pool_job *j, int kind)
{
    switch (kind) {
    case KIND_PIDFD:
        return &j->child->spawn.pidfd;
    case KIND_IN:
        return &j->pump.in_fd;
    default:
        return &j->pump.out_fd[kind - KIND_OUT0];
    }
}

static uint32_t events_of(int kind) { return (kind == KIND_IN ? EPOLLOUT : EPOLLIN) | EPOLLONESHOT; }

/* Arms fd `kind` of the job in slot for one event: added to the set the first time (op EPOLL_CTL_ADD), re-armed
   after an event (EPOLL_CTL_MOD). */
static int watch(struct pyproc_pool *p, int slot, int kind, int op)
{
    struct pyproc_pool_job *j = &p->slots[slot];
    struct epoll_event ev = {.events = events_of(kind), .data.u64 = (uint64_t)slot << KIND_BITS | (uint64_t)kind};
    if (epoll_ctl(p->epfd, op, *fd_of(j, kind), &ev) != 0)
        return errno;
    j->armed |= 1 << kind;
    return 0;
}

/* Before closing fd `kind` (or giving up on it): out of the set if it is armed (a disarmed one is inert). */
static void unwatch(struct pyproc_pool *p, struct pyproc_pool_job *j, int kind)
{
    if (j->armed & (1 << kind)) {
        /* Cannot fail for an fd of ours that is in the set; nothing to undo if it did. */
        (void)epoll_ctl(p->epfd, EPOLL_CTL_DEL, *fd_of(j, kind), NULL);
        j->armed &= ~(1 << kind);
    }
}

/* Takes fd `kind` out of the epoll set and closes it (the pipes; the pidfd is closed by the reap). */
static void close_watched(struct pyproc_pool *p, struct pyproc_pool_job *j, int kind)
{
    unwatch(p, j, kind);
    if (kind == KIND_IN) {
        pyproc__pump_close_input(&j->pump);
    } else {
        int *fd = fd_of(j, kind);
        if (*fd >= 0) {
            close(*fd); /* a pipe's close cannot fail in a way that leaves it open */
            *fd = -1;
        }
    }
}

static void wake_at(struct pyproc_pool *p, int64_t when)
{
    if (when >= 0 && (p->next_wake_ns < 0 || when < p->next_wake_ns))
        p->next_wake_ns = when;
}

/* ---- slots ------------------------------------------------------------------------------------------------- */

static void reset_slot(struct pyproc_pool *p, struct pyproc_pool_job *j)
{
    char *args = j->args;
    size_t cap = j->args_cap;
    memset(j, 0, sizeof *j);
    j->args = args;
    j->args_cap = cap;
    pyproc_pump_setup(&j->pump, -1, NULL, 0, -1, -1, UINT64_MAX, p->lead, p->chunk_max, 1);
    j->deadline_ns = j->recheck_ns = -1;
    j->next = -1;
}

static int grow(struct pyproc_pool *p, int want)
{
    if (want <= p->n_slots)
        return 0;
    struct pyproc_pool_job *slots = realloc(p->slots, sizeof *slots * (size_t)want);
    if (!slots)
        return ENOMEM;
    p->slots = slots;
    int *done = realloc(p->done, sizeof *done * (size_t)want);
    if (!done)
        return ENOMEM; /* the slots grew, the count did not: consistent */
    p->done = done;
    for (int i = want - 1; i >= p->n_slots; i--) {
        slots[i].args = NULL;
        slots[i].args_cap = 0;
        reset_slot(p, &slots[i]);
        slots[i].next = p->free_head;
        p->free_head = i;
    }
    p->n_slots = want;
    return 0;
}

/* Frees a job's buffers (and any fd still open) and puts its slot back on the free list. */
static void free_slot(struct pyproc_pool *p, int slot)
{
    struct pyproc_pool_job *j = &p->slots[slot];
    pyproc_pump_release(&j->pump);
    reset_slot(p, j);
    j->next = p->free_head;
    p->free_head = slot;
}

static void done_job(struct pyproc_pool *p, int slot)
{
    struct pyproc_pool_job *j = &p->slots[slot];
    j->end_ns = pyproc_monotonic_ns();
    if (j->state == PYPROC_JOB_RUNNING)
        p->running--;
    j->state = PYPROC_JOB_DONE;
    p->done[p->n_done++] = slot;
}

int pyproc_pool_open(struct pyproc_pool *p, int jobs, int slots, size_t lead, size_t chunk_max)
{
    memset(p, 0, sizeof *p);
    p->epfd = -1;
    p->free_head = p->queue_head = p->queue_tail = -1;
    p->next_wake_ns = -1;
    if (jobs < 1 || slots < 1)
        return EINVAL;
    p->jobs = jobs;
    p->lead = lead;
    p->chunk_max = chunk_max;
    int err = grow(p, slots);
    if (!err) {
        p->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (p->epfd < 0)
            err = errno;
    }
    if (err) {
        free(p->slots);
        free(p->done);
        memset(p, 0, sizeof *p);
        p->epfd = -1;
    }
    return err;
}

int pyproc_pool_submit(struct pyproc_pool *p, const struct pyproc_spawn_request *req, const char *args,
                       size_t args_len, int argc, int engine, int pipes, const char *input, size_t input_len,
                       int64_t timeout_ns, int kill_group, struct pyproc_child *child, int *slot)
{
    *slot = -1;
    if (p->epfd < 0 || !req || !child || (input_len && (!input || !(pipes & PYPROC_PIPE_STDIN))))
        return EINVAL;
    if (p->free_head < 0) {
        if (p->n_slots > INT_MAX / 2)
            return ENOMEM;
        int err = grow(p, 2 * p->n_slots);
        if (err)
            return err;
    }
    int index = p->free_head;
    struct pyproc_pool_job *j = &p->slots[index];
    if (args) {
        if (j->args_cap < args_len + 1) {
            char *copy = realloc(j->args, args_len + 1);
            if (!copy)
                return ENOMEM;
            j->args = copy;
            j->args_cap = args_len + 1;
        }
        memcpy(j->args, args, args_len + 1); /* with the last string's NUL (see pyproc_spawn_child) */
        j->args_len = args_len;
    }
    p->free_head = j->next;
    j->req = req;
    j->argc = args ? argc : 0;
    j->engine = engine;
    j->pipes = pipes;
    j->kill_group = kill_group;
    j->timeout_ns = timeout_ns;
    j->child = child;
    j->pump.in_data = input;
    j->pump.in_len = input ? input_len : 0;
    if (!args)
        j->args_len = 0;
    j->state = PYPROC_JOB_QUEUED;
    j->next = -1;
    if (p->queue_tail >= 0)
        p->slots[p->queue_tail].next = index;
    else
        p->queue_head = index;
    p->queue_tail = index;
    p->n_queued++;
    *slot = index;
    return 0;
}

/* ---- one job ------------------------------------------------------------------------------------------------- */

static void kill_job(struct pyproc_pool_job *j)
{
    if (j->reaped)
        return;
    pid_t pid = j->child->spawn.pid;
    if (j->kill_group)
        (void)kill(-pid, SIGKILL); /* unreaped, so the group's id is still this child's; ESRCH: none left */
    (void)pyproc_send_signal(pid, j->child->spawn.pidfd, SIGKILL); /* ESRCH: it has exited */
}

/* Reaps j (wait4, nohang or not); returns 1 once it is reaped.  The pidfd leaves the epoll set first, and is closed
   by the reap. */
static int reap_job(struct pyproc_pool *p, struct pyproc_pool_job *j, int nohang)
{
    if (j->reaped)
        return 1;
    unwatch(p, j, KIND_PIDFD);
    struct pyproc_child *c = j->child;
    int err;
    while ((err = pyproc_child_reap(c, c->spawn.pid, c->spawn.pidfd, nohang)) == EINTR) {
    }
    if (!err && !c->reaped)
        return 0;
    if (err) {
        /* ECHILD: reaped by someone else (SIGCHLD ignored, a waitpid(-1) elsewhere): no status to give. */
        j->status_lost = 1;
        if (c->spawn.pidfd >= 0)
            close(c->spawn.pidfd);
    }
    c->spawn.pidfd = -1; /* closed (by pyproc_child_reap when it reaped) */
    j->reaped = j->exited = 1;
    return 1;
}

/* Reads what a killed job's pipes hold, without waiting, then closes them. */
static void drain_and_close(struct pyproc_pool *p, struct pyproc_pool_job *j)
{
    for (int i = 0; i < 2; i++) {
        int fd = j->pump.out_fd[i];
        if (fd < 0)
            continue;
        if (fcntl(fd, F_SETFL, O_NONBLOCK) == 0) { /* the pool's own pipe end: no one else's flags to keep */
            int ready = 1;
            for (int k = 0; k < DRAIN_READS && ready && !j->pump.out_eof[i]; k++)
                if (pyproc__pump_read(&j->pump, i, &ready) != 0)
                    break; /* what was read is kept; the rest is lost with the pipe */
        }
        close_watched(p, j, KIND_OUT0 + i);
    }
}

/* Ends a job that the pool cannot go on with (its pipes or the epoll set failed): error set, killed, reaped. */
static void abort_job(struct pyproc_pool *p, int slot, int err)
{
    struct pyproc_pool_job *j = &p->slots[slot];
    if (!j->error)
        j->error = err;
    kill_job(j);
    close_watched(p, j, KIND_IN);
    close_watched(p, j, KIND_OUT0);
    close_watched(p, j, KIND_OUT1);
    reap_job(p, j, 0);
    done_job(p, slot);
}

/* Moves a job on after something happened to it: done once it has exited, its input is written and its outputs
   reached end of file (a killed job: once it has exited, with what its pipes hold then). */
static void advance(struct pyproc_pool *p, int slot)
{
    struct pyproc_pool_job *j = &p->slots[slot];
    if (j->state != PYPROC_JOB_RUNNING || !j->exited)
        return;
    if (j->timed_out) {
        close_watched(p, j, KIND_IN);
        drain_and_close(p, j);
    }
    if (j->pump.in_fd >= 0 || j->pump.out_fd[0] >= 0 || j->pump.out_fd[1] >= 0)
        return; /* a grandchild holds a pipe: as run() without a timeout, wait for end of file */
    if (!reap_job(p, j, 1)) {
        /* The pidfd said exited but wait4 does not see it yet: look again shortly (never spin). */
        j->recheck_ns = pyproc_monotonic_ns() + RECHECK_FIRST_NS;
        wake_at(p, j->recheck_ns);
        return;
    }
    done_job(p, slot);
}

static void start_job(struct pyproc_pool *p, int slot, int *sigpipe_default)
{
    struct pyproc_pool_job *j = &p->slots[slot];
    int ends[3];
    j->start_ns = pyproc_monotonic_ns();
    int err = pyproc_spawn_piped(j->req, j->argc ? j->args : NULL, j->args_len, j->argc, j->engine, j->pipes,
                                 j->child, ends);
    if (err) {
        j->error = err;
        j->reaped = 1; /* a child that failed to start was reaped by the spawn */
        done_job(p, slot);
        return;
    }
    j->state = PYPROC_JOB_RUNNING;
    p->running++;
    struct pyproc_pump *pump = &j->pump;
    pump->started = 1;
    pump->in_fd = ends[0];
    for (int i = 0; i < 2; i++) {
        pump->out_fd[i] = ends[1 + i];
        pump->out_eof[i] = ends[1 + i] < 0;
    }
    if (j->timeout_ns >= 0) {
        j->deadline_ns = j->start_ns + j->timeout_ns;
        wake_at(p, j->deadline_ns);
    }
    if (pump->in_fd >= 0) {
        int ready = 1, finished = pump->in_pos >= pump->in_len;
        if (!finished) {
            if (*sigpipe_default < 0) /* asked once per call, and only when there is input to write */
                *sigpipe_default = pyproc__sigpipe_is_default();
            pump->sigpipe_default = *sigpipe_default;
            if (fcntl(pump->in_fd, F_SETFL, O_NONBLOCK) != 0) { /* the pool's own pipe end */
                abort_job(p, slot, errno);
                return;
            }
            err = pyproc__pump_write(pump, &ready, &finished); /* an empty pipe takes a small input at once */
            if (err && err != EINTR) {                          /* EINTR: the next write, when it is writable */
                abort_job(p, slot, err);
                return;
            }
        }
        if (finished)
            pyproc__pump_close_input(pump);
        else if ((err = watch(p, slot, KIND_IN, EPOLL_CTL_ADD)) != 0) {
            abort_job(p, slot, err);
            return;
        }
    }
    for (int i = 0; i < 2; i++) {
        if (pump->out_fd[i] >= 0 && (err = watch(p, slot, KIND_OUT0 + i, EPOLL_CTL_ADD)) != 0) {
            abort_job(p, slot, err);
            return;
        }
    }
    if (j->child->spawn.pidfd >= 0) {
        if ((err = watch(p, slot, KIND_PIDFD, EPOLL_CTL_ADD)) != 0)
            abort_job(p, slot, err);
    } else { /* a kernel without pidfds: wait4 WNOHANG from time to time */
        j->recheck_ns = j->start_ns + RECHECK_FIRST_NS;
        wake_at(p, j->recheck_ns);
    }
}

static void start_queued(struct pyproc_pool *p, int *sigpipe_default)
{
    while (p->running < p->jobs && p->queue_head >= 0) {
        int slot = p->queue_head;
        p->queue_head = p->slots[slot].next;
        if (p->queue_head < 0)
            p->queue_tail = -1;
        p->n_queued--;
        p->slots[slot].next = -1;
        start_job(p, slot, sigpipe_default);
    }
}

/* ---- the loop ---------------------------------------------------------------------------------------------- */

static int on_event(struct pyproc_pool *p, const struct epoll_event *ev)
{
    int slot = (int)(ev->data.u64 >> KIND_BITS), kind = (int)(ev->data.u64 & ((1 << KIND_BITS) - 1));
    if (slot >= p->n_slots)
        return 0;
    struct pyproc_pool_job *j = &p->slots[slot];
    if (j->state != PYPROC_JOB_RUNNING || !(j->armed & (1 << kind)))
        return 0; /* given up on earlier in this batch of events */
    j->armed &= ~(1 << kind); /* the event disarmed it (EPOLLONESHOT) */
    int err = 0, again = 0;
    if (kind == KIND_PIDFD) {
        j->exited = 1;
    } else if (kind == KIND_IN) {
        int ready = 1, finished = 0;
        err = pyproc__pump_write(&j->pump, &ready, &finished);
        if (finished)
            pyproc__pump_close_input(&j->pump);
        again = !finished && (!err || err == EINTR);
    } else {
        /* The fd stays blocking (no fcntl per job): one read per event, or, once every writer is gone (EPOLLHUP),
           reads to end of file, which cannot block then. */
        int i = kind - KIND_OUT0, ready = 1, hangup = (ev->events & (EPOLLHUP | EPOLLERR)) != 0;
        do {
            err = pyproc__pump_read(&j->pump, i, &ready);
        } while (!err && hangup && !j->pump.out_eof[i]);
        if (j->pump.out_eof[i])
            close_watched(p, j, kind);
        else
            again = !err || err == EINTR;
    }
    if (again) {
        int rearm = watch(p, slot, kind, EPOLL_CTL_MOD);
        if (rearm)
            err = rearm;
    }
    if (err == EINTR)
        return EINTR; /* the fd is armed again: the step is retried on the next call */
    if (err)
        abort_job(p, slot, err);
    else
        advance(p, slot);
    return 0;
}

/* Deadlines (kill) and the wait4 rechecks of children without a pidfd; recomputes next_wake_ns. */
static void check_times(struct pyproc_pool *p, int64_t now)
{
    p->next_wake_ns = -1;
    for (int slot = 0; slot < p->n_slots; slot++) {
        struct pyproc_pool_job *j = &p->slots[slot];
        if (j->state != PYPROC_JOB_RUNNING)
            continue;
        if (j->deadline_ns >= 0 && !j->timed_out) {
            if (now >= j->deadline_ns) {
                j->timed_out = 1;
                kill_job(j); /* its group too when it leads one: grandchildren holding the pipes go as well */
                close_watched(p, j, KIND_IN);
                advance(p, slot);
            } else {
                wake_at(p, j->deadline_ns);
            }
        }
        if (j->state == PYPROC_JOB_RUNNING && j->recheck_ns >= 0) {
            if (now >= j->recheck_ns) {
                int64_t step = j->recheck_ns - j->start_ns;
                if (reap_job(p, j, 1)) {
                    j->recheck_ns = -1;
                    advance(p, slot);
                } else {
                    step = step < RECHECK_FIRST_NS ? RECHECK_FIRST_NS : step > RECHECK_MAX_NS ? RECHECK_MAX_NS : step;
                    j->recheck_ns = now + step;
                    wake_at(p, j->recheck_ns);
                }
            } else {
                wake_at(p, j->recheck_ns);
            }
        }
    }
}

/* The epoll_wait timeout: until the next deadline or recheck (-1: none), in ms rounded up. */
static int wait_ms(const struct pyproc_pool *p, int64_t now)
{
    if (p->next_wake_ns < 0)
        return -1;
    int64_t left = p->next_wake_ns - now;
    if (left <= 0)
        return 0;
    int64_t ms = (left + 999999) / 1000000;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

int pyproc_pool_run(struct pyproc_pool *p, int block)
{
    if (p->epfd < 0)
        return EBADF;
    int sigpipe_default = -1, err = 0; /* -1: not asked yet */
    for (int pass = 0;; pass++) {
        start_queued(p, &sigpipe_default);
        if (!p->running || (block ? p->n_done > 0 : pass > 0))
            break;
        int64_t now = pyproc_monotonic_ns();
        if (p->next_wake_ns >= 0 && now >= p->next_wake_ns) {
            check_times(p, now);
            continue; /* a job may be done, or more may start */
        }
        struct epoll_event events[MAX_EVENTS];
        int n = epoll_wait(p->epfd, events, MAX_EVENTS, block ? wait_ms(p, now) : 0);
        if (n < 0) {
            err = errno; /* EINTR included: the caller runs its handlers and calls again */
            break;
        }
        for (int k = 0; k < n && !err; k++)
            err = on_event(p, &events[k]);
        if (err)
            break; /* events not handled yet are reported again (level-triggered) */
    }
    /* A big output's helper thread never outlives the call (as with pyproc_pump_run). */
    for (int slot = 0; slot < p->n_slots; slot++) {
        struct pyproc_pool_job *j = &p->slots[slot];
        if (j->pump.out[0].helper || j->pump.out[1].helper) {
            pyproc__helper_stop(&j->pump.out[0]);
            pyproc__helper_stop(&j->pump.out[1]);
        }
    }
    return err;
}

void pyproc_pool_recycle(struct pyproc_pool *p)
{
    for (int k = 0; k < p->n_done; k++)
        free_slot(p, p->done[k]);
    p->n_done = 0;
}

void pyproc_pool_drop_queued(struct pyproc_pool *p)
{
    while (p->queue_head >= 0) {
        int slot = p->queue_head;
        p->queue_head = p->slots[slot].next;
        free_slot(p, slot);
    }
    p->queue_tail = -1;
    p->n_queued = 0;
}

/* Kills, unwatches, closes and reaps (blocking) a running job; its buffers stay. */
static void end_running(struct pyproc_pool *p, struct pyproc_pool_job *j)
{
    kill_job(j);
    close_watched(p, j, KIND_IN);
    close_watched(p, j, KIND_OUT0);
    close_watched(p, j, KIND_OUT1);
    reap_job(p, j, 0);
    j->state = PYPROC_JOB_DONE;
    p->running--;
}

void pyproc_pool_cancel(struct pyproc_pool *p, int slot)
{
    if (slot < 0 || slot >= p->n_slots)
        return;
    struct pyproc_pool_job *j = &p->slots[slot];
    switch (j->state) {
    case PYPROC_JOB_QUEUED: {
        int prev = -1;
        for (int at = p->queue_head; at >= 0 && at != slot; at = p->slots[at].next)
            prev = at;
        if (prev < 0)
            p->queue_head = j->next;
        else
            p->slots[prev].next = j->next;
        if (p->queue_tail == slot)
            p->queue_tail = prev;
        p->n_queued--;
        break;
    }
    case PYPROC_JOB_RUNNING:
        end_running(p, j);
        break;
    case PYPROC_JOB_DONE:
        for (int k = 0; k < p->n_done; k++) {
            if (p->done[k] == slot) {
                memmove(&p->done[k], &p->done[k + 1], sizeof *p->done * (size_t)(p->n_done - k - 1));
                p->n_done--;
                break;
            }
        }
        break;
    default:
        return;
    }
    free_slot(p, slot);
}

void pyproc_pool_close(struct pyproc_pool *p)
{
    if (p->epfd < 0)
        return;
    /* Every child is killed first, so that none is still running while the others are reaped one by one. */
    for (int slot = 0; slot < p->n_slots; slot++)
        if (p->slots[slot].state == PYPROC_JOB_RUNNING)
            kill_job(&p->slots[slot]);
    for (int slot = 0; slot < p->n_slots; slot++) {
        struct pyproc_pool_job *j = &p->slots[slot];
        if (j->state == PYPROC_JOB_RUNNING)
            end_running(p, j);
        pyproc_pump_release(&j->pump);
        free(j->args);
    }
    close(p->epfd);
    free(p->slots);
    free(p->done);
    memset(p, 0, sizeof *p);
    p->epfd = -1;
    p->free_head = p->queue_head = p->queue_tail = -1;
    p->next_wake_ns = -1;
}
