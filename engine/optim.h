/*
 * engine/optim.h — (internal to engine/) learning-rate schedules and
 * gradient-norm clipping, as Hugging Face's Trainer and PyTorch define them.
 */
#ifndef RT_ENGINE_OPTIM_H
#define RT_ENGINE_OPTIM_H

#include <stdint.h>

#include "engine/engine.h"
#include "kernels/kernels.h"

/* The number of warm-up steps: ceil(ratio * total). */
int optim_warmup_steps(double ratio, int total);

/* The learning rate for the update at 0-based `step` (HF's
 * get_{cosine,linear,constant}_schedule_with_warmup: step/warmup during
 * warm-up, then the decay to 0 at `total`). */
double optim_lr(double base_lr, enum engine_schedule schedule, int step, int warmup, int total);

/* Global L2 norm of grad[n] into *norm; when max_norm > 0 and the norm is
 * larger, scales grad by max_norm / (norm + 1e-6) (torch's clip_grad_norm_).
 * scratch is one device float. */
int optim_clip(const kernels_backend *be, float *grad, int64_t n, double max_norm, float *scratch,
               double *norm);

#endif
