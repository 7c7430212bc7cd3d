#!/usr/bin/python3
"""bench/torch_reference.py - the eager PyTorch side of the training benchmark.

A plain nn.Module Llama (RMSNorm, RoPE in the rotate_half convention, causal
attention as explicit matmul + masked softmax, SwiGLU MLP, tied lm_head,
cross-entropy), trained the way Hugging Face + PEFT would do it eagerly:
LoRA as a separate A/B path beside a frozen base Linear (requires_grad=False),
or every parameter for full fine-tuning; torch.optim.AdamW over the trainable
parameters; clip_grad_norm_(1.0); random token batches with every target
counted. Same configuration and step as bench/train_bench.c.

Run one method per process (peak RSS is per process). Prints one JSON line:
tokens_per_s, step_s_median, phase split, peak_rss_mb (resource.getrusage of
this process) and the RSS right after `import torch`.

Real shapes (issue 10): --config FILE builds the model of a Hugging Face
config.json at full depth (GQA, Qwen2's q/k/v biases, tied or untied head),
with the base in --dtype (bf16 or f32). A bf16 base is run as Hugging Face +
PEFT run it with torch_dtype=bfloat16 and no autocast: every base tensor
(embedding, projections, biases, norms) is bf16 with requires_grad False and
activations flow in bf16; RMSNorm computes in fp32 and casts back (as
LlamaRMSNorm), softmax runs in fp32 and is cast back to bf16 (as eager
attention), RoPE's cos/sin are cast to bf16, logits are upcast to fp32 for
the loss (as ForCausalLMLoss); LoRA A/B are fp32 (PEFT's default
autocast_adapter_dtype), the input is cast to fp32 for the adapter path and
the sum is cast back to bf16 (PEFT's lora.Linear.forward). The modules are
created directly in that dtype, so no fp32 copy of the model ever exists.
--lora-r, --lora-alpha and --targets qv|all set the adapter. Each phase's
time is also written to stderr as it ends (a run cut short by a timeout
still says how far it got).

    /usr/bin/python3 bench/torch_reference.py --method lora --steps 5 --warmup 3
    /usr/bin/python3 bench/torch_reference.py --config tests/fixtures/real_configs/smollm2-135m.json \
        --dtype bf16 --lora-r 16 --lora-alpha 32 --targets all --batch 4 --seq 512
"""
import argparse
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG = dict(vocab=8192, hidden=512, layers=8, heads=8, kv_heads=8, head_dim=64,
              ffn=1376, eps=1e-5, rope_theta=10000.0, bias=False, tied=True)
LORA_R, LORA_ALPHA, LORA_TARGETS = 8, 16.0, ("q_proj", "v_proj")
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def hf_config(path):
    """The model shape of a Hugging Face config.json (Llama, Mistral, Qwen2)."""
    with open(path) as f:
        c = json.load(f)
    heads = c["num_attention_heads"]
    return dict(vocab=c["vocab_size"], hidden=c["hidden_size"], layers=c["num_hidden_layers"],
                heads=heads, kv_heads=c.get("num_key_value_heads", heads),
                head_dim=c.get("head_dim") or c["hidden_size"] // heads,
                ffn=c["intermediate_size"], eps=c.get("rms_norm_eps", 1e-6),
                rope_theta=float(c.get("rope_theta", 10000.0)),
                bias=c.get("model_type") == "qwen2" or bool(c.get("attention_bias", False)),
                tied=bool(c.get("tie_word_embeddings", False)))


def rss_mb():
    """Peak resident set of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


IMPORT_RSS_MB = rss_mb()
START = time.monotonic()


class RMSNorm(nn.Module):
    """LlamaRMSNorm: fp32 statistics, the result cast back to the input's dtype."""

    def __init__(self, d, eps, dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d, dtype=dtype))
        self.eps = eps

    def forward(self, x):
        if x.dtype == torch.float32:
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class LoRALinear(nn.Module):
    """y = base(x) + scaling * B(A(x)); base frozen, A Kaiming-uniform, B zero (PEFT).
    A and B are fp32; with a 16-bit base the input is cast to fp32 for the
    adapter path and the sum back to the base's dtype (PEFT's lora.Linear)."""

    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r

    def forward(self, x):
        result = self.base(x)
        if x.dtype == torch.float32:
            return result + self.lora_B(self.lora_A(x)) * self.scaling
        out_dtype = result.dtype
        result = result + self.lora_B(self.lora_A(x.to(self.lora_A.weight.dtype))) * self.scaling
        return result.to(out_dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c, dtype):
        super().__init__()
        d, hd, b = c["hidden"], c["head_dim"], c["bias"]
        self.h, self.kvh, self.hd = c["heads"], c["kv_heads"], hd
        self.q_proj = nn.Linear(d, self.h * hd, bias=b, dtype=dtype)
        self.k_proj = nn.Linear(d, self.kvh * hd, bias=b, dtype=dtype)
        self.v_proj = nn.Linear(d, self.kvh * hd, bias=b, dtype=dtype)
        self.o_proj = nn.Linear(self.h * hd, d, bias=False, dtype=dtype)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kvh, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kvh, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.kvh != self.h:  # HF's repeat_kv
            k = k.repeat_interleave(self.h // self.kvh, dim=1)
            v = v.repeat_interleave(self.h // self.kvh, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.hd)
        scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(B, T, self.h * self.hd)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, c, dtype):
        super().__init__()
        d, f = c["hidden"], c["ffn"]
        self.gate_proj = nn.Linear(d, f, bias=False, dtype=dtype)
        self.up_proj = nn.Linear(d, f, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(f, d, bias=False, dtype=dtype)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c, dtype):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden"], c["eps"], dtype)
        self.self_attn = Attention(c, dtype)
        self.post_attention_layernorm = RMSNorm(c["hidden"], c["eps"], dtype)
        self.mlp = MLP(c, dtype)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, c, dtype=torch.float32):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab"], c["hidden"], dtype=dtype)
        self.layers = nn.ModuleList(Layer(c, dtype) for _ in range(c["layers"]))
        self.norm = RMSNorm(c["hidden"], c["eps"], dtype)
        self.lm_head = None if c["tied"] else nn.Linear(c["hidden"], c["vocab"], bias=False,
                                                         dtype=dtype)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    nn.init.normal_(p, 0.0, 0.02)
                elif name.endswith(".bias"):
                    nn.init.zeros_(p)
        hd = c["head_dim"]
        inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, ids, targets):
        B, T = ids.shape
        t = torch.arange(T, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        dt = self.embed_tokens.weight.dtype
        cos, sin = emb.cos()[None, None].to(dt), emb.sin()[None, None].to(dt)
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        head = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(self.norm(x), head).float()  # upcast for the loss (HF)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def add_lora(model, r=LORA_R, alpha=LORA_ALPHA, targets=LORA_TARGETS):
    """Freezes everything, then wraps the target projections with fp32 LoRA."""
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.layers:
        for name in targets:
            parent = layer.mlp if name in ("gate_proj", "up_proj", "down_proj") else layer.self_attn
            setattr(parent, name, LoRALinear(getattr(parent, name), r, alpha))


def note(msg):
    """A progress line on stderr, with the peak RSS so far."""
    sys.stderr.write(f"torch_reference: [{time.monotonic() - START:.1f} s] {msg} "
                     f"(peak RSS {rss_mb():.0f} MiB)\n")
    sys.stderr.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", choices=("lora", "full"), default="lora")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--config", help="a Hugging Face config.json (default: the toy shape)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="f32",
                    help="dtype of the frozen base (LoRA) (default f32)")
    ap.add_argument("--lora-r", type=int, default=LORA_R)
    ap.add_argument("--lora-alpha", type=float, default=LORA_ALPHA)
    ap.add_argument("--targets", choices=("qv", "all"), default="qv")
    a = ap.parse_args()
    if a.method == "full" and a.dtype != "f32":
        raise SystemExit("torch_reference.py: full fine-tuning runs in f32 here")

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = hf_config(a.config) if a.config else CONFIG
    model = Llama(cfg, DTYPES[a.dtype])
    if a.method == "lora":
        add_lora(model, a.lora_r, a.lora_alpha, ALL_TARGETS if a.targets == "all" else LORA_TARGETS)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    init_rss = rss_mb()
    note(f"model built: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
         f"base {a.dtype}")

    fwd, bwd, optim, total, losses = [], [], [], [], []
    for i in range(a.warmup + a.steps):
        seq = torch.randint(0, cfg["vocab"], (a.batch, a.seq + 1))
        ids, targets = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = model(ids, targets)
        t1 = time.perf_counter()
        note(f"step {i + 1}/{a.warmup + a.steps}: forward {t1 - t0:.2f} s")
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        t3 = time.perf_counter()
        losses.append(loss.item())
        note(f"step {i + 1}/{a.warmup + a.steps}{' (warm-up)' if i < a.warmup else ''}: "
             f"forward {t1 - t0:.2f} s, backward {t2 - t1:.2f} s, optimizer {t3 - t2:.2f} s")
        if i >= a.warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            optim.append(t3 - t2)
            total.append(t3 - t0)

    med = statistics.median(total)
    tokens = a.batch * a.seq
    print(json.dumps({
        "bench": "train", "impl": "torch", "method": a.method, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "batch": a.batch, "seq": a.seq,
        "tokens_per_step": tokens,
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
        "warmup": a.warmup, "steps": a.steps,
        "tokens_per_s": round(tokens / med, 1), "step_s_median": round(med, 4),
        "step_s_min": round(min(total), 4), "step_s_max": round(max(total), 4),
        "forward_s": round(statistics.median(fwd), 4),
        "backward_s": round(statistics.median(bwd), 4),
        "optimizer_s": round(statistics.median(optim), 4),
        "peak_rss_mb": round(rss_mb(), 1), "init_peak_rss_mb": round(init_rss, 1),
        "import_rss_mb": round(IMPORT_RSS_MB, 1),
        "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
        "config": a.config or "", "dtype": a.dtype, "lora_r": a.lora_r,
        "lora_alpha": a.lora_alpha, "lora_targets": a.targets,
        "layers": cfg["layers"], "hidden": cfg["hidden"], "vocab": cfg["vocab"],
    }), flush=True)


if __name__ == "__main__":
    main()
