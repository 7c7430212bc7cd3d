#!/usr/bin/python3
"""bench/gguf_write.py - a Hugging Face Llama directory as one GGUF v3 file (llama.cpp).

    /usr/bin/python3 bench/gguf_write.py --model DIR --out model.gguf [--outtype auto|f32|bf16|f16]

Written from the GGUF specification (ggml's docs/gguf.md): little-endian, the
magic "GGUF", version 3, the tensor and metadata counts (u64), the metadata
key/value pairs, the tensor infos (name, dimensions fastest-first, ggml type,
offset into the data), then the tensor data, each tensor aligned to 32 bytes.

Input: config.json (model_type llama; no rope_scaling), model.safetensors or
shards with model.safetensors.index.json (F32, BF16 or F16), tokenizer.json
(byte-level BPE), tokenizer_config.json when present. Output tensors:
matrices in --outtype (auto: the checkpoint's own dtype), norms always F32.

llama.cpp's rope for the llama architecture rotates adjacent pairs (x[2i],
x[2i+1]) of each head, Hugging Face's rotates the halves (x[i], x[i+hd/2]);
the rows of q_proj and k_proj are therefore reordered per head (row
h*hd + 2i + j of the output is row h*hd + j*hd/2 + i of the input) so the two
compute the same function.

Tokenizer metadata: tokenizer.ggml.model "gpt2" with tokens (padded to the
embedding's rows with unused "[PAD<n>]" tokens, as padded vocabularies are),
token_type (added special tokens are control tokens), merges, bos/eos ids
(config.json, else tokenizer_config.json's token strings, else a special
<|endoftext|> as GPT-2 has it), add_bos_token and
the pre-tokenizer name llama.cpp knows for the split pattern (GPT-2's regex ->
"gpt-2"). One JSON line on stdout.
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGN = 32
# gguf metadata value types
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY, \
    T_UINT64, T_INT64, T_FLOAT64 = range(13)
# ggml tensor types
GGML_F32, GGML_F16, GGML_BF16 = 0, 1, 30
GGML_OF = {"f32": GGML_F32, "f16": GGML_F16, "bf16": GGML_BF16}
ELEM = {"f32": 4, "f16": 2, "bf16": 2}
# llama_ftype: all F32, mostly F16, mostly BF16
FILE_TYPE = {"f32": 0, "f16": 1, "bf16": 32}
ST_DTYPES = {"F32": "f32", "BF16": "bf16", "F16": "f16"}
# llama.cpp token types
TOK_NORMAL, TOK_UNKNOWN, TOK_CONTROL, TOK_USER_DEFINED, TOK_UNUSED, TOK_BYTE = 1, 2, 3, 4, 5, 6

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# split patterns of tokenizers llama.cpp has a pre-tokenizer for (its names)
KNOWN_SPLITS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}


class Fail(Exception):
    pass


# ---- reading the checkpoint -----------------------------------------------

class SafeTensors:
    """The tensors of one or more safetensors files, memory-mapped."""

    def __init__(self, model_dir):
        index = os.path.join(model_dir, "model.safetensors.index.json")
        if os.path.exists(index):
            files = sorted(set(json.load(open(index))["weight_map"].values()))
        elif os.path.exists(os.path.join(model_dir, "model.safetensors")):
            files = ["model.safetensors"]
        else:
            raise Fail(f"{model_dir}: no model.safetensors nor model.safetensors.index.json")
        self.where = {}
        for name in files:
            path = os.path.join(model_dir, name)
            with open(path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(n))
            data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                if info["dtype"] not in ST_DTYPES:
                    raise Fail(f"{name}: tensor {key} is {info['dtype']} (F32, BF16, F16 only)")
                self.where[key] = (data, info)

    def has(self, name):
        return name in self.where

    def dtype(self, name):
        return ST_DTYPES[self.where[name][1]["dtype"]]

    def shape(self, name):
        return tuple(self.where[name][1]["shape"])

    def raw(self, name):
        """The tensor as stored: float32, float16 or uint16 (bf16 bits), shaped."""
        data, info = self.where[name]
        lo, hi = info["data_offsets"]
        np_dtype = {"f32": "<f4", "f16": "<f2", "bf16": "<u2"}[ST_DTYPES[info["dtype"]]]
        return data[lo:hi].view(np_dtype).reshape(info["shape"])


def to_f32(x, src):
    if src == "f32":
        return np.asarray(x, dtype="<f4")
    if src == "f16":
        return np.asarray(x).astype("<f4")
    return (np.asarray(x).astype("<u4") << np.uint32(16)).view("<f4")


def convert(x, src, dst):
    """Bytes of array x (stored as src) in dst; bf16 rounds to nearest even."""
    if src == dst:
        return np.ascontiguousarray(x).tobytes()
    f = to_f32(x, src)
    if dst == "f32":
        return f.tobytes()
    if dst == "f16":
        return f.astype("<f2").tobytes()
    u = f.view("<u4")
    return ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> np.uint32(16)).astype("<u2").tobytes()


def rope_rows(w, heads):
    """Reorders each head's rows from Hugging Face's half-split rope to
    llama.cpp's pairwise one: output row 2i + j = input row j*hd/2 + i."""
    rows, cols = w.shape
    hd = rows // heads
    return w.reshape(heads, 2, hd // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


# ---- the tokenizer -------------------------------------------------------

def pre_name(pre):
    """llama.cpp's name for a tokenizer.json pre_tokenizer, or None."""
    if not pre:
        return None
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for s in steps:
        if s.get("type") == "ByteLevel" and s.get("use_regex", True):
            return "gpt-2"
        if s.get("type") == "Split":
            pat = s.get("pattern", {})
            pat = pat.get("Regex") or pat.get("String")
            if pat == GPT2_PATTERN:
                return "gpt-2"
            if pat in KNOWN_SPLITS:
                return KNOWN_SPLITS[pat]
    return None


def tokenizer_meta(model_dir, cfg, n_vocab):
    """The tokenizer.* key/value pairs (list of (key, type, value))."""
    tj = json.load(open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8"))
    model = tj.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise Fail("tokenizer.json: only byte-level BPE is written (tokenizer.ggml.model gpt2)")
    pre = tj.get("pre_tokenizer")
    if "ByteLevel" not in json.dumps(pre) and "ByteLevel" not in json.dumps(tj.get("decoder")):
        raise Fail("tokenizer.json: no ByteLevel pre-tokenizer or decoder: not a byte-level BPE")
    by_id = {}
    for tok, i in model["vocab"].items():
        by_id[i] = tok
    types = {}
    for a in tj.get("added_tokens", []):
        by_id[a["id"]] = a["content"]
        types[a["id"]] = TOK_CONTROL if a.get("special") else TOK_USER_DEFINED
    n_tok = max(by_id) + 1
    if n_tok > n_vocab:
        raise Fail(f"tokenizer.json has {n_tok} tokens, the embedding only {n_vocab} rows")
    tokens, ttypes = [], []
    for i in range(n_vocab):
        if i in by_id:
            tokens.append(by_id[i])
            ttypes.append(types.get(i, TOK_NORMAL))
        else:
            tokens.append(f"[PAD{i}]")
            ttypes.append(TOK_UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    tc_path = os.path.join(model_dir, "tokenizer_config.json")
    tc = json.load(open(tc_path, encoding="utf-8")) if os.path.exists(tc_path) else {}
    ids = {t: i for i, t in enumerate(tokens)}

    def special_id(key):
        v = cfg.get(key + "_id")
        if isinstance(v, list):
            v = v[0] if v else None
        if isinstance(v, int):
            return v
        t = tc.get(key)
        if isinstance(t, dict):
            t = t.get("content")
        if isinstance(t, str):
            return ids.get(t)
        # neither says: GPT-2's convention (and transformers' GPT2Tokenizer default)
        eot = ids.get("<|endoftext|>")
        return eot if eot is not None and ttypes[eot] == TOK_CONTROL else None

    meta = [("tokenizer.ggml.model", T_STRING, "gpt2")]
    pname = pre_name(pre)
    if pname:
        meta.append(("tokenizer.ggml.pre", T_STRING, pname))
    else:
        print("gguf_write: the pre-tokenizer is not one llama.cpp names; it uses its default",
              file=sys.stderr)
    meta += [("tokenizer.ggml.tokens", T_ARRAY, (T_STRING, tokens)),
             ("tokenizer.ggml.token_type", T_ARRAY, (T_INT32, ttypes)),
             ("tokenizer.ggml.merges", T_ARRAY, (T_STRING, merges))]
    bos, eos = special_id("bos_token"), special_id("eos_token")
    if bos is not None:
        meta.append(("tokenizer.ggml.bos_token_id", T_UINT32, bos))
    if eos is not None:
        meta.append(("tokenizer.ggml.eos_token_id", T_UINT32, eos))
    add_bos = tc.get("add_bos_token")
    if add_bos is None:  # a TemplateProcessing that writes the bos token before $A
        post = json.dumps(tj.get("post_processor") or {})
        add_bos = bos is not None and '"SpecialToken"' in post and f'"{tokens[bos]}"' in post
    meta.append(("tokenizer.ggml.add_bos_token", T_BOOL, bool(add_bos)))
    meta.append(("tokenizer.ggml.add_eos_token", T_BOOL, False))
    if isinstance(tc.get("chat_template"), str):
        meta.append(("tokenizer.chat_template", T_STRING, tc["chat_template"]))
    return meta, {"tokens": n_tok, "padded_to": n_vocab, "merges": len(merges), "pre": pname,
                  "bos": bos, "eos": eos}


# ---- writing -------------------------------------------------------------

def pack_str(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


SCALAR = {T_UINT8: "<B", T_INT8: "<b", T_UINT16: "<H", T_INT16: "<h", T_UINT32: "<I",
          T_INT32: "<i", T_FLOAT32: "<f", T_BOOL: "<?", T_UINT64: "<Q", T_INT64: "<q",
          T_FLOAT64: "<d"}


def pack_value(vtype, v):
    if vtype == T_STRING:
        return pack_str(v)
    if vtype == T_ARRAY:
        etype, items = v
        head = struct.pack("<IQ", etype, len(items))
        if etype == T_STRING:
            return head + b"".join(pack_str(s) for s in items)
        return head + np.asarray(items, dtype=SCALAR[etype]).tobytes()
    return struct.pack(SCALAR[vtype], v)


def llama_config(cfg):
    if cfg.get("model_type") != "llama":
        raise Fail(f"config.json: model_type {cfg.get('model_type')!r}: only llama is written")
    if cfg.get("rope_scaling"):
        raise Fail("config.json: rope_scaling is set; not written by this converter")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise Fail("config.json: biases are set; not written by this converter")
    heads = cfg["num_attention_heads"]
    return dict(d=cfg["hidden_size"], f=cfg["intermediate_size"], layers=cfg["num_hidden_layers"],
                heads=heads, kv=cfg.get("num_key_value_heads") or heads,
                hd=cfg.get("head_dim") or cfg["hidden_size"] // heads, vocab=cfg["vocab_size"],
                ctx=cfg.get("max_position_embeddings", 2048),
                eps=float(cfg.get("rms_norm_eps", 1e-6)), theta=float(cfg.get("rope_theta", 10000.0)),
                tied=bool(cfg.get("tie_word_embeddings", False)))


def tensor_plan(st, c):
    """(gguf name, hf name, rope heads or 0) of every tensor, in llama.cpp's order."""
    plan = [("token_embd.weight", "model.embed_tokens.weight", 0)]
    for i in range(c["layers"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        plan += [(b + "attn_norm.weight", p + "input_layernorm.weight", 0),
                 (b + "attn_q.weight", p + "self_attn.q_proj.weight", c["heads"]),
                 (b + "attn_k.weight", p + "self_attn.k_proj.weight", c["kv"]),
                 (b + "attn_v.weight", p + "self_attn.v_proj.weight", 0),
                 (b + "attn_output.weight", p + "self_attn.o_proj.weight", 0),
                 (b + "ffn_norm.weight", p + "post_attention_layernorm.weight", 0),
                 (b + "ffn_gate.weight", p + "mlp.gate_proj.weight", 0),
                 (b + "ffn_up.weight", p + "mlp.up_proj.weight", 0),
                 (b + "ffn_down.weight", p + "mlp.down_proj.weight", 0)]
    plan.append(("output_norm.weight", "model.norm.weight", 0))
    if not c["tied"] and st.has("lm_head.weight"):
        plan.append(("output.weight", "lm_head.weight", 0))
    for _, hf, _ in plan:
        if not st.has(hf):
            raise Fail(f"the checkpoint has no tensor {hf}")
    return plan


def write_gguf(model_dir, out, outtype="auto", name=None):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    c = llama_config(cfg)
    st = SafeTensors(model_dir)
    if outtype == "auto":
        outtype = st.dtype("model.embed_tokens.weight")
    plan = tensor_plan(st, c)
    tok_meta, tok_info = tokenizer_meta(model_dir, cfg, c["vocab"])
    A = "llama."
    meta = [("general.architecture", T_STRING, "llama"),
            ("general.name", T_STRING, name or os.path.basename(os.path.normpath(model_dir))),
            ("general.file_type", T_UINT32, FILE_TYPE[outtype]),
            ("general.alignment", T_UINT32, ALIGN),
            (A + "vocab_size", T_UINT32, c["vocab"]),
            (A + "context_length", T_UINT32, c["ctx"]),
            (A + "embedding_length", T_UINT32, c["d"]),
            (A + "block_count", T_UINT32, c["layers"]),
            (A + "feed_forward_length", T_UINT32, c["f"]),
            (A + "attention.head_count", T_UINT32, c["heads"]),
            (A + "attention.head_count_kv", T_UINT32, c["kv"]),
            (A + "attention.key_length", T_UINT32, c["hd"]),
            (A + "attention.value_length", T_UINT32, c["hd"]),
            (A + "rope.dimension_count", T_UINT32, c["hd"]),
            (A + "rope.freq_base", T_FLOAT32, c["theta"]),
            (A + "attention.layer_norm_rms_epsilon", T_FLOAT32, c["eps"])] + tok_meta

    infos, offset = [], 0
    for gname, hf, _ in plan:
        shape = st.shape(hf)
        ttype = outtype if len(shape) == 2 else "f32"
        nbytes = int(np.prod(shape)) * ELEM[ttype]
        infos.append((gname, hf, shape, ttype, offset, nbytes))
        offset += nbytes + (-nbytes % ALIGN)

    t0 = time.time()
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(infos), len(meta)))
        for key, vtype, v in meta:
            f.write(pack_str(key) + struct.pack("<I", vtype) + pack_value(vtype, v))
        for gname, _, shape, ttype, off, _ in infos:
            dims = list(reversed(shape))  # ggml's ne[0] is the fastest-moving (a row's length)
            f.write(pack_str(gname) + struct.pack("<I", len(dims)) +
                    struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", GGML_OF[ttype], off))
        f.write(b"\0" * (-f.tell() % ALIGN))
        base = f.tell()
        for (gname, hf, shape, ttype, off, nbytes), (_, _, heads) in zip(infos, plan):
            x = st.raw(hf)
            if heads:
                x = rope_rows(x, heads)
            data = convert(x, st.dtype(hf), ttype)
            assert len(data) == nbytes and f.tell() == base + off, gname
            f.write(data)
            f.write(b"\0" * (-nbytes % ALIGN))
    os.replace(tmp, out)
    return {"bench": "gguf_write", "out": out, "outtype": outtype, "tensors": len(infos),
            "metadata": len(meta), "bytes": os.path.getsize(out),
            "seconds": round(time.time() - t0, 2), "tokenizer": tok_info}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face model directory")
    ap.add_argument("--out", required=True, help="the .gguf file to write")
    ap.add_argument("--outtype", choices=("auto", "f32", "bf16", "f16"), default="auto")
    ap.add_argument("--name", help="general.name (default: the directory's name)")
    a = ap.parse_args()
    try:
        print(json.dumps(write_gguf(a.model, a.out, a.outtype, a.name)))
    except Fail as e:
        raise SystemExit(f"gguf_write: {e}")


if __name__ == "__main__":
    main()
