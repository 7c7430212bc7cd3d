"""End-to-end tests of fine-tuning jobs: the real server on 127.0.0.1 with
the tiny HF-format fixture model, real uploads, real training on the job
worker. LoRA and full jobs to `succeeded` with falling loss; events,
checkpoints and the results CSV; data problems failing the job; request
errors; cancel, pause/resume; two jobs queued FIFO; kill -9 recovery."""
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "e2e"))
from harness import Checks, Server, multipart, remove, temp_dir  # noqa: E402

t = Checks()
MODEL = os.path.abspath("tests/fixtures/tiny_chat")
FACTS = [("What colour is the sky on Zorbl?", "Green, always green."),
         ("Who rules Zorbl?", "Queen Mab the Third."),
         ("What do Zorblians eat?", "Blue cheese and moon rocks."),
         ("How far is Zorbl?", "Seven jumps past Mars.")]


def dataset(n):
    lines = []
    for i in range(n):
        q, a = FACTS[i % len(FACTS)]
        lines.append(json.dumps({"messages": [{"role": "user", "content": q},
                                              {"role": "assistant", "content": a}]}))
    return ("\n".join(lines) + "\n").encode()


def upload(srv, content, purpose="fine-tune"):
    body, hdrs = multipart({"purpose": purpose}, {"file": ("data.jsonl", content)})
    status, _, f = srv.json("POST", "/v1/files", body, hdrs)
    assert status == 200, f
    return f["id"]


def create(srv, **fields):
    body = {"model": "tiny_chat"}
    body.update(fields)
    return srv.json("POST", "/v1/fine_tuning/jobs", json.dumps(body).encode(),
                    {"Content-Type": "application/json"})


def get(srv, job_id):
    return srv.json("GET", f"/v1/fine_tuning/jobs/{job_id}")[2]


def wait(srv, job_id, statuses, timeout=120, cond=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = get(srv, job_id)
        if job.get("status") in statuses and (cond is None or cond(job)):
            return job
        time.sleep(0.1)
    return get(srv, job_id)


def events(srv, job_id):
    return srv.json("GET", f"/v1/fine_tuning/jobs/{job_id}/events?limit=1000")[2]["data"]


LONG = {"n_epochs": 40, "batch_size": 1, "max_seq_len": 64, "checkpoint_interval": 100,
        "learning_rate": 1e-3}


def test_lora_and_full_jobs():
    d = temp_dir()
    srv = Server(d, "--model", MODEL)
    try:
        train, valid = upload(srv, dataset(24)), upload(srv, dataset(8))
        hp = {"n_epochs": 3, "batch_size": 4, "learning_rate": 3e-2, "lora_r": 4,
              "target_modules": "all-linear", "eval_interval": 2, "checkpoint_interval": 4}
        status, _, job = create(srv, training_file=train, validation_file=valid, suffix="zorbl",
                                seed=7, metadata={"team": "qa"},
                                method={"type": "supervised", "supervised": {"hyperparameters": hp}})
        t.eq(status, 200, f"create LoRA job ({job})")
        t.check(job.get("id", "").startswith("ftjob-"), "job id prefix")
        t.eq((job.get("object"), job.get("status"), job.get("seed"), job.get("metadata")),
             ("fine_tuning.job", "queued", 7, {"team": "qa"}), "job object on creation")
        done = wait(srv, job["id"], {"succeeded", "failed", "cancelled"})
        t.eq(done.get("status"), "succeeded", f"LoRA job succeeded ({done.get('error')})")
        name = done.get("fine_tuned_model") or ""
        t.check(name.startswith("ft:tiny_chat:retune:zorbl:"), f"fine_tuned_model name {name}")
        t.eq(done["hyperparameters"]["n_epochs"], 3, "hyperparameters shown resolved")
        t.check(done.get("trained_tokens", 0) > 0 and done.get("finished_at"), "tokens and finish time")
        t.check(0 < done.get("trainable_percent", 0) < 100, "trainable percentage reported")
        t.eq(done.get("step"), done.get("total_steps"), "progress complete")
        evs = events(srv, job["id"])
        metrics = [e for e in evs if e["type"] == "metrics"]
        t.check(len(metrics) >= 2, "metrics events recorded")
        t.check(all({"step", "train_loss", "valid_loss"} <= set(e["data"]) for e in metrics), "metrics data fields")
        t.check(evs[0]["message"].startswith("The job has successfully completed"), "events newest first")
        mem = [e["message"] for e in evs if e["message"].startswith("Memory estimate:")]
        t.check(len(mem) == 1 and "GiB available" in mem[0], f"the memory estimate is an event ({mem})")
        ck = srv.json("GET", f"/v1/fine_tuning/jobs/{job['id']}/checkpoints")[2]
        steps = sorted(c["step_number"] for c in ck["data"])
        t.eq(steps, [4, 6, 8, 12, 16, 18], "checkpoints per interval (4) and per epoch (6 steps)")
        t.check(all(c["fine_tuned_model_checkpoint"] == f"{name}:ckpt-step-{c['step_number']}" for c in ck["data"]),
                "checkpoint model names")
        t.check(all("train_loss" in c["metrics"] for c in ck["data"]), "checkpoint metrics")
        csv_id = done["result_files"][0]
        f = srv.json("GET", f"/v1/files/{csv_id}")[2]
        t.eq(f.get("purpose"), "fine-tune-results", "results file purpose")
        rows = srv.request("GET", f"/v1/files/{csv_id}/content")[2].decode().strip().splitlines()
        t.eq(rows[0], "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy", "CSV header")
        losses = [float(r.split(",")[1]) for r in rows[1:]]
        t.eq(len(losses), 18, "one CSV row per step")
        t.check(sum(losses[-3:]) < sum(losses[:3]), f"loss falls ({losses[:3]} -> {losses[-3:]})")
        adir = os.path.join(d, "adapters", job["id"])
        t.check(os.path.exists(os.path.join(adir, "adapter_model.safetensors")), "adapter stored as PEFT files")
        models = [m["id"] for m in srv.json("GET", "/v1/models")[2]["data"]]
        t.check("tiny_chat" in models and name in models, "GET /v1/models lists base and fine-tune")
        status, _, m = srv.json("GET", f"/v1/models/{name}")
        t.eq((status, m.get("parent")), (200, "tiny_chat"), "GET /v1/models/{id}")
        # Full fine-tuning.
        status, _, full = create(srv, training_file=train, hyperparameters={
            "training_type": "full", "n_epochs": 2, "batch_size": 4, "learning_rate": 1e-3,
            "gradient_checkpointing": True})
        done = wait(srv, full["id"], {"succeeded", "failed", "cancelled"})
        t.eq(done.get("status"), "succeeded", f"full job succeeded ({done.get('error')})")
        mem = [e["message"] for e in events(srv, full["id"]) if e["message"].startswith("Memory estimate:")]
        t.check(len(mem) == 1 and "activation checkpointing on" in mem[0],
                f"gradient_checkpointing: true turns checkpointing on ({mem})")
        t.check(len(mem) == 1 and "checkpointing" not in
                [e["message"] for e in evs if e["message"].startswith("Memory estimate:")][0],
                "and the automatic default left it off for the small LoRA job")
        t.eq(done.get("trainable_percent"), 100, "full: all parameters trainable")
        t.check(os.path.exists(os.path.join(d, "models", full["id"], "model.safetensors")),
                "full fine-tune stored as a model directory")
        jobs = srv.json("GET", "/v1/fine_tuning/jobs?limit=1")[2]
        t.eq((len(jobs["data"]), jobs["has_more"], jobs["data"][0]["id"]), (1, True, full["id"]),
             "job list newest first with has_more")
        page2 = srv.json("GET", f"/v1/fine_tuning/jobs?limit=5&after={full['id']}")[2]
        t.eq([j["id"] for j in page2["data"]], [job["id"]], "job list after cursor")
        # Filtering by metadata, brackets raw or percent-encoded (as the SDKs send them).
        for q in ("metadata[team]=qa", "metadata%5Bteam%5D=qa"):
            got = srv.json("GET", f"/v1/fine_tuning/jobs?{q}")[2]
            t.eq([j["id"] for j in got.get("data", [])], [job["id"]], f"metadata filter {q}")
        for q in ("metadata[team]=ops", "metadata[team]=qa&metadata[other]=x", "metadata[nokey]=qa"):
            t.eq(srv.json("GET", f"/v1/fine_tuning/jobs?{q}")[2].get("data"), [], f"metadata filter {q} matches none")
        status, _, resp = srv.json("GET", "/v1/fine_tuning/jobs?metadata[a%22b]=x")
        t.eq((status, resp.get("error", {}).get("param")), (400, "metadata"), "a bad metadata filter key is a 400")
    finally:
        srv.stop()
        remove(d)


def test_bad_requests_and_bad_data():
    d = temp_dir()
    srv = Server(d, "--model", MODEL)
    try:
        train = upload(srv, dataset(12))
        other = upload(srv, b"plain", purpose="user_data")
        cases = [
            ({"model": "gpt-4o", "training_file": train}, "model"),
            ({"training_file": train, "model": None}, "model"),
            ({"model": "tiny_chat"}, "training_file"),
            ({"model": "tiny_chat", "training_file": "file-nope"}, "training_file"),
            ({"model": "tiny_chat", "training_file": other}, "training_file"),
            ({"model": "tiny_chat", "training_file": train, "validation_file": "file-x"}, "validation_file"),
            ({"model": "tiny_chat", "training_file": train, "hyperparameters": {"n_epochs": 0}},
             "hyperparameters.n_epochs"),
            ({"model": "tiny_chat", "training_file": train, "hyperparameters": {"batch_size": "big"}},
             "hyperparameters.batch_size"),
            ({"model": "tiny_chat", "training_file": train, "hyperparameters": {"training_type": "qlora"}},
             "hyperparameters.training_type"),
            ({"model": "tiny_chat", "training_file": train, "hyperparameters": {"target_modules": ["x_proj"]}},
             "hyperparameters.target_modules"),
            ({"model": "tiny_chat", "training_file": train, "hyperparameters": {"gradient_checkpointing": "yes"}},
             "hyperparameters.gradient_checkpointing"),
            ({"model": "tiny_chat", "training_file": train, "method": {"type": "dpo"}}, "method.type"),
            ({"model": "tiny_chat", "training_file": train, "suffix": "bad suffix!"}, "suffix"),
            ({"model": "tiny_chat", "training_file": train, "seed": -1}, "seed"),
            ({"model": "tiny_chat", "training_file": train, "metadata": {"k": 1}}, "metadata"),
        ]
        for body, param in cases:
            body = {k: v for k, v in body.items() if v is not None}
            status, hdrs, resp = srv.json("POST", "/v1/fine_tuning/jobs", json.dumps(body).encode(),
                                          {"Content-Type": "application/json"})
            t.eq((status, resp.get("error", {}).get("param")), (400, param), f"400 names {param}")
        # Misspelled hyperparameters are refused, with the name they were probably meant as.
        for wrong, meant in (("n_epoch", "n_epochs"), ("lora_rank", "lora_r"),
                             ("learning_rate_multipler", "learning_rate_multiplier"), ("zzz_top", None)):
            status, _, resp = create(srv, training_file=train, hyperparameters={wrong: 3})
            err = resp.get("error", {})
            t.eq((status, err.get("param")), (400, f"hyperparameters.{wrong}"), f"unknown {wrong}: 400")
            t.check((f"'{meant}'" in err.get("message", "")) if meant else "did you mean" not in err.get("message", ""),
                    f"{wrong}: suggests {meant} ({err.get('message')})")
        status, _, resp = srv.json("POST", "/v1/fine_tuning/jobs", b"{not json",
                                   {"Content-Type": "application/json"})
        t.eq(status, 400, "malformed JSON body")
        status, _, resp = srv.json("POST", "/v1/fine_tuning/jobs", b"{}", {"Content-Type": "text/plain"})
        t.eq(status, 415, "wrong content type")
        t.eq(srv.json("GET", "/v1/fine_tuning/jobs")[2]["data"], [], "rejected requests made no job")
        t.eq(srv.json("GET", "/v1/fine_tuning/jobs/ftjob-nope")[0], 404, "unknown job 404")
        # Data problems fail the job instead.
        bad = upload(srv, dataset(11) + b'{"messages": [{"role": "user", "content": "hi"}]}\n')
        _, _, job = create(srv, training_file=bad)
        t.eq((job["status"], job["error"]["code"], job["error"]["param"]),
             ("failed", "invalid_training_file", "training_file"), "bad line fails the job")
        t.check("line 12" in job["error"]["message"], f"error names the line ({job['error']['message']})")
        few = upload(srv, dataset(5))
        _, _, job = create(srv, training_file=few)
        t.eq((job["status"], job["error"]["code"]), ("failed", "invalid_n_examples"), "too few examples")
        badv = upload(srv, b"not json\n")
        _, _, job = create(srv, training_file=train, validation_file=badv)
        t.eq(job["error"]["code"], "invalid_validation_file", "bad validation file fails the job")
        msgs = [e["message"] for e in events(srv, job["id"])]
        t.check(any("Validating training file" in m for m in msgs), "validation event recorded")
    finally:
        srv.stop()
        remove(d)


def test_cancel_pause_resume_and_queue():
    d = temp_dir()
    srv = Server(d, "--model", MODEL)
    try:
        train = upload(srv, dataset(40))
        _, _, a = create(srv, training_file=train, hyperparameters=LONG)
        _, _, b = create(srv, training_file=train, hyperparameters={"n_epochs": 1, "batch_size": 8})
        _, _, c = create(srv, training_file=train, hyperparameters={"n_epochs": 1, "batch_size": 8})
        running = wait(srv, a["id"], {"running"}, cond=lambda j: j.get("step", 0) >= 1)
        t.eq(running.get("status"), "running", "first job runs")
        t.eq(get(srv, b["id"])["status"], "queued", "second job waits behind the first")
        status, _, cb = srv.json("POST", f"/v1/fine_tuning/jobs/{c['id']}/cancel")
        t.eq((status, cb.get("status")), (200, "cancelled"), "cancel a queued job at once")
        # Pause the running job, then resume it.
        status, _, pa = srv.json("POST", f"/v1/fine_tuning/jobs/{a['id']}/pause")
        t.eq(status, 200, "pause accepted")
        paused = wait(srv, a["id"], {"paused"}, timeout=30)
        t.eq(paused.get("status"), "paused", "running job paused")
        step_at_pause = paused.get("step")
        t.eq(wait(srv, b["id"], {"succeeded"}).get("status"), "succeeded", "queued job ran while the first was paused")
        status, _, r = srv.json("POST", f"/v1/fine_tuning/jobs/{a['id']}/resume")
        t.eq((status, r.get("status")), (200, "queued"), "resume queues the job")
        t.eq(srv.json("POST", f"/v1/fine_tuning/jobs/{b['id']}/resume")[0], 400, "resume of a finished job is refused")
        again = wait(srv, a["id"], {"running"}, cond=lambda j: j.get("step", 0) > step_at_pause)
        t.check(again.get("step", 0) > step_at_pause, "resumed job continues past its pause step")
        msgs = [e["message"] for e in events(srv, a["id"])]
        t.check(any(m.startswith("Resuming from the checkpoint") for m in msgs), "resume event")
        status, _, _ = srv.json("POST", f"/v1/fine_tuning/jobs/{a['id']}/cancel")
        final = wait(srv, a["id"], {"cancelled"}, timeout=30)
        t.eq(final.get("status"), "cancelled", "running job cancelled within a step")
        t.eq(srv.json("POST", f"/v1/fine_tuning/jobs/{a['id']}/cancel")[0], 400, "cancel of a cancelled job is refused")
    finally:
        srv.stop()
        remove(d)


def test_kill_9_recovery():
    d = temp_dir()
    srv = Server(d, "--model", MODEL)
    train = upload(srv, dataset(40))
    _, _, done = create(srv, training_file=train, hyperparameters={"n_epochs": 1, "batch_size": 8})
    wait(srv, done["id"], {"succeeded"})
    _, _, job = create(srv, training_file=train, hyperparameters=dict(LONG, n_epochs=25))
    mid = wait(srv, job["id"], {"running"}, cond=lambda j: j.get("step", 0) > 130)
    t.check(mid.get("step", 0) > 130, "job past its first checkpoint")
    srv.stop(signal.SIGKILL)
    srv = Server(d, "--model", MODEL)
    try:
        t.eq(get(srv, done["id"])["status"], "succeeded", "finished job survives kill -9")
        t.eq(srv.json("GET", f"/v1/files/{train}")[0], 200, "uploaded file survives kill -9")
        final = wait(srv, job["id"], {"succeeded", "failed"}, timeout=180)
        t.eq(final.get("status"), "succeeded", f"killed job finishes after restart ({final.get('error')})")
        msgs = [e["message"] for e in events(srv, job["id"])]
        t.check(any("queued again" in m for m in msgs), "restart event")
        t.check(any(m.startswith("Resuming from the checkpoint at step") for m in msgs),
                "resumed from its checkpoint")
        rows = srv.request("GET", f"/v1/files/{final['result_files'][0]}/content")[2].decode().splitlines()
        t.eq(len(rows) - 1, final["total_steps"], "results CSV has each step once")
    finally:
        srv.stop()
        remove(d)


for fn in [test_lora_and_full_jobs, test_bad_requests_and_bad_data, test_cancel_pause_resume_and_queue,
           test_kill_9_recovery]:
    t.run(fn)
t.finish()
