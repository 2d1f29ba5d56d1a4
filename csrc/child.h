/*
 * child.h - what the parent side (spawn.c) uses of the child side (child.c).  Internal: not part of pyproc.h, so
 * not of cffi's cdef, and not exported from the module (hidden visibility).
 */
#ifndef PYPROC_CHILD_H
#define PYPROC_CHILD_H

#include "pyproc.h"

#ifndef PYPROC_INTERNAL
#define PYPROC_INTERNAL __attribute__((visibility("hidden"))) /* shared between files of csrc/, not exported */
#endif

#define KERNEL_SIGSET_SIZE (_NSIG / 8)

/* Everything the child needs, prepared by the parent (the child allocates nothing). */
struct child_ctx {
    const struct pyproc_spawn_request *req;
    sigset_t exec_mask;                /* the mask the new program starts with */
    int keep_mask;                     /* the child already has exec_mask (it inherited it): no sigprocmask */
    int reset_handlers;                /* caught signals -> SIG_DFL (the kernel did it with CLONE_CLEAR_SIGHAND) */
    int error_fd;                      /* >= 0: report failures to this pipe; < 0: into *shared */
    int parent_pid;
    int *moved_sources;                /* scratch, one per fd action, allocated by the parent */
    struct pyproc_spawn_result *shared;
};

/* The whole child side (DESIGN.md's order), ending in exec or _exit(127): never returns.  Its argument is a
   struct child_ctx *; the signature is clone(2)'s.  Runs only in a child.  noreturn: so that the parent's side,
   compiled apart, still knows that nothing after the call runs (after vfork it would run on the parent's frame). */
PYPROC_INTERNAL __attribute__((noreturn)) int pyproc__child_main(void *arg);
/* Is fd one the child keeps?  keep is ascending; extra is one more fd (the error pipe) or -1.  (The parent uses it
   for posix_spawn's close list.) */
PYPROC_INTERNAL int pyproc__child_is_kept(const int *keep, int n, int extra, int fd);
/* The mask the new program starts with: the request's, else parent_mask (which may be NULL when the child keeps
   the parent's mask: *out is then left unused).  0 or EINVAL. */
PYPROC_INTERNAL int pyproc__build_exec_mask(const struct pyproc_spawn_request *r, const sigset_t *parent_mask,
                                            sigset_t *out);

/* write() until all of buf is written, EINTR retried; 0, or -1 with errno.  Async-signal-safe: for a child's
   report to its parent (here, and cow.c's measuring child). */
PYPROC_INTERNAL int pyproc__child_write_all(int fd, const void *buf, size_t len);

#endif
