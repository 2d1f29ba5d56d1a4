/*
 * outbuf.h - what the pump (io.c) uses of the output buffers (outbuf.c).  Internal: not part of pyproc.h, so not of
 * cffi's cdef, and not exported from the module (hidden visibility).  struct pyproc_outbuf itself is in pyproc.h,
 * since struct pyproc_pump holds two.
 */
#ifndef PYPROC_OUTBUF_H
#define PYPROC_OUTBUF_H

#include "pyproc.h"

#ifndef PYPROC_INTERNAL
#define PYPROC_INTERNAL __attribute__((visibility("hidden"))) /* shared between files of csrc/, not exported */
#endif

#define CHUNK ((size_t)PYPROC_OUT_CHUNK)
#define POPULATE_STEP ((size_t)256 << 10)    /* most bytes a read into a big buffer asks for */
#define HELPER_AHEAD ((size_t)16 << 20)      /* how far ahead of the reads it keeps the buffer faulted in */

struct helper; /* the thread that faults a big buffer in ahead of the reads (pyproc_outbuf.helper) */

/* Appends one chunk to b (chunk mode). */
PYPROC_INTERNAL int pyproc__chunks_add(struct pyproc_outbuf *b);
/* Makes room for at least `need` bytes from data in b's mapping (mapped now, or grown by mremap); leaving chunk mode,
   what the chunks hold is copied into it. */
PYPROC_INTERNAL int pyproc__outbuf_reserve(struct pyproc_outbuf *b, size_t need, size_t lead);
/* Faults in the mapping's pages up to `upto` bytes from data (one MADV_POPULATE_WRITE). */
PYPROC_INTERNAL void pyproc__populate(struct pyproc_outbuf *b, size_t upto);
/* Starts b's helper (best effort: without one, b->helper stays NULL and the reads fault the pages in themselves). */
PYPROC_INTERNAL void pyproc__helper_start(struct pyproc_outbuf *b);
/* Asks the helper to keep the buffer faulted in up to `target` bytes from data. */
PYPROC_INTERNAL void pyproc__helper_poke(struct helper *h, size_t target);
/* Stops and joins b's helper, if any (before pyproc_pump_run returns). */
PYPROC_INTERNAL void pyproc__helper_stop(struct pyproc_outbuf *b);
/* Frees b (helper, mapping, chunks back to the pool) and leaves it empty. */
PYPROC_INTERNAL void pyproc__outbuf_free(struct pyproc_outbuf *b);

#endif
