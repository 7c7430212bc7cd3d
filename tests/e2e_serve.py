"""End-to-end tests of serving: the real server on 127.0.0.1 with the tiny
fixture model. Chat and legacy completions (plain, streamed, logprobs, echo,
n, seed, stop), a LoRA job's adapter served at once with no restart,
adapters imported over HTTP and with --lora, full fine-tunes and
checkpoints served on demand, mixed-adapter concurrency equal to solo runs,
deleting models, bad requests, and a model whose vocabulary is padded past
its tokenizer."""
import array
import concurrent.futures
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "e2e"))
from harness import (BIN, Checks, Server, multipart, remove, safetensors_tensors,  # noqa: E402
                     temp_dir, write_with_embedding)

t = Checks()
MODEL = os.path.abspath("tests/fixtures/tiny_chat")
JSON = {"Content-Type": "application/json"}
FACTS = [("Who rules Zorbl?", "Queen Mab the Third."), ("What colour is the sky?", "Green, always green.")]


def dataset(n):
    return "".join(json.dumps({"messages": [{"role": "user", "content": FACTS[i % 2][0]},
                                            {"role": "assistant", "content": FACTS[i % 2][1]}]}) + "\n"
                   for i in range(n)).encode()


def post(srv, path, body):
    return srv.json("POST", path, json.dumps(body).encode(), JSON)


def chat(srv, model, content="Who rules Zorbl?", **kw):
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8,
            "temperature": 0}
    body.update(kw)
    return post(srv, "/v1/chat/completions", body)


def run_job(srv, hp):
    body, hdrs = multipart({"purpose": "fine-tune"}, {"file": ("t.jsonl", dataset(16))})
    fid = srv.json("POST", "/v1/files", body, hdrs)[2]["id"]
    job = post(srv, "/v1/fine_tuning/jobs", {"model": "tiny_chat", "training_file": fid,
                                              "hyperparameters": hp})[2]
    deadline = time.time() + 120
    while time.time() < deadline:
        job = srv.json("GET", f"/v1/fine_tuning/jobs/{job['id']}")[2]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    return job


def stream(srv, body):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    conn.request("POST", "/v1/chat/completions" if "messages" in body else "/v1/completions",
                 json.dumps(body).encode(), JSON)
    resp = conn.getresponse()
    raw = resp.read().decode()
    conn.close()
    events = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    return resp.status, resp.getheader("Content-Type"), events


def test_shapes_and_sampling(srv):
    status, hdrs, r = chat(srv, "tiny_chat", logprobs=True, top_logprobs=2)
    t.eq(status, 200, f"chat completion ({r})")
    t.eq((r["object"], r["choices"][0]["message"]["role"], r["choices"][0]["finish_reason"]),
         ("chat.completion", "assistant", "length"), "chat completion shape")
    t.check(r["id"].startswith("chatcmpl-") and r["usage"]["completion_tokens"] == 8, "id and usage")
    lp = r["choices"][0]["logprobs"]["content"]
    t.check(len(lp) == 8 and all(len(x["top_logprobs"]) == 2 and x["logprob"] <= 0 for x in lp), "chat logprobs")
    status, ctype, events = stream(srv, {"model": "tiny_chat", "messages": [{"role": "user", "content": "hi"}],
                                         "max_tokens": 5, "stream": True, "temperature": 0,
                                         "stream_options": {"include_usage": True}})
    t.eq((status, ctype), (200, "text/event-stream"), "stream is SSE")
    t.eq(events[-1], "[DONE]", "stream ends with [DONE]")
    chunks = [json.loads(e) for e in events[:-1]]
    t.eq(chunks[0]["choices"][0]["delta"].get("role"), "assistant", "first delta carries the role")
    t.eq(chunks[-1]["usage"]["completion_tokens"], 5, "usage chunk last")
    t.eq(chunks[-2]["choices"][0]["finish_reason"], "length", "finish chunk")
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    _, _, whole = chat(srv, "tiny_chat", content="hi", max_tokens=5, temperature=1, seed=3)
    _, _, again = chat(srv, "tiny_chat", content="hi", max_tokens=5, temperature=1, seed=3)
    t.eq(whole["choices"][0]["message"]["content"], again["choices"][0]["message"]["content"], "same seed, same output")
    _, _, greedy = chat(srv, "tiny_chat", content="hi", max_tokens=5)
    t.eq(streamed, greedy["choices"][0]["message"]["content"], "streamed text equals the plain answer")
    _, _, two = chat(srv, "tiny_chat", n=2, temperature=1, seed=9)
    t.eq([c["index"] for c in two["choices"]], [0, 1], "n=2 gives two choices")
    status, _, c = post(srv, "/v1/completions", {"model": "tiny_chat", "prompt": "Hello world", "max_tokens": 0,
                                                 "echo": True, "logprobs": 1})
    lp = c["choices"][0]["logprobs"]
    t.eq((status, c["object"], c["choices"][0]["text"]), (200, "text_completion", "Hello world"), "echo returns the prompt")
    t.check(lp["token_logprobs"][0] is None and all(x < 0 for x in lp["token_logprobs"][1:]), "prompt logprobs")
    t.eq(lp["text_offset"][0], 0, "text offsets")
    status, _, c = post(srv, "/v1/completions", {"model": "tiny_chat", "prompt": [5, 17, 300], "max_tokens": 3,
                                                 "temperature": 0})
    t.eq((status, c["usage"]["prompt_tokens"]), (200, 3), "prompt as token ids")
    base_text = chat(srv, "tiny_chat", max_tokens=12)[2]["choices"][0]["message"]["content"]
    if len(base_text) > 3:
        stop = base_text[2:4]
        r = chat(srv, "tiny_chat", max_tokens=12, stop=[stop])[2]
        t.check(stop not in r["choices"][0]["message"]["content"] and r["choices"][0]["finish_reason"] == "stop",
                f"stop string trims ({stop!r} in {base_text!r})")


def test_bad_requests(srv):
    cases = [
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        ({"model": "tiny_chat"}, 400, "messages"),
        ({"model": "tiny_chat", "messages": []}, 400, "messages"),
        ({"model": "tiny_chat", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}], "temperature": 5}, 400, "temperature"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}], "top_p": 0}, 400, "top_p"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}], "n": 129}, 400, "n"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}], "presence_penalty": 5}, 400, "presence_penalty"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}], "frequency_penalty": -3}, 400, "frequency_penalty"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"abc": 1}}, 400, "logit_bias"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": 101}}, 400, "logit_bias"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"99999999": 1}}, 400, "logit_bias"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}], "temprature": 0.5}, 400, "temprature"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]}, 400, "functions"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}],
          "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}],
          "response_format": {"type": "xml"}}, 400, "response_format.type"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}], "store": True}, 400, "store"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}, 400, "max_tokens"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}, 400, "top_logprobs"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400, "stream"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "x"}], "stream": True,
          "stream_options": {"include_usage": "yes"}}, 400, "stream_options.include_usage"),
        ({"model": "tiny_chat", "messages": [{"role": "user", "content": "word " * 3000}]}, 400, "messages"),
    ]
    for body, status, param in cases:
        got, _, r = post(srv, "/v1/chat/completions", body)
        t.eq((got, r.get("error", {}).get("param")), (status, param), f"chat error names {param}")
    for body, param in [({"model": "tiny_chat"}, "prompt"), ({"model": "tiny_chat", "prompt": ""}, "prompt"),
                        ({"model": "tiny_chat", "prompt": "x", "logprobs": 6}, "logprobs"),
                        ({"model": "tiny_chat", "prompt": "x", "max_tokens": 0}, "max_tokens"),
                        ({"model": "tiny_chat", "prompt": [1, -2]}, "prompt"),
                        ({"model": "tiny_chat", "prompt": [99999999]}, "prompt"),
                        ({"model": "tiny_chat", "prompt": ["a", ""]}, "prompt"),
                        ({"model": "tiny_chat", "prompt": ["a", 5]}, "prompt"),
                        ({"model": "tiny_chat", "prompt": ["a"] * 65, "n": 2}, "n"),
                        ({"model": "tiny_chat", "prompt": "x", "suffix": "y"}, "suffix"),
                        ({"model": "tiny_chat", "prompt": "x", "best_of": 3, "stream": True}, "best_of"),
                        ({"model": "tiny_chat", "prompt": ["a"] * 40, "best_of": 4}, "best_of"),
                        ({"model": "tiny_chat", "prompt": "x", "n": 2, "best_of": 1}, "best_of"),
                        ({"model": "tiny_chat", "prompt": "x", "messages": []}, "messages")]:
        got, _, r = post(srv, "/v1/completions", body)
        t.eq((got, r.get("error", {}).get("param")), (400, param), f"completions error names {param}")
    got, _, r = post(srv, "/v1/chat/completions", {"model": "tiny_chat", "messages": [{"role": "user", "content": "word " * 3000}]})
    t.eq(r.get("error", {}).get("code"), "context_length_exceeded", "a prompt over the context: context_length_exceeded")
    got, _, r = post(srv, "/v1/completions", {"model": "tiny_chat", "prompt": [5] * 600})
    t.eq((got, r.get("error", {}).get("param"), r.get("error", {}).get("code")), (400, "prompt", "context_length_exceeded"),
         "a legacy prompt over the context names prompt")
    got, _, _ = srv.json("POST", "/v1/chat/completions", b"{", JSON)
    t.eq(got, 400, "malformed JSON")
    # Issue 13: concurrent bad requests each name their own field (a shared buffer mixed them up).
    def bad_role(i):
        msgs = [{"role": "user", "content": "x"}] * i + [{"role": "wizard", "content": "x"}]
        return i, post(srv, "/v1/chat/completions", {"model": "tiny_chat", "messages": msgs})[2]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(bad_role, [i % 40 for i in range(400)]))
    wrong = [(i, r.get("error", {}).get("param")) for i, r in answers
             if r.get("error", {}).get("param") != f"messages[{i}].role"]
    t.eq(wrong, [], "400 concurrent bad requests each name their own message")
    t.eq(srv.json("GET", "/healthz")[0], 200, "server serves on after bad requests")


def test_sampling_fields(srv):
    """Issue 11: the OpenAI sampling fields do what they say: logit_bias
    forces or bans tokens, presence and frequency penalties stop repetition,
    n goes to 128, and legacy completions take a list of prompts."""
    base = {"model": "tiny_chat", "prompt": [5, 17, 300], "max_tokens": 12, "temperature": 0}
    _, _, plain = post(srv, "/v1/completions", dict(base, logprobs=1))
    toks = plain["choices"][0]["logprobs"]["tokens"]
    _, _, forced = post(srv, "/v1/completions", dict(base, logprobs=1, logit_bias={"42": 100}))
    got = forced["choices"][0]["logprobs"]
    ftoks = got["tokens"]
    t.check(len(set(ftoks)) == 1 and len(ftoks) == 12, f"logit_bias +100 forces one token ({ftoks})")
    t.check(all(x <= 0 for x in got["token_logprobs"]) and got["token_logprobs"][0] < -0.1,
            "logprobs stay the model's own, before the bias")
    # The tiny vocabulary has 1163 ids: banning 1024 of them leaves the others only.
    high = post(srv, "/v1/completions", dict(base, logprobs=1, logit_bias={str(i): -100 for i in range(1024)}))[2]
    low = post(srv, "/v1/completions", dict(base, logprobs=1,
                                            logit_bias={str(i): -100 for i in range(139, 1163)}))[2]
    ht, lt = (set(r["choices"][0]["logprobs"]["tokens"]) for r in (high, low))
    t.check(ht and lt and not (ht & lt) and (ht != set(toks) or lt != set(toks)),
            f"logit_bias -100 bans tokens: ids >= 1024 only and ids < 139 only share none ({ht}, {lt})")
    # Greedy decoding of the tiny model repeats; a strong penalty makes it use more distinct tokens.
    long = dict(base, max_tokens=40)
    _, _, rep = post(srv, "/v1/completions", dict(long, logprobs=1))
    _, _, pres = post(srv, "/v1/completions", dict(long, logprobs=1, presence_penalty=2))
    _, _, freq = post(srv, "/v1/completions", dict(long, logprobs=1, frequency_penalty=2))
    d0, dp, df = (len(set(r["choices"][0]["logprobs"]["tokens"])) for r in (rep, pres, freq))
    t.check(dp > d0 and df > d0, f"penalties spread the tokens (distinct {d0} -> {dp}, {df})")
    _, _, neg = post(srv, "/v1/completions", dict(long, logprobs=1, frequency_penalty=-2))
    t.check(len(set(neg["choices"][0]["logprobs"]["tokens"])) <= d0, "a negative penalty repeats more")
    status, _, many = post(srv, "/v1/completions", dict(base, max_tokens=2, n=128, temperature=1, seed=1))
    t.eq((status, len(many.get("choices", []))), (200, 128), "n = 128")
    status, _, lst = post(srv, "/v1/completions", {"model": "tiny_chat", "max_tokens": 3, "temperature": 0, "n": 2,
                                                    "prompt": ["Hello world", [5, 17, 300], "Who rules Zorbl?"]})
    t.eq((status, [c["index"] for c in lst.get("choices", [])]), (200, [0, 1, 2, 3, 4, 5]),
         "a list of three prompts, n = 2: six choices")
    _, _, one = post(srv, "/v1/completions", dict(base, max_tokens=3))
    t.eq(lst["choices"][2]["text"], one["choices"][0]["text"], "choice 2 answers prompt 1 (index // n)")
    _, _, solo = post(srv, "/v1/completions", {"model": "tiny_chat", "max_tokens": 3, "prompt": "Hello world"})
    t.eq(lst["usage"]["prompt_tokens"], solo["usage"]["prompt_tokens"] + 3 + one_prompt_tokens(srv),
         "usage counts each prompt once")
    # Issue 13: special-token text in a prompt or a message is text, not a control token.
    _, _, echoed = post(srv, "/v1/completions", {"model": "tiny_chat", "prompt": "<|im_end|>", "max_tokens": 0,
                                                 "echo": True, "logprobs": 0})
    t.check(len(echoed["choices"][0]["logprobs"]["tokens"]) > 1, f"<|im_end|> in a prompt is text ({echoed})")
    plain = chat(srv, "tiny_chat", content="hi there")[2]["usage"]["prompt_tokens"]
    evil = chat(srv, "tiny_chat", content="hi<|im_start|>")[2]["usage"]["prompt_tokens"]
    t.check(evil > plain + 1, f"<|im_start|> in a message is text ({plain} -> {evil} tokens)")
    # best_of: of best_of completions (seeds seed, seed+1, ... as n would give them), the n with
    # the highest log probability per token come back, best first.
    sampled = dict(base, max_tokens=6, temperature=1.5, seed=11)
    _, _, all4 = post(srv, "/v1/completions", dict(sampled, n=4, logprobs=0))
    means = [sum(c["logprobs"]["token_logprobs"]) / len(c["logprobs"]["token_logprobs"]) for c in all4["choices"]]
    best = [all4["choices"][i]["text"] for i in sorted(range(4), key=lambda i: -means[i])[:2]]
    status, _, top2 = post(srv, "/v1/completions", dict(sampled, n=2, best_of=4))
    t.eq((status, [c["text"] for c in top2.get("choices", [])], [c["index"] for c in top2.get("choices", [])]),
         (200, best, [0, 1]), "best_of = 4, n = 2: the two most likely of the four")
    t.eq(top2["usage"]["completion_tokens"], all4["usage"]["completion_tokens"], "best_of counts every completion")
    status, _, ok = post(srv, "/v1/chat/completions", {"model": "tiny_chat", "max_tokens": 2, "user": "u1",
                                                        "messages": [{"role": "user", "content": "hi"}],
                                                        "response_format": {"type": "text"}, "tools": [],
                                                        "tool_choice": "none", "store": False,
                                                        "metadata": {"a": "b"}, "service_tier": "auto"})
    t.eq(status, 200, f"fields that ask for nothing are accepted ({ok})")


def one_prompt_tokens(srv):
    return post(srv, "/v1/completions", {"model": "tiny_chat", "max_tokens": 1,
                                         "prompt": "Who rules Zorbl?"})[2]["usage"]["prompt_tokens"]


def test_adapters_served(srv, d):
    job = run_job(srv, {"n_epochs": 4, "batch_size": 4, "learning_rate": 5e-2, "lora_r": 4,
                        "target_modules": "all-linear", "checkpoint_interval": 4})
    t.eq(job["status"], "succeeded", f"LoRA job succeeded ({job.get('error')})")
    name = job["fine_tuned_model"]
    # Issue 12: the worker announced it, so it is registered before its first request.
    t.check(f"model {name} registered for serving" in srv.log_text(),
            "a freshly published adapter is registered by the worker, not by its first request")
    status, _, tuned = chat(srv, name, max_tokens=10)
    t.eq(status, 200, f"the fine-tuned model is served at once, no restart ({tuned})")
    base = chat(srv, "tiny_chat", max_tokens=10)[2]
    t.check(tuned["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"],
            "the adapter changes the answer")
    t.eq(tuned["model"], name, "response names the adapter model")
    ck = srv.json("GET", f"/v1/fine_tuning/jobs/{job['id']}/checkpoints")[2]["data"][0]
    status, _, _ = chat(srv, ck["fine_tuned_model_checkpoint"])
    t.eq(status, 200, "a checkpoint is servable")
    # Mixed batch: concurrent requests for base and adapter equal their solo answers.
    solo = {m: chat(srv, m, max_tokens=10)[2]["choices"][0]["message"]["content"] for m in ("tiny_chat", name)}
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        futs = [(m, ex.submit(chat, srv, m, max_tokens=10)) for m in ["tiny_chat", name] * 6]
        mixed = [(m, f.result()[2]["choices"][0]["message"]["content"]) for m, f in futs]
    t.check(all(text == solo[m] for m, text in mixed), "concurrent mixed-adapter greedy outputs equal solo runs")
    # Import the same adapter files over HTTP under another name.
    adir = os.path.join(d, "adapters", job["id"])
    files = {k: (k, open(os.path.join(adir, k), "rb").read())
             for k in ("adapter_config.json", "adapter_model.safetensors")}
    body, hdrs = multipart({"name": "imported-zorbl"}, files)
    status, _, m = srv.json("POST", "/v1/adapters", body, hdrs)
    t.eq((status, m.get("id"), m.get("parent")), (200, "imported-zorbl", "tiny_chat"), f"adapter imported ({m})")
    imported = chat(srv, "imported-zorbl", max_tokens=10)[2]
    t.eq(imported["choices"][0]["message"]["content"], tuned["choices"][0]["message"]["content"],
         "imported adapter answers like the job's")
    status, _, m = srv.json("POST", "/v1/adapters", body, hdrs)
    t.eq((status, m["error"]["param"]), (400, "name"), "duplicate adapter name refused")
    bad_files = {k: (k, open(os.path.join("tests/fixtures/model/llama_gqa/adapter", k), "rb").read())
                 for k in ("adapter_config.json", "adapter_model.safetensors")}
    body, hdrs = multipart({"name": "misfit"}, bad_files)
    status, _, m = srv.json("POST", "/v1/adapters", body, hdrs)
    t.eq(status, 400, f"an adapter for another model is refused ({m.get('error', {}).get('message')})")
    body, hdrs = multipart({"name": "half"}, {"adapter_config.json": files["adapter_config.json"]})
    status, _, m = srv.json("POST", "/v1/adapters", body, hdrs)
    t.eq((status, m["error"]["param"]), (400, "adapter_model.safetensors"), "missing part named")
    models = [x["id"] for x in srv.json("GET", "/v1/models")[2]["data"]]
    t.check({"tiny_chat", name, "imported-zorbl", ck["fine_tuned_model_checkpoint"]} <= set(models),
            "models list has base, fine-tune, import and checkpoints")
    status, _, r = srv.json("DELETE", "/v1/models/imported-zorbl")
    t.eq((status, r.get("deleted")), (200, True), "delete an adapter model")
    t.eq(chat(srv, "imported-zorbl")[0], 404, "a deleted model is gone")
    t.eq(srv.json("DELETE", "/v1/models/tiny_chat")[0], 400, "the base cannot be deleted")
    t.eq(srv.json("DELETE", "/v1/models/nope")[0], 404, "deleting an unknown model")
    full = run_job(srv, {"training_type": "full", "n_epochs": 1, "batch_size": 8, "learning_rate": 1e-3})
    t.eq(full["status"], "succeeded", "full job succeeded")
    status, _, r = chat(srv, full["fine_tuned_model"])
    t.eq(status, 200, f"a full fine-tune is served on demand ({r})")
    return adir


def test_disconnect(srv):
    import socket
    s = socket.create_connection(("127.0.0.1", srv.port))
    body = json.dumps({"model": "tiny_chat", "messages": [{"role": "user", "content": "go"}],
                       "max_tokens": 400, "stream": True}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    s.settimeout(10)
    got = b""
    while b"data:" not in got:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    t.check(b"data:" in got, "stream started")
    s.close()
    time.sleep(0.3)
    t.eq(chat(srv, "tiny_chat")[0], 200, "server serves on after a client left mid-stream")
    # Issue 13 item 9: a non-streamed request whose client leaves stops generating (it used
    # to run all its choices to max_tokens): 64 choices x 400 tokens, abandoned at once.
    s = socket.create_connection(("127.0.0.1", srv.port))
    body = json.dumps({"model": "tiny_chat", "messages": [{"role": "user", "content": "go on"}],
                       "max_tokens": 400, "n": 64, "temperature": 1}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    time.sleep(0.3)
    s.close()
    found = None
    deadline = time.time() + 60
    while found is None and time.time() < deadline:
        m = re.findall(r"(\d+) of 64 choices cancelled \(the client left\) after (\d+) tokens", srv.log_text())
        found = m[-1] if m else None
        time.sleep(0.2)
    t.check(found is not None and int(found[1]) < 64 * 400 // 2,
            f"an abandoned plain request stops generating ({found} of 25600 tokens)")
    # Issue 13: the abandoned stream counts as 499 in /metrics, not as a 200.
    metrics = srv.request("GET", "/metrics")[2].decode()
    t.check('route="chat_completions",method="POST",status="499"' in metrics or
            ('status="499"' in metrics and "chat" in metrics), "an abandoned stream is a 499 in /metrics")


def padded_model(root):
    """A copy of the tiny model in root/tiny_padded whose vocabulary is padded
    to a multiple of 64 past its tokenizer (config.json vocab_size, embedding
    rows), as Qwen2.5 pads 151665 token ids to 151936 rows. The padding rows
    are large opposite pairs in the tied embedding, so one of each pair gets
    a large logit whatever the hidden state: unmasked, the padding wins."""
    out = os.path.join(root, "tiny_padded")
    os.makedirs(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(MODEL, name), out)
    cfg = json.load(open(os.path.join(MODEL, "config.json")))
    assert cfg["tie_word_embeddings"] and cfg["torch_dtype"] == "float32"
    header, body = safetensors_tensors(os.path.join(MODEL, "model.safetensors"))
    vocab, d = (cfg["vocab_size"] + 64) // 64 * 64, cfg["hidden_size"]
    rnd, pad = random.Random(5), array.array("f")
    for _ in range((vocab - cfg["vocab_size"]) // 2 + 1):
        v = [rnd.uniform(-1, 1) for _ in range(d)]
        pad.extend(v + [-x for x in v])
    pad = pad[:(vocab - cfg["vocab_size"]) * d].tobytes()
    ten = header["model.embed_tokens.weight"]
    embedding = body[ten["data_offsets"][0]:ten["data_offsets"][1]] + pad
    write_with_embedding(os.path.join(MODEL, "model.safetensors"), os.path.join(out, "model.safetensors"),
                         embedding, vocab)
    cfg["vocab_size"] = vocab
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
    return out


def test_padded_vocab():
    """Issue 10: a padding id sampled was a 500. Now every request answers
    and none yields padding (whose token text would be empty), greedy,
    sampled or streamed, in the tokens and in top_logprobs."""
    d = temp_dir()
    srv = Server(d, "--model", padded_model(d))
    try:
        for kw in ({}, {"temperature": 1, "seed": 1}, {"temperature": 1.5, "top_p": 0.95, "seed": 2}):
            status, _, r = chat(srv, "tiny_padded", max_tokens=16, logprobs=True, top_logprobs=5, **kw)
            t.eq(status, 200, f"padded vocabulary {kw}: answered ({r})")
            if status != 200:
                continue
            lp = r["choices"][0]["logprobs"]["content"]
            t.check(len(lp) == r["usage"]["completion_tokens"] and
                    all(x["token"] and all(y["token"] for y in x["top_logprobs"]) for x in lp),
                    f"padded vocabulary {kw}: no padding among tokens and alternatives")
        status, _, events = stream(srv, {"model": "tiny_padded", "max_tokens": 24, "stream": True,
                                         "temperature": 1, "seed": 4,
                                         "messages": [{"role": "user", "content": "hi"}]})
        t.check(status == 200 and events[-1] == "[DONE]" and not any('"error"' in e for e in events),
                "padded vocabulary: a sampled stream ends normally")
    finally:
        srv.stop()
    remove(d)


def test_memory_plan():
    """Issue 10: serving plans its memory (weights, KV cache, step buffers)
    before allocating the cache, and a budget too small for it is refused at
    once with the numbers and what would help, before the server listens."""
    d = temp_dir()
    try:
        env = dict(os.environ, RETUNE_MEMORY_LIMIT="1000000")
        p = subprocess.run([BIN, "serve", "--data-dir", d, "--host", "127.0.0.1", "--port", "0",
                            "--model", MODEL, "--max-batch", "64"], capture_output=True, text=True,
                           timeout=60, env=env)
        t.check(p.returncode != 0, "a memory budget too small for the KV cache is refused")
        t.check("needs" in p.stderr and "KV cache" in p.stderr and "GiB available" in p.stderr and
                "--max-batch" in p.stderr and "--max-context" in p.stderr,
                f"with the numbers and what helps: {p.stderr.strip()[-400:]}")
        env["RETUNE_MEMORY_LIMIT"] = str(64 << 30)
        srv = Server(d, "--model", MODEL, env=env)
        try:
            status, _, r = chat(srv, "tiny_chat")
            t.eq(status, 200, f"a budget that fits serves ({r})")
        finally:
            srv.stop()
        t.check("Memory estimate:" in srv.log_text() and "KV cache" in srv.log_text(),
                "and the estimate is logged at start")
    finally:
        remove(d)


def main():
    d = temp_dir()
    srv = Server(d, "--model", MODEL)
    adir = None
    try:
        holder = {}

        def shapes_and_sampling():
            test_shapes_and_sampling(srv)

        def bad_requests():
            test_bad_requests(srv)

        def sampling_fields():
            test_sampling_fields(srv)

        def adapters_served():
            holder["adir"] = test_adapters_served(srv, d)

        def disconnect():
            test_disconnect(srv)

        for fn in (shapes_and_sampling, bad_requests, sampling_fields, adapters_served, disconnect):
            t.run(fn)
        adir = holder.get("adir")
    finally:
        srv.stop()
    if adir:
        srv = Server(d, "--model", MODEL, "--lora", f"ext={adir}")
        try:
            status, _, r = chat(srv, "ext")
            t.eq(status, 200, f"--lora NAME=DIR serves an adapter ({r})")
        finally:
            srv.stop()
    remove(d)
    t.run(test_padded_vocab)
    t.run(test_memory_plan)


main()
t.finish()
