/*
 * engine/optim.c — learning-rate schedules and gradient clipping.
 */
#include "engine/optim.h"

#include <math.h>

int optim_warmup_steps(double ratio, int total)
{
    if (ratio <= 0 || total <= 0)
        return 0;
    return (int)ceil(ratio * (double)total);
}

double optim_lr(double base_lr, enum engine_schedule schedule, int step, int warmup, int total)
{
    if (step < warmup)
        return base_lr * (double)step / (double)(warmup > 1 ? warmup : 1);
    if (schedule == ENGINE_SCHEDULE_CONSTANT)
        return base_lr;
    int span = total - warmup > 1 ? total - warmup : 1;
    double progress = (double)(step - warmup) / (double)span;
    if (schedule == ENGINE_SCHEDULE_LINEAR)
        return base_lr * fmax(0.0, 1.0 - progress);
    return base_lr * fmax(0.0, 0.5 * (1.0 + cos(M_PI * progress)));
}

int optim_clip(const kernels_backend *be, float *grad, int64_t n, double max_norm, float *scratch,
               double *norm)
{
    float sq = 0;
    int rc = be->sum_squares(scratch, grad, n, NULL);
    if (rc == RT_OK)
        rc = be->copy_to_host(&sq, scratch, sizeof sq, NULL);
    if (rc != RT_OK)
        return rc;
    double total = sqrt((double)sq);
    *norm = total;
    if (max_norm > 0 && total > max_norm)
        rc = be->scale(grad, n, (float)(max_norm / (total + 1e-6)), NULL);
    return rc;
}
