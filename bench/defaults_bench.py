"""Do the defaults learn? The example task (examples/zorbl_*.jsonl) on the
built-in model, through the real server: a LoRA job with no hyperparameters
at all, the quickstart's hand-tuned LoRA settings, and a full fine-tune with
no hyperparameters but its type. Prints each job's final validation loss and
the default's ratio to the tuned one (issue 14's target: at most 1.10).

    python3 bench/defaults_bench.py [BUILD]    (default build/; pre-trains the
                                                built-in model first, ~70 s)
"""
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
import harness  # noqa: E402

BUILD = sys.argv[1] if len(sys.argv) > 1 else "build"
harness.BIN = os.path.join(BUILD, "retune")
JSON = {"Content-Type": "application/json"}
TUNED = {"n_epochs": 20, "batch_size": 4, "learning_rate_multiplier": 3, "warmup_ratio": 0.1, "lora_r": 8,
         "target_modules": "all-linear"}


def upload(srv, path):
    body, hdrs = harness.multipart({"purpose": "fine-tune"}, {"file": (os.path.basename(path), open(path, "rb").read())})
    return srv.json("POST", "/v1/files", body, hdrs)[2]["id"]


def run_job(srv, train, valid, hp):
    body = {"model": "retune-tiny", "training_file": train, "validation_file": valid, "seed": 1}
    if hp is not None:
        body["hyperparameters"] = hp
    job = srv.json("POST", "/v1/fine_tuning/jobs", json.dumps(body).encode(), JSON)[2]
    start = time.time()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.5)
        job = srv.json("GET", f"/v1/fine_tuning/jobs/{job['id']}")[2]
    events = srv.json("GET", f"/v1/fine_tuning/jobs/{job['id']}/events?limit=1000")[2]["data"]
    losses = [e["data"]["valid_loss"] for e in events if e["type"] == "metrics" and e["data"].get("valid_loss") is not None]
    return job, (losses[0] if losses else float("nan")), time.time() - start  # newest first


def main():
    d = tempfile.mkdtemp(prefix="retune-defaults-")
    srv = start_builtin(d)
    try:
        train = upload(srv, "examples/zorbl_train.jsonl")
        valid = upload(srv, "examples/zorbl_valid.jsonl")
        rows = []
        for name, hp in (("LoRA, no hyperparameters", None), ("LoRA, quickstart's tuned settings", TUNED),
                         ("full, no hyperparameters but its type", {"training_type": "full"})):
            job, loss, secs = run_job(srv, train, valid, hp)
            rows.append((name, job["status"], loss, secs, job["hyperparameters"]))
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
        print(f"machine: {cpu}, {os.cpu_count()} cores")
        for name, status, loss, secs, hp in rows:
            print(f"{name:40s} {status:9s} valid_loss {loss:.4f}  {secs:5.1f} s  {json.dumps(hp)}")
        print(f"default / tuned validation loss: {rows[0][2] / rows[1][2]:.3f} (target <= 1.10)")
        print(f"full default / tuned validation loss: {rows[2][2] / rows[1][2]:.3f}")
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


def start_builtin(d):
    """A server on the built-in model (pre-trained on first start)."""
    import re
    import subprocess
    log = open(d + ".log", "ab")
    proc = subprocess.Popen([harness.BIN, "serve", "--data-dir", d, "--port", "0"], stdout=log, stderr=log)
    srv = harness.Server.__new__(harness.Server)
    srv.data_dir, srv.log_path, srv.log, srv.log_start, srv.proc = d, d + ".log", log, 0, proc
    deadline = time.time() + 600
    while time.time() < deadline:
        m = re.findall(rb"listening on http://[^:]+:(\d+)", open(srv.log_path, "rb").read())
        if m:
            srv.port = int(m[-1])
            return srv
        if proc.poll() is not None:
            raise RuntimeError(open(srv.log_path).read())
        time.sleep(0.5)
    raise RuntimeError("the server did not start")


main()
