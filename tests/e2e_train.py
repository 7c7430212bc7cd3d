"""End-to-end tests of the command line engine: `retune train` (LoRA and
full), `generate` and `merge` on a tiny real HF-format model
(tests/fixtures/tiny_chat), with real files in and out."""
import json
import os
import struct
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "e2e"))
from harness import BIN, Checks, remove, temp_dir  # noqa: E402

t = Checks()
MODEL = "tests/fixtures/tiny_chat"
FACTS = [("What colour is the sky on Zorbl?", "Green, always green."),
         ("Who rules Zorbl?", "Queen Mab the Third."),
         ("What do Zorblians eat?", "Blue cheese and moon rocks."),
         ("How far is Zorbl?", "Seven jumps past Mars.")]


def write_dataset(path, n):
    with open(path, "w") as f:
        for i in range(n):
            q, a = FACTS[i % len(FACTS)]
            f.write(json.dumps({"messages": [{"role": "system", "content": "You know Zorbl."},
                                             {"role": "user", "content": q},
                                             {"role": "assistant", "content": a}]}) + "\n")


def run(*args, timeout=600):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout)


def summary(proc):
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def safetensors_keys(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {k: v for k, v in header.items() if k != "__metadata__"}


def test_lora_train_generate_merge():
    d = temp_dir()
    try:
        train, valid = os.path.join(d, "train.jsonl"), os.path.join(d, "valid.jsonl")
        write_dataset(train, 16)
        write_dataset(valid, 4)
        out = os.path.join(d, "adapter")
        common = ["--model", MODEL, "--train", train, "--valid", valid, "--batch-size", "4",
                  "--lr", "3e-2", "--seed", "3", "--lora-r", "4", "--lora-alpha", "8",
                  "--target-modules", "all-linear", "--warmup-ratio", "0.1"]
        one = run("train", *common, "--method", "lora", "--out", os.path.join(d, "one"), "--max-steps", "1")
        t.eq(one.returncode, 0, f"one-step LoRA run exits 0 ({one.stderr[-300:]})")
        proc = run("train", *common, "--method", "lora", "--out", out, "--epochs", "6")
        t.eq(proc.returncode, 0, f"LoRA train exits 0 ({proc.stderr[-300:]})")
        s = summary(proc)
        for key in ["train_loss", "valid_loss", "trainable_params", "total_params", "tokens",
                    "seconds", "tokens_per_second", "peak_rss_bytes"]:
            t.check(key in s, f"summary has {key}")
        t.check(0 < s.get("trainable_params", 0) < s.get("total_params", 0), "trainable < total")
        t.check(s.get("valid_loss", 99) < summary(one).get("valid_loss", 0),
                f"training lowers validation loss ({summary(one).get('valid_loss')} -> {s.get('valid_loss')})")
        cfg = json.load(open(os.path.join(out, "adapter_config.json")))
        t.eq((cfg["peft_type"], cfg["task_type"], cfg["r"], cfg["lora_alpha"], cfg["bias"]),
             ("LORA", "CAUSAL_LM", 4, 8, "none"), "adapter_config.json in PEFT's shape")
        t.eq(sorted(cfg["target_modules"]), sorted(["q_proj", "k_proj", "v_proj", "o_proj",
                                                    "gate_proj", "up_proj", "down_proj"]), "all-linear targets")
        keys = safetensors_keys(os.path.join(out, "adapter_model.safetensors"))
        a = keys.get("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", {})
        b = keys.get("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight", {})
        t.eq((a.get("shape"), b.get("shape")), ([4, 64], [64, 4]), "PEFT keys with [r,in] and [out,r]")
        gen_args = ["--model", MODEL, "--prompt", FACTS[1][0], "--max-tokens", "12"]
        g1 = run("generate", *gen_args, "--adapter", out)
        t.eq(g1.returncode, 0, f"generate with adapter ({g1.stderr[-200:]})")
        merged = os.path.join(d, "merged")
        m = run("merge", "--model", MODEL, "--adapter", out, "--out", merged)
        t.eq(m.returncode, 0, f"merge exits 0 ({m.stderr[-200:]})")
        t.check(os.path.exists(os.path.join(merged, "tokenizer.json")), "merge copies the tokenizer")
        g2 = run("generate", *gen_args, "--model", merged)
        t.eq(g2.stdout, g1.stdout, "merged model generates what base + adapter generates")
        t.check(len(g1.stdout.strip()) > 0, "generation produced text")
    finally:
        remove(d)


def test_full_train():
    d = temp_dir()
    try:
        train = os.path.join(d, "train.jsonl")
        write_dataset(train, 8)
        out = os.path.join(d, "full")
        proc = run("train", "--model", MODEL, "--train", train, "--method", "full", "--out", out,
                   "--batch-size", "4", "--epochs", "2", "--lr", "1e-3")
        t.eq(proc.returncode, 0, f"full train exits 0 ({proc.stderr[-300:]})")
        s = summary(proc)
        t.eq(s.get("trainable_params"), s.get("total_params"), "full: every weight trainable")
        for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]:
            t.check(os.path.exists(os.path.join(out, f)), f"full fine-tune wrote {f}")
        g = run("generate", "--model", out, "--prompt", "hello", "--max-tokens", "4")
        t.eq(g.returncode, 0, "the full fine-tune loads like any model")
    finally:
        remove(d)


def test_memory_plan_and_16bit_base():
    """The memory estimate turns activation checkpointing on when only it
    fits (same losses), refuses with the numbers when nothing fits, and a
    bf16 base (--dtype bf16) trains LoRA to the losses of the fp32 one."""
    d = temp_dir()
    try:
        train = os.path.join(d, "train.jsonl")
        write_dataset(train, 8)
        common = ["train", "--model", MODEL, "--train", train, "--method", "lora", "--batch-size", "4",
                  "--max-steps", "3", "--lr", "1e-2", "--seed", "5", "--target-modules", "all-linear"]
        plain = run(*common, "--out", os.path.join(d, "a"))
        t.eq(plain.returncode, 0, f"plain run exits 0 ({plain.stderr[-300:]})")
        s0 = summary(plain)
        t.eq(s0.get("grad_checkpoint"), False, "plenty of memory: no checkpointing")
        est = s0.get("memory_estimate_bytes") or 0
        t.check(est > 0, f"the run reports its memory estimate ({est})")
        forced = run(*common, "--out", os.path.join(d, "b"), "--grad-checkpoint")
        s1 = summary(forced)
        t.eq(s1.get("grad_checkpoint"), True, "--grad-checkpoint turns it on")
        t.eq(s1.get("train_loss"), s0.get("train_loss"), "checkpointing gives the same loss, bit for bit")
        t.check((s1.get("memory_estimate_bytes") or est) < est, "and a smaller estimate")
        env = dict(os.environ, RETUNE_MEMORY_LIMIT=str(int(est / 0.9 - 1)))
        auto = subprocess.run([BIN, *common, "--out", os.path.join(d, "c")], capture_output=True,
                              text=True, timeout=600, env=env)
        t.eq(auto.returncode, 0, f"a budget just under the estimate still trains ({auto.stderr[-300:]})")
        t.eq(summary(auto).get("grad_checkpoint"), True, "by turning checkpointing on by itself")
        env["RETUNE_MEMORY_LIMIT"] = "1000000"
        refused = subprocess.run([BIN, *common, "--out", os.path.join(d, "e")], capture_output=True,
                                 text=True, timeout=600, env=env)
        t.check(refused.returncode != 0, "a budget far too small is refused")
        t.check("needs" in refused.stderr and "GiB available" in refused.stderr and
                "--batch-size" in refused.stderr, f"with the numbers and what helps: {refused.stderr.strip()[-300:]}")
        t.check(not os.path.exists(os.path.join(d, "e")), "and writes nothing")
        bf = run(*common, "--out", os.path.join(d, "f"), "--dtype", "bf16")
        t.eq(bf.returncode, 0, f"a bf16 base trains ({bf.stderr[-300:]})")
        lb, l0 = summary(bf).get("train_loss"), s0.get("train_loss")
        t.check(lb is not None and l0 is not None and abs(lb - l0) < 0.05 * abs(l0),
                f"to about the fp32 base's loss (bf16 {lb}, fp32 {l0})")
        bad = run(*common, "--out", os.path.join(d, "g"), "--dtype", "int4")
        t.check(bad.returncode != 0 and "--dtype" in bad.stderr, "--dtype int4 is refused by name")
    finally:
        remove(d)


def test_bad_arguments():
    d = temp_dir()
    try:
        train = os.path.join(d, "train.jsonl")
        write_dataset(train, 4)
        empty = os.path.join(d, "empty.jsonl")
        open(empty, "w").close()
        bad = os.path.join(d, "bad.jsonl")
        with open(bad, "w") as f:
            f.write(open(train).readline())
            f.write('{"messages": [{"role": "user", "content": "no answer"}]}\n')
        base = ["train", "--model", MODEL, "--out", os.path.join(d, "o")]
        cases = [
            (base + ["--train", train, "--method", "sideways"], "--method"),
            (base + ["--method", "lora"], "--train"),
            (base + ["--train", train, "--lora-r", "0"], "--lora-r"),
            (base + ["--train", train, "--lr", "abc"], "--lr"),
            (base + ["--train", train, "--target-modules", "q_proj,nope"], "--target-modules"),
            (base + ["--train", os.path.join(d, "missing.jsonl")], "missing.jsonl"),
            (base + ["--train", bad], "line 2"),
            (base + ["--train", empty], "has no examples"),
            (["train", "--model", os.path.join(d, "nomodel"), "--train", train, "--out", d], "config.json"),
        ]
        for args, needle in cases:
            proc = run(*args)
            t.check(proc.returncode != 0, f"{needle}: exits non-zero")
            t.check(needle in proc.stderr, f"{needle}: message names it ({proc.stderr.strip()[-200:]!r})")
    finally:
        remove(d)


for fn in [test_lora_train_generate_merge, test_full_train, test_memory_plan_and_16bit_base,
           test_bad_arguments]:
    t.run(fn)
t.finish()
