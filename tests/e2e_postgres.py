"""Storage on PostgreSQL (issue 16, item 1), against a real server.

Starts a throwaway PostgreSQL cluster (Debian's initdb and pg_ctl from
/usr/lib/postgresql/*/bin) in a temporary folder, listening only on a Unix
socket in that folder, as the `postgres` system user when run as root
(PostgreSQL refuses root) and as the caller otherwise; it is stopped and
removed at the end, whatever happens. Then:
  - runs the storage unit tests (BUILD/tests/test_storage, test_storage_jobs)
    with RETUNE_TEST_DATABASE set to it: the same tests SQLite passes;
  - runs the core job flow through `retune serve` with RETUNE_DATABASE set to
    it: upload, create a LoRA job, poll it to succeeded, events, checkpoints,
    metadata filter, a completion with the fine-tuned model; a restart keeps
    every record, and no retune.db appears in the data directory; while the
    database is down requests are refused and the server lives on, and
    once it is back every request is served again;
  - `retune keys` with --database; a bad or unreachable --database is refused
    at start with a message naming the flag.
Under CI=true a missing PostgreSQL fails the test; elsewhere it is skipped.
"""
import functools
import glob
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "e2e"))
from harness import BIN, Checks, Server, multipart, remove, temp_dir  # noqa: E402

t = Checks()
BUILD = os.path.dirname(os.path.abspath(BIN))
MODEL = os.path.abspath("tests/fixtures/tiny_chat")
FACTS = [("What colour is the sky on Zorbl?", "Green, always green."),
         ("Who rules Zorbl?", "Queen Mab the Third.")]


class Cluster:
    """A throwaway PostgreSQL cluster on a Unix socket in its own folder."""

    def __init__(self, bindir):
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="rt-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.started = False
        self.as_user = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        # trust is safe here: the only way in is the socket in a folder only
        # its owner (and root) may enter
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "-N")
        opts = (f"-c listen_addresses='' -c unix_socket_directories={self.root} "
                "-c fsync=off -c full_page_writes=off -c max_connections=60")
        self.opts = opts
        self.started = True  # from here on, stop() must try
        self.start()
        self.url = f"postgresql:///postgres?host={self.root}&user=postgres"

    def start(self):
        self._run("pg_ctl", "-D", self.data, "-w", "-t", "60", "-l", self.log, "-o", self.opts, "start")

    def halt(self):
        """Stops the server (its clients' connections break); start() again."""
        self._run("pg_ctl", "-D", self.data, "-w", "-t", "30", "-m", "fast", "stop")

    def _run(self, tool, *args):
        subprocess.run(self.as_user + [os.path.join(self.bindir, tool), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def stop(self):
        try:
            if self.started:
                self._run("pg_ctl", "-D", self.data, "-w", "-t", "30", "-m", "immediate", "stop")
        except Exception as e:  # still remove the folder
            print(f"(pg_ctl stop: {e})", flush=True)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def find_bindir():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(re.search(r"/(\d+)/bin/", p).group(1)))
    return os.path.dirname(found[-1]) if found else None


def run_unit(name, url):
    """Runs BUILD/tests/<name> against the cluster; adds its counts to ours."""
    path = os.path.join(BUILD, "tests", name)
    if not t.check(os.access(path, os.X_OK), f"{path} is built"):
        return
    env = dict(os.environ, RETUNE_TEST_DATABASE=url)
    p = subprocess.run([path], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240)
    out = p.stdout.decode("utf-8", "replace")
    m = re.findall(r"^(\d+) passed, (\d+) failed", out, re.M)
    fails = [line for line in out.splitlines()
             if line.startswith("FAIL") or ("ERROR: " in line and "Sanitizer" in line)]
    for line in fails[:20]:
        print(f"  {name}: {line}", flush=True)
    t.check(bool(m) and m[-1][1] == "0" and p.returncode == 0 and "PostgreSQL" in out,
            f"{name} passes against PostgreSQL ({m[-1] if m else 'no summary'}, exit {p.returncode})")
    if p.returncode != 0 and not fails:
        print(out[-3000:], flush=True)


def dataset(n):
    lines = [json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
             for q, a in (FACTS[i % len(FACTS)] for i in range(n))]
    return ("\n".join(lines) + "\n").encode()


def wait(srv, job_id, statuses, timeout=180):
    deadline = time.time() + timeout
    job = {}
    while time.time() < deadline:
        job = srv.json("GET", f"/v1/fine_tuning/jobs/{job_id}")[2]
        if job.get("status") in statuses:
            break
        time.sleep(0.2)
    return job


def job_flow(cluster):
    url = cluster.url
    d = temp_dir()
    srv = Server(d, "--model", MODEL, env={"RETUNE_DATABASE": url})
    try:
        body, hdrs = multipart({"purpose": "fine-tune"}, {"file": ("train.jsonl", dataset(16))})
        status, _, f = srv.json("POST", "/v1/files", body, hdrs)
        t.eq(status, 200, f"upload a file ({f})")
        hp = {"n_epochs": 2, "batch_size": 4, "learning_rate": 3e-2, "lora_r": 4, "checkpoint_interval": 4}
        status, _, job = srv.json("POST", "/v1/fine_tuning/jobs", json.dumps({
            "model": "tiny_chat", "training_file": f.get("id"), "suffix": "pg", "seed": 3,
            "metadata": {"db": "postgres"}, "hyperparameters": hp}).encode(),
            {"Content-Type": "application/json"})
        t.eq((status, job.get("status")), (200, "queued"), "create a job")
        done = wait(srv, job["id"], {"succeeded", "failed", "cancelled"})
        t.eq(done.get("status"), "succeeded", f"the job succeeds ({done.get('error')})")
        name = done.get("fine_tuned_model") or ""
        t.check(name.startswith("ft:tiny_chat:retune:pg:"), f"fine-tuned model name {name}")
        evs = srv.json("GET", f"/v1/fine_tuning/jobs/{job['id']}/events?limit=100")[2].get("data", [])
        t.check(any(e["type"] == "metrics" for e in evs) and
                evs[0]["message"].startswith("The job has successfully completed"), "events, newest first")
        ck = srv.json("GET", f"/v1/fine_tuning/jobs/{job['id']}/checkpoints")[2].get("data", [])
        t.check(len(ck) >= 1 and all(c["fine_tuned_model_checkpoint"].startswith(name) for c in ck),
                "checkpoints recorded")
        got = srv.json("GET", "/v1/fine_tuning/jobs?metadata[db]=postgres")[2].get("data", [])
        t.eq([j["id"] for j in got], [job["id"]], "metadata filter (retune_json_string)")
        t.eq(srv.json("GET", "/v1/fine_tuning/jobs?metadata[db]=sqlite")[2].get("data"), [],
             "metadata filter matching none")
        status, _, r = srv.json("POST", "/v1/chat/completions", json.dumps({
            "model": name, "messages": [{"role": "user", "content": FACTS[0][0]}],
            "max_tokens": 8, "temperature": 0}).encode(), {"Content-Type": "application/json"})
        t.check(status == 200 and r.get("model") == name and
                r.get("choices", [{}])[0].get("message", {}).get("role") == "assistant",
                f"a completion with the fine-tuned model ({status})")
        models = [m["id"] for m in srv.json("GET", "/v1/models")[2].get("data", [])]
        t.check(name in models, "the fine-tune is listed")
        t.check(not os.path.exists(os.path.join(d, "retune.db")), "no SQLite file in the data directory")
        t.check(os.path.exists(os.path.join(d, "files", f["id"])), "the upload's bytes are under files/")
        t.eq(srv.stop(), 0, "clean stop")
        srv = Server(d, "--model", MODEL, "--database", url)
        again = srv.json("GET", f"/v1/fine_tuning/jobs/{job['id']}")[2]
        t.eq((again.get("status"), again.get("fine_tuned_model")), ("succeeded", name),
             "records survive a restart (--database)")
        t.eq(srv.json("GET", f"/v1/files/{f['id']}")[0], 200, "the file record too")
        # The database goes away and comes back: errors meanwhile, no crash, then service.
        cluster.halt()
        status, _, body = srv.json("GET", f"/v1/files/{f['id']}")
        # 503, not 401: the keys cannot be checked, which is no fault of the caller's key
        t.eq((status, (body.get("error") or {}).get("code")), (503, "database_unavailable"),
             f"database down: 503 naming the database ({body})")
        t.check(srv.proc.poll() is None, "database down: the server keeps running")
        cluster.start()
        codes = [srv.json("GET", f"/v1/fine_tuning/jobs/{job['id']}")[0] for _ in range(12)]
        t.eq(codes, [200] * 12, "database back: every request served again (connections reset)")
    finally:
        srv.stop()
        remove(d)


def keys_and_refusals(url):
    d = temp_dir()
    try:
        p = subprocess.run([BIN, "keys", "add", "--project", "pgtest", "--data-dir", d, "--database", url],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        t.eq(p.returncode, 0, f"retune keys add --database ({p.stderr.decode()[-300:]})")
        p = subprocess.run([BIN, "keys", "list", "--data-dir", d], env=dict(os.environ, RETUNE_DATABASE=url),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        t.check(p.returncode == 0 and b"pgtest" in p.stdout, "retune keys list (RETUNE_DATABASE) sees it")
        for bad, why in (("mysql://user@host/db", "an unknown kind"),
                         ("postgresql:///x?host=/nonexistent-rt-socket&connect_timeout=3", "an unreachable server"),
                         ("postgres://h/db?no_such_option=1", "a malformed connection string")):
            p = subprocess.run([BIN, "serve", "--data-dir", d, "--port", "0", "--model", MODEL, "--database", bad],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
            err = p.stderr.decode("utf-8", "replace")
            t.check(p.returncode != 0 and "--database" in err and "listening" not in err,
                    f"serve refuses {why} naming --database (exit {p.returncode}): {err[-300:]!r}")
            t.check("AddressSanitizer" not in err and "runtime error" not in err, f"no sanitizer report ({why})")
    finally:
        remove(d)


def main():
    bindir = find_bindir()
    if bindir is None or (os.geteuid() == 0 and not shutil.which("runuser")):
        if os.environ.get("CI") == "true":
            t.check(False, "PostgreSQL is installed (CI=true: tools/install_deps.sh installs postgresql)")
        else:
            print("skipped: PostgreSQL (initdb) is not installed (not under CI, so this is not a failure)")
        t.finish()
    cluster = None
    try:
        t0 = time.time()
        cluster = Cluster(bindir)
        print(f"-- cluster up in {time.time() - t0:.1f} s", flush=True)
        for name in ("test_storage", "test_storage_jobs"):
            print(f"-- {name} on PostgreSQL", flush=True)
            run_unit(name, cluster.url)
        t.run(functools.partial(job_flow, cluster))
        t.run(functools.partial(keys_and_refusals, cluster.url))
    except Exception as e:
        t.check(False, f"PostgreSQL cluster: {e}")
        if cluster and os.path.exists(cluster.log):
            print(open(cluster.log).read()[-2000:])
    finally:
        if cluster:
            cluster.stop()
    t.finish()


main()
