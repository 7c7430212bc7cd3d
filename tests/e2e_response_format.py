"""End-to-end tests of response_format on POST /v1/chat/completions: the
real server on 127.0.0.1 with the tiny fixture model (random-ish weights:
its text is garbage, but constrained decoding must make it valid JSON).
json_object output parses as an object; json_schema output (properties,
required, enum, arrays, nested objects) validates against its schema at
temperature 1 with several seeds and n = 3, plain and streamed; a
completion cut by max_tokens is a valid prefix with finish_reason
"length"; bad response_format shapes and unsupported keywords are 400s
naming the field and the keyword."""
import http.client
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "e2e"))
from harness import Checks, Server, remove, temp_dir  # noqa: E402
from json_check import is_json_prefix, validate  # noqa: E402

t = Checks()
MODEL = os.path.abspath("tests/fixtures/tiny_chat")
JSON = {"Content-Type": "application/json"}
MESSAGES = [{"role": "user", "content": "Describe the weather as JSON."}]
SCHEMA = {
    "type": "object",
    "properties": {
        "sky": {"enum": ["clear", "cloudy", "green"]},
        "rain": {"type": "boolean"},
        "winds": {"type": "array", "items": {"enum": ["north", "south", 3, None]}, "minItems": 1, "maxItems": 3},
        "place": {"type": "object", "properties": {"inside": {"type": "boolean"}, "level": {"enum": [1, 2]}},
                  "required": ["inside", "level"]},
        "note": {"type": ["boolean", "null"]},
    },
    "required": ["sky", "rain", "winds", "place"],
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True}}


def post(srv, body):
    return srv.json("POST", "/v1/chat/completions", json.dumps(body).encode(), JSON)


def chat(srv, **kw):
    body = {"model": "tiny_chat", "messages": MESSAGES, "max_tokens": 400}
    body.update(kw)
    return post(srv, body)


def stream(srv, **kw):
    """The streamed choices: {index: (content, finish_reason)}."""
    body = {"model": "tiny_chat", "messages": MESSAGES, "max_tokens": 400, "stream": True}
    body.update(kw)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    conn.request("POST", "/v1/chat/completions", json.dumps(body).encode(), JSON)
    resp = conn.getresponse()
    raw = resp.read().decode()
    conn.close()
    events = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    out = {}
    for e in events[:-1]:
        for c in json.loads(e)["choices"]:
            text, finish = out.get(c["index"], ("", None))
            out[c["index"]] = (text + (c["delta"].get("content") or ""), c.get("finish_reason") or finish)
    return resp.status, events[-1:] == ["[DONE]"], out


def check_output(text, finish, schema, what):
    """A finished output is a document of schema (any object when schema is
    None); one cut by max_tokens is a valid prefix."""
    if finish == "length":
        t.check(is_json_prefix(text), f"{what}: a cut output is a JSON prefix ({text!r})")
        return
    t.eq(finish, "stop", f"{what}: finish_reason")
    try:
        doc = json.loads(text)
    except ValueError:
        t.check(False, f"{what}: output parses ({text!r})")
        return
    t.check(isinstance(doc, dict), f"{what}: an object ({text!r})")
    if schema is not None:
        err = validate(schema, doc)
        t.check(err is None, f"{what}: validates ({err}: {text!r})")


def test_json_object(srv):
    finished = 0
    for seed in (1, 4, 7):
        status, _, r = chat(srv, response_format={"type": "json_object"}, temperature=1.0, seed=seed, n=3)
        t.eq(status, 200, f"json_object seed {seed} ({r})")
        for c in r.get("choices", []):
            check_output(c["message"]["content"], c["finish_reason"], None, f"json_object seed {seed} choice {c['index']}")
            finished += c["finish_reason"] == "stop"
    t.check(finished >= 6, f"most json_object outputs are complete documents ({finished} of 9)")
    status, done, out = stream(srv, response_format={"type": "json_object"}, temperature=1.0, seed=4, n=3)
    t.check(status == 200 and done and sorted(out) == [0, 1, 2], f"json_object streamed ({status}, {sorted(out)})")
    for i, (text, finish) in out.items():
        check_output(text, finish, None, f"json_object streamed choice {i}")
    status, _, r = chat(srv, response_format={"type": "json_object"}, temperature=0, logprobs=True, max_tokens=60)
    c = r["choices"][0]
    check_output(c["message"]["content"], c["finish_reason"], None, "json_object greedy")
    lp = c["logprobs"]["content"]
    t.check(len(lp) == r["usage"]["completion_tokens"] or c["finish_reason"] == "stop",
            "greedy constrained logprobs: one per token")
    t.check(all(x["logprob"] <= 0 for x in lp), "logprobs are the model's own")


def test_json_schema(srv):
    texts = set()
    for seed in (1, 4, 7):  # choice i samples with seed + i: nine different seeds
        status, _, r = chat(srv, response_format=JSON_SCHEMA, temperature=1.0, seed=seed, n=3)
        t.eq(status, 200, f"json_schema seed {seed} ({r})")
        for c in r.get("choices", []):
            t.eq(c["finish_reason"], "stop", f"json_schema seed {seed} choice {c['index']} finishes")
            check_output(c["message"]["content"], c["finish_reason"], SCHEMA, f"json_schema seed {seed} choice {c['index']}")
            texts.add(c["message"]["content"])
    t.check(len(texts) >= 7, f"n = 3 choices and seeds sample different documents ({len(texts)} of 9)")
    for seed in (5, 6):
        status, done, out = stream(srv, response_format=JSON_SCHEMA, temperature=1.0, seed=seed, n=3,
                                   stream_options={"include_usage": True})
        t.check(status == 200 and done and sorted(out) == [0, 1, 2], f"json_schema streamed seed {seed}")
        for i, (text, finish) in out.items():
            t.eq(finish, "stop", f"json_schema streamed seed {seed} choice {i} finishes")
            check_output(text, finish, SCHEMA, f"json_schema streamed seed {seed} choice {i}")
    _, _, whole = chat(srv, response_format=JSON_SCHEMA, temperature=1.0, seed=20)
    _, _, streamed = stream(srv, response_format=JSON_SCHEMA, temperature=1.0, seed=20)
    t.eq(streamed.get(0, ("", None))[0], whole["choices"][0]["message"]["content"],
         "streamed constrained text equals the plain answer (same seed)")
    status, _, r = chat(srv, response_format=JSON_SCHEMA, temperature=0)
    check_output(r["choices"][0]["message"]["content"], r["choices"][0]["finish_reason"], SCHEMA, "json_schema greedy")
    # logit_bias and penalties change the sampling, never the constraint
    status, _, r = chat(srv, response_format=JSON_SCHEMA, temperature=1.0, seed=8, presence_penalty=2,
                        logit_bias={str(i): 100 for i in range(40, 60)})
    check_output(r["choices"][0]["message"]["content"], r["choices"][0]["finish_reason"], SCHEMA,
                 "json_schema with logit_bias +100 and a penalty")
    # no schema: any object; a schema without properties
    status, _, r = chat(srv, response_format={"type": "json_schema", "json_schema": {"name": "any"}},
                        temperature=1.0, seed=9)
    check_output(r["choices"][0]["message"]["content"], r["choices"][0]["finish_reason"], None, "json_schema without schema")
    bools = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"], "additionalProperties": False}
    status, _, r = chat(srv, response_format={"type": "json_schema", "json_schema": {
        "name": "b-1_x", "description": "one flag", "schema": bools, "strict": False}}, temperature=1.0, seed=10)
    check_output(r["choices"][0]["message"]["content"], r["choices"][0]["finish_reason"], bools, "strict false still enforced")


def test_cut_by_max_tokens(srv):
    for n_tok in (1, 3, 6):
        status, _, r = chat(srv, response_format=JSON_SCHEMA, temperature=1.0, seed=11, max_tokens=n_tok, n=2)
        for c in r.get("choices", []):
            text = c["message"]["content"]
            if c["finish_reason"] == "length":
                t.check(is_json_prefix(text) and r["usage"]["completion_tokens"] <= 2 * n_tok,
                        f"max_tokens {n_tok}: a valid prefix ({text!r})")
            else:
                check_output(text, c["finish_reason"], SCHEMA, f"max_tokens {n_tok}")
    status, done, out = stream(srv, response_format={"type": "json_object"}, temperature=1.0, seed=12, max_tokens=4)
    text, finish = out.get(0, ("", None))
    t.check(status == 200 and done and finish == "length" and is_json_prefix(text),
            f"streamed and cut: finish length, a valid prefix ({finish}, {text!r})")


def test_bad_formats(srv):
    name_only = {"type": "json_schema", "json_schema": {"name": "x"}}
    cases = [
        ("json", "response_format"),
        ({"typ": "json_object"}, "response_format.type"),
        ({"type": "xml"}, "response_format.type"),
        ({"type": 5}, "response_format.type"),
        ({"type": "json_object", "schema": {}}, "response_format"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": "x"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}, "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "has space"}}, "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "n" * 65}}, "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": ""}}, "response_format.json_schema.name"),
        (dict(name_only, json_schema={"name": "x", "strict": "yes"}), "response_format.json_schema.strict"),
        (dict(name_only, json_schema={"name": "x", "description": 3}), "response_format.json_schema.description"),
        (dict(name_only, json_schema={"name": "x", "schema": [1]}), "response_format.json_schema.schema"),
        (dict(name_only, json_schema={"name": "x", "shema": {}}), "response_format.json_schema"),
        (dict(name_only, json_schema={"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "strin"}}}}),
         "response_format.json_schema.schema"),
    ]
    for rf, param in cases:
        status, _, r = chat(srv, response_format=rf)
        err = r.get("error", {})
        t.eq((status, err.get("param"), err.get("type")), (400, param, "invalid_request_error"),
             f"response_format {json.dumps(rf)[:80]} refused naming {param} ({err.get('message')})")
    for keyword, sub in (("pattern", {"type": "string", "pattern": "^a+$"}), ("minimum", {"type": "integer", "minimum": 3}),
                         ("allOf", {"allOf": [{"type": "string"}]})):
        schema = {"type": "object", "properties": {"field": sub}, "required": ["field"]}
        status, _, r = chat(srv, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        err = r.get("error", {})
        t.check(status == 400 and err.get("param") == "response_format.json_schema.schema" and
                keyword in err.get("message", "") and "properties/field" in err.get("message", ""),
                f"unsupported keyword {keyword} refused naming it and its path ({status}, {err})")
    status, _, r = chat(srv, response_format={"type": "text"}, max_tokens=3)
    t.eq(status, 200, "response_format text asks for nothing")
    status, _, r = chat(srv, response_format=None, max_tokens=3)
    t.eq(status, 200, "response_format null asks for nothing")
    status, _, r = srv.json("POST", "/v1/completions", json.dumps(
        {"model": "tiny_chat", "prompt": "x", "response_format": {"type": "json_object"}}).encode(), JSON)
    t.eq((status, r.get("error", {}).get("param")), (400, "response_format"), "legacy completions take no response_format")
    t.eq(srv.json("GET", "/healthz")[0], 200, "server serves on")


def main():
    d = temp_dir()
    srv = Server(d, "--model", MODEL)
    try:
        for fn in (test_json_object, test_json_schema, test_cut_by_max_tokens, test_bad_formats):
            def on_server(fn=fn):
                fn(srv)
            on_server.__name__ = fn.__name__
            t.run(on_server)
    finally:
        srv.stop()
        remove(d)


main()
t.finish()
