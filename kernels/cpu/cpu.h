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
#undef FN
#undef real

#endif
