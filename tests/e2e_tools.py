"""End-to-end tests of tool calling on the real server: a copy of the tiny
fixture model given Qwen2.5-Instruct's real chat template (Hermes-style
<tool_call> tags), fine-tuned over HTTP on a JSONL file whose assistant
turns are tool calls (with `tools` on each line), then asked with `tools`:
the answer comes back as OpenAI `tool_calls` (plain and streamed as
tool-call deltas), a tool result goes back through the template, and bad
tool fields are 400s naming the field."""
import functools
import http.client
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "e2e"))
from harness import Checks, Server, multipart, remove, temp_dir  # noqa: E402

t = Checks()
FIX = os.path.abspath("tests/fixtures")
JSON = {"Content-Type": "application/json"}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CITIES = ["Paris", "Oslo"]


def make_model(d):
    """tiny_chat with Qwen2.5-Instruct's template, in <d>/tiny_tools."""
    out = os.path.join(d, "tiny_tools")
    shutil.copytree(os.path.join(FIX, "tiny_chat"), out)
    cfg_path = os.path.join(out, "tokenizer_config.json")
    cfg = json.load(open(cfg_path))
    cfg["chat_template"] = open(os.path.join(FIX, "chat_templates", "qwen2.5-instruct.jinja")).read()
    cfg["model_max_length"] = 1024
    json.dump(cfg, open(cfg_path, "w"))
    mcfg_path = os.path.join(out, "config.json")
    mcfg = json.load(open(mcfg_path))
    mcfg["max_position_embeddings"] = 1024  # Qwen2.5's tool preamble is long in this small vocabulary
    json.dump(mcfg, open(mcfg_path, "w"))
    return out


def line(city):
    """One training line: the user asks, the assistant calls the tool."""
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
    return json.dumps({"messages": [{"role": "user", "content": f"Weather in {city}?"},
                                    {"role": "assistant", "content": None, "tool_calls": [call]}],
                       "tools": TOOLS}) + "\n"


def post(srv, path, body):
    return srv.json("POST", path, json.dumps(body).encode(), JSON)


def ask(srv, model, city, **kw):
    body = {"model": model, "messages": [{"role": "user", "content": f"Weather in {city}?"}],
            "tools": TOOLS, "temperature": 0, "max_tokens": 120}
    body.update(kw)
    return post(srv, "/v1/chat/completions", body)


def train(srv):
    data = "".join(line(CITIES[i % 2]) for i in range(8)).encode()
    body, hdrs = multipart({"purpose": "fine-tune"}, {"file": ("tools.jsonl", data)})
    status, _, f = srv.json("POST", "/v1/files", body, hdrs)
    t.eq((status, f.get("status")), (200, "processed"), f"a file of tool-call lines uploads ({f})")
    # A fixed seed: the same adapter every run. With the API's random seed, 60 epochs of
    # these 8 lines left some seeds' adapters too weak to write the call (about one run
    # in three failed); 80 epochs passed seeds 1-8 with both the AVX-512 and AVX2 kernels.
    hp = {"n_epochs": 80, "batch_size": 4, "learning_rate_multiplier": 5, "lora_r": 32,
          "target_modules": "all-linear"}
    job = post(srv, "/v1/fine_tuning/jobs", {"model": "tiny_tools", "training_file": f["id"],
                                             "hyperparameters": hp, "seed": 1})[2]
    deadline = time.time() + 480
    while time.time() < deadline and job.get("status") not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.2)
        job = srv.json("GET", f"/v1/fine_tuning/jobs/{job['id']}")[2]
    t.eq(job.get("status"), "succeeded", f"the tool-call job trains ({job.get('error')})")
    return job.get("fine_tuned_model")


def stream(srv, body):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(dict(body, stream=True)).encode(), JSON)
    resp = conn.getresponse()
    raw = resp.read().decode()
    conn.close()
    return [json.loads(x[6:]) for x in raw.split("\n") if x.startswith("data: ") and x != "data: [DONE]"]


def check_sdk(srv, model):
    """OpenAI's Node SDK (tests/sdk) gets the same call, plain and through its stream helper."""
    sdk = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sdk")
    if not shutil.which("node") or not os.path.isdir(os.path.join(sdk, "node_modules", "openai")):
        t.check(os.environ.get("CI") != "true", "the openai npm package is installed (CI)")
        print("skipped the SDK part: the openai npm package is not installed (cd tests/sdk && npm install)")
        return
    env = dict(os.environ, RETUNE_URL=f"http://127.0.0.1:{srv.port}", MODEL=model, TOOLS=json.dumps(TOOLS))
    proc = subprocess.run(["node", os.path.join(sdk, "sdk_tools.mjs")], capture_output=True, text=True,
                          env=env, timeout=120)
    t.eq(proc.returncode, 0, f"the SDK tool script runs ({proc.stderr[-800:]})")
    r = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
    for kind in ("plain", "stream"):
        got = r.get(kind, {})
        calls = got.get("message", {}).get("tool_calls") or []
        t.eq(got.get("finish"), "tool_calls", f"SDK {kind}: finish_reason")
        t.check(len(calls) == 1 and calls[0]["function"]["name"] == "get_weather" and
                json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}, f"SDK {kind}: tool_calls ({got})")


def test_trained_calls(srv):
    model = train(srv)
    check_sdk(srv, model)
    for city in CITIES:
        status, _, r = ask(srv, model, city)
        t.eq(status, 200, f"chat with tools ({r})")
        ch = r["choices"][0]
        calls = ch["message"].get("tool_calls") or []
        t.eq(ch["finish_reason"], "tool_calls", f"finish_reason ({ch})")
        t.check(len(calls) == 1 and calls[0]["type"] == "function" and calls[0]["id"].startswith("call"),
                f"one tool call with an id ({calls})")
        if calls:
            fn = calls[0]["function"]
            t.eq((fn["name"], json.loads(fn["arguments"])), ("get_weather", {"city": city}),
                 "the trained call, arguments as JSON text")
        t.check(ch["message"]["content"] in (None, ""), f"no content beside the call ({ch['message']})")
    # Streamed: content deltas never show the tags; the call arrives as a tool-call delta.
    events = stream(srv, {"model": model, "messages": [{"role": "user", "content": "Weather in Oslo?"}],
                          "tools": TOOLS, "temperature": 0, "max_tokens": 120})
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    text = "".join(d.get("content") or "" for d in deltas)
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    t.check("<tool_call>" not in text, f"no tags in streamed content ({text!r})")
    t.check(len(calls) == 1 and calls[0]["index"] == 0 and calls[0]["function"]["name"] == "get_weather"
            and json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}, f"streamed tool call ({calls})")
    t.eq(events[-1]["choices"][0]["finish_reason"], "tool_calls", "streamed finish_reason")
    # tool_choice none: the tools stay out of the prompt and nothing is read as a call.
    status, _, r = ask(srv, model, "Paris", tool_choice="none")
    t.check(status == 200 and not r["choices"][0]["message"].get("tool_calls"), f"tool_choice none ({r})")
    # The call and its result go back through the template for the next turn.
    msgs = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_9", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_9", "content": "21 C, sunny"}]
    status, _, r = post(srv, "/v1/chat/completions", {"model": model, "messages": msgs, "tools": TOOLS,
                                                      "max_tokens": 4})
    t.eq(status, 200, f"a tool result turn is rendered ({r})")
    t.check(r.get("usage", {}).get("prompt_tokens", 0) > ask(srv, model, "Paris")[2]["usage"]["prompt_tokens"],
            "the history with the call and its result is in the prompt")


def test_bad_tool_fields(srv):
    cases = [({"tools": {"x": 1}}, "tools"),
             ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
             ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
             ({"tool_choice": "sometimes"}, "tool_choice"),
             ({"tool_choice": "required"}, "tool_choice"),
             ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
             ({"chat_template_kwargs": [1]}, "chat_template_kwargs")]
    for extra, param in cases:
        status, _, r = ask(srv, "tiny_tools", "Paris", **extra)
        t.eq((status, r.get("error", {}).get("param")), (400, param), f"{extra} refused by name")
    status, _, r = post(srv, "/v1/chat/completions", {"model": "tiny_tools", "messages": [
        {"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]})
    t.eq((status, r.get("error", {}).get("param")), (400, "messages[1].tool_call_id"), "tool message needs its call id")
    status, _, r = post(srv, "/v1/chat/completions", {"model": "tiny_tools", "messages": [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "a", "type": "function"}]}]})
    t.eq((status, r.get("error", {}).get("param")), (400, "messages[0].tool_calls[0]"), "malformed tool call")
    status, _, r = post(srv, "/v1/chat/completions", {"model": "tiny_tools", "messages": [
        {"role": "user", "content": "x"}], "tools": TOOLS, "max_tokens": 2})
    t.eq(status, 200, "tools rendered by Qwen2.5's template")


def test_no_tool_template():
    """A template without tool markers (tiny_chat's ChatML) takes no tools, and says so."""
    d = temp_dir()
    srv = Server(d)
    try:
        status, _, r = ask(srv, "tiny_chat", "Paris")
        t.check(status == 400 and r["error"]["param"] == "tools" and "template" in r["error"]["message"],
                f"tools on a model whose template has none ({r})")
    finally:
        srv.stop()
        remove(d)


def main():
    d = temp_dir()
    models = temp_dir()
    model = make_model(models)
    srv = Server(d, "--model", model, "--min-examples", "4")  # a small set, trained many epochs
    try:
        t.run(functools.partial(test_bad_tool_fields, srv))
        t.run(functools.partial(test_trained_calls, srv))
    finally:
        srv.stop()
        remove(d)
        remove(models)
    t.run(test_no_tool_template)


main()
t.finish()
