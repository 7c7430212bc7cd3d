/*
 * bench/gemv_bench.c — the few-row product of the CPU backend
 * (kernels/cpu/gemv.h, the decode projections) against OpenBLAS sgemm on
 * the same weights, in one process, for 1 to 64 input rows. Both run on the
 * CPU backend's pool (sgemm as the backend calls it: kernels/cpu/gemm.h,
 * OpenBLAS single-threaded in each of the pool's slices), so the ratio
 * compares the kernels, not the threading.
 *
 *   gemv_bench [--C 512] [--OC 1376] [--matrices 40] [--reps 20]
 *
 * The weights are --matrices separate [OC, C] fp32 matrices (default 40:
 * 113 MB, far beyond any cache, as one decode step's projections), used one
 * after another so that every product reads its weights from memory. Each
 * row count runs both paths --reps times over all matrices, alternating,
 * and prints the best time per pass, the weight bytes per second it
 * implies, and ratio = sgemm time / gemv time (> 1: the direct path is
 * faster). The same for bf16 weights through linear16_forward, against
 * sgemm on the fp32 copy. One table on stdout, the CPU and thread count
 * first.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/safetensors.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/gemv.h"
#include "kernels/kernels.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void print_cpu(void)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0) {
            printf("cpu:%s", strchr(line, ':') + 1);
            break;
        }
    if (f)
        fclose(f);
    static const char *isa[] = {"portable", "avx2", "avx512"};
    printf("gemv kernels: %s\n", isa[cpu_isa_best()]);
}

static void *aligned64(size_t bytes)
{
    return aligned_alloc(64, (bytes + 63) / 64 * 64);
}

int main(int argc, char **argv)
{
    int C = 512, OC = 1376, M = 40, reps = 20;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--C")) C = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--OC")) OC = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--matrices")) M = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else { fprintf(stderr, "unknown flag %s\n", argv[i]); return 2; }
    }
    if (C < 1 || OC < 1 || M < 1 || reps < 1)
        return 2;
    print_cpu();
    size_t per = (size_t)OC * C;
    /* 64-byte aligned, as the backend allocates weights and activations */
    float *w = aligned64(per * M * sizeof *w), *x = aligned64((size_t)64 * C * sizeof *x);
    uint16_t *w16 = aligned64(per * M * sizeof *w16);
    float *out = aligned64((size_t)64 * OC * sizeof *out);
    for (size_t i = 0; i < per * M; i++) {
        w[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        w16[i] = sft_f32_to_bf16(w[i]);
    }
    for (size_t i = 0; i < (size_t)64 * C; i++)
        x[i] = (float)(i % 7) / 7.0f;
    const kernels_backend *be = kernels_cpu_backend();
    printf("weights: %d matrices of [%d, %d], %.1f MB fp32\n", M, OC, C, per * M * 4 / 1e6);
    printf("%5s %12s %12s %10s %10s %7s %12s %10s %7s\n", "rows", "sgemm ms", "gemv ms",
           "sgemm GB/s", "gemv GB/s", "ratio", "bf16 gemv ms", "bf16 GB/s", "ratio");
    static const int rows[] = {1, 2, 4, 8, 16, 32, 64};
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        int N = rows[r];
        double best[3] = {1e30, 1e30, 1e30};
        for (int k = 0; k < reps; k++) {
            for (int path = 0; path < (N <= CPU_GEMV_ROWS ? 3 : 2); path++) {
                double t0 = now();
                for (int m = 0; m < M; m++) {
                    if (path == 0)
                        cpu_sgemm(0, 1, N, OC, C, 1.0f, x, C, w + per * m, C, 0.0f, out, OC);
                    else if (path == 1)
                        be->linear_forward(out, x, w + per * m, NULL, N, C, OC, NULL);
                    else
                        be->linear16_forward(out, NULL, x, w16 + per * m, KERNELS_BF16, NULL, N, C,
                                             OC, NULL);
                }
                double t = now() - t0;
                best[path] = t < best[path] ? t : best[path];
            }
        }
        double bytes = (double)per * M * 4;
        printf("%5d %12.2f %12.2f %10.1f %10.1f %7.2f", N, best[0] * 1e3, best[1] * 1e3,
               bytes / best[0] / 1e9, bytes / best[1] / 1e9, best[0] / best[1]);
        if (N <= CPU_GEMV_ROWS)
            printf(" %12.2f %10.1f %7.2f\n", best[2] * 1e3, bytes / 2 / best[2] / 1e9,
                   best[0] / best[2]);
        else
            printf("   (beyond CPU_GEMV_ROWS: both columns are sgemm)\n");
    }
    free(w); free(w16); free(x); free(out);
    return 0;
}
