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

#include "glibc_compat.h" /* binds glibc symbols to versions old glibc has (not part of the cdef) */

/* cdef-begin */

/* ---- build --------------------------------------------------------------------------------------------------- */

/* The package version this module was compiled from (the Python loader refuses a stale build). */
const char *pyproc_version(void);

/* ---- spawn.c: engines; child.c: the child side ----------------------------------------------------------------- */

#define PYPROC_ENGINE_CLONE 1
#define PYPROC_ENGINE_VFORK 2
#define PYPROC_ENGINE_POSIX_SPAWN 3
#define PYPROC_ENGINE_FORK 4

/* Where a spawn failed: the parent's own steps, or a step of the child (reported back to the parent). */
#define PYPROC_STAGE_NONE 0
#define PYPROC_STAGE_PARENT 1
#define PYPROC_STAGE_SIGNALS 2
#define PYPROC_STAGE_DUP2 3
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

/* pyproc_spawn_piped: which of the child's standard fds get a new pipe (bit i: fd i), and stderr joined to
   stdout (the child's fd 2 becomes whatever its fd 1 is). */
#define PYPROC_PIPE_STDIN 1
#define PYPROC_PIPE_STDOUT 2
#define PYPROC_PIPE_STDERR 4
#define PYPROC_STDERR_TO_STDOUT 8

/* Fallbacks that tests can force, to exercise the code older kernels take (bit mask). */
#define PYPROC_FORCE_NO_CLONE3 1
#define PYPROC_FORCE_NO_CLONE_PIDFD 2
#define PYPROC_FORCE_NO_CLOSE_RANGE 4
#define PYPROC_FORCE_NO_PROC_FD 8
#define PYPROC_FORCE_NO_SPAWN_CHDIR 16     /* as if glibc lacked posix_spawn_file_actions_addchdir_np */
#define PYPROC_FORCE_NO_SPAWN_CLOSEFROM 32 /* as if glibc lacked posix_spawn_file_actions_addclosefrom_np */

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
    int pidfd;        /* -1 when the kernel gave none, or when the child was already gone (reaped by the kernel
                         because SIGCHLD is ignored) before the engine could open one */
    int fail_stage;   /* PYPROC_STAGE_* of the failure, NONE on success */
    int fail_index;   /* which fd action / rlimit / exec path failed */
    int fail_errno;
};

/* Starts req with the engine; on success res->pid runs the new program.  Returns 0 or the errno of the failure,
   with res->fail_stage / fail_index saying where; a child that failed before exec has been reaped. */
int pyproc_spawn(const struct pyproc_spawn_request *req, int engine, struct pyproc_spawn_result *res);

/* Resources a child used (wait4's rusage; times in ns, maxrss in KiB). */
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

/* One child as the Python layer holds it: how it started, and once reaped how it ended (one allocation).
   pidfd_uses guards the child's pidfd when several threads use it (see pyproc_child_hold_pidfd): 2 per thread
   that holds it, plus 1 once it is retired (the child reaped); zero-initialized. */
struct pyproc_child {
    struct pyproc_spawn_result spawn;
    int reaped;          /* 0: still running (nohang) */
    int wait_status;     /* wait4's status word */
    int returncode;      /* as subprocess: the exit code, or minus the signal that killed it */
    struct pyproc_rusage rusage;
    int pidfd_uses;
};

/* pyproc_spawn into child->spawn.  With args != NULL the argv is argc NUL-terminated strings packed back to back
   in args (args_len bytes, the last one's NUL at args[args_len]: a Python bytes object passes as is, no copy) and
   req->argv is not used; req->exec_paths NULL then means argv[0].  With args NULL, req->argv is used. */
int pyproc_spawn_child(const struct pyproc_spawn_request *req, const char *args, size_t args_len, int argc,
                       int engine, struct pyproc_child *child);

/* pyproc_spawn_child with pipes made here for the standard fds in `pipes` (PYPROC_PIPE_* | PYPROC_STDERR_TO_STDOUT).
   req's own fd actions are kept (EINVAL if one targets a piped fd); its keep_fds must hold 0, 1 and 2.  On
   success parent_ends[i] is the parent's end of fd i's pipe (-1 for fds without one) and the child's ends are
   closed; on failure nothing stays open.  A failed dup2 names its index in the merged plan: req's actions first,
   then one per pipe in the order stdin, stdout, stderr, then stderr joined to stdout. */
int pyproc_spawn_piped(const struct pyproc_spawn_request *req, const char *args, size_t args_len, int argc,
                       int engine, int pipes, struct pyproc_child *child, int parent_ends[3]);

/* The child side alone, for a caller that forked by itself: never returns.  Failures are written to error_fd as
   one record of two int32 (stage | index << 8, errno), then _exit(127).  parent_pid: the pid of the process that
   forked, taken before the fork (getpid() there): the pdeathsig check compares the child's parent with it, since a
   parent that died before the child's prctl sends no signal. */
void pyproc_exec_child(const struct pyproc_spawn_request *req, int error_fd, int parent_pid);

/* Decodes a record written by pyproc_exec_child; *got = 0 when error_fd reached EOF with nothing (exec worked). */
int pyproc_read_child_error(int error_fd, int *got, struct pyproc_spawn_result *res);

/* Forces fallbacks (PYPROC_FORCE_* bits) for every later spawn in this process: for tests. */
void pyproc_set_forced_fallbacks(int mask);
int pyproc_get_forced_fallbacks(void);

/* For tests: the clone engines size the child stacks they map from now on as if the system page size were
   page_size (a power of two, at least the real one); 0 goes back to sysconf(_SC_PAGESIZE).  Each thread keeps its
   stack once mapped, so a forced size shows in threads that have not spawned yet. */
void pyproc_set_forced_page_size(size_t page_size);

/* ---- glibc_compat.c: posix_spawn features newer than the wheels' glibc floor ----------------------------------- */

#define PYPROC_POSIX_SPAWN_CHDIR 1     /* posix_spawn_file_actions_addchdir_np (glibc 2.29): cwd */
#define PYPROC_POSIX_SPAWN_CLOSEFROM 2 /* posix_spawn_file_actions_addclosefrom_np (glibc 2.34): close_fds */

/* Which of them the running C library has (PYPROC_POSIX_SPAWN_* bits; a forced PYPROC_FORCE_NO_SPAWN_* reads as
   absent).  The posix_spawn engine returns ENOSYS for a request that needs a missing one. */
int pyproc_posix_spawn_features(void);

/* ---- wait.c: reaping, status, rusage, signals to a child ------------------------------------------------------- */

/* Reaps pid with wait4 into child (status, returncode and rusage together).  nohang: child->reaped = 0 while it
   runs.  EINTR is returned, not retried, so that the caller can run its signal handlers.  Once the child is
   reaped, or wait4 says ECHILD (someone else reaped it: SIGCHLD ignored, a waitpid(-1)), pidfd (the child's, or
   -1) is retired: closed now, or by the last pyproc_child_release_pidfd of a thread that holds it.  Two threads must
   not reap one child at the same time (the Python layer holds the Process's lock). */
int pyproc_child_reap(struct pyproc_child *child, int pid, int pidfd, int nohang);

/* A thread that passes a child's pidfd to a call that may block, or may run while another thread reaps the child,
   holds it first: 0, and the fd stays open (its number cannot be reused) until the matching release; ESRCH once the
   child was reaped (the pidfd may be closed: do not use it).  Lock-free; no system call. */
int pyproc_child_hold_pidfd(struct pyproc_child *child);
void pyproc_child_release_pidfd(struct pyproc_child *child, int pidfd);

/* pyproc_wait_pidfd on child's pidfd, held for the call; a child reaped meanwhile (the hold refused) has exited. */
int pyproc_child_wait_pidfd(struct pyproc_child *child, int pidfd, int64_t timeout_ns, int *exited,
                            int64_t *remaining_ns);

/* pyproc_send_signal for child, its pidfd held for the call: ESRCH, and nothing sent, once it was reaped. */
int pyproc_child_send_signal(struct pyproc_child *child, int pid, int pidfd, int sig);

/* Waits until the child behind pidfd has exited, at most timeout_ns (< 0: no limit); *exited = 0 on timeout.
   EINTR is returned with *remaining_ns set so that the caller can retry after its handlers ran. */
int pyproc_wait_pidfd(int pidfd, int64_t timeout_ns, int *exited, int64_t *remaining_ns);

/* The first of n pidfds whose child has exited, within timeout_ns (< 0: no limit); *index = -1 on timeout. */
int pyproc_wait_any(const int *pidfds, int n, int64_t timeout_ns, int *index, int64_t *remaining_ns);

/* Sends sig through the pidfd when pidfd >= 0 (a recycled pid is never hit).  pidfd < 0: pid must be an unreaped
   child of this process; it gets a pidfd for the call, unless the kernel has none (kill(pid), checked first with
   waitid that pid is still an unreaped child).  ESRCH: the child is gone (exited, or reaped: nothing was sent). */
int pyproc_send_signal(int pid, int pidfd, int sig);

/* Opens a pidfd for pid, an unreaped child of this process.  *pidfd = -1 when the kernel has no pidfds, and when
   the child is gone already (reaped by the kernel because SIGCHLD is ignored, or by someone's waitpid): its pid
   may belong to another process by now, so no pidfd is opened for it (checked with waitid after the open). */
int pyproc_pidfd_open(int pid, int *pidfd);

/* ---- io.c: full-buffer loops, the poll pump, pipelines; outbuf.c: its output buffers (issue 3) ------------------ */

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

/* Bytes per chunk of an output buffer in chunk mode (see struct pyproc_outbuf). */
#define PYPROC_OUT_CHUNK 262144
/* The default crossover from chunk mode to map mode (pyproc_pump.chunk_max): glibc's largest mmap threshold,
   above which a result bytes object is always a fresh mapping that pages can be moved into. */
#define PYPROC_OUT_CHUNK_MAX 33554432

/* One output stream.  Chunk mode (up to a crossover): PYPROC_OUT_CHUNK-byte chunks, filled in order, taken from
   and given back to a process-wide pool, so that repeated runs read into memory that is already faulted in.
   Past the crossover, map mode: one anonymous mapping that grows by mremap (no copy of what was read), whose
   pages pyproc_pump_take can move into the result. */
struct pyproc_outbuf {
    char *base;       /* map mode: the mapping; chunk mode: NULL */
    char *data;       /* where the output starts: base + lead in map mode, the first chunk in chunk mode */
    size_t len;
    size_t cap;       /* map mode: bytes available from data */
    size_t map_size;  /* size of the mapping; 0 in chunk mode */
    int boosted;      /* the pipe's capacity was raised (asked for) */
    size_t populated; /* map mode: bytes from data already faulted in (MADV_POPULATE_WRITE) */
    void *helper;     /* the thread that faults pages in ahead of the reads, while pyproc_pump_run runs */
    char **chunks;    /* chunk mode: the chunks (output byte k is chunks[k / PYPROC_OUT_CHUNK][k % ...]) */
    size_t nchunks;
    size_t chunk_slots;
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
    size_t chunk_max;       /* outputs stay in chunk mode below this many bytes (PYPROC_OUT_CHUNK_MAX) */
    int own_outputs;        /* release closes out_fd[] too (run(): the pump holds every pipe end) */
    int saved_flags[3];     /* while pyproc_pump_run runs: the file status flags of in_fd, out_fd[0], out_fd[1]
                               before it set O_NONBLOCK (-1: not changed), put back before it returns */
};

/* Prepares a pump with nothing moved yet and no deadline: the input (in_fd -1: none; in_data may be NULL when
   in_len is 0), the outputs (-1: none), max_output (UINT64_MAX: no limit), lead, chunk_max (PYPROC_OUT_CHUNK_MAX
   unless a test lowers it) and own_outputs. */
void pyproc_pump_setup(struct pyproc_pump *p, int in_fd, const char *in_data, size_t in_len, int out_fd0,
                       int out_fd1, uint64_t max_output, size_t lead, size_t chunk_max, int own_outputs);

/* Moves data until the outcome is decided: input written as the pipe accepts it, outputs read as they come, all
   polled together (never blocked on one while another fills).  Returns 0 with p->outcome set, EINTR to be called
   again once the caller's signal handlers ran (the state is kept), or the errno of a failure.
   drain: never wait; read only what the pipes already hold (after the child was killed), then return.
   The fds are non-blocking while it runs.  Without own_outputs they may share their open file descriptions with
   the caller's file objects (communicate() after a timeout, a Popen's .stdout), so each fd's flags are put back as
   they were whenever it returns, whatever the outcome; with own_outputs (pipes nobody else sees) O_NONBLOCK is set
   once and stays. */
int pyproc_pump_run(struct pyproc_pump *p, int drain);

/* Copies the first n bytes (n <= len) of output `stream` into dest, then frees that buffer.  When dest and the
   buffer have the same offset in a page, whole pages are moved by mremap instead of copied: dest must be
   writable anonymous memory of this process that nothing uses yet (a freshly allocated object). */
int pyproc_pump_take(struct pyproc_pump *p, int stream, char *dest, size_t n);

/* Copies the first n bytes (n <= len) of output `stream` into dest and keeps the buffer (a peek). */
int pyproc_pump_copy(const struct pyproc_pump *p, int stream, char *dest, size_t n);

/* Frees the buffers and closes the input fd if still open (and the output fds with own_outputs); safe to call
   twice. */
void pyproc_pump_release(struct pyproc_pump *p);

/* run()'s common ending in one call, once the outputs were taken: pyproc_pump_release, then the child reaped
   like pyproc_child_reap (blocking; EINTR returned, call again). */
int pyproc_pump_finish(struct pyproc_pump *p, struct pyproc_child *child, int pid, int pidfd);

/* CLOCK_MONOTONIC now, in ns (the clock of deadline_ns). */
int64_t pyproc_monotonic_ns(void);

/* ---- pool.c: many children at once, one epoll loop (run_many, issue 15) ---------------------------------------- */

/* A job's state (pyproc_pool_job.state). */
#define PYPROC_JOB_FREE 0
#define PYPROC_JOB_QUEUED 1     /* submitted, waiting for a free place among the `jobs` running */
#define PYPROC_JOB_RUNNING 2
#define PYPROC_JOB_DONE 3       /* in the pool's done list until pyproc_pool_recycle */

/* One job of a pool: what to start (pyproc_pool_submit), then how it went.  The pool owns its pipes and its pidfd;
   the caller owns req, the input and child, and keeps them alive until the job is recycled, cancelled or the pool
   closed.  Fields after `pump` are the pool's own bookkeeping. */
struct pyproc_pool_job {
    const struct pyproc_spawn_request *req;
    int argc;
    int engine;
    int pipes;               /* PYPROC_PIPE_* | PYPROC_STDERR_TO_STDOUT: made by the spawn (pyproc_spawn_piped) */
    int kill_group;          /* the child leads its own process group: kills reach the whole group */
    int64_t timeout_ns;      /* from the start; < 0: none */
    struct pyproc_child *child;  /* spawn result, then wait status and rusage */
    int state;               /* PYPROC_JOB_* */
    int error;               /* 0, or the errno of a failed start (child->spawn says where) or of the pool's work */
    int timed_out;           /* killed at its deadline; the pump holds what was read until then */
    int status_lost;         /* someone else reaped it (wait4 gave ECHILD: SIGCHLD ignored ...): no status */
    int64_t start_ns;        /* CLOCK_MONOTONIC before the spawn, and when it was done */
    int64_t end_ns;
    struct pyproc_pump pump; /* the pipes and the output read so far (pyproc_pump_take hands it over) */
    char *args;              /* the pool's copy of the packed argv (NULL: req->argv) */
    size_t args_len;
    size_t args_cap;
    int exited;              /* the child has exited (its pidfd said so), not yet reaped */
    int reaped;
    int armed;               /* which of its fds the epoll set may report (a bit per kind, see pool.c) */
    int64_t deadline_ns;     /* < 0: none */
    int64_t recheck_ns;      /* no pidfd to watch: when to look with wait4 again; < 0: not needed */
    int next;                /* the queue or the free list */
};

/* A pool: at most `jobs` children running, started from a FIFO of submitted jobs.  slots grows on demand; use
   slots[i] only between calls (a submit may move it).  done[0 .. n_done) are the jobs finished since the last
   pyproc_pool_recycle, in the order they finished. */
struct pyproc_pool {
    int epfd;                /* the epoll set of every running child's pidfd and pipes (readable: work to do) */
    int jobs;
    struct pyproc_pool_job *slots;
    int n_slots;
    int *done;
    int n_done;
    int running;
    int n_queued;
    int queue_head;
    int queue_tail;
    int free_head;
    size_t lead;             /* the pumps' lead and chunk_max (see pyproc_pump_setup) */
    size_t chunk_max;
    int64_t next_wake_ns;    /* the earliest deadline or wait4 recheck of a running job; < 0: none */
};

/* Makes an empty pool for `jobs` children at once (> 0), with room for `slots` jobs before it grows.  Nothing to
   free on failure. */
int pyproc_pool_open(struct pyproc_pool *p, int jobs, int slots, size_t lead, size_t chunk_max);

/* Queues a job and gives its slot: args/args_len/argc as pyproc_spawn_child takes them (copied; NULL: req->argv),
   input (input_len bytes, kept by the caller; written to a stdin pipe, which needs PYPROC_PIPE_STDIN), timeout_ns
   (< 0: none), child (the caller's, filled in by the spawn and the reap).  It starts in a later pyproc_pool_run. */
int pyproc_pool_submit(struct pyproc_pool *p, const struct pyproc_spawn_request *req, const char *args,
                       size_t args_len, int argc, int engine, int pipes, const char *input, size_t input_len,
                       int64_t timeout_ns, int kill_group, struct pyproc_child *child, int *slot);

/* Runs the pool with the GIL released: starts queued jobs while fewer than `jobs` run, pumps the pipes, reaps,
   kills jobs past their deadline (their group when they lead one), and returns once at least one job is done (its
   replacement already started) or nothing runs.  block = 0: one pass that never waits (for an event loop watching
   epfd).  A job that fails to start is done at once, with error set.  EINTR is returned with the state kept: the
   caller runs its signal handlers and calls again. */
int pyproc_pool_run(struct pyproc_pool *p, int block);

/* Frees the done jobs (their output buffers) and empties the done list: take their outputs first. */
void pyproc_pool_recycle(struct pyproc_pool *p);

/* Forgets the queued jobs that have not started. */
void pyproc_pool_drop_queued(struct pyproc_pool *p);

/* Ends one job now whatever its state: a running child is killed (its group when it leads one) and reaped, its
   fds closed, its buffers freed; the slot is free again.  A done job is taken out of the done list. */
void pyproc_pool_cancel(struct pyproc_pool *p, int slot);

/* Kills every running child (its group when it leads one), reaps it, closes every fd (the epoll set too) and frees
   everything; the pool is empty and closed.  Safe to call twice. */
void pyproc_pool_close(struct pyproc_pool *p);

/* ---- sigpipe.c: the async-signal-safe self-pipe (issue 6) ------------------------------------------------------- */

/* One record per caught signal, written by the handler with a single write() (smaller than PIPE_BUF, so a
   non-blocking pipe takes all of it or none).  pid / uid: the sender (SI_USER, SI_TKILL, SI_QUEUE, SI_MESGQ) or
   the child (SIGCHLD), else 0.  status: si_status for SIGCHLD, the sigval's int for SI_QUEUE / SI_TIMER /
   SI_MESGQ, else 0. */
struct pyproc_sigrecord {
    int32_t signo;
    int32_t code;
    int32_t pid;
    uint32_t uid;
    int32_t status;
};

/* Installs the self-pipe handler for sig: every delivery writes one record to write_fd (which must be a
   non-blocking pipe; pyproc never closes it).  restart: SA_RESTART.  The previous disposition is saved, to be put
   back by pyproc_sigpipe_uninstall.  EBUSY: sig already has a pyproc handler; EINVAL: not a catchable signal. */
int pyproc_sigpipe_install(int sig, int write_fd, int restart);

/* Puts back exactly the disposition saved by pyproc_sigpipe_install, then waits until no handler for sig is
   still running on another thread (after it returns the handler never touches write_fd again).  *replaced = 1
   when someone else changed the disposition meanwhile: theirs is left in place.  ENOENT: not installed. */
int pyproc_sigpipe_uninstall(int sig, int *replaced);

/* Since sig was installed: how many times the handler ran for it (delivered), and how many of those records did
   not fit in the pipe (dropped).  Atomic counters, kept after uninstalling until the next install. */
int pyproc_sigpipe_counts(int sig, uint64_t *delivered, uint64_t *dropped);

/* Only in the child of a fork, before anything else here: forgets the handlers that were running on the
   parent's other threads at the moment of the fork (they do not exist in the child), so that uninstalling does
   not wait for them forever. */
void pyproc_sigpipe_after_fork_child(void);

/* ---- cow.c: copy-on-write and fork-cost measurement (issue 4) --------------------------------------------------- */

/* Page kinds and states of a measured parent region. */
#define PYPROC_COW_PAGES_4K 1
#define PYPROC_COW_PAGES_THP 2
#define PYPROC_COW_PAGES_HUGETLB 3
#define PYPROC_COW_CLEAN 1        /* mapped, never touched: no page tables */
#define PYPROC_COW_DIRTY 2        /* one byte written in every 4 KiB page */
#define PYPROC_COW_FRAGMENTED 3   /* dirty, then every other page made read-only: one VMA per page */

/* What one fork sample does, timed from before the fork to after the wait. */
#define PYPROC_COW_FORK_EXIT 1    /* fork(); the child _exit(0)s at once; wait */
#define PYPROC_COW_FORK_EXEC 2    /* fork(); the child execve()s req's first exec path with its argv; wait */
#define PYPROC_COW_SPAWN 3        /* pyproc_spawn(req, engine); wait; close the pidfd */

/* A region made by pyproc_cow_region_create; release it with pyproc_cow_region_destroy. */
struct pyproc_cow_region {
    char *addr;               /* the measured bytes: addr .. addr + size */
    uint64_t size;
    char *map_addr;           /* the whole mapping (THP: with its alignment slack), for munmap */
    uint64_t map_size;
    int pages;                /* PYPROC_COW_PAGES_* */
    int state;                /* PYPROC_COW_* state */
    int64_t touch_ns;         /* the first-touch (dirtying) loop, CLOCK_MONOTONIC; 0 when clean */
    int64_t touch_minflt;     /* minor faults of that loop (getrusage RUSAGE_SELF delta) */
    int64_t protect_ns;       /* the mprotect loop of FRAGMENTED */
    int64_t n_protected;      /* (system) pages made read-only */
};

/* Maps size bytes (a multiple of 4 KiB and of the system page size; of the huge page size for HUGETLB) of private
   anonymous memory in the given kind and state.  thp_size: the PMD size THP uses (hpage_pmd_size in sysfs), the
   alignment of a THP region; ignored for the other kinds.  FRAGMENTED protects every other system page.  Failure
   (ENOMEM from mmap or from mprotect at vm.max_map_count, EINVAL) leaves nothing mapped.  Memory the region holds
   is the caller's to release. */
int pyproc_cow_region_create(uint64_t size, int pages, int state, uint64_t thp_size, struct pyproc_cow_region *out);
int pyproc_cow_region_destroy(struct pyproc_cow_region *region);

/* One timed sample of `method` (PYPROC_COW_FORK_EXIT / FORK_EXEC / SPAWN) from this process as it is:
   *ns is the CLOCK_MONOTONIC time from before the fork/spawn to after the child was reaped, *wait_status its
   status.  req (FORK_EXEC, SPAWN) is a prepared request; engine a PYPROC_ENGINE_* for SPAWN.  A spawn failure
   returns its errno with res's fail_stage / fail_index set (res->pid = 0 and nothing left to reap). */
int pyproc_cow_fork_sample(int method, const struct pyproc_spawn_request *req, int engine, int64_t *ns,
                           int *wait_status, struct pyproc_spawn_result *res);

/* What the child of pyproc_cow_touch_sample measured, one fixed-size record through a pipe.  Each phase touches
   one byte in every 4 KiB page of the region; minflt / majflt are getrusage(RUSAGE_SELF) deltas in the child. */
struct pyproc_cow_child_record {
    int64_t read_ns;          /* read-touch after fork: pages shared with the parent */
    int64_t read_minflt;
    int64_t write_ns;         /* first write: the copy-on-write faults */
    int64_t write_minflt;
    int64_t rewrite_ns;       /* second write: pages already copied */
    int64_t rewrite_minflt;
    int64_t majflt;           /* major faults over the three phases */
    int64_t pages;            /* 4 KiB pages touched per phase */
    uint64_t checksum;        /* of the read phase, so that it cannot be optimised away */
};

/* Forks; the child (C only) read-touches, write-touches and rewrites every 4 KiB page of a DIRTY region, sends
   its record through a CLOEXEC pipe and _exit(0)s; the parent reads the record and reaps the child.  EBADMSG: the
   child died before its record was complete (*wait_status says how). */
int pyproc_cow_touch_sample(const struct pyproc_cow_region *region, struct pyproc_cow_child_record *out,
                            int *wait_status);


/* cdef-end */

#endif /* PYPROC_H */
