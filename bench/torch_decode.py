#!/usr/bin/python3
"""bench/torch_decode.py - eager PyTorch decoding with a KV cache, the torch side of
bench/serve_bench.py.

    /usr/bin/python3 bench/torch_decode.py --model DIR [--dtype f32|bf16] [--tokens N]
        [--streams 1,8,32] [--prompt 16] [--long 512] [--threads 2] [--ids FILE]

The modules of bench/torch_reference.py (RMSNorm, Attention's projections, MLP,
the rotate_half rope of Hugging Face) with the weights of the model directory's
safetensors (read by bench/gguf_write.py's reader, no copy of a bf16 checkpoint
beyond the one torch tensor per matrix), run as Hugging Face's eager Llama runs
under torch.inference_mode: a KV cache per layer preallocated for (streams,
prompt + tokens), attention as matmul + masked softmax in fp32 (cast back),
greedy argmax. A bf16 model runs in bf16 (norm statistics and softmax in fp32,
as LlamaRMSNorm and eager attention do).

  streams N  N prompts of --prompt tokens (ids from --ids, else random) prefilled
             as one batch, then --tokens greedy decode steps of N rows each;
             decode_tokens_per_s = N * (tokens - 1) / (time of steps 2..tokens),
             aggregate_tokens_per_s = N * tokens / (prefill + all steps) (as the
             other engines' wall clock)
  ttft       the --long prompt prefilled in one forward and its first token
             argmaxed, twice (the second with the cache rebuilt: no prefix cache)
One JSON line on stdout.
"""
import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as tr  # noqa: E402
from gguf_write import SafeTensors  # noqa: E402

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def load_model(model_dir, dtype):
    cfg = tr.hf_config(os.path.join(model_dir, "config.json"))
    m = tr.Llama(cfg, dtype)
    st = SafeTensors(model_dir)
    state = {}
    for name in m.state_dict():
        hf = name if name.startswith("lm_head") else "model." + name
        x = st.raw(hf)
        src = st.dtype(hf)
        if src == "bf16":
            t = torch.from_numpy(np.ascontiguousarray(x).view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(np.array(x))
        state[name] = t.to(dtype)
    m.load_state_dict(state)
    hd = cfg["head_dim"]
    m.inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    return m.eval(), cfg


class Decoder:
    """Prefill + one-token steps over a preallocated per-layer KV cache."""

    def __init__(self, m, cfg, batch, max_len):
        self.m, self.c = m, cfg
        dt = m.embed_tokens.weight.dtype
        shape = (batch, cfg["kv_heads"], max_len, cfg["head_dim"])
        self.k = [torch.zeros(shape, dtype=dt) for _ in m.layers]
        self.v = [torch.zeros(shape, dtype=dt) for _ in m.layers]
        t = torch.arange(max_len, dtype=torch.float32)
        emb = torch.cat((torch.outer(t, m.inv_freq),) * 2, dim=-1)
        self.cos, self.sin = emb.cos().to(dt), emb.sin().to(dt)
        self.head = m.embed_tokens.weight if m.lm_head is None else m.lm_head.weight
        self.past = 0

    def attention(self, a, i, x, T):
        B, past = x.shape[0], self.past
        q = a.q_proj(x).view(B, T, a.h, a.hd).transpose(1, 2)
        k = a.k_proj(x).view(B, T, a.kvh, a.hd).transpose(1, 2)
        v = a.v_proj(x).view(B, T, a.kvh, a.hd).transpose(1, 2)
        cos, sin = self.cos[past:past + T], self.sin[past:past + T]
        q = q * cos + tr.rotate_half(q) * sin
        k = k * cos + tr.rotate_half(k) * sin
        self.k[i][:B, :, past:past + T] = k
        self.v[i][:B, :, past:past + T] = v
        K, V = self.k[i][:B, :, :past + T], self.v[i][:B, :, :past + T]
        if a.kvh != a.h:  # HF's repeat_kv
            K = K.repeat_interleave(a.h // a.kvh, dim=1)
            V = V.repeat_interleave(a.h // a.kvh, dim=1)
        scores = torch.matmul(q, K.transpose(2, 3)) / math.sqrt(a.hd)
        if T > 1:
            mask = torch.ones(T, past + T, dtype=torch.bool).triu(past + 1)
            scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, V).transpose(1, 2).reshape(B, T, a.h * a.hd)
        return a.o_proj(out)

    def forward(self, ids):
        """ids (B, T) at positions [past, past + T) -> next-token ids (B,)."""
        T = ids.shape[1]
        x = self.m.embed_tokens(ids)
        for i, layer in enumerate(self.m.layers):
            x = x + self.attention(layer.self_attn, i, layer.input_layernorm(x), T)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.past += T
        logits = F.linear(self.m.norm(x[:, -1]), self.head).float()
        return logits.argmax(-1)


def run_streams(m, cfg, prompts, tokens):
    B = len(prompts)
    dec = Decoder(m, cfg, B, len(prompts[0]) + tokens + 1)
    t0 = time.perf_counter()
    nxt = dec.forward(torch.tensor(prompts))
    t1 = time.perf_counter()
    steps, out = [], [nxt]
    for _ in range(tokens - 1):
        s0 = time.perf_counter()
        nxt = dec.forward(nxt[:, None])
        steps.append(time.perf_counter() - s0)
        out.append(nxt)
    wall = time.perf_counter() - t0
    return {"streams": B, "decode_tokens_per_s": round(B * len(steps) / sum(steps), 2),
            "aggregate_tokens_per_s": round(B * tokens / wall, 2), "prefill_s": round(t1 - t0, 4),
            "step_s_median": round(sorted(steps)[len(steps) // 2], 5), "wall_s": round(wall, 3),
            "first_ids": [int(t[0]) for t in out[:16]]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="f32")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--long", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ids", help="JSON {short: [[ids]...], long: [ids]} (default: random ids)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    m, cfg = load_model(a.model, DTYPES[a.dtype])
    load_s = time.perf_counter() - t0
    rnd = random.Random(1)
    P = json.load(open(a.ids)) if a.ids else {
        "short": [[rnd.randrange(cfg["vocab"]) for _ in range(a.prompt)] for _ in range(32)],
        "long": [rnd.randrange(cfg["vocab"]) for _ in range(a.long)]}
    short = [p[:a.prompt] for p in P["short"]]
    if min(map(len, short)) < a.prompt:
        raise SystemExit(f"torch_decode: every short prompt needs {a.prompt} ids")
    out = {"bench": "torch_decode", "impl": "torch", "torch": torch.__version__, "dtype": a.dtype,
           "threads": torch.get_num_threads(), "model": a.model, "load_s": round(load_s, 3),
           "tokens": a.tokens, "prompt_tokens": a.prompt, "streams": {}}
    with torch.inference_mode():
        run_streams(m, cfg, short[:1], 4)  # warm-up
        for n in [int(s) for s in a.streams.split(",") if s]:
            sys.stderr.write(f"torch_decode: {n} streams\n")
            out["streams"][n] = run_streams(m, cfg, [short[i % len(short)] for i in range(n)], a.tokens)
        if a.long:
            sys.stderr.write(f"torch_decode: time to first token, {a.long}-token prompt\n")
            ttft = []
            for _ in range(2):
                s0 = time.perf_counter()
                Decoder(m, cfg, 1, a.long + 1).forward(torch.tensor([P["long"][:a.long]]))
                ttft.append(round(time.perf_counter() - s0, 4))
            out["ttft"] = {"prompt_tokens": a.long, "first_s": ttft[0], "again_s": ttft[1]}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
