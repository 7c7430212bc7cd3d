/*
 * engine/trainer.c — engine_train(): LoRA or full fine-tuning of a
 * Llama-family model on tokenized chat data. AdamW with warm-up and cosine
 * or linear decay, gradient accumulation and clipping, validation at an
 * interval, checkpoints (weights + optimizer state + position) from which a
 * resumed run continues with exactly the losses of an uninterrupted one.
 *
 * Everything random derives from cfg->seed: the data order of epoch e and
 * the dropout masks of step s are functions of (seed, e) and (seed, s), so a
 * run is deterministic and a checkpoint needs only counters, not RNG state.
 *
 * Data parallel (cfg->comm, train_parallel.c): every rank walks the same
 * order; rank r computes micro-batches r, r+N, ... of each step with the
 * dropout key micro-batch j has alone, the gradient and the statistics are
 * summed over the ranks and divided by the step's micro-batch count, and
 * every rank applies the same AdamW step. Validation sets are split the same
 * way. The result equals one process's up to the order of float additions.
 */
#include "engine/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/optim.h"
#include "engine/rng.h"

void engine_train_defaults(engine_train_config *c)
{
    memset(c, 0, sizeof *c);
    c->device = NULL; /* engine_default_device() */
    c->method = ENGINE_LORA;
    c->epochs = 1;
    c->batch_size = 4;
    c->grad_accum = 1;
    c->max_seq_len = 512;
    c->learning_rate = 1e-4;
    c->schedule = ENGINE_SCHEDULE_COSINE;
    c->beta1 = 0.9;
    c->beta2 = 0.999;
    c->adam_eps = 1e-8;
    c->max_grad_norm = 1.0;
    c->seed = 42;
    c->lora_r = 8;
    c->lora_alpha = 16;
    c->target_modules = (1u << PEFT_Q_PROJ) | (1u << PEFT_V_PROJ);
}

/* Fills order with 0..n-1 shuffled by (seed, epoch) (Fisher-Yates). */
static void epoch_order(size_t *order, size_t n, uint64_t seed, int epoch)
{
    rng r = {rng_mix(seed ^ rng_mix((uint64_t)epoch + 0x51ed27))};
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)rng_below(&r, i);
        size_t t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
}

/* A step's loss statistics as sums, in one array so that a group sums
 * them in one call: token-weighted loss, correct tokens, counted tokens,
 * tokens through the forward pass. */
enum { STAT_LOSS, STAT_CORRECT, STAT_COUNT, STAT_TOKENS, STAT_N };

/* Runs forward + backward of one micro-batch; adds its loss statistics. */
static int micro_step(trainer *t, size_t first, int count, uint64_t key, double sum[STAT_N])
{
    int T = 0;
    train_batch_fill(t->train, t->order, first, count, t->ids, t->targets, &T);
    model_batch b = {t->ids, t->targets, count, T, key, true};
    model_loss l;
    int rc = model_forward(t->model, t->ad, t->acts, &b, &l);
    if (rc == RT_OK)
        rc = model_backward(t->model, t->ad, t->acts, &b, t->method == ENGINE_FULL ? &t->gw : NULL,
                            t->ad_grad);
    if (rc != RT_OK)
        return rc;
    sum[STAT_LOSS] += l.loss * (double)l.count;
    sum[STAT_CORRECT] += l.correct;
    sum[STAT_COUNT] += (double)l.count;
    sum[STAT_TOKENS] += (double)count * T;
    return RT_OK;
}

/* The number of micro-batches of the next optimizer step: grad_accum, or
 * what is left of the epoch. */
static int step_micro_batches(const trainer *t)
{
    size_t nb = (t->train->n + (size_t)t->cfg.batch_size - 1) / (size_t)t->cfg.batch_size;
    size_t left = nb - t->batch_in_epoch;
    return (size_t)t->cfg.grad_accum > left ? (int)left : t->cfg.grad_accum;
}

/* Forward + backward of this rank's micro-batches of the step (all of them
 * alone; j = rank, rank + N, ... in a group), gradients into t->grad. */
static int accumulate(trainer *t, const engine_callbacks *cb, int micro, double sum[STAT_N])
{
    const engine_train_config *c = &t->cfg;
    int rc = t->be->zero(t->grad, (size_t)t->n_trainable * sizeof(float), NULL);
    for (int j = trainer_rank(t); rc == RT_OK && j < micro; j += trainer_ranks(t)) {
        size_t first = (t->batch_in_epoch + (size_t)j) * (size_t)c->batch_size;
        int count = c->batch_size;
        if (first + (size_t)count > t->train->n)
            count = (int)(t->train->n - first);
        uint64_t key = rng_mix(c->seed ^ rng_mix(((uint64_t)t->step << 16) | (uint64_t)j));
        if (cb && cb->yield)
            cb->yield(cb->ctx);
        rc = micro_step(t, first, count, key, sum);
    }
    return rc;
}

/* One optimizer step over up to grad_accum micro-batches: this rank's
 * share, then the group's sums, the mean over micro-batches, clipping of
 * the summed gradient and the AdamW step. */
static int optimizer_step(trainer *t, const engine_callbacks *cb, model_loss *stats)
{
    const engine_train_config *c = &t->cfg;
    const kernels_backend *be = t->be;
    int micro = step_micro_batches(t);
    double sum[STAT_N] = {0};
    int rc = accumulate(t, cb, micro, sum);
    if (rc == RT_OK)
        rc = trainer_sum_grad(t);
    if (rc == RT_OK)
        rc = trainer_sum(t, sum, STAT_N);
    if (rc == RT_OK && micro > 1)
        rc = be->scale(t->grad, t->n_trainable, 1.0f / (float)micro, NULL);
    double norm = 0;
    if (rc == RT_OK)
        rc = optim_clip(be, t->grad, t->n_trainable, c->max_grad_norm, t->norm_scratch, &norm);
    t->lr = optim_lr(c->learning_rate, c->schedule, t->step, t->warmup, t->total_steps);
    if (rc == RT_OK)
        rc = be->adamw_step(t->params, t->adam_m, t->adam_v, t->grad, t->n_trainable, t->lr,
                            c->beta1, c->beta2, c->adam_eps, c->weight_decay, t->step + 1, NULL);
    if (rc != RT_OK)
        return rc;
    t->step++;
    t->batch_in_epoch += (size_t)micro;
    t->tokens += (int64_t)sum[STAT_TOKENS];
    double n = sum[STAT_COUNT];
    stats->loss = n > 0 ? sum[STAT_LOSS] / n : 0;
    stats->correct = n > 0 ? sum[STAT_CORRECT] / n : 0;
    stats->count = (int64_t)n;
    return RT_OK;
}

int trainer_validate(trainer *t, const train_set *set, double *loss, double *accuracy)
{
    int B = t->cfg.batch_size, T = 0;
    size_t stride = (size_t)trainer_ranks(t) * (size_t)B;
    double sum[STAT_N] = {0};
    for (size_t first = (size_t)trainer_rank(t) * (size_t)B; first < set->n; first += stride) {
        int count = first + (size_t)B > set->n ? (int)(set->n - first) : B;
        train_batch_fill(set, t->identity, first, count, t->ids, t->targets, &T);
        model_batch b = {t->ids, t->targets, count, T, 0, false};
        model_loss l;
        int rc = model_forward(t->model, t->ad, t->acts, &b, &l);
        if (rc != RT_OK)
            return rc;
        sum[STAT_LOSS] += l.loss * (double)l.count;
        sum[STAT_CORRECT] += l.correct;
        sum[STAT_COUNT] += (double)l.count;
    }
    int rc = trainer_sum(t, sum, STAT_N); /* a group splits the batches the same way */
    if (rc != RT_OK)
        return rc;
    *loss = sum[STAT_COUNT] > 0 ? sum[STAT_LOSS] / sum[STAT_COUNT] : NAN;
    *accuracy = sum[STAT_COUNT] > 0 ? sum[STAT_CORRECT] / sum[STAT_COUNT] : NAN;
    return RT_OK;
}

/* Brings t->progress up to date after a step. */
static void progress_update(trainer *t, const model_loss *stats)
{
    engine_progress *p = &t->progress;
    p->step = t->step;
    p->total_steps = t->total_steps;
    p->epoch = t->epoch;
    p->train_loss = stats->loss;
    p->train_accuracy = stats->correct;
    p->learning_rate = t->lr;
    p->tokens = t->tokens;
    p->seconds = t->seconds_before + rt_now_seconds() - t->started;
    p->trainable_params = t->n_trainable;
    p->total_params = t->n_total;
}

/* Validation (if there is a set) and its report. */
static int run_validation(trainer *t)
{
    if (!t->valid)
        return RT_OK;
    int rc = trainer_validate(t, t->valid, &t->progress.valid_loss, &t->progress.valid_accuracy);
    if (rc == RT_OK)
        t->progress.has_valid = true;
    return rc;
}

/* True when the run should end now; writes a checkpoint first on pause.
 * In a group rank 0 asks and every rank follows its answer. */
static bool stop_requested(trainer *t, const engine_callbacks *cb, int *rc)
{
    int what = ENGINE_CONTINUE;
    if (trainer_is_lead(t) && cb && cb->should_stop)
        what = cb->should_stop(cb->ctx);
    *rc = trainer_share(t, &what);
    if (*rc != RT_OK)
        return true;
    if (what == ENGINE_CONTINUE)
        return false;
    if (what == ENGINE_STOP_PAUSE && t->cfg.checkpoint_dir)
        *rc = trainer_checkpoint(t, cb);
    t->stopped = true;
    return true;
}

/* After a step: interval validation, the step report, then the interval
 * checkpoint. The report comes first so that whatever the caller records
 * for a step (a results row) exists before a checkpoint a crash could
 * resume from. */
static int after_step(trainer *t, const engine_callbacks *cb)
{
    const engine_train_config *c = &t->cfg;
    int rc = RT_OK;
    if (c->eval_interval > 0 && t->step % c->eval_interval == 0)
        rc = run_validation(t);
    if (rc == RT_OK && cb && cb->on_step && trainer_is_lead(t))
        cb->on_step(cb->ctx, &t->progress);
    if (rc == RT_OK && c->checkpoint_interval > 0 && t->step % c->checkpoint_interval == 0 &&
        c->checkpoint_dir)
        rc = trainer_checkpoint(t, cb);
    return rc;
}

/* Runs epochs from the current position to the end (or a stop). */
static int train_loop(trainer *t, const engine_callbacks *cb)
{
    const engine_train_config *c = &t->cfg;
    size_t nb = (t->train->n + (size_t)c->batch_size - 1) / (size_t)c->batch_size;
    int rc = RT_OK;
    while (rc == RT_OK && t->epoch < c->epochs && t->step < t->total_steps) {
        epoch_order(t->order, t->train->n, c->seed, t->epoch);
        while (rc == RT_OK && t->batch_in_epoch < nb && t->step < t->total_steps) {
            if (stop_requested(t, cb, &rc))
                return rc;
            model_loss stats;
            rc = optimizer_step(t, cb, &stats);
            if (rc == RT_OK) {
                t->last_loss = stats.loss;
                progress_update(t, &stats);
                rc = after_step(t, cb);
            }
        }
        if (rc != RT_OK || t->batch_in_epoch < nb)
            break; /* failed, or max_steps reached inside the epoch */
        t->batch_in_epoch = 0;
        t->epoch++;
        if (c->eval_interval == 0)
            rc = run_validation(t);
        if (rc == RT_OK && c->checkpoint_dir &&
            !(c->checkpoint_interval > 0 && t->step % c->checkpoint_interval == 0))
            rc = trainer_checkpoint(t, cb); /* one per epoch (unless just written) */
    }
    return rc;
}

/* The retention loss before training: of the fresh weights, or — for a
 * resumed run — read back from where the run began (its checkpoint keeps
 * it), so a resume reports the same "before" as the uninterrupted run. */
static int retention_loss(trainer *t, const char *resume_dir, double *loss, double *accuracy)
{
    if (resume_dir && !isnan(t->retention_before)) {
        *loss = t->retention_before;
        return RT_OK;
    }
    int rc = trainer_validate(t, t->retention, loss, accuracy);
    t->retention_before = *loss;
    return rc;
}

/* Says (on rank 0: in the log and as an event) how a group shares out its
 * steps, warning when some ranks get no micro-batch in a step. */
static void group_event(const trainer *t, const engine_callbacks *cb)
{
    int n = trainer_ranks(t);
    if (n == 1 || !trainer_is_lead(t))
        return;
    char text[256];
    snprintf(text, sizeof text, "Data parallel: %d processes share each step's %d micro-batches of "
             "%d sequences%s.", n, t->cfg.grad_accum, t->cfg.batch_size,
             t->cfg.grad_accum < n ? " (fewer micro-batches than processes: some wait idle; raise "
                                     "--grad-accum to a multiple of the process count)" : "");
    rt_log(t->cfg.grad_accum < n ? RT_LOG_WARN : RT_LOG_INFO, "%s", text);
    if (cb && cb->on_event)
        cb->on_event(cb->ctx, text);
}

int engine_train(const engine_train_config *cfg, const engine_callbacks *cb,
                 engine_train_result *result, engine_error *why)
{
    engine_error ignored;
    engine_error *e = why ? why : &ignored;
    memset(e, 0, sizeof *e);
    char *err = e->message;
    size_t errsize = sizeof e->message;
    trainer *t = NULL;
    const char *input = NULL;
    int rc = trainer_open(cfg, &t, err, errsize, &input);
    if (rc != RT_OK) {
        e->code = rc;
        snprintf(e->field, sizeof e->field, "%s", input ? input : "");
        return rc;
    }
    if (cb && cb->on_event && trainer_is_lead(t))
        cb->on_event(cb->ctx, t->memory_text);
    group_event(t, cb);
    if (cfg->resume_dir)
        rc = trainer_resume(t, cfg->resume_dir, err, errsize);
    double retention_before = NAN, retention_after = NAN, unused;
    if (rc == RT_OK && t->retention) /* the base's knowledge, before this run's updates */
        rc = retention_loss(t, cfg->resume_dir, &retention_before, &unused);
    t->started = rt_now_seconds();
    if (rc == RT_OK)
        rc = train_loop(t, cb);
    if (rc == RT_OK && !t->stopped) {
        bool fresh = t->progress.has_valid && t->cfg.eval_interval > 0 &&
                     t->step % t->cfg.eval_interval == 0;
        if (!fresh)
            rc = run_validation(t);
        if (rc == RT_OK && t->retention)
            rc = trainer_validate(t, t->retention, &retention_after, &unused);
        if (rc == RT_OK && trainer_is_lead(t)) /* a group's ranks hold the same weights */
            rc = trainer_save_result(t, cfg->out_dir, err, errsize);
    }
    if (rc == RT_OK) {
        engine_train_result r = {0};
        r.train_loss = t->last_loss;
        r.valid_loss = t->progress.has_valid ? t->progress.valid_loss : NAN;
        r.valid_accuracy = t->progress.has_valid ? t->progress.valid_accuracy : NAN;
        r.trainable_params = t->n_trainable;
        r.total_params = t->n_total;
        r.tokens = t->tokens;
        r.n_examples = (int64_t)t->train->n;
        r.truncated_examples = t->train->truncated;
        r.steps = t->step;
        r.total_steps = t->total_steps;
        r.seconds = t->seconds_before + rt_now_seconds() - t->started;
        r.comm_seconds = t->comm_seconds;
        r.stopped = t->stopped;
        r.retention_loss_before = retention_before;
        r.retention_loss_after = retention_after;
        r.memory = t->memory;
        *result = r;
    } else {
        e->code = rc;
        if (!err[0])
            snprintf(err, errsize, "training failed: %s", rt_strerror(rc));
    }
    trainer_close(t);
    return rc;
}
