/*
 * engine/trainer.h — (internal to engine/) the state of one training run,
 * shared by the loop (trainer.c) and its set-up, checkpoints and results
 * (trainer_setup.c).
 */
#ifndef RT_ENGINE_TRAINER_H
#define RT_ENGINE_TRAINER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/chat_template.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "engine/train_data.h"

typedef struct trainer {
    engine_train_config cfg;       /* strings borrowed from engine_train's caller */
    enum engine_method method;
    const kernels_backend *be;
    model *model;                  /* LoRA: the frozen base; full: the trained copy */
    lora *ad, *ad_grad;            /* LoRA weights and their gradients */
    float *params, *grad;          /* the trainable buffer and its gradient (flat) */
    float *adam_m, *adam_v;        /* AdamW moments, same length */
    float *full_grad;              /* full: owned gradient buffer */
    model_weights gw;              /* full: named pointers into full_grad */
    float *norm_scratch;           /* one device float */
    int64_t n_trainable, n_total;
    model_acts *acts;
    engine_memory_plan memory;     /* estimated before allocating (plan_memory) */
    char memory_text[320];         /* the same in words, for the run's events */
    tokenizer *tok;
    chat_template *tmpl;
    train_set *train, *valid, *retention;
    size_t *order, *identity;      /* epoch order; 0..n-1 for validation */
    int32_t *ids, *targets;        /* host batch buffers */
    int step, total_steps, warmup, epoch;
    size_t batch_in_epoch;         /* micro-batches done in this epoch */
    int64_t tokens;
    double lr, last_loss;
    double retention_before;       /* NaN until measured; kept in checkpoints */
    double started, seconds_before;
    bool stopped;
    engine_progress progress;
    const engine_collective *comm; /* the data-parallel group; NULL when alone (size 1) */
    bool comm_device;              /* the gradient is summed in device memory
                                      (comm->sum_f32_device), not staged */
    float *comm_host;              /* host staging for the gradient sum (comm, not comm_device) */
    size_t comm_chunk;             /* its length in floats */
    double comm_seconds;           /* spent in the group's sums */
} trainer;

/* Checks cfg, loads model, tokenizer and data, allocates everything. On
 * failure *input names the data set at fault (engine_error's field), or NULL. */
int trainer_open(const engine_train_config *cfg, trainer **out, char *err, size_t errsize,
                 const char **input);
void trainer_close(trainer *t);

/* Writes checkpoint_dir/ckpt-step-N (servable weights, optimizer state,
 * position) atomically and tells cb. */
int trainer_checkpoint(trainer *t, const engine_callbacks *cb);

/* Continues from a checkpoint directory written by trainer_checkpoint. */
int trainer_resume(trainer *t, const char *dir, char *err, size_t errsize);

/* Writes the result: a PEFT adapter (LoRA) or an HF model directory (full). */
int trainer_save_result(trainer *t, const char *dir, char *err, size_t errsize);

/* Mean loss and token accuracy over a set (no dropout, no gradients). */
int trainer_validate(trainer *t, const train_set *set, double *loss, double *accuracy);

/* ---- data parallelism (train_parallel.c) ------------------------------------
 * With t->comm set, rank r computes micro-batches r, r+N, r+2N, ... of every
 * optimizer step and the sums below make every rank hold what one process
 * would have computed alone. Alone (t->comm NULL) each is a no-op. */

/* Takes cfg->comm when its group has more than one rank, and either sums
 * the gradient in device memory (a group with sum_f32_device, on the cuda
 * backend) or allocates the host staging buffer of the gradient sum.
 * RT_ERR_INVALID (a malformed group), RT_ERR_NOMEM. */
int trainer_group_open(trainer *t);

/* This process's rank and the group's size (0 and 1 alone). */
int trainer_rank(const trainer *t);
int trainer_ranks(const trainer *t);

/* True on the rank that writes files and reports (rank 0, or alone). */
bool trainer_is_lead(const trainer *t);

/* Sums v[0..n) over the group in place. RT_OK or RT_ERR_COMM. */
int trainer_sum(trainer *t, double *v, size_t n);

/* Sums the step's gradient (t->grad) over the group in place: in device
 * memory (comm_device), or through the host staging buffer a chunk at a
 * time. RT_OK, RT_ERR_COMM, or a backend copy or synchronize error. */
int trainer_sum_grad(trainer *t);

/* Rank 0's value of x on every rank (the others' x is ignored): how the
 * lead's decisions (stop, pause) reach the group. */
int trainer_share(trainer *t, int *x);

/* Copies the tokenizer files of one model directory into another. */
int engine_copy_tokenizer_files(const char *from_dir, const char *to_dir, char *err, size_t errsize);

#endif
