/*
 * kernels/kernels.c — finds a compute backend by name. The CPU backend is
 * always built; "cuda" and "cuda:N" reach the CUDA backend when the build
 * defines RT_WITH_CUDA (make CUDA=1) and are reported unsupported otherwise.
 */
#include "kernels/kernels.h"

#include <stdlib.h>
#include <string.h>

#ifdef RT_WITH_CUDA
#include "kernels/cuda/cuda.h"
#endif

/* *index = N for "cuda" (0) or "cuda:N"; 0 when name is not of that form. */
static int parse_cuda_name(const char *name, int *index)
{
    if (strncmp(name, "cuda", 4) != 0)
        return 0;
    if (name[4] == '\0') {
        *index = 0;
        return 1;
    }
    if (name[4] != ':' || name[5] < '0' || name[5] > '9')
        return 0;
    char *end = NULL;
    long v = strtol(name + 5, &end, 10);
    if (*end || v > 1024)
        return 0;
    *index = (int)v;
    return 1;
}

/* *out = the named backend; see kernels.h for the codes. */
int kernels_backend_get(const char *name, const kernels_backend **out)
{
    if (!name || !out)
        return RT_ERR_INVALID;
    if (strcmp(name, "cpu") == 0) {
        *out = kernels_cpu_backend();
        return RT_OK;
    }
    int index;
    if (!parse_cuda_name(name, &index))
        return RT_ERR_NOT_FOUND;
#ifdef RT_WITH_CUDA
    return kernels_cuda_backend(index, out);
#else
    return RT_ERR_UNSUPPORTED;
#endif
}
