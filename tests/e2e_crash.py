"""Crash injection in the spirit of SQLite's: the real server is killed with
SIGKILL at 50 random moments while uploads stream in, jobs train, write
checkpoints and publish their models, and adapters are imported. After every kill the restarted server
must show:

  - every upload it acknowledged (a 200 with an id), byte for byte, and
    every adapter import it acknowledged, listed;
  - every job it reported finished, still finished, its model still listed;
  - no two checkpoint rows for one job and step, no model row without its
    folder, and `PRAGMA integrity_check` ok on the SQLite file;

and at the end every interrupted job finishes with, step for step, the
training losses of the same job run without interruption. The moments are
drawn from a fixed seed, so a failure replays."""
import hashlib
import json
import os
import random
import signal
import sqlite3
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "e2e"))
from harness import Checks, Server, multipart, remove, temp_dir  # noqa: E402

t = Checks()
MODEL = os.path.abspath("tests/fixtures/tiny_chat")
KILLS = 50
rng = random.Random(20261202)
HP = {"n_epochs": 3, "batch_size": 4, "checkpoint_interval": 4}
QA = [("Who rules Zorbl?", "Queen Mab the Third."), ("What colour is the sky?", "Green, always green."),
      ("How far is Zorbl?", "Seven jumps past Mars."), ("What do they eat?", "Blue cheese.")]


def dataset(n, salt=""):
    return "".join(json.dumps({"messages": [{"role": "user", "content": QA[i % 4][0] + salt},
                                            {"role": "assistant", "content": QA[i % 4][1]}]}) + "\n"
                   for i in range(n)).encode()


TRAIN = dataset(32)


def upload(srv, content, timeout=30):
    body, hdrs = multipart({"purpose": "fine-tune"}, {"file": ("d.jsonl", content)})
    status, _, f = srv.json("POST", "/v1/files", body, hdrs)
    return f.get("id") if status == 200 else None


def create_job(srv, file_id):
    body = {"model": "tiny_chat", "training_file": file_id, "hyperparameters": HP, "seed": 7}
    status, _, j = srv.json("POST", "/v1/fine_tuning/jobs", json.dumps(body).encode(),
                            {"Content-Type": "application/json"})
    return j.get("id") if status == 200 else None


def job(srv, job_id):
    return srv.json("GET", f"/v1/fine_tuning/jobs/{job_id}")[2]


def losses(srv, j):
    """The per-step training losses of a finished job, from its results CSV."""
    if not j.get("result_files"):
        return None
    rows = srv.request("GET", f"/v1/files/{j['result_files'][0]}/content")[2].decode().splitlines()
    return [r.split(",")[1] for r in rows[1:]]


def wait_all(srv, ids, timeout=240):
    deadline = time.time() + timeout
    final = {}
    while time.time() < deadline and len(final) < len(ids):
        for i in ids:
            j = job(srv, i)
            if j.get("status") in ("succeeded", "failed", "cancelled"):
                final[i] = j
        time.sleep(0.2)
    return final


def reference_losses():
    """The same job, never interrupted."""
    d = temp_dir()
    srv = Server(d, "--model", MODEL)
    try:
        jid = create_job(srv, upload(srv, TRAIN))
        j = wait_all(srv, [jid]).get(jid, {})
        t.eq(j.get("status"), "succeeded", "the reference job trains")
        return losses(srv, j)
    finally:
        srv.stop()
        remove(d)


class Load:
    """What the clients did and what the server acknowledged before the kill."""

    def __init__(self):
        self.uploads = {}      # file id -> sha256 of what was sent
        self.jobs = []         # acknowledged job ids
        self.finished = {}     # job id -> fine_tuned_model, once seen succeeded
        self.imports = []      # acknowledged adapter imports (model names)
        self.lock = threading.Lock()

    def import_some(self, srv, d, stop):
        """Imports a finished job's adapter under new names (a publish each)."""
        while not stop.is_set():
            done = [j for j in self.jobs if j in self.finished]
            folder = os.path.join(d, "adapters", done[0]) if done else None
            if not folder or not os.path.isdir(folder):
                time.sleep(0.05)
                continue
            files = {k: (k, open(os.path.join(folder, k), "rb").read())
                     for k in ("adapter_config.json", "adapter_model.safetensors")}
            name = f"imp-{rng.randint(0, 1 << 40)}"
            body, hdrs = multipart({"name": name}, files)
            try:
                status = srv.json("POST", "/v1/adapters", body, hdrs)[0]
            except Exception:
                return
            if status == 200:
                with self.lock:
                    self.imports.append(name)

    def upload_some(self, srv, stop):
        while not stop.is_set():
            content = dataset(rng.randint(8, 800), salt=f" #{rng.randint(0, 1 << 30)}")
            try:
                fid = upload(srv, content)
            except Exception:
                return  # the server died mid-request: not acknowledged
            if fid:
                with self.lock:
                    self.uploads[fid] = hashlib.sha256(content).hexdigest()

    def watch_jobs(self, srv, stop):
        while not stop.is_set():
            for jid in list(self.jobs):
                try:
                    j = job(srv, jid)
                except Exception:
                    return
                if j.get("status") == "succeeded":
                    with self.lock:
                        self.finished[jid] = j.get("fine_tuned_model")
            time.sleep(0.05)


def check_after_restart(srv, d, load, cycle):
    for fid, digest in list(load.uploads.items()):
        status, _, data = srv.request("GET", f"/v1/files/{fid}/content")
        if not t.check(status == 200 and hashlib.sha256(data).hexdigest() == digest,
                       f"cycle {cycle}: acknowledged upload {fid} is intact"):
            break
    models = {m["id"] for m in srv.json("GET", "/v1/models")[2].get("data", [])}
    for name in list(load.imports):
        if not t.check(name in models, f"cycle {cycle}: acknowledged adapter import {name} is listed"):
            break
    for jid, model in list(load.finished.items()):
        j = job(srv, jid)
        t.check(j.get("status") == "succeeded" and model in models,
                f"cycle {cycle}: finished job {jid} stays finished and its model listed")
    db = sqlite3.connect(f"file:{os.path.join(d, 'retune.db')}?mode=ro", uri=True, timeout=10)
    try:
        t.eq(db.execute("PRAGMA integrity_check").fetchone()[0], "ok", f"cycle {cycle}: integrity_check")
        dups = db.execute("SELECT job_id, step FROM job_checkpoints GROUP BY job_id, step "
                          "HAVING count(*) > 1").fetchall()
        t.eq(dups, [], f"cycle {cycle}: one checkpoint row per job and step")
        lost = [p for (p,) in db.execute("SELECT path FROM models") if not os.path.isdir(p)]
        t.eq(lost, [], f"cycle {cycle}: every model row has its folder")
    finally:
        db.close()


def one_cycle(d, load, cycle):
    srv = Server(d, "--model", MODEL)
    try:
        if cycle:
            check_after_restart(srv, d, load, cycle)
        unfinished = [j for j in load.jobs if j not in load.finished]
        if len(unfinished) < 2 and load.uploads and rng.random() < 0.5:
            jid = create_job(srv, upload(srv, TRAIN))
            if jid:
                load.jobs.append(jid)
        stop = threading.Event()
        workers = [threading.Thread(target=load.upload_some, args=(srv, stop)),
                   threading.Thread(target=load.watch_jobs, args=(srv, stop)),
                   threading.Thread(target=load.import_some, args=(srv, d, stop))]
        for w in workers:
            w.start()
        time.sleep(rng.uniform(0.05, 0.8))
        srv.proc.send_signal(signal.SIGKILL)
        stop.set()
        for w in workers:
            w.join()
    finally:
        srv.stop()


def test_kill_at_random_moments():
    want = reference_losses()
    d = temp_dir()
    load = Load()
    try:
        for cycle in range(KILLS):
            one_cycle(d, load, cycle)
        srv = Server(d, "--model", MODEL)
        try:
            check_after_restart(srv, d, load, KILLS)
            final = wait_all(srv, load.jobs)
            t.check(len(load.jobs) >= 5, f"jobs were trained across the kills ({len(load.jobs)})")
            t.check(len(load.uploads) >= 50, f"uploads were acknowledged across the kills ({len(load.uploads)})")
            t.check(len(load.imports) >= 10, f"adapter imports were acknowledged across the kills ({len(load.imports)})")
            for jid in load.jobs:
                j = final.get(jid, {})
                t.eq(j.get("status"), "succeeded", f"interrupted job {jid} finishes ({j.get('error')})")
                t.eq(losses(srv, j), want, f"job {jid}: the losses of an uninterrupted run, step for step")
        finally:
            srv.stop()
    finally:
        remove(d)


t.run(test_kill_at_random_moments)
t.finish()
