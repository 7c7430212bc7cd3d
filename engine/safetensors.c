/*
 * engine/safetensors.c — safetensors reading (mmap, full validation),
 * sharded model directories, dtype conversion, and atomic writing.
 *
 * Validation order for a file: size >= 8, header length within
 * [2, min(100 MiB, file size - 8)], header is one JSON object followed only
 * by whitespace, every entry is either __metadata__ (string -> string) or a
 * tensor {dtype, shape, data_offsets} whose byte span matches its dtype and
 * shape and lies inside the data section, no two tensors overlap, no two
 * share a name. Only then does a handle come back.
 */
#include "engine/safetensors.h"

#include "common/rt.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

#define SFT_MAX_HEADER ((uint64_t)100 << 20)   /* same limit as the Rust crate */
#define SFT_MAX_DIM ((uint64_t)1 << 53)        /* integers a JSON double holds exactly */
#define SFT_MAX_INDEX_BYTES ((size_t)64 << 20)

struct sft_file {
    char *path;
    void *map;
    size_t map_len;
    sft_tensor *tensors;   /* sorted by name; names owned */
    size_t count;
    char **meta_keys;     /* owned */
    char **meta_vals;     /* owned */
    size_t meta_count;
};

struct sft_model {
    sft_file **files;
    char **file_names;    /* shard file names, parallel to files */
    size_t nfiles;
    const sft_tensor **index;  /* visible tensors, sorted by name */
    size_t count;
};

struct sft_writer_entry {
    char *name;
    enum sft_dtype dtype;
    int rank;
    int64_t shape[SFT_MAX_RANK];
    size_t numel;
    const float *data;    /* borrowed */
};

struct sft_writer {
    struct sft_writer_entry *entries;
    size_t count, cap;
    char **meta_keys, **meta_vals;
    size_t meta_count, meta_cap;
};

static const struct {
    const char *name;
    size_t size;
} sft_dtypes[SFT_DTYPE_COUNT] = {
    [SFT_F32] = {"F32", 4},   [SFT_F16] = {"F16", 2},   [SFT_BF16] = {"BF16", 2},
    [SFT_F64] = {"F64", 8},   [SFT_I64] = {"I64", 8},   [SFT_I32] = {"I32", 4},
    [SFT_I16] = {"I16", 2},   [SFT_I8] = {"I8", 1},     [SFT_U64] = {"U64", 8},
    [SFT_U32] = {"U32", 4},   [SFT_U16] = {"U16", 2},   [SFT_U8] = {"U8", 1},
    [SFT_BOOL] = {"BOOL", 1}, [SFT_F8_E4M3] = {"F8_E4M3", 1},
    [SFT_F8_E5M2] = {"F8_E5M2", 1},
};

/* ---- small shared helpers --------------------------------------------- */

/* Maps an errno from open() to an rt_error code. */
static int sft_errno_code(int e)
{
    return e == ENOENT ? RT_ERR_NOT_FOUND : RT_ERR_IO;
}

/* Returns a malloc'd copy of s, or NULL. */
static char *sft_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

/* Joins dir and name with '/' into a malloc'd string, or NULL. */
static char *sft_path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

const char *sft_dtype_name(enum sft_dtype dtype)
{
    return (unsigned)dtype < SFT_DTYPE_COUNT ? sft_dtypes[dtype].name : "?";
}

size_t sft_dtype_size(enum sft_dtype dtype)
{
    return (unsigned)dtype < SFT_DTYPE_COUNT ? sft_dtypes[dtype].size : 0;
}

/* Looks up a dtype by its format name; false when unknown. */
static bool sft_dtype_parse(const char *s, enum sft_dtype *out)
{
    for (int i = 0; i < SFT_DTYPE_COUNT; i++) {
        if (strcmp(s, sft_dtypes[i].name) == 0) {
            *out = (enum sft_dtype)i;
            return true;
        }
    }
    return false;
}

/* ---- scalar conversions ------------------------------------------------ */

/* Reinterprets 32 bits as a float (no aliasing issues through memcpy). */
static float sft_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float sft_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in float */
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (exp == 31)  /* inf, or NaN with its payload kept */
        return sft_bits_f32(sign | 0x7f800000u | (mant << 13));
    return sft_bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

float sft_bf16_to_f32(uint16_t b)
{
    return sft_bits_f32((uint32_t)b << 16);
}

uint16_t sft_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)  /* NaN: keep sign, force quiet */
        return (uint16_t)((u >> 16) | 0x0040u);
    /* round to nearest, ties to even; overflow rounds into inf as it should */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

uint16_t sft_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)  /* NaN: keep sign and payload top, force quiet */
        return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x47800000u) /* >= 2^16, inf included: beyond the largest half */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u)  /* below 2^-14: a subnormal half, |f| * 2^24 rounded to even */
        return (uint16_t)(sign | (uint16_t)lrintf(fabsf(f) * 16777216.0f));
    uint32_t h = ((a >> 23) - 112u) << 10 | ((a >> 13) & 0x3ffu), rest = a & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++;              /* a carry may reach the exponent, up to inf: as it should */
    return (uint16_t)(sign | h);
}

/* ---- parsing one file -------------------------------------------------- */

/* Reads a JSON number that must be an integer in [0, max] into *out. */
static bool sft_json_uint(const cJSON *item, uint64_t max, uint64_t *out)
{
    if (!cJSON_IsNumber(item))
        return false;
    double d = item->valuedouble;
    if (!(d >= 0.0) || d > (double)max)
        return false;
    uint64_t v = (uint64_t)d;
    if ((double)v != d)
        return false;
    *out = v;
    return true;
}

/* Fills t's dtype, rank, shape, numel and nbytes from entry's "dtype" and
 * "shape", and *begin and *end from its "data_offsets", validated against
 * data_len. The name is set by the caller. */
static int sft_parse_entry(const char *path, const cJSON *entry, size_t data_len,
                          sft_tensor *t, uint64_t *begin, uint64_t *end,
                          char *err, size_t errsize)
{
    const char *name = entry->string;
    if (!cJSON_IsObject(entry))
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: tensor '%s' is not a JSON object", path, name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!cJSON_IsString(dtype))
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: tensor '%s': missing or non-string dtype", path, name);
    if (!sft_dtype_parse(dtype->valuestring, &t->dtype))
        return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "%s: tensor '%s': unsupported dtype '%.32s'",
                       path, name, dtype->valuestring);
    if (!cJSON_IsArray(shape))
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: tensor '%s': missing or non-array shape", path, name);
    int rank = cJSON_GetArraySize(shape);
    if (rank > SFT_MAX_RANK)
        return rt_fail(err, errsize, RT_ERR_UNSUPPORTED, "%s: tensor '%s': rank %d exceeds %d",
                       path, name, rank, SFT_MAX_RANK);
    size_t numel = 1;
    int i = 0;
    const cJSON *dim;
    memset(t->shape, 0, sizeof t->shape);
    cJSON_ArrayForEach(dim, shape) {
        uint64_t v;
        if (!sft_json_uint(dim, SFT_MAX_DIM, &v))
            return rt_fail(err, errsize, RT_ERR_FORMAT,
                           "%s: tensor '%s': shape[%d] is not an integer in [0, 2^53]", path, name, i);
        if (__builtin_mul_overflow(numel, (size_t)v, &numel))
            return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: tensor '%s': shape product overflows", path, name);
        t->shape[i++] = (int64_t)v;
    }
    size_t nbytes;
    if (__builtin_mul_overflow(numel, sft_dtypes[t->dtype].size, &nbytes))
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: tensor '%s': byte size overflows", path, name);
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: tensor '%s': data_offsets must be [begin, end]", path, name);
    if (!sft_json_uint(offs->child, data_len, begin) || !sft_json_uint(offs->child->next, data_len, end) ||
        *begin > *end)
        return rt_fail(err, errsize, RT_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets must be two integers, begin <= end, within the %zu-byte "
                       "data section", path, name, data_len);
    if (*end - *begin != nbytes)
        return rt_fail(err, errsize, RT_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets span %llu bytes but its dtype and shape need %zu",
                       path, name, (unsigned long long)(*end - *begin), nbytes);
    t->rank = rank;
    t->numel = numel;
    t->nbytes = nbytes;
    return RT_OK;
}

/* Copies the __metadata__ object (string values only) into f. */
static int sft_parse_metadata(sft_file *f, const cJSON *meta, char *err, size_t errsize)
{
    if (!cJSON_IsObject(meta))
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: __metadata__ is not an object", f->path);
    size_t n = (size_t)cJSON_GetArraySize(meta);
    f->meta_keys = calloc(n ? n : 1, sizeof *f->meta_keys);
    f->meta_vals = calloc(n ? n : 1, sizeof *f->meta_vals);
    if (!f->meta_keys || !f->meta_vals)
        return rt_fail(err, errsize, RT_ERR_NOMEM, "%s: out of memory", f->path);
    const cJSON *kv;
    cJSON_ArrayForEach(kv, meta) {
        if (!cJSON_IsString(kv))
            return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: __metadata__ value '%s' is not a string",
                           f->path, kv->string);
        f->meta_keys[f->meta_count] = sft_strdup(kv->string);
        f->meta_vals[f->meta_count] = sft_strdup(kv->valuestring);
        f->meta_count++;  /* counted first so a failed strdup is still freed */
        if (!f->meta_keys[f->meta_count - 1] || !f->meta_vals[f->meta_count - 1])
            return rt_fail(err, errsize, RT_ERR_NOMEM, "%s: out of memory", f->path);
    }
    return RT_OK;
}

struct sft_span {
    uint64_t begin, end;
    const char *name;
};

/* qsort comparator: spans by begin offset. */
static int sft_span_cmp(const void *a, const void *b)
{
    const struct sft_span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* qsort comparator: tensors by name. */
static int sft_tensor_cmp(const void *a, const void *b)
{
    return strcmp(((const sft_tensor *)a)->name, ((const sft_tensor *)b)->name);
}

/* Fails when two non-empty spans overlap. spans is sorted in place. */
static int sft_check_overlap(const char *path, struct sft_span *spans, size_t n, char *err, size_t errsize)
{
    qsort(spans, n, sizeof *spans, sft_span_cmp);
    const struct sft_span *prev = NULL;
    for (size_t i = 0; i < n; i++) {
        if (spans[i].begin == spans[i].end)
            continue;
        if (prev && spans[i].begin < prev->end)
            return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap",
                           path, prev->name, spans[i].name);
        prev = &spans[i];
    }
    return RT_OK;
}

/* Sorts f's tensors by name and fails on a duplicate name. */
static int sft_sort_names(sft_file *f, char *err, size_t errsize)
{
    qsort(f->tensors, f->count, sizeof *f->tensors, sft_tensor_cmp);
    for (size_t i = 1; i < f->count; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0)
            return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: duplicate tensor name '%s'",
                           f->path, f->tensors[i].name);
    return RT_OK;
}

/* Builds f's tensor table and metadata from the parsed header root. */
static int sft_parse_header(sft_file *f, const cJSON *root, const uint8_t *data, size_t data_len,
                           char *err, size_t errsize)
{
    size_t n = 0;
    const cJSON *e;
    bool seen_meta = false;
    cJSON_ArrayForEach(e, root)
        n += strcmp(e->string, "__metadata__") != 0;
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    struct sft_span *spans = calloc(n ? n : 1, sizeof *spans);
    int rc = RT_OK;
    if (!f->tensors || !spans) {
        rc = rt_fail(err, errsize, RT_ERR_NOMEM, "%s: out of memory", f->path);
        goto out;
    }
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (seen_meta) {
                rc = rt_fail(err, errsize, RT_ERR_FORMAT, "%s: duplicate __metadata__", f->path);
                goto out;
            }
            seen_meta = true;
            if ((rc = sft_parse_metadata(f, e, err, errsize)) != RT_OK)
                goto out;
            continue;
        }
        sft_tensor *t = &f->tensors[f->count];
        uint64_t begin = 0, end = 0;
        if ((rc = sft_parse_entry(f->path, e, data_len, t, &begin, &end, err, errsize)) != RT_OK)
            goto out;
        if (!(t->name = sft_strdup(e->string))) {
            rc = rt_fail(err, errsize, RT_ERR_NOMEM, "%s: out of memory", f->path);
            goto out;
        }
        t->data = data + begin;
        spans[f->count] = (struct sft_span){begin, end, t->name};
        f->count++;
    }
    if ((rc = sft_check_overlap(f->path, spans, f->count, err, errsize)) != RT_OK)
        goto out;
    rc = sft_sort_names(f, err, errsize);
out:
    free(spans);
    return rc;
}

/* Maps path read-only into f->map / f->map_len. */
static int sft_map(sft_file *f, char *err, size_t errsize)
{
    /* O_NONBLOCK: a FIFO in a model folder must be refused below, not block
     * the open until a writer comes; it changes nothing for regular files. */
    int fd = open(f->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return rt_fail(err, errsize, sft_errno_code(errno), "%s: cannot open: %s", f->path, strerror(errno));
    struct stat sb;
    int rc = RT_OK;
    if (fstat(fd, &sb) != 0) {
        rc = rt_fail(err, errsize, RT_ERR_IO, "%s: cannot stat: %s", f->path, strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        rc = rt_fail(err, errsize, RT_ERR_FORMAT, "%s: not a regular file", f->path);
    } else if (sb.st_size < 8) {
        rc = rt_fail(err, errsize, RT_ERR_FORMAT, "%s: truncated: %lld bytes, a safetensors file has at least 8",
                     f->path, (long long)sb.st_size);
    } else {
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            rc = rt_fail(err, errsize, RT_ERR_IO, "%s: cannot map: %s", f->path, strerror(errno));
        } else {
            f->map = m;
            f->map_len = (size_t)sb.st_size;
        }
    }
    close(fd);
    return rc;
}

/* Checks the header length and parses the header JSON into *root. */
static int sft_read_header(sft_file *f, cJSON **root, uint64_t *hlen, char *err, size_t errsize)
{
    uint64_t n;
    memcpy(&n, f->map, 8);
    if (n < 2)
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: header length %llu is too small", f->path,
                       (unsigned long long)n);
    if (n > f->map_len - 8)
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: header length %llu exceeds the file (%zu bytes)",
                       f->path, (unsigned long long)n, f->map_len);
    if (n > SFT_MAX_HEADER)
        return rt_fail(err, errsize, RT_ERR_TOO_LARGE, "%s: header length %llu exceeds the 100 MiB limit",
                       f->path, (unsigned long long)n);
    /* Parse a NUL-terminated private copy: cJSON then cannot read past the
     * header even if its length checks had a gap. */
    const char *src = (const char *)f->map + 8;
    if (memchr(src, '\0', (size_t)n))
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: header contains a NUL byte", f->path);
    char *text = malloc((size_t)n + 1);
    if (!text)
        return rt_fail(err, errsize, RT_ERR_NOMEM, "%s: out of memory", f->path);
    memcpy(text, src, (size_t)n);
    text[n] = '\0';
    const char *end = NULL;
    cJSON *json = cJSON_ParseWithLengthOpts(text, (size_t)n, &end, 0);
    size_t at = end && end >= text && end <= text + n ? (size_t)(end - text) : 0;
    bool trailing = false;
    for (size_t i = at; json && i < n; i++)
        trailing |= text[i] != ' ' && text[i] != '\t' && text[i] != '\n' && text[i] != '\r';
    free(text);
    if (!json)
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: header is not valid JSON (near byte %zu)", f->path, at);
    if (trailing) {
        cJSON_Delete(json);
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: unexpected bytes after the header JSON", f->path);
    }
    if (!cJSON_IsObject(json)) {
        cJSON_Delete(json);
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: header is not a JSON object", f->path);
    }
    *root = json;
    *hlen = n;
    return RT_OK;
}

int sft_file_open(const char *path, sft_file **out, char *err, size_t errsize)
{
    if (!path || !out)
        return rt_fail(err, errsize, RT_ERR_INVALID, "sft_file_open: NULL argument");
    sft_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = sft_strdup(path))) {
        free(f);
        return rt_fail(err, errsize, RT_ERR_NOMEM, "%s: out of memory", path);
    }
    cJSON *root = NULL;
    uint64_t hlen = 0;
    int rc = sft_map(f, err, errsize);
    if (rc == RT_OK)
        rc = sft_read_header(f, &root, &hlen, err, errsize);
    if (rc == RT_OK) {
        const uint8_t *data = (const uint8_t *)f->map + 8 + hlen;
        rc = sft_parse_header(f, root, data, f->map_len - 8 - (size_t)hlen, err, errsize);
    }
    cJSON_Delete(root);
    if (rc != RT_OK) {
        sft_file_close(f);
        return rc;
    }
    *out = f;
    return RT_OK;
}

void sft_file_close(sft_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->count; i++)
        free((char *)f->tensors[i].name);
    free(f->tensors);
    for (size_t i = 0; i < f->meta_count; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    free(f->meta_keys);
    free(f->meta_vals);
    if (f->map)
        munmap(f->map, f->map_len);
    free(f->path);
    free(f);
}

size_t sft_tensor_count(const sft_file *f)
{
    return f ? f->count : 0;
}

const sft_tensor *sft_tensor_at(const sft_file *f, size_t i)
{
    return f && i < f->count ? &f->tensors[i] : NULL;
}

const sft_tensor *sft_tensor_find(const sft_file *f, const char *name)
{
    if (!f || !name)
        return NULL;
    sft_tensor key = {.name = name};
    return bsearch(&key, f->tensors, f->count, sizeof *f->tensors, sft_tensor_cmp);
}

const char *sft_file_metadata(const sft_file *f, const char *key)
{
    if (!f || !key)
        return NULL;
    for (size_t i = 0; i < f->meta_count; i++)
        if (strcmp(f->meta_keys[i], key) == 0)
            return f->meta_vals[i];
    return NULL;
}

const char *sft_shape_format(const sft_tensor *t, char *buf, size_t size)
{
    if (!buf || !size)
        return buf;
    size_t at = (size_t)snprintf(buf, size, "[");
    for (int i = 0; t && i < t->rank && i < SFT_MAX_RANK && at < size; i++)
        at += (size_t)snprintf(buf + at, size - at, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (at < size)
        snprintf(buf + at, size - at, "]");
    return buf;
}

int sft_tensor_read_f32(const sft_tensor *t, float *dst, size_t n)
{
    if (!t || (!dst && n) || n != t->numel)
        return RT_ERR_INVALID;
    const uint8_t *src = t->data;
    switch (t->dtype) {
    case SFT_F32:
        if (n)
            memcpy(dst, src, n * sizeof *dst);
        return RT_OK;
    case SFT_F16:
    case SFT_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = t->dtype == SFT_F16 ? sft_f16_to_f32(h) : sft_bf16_to_f32(h);
        }
        return RT_OK;
    default:
        return RT_ERR_UNSUPPORTED;
    }
}

/* ---- sharded model directories ----------------------------------------- */

/* qsort/bsearch comparator: tensor pointers by name. */
static int sft_tensor_ptr_cmp(const void *a, const void *b)
{
    return strcmp((*(const sft_tensor *const *)a)->name, (*(const sft_tensor *const *)b)->name);
}

/* Returns the open shard called name, opening it (and recording it in m)
 * on first use. Rejects names that could leave dir. */
static int sft_model_shard(sft_model *m, const char *dir, const char *name, sft_file **out,
                          char *err, size_t errsize)
{
    for (size_t i = 0; i < m->nfiles; i++) {
        if (strcmp(m->file_names[i], name) == 0) {
            *out = m->files[i];
            return RT_OK;
        }
    }
    if (!name[0] || strchr(name, '/') || strstr(name, ".."))
        return rt_fail(err, errsize, RT_ERR_FORMAT, "%s: weight_map names an invalid shard file '%.128s'",
                       dir, name);
    sft_file **files = realloc(m->files, (m->nfiles + 1) * sizeof *files);
    if (files)
        m->files = files;
    char **names = realloc(m->file_names, (m->nfiles + 1) * sizeof *names);
    if (names)
        m->file_names = names;
    char *copy = sft_strdup(name);
    char *path = sft_path_join(dir, name);
    int rc = RT_OK;
    if (!files || !names || !copy || !path) {
        rc = rt_fail(err, errsize, RT_ERR_NOMEM, "%s: out of memory", dir);
    } else if ((rc = sft_file_open(path, &m->files[m->nfiles], err, errsize)) == RT_OK) {
        m->file_names[m->nfiles] = copy;
        *out = m->files[m->nfiles++];
        copy = NULL;
    }
    free(copy);
    free(path);
    return rc;
}

/* Fills m from the index file at index_path: every weight_map entry. */
static int sft_model_load_index(sft_model *m, const char *dir, const char *index_path,
                               char *err, size_t errsize)
{
    char *text = NULL;
    size_t len = 0;
    int rc = rt_read_file(index_path, SFT_MAX_INDEX_BYTES, &text, &len, err, errsize);
    if (rc != RT_OK)
        return rc;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    const cJSON *e;
    if (!root) {
        rc = rt_fail(err, errsize, RT_ERR_FORMAT, "%s: not valid JSON", index_path);
        goto out;
    }
    if (!cJSON_IsObject(map)) {
        rc = rt_fail(err, errsize, RT_ERR_FORMAT, "%s: missing weight_map object", index_path);
        goto out;
    }
    size_t n = (size_t)cJSON_GetArraySize(map);
    if (!(m->index = calloc(n ? n : 1, sizeof *m->index))) {
        rc = rt_fail(err, errsize, RT_ERR_NOMEM, "%s: out of memory", index_path);
        goto out;
    }
    cJSON_ArrayForEach(e, map) {
        if (!cJSON_IsString(e)) {
            rc = rt_fail(err, errsize, RT_ERR_FORMAT, "%s: weight_map['%s'] is not a string", index_path, e->string);
            goto out;
        }
        sft_file *shard;
        if ((rc = sft_model_shard(m, dir, e->valuestring, &shard, err, errsize)) != RT_OK)
            goto out;
        const sft_tensor *t = sft_tensor_find(shard, e->string);
        if (!t) {
            rc = rt_fail(err, errsize, RT_ERR_FORMAT, "%s: weight_map puts '%s' in %s, which lacks it",
                         index_path, e->string, e->valuestring);
            goto out;
        }
        m->index[m->count++] = t;
    }
out:
    cJSON_Delete(root);
    return rc;
}

/* Fills m from the single file dir/model.safetensors. */
static int sft_model_load_single(sft_model *m, const char *dir, char *err, size_t errsize)
{
    sft_file *f;
    int rc = sft_model_shard(m, dir, "model.safetensors", &f, err, errsize);
    if (rc != RT_OK)
        return rc;
    if (!(m->index = calloc(f->count ? f->count : 1, sizeof *m->index)))
        return rt_fail(err, errsize, RT_ERR_NOMEM, "%s: out of memory", dir);
    for (size_t i = 0; i < f->count; i++)
        m->index[m->count++] = &f->tensors[i];
    return RT_OK;
}

int sft_model_open(const char *dir, sft_model **out, char *err, size_t errsize)
{
    if (!dir || !out)
        return rt_fail(err, errsize, RT_ERR_INVALID, "sft_model_open: NULL argument");
    sft_model *m = calloc(1, sizeof *m);
    char *index_path = sft_path_join(dir, "model.safetensors.index.json");
    int rc;
    if (!m || !index_path) {
        rc = rt_fail(err, errsize, RT_ERR_NOMEM, "%s: out of memory", dir);
        goto fail;
    }
    if (access(index_path, F_OK) == 0) {
        rc = sft_model_load_index(m, dir, index_path, err, errsize);
    } else {
        rc = sft_model_load_single(m, dir, err, errsize);
        if (rc == RT_ERR_NOT_FOUND)
            rt_fail(err, errsize, rc, "%s: no model.safetensors or model.safetensors.index.json", dir);
    }
    if (rc != RT_OK)
        goto fail;
    qsort(m->index, m->count, sizeof *m->index, sft_tensor_ptr_cmp);
    for (size_t i = 1; i < m->count; i++) {
        if (strcmp(m->index[i - 1]->name, m->index[i]->name) == 0) {
            rc = rt_fail(err, errsize, RT_ERR_FORMAT, "%s: tensor '%s' listed twice", dir, m->index[i]->name);
            goto fail;
        }
    }
    free(index_path);
    *out = m;
    return RT_OK;
fail:
    free(index_path);
    sft_model_close(m);
    return rc;
}

void sft_model_prefetch(const sft_model *m)
{
    for (size_t i = 0; m && i < m->nfiles; i++)
        if (m->files[i]->map)
            (void)madvise(m->files[i]->map, m->files[i]->map_len, MADV_WILLNEED);
}

void sft_model_close(sft_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nfiles; i++) {
        sft_file_close(m->files[i]);
        free(m->file_names[i]);
    }
    free(m->files);
    free(m->file_names);
    free(m->index);
    free(m);
}

size_t sft_model_tensor_count(const sft_model *m)
{
    return m ? m->count : 0;
}

const sft_tensor *sft_model_tensor_at(const sft_model *m, size_t i)
{
    return m && i < m->count ? m->index[i] : NULL;
}

const sft_tensor *sft_model_find(const sft_model *m, const char *name)
{
    if (!m || !name)
        return NULL;
    sft_tensor key = {.name = name};
    const sft_tensor *kp = &key;
    const sft_tensor *const *hit = bsearch(&kp, m->index, m->count, sizeof *m->index, sft_tensor_ptr_cmp);
    return hit ? *hit : NULL;
}

/* ---- writing ------------------------------------------------------------ */

int sft_writer_init(sft_writer **out)
{
    if (!out)
        return RT_ERR_INVALID;
    sft_writer *w = calloc(1, sizeof *w);
    if (!w)
        return RT_ERR_NOMEM;
    *out = w;
    return RT_OK;
}

void sft_writer_free(sft_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->count; i++)
        free(w->entries[i].name);
    free(w->entries);
    for (size_t i = 0; i < w->meta_count; i++) {
        free(w->meta_keys[i]);
        free(w->meta_vals[i]);
    }
    free(w->meta_keys);
    free(w->meta_vals);
    free(w);
}

int sft_writer_add(sft_writer *w, const char *name, enum sft_dtype dtype,
                  int rank, const int64_t *shape, const float *data)
{
    if (!w || !name || !name[0] || strcmp(name, "__metadata__") == 0 ||
        (dtype != SFT_F32 && dtype != SFT_BF16 && dtype != SFT_F16) || rank < 0 || rank > SFT_MAX_RANK || (rank && !shape))
        return RT_ERR_INVALID;
    struct sft_writer_entry e = {.dtype = dtype, .rank = rank, .numel = 1, .data = data};
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0)
            return RT_ERR_INVALID;
        if (__builtin_mul_overflow(e.numel, (uint64_t)shape[i], &e.numel) || e.numel > SIZE_MAX / 4)
            return RT_ERR_TOO_LARGE;
        e.shape[i] = shape[i];
    }
    if (e.numel && !data)
        return RT_ERR_INVALID;
    for (size_t i = 0; i < w->count; i++)
        if (strcmp(w->entries[i].name, name) == 0)
            return RT_ERR_EXISTS;
    if (w->count == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        struct sft_writer_entry *p = realloc(w->entries, cap * sizeof *p);
        if (!p)
            return RT_ERR_NOMEM;
        w->entries = p;
        w->cap = cap;
    }
    if (!(e.name = sft_strdup(name)))
        return RT_ERR_NOMEM;
    w->entries[w->count++] = e;
    return RT_OK;
}

int sft_writer_set_metadata(sft_writer *w, const char *key, const char *value)
{
    if (!w || !key || !key[0] || !value)
        return RT_ERR_INVALID;
    char *v = sft_strdup(value);
    if (!v)
        return RT_ERR_NOMEM;
    for (size_t i = 0; i < w->meta_count; i++) {
        if (strcmp(w->meta_keys[i], key) == 0) {
            free(w->meta_vals[i]);
            w->meta_vals[i] = v;
            return RT_OK;
        }
    }
    if (w->meta_count == w->meta_cap) {
        size_t cap = w->meta_cap ? 2 * w->meta_cap : 8;
        char **k = realloc(w->meta_keys, cap * sizeof *k);
        if (k)
            w->meta_keys = k;
        char **vs = realloc(w->meta_vals, cap * sizeof *vs);
        if (vs)
            w->meta_vals = vs;
        if (!k || !vs) {
            free(v);
            return RT_ERR_NOMEM;
        }
        w->meta_cap = cap;
    }
    char *k = sft_strdup(key);
    if (!k) {
        free(v);
        return RT_ERR_NOMEM;
    }
    w->meta_keys[w->meta_count] = k;
    w->meta_vals[w->meta_count++] = v;
    return RT_OK;
}

/* Formats "[a,b,...]" of n unsigned values into buf (large enough). */
static void sft_format_ints(char *buf, size_t size, const uint64_t *v, int n)
{
    size_t at = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < n && at < size; i++)
        at += (size_t)snprintf(buf + at, size - at, "%s%llu", i ? "," : "", (unsigned long long)v[i]);
    if (at < size)
        snprintf(buf + at, size - at, "]");
}

/* Builds the header JSON (tensors in added order, offsets laid out back to
 * back) and returns it printed, unpadded; NULL on allocation failure. */
static char *sft_writer_header(const sft_writer *w)
{
    cJSON *root = cJSON_CreateObject();
    bool ok = root != NULL;
    if (ok && w->meta_count) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        ok = meta != NULL;
        for (size_t i = 0; ok && i < w->meta_count; i++)
            ok = cJSON_AddStringToObject(meta, w->meta_keys[i], w->meta_vals[i]) != NULL;
    }
    uint64_t offset = 0;
    for (size_t i = 0; ok && i < w->count; i++) {
        const struct sft_writer_entry *e = &w->entries[i];
        uint64_t dims[SFT_MAX_RANK], span[2];
        char shape[SFT_MAX_RANK * 21 + 4], offs[48];
        for (int d = 0; d < e->rank; d++)
            dims[d] = (uint64_t)e->shape[d];
        span[0] = offset;
        span[1] = offset += (uint64_t)e->numel * sft_dtypes[e->dtype].size;
        sft_format_ints(shape, sizeof shape, dims, e->rank);
        sft_format_ints(offs, sizeof offs, span, 2);
        cJSON *t = cJSON_AddObjectToObject(root, e->name);
        ok = t && cJSON_AddStringToObject(t, "dtype", sft_dtypes[e->dtype].name) &&
             cJSON_AddRawToObject(t, "shape", shape) && cJSON_AddRawToObject(t, "data_offsets", offs);
    }
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return text;
}

/* Streams one tensor's bytes, converting to BF16 or F16 in chunks when asked. */
static int sft_writer_put(rt_atomic_file *a, const struct sft_writer_entry *e, char *err, size_t errsize)
{
    if (e->dtype == SFT_F32)
        return rt_atomic_append(a, e->data, e->numel * sizeof(float), err, errsize);
    enum { CHUNK = 16384 };
    uint16_t buf[CHUNK];
    for (size_t i = 0; i < e->numel; i += CHUNK) {
        size_t n = e->numel - i < CHUNK ? e->numel - i : CHUNK;
        for (size_t j = 0; j < n; j++)
            buf[j] = e->dtype == SFT_F16 ? sft_f32_to_f16(e->data[i + j]) : sft_f32_to_bf16(e->data[i + j]);
        int rc = rt_atomic_append(a, buf, n * sizeof *buf, err, errsize);
        if (rc != RT_OK)
            return rc;
    }
    return RT_OK;
}

int sft_writer_write(const sft_writer *w, const char *path, char *err, size_t errsize)
{
    if (!w || !path)
        return rt_fail(err, errsize, RT_ERR_INVALID, "sft_writer_write: NULL argument");
    char *header = sft_writer_header(w);
    if (!header)
        return rt_fail(err, errsize, RT_ERR_NOMEM, "%s: out of memory building the header", path);
    size_t len = strlen(header);
    uint64_t padded = (len + 7) & ~(uint64_t)7;
    static const char spaces[8] = "        ";
    rt_atomic_file a;
    int rc = rt_atomic_begin(&a, path, err, errsize);
    if (rc != RT_OK)
        goto out;
    rc = rt_atomic_append(&a, &padded, 8, err, errsize);
    if (rc == RT_OK)
        rc = rt_atomic_append(&a, header, len, err, errsize);
    if (rc == RT_OK)
        rc = rt_atomic_append(&a, spaces, padded - len, err, errsize);
    for (size_t i = 0; rc == RT_OK && i < w->count; i++)
        rc = sft_writer_put(&a, &w->entries[i], err, errsize);
    if (rc == RT_OK)
        rc = rt_atomic_commit(&a, err, errsize);
    else
        rt_atomic_abort(&a);
out:
    free(header);
    return rc;
}

