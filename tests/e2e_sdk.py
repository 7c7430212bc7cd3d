"""OpenAI's official Node SDK against the real server, unchanged but for
its base URL (tests/sdk/sdk_check.mjs). The SDK comes from the npm registry
(`npm ci` in tests/sdk, which .ci/run does); where it is not installed the
test says so and skips."""
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "e2e"))
from harness import Checks, Server, remove, temp_dir  # noqa: E402
from json_check import validate  # noqa: E402

t = Checks()
SDK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sdk")


def main():
    if not shutil.which("node") or not os.path.isdir(os.path.join(SDK, "node_modules", "openai")):
        # under CI a test that cannot run fails the run: the SDK is installed by .ci/run
        t.check(os.environ.get("CI") != "true", "the openai npm package is installed (CI)")
        print("skipped: the openai npm package is not installed (cd tests/sdk && npm install)")
        return
    d = temp_dir()
    train = os.path.join(d + ".jsonl")
    with open(train, "w") as f:
        for i in range(12):
            f.write(json.dumps({"messages": [{"role": "user", "content": "Who rules Zorbl?"},
                                             {"role": "assistant", "content": "Queen Mab."}]}) + "\n")
    srv = Server(d)
    try:
        env = dict(os.environ, RETUNE_URL=f"http://127.0.0.1:{srv.port}", TRAIN_FILE=train,
                   BASE_MODEL="tiny_chat")
        proc = subprocess.run(["node", os.path.join(SDK, "sdk_check.mjs")], capture_output=True,
                              text=True, env=env, timeout=300)
        t.eq(proc.returncode, 0, f"the SDK script runs ({proc.stderr[-800:]})")
        r = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {}
        t.eq(r.get("file", {}).get("status"), "processed", "files.create")
        t.check(r.get("file", {}).get("id") in r.get("files_listed", []), "files.list")
        t.eq(r.get("job", {}).get("status"), "succeeded", "fineTuning.jobs create/retrieve")
        t.check(r.get("events", 0) > 0 and len(r.get("checkpoints", [])) > 0, "events and checkpoints lists")
        t.check(r.get("job", {}).get("model") in r.get("models", []), "models.list has the fine-tune")
        t.eq(r.get("chat", {}).get("finish"), "length", "chat.completions on the adapter")
        t.check(r.get("stream", {}).get("usage", {}).get("completion_tokens") == 5, "streamed chat with usage")
        st = r.get("structured", {})
        t.eq(st.get("finish"), "stop", f"json_schema response_format finishes ({st.get('content')!r})")
        t.check(isinstance(st.get("parsed"), dict) and "parse_error" not in st["parsed"] and
                validate(st.get("schema", {}), st["parsed"]) is None,
                f"json_schema output parses and validates ({st.get('content')!r})")
        t.eq(r.get("completion", {}).get("object"), "text_completion", "legacy completions")
        sm = r.get("sampling", {})
        forced = sm.get("forced", [])
        t.check(len(forced) == 4 and len(set(forced)) == 1, f"logit_bias +100 forces its token ({forced})")
        t.check(sm.get("distinct_pos", 0) > sm.get("distinct_neg", 99),
                f"frequency_penalty +2 repeats less than -2 ({sm})")
        t.eq(r.get("error", {}).get("status"), 404, "API errors arrive as the SDK's typed errors")
    finally:
        srv.stop()
        remove(d)
        os.unlink(train)


main()
t.finish()
