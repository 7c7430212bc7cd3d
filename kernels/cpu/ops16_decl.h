/*
 * kernels/cpu/ops16_decl.h — (internal to kernels/) the prototypes of the
 * frozen 16-bit weight ops (float only), shared by the CPU ops
 * (kernels/cpu/ops16.c) and their CUDA twins so the two cannot drift apart.
 * The includer defines FN(name); no include guard on purpose.
 */
size_t FN(linear16_scratch_bytes)(int N, int C, int OC);
int FN(linear16_forward)(float *out, void *scratch, const float *inp, const uint16_t *weight,
                         kernels_dtype dt, const float *bias, int N, int C, int OC,
                         kernels_stream *s);
int FN(linear16_backward)(float *dinp, void *scratch, const float *dout, const uint16_t *weight,
                          kernels_dtype dt, int N, int C, int OC, kernels_stream *s);
int FN(embedding16_forward)(float *out, const int32_t *ids, const uint16_t *table,
                            kernels_dtype dt, int N, int C, int V, kernels_stream *s);
