/*
 * server/train_cmd.c — `retune train`: fine-tunes a model from the command
 * line (offline use, and how tests drive the engine). Shows a progress line
 * on a terminal and prints a JSON summary as the last line of stdout.
 * Bad arguments exit 2 naming the argument; training failures exit 1.
 *
 * Under `mpirun -np N` the N processes train the one job data-parallel
 * (server/mpi_comm.c, engine_collective); on GPUs (--device cuda, or no
 * --device on a machine with a GPU, in a CUDA=1 build) one rank per GPU,
 * the gradient summed over NCCL (server/nccl_comm.c). Rank 0 alone shows
 * progress, writes the results CSV, checkpoints and the result, and prints
 * the summary. A rank that fails ends the whole group.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "engine/engine.h"
#include "server/server.h"

static void train_usage(FILE *out)
{
    fprintf(out,
            "usage: retune train --model DIR --train FILE [--valid FILE] --method lora|full --out DIR\n"
            "    [--epochs N] [--batch-size N] [--grad-accum N] [--lr X] [--max-seq-len N] [--seed N]\n"
            "    [--lora-r N] [--lora-alpha X] [--lora-dropout X] [--target-modules a,b|all-linear]\n"
            "    [--use-rslora] [--warmup-ratio X] [--scheduler cosine|linear|constant]\n"
            "    [--weight-decay X] [--max-grad-norm X] [--max-steps N] [--eval-interval N]\n"
            "    [--checkpoint-dir DIR] [--checkpoint-interval N] [--resume DIR] [--device cpu|cuda]\n"
            "    [--dtype auto|f32|bf16|f16]  frozen LoRA base in memory (auto: as the checkpoint stores it)\n"
            "    [--grad-checkpoint]  recompute each layer's forward in backward (automatic when needed)\n"
            "    [--retention FILE]   (loss on FILE before and after: what the model kept)\n"
            "    [--results FILE]     append a CSV row per optimizer step (loss, accuracy, lr, tokens)\n"
            "Data parallel: mpirun -np N retune train ... trains the job with N processes, each\n"
            "computing its share of every step's --grad-accum micro-batches (rank 0 writes the files).\n"
            "With --device cuda: one rank per GPU (the rank's index on its machine modulo the GPUs,\n"
            "unless --device cuda:K names one), gradients summed over NCCL.\n");
}

/* Parses a number option into *out within [lo, hi]; 2 on a bad value. */
int server_parse_double(const char *cmd, const char *name, const char *text, double lo, double hi,
                        double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || !end || *end || end == text || !(v >= lo && v <= hi)) {
        fprintf(stderr, "retune %s: %s must be a number from %g to %g (got '%s')\n", cmd, name, lo,
                hi, text);
        return 2;
    }
    *out = v;
    return 0;
}

/* Integer variant of server_parse_double. */
int server_parse_int(const char *cmd, const char *name, const char *text, long lo, long hi, int *out)
{
    double v;
    if (server_parse_double(cmd, name, text, (double)lo, (double)hi, &v))
        return 2;
    if (v != floor(v)) {
        fprintf(stderr, "retune %s: %s must be an integer (got '%s')\n", cmd, name, text);
        return 2;
    }
    *out = (int)v;
    return 0;
}

/* What the step callback needs: where the results CSV goes (NULL: none). */
typedef struct train_cmd {
    const char *results_path;
    bool results_failed;         /* a write failed (said once) */
} train_cmd;

/* Applies one parsed flag to cfg; 2 on a bad value. */
static int apply_flag(engine_train_config *c, int opt, const char *arg)
{
    double d;
    int rc = 0;
    switch (opt) {
    case 'm': c->model_dir = arg; break;
    case 't': c->train_path = arg; break;
    case 'v': c->valid_path = arg; break;
    case 'o': c->out_dir = arg; break;
    case 'M':
        if (strcmp(arg, "lora") == 0) c->method = ENGINE_LORA;
        else if (strcmp(arg, "full") == 0) c->method = ENGINE_FULL;
        else { fprintf(stderr, "retune train: --method must be lora or full (got '%s')\n", arg); rc = 2; }
        break;
    case 'e': rc = server_parse_int("train", "--epochs", arg, 1, 1000, &c->epochs); break;
    case 'b': rc = server_parse_int("train", "--batch-size", arg, 1, 4096, &c->batch_size); break;
    case 'g': rc = server_parse_int("train", "--grad-accum", arg, 1, 4096, &c->grad_accum); break;
    case 'l': rc = server_parse_double("train", "--lr", arg, 1e-12, 10, &c->learning_rate); break;
    case 'L': rc = server_parse_int("train", "--max-seq-len", arg, 2, 131072, &c->max_seq_len); break;
    case 's': rc = server_parse_double("train", "--seed", arg, 0, 9007199254740991.0, &d); c->seed = (uint64_t)d; break;
    case 'r': rc = server_parse_int("train", "--lora-r", arg, 1, 1024, &c->lora_r); break;
    case 'a': rc = server_parse_double("train", "--lora-alpha", arg, 1e-6, 1e6, &c->lora_alpha); break;
    case 'd': rc = server_parse_double("train", "--lora-dropout", arg, 0, 0.999, &c->lora_dropout); break;
    case 'T':
        if (engine_parse_target_modules(arg, &c->target_modules) != RT_OK) {
            fprintf(stderr, "retune train: --target-modules must be a comma list of q_proj, k_proj, "
                            "v_proj, o_proj, gate_proj, up_proj, down_proj, or all-linear (got '%s')\n", arg);
            rc = 2;
        }
        break;
    case 'R': c->use_rslora = true; break;
    case 'w': rc = server_parse_double("train", "--warmup-ratio", arg, 0, 1, &c->warmup_ratio); break;
    case 'S':
        if (strcmp(arg, "cosine") == 0) c->schedule = ENGINE_SCHEDULE_COSINE;
        else if (strcmp(arg, "linear") == 0) c->schedule = ENGINE_SCHEDULE_LINEAR;
        else if (strcmp(arg, "constant") == 0) c->schedule = ENGINE_SCHEDULE_CONSTANT;
        else { fprintf(stderr, "retune train: --scheduler must be cosine, linear or constant (got '%s')\n", arg); rc = 2; }
        break;
    case 'W': rc = server_parse_double("train", "--weight-decay", arg, 0, 10, &c->weight_decay); break;
    case 'G': rc = server_parse_double("train", "--max-grad-norm", arg, 0, 1e9, &c->max_grad_norm); break;
    case 'x': rc = server_parse_int("train", "--max-steps", arg, 0, 1000000000, &c->max_steps); break;
    case 'E': rc = server_parse_int("train", "--eval-interval", arg, 0, 1000000000, &c->eval_interval); break;
    case 'c': c->checkpoint_dir = arg; break;
    case 'C': rc = server_parse_int("train", "--checkpoint-interval", arg, 0, 1000000000, &c->checkpoint_interval); break;
    case 'u': c->resume_dir = arg; break;
    case 'D': c->device = arg; break;
    case 'y':
        c->dtype = arg;
        if (strcmp(arg, "auto") && strcmp(arg, "f32") && strcmp(arg, "bf16") && strcmp(arg, "f16")) {
            fprintf(stderr, "retune train: --dtype must be auto, f32, bf16 or f16 (got '%s')\n", arg);
            rc = 2;
        }
        break;
    case 'P': c->grad_checkpoint = 1; break;
    case 'K': c->retention_path = arg; break;
    default: rc = 2;
    }
    return rc;
}

static int parse_train_flags(engine_train_config *c, train_cmd *cmd, int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", 1, 0, 'm'}, {"train", 1, 0, 't'}, {"valid", 1, 0, 'v'}, {"out", 1, 0, 'o'},
        {"method", 1, 0, 'M'}, {"epochs", 1, 0, 'e'}, {"batch-size", 1, 0, 'b'},
        {"grad-accum", 1, 0, 'g'}, {"lr", 1, 0, 'l'}, {"max-seq-len", 1, 0, 'L'},
        {"seed", 1, 0, 's'}, {"lora-r", 1, 0, 'r'}, {"lora-alpha", 1, 0, 'a'},
        {"lora-dropout", 1, 0, 'd'}, {"target-modules", 1, 0, 'T'}, {"use-rslora", 0, 0, 'R'},
        {"warmup-ratio", 1, 0, 'w'}, {"scheduler", 1, 0, 'S'}, {"weight-decay", 1, 0, 'W'},
        {"max-grad-norm", 1, 0, 'G'}, {"max-steps", 1, 0, 'x'}, {"eval-interval", 1, 0, 'E'},
        {"checkpoint-dir", 1, 0, 'c'}, {"checkpoint-interval", 1, 0, 'C'}, {"resume", 1, 0, 'u'},
        {"device", 1, 0, 'D'}, {"dtype", 1, 0, 'y'}, {"grad-checkpoint", 0, 0, 'P'}, {"retention", 1, 0, 'K'}, {"results", 1, 0, 'Z'}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (opt == 'h') {
            train_usage(stdout);
            return -1;
        }
        if (opt == 'Z') {
            cmd->results_path = optarg;
            continue;
        }
        if (opt == '?' || apply_flag(c, opt, optarg)) {
            train_usage(stderr);
            return 2;
        }
    }
    const char *missing = !c->model_dir ? "--model" : !c->train_path ? "--train" : !c->out_dir ? "--out" : NULL;
    if (missing) {
        fprintf(stderr, "retune train: %s is required\n", missing);
        return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "retune train: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    return 0;
}

/* Appends the step's row to the results CSV (header first in a new file;
 * a resumed run goes on appending). A failed write is said once; training
 * goes on. */
static void results_append(train_cmd *cmd, const engine_progress *p)
{
    FILE *f = fopen(cmd->results_path, "a");
    bool ok = f != NULL;
    if (ok && ftell(f) == 0)
        ok = fprintf(f, "step,train_loss,train_accuracy,valid_loss,valid_accuracy,learning_rate,"
                        "tokens\n") > 0;
    if (ok)
        ok = fprintf(f, "%d,%.9g,%.9g,", p->step, p->train_loss, p->train_accuracy) > 0;
    if (ok && p->has_valid)
        ok = fprintf(f, "%.9g,%.9g", p->valid_loss, p->valid_accuracy) > 0;
    if (ok)
        ok = fprintf(f, "%s%.9g,%lld\n", p->has_valid ? "," : ",,", p->learning_rate,
                     (long long)p->tokens) > 0;
    if (f && fclose(f) != 0)
        ok = false;
    if (!ok && !cmd->results_failed) {
        cmd->results_failed = true;
        fprintf(stderr, "retune train: cannot write %s (training goes on)\n", cmd->results_path);
    }
}

/* After each step: the results row, and the progress line, redrawn in
 * place on a terminal. (The engine calls it on rank 0 only.) */
static void on_step(void *ctx, const engine_progress *p)
{
    train_cmd *cmd = ctx;
    if (cmd->results_path)
        results_append(cmd, p);
    if (!isatty(STDERR_FILENO))
        return;
    double tps = p->seconds > 0 ? (double)p->tokens / p->seconds : 0;
    double eta = p->step > 0 ? p->seconds * (p->total_steps - p->step) / p->step : 0;
    fprintf(stderr, "\rstep %d/%d  loss %.4f  %.0f tok/s  ETA %dm%02ds   ", p->step, p->total_steps,
            p->train_loss, tps, (int)eta / 60, (int)eta % 60);
    if (p->step == p->total_steps)
        fputc('\n', stderr);
    fflush(stderr);
}

/* Prints a double as JSON (null when not finite). */
static void print_number(const char *key, double v, const char *sep)
{
    if (isfinite(v))
        printf("\"%s\": %.6g%s", key, v, sep);
    else
        printf("\"%s\": null%s", key, sep);
}

static void print_summary(const engine_train_result *r)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{");
    print_number("train_loss", r->train_loss, ", ");
    print_number("valid_loss", r->valid_loss, ", ");
    print_number("valid_accuracy", r->valid_accuracy, ", ");
    print_number("retention_loss_before", r->retention_loss_before, ", ");
    print_number("retention_loss_after", r->retention_loss_after, ", ");
    printf("\"trainable_params\": %lld, \"total_params\": %lld, \"trainable_percent\": %.4f, ",
           (long long)r->trainable_params, (long long)r->total_params,
           r->total_params ? 100.0 * (double)r->trainable_params / (double)r->total_params : 0.0);
    printf("\"tokens\": %lld, \"steps\": %d, \"examples\": %lld, \"truncated_examples\": %lld, ",
           (long long)r->tokens, r->steps, (long long)r->n_examples, (long long)r->truncated_examples);
    print_number("seconds", r->seconds, ", ");
    print_number("comm_seconds", r->comm_seconds, ", ");
    print_number("tokens_per_second", r->seconds > 0 ? (double)r->tokens / r->seconds : NAN, ", ");
    print_number("memory_estimate_bytes", r->memory.total, ", ");
    printf("\"grad_checkpoint\": %s, ", r->memory.grad_checkpoint ? "true" : "false");
    printf("\"peak_rss_bytes\": %lld}\n", (long long)ru.ru_maxrss * 1024);
    fflush(stdout);
}

int server_train_main(int argc, char **argv)
{
    engine_train_config cfg;
    engine_train_defaults(&cfg);
    train_cmd cmd = {0};
    int rc = parse_train_flags(&cfg, &cmd, argc, argv);
    if (rc)
        return rc < 0 ? 0 : rc;
    engine_collective *group = NULL;
    char err[256] = "";
    if (server_mpi_open(&group, err, sizeof err) != RT_OK) {
        fprintf(stderr, "retune train: %s\n", err);
        return 1;
    }
    engine_collective *gpus = NULL; /* the same group, over NCCL on GPUs */
    if (server_nccl_open(group, cfg.device, &gpus, &cfg.device, err, sizeof err) != RT_OK) {
        fprintf(stderr, "retune train (rank %d): %s\n", group->rank, err);
        server_mpi_abort(group, 1); /* the other ranks may wait in NCCL's start */
        server_mpi_close(group);
        return 1;
    }
    cfg.comm = gpus ? gpus : group;
    engine_callbacks cb = {.ctx = &cmd, .on_step = on_step};
    engine_train_result result;
    engine_error why = {0};
    rc = engine_train(&cfg, &cb, &result, &why);
    if (rc != RT_OK) {
        bool many = group && group->size > 1;
        char who[32] = "";
        if (many)
            snprintf(who, sizeof who, " (rank %d)", group->rank);
        fprintf(stderr, "retune train%s: %s\n", who, why.message[0] ? why.message : rt_strerror(rc));
        int status = rc == RT_ERR_INVALID ? 2 : 1;
        if (many)
            server_mpi_abort(group, status); /* the other ranks may wait for this one */
        server_nccl_close(gpus);
        server_mpi_close(group);
        return status;
    }
    if (!group || group->rank == 0)
        print_summary(&result);
    server_nccl_close(gpus);
    server_mpi_close(group);
    return 0;
}
