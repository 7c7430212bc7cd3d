/*
 * kernels/cpu/gemv.h — (internal to kernels/cpu/) the CPU backend's
 * products with few input rows: decode steps, short prefills and the LoRA
 * terms of a serving step, where a BLAS sgemm spends more time packing the
 * weight matrix than multiplying (it repacks the whole matrix on every
 * call, and one decode token reads each weight exactly once).
 *
 * cpu_gemv computes, for n in [0, N) and o in [0, OC),
 *     out[n * ldo + o] = alpha * dot(weight[o, 0:C], inp[n * ldi + 0:C])
 *                        (+ out[n * ldo + o] when accumulate)
 * with weight row-major [OC, C] in fp32, bf16 or f16 (16-bit values are
 * converted in registers; every sum is fp32). Each weight row is read from
 * memory once whatever N is: tiles of weight rows stay in cache while every
 * block of 4, 2 or 1 input rows passes over them, and the tiles are split
 * over the CPU backend's sleeping thread pool (pool.h) when the product is
 * large enough to pay for waking it.
 *
 * Kernels exist for AVX-512, AVX2/FMA/F16C and a portable baseline; the
 * best one this CPU runs is chosen at run time (cpu_isa_best), and
 * RETUNE_CPU_ISA=avx2|portable caps the choice (for benchmarks and tests).
 */
#ifndef RT_KERNELS_CPU_GEMV_H
#define RT_KERNELS_CPU_GEMV_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#ifndef __FLT16_MAX__
#error "the f16 path needs the compiler's _Float16 (gcc >= 12 on x86-64)"
#endif

/* The exact fp32 value of a bf16 or f16 bit pattern (both are subsets of
 * fp32), shared by the few-row kernels and ops16.c's panel conversion. */
static inline float cpu_bf16_value(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float cpu_f16_value(uint16_t h)
{
    _Float16 x;
    memcpy(&x, &h, sizeof x);
    return (float)x;
}

/* Up to this many input rows, the CPU linear ops take the direct path. */
#define CPU_GEMV_ROWS 32

typedef enum cpu_wtype { CPU_W_F32, CPU_W_BF16, CPU_W_F16 } cpu_wtype;

typedef enum cpu_isa { CPU_ISA_PORTABLE, CPU_ISA_AVX2, CPU_ISA_AVX512 } cpu_isa;

typedef struct cpu_gemv_args {
    float *out;
    int ldo;              /* floats between output rows */
    const float *inp;
    int ldi;              /* floats between input rows */
    const void *weight;   /* [OC, C], row-major */
    cpu_wtype wt;
    int N, C, OC;
    float alpha;
    bool accumulate;      /* add to out instead of overwriting it */
} cpu_gemv_args;

/* The product above with the best kernels for this CPU. */
void cpu_gemv(const cpu_gemv_args *a);

/* Share `part` of `parts` of that product's weight rows (an equal share of
 * its cache tiles), with the best kernels, on the calling thread: for an op
 * that splits one pool run between this product and other work. */
void cpu_gemv_share(const cpu_gemv_args *a, int part, int parts);

/* The same with the kernels of one instruction set (which the CPU must run:
 * see cpu_isa_supported), on the calling thread only. For tests. */
void cpu_gemv_isa(const cpu_gemv_args *a, cpu_isa isa);

/* 1 when this CPU runs isa's kernels. */
int cpu_isa_supported(cpu_isa isa);

/* The instruction set cpu_gemv uses (after RETUNE_CPU_ISA). */
cpu_isa cpu_isa_best(void);

#endif
