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

#define SFT_MAX_RANK 8

/* Every dtype the format defines. Only F32, F16 and BF16 convert to float;
 * the others parse (so files carrying e.g. an I64 buffer still open) but
 * sft_tensor_read_f32 refuses them with RT_ERR_UNSUPPORTED. */
enum sft_dtype {
    SFT_F32, SFT_F16, SFT_BF16,
    SFT_F64, SFT_I64, SFT_I32, SFT_I16, SFT_I8, SFT_U64, SFT_U32, SFT_U16, SFT_U8,
    SFT_BOOL, SFT_F8_E4M3, SFT_F8_E5M2,
    SFT_DTYPE_COUNT
};

/* One tensor of an open file. Every field is valid while the file is open;
 * data points into the read-only mapping (possibly unaligned; NULL-safe only
 * when nbytes is 0). */
typedef struct sft_tensor {
    const char *name;
    enum sft_dtype dtype;
    int rank;                      /* 0 (scalar) .. SFT_MAX_RANK */
    int64_t shape[SFT_MAX_RANK];    /* shape[rank..] are 0 */
    size_t numel;                  /* product of shape (1 for a scalar) */
    size_t nbytes;                 /* numel * sft_dtype_size(dtype) */
    const void *data;
} sft_tensor;

typedef struct sft_file sft_file;
typedef struct sft_model sft_model;
typedef struct sft_writer sft_writer;

/* The format's name for a dtype ("F32", "BF16", ...); "?" when out of range. */
const char *sft_dtype_name(enum sft_dtype dtype);

/* Bytes per element of a dtype; 0 when out of range. */
size_t sft_dtype_size(enum sft_dtype dtype);

/* Scalar conversions. F16 handles subnormals, infinities and NaN exactly;
 * BF16 -> F32 is exact; F32 -> BF16 and F32 -> F16 round to nearest, ties
 * to even (F16 through its subnormals, overflowing into inf), keep
 * infinities and turn any NaN into a quiet NaN of the same sign. */
float sft_f16_to_f32(uint16_t h);
float sft_bf16_to_f32(uint16_t b);
uint16_t sft_f32_to_bf16(float f);
uint16_t sft_f32_to_f16(float f);

/* ---- reading one file ------------------------------------------------ */

/* Opens and validates the safetensors file at path (borrowed). On success
 * *out is a handle the caller frees with sft_file_close. Errors: RT_ERR_IO /
 * RT_ERR_NOT_FOUND (cannot open or map), RT_ERR_FORMAT (malformed: bad
 * header length, JSON, shape, offsets, overlap, duplicate names),
 * RT_ERR_UNSUPPORTED (unknown dtype, rank > SFT_MAX_RANK), RT_ERR_TOO_LARGE
 * (header over 100 MiB), RT_ERR_NOMEM. err (may be NULL) receives a message
 * naming the file and, where it applies, the tensor and field. */
int sft_file_open(const char *path, sft_file **out, char *err, size_t errsize);

/* Unmaps and frees a file; every sft_tensor from it becomes invalid.
 * Accepts NULL. */
void sft_file_close(sft_file *f);

/* Number of tensors in the file (the __metadata__ entry is not one). */
size_t sft_tensor_count(const sft_file *f);

/* The i-th tensor in name order, or NULL when i is out of range. */
const sft_tensor *sft_tensor_at(const sft_file *f, size_t i);

/* The tensor named name, or NULL. Borrowed from f. */
const sft_tensor *sft_tensor_find(const sft_file *f, const char *name);

/* The value of a __metadata__ key, or NULL. Borrowed from f. */
const char *sft_file_metadata(const sft_file *f, const char *key);

/* Writes t's shape as "[a, b, ...]" ("[]" for a scalar) into buf, for
 * messages; SFT_SHAPE_TEXT bytes always hold it. Returns buf. */
#define SFT_SHAPE_TEXT (SFT_MAX_RANK * 22 + 3)
const char *sft_shape_format(const sft_tensor *t, char *buf, size_t size);

/* Converts a F32/F16/BF16 tensor to float into dst, which holds n floats.
 * Errors: RT_ERR_INVALID when n != t->numel (nothing written),
 * RT_ERR_UNSUPPORTED for any other dtype (name it with sft_dtype_name). */
int sft_tensor_read_f32(const sft_tensor *t, float *dst, size_t n);

/* ---- reading a Hugging Face model directory -------------------------- */

/* Opens the weights of the model directory dir (borrowed): every shard named
 * in model.safetensors.index.json's weight_map when that file exists, else
 * model.safetensors. Shard names must be plain file names (no '/', no
 * ".."); every weight_map entry must exist in its shard, and only the
 * entries of weight_map are visible. Errors as sft_file_open, plus
 * RT_ERR_NOT_FOUND when neither file exists. *out is freed with
 * sft_model_close. */
int sft_model_open(const char *dir, sft_model **out, char *err, size_t errsize);

/* Asks the kernel to read every shard into the page cache in the
 * background, in file order (madvise WILLNEED): a model about to be used
 * whole then loads at the disk's sequential speed instead of by scattered
 * page faults. A hint only; nothing is allocated. */
void sft_model_prefetch(const sft_model *m);

/* Closes every shard; accepts NULL. */
void sft_model_close(sft_model *m);

/* Number of visible tensors across all shards. */
size_t sft_model_tensor_count(const sft_model *m);

/* The i-th visible tensor in name order, or NULL. Borrowed from m. */
const sft_tensor *sft_model_tensor_at(const sft_model *m, size_t i);

/* The tensor named name in whichever shard holds it, or NULL. */
const sft_tensor *sft_model_find(const sft_model *m, const char *name);

/* ---- writing --------------------------------------------------------- */

/* Creates an empty writer; free it with sft_writer_free. RT_ERR_NOMEM. */
int sft_writer_init(sft_writer **out);

/* Frees a writer (not the tensor data it borrowed); accepts NULL. */
void sft_writer_free(sft_writer *w);

/* Adds a tensor to be stored as dtype (SFT_F32, SFT_BF16 or SFT_F16) with the given
 * shape (rank 0..SFT_MAX_RANK, dims >= 0). name and shape are copied; data
 * (numel floats) is BORROWED and must stay valid and unchanged until
 * sft_writer_write returns. Tensors are written in the order added. Errors:
 * RT_ERR_INVALID (bad name/shape/dtype), RT_ERR_EXISTS (duplicate name),
 * RT_ERR_TOO_LARGE (size overflow), RT_ERR_NOMEM. */
int sft_writer_add(sft_writer *w, const char *name, enum sft_dtype dtype,
                  int rank, const int64_t *shape, const float *data);

/* Sets a __metadata__ string (key and value copied; a repeated key replaces
 * the old value). RT_ERR_INVALID for an empty key, RT_ERR_NOMEM. */
int sft_writer_set_metadata(sft_writer *w, const char *key, const char *value);

/* Writes everything added so far to path atomically: a temporary file in
 * the same directory, fsync, rename over path, fsync of the directory. On
 * failure path is untouched and no temporary file remains (except when only
 * the final directory fsync fails: the new file is then in place). Errors:
 * RT_ERR_IO, RT_ERR_NOMEM. The writer may be written again or freed
 * afterwards. */
int sft_writer_write(const sft_writer *w, const char *path, char *err, size_t errsize);

#endif
