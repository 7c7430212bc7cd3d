/*
 * kernels/cpu/cpu_decl.h — prototypes of the CPU ops for one element type.
 * Included by cpu.h (real = float) and cpu_f64.h (real = double), which
 * define real and FN(name) around it; it has no include guard on purpose.
 * Arguments and contracts are those of the matching kernels_backend field
 * in kernels/kernels.h.
 */
int FN(matmul)(real *c, const real *a, const real *b, int m, int n, int k,
               int trans_a, int trans_b, real alpha, real beta, kernels_stream *s);
int FN(matmul_strided_batched)(real *c, const real *a, const real *b,
                               int m, int n, int k, int trans_a, int trans_b,
                               real alpha, real beta, int lda, int ldb, int ldc,
                               int64_t stride_a, int64_t stride_b, int64_t stride_c,
                               int batch, kernels_stream *s);
int FN(linear_forward)(real *out, const real *inp, const real *weight, const real *bias,
                       int N, int C, int OC, kernels_stream *s);
int FN(linear_backward)(real *dinp, real *dweight, real *dbias,
                        const real *dout, const real *inp, const real *weight,
                        int N, int C, int OC, kernels_stream *s);
int FN(embedding_forward)(real *out, const int32_t *ids, const real *table,
                          int N, int C, int V, kernels_stream *s);
int FN(embedding_backward)(real *dtable, const real *dout, const int32_t *ids,
                           int N, int C, int V, kernels_stream *s);
int FN(rmsnorm_forward)(real *out, real *rstd, const real *inp, const real *weight,
                        int N, int C, real eps, kernels_stream *s);
int FN(rmsnorm_backward)(real *dinp, real *dweight, const real *rstd,
                         const real *dout, const real *inp, const real *weight,
                         int N, int C, kernels_stream *s);
int FN(rope_forward)(real *out, const real *inp, const int32_t *pos, const real *inv_freq,
                     int N, int H, int D, kernels_stream *s);
int FN(rope_backward)(real *dinp, const real *dout, const int32_t *pos, const real *inv_freq,
                      int N, int H, int D, kernels_stream *s);
size_t FN(attention_scratch_bytes)(int B, int T, int Hq, int Hkv, int D);
int FN(attention_forward)(real *out, real *lse, void *scratch,
                          const real *q, const real *k, const real *v,
                          int B, int T, int Hq, int Hkv, int D, int window, kernels_stream *s);
int FN(attention_backward)(real *dq, real *dk, real *dv, const real *lse, void *scratch,
                           const real *dout, const real *q, const real *k, const real *v,
                           int B, int T, int Hq, int Hkv, int D, int window, kernels_stream *s);
size_t FN(attention_kv_scratch_bytes)(int n, int T, int Hq, int Hkv, int D);
int FN(attention_kv_forward)(real *out, void *scratch, const real *q,
                             const real *k_cache, const real *v_cache,
                             int n, int past, int Hq, int Hkv, int D, int window,
                             kernels_stream *s);
int FN(swiglu_forward)(real *out, const real *gate, const real *up, int64_t n, kernels_stream *s);
int FN(swiglu_backward)(real *dgate, real *dup, const real *dout, const real *gate,
                        const real *up, int64_t n, kernels_stream *s);
int FN(cross_entropy_forward)(real *losses, real *correct, real *lse,
                              const real *logits, const int32_t *targets,
                              int N, int V, kernels_stream *s);
int FN(cross_entropy_backward)(real *dlogits, const real *lse, const real *logits,
                               const int32_t *targets, const real *weights,
                               int N, int V, real scale, kernels_stream *s);
int FN(add)(real *out, const real *a, const real *b, int64_t n, kernels_stream *s);
int FN(axpy)(real *y, const real *x, int64_t n, real alpha, kernels_stream *s);
int FN(scale)(real *x, int64_t n, real alpha, kernels_stream *s);
int FN(mul_forward)(real *out, const real *a, const real *b, int64_t n, kernels_stream *s);
int FN(mul_backward)(real *da, const real *dout, const real *b, int64_t n, kernels_stream *s);
int FN(sum_squares)(real *out, const real *x, int64_t n, kernels_stream *s);
int FN(adamw_step)(real *param, real *m, real *v, const real *grad, int64_t n,
                   double lr, double beta1, double beta2, double eps, double weight_decay,
                   int t, kernels_stream *s);
