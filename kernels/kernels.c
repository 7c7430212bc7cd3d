/*
 * kernels/kernels.c — finds a compute backend by name. The CPU backend is
 * always built; "cuda" is known but reported unsupported until a build
 * provides it.
 */
#include "kernels/kernels.h"

#include <string.h>

/* *out = the named backend; see kernels.h for the codes. */
int kernels_backend_get(const char *name, const kernels_backend **out)
{
    if (!name || !out)
        return RT_ERR_INVALID;
    if (strcmp(name, "cpu") == 0) {
        *out = kernels_cpu_backend();
        return RT_OK;
    }
    if (strcmp(name, "cuda") == 0)
        return RT_ERR_UNSUPPORTED;
    return RT_ERR_NOT_FOUND;
}
