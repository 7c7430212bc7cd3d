#!/usr/bin/python3
"""bench/train_bench.py - retune's training speed and memory next to eager PyTorch.

Runs, in one invocation and on the same machine with the same number of
threads, four child processes per round - build/bench/train_bench (retune)
and bench/torch_reference.py (PyTorch), each for LoRA and for full
fine-tuning - so that peak RSS is per method and per implementation. Every
child builds the same model (hidden 512, 8 layers, 8 heads, 8 KV heads, FFN
1376, vocab 8192, tied embeddings), trains on random 4 x 256 token batches
(every target counted) with AdamW and clip 1.0, and prints one JSON line.
The machine may be shared: before each child the script waits (up to
--quiet-wait s) for idle CPUs, measures how much CPU time other processes
took during the child (/proc/stat minus the child's own rusage), and keeps,
per configuration, the fastest run among the uncontended ones (order
alternating over --rounds, plus up to --retries reruns of a configuration
that has no uncontended run). A kept run that was still contended is
flagged in the output.

The targets are reported, not asserted (exit status 0 unless a child fails):
  LoRA tokens/s >= 3x PyTorch's; full tokens/s >= 2.5x PyTorch's;
  retune LoRA step <= 0.7x a retune full step;
  retune LoRA peak RSS <= 0.5x PyTorch's LoRA peak RSS;
  retune achieved FLOP/s >= 50% of the sgemm rate measured in the same run.

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE (set on this machine for old bugs)
slow OpenBLAS down; they are removed from the children's environment (both
retune and torch) unless --keep-openblas-env is given, and the output says so.
Every child also gets OMP_WAIT_POLICY=PASSIVE (see --omp-wait-policy): torch
runs elementwise ops on OpenMP threads and matmuls on OpenBLAS's pthreads,
and with OpenMP's default spin-wait the two pools fight over the two cores.

Real shapes (issue 10's first benchmark): --config FILE (a Hugging Face
config.json, e.g. tests/fixtures/real_configs/smollm2-135m.json) runs LoRA only,
at that model's exact shape and full depth, B=4 T=512, LoRA r=16 alpha=32 on
all seven modules (--lora-r, --lora-alpha, --targets, --batch, --seq change
that), 1 warm-up + 2 timed steps and 1 round unless told otherwise:
  - a random model of that shape (normal(0, 0.02)) is written once, in --dtype
    (default bf16), by retune's own model_save (train_bench --write-model)
    into --model-dir (default /dev/shm/retune-bench-<config>-<dtype>); the
    writing is not timed and is skipped when the directory already holds one;
  - retune's child loads it through model_load_as(..., MODEL_DTYPE_AUTO, ...):
    a bf16 checkpoint stays bf16 in memory, its matrices mapped from the file;
  - torch's child builds the same shape with the base in --torch-dtypes
    (default bf16: the base as Hugging Face + PEFT run it with
    torch_dtype=bfloat16, fp32 LoRA, no autocast; see torch_reference.py;
    "bf16,f32" adds an fp32-base reference run).
The targets: retune tokens/s >= 2x torch's, retune peak RSS <= 0.5x torch's,
against each torch dtype run (the first is the headline). A torch child that
runs past --timeout is stopped; what it reported on stderr by then (whole
steps or a forward pass, peak RSS so far) is kept and marked as a bound.

    make -j2 && /usr/bin/python3 bench/train_bench.py
    /usr/bin/python3 bench/train_bench.py --config tests/fixtures/real_configs/smollm2-135m.json --dtype bf16
"""
import argparse
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOW_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def child_env(args):
    """The children's environment and the OpenBLAS variables removed from it."""
    env = dict(os.environ)
    removed = {}
    if not args.keep_openblas_env:
        for name in SLOW_ENV:
            if name in env:
                removed[name] = env.pop(name)
    env["OPENBLAS_NUM_THREADS"] = str(args.threads)
    env["OMP_NUM_THREADS"] = str(args.threads)
    if args.omp_wait_policy == "unset":
        env.pop("OMP_WAIT_POLICY", None)
    else:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    return env, removed


def cpu_ticks():
    """(busy, total) jiffies of all CPUs from /proc/stat (every process on the
    machine, not only those this PID namespace can see)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def wait_quiet(max_wait, threshold=0.10):
    """Waits (1 s samples, at most max_wait s) for the CPUs to be idle; returns
    the busy fraction of the last sample."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0 = cpu_ticks()
        time.sleep(1.0)
        b1, t1 = cpu_ticks()
        busy = (b1 - b0) / max(t1 - t0, 1)
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def children_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_child(cmd, env, timeout):
    """Runs one benchmark process; returns its last JSON line as a dict, with
    wall_s and foreign_cpu: the share of the machine's CPU time during the run
    that other processes (other users of this machine) took."""
    b0, j0 = cpu_ticks()
    c0 = children_cpu_s()
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    b1, j1 = cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    foreign = ((b1 - b0) / hz - (children_cpu_s() - c0)) / max(wall * os.cpu_count(), 1e-9)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"train_bench.py: {' '.join(cmd)} exited {p.returncode}")
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise SystemExit(f"train_bench.py: no JSON line from {' '.join(cmd)}")
    r = json.loads(lines[-1])
    r["wall_s"] = round(wall, 1)
    r["foreign_cpu"] = round(min(max(foreign, 0.0), 1.0), 3)
    return r


def commands(args):
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    out = {}
    for m in ("lora", "full"):
        out[("retune", m)] = [args.bin, "--method", m, "--profile"] + common
        out[("torch", m)] = [args.python, os.path.join(ROOT, "bench", "torch_reference.py"),
                             "--method", m, "--threads", str(args.threads)] + common
    return out


def better(r, than, max_foreign):
    """True when run r should be kept over run `than`: an uncontended run
    (other processes took < max_foreign of the CPUs) beats a contended one,
    then the lower median step time wins."""
    key = lambda x: (x["foreign_cpu"] > max_foreign, x["step_s_median"])
    return than is None or key(r) < key(than)


def run_all(args, env):
    """Every configuration args.rounds times (alternating the order), then up
    to args.retries more runs of each configuration that has no uncontended
    run yet; keeps each configuration's best run (see better)."""
    cmds = commands(args)
    order = list(cmds)
    best, every = {}, []

    def run(key, label):
        if args.quiet_wait > 0:
            wait_quiet(args.quiet_wait)
        r = run_child(cmds[key], env, args.timeout)
        r["round"] = label
        every.append(r)
        print(f"  {label:>8}: {key[0]:6} {key[1]:4}  {r['tokens_per_s']:8.1f} tok/s  "
              f"step {r['step_s_median']:.3f} s  peak RSS {r['peak_rss_mb']:.0f} MiB  "
              f"({r['wall_s']} s, other processes took {100 * r['foreign_cpu']:.0f}% "
              f"of the CPUs)", flush=True)
        if better(r, best.get(key), args.max_foreign):
            best[key] = r

    for rnd in range(args.rounds):
        for key in (order if rnd % 2 == 0 else order[::-1]):
            run(key, f"round {rnd + 1}")
    for i in range(args.retries):
        for key in order:
            if best[key]["foreign_cpu"] > args.max_foreign:
                run(key, f"retry {i + 1}")
    return best, every


def verdict(ok, value, target, higher_is_better):
    if ok:
        return "PASS"
    short = (target - value) / target if higher_is_better else (value - target) / target
    return f"MISS by {100 * short:.0f}%"


def targets(best):
    """(name, retune, torch, value, target text, result) rows."""
    rl, rf = best[("retune", "lora")], best[("retune", "full")]
    tl, tf = best[("torch", "lora")], best[("torch", "full")]
    rows = []
    v = rl["tokens_per_s"] / tl["tokens_per_s"]
    rows.append(("LoRA tokens/s", f"{rl['tokens_per_s']:.0f}", f"{tl['tokens_per_s']:.0f}",
                 f"{v:.2f}x", ">= 3.0x", verdict(v >= 3.0, v, 3.0, True)))
    v = rf["tokens_per_s"] / tf["tokens_per_s"]
    rows.append(("full tokens/s", f"{rf['tokens_per_s']:.0f}", f"{tf['tokens_per_s']:.0f}",
                 f"{v:.2f}x", ">= 2.5x", verdict(v >= 2.5, v, 2.5, True)))
    v = rl["step_s_median"] / rf["step_s_median"]
    rows.append(("retune LoRA step / full step", f"{rl['step_s_median']:.3f} s",
                 f"{rf['step_s_median']:.3f} s", f"{v:.2f}x", "<= 0.70x",
                 verdict(v <= 0.7, v, 0.7, False)))
    v = rl["peak_rss_mb"] / tl["peak_rss_mb"]
    rows.append(("LoRA peak RSS (MiB)", f"{rl['peak_rss_mb']:.0f}", f"{tl['peak_rss_mb']:.0f}",
                 f"{v:.2f}x", "<= 0.50x", verdict(v <= 0.5, v, 0.5, False)))
    for r in (rl, rf):
        v = r["sgemm_fraction"]
        rows.append((f"retune {r['method']} GFLOP/s / sgemm", f"{r['achieved_gflops']:.0f}",
                     f"{r['sgemm_gflops']:.0f} (sgemm)", f"{100 * v:.0f}%", ">= 50%",
                     verdict(v >= 0.5, v, 0.5, True)))
    return rows


def table(headers, rows):
    w = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    fmt = "| " + " | ".join("{:<%d}" % n for n in w) + " |"
    out = [fmt.format(*headers), "|" + "|".join("-" * (n + 2) for n in w) + "|"]
    out += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(out)


def details(best):
    rows = []
    for key in (("retune", "lora"), ("torch", "lora"), ("retune", "full"), ("torch", "full")):
        r = best[key]
        flops = best[("retune", key[1])]["flops_per_step"]  # same model, same convention
        gf = flops / r["step_s_median"] / 1e9
        rows.append((f"{key[0]} {key[1]}", f"{r['tokens_per_s']:.0f}",
                     f"{r['step_s_median']:.3f} ({r['step_s_min']:.3f}-{r['step_s_max']:.3f})",
                     f"{r['forward_s']:.3f} / {r['backward_s']:.3f} / {r['optimizer_s']:.3f}",
                     f"{gf:.0f}", f"{r['peak_rss_mb']:.0f}", f"{r['init_peak_rss_mb']:.0f}"))
    return table(("run", "tokens/s", "step s median (min-max)", "fwd / bwd / optim s",
                  "GFLOP/s", "peak RSS MiB", "RSS after init MiB"), rows)


def profile(best):
    """retune's per-op breakdown (train_bench --profile), LoRA and full side by side."""
    pl = best[("retune", "lora")].get("profile_ms_per_step", {})
    pf = best[("retune", "full")].get("profile_ms_per_step", {})
    rows = []
    for name in pl:
        if name == "other_ms":
            continue
        a, b = pl[name], pf.get(name, {})
        if a["ms"] < 0.5 and b.get("ms", 0) < 0.5:
            continue
        cell = lambda p: (f"{p['ms']:.1f}" + (f" @ {p['gflops']:.0f}" if "gflops" in p else "")
                          if p.get("calls") else "-")
        rows.append((name, cell(a), cell(b)))
    rows.append(("other (host)", f"{pl.get('other_ms', 0):.1f}", f"{pf.get('other_ms', 0):.1f}"))
    return table(("retune op", "LoRA ms/step @ GFLOP/s", "full ms/step @ GFLOP/s"), rows)


# ---- --config: LoRA at a real model's shape ---------------------------------

NOTE_STEP = re.compile(r"\[([\d.]+) s\] step (\d+)/(\d+)(?: \(warm-up\))?: forward ([\d.]+) s, "
                       r"backward ([\d.]+) s, optimizer ([\d.]+) s \(peak RSS (\d+) MiB\)")
NOTE_ANY = re.compile(r"\[([\d.]+) s\] .*\(peak RSS (\d+) MiB\)")


def cpu_details():
    """'family F model M, AVX-512: yes/no, ...' from /proc/cpuinfo."""
    info = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    flags = set(info.get("flags", "").split())
    return (f"family {info.get('cpu family', '?')} model {info.get('model', '?')}, "
            f"AVX2 {'yes' if 'avx2' in flags else 'no'}, "
            f"AVX-512F {'yes' if 'avx512f' in flags else 'no'}, "
            f"AVX-512 BF16 {'yes' if 'avx512_bf16' in flags else 'no'}")


def model_dir_for(args):
    stem = os.path.splitext(os.path.basename(args.config))[0]
    return args.model_dir or f"/dev/shm/retune-bench-{stem}-{args.dtype}"


def ensure_model(args, env):
    """Writes the random model once (train_bench --write-model); returns its dir."""
    d = model_dir_for(args)
    want = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[args.dtype]
    try:
        with open(os.path.join(d, "config.json")) as f:
            ok = json.load(f).get("torch_dtype") == want and \
                os.path.exists(os.path.join(d, "model.safetensors"))
    except (OSError, ValueError):
        ok = False
    if ok:
        print(f"model: {d} (already written)")
        return d
    cmd = [args.bin, "--config", args.config, "--write-model", d, "--dtype", args.dtype]
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"train_bench.py: {' '.join(cmd)} exited {p.returncode}")
    size = os.path.getsize(os.path.join(d, "model.safetensors")) / 2**20
    print(f"model: wrote {d} ({size:.0f} MiB safetensors, {want}) in "
          f"{time.monotonic() - t0:.0f} s with retune's model_save (not timed)")
    return d


def partial_result(cmd, stderr, elapsed, tokens):
    """What a child stopped by the timeout had reported on stderr: its whole
    steps (warm-up included) or, without one, a lower bound on a step."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else (stderr or "")
    steps = [m.groups() for m in NOTE_STEP.finditer(text)]
    marks = [(float(t), float(r)) for t, r in NOTE_ANY.findall(text)]
    r = {"impl": "torch" if "torch_reference" in " ".join(cmd) else "retune",
         "timed_out": True, "wall_s": round(elapsed, 1), "tokens_per_step": tokens,
         "peak_rss_mb": max((x[1] for x in marks), default=float("nan")),
         "peak_rss_is_lower_bound": True, "init_peak_rss_mb": marks[0][1] if marks else 0.0}
    if steps:
        tot = [float(f) + float(b) + float(o) for _, _, _, f, b, o, _ in steps]
        last = steps[-1]
        r.update(step_s_median=statistics.median(tot), step_s_min=min(tot), step_s_max=max(tot),
                 forward_s=float(last[3]), backward_s=float(last[4]), optimizer_s=float(last[5]),
                 whole_steps=len(tot), bound=False)
    else:
        since = marks[-1][0] if marks else 0.0  # the last note before the step began
        fwd = re.findall(r"step 1/\d+: forward ([\d.]+) s \(", text)
        r.update(step_s_median=max(elapsed - since, 0.0), step_s_min=None, step_s_max=None,
                 forward_s=float(fwd[0]) if fwd else None, backward_s=None, optimizer_s=None,
                 whole_steps=0, bound=True)
    r["tokens_per_s"] = tokens / r["step_s_median"] if r["step_s_median"] else float("nan")
    return r


def run_child_bounded(cmd, env, timeout, tokens, mem_limit_gib=None):
    """run_child, except that a child past timeout yields partial_result, and
    so does one that fails under mem_limit_gib (RLIMIT_AS of the child, so
    that a reference that needs more memory than the machine has fails alone
    instead of waking the OOM killer); its "error" says why."""
    b0, j0 = cpu_ticks()
    c0 = children_cpu_s()
    t0 = time.monotonic()
    limit = None
    if mem_limit_gib:
        n = int(mem_limit_gib * 2**30)
        limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (n, n))
    try:
        p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired as e:
        r = partial_result(cmd, e.stderr, time.monotonic() - t0, tokens)
        r["error"] = f"stopped by the {timeout} s timeout"
    else:
        if p.returncode != 0 and mem_limit_gib:
            r = partial_result(cmd, p.stderr, time.monotonic() - t0, tokens)
            tail = [l for l in p.stderr.splitlines() if l.strip()][-1:] or [""]
            r["timed_out"] = True
            r["error"] = f"exited {p.returncode} under the {mem_limit_gib} GiB limit: {tail[0][:160]}"
        elif p.returncode != 0:
            sys.stderr.write(p.stderr)
            raise SystemExit(f"train_bench.py: {' '.join(cmd)} exited {p.returncode}")
        else:
            lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
            if not lines:
                raise SystemExit(f"train_bench.py: no JSON line from {' '.join(cmd)}")
            r = json.loads(lines[-1])
            r["timed_out"] = False
    wall = time.monotonic() - t0
    b1, j1 = cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    foreign = ((b1 - b0) / hz - (children_cpu_s() - c0)) / max(wall * os.cpu_count(), 1e-9)
    r["wall_s"] = round(wall, 1)
    r["foreign_cpu"] = round(min(max(foreign, 0.0), 1.0), 3)
    return r


def config_commands(args, model_dir):
    """label -> command of each run of the --config mode."""
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup),
              "--batch", str(args.batch), "--seq", str(args.seq)]
    lora = ["--targets", args.targets]
    ret = [args.bin, "--method", "lora", "--model", model_dir, "--dtype", "auto", "--rank",
           str(args.lora_r), "--alpha", str(args.lora_alpha), "--profile"] + lora + common
    out = {"retune": ret}
    if args.grad_checkpoint:
        out["retune-ckpt"] = ret + ["--grad-checkpoint"]
    for dt in args.torch_dtypes.split(","):
        steps = common
        if dt == "bf16" and args.torch_bf16_steps:
            w, n = args.torch_bf16_steps.split("+")
            steps = ["--steps", n, "--warmup", w] + common[4:]
        out[f"torch-{dt}"] = [args.python, os.path.join(ROOT, "bench", "torch_reference.py"),
                              "--method", "lora", "--config", os.path.abspath(args.config),
                              "--dtype", dt, "--lora-r", str(args.lora_r), "--lora-alpha",
                              str(args.lora_alpha), "--threads", str(args.threads)] + lora + steps
    skip = set(x for x in args.skip.split(",") if x)
    return {k: v for k, v in out.items() if k not in skip}


def fmt_tps(r):
    t = r["tokens_per_s"]
    return f"<= {t:.0f}" if r.get("bound") else f"{t:.0f}"


def config_targets(runs):
    """(name, retune, torch, ratio, target, result) rows against each torch run."""
    rows, rt = [], runs.get("retune")
    if rt is None:
        return rows
    for label, tr in runs.items():
        if not label.startswith("torch"):
            continue
        v = rt["tokens_per_s"] / tr["tokens_per_s"]
        bound = tr.get("bound")
        rows.append((f"tokens/s vs {label}", f"{rt['tokens_per_s']:.0f}", fmt_tps(tr),
                     f"{'>= ' if bound else ''}{v:.2f}x", ">= 2.0x",
                     verdict(v >= 2.0, v, 2.0, True)))
        for rl in ("retune", "retune-ckpt"):
            if rl not in runs:
                continue
            v = runs[rl]["peak_rss_mb"] / tr["peak_rss_mb"]
            lb = tr.get("peak_rss_is_lower_bound")
            rows.append((f"{rl} peak RSS vs {label} (MiB)", f"{runs[rl]['peak_rss_mb']:.0f}",
                         f"{'>= ' if lb else ''}{tr['peak_rss_mb']:.0f}",
                         f"{'<= ' if lb else ''}{v:.2f}x", "<= 0.50x",
                         verdict(v <= 0.5, v, 0.5, False) + (" (torch RSS so far)" if lb else "")))
    return rows


def config_details(runs, flops):
    rows = []
    for label, r in runs.items():
        st = r["step_s_median"]
        rng = (f" ({r['step_s_min']:.2f}-{r['step_s_max']:.2f})"
               if r.get("step_s_min") is not None else "")
        ph = lambda x: "-" if r.get(x) is None else f"{r[x]:.2f}"
        steps = (f"{r['warmup']}+{r['steps']}" if not r.get("timed_out")
                 else f"{r['whole_steps']} whole ({r['error'][:48]}, at {r['wall_s']:.0f} s)")
        rows.append((label, fmt_tps(r), f"{'>= ' if r.get('bound') else ''}{st:.2f}{rng}",
                     f"{ph('forward_s')} / {ph('backward_s')} / {ph('optimizer_s')}",
                     f"{flops / st / 1e9:.0f}" if st else "-",
                     f"{'>= ' if r.get('peak_rss_is_lower_bound') else ''}{r['peak_rss_mb']:.0f}",
                     f"{r['init_peak_rss_mb']:.0f}", steps, f"{100 * r['foreign_cpu']:.0f}%"))
    return table(("run", "tokens/s", "step s median (min-max)", "fwd / bwd / optim s",
                  "GFLOP/s", "peak RSS MiB", "RSS after init MiB", "steps", "other load"), rows)


def config_profile(r):
    """retune's per-op breakdown of one run."""
    p = r.get("profile_ms_per_step", {})
    total = r["step_s_median"] * 1e3
    rows = []
    for name, v in p.items():
        if name == "other_ms" or not v.get("calls") or v["ms"] < 0.5:
            continue
        rows.append((name, f"{v['ms']:.0f}", f"{100 * v['ms'] / total:.1f}%",
                     f"{v['gflops']:.0f}" if "gflops" in v else "-", str(v["calls"])))
    rows.sort(key=lambda x: -float(x[1]))
    rows.append(("other (host)", f"{p.get('other_ms', 0):.0f}", "", "", ""))
    return table(("retune op", "ms/step", "% of step", "GFLOP/s", "calls/step"), rows)


def main_config(args):
    env, removed = child_env(args)
    started = time.monotonic()
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()} ({cpu_details()}), "
          f"{platform.platform()}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"threads: OPENBLAS_NUM_THREADS={args.threads} OMP_NUM_THREADS={args.threads} "
          f"OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY', '(unset)')} "
          f"(torch.set_num_threads({args.threads})) for every child")
    if removed:
        print("NOTE: unset for the benchmark's own subprocesses (retune and torch): " +
              ", ".join(f"{k}={v}" for k, v in removed.items()))
    else:
        print("NOTE: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE were not set (nothing to unset) "
              "or --keep-openblas-env")
    d = ensure_model(args, env)
    print(f"config: {args.config} at full depth; batch {args.batch} x {args.seq}; LoRA r "
          f"{args.lora_r} alpha {args.lora_alpha:g} on {args.targets}; AdamW, clip 1.0; "
          f"{args.warmup} warm-up + {args.steps} timed steps, {args.rounds} round(s); "
          f"child timeout {args.timeout} s" +
          (f"; torch bf16: {args.torch_bf16_steps} steps" if args.torch_bf16_steps else "") +
          (f", timeout {args.torch_bf16_timeout} s" if args.torch_bf16_timeout else ""))
    cmds = config_commands(args, d)
    tokens = args.batch * args.seq
    runs, every = {}, []
    for rnd in range(args.rounds):
        for label in (list(cmds) if rnd % 2 == 0 else list(cmds)[::-1]):
            if args.quiet_wait > 0:
                wait_quiet(args.quiet_wait)
            limit = args.torch_bf16_timeout if label == "torch-bf16" and \
                args.torch_bf16_timeout else args.timeout
            r = run_child_bounded(cmds[label], env, limit, tokens, args.child_mem_limit_gib)
            r["label"], r["round"] = label, rnd + 1
            every.append(r)
            print(f"  round {rnd + 1}: {label:12} {fmt_tps(r):>9} tok/s  step "
                  f"{'>= ' if r.get('bound') else ''}{r['step_s_median']:.2f} s  peak RSS "
                  f"{r['peak_rss_mb']:.0f} MiB{' (' + r['error'] + ')' if r['timed_out'] else ''}"
                  f"  ({r['wall_s']} s, other processes took {100 * r['foreign_cpu']:.0f}% of "
                  f"the CPUs)", flush=True)
            if label not in runs or better(r, runs[label], args.max_foreign):
                runs[label] = r
    rt = runs.get("retune")
    flops = rt["flops_per_step"] if rt else float("nan")
    if rt:
        print(f"\nretune: OpenBLAS core {rt['blas_core']}, {rt['blas_threads']} threads; "
              f"weights {rt['weights_dtype']}{' (mapped from the file)' if rt['weights_mapped'] else ''}, "
              f"{rt['weight_mb']:.0f} MiB; activations {rt['acts_mb']:.0f} MiB; "
              f"{rt['trainable_params']} trainable of {rt['total_params']} parameters")
        print(f"sgemm 1024^3 in retune's run: {rt['sgemm_gflops']:.0f} GFLOP/s median "
              f"(best {rt['sgemm_gflops_best']:.0f}); retune reaches "
              f"{100 * rt['sgemm_fraction']:.0f}% of it")
        print(f"FLOPs per step (matmuls only, step_flops): {flops / 1e9:.0f} G")
    for label, r in runs.items():
        if label.startswith("torch") and "torch" in r:
            print(f"{label}: torch {r['torch']}, {r['threads']} threads, "
                  f"{r['trainable_params']} trainable of {r['total_params']} parameters")
    print()
    print(table(("target", "retune", "torch", "ratio", "target", "result"), config_targets(runs)))
    print()
    print(config_details(runs, flops))
    if rt:
        print()
        print(config_profile(rt))
    busy = [f"{k} {100 * v['foreign_cpu']:.0f}%" for k, v in runs.items()
            if v["foreign_cpu"] > args.max_foreign]
    if busy:
        print("\nWARNING: other processes used the CPUs during the kept runs ("
              + ", ".join(busy) + "); ratios are noisy")
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"removed_env": removed, "model_dir": d, "best": runs, "runs": every}, f,
                      indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, help="timed steps per run (default 5)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default 3)")
    ap.add_argument("--rounds", type=int,
                    help="runs of each configuration; the fastest counts (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP threads (default 2)")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bench", "train_bench"))
    ap.add_argument("--python", default="/usr/bin/python3", help="Python with torch")
    ap.add_argument("--keep-openblas-env", action="store_true",
                    help="leave OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE set in the children")
    ap.add_argument("--omp-wait-policy", default="PASSIVE", choices=("PASSIVE", "ACTIVE", "unset"),
                    help="OMP_WAIT_POLICY of every child (default PASSIVE: torch's OpenMP "
                         "threads then sleep instead of spinning against OpenBLAS's own "
                         "threads, which makes torch about 2x faster on 2 cores; retune "
                         "does not use OpenMP)")
    ap.add_argument("--quiet-wait", type=float, default=20,
                    help="before each child, wait up to this many seconds for the CPUs to "
                         "be idle (< 10%% busy over 1 s); 0 = do not wait (default 20)")
    ap.add_argument("--max-foreign", type=float, default=0.10,
                    help="a run during which other processes took more than this share "
                         "of the CPUs counts as contended (default 0.10)")
    ap.add_argument("--retries", type=int,
                    help="extra runs of a configuration with no uncontended run (default 2)")
    ap.add_argument("--timeout", type=int, help="seconds per child (default 600)")
    ap.add_argument("--json", help="also write every run's JSON here")
    ap.add_argument("--config", help="a Hugging Face config.json: LoRA at its exact shape "
                    "(see the module docstring); changes the defaults of --steps 2, --warmup 1, "
                    "--rounds 1, --retries 0, --timeout 3600")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "f16", "f32"),
                    help="with --config: dtype of the model written to disk (default bf16); "
                         "retune loads it with --dtype auto")
    ap.add_argument("--model-dir", help="with --config: where the model is written "
                    "(default /dev/shm/retune-bench-<config>-<dtype>)")
    ap.add_argument("--torch-dtypes", default="bf16",
                    help="with --config: torch base dtypes to run, comma separated, the first "
                         "is the headline (default bf16; e.g. bf16,f32)")
    ap.add_argument("--lora-r", type=int, default=16, help="with --config (default 16)")
    ap.add_argument("--lora-alpha", type=float, default=32.0, help="with --config (default 32)")
    ap.add_argument("--targets", default="all", choices=("qv", "all"),
                    help="with --config: LoRA modules (default all seven)")
    ap.add_argument("--batch", type=int, default=4, help="with --config (default 4)")
    ap.add_argument("--seq", type=int, default=512, help="with --config (default 512)")
    ap.add_argument("--grad-checkpoint", action="store_true",
                    help="with --config: also run retune with activation checkpointing")
    ap.add_argument("--torch-bf16-steps", metavar="W+S",
                    help="with --config: warm-up + timed steps of the torch bf16 child only "
                         "(e.g. 0+1: on CPUs without AVX-512 BF16, Debian's torch 1.13 runs bf16 "
                         "matmuls tens of times slower than fp32)")
    ap.add_argument("--torch-bf16-timeout", type=int,
                    help="with --config: seconds for the torch bf16 child (default --timeout)")
    ap.add_argument("--child-mem-limit-gib", type=float,
                    help="with --config: RLIMIT_AS of every child in GiB; a child that fails "
                         "under it is reported (with its RSS so far), not fatal")
    ap.add_argument("--skip", default="", help="with --config: runs to leave out, comma "
                    "separated (retune, retune-ckpt, torch-bf16, torch-f32)")
    args = ap.parse_args()
    if not os.access(args.bin, os.X_OK):
        raise SystemExit(f"train_bench.py: {args.bin} not found; run `make -j2` first")
    toy = dict(steps=5, warmup=3, rounds=2, retries=2, timeout=600)
    real = dict(steps=2, warmup=1, rounds=1, retries=0, timeout=3600)
    for k, v in (real if args.config else toy).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.config:
        return main_config(args)

    env, removed = child_env(args)
    started = time.monotonic()
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, {platform.platform()}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"threads: OPENBLAS_NUM_THREADS={args.threads} OMP_NUM_THREADS={args.threads} "
          f"OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY', '(unset)')} "
          f"(torch.set_num_threads({args.threads})) for every child")
    if removed:
        print("NOTE: unset for the benchmark's own subprocesses (retune and torch): " +
              ", ".join(f"{k}={v}" for k, v in removed.items()))
    else:
        print("NOTE: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE not unset (absent or --keep-openblas-env)")
    print(f"config: hidden 512, 8 layers, 8 heads / 8 KV heads (head_dim 64), FFN 1376, "
          f"vocab 8192, tied; batch 4 x 256; LoRA r 8 alpha 16 on q_proj,v_proj; AdamW; "
          f"{args.warmup} warm-up + {args.steps} timed steps, {args.rounds} round(s)")

    best, every = run_all(args, env)
    r = best[("retune", "lora")]
    t = best[("torch", "lora")]
    print(f"\nretune: OpenBLAS core {r['blas_core']}, {r['blas_threads']} threads; "
          f"torch {t['torch']}, {t['threads']} threads")
    print(f"sgemm {1024}^3 in retune's runs: LoRA {r['sgemm_gflops']:.0f} GFLOP/s median "
          f"(best {r['sgemm_gflops_best']:.0f}), full "
          f"{best[('retune', 'full')]['sgemm_gflops']:.0f} median "
          f"(best {best[('retune', 'full')]['sgemm_gflops_best']:.0f})")
    print("FLOPs per step (matmuls only; attention causal half, backward recompute not "
          f"counted): LoRA {r['flops_per_step'] / 1e9:.1f} G, full "
          f"{best[('retune', 'full')]['flops_per_step'] / 1e9:.1f} G\n")
    print(table(("target", "retune", "torch / other", "ratio", "target", "result"),
                targets(best)))
    print()
    print(details(best))
    print()
    print(profile(best))
    busy = [f"{k[0]} {k[1]} {100 * v['foreign_cpu']:.0f}%" for k, v in best.items()
            if v["foreign_cpu"] > args.max_foreign]
    if busy:
        print("\nWARNING: other processes used the CPUs during the kept runs ("
              + ", ".join(busy) + "); ratios are noisy, rerun when the machine is idle")
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"removed_env": removed, "best": {f"{k[0]}_{k[1]}": v
                       for k, v in best.items()}, "runs": every}, f, indent=1)


if __name__ == "__main__":
    main()
