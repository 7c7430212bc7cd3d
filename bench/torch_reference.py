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

    /usr/bin/python3 bench/torch_reference.py --method lora --steps 5 --warmup 3
"""
import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG = dict(vocab=8192, hidden=512, layers=8, heads=8, kv_heads=8, head_dim=64,
              ffn=1376, eps=1e-5, rope_theta=10000.0)
LORA_R, LORA_ALPHA, LORA_TARGETS = 8, 16.0, ("q_proj", "v_proj")


def rss_mb():
    """Peak resident set of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


IMPORT_RSS_MB = rss_mb()


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class LoRALinear(nn.Module):
    """y = base(x) + scaling * B(A(x)); base frozen, A Kaiming-uniform, B zero (PEFT)."""

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
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, hd = c["hidden"], c["head_dim"]
        self.h, self.kvh, self.hd = c["heads"], c["kv_heads"], hd
        self.q_proj = nn.Linear(d, self.h * hd, bias=False)
        self.k_proj = nn.Linear(d, self.kvh * hd, bias=False)
        self.v_proj = nn.Linear(d, self.kvh * hd, bias=False)
        self.o_proj = nn.Linear(self.h * hd, d, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kvh, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kvh, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.kvh != self.h:
            k = k.repeat_interleave(self.h // self.kvh, dim=1)
            v = v.repeat_interleave(self.h // self.kvh, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.hd)
        scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(B, T, self.h * self.hd)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, f = c["hidden"], c["ffn"]
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden"], c["eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden"], c["eps"])
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab"], c["hidden"])
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["layers"]))
        self.norm = RMSNorm(c["hidden"], c["eps"])
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)
        hd = c["head_dim"]
        inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, ids, targets):
        B, T = ids.shape
        t = torch.arange(T, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        logits = F.linear(self.norm(x), self.embed_tokens.weight)  # tied lm_head
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def add_lora(model):
    """Freezes everything, then wraps the target projections with LoRA."""
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.layers:
        for name in LORA_TARGETS:
            setattr(layer.self_attn, name,
                    LoRALinear(getattr(layer.self_attn, name), LORA_R, LORA_ALPHA))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", choices=("lora", "full"), default="lora")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model = Llama(CONFIG)
    if a.method == "lora":
        add_lora(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    init_rss = rss_mb()

    fwd, bwd, optim, total, losses = [], [], [], [], []
    for i in range(a.warmup + a.steps):
        seq = torch.randint(0, CONFIG["vocab"], (a.batch, a.seq + 1))
        ids, targets = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = model(ids, targets)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        t3 = time.perf_counter()
        losses.append(loss.item())
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
    }), flush=True)


if __name__ == "__main__":
    main()
