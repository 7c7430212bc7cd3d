"""End-to-end tests of the foundation: a real `retune serve` on 127.0.0.1,
real HTTP, a real SQLite file. Files API, bad input, auth, metrics,
graceful stop, restart and crash recovery."""
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "e2e"))
from harness import BIN, Checks, Server, multipart, remove, temp_dir  # noqa: E402

t = Checks()
GOOD_CHAT = (b'{"messages": [{"role": "system", "content": "Be brief."}, '
             b'{"role": "user", "content": "Capital of France?"}, '
             b'{"role": "assistant", "content": "Paris.", "weight": 1}]}\n') * 3
GOOD_PC = b'{"prompt": "2+2=", "completion": "4"}\r\n{"prompt": "3+3=", "completion": "6"}'


def upload(srv, content, purpose="fine-tune", filename="data.jsonl", headers=None):
    fields = {"purpose": purpose} if purpose is not None else {}
    body, hdrs = multipart(fields, {"file": (filename, content)})
    hdrs.update(headers or {})
    return srv.json("POST", "/v1/files", body, hdrs)


def file_count(srv):
    status, _, body = srv.json("GET", "/v1/files")
    return len(body.get("data", [])) if status == 200 else -1


def test_health_and_metrics():
    d = temp_dir()
    srv = Server(d)
    try:
        status, hdrs, body = srv.json("GET", "/healthz")
        t.eq((status, body), (200, {"status": "ok"}), "healthz")
        t.eq(hdrs.get("content-type"), "application/json", "healthz content type")
        srv.json("GET", "/v1/files")
        # A request is counted and logged when the server has finished with it,
        # which can be just after the client has its answer: poll briefly.
        want = 'retune_http_requests_total{route="files.list",method="GET",status="200"} 1'
        for _ in range(50):
            status, hdrs, data = srv.request("GET", "/metrics")
            text = data.decode()
            if want in text and "GET /v1/files 200" in srv.log_text():
                break
            time.sleep(0.05)
        t.eq(status, 200, "metrics status")
        t.check(want in text, "metrics counts files.list")
        t.check("retune_http_request_duration_seconds_bucket" in text, "metrics has latency histogram")
        log = srv.log_text()
        t.check("GET /v1/files 200" in log, "one log line per request with status")
        # Every response carries its own x-request-id, errors and 404s too, and the log names it.
        ids = [srv.request(m, p)[1].get("x-request-id") for m, p in
               (("GET", "/healthz"), ("GET", "/v1/files/file-nope"), ("GET", "/no/such/route"),
                ("POST", "/v1/files"))]
        t.check(all(i and i.startswith("req-") for i in ids) and len(set(ids)) == len(ids),
                f"x-request-id on every response, unique ({ids})")
        for _ in range(50):
            if ids[1] in srv.log_text():
                break
            time.sleep(0.05)
        t.check(ids[1] in srv.log_text(), "the log line names the request id")
    finally:
        t.eq(srv.stop(), 0, "graceful stop exits 0")
        remove(d)


def test_upload_and_validation():
    d = temp_dir()
    srv = Server(d)
    try:
        status, hdrs, f = upload(srv, GOOD_CHAT)
        t.eq(status, 200, "upload chat status")
        t.eq(hdrs.get("content-type"), "application/json", "upload content type")
        t.check(f.get("id", "").startswith("file-"), "file id prefix")
        t.eq((f.get("object"), f.get("bytes"), f.get("filename"), f.get("purpose"), f.get("status"),
              f.get("status_details")),
             ("file", len(GOOD_CHAT), "data.jsonl", "fine-tune", "processed", None), "file object")
        t.check(abs(f.get("created_at", 0) - time.time()) < 60, "created_at in unix seconds")
        status, _, f2 = upload(srv, GOOD_PC)
        t.eq((status, f2.get("status")), (200, "processed"), "prompt/completion accepted")
        bad_cases = [
            (GOOD_CHAT + b'{"messages": [{"role": "user"}]}\n', "line 4: messages[0] has no \"content\""),
            (b'{"messages": [{"role": "user", "content": "hi"}]}\n', "line 1: \"messages\" has no assistant message"),
            (b'not json\n', "line 1: not valid JSON"),
            (b'{"messages": [{"role": "robot", "content": "x"}]}', "line 1: messages[0].role must be"),
            (b'{"messages": [{"role": "user", "content": "x", "weight": 1}, {"role":"assistant","content":"y"}]}',
             "line 1: messages[0].weight is only allowed on assistant messages"),
            (b'{"messages": [{"role": "assistant", "content": "x", "weight": 2}]}', "line 1: messages[0].weight must be 0 or 1"),
            (b'{"prompt": "a"}', "line 1: has no \"completion\""),
            (b'\n\n', "the file contains no examples"),
            (b'{"prompt": "\xff", "completion": "x"}', "line 1: invalid UTF-8"),
            (b'[1,2]', "line 1: not a JSON object"),
        ]
        for content, details in bad_cases:
            status, _, f3 = upload(srv, content)
            t.eq(status, 200, f"bad data stored ({details})")
            t.eq(f3.get("status"), "error", f"status error ({details})")
            t.check((f3.get("status_details") or "").startswith(details),
                    f"status_details {f3.get('status_details')!r} starts with {details!r}")
        body, hdrs = multipart({"purpose": "fine-tune"}, {"file": ("e.jsonl", GOOD_PC)})
        status, _, f5 = srv.json("POST", "/v1/files", body + b"\r\n", hdrs)  # an epilogue, as Node's SDK sends
        t.eq((status, f5.get("status"), f5.get("bytes")), (200, "processed", len(GOOD_PC)),
             "a CRLF after the closing boundary is accepted")
        status, _, f4 = upload(srv, b"\x00\x01binary", purpose="user_data", filename="blob.bin")
        t.eq((status, f4.get("status")), (200, "processed"), "non-fine-tune purpose not validated")
    finally:
        srv.stop()
        remove(d)


def test_expires_after():
    """OpenAI's expires_after on upload: the file says when it goes
    (expires_at), and bad values are a 400 naming the field. (Deletion at that
    time is checked in tests/test_storage.c, with a one-second lifetime.)"""
    d = temp_dir()
    srv = Server(d)
    try:
        def post(fields):
            body, hdrs = multipart(dict({"purpose": "fine-tune"}, **fields), {"file": ("a.jsonl", GOOD_CHAT)})
            return srv.json("POST", "/v1/files", body, hdrs)
        status, _, f = post({"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"})
        t.eq(status, 200, f"upload with expires_after ({f})")
        t.eq(f.get("expires_at"), f.get("created_at", 0) + 3600, "expires_at = created_at + seconds")
        t.eq(srv.json("GET", f"/v1/files/{f['id']}")[2].get("expires_at"), f.get("expires_at"), "and stays")
        status, _, plain = post({})
        t.eq(plain.get("expires_at"), None, "no expires_after: never expires")
        for fields in ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"},
                       {"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"},
                       {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600x"},
                       {"expires_after[seconds]": "3600"}):
            status, _, r = post(fields)
            t.eq((status, r.get("error", {}).get("param")), (400, "expires_after"), f"bad expires_after {fields}")
        t.eq(len(srv.json("GET", "/v1/files")[2]["data"]), 2, "refused uploads stored nothing")
    finally:
        srv.stop()
        remove(d)


def test_list_get_content_delete():
    d = temp_dir()
    srv = Server(d)
    try:
        ids = []
        for i in range(5):
            purpose = "fine-tune" if i % 2 == 0 else "user_data"
            content = GOOD_CHAT if purpose == "fine-tune" else bytes(range(256)) * (i + 1)
            _, _, f = upload(srv, content, purpose=purpose, filename=f"f{i}.jsonl")
            ids.append((f["id"], content))
        status, _, page = srv.json("GET", "/v1/files?limit=2")
        t.eq(status, 200, "list status")
        t.eq([x["id"] for x in page["data"]], [ids[4][0], ids[3][0]], "newest first")
        t.eq((page["object"], page["has_more"], page["first_id"], page["last_id"]),
             ("list", True, ids[4][0], ids[3][0]), "list envelope")
        _, _, page2 = srv.json("GET", f"/v1/files?limit=2&after={page['last_id']}")
        t.eq([x["id"] for x in page2["data"]], [ids[2][0], ids[1][0]], "after cursor")
        _, _, page3 = srv.json("GET", f"/v1/files?limit=2&after={page2['last_id']}")
        t.eq(([x["id"] for x in page3["data"]], page3["has_more"]), ([ids[0][0]], False), "last page")
        _, _, asc = srv.json("GET", "/v1/files?order=asc&purpose=fine-tune")
        t.eq([x["id"] for x in asc["data"]], [ids[0][0], ids[2][0], ids[4][0]], "asc + purpose filter")
        status, _, f = srv.json("GET", f"/v1/files/{ids[1][0]}")
        t.eq((status, f.get("id"), f.get("filename")), (200, ids[1][0], "f1.jsonl"), "get file")
        for fid, content in ids:
            status, _, data = srv.request("GET", f"/v1/files/{fid}/content")
            t.check(status == 200 and data == content, f"content of {fid} byte-for-byte")
        status, _, body = srv.json("DELETE", f"/v1/files/{ids[0][0]}")
        t.eq((status, body), (200, {"id": ids[0][0], "object": "file", "deleted": True}), "delete")
        status, _, body = srv.json("GET", f"/v1/files/{ids[0][0]}")
        t.eq((status, body["error"]["code"]), (404, "not_found"), "deleted file is gone")
        status, _, _ = srv.json("DELETE", f"/v1/files/{ids[0][0]}")
        t.eq(status, 404, "delete twice -> 404")
        t.check(not os.path.exists(os.path.join(d, "files", ids[0][0])), "blob removed from disk")
    finally:
        srv.stop()
        remove(d)


def raw_http(port, data):
    """Sends raw bytes and returns the status line's code (for paths that
    http.client would refuse to send)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(data)
        resp = b""
        while b"\r\n\r\n" not in resp:
            chunk = s.recv(4096)
            if not chunk:
                break
            resp += chunk
        return int(resp.split(b" ")[1]) if resp else 0
    finally:
        s.close()


def test_bad_input():
    d = temp_dir()
    srv = Server(d, "--max-upload-bytes", "4096")
    try:
        _, _, keep = upload(srv, GOOD_CHAT)
        before = file_count(srv)

        def err(status, body, want_status, want_param, what):
            t.eq(status, want_status, f"{what} status")
            e = body.get("error", {}) if isinstance(body, dict) else {}
            t.check(set(e) >= {"message", "type", "param", "code"}, f"{what} has OpenAI error shape")
            t.eq(e.get("param"), want_param, f"{what} names the field")

        status, _, body = srv.json("POST", "/v1/files", b"{}", {"Content-Type": "application/json"})
        err(status, body, 415, "Content-Type", "wrong content type")
        status, _, body = upload(srv, GOOD_CHAT, purpose=None)
        err(status, body, 400, "purpose", "missing purpose")
        status, _, body = upload(srv, GOOD_CHAT, purpose="nonsense")
        err(status, body, 400, "purpose", "unknown purpose")
        body_bytes, hdrs = multipart({"purpose": "fine-tune"}, {})
        status, _, body = srv.json("POST", "/v1/files", body_bytes, hdrs)
        err(status, body, 400, "file", "missing file")
        status, _, body = srv.json("POST", "/v1/files", b"garbage without boundary",
                                   {"Content-Type": "multipart/form-data; boundary=xyz"})
        err(status, body, 400, "file", "malformed multipart")
        status, _, body = upload(srv, b"x" * 10000)
        err(status, body, 413, "body", "oversized body")
        # Issue 13: an empty first file part must not let a second one through.
        b = b"----rt"
        two = (b"--" + b + b"\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
               b"--" + b + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jsonl\"\r\n"
               b"Content-Type: application/octet-stream\r\n\r\n\r\n"
               b"--" + b + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.jsonl\"\r\n"
               b"Content-Type: application/octet-stream\r\n\r\n" + GOOD_CHAT + b"\r\n--" + b + b"--\r\n")
        status, _, body = srv.json("POST", "/v1/files", two, {"Content-Type": "multipart/form-data; boundary=" + b.decode()})
        err(status, body, 400, "file", "an empty file part then a second one")
        status, _, body = srv.json("GET", "/v1/files/file-doesnotexist")
        err(status, body, 404, "id", "unknown id")
        status, _, body = srv.json("PUT", "/v1/files")
        err(status, body, 405, "method", "wrong method")
        status, _, body = srv.json("GET", "/v1/nothing")
        err(status, body, 404, "path", "unknown route")
        status, _, body = srv.json("GET", "/v1/files?limit=0")
        err(status, body, 400, "limit", "bad limit")
        status, _, body = srv.json("GET", "/v1/files?order=sideways")
        err(status, body, 400, "order", "bad order")
        status, _, body = srv.json("GET", "/v1/files?after=file-unknown")
        err(status, body, 400, "after", "unknown after cursor")
        for path in [b"/v1/files/..%2F..%2Fretune.db/content", b"/v1/files/a%2Fb",
                     b"/v1/files/%ff%fe", b"/v1/files/%zz", b"/v1/files/../files",
                     b"/v1/files/x%00y"]:
            code = raw_http(srv.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            t.eq(code, 400, f"bad path {path!r} -> 400")
        status, _, body = srv.json("GET", f"/v1/files/{keep['id']}")
        t.eq(status, 200, "server still serves after bad input")
        t.eq(file_count(srv), before, "bad input stored nothing")
        status, _, data = srv.request("GET", f"/v1/files/{keep['id']}/content")
        t.eq(data, GOOD_CHAT, "stored data untouched by bad input")
        tmp_left = [n for n in os.listdir(os.path.join(d, "files")) if n.startswith(".tmp")]
        t.eq(tmp_left, [], "no temporary files left by rejected uploads")
        # Issue 13: a raw NUL byte inside a JSONL line is refused, naming the line.
        status, _, body = upload(srv, GOOD_CHAT + b'{"prompt": "a\x00b", "completion": "c"}\n')
        t.check(status == 200 and body.get("status") == "error" and "line 4" in body.get("status_details", ""),
                f"a NUL byte in a line is refused by line ({body})")
    finally:
        srv.stop()
        remove(d)


def test_percent_decoded_ids():
    d = temp_dir()
    srv = Server(d)
    try:
        _, _, f = upload(srv, GOOD_CHAT)
        encoded = "".join(f"%{ord(c):02X}" if c in "fil" else c for c in f["id"])
        status, _, body = srv.json("GET", f"/v1/files/{encoded}")
        t.eq((status, body.get("id")), (200, f["id"]), "percent-encoded id is decoded")
    finally:
        srv.stop()
        remove(d)


def test_auth():
    d = temp_dir()
    keys = os.path.join(d + ".keys")
    with open(keys, "w") as fh:
        fh.write("# keys\nsk-file-key acme\n")
    srv = Server(d, "--api-key", "sk-one", "--api-keys-file", keys)
    try:
        status, _, body = srv.json("GET", "/v1/files")
        t.eq((status, body["error"]["code"]), (401, "invalid_api_key"), "no key -> 401")
        status, _, _ = srv.json("GET", "/v1/files", headers={"Authorization": "Bearer wrong"})
        t.eq(status, 401, "wrong key -> 401")
        status, _, _ = srv.json("GET", "/v1/files", headers={"Authorization": "Bearer sk-one"})
        t.eq(status, 200, "flag key accepted")
        status, _, _ = srv.json("GET", "/v1/files", headers={"Authorization": "Bearer sk-file-key"})
        t.eq(status, 200, "keys-file key accepted")
        status, _, _ = upload(srv, GOOD_CHAT)
        t.eq(status, 401, "upload without key -> 401")
        t.eq(os.listdir(os.path.join(d, "files")), [], "unauthorised upload stored nothing")
        status, _, _ = srv.json("GET", "/healthz")
        t.eq(status, 200, "healthz needs no key")
    finally:
        srv.stop()
        remove(d)
        os.unlink(keys)
    d = temp_dir()
    proc = subprocess.run([BIN, "serve", "--data-dir", d, "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, timeout=30)
    t.eq(proc.returncode, 2, "no keys on a non-loopback address is refused")
    t.check(b"--insecure-no-auth" in proc.stderr, "refusal explains the way out")
    for off in ("false", "0", "no", ""):  # issue 13: set-ness alone used to turn auth off
        proc = subprocess.run([BIN, "serve", "--data-dir", d, "--host", "0.0.0.0", "--port", "0"],
                              capture_output=True, timeout=30, env=dict(os.environ, RETUNE_INSECURE_NO_AUTH=off))
        t.eq(proc.returncode, 2, f"RETUNE_INSECURE_NO_AUTH={off!r} leaves auth on")
    for host in ("127.evil.example", "127.0.0.1.nip.io"):  # issue 13: a prefix is not loopback
        proc = subprocess.run([BIN, "serve", "--data-dir", d, "--host", host, "--port", "0"],
                              capture_output=True, timeout=30)
        t.eq(proc.returncode, 2, f"--host {host} without keys is refused (not loopback)")
    srv = Server(d, env={"RETUNE_API_KEY": "sk-env"})
    try:
        status, _, _ = srv.json("GET", "/v1/files", headers={"Authorization": "Bearer sk-env"})
        t.eq(status, 200, "RETUNE_API_KEY from the environment")
        status, _, _ = srv.json("GET", "/v1/files")
        t.eq(status, 401, "environment key enforced")
    finally:
        srv.stop()
        remove(d)


def test_restart_and_crash():
    d = temp_dir()
    srv = Server(d)
    ids = []
    for i in range(3):
        _, _, f = upload(srv, GOOD_CHAT + str(i).encode())
        ids.append(f["id"])
    t.eq(srv.stop(signal.SIGINT), 0, "SIGINT stops cleanly with status 0")
    srv = Server(d)
    try:
        _, _, page = srv.json("GET", "/v1/files?order=asc")
        t.eq([x["id"] for x in page["data"]], ids, "restart finds every file")
        for i, fid in enumerate(ids):
            _, _, data = srv.request("GET", f"/v1/files/{fid}/content")
            t.eq(data, GOOD_CHAT + str(i).encode(), f"content after restart {i}")
        # Start an upload, send half of it, then kill the server hard.
        body, hdrs = multipart({"purpose": "fine-tune"}, {"file": ("big.jsonl", GOOD_CHAT * 2000)})
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: " +
                  hdrs["Content-Type"].encode() + b"\r\nContent-Length: " +
                  str(len(body)).encode() + b"\r\n\r\n" + body[: len(body) // 2])
        time.sleep(0.5)
    finally:
        t.check(srv.stop(signal.SIGKILL) != 0, "server killed mid-upload")
    s.close()
    srv = Server(d)
    try:
        _, _, page = srv.json("GET", "/v1/files?order=asc")
        t.eq([x["id"] for x in page["data"]], ids, "crash mid-upload: no partial file, none lost")
        t.eq(sorted(os.listdir(os.path.join(d, "files"))), sorted(ids), "crash leftovers cleaned at start")
    finally:
        srv.stop()
    db = sqlite3.connect(os.path.join(d, "retune.db"))
    db.execute("PRAGMA user_version = 999")
    db.commit()
    db.close()
    proc = subprocess.run([BIN, "serve", "--data-dir", d, "--port", "0"], capture_output=True, timeout=30)
    t.check(proc.returncode != 0, "a database newer than the binary is refused")
    t.check(b"999" in proc.stderr, "refusal names the schema version")
    remove(d)


for fn in [test_health_and_metrics, test_upload_and_validation, test_expires_after, test_list_get_content_delete,
           test_bad_input, test_percent_decoded_ids, test_auth, test_restart_and_crash]:
    t.run(fn)
t.finish()
