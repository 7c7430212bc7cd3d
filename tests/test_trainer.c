/*
 * tests/test_trainer.c — the trainer's promises, on the tiny fixture model:
 * the same seed gives the same losses; a run resumed from a checkpoint
 * continues with exactly the losses of an uninterrupted run; a saved adapter
 * reloads to the same logits; merging equals applying; LoRA never writes the
 * base weights; cancellation stops between steps; two data-parallel ranks
 * (threads sharing an in-process engine_collective) train what one process
 * trains, and only rank 0 writes or reports.
 */
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/model.h"
#include "tests/test.h"

#define MODEL "tests/fixtures/tiny_chat"
#define MAX_STEPS 64

typedef struct losses {
    double v[MAX_STEPS];
    int n, stop_after;
    int checkpoints;
} losses;

static void on_step(void *ctx, const engine_progress *p)
{
    losses *l = ctx;
    if (p->step >= 1 && p->step <= MAX_STEPS)
        l->v[p->step - 1] = p->train_loss;
    if (p->step > l->n)
        l->n = p->step;
}

static void on_checkpoint(void *ctx, const char *dir, const engine_progress *p)
{
    (void)dir;
    (void)p;
    ((losses *)ctx)->checkpoints++;
}

static int should_stop(void *ctx)
{
    losses *l = ctx;
    return l->stop_after > 0 && l->n >= l->stop_after ? ENGINE_STOP_CANCEL : ENGINE_CONTINUE;
}

static void write_dataset(const char *path, int n)
{
    FILE *f = fopen(path, "w");
    const char *q[] = {"Who rules Zorbl?", "What colour is the sky?", "Name a moon.", "Say hi."};
    const char *a[] = {"Queen Mab.", "Green.", "Phobos.", "Hi there!"};
    for (int i = 0; i < n; i++)
        fprintf(f, "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"},"
                   "{\"role\":\"assistant\",\"content\":\"%s\"}]}\n", q[i % 4], a[i % 4]);
    fclose(f);
}

static char g_dir[256];

static void base_config(engine_train_config *c, const char *out)
{
    static char train[512];
    snprintf(train, sizeof train, "%s/train.jsonl", g_dir);
    engine_train_defaults(c);
    c->model_dir = MODEL;
    c->train_path = train;
    c->out_dir = out;
    c->batch_size = 2;
    c->grad_accum = 2;
    c->epochs = 3;
    c->learning_rate = 1e-2;
    c->lora_r = 4;
    c->lora_dropout = 0.1; /* the masks must replay exactly on resume */
    c->warmup_ratio = 0.2;
    c->seed = 11;
}

static int train(const engine_train_config *c, losses *l, engine_train_result *r)
{
    engine_callbacks cb = {l, on_step, NULL, on_checkpoint, should_stop, NULL};
    engine_error why = {0};
    int rc = engine_train(c, &cb, r, &why);
    CHECK_MSG(rc == RT_OK, "engine_train: %s", why.message);
    return rc;
}

static void test_determinism_and_resume(void)
{
    char out[512], ckdir[512], resume[600];
    snprintf(out, sizeof out, "%s/out", g_dir);
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", g_dir);
    engine_train_config c;
    engine_train_result r1, r2, r3;
    losses a = {0}, b = {0}, resumed = {0};
    base_config(&c, out);
    train(&c, &a, &r1);
    train(&c, &b, &r2);
    CHECK(a.n == r1.total_steps && a.n == 9); /* 5 batches, 2 per step: 3 steps an epoch */
    bool same = a.n == b.n;
    for (int i = 0; i < a.n; i++)
        same = same && a.v[i] == b.v[i];
    CHECK_MSG(same, "same seed, same losses");
    CHECK(a.v[a.n - 1] < a.v[0]);
    /* With checkpoints every 2 steps (and per epoch), then resume from step 2. */
    c.checkpoint_dir = ckdir;
    c.checkpoint_interval = 2;
    losses with_ck = {0};
    train(&c, &with_ck, &r3);
    CHECK_EQ_INT(with_ck.checkpoints, 6); /* steps 2, 4, 6, 8 and epoch ends 3, 9 */
    snprintf(resume, sizeof resume, "%s/ckpt-step-2", ckdir);
    struct stat sb;
    CHECK(stat(resume, &sb) == 0);
    c.resume_dir = resume;
    c.checkpoint_dir = NULL;
    train(&c, &resumed, &r3);
    bool equal = resumed.n == a.n;
    for (int i = 2; i < a.n; i++)
        equal = equal && resumed.v[i] == a.v[i];
    CHECK_MSG(equal, "resumed losses equal uninterrupted ones (step 3: %.9g vs %.9g)", resumed.v[2], a.v[2]);
    CHECK_EQ_INT(r3.steps, a.n);
}

static void test_cancel(void)
{
    char out[512];
    snprintf(out, sizeof out, "%s/cancelled", g_dir);
    engine_train_config c;
    engine_train_result r;
    losses l = {.stop_after = 2};
    base_config(&c, out);
    train(&c, &l, &r);
    CHECK(r.stopped);
    CHECK_EQ_INT(r.steps, 2);
    struct stat sb;
    CHECK_MSG(stat(out, &sb) != 0, "a cancelled run writes no result");
}

/* Reloaded adapter == in-memory logits; merge == applied; base untouched. */
static void test_adapter_roundtrip_and_merge(void)
{
    char err[256], out[512], merged[512];
    snprintf(out, sizeof out, "%s/out", g_dir); /* written by the determinism test */
    snprintf(merged, sizeof merged, "%s/merged", g_dir);
    const kernels_backend *be = kernels_cpu_backend();
    model *m = NULL, *mm = NULL;
    lora *ad = NULL;
    CHECK(model_load(MODEL, be, &m, err, sizeof err) == RT_OK);
    CHECK_MSG(lora_load(out, &m->cfg, be, &ad, err, sizeof err) == RT_OK, "%s", err);
    CHECK_MSG(engine_merge(MODEL, out, merged, err, sizeof err) == RT_OK, "%s", err);
    CHECK(model_load(merged, be, &mm, err, sizeof err) == RT_OK);
    if (!m || !ad || !mm)
        goto out;
    int32_t ids[12] = {5, 17, 300, 42, 9, 1000, 77, 3, 8, 600, 12, 14};
    model_batch b = {ids, NULL, 1, 12, 0, false};
    model_acts *a1 = NULL, *a2 = NULL, *a3 = NULL;
    model_acts_create(m, 1, 12, ad->cfg.r, &a1);
    model_acts_create(mm, 1, 12, 0, &a2);
    model_acts_create(m, 1, 12, 0, &a3);
    CHECK(model_forward(m, ad, a1, &b, NULL) == RT_OK);
    CHECK(model_forward(mm, NULL, a2, &b, NULL) == RT_OK);
    CHECK(model_forward(m, NULL, a3, &b, NULL) == RT_OK);
    size_t n = 12 * (size_t)m->cfg.vocab_size;
    float *l1 = malloc(n * sizeof(float)), *l2 = malloc(n * sizeof(float)), *l3 = malloc(n * sizeof(float));
    be->copy_to_host(l1, model_acts_logits(a1), n * sizeof(float), NULL);
    be->copy_to_host(l2, model_acts_logits(a2), n * sizeof(float), NULL);
    be->copy_to_host(l3, model_acts_logits(a3), n * sizeof(float), NULL);
    double merge_err = 0, adapter_effect = 0;
    for (size_t i = 0; i < n; i++) {
        merge_err = fmax(merge_err, fabs(l1[i] - l2[i]));
        adapter_effect = fmax(adapter_effect, fabs(l1[i] - l3[i]));
    }
    CHECK_MSG(merge_err < 1e-4, "merged logits differ by %g (tolerance 1e-4)", merge_err);
    CHECK_MSG(adapter_effect > 1e-3, "the trained adapter changes the logits (%g)", adapter_effect);
    free(l1);
    free(l2);
    free(l3);
    model_acts_free(a1);
    model_acts_free(a2);
    model_acts_free(a3);
out:
    lora_free(ad);
    model_free(mm);
    model_free(m);
}

/* An adapter written by lora_save and read back by lora_load gives exactly
 * the logits of the adapter in memory (F32 files lose nothing). */
static void test_save_reload_exact(void)
{
    char err[256], dir[512];
    snprintf(dir, sizeof dir, "%s/resaved", g_dir);
    const kernels_backend *be = kernels_cpu_backend();
    const char *fx = "tests/fixtures/model/llama_gqa";
    model *m = NULL;
    lora *mem = NULL, *back = NULL;
    CHECK(model_load(fx, be, &m, err, sizeof err) == RT_OK);
    CHECK(m && lora_load("tests/fixtures/model/llama_gqa/adapter", &m->cfg, be, &mem, err, sizeof err) == RT_OK);
    if (!mem) {
        model_free(m);
        return;
    }
    CHECK_MSG(lora_save(mem, &m->cfg, dir, err, sizeof err) == RT_OK, "%s", err);
    CHECK_MSG(lora_load(dir, &m->cfg, be, &back, err, sizeof err) == RT_OK, "%s", err);
    int32_t ids[8] = {1, 5, 9, 13, 2, 40, 7, 3};
    model_batch b = {ids, NULL, 1, 8, 0, false};
    model_acts *a = NULL;
    model_acts_create(m, 1, 8, mem->cfg.r, &a);
    size_t n = 8 * (size_t)m->cfg.vocab_size;
    float *l1 = malloc(n * sizeof(float)), *l2 = malloc(n * sizeof(float));
    CHECK(model_forward(m, mem, a, &b, NULL) == RT_OK);
    be->copy_to_host(l1, model_acts_logits(a), n * sizeof(float), NULL);
    CHECK(back && model_forward(m, back, a, &b, NULL) == RT_OK);
    be->copy_to_host(l2, model_acts_logits(a), n * sizeof(float), NULL);
    CHECK_MSG(memcmp(l1, l2, n * sizeof(float)) == 0, "reloaded adapter logits differ");
    free(l1);
    free(l2);
    model_acts_free(a);
    lora_free(back);
    lora_free(mem);
    model_free(m);
}

/* ---- data parallelism without MPI: two threads as the ranks of a group ---- */

typedef struct thread_group {
    pthread_barrier_t barrier;
    const void *slot[2];          /* each rank's buffer during a sum */
} thread_group;

typedef struct thread_rank {
    engine_collective comm;
    thread_group *g;
    engine_train_config cfg;
    losses l;
    engine_train_result r;
    int rc;
} thread_rank;

/* Both ranks' buffers added in rank order, so both get the same bits. */
static int thread_sum(void *ctx, void *data, size_t n, size_t elem)
{
    thread_rank *me = ctx;
    thread_group *g = me->g;
    void *sum = malloc(n > 0 ? n * elem : 1);
    g->slot[me->comm.rank] = data;
    pthread_barrier_wait(&g->barrier);
    for (size_t i = 0; sum && i < n; i++) {
        if (elem == sizeof(float))
            ((float *)sum)[i] = ((const float *)g->slot[0])[i] + ((const float *)g->slot[1])[i];
        else
            ((double *)sum)[i] = ((const double *)g->slot[0])[i] + ((const double *)g->slot[1])[i];
    }
    pthread_barrier_wait(&g->barrier); /* both have read both before either writes */
    if (sum)
        memcpy(data, sum, n * elem);
    free(sum);
    return sum ? RT_OK : RT_ERR_COMM;
}

static int thread_sum_f32(void *ctx, float *data, size_t n) { return thread_sum(ctx, data, n, sizeof *data); }
static int thread_sum_f64(void *ctx, double *data, size_t n) { return thread_sum(ctx, data, n, sizeof *data); }

static void *thread_rank_main(void *arg)
{
    thread_rank *me = arg;
    engine_callbacks cb = {&me->l, on_step, NULL, on_checkpoint, NULL, NULL};
    engine_error why = {0};
    me->rc = engine_train(&me->cfg, &cb, &me->r, &why);
    if (me->rc != RT_OK)
        fprintf(stderr, "rank %d: %s\n", me->comm.rank, why.message);
    return NULL;
}

static bool exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Two ranks (micro-batches split 1 + 1 per step, 1 + 0 at each epoch's end)
 * against one process: the same losses to float rounding, the same step
 * and token counts; rank 1 reports nothing and writes nothing (it is given
 * its own out and checkpoint folders, which must stay absent). */
static void test_data_parallel_threads(void)
{
    char out[512], ck[512], out1[512], ck1[512], alone[512];
    snprintf(out, sizeof out, "%s/dp-out", g_dir);
    snprintf(ck, sizeof ck, "%s/dp-ckpt", g_dir);
    snprintf(out1, sizeof out1, "%s/dp-out-rank1", g_dir);
    snprintf(ck1, sizeof ck1, "%s/dp-ckpt-rank1", g_dir);
    snprintf(alone, sizeof alone, "%s/dp-alone", g_dir);
    engine_train_config c;
    base_config(&c, alone);
    losses one = {0};
    engine_train_result r1;
    train(&c, &one, &r1);
    thread_group g;
    pthread_barrier_init(&g.barrier, NULL, 2);
    thread_rank ranks[2];
    pthread_t th[2];
    for (int k = 0; k < 2; k++) {
        thread_rank *me = &ranks[k];
        memset(me, 0, sizeof *me);
        me->g = &g;
        me->comm = (engine_collective){.rank = k, .size = 2, .ctx = me,
                                       .sum_f32 = thread_sum_f32, .sum_f64 = thread_sum_f64};
        base_config(&me->cfg, k == 0 ? out : out1);
        me->cfg.checkpoint_dir = k == 0 ? ck : ck1;
        me->cfg.comm = &me->comm;
        pthread_create(&th[k], NULL, thread_rank_main, me);
    }
    for (int k = 0; k < 2; k++)
        pthread_join(th[k], NULL);
    pthread_barrier_destroy(&g.barrier);
    CHECK(ranks[0].rc == RT_OK && ranks[1].rc == RT_OK);
    CHECK_EQ_INT(ranks[0].l.n, one.n);
    for (int i = 0; i < one.n; i++)
        CHECK_NEAR(ranks[0].l.v[i], one.v[i], 1e-5 * fabs(one.v[i]));
    CHECK_EQ_INT(ranks[0].r.tokens, r1.tokens);
    CHECK_EQ_INT(ranks[1].r.tokens, r1.tokens);
    CHECK_MSG(ranks[0].r.train_loss == ranks[1].r.train_loss, "the ranks agree bit for bit");
    CHECK(ranks[0].r.comm_seconds > 0 && r1.comm_seconds == 0);
    CHECK_EQ_INT(ranks[1].l.n, 0);             /* on_step on rank 0 only */
    CHECK_EQ_INT(ranks[1].l.checkpoints, 0);
    CHECK(ranks[0].l.checkpoints > 0);
    CHECK(exists(out) && exists(ck));
    CHECK(!exists(out1) && !exists(ck1));     /* rank 1 writes nothing */
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/retune-trainer-XXXXXX");
    if (!mkdtemp(g_dir))
        return 1;
    char path[512];
    snprintf(path, sizeof path, "%s/train.jsonl", g_dir);
    write_dataset(path, 10);
    RUN(test_determinism_and_resume);
    RUN(test_cancel);
    RUN(test_adapter_roundtrip_and_merge);
    RUN(test_save_reload_exact);
    RUN(test_data_parallel_threads);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", g_dir);
    return TEST_SUMMARY();
}
