/*
 * pyproc.h - the only exported declarations of pyproc's C core (prefix pyproc_).
 *
 * Conventions (see DESIGN.md): every function returns 0 on success or a positive errno, and gives its results
 * through out-parameters; nothing here ever returns -1 + errno.
 *
 * pyproc/_build.py feeds cffi's cdef with the text between the "cdef-begin" and "cdef-end" markers below, so that
 * part must stay in the C subset cffi parses (no #include, no macros with arguments, no kernel types).  A line
 * "cdef-const NAME" inside a comment asks the builder to add "#define NAME ..." to the cdef: the compiler fills in
 * the kernel's value, nobody types it by hand.
 */
#ifndef PYPROC_H
#define PYPROC_H

#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>

/* cdef-begin */

/* ---- build --------------------------------------------------------------------------------------------------- */

/* The package version this module was compiled from (the Python loader refuses a stale build). */
const char *pyproc_version(void);

/* ---- spawn.c: engines and the child side ----------------------------------------------------------------------- */

#define PYPROC_ENGINE_CLONE 1
#define PYPROC_ENGINE_VFORK 2
#define PYPROC_ENGINE_POSIX_SPAWN 3
#define PYPROC_ENGINE_FORK 4

/* Where a spawn failed: the parent's own steps, or a step of the child (reported back to the parent). */
#define PYPROC_STAGE_NONE 0
#define PYPROC_STAGE_PARENT 1
#define PYPROC_STAGE_SIGNALS 2
#define PYPROC_STAGE_DUP2 3
#define PYPROC_STAGE_CLOSE_FDS 4
#define PYPROC_STAGE_SETSID 5
#define PYPROC_STAGE_SETPGID 6
#define PYPROC_STAGE_RLIMIT 7
#define PYPROC_STAGE_PDEATHSIG 8
#define PYPROC_STAGE_NO_NEW_PRIVS 9
#define PYPROC_STAGE_CHDIR 10
#define PYPROC_STAGE_SETGROUPS 11
#define PYPROC_STAGE_SETGID 12
#define PYPROC_STAGE_SETUID 13
#define PYPROC_STAGE_BEFORE_EXEC 14
#define PYPROC_STAGE_SIGMASK 15
#define PYPROC_STAGE_EXEC 16
#define PYPROC_STAGE_POSIX_SPAWN 17

/* Fallbacks that tests can force, to exercise the code older kernels take (bit mask). */
#define PYPROC_FORCE_NO_CLONE3 1
#define PYPROC_FORCE_NO_CLONE_PIDFD 2
#define PYPROC_FORCE_NO_CLOSE_RANGE 4
#define PYPROC_FORCE_NO_PROC_FD 8

/* One step of the child's fd plan: child fd `target` becomes a copy of parent fd `source` (target == source:
   the fd is kept and its close-on-exec flag cleared).  move_first: `source` is also the target of another step,
   so it is first copied above every target (the parent computes this). */
struct pyproc_fd_action {
    int target;
    int source;
    int move_first;
};

struct pyproc_rlimit {
    int resource;
    uint64_t soft;
    uint64_t hard;
};

/* Everything the child needs, built by the parent before the child exists. */
struct pyproc_spawn_request {
    const char *const *exec_paths;   /* files to try in order (the parent did the PATH search) */
    int n_exec_paths;
    char *const *argv;               /* NULL-terminated */
    char *const *envp;               /* NULL-terminated, or NULL for the parent's environ */
    const struct pyproc_fd_action *fd_actions;
    int n_fd_actions;
    const int *keep_fds;             /* ascending: the fds that stay open when close_fds (0, 1, 2, every target) */
    int n_keep_fds;
    int close_fds;
    const char *cwd;                 /* NULL: unchanged */
    int new_session;
    int process_group;               /* -1: unchanged; 0: new group led by the child; > 0: join that group */
    int umask;                       /* -1: unchanged */
    const struct pyproc_rlimit *rlimits;
    int n_rlimits;
    int pdeathsig;                   /* 0: none */
    int no_new_privs;
    int restore_signals;             /* SIGPIPE and SIGXFSZ back to SIG_DFL */
    int set_sigmask;                 /* 0: the parent's mask; 1: exactly sigmask_signals blocked */
    const int *sigmask_signals;
    int n_sigmask_signals;
    int set_gid;
    uint32_t gid;
    int set_groups;
    const uint32_t *groups;
    int n_groups;
    int set_uid;
    uint32_t uid;
    /* Runs in the child after the ids are set and before fds are closed; nonzero return = failure with that
       errno.  Only with pyproc_exec_child() after a fork done by the caller (e.g. Python's preexec_fn). */
    int (*before_exec)(void *arg);
    void *before_exec_arg;
};

struct pyproc_spawn_result {
    int pid;          /* > 0 once a child existed (already reaped if the spawn failed) */
    int pidfd;        /* -1 when the kernel gave none */
    int fail_stage;   /* PYPROC_STAGE_* of the failure, NONE on success */
    int fail_index;   /* which fd action / rlimit / exec path failed */
    int fail_errno;
};

/* Starts req with the engine; on success res->pid runs the new program.  Returns 0 or the errno of the failure,
   with res->fail_stage / fail_index saying where; a child that failed before exec has been reaped. */
int pyproc_spawn(const struct pyproc_spawn_request *req, int engine, struct pyproc_spawn_result *res);

/* The child side alone, for a caller that forked by itself: never returns.  Failures are written to error_fd as
   one record of two int32 (stage | index << 8, errno), then _exit(127). */
void pyproc_exec_child(const struct pyproc_spawn_request *req, int error_fd);

/* Decodes a record written by pyproc_exec_child; *got = 0 when error_fd reached EOF with nothing (exec worked). */
int pyproc_read_child_error(int error_fd, int *got, struct pyproc_spawn_result *res);

/* Forces fallbacks (PYPROC_FORCE_* bits) for every later spawn in this process: for tests. */
void pyproc_set_forced_fallbacks(int mask);
int pyproc_get_forced_fallbacks(void);

/* ---- wait.c: reaping, status, rusage, signals to a child ------------------------------------------------------- */

struct pyproc_rusage {
    int64_t utime_ns;
    int64_t stime_ns;
    int64_t maxrss_kib;
    int64_t minflt;
    int64_t majflt;
    int64_t inblock;
    int64_t oublock;
    int64_t nvcsw;
    int64_t nivcsw;
};

/* Reaps pid with wait4 (rusage with the status).  nohang: *reaped = 0 while it runs.  EINTR is returned, not
   retried, so that the caller can run its signal handlers. */
int pyproc_wait(int pid, int nohang, int *reaped, int *wait_status, struct pyproc_rusage *ru);

/* Waits until the child behind pidfd has exited, at most timeout_ns (< 0: no limit); *exited = 0 on timeout.
   EINTR is returned with *remaining_ns set so that the caller can retry after its handlers ran. */
int pyproc_wait_pidfd(int pidfd, int64_t timeout_ns, int *exited, int64_t *remaining_ns);

/* The first of n pidfds whose child has exited, within timeout_ns (< 0: no limit); *index = -1 on timeout. */
int pyproc_wait_any(const int *pidfds, int n, int64_t timeout_ns, int *index, int64_t *remaining_ns);

/* Sends sig through the pidfd when pidfd >= 0 (a recycled pid is never hit), else kill(pid). */
int pyproc_send_signal(int pid, int pidfd, int sig);

/* Opens a pidfd for pid (-1 in *pidfd when the kernel has none). */
int pyproc_pidfd_open(int pid, int *pidfd);

/* ---- io.c: full-buffer loops, the poll pump, pipelines (issue 3) ------------------------------------------------ */

/* Reads until n bytes are in buf or end of file; *done counts what arrived (also when an error is returned).
   Partial reads are continued and EAGAIN (a non-blocking fd) is waited out with poll.  EINTR is returned with
   *done kept, so that the caller can run its signal handlers and call again for the rest. */
int pyproc_read_full(int fd, char *buf, size_t n, size_t *done);

/* Writes all n bytes of buf the same way; EPIPE is returned and never raises SIGPIPE in the calling thread. */
int pyproc_write_full(int fd, const char *buf, size_t n, size_t *done);

/* How a pump ended (pyproc_pump.outcome). */
#define PYPROC_PUMP_RUNNING 0
#define PYPROC_PUMP_DONE 1
#define PYPROC_PUMP_TIMEOUT 2
#define PYPROC_PUMP_LIMIT 3

/* One output stream: a buffer that grows by mremap (no copy of what was read) once it is large. */
struct pyproc_outbuf {
    char *base;       /* the allocation: malloc'd while small, an anonymous mapping once large */
    char *data;       /* where the output starts: base, or base + lead in a mapping */
    size_t len;
    size_t cap;       /* bytes available from data */
    size_t map_size;  /* size of the mapping; 0 while malloc'd */
    int boosted;      /* the pipe's capacity was raised */
    size_t populated; /* bytes from data already faulted in (MADV_POPULATE_WRITE) */
    void *helper;     /* the thread that faults pages in ahead of the reads, while pyproc_pump_run runs */
};

/* The state of run()/communicate()'s pump; it survives an EINTR return, so the caller can resume.
   DONE: every output reached EOF and the input was written (or the child stopped reading: in_broken);
   TIMEOUT: the deadline passed first; LIMIT: output limit_stream went past max_output. */
struct pyproc_pump {
    int in_fd;              /* write end of the child's stdin, owned by the pump (closed when done); -1: none */
    const char *in_data;
    size_t in_len;
    size_t in_pos;
    int in_broken;          /* the child closed its stdin before taking everything: the rest was dropped */
    int out_fd[2];          /* read ends of the child's stdout and stderr (never closed by the pump); -1: none */
    int out_eof[2];
    struct pyproc_outbuf out[2];
    uint64_t max_output;    /* per stream; 0xffffffffffffffff: no limit */
    int64_t deadline_ns;    /* CLOCK_MONOTONIC; < 0: none */
    size_t lead;            /* offset in a page at which large buffers start their data (see pyproc_pump_take) */
    int outcome;            /* PYPROC_PUMP_* */
    int limit_stream;       /* 0 or 1 when outcome is LIMIT */
    int started;
    int sigpipe_default;    /* SIGPIPE is not ignored in this process: block it around writes */
};

/* Prepares a pump with nothing in it (fds -1, no limit, no deadline). */
void pyproc_pump_init(struct pyproc_pump *p);

/* Moves data until the outcome is decided: input written as the pipe accepts it, outputs read as they come, all
   polled together (never blocked on one while another fills).  Returns 0 with p->outcome set, EINTR to be called
   again once the caller's signal handlers ran (the state is kept), or the errno of a failure.
   drain: never wait; read only what the pipes already hold (after the child was killed), then return. */
int pyproc_pump_run(struct pyproc_pump *p, int drain);

/* Copies the first n bytes (n <= len) of output `stream` into dest, then frees that buffer.  When dest and the
   buffer have the same offset in a page, whole pages are moved by mremap instead of copied: dest must be
   writable anonymous memory of this process that nothing uses yet (a freshly allocated object). */
int pyproc_pump_take(struct pyproc_pump *p, int stream, char *dest, size_t n);

/* Frees the buffers and closes the input fd if still open; safe to call twice. */
void pyproc_pump_release(struct pyproc_pump *p);

/* CLOCK_MONOTONIC now, in ns (the clock of deadline_ns). */
int64_t pyproc_monotonic_ns(void);

/* ---- sigpipe.c: the async-signal-safe self-pipe (issue 6) ------------------------------------------------------- */

/* ---- cow.c: copy-on-write and fork-cost measurement (issue 4) --------------------------------------------------- */

/* cdef-end */

#endif /* PYPROC_H */
