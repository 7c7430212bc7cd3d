#!/bin/sh
# kernels/cuda/emu/run.sh — (test-only) runs the CUDA backend on a machine
# without a GPU: compiles kernels/cuda/*.cu as host C++ against the emulator
# in this folder (cuda_emu.h, emu_runtime.cpp: fibers for GPU threads, naive
# gemms for cuBLAS), links tests/test_backends and retune with it, and runs
# the parity test with device memory hidden from the host (EMU_PROTECT=1).
# It checks the kernels' logic (indexing, reductions, barriers, the launch
# configurations, the cuBLAS argument order), not races or speed.
#
#   make && sh kernels/cuda/emu/run.sh            # parity test (~30 s)
#   sh kernels/cuda/emu/run.sh --engine           # also `retune train --device cuda`
#                                                 # on tiny_chat against the CPU (~5 min)
# Extra compiler flags for the kernels: EMU_DEFS (e.g. -DATTN_SCRATCH_FLOATS=5000
# to force several attention passes). Output: build-emu/. Needs the plain
# build's build/libretune.a and the CUDA headers (/usr/local/cuda/include).
set -eu
cd "$(dirname "$0")/../../.."
E=kernels/cuda/emu
O=build-emu
CUDA_INC=${CUDA_HOME:-/usr/local/cuda}/include
mkdir -p "$O"
[ -f build/libretune.a ] || { echo "run 'make' first (needs build/libretune.a)"; exit 2; }
INC="-I. -Ibuild/gen -I$CUDA_INC -I$E -I/usr/include/x86_64-linux-gnu/openblas-pthread"
CXXF="-std=c++17 -O1 -g -Wall -Wno-unknown-pragmas $INC"
CF="-std=c11 -O1 -g -Wall -Wextra -D_GNU_SOURCE -DRT_WITH_CUDA $INC"
LIBS="build/libretune.a $(make -s --no-print-directory print-ldlibs)"

g++ $CXXF -c $E/emu_runtime.cpp -o $O/emu_runtime.o
for f in kernels/cuda/*.cu; do
    g++ $CXXF -DKERNELS_CUDA_EMU ${EMU_DEFS:-} -x c++ -c "$f" -o "$O/$(basename "$f" .cu).o"
done
for f in kernels/cuda/*.c kernels/kernels.c tests/test_backends.c server/main.c; do
    cc $CF -c "$f" -o "$O/$(basename "$f" .c).o"
done
CUDA_OBJ="$O/kernels.o $O/emu_runtime.o"
for f in kernels/cuda/*.c kernels/cuda/*.cu; do
    b=$(basename "$f"); CUDA_OBJ="$CUDA_OBJ $O/${b%.*}.o"
done
g++ -o $O/test_backends $O/test_backends.o $CUDA_OBJ $LIBS
g++ -o $O/retune $O/main.o $CUDA_OBJ $LIBS

EMU_PROTECT=1 $O/test_backends
if [ "${1:-}" = "--engine" ]; then
    data=$O/tiny_train.jsonl
    python3 -c "
import json
for i in range(16):
    q, a = [('Who rules Zorbl?', 'Queen Mab the Third.'), ('What colour is the sky?', 'Green.')][i % 2]
    print(json.dumps({'messages': [{'role': 'user', 'content': q}, {'role': 'assistant', 'content': a}]}))
" >"$data"
    for dev in cuda cpu; do
        bin=$O/retune
        [ $dev = cpu ] && bin=build/retune
        rm -rf "$O/tiny_$dev"
        EMU_PROTECT=1 $bin train --device $dev --model tests/fixtures/tiny_chat --train "$data" \
            --method lora --out "$O/tiny_$dev" --batch-size 4 --epochs 2 --lr 1e-3 --lora-r 4 \
            --seed 7 2>/dev/null | tail -n 1 | sed "s/^/$dev: /"
    done
fi
