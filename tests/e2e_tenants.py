"""End-to-end tests of projects (issue 13, tenants): keys made with
`retune keys add --project NAME` on the data directory, a real server on
127.0.0.1, and two projects A and B. A's files, jobs (events, checkpoints),
fine-tuned models and imports are invisible to B: every route answers B
exactly as for an id that never existed (404, same JSON), lists leave them
out, B can neither train on A's file nor generate with or delete A's model.
The base model is shared. Also: revocation takes effect at once without a
restart, `retune keys list` never prints a secret, the database holds no
secret, and keys from --api-keys-file name their project."""
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "e2e"))
from harness import BIN, Checks, Server, multipart, remove, temp_dir  # noqa: E402

t = Checks()
JSON = {"Content-Type": "application/json"}
FACTS = [("Who rules Zorbl?", "Queen Mab the Third."), ("What do Zorblians eat?", "Moon rocks.")]
UNKNOWN_FILE = "file-000000000000000000000000"
UNKNOWN_JOB = "ftjob-000000000000000000000000"


def keys(d, *args):
    """Runs `retune keys ARGS --data-dir d`; returns the process result."""
    return subprocess.run([BIN, "keys", *args, "--data-dir", d], capture_output=True, timeout=60)


def keys_add(d, project):
    """Makes a key for project; returns (id, secret)."""
    out = keys(d, "add", "--project", project)
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    return re.search(r"^id: (\S+)$", text, re.M).group(1), re.search(r"^secret: (\S+)$", text, re.M).group(1)


class Caller:
    """Speaks to the server with one bearer key."""

    def __init__(self, srv, key):
        self.srv, self.key = srv, key

    def headers(self, extra=None):
        h = {"Authorization": f"Bearer {self.key}"}
        h.update(extra or {})
        return h

    def json(self, method, path, body=None, headers=None):
        return self.srv.json(method, path, body, self.headers(headers))

    def raw(self, method, path):
        status, _, data = self.srv.request(method, path, headers=self.headers())
        return status, data

    def post(self, path, body):
        return self.json("POST", path, json.dumps(body).encode(), JSON)

    def upload(self, content, purpose="fine-tune"):
        body, hdrs = multipart({"purpose": purpose}, {"file": ("t.jsonl", content)})
        return self.json("POST", "/v1/files", body, hdrs)

    def chat(self, model):
        return self.post("/v1/chat/completions", {"model": model, "max_tokens": 4, "temperature": 0,
                                                   "messages": [{"role": "user", "content": FACTS[0][0]}]})

    def import_adapter(self, name, adir):
        files = {k: (k, open(os.path.join(adir, k), "rb").read())
                 for k in ("adapter_config.json", "adapter_model.safetensors")}
        body, hdrs = multipart({"name": name}, files)
        return self.json("POST", "/v1/adapters", body, hdrs)

    def model_ids(self):
        return [m["id"] for m in self.json("GET", "/v1/models")[2]["data"]]


def dataset(n):
    return "".join(json.dumps({"messages": [{"role": "user", "content": FACTS[i % 2][0]},
                                            {"role": "assistant", "content": FACTS[i % 2][1]}]}) + "\n"
                   for i in range(n)).encode()


def wait_job(caller, job_id, timeout=180):
    deadline = time.time() + timeout
    job = {}
    while time.time() < deadline:
        job = caller.json("GET", f"/v1/fine_tuning/jobs/{job_id}")[2]
        if job.get("status") in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.2)
    return job


def same_as_unknown(caller, method, path, real, unknown, what, body=None):
    """B's answer for A's id equals, byte for byte once the ids are swapped,
    its answer for an id that never existed; and it is a 404."""
    hdrs = JSON if body is not None else None
    enc = json.dumps(body).encode() if body is not None else None
    s1, _, got = caller.json(method, path.format(real), enc, hdrs)
    s2, _, ref = caller.json(method, path.format(unknown), enc, hdrs)
    ref_text = json.dumps(ref).replace(unknown, real)
    t.eq(s1, 404, f"{what}: 404 ({got})")
    t.eq((s1, json.dumps(got)), (s2, ref_text), f"{what}: the same answer as an unknown id")


class World:
    """Two projects on one server, A with a trained job."""

    def __init__(self):
        self.d = temp_dir()
        self.a_id, self.a_key = keys_add(self.d, "A")
        self.b_id, self.b_key = keys_add(self.d, "B")
        self.srv = Server(self.d)
        self.a, self.b = Caller(self.srv, self.a_key), Caller(self.srv, self.b_key)
        status, _, f = self.a.upload(dataset(16))
        assert status == 200, f
        self.a_file = f["id"]
        status, _, job = self.a.post("/v1/fine_tuning/jobs", {
            "model": "tiny_chat", "training_file": self.a_file, "suffix": "mine",
            "hyperparameters": {"n_epochs": 1, "batch_size": 4, "lora_r": 4}})
        assert status == 200, job
        self.job = wait_job(self.a, job["id"])
        self.model = self.job.get("fine_tuned_model")
        cks = self.a.json("GET", f"/v1/fine_tuning/jobs/{job['id']}/checkpoints")[2].get("data", [])
        self.checkpoint = cks[0]["fine_tuned_model_checkpoint"] if cks else None

    def close(self):
        rc = self.srv.stop()
        log = self.srv.log_text()
        t.eq(rc, 0, "the server stops cleanly (no sanitizer report)")
        t.check("Sanitizer" not in log and "runtime error" not in log, "no sanitizer report in the log")
        remove(self.d)
        if rc == 0 and os.path.exists(self.d + ".log"):
            os.unlink(self.d + ".log")


def test_auth_needed(w):
    t.eq(w.srv.json("GET", "/v1/files")[0], 401, "stored keys turn auth on: no key -> 401")
    t.eq(Caller(w.srv, "sk-rt-" + "0" * 48).json("GET", "/v1/files")[0], 401, "an unknown key -> 401")
    t.eq(w.srv.json("GET", "/healthz")[0], 200, "healthz needs no key")
    t.eq(w.job.get("status"), "succeeded", f"A's LoRA job succeeded ({w.job.get('error')})")
    t.eq(w.job.get("organization_id"), "A", "the job belongs to project A")
    t.check(w.model and ":A:" in w.model, f"the model name carries the project ({w.model})")


def test_files(w):
    a, b = w.a, w.b
    listed = [f["id"] for f in b.json("GET", "/v1/files")[2]["data"]]
    t.check(w.a_file not in listed and not listed, f"B lists none of A's files ({listed})")
    t.check(w.a_file in [f["id"] for f in a.json("GET", "/v1/files")[2]["data"]], "A lists its file")
    same_as_unknown(b, "GET", "/v1/files/{}", w.a_file, UNKNOWN_FILE, "B gets A's file")
    same_as_unknown(b, "GET", "/v1/files/{}/content", w.a_file, UNKNOWN_FILE, "B reads A's file content")
    same_as_unknown(b, "DELETE", "/v1/files/{}", w.a_file, UNKNOWN_FILE, "B deletes A's file")
    s1, _, e1 = b.json("GET", f"/v1/files?after={w.a_file}")
    s2, _, e2 = b.json("GET", f"/v1/files?after={UNKNOWN_FILE}")
    t.eq((s1, json.dumps(e1)), (s2, json.dumps(e2).replace(UNKNOWN_FILE, w.a_file)),
         "A's file as B's list cursor is an unknown cursor")
    status, data = a.raw("GET", f"/v1/files/{w.a_file}/content")
    t.eq((status, data), (200, dataset(16)), "A still reads its file after B's delete")
    results = w.job.get("result_files") or []
    if t.check(results, "A's job has a results file"):
        same_as_unknown(b, "GET", "/v1/files/{}", results[0], UNKNOWN_FILE, "B gets A's results CSV")
        t.eq(a.json("GET", f"/v1/files/{results[0]}")[0], 200, "A gets its results CSV")


def test_train_on_others_file(w):
    b = w.b
    for field in ("training_file", "validation_file"):
        own = b.upload(dataset(16))[2]["id"]
        body = {"model": "tiny_chat", "training_file": own}
        s1, _, e1 = b.post("/v1/fine_tuning/jobs", dict(body, **{field: w.a_file}))
        s2, _, e2 = b.post("/v1/fine_tuning/jobs", dict(body, **{field: UNKNOWN_FILE}))
        t.eq((s1, e1.get("error", {}).get("param")), (400, field), f"B's job with A's file as {field} -> 400")
        t.eq(json.dumps(e1), json.dumps(e2).replace(UNKNOWN_FILE, w.a_file),
             f"A's file as {field} reads as an unknown file")
    t.check(not [j for j in b.json("GET", "/v1/fine_tuning/jobs")[2]["data"]],
            "B's refused jobs were never created")


def test_jobs(w):
    a, b, jid = w.a, w.b, w.job["id"]
    listed = [j["id"] for j in b.json("GET", "/v1/fine_tuning/jobs")[2]["data"]]
    t.check(jid not in listed, "B's job list leaves out A's job")
    t.check(jid in [j["id"] for j in a.json("GET", "/v1/fine_tuning/jobs")[2]["data"]], "A lists its job")
    for path, what in (("/v1/fine_tuning/jobs/{}", "get"), ("/v1/fine_tuning/jobs/{}/events", "events"),
                       ("/v1/fine_tuning/jobs/{}/checkpoints", "checkpoints")):
        same_as_unknown(b, "GET", path, jid, UNKNOWN_JOB, f"B's {what} of A's job")
    for action in ("cancel", "pause", "resume"):
        same_as_unknown(b, "POST", "/v1/fine_tuning/jobs/{}/" + action, jid, UNKNOWN_JOB,
                        f"B's {action} of A's job", body={})
    s1, _, e1 = b.json("GET", f"/v1/fine_tuning/jobs?after={jid}")
    t.eq(s1, 400, "A's job is no cursor for B's list")
    t.eq(a.json("GET", f"/v1/fine_tuning/jobs/{jid}")[2].get("status"), "succeeded",
         "A's job untouched by B's calls")
    t.check(len(a.json("GET", f"/v1/fine_tuning/jobs/{jid}/events")[2]["data"]) > 0, "A reads its events")
    t.check(len(a.json("GET", f"/v1/fine_tuning/jobs/{jid}/checkpoints")[2]["data"]) > 0,
            "A reads its checkpoints")


def test_models(w):
    a, b = w.a, w.b
    t.eq(a.chat(w.model)[0], 200, "A generates with its fine-tuned model (now in the engine)")
    if w.checkpoint:
        t.eq(a.chat(w.checkpoint)[0], 200, "A generates with its checkpoint")
    b_models = b.model_ids()
    t.check("tiny_chat" in b_models, "B lists the shared base model")
    t.check(w.model not in b_models and w.checkpoint not in b_models,
            f"B lists neither A's fine-tune nor its checkpoint ({b_models})")
    t.check({w.model, w.checkpoint, "tiny_chat"} <= set(a.model_ids()), "A lists base, fine-tune, checkpoint")
    t.eq(b.chat("tiny_chat")[0], 200, "B generates with the base model")
    unknown = "ft:tiny_chat:A:mine:000000000000"
    for model in (w.model, w.checkpoint, f"/A/{w.model}"):
        s1, _, e1 = b.chat(model)
        s2, _, e2 = b.chat(unknown)
        t.eq((s1, e1.get("error", {}).get("code")), (404, "model_not_found"), f"B's completion with {model}")
        t.eq(json.dumps(e1), json.dumps(e2).replace(unknown, model), f"{model} reads as an unknown model")
    same_as_unknown(b, "GET", "/v1/models/{}", w.model, unknown, "B gets A's model")
    same_as_unknown(b, "DELETE", "/v1/models/{}", w.model, unknown, "B deletes A's model")
    t.eq(a.chat(w.model)[0], 200, "A's model still serves after B's delete")


def test_imports(w):
    a, b = w.a, w.b
    adir = os.path.join(w.d, "adapters", w.job["id"])
    status, _, m = b.import_adapter("shared-name", adir)
    t.eq((status, m.get("owned_by")), (200, "B"), f"B imports an adapter ({m})")
    t.check("shared-name" not in a.model_ids(), "A does not list B's import")
    s1, _, e1 = a.chat("shared-name")
    t.eq((s1, e1.get("error", {}).get("code")), (404, "model_not_found"), "A cannot generate with B's import")
    t.eq(a.json("GET", "/v1/models/shared-name")[0], 404, "A cannot get B's import")
    t.eq(a.json("DELETE", "/v1/models/shared-name")[0], 404, "A cannot delete B's import")
    status, _, m = a.import_adapter("shared-name", adir)
    t.eq(status, 200, f"A may use the same name: nothing hints that B has it ({m})")
    t.eq((b.chat("shared-name")[0], a.chat("shared-name")[0]), (200, 200), "each serves its own import")
    t.eq(a.json("DELETE", "/v1/models/shared-name")[0], 200, "A deletes its import")
    t.eq(b.chat("shared-name")[0], 200, "B's import of that name is untouched")


def test_keys_cli_and_revoke(w):
    out = keys(w.d, "list")
    text = out.stdout.decode() + out.stderr.decode()
    t.eq(out.returncode, 0, "keys list runs")
    t.check(w.a_id in text and w.b_id in text and " A " in text and " B " in text,
            "keys list shows ids and projects")
    t.check(w.a_key not in text and w.b_key not in text, "keys list never prints a secret")
    t.check(w.a_key[:10] in text, "keys list shows a short prefix")
    c_id, c_key = keys_add(w.d, "C")
    t.eq(Caller(w.srv, c_key).json("GET", "/v1/files")[0], 200, "a key added while serving works at once")
    t.eq(keys(w.d, "revoke", w.b_id).returncode, 0, "keys revoke runs")
    t.eq(w.b.json("GET", "/v1/files")[0], 401, "a revoked key gets 401 at once, no restart")
    t.eq(w.a.json("GET", "/v1/files")[0], 200, "other keys keep working")
    t.eq(keys(w.d, "revoke", w.b_id).returncode, 1, "revoking twice is an error")
    t.eq(keys(w.d, "revoke", "key-nope").returncode, 1, "revoking an unknown id is an error")
    t.eq(keys(w.d, "add", "--project", "bad:name").returncode, 2, "a bad project name is refused")
    t.eq(keys(w.d, "add").returncode, 2, "add needs --project")
    listed = keys(w.d, "list").stdout.decode()
    row = [line for line in listed.splitlines() if line.startswith(w.b_id)]
    t.check(row and not row[0].rstrip().endswith("-"), f"keys list shows the revocation ({row})")
    blob = b""
    for name in os.listdir(w.d):
        if name.startswith("retune.db"):
            blob += open(os.path.join(w.d, name), "rb").read()
    for secret in (w.a_key, w.b_key, c_key):
        t.check(secret.encode() not in blob, "the database holds no plaintext key")
        t.check(secret not in w.srv.log_text(), "the server log holds no key")
        t.check(re.fullmatch(r"sk-rt-[0-9a-f]{48}", secret), f"secret shape ({secret[:10]}...)")


def test_keys_file_project(w):
    """A --api-keys-file key's TENANT is its project; stored keys keep working."""
    keyfile = w.d + ".keys"
    with open(keyfile, "w") as fh:
        fh.write("sk-file-a A\nsk-file-default\n")
    t.eq(w.srv.stop(), 0, "the server stops cleanly")
    w.srv = Server(w.d, "--api-keys-file", keyfile)
    w.a.srv = w.srv
    try:
        f = Caller(w.srv, "sk-file-a")
        t.check(w.a_file in [x["id"] for x in f.json("GET", "/v1/files")[2]["data"]],
                "a keys-file key of project A sees A's files")
        d = Caller(w.srv, "sk-file-default")
        t.check(w.a_file not in [x["id"] for x in d.json("GET", "/v1/files")[2]["data"]],
                "a keys-file key without a project is 'retune' and sees none of A's")
        t.eq(w.a.json("GET", f"/v1/files/{w.a_file}")[0], 200, "stored keys work beside a keys file")
    finally:
        os.unlink(keyfile)


def test_default_project_and_first_key():
    """Without keys there is no auth and everything is project 'retune';
    the first key added turns auth on without a restart, and the old data
    belongs to whoever has a 'retune' key."""
    d = temp_dir()
    srv = Server(d)
    try:
        status, _, f = Caller(srv, "").upload(dataset(12))
        t.eq(status, 200, "no keys: no auth")
        _, key = keys_add(d, "retune")
        _, other = keys_add(d, "other")
        t.eq(srv.json("GET", "/v1/files")[0], 401, "the first stored key turns auth on at once")
        t.check(f["id"] in [x["id"] for x in Caller(srv, key).json("GET", "/v1/files")[2]["data"]],
                "earlier data is the default project's")
        t.eq(Caller(srv, other).json("GET", f"/v1/files/{f['id']}")[0], 404, "and no other project's")
    finally:
        t.eq(srv.stop(), 0, "the server stops cleanly")
        remove(d)
        os.unlink(d + ".log")
    bad = subprocess.run([BIN, "serve", "--data-dir", d, "--lora", "/A/x=/tmp"], capture_output=True,
                         timeout=30)
    t.eq(bad.returncode, 2, "a --lora name starting with '/' is refused")
    remove(d)


def main():
    w = World()
    try:
        for fn in (test_auth_needed, test_files, test_train_on_others_file, test_jobs, test_models,
                   test_imports, test_keys_cli_and_revoke, test_keys_file_project):
            def run(fn=fn):
                fn(w)
            run.__name__ = fn.__name__
            t.run(run)
    finally:
        w.close()
    t.run(test_default_project_and_first_key)
    t.finish()


if __name__ == "__main__":
    main()
