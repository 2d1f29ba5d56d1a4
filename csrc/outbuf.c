/*
 * outbuf.c - the pump's output buffers: the chunk pool, map mode (an anonymous mapping grown by mremap), the helper
 * thread that faults a big buffer in ahead of the reads, and the handover of an output to Python
 * (pyproc_pump_take, pyproc_pump_copy).
 *
 * The pump that fills the buffers (io.c) reaches them through outbuf.h, an internal header (not pyproc.h, so not
 * cffi's cdef); it reads the fields of struct pyproc_outbuf itself.  What can fail returns 0 or a positive errno.
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
 */
#include "outbuf.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#define POOL_KEEP ((size_t)PYPROC_OUT_CHUNK_MAX / PYPROC_OUT_CHUNK)  /* most free chunks the pool keeps */
#define PARALLEL_COPY_MIN ((size_t)16 << 20) /* results this large are copied out of the chunks by two threads */

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
int pyproc__chunks_add(struct pyproc_outbuf *b)
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
   enough for that to pay (the producer has exited by then, so the other CPU is usually free); in this thread alone
   when the thread cannot start.  Measured with run() polling (issue 19): 3-7% of a whole run() at 16 and 24 MiB in
   a fresh process; from 2 to 8 MiB the thread's start and the other CPU's wake-up cost more than they saved (one
   copy was 1-5% faster in 10 of 12 interleaved series). */
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
int pyproc__outbuf_reserve(struct pyproc_outbuf *b, size_t need, size_t lead)
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
void pyproc__populate(struct pyproc_outbuf *b, size_t upto)
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
        pyproc__populate(b, upto);
    }
    pthread_mutex_unlock(&h->lock);
    return NULL;
}

void pyproc__helper_poke(struct helper *h, size_t target)
{
    __atomic_store_n(&h->target, target, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&h->sleeping, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&h->lock);
        pthread_cond_signal(&h->wake);
        pthread_mutex_unlock(&h->lock);
    }
}

/* Starts b's helper (best effort: without one, the reads fault the pages in themselves). */
void pyproc__helper_start(struct pyproc_outbuf *b)
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

void pyproc__helper_stop(struct pyproc_outbuf *b)
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

void pyproc__outbuf_free(struct pyproc_outbuf *b)
{
    pyproc__helper_stop(b);
    if (b->map_size)
        munmap(b->base, b->map_size);
    chunks_release(b);
    memset(b, 0, sizeof *b);
}

/* ---- handing an output over ------------------------------------------------------------------------------ */

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
        pyproc__outbuf_free(b);
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
    pyproc__outbuf_free(b);
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
