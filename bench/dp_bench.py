#!/usr/bin/python3
"""bench/dp_bench.py - data-parallel training: measured scaling on this machine
and the scaling to expect on multi-GPU machines (issue 16's benchmark).

Part 1, measured. The same `retune train` job, LoRA and full fine-tuning, in
three layouts with the same global batch (--batch-size x --grad-accum
micro-batches per optimizer step; grad-accum even, so the two ranks get the
same share):
  1p x 1t   one process, RETUNE_CPU_THREADS=1 (the baseline)
  2r x 1t   mpirun -np 2, one thread per rank (data parallel over MPI)
  1p x 2t   one process, RETUNE_CPU_THREADS=2 (plain threading, the
            alternative on a 2-core machine)
The model is a random one (normal(0, 0.02), bf16 on disk) of a released
config's exact shape, written once by bench/write_random_model.py into
--model-dir with tests/fixtures/tiny_chat's tokenizer (1163 ids, all below
the model's vocabulary; the vocabulary-sized logits are computed in full).
Every example is longer than --seq tokens and is cut to it, so every
micro-batch is the same size and neither rank waits for the other because
its share is longer.

Per run it reports: tokens/s over the steady steps (the interval between
consecutive rows of the --results CSV, which rank 0 appends after each
optimizer step, polled every 20 ms; the first step is a warm-up and is not
counted), the JSON summary's "seconds" (load excluded, final save included)
and "comm_seconds" (time inside the collective on rank 0: gradient staging,
MPI_Reduce + MPI_Bcast, and any wait for the slower rank), the gradient bytes
summed per optimizer step (trainable parameters x 4 bytes, fp32), and how
much of the CPUs other processes took during the run (/proc/stat minus the
run's own rusage). The machine may be shared: each configuration runs
--rounds times (order alternating, each run after up to --quiet-wait s of
waiting for idle CPUs), and the kept run is the least contended, then the
fastest; a kept run that was still contended is flagged.

Part 2, arithmetic only (no GPU): the all-reduce time per optimizer step of
LoRA (r=16, all seven linear modules) and full fine-tuning of Llama-3.1-8B and
Qwen2.5-0.5B on 2, 4 and 8 GPUs, from a ring all-reduce (each rank moves
2(N-1)/N x the gradient bytes) at NCCL's bus bandwidths (see BUSBW), against
the step's compute time estimated from FLOPs at a stated fraction of H100
peak; efficiency = compute / (compute + all-reduce), with no overlap (retune
sums the gradient after the step's last micro-batch).

MPI stays on this machine: shared memory between the ranks, loopback for
mpirun's own messages (as tests/e2e_data_parallel.py runs it).

    make -j2 BUILD=build-dpb build-dpb/retune
    /usr/bin/python3 bench/dp_bench.py --bin build-dpb/retune
    /usr/bin/python3 bench/dp_bench.py --expect-only     # part 2 alone
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time

# the machine probes and the table printer train_bench.py already has (bench/ is this script's folder)
from train_bench import children_cpu_s, cpu_model, cpu_ticks, table, wait_quiet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "tests", "fixtures", "real_configs")
TOKENIZER_DIR = os.path.join(ROOT, "tests", "fixtures", "tiny_chat")

# ---- part 2: the numbers the expectation is built from ----------------------

# NCCL all-reduce bus bandwidth (busbw as nccl-tests defines it: algbw x
# 2(N-1)/N, so that t = S x 2(N-1)/N / busbw), large messages, GB/s:
#  - H100 SXM, NVLink 4 through NVSwitch: 450 GB/s per direction on the wire;
#    NCCL reaches about 370 GB/s of bus bandwidth with the ring algorithm on
#    2 to 8 GPUs (protocol overhead ~20 %), as NCCL's maintainers state in
#    NVIDIA/nccl-tests issue 212 and NVIDIA/nccl issue 1442. NVLink SHARP
#    (NVLS, the default for all-reduce) lifts it to about 480 GB/s on 8 GPUs;
#    the ring figure is used here (the conservative one).
#  - PCIe Gen5 x16 without NVLink: 64 GB/s per direction on the wire; NCCL's
#    maintainers say PCIe systems are bounded by what CPU and memory deliver;
#    reported busbw on PCIe Gen5 GPUs is about 28-35 GB/s at 8 and 4 GPUs
#    (NVIDIA/nccl issue 1639). 40 GB/s is used for 2 and 4 GPUs, 28 for 8.
BUSBW = {
    "NVLink4 (H100 SXM)": {2: 370e9, 4: 370e9, 8: 370e9},
    "PCIe Gen5 x16": {2: 40e9, 4: 40e9, 8: 28e9},
}
H100_BF16_DENSE = 989e12  # H100 SXM dense BF16 tensor-core peak, FLOP/s (NVIDIA's datasheet)
MODELS = (("Llama-3.1-8B", "llama-3.1-8b.json"), ("Qwen2.5-0.5B", "qwen2.5-0.5b.json"))
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def shape(cfg):
    """(hidden, ffn, layers, q width, kv width, vocab, tied, qkv bias)."""
    d, h = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or d // h
    kv = cfg.get("num_key_value_heads", h) * hd
    bias = cfg.get("model_type") == "qwen2" or cfg.get("attention_bias", False)
    return (d, cfg["intermediate_size"], cfg["num_hidden_layers"], h * hd, kv,
            cfg["vocab_size"], cfg.get("tie_word_embeddings", False), bias)


def param_count(cfg):
    """All parameters, as transformers counts them."""
    d, f, L, q, kv, V, tied, bias = shape(cfg)
    layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d
    if bias:
        layer += q + 2 * kv
    return V * d * (1 if tied else 2) + L * layer + d


def lora_count(cfg, r):
    """LoRA parameters, rank r on all seven linear modules: r x (in + out) each."""
    d, f, L, q, kv, _, _, _ = shape(cfg)
    io = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
          "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
    return L * sum(r * (io[m][0] + io[m][1]) for m in LORA_MODULES)


def expectations(args):
    """(model, method, params, trainable, grad bytes, compute s, cells): one cell
    (fabric, N, ring s, reduce+broadcast s) per fabric and GPU count."""
    rows = []
    peak = H100_BF16_DENSE * args.mfu
    for name, file in MODELS:
        with open(os.path.join(CONFIGS, file)) as f:
            cfg = json.load(f)
        P = param_count(cfg)
        for method in ("lora", "full"):
            trainable = lora_count(cfg, 16) if method == "lora" else P
            # full: 6 P per token (forward 2, backward 4); LoRA: the frozen base
            # computes no weight gradients, 4 P per token (+ the adapters' own)
            per_token = 6 * P if method == "full" else 4 * P + 6 * trainable
            compute = per_token * args.gpu_tokens / peak
            grad = trainable * 4
            cells = []
            for fabric, bw in BUSBW.items():
                for n in (2, 4, 8):
                    ring = grad * 2 * (n - 1) / n / bw[n]
                    # reduce to rank 0, then broadcast: S / busbw each
                    # (nccl-tests' busbw factor is 1 for both)
                    cells.append((fabric, n, ring, 2 * grad / bw[n]))
            rows.append((name, method, P, trainable, grad, compute, cells))
    return rows


def print_expectations(args):
    rows = expectations(args)
    print("## Expected data-parallel efficiency on H100s (arithmetic, no GPU)\n")
    print(f"compute: {args.gpu_tokens} tokens per GPU per optimizer step, FLOPs = 6 P x tokens "
          f"(full) or 4 P x tokens + 6 x LoRA params x tokens (LoRA: no base weight gradients), "
          f"at {100 * args.mfu:.0f}% of H100 SXM's dense BF16 peak ({H100_BF16_DENSE / 1e12:.0f} "
          f"TFLOP/s) = {H100_BF16_DENSE * args.mfu / 1e12:.0f} TFLOP/s")
    print("gradient: fp32, trainable params x 4 bytes; NCCL bus bandwidth "
          + ", ".join(f"{k} {v[2] / 1e9:.0f}/{v[4] / 1e9:.0f}/{v[8] / 1e9:.0f} GB/s at 2/4/8 GPUs"
                      for k, v in BUSBW.items()))
    print("ring all-reduce: each rank moves 2(N-1)/N x the gradient bytes, t = S 2(N-1)/N / busbw")
    print("reduce + broadcast (how retune sums, for the same bits on every rank): t = 2 S / busbw")
    print("efficiency = compute / (compute + sum): the sum is not overlapped with backward\n")
    head = ["model", "method", "trainable", "grad/step", "compute s", "fabric",
            "ring ms 2/4/8", "ring eff. 2/4/8", "reduce+bcast ms 2/4/8", "r+b eff. 2/4/8"]
    out = []
    for name, method, P, trainable, grad, compute, cells in rows:
        for fab in BUSBW:
            c = [x for x in cells if x[0] == fab]
            ms = lambda k: " / ".join(f"{1e3 * x[k]:.1f}" for x in c)
            eff = lambda k: " / ".join(f"{100 * compute / (compute + x[k]):.1f}%" for x in c)
            out.append([name, method, f"{trainable:,}", human_bytes(grad), f"{compute:.3f}",
                        fab, ms(2), eff(2), ms(3), eff(3)])
    print(table(head, out))
    print()
    lines = []
    for name, method, P, trainable, grad, compute, cells in rows:
        per_token = compute / args.gpu_tokens
        for fab in BUSBW:
            t8 = [x[2] for x in cells if x[0] == fab and x[1] == 8][0]
            need = 9 * t8 / per_token  # compute >= 9 x all-reduce
            lines.append(f"  {name} {method}, {fab}: {need:,.0f}")
    print("tokens per GPU per optimizer step for 90% efficiency at 8 GPUs (ring all-reduce):")
    print("\n".join(lines))
    return rows


# ---- part 1: measured on this machine ----------------------------------------

def wait_for_exit_line(path):
    """Waits until path holds a line starting with 'exit' (another run of the
    machine's CI has finished), polling every 60 s."""
    while True:
        try:
            with open(path) as f:
                if any(line.startswith("exit") for line in f):
                    return
        except OSError:
            pass
        print(f"waiting for a line starting with 'exit' in {path} ...", flush=True)
        time.sleep(60)


def mpi_env(env):
    """Open MPI on this machine only (tests/e2e_data_parallel.py's settings)."""
    env = dict(env)
    env.update({
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_btl": "self,vader",            # shared memory and self: no network transport
        "OMPI_MCA_pml": "ob1",
        "OMPI_MCA_osc": "^ucx",
        "OMPI_MCA_oob_tcp_if_include": "lo",     # mpirun <-> ranks over loopback only
        "OMPI_MCA_oob_tcp_disable_ipv6_family": "1",
        "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
        "HWLOC_COMPONENTS": "-gl",
    })
    return env


def human_bytes(n):
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.2f} {unit}"
    return f"{n} B"


def ensure_model(args):
    """The random model (bench/write_random_model.py) plus tiny_chat's
    tokenizer, written once into args.model_dir."""
    d = args.model_dir
    if os.path.exists(os.path.join(d, "config.json")) and \
            os.path.exists(os.path.join(d, "tokenizer.json")):
        print(f"model: {d} (already written)")
        return
    cmd = [sys.executable, os.path.join(ROOT, "bench", "write_random_model.py"),
           "--config", args.config, "--out", d, "--dtype", "bf16"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"dp_bench.py: {' '.join(cmd)} exited {p.returncode}")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(TOKENIZER_DIR, name), os.path.join(d, name))
    print(f"model: wrote {d} in {time.monotonic() - t0:.0f} s")


WORDS = ("the sky on Zorbl is green and the queen of moths rules seven jumps past Mars "
         "blue cheese comet council always really second left after her").split()


def write_dataset(path, n, words):
    """n chat examples, each an assistant answer of `words` words (longer than
    --seq tokens, so every example is cut to the same length)."""
    with open(path, "w") as f:
        for i in range(n):
            text = " ".join(WORDS[(i * 7 + k * 3 + k * k) % len(WORDS)] for k in range(words))
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"Tell me about Zorbl, part {i}."},
                {"role": "assistant", "content": text}]}) + "\n")


class CsvWatch(threading.Thread):
    """Polls the --results CSV and notes the time each new row appears."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.rows, self.stop = path, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.poll()
            time.sleep(0.02)
        self.poll()

    def poll(self):
        try:
            with open(self.path) as f:
                lines = [l for l in f.read().splitlines()[1:] if l.count(",") >= 6]
        except OSError:
            return
        now = time.monotonic()
        for line in lines[len(self.rows):]:
            self.rows.append((now, int(line.split(",")[-1])))


def run_one(args, method, layout, data, work):
    """One `retune train` run; returns its summary plus the steady tokens/s."""
    out = os.path.join(work, f"out-{method}-{layout}")
    csv = os.path.join(work, f"steps-{method}-{layout}.csv")
    for p in (out, csv):
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else \
            (os.path.exists(p) and os.remove(p))
    train = [args.bin, "train", "--model", args.model_dir, "--train", data, "--method", method,
             "--out", out, "--results", csv, "--batch-size", str(args.batch_size),
             "--grad-accum", str(args.grad_accum), "--max-seq-len", str(args.seq),
             "--epochs", "1", "--lr", "1e-4", "--scheduler", "constant",
             "--warmup-ratio", "0", "--seed", "1"]
    if method == "lora":
        train += ["--lora-r", "16", "--lora-alpha", "32", "--target-modules", "all-linear"]
    env = dict(os.environ)
    env["OPENBLAS_NUM_THREADS"] = "1"
    if layout == "2r x 1t":
        env["RETUNE_CPU_THREADS"] = "1"
        cmd = ["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none",
               "--mca", "btl", "self,vader", "--mca", "pml", "ob1",
               "--mca", "oob_tcp_if_include", "lo", *train]
        env = mpi_env(env)
    else:
        env["RETUNE_CPU_THREADS"] = "1" if layout == "1p x 1t" else "2"
        cmd = train
    if args.quiet_wait > 0:
        wait_quiet(args.quiet_wait)
    watch = CsvWatch(csv)
    watch.start()
    b0, _ = cpu_ticks()
    c0 = children_cpu_s()
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=args.timeout)
    wall = time.monotonic() - t0
    watch.stop.set()
    watch.join()
    b1, _ = cpu_ticks()
    foreign = ((b1 - b0) / os.sysconf("SC_CLK_TCK") - (children_cpu_s() - c0)) / \
        max(wall * os.cpu_count(), 1e-9)
    shutil.rmtree(out, ignore_errors=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"dp_bench.py: {' '.join(cmd)} exited {p.returncode}")
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if len(lines) != 1:
        raise SystemExit(f"dp_bench.py: expected one JSON summary line, got {len(lines)}")
    r = json.loads(lines[0])
    rows = watch.rows
    if len(rows) != r["steps"] or len(rows) < 2:
        raise SystemExit(f"dp_bench.py: saw {len(rows)} CSV rows for {r['steps']} steps")
    steps = [(rows[k][0] - rows[k - 1][0], rows[k][1] - rows[k - 1][1])
             for k in range(1, len(rows))]
    r["step_s"] = [round(s, 3) for s, _ in steps]
    r["step_s_median"] = statistics.median(s for s, _ in steps)
    r["tokens_per_step"] = steps[0][1]
    r["steady_tokens_per_s"] = r["tokens_per_step"] / r["step_s_median"]
    r["wall_s"] = wall
    r["foreign_cpu"] = min(max(foreign, 0.0), 1.0)
    r["method"], r["layout"] = method, layout
    print(f"  {method:4} {layout}: {r['steady_tokens_per_s']:7.1f} tok/s steady "
          f"(steps {', '.join(f'{s:.2f}' for s in r['step_s'])} s), summary "
          f"{r['tokens_per_second']:.1f} tok/s, comm {r['comm_seconds']:.2f} of "
          f"{r['seconds']:.2f} s, wall {wall:.0f} s, others took "
          f"{100 * r['foreign_cpu']:.0f}% of the CPUs", flush=True)
    return r


def print_measured(args, runs):
    rows = []
    for method in args.methods:
        base = runs[(method, "1p x 1t")]
        for layout in LAYOUTS:
            r = runs[(method, layout)]
            steps = r["steps"]
            comm_step = r["comm_seconds"] / steps
            grad = r["trainable_params"] * 4
            rate = f"{grad / comm_step / 1e9:.2f}" if layout == "2r x 1t" and comm_step > 0 else "-"
            flag = " *" if r["foreign_cpu"] > args.max_foreign else ""
            rows.append((method, layout + flag, f"{r['steady_tokens_per_s']:.1f}",
                         f"{r['steady_tokens_per_s'] / base['steady_tokens_per_s']:.2f}x",
                         f"{r['step_s_median']:.2f}", f"{r['tokens_per_second']:.1f}",
                         f"{r['comm_seconds']:.3f} / {r['seconds']:.2f} = "
                         f"{100 * r['comm_seconds'] / r['seconds']:.1f}%",
                         f"{1e3 * comm_step:.1f}", f"{r['trainable_params']:,}",
                         human_bytes(grad), rate))
    print(table(("method", "layout", "tok/s (steady)", "vs 1p x 1t", "step s (median)",
                 "tok/s (summary)", "comm_seconds / seconds", "comm ms/step",
                 "trainable params", "grad bytes/step", "grad GB/s in comm"), rows))
    busy = [f"{k[0]} {k[1]}" for k, v in runs.items() if v["foreign_cpu"] > args.max_foreign]
    if busy:
        print(f"\n* other processes took more than {100 * args.max_foreign:.0f}% of the CPUs "
              f"during: {', '.join(busy)}; those ratios are noisy")


LAYOUTS = ("1p x 1t", "2r x 1t", "1p x 2t")


def better(r, than, max_foreign):
    """True when run r should be kept over run `than`: one during which other
    processes took less than max_foreign of the CPUs beats a contended one,
    then the higher steady tokens/s wins."""
    key = lambda x: (x["foreign_cpu"] > max_foreign, -x["steady_tokens_per_s"])
    return than is None or key(r) < key(than)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "retune"))
    ap.add_argument("--config", default=os.path.join(CONFIGS, "smollm2-135m.json"),
                    help="the model shape (a Hugging Face config.json; default SmolLM2-135M)")
    ap.add_argument("--model-dir", help="where the random model is written once "
                    "(default /dev/shm/retune-dpb-<config>-bf16)")
    ap.add_argument("--methods", default="lora,full")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--grad-accum", type=int, default=4, help="even (default 4)")
    ap.add_argument("--seq", type=int, default=256, help="tokens per example (default 256)")
    ap.add_argument("--steps", type=int, default=3,
                    help="optimizer steps per run, the first one not timed (default 3)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="runs of each configuration, order alternating; the least contended, "
                         "then fastest, is kept (default 2)")
    ap.add_argument("--quiet-wait", type=float, default=10,
                    help="before each run, wait up to this many s for idle CPUs (default 10)")
    ap.add_argument("--max-foreign", type=float, default=0.10,
                    help="flag a run during which others took more than this share of the CPUs")
    ap.add_argument("--wait-for-exit-in", metavar="FILE",
                    help="first wait until FILE has a line starting with 'exit' (a CI run)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per run")
    ap.add_argument("--gpu-tokens", type=int, default=16384,
                    help="part 2: tokens per GPU per optimizer step (default 16384, e.g. 8 x 2048)")
    ap.add_argument("--mfu", type=float, default=0.40,
                    help="part 2: fraction of H100 peak the step's compute reaches (default 0.40)")
    ap.add_argument("--expect-only", action="store_true", help="part 2 only")
    ap.add_argument("--json", help="also write every run's numbers here")
    args = ap.parse_args()
    args.methods = [m for m in args.methods.split(",") if m]
    if args.expect_only:
        print_expectations(args)
        return
    if args.grad_accum % 2:
        raise SystemExit("dp_bench.py: --grad-accum must be even (2 ranks share it)")
    if not os.access(args.bin, os.X_OK):
        raise SystemExit(f"dp_bench.py: {args.bin} not found; run `make -j2 BUILD=... ` first")
    if not shutil.which("mpirun"):
        raise SystemExit("dp_bench.py: mpirun not found (make deps installs Open MPI)")
    stem = os.path.splitext(os.path.basename(args.config))[0]
    args.model_dir = args.model_dir or f"/dev/shm/retune-dpb-{stem}-bf16"
    if args.wait_for_exit_in:
        wait_for_exit_line(args.wait_for_exit_in)

    started = time.monotonic()
    with open(args.config) as f:
        cfg = json.load(f)
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, {platform.platform()}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"retune: {args.bin}; mpirun: {shutil.which('mpirun')}")
    print(f"model: {stem} shape ({param_count(cfg):,} parameters), random, bf16 on disk, "
          f"loaded with --dtype auto; tokenizer of tests/fixtures/tiny_chat")
    print(f"job: --batch-size {args.batch_size} --grad-accum {args.grad_accum} --max-seq-len "
          f"{args.seq} ({args.batch_size * args.grad_accum * args.seq} tokens per optimizer step), "
          f"{args.steps} steps (first untimed), {args.rounds} rounds, AdamW lr 1e-4 constant; LoRA r 16 alpha 32 "
          f"all-linear")
    ensure_model(args)
    work = f"/dev/shm/retune-dpb-work-{os.getpid()}"
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "train.jsonl")
    write_dataset(data, args.steps * args.batch_size * args.grad_accum, 4 * args.seq)
    runs = {}
    order = [(m, l) for m in args.methods for l in LAYOUTS]
    try:
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}:", flush=True)
            for key in (order if rnd % 2 == 0 else order[::-1]):
                r = run_one(args, key[0], key[1], data, work)
                if better(r, runs.get(key), args.max_foreign):
                    runs[key] = r
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("## Measured on this machine\n")
    print_measured(args, runs)
    print()
    print_expectations(args)
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{k[0]} {k[1]}": v for k, v in runs.items()}, f, indent=1)


if __name__ == "__main__":
    main()
