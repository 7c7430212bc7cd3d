"""Shared helpers for retune's end-to-end tests: start the real server
binary on 127.0.0.1 with a temporary data directory, speak real HTTP to it,
and count checks so each script ends with the plain 'N passed, N failed'."""
import http.client
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import uuid

BIN = os.environ.get("RETUNE_BIN", "build/retune")


class Server:
    """One `retune serve` process; stop() sends SIGTERM and returns its status."""

    def __init__(self, data_dir, *args, env=None):
        self.data_dir = data_dir
        self.log_path = os.path.join(data_dir + ".log")
        self.log = open(self.log_path, "ab")
        self.log_start = self.log.tell()  # the log is shared by restarts
        full_env = dict(os.environ)
        full_env.update(env or {})
        if "--model" not in args:  # the built-in model would be pre-trained first: use the fixture
            args = ("--model", os.path.abspath("tests/fixtures/tiny_chat"), *args)
        self.proc = subprocess.Popen(
            [BIN, "serve", "--data-dir", data_dir, "--host", "127.0.0.1", "--port", "0", *args],
            stdout=self.log, stderr=self.log, env=full_env)
        self.port = self._wait_for_port()

    def _wait_for_port(self):
        deadline = time.time() + 20
        while time.time() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_start)
                m = re.findall(rb"listening on http://[^:]+:(\d+)", f.read())
            if m:
                return int(m[-1])
            if self.proc.poll() is not None:
                raise RuntimeError("server exited early:\n" + open(self.log_path).read())
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def request(self, method, path, body=None, headers=None, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), data
        finally:
            conn.close()

    def json(self, method, path, body=None, headers=None):
        status, hdrs, data = self.request(method, path, body, headers)
        try:
            return status, hdrs, json.loads(data)
        except ValueError:
            return status, hdrs, {"_raw": data}

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.log.close()
        return rc

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


def multipart(fields, files, boundary=None):
    """Encodes a multipart/form-data body. files: {name: (filename, bytes)}."""
    boundary = boundary or "----retune" + uuid.uuid4().hex
    out = []
    for name, value in fields.items():
        out.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                   .encode() + value.encode() + b"\r\n")
    for name, (filename, content) in files.items():
        out.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                   f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                   .encode() + content + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


class Checks:
    """Counts checks; run() isolates each test function so one failure does
    not hide the others."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL {what}", flush=True)
        return cond

    def eq(self, got, want, what):
        return self.check(got == want, f"{what}: got {got!r}, want {want!r}")

    def run(self, fn):
        name = getattr(fn, "__name__", None) or fn.func.__name__  # functools.partial too
        print(f"-- {name}", flush=True)
        try:
            fn()
        except Exception:
            self.failed += 1
            print(f"FAIL {name} raised:\n{traceback.format_exc()}", flush=True)

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed", flush=True)
        sys.exit(1 if self.failed else 0)


def temp_dir():
    return tempfile.mkdtemp(prefix="retune-e2e-")


def remove(path):
    shutil.rmtree(path, ignore_errors=True)


def safetensors_tensors(path):
    """The header (name -> dtype, shape, data_offsets) and data of a safetensors file."""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_with_embedding(src, dst, embedding, rows):
    """Copies the safetensors file src to dst with model.embed_tokens.weight
    replaced by embedding (float32 bytes of rows x hidden); the other tensors
    are kept byte for byte, in their order."""
    header, body = safetensors_tensors(src)
    data, off = [], 0
    for name, ten in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                            key=lambda kv: kv[1]["data_offsets"][0]):
        chunk = body[ten["data_offsets"][0]:ten["data_offsets"][1]]
        if name == "model.embed_tokens.weight":
            chunk, ten["shape"] = embedding, [rows, ten["shape"][1]]
        ten["data_offsets"] = [off, off + len(chunk)]
        data.append(chunk)
        off += len(chunk)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(data))
