/*
 * sigpipe.c - the async-signal-safe self-pipe: a SA_SIGINFO handler whose only work is one write() of a
 * fixed-size record to a non-blocking pipe, so that ordinary code (select, selectors, asyncio) sees signals as
 * bytes when it is ready.
 *
 * The handler may interrupt anything (malloc included) on any thread, so it calls write() and nothing else, keeps
 * errno, uses only lock-free atomics and never blocks: a full pipe makes write() fail with EAGAIN, and the record
 * is counted as dropped instead.  The record is smaller than PIPE_BUF, so the pipe takes all of it or none.
 *
 * State is per signal, in static arrays (never freed, so a handler running late on another thread can never touch
 * freed memory).  Uninstalling clears the signal's write fd, puts back the saved disposition (by exchange, see
 * restore_saved: a handler someone else installed meanwhile stays), then waits until no
 * handler for that signal is still inside its critical part: after that the caller may close the pipe, and the fd
 * number is never written to again.  The handler and the uninstaller both use sequentially consistent atomics (the
 * handler: increment in_flight, then load the fd; the uninstaller: store -1, then load in_flight), so one of them
 * always sees the other.
 */
#include "pyproc.h"

#include <limits.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

_Static_assert(sizeof(struct pyproc_sigrecord) <= PIPE_BUF, "a signal record must be written atomically");
_Static_assert(sizeof(struct pyproc_sigrecord) == 20, "the record layout is part of the Python side's contract");
_Static_assert(__atomic_always_lock_free(sizeof(int), 0), "the handler needs lock-free int atomics");
_Static_assert(__atomic_always_lock_free(sizeof(uint64_t), 0), "the handler needs lock-free 64-bit atomics");

enum { SLOT_FREE = 0, SLOT_BUSY = 1, SLOT_INSTALLED = 2 };

static int slot_state[_NSIG];           /* SLOT_*: one owner per signal */
static int slot_fd[_NSIG];              /* the write end for this signal's records; -1 (or 0 before first use)
                                           only matters while slot_state is INSTALLED, see the handler */
static int slot_in_flight[_NSIG];       /* handlers inside their critical part */
static uint64_t slot_delivered[_NSIG];  /* handler runs that had a pipe to write to */
static uint64_t slot_dropped[_NSIG];    /* of those, records the full pipe refused */
static struct sigaction slot_saved[_NSIG];

static int is_user_sender(int code)
{
    return code == SI_USER || code == SI_TKILL || code == SI_QUEUE || code == SI_MESGQ;
}

static void sigpipe_handler(int sig, siginfo_t *info, void *context)
{
    (void)context;
    int saved_errno = errno;
    if (sig <= 0 || sig >= _NSIG)
        return;
    __atomic_add_fetch(&slot_in_flight[sig], 1, __ATOMIC_SEQ_CST);
    int fd = __atomic_load_n(&slot_fd[sig], __ATOMIC_SEQ_CST);
    if (fd >= 0 && __atomic_load_n(&slot_state[sig], __ATOMIC_SEQ_CST) == SLOT_INSTALLED) {
        __atomic_add_fetch(&slot_delivered[sig], 1, __ATOMIC_RELAXED);
        struct pyproc_sigrecord record;
        memset(&record, 0, sizeof record); /* async-signal-safe since POSIX.1-2016 (and inlined here) */
        record.signo = sig;
        if (info) {
            int code = info->si_code;
            record.code = code;
            if (sig == SIGCHLD && code > 0) {
                record.pid = info->si_pid;
                record.uid = info->si_uid;
                record.status = info->si_status;
            } else {
                if (is_user_sender(code)) {
                    record.pid = info->si_pid;
                    record.uid = info->si_uid;
                }
                if (code == SI_QUEUE || code == SI_TIMER || code == SI_MESGQ)
                    record.status = info->si_value.sival_int;
            }
        }
        ssize_t n;
        do
            n = write(fd, &record, sizeof record);
        while (n < 0 && errno == EINTR);
        if (n != (ssize_t)sizeof record)
            __atomic_add_fetch(&slot_dropped[sig], 1, __ATOMIC_RELAXED);
    }
    __atomic_sub_fetch(&slot_in_flight[sig], 1, __ATOMIC_SEQ_CST);
    errno = saved_errno;
}

static int valid_signal(int sig) { return sig > 0 && sig < _NSIG; }

static int is_ours(const struct sigaction *action)
{
    return (action->sa_flags & SA_SIGINFO) && action->sa_sigaction == sigpipe_handler;
}

static int same_handler(const struct sigaction *a, const struct sigaction *b)
{
    return (a->sa_flags & SA_SIGINFO) == (b->sa_flags & SA_SIGINFO) &&
           ((a->sa_flags & SA_SIGINFO) ? (void *)a->sa_sigaction == (void *)b->sa_sigaction
                                       : a->sa_handler == b->sa_handler);
}

/* Puts the saved disposition back in place of ours, by exchange: sigaction() installs one disposition and returns
   the one it displaced in the same call, so a handler another thread installed just before is seen, never
   overwritten unseen.  It cannot be fully atomic: the kernel has no compare-and-exchange for a disposition, so
   "replace ours, and only ours" takes two calls when someone raced us.  A displaced foreign handler is then put back
   at once (and so on, should yet another be installed between those two calls: the last one installed stays); a
   signal delivered between the two calls meets the saved disposition instead of theirs.  *replaced = 1 then. */
static int restore_saved(int sig, int *replaced)
{
    struct sigaction mine = slot_saved[sig], found;
    if (sigaction(sig, &mine, &found) != 0)
        return errno; /* ours is still installed */
    while (!is_ours(&found)) {
        /* found was installed after our check: put it back; what that displaces should be what we just put. */
        *replaced = 1;
        struct sigaction expected = mine;
        mine = found;
        if (sigaction(sig, &mine, &found) != 0 || same_handler(&found, &expected))
            break; /* (it cannot fail with a disposition the kernel just gave us; ours is gone either way) */
    }
    return 0;
}

int pyproc_sigpipe_install(int sig, int write_fd, int restart)
{
    if (!valid_signal(sig) || sig == SIGKILL || sig == SIGSTOP || write_fd < 0)
        return EINVAL;
    int expected = SLOT_FREE;
    if (!__atomic_compare_exchange_n(&slot_state[sig], &expected, SLOT_BUSY, 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST))
        return EBUSY;
    __atomic_store_n(&slot_delivered[sig], 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&slot_dropped[sig], 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&slot_fd[sig], write_fd, __ATOMIC_SEQ_CST);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = sigpipe_handler;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | (restart ? SA_RESTART : 0);
    sigemptyset(&action.sa_mask);
    /* INSTALLED before the handler can run, so that the first signal after sigaction() is recorded. */
    __atomic_store_n(&slot_state[sig], SLOT_INSTALLED, __ATOMIC_SEQ_CST);
    if (sigaction(sig, &action, &slot_saved[sig]) != 0) {
        int err = errno;
        __atomic_store_n(&slot_fd[sig], -1, __ATOMIC_SEQ_CST);
        __atomic_store_n(&slot_state[sig], SLOT_FREE, __ATOMIC_SEQ_CST);
        return err;
    }
    return 0;
}

int pyproc_sigpipe_uninstall(int sig, int *replaced)
{
    *replaced = 0;
    if (!valid_signal(sig))
        return EINVAL;
    int expected = SLOT_INSTALLED;
    if (!__atomic_compare_exchange_n(&slot_state[sig], &expected, SLOT_BUSY, 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_SEQ_CST))
        return expected == SLOT_BUSY ? EBUSY : ENOENT;
    /* From here on a handler that starts writes nothing (it sees BUSY or fd -1). */
    __atomic_store_n(&slot_fd[sig], -1, __ATOMIC_SEQ_CST);
    int err = 0;
    struct sigaction current;
    if (sigaction(sig, NULL, &current) != 0) {
        err = errno;
    } else if (!is_ours(&current)) {
        *replaced = 1; /* someone installed their own handler while the pipe was open: theirs stays */
    } else {
        err = restore_saved(sig, replaced);
    }
    /* Handlers that loaded the fd before it was cleared finish their write() before the caller closes it. */
    while (__atomic_load_n(&slot_in_flight[sig], __ATOMIC_SEQ_CST) != 0)
        sched_yield();
    if (err) { /* our handler is still installed; it writes nothing any more, and the slot stays owned */
        __atomic_store_n(&slot_state[sig], SLOT_INSTALLED, __ATOMIC_SEQ_CST);
        return err;
    }
    __atomic_store_n(&slot_state[sig], SLOT_FREE, __ATOMIC_SEQ_CST);
    return 0;
}

int pyproc_sigpipe_counts(int sig, uint64_t *delivered, uint64_t *dropped)
{
    *delivered = *dropped = 0;
    if (!valid_signal(sig))
        return EINVAL;
    *dropped = __atomic_load_n(&slot_dropped[sig], __ATOMIC_SEQ_CST);
    *delivered = __atomic_load_n(&slot_delivered[sig], __ATOMIC_SEQ_CST);
    return 0;
}

void pyproc_sigpipe_after_fork_child(void)
{
    /* fork() copied the counters of handlers that were running on other threads, which do not exist here. */
    for (int sig = 0; sig < _NSIG; sig++)
        __atomic_store_n(&slot_in_flight[sig], 0, __ATOMIC_SEQ_CST);
}
