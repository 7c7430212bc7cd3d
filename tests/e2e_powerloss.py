"""Power-loss simulation: what the API acknowledged is durable, not only
written. The server runs with tests/e2e/powerloss_shim.c preloaded, which
keeps, for the data directory, only what was fsynced (file contents at
their last fsync, directory entries at their folder's last fsync). The
server is killed at a random moment while uploads stream and a job trains;
the data directory is rebuilt as a power cut on the strictest file system
would leave it, and a server started on the rebuilt directory must hold
every upload it acknowledged, byte for byte, every job it reported
finished, and a database that passes `PRAGMA integrity_check`. Ten cuts,
from a fixed seed."""
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "e2e"))
from harness import Checks, Server, multipart, remove, temp_dir  # noqa: E402

t = Checks()
MODEL = os.path.abspath("tests/fixtures/tiny_chat")
SHIM_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e", "powerloss_shim.c")
CUTS = 10
rng = random.Random(7)


def build_shim(d):
    out = os.path.join(d, "powerloss_shim.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", out, SHIM_SRC, "-ldl"], check=True)
    return out


def rebuild(shadow, dest):
    """The directory a power cut leaves: the durable listings, each file with
    its durable content (a file never fsynced is there but empty)."""
    root = open(os.path.join(shadow, "root")).read().strip()

    def build(ino, path):
        os.makedirs(path, exist_ok=True)
        listing = os.path.join(shadow, "dirs", ino)
        if not os.path.exists(listing):
            return
        for line in open(listing):
            kind, child, name = line.rstrip("\n").split(" ", 2)
            target = os.path.join(path, name)
            if kind == "d":
                build(child, target)
            else:
                src = os.path.join(shadow, "inodes", child)
                if os.path.exists(src):
                    shutil.copyfile(src, target)
                else:
                    open(target, "wb").close()
    build(root, dest)


def dataset(n, salt):
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"q{i} {salt}"},
                                            {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                   for i in range(n)).encode()


def upload(srv, content):
    body, hdrs = multipart({"purpose": "fine-tune"}, {"file": ("d.jsonl", content)})
    status, _, f = srv.json("POST", "/v1/files", body, hdrs)
    return f.get("id") if status == 200 else None


def test_power_cuts():
    work = tempfile.mkdtemp(prefix="retune-powerloss-")
    shim = build_shim(work)
    data = os.path.join(work, "data0")
    os.makedirs(data)
    acked, finished = {}, {}
    try:
        for cut in range(CUTS):
            shadow = os.path.join(work, f"shadow{cut}")
            os.makedirs(shadow)
            env = {"LD_PRELOAD": shim, "POWERLOSS_DIR": data, "POWERLOSS_SHADOW": shadow,
                   "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}
            srv = Server(data, "--model", MODEL, env=env)
            stop = threading.Event()

            def uploads():
                while not stop.is_set():
                    content = dataset(rng.randint(10, 600), rng.random())
                    try:
                        fid = upload(srv, content)
                    except Exception:
                        return
                    if fid:
                        acked[fid] = hashlib.sha256(content).hexdigest()

            worker = threading.Thread(target=uploads)
            worker.start()
            if cut % 3 == 0:  # a job trains and publishes across some cuts
                fid = upload(srv, dataset(24, "job"))
                body = {"model": "tiny_chat", "training_file": fid, "hyperparameters": {"n_epochs": 1}}
                srv.json("POST", "/v1/fine_tuning/jobs", json.dumps(body).encode(),
                         {"Content-Type": "application/json"})
            deadline = time.time() + rng.uniform(0.3, 1.5)
            while time.time() < deadline:
                for j in srv.json("GET", "/v1/fine_tuning/jobs")[2].get("data", []):
                    if j["status"] == "succeeded":
                        finished[j["id"]] = j["fine_tuned_model"]
                time.sleep(0.05)
            srv.proc.send_signal(signal.SIGKILL)  # the power cut
            stop.set()
            worker.join()
            srv.stop()
            after = os.path.join(work, f"data{cut + 1}")
            rebuild(shadow, after)
            check(after, acked, finished, cut)
            remove(data)
            data = after
        t.check(len(finished) >= 1, f"jobs finished (and were checked) across the cuts ({len(finished)})")
        t.check(len(acked) >= 50, f"uploads were acknowledged across the cuts ({len(acked)})")
    finally:
        remove(work)


def check(d, acked, finished, cut):
    db = sqlite3.connect(os.path.join(d, "retune.db"))
    try:
        t.eq(db.execute("PRAGMA integrity_check").fetchone()[0], "ok", f"cut {cut}: integrity_check")
    finally:
        db.close()
    srv = Server(d, "--model", MODEL)
    try:
        bad = []
        for fid, digest in acked.items():
            status, _, body = srv.request("GET", f"/v1/files/{fid}/content")
            if status != 200 or hashlib.sha256(body).hexdigest() != digest:
                bad.append((fid, status))
        t.check(not bad, f"cut {cut}: all {len(acked)} acknowledged uploads survive the power cut intact "
                         f"({len(bad)} do not: {bad[:5]})")
        models = {m["id"] for m in srv.json("GET", "/v1/models")[2].get("data", [])}
        for jid, model in finished.items():
            j = srv.json("GET", f"/v1/fine_tuning/jobs/{jid}")[2]
            t.check(j.get("status") == "succeeded" and model in models,
                    f"cut {cut}: finished job {jid} survives with its model")
    finally:
        srv.stop()


t.run(test_power_cuts)
t.finish()
