"""Runs docs/QUICKSTART.md end to end, so the document cannot rot: every
```sh block is executed, in order, in one bash session (set -e) against a
real server, exactly as written. The server runs on the built-in model's
layout; for speed the test pre-trains it with the small "micro" preset (the
document's outputs come from the real "tiny" model)."""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "e2e"))
from harness import BIN, Checks, Server, remove, temp_dir  # noqa: E402

t = Checks()


def blocks(path):
    text = open(path).read()
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def main():
    d = temp_dir()
    model = os.path.join(d, "base", "retune-tiny")
    os.makedirs(os.path.dirname(model))
    pre = subprocess.run([BIN, "pretrain", "--out", model, "--preset", "micro", "--steps", "80"],
                         capture_output=True, text=True, timeout=300)
    t.eq(pre.returncode, 0, f"pretrain micro ({pre.stderr[-300:]})")
    srv = Server(os.path.join(d, "data"), "--model", model)
    try:
        cmds = blocks("docs/QUICKSTART.md")
        t.check(len(cmds) >= 6, "the quickstart has its steps")
        # The first block starts the server; the test already did (same flags, test port).
        script = "set -euo pipefail\n" + "\n".join(cmds[1:])
        env = dict(os.environ, RETUNE=f"http://127.0.0.1:{srv.port}")
        proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=600)
        print(proc.stdout[-3000:])
        t.eq(proc.returncode, 0, f"every quickstart command succeeds ({proc.stderr[-500:]})")
        out = proc.stdout
        t.check("succeeded" in out, "the job succeeded")
        t.check(re.search(r"ft:retune-tiny:retune:zorbl:", out) is not None, "the fine-tuned model is listed")
        t.check("Retention loss" in out, "retention was measured")
    finally:
        srv.stop()
        remove(d)


main()
t.finish()
