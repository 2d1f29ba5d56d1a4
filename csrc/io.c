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
 * Output buffers have two modes, with the crossover at pyproc_pump.chunk_max (32 MiB by default, glibc's largest
 * mmap threshold; measured, issue 3):
 * - Chunk mode (below it): 256 KiB chunks from a process-wide pool, faulted in once and reused by later runs.
 *   The result is one copy into a new bytes object, which at these sizes glibc places in recycled heap memory.
 *   Before, a medium output went to a fresh mapping whose pages the kernel had to zero and fault in (more than
 *   the copy costs), and then to a heap bytes object by a copy anyway: 15-25% slower than subprocess.
 * - Map mode (past it; the chunks are copied into it once): an anonymous mapping grown by mremap, which moves
 *   page tables and never copies what was read.  Fresh pages cost the kernel more (zeroing, accounting, a fault
 *   per 4 KiB) than copying the pipe's data into them, so a helper thread faults the buffer in ahead of the
 *   reads, on the other CPU, while this thread only copies (without one -- it could not start, or chunk_max was
 *   lowered -- each read asks for at most POPULATE_STEP bytes whose pages one MADV_POPULATE_WRITE just faulted
 *   in).  Transparent huge pages were measured and left out: zeroing 2 MiB at a time (cache-cold) cost more here
 *   than the faults it saves.  pyproc_pump_take hands the buffer to Python by moving its pages (mremap
 *   MREMAP_FIXED) into a fresh bytes object's storage (always a fresh mapping at this size) when both start at
 *   the same offset in a page (the Python side arranges it), so 1 GiB of output is never copied in user space.
 * Pipes that carry a lot are enlarged with F_SETPIPE_SZ (fewer wake-ups, bigger reads).
 */
#include "pyproc.h"

#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>

#define CHUNK ((size_t)PYPROC_OUT_CHUNK)
#define POOL_KEEP ((size_t)PYPROC_OUT_CHUNK_MAX / PYPROC_OUT_CHUNK)  /* most free chunks the pool keeps */
#define MIN_FREE ((size_t)64 << 10)          /* room for at least this much per read once output is flowing */
#define BOOST_AFTER ((size_t)64 << 10)       /* enlarge a pipe once this much went through it (then naps) */
#define PIPE_BIG (1 << 20)                   /* the size asked for (the unprivileged maximum by default) */
#define WRITE_CHUNK ((size_t)1 << 20)
#define DRAIN_ROUNDS 64
#define PARALLEL_COPY_MIN ((size_t)2 << 20)  /* results this large are copied out of the chunks by two threads */
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
#define POPULATE_STEP ((size_t)256 << 10)    /* most bytes a read into a big buffer asks for */
#define HELPER_AFTER ((size_t)4 << 20)       /* output this large gets a helper thread that faults pages in */
#define HELPER_AHEAD ((size_t)16 << 20)      /* how far ahead of the reads it keeps the buffer faulted in */
#define HELPER_READ ((size_t)1 << 20)        /* most bytes a read asks for when the helper runs */

struct helper {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    struct pyproc_outbuf *b;
    size_t target;  /* atomic: keep the buffer faulted in up to here */
    int sleeping;   /* atomic */
    int stop;       /* atomic */
};

static size_t page_size(void)
{
    static size_t size;
    if (!size) {
        long got = sysconf(_SC_PAGESIZE);
        size = got > 0 ? (size_t)got : 4096;
    }
    return size;
}

int64_t pyproc_monotonic_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* ---- SIGPIPE: a write to a pipe whose reader is gone must give EPIPE, not kill the process ------------------- */

static int sigpipe_is_default(void)
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
    int guard = sigpipe_is_default();
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

/* ---- output buffers ---------------------------------------------------------------------------------------- */

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

/* Faults in [from, from + n) (writable anonymous memory) with one madvise instead of a page fault per 4 KiB.
   Kernels before 5.14 refuse MADV_POPULATE_WRITE: then the writes fault the pages in as usual. */
static void populate_range(char *from, size_t n)
{
#ifdef MADV_POPULATE_WRITE
    static int refused;
    size_t page = page_size();
    uintptr_t lo = (uintptr_t)from / page * page, hi = round_up((uintptr_t)from + n, page);
    if (!refused && n && madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE) != 0 && errno == EINVAL)
        refused = 1;
#else
    (void)from;
    (void)n;
#endif
}

/* ---- the chunk pool ---------------------------------------------------------------------------------------- *
 * Outputs up to the crossover (pyproc_pump.chunk_max) are read into CHUNK-byte chunks that come from, and go back
 * to, a pool kept for the life of the process (at most POOL_KEEP chunks; more are unmapped).  So repeated runs
 * read into memory whose pages are already faulted in, and the result costs one copy into the bytes object --
 * which, at these sizes, glibc usually places in recycled heap memory.  Without the pool, each run paid the
 * kernel for zeroing and mapping fresh pages (more than the copy), and lost to subprocess (issue 3).
 * The lock is held across fork() (pthread_atfork), so a forked child never inherits it locked. */

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static int pool_usable;   /* pthread_atfork succeeded: the pool may keep chunks */
static char *pool_head;   /* free chunks, linked through their first word */
static size_t pool_count;

static void pool_lock_for_fork(void) { pthread_mutex_lock(&pool_lock); }
static void pool_unlock_after_fork(void) { pthread_mutex_unlock(&pool_lock); }

static void pool_setup(void)
{
    pool_usable = pthread_atfork(pool_lock_for_fork, pool_unlock_after_fork, pool_unlock_after_fork) == 0;
}

/* A chunk: from the pool, else freshly mapped (faulted in at once when `fill`: output is flowing). */
static char *chunk_get(int fill, int *err)
{
    char *chunk = NULL;
    pthread_once(&pool_once, pool_setup);
    if (pool_usable) {
        pthread_mutex_lock(&pool_lock);
        if (pool_head) {
            chunk = pool_head;
            memcpy(&pool_head, chunk, sizeof pool_head);
            pool_count--;
        }
        pthread_mutex_unlock(&pool_lock);
        if (chunk)
            return chunk;
    }
    chunk = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (chunk == MAP_FAILED) {
        *err = errno;
        return NULL;
    }
    if (fill)
        populate_range(chunk, CHUNK);
    return chunk;
}

static void chunk_put(char *chunk)
{
    if (pool_usable) {
        pthread_mutex_lock(&pool_lock);
        if (pool_count < POOL_KEEP) {
            memcpy(chunk, &pool_head, sizeof pool_head);
            pool_head = chunk;
            pool_count++;
            chunk = NULL;
        }
        pthread_mutex_unlock(&pool_lock);
    }
    if (chunk)
        munmap(chunk, CHUNK);  /* cannot fail for a whole mapping of ours */
}

/* Gives b's chunks back to the pool and leaves b empty. */
static void chunks_release(struct pyproc_outbuf *b)
{
    for (size_t k = 0; k < b->nchunks; k++)
        chunk_put(b->chunks[k]);
    free(b->chunks);
    b->chunks = NULL;
    b->nchunks = b->chunk_slots = 0;
}

/* Appends one chunk to b. */
static int chunks_add(struct pyproc_outbuf *b)
{
    if (b->nchunks == b->chunk_slots) {
        size_t slots = b->chunk_slots ? 2 * b->chunk_slots : 8;
        char **grown = realloc(b->chunks, slots * sizeof *grown);
        if (!grown)
            return ENOMEM;
        b->chunks = grown;
        b->chunk_slots = slots;
    }
    int err = 0;
    char *chunk = chunk_get(b->len > 0, &err);
    if (!chunk)
        return err;
    b->chunks[b->nchunks++] = chunk;
    b->data = b->chunks[0];
    return 0;
}

/* Copies the first n bytes of b's chunks to dest.  fresh: dest is fresh memory, faulted in a chunk at a time
   ahead of the copy.  Otherwise it is not populated: below PYPROC_OUT_CHUNK_MAX a result is usually recycled heap
   memory, whose pages are present, and MADV_POPULATE_WRITE still walks every one of them (it cost more than it
   saved, measured). */
static void chunks_copy(const struct pyproc_outbuf *b, char *dest, size_t n, int fresh)
{
    for (size_t k = 0, at = 0; at < n; k++, at += CHUNK) {
        size_t step = n - at < CHUNK ? n - at : CHUNK;
        if (fresh)
            populate_range(dest + at, step);
        memcpy(dest + at, b->chunks[k], step);
    }
}

/* The same, the second half by a short-lived thread (all signals blocked) on the other CPU, when dest is large
   enough for that to pay (measured: 2-5% of a whole run() from 4 to 16 MiB; the producer has exited by then, so
   the other CPU is usually free); in this thread alone when the thread cannot start. */
struct copy_job {
    const struct pyproc_outbuf *b;
    char *dest;
    size_t from_chunk, n;  /* bytes n of the output, from chunk from_chunk on */
    int fresh;
};

static void *copy_main(void *arg)
{
    struct copy_job *job = arg;
    for (size_t k = job->from_chunk, at = 0; at < job->n; k++, at += CHUNK) {
        size_t step = job->n - at < CHUNK ? job->n - at : CHUNK;
        if (job->fresh)
            populate_range(job->dest + at, step);
        memcpy(job->dest + at, job->b->chunks[k], step);
    }
    return NULL;
}

static void chunks_copy_parallel(const struct pyproc_outbuf *b, char *dest, size_t n, int fresh)
{
    size_t half_chunks = (n / CHUNK) / 2, first = half_chunks * CHUNK;
    if (n < PARALLEL_COPY_MIN || !half_chunks) {
        chunks_copy(b, dest, n, fresh);
        return;
    }
    struct copy_job job = {b, dest + first, half_chunks, n - first, fresh};
    pthread_t thread;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int err = pthread_create(&thread, NULL, copy_main, &job);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    chunks_copy(b, dest, err ? n : first, fresh);
    if (!err)
        pthread_join(thread, NULL);
}

/* ---- map mode ---------------------------------------------------------------------------------------------- */

/* Makes room for at least `need` bytes from data in b's mapping (mapped now, or grown by mremap). */
static int outbuf_reserve(struct pyproc_outbuf *b, size_t need, size_t lead)
{
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : CHUNK;
    while (cap < need) {
        if (cap > SIZE_MAX / 2)
            return ENOMEM;
        cap *= 2;
    }
    size_t page = page_size();
    lead %= page;
    size_t map_size = round_up(lead + cap, page);
    char *base;
    struct helper *h = b->helper;
    if (h)
        pthread_mutex_lock(&h->lock);
    if (b->map_size) {
        base = mremap(b->base, b->map_size, map_size, MREMAP_MAYMOVE);
        if (base == MAP_FAILED) {
            int err = errno;
            if (h)
                pthread_mutex_unlock(&h->lock);
            return err;
        }
    } else {
        /* Leaving chunk mode: what the chunks hold is copied once into the mapping's first pages. */
        base = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED)
            return errno;
        if (b->len) {
            chunks_copy(b, base + lead, b->len, 1);
            b->populated = b->len;
        }
        chunks_release(b);
    }
    b->base = base;
    b->data = base + lead;
    b->map_size = map_size;
    b->cap = map_size - lead;
    if (h)
        pthread_mutex_unlock(&h->lock);
    return 0;
}

/* Faults in the mapping's pages up to `upto` bytes from data (see populate_range). */
static void populate(struct pyproc_outbuf *b, size_t upto)
{
    if (upto <= b->populated)
        return;
    char *from = b->data + b->populated, *to = b->data + upto, *end = b->base + b->map_size;
    if (to > end)
        to = end;
    if (to > from)
        populate_range(from, (size_t)(to - from));
    b->populated = upto;
}

/* ---- the helper: a thread that pays for the page faults of a big output on the other CPU ------------------ *
 * Fresh anonymous pages cost the kernel zeroing and accounting per 4 KiB, more than copying the pipe's data
 * into them.  While a big output streams in, a helper thread (all signals blocked, so they still interrupt the
 * pump) faults the buffer in ahead of the reads with MADV_POPULATE_WRITE.  It holds `lock` while it works on the
 * buffer; the reader takes it only to move the buffer (mremap).  It exists only inside one pyproc_pump_run call:
 * stopped and joined before that call returns. */

static void *helper_main(void *arg)
{
    struct helper *h = arg;
    struct pyproc_outbuf *b = h->b;
    pthread_mutex_lock(&h->lock);
    while (!__atomic_load_n(&h->stop, __ATOMIC_SEQ_CST)) {
        size_t target = __atomic_load_n(&h->target, __ATOMIC_SEQ_CST);
        if (target > b->cap)
            target = b->cap;
        if (b->populated >= target) {
            __atomic_store_n(&h->sleeping, 1, __ATOMIC_SEQ_CST);
            size_t again = __atomic_load_n(&h->target, __ATOMIC_SEQ_CST);
            if ((again > b->cap ? b->cap : again) <= b->populated && !__atomic_load_n(&h->stop, __ATOMIC_SEQ_CST))
                pthread_cond_wait(&h->wake, &h->lock);
            __atomic_store_n(&h->sleeping, 0, __ATOMIC_SEQ_CST);
            continue;
        }
        size_t upto = target - b->populated > POPULATE_STEP ? b->populated + POPULATE_STEP : target;
        populate(b, upto);
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

static void helper_poke(struct helper *h, size_t target)
{
    __atomic_store_n(&h->target, target, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&h->sleeping, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&h->lock);
        pthread_cond_signal(&h->wake);
        pthread_mutex_unlock(&h->lock);
    }
}

/* Starts b's helper (best effort: without one, the reads fault the pages in themselves). */
static void helper_start(struct pyproc_outbuf *b)
{
    struct helper *h = calloc(1, sizeof *h);
    if (!h)
        return;
    h->b = b;
    h->target = b->len + HELPER_AHEAD;
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->wake, NULL);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);  /* the helper inherits it: signals go to the pumping thread */
    int err = pthread_create(&h->thread, NULL, helper_main, h);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        pthread_cond_destroy(&h->wake);
        pthread_mutex_destroy(&h->lock);
        free(h);
        return;
    }
    b->helper = h;
}

static void helper_stop(struct pyproc_outbuf *b)
{
    struct helper *h = b->helper;
    if (!h)
        return;
    __atomic_store_n(&h->stop, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&h->lock);
    pthread_cond_signal(&h->wake);
    pthread_mutex_unlock(&h->lock);
    pthread_join(h->thread, NULL);
    pthread_cond_destroy(&h->wake);
    pthread_mutex_destroy(&h->lock);
    free(h);
    b->helper = NULL;
}

static void outbuf_free(struct pyproc_outbuf *b)
{
    helper_stop(b);
    if (b->map_size)
        munmap(b->base, b->map_size);
    chunks_release(b);
    memset(b, 0, sizeof *b);
}

/* ---- the pump ---------------------------------------------------------------------------------------------- */

void pyproc_pump_init(struct pyproc_pump *p)
{
    memset(p, 0, sizeof *p);
    p->in_fd = -1;
    p->out_fd[0] = p->out_fd[1] = -1;
    p->max_output = UINT64_MAX;
    p->deadline_ns = -1;
    p->chunk_max = PYPROC_OUT_CHUNK_MAX;
}

void pyproc_pump_setup(struct pyproc_pump *p, int in_fd, const char *in_data, size_t in_len, int out_fd0,
                       int out_fd1, uint64_t max_output, size_t lead, size_t chunk_max, int own_outputs)
{
    pyproc_pump_init(p);
    p->in_fd = in_fd;
    p->in_data = in_data;
    p->in_len = in_data ? in_len : 0;
    p->out_fd[0] = out_fd0;
    p->out_fd[1] = out_fd1;
    p->max_output = max_output;
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

static void close_input(struct pyproc_pump *p)
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
            close_input(p);
        } else {
            p->sigpipe_default = sigpipe_is_default();
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

/* Writes once; *ready = 0 when the pipe is (now) full. */
static int pump_write(struct pyproc_pump *p, int *ready)
{
    size_t left = p->in_len - p->in_pos;
    size_t chunk = left < WRITE_CHUNK ? left : WRITE_CHUNK;
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
            close_input(p);
            return 0;
        }
        return errno;
    }
    p->in_pos += (size_t)got;
    if (p->in_pos >= p->in_len)
        close_input(p);
    else if ((size_t)got < chunk)
        *ready = 0;
    return 0;
}

/* Output b flows into an enlarged pipe, in chunk mode (in map mode, naps were measured slower: 1 GiB capture). */
static int napping(const struct pyproc_outbuf *b)
{
    return b->big_pipe && !b->map_size;
}

/* Reads once from output i; *ready = 0 when the pipe is (now) empty. */
static int pump_read(struct pyproc_pump *p, int i, int *ready)
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
            int err = chunks_add(b);
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
            int err = outbuf_reserve(b, need, p->lead);
            if (err)
                return err;
        }
        at = b->data + b->len;
        room = b->cap - b->len;
        if (!b->helper && b->len >= HELPER_AFTER)
            helper_start(b);
        if (b->helper) {
            if (room > HELPER_READ)
                room = HELPER_READ;
            helper_poke(b->helper, b->len + HELPER_AHEAD);
        } else {
            /* A big buffer is faulted in a whole stretch at a time, by one call instead of a fault per page, once
               less than MIN_FREE of it is left ahead of the reads: writers often send 4 KiB at a time, and one
               madvise per small read cost more than the faults it saved.  Reads stay inside the populated part,
               so the pages were just zeroed (still in the cache) when the pipe's data is copied in. */
            if (b->populated < b->len + MIN_FREE)
                populate(b, b->len + POPULATE_STEP);
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
                int err = pump_read(p, i, &out_ready[i]);
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
    helper_stop(&p->out[0]);
    helper_stop(&p->out[1]);
    return err;
}

int pyproc_pump_take(struct pyproc_pump *p, int stream, char *dest, size_t n)
{
    if (stream < 0 || stream > 1)
        return EINVAL;
    struct pyproc_outbuf *b = &p->out[stream];
    if (n > b->len)
        return EINVAL;
    if (!b->map_size) {
        /* glibc's malloc maps anything this large afresh (its largest mmap threshold) */
        chunks_copy_parallel(b, dest, n, n >= (size_t)PYPROC_OUT_CHUNK_MAX);
        outbuf_free(b);
        return 0;
    }
    size_t page = page_size();
    uintptr_t src = (uintptr_t)b->data, dst = (uintptr_t)dest;
    size_t head = (page - src % page) % page;
    if (src % page == dst % page && n >= head + 16 * page) {
        size_t moved = (n - head) / page * page;
        memcpy(dest, b->data, head);
        void *to = mremap(b->data + head, moved, moved, MREMAP_MAYMOVE | MREMAP_FIXED, dest + head);
        if (to != MAP_FAILED) {
            memcpy(dest + head + moved, b->data + head + moved, n - head - moved);
            /* Unmap what is left of the buffer around the moved pages (never the hole: another thread may have
               mapped something there meanwhile). */
            char *hole = b->data + head, *end = b->base + b->map_size;
            if (hole > b->base)
                munmap(b->base, (size_t)(hole - b->base));
            if (hole + moved < end)
                munmap(hole + moved, (size_t)(end - (hole + moved)));
            memset(b, 0, sizeof *b);
            return 0;
        }
    }
    /* Copied: in steps whose destination pages are faulted in at once first (dest is fresh memory). */
    for (size_t at = 0; at < n; at += POPULATE_STEP) {
        size_t step = n - at < POPULATE_STEP ? n - at : POPULATE_STEP;
        populate_range(dest + at, step);
        memcpy(dest + at, b->data + at, step);
    }
    outbuf_free(b);
    return 0;
}

int pyproc_pump_copy(const struct pyproc_pump *p, int stream, char *dest, size_t n)
{
    if (stream < 0 || stream > 1)
        return EINVAL;
    const struct pyproc_outbuf *b = &p->out[stream];
    if (n > b->len)
        return EINVAL;
    if (b->map_size)
        memcpy(dest, b->data, n);
    else
        chunks_copy(b, dest, n, 0);
    return 0;
}

void pyproc_pump_release(struct pyproc_pump *p)
{
    close_input(p);
    for (int i = 0; i < 2; i++) {
        outbuf_free(&p->out[i]);
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
