"""End-to-end: a fine-tune you can watch, on the real server on 127.0.0.1.
A job's events arrive live as server-sent events (oldest first, each new
one as it is stored, [DONE] when the job is over; Last-Event-ID resumes);
the server log has one line per job transition and progress lines with
step, loss, tokens/s and ETA; /metrics has jobs by status, training and
generated tokens, token latency histograms, the engine's queue, KV-cache
slots and adapters, each with the value it should have."""
import http.client
import json
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "e2e"))
from harness import Checks, Server, multipart, remove, temp_dir  # noqa: E402

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


def read_sse(srv, path, headers=None, timeout=180):
    """(status, content type, [(id, data text)]) of a whole event stream."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read().decode()
        kind = resp.getheader("Content-Type")
        status = resp.status
    finally:
        conn.close()
    events = []
    for block in raw.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line and not line.startswith(":"))
        if "data" in fields:
            events.append((fields.get("id"), fields["data"]))
    return status, kind, events, raw


def metrics(srv):
    text = srv.request("GET", "/metrics")[2].decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values, text


def test_watch_a_job(srv, d):
    body, hdrs = multipart({"purpose": "fine-tune"}, {"file": ("t.jsonl", dataset(24))})
    fid = srv.json("POST", "/v1/files", body, hdrs)[2]["id"]
    status, _, job = post(srv, "/v1/fine_tuning/jobs", {"model": "tiny_chat", "training_file": fid,
                                                         "hyperparameters": {"n_epochs": 3, "batch_size": 2}})
    t.eq(status, 200, f"job created ({job})")
    live = {}

    def watch():
        live["result"] = read_sse(srv, f"/v1/fine_tuning/jobs/{job['id']}/events?stream=true")
        live["ended_at"] = time.time()

    watcher = threading.Thread(target=watch)
    watcher.start()
    deadline = time.time() + 180
    while time.time() < deadline:
        job = srv.json("GET", f"/v1/fine_tuning/jobs/{job['id']}")[2]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    finished_at = time.time()
    watcher.join(60)
    t.eq(job["status"], "succeeded", "the job succeeds")
    t.check("result" in live, "the event stream ended")
    if "result" not in live:
        return job
    status, kind, events, raw = live["result"]
    t.eq(status, 200, "the event stream answers 200")
    t.check((kind or "").startswith("text/event-stream"), f"as text/event-stream ({kind})")
    t.check(events and events[-1][1] == "[DONE]", f"it ends with [DONE] ({raw[-200:]!r})")
    t.check(live["ended_at"] - finished_at < 5.0, "within a few seconds of the job ending")
    parsed = [json.loads(data) for _, data in events[:-1]]
    listed = srv.json("GET", f"/v1/fine_tuning/jobs/{job['id']}/events?limit=1000")[2]["data"]
    t.eq([e["id"] for e in parsed], [e["id"] for e in reversed(listed)],
         "the stream carries every event of the job, oldest first, as the list does newest first")
    t.check(all(eid == e["id"] for (eid, _), e in zip(events, parsed)), "each event's SSE id is its id")
    steps = [e["data"]["step"] for e in parsed if e["type"] == "metrics"]
    t.check(len(steps) >= 2 and steps == sorted(steps) and steps[-1] == job["hyperparameters"]["n_epochs"] * 12,
            f"metrics events with growing steps up to the last ({steps})")
    t.check(all("train_loss" in e["data"] for e in parsed if e["type"] == "metrics"), "metrics events carry train_loss")
    # Resuming after an event sends exactly the rest.
    cut = parsed[2]["id"]
    _, _, rest, _ = read_sse(srv, f"/v1/fine_tuning/jobs/{job['id']}/events?stream=true",
                             {"Last-Event-ID": cut})
    t.eq([i for i, _ in rest[:-1]], [e["id"] for e in parsed[3:]], "Last-Event-ID resumes after that event")
    _, _, rest2, _ = read_sse(srv, f"/v1/fine_tuning/jobs/{job['id']}/events?stream=true&after={cut}")
    t.eq(rest2, rest, "after= does the same")
    status, _, err = srv.json("GET", f"/v1/fine_tuning/jobs/{job['id']}/events?stream=true&after=ftevent-nope")
    t.eq((status, err.get("error", {}).get("param")), (400, "after"), f"an unknown cursor is a 400 on after ({err})")
    status, _, _ = srv.json("GET", "/v1/fine_tuning/jobs/ftjob-nope/events?stream=true")
    t.eq(status, 404, "no stream for an unknown job")
    # The log: transitions and progress.
    log = srv.log_text()
    jid = re.escape(job["id"])
    t.check(re.search(rf"job {jid}: queued -> running", log), "the log says the job started running")
    t.check(re.search(rf"job {jid}: running -> succeeded at step \d+/\d+", log), "the log says it succeeded")
    last = job["hyperparameters"]["n_epochs"] * 12
    t.check(re.search(rf"job {jid}: step {last}/{last}, loss [0-9.]+, \d+ tokens/s, ETA \d+ s", log),
            "a progress line with step, loss, tokens/s and ETA")
    return job


def test_metrics(srv, job):
    before, _ = metrics(srv)
    t.eq(before.get('retune_jobs{status="succeeded"}'), 1.0, "one succeeded job")
    t.eq(before.get('retune_jobs{status="running"}'), 0.0, "none running")
    t.eq(before.get("retune_job_transitions_total"), 2.0, "two transitions by the worker (claim, finish)")
    t.eq(before.get("retune_training_tokens_total"), float(job["trained_tokens"]),
         "training tokens equal the job's trained_tokens")
    t.eq(before.get("retune_training_tokens_per_second"), 0.0, "no training throughput once the job is over")
    t.eq(before.get("retune_kv_cache_slots"), 8.0, "KV-cache slots: --max-batch")
    loads = before.get("retune_adapter_loads_total")
    generated, choices = 0, 0
    for model in ("tiny_chat", job["fine_tuned_model"], job["fine_tuned_model"]):
        status, _, r = post(srv, "/v1/chat/completions", {"model": model, "max_tokens": 6, "temperature": 0, "n": 2,
                                                          "messages": [{"role": "user", "content": "Who rules Zorbl?"}]})
        t.eq(status, 200, f"a completion on {model}")
        # an end-of-text token counts in usage but is never streamed, so it is
        # not a generated token of the metrics (whether one comes can depend on
        # how the two choices were batched: float sums in another order)
        generated += r["usage"]["completion_tokens"] - sum(c["finish_reason"] == "stop" for c in r["choices"])
        choices += 2
    after, text = metrics(srv)
    t.eq(after["retune_generated_tokens_total"] - before["retune_generated_tokens_total"], float(generated),
         "generated tokens equal the completions' completion_tokens")
    t.eq(after["retune_time_to_first_token_seconds_count"] - before["retune_time_to_first_token_seconds_count"],
         float(choices), "one time-to-first-token observation per choice")
    t.eq(after["retune_inter_token_latency_seconds_count"] - before["retune_inter_token_latency_seconds_count"],
         float(generated - choices), "one inter-token observation per token after a choice's first")
    t.eq(after['retune_time_to_first_token_seconds_bucket{le="+Inf"}'],
         after["retune_time_to_first_token_seconds_count"], "the +Inf bucket holds every observation")
    t.eq(after["retune_adapter_loads_total"] - loads, 1.0, "the adapter's weights were loaded once")
    t.eq(after["retune_adapters_resident"], 1.0, "one adapter resident")
    t.check(after["retune_adapter_resident_bytes"] > 0, "its bytes are counted")
    t.eq((after["retune_request_queue_depth"], after["retune_kv_cache_slots_used"]), (0.0, 0.0),
         "nothing queued or decoding once the answers are in")
    names = set(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    t.check(all(re.fullmatch(r"retune_[a-z_]+", n) for n, _ in names), "names in Prometheus' conventions")
    t.check(all(n.endswith("_total") == (k == "counter") for n, k in names), "counters, and only they, end in _total")


def test_defaults_learn(srv):
    """A job with no hyperparameters at all learns. On tiny_chat (random
    weights, loss ~ln 1163 = 7.06 at first) and 24 examples, the old
    defaults (5 epochs, q/v only, learning rate 1e-3, no warmup) end at a
    validation loss of 6.86; the new ones at 5.79 (measured with `retune
    train`). The bench (bench/defaults_bench.py) compares them on the
    example task with the quickstart's tuned settings."""
    fids = []
    for n in (24, 4):
        body, hdrs = multipart({"purpose": "fine-tune"}, {"file": ("d.jsonl", dataset(n))})
        fids.append(srv.json("POST", "/v1/files", body, hdrs)[2]["id"])
    _, _, job = post(srv, "/v1/fine_tuning/jobs", {"model": "tiny_chat", "training_file": fids[0],
                                                    "validation_file": fids[1], "seed": 1})
    deadline = time.time() + 180
    while job["status"] not in ("succeeded", "failed", "cancelled") and time.time() < deadline:
        time.sleep(0.2)
        job = srv.json("GET", f"/v1/fine_tuning/jobs/{job['id']}")[2]
    t.eq(job["status"], "succeeded", "the default job succeeds")
    hp = job["hyperparameters"]
    t.eq((hp.get("n_epochs"), hp.get("batch_size"), hp.get("target_modules")), (10, 1, "all-linear"),
         f"auto chose enough epochs for 24 examples, and every projection ({hp})")
    events = srv.json("GET", f"/v1/fine_tuning/jobs/{job['id']}/events?limit=1000")[2]["data"]
    losses = [e["data"]["valid_loss"] for e in events if e["type"] == "metrics" and e["data"].get("valid_loss") is not None]
    t.check(losses and losses[0] < 6.3, f"its final validation loss is below 6.3, which the old defaults miss ({losses[:1]})")


def main():
    d = temp_dir()
    srv = Server(d, "--model", MODEL)
    try:
        done = {}

        def watch_a_job():
            done["job"] = test_watch_a_job(srv, d)

        t.run(watch_a_job)
        job = done.get("job")
        if job and job.get("status") == "succeeded":
            t.run(lambda: test_metrics(srv, job))
        else:
            t.check(False, "the metrics are checked after a finished job")
        t.run(lambda: test_defaults_learn(srv))
    finally:
        t.eq(srv.stop(), 0, "the server stops cleanly")
        remove(d)


main()
t.finish()
