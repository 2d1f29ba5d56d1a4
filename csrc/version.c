/* version.c - the package version compiled into the module, compared by pyproc/_lib.py at import. */
#include "pyproc.h"

#ifndef PYPROC_VERSION
#error "PYPROC_VERSION must be defined by the build (pyproc/_build.py)"
#endif

const char *pyproc_version(void)
{
    return PYPROC_VERSION;
}
