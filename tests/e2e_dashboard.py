"""The web dashboard at / in a real headless Chromium (Debian's chromium,
driven by puppeteer-core from tests/browser, `npm install` there, which
.ci/run does): the page asks for the API key, shows the server's message
for a bad upload, uploads examples/zorbl_train.jsonl through its file input,
creates a LoRA job whose loss curve gains points while it runs (the job's
events stream), and streams the base model's and the fine-tune's answers
side by side. No error element may show and the browser console may log no
error (but the 401s before the key is entered). Screenshots are kept in a
temporary folder (or $DASHBOARD_SHOTS) and their paths printed. Where
chromium or puppeteer-core is missing the test says so and skips, except
under CI, where that fails it."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "e2e"))
from harness import Checks, Server, remove, temp_dir  # noqa: E402

t = Checks()
HERE = os.path.dirname(os.path.abspath(__file__))
BROWSER_DIR = os.path.join(HERE, "browser")
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")
KEY = "sk-dashboard-test"


def chromium():
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        found = name and shutil.which(name)
        if found:
            return found
    return None


def missing_pieces():
    why = []
    if not shutil.which("node"):
        why.append("node is not installed")
    if not os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "puppeteer-core")):
        why.append("puppeteer-core is not installed (cd tests/browser && npm install)")
    if not chromium():
        why.append("chromium is not installed (apt-get install chromium; tools/install_deps.sh)")
    return why


def check_assets(srv):
    """The page and its files as plain HTTP: no key, types, no caching, 404 in JSON."""
    status, hdrs, body = srv.request("GET", "/")
    t.eq(status, 200, "GET / without a key")
    t.check(hdrs.get("content-type", "").startswith("text/html"), f"/ is HTML ({hdrs.get('content-type')})")
    t.eq(hdrs.get("cache-control"), "no-cache", "/ is not cached")
    html = body.decode()
    assets = re.findall(r'(?:src|href)="(/dashboard/[^"]+)"', html)
    t.check(len(assets) >= 2, f"the page loads its script and style from /dashboard/ ({assets})")
    kinds = {"js": "text/javascript", "css": "text/css"}
    for a in assets:
        s, h, b = srv.request("GET", a)
        t.eq(s, 200, f"GET {a}")
        t.check(h.get("content-type", "").startswith(kinds.get(a.rsplit(".", 1)[-1], "?")),
                f"{a} has its content type ({h.get('content-type')})")
        t.eq(h.get("cache-control"), "no-cache", f"{a} is not cached")
        t.check(re.search(rb"https?://", b) is None, f"{a} loads nothing from elsewhere")
    t.check(re.search(r"https?://", html) is None, "the page loads nothing from elsewhere")
    s, h, b = srv.json("GET", "/dashboard/nope.js")
    t.eq((s, b.get("error", {}).get("code")), (404, "not_found"), "an unknown dashboard file is a JSON 404")
    s, _, _ = srv.request("GET", "/v1/files")
    t.eq(s, 401, "the API itself still needs the key")


def check_browser(r):
    t.check(not r.get("failure"), f"the browser script ran to its end ({r.get('failure', '')[:1500]})")
    t.check(r.get("key_prompt") and "API key" in (r.get("key_prompt_text") or ""),
            f"a 401 shows the key prompt ({r.get('key_prompt_text')!r})")
    t.check(not r.get("error_without_key"), "the 401 is the key prompt, not an error")
    t.eq(r.get("key_stored"), KEY, "the key is kept in localStorage")
    t.check(re.search(r"line 2", r.get("bad_upload_error") or "") is not None,
            f"a bad upload shows the server's message naming the line ({r.get('bad_upload_error')!r})")
    t.check(r.get("error_dismissed"), "the error can be dismissed")
    names = {f["filename"]: f["status"] for f in r.get("files", [])}
    t.eq(names.get("zorbl_train.jsonl"), "processed", "zorbl_train.jsonl uploaded through the file input")
    t.eq(r.get("models_offered"), ["tiny_chat"], "the job form offers the base model")
    t.check((r.get("job_id") or "").startswith("ftjob-"), f"the job was created from the page ({r.get('job_id')})")

    running = [o for o in r.get("timeline", []) if o["status"] == "running"]
    grew = any(b["points"] > a["points"] > 0 for a in running for b in running if b["t"] > a["t"])
    seen = [(o["t"], o["points"]) for o in running]
    t.check(grew, f"the loss curve gains points while the job runs (seconds, points: {seen[:3]} .. {seen[-3:]})")
    if running:
        print(f"the job ran {running[-1]['t'] - running[0]['t']:.1f} s in the page; "
              f"{running[0]['points']} -> {running[-1]['points']} loss points meanwhile")

    f = r.get("final", {})
    t.eq(f.get("status"), "succeeded", "the job succeeds")
    t.eq(f.get("row_status"), "succeeded", "the jobs list shows it succeeded")
    t.eq(f.get("stream"), "finished", "the events stream ended with [DONE]")
    t.check(f.get("loss_points", 0) >= 3 and f.get("valid_points", 0) >= 1 and f.get("accuracy_points", 0) >= 3,
            f"loss, validation loss and accuracy curves are drawn ({f.get('loss_points')}, "
            f"{f.get('valid_points')}, {f.get('accuracy_points')})")
    t.eq(f.get("metrics_events"), f.get("loss_points"), "every metrics event is a point")
    model = f.get("fields", {}).get("fine_tuned_model", "")
    t.check(model.startswith("ft:tiny_chat:retune:dash:"), f"the details show the fine-tuned model ({model})")
    t.check(0 < len(f.get("checkpoints", [])) <= 10 and
            all(c.startswith(model + ":ckpt-step-") for c in f.get("checkpoints", [])),
            f"the newest checkpoints are listed ({f.get('checkpoints')})")

    t.eq(r.get("playground_model"), model, "the playground opens on the finished model")
    pg = r.get("playground", {})
    for side, want in (("base", "tiny_chat"), ("model", model)):
        p = pg.get(side, {})
        t.eq((p.get("model"), p.get("state")), (want, "done"), f"the {side} side was answered")
        t.check(len(p.get("text", "")) > 0, f"the {side} side shows text ({p.get('text')!r})")
        t.check(p.get("updates", 0) > 1, f"the {side} answer arrived in pieces ({p.get('updates')} updates)")
    t.check(pg.get("base", {}).get("text") != pg.get("model", {}).get("text"),
            "the fine-tune answers otherwise than the base model")
    kinds = {m["kind"] for m in r.get("models", [])}
    t.check({"base", "adapter", "checkpoint"} <= kinds, f"the models tab lists base, adapter, checkpoints ({kinds})")
    t.check("zorbl_train.jsonl" in r.get("files_after_delete", []) and
            "bad.jsonl" not in r.get("files_after_delete", []), "a file is deleted from the page")

    t.eq((r.get("error_at_end"), r.get("error_elements")), (None, []), "no error element shows")
    bad = [c for c in r.get("console", []) if not (c["phase"] == "no-key" and "401" in c["text"])]
    t.eq(bad, [], "the browser console logs no error")
    print("screenshots:")
    for s in r.get("screenshots", []):
        print("   " + s)


def main():
    why = missing_pieces()
    if why:
        # under CI a test that cannot run fails the run: .ci/run installs both
        t.check(os.environ.get("CI") != "true", "chromium and puppeteer-core are installed (CI): " + "; ".join(why))
        print("skipped: " + "; ".join(why))
        return
    d = temp_dir()
    shots = os.environ.get("DASHBOARD_SHOTS") or tempfile.mkdtemp(prefix="retune-dashboard-shots-")
    os.makedirs(shots, exist_ok=True)
    bad = os.path.join(d + "-bad", "bad.jsonl")
    os.makedirs(os.path.dirname(bad))
    with open(bad, "w") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                         {"role": "assistant", "content": "hello"}]}) + "\n")
        f.write(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}) + "\n")
    srv = Server(d, "--api-key", KEY)
    try:
        t.run(lambda: check_assets(srv))
        env = dict(os.environ, RETUNE_URL=f"http://127.0.0.1:{srv.port}", API_KEY=KEY, CHROMIUM=chromium(),
                   TRAIN_FILE=os.path.join(EXAMPLES, "zorbl_train.jsonl"),
                   VALID_FILE=os.path.join(EXAMPLES, "zorbl_valid.jsonl"), BAD_FILE=bad, SHOTS=shots)
        try:
            proc = subprocess.run(["node", os.path.join(BROWSER_DIR, "dashboard_check.mjs")], capture_output=True,
                                  text=True, env=env, timeout=240, cwd=BROWSER_DIR)
            out, err = proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
            out, err = (e.stdout or b"").decode(), "timed out"
        lines = out.strip().splitlines()
        try:
            r = json.loads(lines[-1]) if lines else {}
        except ValueError:
            r = {}
        if not r:
            t.check(False, f"the browser script reports ({err[-1500:]})")
        else:
            t.run(lambda: check_browser(r))
    finally:
        srv.stop()
        remove(d)
        remove(os.path.dirname(bad))


main()
t.finish()
