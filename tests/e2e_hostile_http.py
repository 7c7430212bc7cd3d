"""End-to-end tests of the HTTP layer against hostile clients, on raw
sockets to the real server on 127.0.0.1: a chunked body over its limit is
answered 413 at once (no temporary file left, the connection closed); idle
and slow sockets neither lock /healthz out nor burn CPU (400 idle sockets
with 64 streams and plain completions in flight, then more idle sockets
than the old 512-connection limit); slow request heads and bodies are cut
by their time budget; a per-client connection limit; errors that the HTTP
library used to answer in HTML (or not at all) are JSON, and echoed bytes
are valid UTF-8. Time bounds only catch hangs: each is many times what a
healthy server needs."""
import concurrent.futures
import functools
import http.client
import json
import os
import resource
import socket
import sqlite3
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "e2e"))
from harness import Checks, Server, multipart, remove, temp_dir  # noqa: E402

t = Checks()
MODEL = os.path.abspath("tests/fixtures/tiny_chat")
TICK = os.sysconf("SC_CLK_TCK")


# ---- raw HTTP ---------------------------------------------------------------------

def connect(port, source=None, timeout=10):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0) if source else None)


def read_response(s, timeout=5.0):
    """Reads one response (head, then a Content-Length body) or until the
    connection ends; returns (status, headers, body, seconds). status is None
    when nothing complete came within the timeout."""
    start = time.time()
    data = b""
    s.settimeout(0.2)
    while time.time() - start < timeout:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode("latin-1").split("\r\n")
            hdrs = dict((k.strip().lower(), v.strip()) for k, v in
                        (line.split(":", 1) for line in head[1:] if ":" in line))
            need = int(hdrs.get("content-length", "0"))
            if len(data) - head_end - 4 >= need:
                body = data[head_end + 4:head_end + 4 + need]
                return int(head[0].split()[1]), hdrs, body, time.time() - start
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return None, {}, data, time.time() - start


def exchange(port, raw, timeout=5.0, source=None):
    s = connect(port, source)
    try:
        s.sendall(raw)
        return read_response(s, timeout)
    finally:
        s.close()


def closed_within(s, timeout):
    """Seconds until the server ends the connection (EOF or reset), or None."""
    start = time.time()
    s.settimeout(0.2)
    while time.time() - start < timeout:
        try:
            if not s.recv(65536):
                return time.time() - start
        except socket.timeout:
            continue
        except OSError:
            return time.time() - start
    return None


def json_error(status, hdrs, body):
    """The error object of an OpenAI-style JSON error body, or None. The
    body must be strict UTF-8."""
    try:
        err = json.loads(body.decode("utf-8"))["error"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    ok = (hdrs.get("content-type", "").startswith("application/json") and
          all(k in err for k in ("message", "type", "param", "code")))
    return err if ok else None


def cpu_seconds(pid):
    """User plus system CPU time of a whole process, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_over(pid, seconds=1.0):
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


# ---- 1. a chunked body over the limit ------------------------------------------------

def send_chunked(s, first, total, stop):
    """Sends `first` then chunks of filler up to `total` bytes (until stop or
    the server closes)."""
    try:
        s.sendall(b"%x\r\n%s\r\n" % (len(first), first))
        piece = (b"x" * 1023 + b"\n") * 16
        sent = len(first)
        while sent < total and not stop.is_set():
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
    except OSError:
        pass


def over_limit(srv, path, ctype, first, total, what):
    s = connect(srv.port)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
              "Transfer-Encoding: chunked\r\n\r\n".encode())
    stop = threading.Event()
    writer = threading.Thread(target=send_chunked, args=(s, first, total, stop), daemon=True)
    writer.start()
    status, hdrs, body, secs = read_response(s, timeout=5)
    tmps = [n for n in os.listdir(os.path.join(srv.data_dir, "files")) if n.startswith(".tmp")]
    err = json_error(status, hdrs, body)
    t.eq(status, 413, f"{what}: a chunked body over the limit is refused while it streams ({secs:.2f} s)")
    t.check(err is not None and err["code"] == "request_too_large", f"{what}: the 413 is JSON ({body[:200]!r})")
    t.check(secs < 5, f"{what}: the 413 comes at once, not at the timeout ({secs:.2f} s)")
    t.eq(tmps, [], f"{what}: no temporary file is left in files/ when the 413 arrives")
    t.check(closed_within(s, 8) is not None, f"{what}: the server closes the connection")
    stop.set()
    writer.join(10)
    s.close()


def test_chunked_over_limit(srv):
    boundary = "b0undary"
    first = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
             f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n"
             "Content-Type: application/octet-stream\r\n\r\n").encode()
    over_limit(srv, "/v1/files", f"multipart/form-data; boundary={boundary}", first, 4 << 20, "upload")
    over_limit(srv, "/v1/fine_tuning/jobs", "application/json", b"{\"model\": \"", 3 << 20, "JSON body")
    cpu = cpu_over(srv.proc.pid)
    t.check(cpu < 0.1, f"no core stays busy after refused bodies ({cpu:.2f} s CPU in 1 s)")
    t.eq(srv.json("GET", "/healthz")[0], 200, "the server serves on")


# ---- 2. idle sockets, streams and /healthz -----------------------------------------

def stream_chat(port, i):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {"model": "tiny_chat", "messages": [{"role": "user", "content": f"count {i}"}],
            "max_tokens": 64, "temperature": 0.7, "seed": i, "stream": True}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read().decode()
    conn.close()
    return resp.status, raw.rstrip().endswith("data: [DONE]")


def plain_chat(port, i):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {"model": "tiny_chat", "messages": [{"role": "user", "content": f"say {i}"}], "max_tokens": 24}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    return resp.status, data.get("usage", {}).get("completion_tokens")


def healthz_seconds(port):
    start = time.time()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
        conn.close()
    except OSError:
        ok = False
    return ok, time.time() - start


def open_idle(port, n, partial):
    """n connections that send nothing, or (partial) half a request head."""
    socks = []
    for _ in range(n):
        s = connect(port)
        if partial:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: app")
        socks.append(s)
    return socks


def test_load(srv):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 and hard >= 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    idle = open_idle(srv.port, 300, False) + open_idle(srv.port, 100, True)
    time.sleep(0.3)
    cpu_idle = cpu_over(srv.proc.pid)
    t.check(cpu_idle < 0.1, f"400 idle sockets cost no CPU ({cpu_idle:.2f} s in 1 s)")
    probes = []
    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=80) as pool:
        streams = [pool.submit(stream_chat, srv.port, i) for i in range(64)]
        plains = [pool.submit(plain_chat, srv.port, i) for i in range(16)]
        while not all(f.done() for f in streams + plains) and time.time() - start < 60:
            probes.append(healthz_seconds(srv.port))
            time.sleep(0.05)
        results = [f.result() for f in streams]
        plain = [f.result() for f in plains]
    wall = time.time() - start
    lat = sorted(s for _, s in probes)
    t.check(all(r == (200, True) for r in results),
            f"64 streams with 400 idle sockets all end with [DONE] ({[r for r in results if r != (200, True)][:3]})")
    # temperature 1: a choice may sample its end-of-turn early, so up to 24 tokens
    t.check(all(p[0] == 200 and 1 <= (p[1] or 0) <= 24 for p in plain),
            f"16 plain completions alongside them ({[p for p in plain if p[0] != 200 or not p[1]][:3]})")
    t.check(probes and all(ok for ok, _ in probes), f"/healthz answers during the load ({len(probes)} probes)")
    t.check(lat and lat[-1] < 2.0, f"/healthz stays quick (max {lat[-1] if lat else -1:.3f} s)")
    print(f"load: 64 streams + 16 plain completions with 400 idle sockets in {wall:.2f} s; "
          f"/healthz {len(lat)} probes, median {lat[len(lat) // 2] * 1e3:.1f} ms, "
          f"max {lat[-1] * 1e3:.1f} ms; idle CPU {cpu_idle:.2f} s/s", flush=True)
    idle += open_idle(srv.port, 200, False)
    ok, secs = healthz_seconds(srv.port)
    t.check(ok and secs < 2.0, f"/healthz answers with 600 idle sockets open, past the old 512 limit ({secs:.3f} s)")
    for s in idle:
        s.close()
    time.sleep(0.5)
    cpu_after = cpu_over(srv.proc.pid)
    t.check(cpu_after < 0.05, f"CPU returns to idle when the sockets close ({cpu_after:.2f} s in 1 s)")
    print(f"load: 600 idle sockets, /healthz {secs * 1e3:.1f} ms; CPU after close {cpu_after:.2f} s/s",
          flush=True)


# ---- 3. errors as JSON ---------------------------------------------------------------

def expect_json(port, raw, status, code, what):
    got, hdrs, body, secs = exchange(port, raw)
    err = json_error(got, hdrs, body)
    t.eq(got, status, f"{what}: status ({secs:.2f} s)")
    t.check(err is not None and (code is None or err["code"] == code), f"{what}: a JSON error ({body[:200]!r})")
    return err


def test_errors_json(srv):
    p = srv.port
    expect_json(p, b"GET /healthz HTTP/1.1\r\n\r\n", 400, "missing_host", "HTTP/1.1 without Host")
    expect_json(p, b"POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Transfer-Encoding: gzip\r\n\r\nxxxxxxxx", 501, "unsupported_transfer_encoding",
                "Transfer-Encoding: gzip")
    expect_json(p, b"POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "ambiguous_length",
                "Content-Length with Transfer-Encoding")
    expect_json(p, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40000 + b"\r\n\r\n", 431,
                "headers_too_large", "a 40 KiB header block")
    expect_json(p, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "invalid_path", "a 2 KiB path")
    expect_json(p, b"POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 900000000\r\n\r\n", 413, "request_too_large",
                "a declared Content-Length over the limit, before any body")
    err = expect_json(p, b"GET /v1/files/ab\xff\xfe\xc3 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_path",
                      "invalid UTF-8 in a path")
    t.check(err is not None and "ab%FF%FE%C3" in err["message"], f"the bad bytes are echoed as %XX ({err})")
    err = expect_json(p, b"GET /nope/\xe2\x82 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_path",
                      "a cut UTF-8 sequence in a path")
    err = expect_json(p, b"G\xffT /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed",
                      "a method with raw bytes")
    t.check(err is not None and "G%FFT" in err["message"], f"echoed as valid UTF-8 ({err})")
    # What libmicrohttpd 0.9.75 refuses itself, before any callback of ours
    # runs (api/library_errors.c answers those in JSON too).
    cases = ((b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400,
              "invalid_content_length", "a malformed Content-Length"),
             (b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
              413, "request_too_large", "a Content-Length beyond 2^64"),
             (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505, "http_version_not_supported",
              "HTTP/2.0 as text"),
             (b"GET /healthz HTTP/0.9\r\n\r\n", 505, "http_version_not_supported", "HTTP/0.9"),
             (b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400, "malformed_request",
              "a header line without a colon"),
             (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 70000 + b"\r\n\r\n", 431,
              "headers_too_large", "a head over the connection's 64 KiB"),
             (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "invalid_path",
              "a request line over 64 KiB"),
             (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\nzz\r\n", 400, "invalid_chunked_body",
              "malformed chunk framing"))
    for raw, status, code, what in cases:
        err = expect_json(p, raw, status, code, what)
        t.check(err is not None and "<html" not in err["message"], f"{what}: our words, not the library's HTML")
    # 0.9.75 would send the header block of that Content-Length error twice,
    # here after a good request on the same connection.
    s = connect(p)
    data = b""
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n")
        s.settimeout(5.0)
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        pass
    finally:
        s.close()
    heads = data.count(b"HTTP/1.1 ")
    second = data[data.find(b"HTTP/1.1 ", 1):]
    head_end = second.find(b"\r\n\r\n")
    t.check(heads == 2 and data.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 400"),
            f"a good request, then a malformed Content-Length on one connection: two answers ({data[:300]!r})")
    t.check(head_end > 0 and json_error(400, {"content-type": "application/json"}, second[head_end + 4:]) is not None,
            "the second is one JSON error, nothing after it")
    # A request line with no space at all is dropped by the library without
    # calling us: only that it is closed at once is checked.
    s = connect(p)
    try:
        s.sendall(b"GARBAGE\r\n\r\n")
        secs = closed_within(s, 5.0)
    finally:
        s.close()
    t.check(secs is not None and secs < 2.0, f"a request line without spaces is closed at once ({secs})")
    t.eq(srv.json("GET", "/healthz")[0], 200, "the server serves on after malformed requests")


# ---- 4. time budgets, early refusal, per-client limit ---------------------------------

def trickle(s, first, byte, stop):
    try:
        s.sendall(first)
        while not stop.is_set():
            s.sendall(byte)
            time.sleep(0.5)
    except OSError:
        pass


def test_budgets():
    d = temp_dir()
    srv = Server(d, "--model", MODEL, "--api-key", "k", "--idle-timeout", "2", "--header-timeout", "3",
                 "--max-connections-per-ip", "8")
    try:
        stop = threading.Event()
        silent = connect(srv.port)
        slow_head = connect(srv.port)
        slow_body = connect(srv.port)
        for s, first, byte in ((slow_head, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"z"),
                               (slow_body, b"POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\n"
                                           b"Authorization: Bearer k\r\nContent-Type: application/json\r\n"
                                           b"Transfer-Encoding: chunked\r\n\r\n", b"1\r\n \r\n")):
            threading.Thread(target=trickle, args=(s, first, byte, stop), daemon=True).start()
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            waits = [pool.submit(closed_within, s, 10) for s in (silent, slow_head, slow_body)]
            secs = [w.result() for w in waits]
        stop.set()
        for s in (silent, slow_head, slow_body):
            s.close()
        t.check(secs[0] is not None and secs[0] < 6, f"a silent socket is closed after the idle timeout ({secs[0]})")
        t.check(secs[1] is not None and secs[1] < 7, f"a head sent a byte at a time is cut by its budget ({secs[1]})")
        t.check(secs[2] is not None and secs[2] < 8, f"a body sent a byte at a time is cut by its budget ({secs[2]})")
        status, hdrs, body, secs = exchange(srv.port, b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
                                                      b"Content-Type: multipart/form-data; boundary=b\r\n"
                                                      b"Content-Length: 100000000\r\n\r\n")
        t.eq(status, 401, f"no key: 401 before a byte of body ({secs:.2f} s)")
        t.check(json_error(status, hdrs, body) is not None, "and it is JSON")
        held = [connect(srv.port) for _ in range(8)]
        extra = connect(srv.port)
        closed = closed_within(extra, 2)
        t.check(closed is not None, f"a 9th connection from one client is refused ({closed})")
        try:
            ok, secs = True, 0.0
            status, _, _, secs = exchange(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", source="127.0.0.2")
            ok = status == 200
        except OSError as e:
            ok = False
            print(f"127.0.0.2: {e}")
        t.check(ok, f"while another client is served ({secs:.2f} s)")
        for s in held + [extra]:
            s.close()
    finally:
        t.eq(srv.stop(), 0, "the budget server stops cleanly")
        remove(d)


# ---- 5. slow work off the event loop ----------------------------------------------

def lora_adapter_files(r=4):
    """A PEFT LoRA adapter (q_proj, v_proj) for tests/fixtures/tiny_chat, B = 0."""
    cfg = json.load(open(os.path.join(MODEL, "config.json")))
    hidden, hd = cfg["hidden_size"], cfg["head_dim"]
    outs = {"q_proj": cfg["num_attention_heads"] * hd, "v_proj": cfg["num_key_value_heads"] * hd}
    header, data, off = {}, [], 0
    for layer in range(cfg["num_hidden_layers"]):
        for mod, out in outs.items():
            for part, shape in (("lora_A", [r, hidden]), ("lora_B", [out, r])):
                n = shape[0] * shape[1]
                chunk = struct.pack(f"<{n}f", *([0.01] * n if part == "lora_A" else [0.0] * n))
                name = f"base_model.model.model.layers.{layer}.self_attn.{mod}.{part}.weight"
                header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(chunk)]}
                data.append(chunk)
                off += len(chunk)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": list(outs),
              "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM"}
    return {"adapter_config.json": ("adapter_config.json", json.dumps(config).encode()),
            "adapter_model.safetensors": ("adapter_model.safetensors",
                                          struct.pack("<Q", len(head)) + head + b"".join(data))}


def test_slow_work_off_the_loop():
    """With one event-loop thread, an adapter import held up in its slow part
    (publishing waits on a SQLite write lock this test holds) must not stop
    /healthz from being answered; before, the import ran on that thread."""
    d = temp_dir()
    srv = Server(d, "--model", MODEL, "--http-threads", "1")
    db = None
    try:
        db = sqlite3.connect(os.path.join(d, "retune.db"), timeout=10, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")  # WAL: readers go on, the publish waits
        body, hdrs = multipart({"name": "slow-import"}, lora_adapter_files())
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            imported = ex.submit(srv.json, "POST", "/v1/adapters", body, hdrs)
            time.sleep(1.0)  # the import reaches its publish and waits on the lock
            start = time.time()
            try:
                health = srv.request("GET", "/healthz", timeout=3)[0]
            except OSError as e:
                health = f"no answer ({e})"
            secs = time.time() - start
            t.check(not imported.done(), "the import is still waiting on the lock")
            t.eq(health, 200, f"/healthz answered on the one event-loop thread meanwhile ({secs:.2f} s)")
            db.execute("COMMIT")
            status, _, m = imported.result(timeout=30)
        t.eq((status, m.get("id")), (200, "slow-import"), f"the import then finishes ({m})")
        t.eq(complete(srv, "slow-import"), 200, "the imported adapter serves")
    finally:
        if db:
            db.close()
        t.eq(srv.stop(), 0, "the one-thread server stops cleanly")
    # After a restart the adapter is loaded on its first request, off the
    # event loop too (api_catalog_ready, api_offload_start).
    srv = Server(d, "--model", MODEL, "--http-threads", "1")
    try:
        t.eq(complete(srv, "slow-import"), 200, "after a restart, its first request loads and serves it")
        t.eq(complete(srv, "no-such-model"), 404, "an unknown model is still refused at once")
    finally:
        t.eq(srv.stop(), 0, "the restarted server stops cleanly")
        remove(d)


def complete(srv, model):
    return srv.json("POST", "/v1/completions", json.dumps({"model": model, "prompt": "a", "max_tokens": 3}).encode(),
                    {"Content-Type": "application/json"})[0]


def main():
    d = temp_dir()
    srv = Server(d, "--model", MODEL, "--max-upload-bytes", "65536", "--max-waiting", "256",
                 "--max-batch", "16")
    try:
        for fn in (test_chunked_over_limit, test_errors_json, test_load):
            t.run(functools.partial(fn, srv))
    finally:
        rc = srv.stop()
        t.eq(rc, 0, "the server stops cleanly")
        log = srv.log_text()
        t.check("Fatal error" not in log and "suspended" not in log, "no libmicrohttpd panic in the log")
        remove(d)
    t.run(test_budgets)
    t.run(test_slow_work_off_the_loop)


main()
t.finish()
