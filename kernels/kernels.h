/*
 * kernels/kernels.h — the compute backend interface: the only door of
 * kernels/. A backend is a table of function pointers (kernels_backend) that
 * the CPU side (kernels/cpu/: OpenBLAS + C loops) and, in a CUDA=1 build,
 * the CUDA side (kernels/cuda/: cuBLAS + .cu kernels) fill with the same
 * signatures.
 *
 * Tensors are device pointers (float *, int32_t * for token ids) that the
 * engine must never dereference on the host: the host reaches device memory
 * only through copy_to_device / copy_to_host / zero. On the CPU backend a
 * device pointer happens to be host memory; do not rely on that.
 *
 * Conventions shared by every op:
 *   - Row-major layouts. Activations are [N, C] with N = B*T tokens
 *     (token n = b*T + t). Attention tensors are [B, T, H, D].
 *   - Argument order: outputs, caches (saved for backward), scratch, inputs,
 *     weights, sizes, scalars, then the stream. For a backward op the outputs
 *     are the gradients and the inputs start with dout.
 *   - Forward ops OVERWRITE their outputs. Backward ops ACCUMULATE (+=) into
 *     every gradient output, so the caller zeroes each gradient buffer once
 *     per optimizer step (or once per micro-batch for activation grads) and
 *     tied or shared tensors simply accumulate. A NULL gradient output means
 *     "not needed" (frozen weight): that part of the work is skipped.
 *   - Ops never allocate; work space is passed in by the caller, sized by the
 *     backend's *_scratch_bytes function.
 *   - Each op takes a stream (kernels_stream *): NULL is the default stream;
 *     the CPU backend runs synchronously and ignores it. Ops are ordered on
 *     their stream; synchronize() waits for them.
 *   - Each fallible entry returns an rt_error code (RT_OK = 0). The CPU
 *     backend returns RT_ERR_INVALID for bad sizes, NULL required pointers or
 *     out-of-range token ids; a device backend returns RT_ERR_DEVICE when a
 *     launch fails. Outputs are unspecified after a failed op.
 *   - Outputs must not alias inputs unless the op's comment says so.
 *   - Sizes are int; element counts of flat buffers are int64_t. Products
 *     (N*V, B*H*T*T) are computed in 64 bits internally.
 *   - Numerics (CPU): fp32 throughout; softmax, cross-entropy and SiLU use a
 *     polynomial exp within 1.4 ulp of expf; every reduction outside BLAS
 *     has a fixed order, so a run repeats bit for bit on the same machine.
 *   - Numerics (CUDA): fp32 tensors; cuBLAS products round their operands
 *     to TF32 (about 1e-3 relative; RETUNE_CUDA_TF32=0 turns that off);
 *     the other ops agree with the CPU's to a few ulp. Device-resident
 *     ids and targets are not checked (see kernels/cuda/ops.cu), and a few
 *     reductions use atomics, so runs may differ in the last bits.
 *
 * Ownership: backends are static singletons; the table pointer stays valid
 * for the life of the process and is never freed. Memory from alloc() is
 * owned by the caller and released with free() of the same backend.
 */
#ifndef RT_KERNELS_H
#define RT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "common/rt.h"

/* The element type of a frozen 16-bit weight (the linear16 ops): bfloat16
 * or IEEE half, as the safetensors file stores it. */
typedef enum kernels_dtype { KERNELS_BF16 = 1, KERNELS_F16 = 2 } kernels_dtype;

/* An ordered queue of device work (a CUDA stream). Opaque; NULL = default. */
typedef struct kernels_stream kernels_stream;

/* One adapter's rows for lora_group_forward; a and b are device pointers
 * with the PEFT layouts lora_A.weight [r, C] and lora_B.weight [OC, r]. */
typedef struct kernels_lora_group {
    const float *a, *b;
    int row0, rows; /* rows [row0, row0 + rows) of x and y; rows may be 0 */
    int r;          /* the adapter's rank */
    float scale;    /* alpha / r (or alpha / sqrt(r) for rsLoRA) */
} kernels_lora_group;

/* One sequence of a serving step for attention_kv_batch_forward. Its keys
 * and values live in a cache of fixed-size blocks: position p is row
 * p % block_size of block blocks[p / block_size]. */
typedef struct kernels_kv_seq {
    const int32_t *blocks; /* HOST block table, covering positions [0, past + n) */
    int row0, n;           /* its query rows [row0, row0 + n) of q and out */
    int past;              /* positions cached before them */
} kernels_kv_seq;

typedef struct kernels_backend {
    const char *name; /* "cpu", "cuda" */
    /* The largest head_dim attention_kv_forward takes (0: any), checked
     * when a server opens so that a model beyond it is refused by name. */
    int max_kv_head_dim;

    /* ---- memory and streams -------------------------------------------- */

    /* *out = bytes of device memory, 64-byte aligned, contents undefined.
     * RT_ERR_NOMEM on failure (*out untouched). Caller frees with free(). */
    int (*alloc)(void **out, size_t bytes);
    /* Releases memory from alloc(); NULL is a no-op. */
    void (*free)(void *ptr);
    /* Host -> device. The host buffer may be reused when the call returns. */
    int (*copy_to_device)(void *dst, const void *src_host, size_t bytes, kernels_stream *s);
    /* Device -> host. The data is on the host when the call returns. */
    int (*copy_to_host)(void *dst_host, const void *src, size_t bytes, kernels_stream *s);
    /* Device -> device; the ranges must not overlap. */
    int (*copy_device)(void *dst, const void *src, size_t bytes, kernels_stream *s);
    /* Sets bytes of device memory to zero. */
    int (*zero)(void *dst, size_t bytes, kernels_stream *s);
    /* Waits until all work queued on s has finished. */
    int (*synchronize)(kernels_stream *s);
    /* *out = a new stream (NULL on the CPU backend); stream_free accepts NULL. */
    int (*stream_create)(kernels_stream **out);
    void (*stream_free)(kernels_stream *s);

    /* ---- matrix products (BLAS) ---------------------------------------- */

    /* c[m,n] = alpha * op(a) @ op(b) + beta * c, dense row-major; op(x) is x
     * or x^T per trans_a / trans_b (0 or 1). a is [m,k] ([k,m] if trans_a),
     * b is [k,n] ([n,k] if trans_b). beta == 0 ignores c's old contents. */
    int (*matmul)(float *c, const float *a, const float *b,
                  int m, int n, int k, int trans_a, int trans_b,
                  float alpha, float beta, kernels_stream *s);
    /* For i in [0, batch): c_i = alpha * op(a_i) @ op(b_i) + beta * c_i with
     * x_i = x + i*stride_x and explicit leading dimensions (row strides);
     * the cublasSgemmStridedBatched contract in row-major terms. */
    int (*matmul_strided_batched)(float *c, const float *a, const float *b,
                                  int m, int n, int k, int trans_a, int trans_b,
                                  float alpha, float beta,
                                  int lda, int ldb, int ldc,
                                  int64_t stride_a, int64_t stride_b, int64_t stride_c,
                                  int batch, kernels_stream *s);

    /* ---- layer ops ----------------------------------------------------- */

    /* Linear layer (nn.Linear): out[N,OC] = inp[N,C] @ weight[OC,C]^T + bias[OC]
     * (bias may be NULL). */
    int (*linear_forward)(float *out, const float *inp, const float *weight,
                          const float *bias, int N, int C, int OC, kernels_stream *s);
    /* dinp[N,C] += dout @ weight; dweight[OC,C] += dout^T @ inp;
     * dbias[OC] += column sums of dout. Any of the three may be NULL (a frozen
     * weight passes dweight = NULL and costs only the dinp product). */
    int (*linear_backward)(float *dinp, float *dweight, float *dbias,
                           const float *dout, const float *inp, const float *weight,
                           int N, int C, int OC, kernels_stream *s);

    /* Frozen 16-bit weights (a LoRA base or a served model kept in bf16 or
     * f16): the same products with weight[OC,C] of dtype dt, converted to
     * fp32 on the fly; every product accumulates in fp32 (numerically the
     * fp32 op on the converted weight, up to summation order). scratch is
     * linear16_scratch_bytes(N, C, OC) bytes (may be 0 -> NULL). */
    size_t (*linear16_scratch_bytes)(int N, int C, int OC);
    /* out[N,OC] = inp[N,C] @ weight^T + bias (bias fp32, may be NULL). */
    int (*linear16_forward)(float *out, void *scratch, const float *inp, const uint16_t *weight,
                            kernels_dtype dt, const float *bias, int N, int C, int OC,
                            kernels_stream *s);
    /* dinp[N,C] += dout[N,OC] @ weight (a frozen weight has no dweight). */
    int (*linear16_backward)(float *dinp, void *scratch, const float *dout,
                             const uint16_t *weight, kernels_dtype dt, int N, int C, int OC,
                             kernels_stream *s);
    /* out[N,C] = fp32(table[ids[n], :]) for a 16-bit table; ids as below. */
    int (*embedding16_forward)(float *out, const int32_t *ids, const uint16_t *table,
                               kernels_dtype dt, int N, int C, int V, kernels_stream *s);

    /* Token embedding: out[N,C] = table[ids[n], :]. ids are int32 on the
     * device; an id outside [0, V) is RT_ERR_INVALID (CPU checks). */
    int (*embedding_forward)(float *out, const int32_t *ids, const float *table,
                             int N, int C, int V, kernels_stream *s);
    /* dtable[ids[n], :] += dout[n, :]; repeated ids accumulate. */
    int (*embedding_backward)(float *dtable, const float *dout, const int32_t *ids,
                              int N, int C, int V, kernels_stream *s);

    /* RMSNorm (HF LlamaRMSNorm): rstd[n] = 1/sqrt(mean(inp[n]^2) + eps),
     * out = inp * rstd * weight. rstd[N] is saved for backward. */
    int (*rmsnorm_forward)(float *out, float *rstd, const float *inp, const float *weight,
                           int N, int C, float eps, kernels_stream *s);
    /* dinp += d/dinp, dweight += d/dweight (dweight may be NULL). */
    int (*rmsnorm_backward)(float *dinp, float *dweight, const float *rstd,
                            const float *dout, const float *inp, const float *weight,
                            int N, int C, kernels_stream *s);

    /* Rotary embedding, HF "rotate_half" convention: for head dim D and each
     * i < D/2 the pair (x[i], x[i+D/2]) is rotated by angle pos[n]*inv_freq[i]:
     *   out[i]     = x[i] cos - x[i+D/2] sin
     *   out[i+D/2] = x[i+D/2] cos + x[i] sin
     * inp/out are [N, H, D]; pos[N] int32 position ids; inv_freq[D/2] is
     * built by the engine (theta, Llama-3 scaling). out may equal inp (in
     * place). D must be even and <= 1024. */
    int (*rope_forward)(float *out, const float *inp, const int32_t *pos,
                        const float *inv_freq, int N, int H, int D, kernels_stream *s);
    /* dinp += R^T dout (the inverse rotation). dinp must not alias dout. */
    int (*rope_backward)(float *dinp, const float *dout, const int32_t *pos,
                         const float *inv_freq, int N, int H, int D, kernels_stream *s);

    /* Bytes of scratch attention_forward/backward need for these sizes. */
    size_t (*attention_scratch_bytes)(int B, int T, int Hq, int Hkv, int D);
    /* Causal grouped-query attention, scale 1/sqrt(D):
     *   q[B,T,Hq,D], k,v[B,T,Hkv,D] -> out[B,T,Hq,D]
     * query head h reads kv head h / (Hq/Hkv); Hq must be a multiple of Hkv.
     * window > 0 is a sliding window (Mistral): the query at position i sees
     * only the keys at positions (i - window, i]; window 0 sees all of [0, i].
     * Saves lse[B,Hq,T] (log-sum-exp of each scaled score row) for backward,
     * which recomputes the probabilities (no [T,T] tensor is kept). */
    int (*attention_forward)(float *out, float *lse, void *scratch,
                             const float *q, const float *k, const float *v,
                             int B, int T, int Hq, int Hkv, int D, int window,
                             kernels_stream *s);
    /* dq += .., dk += .., dv += .. (grouped heads accumulate into their kv
     * head); lse and window are the forward's. Keys a query does not see get
     * exactly zero gradient. */
    int (*attention_backward)(float *dq, float *dk, float *dv, const float *lse, void *scratch,
                              const float *dout, const float *q, const float *k, const float *v,
                              int B, int T, int Hq, int Hkv, int D, int window,
                              kernels_stream *s);

    /* Bytes of scratch attention_kv_forward needs for n new queries over at
     * most T cached positions (past + n <= T). */
    size_t (*attention_kv_scratch_bytes)(int n, int T, int Hq, int Hkv, int D);
    /* Attention of n new query tokens at positions [past, past+n) over the
     * keys/values cached at positions [0, past+n) of one sequence (serving
     * with a KV cache; inference only, nothing saved for backward):
     *   q[n,Hq,D], k_cache,v_cache[>= past+n, Hkv, D] -> out[n,Hq,D]
     * Causal: query i (position past+i) sees keys 0..past+i, or with a
     * sliding window (window > 0) only keys (past+i-window, past+i]. GQA and
     * scale as attention_forward, whose rows it reproduces when past = 0 and
     * the cache holds the whole sequence. The cache rows of the new tokens
     * must already be written. */
    int (*attention_kv_forward)(float *out, void *scratch, const float *q,
                                const float *k_cache, const float *v_cache,
                                int n, int past, int Hq, int Hkv, int D, int window,
                                kernels_stream *s);

    /* SwiGLU: out = silu(gate) * up, silu(x) = x * sigmoid(x); flat n. */
    int (*swiglu_forward)(float *out, const float *gate, const float *up,
                          int64_t n, kernels_stream *s);
    /* dgate += dout * up * silu'(gate); dup += dout * silu(gate). */
    int (*swiglu_backward)(float *dgate, float *dup, const float *dout,
                           const float *gate, const float *up, int64_t n, kernels_stream *s);

    /* Cross-entropy over logits[N,V] with int32 targets[N]. A target < 0
     * (e.g. -100) marks an ignored row: loss 0, correct 0, no gradient.
     * losses[n] = logsumexp(logits[n]) - logits[n, targets[n]] (unweighted
     * NLL); correct[n] = 1.0f when the first argmax equals the target, else 0
     * (correct may be NULL); lse[N] is saved for backward. */
    int (*cross_entropy_forward)(float *losses, float *correct, float *lse,
                                 const float *logits, const int32_t *targets,
                                 int N, int V, kernels_stream *s);
    /* dlogits[n,:] = (weights[n] * scale) * (softmax(logits[n]) - onehot(target)),
     * and 0 on rows that are ignored (target < 0) or weighted 0.
     * weights[N] is the per-row loss weight/mask (NULL = all 1); scale is the
     * upstream gradient of the summed loss, e.g. 1/sum(weights) for a mean.
     * dlogits may be logits: the gradient then overwrites the logits in place,
     * which saves a [N, V] buffer (the largest one at a big vocabulary). */
    int (*cross_entropy_backward)(float *dlogits, const float *lse,
                                  const float *logits, const int32_t *targets,
                                  const float *weights, int N, int V, float scale,
                                  kernels_stream *s);

    /* ---- elementwise and reductions (flat buffers of n floats) ---------- */

    /* out = a + b (residual forward). out may equal a or b. */
    int (*add)(float *out, const float *a, const float *b, int64_t n, kernels_stream *s);
    /* y += alpha * x (residual backward, gradient accumulation). */
    int (*axpy)(float *y, const float *x, int64_t n, float alpha, kernels_stream *s);
    /* x *= alpha, in place (gradient clipping, loss scaling). */
    int (*scale)(float *x, int64_t n, float alpha, kernels_stream *s);
    /* out = a * b elementwise (e.g. x * dropout mask). out may equal a or b. */
    int (*mul_forward)(float *out, const float *a, const float *b, int64_t n, kernels_stream *s);
    /* da += dout * b: the gradient of mul_forward w.r.t. a (b held constant). */
    int (*mul_backward)(float *da, const float *dout, const float *b, int64_t n, kernels_stream *s);
    /* out[0] = sum of x[i]^2 (accumulated in double on the CPU); out is a
     * device float. sqrt on the host gives the gradient norm for clipping. */
    int (*sum_squares)(float *out, const float *x, int64_t n, kernels_stream *s);

    /* ---- optimizer ----------------------------------------------------- */

    /* One torch.optim.AdamW step (amsgrad=False, maximize=False) over n
     * parameters, step t >= 1 (the count after this update):
     *   param *= 1 - lr*weight_decay
     *   m = lerp(m, grad, 1-beta1);  v = beta2*v + (1-beta2)*grad^2
     *   param -= (lr/(1-beta1^t)) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)
     * m and v start at zero before step 1. grad is not modified. The
     * hyperparameters are double, as PyTorch holds them (a float beta2 of
     * 0.999 would make 1-beta2 off by 1e-5 relative); the kernel rounds the
     * derived factors to float exactly where PyTorch does. */
    int (*adamw_step)(float *param, float *m, float *v, const float *grad, int64_t n,
                      double lr, double beta1, double beta2, double eps,
                      double weight_decay, int t, kernels_stream *s);

    /* ---- serving: many LoRA adapters in one batch (optional) ----------- */

    /* Optional: NULL in a backend without it (callers then loop over
     * matmul); both built-in backends provide it.
     * Bytes of scratch lora_group_forward needs for N rows and ranks up to
     * max_rank. */
    size_t (*lora_group_scratch_bytes)(int N, int max_rank);
    /* The LoRA terms of a batch whose token rows are grouped by adapter
     * (SGMV): for each of the n_groups groups g,
     *   y[rows_g] += g.scale * (x[rows_g] @ g.a^T) @ g.b^T
     * with rows_g = [g.row0, g.row0 + g.rows) of x[N, C] and y[N, OC].
     * groups is a HOST array (borrowed; reusable when the call returns) of
     * device weight pointers; row ranges must not overlap, rows outside
     * every group are untouched, and 1 <= g.r <= max_rank. */
    int (*lora_group_forward)(float *y, void *scratch, const float *x,
                              const kernels_lora_group *groups, int n_groups,
                              int N, int C, int OC, int max_rank, kernels_stream *s);

    /* Optional (NULL: callers run linear_forward or linear16_forward, then
     * lora_group_forward): the two in one call, with the same result bit
     * for bit: out[N, OC] = x @ weight^T (+ bias), weight [OC, C] fp32
     * (w16 = 0) or of dtype w16, then the groups' terms added as
     * lora_group_forward adds them. A backend can overlap the adapters'
     * memory-bound reads with the base product and synchronize once.
     * scratch is linear_lora_scratch_bytes(N, OC, max_rank) bytes (it
     * replaces lora_group_forward's), w16_scratch linear16_scratch_bytes
     * (N, C, OC) for 16-bit weights (may be NULL when that is 0). */
    size_t (*linear_lora_scratch_bytes)(int N, int OC, int max_rank);
    int (*linear_lora_forward)(float *out, void *scratch, void *w16_scratch, const float *x,
                               const void *weight, int w16, const float *bias,
                               const kernels_lora_group *groups, int n_groups, int N, int C,
                               int OC, int max_rank, kernels_stream *s);

    /* Optional (NULL: callers keep each sequence's cache in one block and
     * loop over attention_kv_forward): the attention_kv_forward of every
     * sequence of a step in one call, over a cache in blocks, so that a
     * decode step is one pass over all caches rather than a few small
     * products per sequence and head:
     *   k_cache, v_cache: one layer, [n_blocks, block_size, Hkv, D] each;
     *   for each seq: q[row0 .. row0+n, Hq, D] over its blocks -> out[same rows]
     * with the causal, windowed, GQA semantics of attention_kv_forward; the
     * new tokens' rows must already be written. seqs is a HOST array
     * (borrowed); query rows of different sequences must not overlap.
     * scratch: attention_kv_scratch_bytes(largest n, largest past + n, ...). */
    int (*attention_kv_batch_forward)(float *out, void *scratch, const float *q,
                                      const float *k_cache, const float *v_cache,
                                      int block_size, const kernels_kv_seq *seqs, int n_seqs,
                                      int Hq, int Hkv, int D, int window, kernels_stream *s);
} kernels_backend;

/* The CPU backend (OpenBLAS + C loops). Never NULL; do not free. */
const kernels_backend *kernels_cpu_backend(void);

/* *out = the backend called name: "cpu", or "cuda" / "cuda:N" (GPU N,
 * default 0) when the build has the CUDA backend (make CUDA=1).
 * RT_ERR_NOT_FOUND for an unknown name or a GPU index the machine lacks,
 * RT_ERR_UNSUPPORTED for "cuda" in a build without it or on a machine with
 * no GPU (or no driver), and when a process that already uses one GPU asks
 * for another (one GPU per process); RT_ERR_DEVICE when the GPU fails to
 * start. *out untouched on failure. */
int kernels_backend_get(const char *name, const kernels_backend **out);

#endif
