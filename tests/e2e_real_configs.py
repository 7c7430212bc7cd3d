"""End-to-end numerical test at the exact widths of released models: for
every real config.json in tests/fixtures/real_configs/, two decoder layers
with every width kept (make_real_config_fixtures.py, a float64 PyTorch
reference) and retune's logits, loss, LoRA logits, LoRA loss and LoRA A/B
gradients checked against it by <build>/tests/test_model, on F32 weights
and on BF16 weights, with test_model's stated tolerances.

The build is the folder of RETUNE_BIN (as for every e2e_*.py). Fixtures go
to a temporary folder that is deleted config by config; the next config is
generated while test_model checks the previous one. Under the sanitizer
build (build-san) only the three smallest configs run. Needs torch (Debian's
python3-torch): when the running python has none, /usr/bin/python3 is tried;
without torch the test fails under CI=true and is skipped elsewhere.

Prints one line per config, then `N passed, N failed`, counting one result
per config and weight variant (f32, bf16).
"""
import concurrent.futures
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_DIR = os.path.join(HERE, "fixtures", "real_configs")
DEBIAN_PYTHON = "/usr/bin/python3"
VARIANTS = ("f32", "bf16")
SAN_CONFIGS = 3


def torch_or_reexec():
    """True when torch imports here; else re-executes this script under
    Debian's python if that one has torch; else False."""
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        pass
    if os.path.exists(DEBIAN_PYTHON) and os.path.realpath(sys.executable) != os.path.realpath(DEBIAN_PYTHON):
        probe = subprocess.run([DEBIAN_PYTHON, "-c", "import torch, numpy"], capture_output=True)
        if probe.returncode == 0:
            sys.stdout.flush()
            os.execv(DEBIAN_PYTHON, [DEBIAN_PYTHON, os.path.abspath(__file__), *sys.argv[1:]])
    return False


def mem_available():
    """Bytes of memory available (MemAvailable), or 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def scratch_root(shm_bytes, other_bytes):
    """/dev/shm (no disk writeback) when it and the memory left beside
    other_bytes have room for shm_bytes of fixtures; else the default
    temp dir."""
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize > shm_bytes and mem_available() > shm_bytes + other_bytes:
            return "/dev/shm"
    except OSError:
        pass
    return None


def run_test_model(test_model, d):
    """Runs test_model on d; returns (ok, 'N passed, N failed', worst errors, failure lines)."""
    env = dict(os.environ)
    # Large weight buffers on transparent huge pages: page faults are most
    # of the load time of a 2 GB model otherwise. Speed only.
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1"]))
    try:
        p = subprocess.run([test_model, d], capture_output=True, text=True, env=env, timeout=900)
    except subprocess.TimeoutExpired:
        return False, "timed out after 900 s", "", [f"{test_model} {d} ran past 900 s"]
    counts = re.findall(r"^(\d+) passed, (\d+) failed", p.stdout, re.M)
    worst = []  # per load path: its largest error as a fraction of its tolerance, and of what
    for how, fields in re.findall(r"\((fp32 matrices|matrices as stored)\): worst error / tolerance: (.*)", p.stderr):
        pairs = [f.rsplit(" ", 1) for f in fields.split(", ")]
        what, frac = max(pairs, key=lambda kv: float(kv[1]))
        worst.append(f"{'fp32' if how.startswith('fp32') else 'as stored'} {float(frac):.3f} ({what})")
    fails = [line for line in p.stderr.splitlines() if line.startswith("FAIL")]
    # A test_model without the DIR mode would run its default fixtures and pass.
    ok = p.returncode == 0 and bool(counts) and counts[-1][1] == "0" and bool(worst)
    if not worst:
        fails.append("test_model printed no worst-error line for this dir (built without the DIR mode?)")
    summary = f"{counts[-1][0]} passed, {counts[-1][1]} failed" if counts else f"no summary (exit {p.returncode})"
    if not counts:
        fails.append(p.stderr[-2000:])
    return ok, summary, ", ".join(worst), fails


def check_config(test_model, d):
    """Both variants of one generated config, each deleted once checked,
    then d. Returns the results."""
    try:
        start, results = time.time(), {}
        for v in VARIANTS:
            results[v] = run_test_model(test_model, os.path.join(d, v))
            shutil.rmtree(os.path.join(d, v), ignore_errors=True)
        results["seconds"] = time.time() - start
        return results
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    bin_path = os.environ.get("RETUNE_BIN", "build/retune")
    build = os.path.dirname(bin_path) or "."
    test_model = os.path.join(build, "tests", "test_model")
    if not torch_or_reexec():
        if os.environ.get("CI") == "true":
            print("FAIL torch is not installed (CI=true: tools/install_deps.sh installs python3-torch)")
            print("0 passed, 1 failed")
            sys.exit(1)
        print("skipped: torch is not installed (not under CI, so this is not a failure)")
        print("0 passed, 0 failed")
        sys.exit(0)
    if not os.access(test_model, os.X_OK):
        print(f"FAIL {test_model} is not built")
        print("0 passed, 1 failed")
        sys.exit(1)

    import torch
    sys.path.insert(0, os.path.join(HERE, "fixtures"))
    import make_real_config_fixtures as gen

    torch.set_num_threads(os.cpu_count() or 1)
    configs = []
    for path in sorted(glob.glob(os.path.join(CONFIG_DIR, "*.json"))):
        with open(path) as f:
            c, _ = gen.two_layer_config(json.load(f))
        configs.append((sum(gen.math.prod(s) for _, s in gen.tensor_shapes(c)), path))
    if os.path.basename(os.path.normpath(build)) == "build-san":
        configs = sorted(configs)[:SAN_CONFIGS]
        print(f"sanitizer build: only the {SAN_CONFIGS} smallest configs "
              f"({', '.join(os.path.basename(p)[:-5] for _, p in configs)})")
    biggest = max(n for n, _ in configs)
    # Two configs' files in flight (6 bytes a parameter: F32 + BF16); the
    # float64 arena, test_model's fp32 copy and 2 GiB of slack beside them.
    root = scratch_root(2 * 6 * biggest, 12 * biggest + (2 << 30))
    print(f"{len(configs)} real configs, 2 layers each, exact widths; vocabulary exact up to "
          f"{gen.MAX_EXACT_PARAMS // 1000000}M parameters, else capped at {gen.VOCAB_CAP} "
          f"(float64 reference memory and time); B={gen.B} T={gen.T}, LoRA r={gen.LORA['r']} "
          f"alpha={gen.LORA['lora_alpha']:g} on all 7 modules; fixtures in {root or tempfile.gettempdir()}",
          flush=True)

    passed = failed = 0
    ws = gen.Workspace()
    ws.weights([("reserve", (biggest,))])  # the arena at its largest size once
    start = time.time()

    def report(name, info, future):
        nonlocal passed, failed
        try:
            results = future.result()
        except Exception:
            results = {v: (False, "not run", "", [traceback.format_exc()]) for v in VARIANTS}
            results["seconds"] = 0
        vocab = f"{info['vocab']}" if info["vocab_exact"] else f"{info['vocab']} (capped from {info['real_vocab']})"
        cols = []
        for v in VARIANTS:
            ok, summary, worst, fails = results[v]
            passed, failed = passed + ok, failed + (not ok)
            cols.append(f"{v} {'PASS' if ok else 'FAIL'} ({summary}; worst/tol {worst or '-'})")
            for line in fails[:20]:
                print(f"  {name} {v}: {line}")
        print(f"{name}: {info['params'] / 1e6:.1f}M params, vocab {vocab}: {'; '.join(cols)} "
              f"[generate {sum(info['seconds'].values()):.0f} s, test_model {results['seconds']:.0f} s]",
              flush=True)

    made = []  # every fixture dir, removed at the end even after an interrupt
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            for _, path in configs:
                name = os.path.basename(path)[:-5]
                d = tempfile.mkdtemp(prefix=f"retune-real-{name}-", dir=root)
                made.append(d)
                try:
                    info = gen.make(path, d, ws)
                except Exception:
                    shutil.rmtree(d, ignore_errors=True)
                    print(f"{name}: FAIL generating the fixture:\n{traceback.format_exc()}", flush=True)
                    failed += len(VARIANTS)
                    continue
                if pending:
                    report(*pending)
                pending = (name, info, pool.submit(check_config, test_model, d))
            if pending:
                report(*pending)
    finally:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
    print(f"{len(configs)} configs in {time.time() - start:.0f} s; counted: one result per config x "
          f"weight variant ({', '.join(VARIANTS)})")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
