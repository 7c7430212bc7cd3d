/*
 * engine/engine.h — the engine's one door: pure compute and the file formats
 * of models and datasets. The engine never sees HTTP or SQL; it takes plain
 * structs and reports progress through callbacks.
 *
 * Functions return RT_OK or a negative rt_error code (common/rt.h);
 * out-parameters are untouched on failure.
 */
#ifndef RT_ENGINE_H
#define RT_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/rt.h"

/* Why an engine call failed, in parts a caller maps without parsing text:
 * the code, the input at fault (a request field as the OpenAI API names it
 * — "max_tokens", "messages", "prompt", "model", ... — or a training data
 * set — "train_path", "valid_path", "retention_path"; "" when none) and a
 * one-line message naming the file and line where there is one. */
typedef struct engine_error {
    int code;
    char field[64];
    char message[1024];
} engine_error;

/* Fills e (NULL: nothing) with code, field (NULL: none) and a printf-style
 * message, and returns code: how every refusal is made. */
int engine_error_set(engine_error *e, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- Training data (JSONL) ------------------------------------------------ */

/* Which of the two accepted example shapes a JSONL line has. */
enum engine_example_format {
    ENGINE_EXAMPLE_CHAT = 1,       /* {"messages": [{role, content, weight?}, ...]} */
    ENGINE_EXAMPLE_COMPLETION = 2  /* {"prompt": "...", "completion": "..."} */
};

/*
 * Checks one line of a fine-tuning JSONL file (without its newline). On
 * success returns RT_OK and sets *format; a line that holds only whitespace
 * returns RT_ERR_NOT_FOUND (callers skip it). Otherwise returns RT_ERR_FORMAT
 * and writes the reason, naming the field (e.g. `messages[1] has no
 * "content"`), into reason (always NUL-terminated).
 */
int engine_dataset_check_line(const char *line, size_t len,
                              enum engine_example_format *format,
                              char *reason, size_t reason_size);

/* True when the bytes are well-formed UTF-8 (no overlongs, no surrogates). */
bool engine_utf8_valid(const char *s, size_t len);


/* "cuda" when this build has the CUDA backend and a GPU is present, else
 * "cpu": the device used when none is named. */
const char *engine_default_device(void);

/* ---- Training ----------------------------------------------------------- */

enum engine_method { ENGINE_LORA = 0, ENGINE_FULL = 1 };
enum engine_schedule { ENGINE_SCHEDULE_COSINE = 0, ENGINE_SCHEDULE_LINEAR = 1,
                       ENGINE_SCHEDULE_CONSTANT = 2 };

/* LoRA target modules, as bits (q_proj = bit 0 ... down_proj = bit 6). */
#define ENGINE_TARGET_ALL_LINEAR 0x7Fu

/* The processes that train one job together (data parallelism), as the
 * engine sees them: a rank, a count, and a sum over all of them. The caller
 * implements it over MPI (server/mpi_comm.c) and, for GPUs, NCCL
 * (server/nccl_comm.c), so the engine never sees a transport. Every rank
 * runs engine_train with the same config; each computes its share of every
 * optimizer step's micro-batches, the gradients and loss statistics are
 * summed, and every rank applies the same AdamW step. Rank 0 alone writes
 * checkpoints and the result and calls on_step, on_event and on_checkpoint;
 * should_stop is asked on rank 0 and its answer shared. A rank that fails
 * returns its error while the others may wait in a sum: the caller then
 * ends the whole group (MPI_Abort). */
typedef struct engine_collective {
    int rank;                    /* 0 .. size-1 */
    int size;                    /* processes in the group, >= 1 */
    void *ctx;                   /* the implementation's, passed back below */
    /* Replace data[0..n) (host memory) on every rank with the element-wise
     * sum over all ranks, the same bits on every rank. Every rank calls
     * them in the same order. RT_OK or RT_ERR_COMM. */
    int (*sum_f32)(void *ctx, float *data, size_t n);
    int (*sum_f64)(void *ctx, double *data, size_t n);
    /* Optional (NULL: absent): the same sum of data[0..n) in DEVICE memory
     * of the "cuda" backend (NCCL, server/nccl_comm.c), without a copy to
     * the host. stream is the CUDA stream the data was written on
     * (cudaStream_t; NULL: the legacy default stream, where the trainer
     * queues its work): the sum starts after the work queued there and
     * work queued there afterwards sees it. It may return before the sum is
     * done; a failure may surface only at the backend's next synchronize.
     * The trainer uses it, when set, for the gradient of a run on the cuda
     * backend, and sum_f32 for everything else. RT_OK or RT_ERR_COMM. */
    int (*sum_f32_device)(void *ctx, float *data, size_t n, void *stream);
} engine_collective;

/* Everything a training run needs; strings are borrowed for the call. */
typedef struct engine_train_config {
    const char *model_dir;       /* HF model directory (config, safetensors, tokenizer) */
    const char *train_path;      /* JSONL: chat messages or prompt/completion */
    const char *valid_path;      /* optional JSONL, or NULL */
    const char *retention_path;  /* optional JSONL: loss measured before and after */
    const char *out_dir;         /* result: PEFT adapter (LoRA) or HF model dir (full) */
    const char *checkpoint_dir;  /* where checkpoints go (NULL: none) */
    const char *resume_dir;      /* a checkpoint to continue from (NULL: fresh) */
    const char *device;          /* "cpu" (default), "cuda" */
    const char *dtype;           /* frozen base weights in memory: "auto" (NULL: as the
                                    checkpoint stores them), "f32", "bf16", "f16"; LoRA
                                    only: full fine-tuning trains fp32 masters */
    enum engine_method method;
    int epochs;                  /* >= 1 */
    int batch_size;              /* sequences per micro-batch */
    int grad_accum;              /* micro-batches per optimizer step */
    int max_seq_len;             /* longer examples are truncated (and counted) */
    int max_steps;               /* stop after this many optimizer steps (0: no cap) */
    double learning_rate;
    double warmup_ratio;         /* of total steps, linear warm-up from 0 */
    enum engine_schedule schedule;
    double weight_decay, beta1, beta2, adam_eps;
    double max_grad_norm;        /* 0: no clipping */
    uint64_t seed;
    int eval_interval;           /* steps between validations (0: each epoch end) */
    int checkpoint_interval;     /* steps between checkpoints (0: each epoch end only) */
    int lora_r;
    double lora_alpha, lora_dropout;
    bool use_rslora;
    unsigned target_modules;     /* bits; 0 means q_proj|v_proj */
    int grad_checkpoint;         /* activation checkpointing: 0 auto (on when the memory
                                    estimate needs it), 1 on, -1 off */
    const engine_collective *comm; /* data parallel: this process's group (borrowed);
                                    NULL (or size 1): this process alone */
} engine_train_config;

/* Fills cfg with defaults (LoRA r=8, alpha=16, q/v, lr 1e-4, AdamW .9/.999,
 * wd 0, clip 1.0, cosine, warm-up 0, 1 epoch, batch 4, max_seq_len 512). */
void engine_train_defaults(engine_train_config *cfg);

/* Progress after an optimizer step (or a validation). */
typedef struct engine_progress {
    int step, total_steps, epoch;
    double train_loss, train_accuracy;   /* of this step's tokens */
    bool has_valid;
    double valid_loss, valid_accuracy;   /* last validation */
    double learning_rate;
    int64_t tokens;                      /* tokens through forward passes so far */
    double seconds;                      /* training time so far */
    int64_t trainable_params, total_params;
} engine_progress;

enum engine_stop { ENGINE_CONTINUE = 0, ENGINE_STOP_CANCEL = 1, ENGINE_STOP_PAUSE = 2 };

/* Callbacks from the trainer; any may be NULL. They run on the training
 * thread. on_checkpoint is told of each checkpoint written (dir borrowed). */
typedef struct engine_callbacks {
    void *ctx;
    void (*on_step)(void *ctx, const engine_progress *p);
    void (*on_event)(void *ctx, const char *message);
    void (*on_checkpoint)(void *ctx, const char *dir, const engine_progress *p);
    int (*should_stop)(void *ctx); /* enum engine_stop, checked between steps */
    void (*yield)(void *ctx);      /* called between micro-steps: a chance to let others run */
} engine_callbacks;

/* The memory a training run was estimated to need before anything was
 * allocated (bytes), and what was available to it. */
typedef struct engine_memory_plan {
    double weights, trainable, activations, total, available;
    bool grad_checkpoint;         /* activation checkpointing on (asked or needed) */
} engine_memory_plan;

typedef struct engine_train_result {
    double train_loss;            /* mean of the last step */
    double valid_loss, valid_accuracy; /* NaN when there is no validation set */
    int64_t trainable_params, total_params;
    int64_t tokens;               /* tokens through forward passes */
    int64_t n_examples, truncated_examples;
    int steps, total_steps;
    double seconds;
    double comm_seconds;          /* of this process's seconds, those spent in the
                                     group's sums (0 alone) */
    bool stopped;                 /* cancelled or paused before the end */
    double retention_loss_before, retention_loss_after; /* NaN without a retention set */
    engine_memory_plan memory;    /* the estimate the run was planned with */
} engine_train_result;

/*
 * Trains per cfg, calling back as it goes. Returns RT_OK with *result
 * filled (also when stopped early: result->stopped), RT_ERR_CANCELLED is
 * never returned. On failure *why (may be NULL) says why, its message
 * naming the file and line, and its field the data set at fault when one
 * is ("train_path", "valid_path", "retention_path"; "" otherwise).
 */
int engine_train(const engine_train_config *cfg, const engine_callbacks *cb,
                 engine_train_result *result, engine_error *why);

/* Parses "q_proj,v_proj" or "all-linear" into module bits for
 * engine_train_config.target_modules. RT_ERR_INVALID names nothing; the
 * caller reports the argument. */
int engine_parse_target_modules(const char *list, unsigned *out);

/* The hidden size in model_dir's config.json, or 0 when it cannot be read
 * (the training itself then says why): what the default learning rate
 * follows. */
int engine_model_hidden_size(const char *model_dir);

/* ---- Generation and merging (offline) ----------------------------------- */

typedef struct engine_generate_config {
    const char *model_dir;
    const char *adapter_dir;  /* PEFT adapter or NULL */
    const char *prompt;
    bool raw;                 /* true: prompt is plain text; false: one user turn
                                 through the chat template */
    int max_tokens;
    double temperature;       /* 0: greedy */
    double top_p;             /* 1: off */
    int top_k;                /* 0: off */
    uint64_t seed;
    const char *device;
} engine_generate_config;

/* Generates a completion; *text (malloc'd, caller frees) and *n_tokens. */
int engine_generate(const engine_generate_config *cfg, char **text, int *n_tokens, char *err,
                    size_t errsize);

/* Writes model_dir with the adapter merged (W + scaling B A) into out_dir,
 * as a full HF model directory with the tokenizer files copied. */
int engine_merge(const char *model_dir, const char *adapter_dir, const char *out_dir, char *err,
                 size_t errsize);

/* ---- Pre-training the built-in model ------------------------------------- */

typedef struct engine_pretrain_config {
    const char *out_dir;     /* the model directory to create (appears only when complete) */
    const char *preset;      /* "tiny" (default), "micro" (tests), "small" */
    int steps;               /* optimizer steps; 0 = the preset's */
    uint64_t seed;           /* world, tokenizer and weights all follow from it */
    const char *device;
} engine_pretrain_config;

/*
 * Trains a model from random initialisation on retune's synthetic corpus
 * (engine/corpus.c): learns a byte-level BPE tokenizer on it, writes an HF
 * model directory (config.json, model.safetensors, tokenizer.json,
 * tokenizer_config.json with a ChatML template) plus retention.jsonl, a set
 * of questions about its world for measuring forgetting. Progress through
 * cb->on_step.
 */
int engine_pretrain(const engine_pretrain_config *cfg, const engine_callbacks *cb,
                    engine_train_result *result, char *err, size_t errsize);

#include "engine/engine_serve.h"

#endif
