"""The process around the routes: SIGTERM drains (a running stream ends, finished or cancelled,
new work is refused, /health says 503, and the process exits 0 within the grace period); /health
says 503 while the model loads; the server listens on 127.0.0.1 only by default; one log line
per request, refused ones included; a second server on a
port in use fails at once with a clear message; configuration comes from a --config JSON file,
HYCO_* environment variables and flags, flags winning, and an unknown or invalid key stops the
start with a message naming it; a model that cannot be loaded ends the process."""

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import harness as h


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_to_exit(args, env=None, timeout=20):
    """Runs hyco to its exit; returns (exit status, output)."""
    p = subprocess.run([h.BIN, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                       env=dict(os.environ, **(env or {})), stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout.decode("utf-8", "replace")


class KvPoolExhausted(h.ServerTest):
    """A KV budget far below what the requests want: requests wait for each other, one that the
    whole pool could never hold gets 503 with a message, nothing crashes."""
    SERVER_ARGS = ("--threads", "1", "--kv-memory", "3.0")

    def test_requests_wait_or_get_503(self):
        import threading
        long_prompt = "fn main() { let x = 1; }\n" * 80
        r = self.server.post("/completion", {"prompt": long_prompt, "n_predict": 1500})
        self.assertEqual(r.status, 503, r)
        self.assertIn("KV blocks", r.json()["error"]["message"])
        r = self.server.post("/v1/completions", {"prompt": long_prompt[:700], "max_tokens": 1000})
        self.assertEqual(r.status, 503, r)
        self.assertIn("--kv-memory", r.json()["error"]["message"])
        # Six requests that fit one or two at a time: they queue for KV blocks and all finish.
        body = {"prompt": long_prompt[:400], "n_predict": 300, "temperature": 0, "ignore_eos": True}
        alone = self.server.post_json("/completion", body)["content"]
        got = []
        ts = [threading.Thread(target=lambda: got.append(self.server.post("/completion", body))) for _ in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual([r.status for r in got], [200] * 6, got)
        self.assertEqual({r.json()["content"] for r in got}, {alone})
        self.assertHealthy()


class Shutdown(unittest.TestCase):
    def test_sigterm_cancels_a_stream_after_the_grace_period_and_exits_0(self):
        srv = h.Server("--threads", "1", "--ctx", "16384", "--shutdown-grace", "1").start()
        try:
            s = srv.stream("/completion", {"prompt": h.cases()["plain"][0]["prompt"], "n_predict": 15000,
                                           "temperature": 0, "ignore_eos": True, "stream": True})
            events = s.sse()
            next(events)
            t0 = time.time()
            srv.proc.send_signal(signal.SIGTERM)
            # While draining, new work is refused (or the port is already closed).
            srv.wait_for(lambda: "draining" in srv.log(), 5, "the drain to start")
            try:
                r = srv.post("/completion", {"prompt": "fn", "n_predict": 2}, timeout=5)
                self.assertEqual(r.status, 503, r)
                r = srv.get("/health", timeout=5)  # a balancer stops sending work
                self.assertEqual(r.status, 503, r)
                self.assertIn("shutting down", r.json()["error"]["message"])
            except OSError:
                pass
            rest = list(events)
            ended = time.time() - t0
            self.assertEqual(rest[-1], b"[DONE]")
            final = json.loads(rest[-2])
            self.assertIs(final["stop"], True)
            self.assertIn(final["stop_type"], ("none", "limit"))
            self.assertLess(ended, 4.0, "the stream outlived the 1 s grace period")
            srv.proc.wait(5)
            self.assertEqual(srv.proc.returncode, 0, srv.log()[-2000:])
            self.assertLess(time.time() - t0, 5.0)
            self.assertIn("SIGTERM received", srv.log())
        finally:
            srv.stop()

    def test_sigterm_lets_a_short_stream_finish(self):
        srv = h.Server("--threads", "1", "--shutdown-grace", "10").start()
        try:
            case = h.cases()["plain"][1]
            s = srv.stream("/completion", {"prompt": case["prompt"], "n_predict": 64, "temperature": 0,
                                           "stream": True})
            events = s.sse()
            first = next(events)
            srv.proc.send_signal(signal.SIGTERM)
            rest = h.sse_json([first, *events])
            self.assertEqual(h.llamacpp_text(rest), case["continuation"])
            self.assertEqual(rest[-1]["stop_type"], "eos")
            srv.proc.wait(10)
            self.assertEqual(srv.proc.returncode, 0)
        finally:
            srv.stop()

    def test_sigint_when_idle_exits_0(self):
        srv = h.Server("--threads", "1").start()
        self.assertEqual(srv.stop(signal.SIGINT, timeout=5), 0)


class Loading(unittest.TestCase):
    """The model's config.json is a FIFO: loading waits on it until the test writes it."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        for f in ("tokenizer.model", "model.safetensors"):
            os.symlink(os.path.join(h.MODEL, f), os.path.join(self.dir.name, f))
        self.fifo = os.path.join(self.dir.name, "config.json")
        os.mkfifo(self.fifo)
        with open(os.path.join(h.MODEL, "config.json"), "rb") as f:
            self.config = f.read()
        self.srv = h.Server("--threads", "1", model=self.dir.name, wait_ready=False).start()

    def tearDown(self):
        self.srv.stop(signal.SIGKILL)  # (SIGTERM waits for a load still held on the FIFO)
        self.dir.cleanup()

    def open_fifo(self):
        """The FIFO for writing, once the loader has it open for reading."""
        return self.srv.wait_for(lambda: _open_fifo_for_writing(self.fifo), 10, "the loader to open config.json")

    def test_health_is_503_until_the_model_is_loaded(self):
        srv = self.srv
        r = srv.get("/health")
        self.assertEqual(r.status, 503, r)
        self.assertEqual(r.headers.get("retry-after"), "1")
        self.assertIn("Loading model", r.json()["error"]["message"])
        r = srv.post("/completion", {"prompt": "fn", "n_predict": 2})
        self.assertEqual(r.status, 503, r)
        self.assertIn("loading", r.body.decode())
        fd = self.open_fifo()
        os.write(fd, self.config)
        os.close(fd)
        srv.wait_for(lambda: srv.get("/health").status == 200, 20, "the model to load")
        self.assertEqual(srv.post("/completion", {"prompt": "fn", "n_predict": 2}).status, 200)

    def test_sigterm_while_loading_stops_the_load_and_exits_0(self):
        srv = self.srv
        fd = self.open_fifo()
        srv.proc.send_signal(signal.SIGTERM)
        srv.wait_for(lambda: "SIGTERM received" in srv.log(), 5, "the drain to start")
        os.write(fd, self.config)  # the load goes on, to its first tensor
        os.close(fd)
        srv.proc.wait(10)
        self.assertEqual(srv.proc.returncode, 0, srv.log()[-2000:])
        self.assertIn("loading the model stopped", srv.log())
        self.assertNotIn(" ready: ", srv.log())


def _open_fifo_for_writing(path):
    try:
        return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader yet
        return None


class Listening(unittest.TestCase):
    def test_binds_loopback_only_by_default(self):
        with h.Server("--threads", "1") as srv:
            # The listening socket of the port, from the kernel's table: local address 127.0.0.1.
            want = f":{srv.port:04X}"
            rows = []
            for table in ("/proc/net/tcp", "/proc/net/tcp6"):
                with open(table) as f:
                    rows += [line.split() for line in f.readlines()[1:]]
            listening = [r[1] for r in rows if r[1].endswith(want) and r[3] == "0A"]  # 0A: LISTEN
            self.assertEqual(listening, ["0100007F" + want], listening)


class RequestLog(h.ServerTest):
    SERVER_ARGS = ("--threads", "1")

    def lines(self, pattern, n=1):
        """The log lines matching pattern, once there are n of them."""
        rx = re.compile(pattern)
        return self.server.wait_for(
            lambda: [l for l in self.server.log().splitlines() if rx.search(l)][:n] if
            len([l for l in self.server.log().splitlines() if rx.search(l)]) >= n else None, 5, pattern)

    def test_one_line_per_request_with_its_counts(self):
        r = self.server.post_json("/v1/completions", {"prompt": h.cases()["plain"][0]["prompt"], "max_tokens": 4,
                                                      "n": 3, "temperature": 0})
        generated = r["usage"]["completion_tokens"]
        self.assertEqual(generated, 12, r)
        self.lines(rf"req-\d+ /v1/completions choices=3 prompt=\d+ cached=\d+ generated=12 "
                   rf"ttft=\d+ms [\d.]+ tok/s finish=length$")
        self.assertEqual(len(re.findall(r"/v1/completions choices=3 ", self.server.log())), 1, "one line, not one per choice")
        self.server.post_json("/infill", {"input_prefix": "fn add(a: i32, b: i32) -> i32 {\n    ",
                                          "input_suffix": "\n}\n", "n_predict": 3, "temperature": 0})
        self.lines(r"req-\d+ /infill prompt=\d+ cached=\d+ generated=\d ttft=\d+ms [\d.]+ tok/s finish=(stop|length)$")

    def test_a_refused_request_logs_its_status_and_message(self):
        r = self.server.post("/v1/completions", {"prompt": "x", "max_tokens": -3})
        self.assertEqual(r.status, 400)
        self.lines(r"req-\d+ POST /v1/completions -> 400: 'max_tokens' must be")
        self.assertEqual(self.server.post("/api/generate", {"prompt": 5}).status, 400)
        self.lines(r"req-\d+ POST /api/generate -> 400: 'prompt' must be a string")

    def test_a_disconnected_stream_logs_what_it_generated(self):
        s = self.server.stream("/completion", {"prompt": "fn main() {", "n_predict": 1500, "ignore_eos": True,
                                               "temperature": 0, "stream": True})
        events = s.sse()
        next(events)
        next(events)
        s.close(abort=True)
        self.lines(r"req-\d+ /completion prompt=\d+ cached=\d+ generated=[1-9]\d* ttft=\d+ms [\d.]+ tok/s "
                   r"finish=cancelled \(client disconnected\)$")
        self.server.wait_idle()


class Startup(unittest.TestCase):
    def test_port_in_use_fails_with_a_clear_message(self):
        with h.Server("--threads", "1") as first:
            t0 = time.time()
            code, out = run_to_exit(["serve", "-m", h.MODEL, "--port", str(first.port)])
            self.assertNotEqual(code, 0)
            self.assertLess(time.time() - t0, 10)
            self.assertIn(str(first.port), out)
            self.assertRegex(out, r"(?i)cannot listen|in use")
            self.assertEqual(first.get("/health").status, 200)  # the first one is unharmed

    def test_missing_truncated_or_corrupt_model_files_end_the_process(self):
        size = os.path.getsize(os.path.join(h.MODEL, "model.safetensors"))
        with open(os.path.join(h.MODEL, "model.safetensors"), "rb") as f:
            data = f.read()
        cases = {"missing": None, "truncated": data[:size // 2], "empty": b"",
                 "corrupt header": data[:8] + b"{not json" + data[17:],
                 "header length past the end": (len(data) * 4).to_bytes(8, "little") + data[8:]}
        for what, content in cases.items():
            with self.subTest(what=what), tempfile.TemporaryDirectory() as d:
                for f in ("tokenizer.model", "config.json"):
                    os.symlink(os.path.join(h.MODEL, f), os.path.join(d, f))
                if content is not None:
                    with open(os.path.join(d, "model.safetensors"), "wb") as f:
                        f.write(content)
                code, out = run_to_exit(["serve", "-m", d, "--port", "0"])
                self.assertEqual(code, 2, out)  # (it listens meanwhile: /health says 503 while loading)
                self.assertIn("cannot serve", out)
                self.assertIn("model.safetensors", out, "the message names the file")
        code, out = run_to_exit(["serve", "-m", "/nonexistent/model", "--port", "0"])
        self.assertEqual(code, 2, out)
        self.assertIn("/nonexistent/model", out)

    def test_model_that_cannot_load_ends_the_process(self):
        with tempfile.TemporaryDirectory() as d:
            for f in ("tokenizer.model", "model.safetensors"):
                os.symlink(os.path.join(h.MODEL, f), os.path.join(d, f))
            with open(os.path.join(h.MODEL, "config.json")) as f:
                cfg = json.load(f)
            cfg["hidden_size"] = "wide"
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(cfg, f)
            code, out = run_to_exit(["serve", "-m", d, "--port", "0"])
            self.assertNotEqual(code, 0)
            self.assertIn("hidden_size", out)
            self.assertIn("cannot serve", out)


class Config(unittest.TestCase):
    def write_config(self, obj):
        f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        f.write(obj if isinstance(obj, str) else json.dumps(obj))
        f.close()
        self.addCleanup(os.unlink, f.name)
        return f.name

    def test_file_sets_port_and_parallel(self):
        port = free_port()
        cfg = self.write_config({"port": port, "parallel": 3, "alias": "from-file", "threads": 1})
        srv = h.Server("--config", cfg, port=None).start()
        try:
            self.assertEqual(srv.port, port)
            props = srv.get("/props").json()
            self.assertEqual(props["total_slots"], 3)
            self.assertEqual(srv.get("/v1/models").json()["data"][0]["id"], "from-file")
        finally:
            self.assertEqual(srv.stop(), 0)

    def test_flags_and_env_override_the_file(self):
        cfg = self.write_config('{\n  // comments are allowed\n'
                                '  "parallel": 3, "api-key": "from-file", "threads": 1\n}')
        srv = h.Server("--config", cfg, "--parallel", "2", env={"HYCO_API_KEY": "from-env"},
                       wait_ready=False).start()
        try:
            auth = {"Authorization": "Bearer from-env"}
            srv.wait_for(lambda: srv.get("/health").status == 200, 10, "health")
            self.assertEqual(srv.get("/props", headers=auth).json()["total_slots"], 2)
            self.assertEqual(srv.get("/props", headers={"Authorization": "Bearer from-file"}).status, 401)
        finally:
            srv.stop()

    def test_unknown_or_invalid_keys_stop_the_start(self):
        for obj, word in [({"paralel": 3}, "paralel"), ({"parallel": "many"}, "parallel"),
                          ({"parallel": 0}, "parallel"), ({"port": 70000}, "port"),
                          ({"config": "other.json"}, "config"), ("{not json", "JSON"), ("[1]", "object"),
                          ({"timeout": "nan"}, "timeout"), ({"host": ""}, "host"),
                          ('{"port": 8100, "port": 8101}', "more than once")]:
            with self.subTest(config=obj):
                cfg = self.write_config(obj)
                code, out = run_to_exit(["serve", "-m", h.MODEL, "--config", cfg], timeout=10)
                self.assertNotEqual(code, 0, out)
                self.assertIn(word, out)
                self.assertNotIn("listening", out)
        code, out = run_to_exit(["serve", "-m", h.MODEL, "--port", "0", "--config", "/nonexistent/hyco.json"])
        self.assertNotEqual(code, 0)
        self.assertIn("/nonexistent/hyco.json", out)
        code, out = run_to_exit(["serve", "-m", h.MODEL, "--port", "0", "--config", os.path.dirname(cfg)])
        self.assertNotEqual(code, 0)
        self.assertIn("is a directory", out)

    def test_the_example_config_is_valid(self):
        # config/hyco.example.json lists every option with its default: it must load as it is
        # (the flags given here win over its host, port and threads).
        example = os.path.join(h.SOURCE_DIR, "config", "hyco.example.json")
        with h.Server("--config", example, "--threads", "1") as srv:
            self.assertEqual(srv.get("/health").status, 200)

    def test_info_refuses_what_serve_refuses(self):
        # `hyco info` used to print any config.json without looking at the weights or tokenizer.
        import shutil
        code, out = run_to_exit(["info", "-m", h.MODEL])
        self.assertEqual(code, 0, out)
        self.assertIn("shapes match config.json", out)
        with tempfile.TemporaryDirectory() as d:
            model = os.path.join(d, "m")
            shutil.copytree(h.MODEL, model)
            with open(os.path.join(model, "config.json"), encoding="utf-8") as f:
                cfg = json.load(f)
            for key, value, word in [("intermediate_size", cfg["intermediate_size"] * 2, "mlp.gate_proj.weight"),
                                     ("vocab_size", cfg["vocab_size"] + 64, "embed_tokens")]:
                with self.subTest(key=key):
                    with open(os.path.join(model, "config.json"), "w", encoding="utf-8") as f:
                        json.dump(dict(cfg, **{key: value}), f)
                    code, out = run_to_exit(["info", "-m", model])
                    self.assertNotEqual(code, 0, out)
                    self.assertIn(word, out)
            with open(os.path.join(model, "config.json"), "w", encoding="utf-8") as f:
                json.dump(cfg, f)
            os.unlink(os.path.join(model, "tokenizer.model"))
            code, out = run_to_exit(["info", "-m", model])
            self.assertNotEqual(code, 0, out)
            self.assertIn("tokenizer.model", out)

    def test_invalid_flags_stop_the_start(self):
        # NaN passes a plain range check (every comparison with it is false): "--timeout nan"
        # used to start a server that cancelled every completion at once.
        for args, word in [(["--parallel", "0"], "parallel"), (["--port", "-1"], "port"),
                           (["--max-body", "10"], "max-body"), (["--no-such-flag"], "no-such-flag"),
                           (["--timeout", "nan"], "timeout"), (["--timeout", "inf"], "timeout"),
                           (["--shutdown-grace", "nan"], "shutdown-grace"), (["--kv-memory", "nan"], "kv-memory"),
                           (["--kv-memory", "-1"], "kv-memory"), (["--host", ""], "host")]:
            with self.subTest(args=args):
                code, out = run_to_exit(["serve", "-m", h.MODEL, *args], timeout=10)
                self.assertNotEqual(code, 0)
                self.assertIn(word, out)


if __name__ == "__main__":
    unittest.main()


class PaddedVocabulary(unittest.TestCase):
    """A model whose vocabulary is padded past its tokenizer's (as Qwen2.5's is): the padded ids
    have logits but are no tokens. Random weights give them a large share of the mass."""

    def test_padded_vocabulary_is_never_sampled_nor_scored(self):
        with open(os.path.join(h.MODEL, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        n_tok = cfg["vocab_size"]
        cfg["vocab_size"] = n_tok + 200  # mostly padding: a draw lands there often
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "cfg.json"), "w", encoding="utf-8") as f:
                json.dump(cfg, f)
            model = os.path.join(d, "padded")
            subprocess.run(["/usr/bin/python3", os.path.join(h.SOURCE_DIR, "scripts", "reference.py"), "make-model",
                            "--config", os.path.join(d, "cfg.json"), "--out", model, "--seed", "3"],
                           check=True, capture_output=True, timeout=120)
            with open(os.path.join(h.MODEL, "tokenizer.model"), "rb") as src, \
                    open(os.path.join(model, "tokenizer.model"), "wb") as dst:
                dst.write(src.read())
            # `hyco complete` (engine/generate.cpp) at a high temperature.
            for seed in range(3):
                r = subprocess.run([h.BIN, "complete", "-m", model, "-p", "fn main() {", "-n", "48",
                                    "--temperature", "2", "--seed", str(seed), "--threads", "1"],
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            # The server: sampling, and prompt scoring's top alternatives (echo + logprobs).
            with h.Server("--threads", "1", model=model) as srv:
                body = {"prompt": "fn main() { let x = 1; }", "max_tokens": 24, "temperature": 2, "seed": 1,
                        "echo": True, "logprobs": 5}
                r = srv.post_json("/v1/completions", body)
                lp = r["choices"][0]["logprobs"]
                self.assertEqual(len(lp["tokens"]), len(lp["top_logprobs"]))
                for top in lp["top_logprobs"][1:]:
                    self.assertTrue(all(v <= 0 for v in top.values()), top)
