/*
 * kernels/cpu/cpu_f64.h — (test-only) the double-precision twins of the CPU
 * ops: kernels_f64_<op>, built from the same source (ops_impl.h) as the float
 * ops, with the same argument order and contracts but double tensors and
 * scalars. tests/test_kernels.c checks them against finite differences in
 * double precision and the float ops against them. Not part of any backend.
 */
#ifndef RT_KERNELS_CPU_F64_H
#define RT_KERNELS_CPU_F64_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

#define real double
#define FN(name) kernels_f64_##name
#include "kernels/cpu/cpu_decl.h"
#undef FN
#undef real

#endif
