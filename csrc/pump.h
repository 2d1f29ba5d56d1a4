/*
 * pump.h - what the job pool (pool.c) uses of the pump (io.c): the single steps pyproc_pump_run repeats, so that
 * one epoll loop can drive the pumps of many children.  Internal: not part of pyproc.h, so not of cffi's cdef, and
 * not exported from the module (hidden visibility).
 */
#ifndef PYPROC_PUMP_H
#define PYPROC_PUMP_H

#include "pyproc.h"

#ifndef PYPROC_INTERNAL
#define PYPROC_INTERNAL __attribute__((visibility("hidden"))) /* shared between files of csrc/, not exported */
#endif

/* Is SIGPIPE's disposition something other than "ignore"?  Then writes to a pipe block SIGPIPE around them
   (pyproc_pump.sigpipe_default). */
PYPROC_INTERNAL int pyproc__sigpipe_is_default(void);

/* One write of the input to p->in_fd (non-blocking).  *ready = 0 when the pipe is (now) full; *finished = 1 when the
   input is all written or the child closed its stdin (in_broken: the rest is dropped): the caller then closes the
   fd (pyproc__pump_close_input).  EINTR is returned, not retried. */
PYPROC_INTERNAL int pyproc__pump_write(struct pyproc_pump *p, int *ready, int *finished);

/* One read from output i into its buffer.  *ready = 0 when the pipe is (now) empty; end of file sets
   p->out_eof[i].  The pump's own loop needs a non-blocking fd; a caller that reads once per readiness event does
   not. */
PYPROC_INTERNAL int pyproc__pump_read(struct pyproc_pump *p, int i, int *ready);

/* Closes p->in_fd if open (the child sees end of file). */
PYPROC_INTERNAL void pyproc__pump_close_input(struct pyproc_pump *p);

#endif
