/*
 * tests/test_formats.c — the file formats of engine/: safetensors (reading,
 * sharded models, writing, dtype conversion, hostile files), Hugging Face
 * config.json, and PEFT adapter configs and tensor keys.
 *
 * Reference data under tests/fixtures/formats/ was produced by PyTorch
 * (tests/fixtures/make_format_fixtures.py); run from the repository root,
 * or set RT_FORMAT_FIXTURES to that folder. Meant to run under ASan/UBSan:
 * the hostile-header table and the mutation loop must never crash.
 */
#include "common/rt.h"
#include "engine/hf_config.h"
#include "engine/peft.h"
#include "engine/safetensors.h"
#include "tests/test.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <ftw.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_tmp[256];        /* scratch directory, removed at exit */
static const char *g_fix;      /* fixture directory */

/* ---- helpers ------------------------------------------------------------- */

/* path = dir "/" name into buf. */
static const char *join(char *buf, size_t size, const char *dir, const char *name)
{
    snprintf(buf, size, "%s/%s", dir, name);
    return buf;
}

/* Writes len bytes to path (test scaffolding; aborts the check on failure). */
static void write_bytes(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    CHECK_MSG(f != NULL, "cannot create %s", path);
    if (!f)
        return;
    CHECK(fwrite(data, 1, len, f) == len);
    fclose(f);
}

/* Writes a safetensors file from a header text, its declared length and data. */
static void write_st(const char *path, uint64_t hlen, const char *header, size_t header_bytes,
                     const void *data, size_t data_len)
{
    size_t n = 8 + header_bytes + data_len;
    unsigned char *buf = malloc(n);
    memcpy(buf, &hlen, 8);
    memcpy(buf + 8, header, header_bytes);
    if (data_len)
        memcpy(buf + 8 + header_bytes, data, data_len);
    write_bytes(path, buf, n);
    free(buf);
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Equal bit patterns, or both NaN. */
static bool same_float(float a, float b)
{
    return (isnan(a) && isnan(b)) || f32_bits(a) == f32_bits(b);
}

/* Reads a whole tensor to a malloc'd float array (NULL on error). */
static float *read_all(const sft_tensor *t)
{
    float *v = malloc((t->numel ? t->numel : 1) * sizeof *v);
    if (sft_tensor_read_f32(t, v, t->numel) != RT_OK) {
        free(v);
        return NULL;
    }
    return v;
}

static bool contains(const char *hay, const char *needle)
{
    return hay && needle && strstr(hay, needle) != NULL;
}

/* nftw callback removing every entry. */
static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

/* Counts directory entries whose name contains ".tmp." (leftover temp files). */
static int count_tmp_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL)
        n += strstr(e->d_name, ".tmp.") != NULL;
    if (d)
        closedir(d);
    return n;
}

/* ---- dtype conversion ----------------------------------------------------- */

static void test_bf16_rounding(void)
{
    static const struct { uint32_t in; uint16_t out; } cases[] = {
        {0x3f800000u, 0x3f80}, /* 1.0 exact */
        {0x3f808000u, 0x3f80}, /* tie, lower is even: down */
        {0x3f818000u, 0x3f82}, /* tie, lower is odd: up */
        {0x3f808001u, 0x3f81}, /* just above the tie: up */
        {0x3f807fffu, 0x3f80}, /* just below the tie: down */
        {0xbf818000u, 0xbf82}, /* negative tie to even */
        {0x7f7fffffu, 0x7f80}, /* FLT_MAX rounds to inf */
        {0x7f7f7fffu, 0x7f7f}, /* largest that stays finite */
        {0x7f800000u, 0x7f80}, /* +inf */
        {0xff800000u, 0xff80}, /* -inf */
        {0x7fc00000u, 0x7fc0}, /* qNaN */
        {0x7f800001u, 0x7fc0}, /* sNaN becomes quiet, not inf */
        {0xff800001u, 0xffc0}, /* negative sNaN */
        {0x00000000u, 0x0000}, {0x80000000u, 0x8000},
        {0x00008000u, 0x0000}, /* subnormal tie to even (0) */
        {0x00018000u, 0x0002}, /* subnormal tie to even (2) */
        {0x00010001u, 0x0001},
        {0x3eaaaaabu, 0x3eab}, /* 1/3 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t got = sft_f32_to_bf16(bits_f32(cases[i].in));
        CHECK_MSG(got == cases[i].out, "bf16(0x%08x) = 0x%04x, want 0x%04x", cases[i].in, got, cases[i].out);
    }
    for (uint32_t b = 0; b < 0x10000u; b++) {  /* bf16 -> f32 -> bf16 is the identity */
        uint16_t back = sft_f32_to_bf16(sft_bf16_to_f32((uint16_t)b));
        bool nan = (b & 0x7fffu) > 0x7f80u;
        if (nan ? (back & 0x7fffu) <= 0x7f80u : back != b) {
            CHECK_MSG(false, "bf16 0x%04x round trip gave 0x%04x", b, back);
            break;
        }
    }
    CHECK(f32_bits(sft_bf16_to_f32(0x3f80)) == 0x3f800000u);
    CHECK(f32_bits(sft_bf16_to_f32(0xc049)) == 0xc0490000u);
}

static void test_f16_table(void)
{
    static const struct { uint16_t h; float f; } cases[] = {
        {0x0000, 0.0f}, {0x3c00, 1.0f}, {0xc000, -2.0f}, {0x7bff, 65504.0f}, {0xfbff, -65504.0f},
        {0x3555, 0.333251953125f}, {0x0400, 6.103515625e-05f},           /* smallest normal */
        {0x0001, 5.9604644775390625e-08f}, {0x8001, -5.9604644775390625e-08f}, /* smallest subnormal */
        {0x03ff, 6.097555160522461e-05f}, {0x0200, 3.0517578125e-05f},   /* subnormals */
        {0x3800, 0.5f}, {0x5640, 100.0f},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        float got = sft_f16_to_f32(cases[i].h);
        CHECK_MSG(f32_bits(got) == f32_bits(cases[i].f), "f16 0x%04x -> %.9g, want %.9g", cases[i].h,
                  (double)got, (double)cases[i].f);
    }
    CHECK(f32_bits(sft_f16_to_f32(0x8000)) == 0x80000000u);  /* -0 keeps its sign */
    CHECK(isinf(sft_f16_to_f32(0x7c00)) && sft_f16_to_f32(0x7c00) > 0);
    CHECK(isinf(sft_f16_to_f32(0xfc00)) && sft_f16_to_f32(0xfc00) < 0);
    CHECK(isnan(sft_f16_to_f32(0x7e00)));
    CHECK(isnan(sft_f16_to_f32(0x7c01)));  /* smallest-payload NaN is not inf */
    CHECK(isnan(sft_f16_to_f32(0xfe00)) && signbit(sft_f16_to_f32(0xfe00)));
#ifdef __FLT16_MAX__
    /* every bit pattern against the compiler's own half conversion */
    int bad = 0;
    for (uint32_t b = 0; b < 0x10000u; b++) {
        uint16_t h = (uint16_t)b;
        _Float16 x;
        memcpy(&x, &h, 2);
        if (!same_float(sft_f16_to_f32(h), (float)x) && bad++ < 5)
            fprintf(stderr, "f16 0x%04x: %.9g vs %.9g\n", b, (double)sft_f16_to_f32(h), (double)(float)x);
    }
    CHECK_EQ_INT(bad, 0);
    /* F32 -> F16 rounding against the compiler's on every half, each
     * midpoint between neighbours (ties to even) and a sweep of floats */
    bad = 0;
    for (uint32_t b = 0; b < 0x7c00u; b++) {
        float lo = sft_f16_to_f32((uint16_t)b), hi = sft_f16_to_f32((uint16_t)(b + 1));
        float probes[3] = {lo, (lo + hi) / 2, -lo};
        for (int k = 0; k < 3; k++) {
            _Float16 x = (_Float16)probes[k];
            uint16_t want;
            memcpy(&want, &x, 2);
            if (sft_f32_to_f16(probes[k]) != want && bad++ < 5)
                fprintf(stderr, "f32 %.9g -> f16 0x%04x, want 0x%04x\n", (double)probes[k],
                        sft_f32_to_f16(probes[k]), want);
        }
    }
    for (uint32_t u = 0; u < 0xffffffffu - 0x10001u; u += 0x10001u) {
        float f;
        memcpy(&f, &u, 4);
        _Float16 x = (_Float16)f;
        uint16_t want;
        memcpy(&want, &x, 2);
        bad += isnan(f) ? !isnan(sft_f16_to_f32(sft_f32_to_f16(f))) : sft_f32_to_f16(f) != want;
    }
    CHECK_EQ_INT(bad, 0);
#endif
    CHECK_EQ_INT(sft_f32_to_f16(65520.0f), 0x7c00);  /* rounds past the largest half */
    CHECK_EQ_INT(sft_f32_to_f16(65519.0f), 0x7bff);
    CHECK_EQ_INT(sft_f32_to_f16(-0.0f), 0x8000);
    CHECK_EQ_INT(sft_f32_to_f16(1e-9f), 0x0000);
}

/* ---- reading torch-made files ---------------------------------------------- */

static void test_torch_dtypes(void)
{
    char path[512], err[256] = "";
    sft_file *f = NULL;
    int rc = sft_file_open(join(path, sizeof path, g_fix, "dtypes.safetensors"), &f, err, sizeof err);
    CHECK_MSG(rc == RT_OK, "%s", err);
    if (rc != RT_OK)
        return;
    CHECK_EQ_INT(sft_tensor_count(f), 9);
    CHECK_EQ_STR(sft_file_metadata(f, "format"), "pt");
    CHECK(sft_file_metadata(f, "nope") == NULL);
    for (size_t i = 1; i < sft_tensor_count(f); i++)
        CHECK(strcmp(sft_tensor_at(f, i - 1)->name, sft_tensor_at(f, i)->name) < 0);
    CHECK(sft_tensor_at(f, 9) == NULL);
    CHECK(sft_tensor_find(f, "missing") == NULL);

    const sft_tensor *src = sft_tensor_find(f, "src"), *bf = sft_tensor_find(f, "bf16"),
                    *bf_ref = sft_tensor_find(f, "bf16_as_f32"), *h = sft_tensor_find(f, "f16"),
                    *h_ref = sft_tensor_find(f, "f16_as_f32");
    CHECK(src && bf && bf_ref && h && h_ref);
    if (!(src && bf && bf_ref && h && h_ref))
        goto out;
    CHECK(bf->dtype == SFT_BF16 && h->dtype == SFT_F16 && src->dtype == SFT_F32);
    CHECK_EQ_INT(src->numel, 402);
    CHECK_EQ_INT(bf->nbytes, 804);
    float *vs = read_all(src), *vb = read_all(bf), *vbr = read_all(bf_ref), *vh = read_all(h), *vhr = read_all(h_ref);
    CHECK(vs && vb && vbr && vh && vhr);
    int bad_bf = 0, bad_h = 0, bad_round = 0, bad_round_h = 0;
    for (size_t i = 0; vs && vb && vbr && vh && vhr && i < src->numel; i++) {
        bad_bf += !same_float(vb[i], vbr[i]);  /* our BF16 -> F32 vs torch's */
        bad_h += !same_float(vh[i], vhr[i]);   /* our F16 -> F32 vs torch's */
        uint16_t torch_bits;
        memcpy(&torch_bits, (const uint8_t *)bf->data + 2 * i, 2);
        uint16_t ours = sft_f32_to_bf16(vs[i]);  /* our F32 -> BF16 rounding vs torch's */
        bad_round += isnan(vs[i]) ? !isnan(sft_bf16_to_f32(ours)) : ours != torch_bits;
        memcpy(&torch_bits, (const uint8_t *)h->data + 2 * i, 2);
        ours = sft_f32_to_f16(vs[i]);            /* our F32 -> F16 rounding vs torch's */
        bad_round_h += isnan(vs[i]) ? !isnan(sft_f16_to_f32(ours)) : ours != torch_bits;
    }
    CHECK_EQ_INT(bad_round_h, 0);
    CHECK_EQ_INT(bad_bf, 0);
    CHECK_EQ_INT(bad_h, 0);
    CHECK_EQ_INT(bad_round, 0);
    free(vs); free(vb); free(vbr); free(vh); free(vhr);

    const sft_tensor *w3 = sft_tensor_find(f, "w3");
    CHECK(w3 && w3->rank == 3 && w3->shape[0] == 2 && w3->shape[1] == 3 && w3->shape[2] == 4 && w3->shape[3] == 0);
    float *v3 = w3 ? read_all(w3) : NULL;
    for (int i = 0; v3 && i < 24; i++)
        CHECK_NEAR(v3[i], i * 0.5 - 6.0, 0.0);
    free(v3);
    const sft_tensor *sc = sft_tensor_find(f, "scalar");
    float one = 0;
    CHECK(sc && sc->rank == 0 && sc->numel == 1 && sft_tensor_read_f32(sc, &one, 1) == RT_OK && one == 2.5f);
    const sft_tensor *em = sft_tensor_find(f, "empty");
    CHECK(em && em->rank == 2 && em->numel == 0 && em->shape[1] == 3 && sft_tensor_read_f32(em, NULL, 0) == RT_OK);
    const sft_tensor *ids = sft_tensor_find(f, "ids");
    float tmp[5];
    CHECK(ids && ids->dtype == SFT_I64 && sft_tensor_read_f32(ids, tmp, 5) == RT_ERR_UNSUPPORTED);
    CHECK_EQ_STR(sft_dtype_name(ids ? ids->dtype : SFT_F32), "I64");
    CHECK(sft_tensor_read_f32(sc, tmp, 2) == RT_ERR_INVALID);
out:
    sft_file_close(f);
}

/* ---- writing ------------------------------------------------------------- */

static void test_writer_roundtrip(void)
{
    char path[512], fix[512], err[256] = "";
    sft_file *ref = NULL;
    CHECK(sft_file_open(join(fix, sizeof fix, g_fix, "dtypes.safetensors"), &ref, err, sizeof err) == RT_OK);
    const sft_tensor *src = ref ? sft_tensor_find(ref, "src") : NULL;
    const sft_tensor *torch_bf = ref ? sft_tensor_find(ref, "bf16") : NULL;
    if (!src || !torch_bf) {
        sft_file_close(ref);
        CHECK(false);
        return;
    }
    float *vs = read_all(src);
    float a[6] = {1.5f, -2.25f, 3.0e-42f, INFINITY, -0.0f, 1e30f};
    float s = 7.0f;
    int64_t sa[2] = {2, 3}, sb[1] = {(int64_t)src->numel}, sz[2] = {0, 5};
    sft_writer *w = NULL;
    CHECK(sft_writer_init(&w) == RT_OK);
    CHECK(sft_writer_add(w, "a", SFT_F32, 2, sa, a) == RT_OK);
    CHECK(sft_writer_add(w, "b.weight", SFT_BF16, 1, sb, vs) == RT_OK);
    CHECK(sft_writer_add(w, "s", SFT_F32, 0, NULL, &s) == RT_OK);
    CHECK(sft_writer_add(w, "z", SFT_BF16, 2, sz, NULL) == RT_OK);
    CHECK(sft_writer_add(w, "a", SFT_F32, 2, sa, a) == RT_ERR_EXISTS);
    CHECK(sft_writer_add(w, "h", SFT_F16, 2, sa, a) == RT_OK);
    CHECK(sft_writer_add(w, "i", SFT_I64, 2, sa, a) == RT_ERR_INVALID);
    CHECK(sft_writer_add(w, "__metadata__", SFT_F32, 2, sa, a) == RT_ERR_INVALID);
    CHECK(sft_writer_add(w, "", SFT_F32, 2, sa, a) == RT_ERR_INVALID);
    int64_t neg[2] = {2, -1}, huge[3] = {INT64_MAX, INT64_MAX, 4};
    CHECK(sft_writer_add(w, "n", SFT_F32, 2, neg, a) == RT_ERR_INVALID);
    CHECK(sft_writer_add(w, "g", SFT_F32, 3, huge, a) == RT_ERR_TOO_LARGE);
    CHECK(sft_writer_add(w, "r", SFT_F32, 9, sa, a) == RT_ERR_INVALID);
    CHECK(sft_writer_set_metadata(w, "format", "np") == RT_OK);
    CHECK(sft_writer_set_metadata(w, "format", "pt") == RT_OK);  /* replaces */
    CHECK(sft_writer_set_metadata(w, "note", "quote \" and\nnewline") == RT_OK);
    CHECK(sft_writer_set_metadata(w, "", "x") == RT_ERR_INVALID);
    join(path, sizeof path, g_tmp, "w.safetensors");
    CHECK_MSG(sft_writer_write(w, path, err, sizeof err) == RT_OK, "%s", err);
    CHECK_EQ_INT(count_tmp_files(g_tmp), 0);

    /* the layout: header length a multiple of 8, padding is spaces */
    FILE *fp = fopen(path, "rb");
    uint64_t hlen = 0;
    char header[4096] = "";
    CHECK(fp && fread(&hlen, 8, 1, fp) == 1 && hlen % 8 == 0 && hlen < sizeof header &&
          fread(header, 1, hlen, fp) == hlen);
    if (fp)
        fclose(fp);
    header[hlen < sizeof header ? hlen : 0] = '\0';
    size_t jl = strlen(header);
    while (jl > 0 && header[jl - 1] == ' ')
        jl--;
    CHECK(jl > 0 && header[jl - 1] == '}' && hlen - jl < 8);
    CHECK(contains(header, "\"__metadata__\":{\"format\":\"pt\""));

    sft_file *f = NULL;
    CHECK_MSG(sft_file_open(path, &f, err, sizeof err) == RT_OK, "%s", err);
    if (f) {
        CHECK_EQ_INT(sft_tensor_count(f), 5);
        const sft_tensor *th = sft_tensor_find(f, "h");
        static const uint16_t want_h[6] = {0x3e00, 0xc080, 0x0000, 0x7c00, 0x8000, 0x7c00};
        CHECK(th && th->dtype == SFT_F16 && th->nbytes == sizeof want_h &&
              memcmp(th->data, want_h, sizeof want_h) == 0);
        CHECK_EQ_STR(sft_file_metadata(f, "note"), "quote \" and\nnewline");
        const sft_tensor *ta = sft_tensor_find(f, "a"), *tb = sft_tensor_find(f, "b.weight"),
                        *ts = sft_tensor_find(f, "s"), *tz = sft_tensor_find(f, "z");
        CHECK(ta && ta->dtype == SFT_F32 && ta->rank == 2 && ta->shape[0] == 2 && ta->shape[1] == 3);
        CHECK(ta && memcmp(ta->data, a, sizeof a) == 0);  /* F32 is bit exact */
        /* BF16 bytes equal torch's, except NaN: torch's vectorised path
         * writes 0xffff, we write the canonical quiet NaN 0x7fc0 */
        CHECK(tb && tb->dtype == SFT_BF16 && tb->nbytes == torch_bf->nbytes);
        int differ = 0;
        for (size_t i = 0; tb && tb->nbytes == torch_bf->nbytes && i < tb->numel; i++) {
            uint16_t ours, theirs;
            memcpy(&ours, (const uint8_t *)tb->data + 2 * i, 2);
            memcpy(&theirs, (const uint8_t *)torch_bf->data + 2 * i, 2);
            differ += isnan(vs[i]) ? !(isnan(sft_bf16_to_f32(ours)) && isnan(sft_bf16_to_f32(theirs)))
                                   : ours != theirs;
        }
        CHECK_EQ_INT(differ, 0);
        CHECK(ts && ts->rank == 0 && ts->numel == 1 && memcmp(ts->data, &s, 4) == 0);
        CHECK(tz && tz->numel == 0 && tz->shape[0] == 0 && tz->shape[1] == 5);
    }
    sft_file_close(f);

    /* writing into a missing directory fails and leaves nothing behind */
    char bad[600];
    snprintf(bad, sizeof bad, "%s/no/such/dir/x.safetensors", g_tmp);
    err[0] = '\0';
    CHECK(sft_writer_write(w, bad, err, sizeof err) == RT_ERR_IO && err[0]);
    /* overwriting an existing file replaces it atomically */
    sft_writer *w2 = NULL;
    CHECK(sft_writer_init(&w2) == RT_OK);
    CHECK(sft_writer_write(w2, path, err, sizeof err) == RT_OK);
    f = NULL;
    CHECK(sft_file_open(path, &f, err, sizeof err) == RT_OK && sft_tensor_count(f) == 0);
    sft_file_close(f);
    CHECK_EQ_INT(count_tmp_files(g_tmp), 0);
    sft_writer_free(w2);
    sft_writer_free(w);
    sft_writer_free(NULL);
    free(vs);
    sft_file_close(ref);
}

/* ---- sharded models -------------------------------------------------------- */

/* The value make_format_fixtures.py's sharded_value(i, j) puts in tensor i. */
static float sharded_value(int i, int j)
{
    return (float)(((j * 7 + i * 3) % 128) - 64) / 8.0f;
}

static void test_sharded(void)
{
    static const struct { const char *name; int numel, rank; enum sft_dtype dtype; } want[] = {
        {"model.embed_tokens.weight", 32, 2, SFT_BF16},
        {"model.layers.0.input_layernorm.weight", 4, 1, SFT_F32},
        {"model.layers.0.self_attn.q_proj.weight", 16, 2, SFT_F16},
        {"model.norm.weight", 4, 1, SFT_F32},
        {"lm_head.weight", 32, 2, SFT_BF16},
    };
    char dir[512], err[256] = "";
    sft_model *m = NULL;
    int rc = sft_model_open(join(dir, sizeof dir, g_fix, "sharded"), &m, err, sizeof err);
    CHECK_MSG(rc == RT_OK, "%s", err);
    if (rc != RT_OK)
        return;
    CHECK_EQ_INT(sft_model_tensor_count(m), 5);
    CHECK(sft_model_find(m, "unlisted.weight") == NULL);  /* in a shard, not in weight_map */
    CHECK(sft_model_find(m, "nope") == NULL);
    for (int i = 0; i < 5; i++) {
        const sft_tensor *t = sft_model_find(m, want[i].name);
        CHECK_MSG(t && (int)t->numel == want[i].numel && t->rank == want[i].rank && t->dtype == want[i].dtype,
                  "%s", want[i].name);
        float *v = t ? read_all(t) : NULL;
        int bad = 0;
        for (int j = 0; v && j < want[i].numel; j++)
            bad += v[j] != sharded_value(i, j);
        CHECK_MSG(v && bad == 0, "%s: %d wrong values", want[i].name, bad);
        free(v);
    }
    for (size_t i = 1; i < sft_model_tensor_count(m); i++)
        CHECK(strcmp(sft_model_tensor_at(m, i - 1)->name, sft_model_tensor_at(m, i)->name) < 0);
    sft_model_close(m);
    sft_model_close(NULL);
}

/* Makes g_tmp/<name>/ holding one small shard "s.safetensors" and an index
 * whose weight_map text is given; returns the directory in dir. */
static void make_index_dir(char *dir, size_t size, const char *name, const char *weight_map)
{
    char path[700];
    join(dir, size, g_tmp, name);
    mkdir(dir, 0755);
    float v[2] = {1, 2};
    int64_t shape[1] = {2};
    sft_writer *w = NULL;
    sft_writer_init(&w);
    sft_writer_add(w, "t", SFT_F32, 1, shape, v);
    CHECK(sft_writer_write(w, join(path, sizeof path, dir, "s.safetensors"), NULL, 0) == RT_OK);
    sft_writer_free(w);
    char text[1024];
    snprintf(text, sizeof text, "{\"metadata\":{},\"weight_map\":%s}", weight_map);
    write_bytes(join(path, sizeof path, dir, "model.safetensors.index.json"), text, strlen(text));
}

static void test_model_dirs(void)
{
    static const struct { const char *name, *map; int rc; const char *msg; } cases[] = {
        {"ok", "{\"t\":\"s.safetensors\"}", RT_OK, NULL},
        {"dotdot", "{\"t\":\"../s.safetensors\"}", RT_ERR_FORMAT, "invalid shard"},
        {"slash", "{\"t\":\"sub/s.safetensors\"}", RT_ERR_FORMAT, "invalid shard"},
        {"abs", "{\"t\":\"/etc/passwd\"}", RT_ERR_FORMAT, "invalid shard"},
        {"empty_name", "{\"t\":\"\"}", RT_ERR_FORMAT, "invalid shard"},
        {"lacks", "{\"t\":\"s.safetensors\",\"u\":\"s.safetensors\"}", RT_ERR_FORMAT, "'u'"},
        {"missing_shard", "{\"t\":\"other.safetensors\"}", RT_ERR_NOT_FOUND, "other.safetensors"},
        {"not_string", "{\"t\":5}", RT_ERR_FORMAT, "weight_map"},
        {"not_object", "[1]", RT_ERR_FORMAT, "weight_map"},
        {"dup", "{\"t\":\"s.safetensors\",\"t\":\"s.safetensors\"}", RT_ERR_FORMAT, "twice"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[512], err[256] = "";
        make_index_dir(dir, sizeof dir, cases[i].name, cases[i].map);
        sft_model *m = (sft_model *)&cases[i];  /* sentinel: must stay untouched on failure */
        int rc = sft_model_open(dir, &m, err, sizeof err);
        CHECK_MSG(rc == cases[i].rc, "%s: rc %d (%s), want %d", cases[i].name, rc, err, cases[i].rc);
        if (rc == RT_OK) {
            CHECK(sft_model_tensor_count(m) == 1 && sft_model_find(m, "t"));
            sft_model_close(m);
        } else {
            CHECK_MSG(m == (sft_model *)&cases[i], "%s: out param changed", cases[i].name);
            CHECK_MSG(contains(err, cases[i].msg), "%s: message \"%s\" lacks \"%s\"", cases[i].name, err,
                      cases[i].msg);
        }
    }
    /* bad JSON in the index */
    char dir[512], path[700], err[256] = "";
    make_index_dir(dir, sizeof dir, "badjson", "{");
    sft_model *m = NULL;
    CHECK(sft_model_open(dir, &m, err, sizeof err) == RT_ERR_FORMAT && m == NULL);
    /* a single-file model directory */
    join(dir, sizeof dir, g_tmp, "single");
    mkdir(dir, 0755);
    float v[3] = {1, 2, 3};
    int64_t shape[1] = {3};
    sft_writer *w = NULL;
    sft_writer_init(&w);
    sft_writer_add(w, "x", SFT_BF16, 1, shape, v);
    CHECK(sft_writer_write(w, join(path, sizeof path, dir, "model.safetensors"), NULL, 0) == RT_OK);
    sft_writer_free(w);
    CHECK(sft_model_open(dir, &m, err, sizeof err) == RT_OK && sft_model_tensor_count(m) == 1);
    float got[3] = {0};
    CHECK(m && sft_tensor_read_f32(sft_model_find(m, "x"), got, 3) == RT_OK && got[2] == 3.0f);
    sft_model_close(m);
    /* neither file */
    m = NULL;
    join(dir, sizeof dir, g_tmp, "emptydir");
    mkdir(dir, 0755);
    CHECK(sft_model_open(dir, &m, err, sizeof err) == RT_ERR_NOT_FOUND && m == NULL);
    CHECK(contains(err, "model.safetensors"));
}

/* ---- hostile files --------------------------------------------------------- */

static void test_hostile_headers(void)
{
    /* A header "H" is written with its true length unless hlen is set. */
    static const struct {
        const char *what, *header;
        uint64_t hlen;     /* 0: strlen(header) */
        size_t data_len;   /* zero bytes after the header */
        int rc;
    } cases[] = {
        {"empty object", "{}", 0, 0, RT_OK},
        {"padded with spaces", "{}      ", 0, 0, RT_OK},
        {"valid tensor", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8, RT_OK},
        {"hole and trailing bytes allowed", "{\"a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[4,6]}}", 0, 16, RT_OK},
        {"empty tensor inside another", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                                        "\"b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 0, 8, RT_OK},
        {"header length 0", "", 0, 0, RT_ERR_FORMAT},
        {"header length 1", "{", 1, 4, RT_ERR_FORMAT},
        {"header length > file", "{}", 100, 0, RT_ERR_FORMAT},
        {"header length 2^63", "{}", (uint64_t)1 << 63, 0, RT_ERR_FORMAT},
        {"header length ~0", "{}", ~(uint64_t)0, 0, RT_ERR_FORMAT},
        {"bad JSON", "{\"a\":", 0, 0, RT_ERR_FORMAT},
        {"not an object", "[1,2]", 0, 0, RT_ERR_FORMAT},
        {"garbage after JSON", "{}x", 0, 0, RT_ERR_FORMAT},
        {"two objects", "{}{}", 0, 0, RT_ERR_FORMAT},
        {"entry not an object", "{\"a\":5}", 0, 0, RT_ERR_FORMAT},
        {"no dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4, RT_ERR_FORMAT},
        {"dtype not a string", "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4, RT_ERR_FORMAT},
        {"unknown dtype", "{\"a\":{\"dtype\":\"Q4_K\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4, RT_ERR_UNSUPPORTED},
        {"lowercase dtype", "{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4, RT_ERR_UNSUPPORTED},
        {"no shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 0, 4, RT_ERR_FORMAT},
        {"shape not array", "{\"a\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", 0, 4, RT_ERR_FORMAT},
        {"negative shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 0, 4, RT_ERR_FORMAT},
        {"fractional shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 0, 4, RT_ERR_FORMAT},
        {"string shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 0, 4, RT_ERR_FORMAT},
        {"huge shape overflows", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}}", 0, 4, RT_ERR_FORMAT},
        {"shape beyond 2^53", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1e300],\"data_offsets\":[0,4]}}", 0, 4, RT_ERR_FORMAT},
        {"bytes overflow", "{\"a\":{\"dtype\":\"F64\",\"shape\":[4503599627370496,4096],\"data_offsets\":[0,4]}}", 0, 4, RT_ERR_FORMAT},
        {"rank 9", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 0, 1, RT_ERR_UNSUPPORTED},
        {"no offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0, 4, RT_ERR_FORMAT},
        {"three offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 0, 8, RT_ERR_FORMAT},
        {"offsets out of range", "{\"a\":{\"dtype\":\"F32\",\"shape\":[25],\"data_offsets\":[0,100]}}", 0, 8, RT_ERR_FORMAT},
        {"offset far out of range", "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[1e19,1e19]}}", 0, 8, RT_ERR_FORMAT},
        {"begin > end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 0, 8, RT_ERR_FORMAT},
        {"negative offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 0, 8, RT_ERR_FORMAT},
        {"fractional offset", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0.5,1.5]}}", 0, 8, RT_ERR_FORMAT},
        {"wrong byte count", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 0, 8, RT_ERR_FORMAT},
        {"bf16 byte count", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,8]}}", 0, 8, RT_ERR_FORMAT},
        {"overlapping", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 0, 8, RT_ERR_FORMAT},
        {"same span twice", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                            "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 8, RT_ERR_FORMAT},
        {"duplicate name", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                           "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 0, 8, RT_ERR_FORMAT},
        {"metadata not object", "{\"__metadata__\":[]}", 0, 0, RT_ERR_FORMAT},
        {"metadata non-string", "{\"__metadata__\":{\"k\":1}}", 0, 0, RT_ERR_FORMAT},
        {"metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, 0, RT_ERR_FORMAT},
        {"deep nesting", "{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]}", 0, 0, RT_ERR_FORMAT},
    };
    char path[512];
    join(path, sizeof path, g_tmp, "hostile.safetensors");
    static const unsigned char zeros[64];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t hb = strlen(cases[i].header);
        uint64_t hlen = cases[i].hlen ? cases[i].hlen : hb;
        write_st(path, hlen, cases[i].header, hb, zeros, cases[i].data_len);
        char err[256] = "";
        sft_file *f = (sft_file *)&cases[i];
        int rc = sft_file_open(path, &f, err, sizeof err);
        CHECK_MSG(rc == cases[i].rc, "%s: rc %d (%s), want %d", cases[i].what, rc, err, cases[i].rc);
        if (rc == RT_OK)
            sft_file_close(f);
        else
            CHECK_MSG(f == (sft_file *)&cases[i] && err[0], "%s: out param changed or no message", cases[i].what);
    }
    /* NUL inside the header */
    write_st(path, 4, "{}\0 ", 4, NULL, 0);
    sft_file *f = NULL;
    char err[256] = "";
    CHECK(sft_file_open(path, &f, err, sizeof err) == RT_ERR_FORMAT && f == NULL);
    /* truncated files: 0..7 bytes */
    for (size_t n = 0; n < 8; n++) {
        write_bytes(path, "\x02\0\0\0\0\0\0\0", n);
        CHECK(sft_file_open(path, &f, err, sizeof err) == RT_ERR_FORMAT && f == NULL);
    }
    CHECK(contains(err, "truncated"));
    /* a real file cut short anywhere fails cleanly */
    char fix[512];
    FILE *fp = fopen(join(fix, sizeof fix, g_fix, "dtypes.safetensors"), "rb");
    static unsigned char whole[16384];
    size_t total = fp ? fread(whole, 1, sizeof whole, fp) : 0;
    if (fp)
        fclose(fp);
    CHECK(total > 1000 && total < sizeof whole);
    int ok_cuts = 0;
    for (size_t cut = 0; cut < total; cut += 13) {
        write_bytes(path, whole, cut);
        f = NULL;
        ok_cuts += sft_file_open(path, &f, NULL, 0) == RT_OK;
        sft_file_close(f);
    }
    CHECK_EQ_INT(ok_cuts, 0);
    /* not a regular file; no such file */
    CHECK(sft_file_open(g_tmp, &f, err, sizeof err) == RT_ERR_FORMAT);
    CHECK(sft_file_open("/nonexistent/x.safetensors", &f, err, sizeof err) == RT_ERR_NOT_FOUND);
    CHECK(sft_file_open(NULL, &f, err, sizeof err) == RT_ERR_INVALID);
}

/* Random byte mutations of a small valid file: whatever opens must read
 * back in bounds (ASan checks), and nothing may crash. */
static void test_mutations(void)
{
    char path[512];
    join(path, sizeof path, g_tmp, "mut.safetensors");
    float v[12];
    for (int i = 0; i < 12; i++)
        v[i] = (float)i - 5.5f;
    int64_t s1[2] = {3, 2}, s2[1] = {6};
    sft_writer *w = NULL;
    sft_writer_init(&w);
    sft_writer_add(w, "a", SFT_F32, 2, s1, v);
    sft_writer_add(w, "b", SFT_BF16, 1, s2, v + 6);
    sft_writer_set_metadata(w, "k", "v");
    CHECK(sft_writer_write(w, path, NULL, 0) == RT_OK);
    sft_writer_free(w);
    unsigned char orig[1024], buf[1024];
    FILE *fp = fopen(path, "rb");
    size_t n = fp ? fread(orig, 1, sizeof orig, fp) : 0;
    if (fp)
        fclose(fp);
    CHECK(n > 100 && n < sizeof orig);
    uint64_t hlen;
    memcpy(&hlen, orig, 8);
    static const char alphabet[] = "{}[]\",:0123456789-.e \\\0x";
    uint32_t seed = 12345;
    int opened = 0, failed = 0;
    for (int iter = 0; iter < 4000; iter++) {
        memcpy(buf, orig, n);
        int edits = 1 + iter % 4;
        if (iter % 2) {  /* digit for digit: the JSON mostly stays valid, the numbers go wrong */
            for (int e = 0; e < edits; e++) {
                seed = seed * 1103515245u + 12345u;
                size_t at = 8 + (seed >> 8) % hlen;
                while (at < 8 + hlen && !(buf[at] >= '0' && buf[at] <= '9'))
                    at++;
                seed = seed * 1103515245u + 12345u;
                if (at < 8 + hlen)
                    buf[at] = (unsigned char)('0' + (seed >> 8) % 10);
            }
            edits = 0;
        }
        for (int e = 0; e < edits; e++) {
            seed = seed * 1103515245u + 12345u;
            size_t at = (seed >> 8) % (8 + hlen);
            seed = seed * 1103515245u + 12345u;
            buf[at] = (seed >> 16) & 1 ? (unsigned char)alphabet[(seed >> 8) % (sizeof alphabet - 1)]
                                       : (unsigned char)(seed >> 8);
        }
        write_bytes(path, buf, n);
        sft_file *f = NULL;
        if (sft_file_open(path, &f, NULL, 0) != RT_OK) {
            failed++;
            continue;
        }
        opened++;
        for (size_t i = 0; i < sft_tensor_count(f); i++) {
            const sft_tensor *t = sft_tensor_at(f, i);
            float *dst = malloc((t->numel ? t->numel : 1) * sizeof *dst);
            int rc = sft_tensor_read_f32(t, dst, t->numel);  /* ASan flags any read outside the map */
            CHECK(rc == RT_OK || rc == RT_ERR_UNSUPPORTED);
            free(dst);
        }
        sft_file_close(f);
    }
    CHECK(opened + failed == 4000 && failed > 1000 && opened > 20);
    fprintf(stderr, "   mutations: %d opened, %d rejected\n", opened, failed);
}

/* ---- config.json ------------------------------------------------------------- */

/* Field-by-field equality (the struct has padding, so no memcmp). */
static bool config_equal(const model_config *a, const model_config *b)
{
    return a->arch == b->arch && a->vocab_size == b->vocab_size && a->hidden_size == b->hidden_size &&
           a->intermediate_size == b->intermediate_size && a->num_hidden_layers == b->num_hidden_layers &&
           a->num_attention_heads == b->num_attention_heads && a->num_key_value_heads == b->num_key_value_heads &&
           a->head_dim == b->head_dim && a->max_position_embeddings == b->max_position_embeddings &&
           a->rms_norm_eps == b->rms_norm_eps && a->rope_theta == b->rope_theta &&
           a->tie_word_embeddings == b->tie_word_embeddings && a->attention_bias == b->attention_bias &&
           a->rope_scaling_factor == b->rope_scaling_factor && a->rope_low_freq_factor == b->rope_low_freq_factor &&
           a->rope_high_freq_factor == b->rope_high_freq_factor &&
           a->rope_original_max_position == b->rope_original_max_position && a->bos_token_id == b->bos_token_id &&
           a->eos_token_id == b->eos_token_id && strcmp(a->torch_dtype, b->torch_dtype) == 0 &&
           a->rope_type == b->rope_type && a->sliding_window == b->sliding_window &&
           a->max_window_layers == b->max_window_layers && a->qk_norm == b->qk_norm &&
           a->rope_beta_fast == b->rope_beta_fast && a->rope_beta_slow == b->rope_beta_slow &&
           a->rope_mscale == b->rope_mscale && a->rope_mscale_all_dim == b->rope_mscale_all_dim &&
           a->rope_attention_factor == b->rope_attention_factor &&
           a->rope_no_truncate == b->rope_no_truncate;
}

static void test_config_fixtures(void)
{
    static const struct {
        const char *dir;
        model_config want;
    } cases[] = {
        {"tinyllama", {MODEL_ARCH_LLAMA, 32000, 2048, 5632, 22, 32, 4, 64, 2048, 1e-5f, 10000.0f, false, false,
                       0, 0, 0, 0, 1, 2, "bfloat16", MODEL_ROPE_DEFAULT, 0, 0, false, 0, 0, 0, 0, 0, false}},
        {"llama32", {MODEL_ARCH_LLAMA, 128256, 2048, 8192, 16, 32, 8, 64, 131072, 1e-5f, 500000.0f, true, false,
                     32.0f, 1.0f, 4.0f, 8192, 128000, 128001, "bfloat16", MODEL_ROPE_LLAMA3, 0, 0, false,
                     0, 0, 0, 0, 0, false}},
        {"qwen25", {MODEL_ARCH_QWEN2, 151936, 896, 4864, 24, 14, 2, 64, 32768, 1e-6f, 1000000.0f, true, true,
                    0, 0, 0, 0, 151643, 151645, "bfloat16", MODEL_ROPE_DEFAULT, 0, 21, false, 0, 0, 0, 0,
                    0, false}},
        {"mistral7b", {MODEL_ARCH_MISTRAL, 32000, 4096, 14336, 32, 32, 8, 128, 32768, 1e-5f, 10000.0f, false,
                       false, 0, 0, 0, 0, 1, 2, "bfloat16", MODEL_ROPE_DEFAULT, 4096, 0, false, 0, 0, 0,
                       0, 0, false}},
        {"smollm2", {MODEL_ARCH_LLAMA, 49152, 576, 1536, 30, 9, 3, 64, 8192, 1e-5f, 100000.0f, true, false,
                     0, 0, 0, 0, 0, 0, "bfloat16", MODEL_ROPE_DEFAULT, 0, 0, false, 0, 0, 0, 0, 0, false}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dir[512], err[256] = "", path[700];
        snprintf(dir, sizeof dir, "%s/configs/%s", g_fix, cases[i].dir);
        model_config got;
        memset(&got, 0, sizeof got);
        int rc = hf_config_load(dir, &got, err, sizeof err);
        CHECK_MSG(rc == RT_OK, "%s: %s", cases[i].dir, err);
        CHECK_MSG(rc == RT_OK && config_equal(&got, &cases[i].want), "%s: fields differ", cases[i].dir);
        /* write it back and load it again: the same model */
        snprintf(path, sizeof path, "%s/config.json", g_tmp);
        CHECK_MSG(hf_config_write(&got, path, err, sizeof err) == RT_OK, "%s", err);
        model_config again;
        memset(&again, 0, sizeof again);
        CHECK_MSG(hf_config_load(g_tmp, &again, err, sizeof err) == RT_OK && config_equal(&got, &again),
                  "%s: write/load round trip differs (%s)", cases[i].dir, err);
    }
    CHECK_EQ_INT(count_tmp_files(g_tmp), 0);
}

static void test_config_written_json(void)
{
    char dir[512], path[700], err[256] = "";
    model_config cfg;
    snprintf(dir, sizeof dir, "%s/configs/llama32", g_fix);
    CHECK(hf_config_load(dir, &cfg, err, sizeof err) == RT_OK);
    snprintf(path, sizeof path, "%s/config.json", g_tmp);
    CHECK(hf_config_write(&cfg, path, err, sizeof err) == RT_OK);
    FILE *fp = fopen(path, "rb");
    static char text[8192];
    size_t n = fp ? fread(text, 1, sizeof text - 1, fp) : 0;
    if (fp)
        fclose(fp);
    text[n] = '\0';
    cJSON *root = cJSON_Parse(text);
    CHECK(root != NULL);
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    CHECK(cJSON_IsArray(arch) && cJSON_IsString(arch->child) && strcmp(arch->child->valuestring, "LlamaForCausalLM") == 0);
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "model_type")), "llama");
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "hidden_act")), "silu");
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "torch_dtype")), "bfloat16");
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(rs, "rope_type")), "llama3");
    CHECK(contains(text, "\"factor\":\t32.0") || contains(text, "\"factor\": 32.0"));
    CHECK(contains(text, "\"rope_theta\":\t500000.0") || contains(text, "\"rope_theta\": 500000.0"));
    CHECK(contains(text, "1e-05"));
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings")));
    CHECK(n > 0 && text[n - 1] == '\n');
    cJSON_Delete(root);

    /* token ids < 0 are written as null; qwen2 keeps its implied bias */
    model_config q = cfg;
    q.arch = MODEL_ARCH_QWEN2;
    q.bos_token_id = -1;
    q.rope_scaling_factor = 0;
    q.rope_type = MODEL_ROPE_DEFAULT;
    q.torch_dtype[0] = '\0';
    CHECK(hf_config_write(&q, path, err, sizeof err) == RT_OK);
    model_config back;
    CHECK(hf_config_load(g_tmp, &back, err, sizeof err) == RT_OK);
    CHECK(back.arch == MODEL_ARCH_QWEN2 && back.attention_bias && back.bos_token_id == -1 &&
          strcmp(back.torch_dtype, "float32") == 0 && back.rope_scaling_factor == 0);
    q.rope_theta = NAN;
    CHECK(hf_config_write(&q, path, err, sizeof err) == RT_ERR_INVALID);
    q.rope_theta = 1e4f;
    snprintf(q.torch_dtype, sizeof q.torch_dtype, "int4");
    CHECK(hf_config_write(&q, path, err, sizeof err) == RT_ERR_INVALID);

    static const struct { float v; bool as_float; const char *want; } fmt[] = {
        {1e-5f, true, "1e-05"}, {1e-6f, true, "1e-06"}, {500000.0f, true, "500000.0"}, {16.0f, false, "16"},
        {0.05f, true, "0.05"}, {0.1f, true, "0.1"}, {3.14159274f, true, "3.1415927"}, {0.0f, true, "0.0"},
        {-2.5f, true, "-2.5"}, {1e20f, true, "1e+20"},
    };
    for (size_t i = 0; i < sizeof fmt / sizeof fmt[0]; i++) {
        char buf[32];
        hf_format_float(fmt[i].v, fmt[i].as_float, buf, sizeof buf);
        CHECK_EQ_STR(buf, fmt[i].want);
    }
}

#define BASE_CFG "\"model_type\":\"llama\",\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":16," \
                 "\"num_hidden_layers\":1"

static void test_config_inline(void)
{
    char err[256] = "";
    model_config c;
    const char *minimal = "{" BASE_CFG ",\"num_attention_heads\":2}";
    CHECK_MSG(hf_config_parse(minimal, strlen(minimal), NULL, &c, err, sizeof err) == RT_OK, "%s", err);
    CHECK(c.arch == MODEL_ARCH_LLAMA && c.num_key_value_heads == 2 && c.head_dim == 4 && c.rope_theta == 10000.0f &&
          c.rms_norm_eps == 1e-6f && c.max_position_embeddings == 2048 && !c.tie_word_embeddings &&
          !c.attention_bias && c.bos_token_id == -1 && c.eos_token_id == -1 && c.rope_scaling_factor == 0 &&
          strcmp(c.torch_dtype, "float32") == 0);
    static const struct { const char *json; bool ok; const char *check; } ok_cases[] = {
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"attention_bias\":true}", true, "bias"},
        {"{\"model_type\":\"qwen2\",\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":16,"
         "\"num_hidden_layers\":1,\"num_attention_heads\":2,\"use_sliding_window\":true,\"sliding_window\":4}", true, "qwen"},
        {"{\"model_type\":\"mistral\",\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":16,"
         "\"num_hidden_layers\":1,\"num_attention_heads\":2,\"sliding_window\":null}", true, "mistral"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"rope_scaling\":{\"type\":\"llama3\",\"factor\":8,"
         "\"low_freq_factor\":1,\"high_freq_factor\":4,\"original_max_position_embeddings\":8192}}", true, "rope"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"rope_scaling\":{\"rope_type\":\"default\"}}", true, "norope"},
        {"{" BASE_CFG ",\"num_attention_heads\":3,\"head_dim\":4}", true, "headdim"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"dtype\":\"float16\",\"hidden_act\":\"swish\"}", true, "dtype"},
    };
    for (size_t i = 0; i < sizeof ok_cases / sizeof ok_cases[0]; i++) {
        memset(&c, 0, sizeof c);
        int rc = hf_config_parse(ok_cases[i].json, strlen(ok_cases[i].json), NULL, &c, err, sizeof err);
        CHECK_MSG(rc == RT_OK, "%s: %s", ok_cases[i].check, err);
    }
    const char *bias = ok_cases[0].json;
    CHECK(hf_config_parse(bias, strlen(bias), NULL, &c, err, sizeof err) == RT_OK && c.attention_bias);
    const char *qw = ok_cases[1].json;
    CHECK(hf_config_parse(qw, strlen(qw), NULL, &c, err, sizeof err) == RT_OK && c.attention_bias &&
          c.arch == MODEL_ARCH_QWEN2 && c.max_position_embeddings == 32768);
    const char *rope = ok_cases[3].json;
    CHECK(hf_config_parse(rope, strlen(rope), NULL, &c, err, sizeof err) == RT_OK && c.rope_scaling_factor == 8.0f &&
          c.rope_original_max_position == 8192);
    const char *hd = ok_cases[5].json;
    CHECK(hf_config_parse(hd, strlen(hd), NULL, &c, err, sizeof err) == RT_OK && c.head_dim == 4);
    const char *dt = ok_cases[6].json;
    CHECK(hf_config_parse(dt, strlen(dt), NULL, &c, err, sizeof err) == RT_OK && strcmp(c.torch_dtype, "float16") == 0);
}

static void test_config_rejects(void)
{
    static const struct { const char *json; int rc; const char *field; } cases[] = {
        {"{\"model_type\":\"gemma\",\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":16,"
         "\"num_hidden_layers\":1,\"num_attention_heads\":2}", RT_ERR_UNSUPPORTED, "model_type"},
        {"{\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":16,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":2}", RT_ERR_FORMAT, "model_type"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"architectures\":[\"LlamaForSequenceClassification\"]}",
         RT_ERR_UNSUPPORTED, "architectures"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"architectures\":[\"Qwen2ForCausalLM\"]}",
         RT_ERR_UNSUPPORTED, "architectures"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"architectures\":\"LlamaForCausalLM\"}", RT_ERR_FORMAT, "architectures"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"hidden_act\":\"gelu\"}", RT_ERR_UNSUPPORTED, "hidden_act"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"rope_scaling\":{\"rope_type\":\"yarn\"}}",
         RT_ERR_FORMAT, "factor"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"rope_scaling\":{\"type\":\"longrope\",\"factor\":2}}",
         RT_ERR_UNSUPPORTED, "rope_scaling"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"rope_scaling\":{\"type\":\"dynamic\",\"factor\":2}}",
         RT_ERR_UNSUPPORTED, "rope_scaling"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,"
         "\"high_freq_factor\":4,\"original_max_position_embeddings\":8192}}", RT_ERR_FORMAT, "low_freq_factor"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,"
         "\"low_freq_factor\":4,\"high_freq_factor\":1,\"original_max_position_embeddings\":8192}}",
         RT_ERR_FORMAT, "high_freq_factor"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"rope_scaling\":{\"factor\":8}}", RT_ERR_FORMAT, "rope_scaling"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"rope_scaling\":5}", RT_ERR_FORMAT, "rope_scaling"},
        {"{\"model_type\":\"llama\",\"vocab_size\":10,\"intermediate_size\":16,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":2}", RT_ERR_FORMAT, "hidden_size"},
        {"{\"model_type\":\"llama\",\"hidden_size\":8,\"intermediate_size\":16,\"num_hidden_layers\":1,"
         "\"num_attention_heads\":2}", RT_ERR_FORMAT, "vocab_size"},
        {"{" BASE_CFG "}", RT_ERR_FORMAT, "num_attention_heads"},
        {"{" BASE_CFG ",\"num_attention_heads\":3}", RT_ERR_FORMAT, "num_attention_heads"},
        {"{" BASE_CFG ",\"num_attention_heads\":4,\"num_key_value_heads\":3}", RT_ERR_FORMAT, "num_key_value_heads"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"num_key_value_heads\":0}", RT_ERR_FORMAT, "num_key_value_heads"},
        {"{\"model_type\":\"llama\",\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":16,"
         "\"num_hidden_layers\":0,\"num_attention_heads\":2}", RT_ERR_FORMAT, "num_hidden_layers"},
        {"{\"model_type\":\"llama\",\"vocab_size\":10,\"hidden_size\":\"8\",\"intermediate_size\":16,"
         "\"num_hidden_layers\":1,\"num_attention_heads\":2}", RT_ERR_FORMAT, "hidden_size"},
        {"{\"model_type\":\"llama\",\"vocab_size\":10,\"hidden_size\":8.5,\"intermediate_size\":16,"
         "\"num_hidden_layers\":1,\"num_attention_heads\":2}", RT_ERR_FORMAT, "hidden_size"},
        {"{\"model_type\":\"llama\",\"vocab_size\":1e10,\"hidden_size\":8,\"intermediate_size\":16,"
         "\"num_hidden_layers\":1,\"num_attention_heads\":2}", RT_ERR_FORMAT, "vocab_size"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"rms_norm_eps\":-1}", RT_ERR_FORMAT, "rms_norm_eps"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"rope_theta\":0}", RT_ERR_FORMAT, "rope_theta"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"mlp_bias\":true}", RT_ERR_UNSUPPORTED, "mlp_bias"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"quantization_config\":{\"quant_method\":\"awq\"}}",
         RT_ERR_UNSUPPORTED, "quantization_config"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"torch_dtype\":\"int8\"}", RT_ERR_UNSUPPORTED, "torch_dtype"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"tie_word_embeddings\":\"yes\"}", RT_ERR_FORMAT, "tie_word_embeddings"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"head_dim\":3}", RT_ERR_FORMAT, "head_dim"},
        {"{" BASE_CFG ",\"num_attention_heads\":2,\"eos_token_id\":-5}", RT_ERR_FORMAT, "eos_token_id"},
        {"{\"model_type\":\"mistral\",\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":16,"
         "\"num_hidden_layers\":1,\"num_attention_heads\":2,\"sliding_window\":\"x\"}", RT_ERR_FORMAT, "sliding_window"},
        {"{" BASE_CFG ",", RT_ERR_FORMAT, "JSON"},
        {"[1]", RT_ERR_FORMAT, "JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[256] = "";
        model_config c, before;
        memset(&c, 0xab, sizeof c);
        memcpy(&before, &c, sizeof c);
        int rc = hf_config_parse(cases[i].json, strlen(cases[i].json), NULL, &c, err, sizeof err);
        CHECK_MSG(rc == cases[i].rc, "case %zu (%s): rc %d, want %d: %s", i, cases[i].field, rc, cases[i].rc, err);
        CHECK_MSG(contains(err, cases[i].field), "case %zu: \"%s\" does not name %s", i, err, cases[i].field);
        CHECK_MSG(memcmp(&c, &before, sizeof c) == 0, "case %zu: out param changed", i);
    }
    char err[256] = "";
    model_config c;
    CHECK(hf_config_load("/nonexistent-dir", &c, err, sizeof err) == RT_ERR_NOT_FOUND);
    CHECK(contains(err, "config.json"));
}

/* ---- PEFT ------------------------------------------------------------------ */

static void test_peft_config(void)
{
    char dir[512], err[256] = "";
    peft_config p;
    join(dir, sizeof dir, g_fix, "adapter");
    CHECK_MSG(peft_config_load(dir, &p, err, sizeof err) == RT_OK, "%s", err);
    CHECK(p.r == 2 && p.lora_alpha == 4.0f && p.lora_dropout == 0.05f && !p.use_rslora);
    CHECK(p.target_modules == ((1u << PEFT_Q_PROJ) | (1u << PEFT_V_PROJ)));
    CHECK_EQ_STR(p.base_model_name_or_path, "HuggingFaceTB/SmolLM2-135M");
    CHECK_NEAR(peft_scaling(&p), 2.0, 0.0);

    /* round trip through peft_config_write */
    peft_config w = {.r = 4, .lora_alpha = 16.0f, .lora_dropout = 0.1f, .use_rslora = true,
                     .target_modules = PEFT_ALL_MODULES};
    snprintf(w.base_model_name_or_path, sizeof w.base_model_name_or_path, "meta-llama/Llama-3.2-1B");
    CHECK_NEAR(peft_scaling(&w), 8.0, 0.0);  /* rsLoRA: 16 / sqrt(4) */
    CHECK_MSG(peft_config_write(g_tmp, &w, err, sizeof err) == RT_OK, "%s", err);
    CHECK_EQ_INT(count_tmp_files(g_tmp), 0);
    peft_config back;
    CHECK(peft_config_load(g_tmp, &back, err, sizeof err) == RT_OK);
    CHECK(back.r == 4 && back.lora_alpha == 16.0f && back.lora_dropout == 0.1f && back.use_rslora &&
          back.target_modules == PEFT_ALL_MODULES && strcmp(back.base_model_name_or_path, w.base_model_name_or_path) == 0);

    char path[700];
    FILE *fp = fopen(join(path, sizeof path, g_tmp, "adapter_config.json"), "rb");
    static char text[4096];
    size_t n = fp ? fread(text, 1, sizeof text - 1, fp) : 0;
    if (fp)
        fclose(fp);
    text[n] = '\0';
    cJSON *root = cJSON_Parse(text);
    CHECK(root != NULL);
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "peft_type")), "LORA");
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "task_type")), "CAUSAL_LM");
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "bias")), "none");
    CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(root, "fan_in_fan_out")));
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(root, "modules_to_save")));
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "inference_mode")));
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "use_rslora")));
    const cJSON *tm = cJSON_GetObjectItemCaseSensitive(root, "target_modules");
    CHECK(cJSON_GetArraySize(tm) == 7);
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetArrayItem(tm, 0)), "q_proj");
    CHECK_EQ_STR(cJSON_GetStringValue(cJSON_GetArrayItem(tm, 6)), "down_proj");
    CHECK(contains(text, "\"lora_alpha\":\t16,") || contains(text, "\"lora_alpha\": 16,"));
    cJSON_Delete(root);

    /* all-linear as a string */
    const char *al = "{\"peft_type\":\"LORA\",\"r\":8,\"lora_alpha\":16,\"target_modules\":\"all-linear\"}";
    CHECK(peft_config_parse(al, strlen(al), NULL, &p, err, sizeof err) == RT_OK && p.target_modules == PEFT_ALL_MODULES &&
          p.base_model_name_or_path[0] == '\0' && p.lora_dropout == 0.0f);

    w.r = 0;
    CHECK(peft_config_write(g_tmp, &w, err, sizeof err) == RT_ERR_INVALID);
    w.r = 4;
    w.target_modules = 0;
    CHECK(peft_config_write(g_tmp, &w, err, sizeof err) == RT_ERR_INVALID);
    CHECK(peft_config_load("/nonexistent-dir", &p, err, sizeof err) == RT_ERR_NOT_FOUND);
}

#define PEFT_BASE "\"peft_type\":\"LORA\",\"task_type\":\"CAUSAL_LM\",\"lora_alpha\":16"

static void test_peft_rejects(void)
{
    static const struct { const char *json; int rc; const char *field; } cases[] = {
        {"{" PEFT_BASE ",\"r\":8,\"target_modules\":[\"q_proj\"],\"bias\":\"all\"}", RT_ERR_UNSUPPORTED, "bias"},
        {"{" PEFT_BASE ",\"r\":8,\"target_modules\":[\"q_proj\"],\"bias\":\"lora_only\"}", RT_ERR_UNSUPPORTED, "bias"},
        {"{" PEFT_BASE ",\"r\":8,\"target_modules\":[\"q_proj\",\"lm_head\"]}", RT_ERR_UNSUPPORTED, "target_modules"},
        {"{" PEFT_BASE ",\"r\":8,\"target_modules\":\".*q_proj\"}", RT_ERR_UNSUPPORTED, "target_modules"},
        {"{" PEFT_BASE ",\"r\":8,\"target_modules\":[]}", RT_ERR_FORMAT, "target_modules"},
        {"{" PEFT_BASE ",\"r\":8}", RT_ERR_FORMAT, "target_modules"},
        {"{" PEFT_BASE ",\"r\":8,\"target_modules\":[1]}", RT_ERR_FORMAT, "target_modules"},
        {"{" PEFT_BASE ",\"r\":0,\"target_modules\":[\"q_proj\"]}", RT_ERR_FORMAT, "r must"},
        {"{" PEFT_BASE ",\"r\":-4,\"target_modules\":[\"q_proj\"]}", RT_ERR_FORMAT, "r must"},
        {"{" PEFT_BASE ",\"r\":2.5,\"target_modules\":[\"q_proj\"]}", RT_ERR_FORMAT, "r must"},
        {"{" PEFT_BASE ",\"r\":\"8\",\"target_modules\":[\"q_proj\"]}", RT_ERR_FORMAT, "r must"},
        {"{" PEFT_BASE ",\"r\":8,\"target_modules\":[\"q_proj\"],\"use_dora\":true}", RT_ERR_UNSUPPORTED, "use_dora"},
        {"{" PEFT_BASE ",\"r\":8,\"target_modules\":[\"q_proj\"],\"fan_in_fan_out\":true}", RT_ERR_UNSUPPORTED, "fan_in_fan_out"},
        {"{" PEFT_BASE ",\"r\":8,\"target_modules\":[\"q_proj\"],\"modules_to_save\":[\"lm_head\"]}",
         RT_ERR_UNSUPPORTED, "modules_to_save"},
        {"{" PEFT_BASE ",\"r\":8,\"target_modules\":[\"q_proj\"],\"rank_pattern\":{\"q_proj\":4}}",
         RT_ERR_UNSUPPORTED, "rank_pattern"},
        {"{" PEFT_BASE ",\"r\":8,\"target_modules\":[\"q_proj\"],\"alpha_pattern\":{\"q_proj\":4}}",
         RT_ERR_UNSUPPORTED, "alpha_pattern"},
        {"{" PEFT_BASE ",\"r\":8,\"target_modules\":[\"q_proj\"],\"layers_to_transform\":[0]}",
         RT_ERR_UNSUPPORTED, "layers_to_transform"},
        {"{" PEFT_BASE ",\"r\":8,\"target_modules\":[\"q_proj\"],\"lora_bias\":true}", RT_ERR_UNSUPPORTED, "lora_bias"},
        {"{\"peft_type\":\"IA3\",\"r\":8,\"target_modules\":[\"q_proj\"]}", RT_ERR_UNSUPPORTED, "peft_type"},
        {"{\"r\":8,\"target_modules\":[\"q_proj\"]}", RT_ERR_FORMAT, "peft_type"},
        {"{\"peft_type\":\"LORA\",\"r\":8,\"target_modules\":[\"q_proj\"],\"task_type\":\"SEQ_CLS\"}",
         RT_ERR_UNSUPPORTED, "task_type"},
        {"{\"peft_type\":\"LORA\",\"lora_alpha\":0,\"r\":8,\"target_modules\":[\"q_proj\"]}", RT_ERR_FORMAT, "lora_alpha"},
        {"{" PEFT_BASE ",\"r\":8,\"target_modules\":[\"q_proj\"],\"lora_dropout\":1.5}", RT_ERR_FORMAT, "lora_dropout"},
        {"{" PEFT_BASE ",\"r\":8,\"target_modules\":[\"q_proj\"],\"use_rslora\":1}", RT_ERR_FORMAT, "use_rslora"},
        {"{" PEFT_BASE ",\"r\":8,\"target_modules\":[\"q_proj\"],\"base_model_name_or_path\":7}",
         RT_ERR_FORMAT, "base_model_name_or_path"},
        {"not json", RT_ERR_FORMAT, "JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[256] = "";
        peft_config p, before;
        memset(&p, 0xab, sizeof p);
        memcpy(&before, &p, sizeof p);
        int rc = peft_config_parse(cases[i].json, strlen(cases[i].json), NULL, &p, err, sizeof err);
        CHECK_MSG(rc == cases[i].rc, "case %zu (%s): rc %d, want %d: %s", i, cases[i].field, rc, cases[i].rc, err);
        CHECK_MSG(contains(err, cases[i].field), "case %zu: \"%s\" does not name %s", i, err, cases[i].field);
        CHECK_MSG(memcmp(&p, &before, sizeof p) == 0, "case %zu: out param changed", i);
    }
}

static void test_peft_keys(void)
{
    char buf[128], err[256] = "";
    CHECK(peft_key_format(0, PEFT_Q_PROJ, 'A', buf, sizeof buf) == RT_OK);
    CHECK_EQ_STR(buf, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    CHECK(peft_key_format(3, PEFT_UP_PROJ, 'B', buf, sizeof buf) == RT_OK);
    CHECK_EQ_STR(buf, "base_model.model.model.layers.3.mlp.up_proj.lora_B.weight");
    for (int layer = 0; layer < 130; layer += 43) {
        for (int m = 0; m < PEFT_MODULE_COUNT; m++) {
            for (int wi = 0; wi < 2; wi++) {
                char which = wi ? 'B' : 'A';
                CHECK(peft_key_format(layer, (enum peft_module)m, which, buf, sizeof buf) == RT_OK);
                int l = -1;
                enum peft_module pm = PEFT_MODULE_COUNT;
                char pw = 0;
                CHECK_MSG(peft_key_parse(buf, &l, &pm, &pw, err, sizeof err) == RT_OK && l == layer &&
                          (int)pm == m && pw == which, "%s: %s", buf, err);
            }
        }
    }
    int l = -1;
    enum peft_module m = PEFT_MODULE_COUNT;
    char w = 0;
    CHECK(peft_key_parse("base_model.model.model.layers.11.mlp.down_proj.lora_A.default.weight", &l, &m, &w,
                         err, sizeof err) == RT_OK && l == 11 && m == PEFT_DOWN_PROJ && w == 'A');
    static const char *const bad[] = {
        "",
        "base_model.model.model.layers.0.self_attn.q_proj.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight",
        "base_model.model.model.layers.0.self_attn.gate_proj.lora_A.weight",
        "base_model.model.model.layers.0.mlp.q_proj.lora_A.weight",
        "base_model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.01.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.-1.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.9999999999.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight.extra",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.other.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.bias",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
        "base_model.model.model.layers.0.self_attn.q_projx.lora_A.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default",
        "base_model.model.lm_head.lora_A.weight",
        "base_model.model.model.embed_tokens.lora_embedding_A",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        l = 77;
        m = PEFT_O_PROJ;
        w = 'Z';
        err[0] = '\0';
        int rc = peft_key_parse(bad[i], &l, &m, &w, err, sizeof err);
        CHECK_MSG(rc == RT_ERR_FORMAT && l == 77 && m == PEFT_O_PROJ && w == 'Z' && contains(err, "LoRA key"),
                  "accepted or changed outputs: '%s'", bad[i]);
    }
    CHECK(peft_key_format(0, PEFT_Q_PROJ, 'A', buf, 20) == RT_ERR_TOO_LARGE);
    CHECK(peft_key_format(-1, PEFT_Q_PROJ, 'A', buf, sizeof buf) == RT_ERR_INVALID);
    CHECK(peft_key_format(0, PEFT_MODULE_COUNT, 'A', buf, sizeof buf) == RT_ERR_INVALID);
    CHECK(peft_key_format(0, PEFT_Q_PROJ, 'C', buf, sizeof buf) == RT_ERR_INVALID);
    enum peft_module found;
    CHECK(peft_module_from_name("gate_proj", &found) == RT_OK && found == PEFT_GATE_PROJ && peft_module_is_mlp(found));
    CHECK(peft_module_from_name("lm_head", &found) == RT_ERR_NOT_FOUND);
    CHECK_EQ_STR(peft_module_name(PEFT_V_PROJ), "v_proj");
    CHECK(peft_module_name(PEFT_MODULE_COUNT) == NULL);

    /* every key of the PEFT-made adapter file parses, with PEFT's shapes */
    char path[512];
    sft_file *f = NULL;
    CHECK(sft_file_open(join(path, sizeof path, g_fix, "adapter/adapter_model.safetensors"), &f, err, sizeof err) == RT_OK);
    CHECK_EQ_INT(sft_tensor_count(f), 8);
    for (size_t i = 0; i < sft_tensor_count(f); i++) {
        const sft_tensor *t = sft_tensor_at(f, i);
        CHECK_MSG(peft_key_parse(t->name, &l, &m, &w, err, sizeof err) == RT_OK, "%s", err);
        CHECK(l < 2 && (m == PEFT_Q_PROJ || m == PEFT_V_PROJ));
        CHECK(t->rank == 2 && t->shape[0] == (w == 'A' ? 2 : 4) && t->shape[1] == (w == 'A' ? 4 : 2));
    }
    sft_file_close(f);
}

int main(void)
{
    g_fix = getenv("RT_FORMAT_FIXTURES");
    if (!g_fix)
        g_fix = "tests/fixtures/formats";
    snprintf(g_tmp, sizeof g_tmp, "/tmp/rt_test_formats.XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    rt_log_set_level(RT_LOG_ERROR);  /* the mistral sliding-window warning is expected */
    RUN(test_bf16_rounding);
    RUN(test_f16_table);
    RUN(test_torch_dtypes);
    RUN(test_writer_roundtrip);
    RUN(test_sharded);
    RUN(test_model_dirs);
    RUN(test_hostile_headers);
    RUN(test_mutations);
    RUN(test_config_fixtures);
    RUN(test_config_written_json);
    RUN(test_config_inline);
    RUN(test_config_rejects);
    RUN(test_peft_config);
    RUN(test_peft_rejects);
    RUN(test_peft_keys);
    nftw(g_tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return TEST_SUMMARY();
}
