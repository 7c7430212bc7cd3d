/*
 * kernels/cpu/cpu.h — (internal to kernels/) the float CPU ops that fill the
 * "cpu" kernels_backend table: kernels_<op>_forward / kernels_<op>_backward,
 * kernels_matmul, ... with the arguments of the table's fields. The engine
 * reaches them only through kernels_cpu_backend().
 */
#ifndef RT_KERNELS_CPU_H
#define RT_KERNELS_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

#define real float
#define FN(name) kernels_##name
#include "kernels/cpu/cpu_decl.h"
#include "kernels/cpu/ops16_decl.h"
#undef FN
#undef real

/* A projection plus its grouped LoRA terms in one call (see
 * kernels_backend.linear_lora_forward). */
size_t kernels_linear_lora_scratch_bytes(int N, int OC, int max_rank);
int kernels_linear_lora_forward(float *out, void *scratch, void *w16_scratch, const float *x,
                                const void *weight, int w16, const float *bias,
                                const kernels_lora_group *groups, int n_groups, int N, int C,
                                int OC, int max_rank, kernels_stream *s);

/* The grouped-LoRA op (float only; see kernels_backend.lora_group_forward). */
size_t kernels_lora_group_scratch_bytes(int N, int max_rank);
int kernels_lora_group_forward(float *y, void *scratch, const float *x,
                               const kernels_lora_group *groups, int n_groups,
                               int N, int C, int OC, int max_rank, kernels_stream *s);
/* The batched serving attention (float only; see
 * kernels_backend.attention_kv_batch_forward). */
int kernels_attention_kv_batch_forward(float *out, void *scratch, const float *q,
                                       const float *k_cache, const float *v_cache,
                                       int block_size, const kernels_kv_seq *seqs, int n_seqs,
                                       int Hq, int Hkv, int D, int window, kernels_stream *s);
/* 1 when groups[n_groups] are valid for N rows and ranks up to max_rank
 * (shared with the CUDA backend's argument check). */
int kernels_lora_groups_valid(const kernels_lora_group *groups, int n_groups, int N, int max_rank);

#endif
