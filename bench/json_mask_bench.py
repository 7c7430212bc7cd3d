#!/usr/bin/python3
"""The per-token cost of response_format (constrained decoding) on a
vocabulary of Qwen2.5's size, through the real server.

    python3 bench/json_mask_bench.py [--tokens 64] [--repeats 3] [--keep DIR]

No real 150k-token tokenizer ships with the tests, so this builds one of
Qwen2.5's shape: byte-level BPE, 151,643 ids plus 22 added special tokens
(<|endoftext|> = 151643, <|im_start|>, <|im_end|>, ...), and a model whose
vocabulary is padded to 151,936 rows, as Qwen2.5's is. The first 1,160 ids
(and the merges) are the tiny_chat fixture's, so prompts encode as usual;
the other ids are made-up tokens in the proportions of a real multilingual
BPE vocabulary: " word" pieces (most), bare and capitalised pieces, digits,
CJK (3-byte UTF-8) and Cyrillic (2-byte) pieces, punctuation and code
pieces ('":', '},', '\\n\\n', space runs, ...). The model is the tiny
fixture's transformer with a random 151,936-row tied embedding, so a
forward step is cheap and the vocabulary-sized work (the head, sampling,
the mask) dominates.

For each of free text, {"type": "json_object"} and a json_schema, greedy and
temperature 1, it runs --repeats requests of at most --tokens tokens and
prints the wall time per completion token (median over the requests) and
the difference from free text with the same sampler: the mask's cost per
token. The first constrained request also builds the vocabulary trie; its
extra latency is printed apart. Prints a table; the figures are whatever
they are."""
import argparse
import array
import json
import os
import random
import re
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from harness import Server, remove, temp_dir, write_with_embedding  # noqa: E402

TINY = os.path.join(ROOT, "tests", "fixtures", "tiny_chat")
N_IDS, N_SPECIAL, N_ROWS = 151643, 22, 151936
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40},
    "age": {"type": "integer"},
    "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 4},
    "ok": {"type": "boolean"}}, "required": ["name", "age", "tags", "ok"]}


def byte_chars():
    """GPT-2's byte -> printable character map (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def made_up_token(r):
    """The bytes of one token in a real vocabulary's proportions."""
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    word = "".join(r.choice(letters[:r.choice((8, 14, 26))]) for _ in range(r.randint(2, 9)))
    k = r.random()
    if k < 0.50:
        return (" " + word).encode()
    if k < 0.65:
        return word.encode()
    if k < 0.72:
        return (" " * r.randint(0, 1) + word.capitalize()).encode()
    if k < 0.86:
        return "".join(chr(r.randint(0x4E00, 0x9FA5)) for _ in range(r.randint(1, 3))).encode()
    if k < 0.91:
        return (" " * r.randint(0, 1) + "".join(chr(r.randint(0x430, 0x44F)) for _ in range(r.randint(2, 6)))).encode()
    if k < 0.97:
        return "".join(r.choice(['"', ":", ",", "}", "{", "]", "[", ")", "(", ";", ".", "\n", " ", "_", "=", "-"])
                       for _ in range(r.randint(2, 4))).encode()
    return r.choice([b" " * r.randint(2, 16), b"\n" * r.randint(2, 4), b"\t" * r.randint(2, 4),
                     (" " * r.randint(0, 1) + str(r.randint(0, 999))).encode()])


def make_tokenizer(out):
    """tiny_chat's tokenizer.json with its vocabulary grown to Qwen2.5's size."""
    tok = json.load(open(os.path.join(TINY, "tokenizer.json")))
    vocab = {k: v for k, v in tok["model"]["vocab"].items()}
    chars, r = byte_chars(), random.Random(151)
    while len(vocab) < N_IDS:
        s = "".join(chars[b] for b in made_up_token(r))
        if s not in vocab:
            vocab[s] = len(vocab)
    tok["model"]["vocab"] = vocab
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(N_SPECIAL - 3)]
    tok["added_tokens"] = [{"id": N_IDS + i, "content": n, "single_word": False, "lstrip": False,
                            "rstrip": False, "normalized": False, "special": True} for i, n in enumerate(names)]
    json.dump(tok, open(os.path.join(out, "tokenizer.json"), "w"))
    shutil.copy(os.path.join(TINY, "tokenizer_config.json"), out)


def make_model(out):
    """tiny_chat's weights with a random 151,936-row tied embedding."""
    cfg = json.load(open(os.path.join(TINY, "config.json")))
    d, r = cfg["hidden_size"], random.Random(7)
    emb = array.array("f", [r.gauss(0, 0.5) for _ in range(N_ROWS * d)]).tobytes()
    write_with_embedding(os.path.join(TINY, "model.safetensors"), os.path.join(out, "model.safetensors"),
                         emb, N_ROWS)
    cfg.update(vocab_size=N_ROWS, eos_token_id=N_IDS + 2)
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)


def run(srv, model, tokens, fmt, temperature, seed):
    body = {"model": model, "messages": [{"role": "user", "content": "Describe a person as JSON."}],
            "max_tokens": tokens, "temperature": temperature, "seed": seed}
    if fmt:
        body["response_format"] = fmt
    t0 = time.perf_counter()
    status, _, r = srv.json("POST", "/v1/chat/completions", json.dumps(body).encode(),
                            {"Content-Type": "application/json"})
    dt = time.perf_counter() - t0
    if status != 200:
        raise RuntimeError(f"{status}: {r}")
    c = r["choices"][0]
    if fmt and c["finish_reason"] == "stop":
        json.loads(c["message"]["content"])  # a complete document parses
    return dt, r["usage"]["completion_tokens"], c["finish_reason"]


def mask_line(srv):
    """The server's closing line on constrained decoding: (masks, ms each, greedy tokens without one)."""
    with open(srv.log_path, "rb") as f:  # this run's part of the log (shared by restarts)
        f.seek(srv.log_start)
        log = f.read().decode("utf-8", "replace")
    found = re.findall(r"response_format: (\d+) token masks over a \d+-token vocabulary, ([\d.]+) ms "
                       r"each on average; (\d+) greedy", log)
    return (int(found[-1][0]), float(found[-1][1]), int(found[-1][2])) if found else (0, 0.0, 0)


def measure(d, model, args, fmt, temperature):
    """One server: a warm-up request, then --repeats timed ones. Returns
    (median ms per token, tokens, finish reasons, the server's mask line)."""
    srv = Server(d, "--model", model)
    name = os.path.basename(model.rstrip("/"))
    try:
        run(srv, name, 2, fmt, temperature, 1)  # model pages touched, vocabulary trie built
        per, n_tok, reasons = [], 0, set()
        for k in range(args.repeats):
            dt, n, why = run(srv, name, args.tokens, fmt, temperature, 100 + k)
            per.append(dt / max(n, 1) * 1e3)
            n_tok += n
            reasons.add(why)
    finally:
        srv.stop()
    return statistics.median(per), n_tok, ",".join(sorted(reasons)), mask_line(srv)


def first_request(d, model):
    """The one-time cost of the vocabulary trie: the first constrained
    request minus the second."""
    srv = Server(d, "--model", model)
    name = os.path.basename(model.rstrip("/"))
    try:
        run(srv, name, 2, None, 0, 0)
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            run(srv, name, 1, {"type": "json_object"}, 0, 0)
            times.append(time.perf_counter() - t0)
    finally:
        srv.stop()
    return (times[0] - times[1]) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", help="build the model here (and keep it) instead of a temporary folder")
    args = ap.parse_args()
    d = temp_dir()
    model = args.keep or os.path.join(d, "qwen_shaped")
    try:
        if not os.path.exists(os.path.join(model, "model.safetensors")):
            os.makedirs(model, exist_ok=True)
            t0 = time.time()
            make_tokenizer(model)
            make_model(model)
            print(f"built a {N_IDS + N_SPECIAL}-token tokenizer and a {N_ROWS}-row model in "
                  f"{time.time() - t0:.1f} s", flush=True)
        print(f"first constrained request builds the vocabulary trie: +{first_request(d, model):.0f} ms, once",
              flush=True)
        print(f"{'sampler':8} {'output':12} {'ms/token':>9} {'vs free':>8} {'masks':>6} {'ms/mask':>8} "
              f"{'unmasked':>8} {'tokens':>7}  finish", flush=True)
        for temperature in (0, 1):
            base = None
            for label, fmt in (("free text", None), ("json_object", {"type": "json_object"}),
                               ("json_schema", {"type": "json_schema",
                                                "json_schema": {"name": "person", "schema": SCHEMA}})):
                ms, n, why, (masks, per_mask, fast) = measure(d, model, args, fmt, temperature)
                base = ms if fmt is None else base
                print(f"T={temperature:<6} {label:12} {ms:9.2f} {ms - base:+8.2f} {masks:6d} {per_mask:8.3f} "
                      f"{fast:8d} {n:7d}  {why}", flush=True)
    finally:
        remove(d)


main()
