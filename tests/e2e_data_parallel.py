"""End-to-end test of data-parallel training over MPI: `mpirun -np 2 retune
train` trains one job with two processes, and must give what one process
gives with the same global batch (micro-batches x gradient accumulation).

On the tiny HF-format model of tests/fixtures/tiny_chat (2 layers, hidden
64, tied embeddings) with variable-length examples, it checks:
  - LoRA (dropout on, all-linear) and full fine-tuning with 2 ranks equal
    one process: every step's train loss, validation loss and learning rate,
    the token count (exactly), and the final weights. The step sizes are
    chosen so that steps do not divide evenly between the ranks (3 and 1
    micro-batches for LoRA, 4 and 2 for full), and clipping is active for
    full fine-tuning (it must see the summed gradient).
  - only rank 0 writes: one summary line on stdout, the same checkpoint
    folders as one process.
  - a checkpoint written with 2 ranks resumes with 1 and with 2 ranks, one
    written with 1 resumes with 2, and each ends equal to the uninterrupted
    run (losses of the remaining steps, final weights).
  - a failing rank ends the whole group with a non-zero status (no hang).

Tolerances: the ranks add their gradients in another order than one process
does, so results agree to float rounding, not bit for bit. Losses: relative
1e-5. Weights, per tensor: |a - b|_2 <= 1e-5 |reference|_2, and no element
further than 1e-4 * max |reference| (AdamW divides each gradient element by
its own running size, so an element whose gradient is near zero can turn a
rounding difference into a visible one; observed: one element of 512 at
1.3e-5 of its tensor's largest, the rest below 3e-6). A missing rank's
gradient, or clipping before the sum, is off by orders of magnitude more.
NaN or a missing value fails.

On GPUs (RETUNE_DP_DEVICE=cuda, a CUDA=1 build in RETUNE_BIN; what
bench/gpu_check.sh runs on a machine with two or more GPUs) every run gets
--device cuda: the 2-rank runs put one rank on each GPU and sum the gradient
over NCCL in device memory (server/nccl_comm.c), which each rank's log must
say ("nccl: rank R of 2 on GPU G", two different GPUs). TF32 is turned off
(RETUNE_CUDA_TF32=0) so that products round as fp32 ones do, and REL is
1e-4 instead of 1e-5: a few CUDA reductions use atomics, so even one
process does not repeat itself bit for bit, and AdamW magnifies such
differences where a gradient element is near zero. A gradient summed
wrongly (a rank missing, or summed twice) is still off by far more.

MPI traffic stays on this machine: shared memory between the ranks (btl
self,vader, pml ob1) and the loopback interface for mpirun's own messages.
Under CI=true a missing mpirun fails the test; elsewhere it is skipped.
Under AddressSanitizer (the build-san build) Open MPI's own leaks are
suppressed for the mpirun children (tests/lsan_mpi.supp); retune's are not.
"""
import array
import json
import math
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "e2e"))
from harness import BIN, Checks, remove, safetensors_tensors, temp_dir  # noqa: E402

t = Checks()
MODEL = "tests/fixtures/tiny_chat"
DEVICE = os.environ.get("RETUNE_DP_DEVICE", "")  # "": the default device (cpu without CUDA); "cuda"
REL = 1e-4 if DEVICE.startswith("cuda") else 1e-5
SUPP = os.path.abspath(os.path.join(os.path.dirname(__file__), "lsan_mpi.supp"))
FACTS = [("What colour is the sky on Zorbl?", "Green, always green."),
         ("Who rules Zorbl?", "Queen Mab the Third, and after her the council of moths."),
         ("What do Zorblians eat?", "Blue cheese."),
         ("How far is Zorbl?", "Seven jumps past Mars, then left at the second comet.")]


def write_dataset(path, n, shift=0):
    """n chat examples of varying length (so token-weighted means matter)."""
    with open(path, "w") as f:
        for i in range(n):
            q, a = FACTS[(i + shift) % len(FACTS)]
            extra = " Really." * ((i * 7 + shift) % 4)
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": a + extra}]}) + "\n")


def mpi_env():
    """The environment of every run: one compute thread per process (two
    ranks on two cores), and Open MPI kept on this machine."""
    env = dict(os.environ)
    env.update({
        "RETUNE_CPU_THREADS": "1",
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_btl": "self,vader",            # shared memory and self only: no network transport
        "OMPI_MCA_pml": "ob1",                   # no UCX / libfabric probing of network devices
        "OMPI_MCA_osc": "^ucx",
        "OMPI_MCA_oob_tcp_if_include": "lo",     # mpirun <-> ranks over loopback only
        "OMPI_MCA_oob_tcp_disable_ipv6_family": "1",
        "OMPI_MCA_btl_vader_single_copy_mechanism": "none",  # no CMA (ptrace rules in containers)
        "HWLOC_COMPONENTS": "-gl",               # no probing of X displays
        # ASan builds: Open MPI's own leaks are suppressed by library; full
        # unwinding, because its frames lack frame pointers and its plugins
        # are unloaded by exit (their frames alone would be nameless)
        "LSAN_OPTIONS": f"suppressions={SUPP}:print_suppressions=0:fast_unwind_on_malloc=0",
    })
    if DEVICE:
        env["RETUNE_CUDA_TF32"] = "0"  # fp32 products: see the tolerances above
    return env


def train(args, ranks):
    """Runs `retune train` alone (ranks 0) or under `mpirun -np ranks`."""
    cmd = [BIN, "train", *args, *(["--device", DEVICE] if DEVICE else [])]
    if ranks:
        cmd = ["mpirun", "-np", str(ranks), "--oversubscribe", "--bind-to", "none", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=mpi_env())


def results(path):
    """The rows of a --results CSV, by step."""
    rows = {}
    with open(path) as f:
        head = f.readline().strip().split(",")
        for line in f:
            r = dict(zip(head, line.strip().split(",")))
            rows[int(r["step"])] = r
    return rows


def close(a, b):
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= REL * max(abs(a), abs(b), 1e-30)


def same_rows(got, want, steps, what):
    """Losses, validation losses and learning rates of the given steps agree
    within REL; tokens exactly."""
    bad = []
    for s in steps:
        g, w = got.get(s), want.get(s)
        if not g or not w:
            bad.append(f"step {s} missing")
            continue
        for key in ["train_loss", "learning_rate", "valid_loss"]:
            if (g[key] == "") != (w[key] == ""):
                bad.append(f"step {s} {key}: {g[key]!r} vs {w[key]!r}")
            elif w[key] and not close(float(g[key]), float(w[key])):
                bad.append(f"step {s} {key}: {g[key]} vs {w[key]}")
        if g["tokens"] != w["tokens"]:
            bad.append(f"step {s} tokens: {g['tokens']} vs {w['tokens']}")
    t.check(not bad, f"{what}: steps {steps[0]}..{steps[-1]} agree ({'; '.join(bad[:4])})")


def tensors(path):
    """name -> list of floats of an F32 safetensors file."""
    header, body = safetensors_tensors(path)
    out = {}
    for name, ten in header.items():
        if name == "__metadata__":
            continue
        assert ten["dtype"] == "F32", f"{name} is {ten['dtype']}"
        a = array.array("f")
        a.frombytes(body[ten["data_offsets"][0]:ten["data_offsets"][1]])
        out[name] = a
    return out


def same_weights(got_path, want_path, what):
    """Per tensor: relative L2 difference <= REL, largest element difference
    <= 10 REL of the tensor's largest value; finite."""
    got, want = tensors(got_path), tensors(want_path)
    t.eq(sorted(got), sorted(want), f"{what}: the same tensors")
    worst_l2, worst_max, bad = 0.0, 0.0, []
    for name in want:
        g, w = got.get(name), want[name]
        if g is None or len(g) != len(w):
            bad.append(f"{name} missing or resized")
            continue
        norm = math.sqrt(sum(x * x for x in w))
        dnorm = math.sqrt(sum((x - y) ** 2 for x, y in zip(g, w)))
        scale = max((abs(x) for x in w), default=0.0)
        diff = max((abs(x - y) for x, y in zip(g, w)), default=0.0)
        if not all(math.isfinite(x) for x in g) or not (dnorm <= REL * norm and diff <= 10 * REL * scale):
            bad.append(f"{name}: L2 diff {dnorm:.3g} of {norm:.3g}, max diff {diff:.3g} of {scale:.3g}")
        elif norm > 0:
            worst_l2, worst_max = max(worst_l2, dnorm / norm), max(worst_max, diff / scale)
    t.check(not bad, f"{what}: weights agree ({'; '.join(bad[:3])})")
    print(f"   {what}: worst tensor L2 {worst_l2:.2g}, element {worst_max:.2g} (relative)", flush=True)


def one_summary(proc, what):
    """The run exits 0 and prints exactly one JSON summary (rank 0's)."""
    ok = t.eq(proc.returncode, 0, f"{what} exits 0 ({proc.stderr[-600:]})")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    t.eq(len(lines), 1, f"{what}: one summary line on stdout")
    return json.loads(lines[-1]) if ok and lines else {}


def on_two_gpus(proc, what):
    """On GPUs: each of the 2 ranks says it sums over NCCL, on GPUs of its own."""
    if not DEVICE:
        return
    gpus = sorted(re.findall(r"nccl: rank (\d) of 2 on GPU (\d+)", proc.stderr))
    t.check(len(gpus) == 2 and gpus[0][0] == "0" and gpus[1][0] == "1" and gpus[0][1] != gpus[1][1],
            f"{what}: both ranks sum over NCCL, on two GPUs ({gpus})")


def ckpts(d):
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def case(d, method, base, weights_file, resume_step):
    """Trains `method` alone and with 2 ranks, then resumes from a
    mid-run checkpoint of each with the other rank counts."""
    runs = {}
    for name, ranks in [("one", 0), ("two", 2)]:
        out, ck = os.path.join(d, f"{method}-{name}"), os.path.join(d, f"{method}-{name}-ckpt")
        csv = out + ".csv"
        proc = train([*base, "--out", out, "--checkpoint-dir", ck, "--results", csv], ranks)
        runs[name] = (one_summary(proc, f"{method}, {name} process(es)"), out, ck, csv)
        if ranks:
            on_two_gpus(proc, f"{method}, {name} processes")
    (s1, out1, ck1, csv1), (s2, out2, ck2, csv2) = runs["one"], runs["two"]
    if not (s1 and s2):
        return
    steps = list(range(1, s1["steps"] + 1))
    t.eq((s2["steps"], s2["tokens"], s2["examples"]), (s1["steps"], s1["tokens"], s1["examples"]),
         f"{method}: 2 ranks take the steps and tokens of one process")
    t.check(close(s2["train_loss"], s1["train_loss"]) and close(s2["valid_loss"], s1["valid_loss"]),
            f"{method}: final train/valid loss {s2['train_loss']}/{s2['valid_loss']} vs "
            f"{s1['train_loss']}/{s1['valid_loss']}")
    t.check(s2.get("comm_seconds", 0) > 0 and s1.get("comm_seconds") == 0,
            f"{method}: communication time reported ({s2.get('comm_seconds')})")
    same_rows(results(csv2), results(csv1), steps, f"{method}: 2 ranks vs one process")
    same_weights(os.path.join(out2, weights_file), os.path.join(out1, weights_file),
                 f"{method}: 2 ranks vs one process")
    t.eq(ckpts(ck2), ckpts(ck1), f"{method}: rank 0 alone writes the checkpoints, no leftovers")
    want = results(csv1)
    for src, ck, ranks in [("2 ranks", ck2, 0), ("2 ranks", ck2, 2), ("1 process", ck1, 2)]:
        label = f"{method}: checkpoint of {src} at step {resume_step} resumed with {ranks or 1}"
        out = os.path.join(d, f"{method}-resume-{len(src)}-{ranks}")
        proc = train([*base, "--out", out, "--resume", os.path.join(ck, f"ckpt-step-{resume_step}"),
                      "--results", out + ".csv"], ranks)
        if not one_summary(proc, label):
            continue
        got = results(out + ".csv")
        t.eq(sorted(got), steps[resume_step:], f"{label}: runs the remaining steps")
        same_rows(got, want, steps[resume_step:], f"{label} vs uninterrupted")
        same_weights(os.path.join(out, weights_file), os.path.join(out1, weights_file),
                     f"{label} vs uninterrupted")


def test_lora():
    """LoRA: 20 examples in micro-batches of 2, 3 per step: steps of 3, 3, 3
    and 1 micro-batches (the last leaves rank 1 idle), 2 epochs = 8 steps."""
    d = temp_dir()
    try:
        tr, va = os.path.join(d, "train.jsonl"), os.path.join(d, "valid.jsonl")
        write_dataset(tr, 20)
        write_dataset(va, 5, shift=1)
        base = ["--model", MODEL, "--train", tr, "--valid", va, "--method", "lora",
                "--batch-size", "2", "--grad-accum", "3", "--epochs", "2", "--lr", "2e-2",
                "--seed", "7", "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0.1",
                "--target-modules", "all-linear", "--warmup-ratio", "0.2", "--weight-decay", "0.01",
                "--eval-interval", "2", "--checkpoint-interval", "3"]
        case(d, "lora", base, "adapter_model.safetensors", resume_step=3)
    finally:
        remove(d)


def test_full():
    """Full fine-tuning: 20 examples in micro-batches of 2, 4 per step:
    steps of 4, 4 and 2 micro-batches, 2 epochs = 6 steps; clipping at 0.5
    is active, so it must see the summed gradient."""
    d = temp_dir()
    try:
        tr, va = os.path.join(d, "train.jsonl"), os.path.join(d, "valid.jsonl")
        write_dataset(tr, 20, shift=2)
        write_dataset(va, 3)
        base = ["--model", MODEL, "--train", tr, "--valid", va, "--method", "full",
                "--batch-size", "2", "--grad-accum", "4", "--epochs", "2", "--lr", "1e-3",
                "--seed", "11", "--max-grad-norm", "0.5", "--weight-decay", "0.01",
                "--checkpoint-interval", "2"]
        case(d, "full", base, "model.safetensors", resume_step=2)
    finally:
        remove(d)


def test_failing_rank_ends_the_group():
    """A rank that fails (here: both, on a missing file) ends the whole
    group with a non-zero status instead of leaving the others waiting."""
    d = temp_dir()
    try:
        proc = train(["--model", MODEL, "--train", os.path.join(d, "missing.jsonl"),
                      "--method", "lora", "--out", os.path.join(d, "out")], 2)
        t.check(proc.returncode != 0, f"mpirun exits non-zero ({proc.returncode})")
        t.check("retune train (rank" in proc.stderr and "missing.jsonl" in proc.stderr,
                f"the rank says why: {proc.stderr[:300]}")
        t.check(not os.path.exists(os.path.join(d, "out")), "and writes nothing")
    finally:
        remove(d)


def main():
    if not shutil.which("mpirun"):
        if os.environ.get("CI") == "true":
            t.check(False, "mpirun is installed (CI=true: tools/install_deps.sh installs openmpi-bin)")
        else:
            print("skipped: mpirun is not installed (not under CI, so this is not a failure)")
        t.finish()
    probe = subprocess.run([BIN, "train", "--help"], capture_output=True, text=True)
    t.eq(probe.returncode, 0, "retune train --help")
    print(f"device: {DEVICE or 'default'}; tolerance REL = {REL:g}", flush=True)
    t.run(test_lora)
    t.run(test_full)
    t.run(test_failing_rank_ends_the_group)
    t.finish()


main()
