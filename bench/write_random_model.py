#!/usr/bin/python3
"""Writes a random model of a released config.json's exact shape, streaming.

    /usr/bin/python3 bench/write_random_model.py \\
        --config tests/fixtures/real_configs/llama-3.1-8b.json --out /var/tmp/llama8b [--dtype bf16]

A Llama-3.1-8B in bf16 is 16 GB: more than half this machine's memory, and
twice that as the fp32 model that train_bench --write-model builds before
saving. This writer never holds more than one chunk of a tensor: each tensor
is drawn in chunks of 16M values, converted and appended to its shard.

The directory is what Hugging Face writes: config.json (torch_dtype set),
shards model-0000k-of-0000n.safetensors of about 5 GB and
model.safetensors.index.json. Tensor names are transformers' (Llama, Mistral,
Qwen2, Qwen3). Matrices are normal(0, 0.02), norms 1, biases 0, as
transformers' _init_weights; bf16 is rounded to nearest even from float32.
No tokenizer is written: the benchmarks feed token ids.
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np

CHUNK = 1 << 24
SHARD_BYTES = 5 * 10**9
DTYPES = {"bf16": ("BF16", "bfloat16", 2), "f16": ("F16", "float16", 2),
          "f32": ("F32", "float32", 4)}


def tensor_list(c):
    """(name, shape, kind) of every tensor, in transformers' order."""
    d, f, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    h, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    hd = c.get("head_dim") or d // h
    if c.get("model_type") == "qwen3" and not c.get("head_dim"):
        hd = 128
    bias = c.get("model_type") == "qwen2" or c.get("attention_bias", False)
    out = [("model.embed_tokens.weight", (c["vocab_size"], d), "matrix")]
    for i in range(L):
        p = f"model.layers.{i}."
        out.append((p + "input_layernorm.weight", (d,), "norm"))
        for name, rows in (("q_proj", h * hd), ("k_proj", kv * hd), ("v_proj", kv * hd)):
            out.append((p + f"self_attn.{name}.weight", (rows, d), "matrix"))
            if bias:
                out.append((p + f"self_attn.{name}.bias", (rows,), "bias"))
        if c.get("model_type") == "qwen3":
            out.append((p + "self_attn.q_norm.weight", (hd,), "norm"))
            out.append((p + "self_attn.k_norm.weight", (hd,), "norm"))
        out.append((p + "self_attn.o_proj.weight", (d, h * hd), "matrix"))
        out.append((p + "post_attention_layernorm.weight", (d,), "norm"))
        out.append((p + "mlp.gate_proj.weight", (f, d), "matrix"))
        out.append((p + "mlp.up_proj.weight", (f, d), "matrix"))
        out.append((p + "mlp.down_proj.weight", (d, f), "matrix"))
    out.append(("model.norm.weight", (d,), "norm"))
    if not c.get("tie_word_embeddings", False):
        out.append(("lm_head.weight", (c["vocab_size"], d), "matrix"))
    return out


def encode(x, dtype):
    """float32 array -> bytes in dtype (bf16: round to nearest even)."""
    if dtype == "f32":
        return x.astype("<f4").tobytes()
    if dtype == "f16":
        return x.astype("<f2").tobytes()
    u = x.astype("<f4").view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype("<u2").tobytes()


def shard_plan(tensors, size):
    """Splits the tensors into shards of about SHARD_BYTES each."""
    shards, cur, cur_bytes = [], [], 0
    for t in tensors:
        n = int(np.prod(t[1])) * size
        if cur and cur_bytes + n > SHARD_BYTES:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(t)
        cur_bytes += n
    return shards + [cur] if cur else shards


def write_shard(path, tensors, dtype, rng):
    st_dtype, _, size = DTYPES[dtype]
    header, off = {}, 0
    for name, shape, _ in tensors:
        n = int(np.prod(shape)) * size
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj)
        for name, shape, kind in tensors:
            left = int(np.prod(shape))
            while left:
                n = min(left, CHUNK)
                if kind == "matrix":
                    x = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
                else:
                    x = np.full(n, 1.0 if kind == "norm" else 0.0, dtype=np.float32)
                f.write(encode(x, dtype))
                left -= n
    os.replace(path + ".tmp", path)
    return off


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    t0 = time.time()
    cfg = json.load(open(a.config))
    cfg["torch_dtype"] = DTYPES[a.dtype][1]
    os.makedirs(a.out, exist_ok=True)
    tensors = tensor_list(cfg)
    shards = shard_plan(tensors, DTYPES[a.dtype][2])
    rng = np.random.default_rng(a.seed)
    weight_map, total = {}, 0
    for k, part in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        total += write_shard(os.path.join(a.out, name), part, a.dtype, rng)
        weight_map.update({t[0]: name for t in part})
        print(f"  wrote {name} ({time.time() - t0:.0f} s)", file=sys.stderr)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    json.dump(index, open(os.path.join(a.out, "model.safetensors.index.json"), "w"), indent=1)
    json.dump(cfg, open(os.path.join(a.out, "config.json"), "w"), indent=1)
    params = sum(int(np.prod(t[1])) for t in tensors)
    print(json.dumps({"bench": "write_random_model", "dir": a.out, "dtype": a.dtype,
                      "params": params, "bytes": total, "shards": len(shards),
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
