/*
 * engine/safetensors.h — (internal to engine/) the safetensors weight format:
 * a validating, mmap-backed reader for single files and sharded Hugging Face
 * model directories, dtype conversion to float, and an atomic writer.
 *
 * The format: 8 bytes little-endian header length N, N bytes of JSON
 * {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {string: string}}, then the data section; offsets are
 * relative to the start of the data section.
 *
 * The reader treats every file as hostile: a malformed or truncated file
 * yields RT_ERR_FORMAT (or RT_ERR_UNSUPPORTED / RT_ERR_TOO_LARGE) with a
 * message in the caller's err buffer, never a crash or an out-of-bounds read.
 * Tensor data stays in the read-only mapping; pointers into it live until the
 * file (or model) is closed and may be unaligned.
 *
 * Handles are not synchronised, but a fully opened file or model is
 * read-only, so many threads may look up and read tensors at once.
 */
#ifndef RT_ENGINE_SAFETENSORS_H
#define RT_ENGINE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_RANK 8

/* Every dtype the format defines. Only F32, F16 and BF16 convert to float;
 * the others parse (so files carrying e.g. an I64 buffer still open) but
 * st_tensor_read_f32 refuses them with RT_ERR_UNSUPPORTED. */
enum st_dtype {
    ST_F32, ST_F16, ST_BF16,
    ST_F64, ST_I64, ST_I32, ST_I16, ST_I8, ST_U64, ST_U32, ST_U16, ST_U8,
    ST_BOOL, ST_F8_E4M3, ST_F8_E5M2,
    ST_DTYPE_COUNT
};

/* One tensor of an open file. Every field is valid while the file is open;
 * data points into the read-only mapping (possibly unaligned; NULL-safe only
 * when nbytes is 0). */
typedef struct st_tensor {
    const char *name;
    enum st_dtype dtype;
    int rank;                      /* 0 (scalar) .. ST_MAX_RANK */
    int64_t shape[ST_MAX_RANK];    /* shape[rank..] are 0 */
    size_t numel;                  /* product of shape (1 for a scalar) */
    size_t nbytes;                 /* numel * st_dtype_size(dtype) */
    const void *data;
} st_tensor;

typedef struct st_file st_file;
typedef struct st_model st_model;
typedef struct st_writer st_writer;

/* The format's name for a dtype ("F32", "BF16", ...); "?" when out of range. */
const char *st_dtype_name(enum st_dtype dtype);

/* Bytes per element of a dtype; 0 when out of range. */
size_t st_dtype_size(enum st_dtype dtype);

/* Scalar conversions. F16 handles subnormals, infinities and NaN exactly;
 * BF16 -> F32 is exact; F32 -> BF16 and F32 -> F16 round to nearest, ties
 * to even (F16 through its subnormals, overflowing into inf), keep
 * infinities and turn any NaN into a quiet NaN of the same sign. */
float st_f16_to_f32(uint16_t h);
float st_bf16_to_f32(uint16_t b);
uint16_t st_f32_to_bf16(float f);
uint16_t st_f32_to_f16(float f);

/* ---- reading one file ------------------------------------------------ */

/* Opens and validates the safetensors file at path (borrowed). On success
 * *out is a handle the caller frees with st_file_close. Errors: RT_ERR_IO /
 * RT_ERR_NOT_FOUND (cannot open or map), RT_ERR_FORMAT (malformed: bad
 * header length, JSON, shape, offsets, overlap, duplicate names),
 * RT_ERR_UNSUPPORTED (unknown dtype, rank > ST_MAX_RANK), RT_ERR_TOO_LARGE
 * (header over 100 MiB), RT_ERR_NOMEM. err (may be NULL) receives a message
 * naming the file and, where it applies, the tensor and field. */
int st_file_open(const char *path, st_file **out, char *err, size_t errsize);

/* Unmaps and frees a file; every st_tensor from it becomes invalid.
 * Accepts NULL. */
void st_file_close(st_file *f);

/* Number of tensors in the file (the __metadata__ entry is not one). */
size_t st_tensor_count(const st_file *f);

/* The i-th tensor in name order, or NULL when i is out of range. */
const st_tensor *st_tensor_at(const st_file *f, size_t i);

/* The tensor named name, or NULL. Borrowed from f. */
const st_tensor *st_tensor_find(const st_file *f, const char *name);

/* The value of a __metadata__ key, or NULL. Borrowed from f. */
const char *st_file_metadata(const st_file *f, const char *key);

/* Writes t's shape as "[a, b, ...]" ("[]" for a scalar) into buf, for
 * messages; ST_SHAPE_TEXT bytes always hold it. Returns buf. */
#define ST_SHAPE_TEXT (ST_MAX_RANK * 22 + 3)
const char *st_shape_format(const st_tensor *t, char *buf, size_t size);

/* Converts a F32/F16/BF16 tensor to float into dst, which holds n floats.
 * Errors: RT_ERR_INVALID when n != t->numel (nothing written),
 * RT_ERR_UNSUPPORTED for any other dtype (name it with st_dtype_name). */
int st_tensor_read_f32(const st_tensor *t, float *dst, size_t n);

/* ---- reading a Hugging Face model directory -------------------------- */

/* Opens the weights of the model directory dir (borrowed): every shard named
 * in model.safetensors.index.json's weight_map when that file exists, else
 * model.safetensors. Shard names must be plain file names (no '/', no
 * ".."); every weight_map entry must exist in its shard, and only the
 * entries of weight_map are visible. Errors as st_file_open, plus
 * RT_ERR_NOT_FOUND when neither file exists. *out is freed with
 * st_model_close. */
int st_model_open(const char *dir, st_model **out, char *err, size_t errsize);

/* Asks the kernel to read every shard into the page cache in the
 * background, in file order (madvise WILLNEED): a model about to be used
 * whole then loads at the disk's sequential speed instead of by scattered
 * page faults. A hint only; nothing is allocated. */
void st_model_prefetch(const st_model *m);

/* Closes every shard; accepts NULL. */
void st_model_close(st_model *m);

/* Number of visible tensors across all shards. */
size_t st_model_tensor_count(const st_model *m);

/* The i-th visible tensor in name order, or NULL. Borrowed from m. */
const st_tensor *st_model_tensor_at(const st_model *m, size_t i);

/* The tensor named name in whichever shard holds it, or NULL. */
const st_tensor *st_model_find(const st_model *m, const char *name);

/* ---- writing --------------------------------------------------------- */

/* Creates an empty writer; free it with st_writer_free. RT_ERR_NOMEM. */
int st_writer_init(st_writer **out);

/* Frees a writer (not the tensor data it borrowed); accepts NULL. */
void st_writer_free(st_writer *w);

/* Adds a tensor to be stored as dtype (ST_F32, ST_BF16 or ST_F16) with the given
 * shape (rank 0..ST_MAX_RANK, dims >= 0). name and shape are copied; data
 * (numel floats) is BORROWED and must stay valid and unchanged until
 * st_writer_write returns. Tensors are written in the order added. Errors:
 * RT_ERR_INVALID (bad name/shape/dtype), RT_ERR_EXISTS (duplicate name),
 * RT_ERR_TOO_LARGE (size overflow), RT_ERR_NOMEM. */
int st_writer_add(st_writer *w, const char *name, enum st_dtype dtype,
                  int rank, const int64_t *shape, const float *data);

/* Sets a __metadata__ string (key and value copied; a repeated key replaces
 * the old value). RT_ERR_INVALID for an empty key, RT_ERR_NOMEM. */
int st_writer_set_metadata(st_writer *w, const char *key, const char *value);

/* Writes everything added so far to path atomically: a temporary file in
 * the same directory, fsync, rename over path, fsync of the directory. On
 * failure path is untouched and no temporary file remains (except when only
 * the final directory fsync fails: the new file is then in place). Errors:
 * RT_ERR_IO, RT_ERR_NOMEM. The writer may be written again or freed
 * afterwards. */
int st_writer_write(const st_writer *w, const char *path, char *err, size_t errsize);

/* ---- atomic file output, shared by the format writers ---------------- */

/* An output file that appears at its final path only on commit. */
typedef struct st_atomic {
    int fd;
    char *tmp_path;   /* owned */
    char *path;       /* owned */
} st_atomic;

/* Creates a temporary file next to path (borrowed). RT_ERR_IO, RT_ERR_NOMEM. */
int st_atomic_begin(st_atomic *a, const char *path, char *err, size_t errsize);

/* Appends len bytes; retries short writes. RT_ERR_IO. */
int st_atomic_append(st_atomic *a, const void *data, size_t len, char *err, size_t errsize);

/* fsync, close, rename to the final path, fsync the directory; frees a.
 * On error the temporary file is removed. RT_ERR_IO. */
int st_atomic_commit(st_atomic *a, char *err, size_t errsize);

/* Removes the temporary file and frees a; safe after a failed begin. */
void st_atomic_abort(st_atomic *a);

/* One-shot: writes len bytes of data to path atomically. */
int st_write_file_atomic(const char *path, const void *data, size_t len,
                         char *err, size_t errsize);

/* Reads a whole regular file of at most max_bytes into a NUL-terminated
 * buffer the caller frees with free(). Errors: RT_ERR_NOT_FOUND (no such
 * file), RT_ERR_IO, RT_ERR_TOO_LARGE (over max_bytes), RT_ERR_NOMEM. */
int st_read_file(const char *path, size_t max_bytes, char **out, size_t *len,
                 char *err, size_t errsize);

/* Formats err (when not NULL and errsize > 0) like snprintf and returns
 * code: the one-line error report the format parsers share. */
int st_fail(char *err, size_t errsize, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
