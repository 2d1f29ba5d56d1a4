/*
 * glibc_compat.c - the glibc functions pyproc uses that are newer than its wheels' floor (see glibc_compat.h),
 * looked up once at run time, so that the module loads on an older glibc and a request that needs one is refused
 * with a clear error instead of failing the import.
 */
#include "pyproc.h"

#include <dlfcn.h>
#include <pthread.h>

typedef int (*addchdir_fn)(posix_spawn_file_actions_t *, const char *);
typedef int (*addclosefrom_fn)(posix_spawn_file_actions_t *, int);

static pthread_once_t lookup_once = PTHREAD_ONCE_INIT;
static addchdir_fn addchdir;
static addclosefrom_fn addclosefrom;

static void look_up(void)
{
    addchdir = (addchdir_fn)dlsym(RTLD_DEFAULT, "posix_spawn_file_actions_addchdir_np");
    addclosefrom = (addclosefrom_fn)dlsym(RTLD_DEFAULT, "posix_spawn_file_actions_addclosefrom_np");
}

int pyproc_posix_spawn_features(void)
{
    (void)pthread_once(&lookup_once, look_up); /* fails only on invalid arguments */
    int forced = pyproc_get_forced_fallbacks();
    int features = 0;
    if (addchdir && !(forced & PYPROC_FORCE_NO_SPAWN_CHDIR))
        features |= PYPROC_POSIX_SPAWN_CHDIR;
    if (addclosefrom && !(forced & PYPROC_FORCE_NO_SPAWN_CLOSEFROM))
        features |= PYPROC_POSIX_SPAWN_CLOSEFROM;
    return features;
}

int pyproc__spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path)
{
    return (pyproc_posix_spawn_features() & PYPROC_POSIX_SPAWN_CHDIR) ? addchdir(actions, path) : ENOSYS;
}

int pyproc__spawn_addclosefrom(posix_spawn_file_actions_t *actions, int from)
{
    return (pyproc_posix_spawn_features() & PYPROC_POSIX_SPAWN_CLOSEFROM) ? addclosefrom(actions, from) : ENOSYS;
}
