/*
 * glibc_compat.h - keeps the compiled module loadable on every glibc its wheel's tag admits (manylinux_2_17:
 * glibc 2.17 and newer; .ci/dist.sh fails if the tag rises), whatever glibc it was built on.  Included by pyproc.h,
 * so by every C file and by cffi's generated one.
 *
 * Two kinds of symbols would otherwise raise the tag:
 * - Old functions under a new version.  glibc 2.32 and 2.34 moved libpthread's and libdl's functions into libc
 *   under new versions (pthread_create@GLIBC_2.34, pthread_sigmask@GLIBC_2.32, dlsym@GLIBC_2.34): the same code
 *   stays exported under the original version, which every glibc has.  The .symver lines bind the calls to that
 *   one.  (On a glibc older than 2.34 the original lives in libpthread.so.0 / libdl.so.2, which any Python process
 *   has loaded: CPython links both there.)
 * - Functions that older glibc lacks (posix_spawn_file_actions_addchdir_np, 2.29; ..._addclosefrom_np, 2.34):
 *   glibc_compat.c looks them up at run time; the wrappers below return ENOSYS when the running glibc has none,
 *   and pyproc_posix_spawn_features() (pyproc.h) tells Python beforehand, which refuses the request with a
 *   ValueError.
 * The kernel calls go through syscall(), which needs no particular glibc.
 */
#ifndef PYPROC_GLIBC_COMPAT_H
#define PYPROC_GLIBC_COMPAT_H

#include <spawn.h>

#if defined(__GLIBC__)
#if defined(__x86_64__)
#define PYPROC_GLIBC_BASE "GLIBC_2.2.5" /* the first version of every symbol on x86_64 */
#elif defined(__aarch64__)
#define PYPROC_GLIBC_BASE "GLIBC_2.17"
#endif
#endif

#ifdef PYPROC_GLIBC_BASE
#define PYPROC_BIND_BASE(name) __asm__(".symver " #name ", " #name "@" PYPROC_GLIBC_BASE)
PYPROC_BIND_BASE(pthread_create);
PYPROC_BIND_BASE(pthread_join);
PYPROC_BIND_BASE(pthread_key_create);
PYPROC_BIND_BASE(pthread_once);
PYPROC_BIND_BASE(pthread_setspecific);
PYPROC_BIND_BASE(pthread_sigmask);
PYPROC_BIND_BASE(dlsym);
#endif

#ifndef PYPROC_INTERNAL
#define PYPROC_INTERNAL __attribute__((visibility("hidden"))) /* shared between files of csrc/, not exported */
#endif

/* posix_spawn_file_actions_addchdir_np / _addclosefrom_np of the running glibc, or ENOSYS where it has none (or
   where a test forces their absence: PYPROC_FORCE_NO_SPAWN_CHDIR / _CLOSEFROM). */
PYPROC_INTERNAL int pyproc__spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path);
PYPROC_INTERNAL int pyproc__spawn_addclosefrom(posix_spawn_file_actions_t *actions, int from);

#endif
