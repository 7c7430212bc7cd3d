#!/usr/bin/env python3
"""bench/gpu_torch.py - the PyTorch side of bench/gpu_check.sh (needs torch,
transformers and peft; run one mode per process so GPU memory is per run).

Modes, each printing one JSON line on stdout:

  make-model --out DIR --adapters DIR [--n-adapters K] [--tokenizer DIR]
      A Llama-architecture model of about 1.2B parameters (the shape of
      Llama 3.2 1B: hidden 2048, 16 layers, 32 heads, 8 KV heads, FFN 8192,
      vocab 128256, tied embeddings) with random weights, saved in HF format
      (bf16 safetensors), plus K random PEFT LoRA adapters (r 16, alpha 32,
      q/k/v/o) under the adapters directory. The tokenizer is the tiny_chat
      fixture's, its vocabulary padded with never-produced tokens to the
      model's 128256 so that any sampled id decodes.
  train --model DIR --method lora|full --precision fp32|bf16 ...
      HF LlamaForCausalLM (+ PEFT LoRA r 16, alpha 32, q/k/v/o) trained the
      usual eager way on random token batches: AdamW, clip 1.0. fp32 is
      fp32 weights with TF32 matmuls (retune's numerics); bf16 is the usual
      PEFT recipe: bf16 base, fp32 adapters (full: fp32 weights), autocast.
      Reports tokens/s over the timed steps and torch's peak memory.
  decode --model DIR --adapters a,b,... --batch B --new N
      Greedy batched generation of N new tokens for B prompts, without
      adapters and with the B rows spread over the adapters (PEFT mixed
      batches, adapter_names=...); tokens/s of each.
"""
import argparse
import json
import os
import shutil
import sys
import time

import torch

CONFIG = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
              num_attention_heads=32, num_key_value_heads=8, head_dim=64,
              max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=500000.0,
              tie_word_embeddings=True, hidden_act="silu")
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
TOKENS_IN_TOKENIZER = 1163  # random inputs stay inside the fixture tokenizer's ids


def emit(obj):
    print(json.dumps(obj), flush=True)


def padded_tokenizer(src, dst, vocab):
    """Copies the tokenizer of src to dst with its BPE vocabulary padded to
    vocab ids by plain ASCII tokens no merge produces."""
    with open(os.path.join(src, "tokenizer.json")) as f:
        tok = json.load(f)
    used = set(tok["model"]["vocab"].values()) | {a["id"] for a in tok["added_tokens"]}
    names = set(tok["model"]["vocab"])
    for i in range(vocab):
        if i not in used:
            name = f"zqx{i}"
            assert name not in names
            tok["model"]["vocab"][name] = i
    with open(os.path.join(dst, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    shutil.copy(os.path.join(src, "tokenizer_config.json"), dst)


def make_model(args):
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, get_peft_model

    t0 = time.time()
    torch.manual_seed(1234)
    eos = 1162
    cfg = LlamaConfig(**CONFIG, bos_token_id=None, eos_token_id=eos, pad_token_id=1160,
                      torch_dtype="bfloat16")
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True, max_shard_size="50GB")  # one file
    padded_tokenizer(args.tokenizer, args.out, CONFIG["vocab_size"])
    n_params = sum(p.numel() for p in model.parameters())
    names = []
    peft_model = get_peft_model(model, LoraConfig(**LORA, task_type="CAUSAL_LM"))
    for i in range(args.n_adapters):
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.normal_(0.0, 0.02)
        d = os.path.join(args.adapters, f"a{i}")
        peft_model.save_pretrained(d)
        names.append(d)
    emit({"mode": "make-model", "params": n_params, "adapters": names, "seconds": time.time() - t0})


def load_model(path, dtype):
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(path, torch_dtype=dtype).cuda()


def train(args):
    from peft import LoraConfig, get_peft_model

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    bf16 = args.precision == "bf16"
    base_dtype = torch.bfloat16 if bf16 and args.method == "lora" else torch.float32
    model = load_model(args.model, base_dtype)
    if args.method == "lora":
        model = get_peft_model(model, LoraConfig(**LORA, task_type="CAUSAL_LM"))
        for name, p in model.named_parameters():  # PEFT keeps adapters fp32 (autocast_adapter_dtype)
            if p.requires_grad:
                p.data = p.data.float()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    g = torch.Generator(device="cuda").manual_seed(0)
    step_times = []
    for step in range(args.warmup + args.steps):
        ids = torch.randint(0, TOKENS_IN_TOKENIZER, (args.batch, args.seq), device="cuda", generator=g)
        torch.cuda.synchronize()
        t0 = time.time()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= args.warmup:
            step_times.append(time.time() - t0)
    total = sum(step_times)
    emit({"mode": "train", "method": args.method, "precision": args.precision,
          "tokens_per_s": args.batch * args.seq * len(step_times) / total,
          "step_s": total / len(step_times), "loss": float(loss),
          "trainable_params": sum(p.numel() for p in params),
          "torch_peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
          "torch_peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20})


def generate_timed(model, ids, new, **kw):
    torch.cuda.synchronize()
    t0 = time.time()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                         min_new_tokens=new, do_sample=False, pad_token_id=1160, **kw)
    torch.cuda.synchronize()
    dt = time.time() - t0
    return (out.shape[1] - ids.shape[1]) * ids.shape[0] / dt


def decode(args):
    from peft import PeftModel

    torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = load_model(args.model, dtype)
    model.eval()
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, TOKENS_IN_TOKENIZER, (args.batch, args.prompt_len), device="cuda", generator=g)
    adapters = [a for a in args.adapters.split(",") if a]
    res = {"mode": "decode", "precision": args.precision, "batch": args.batch, "new": args.new}
    with torch.no_grad():
        generate_timed(model, ids[:, :8], 4)  # warm up
        res["base_tokens_per_s"] = max(generate_timed(model, ids, args.new) for _ in range(2))
        if adapters:
            pm = PeftModel.from_pretrained(model, adapters[0], adapter_name="a0")
            for i, a in enumerate(adapters[1:], 1):
                pm.load_adapter(a, adapter_name=f"a{i}")
            names = [f"a{i % len(adapters)}" for i in range(args.batch)]
            try:
                generate_timed(pm, ids[:, :8], 4, adapter_names=names)
                res["lora_tokens_per_s"] = max(generate_timed(pm, ids, args.new, adapter_names=names)
                                               for _ in range(2))
                res["lora_mode"] = "mixed adapters (adapter_names)"
            except (TypeError, ValueError) as e:  # an old PEFT without mixed batches
                pm.set_adapter("a0")
                generate_timed(pm, ids[:, :8], 4)
                res["lora_tokens_per_s"] = max(generate_timed(pm, ids, args.new) for _ in range(2))
                res["lora_mode"] = f"one adapter (mixed batches unsupported: {e})"[:200]
    res["torch_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
    emit(res)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("make-model")
    m.add_argument("--out", required=True)
    m.add_argument("--adapters", required=True)
    m.add_argument("--n-adapters", type=int, default=4)
    m.add_argument("--tokenizer", default="tests/fixtures/tiny_chat")
    t = sub.add_parser("train")
    t.add_argument("--model", required=True)
    t.add_argument("--method", choices=["lora", "full"], default="lora")
    t.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--seq", type=int, default=512)
    t.add_argument("--steps", type=int, default=6)
    t.add_argument("--warmup", type=int, default=2)
    d = sub.add_parser("decode")
    d.add_argument("--model", required=True)
    d.add_argument("--adapters", default="")
    d.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    d.add_argument("--batch", type=int, default=16)
    d.add_argument("--new", type=int, default=64)
    d.add_argument("--prompt-len", type=int, default=32)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_torch.py: no CUDA device", file=sys.stderr)
        return 1
    {"make-model": make_model, "train": train, "decode": decode}[args.mode](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
