/*
 * engine/device.c — which compute device to use when the caller names none:
 * the GPU when this build has the CUDA backend and a GPU is present, else
 * the CPU.
 */
#include "engine/engine.h"
#include "kernels/kernels.h"

const char *engine_default_device(void)
{
    const kernels_backend *be = NULL;
    return kernels_backend_get("cuda", &be) == RT_OK ? "cuda" : "cpu";
}
