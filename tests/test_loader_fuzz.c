/*
 * tests/test_loader_fuzz.c — hostile and broken model directories give an
 * error, never a crash (issue 10, item 6). Every case writes a small model
 * directory under /tmp and asserts: a non-OK rt code, a message that says
 * why (and names the field, tensor or file), the out-parameter untouched,
 * and nothing for ASan/UBSan/LeakSanitizer to report; the valid inputs
 * next to them still load.
 *
 * Covered through the real entry points: model_load and model_load_as
 * (fp32, 16-bit as stored, which maps BF16 matrices from the file, and
 * f16): the config.json field matrix, inconsistent and overflowing sizes,
 * rope_scaling / sliding_window / layer_types garbage, config.json that is
 * no file (a FIFO, /dev/zero, 2 MiB, trailing bytes), tensors missing or
 * of the wrong shape, rank, dtype or offsets, truncated files, lying
 * header lengths, sharded indexes (missing shards, "../", absolute paths);
 * lora_load (adapter configs and tensors); tokenizer_load(_json); and
 * seeded mutation loops over a config.json, two checkpoints' safetensors
 * headers, an adapter, and two tokenizer.json texts. tests/test_formats.c
 * holds the sft_file_open-level table (hostile headers, mutations of one
 * file); this file is about whole directories. Meant for the sanitizer
 * build (make SAN=1); runs in a few seconds. RT_FUZZ_VERBOSE=1 prints each
 * refusal's message.
 *
 * Big cases (expected 'B' below): a config whose sizes are consistent and
 * under every limit of hf_config.c but far larger than the weights in the
 * directory (vocab_size or intermediate_size 2^31-1, vocab x hidden =
 * 2^32, 65536 layers). model_load_as checks every tensor against
 * config.json before it allocates anything sized by it, so these are
 * refused by name instead of asking for ~400 GB.
 */
#include "common/rt.h"
#include "engine/hf_config.h"
#include "engine/model.h"
#include "engine/peft.h"
#include "engine/safetensors.h"
#include "engine/tokenizer.h"
#include "kernels/kernels.h"
#include "tests/test.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_tmp[256];              /* scratch directory, removed at exit */
static const kernels_backend *g_be;
static bool g_big;                   /* run the big cases (always, see the file's head) */
static bool g_verbose;               /* RT_FUZZ_VERBOSE=1: print every message */
static int g_deferred;               /* cases left out of this run */
static max_align_t g_sentinel;       /* out-parameters point here until set */

/* Configs whose weights exceed this many floats are not given to
 * model_load in the default run (see the head of the file). */
#define FZ_BIG_FLOATS ((size_t)1 << 24)

/* The base model: Llama, V=16, d=8, FFN 12, 2 layers, 2 heads of 4, 1 KV head. */
#define FZ_BASE "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"vocab_size\":16," \
    "\"hidden_size\":8,\"intermediate_size\":12,\"num_hidden_layers\":2,\"num_attention_heads\":2," \
    "\"num_key_value_heads\":1,\"max_position_embeddings\":32,\"rms_norm_eps\":1e-05," \
    "\"rope_theta\":10000.0,\"tie_word_embeddings\":false,\"hidden_act\":\"silu\"," \
    "\"torch_dtype\":\"float32\",\"bos_token_id\":1,\"eos_token_id\":[2,3]}"

/* ---- helpers ------------------------------------------------------------- */

static const char *join(char *buf, size_t size, const char *dir, const char *name)
{
    snprintf(buf, size, "%s/%s", dir, name);
    return buf;
}

static bool contains(const char *hay, const char *needle)
{
    return hay && needle && strstr(hay, needle) != NULL;
}

/* Test scaffolding that cannot fail quietly: a broken setup stops the run. */
static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void write_bytes(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0)
        die(path);
}

static void write_text(const char *path, const char *text)
{
    write_bytes(path, text, strlen(text));
}

/* A fresh, empty g_tmp/<name>; the path goes into dir. */
static const char *fresh_dir(char *dir, size_t size, const char *name)
{
    join(dir, size, g_tmp, name);
    rt_remove_tree(dir);
    if (mkdir(dir, 0755) != 0)
        die(dir);
    return dir;
}

/* A message that carries its reason: not empty, not a bare code word. */
static bool msg_ok(const char *err, int rc)
{
    return err && strlen(err) >= 16 && strchr(err, ' ') && strcmp(err, rt_strerror(rc)) != 0;
}

/* xorshift64: the mutation loops' deterministic random numbers. */
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

/* ---- a growing text buffer ------------------------------------------------ */

typedef struct fz_buf { char *p; size_t len, cap; } fz_buf;

static void buf_add(fz_buf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (!(b->p = realloc(b->p, cap)))
            die("realloc");
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void __attribute__((format(printf, 2, 3))) buf_printf(fz_buf *b, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp)
        die("buf_printf");
    buf_add(b, tmp, (size_t)n);
}

/* ---- config.json --------------------------------------------------------- */

/* base with every member of edits (a JSON object text) set, or removed
 * where its value is "__del__". Returns malloc'd text. */
static char *cfg_apply(const char *base, const char *edits)
{
    cJSON *root = cJSON_Parse(base), *ed = edits ? cJSON_Parse(edits) : NULL;
    if (!root || (edits && !cJSON_IsObject(ed))) {
        fprintf(stderr, "bad test JSON: %s\n", edits ? edits : base);
        exit(2);
    }
    for (const cJSON *e = ed ? ed->child : NULL; e; e = e->next) {
        cJSON_DeleteItemFromObjectCaseSensitive(root, e->string);
        if (!(cJSON_IsString(e) && strcmp(e->valuestring, "__del__") == 0))
            cJSON_AddItemToObject(root, e->string, cJSON_Duplicate(e, true));
    }
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    cJSON_Delete(ed);
    if (!text)
        die("cJSON_Print");
    return text;
}

/* text with its first `from` replaced by `to` (malloc'd). */
static char *str_replace1(const char *text, const char *from, const char *to)
{
    const char *at = strstr(text, from);
    if (!at) {
        fprintf(stderr, "bad test edit: %s\n", from);
        exit(2);
    }
    fz_buf b = {0};
    buf_add(&b, text, (size_t)(at - text));
    buf_add(&b, to, strlen(to));
    buf_add(&b, at + strlen(from), strlen(at + strlen(from)));
    return b.p;
}

static model_config parse_or_die(const char *json)
{
    model_config c;
    char err[256] = "";
    if (hf_config_parse(json, strlen(json), NULL, &c, err, sizeof err) != RT_OK) {
        fprintf(stderr, "test config does not parse: %s\n", err);
        exit(2);
    }
    return c;
}

/* ---- safetensors files, written by hand so that anything can be wrong --- */

typedef struct fz_tensor {
    char name[96];
    char dtype[12];
    int rank;
    int64_t shape[SFT_MAX_RANK];
    char offsets[64];    /* raw data_offsets text; "" = the true span */
} fz_tensor;

typedef struct fz_list { fz_tensor t[160]; size_t n; } fz_list;

static fz_tensor *add(fz_list *l, const char *name, int rank, int64_t d0, int64_t d1)
{
    if (l->n == sizeof l->t / sizeof l->t[0])
        die("fz_list full");
    fz_tensor *t = &l->t[l->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    snprintf(t->dtype, sizeof t->dtype, "F32");
    t->rank = rank;
    t->shape[0] = d0;
    t->shape[1] = d1;
    return t;
}

static fz_tensor *find(fz_list *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->t[i].name, name) == 0)
            return &l->t[i];
    fprintf(stderr, "test names no tensor %s\n", name);
    exit(2);
}

static void drop(fz_list *l, const char *name)
{
    fz_tensor *t = find(l, name);
    memmove(t, t + 1, (size_t)(l->t + l->n - (t + 1)) * sizeof *t);
    l->n--;
}

/* The Hugging Face tensors of config c, written out independently of
 * engine/model.c: what a checkpoint of that config holds. */
static void model_tensors(const model_config *c, fz_list *l)
{
    static const char *proj[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
    int64_t d = c->hidden_size, f = c->intermediate_size, q = (int64_t)c->num_attention_heads * c->head_dim,
            kv = (int64_t)c->num_key_value_heads * c->head_dim;
    int64_t shapes[7][2] = {{q, d}, {kv, d}, {kv, d}, {d, q}, {f, d}, {f, d}, {d, f}};
    char name[96];
    l->n = 0;
    add(l, "model.embed_tokens.weight", 2, c->vocab_size, d);
    for (int i = 0; i < c->num_hidden_layers; i++) {
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", i);
        add(l, name, 1, d, 0);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", i);
        add(l, name, 1, d, 0);
        if (c->qk_norm) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.q_norm.weight", i);
            add(l, name, 1, c->head_dim, 0);
            snprintf(name, sizeof name, "model.layers.%d.self_attn.k_norm.weight", i);
            add(l, name, 1, c->head_dim, 0);
        }
        for (int m = 0; m < 7; m++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", i, proj[m]);
            add(l, name, 2, shapes[m][0], shapes[m][1]);
            if (c->attention_bias && m < 3) {
                snprintf(name, sizeof name, "model.layers.%d.%s.bias", i, proj[m]);
                add(l, name, 1, shapes[m][0], 0);
            }
        }
    }
    add(l, "model.norm.weight", 1, d, 0);
    if (!c->tie_word_embeddings)
        add(l, "lm_head.weight", 2, c->vocab_size, d);
}

static size_t dtype_size(const char *dt)
{
    static const struct { const char *name; size_t size; } sizes[] = {
        {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F64", 8}, {"I64", 8}, {"I32", 4}, {"I16", 2},
        {"I8", 1}, {"U8", 1}, {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (strcmp(sizes[i].name, dt) == 0)
            return sizes[i].size;
    return 4;  /* an unknown dtype: any span, the reader refuses the name */
}

/* Writes l as a safetensors file: a padded header, then each tensor's
 * bytes back to back (F32 values small and varied, other dtypes a byte
 * pattern). A tensor with raw offsets contributes no data. */
static void write_st(const char *path, const fz_list *l)
{
    fz_buf h = {0}, data = {0};
    buf_printf(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < l->n; i++) {
        const fz_tensor *t = &l->t[i];
        size_t numel = 1;
        buf_printf(&h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name, t->dtype);
        for (int k = 0; k < t->rank; k++) {
            buf_printf(&h, "%s%lld", k ? "," : "", (long long)t->shape[k]);
            numel *= (size_t)t->shape[k];
        }
        size_t begin = data.len, nbytes = t->offsets[0] ? 0 : numel * dtype_size(t->dtype);
        for (size_t b = 0; b < nbytes; b += dtype_size(t->dtype)) {
            float v = 0.01f * (float)((int)((b / 4 + i) % 13) - 6);
            unsigned char pat[8] = {(unsigned char)(b * 37), 1, 2, 3, 4, 5, 6, 7};
            if (strcmp(t->dtype, "F32") == 0)
                buf_add(&data, &v, 4);
            else
                buf_add(&data, pat, dtype_size(t->dtype));
        }
        if (t->offsets[0])
            buf_printf(&h, "],\"data_offsets\":%s}", t->offsets);
        else
            buf_printf(&h, "],\"data_offsets\":[%zu,%zu]}", begin, data.len);
    }
    buf_printf(&h, "}");
    while (h.len % 8)
        buf_add(&h, " ", 1);
    uint64_t hlen = h.len;
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(&hlen, 8, 1, f) != 1 || fwrite(h.p, 1, h.len, f) != h.len ||
        (data.len && fwrite(data.p, 1, data.len, f) != data.len) || fclose(f) != 0)
        die(path);
    free(h.p);
    free(data.p);
}

/* g_tmp/<name> holding config.json (cfg) and model.safetensors (l). */
static const char *model_dir(char *dir, size_t size, const char *name, const char *cfg, const fz_list *l)
{
    char path[600];
    fresh_dir(dir, size, name);
    write_text(join(path, sizeof path, dir, "config.json"), cfg);
    write_st(join(path, sizeof path, dir, "model.safetensors"), l);
    return dir;
}

/* Overwrites the 8-byte header length of a safetensors file. */
static void patch_hlen(const char *path, uint64_t v)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0 || pwrite(fd, &v, 8, 0) != 8 || close(fd) != 0)
        die(path);
}

static size_t file_size(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        die(path);
    return (size_t)sb.st_size;
}

/* ---- expectations -------------------------------------------------------- */

/* The loaders under test: fp32 matrices (training, merging), 16-bit as the
 * checkpoint stores them (mapped from the file when they all match), and
 * converted to f16. */
enum { LOAD_F32, LOAD_AUTO, LOAD_F16, LOAD_VARIANTS };
static const char *const g_variant_names[LOAD_VARIANTS] = {"f32", "auto", "f16"};

static int load_variant(const char *dir, int v, model **m, char *err, size_t errsize)
{
    if (v == LOAD_F32)
        return model_load(dir, g_be, m, err, errsize);
    return model_load_as(dir, g_be, v == LOAD_AUTO ? MODEL_DTYPE_AUTO : MODEL_DTYPE_F16, m, err, errsize);
}

/* Every loader refuses dir with a message naming needle (NULL: any reason). */
static void expect_load_fails(const char *what, const char *dir, const char *needle)
{
    for (int v = 0; v < LOAD_VARIANTS; v++) {
        char err[512] = "";
        model *m = (model *)&g_sentinel;
        int rc = load_variant(dir, v, &m, err, sizeof err);
        const char *vn = g_variant_names[v];
        if (g_verbose && v == LOAD_F32)
            fprintf(stderr, "   %-40s rc %d: %s\n", what, rc, err);
        CHECK_MSG(rc != RT_OK, "%s (%s): loaded", what, vn);
        if (rc == RT_OK) {
            model_free(m);
            continue;
        }
        CHECK_MSG(m == (model *)&g_sentinel, "%s (%s): out param changed", what, vn);
        CHECK_MSG(msg_ok(err, rc), "%s (%s): rc %d (%s) without a reason: \"%s\"", what, vn, rc, rt_strerror(rc),
                  err);
        CHECK_MSG(!needle || contains(err, needle), "%s (%s): \"%s\" does not name %s", what, vn, err, needle);
    }
}

static void expect_load_ok(const char *what, const char *dir)
{
    for (int v = 0; v < LOAD_VARIANTS; v++) {
        char err[512] = "";
        model *m = NULL;
        int rc = load_variant(dir, v, &m, err, sizeof err);
        CHECK_MSG(rc == RT_OK, "%s (%s): %s", what, g_variant_names[v], err);
        model_free(m);
    }
}

/* The outcomes of a config case. */
enum {
    X_PARSE = 'P',   /* hf_config_parse refuses it, naming needle; model_load gives the same */
    X_TENSOR = 'T',  /* parses; model_load refuses a tensor (needle, or "tensor") */
    X_LOAD = 'L',    /* a valid model: parses and loads */
    X_BIG = 'B',     /* parses, implies > FZ_BIG_FLOATS: deferred (see the file's head) */
};

/* Runs one config case: cfg (text) in g_tmp/<name> with the tensors of
 * tensor_cfg (the base config when NULL). */
static void run_config_case(const char *name, const char *cfg, const char *tensor_cfg, char expect,
                            const char *needle)
{
    char err[512] = "", dir[512];
    model_config c, before;
    memset(&c, 0x5a, sizeof c);
    before = c;
    int rc = hf_config_parse(cfg, strlen(cfg), NULL, &c, err, sizeof err);
    if (expect == X_PARSE) {
        CHECK_MSG(rc != RT_OK, "%s: config parses", name);
        CHECK_MSG(rc == RT_OK || msg_ok(err, rc), "%s: rc %d without a reason: \"%s\"", name, rc, err);
        CHECK_MSG(rc == RT_OK || !needle || contains(err, needle), "%s: \"%s\" does not name %s", name, err,
                  needle);
        CHECK_MSG(rc == RT_OK || memcmp(&c, &before, sizeof c) == 0, "%s: out param changed", name);
    } else {
        CHECK_MSG(rc == RT_OK, "%s: %s", name, err);
    }
    if (rc == RT_OK && model_weights_count(&c) > FZ_BIG_FLOATS) {
        CHECK_MSG(expect == X_BIG, "%s: implies %zu floats", name, model_weights_count(&c));
        if (!g_big) {
            g_deferred++;
            return;
        }
    } else {
        CHECK_MSG(expect != X_BIG, "%s: implies only %zu floats", name, rc ? 0 : model_weights_count(&c));
    }
    fz_list l;
    model_config tc = parse_or_die(tensor_cfg ? tensor_cfg : FZ_BASE);
    model_tensors(&tc, &l);
    model_dir(dir, sizeof dir, "cfg", cfg, &l);
    if (expect == X_LOAD)
        expect_load_ok(name, dir);
    else
        expect_load_fails(name, dir, expect == X_PARSE ? needle : needle ? needle : "tensor");
}

/* ---- config.json: every size field against every kind of bad value ----- */

static void test_config_field_matrix(void)
{
    static const char *values[] = {"0", "-1", "1", "2", "2147483647", "2147483648", "4294967304", "1e300",
                                   "-1e300", "\"8\"", "8.5", "true", "[]", "{}", "null"};
    enum { NV = sizeof values / sizeof values[0] };
    /* One outcome per value above: P parse error naming the field (p: naming
     * another field, which the value made inconsistent), T a tensor
     * mismatch, L loads, B deferred. Columns: M = 2^31-1, M+ = 2^31, W =
     * 2^32+8 (8 again if cast to int32), e/e- = +/-1e300, s a string, f 8.5,
     * b true. */
    static const struct { const char *field; const char *expect; } fields[] = {
        /*                              0 -1 1 2 M M+ W e e- s f b [ { null */
        {"vocab_size",                 "PPTTBPPPPPPPPPP"},
        {"hidden_size",                "PPppppPPPPPPPPP"},
        {"intermediate_size",          "PPTTBPPPPPPPPPP"},
        {"num_hidden_layers",          "PPLLPPPPPPPPPPP"},
        {"num_attention_heads",        "PPTLpPPPPPPPPPP"},
        {"num_key_value_heads",        "PPLTpPPPPPPPPPT"},
        {"head_dim",                   "PPPTPPPPPPPPPPL"},
        {"max_position_embeddings",    "PPLLLPPPPPPPPPL"},
    };
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
        if (strlen(fields[f].expect) != NV)
            die("field matrix row length");
        for (int v = 0; v < NV; v++) {
            char edits[256], name[128];
            snprintf(edits, sizeof edits, "{\"%s\":%s}", fields[f].field, values[v]);
            snprintf(name, sizeof name, "%s=%s", fields[f].field, values[v]);
            char *cfg = cfg_apply(FZ_BASE, edits);
            char e = fields[f].expect[v];
            run_config_case(name, cfg, NULL, e == 'p' ? X_PARSE : e, e == 'P' ? fields[f].field : NULL);
            free(cfg);
        }
    }
    /* Numbers cJSON cannot write back, as raw text. */
    static const struct { const char *to; char expect; } raw[] = {
        {"\"vocab_size\":1e400", X_PARSE}, {"\"vocab_size\":-0", X_PARSE}, {"\"vocab_size\":-0.0", X_PARSE},
        {"\"vocab_size\":16.0", X_LOAD}, {"\"vocab_size\":1.6e1", X_LOAD}, {"\"vocab_size\":16.5", X_PARSE},
        {"\"vocab_size\":2147483647.5", X_PARSE}, {"\"vocab_size\":0x10", X_PARSE},
        {"\"vocab_size\":16e", X_PARSE}, {"\"vocab_size\":NaN", X_PARSE}, {"\"vocab_size\":Infinity", X_PARSE},
    };
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
        char *cfg = str_replace1(FZ_BASE, "\"vocab_size\":16", raw[i].to);
        run_config_case(raw[i].to, cfg, NULL, raw[i].expect, raw[i].expect == X_PARSE ? "config.json" : NULL);
        free(cfg);
    }
}

/* ---- config.json: inconsistent sizes, overflowing products, garbage ----- */

typedef struct cfg_case {
    const char *name;
    const char *edits;    /* merged into FZ_BASE */
    char expect;
    const char *needle;   /* what the message names */
    bool own_tensors;     /* the tensors follow the edited config, not the base */
} cfg_case;

#define MISTRAL "\"model_type\":\"mistral\",\"architectures\":[\"MistralForCausalLM\"]"
#define QWEN2 "\"model_type\":\"qwen2\",\"architectures\":[\"Qwen2ForCausalLM\"]"
#define QWEN3 "\"model_type\":\"qwen3\",\"architectures\":[\"Qwen3ForCausalLM\"]"

static const cfg_case g_size_cases[] = {
    /* consistent small models: each loads with its own tensors */
    {"vocab < hidden (staging overflow once)", "{\"vocab_size\":3,\"hidden_size\":64,\"intermediate_size\":16,"
     "\"num_attention_heads\":4,\"num_key_value_heads\":4,\"num_hidden_layers\":1}", X_LOAD, NULL, true},
    {"vocab < hidden, tied", "{\"vocab_size\":3,\"hidden_size\":64,\"intermediate_size\":16,\"num_attention_heads\":4,"
     "\"num_key_value_heads\":4,\"num_hidden_layers\":1,\"tie_word_embeddings\":true}", X_LOAD, NULL, true},
    {"vocab 1, hidden 2, FFN 1", "{\"vocab_size\":1,\"hidden_size\":2,\"intermediate_size\":1,\"num_attention_heads\":1,"
     "\"num_key_value_heads\":1,\"num_hidden_layers\":1}", X_LOAD, NULL, true},
    {"intermediate_size 1", "{\"intermediate_size\":1}", X_LOAD, NULL, true},
    {"head_dim 2 x 1 head", "{\"head_dim\":2,\"num_attention_heads\":1,\"num_key_value_heads\":1}", X_LOAD, NULL, true},
    {"head_dim > hidden / heads", "{\"head_dim\":16}", X_LOAD, NULL, true},
    {"qwen2 with biases", "{" QWEN2 "}", X_LOAD, NULL, true},
    {"qwen3 with head norms", "{" QWEN3 ",\"head_dim\":6}", X_LOAD, NULL, true},
    {"tied, lm_head present too", "{\"tie_word_embeddings\":true}", X_LOAD, NULL, false},
    {"fewer layers than the file", "{\"num_hidden_layers\":1}", X_LOAD, NULL, false},
    /* sizes the file does not have */
    {"intermediate_size tiny vs file", "{\"intermediate_size\":1}", X_TENSOR, "mlp.gate_proj", false},
    {"more layers than the file", "{\"num_hidden_layers\":3}", X_TENSOR, "model.layers.2.", false},
    {"tied, no lm_head", "{\"tie_word_embeddings\":true}", X_LOAD, NULL, true},
    {"qwen2, biases missing", "{" QWEN2 "}", X_TENSOR, "self_attn.q_proj.bias", false},
    {"qwen3, head norms missing", "{" QWEN3 ",\"head_dim\":4}", X_TENSOR, "q_norm", false},
    {"attention_bias on llama", "{\"attention_bias\":true}", X_TENSOR, "attention_bias", false},
    /* inconsistent sizes */
    {"heads do not divide hidden", "{\"num_attention_heads\":3}", X_PARSE, "num_attention_heads", false},
    {"kv heads do not divide heads", "{\"num_attention_heads\":4,\"num_key_value_heads\":3}", X_PARSE,
     "num_key_value_heads", false},
    {"kv heads > heads", "{\"num_key_value_heads\":4}", X_PARSE, "num_key_value_heads", false},
    {"head_dim odd", "{\"head_dim\":5}", X_PARSE, "head_dim", false},
    {"derived head_dim odd", "{\"hidden_size\":6,\"num_attention_heads\":2}", X_PARSE, "head_dim", false},
    {"head_dim huge", "{\"head_dim\":4096}", X_PARSE, "4096", false},
    {"head_dim 2^30", "{\"head_dim\":1073741824}", X_PARSE, "head_dim", false},
    {"qwen3 default head_dim 128", "{" QWEN3 "}", X_TENSOR, "self_attn", false},
    /* products that overflow an int or reach the parameter limit */
    /* head_dim 1024 is HF_MAX_HEAD_DIM: the largest the kernels take */
    {"heads x head_dim = 2^31", "{\"num_attention_heads\":2097152,\"num_key_value_heads\":1,\"head_dim\":1024}",
     X_PARSE, "num_attention_heads", false},
    {"heads x head_dim = 2^32", "{\"num_attention_heads\":4194304,\"num_key_value_heads\":1,\"head_dim\":1024}",
     X_PARSE, "2147483647", false},
    {"vocab x hidden = 2^32", "{\"vocab_size\":1048576,\"hidden_size\":4096,\"num_attention_heads\":32,"
     "\"num_key_value_heads\":8}", X_BIG, NULL, false},
    {"vocab x hidden > 1e14 params", "{\"vocab_size\":2147483647,\"hidden_size\":65536,"
     "\"num_attention_heads\":64,\"num_key_value_heads\":8}", X_PARSE, "parameters", false},
    {"layers x layer size > 1e14 params", "{\"num_hidden_layers\":65536,\"hidden_size\":65536,"
     "\"num_attention_heads\":64}", X_PARSE, "parameters", false},
    {"65537 layers", "{\"num_hidden_layers\":65537}", X_PARSE, "num_hidden_layers 65537", false},
    {"65536 small layers", "{\"num_hidden_layers\":65536}", X_BIG, NULL, false},
    {"FFN x hidden = 2^46", "{\"intermediate_size\":2147483647,\"hidden_size\":32768,"
     "\"num_attention_heads\":32}", X_PARSE, "parameters", false},
};

static const cfg_case g_garbage_cases[] = {
    /* rope_scaling */
    {"rope_scaling number", "{\"rope_scaling\":5}", X_PARSE, "rope_scaling", false},
    {"rope_scaling string", "{\"rope_scaling\":\"linear\"}", X_PARSE, "rope_scaling", false},
    {"rope_scaling list", "{\"rope_scaling\":[]}", X_PARSE, "rope_scaling", false},
    {"rope_scaling without type", "{\"rope_scaling\":{}}", X_PARSE, "rope_type", false},
    {"rope_type a number", "{\"rope_scaling\":{\"rope_type\":5,\"factor\":2}}", X_PARSE, "rope_type", false},
    {"rope_type unknown", "{\"rope_scaling\":{\"rope_type\":\"dynamic\",\"factor\":2}}", X_PARSE, "dynamic", false},
    {"linear without factor", "{\"rope_scaling\":{\"rope_type\":\"linear\"}}", X_PARSE, "factor", false},
    {"linear factor 0", "{\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":0}}", X_PARSE, "factor", false},
    {"linear factor -1", "{\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":-1}}", X_PARSE, "factor", false},
    {"linear factor 1e300", "{\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":1e300}}", X_PARSE, "factor",
     false},
    {"linear factor string", "{\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":\"2\"}}", X_PARSE, "factor",
     false},
    {"linear factor 2 (type key)", "{\"rope_scaling\":{\"rope_type\":null,\"type\":\"linear\",\"factor\":2}}",
     X_LOAD, NULL, false},
    {"llama3 original 0", "{\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":1,"
     "\"high_freq_factor\":4,\"original_max_position_embeddings\":0}}", X_PARSE, "original_max_position", false},
    {"llama3 low == high", "{\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":4,"
     "\"high_freq_factor\":4,\"original_max_position_embeddings\":8}}", X_PARSE, "high_freq_factor", false},
    {"llama3 bands as lists", "{\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":[1],"
     "\"high_freq_factor\":4,\"original_max_position_embeddings\":8}}", X_PARSE, "low_freq_factor", false},
    {"yarn beta_fast string", "{\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4,\"beta_fast\":\"x\"}}",
     X_PARSE, "beta_fast", false},
    {"yarn attention_factor -1", "{\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4,\"attention_factor\":-1}}",
     X_PARSE, "attention_factor", false},
    {"yarn truncate string", "{\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4,\"truncate\":\"no\"}}",
     X_PARSE, "truncate", false},
    {"yarn original 2^31", "{\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4,"
     "\"original_max_position_embeddings\":2147483648}}", X_PARSE, "original_max_position", false},
    {"yarn with rope_theta 1", "{\"rope_theta\":1,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}",
     X_PARSE, "rope_theta", false},
    {"yarn tiny betas", "{\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4,\"beta_fast\":1e-30,"
     "\"beta_slow\":1e30,\"mscale\":1e-30,\"mscale_all_dim\":1e30}}", X_LOAD, NULL, false},
    /* sliding_window, max_window_layers, layer_types */
    {"mistral window 0", "{" MISTRAL ",\"sliding_window\":0}", X_PARSE, "sliding_window", false},
    {"mistral window -1", "{" MISTRAL ",\"sliding_window\":-1}", X_PARSE, "sliding_window", false},
    {"mistral window 1e300", "{" MISTRAL ",\"sliding_window\":1e300}", X_PARSE, "sliding_window", false},
    {"mistral window true", "{" MISTRAL ",\"sliding_window\":true}", X_PARSE, "sliding_window", false},
    {"mistral window list", "{" MISTRAL ",\"sliding_window\":[4]}", X_PARSE, "sliding_window", false},
    {"mistral window 2^31-1", "{" MISTRAL ",\"sliding_window\":2147483647}", X_LOAD, NULL, false},
    {"mistral window 1", "{" MISTRAL ",\"sliding_window\":1}", X_LOAD, NULL, false},
    {"mistral window null", "{" MISTRAL ",\"sliding_window\":null}", X_LOAD, NULL, false},
    {"qwen2 use_sliding_window string", "{" QWEN2 ",\"use_sliding_window\":\"yes\"}", X_PARSE,
     "use_sliding_window", false},
    {"qwen2 max_window_layers -1", "{" QWEN2 ",\"use_sliding_window\":true,\"max_window_layers\":-1}", X_PARSE,
     "max_window_layers", false},
    {"qwen2 max_window_layers 2^31", "{" QWEN2 ",\"max_window_layers\":2147483648}", X_PARSE,
     "max_window_layers", false},
    {"qwen2 max_window_layers > layers", "{" QWEN2 ",\"use_sliding_window\":true,\"sliding_window\":4,"
     "\"max_window_layers\":1000}", X_LOAD, NULL, true},
    {"layer_types string", "{\"layer_types\":\"full_attention\"}", X_PARSE, "layer_types", false},
    {"layer_types too short", "{\"layer_types\":[\"full_attention\"]}", X_PARSE, "layer_types", false},
    {"layer_types too long", "{\"layer_types\":[\"full_attention\",\"full_attention\",\"full_attention\"]}",
     X_PARSE, "layer_types", false},
    {"layer_types numbers", "{\"layer_types\":[5,5]}", X_PARSE, "layer_types[0]", false},
    {"layer_types sliding on llama", "{\"layer_types\":[\"full_attention\",\"sliding_attention\"]}", X_PARSE,
     "layer_types[1]", false},
    {"layer_types nested", "{\"layer_types\":[[\"full_attention\"],{}]}", X_PARSE, "layer_types[0]", false},
    {"layer_types valid", "{\"layer_types\":[\"full_attention\",\"full_attention\"]}", X_LOAD, NULL, false},
    {"mistral layer_types full", "{" MISTRAL ",\"sliding_window\":4,"
     "\"layer_types\":[\"full_attention\",\"full_attention\"]}", X_PARSE, "layer_types[0]", false},
    /* everything else */
    {"model_type number", "{\"model_type\":5}", X_PARSE, "model_type", false},
    {"model_type upper case", "{\"model_type\":\"LLAMA\"}", X_PARSE, "model_type", false},
    {"model_type missing", "{\"model_type\":\"__del__\"}", X_PARSE, "model_type", false},
    {"architectures empty", "{\"architectures\":[]}", X_PARSE, "architectures", false},
    {"architectures [5]", "{\"architectures\":[5]}", X_PARSE, "architectures", false},
    {"architectures object", "{\"architectures\":{}}", X_PARSE, "architectures", false},
    {"hidden_act number", "{\"hidden_act\":5}", X_PARSE, "hidden_act", false},
    {"hidden_act gelu", "{\"hidden_act\":\"gelu\"}", X_PARSE, "hidden_act", false},
    {"torch_dtype number", "{\"torch_dtype\":5}", X_PARSE, "torch_dtype", false},
    {"torch_dtype int8", "{\"torch_dtype\":\"int8\"}", X_PARSE, "torch_dtype", false},
    {"eos_token_id empty list", "{\"eos_token_id\":[]}", X_LOAD, NULL, false},
    {"eos_token_id [-1]", "{\"eos_token_id\":[-1]}", X_PARSE, "eos_token_id", false},
    {"eos_token_id string", "{\"eos_token_id\":\"2\"}", X_PARSE, "eos_token_id", false},
    {"eos_token_id 1e300", "{\"eos_token_id\":1e300}", X_PARSE, "eos_token_id", false},
    {"bos_token_id 2^31", "{\"bos_token_id\":2147483648}", X_PARSE, "bos_token_id", false},
    {"tie_word_embeddings 1", "{\"tie_word_embeddings\":1}", X_PARSE, "tie_word_embeddings", false},
    {"attention_bias string", "{\"attention_bias\":\"no\"}", X_PARSE, "attention_bias", false},
    {"mlp_bias 1", "{\"mlp_bias\":1}", X_PARSE, "mlp_bias", false},
    {"rms_norm_eps 0", "{\"rms_norm_eps\":0}", X_PARSE, "rms_norm_eps", false},
    {"rms_norm_eps -0.0", "{\"rms_norm_eps\":-0.0}", X_PARSE, "rms_norm_eps", false},
    {"rms_norm_eps 1e-50 (0 as float)", "{\"rms_norm_eps\":1e-50}", X_PARSE, "rms_norm_eps", false},
    {"rms_norm_eps 1e300", "{\"rms_norm_eps\":1e300}", X_PARSE, "rms_norm_eps", false},
    {"rms_norm_eps string", "{\"rms_norm_eps\":\"1e-5\"}", X_PARSE, "rms_norm_eps", false},
    {"rope_theta -1", "{\"rope_theta\":-1}", X_PARSE, "rope_theta", false},
    {"rope_theta 1e300", "{\"rope_theta\":1e300}", X_PARSE, "rope_theta", false},
    {"rope_theta list", "{\"rope_theta\":[10000]}", X_PARSE, "rope_theta", false},
    {"quantization_config empty", "{\"quantization_config\":{}}", X_PARSE, "quantization_config", false},
};

static void run_cfg_cases(const cfg_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char *cfg = cfg_apply(FZ_BASE, cases[i].edits);
        run_config_case(cases[i].name, cfg, cases[i].own_tensors ? cfg : NULL, cases[i].expect, cases[i].needle);
        free(cfg);
    }
}

static void test_config_sizes(void)
{
    run_cfg_cases(g_size_cases, sizeof g_size_cases / sizeof g_size_cases[0]);
}

static void test_config_garbage(void)
{
    run_cfg_cases(g_garbage_cases, sizeof g_garbage_cases / sizeof g_garbage_cases[0]);
}

/* config.json that is no config: missing, a folder, a FIFO, empty, too
 * big, not an object, trailing bytes, NUL bytes, deep nesting. */
static void test_config_files(void)
{
    model_config base = parse_or_die(FZ_BASE);
    fz_list l;
    model_tensors(&base, &l);
    char dir[512], path[600];
    model_dir(dir, sizeof dir, "cfgfile", FZ_BASE, &l);
    join(path, sizeof path, dir, "config.json");
    expect_load_ok("base model", dir);

    unlink(path);
    expect_load_fails("no config.json", dir, "config.json");
    if (mkdir(path, 0755) != 0)
        die(path);
    expect_load_fails("config.json a folder", dir, "config.json");
    rmdir(path);
    if (mkfifo(path, 0644) != 0)
        die(path);
    expect_load_fails("config.json a FIFO", dir, "config.json");  /* must not block */
    unlink(path);
    if (symlink("/dev/zero", path) != 0)
        die(path);
    expect_load_fails("config.json -> /dev/zero", dir, "config.json");
    unlink(path);
    write_text(path, "");
    expect_load_fails("config.json empty", dir, "config.json");
    int fd = open(path, O_WRONLY | O_TRUNC);
    if (fd < 0 || ftruncate(fd, (off_t)2 << 20) != 0 || close(fd) != 0)  /* sparse: 2 MiB of NULs */
        die(path);
    expect_load_fails("config.json 2 MiB", dir, "limit");
    static const struct { const char *what, *text; } bad[] = {
        {"config.json a list", "[" FZ_BASE "]"},
        {"config.json a string", "\"llama\""},
        {"config.json null", "null"},
        {"two objects", FZ_BASE FZ_BASE},
        {"trailing garbage", FZ_BASE "x"},
        {"cut in half", "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"vocab_"},
        {"nested 2000 deep", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (bad[i].text) {
            write_text(path, bad[i].text);
        } else {
            fz_buf b = {0};
            for (int k = 0; k < 2000; k++)
                buf_add(&b, "[", 1);
            write_text(path, b.p);
            free(b.p);
        }
        expect_load_fails(bad[i].what, dir, "config.json");
    }
    /* a NUL inside the text, then more JSON */
    char nul[] = FZ_BASE "\0{}";
    write_bytes(path, nul, sizeof nul - 1);
    expect_load_fails("NUL after the object", dir, "config.json");
    write_text(path, FZ_BASE "\n\t ");
    expect_load_ok("trailing whitespace", dir);
    /* the directory itself */
    expect_load_fails("no such directory", "/nonexistent/model", "config.json");
    expect_load_fails("directory is a file", path, "config.json");
}

/* ---- tensors against config.json ------------------------------------------ */

typedef struct tensor_case {
    const char *name;
    const char *tensor;   /* the one edited */
    const char *dtype;    /* NULL: F32 */
    int rank;             /* -1: keep */
    int64_t shape[SFT_MAX_RANK];
    const char *offsets;  /* raw data_offsets, or NULL */
    bool drop;
    const char *needle;
} tensor_case;

#define EMBED "model.embed_tokens.weight"
#define NORM "model.norm.weight"
#define Q0 "model.layers.0.self_attn.q_proj.weight"
#define K0 "model.layers.0.self_attn.k_proj.weight"
#define DOWN1 "model.layers.1.mlp.down_proj.weight"

static const tensor_case g_tensor_cases[] = {
    {"embed missing", EMBED, NULL, -1, {0}, NULL, true, EMBED},
    {"layer 1 down_proj missing", DOWN1, NULL, -1, {0}, NULL, true, DOWN1},
    {"final norm missing", NORM, NULL, -1, {0}, NULL, true, NORM},
    {"lm_head missing", "lm_head.weight", NULL, -1, {0}, NULL, true, "lm_head.weight"},
    {"embed transposed", EMBED, NULL, 2, {8, 16}, NULL, false, EMBED},
    {"k_proj shaped as q_proj", K0, NULL, 2, {8, 8}, NULL, false, K0},
    {"down_proj transposed", DOWN1, NULL, 2, {12, 8}, NULL, false, DOWN1},
    {"norm one too long", NORM, NULL, 1, {9}, NULL, false, NORM},
    {"norm rank 2", NORM, NULL, 2, {1, 8}, NULL, false, NORM},
    {"norm rank 0", NORM, NULL, 0, {0}, NULL, false, NORM},
    {"embed rank 1", EMBED, NULL, 1, {128}, NULL, false, EMBED},
    {"q_proj rank 3", Q0, NULL, 3, {1, 8, 8}, NULL, false, Q0},
    {"q_proj rank 8", Q0, NULL, 8, {1, 1, 1, 1, 1, 1, 8, 8}, NULL, false, Q0},
    {"q_proj rank 3 tail", Q0, NULL, 3, {8, 8, 1}, NULL, false, Q0},
    {"embed I64", EMBED, "I64", -1, {0}, NULL, false, "I64"},
    {"norm BOOL", NORM, "BOOL", -1, {0}, NULL, false, "BOOL"},
    {"q_proj F64", Q0, "F64", -1, {0}, NULL, false, "F64"},
    {"q_proj I32", Q0, "I32", -1, {0}, NULL, false, Q0},
    {"q_proj U8", Q0, "U8", -1, {0}, NULL, false, Q0},
    {"q_proj F8_E4M3", Q0, "F8_E4M3", -1, {0}, NULL, false, "F8_E4M3"},
    {"dtype unknown", Q0, "Q4_0", -1, {0}, NULL, false, "Q4_0"},
    {"dtype lower case", Q0, "f32", -1, {0}, NULL, false, "f32"},
    {"embed zero rows", EMBED, NULL, 2, {0, 8}, NULL, false, EMBED},
    {"norm zero length", NORM, NULL, 1, {0}, NULL, false, NORM},
    {"q_proj [0, 0]", Q0, NULL, 2, {0, 0}, NULL, false, Q0},
    {"shape 2^40", EMBED, NULL, 2, {16, (int64_t)1 << 40}, "[0,512]", false, EMBED},
    {"shape product overflows", EMBED, NULL, 3, {(int64_t)1 << 32, (int64_t)1 << 32, 16}, "[0,512]", false, EMBED},
    {"shape negative", EMBED, NULL, 2, {-16, 8}, "[0,512]", false, EMBED},
    {"offsets past the file", EMBED, NULL, -1, {0}, "[0,1000000]", false, EMBED},
    {"offsets reversed", EMBED, NULL, -1, {0}, "[512,0]", false, EMBED},
    {"offsets negative", EMBED, NULL, -1, {0}, "[-512,0]", false, EMBED},
    {"offsets huge", EMBED, NULL, -1, {0}, "[18446744073709551615,18446744073709551615]", false, EMBED},
    {"offsets strings", EMBED, NULL, -1, {0}, "[\"0\",\"512\"]", false, EMBED},
    {"offsets one number", EMBED, NULL, -1, {0}, "[512]", false, EMBED},
    {"offsets not a list", EMBED, NULL, -1, {0}, "512", false, EMBED},
    {"offsets overlap the embedding", Q0, "F32", -1, {0}, "[0,256]", false, "overlap"},
    {"offsets span too short", EMBED, NULL, -1, {0}, "[0,508]", false, EMBED},
};

/* Every matrix of l in dtype (norms stay F32). */
static void set_matrix_dtype(fz_list *l, const char *dtype)
{
    for (size_t i = 0; i < l->n; i++)
        if (l->t[i].rank == 2)
            snprintf(l->t[i].dtype, sizeof l->t[i].dtype, "%s", dtype);
}

/* The table on an F32 checkpoint, then on a BF16 one (which the 16-bit
 * loader maps from the file instead of copying). */
static void test_tensors(void)
{
    model_config base = parse_or_die(FZ_BASE);
    char dir[512];
    for (size_t k = 0; k < 2 * sizeof g_tensor_cases / sizeof g_tensor_cases[0]; k++) {
        const tensor_case *c = &g_tensor_cases[k % (sizeof g_tensor_cases / sizeof g_tensor_cases[0])];
        bool bf16 = k >= sizeof g_tensor_cases / sizeof g_tensor_cases[0];
        fz_list l;
        model_tensors(&base, &l);
        if (bf16)
            set_matrix_dtype(&l, "BF16");
        if (c->drop) {
            drop(&l, c->tensor);
        } else {
            fz_tensor *t = find(&l, c->tensor);
            if (c->dtype)
                snprintf(t->dtype, sizeof t->dtype, "%s", c->dtype);
            if (c->rank >= 0) {
                t->rank = c->rank;
                memcpy(t->shape, c->shape, sizeof t->shape);
            }
            if (c->offsets)
                snprintf(t->offsets, sizeof t->offsets, "%s", c->offsets);
        }
        model_dir(dir, sizeof dir, "tensors", FZ_BASE, &l);
        expect_load_fails(c->name, dir, c->needle);
    }
    /* Tensors the model does not use are ignored, whatever they hold. */
    fz_list l;
    model_tensors(&base, &l);
    model_dir(dir, sizeof dir, "tensors", FZ_BASE, &l);
    expect_load_ok("F32 weights", dir);
    set_matrix_dtype(&l, "BF16");
    model_dir(dir, sizeof dir, "tensors", FZ_BASE, &l);
    expect_load_ok("BF16 weights (mapped)", dir);
    model_tensors(&base, &l);
    fz_tensor *x = add(&l, "model.layers.7.extra", 3, 2, 2);
    x->shape[2] = 2;
    snprintf(x->dtype, sizeof x->dtype, "I64");
    model_dir(dir, sizeof dir, "tensors", FZ_BASE, &l);
    expect_load_ok("an extra I64 tensor", dir);
    /* F16 and BF16 weights convert */
    for (size_t i = 0; i < l.n; i++)
        snprintf(l.t[i].dtype, sizeof l.t[i].dtype, "%s", i % 2 ? "F16" : "BF16");
    model_dir(dir, sizeof dir, "tensors", FZ_BASE, &l);
    expect_load_ok("F16/BF16 weights", dir);
}

/* A model.safetensors cut short, with a lying header length, or no file. */
static void test_weight_files(void)
{
    model_config base = parse_or_die(FZ_BASE);
    fz_list l;
    model_tensors(&base, &l);
    char dir[512], path[600];
    model_dir(dir, sizeof dir, "wfile", FZ_BASE, &l);
    join(path, sizeof path, dir, "model.safetensors");
    char *whole = NULL;
    size_t total = 0;
    if (rt_read_file(path, 1 << 20, &whole, &total, NULL, 0) != RT_OK)
        die(path);
    uint64_t hlen;
    memcpy(&hlen, whole, 8);
    size_t cuts[] = {0, 1, 7, 8, 9, 8 + hlen / 2, 8 + hlen - 1, 8 + hlen, 8 + hlen + 1, total / 2 + 5, total - 4,
                     total - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "truncated to %zu of %zu bytes", cuts[i], total);
        write_bytes(path, whole, cuts[i]);
        expect_load_fails(what, dir, "model.safetensors");
    }
    uint64_t brace = hlen;  /* a length that cuts off the header's closing brace */
    while (brace > 0 && whole[8 + brace - 1] != '}')
        brace--;
    uint64_t lens[] = {0, 1, brace - 1, hlen + 1, total - 8 + 1, (uint64_t)1 << 63, ~(uint64_t)0, (uint64_t)1 << 32};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "header length %llu", (unsigned long long)lens[i]);
        write_bytes(path, whole, total);
        patch_hlen(path, lens[i]);
        expect_load_fails(what, dir, "model.safetensors");
    }
    /* a 200 MiB sparse file whose header claims 150 MiB: over the limit */
    write_bytes(path, whole, total);
    int fd = open(path, O_WRONLY);
    if (fd < 0 || ftruncate(fd, (off_t)200 << 20) != 0 || close(fd) != 0)
        die(path);
    patch_hlen(path, (uint64_t)150 << 20);
    expect_load_fails("header length 150 MiB", dir, "100 MiB");
    /* header bytes replaced by garbage, length kept */
    write_bytes(path, whole, total);
    fd = open(path, O_WRONLY);
    if (fd < 0 || pwrite(fd, "\xff\xfe\x00{", 4, 8) != 4 || close(fd) != 0)
        die(path);
    expect_load_fails("header starts with garbage", dir, "model.safetensors");
    write_bytes(path, whole, total);
    expect_load_ok("restored", dir);
    /* not there, a folder, a FIFO, a device */
    unlink(path);
    expect_load_fails("no model.safetensors", dir, "model.safetensors");
    if (mkdir(path, 0755) != 0)
        die(path);
    expect_load_fails("model.safetensors a folder", dir, "model.safetensors");
    rmdir(path);
    if (mkfifo(path, 0644) != 0)
        die(path);
    expect_load_fails("model.safetensors a FIFO", dir, "model.safetensors");
    unlink(path);
    if (symlink("/dev/null", path) != 0)
        die(path);
    expect_load_fails("model.safetensors -> /dev/null", dir, "model.safetensors");
    unlink(path);
    free(whole);
}

/* ---- sharded models: model.safetensors.index.json --------------------------- */

/* dir with config.json, shards s1 (embedding and layer 0) and s2 (the
 * rest), and an index whose weight_map is built from l, then edited:
 * every tensor whose name contains `match` is mapped to `shard` instead. */
static void sharded_dir(char *dir, size_t size, const char *match, const char *shard, const char *drop_name)
{
    model_config base = parse_or_die(FZ_BASE);
    fz_list l, a = {.n = 0}, b = {.n = 0};
    model_tensors(&base, &l);
    for (size_t i = 0; i < l.n; i++) {
        bool first = strstr(l.t[i].name, "embed") || strstr(l.t[i].name, "layers.0.");
        (first ? &a : &b)->t[(first ? &a : &b)->n++] = l.t[i];
    }
    char path[600];
    fresh_dir(dir, size, "sharded");
    write_text(join(path, sizeof path, dir, "config.json"), FZ_BASE);
    write_st(join(path, sizeof path, dir, "s1.safetensors"), &a);
    write_st(join(path, sizeof path, dir, "s2.safetensors"), &b);
    fz_buf ix = {0};
    buf_printf(&ix, "{\"metadata\":{\"total_size\":0},\"weight_map\":{");
    bool comma = false;
    for (size_t i = 0; i < l.n; i++) {
        if (drop_name && strcmp(l.t[i].name, drop_name) == 0)
            continue;
        bool first = strstr(l.t[i].name, "embed") || strstr(l.t[i].name, "layers.0.");
        const char *s = match && strstr(l.t[i].name, match) ? shard : first ? "s1.safetensors" : "s2.safetensors";
        buf_printf(&ix, "%s\"%s\":\"%s\"", comma ? "," : "", l.t[i].name, s);
        comma = true;
    }
    buf_printf(&ix, "}}");
    write_text(join(path, sizeof path, dir, "model.safetensors.index.json"), ix.p);
    free(ix.p);
}

static void test_sharded(void)
{
    char dir[512], path[600];
    sharded_dir(dir, sizeof dir, NULL, NULL, NULL);
    expect_load_ok("two shards", dir);
    static const struct { const char *what, *match, *shard, *needle; } cases[] = {
        {"missing shard", "layers.1.", "s3.safetensors", "s3.safetensors"},
        {"path traversal", "layers.1.", "../s2.safetensors", "../s2.safetensors"},
        {"traversal inside a name", "lm_head", "s2.safetensors/../../x", "invalid shard"},
        {"absolute path", "lm_head", "/etc/passwd", "/etc/passwd"},
        {"empty shard name", "lm_head", "", "invalid shard"},
        {"shard is the folder", "lm_head", ".", "."},
        {"shard is the index", "lm_head", "model.safetensors.index.json", "model.safetensors.index.json"},
        {"shard is config.json", "lm_head", "config.json", "config.json"},
        {"shard lacks the tensor", "layers.1.", "s1.safetensors", "lacks"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sharded_dir(dir, sizeof dir, cases[i].match, cases[i].shard, NULL);
        expect_load_fails(cases[i].what, dir, cases[i].needle);
    }
    sharded_dir(dir, sizeof dir, NULL, NULL, "lm_head.weight");
    expect_load_fails("weight_map omits lm_head", dir, "lm_head.weight");
    static const struct { const char *what, *text, *needle; } idx[] = {
        {"index not JSON", "{\"weight_map\":", "index.json"},
        {"index a list", "[]", "weight_map"},
        {"weight_map a list", "{\"weight_map\":[\"s1.safetensors\"]}", "weight_map"},
        {"weight_map value a number", "{\"weight_map\":{\"" EMBED "\":1}}", "weight_map"},
        {"weight_map value null", "{\"weight_map\":{\"" EMBED "\":null}}", "weight_map"},
        {"weight_map empty", "{\"weight_map\":{}}", EMBED},
        {"weight_map names a tensor twice", "{\"weight_map\":{\"" EMBED "\":\"s1.safetensors\",\"" EMBED
         "\":\"s1.safetensors\"}}", "twice"},
    };
    for (size_t i = 0; i < sizeof idx / sizeof idx[0]; i++) {
        sharded_dir(dir, sizeof dir, NULL, NULL, NULL);
        write_text(join(path, sizeof path, dir, "model.safetensors.index.json"), idx[i].text);
        expect_load_fails(idx[i].what, dir, idx[i].needle);
    }
    /* a shard cut short; an index too big to read */
    sharded_dir(dir, sizeof dir, NULL, NULL, NULL);
    join(path, sizeof path, dir, "s2.safetensors");
    int fd = open(path, O_WRONLY);
    if (fd < 0 || ftruncate(fd, (off_t)file_size(path) - 3) != 0 || close(fd) != 0)
        die(path);
    expect_load_fails("shard truncated", dir, "s2.safetensors");
    join(path, sizeof path, dir, "model.safetensors.index.json");
    fd = open(path, O_WRONLY);
    if (fd < 0 || ftruncate(fd, (off_t)65 << 20) != 0 || close(fd) != 0)
        die(path);
    expect_load_fails("index 65 MiB", dir, "index.json");
    unlink(path);
    if (mkfifo(path, 0644) != 0)
        die(path);
    expect_load_fails("index a FIFO", dir, "index.json");
}

/* ---- LoRA adapters --------------------------------------------------------- */

#define PEFT_OK "{\"peft_type\":\"LORA\",\"task_type\":\"CAUSAL_LM\",\"r\":2,\"lora_alpha\":4," \
    "\"target_modules\":[\"q_proj\",\"v_proj\"],\"bias\":\"none\"}"

/* The tensors of an r-2 adapter on q_proj and v_proj of the base model. */
static void adapter_tensors(fz_list *l, int r)
{
    char key[128];
    l->n = 0;
    for (int layer = 0; layer < 2; layer++) {
        peft_key_format(layer, PEFT_Q_PROJ, 'A', key, sizeof key);
        add(l, key, 2, r, 8);
        peft_key_format(layer, PEFT_Q_PROJ, 'B', key, sizeof key);
        add(l, key, 2, 8, r);
        peft_key_format(layer, PEFT_V_PROJ, 'A', key, sizeof key);
        add(l, key, 2, r, 8);
        peft_key_format(layer, PEFT_V_PROJ, 'B', key, sizeof key);
        add(l, key, 2, 4, r);
    }
}

static const char *adapter_dir(char *dir, size_t size, const char *cfg, const fz_list *l)
{
    char path[600];
    fresh_dir(dir, size, "adapter");
    if (cfg)
        write_text(join(path, sizeof path, dir, "adapter_config.json"), cfg);
    if (l)
        write_st(join(path, sizeof path, dir, "adapter_model.safetensors"), l);
    return dir;
}

static void expect_lora(const char *what, const char *dir, const model_config *c, const char *needle)
{
    char err[512] = "";
    lora *ad = (lora *)&g_sentinel;
    int rc = lora_load(dir, c, g_be, &ad, err, sizeof err);
    if (g_verbose)
        fprintf(stderr, "   %-40s rc %d: %s\n", what, rc, err);
    if (!needle) {
        CHECK_MSG(rc == RT_OK, "%s: %s", what, err);
        if (rc == RT_OK)
            lora_free(ad);
        return;
    }
    CHECK_MSG(rc != RT_OK, "%s: loaded", what);
    if (rc == RT_OK) {
        lora_free(ad);
        return;
    }
    CHECK_MSG(ad == (lora *)&g_sentinel, "%s: out param changed", what);
    CHECK_MSG(msg_ok(err, rc), "%s: rc %d (%s) without a reason: \"%s\"", what, rc, rt_strerror(rc), err);
    CHECK_MSG(contains(err, needle), "%s: \"%s\" does not name %s", what, err, needle);
}

#define QA0 "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
#define VB1 "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"

static void test_lora(void)
{
    model_config base = parse_or_die(FZ_BASE);
    char dir[512], path[600];
    fz_list l;
    adapter_tensors(&l, 2);
    expect_lora("valid adapter", adapter_dir(dir, sizeof dir, PEFT_OK, &l), &base, NULL);
    expect_lora("no adapter_config.json", adapter_dir(dir, sizeof dir, NULL, &l), &base, "adapter_config.json");
    expect_lora("no adapter_model.safetensors", adapter_dir(dir, sizeof dir, PEFT_OK, NULL), &base,
                "adapter_model.safetensors");
    static const struct { const char *edits, *needle; } cfgs[] = {
        {"{\"r\":0}", "r must"}, {"{\"r\":-1}", "r must"}, {"{\"r\":1e300}", "r must"}, {"{\"r\":\"2\"}", "r must"},
        {"{\"r\":2.5}", "r must"}, {"{\"r\":65537}", "r must"}, {"{\"r\":2147483648}", "r must"},
        {"{\"r\":4}", QA0}, {"{\"r\":1}", QA0}, {"{\"r\":65536}", QA0},
        {"{\"lora_alpha\":0}", "lora_alpha"}, {"{\"lora_alpha\":1e300}", "lora_alpha"},
        {"{\"lora_alpha\":\"4\"}", "lora_alpha"}, {"{\"lora_dropout\":1}", "lora_dropout"},
        {"{\"lora_dropout\":-0.5}", "lora_dropout"}, {"{\"target_modules\":[]}", "target_modules"},
        {"{\"target_modules\":5}", "target_modules"}, {"{\"target_modules\":[\"lm_head\"]}", "lm_head"},
        {"{\"target_modules\":[\"q_proj\"]}", "v_proj"},
        {"{\"target_modules\":[\"q_proj\",\"v_proj\",\"k_proj\"]}", "k_proj"},
        {"{\"peft_type\":\"IA3\"}", "peft_type"}, {"{\"peft_type\":5}", "peft_type"},
        {"{\"use_dora\":true}", "use_dora"}, {"{\"bias\":\"all\"}", "bias"},
        {"{\"rank_pattern\":{\"q_proj\":4}}", "rank_pattern"}, {"{\"use_rslora\":\"yes\"}", "use_rslora"},
        {"{\"base_model_name_or_path\":5}", "base_model_name_or_path"},
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++) {
        char *cfg = cfg_apply(PEFT_OK, cfgs[i].edits);
        expect_lora(cfgs[i].edits, adapter_dir(dir, sizeof dir, cfg, &l), &base, cfgs[i].needle);
        free(cfg);
    }
    expect_lora("adapter_config.json a list", adapter_dir(dir, sizeof dir, "[]", &l), &base, "adapter_config.json");
    expect_lora("adapter_config.json empty", adapter_dir(dir, sizeof dir, "", &l), &base, "adapter_config.json");

    static const struct { const char *what, *tensor, *dtype; int rank; int64_t d0, d1; const char *needle; } ts[] = {
        {"A with r 3", QA0, NULL, 2, 3, 8, QA0},
        {"A transposed", QA0, NULL, 2, 8, 2, QA0},
        {"B shaped for q on v", VB1, NULL, 2, 8, 2, VB1},
        {"A rank 1", QA0, NULL, 1, 16, 0, QA0},
        {"A rank 0", QA0, NULL, 0, 0, 0, QA0},
        {"A rank 3", QA0, NULL, 3, 2, 8, QA0},
        {"A zero rows", QA0, NULL, 2, 0, 8, QA0},
        {"A I64", QA0, "I64", -1, 0, 0, "I64"},
        {"B BOOL", VB1, "BOOL", -1, 0, 0, "BOOL"},
        {"B F64", VB1, "F64", -1, 0, 0, "F64"},
    };
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        adapter_tensors(&l, 2);
        fz_tensor *t = find(&l, ts[i].tensor);
        if (ts[i].dtype)
            snprintf(t->dtype, sizeof t->dtype, "%s", ts[i].dtype);
        if (ts[i].rank >= 0) {
            t->rank = ts[i].rank;
            t->shape[0] = ts[i].d0;
            t->shape[1] = ts[i].d1;
            t->shape[2] = ts[i].rank > 2 ? 1 : 0;
        }
        expect_lora(ts[i].what, adapter_dir(dir, sizeof dir, PEFT_OK, &l), &base, ts[i].needle);
    }
    adapter_tensors(&l, 2);
    drop(&l, VB1);
    expect_lora("B of layer 1 missing", adapter_dir(dir, sizeof dir, PEFT_OK, &l), &base, "lora_B of layer 1");
    adapter_tensors(&l, 2);
    add(&l, "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight", 2, 2, 8);
    expect_lora("layer past the base", adapter_dir(dir, sizeof dir, PEFT_OK, &l), &base, "layers.2.");
    adapter_tensors(&l, 2);
    add(&l, "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight", 2, 2, 8);
    expect_lora("untargeted module", adapter_dir(dir, sizeof dir, PEFT_OK, &l), &base, "k_proj");
    adapter_tensors(&l, 2);
    add(&l, "base_model.model.lm_head.weight", 2, 16, 8);
    expect_lora("a non-LoRA key", adapter_dir(dir, sizeof dir, PEFT_OK, &l), &base, "lm_head");
    adapter_tensors(&l, 2);
    add(&l, "base_model.model.model.layers.99999999999.self_attn.q_proj.lora_A.weight", 2, 2, 8);
    expect_lora("layer number too long", adapter_dir(dir, sizeof dir, PEFT_OK, &l), &base, "99999999999");
    adapter_tensors(&l, 2);
    add(&l, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", 2, 2, 8);
    expect_lora("A given twice (.weight and .default.weight)", adapter_dir(dir, sizeof dir, PEFT_OK, &l), &base,
                "twice");
    adapter_tensors(&l, 2);
    snprintf(find(&l, QA0)->offsets, sizeof l.t[0].offsets, "[0,100000]");
    expect_lora("A offsets past the file", adapter_dir(dir, sizeof dir, PEFT_OK, &l), &base, QA0);
    adapter_tensors(&l, 2);
    adapter_dir(dir, sizeof dir, PEFT_OK, &l);
    join(path, sizeof path, dir, "adapter_model.safetensors");
    int fd = open(path, O_WRONLY);
    if (fd < 0 || ftruncate(fd, (off_t)file_size(path) - 1) != 0 || close(fd) != 0)
        die(path);
    expect_lora("adapter truncated", dir, &base, "adapter_model.safetensors");
    patch_hlen(path, ~(uint64_t)0);
    expect_lora("adapter header length ~0", dir, &base, "adapter_model.safetensors");
    unlink(path);
    if (mkfifo(path, 0644) != 0)
        die(path);
    expect_lora("adapter a FIFO", dir, &base, "adapter_model.safetensors");
}

/* ---- tokenizer.json -------------------------------------------------------- */

/* SentencePiece-style BPE with byte fallback and a template. */
static const char g_tok_sp[] =
    "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":0,\"content\":\"<s>\",\"special\":true,\"lstrip\":false,"
    "\"rstrip\":false,\"single_word\":false,\"normalized\":false},{\"id\":1,\"content\":\"</s>\",\"special\":true}],"
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"\xe2\x96\x81\"},"
    "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\xe2\x96\x81\"}]},\"pre_tokenizer\":null,"
    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
    "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":[],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[0],"
    "\"tokens\":[\"<s>\"]}}},\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":"
    "{\"String\":\"\xe2\x96\x81\"},\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\","
    "\"content\":\" \",\"start\":1,\"stop\":0}]},\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":\"<unk>\","
    "\"fuse_unk\":true,\"byte_fallback\":true,\"vocab\":{\"<s>\":0,\"</s>\":1,\"<unk>\":2,\"<0x41>\":3,"
    "\"\xe2\x96\x81\":4,\"a\":5,\"b\":6,\"ab\":7,\"\xe2\x96\x81" "ab\":8},\"merges\":[\"a b\",\"\xe2\x96\x81 ab\"]}}";

/* Byte-level BPE behind a Split regex. */
static const char g_tok_bl[] =
    "{\"added_tokens\":[{\"id\":6,\"content\":\"<|end|>\",\"special\":true}],\"normalizer\":null,"
    "\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
    "\"\\\\s?\\\\p{L}+|\\\\s?\\\\p{N}|\\\\s+\"},\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\","
    "\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":false}]},\"post_processor\":{\"type\":\"ByteLevel\"},"
    "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,"
    "\"\xc4\xa0\":3,\"\xc4\xa0" "ab\":4,\"c\":5},\"merges\":[\"a b\",\"\xc4\xa0 ab\"],\"ignore_merges\":false}}";

/* Loads len bytes; when that works, encodes and decodes a little text.
 * Returns the rc; a failure must say why. */
static int tok_try(const char *what, const char *json, size_t len)
{
    char err[512] = "";
    tokenizer *tok = (tokenizer *)&g_sentinel;
    int rc = tokenizer_load_json(json, len, &tok, err, sizeof err);
    if (g_verbose && strcmp(what, "tokenizer mutation") != 0)
        fprintf(stderr, "   %-40s rc %d: %s\n", what, rc, err);
    if (rc != RT_OK) {
        CHECK_MSG(tok == (tokenizer *)&g_sentinel, "%s: out param changed", what);
        CHECK_MSG(msg_ok(err, rc), "%s: rc %d without a reason: \"%s\" for %.*s", what, rc, err, (int)len, json);
        return rc;
    }
    static const char text[] = "ab abc <s>A\xff 12 \xe2\x96\x81" "ab</s><|end|>";
    int32_t *ids = NULL;
    size_t n = 0;
    char *out = NULL;
    size_t out_len = 0;
    CHECK_MSG(tokenizer_encode(tok, text, sizeof text - 1, true, &ids, &n) == RT_OK, "%s: encode", what);
    if (ids)
        CHECK_MSG(tokenizer_decode(tok, ids, n, false, &out, &out_len) == RT_OK, "%s: decode", what);
    free(ids);
    free(out);
    tokenizer_free(tok);
    return rc;
}

static void test_tokenizer(void)
{
    CHECK_EQ_INT(tok_try("sentencepiece base", g_tok_sp, sizeof g_tok_sp - 1), RT_OK);
    CHECK_EQ_INT(tok_try("byte-level base", g_tok_bl, sizeof g_tok_bl - 1), RT_OK);
    static const struct { const char *what, *from, *to; } cases[] = {
        {"vocab id -1", "\"a\":5", "\"a\":-1"},
        {"vocab id 1e300", "\"a\":5", "\"a\":1e300"},
        {"vocab id 2^22", "\"a\":5", "\"a\":4194304"},
        {"vocab id 2.5", "\"a\":5", "\"a\":2.5"},
        {"vocab id string", "\"a\":5", "\"a\":\"5\""},
        {"added id huge", "\"id\":1,", "\"id\":99999999999,"},
        {"added id missing", "\"id\":1,", ""},
        {"added content a number", "\"content\":\"</s>\"", "\"content\":5"},
        {"added_tokens an object", "\"added_tokens\":[", "\"added_tokens\":{\"a\":1},\"x\":["},
        {"merge of unknown tokens", "\"a b\"", "\"a z\""},
        {"merge with three parts", "\"a b\"", "\"a b c\""},
        {"merge a number", "\"a b\"", "5"},
        {"merge list of one", "\"a b\"", "[\"a\"]"},
        {"merges an object", "\"merges\":[", "\"merges\":{\"a\":1},\"x\":["},
        {"vocab a list", "\"vocab\":{", "\"vocab\":[1],\"x\":{"},
        {"model a list", "\"model\":{", "\"model\":[1],\"x\":{"},
        {"model type Unigram", "\"type\":\"BPE\"", "\"type\":\"Unigram\""},
        {"normalizer unknown", "\"type\":\"Prepend\"", "\"type\":\"Lowercase2\""},
        {"normalizer a number", "\"normalizer\":{", "\"normalizer\":5,\"x\":{"},
        {"decoder unknown", "\"type\":\"Fuse\"", "\"type\":\"Fuse2\""},
        {"post_processor unknown", "\"type\":\"TemplateProcessing\"", "\"type\":\"RobertaProcessing2\""},
        {"template id past TK_MAX_ID", "\"ids\":[0]", "\"ids\":[99999999]"},
        {"template id past the vocabulary", "\"ids\":[0]", "\"ids\":[100]"},
        {"template ids missing", "\"ids\":[0]", "\"idz\":[0]"},
        {"template token without id", "{\"SpecialToken\":{\"id\":\"<s>\"", "{\"SpecialToken\":{\"di\":\"<s>\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *json = str_replace1(g_tok_sp, cases[i].from, cases[i].to);
        int rc = tok_try(cases[i].what, json, strlen(json));
        CHECK_MSG(rc != RT_OK, "tokenizer %s: loaded", cases[i].what);
        free(json);
    }
    /* Regexes that compile load (and must then encode without hanging). */
    static const struct { const char *what, *from, *to; bool fails; } bl[] = {
        {"regex does not compile", "\\\\s?\\\\p{L}+", "(\\\\s?[", true},
        {"regex empty", "\\\\s?\\\\p{L}+|\\\\s?\\\\p{N}|\\\\s+", "", false},
        {"regex matches empty", "\\\\s?\\\\p{L}+|\\\\s?\\\\p{N}|\\\\s+", "a*", false},
        {"regex backtracks", "\\\\s?\\\\p{L}+|\\\\s?\\\\p{N}|\\\\s+", "(a|a)*(a|a)*(a|a)*b", false},
        {"split behavior unknown", "\"Isolated\"", "\"Sideways\"", true},
        {"pattern a number", "\"pattern\":{", "\"pattern\":5,\"x\":{", true},
        {"pre_tokenizer unknown", "\"type\":\"Split\"", "\"type\":\"Whitespace2\"", true},
    };
    for (size_t i = 0; i < sizeof bl / sizeof bl[0]; i++) {
        char *json = str_replace1(g_tok_bl, bl[i].from, bl[i].to);
        int rc = tok_try(bl[i].what, json, strlen(json));
        CHECK_MSG((rc != RT_OK) == bl[i].fails, "tokenizer %s: rc %d", bl[i].what, rc);
        free(json);
    }
    char err[256] = "";
    tokenizer *tok = NULL;
    CHECK(tokenizer_load(g_tmp, &tok, err, sizeof err) != RT_OK && tok == NULL && err[0]);
    char path[600];
    join(path, sizeof path, g_tmp, "tokenizer.fifo");
    if (mkfifo(path, 0644) != 0)
        die(path);
    err[0] = '\0';
    CHECK_MSG(tokenizer_load(path, &tok, err, sizeof err) != RT_OK && tok == NULL && err[0], "FIFO: %s", err);
    unlink(path);
    if (symlink("/dev/zero", path) != 0)  /* endless: must be refused, not read until memory runs out */
        die(path);
    err[0] = '\0';
    CHECK_MSG(tokenizer_load(path, &tok, err, sizeof err) != RT_OK && tok == NULL && err[0], "/dev/zero: %s", err);
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    if (fd < 0 || ftruncate(fd, (off_t)300 << 20) != 0 || close(fd) != 0)  /* sparse */
        die(path);
    err[0] = '\0';
    CHECK_MSG(tokenizer_load(path, &tok, err, sizeof err) == RT_ERR_TOO_LARGE && tok == NULL && contains(err, "limit"),
              "300 MiB: %s", err);
    unlink(path);
}

/* ---- seeded mutation loops -------------------------------------------------- */

static const char g_mut_alphabet[] = "{}[]\",:0123456789-+.eE \\\0xtrufalsn";

/* Mutates buf (len bytes, capacity cap) in place: byte replacements from
 * the JSON alphabet or anywhere, a truncation, a deletion or a duplicated
 * slice. Returns the new length. */
static size_t mutate(char *buf, size_t len, size_t cap, size_t lo, size_t hi)
{
    uint64_t r = rnd();
    size_t span = hi - lo;
    switch (r % 8) {
    case 0:  /* truncate */
        return lo + (size_t)(rnd() % span);
    case 1: {  /* delete a slice */
        size_t at = lo + (size_t)(rnd() % span), n = 1 + (size_t)(rnd() % 8);
        n = at + n > len ? len - at : n;
        memmove(buf + at, buf + at + n, len - at - n);
        return len - n;
    }
    case 2: {  /* duplicate a slice: numbers grow, keys repeat */
        size_t at = lo + (size_t)(rnd() % span), n = 1 + (size_t)(rnd() % 6);
        n = at + n > len ? len - at : n;
        if (len + n > cap)
            return len;
        memmove(buf + at + n, buf + at, len - at);
        return len + n;
    }
    default: {  /* replace 1..4 bytes */
        int edits = 1 + (int)(rnd() % 4);
        for (int e = 0; e < edits; e++) {
            uint64_t s = rnd();
            size_t at = lo + (size_t)(s % span);
            buf[at] = (s >> 32) & 1 ? g_mut_alphabet[(s >> 40) % (sizeof g_mut_alphabet - 1)]
                                    : (char)(s >> 40);
        }
        return len;
    }
    }
}

/* Byte flips and truncations of a config.json that uses most fields:
 * whatever hf_config_parse says, model_load says the same or loads. */
static void test_mutate_config(void)
{
    const char *base_text = FZ_BASE;
    char *cfg = cfg_apply(base_text, "{\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,"
                          "\"low_freq_factor\":1,\"high_freq_factor\":4,\"original_max_position_embeddings\":8},"
                          "\"layer_types\":[\"full_attention\",\"full_attention\"],\"head_dim\":4}");
    model_config base = parse_or_die(cfg);
    fz_list l;
    model_tensors(&base, &l);
    char dir[512], path[600];
    model_dir(dir, sizeof dir, "mutcfg", cfg, &l);
    join(path, sizeof path, dir, "config.json");
    size_t n0 = strlen(cfg), cap = 2 * n0 + 64;
    char *buf = malloc(cap);
    int parsed = 0, refused = 0, loaded = 0, skipped = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(buf, cfg, n0);
        size_t n = n0;
        for (int k = 1 + (int)(rnd() % 3); k > 0 && n > 0; k--)
            n = mutate(buf, n, cap, 0, n);
        char err[512] = "";
        model_config c;
        int rc = hf_config_parse(buf, n, NULL, &c, err, sizeof err);
        CHECK_MSG(rc == RT_OK || msg_ok(err, rc), "config mutation %d: rc %d \"%s\"", iter, rc, err);
        rc == RT_OK ? parsed++ : refused++;
        (void)skipped;
        if (rc != RT_OK && iter % 4)
            continue;
        write_bytes(path, buf, n);
        char lerr[512] = "";
        model *m = NULL;
        int lrc = load_variant(dir, iter % LOAD_VARIANTS, &m, lerr, sizeof lerr);
        CHECK_MSG(rc == RT_OK || lrc == rc, "config mutation %d: parse rc %d, load rc %d", iter, rc, lrc);
        CHECK_MSG(lrc == RT_OK || msg_ok(lerr, lrc), "config mutation %d: load rc %d \"%s\"", iter, lrc, lerr);
        loaded += lrc == RT_OK;
        model_free(m);
    }
    CHECK(parsed > 100 && refused > 1000 && loaded > 50);
    fprintf(stderr, "   config mutations: %d parsed (%d loaded, %d too big to try), %d refused\n", parsed, loaded,
            skipped, refused);
    free(buf);
    free(cfg);
}

/* Byte flips of a model's safetensors header (and its length), loaded as
 * a whole model by each loader: shapes and offsets go wrong in every way
 * at once. Two checkpoints: dtypes mixed (F32/BF16/F16, converted), and
 * every matrix BF16 (mapped by the 16-bit loader). */
static void test_mutate_weights(void)
{
    model_config base = parse_or_die(FZ_BASE);
    char dir[2][512], path[2][600], *orig[2];
    size_t total[2];
    uint64_t hlen[2];
    for (int b = 0; b < 2; b++) {
        fz_list l;
        model_tensors(&base, &l);
        for (size_t i = 0; i < l.n; i++)
            snprintf(l.t[i].dtype, sizeof l.t[i].dtype, "%s",
                     b ? (l.t[i].rank == 2 ? "BF16" : "F32") : i % 3 == 1 ? "BF16" : i % 3 == 2 ? "F16" : "F32");
        model_dir(dir[b], sizeof dir[b], b ? "mutst_bf16" : "mutst", FZ_BASE, &l);
        join(path[b], sizeof path[b], dir[b], "model.safetensors");
        if (rt_read_file(path[b], 1 << 20, &orig[b], &total[b], NULL, 0) != RT_OK)
            die(path[b]);
        memcpy(&hlen[b], orig[b], 8);
    }
    size_t cap = (total[0] > total[1] ? total[0] : total[1]) + 64;
    char *buf = malloc(cap);
    int loaded = 0, refused = 0;
    for (int iter = 0; iter < 2400; iter++) {
        int b = iter % 2, v = (iter / 2) % LOAD_VARIANTS;
        memcpy(buf, orig[b], total[b]);
        size_t n = total[b];
        if ((iter / 6) % 2) {  /* digit for digit: the JSON stays valid, the numbers go wrong */
            for (int e = 1 + iter % 4; e > 0; e--) {
                size_t at = 8 + (size_t)(rnd() % hlen[b]);
                while (at < 8 + hlen[b] && !(buf[at] >= '0' && buf[at] <= '9'))
                    at++;
                if (at < 8 + hlen[b])
                    buf[at] = (char)('0' + rnd() % 10);
            }
        } else {
            n = mutate(buf, n, cap, 0, 8 + (size_t)hlen[b]);
        }
        write_bytes(path[b], buf, n);
        char err[512] = "";
        model *m = NULL;
        int rc = load_variant(dir[b], v, &m, err, sizeof err);
        CHECK_MSG(rc == RT_OK || msg_ok(err, rc), "weights mutation %d (%s): rc %d \"%s\"", iter,
                  g_variant_names[v], rc, err);
        rc == RT_OK ? loaded++ : refused++;
        model_free(m);
    }
    CHECK(refused > 1000 && loaded > 3);
    fprintf(stderr, "   weights mutations: %d loaded, %d refused\n", loaded, refused);
    free(buf);
    free(orig[0]);
    free(orig[1]);
}

/* Byte flips of an adapter's config and safetensors header. */
static void test_mutate_adapter(void)
{
    model_config base = parse_or_die(FZ_BASE);
    fz_list l;
    adapter_tensors(&l, 2);
    char dir[512], cpath[600], spath[600];
    adapter_dir(dir, sizeof dir, PEFT_OK, &l);
    join(cpath, sizeof cpath, dir, "adapter_config.json");
    join(spath, sizeof spath, dir, "adapter_model.safetensors");
    char *st = NULL;
    size_t total = 0;
    if (rt_read_file(spath, 1 << 20, &st, &total, NULL, 0) != RT_OK)
        die(spath);
    uint64_t hlen;
    memcpy(&hlen, st, 8);
    size_t n0 = strlen(PEFT_OK), cap = 2 * n0 + 64 > total + 64 ? 2 * n0 + 64 : total + 64;
    char *buf = malloc(cap);
    int loaded = 0, refused = 0;
    for (int iter = 0; iter < 1500; iter++) {
        bool on_config = iter % 2 == 0;
        memcpy(buf, on_config ? PEFT_OK : st, on_config ? n0 : total);
        size_t n = on_config ? mutate(buf, n0, cap, 0, n0) : mutate(buf, total, cap, 0, 8 + (size_t)hlen);
        write_bytes(on_config ? cpath : spath, buf, n);
        char err[512] = "";
        lora *ad = NULL;
        int rc = lora_load(dir, &base, g_be, &ad, err, sizeof err);
        CHECK_MSG(rc == RT_OK || msg_ok(err, rc), "adapter mutation %d: rc %d \"%s\"", iter, rc, err);
        rc == RT_OK ? loaded++ : refused++;
        lora_free(ad);
        write_bytes(on_config ? cpath : spath, on_config ? PEFT_OK : st, on_config ? n0 : total);
    }
    CHECK(refused > 500 && loaded > 10);
    fprintf(stderr, "   adapter mutations: %d loaded, %d refused\n", loaded, refused);
    free(buf);
    free(st);
}

/* Byte flips of the two small tokenizer.json texts; what loads must
 * encode and decode. */
static void test_mutate_tokenizer(void)
{
    const char *bases[2] = {g_tok_sp, g_tok_bl};
    size_t lens[2] = {sizeof g_tok_sp - 1, sizeof g_tok_bl - 1};
    enum { CAP = 2 * (sizeof g_tok_sp > sizeof g_tok_bl ? sizeof g_tok_sp : sizeof g_tok_bl) + 64 };
    char *buf = malloc(CAP);
    int loaded = 0, refused = 0;
    for (int iter = 0; iter < 2000; iter++) {
        int b = iter % 2;
        memcpy(buf, bases[b], lens[b]);
        size_t n = lens[b];
        for (int k = 1 + (int)(rnd() % 2); k > 0 && n > 0; k--)
            n = mutate(buf, n, CAP, 0, n);
        tok_try("tokenizer mutation", buf, n) == RT_OK ? loaded++ : refused++;
    }
    CHECK(refused > 500 && loaded > 100);
    fprintf(stderr, "   tokenizer mutations: %d loaded, %d refused\n", loaded, refused);
    free(buf);
}

/* RUN, with the seconds each group took. */
#define RUN_TIMED(fn) do { double t_ = rt_now_seconds(); RUN(fn); \
    fprintf(stderr, "   (%.2f s)\n", rt_now_seconds() - t_); } while (0)

int main(void)
{
    g_be = kernels_cpu_backend();
    g_big = true; /* model_load_as now checks the tensors before allocating: always run them */
    g_verbose = getenv("RT_FUZZ_VERBOSE") != NULL;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/rt_test_loader_fuzz.XXXXXX");
    if (!mkdtemp(g_tmp))
        die("mkdtemp");
    alarm(300);  /* a hang (e.g. a FIFO opened blocking) fails the run instead of stalling it */
    rt_log_set_level(RT_LOG_ERROR);  /* sliding-window and tokenizer warnings are expected */
    double t0 = rt_now_seconds();
    RUN_TIMED(test_config_field_matrix);
    RUN_TIMED(test_config_sizes);
    RUN_TIMED(test_config_garbage);
    RUN_TIMED(test_config_files);
    RUN_TIMED(test_tensors);
    RUN_TIMED(test_weight_files);
    RUN_TIMED(test_sharded);
    RUN_TIMED(test_lora);
    RUN_TIMED(test_tokenizer);
    RUN_TIMED(test_mutate_config);
    RUN_TIMED(test_mutate_weights);
    RUN_TIMED(test_mutate_adapter);
    RUN_TIMED(test_mutate_tokenizer);
    rt_remove_tree(g_tmp);
    fprintf(stderr, "   %.1f s\n", rt_now_seconds() - t0);
    CHECK_EQ_INT(g_deferred, 0); /* every case runs */
    return TEST_SUMMARY();
}
