"""Shared harness of the integration tests: starts the real `hyco serve` on a free loopback port,
talks HTTP to it (http.client for whole responses, a raw socket for streams so that a test sees
each chunk as it arrives and can drop the connection mid-stream), and reads SSE and NDJSON.
Standard library only (Debian's /usr/bin/python3).

Environment (set by tests/CMakeLists.txt; `cd build && ctest -L integration` runs it all):
  HYCO_BIN         the hyco binary (default: build/cli/hyco)
  HYCO_TEST_MODEL  the model directory of scripts/make_test_model.py, with test_cases.json
                   (default: build/test-model)
One file by hand: cd tests/integration && python3 -m unittest -v test_routes
"""

import atexit
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.abspath(os.path.join(HERE, "..", ".."))
BIN = os.environ.get("HYCO_BIN", os.path.join(SOURCE_DIR, "build", "cli", "hyco"))
MODEL = os.environ.get("HYCO_TEST_MODEL", os.path.join(SOURCE_DIR, "build", "test-model"))
MODEL_NAME = os.path.basename(os.path.normpath(MODEL))

_cases = None
_started = []  # every server process, killed at exit if a test left one running


@atexit.register
def _kill_leftovers():
    for p in _started:
        if p.poll() is None:
            p.kill()


def cases():
    """The prompts the test model was trained to answer (scripts/make_test_model.py):
    {"fim": [{prefix, middle, suffix}], "plain": [{prompt, continuation}], "crab": {prompt, char}}."""
    global _cases
    if _cases is None:
        with open(os.path.join(MODEL, "test_cases.json"), encoding="utf-8") as f:
            _cases = json.load(f)
    return _cases


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return f"<{self.status} {self.body[:300]!r}>"


class Server:
    """One `hyco serve` process. Use as a context manager or call start()/stop()."""

    def __init__(self, *args, model=MODEL, env=None, port=0, wait_ready=True):
        """args: hyco serve's flags; port None: no --port flag (a config file sets it)."""
        self.args = [BIN, "serve", "-m", model, *(["--port", str(port)] if port is not None else []), *args]
        self.env = dict(os.environ, **(env or {}))
        self.wait_ready = wait_ready
        self.proc = None
        self.port = None
        self.lines = []
        self._lock = threading.Lock()
        self._listening = threading.Event()

    # -- process ------------------------------------------------------------------------------

    def start(self, timeout=20):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env)
        _started.append(self.proc)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        deadline = time.time() + timeout
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None or time.time() > deadline:
                time.sleep(0.2)  # the rest of the log
                raise AssertionError(f"hyco serve did not start (exit {self.proc.poll()}):\n{self.log()}")
        if self.wait_ready:
            while True:
                try:
                    if self.get("/health", timeout=2).status == 200:
                        break
                except OSError:
                    pass
                if self.proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"hyco serve never became healthy:\n{self.log()}")
                time.sleep(0.02)
        return self

    def _read_log(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.lines.append(line)
            m = re.search(r"hyco listening on http://[^ ]*:(\d+)", line)
            if m and self.port is None:
                self.port = int(m.group(1))
                self._listening.set()

    def log(self):
        with self._lock:
            return "\n".join(self.lines)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        """Signals the server and waits; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"hyco serve did not exit {timeout} s after {sig!r}:\n"
                                     + self.log()[-3000:])
        self._reader.join(5)
        self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- HTTP ---------------------------------------------------------------------------------

    def request(self, method, path, body=None, headers=None, timeout=60):
        """One request on a fresh connection. body: bytes, str, or an object sent as JSON."""
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode("utf-8")
        h = {"Content-Type": "application/json"} if body is not None else {}
        h.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body, **kw):
        return self.request("POST", path, body, **kw)

    def post_json(self, path, body, **kw):
        """POST that must answer 200 with JSON; returns the object."""
        r = self.post(path, body, **kw)
        if r.status != 200:
            raise AssertionError(f"POST {path} {body!r:.300} -> {r!r}")
        return r.json()

    def stream(self, path, body, headers=None, timeout=60):
        return Stream(self.port, path, body, headers, timeout)

    # -- ops ----------------------------------------------------------------------------------

    def metrics(self):
        """{name or name{labels}: value} of /metrics."""
        out = {}
        for line in self.get("/metrics").body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def slots(self):
        return self.get("/slots").json()

    def wait_for(self, cond, timeout=5.0, what="condition"):
        """Polls cond() until it returns a true value; returns it."""
        deadline = time.time() + timeout
        while True:
            v = cond()
            if v:
                return v
            if time.time() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.01)

    def wait_idle(self, timeout=10.0):
        """Until no slot is busy and nothing is queued."""
        def idle():
            m = self.metrics()
            return m["hyco_running_sequences"] == 0 and m["hyco_queue_depth"] == 0
        self.wait_for(idle, timeout, "the server to go idle")


class Stream:
    """A streaming request over a raw socket: the status and headers are read at once, the body
    (chunked transfer encoding) as it arrives."""

    def __init__(self, port, path, body, headers=None, timeout=60):
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        h = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json",
             "Content-Length": str(len(body)), "Connection": "close"}
        h.update(headers or {})
        head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        self.sock.sendall(head.encode() + body)
        self.file = self.sock.makefile("rb")
        status_line = self._read_line()
        self.status = int(status_line.split(b" ")[1])
        self.headers = {}
        while True:
            line = self._read_line()
            if not line:
                break
            k, v = line.decode("latin-1").split(":", 1)
            self.headers[k.strip().lower()] = v.strip()
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        self.left = int(self.headers.get("content-length", "0")) if not self.chunked else None
        self.ended = False
        self.chunk_times = []  # arrival time of each body chunk

    def _read_line(self):
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise EOFError(f"connection closed by the server (got {line!r})")
        return line[:-2]

    def _read_exact(self, n):
        data = self.file.read(n)
        if len(data) != n:
            raise EOFError("connection closed by the server in a chunk")
        return data

    def chunks(self):
        """The body's chunks (bytes) as they arrive."""
        while not self.ended:
            if self.chunked:
                size = int(self._read_line().split(b";")[0], 16)
                if size == 0:
                    self._read_line()
                    self.ended = True
                    self.close()
                    return
                data = self._read_exact(size)
                if self._read_line() != b"":
                    raise AssertionError("a chunk does not end with CRLF")
            else:
                if self.left == 0:
                    self.ended = True
                    self.close()
                    return
                data = self.file.read1(self.left)
                if not data:
                    raise EOFError("connection closed by the server in the body")
                self.left -= len(data)
            self.chunk_times.append(time.time())
            yield data

    def body(self):
        return b"".join(self.chunks())

    def lines(self):
        """Complete lines (bytes, without the newline) as they arrive."""
        pending = b""
        for c in self.chunks():
            pending += c
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                yield line
        if pending:
            yield pending

    def sse(self):
        """SSE events: the raw bytes after 'data: ' of each event, b'[DONE]' included."""
        data = []
        for line in self.lines():
            if line.startswith(b"data: "):
                data.append(line[6:])
            elif line == b"" and data:
                yield b"\n".join(data)
                data = []
            elif line.startswith(b":") or line == b"":
                continue
            else:
                raise AssertionError(f"not an SSE line: {line!r}")
        if data:
            yield b"\n".join(data)

    def close(self, abort=False):
        """Closes the connection; abort=True resets it (RST) instead of a clean FIN."""
        if self.sock.fileno() < 0:
            return
        if abort:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.file.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def sse_json(events):
    """Parses SSE event payloads; checks every payload is strict UTF-8 and the stream ends with
    [DONE] (and nothing after it). Returns the JSON objects before [DONE]."""
    out, done = [], False
    for raw in events:
        raw.decode("utf-8")  # strict: raises on a split character
        if done:
            raise AssertionError(f"event after [DONE]: {raw!r}")
        if raw == b"[DONE]":
            done = True
            continue
        out.append(json.loads(raw))
    if not done:
        raise AssertionError("the SSE stream did not end with data: [DONE]")
    return out


def ndjson(lines):
    """Parses NDJSON lines (each strict UTF-8 and one JSON object); the last must be done."""
    out = []
    for raw in lines:
        if not raw.strip():
            continue
        raw.decode("utf-8")
        out.append(json.loads(raw))
    if not out or out[-1].get("done") is not True:
        raise AssertionError(f"the NDJSON stream did not end with done: true: {out[-1:]!r}")
    if any(o.get("done") for o in out[:-1]):
        raise AssertionError("done: true before the last line")
    return out


# Texts of a stream, per dialect.
def openai_text(events, index=0):
    return "".join(e["choices"][0]["text"] for e in events
                   if e.get("choices") and e["choices"][0]["index"] == index)


def mistral_text(events):
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices"))


def llamacpp_text(events):
    return "".join(e["content"] for e in events)


def ollama_text(objs):
    return "".join(o["response"] for o in objs)


class ServerTest(unittest.TestCase):
    """A test class with one server for all its tests (SERVER_ARGS)."""

    SERVER_ARGS = ()
    server = None

    @classmethod
    def setUpClass(cls):
        cls.server = Server(*cls.SERVER_ARGS).start()

    @classmethod
    def tearDownClass(cls):
        if cls.server:
            code = cls.server.stop()
            if code != 0:
                raise AssertionError(f"hyco serve exited {code}:\n{cls.server.log()[-3000:]}")

    def assertHealthy(self):
        r = self.server.get("/health")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json(), {"status": "ok"})
