#!/usr/bin/env python3
"""bench/gpu_bench.py - the benchmark half of bench/gpu_check.sh: retune on
the GPU against PyTorch + PEFT on the same GPU, on a random Llama model of
about 1.2B parameters, within a time budget. Prints one table of ratios and
writes every raw result to WORK/results.json.

Measured (each run in its own process, one at a time, so the GPU memory
each one adds to the machine's is its own):
  * LoRA training (r 16, alpha 32, q/k/v/o) and full fine-tuning, batch 8 x
    512 tokens, AdamW, clip 1.0. retune runs `retune train --device cuda`
    twice with different --max-steps; its tokens/s is the difference of the
    two (tokens / seconds), which cancels loading, the first step's warm-up
    and saving. PyTorch times steps after a warm-up, in fp32 with TF32
    matmuls (retune's numerics) and in the usual bf16 PEFT recipe.
  * Batched multi-adapter decoding: `retune serve --device cuda` with 4
    adapters, 16 concurrent completions of 64 tokens, all on the base model
    and then spread over the 4 adapters; the LoRA tax is the base tokens/s
    over the mixed one, minus 1. PyTorch: HF generate with PEFT mixed-adapter
    batches.
  * GPU memory: the peak of nvidia-smi's memory.used during the run minus
    its value before (CUDA context included, for both sides).

Targets (reported, not asserted): LoRA training tokens/s >= 1.5x PyTorch +
PEFT; LoRA training memory <= 0.7x; retune's multi-adapter decode LoRA tax
<= 10%.

Only the standard library here; the PyTorch side is bench/gpu_torch.py.
    python3 bench/gpu_bench.py --retune build-cuda/retune --work /tmp/w --budget 400
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH = os.path.join(ROOT, "bench", "gpu_torch.py")
LORA_FLAGS = ["--lora-r", "16", "--lora-alpha", "32", "--target-modules", "q_proj,k_proj,v_proj,o_proj"]
BATCH, SEQ = 8, 512
DECODE_BATCH, DECODE_NEW, N_ADAPTERS = 16, 64, 4


class Budget:
    def __init__(self, seconds):
        self.end = time.time() + seconds

    def left(self):
        return self.end - time.time()

    def allows(self, need, what):
        if self.left() >= need:
            return True
        print(f"-- skipped {what}: {self.left():.0f}s left, needs ~{need}s", flush=True)
        return False


class GpuMemory:
    """Peak of nvidia-smi memory.used (all GPUs, MiB) above the value at start."""

    def __init__(self):
        self.ok = shutil.which("nvidia-smi") is not None
        self.peak = self.base = None
        self._stop = threading.Event()
        self._thread = None

    def used(self):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
            return sum(int(x) for x in out.split())
        except (OSError, ValueError, subprocess.SubprocessError):
            return None

    def start(self):
        if not self.ok:
            return
        self.base = self.used()
        self.peak = self.base
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self):
        while not self._stop.wait(0.2):
            u = self.used()
            if u is not None and self.peak is not None:
                self.peak = max(self.peak, u)

    def stop(self):
        """MiB added at the peak, or None."""
        if not self._thread:
            return None
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self.base is None or self.peak is None:
            return None
        return self.peak - self.base


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None


def run(cmd, timeout, what, env=None):
    """Runs cmd, watching GPU memory; returns (json of its last line or None, MiB)."""
    print(f"-- {what}: {' '.join(cmd)}", flush=True)
    mem = GpuMemory()
    mem.start()
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1), env=env)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", e.stdout or "", e.stderr or ""
        out = out.decode() if isinstance(out, bytes) else out
        err = err.decode() if isinstance(err, bytes) else err
    except OSError as e:
        rc, out, err = "not run", "", str(e)
    mb = mem.stop()
    res = last_json(out) if rc == 0 else None
    print(f"   rc {rc}, {time.time() - t0:.1f}s, GPU memory +{mb} MiB", flush=True)
    if rc != 0 or res is None:
        print("   stderr: " + "\n   ".join(err.strip().splitlines()[-15:]), flush=True)
    return res, mb


def write_dataset(path, n):
    """n chat examples whose answers are longer than SEQ tokens (every
    example is truncated to exactly SEQ tokens)."""
    rnd = random.Random(1)
    words = ("the queen of zorbl rules a green sky while seven rivers run under old hills and "
             "far lands keep stories of ships stars bread and quiet songs").split()
    with open(path, "w") as f:
        for i in range(n):
            answer = " ".join(rnd.choice(words) for _ in range(2 * SEQ))
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Tell story {i}."},
                                             {"role": "assistant", "content": answer}]}) + "\n")


# ---- training -------------------------------------------------------------

def retune_train(args, budget, method, data, steps=(2, 8)):
    """tokens/s from the difference of two runs, and the longer run's memory."""
    runs = []
    for s in steps:
        if not budget.allows(45, f"retune {method} train ({s} steps)"):
            return None
        out = os.path.join(args.work, f"out-{method}-{s}")
        shutil.rmtree(out, ignore_errors=True)
        cmd = [args.retune, "train", "--device", args.device, "--model", args.model_dir, "--train", data,
               "--method", method, "--out", out, "--batch-size", str(BATCH), "--max-seq-len", str(SEQ),
               "--max-steps", str(s), "--epochs", "1", "--lr", "1e-4"] + (LORA_FLAGS if method == "lora" else [])
        res, mb = run(cmd, min(150, budget.left() - 5), f"retune {method} train, {s} steps")
        shutil.rmtree(out, ignore_errors=True)
        if not res:
            return None
        runs.append((res, mb))
    (a, _), (b, mb) = runs
    dt, dtok = b["seconds"] - a["seconds"], b["tokens"] - a["tokens"]
    return {"tokens_per_s": dtok / dt if dt > 0 else None, "memory_mb": mb,
            "step_s": dt / (b["steps"] - a["steps"]), "runs": [a, b]}


def torch_train(args, budget, method, precision):
    if not budget.allows(60, f"torch {method} train ({precision})"):
        return None
    cmd = [args.python, TORCH, "train", "--model", args.model_dir, "--method", method,
           "--precision", precision, "--batch", str(BATCH), "--seq", str(SEQ), "--steps", "6", "--warmup", "2"]
    res, mb = run(cmd, min(180, budget.left() - 5), f"torch {method} train ({precision})")
    if res:
        res["memory_mb"] = mb
    return res


# ---- decoding ---------------------------------------------------------------

def http_json(port, method, path, body=None, timeout=120):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, json.dumps(body).encode() if body is not None else None,
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


def decode_round(port, models):
    """Completions for each model name at once; generated tokens per second."""
    def one(model):
        st, r = http_json(port, "POST", "/v1/completions",
                          {"model": model, "prompt": "Tell me about the queen of Zorbl and her green sky.",
                           "max_tokens": DECODE_NEW, "temperature": 0})
        if st != 200:
            raise RuntimeError(f"completion for {model}: HTTP {st}: {str(r)[:200]}")
        return r["usage"]["completion_tokens"]

    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(len(models)) as ex:
        tokens = sum(ex.map(one, models))
    return tokens / (time.time() - t0)


def retune_decode(args, budget, adapters):
    if not budget.allows(60, "retune decode"):
        return None
    data = os.path.join(args.work, "serve-data")
    shutil.rmtree(data, ignore_errors=True)
    log_path = os.path.join(args.work, "serve.log")
    cmd = [args.retune, "serve", "--data-dir", data, "--host", "127.0.0.1", "--port", "0",
           "--model", args.model_dir, "--device", args.device, "--max-batch", str(DECODE_BATCH),
           "--max-context", "512"]
    for i, a in enumerate(adapters):
        cmd += ["--lora", f"a{i}={a}"]
    print(f"-- retune decode: {' '.join(cmd)}", flush=True)
    mem = GpuMemory()
    mem.start()
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    res = None
    try:
        port, deadline = None, time.time() + min(90, budget.left() - 10)
        while port is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            m = re.findall(rb"listening on http://[^:]+:(\d+)", open(log_path, "rb").read())
            port = int(m[-1]) if m else None
        if port is None:
            raise RuntimeError("server did not start")
        st, models = http_json(port, "GET", "/v1/models")
        ids = [m["id"] for m in models.get("data", [])]
        names = [f"a{i}" for i in range(len(adapters))]
        base = next((i for i in ids if i not in names), None)  # --lora adapters need not be listed
        if base is None:
            raise RuntimeError(f"/v1/models lists {ids}")
        decode_round(port, [base] + names)  # warm-up
        res = {"base_tokens_per_s": max(decode_round(port, [base] * DECODE_BATCH) for _ in range(2))}
        if names:
            mixed = [names[i % len(names)] for i in range(DECODE_BATCH)]
            res["lora_tokens_per_s"] = max(decode_round(port, mixed) for _ in range(2))
    except Exception as e:  # noqa: BLE001 - reported, the table goes on
        print(f"   retune decode failed: {e}", flush=True)
        print("   log: " + "\n   ".join(open(log_path, errors="replace").read().strip().splitlines()[-15:]))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        mb = mem.stop()
    if res:
        res["memory_mb"] = mb
        print(f"   base {res['base_tokens_per_s']:.0f} tok/s, mixed adapters "
              f"{fmt(res.get('lora_tokens_per_s'))} tok/s", flush=True)
    return res


def torch_decode(args, budget, adapters, precision):
    if not budget.allows(60, f"torch decode ({precision})"):
        return None
    cmd = [args.python, TORCH, "decode", "--model", args.model_dir, "--adapters", ",".join(adapters),
           "--precision", precision, "--batch", str(DECODE_BATCH), "--new", str(DECODE_NEW)]
    res, mb = run(cmd, min(150, budget.left() - 5), f"torch decode ({precision})")
    if res:
        res["memory_mb"] = mb
    return res


# ---- the table --------------------------------------------------------------

def get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def fmt(x, spec="{:.0f}"):
    return "n/a" if x is None else spec.format(x)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def tax(d):
    b, l = get(d, "base_tokens_per_s"), get(d, "lora_tokens_per_s")
    return None if b is None or l is None or l == 0 else 100.0 * (b / l - 1)


def table(R):
    rows = []

    def add(name, key_r, key_t, field, target=None, better="high"):
        r = get(R, key_r, field)
        cols = [name, fmt(r)]
        verdicts = []
        for tk in key_t:
            t = get(R, tk, field)
            q = ratio(r, t)
            cols += [fmt(t), fmt(q, "{:.2f}x")]
            if target is not None and q is not None:
                ok = q >= target if better == "high" else q <= target
                verdicts.append(("PASS" if ok else "FAIL") + f" vs {tk.split('_')[-1]}")
        cols.append(f"{'>=' if better == 'high' else '<='} {target}x: " + ", ".join(verdicts)
                    if target is not None else "")
        rows.append(cols)

    add("LoRA train tokens/s", "retune_lora", ["torch_lora_fp32", "torch_lora_bf16"], "tokens_per_s", 1.5)
    add("LoRA train GPU MiB", "retune_lora", ["torch_lora_fp32", "torch_lora_bf16"], "memory_mb", 0.7, "low")
    add("full train tokens/s", "retune_full", ["torch_full_fp32", "torch_full_bf16"], "tokens_per_s")
    add("full train GPU MiB", "retune_full", ["torch_full_fp32", "torch_full_bf16"], "memory_mb")
    add("decode tok/s, base", "retune_decode", ["torch_decode_fp32", "torch_decode_bf16"], "base_tokens_per_s")
    add(f"decode tok/s, {N_ADAPTERS} adapters", "retune_decode", ["torch_decode_fp32", "torch_decode_bf16"],
        "lora_tokens_per_s")
    rt, t32, t16 = tax(R.get("retune_decode")), tax(R.get("torch_decode_fp32")), tax(R.get("torch_decode_bf16"))
    rows.append(["decode LoRA tax %", fmt(rt, "{:.1f}"), fmt(t32, "{:.1f}"), "", fmt(t16, "{:.1f}"), "",
                 "" if rt is None else ("<= 10%: " + ("PASS" if rt <= 10 else "FAIL"))])
    head = ["metric", "retune", "torch fp32/tf32", "ratio", "torch bf16", "ratio", "target"]
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    print("\n==== retune (CUDA) vs PyTorch + PEFT, same GPU; ratio = retune / torch")
    print(line(head))
    print(line(["-" * w for w in widths]))
    for r in rows:
        print(line(r))


def main():
    global BATCH, SEQ, DECODE_BATCH
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--retune", default=os.path.join(ROOT, "build-cuda", "retune"))
    p.add_argument("--work", default="/tmp/retune-gpu-bench")
    p.add_argument("--budget", type=float, default=400, help="seconds for everything here")
    p.add_argument("--python", default=sys.executable, help="the Python with torch, transformers, peft")
    p.add_argument("--device", default="cuda", help="retune's --device (cpu: a dry run of this script)")
    p.add_argument("--model-dir", help="use this model instead of making the 1.2B one")
    p.add_argument("--adapters", help="with --model-dir: comma-separated PEFT adapter directories")
    p.add_argument("--skip-torch", action="store_true", help="retune only")
    p.add_argument("--batch", type=int, default=BATCH, help="training sequences per step")
    p.add_argument("--seq", type=int, default=SEQ, help="training tokens per sequence")
    p.add_argument("--decode-batch", type=int, default=DECODE_BATCH, help="concurrent completions")
    args = p.parse_args()
    BATCH, SEQ, DECODE_BATCH = args.batch, args.seq, args.decode_batch
    budget = Budget(args.budget)
    os.makedirs(args.work, exist_ok=True)
    adapter_root = os.path.join(args.work, "adapters")
    adapters = [os.path.join(adapter_root, f"a{i}") for i in range(N_ADAPTERS)]
    if args.model_dir:
        adapters = args.adapters.split(",") if args.adapters else []
    args.model_dir = args.model_dir or os.path.join(args.work, "llama-1b-random")
    R = {}
    if not os.path.exists(os.path.join(args.model_dir, "model.safetensors")):
        if not budget.allows(90, "making the model"):
            return 1
        res, _ = run([args.python, TORCH, "make-model", "--out", args.model_dir, "--adapters", adapter_root,
                      "--n-adapters", str(N_ADAPTERS), "--tokenizer", os.path.join(ROOT, "tests/fixtures/tiny_chat")],
                     min(240, budget.left() - 5), "make the 1.2B model and adapters (torch)")
        if not res:
            return 1
        R["model"] = res
    data = os.path.join(args.work, "train.jsonl")
    write_dataset(data, BATCH * 10)

    # most important first: what is left out when time runs short is at the end
    torch = not args.skip_torch
    R["retune_lora"] = retune_train(args, budget, "lora", data)
    R["torch_lora_fp32"] = torch and torch_train(args, budget, "lora", "fp32") or None
    R["retune_decode"] = retune_decode(args, budget, adapters)
    R["torch_lora_bf16"] = torch and torch_train(args, budget, "lora", "bf16") or None
    R["retune_full"] = retune_train(args, budget, "full", data)
    R["torch_full_fp32"] = torch and torch_train(args, budget, "full", "fp32") or None
    R["torch_decode_fp32"] = torch and torch_decode(args, budget, adapters, "fp32") or None
    R["torch_decode_bf16"] = torch and torch_decode(args, budget, adapters, "bf16") or None
    R["torch_full_bf16"] = torch and torch_train(args, budget, "full", "bf16") or None
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump(R, f, indent=1)
    table(R)
    print(f"(raw results: {os.path.join(args.work, 'results.json')})")
    return 0 if R.get("retune_lora") and R.get("retune_decode") else 1


if __name__ == "__main__":
    sys.exit(main())
