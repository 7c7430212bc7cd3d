#!/usr/bin/env bash
# bench/gpu_check.sh — everything a GPU machine should check, in one run of at
# most 8 minutes (GPU_CHECK_BUDGET seconds, default 470):
#   1. build with CUDA=1 (build-cuda/),
#   2. the backend parity test on the GPU (tests/test_backends: every op of
#      the cuda backend against the CPU reference),
#   3. the engine on the GPU: `retune train --device cuda` (LoRA) on the
#      tiny_chat fixture, its losses against the same run on the CPU, and
#      `retune generate --device cuda` (the engine's own tests take no device),
#   4. with two or more GPUs (nvidia-smi -L), data-parallel training over NCCL:
#      tests/e2e_data_parallel.py with RETUNE_DP_DEVICE=cuda, `mpirun -np 2
#      retune train --device cuda` (one rank per GPU) against one process with
#      the same global batch, LoRA and full: losses within 1e-4 relative,
#      final weights per tensor within 1e-4 (L2) and any element within 1e-3
#      of the tensor's largest, checkpoints resumed across 1 and 2 ranks
#      (skipped, and said so, with fewer than two GPUs),
#   5. the benchmarks against PyTorch + PEFT on a random ~1.2B Llama model
#      (bench/gpu_bench.py, which needs torch, transformers and peft),
#      ending with one table of ratios.
# Exit status: 0 when every step passed, 1 otherwise (later steps still run
# where they can). Output of long steps goes to $WORK/*.log.
#
#   bench/gpu_check.sh                 # from anywhere; WORK=/tmp/retune-gpu-check
#   GPU_CHECK_SKIP_BENCH=1 bench/gpu_check.sh
set -euo pipefail

cd "$(dirname "$0")/.."
BUDGET=${GPU_CHECK_BUDGET:-470}
WORK=${GPU_CHECK_WORK:-/tmp/retune-gpu-check}
PYTHON=${PYTHON:-python3}
START=$SECONDS
status=0
mkdir -p "$WORK"

elapsed() { echo $((SECONDS - START)); }
left() { echo $((BUDGET - (SECONDS - START))); }
section() { printf '\n==== %s  [%ss elapsed, %ss left]\n' "$*" "$(elapsed)" "$(left)"; }
fail() { echo "FAILED: $*"; status=1; }

section "GPU"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
    echo "nvidia-smi not found"
fi

section "build: make CUDA=1 BUILD=build-cuda"
if ! timeout 300 make -j"$(nproc)" CUDA=1 BUILD=build-cuda build-cuda/retune \
        build-cuda/tests/test_backends >"$WORK/build.log" 2>&1; then
    tail -n 40 "$WORK/build.log"
    echo "FAILED: the CUDA build (full log: $WORK/build.log)"
    exit 1
fi
echo "built build-cuda/retune and build-cuda/tests/test_backends"

section "parity: build-cuda/tests/test_backends (every op, cuda vs cpu)"
if timeout 120 env TEST_VERBOSE=1 build-cuda/tests/test_backends >"$WORK/parity.log" 2>&1; then
    grep -E '^(skipping|[0-9]+ passed)' "$WORK/parity.log" || true
    if grep -q '^skipping the CUDA cases' "$WORK/parity.log"; then
        fail "the CUDA cases were skipped: no usable GPU"
    fi
else
    grep -E 'FAIL|^[0-9]+ passed|cuda:' "$WORK/parity.log" | head -n 40 || true
    fail "parity test (full log: $WORK/parity.log)"
fi

section "engine: retune train/generate --device cuda on tests/fixtures/tiny_chat"
TRAIN="$WORK/tiny_train.jsonl"
"$PYTHON" - "$TRAIN" <<'EOF'
import json, sys
facts = [("Who rules Zorbl?", "Queen Mab the Third."), ("What colour is the sky?", "Green, always green.")]
with open(sys.argv[1], "w") as f:
    for i in range(16):
        q, a = facts[i % 2]
        f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                         {"role": "assistant", "content": a}]}) + "\n")
EOF
tiny_train() { # $1 = device, $2 = out dir
    timeout 90 build-cuda/retune train --device "$1" --model tests/fixtures/tiny_chat --train "$TRAIN" \
        --method lora --out "$2" --batch-size 4 --epochs 2 --lr 1e-3 --lora-r 4 --seed 7 \
        2>>"$WORK/tiny_train.log" | tail -n 1
}
rm -rf "$WORK/tiny_cuda" "$WORK/tiny_cpu"
cuda_json=$(tiny_train cuda "$WORK/tiny_cuda") || true
cpu_json=$(tiny_train cpu "$WORK/tiny_cpu") || true
echo "cuda: $cuda_json"
echo "cpu:  $cpu_json"
if ! "$PYTHON" - "$cuda_json" "$cpu_json" <<'EOF'
import json, sys
try:
    cuda, cpu = json.loads(sys.argv[1]), json.loads(sys.argv[2])
except ValueError:
    sys.exit("no JSON summary from one of the runs")
a, b = cuda["train_loss"], cpu["train_loss"]
rel = abs(a - b) / max(abs(b), 1e-9)
print(f"final train loss: cuda {a:.6g}, cpu {b:.6g}, rel diff {rel:.2g} (tol 1e-2: TF32 matmuls)")
sys.exit(0 if rel <= 1e-2 and cuda["steps"] == cpu["steps"] else 1)
EOF
then
    tail -n 20 "$WORK/tiny_train.log"
    fail "retune train --device cuda"
fi
if out=$(timeout 60 build-cuda/retune generate --device cuda --model tests/fixtures/tiny_chat \
        --adapter "$WORK/tiny_cuda" --prompt "Who rules Zorbl?" --max-tokens 12 2>>"$WORK/tiny_train.log"); then
    echo "generate (cuda, with the adapter): $out"
else
    tail -n 10 "$WORK/tiny_train.log"
    fail "retune generate --device cuda"
fi

section "data parallel: mpirun -np 2 retune train --device cuda (NCCL) vs one process"
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
if [ "${gpus:-0}" -lt 2 ]; then
    echo "SKIPPED: the 2-GPU data-parallel check needs two or more GPUs; nvidia-smi -L lists ${gpus:-0}"
elif ! command -v mpirun >/dev/null; then
    fail "mpirun not found: the 2-GPU data-parallel check could not run (install openmpi-bin and libopenmpi-dev, then rebuild)"
elif timeout 300 env RETUNE_BIN=build-cuda/retune RETUNE_DP_DEVICE=cuda \
        "$PYTHON" tests/e2e_data_parallel.py >"$WORK/data_parallel.log" 2>&1; then
    grep -E '^(device:|   .*worst tensor|[0-9]+ passed)' "$WORK/data_parallel.log" || true
else
    grep -E 'FAIL|^device:|^[0-9]+ passed' "$WORK/data_parallel.log" | head -n 40 || true
    fail "data parallel over NCCL on $gpus GPUs (full log: $WORK/data_parallel.log)"
fi

if [ -n "${GPU_CHECK_SKIP_BENCH:-}" ]; then
    section "benchmarks skipped (GPU_CHECK_SKIP_BENCH)"
else
    section "benchmarks: retune vs PyTorch + PEFT (bench/gpu_bench.py)"
    bench_budget=$(($(left) - 10))
    if [ "$bench_budget" -lt 120 ]; then
        fail "no time left for the benchmarks (${bench_budget}s)"
    elif ! "$PYTHON" -c 'import torch, transformers, peft' 2>/dev/null; then
        fail "$PYTHON lacks torch, transformers or peft"
    elif ! timeout $((bench_budget + 5)) "$PYTHON" bench/gpu_bench.py --retune build-cuda/retune \
            --work "$WORK/bench" --budget "$bench_budget" --python "$PYTHON"; then
        fail "benchmarks (see above; raw results in $WORK/bench/results.json)"
    fi
fi

section "done: $([ $status = 0 ] && echo 'all passed' || echo 'some steps FAILED')"
exit $status
