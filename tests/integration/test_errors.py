"""Bad input never crashes the server and never gets a 5xx: each malformed request gets the
right 4xx in its dialect's error shape (400 with a message naming the field, 404 for an
unknown model or route, 413 for a body over --max-body, 401 without the API key), and
afterwards the server still answers /health and gives a normal request the same output as
before."""

import json
import re
import socket
import unittest

import harness as h

PLAIN = h.cases()["plain"][1]
FIM = h.cases()["fim"][0]
MAX_BODY = 65536
DEEP = 100000


def openai(**kw):
    return dict({"prompt": "fn", "max_tokens": 2}, **kw)


def llama(**kw):
    return dict({"prompt": "fn", "n_predict": 2}, **kw)


def infill(**kw):
    return dict({"input_prefix": "fn ", "input_suffix": "\n", "n_predict": 2}, **kw)


def ollama(**kw):
    return dict({"prompt": "fn", "stream": False, "options": {"num_predict": 2}}, **kw)


def ollama_opt(**kw):
    return {"prompt": "fn", "stream": False, "options": dict({"num_predict": 2}, **kw)}


def fim(**kw):
    return dict({"prompt": "fn ", "suffix": "\n", "max_tokens": 2}, **kw)


STOPS_100 = [f"stop{i}" for i in range(100)]
LONG_TEXT = "let x = 1;\n" * 800  # > 2048 tokens, the test model's context

# (route, body, status, the field the message must name). A body is an object (sent as JSON)
# or bytes (sent as they are).
CASES = [
    # Not JSON, or not an object.
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", b"", 400, None),
    ("/v1/completions", b"[1, 2]", 400, None),
    ("/v1/completions", b'"prompt"', 400, None),
    ("/v1/completions", b"null", 400, None),
    ("/v1/completions", b"42", 400, None),
    ("/completion", b'{"prompt": "x",}', 400, None),
    ("/completion", b'{"prompt": "x", "temperature": NaN}', 400, None),
    ("/infill", b"\x00\x01", 400, None),
    ("/api/generate", b"{", 400, None),
    ("/tokenize", b"[]", 400, None),
    # Invalid UTF-8 in the body: a lone continuation byte, an overlong "/", a CESU surrogate,
    # a lone escaped surrogate.
    ("/v1/completions", b'{"prompt": "\xff\xfe", "max_tokens": 2}', 400, None),
    ("/completion", b'{"prompt": "a\xc0\xafb", "n_predict": 2}', 400, None),
    ("/infill", b'{"input_prefix": "\xed\xa0\x80", "n_predict": 2}', 400, None),
    ("/api/generate", b'{"prompt": "\\ud800", "stream": false}', 400, None),
    ("/tokenize", b'{"content": "\x80"}', 400, None),
    # Wrong types and values, OpenAI.
    ("/v1/completions", openai(max_tokens="16"), 400, "max_tokens"),
    ("/v1/completions", openai(max_tokens=-5), 400, "max_tokens"),
    ("/v1/completions", openai(max_tokens=1e30), 400, "max_tokens"),
    ("/v1/completions", openai(max_tokens=2.5), 400, "max_tokens"),
    ("/v1/completions", openai(max_tokens=True), 400, "max_tokens"),
    ("/v1/completions", openai(max_tokens=2**70), 400, "max_tokens"),
    ("/v1/completions", openai(max_tokens=2048), 400, None),  # "max tokens (2048) must be below the context"
    ("/v1/completions", openai(temperature="NaN"), 400, "temperature"),
    ("/v1/completions", openai(temperature="Infinity"), 400, "temperature"),
    ("/v1/completions", b'{"prompt": "fn", "temperature": 1e999}', 400, None),  # refused by the parser
    ("/v1/completions", openai(temperature=-1), 400, "temperature"),
    ("/v1/completions", openai(temperature=[1]), 400, "temperature"),
    ("/v1/completions", openai(top_p=2), 400, "top_p"),
    ("/v1/completions", openai(top_p=0), 400, "top_p"),
    ("/v1/completions", openai(top_p="0.5"), 400, "top_p"),
    ("/v1/completions", openai(n=1000), 400, "n"),
    ("/v1/completions", openai(n=0), 400, "n"),
    ("/v1/completions", openai(n="2"), 400, "n"),
    ("/v1/completions", openai(logprobs=99), 400, "logprobs"),
    ("/v1/completions", openai(logprobs=-1), 400, "logprobs"),
    ("/v1/completions", openai(stop=STOPS_100), 400, "stop"),
    ("/v1/completions", openai(stop=5), 400, "stop"),
    ("/v1/completions", openai(stop=[1, 2]), 400, "stop"),
    ("/v1/completions", openai(seed="abc"), 400, "seed"),
    ("/v1/completions", openai(seed=1.5), 400, "seed"),
    ("/v1/completions", openai(presence_penalty=5), 400, "presence_penalty"),
    ("/v1/completions", openai(frequency_penalty="x"), 400, "frequency_penalty"),
    ("/v1/completions", openai(echo="yes"), 400, "echo"),
    ("/v1/completions", openai(stream="true"), 400, "stream"),
    ("/v1/completions", openai(stream_options={"include_usage": True}), 400, "stream_options"),
    ("/v1/completions", openai(suffix=5), 400, "suffix"),
    ("/v1/completions", openai(user=5), 400, "user"),
    ("/v1/completions", openai(best_of=3), 400, "best_of"),
    ("/v1/completions", openai(logit_bias={"1": 5}), 400, "logit_bias"),
    ("/v1/completions", {"max_tokens": 2}, 400, "prompt"),
    ("/v1/completions", openai(prompt=""), 400, "prompt"),
    ("/v1/completions", openai(prompt=[]), 400, "prompt"),
    ("/v1/completions", openai(prompt=5), 400, "prompt"),
    ("/v1/completions", openai(prompt={"text": "x"}), 400, "prompt"),
    ("/v1/completions", openai(prompt=[99999]), 400, "prompt"),
    ("/v1/completions", openai(prompt=[1, -1]), 400, "prompt"),
    ("/v1/completions", openai(prompt=[[1, 2], [400]]), 400, "prompt"),
    ("/v1/completions", openai(prompt=[1.5]), 400, "prompt"),
    ("/v1/completions", openai(prompt=["a", 5]), 400, "prompt"),
    ("/v1/completions", openai(prompt="x" * 10, n=9, max_tokens=2) | {"prompt": ["a", "b"]}, 400, "n"),
    ("/v1/completions", openai(prompt=[1], suffix="x"), 400, "suffix"),
    ("/v1/completions", openai(model="no-such-model"), 404, "model"),
    ("/v1/completions", openai(model=5), 400, "model"),
    ("/v1/completions", openai(prompt=LONG_TEXT), 400, "prompt"),
    # Mistral FIM.
    ("/v1/fim/completions", {"suffix": "x"}, 400, "prompt"),
    ("/v1/fim/completions", fim(prompt=["a"]), 400, "prompt"),
    ("/v1/fim/completions", fim(suffix=5), 400, "suffix"),
    ("/v1/fim/completions", fim(max_tokens=-1), 400, "max_tokens"),
    ("/v1/fim/completions", fim(random_seed="x"), 400, "random_seed"),
    ("/v1/fim/completions", fim(min_tokens=5), 400, "min_tokens"),
    ("/v1/fim/completions", fim(stop=STOPS_100), 400, "stop"),
    ("/v1/fim/completions", fim(temperature=5), 400, "temperature"),
    ("/v1/fim/completions", fim(model="codestral-latest"), 404, "model"),
    ("/v1/fim/completions", fim(prompt=LONG_TEXT), 400, "prompt"),
    # llama.cpp /completion.
    ("/completion", {"n_predict": 2}, 400, "prompt"),
    ("/completion", llama(prompt=""), 400, "prompt"),
    ("/completion", llama(prompt=[]), 400, "prompt"),
    ("/completion", llama(prompt=[99999]), 400, "prompt"),
    ("/completion", llama(prompt=[-3]), 400, "prompt"),
    ("/completion", llama(prompt=[True]), 400, "prompt"),
    ("/completion", llama(prompt={"a": 1}), 400, "prompt"),
    ("/completion", llama(n_predict="10"), 400, "n_predict"),
    ("/completion", llama(n_predict=-5), 400, "n_predict"),
    ("/completion", llama(n_predict=1e30), 400, "n_predict"),
    ("/completion", llama(n_predict=4096), 400, "n_predict"),
    ("/completion", llama(max_tokens="x"), 400, "max_tokens"),
    ("/completion", llama(temperature="NaN"), 400, "temperature"),
    ("/completion", llama(temperature="Infinity"), 400, "temperature"),
    ("/completion", llama(top_k=1.5), 400, "top_k"),
    ("/completion", llama(top_k="40"), 400, "top_k"),
    ("/completion", llama(top_k=-5), 400, "top_k"),
    ("/completion", llama(top_p=2), 400, "top_p"),
    ("/completion", llama(min_p=-1), 400, "min_p"),
    ("/completion", llama(seed="x"), 400, "seed"),
    ("/completion", llama(n_probs=1000), 400, "n_probs"),
    ("/completion", llama(repeat_last_n=-5), 400, "repeat_last_n"),
    ("/completion", llama(repeat_penalty=-1), 400, "repeat_penalty"),
    ("/completion", llama(stop=STOPS_100), 400, "stop"),
    ("/completion", llama(stop="x" * 5000), 400, "stop"),
    ("/completion", llama(samplers=[1]), 400, "samplers"),
    ("/completion", llama(mirostat=2), 400, "mirostat"),
    ("/completion", llama(response_fields=[5]), 400, "response_fields"),
    ("/completion", llama(cache_prompt="yes"), 400, "cache_prompt"),
    ("/completion", llama(id_slot="x"), 400, "id_slot"),
    ("/completion", llama(t_max_predict_ms=-1), 400, "t_max_predict_ms"),
    ("/completion", llama(n_indent=-1), 400, "n_indent"),
    ("/completion", llama(ignore_eos=1), 400, "ignore_eos"),
    ("/completion", llama(model="other"), 404, "model"),
    # llama.cpp /infill.
    ("/infill", infill(input_prefix=5), 400, "input_prefix"),
    ("/infill", infill(input_suffix=[]), 400, "input_suffix"),
    ("/infill", infill(prompt=5), 400, "prompt"),
    ("/infill", infill(input_extra="x"), 400, "input_extra"),
    ("/infill", infill(input_extra=[5]), 400, "input_extra"),
    ("/infill", infill(input_extra=[{"filename": "a.rs"}]), 400, "input_extra"),
    ("/infill", infill(input_extra=[{"filename": "a", "text": "b"}] * 300), 400, "input_extra"),
    ("/infill", infill(n_predict=-7), 400, "n_predict"),
    ("/infill", infill(t_max_prompt_ms="x"), 400, "t_max_prompt_ms"),
    # Ollama.
    ("/api/generate", ollama(prompt=5), 400, "prompt"),
    ("/api/generate", ollama(suffix=5), 400, "suffix"),
    ("/api/generate", ollama(options="x"), 400, "options"),
    ("/api/generate", ollama(options=[1]), 400, "options"),
    ("/api/generate", ollama(stream="no"), 400, "stream"),
    ("/api/generate", ollama(images=["aGk="]), 400, "images"),
    ("/api/generate", ollama(format="json"), 400, "format"),
    ("/api/generate", ollama(system="be nice"), 400, "system"),
    ("/api/generate", ollama(context=[1, 2, 3]), 400, "context"),
    ("/api/generate", ollama(model="llama3:8b"), 404, "model"),
    ("/api/generate", ollama_opt(temperature="hot"), 400, "temperature"),
    ("/api/generate", ollama_opt(num_predict="10"), 400, "num_predict"),
    ("/api/generate", ollama_opt(num_predict=-5), 400, "num_predict"),
    ("/api/generate", ollama_opt(num_predict=1e30), 400, "num_predict"),
    ("/api/generate", ollama_opt(top_k=-1), 400, "top_k"),
    ("/api/generate", ollama_opt(seed="x"), 400, "seed"),
    ("/api/generate", ollama_opt(stop=STOPS_100), 400, "stop"),
    # Ops.
    ("/tokenize", {}, 400, "content"),
    ("/tokenize", {"content": 5}, 400, "content"),
    ("/tokenize", {"content": "x", "add_special": "yes"}, 400, "add_special"),
    ("/detokenize", {}, 400, "tokens"),
    ("/detokenize", {"tokens": "x"}, 400, "tokens"),
    ("/detokenize", {"tokens": [99999]}, 400, "tokens"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
    ("/detokenize", {"tokens": [1.5]}, 400, "tokens"),
    # Routes and methods that do not exist.
    ("/v1/chat/completions", openai(), 404, None),
    ("/v2/completions", openai(), 404, None),
    ("/api/chat", ollama(), 404, None),
    ("/../../etc/passwd", openai(), 404, None),
]

# Bodies nested DEEP levels (and ten times that: 2 MB, under the default --max-body). Parsing
# them must neither crash the server nor take its stack; they get 400 or, where the deep
# value sits in a field the route ignores, a normal answer.
DEEP_CASES = [
    ("/v1/completions", "[" * DEEP + "]" * DEEP),
    ("/completion", '{"prompt":' + "[" * DEEP + "]" * DEEP + "}"),
    ("/completion", '{"prompt":"fn","n_predict":2,"stop":' + "[" * DEEP + "]" * DEEP + "}"),
    ("/infill", '{"input_extra":' + "[" * DEEP + "]" * DEEP + "}"),
    ("/api/generate", '{"prompt":"fn","stream":false,"options":{"num_predict":2,"x":'
     + "[" * DEEP + "]" * DEEP + "}}"),
    ("/api/generate", '{"prompt":"fn","stream":false,"options":{"num_predict":2,"x":'
     + "[" * (10 * DEEP) + "]" * (10 * DEEP) + "}}"),
    ("/v1/completions", '{"prompt":"fn","max_tokens":2,"x":' + '{"a":' * (10 * DEEP) + "1" + "}" * (10 * DEEP) + "}"),
    ("/tokenize", '{"content":' + "[" * DEEP),
]


class BadRequests(h.ServerTest):
    SERVER_ARGS = ("--threads", "1")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.baseline = cls.normal(cls.server)

    @staticmethod
    def normal(server):
        return (server.post_json("/completion", {"prompt": PLAIN["prompt"], "n_predict": 64, "temperature": 0})["content"],
                server.post_json("/v1/completions", {"prompt": FIM["prefix"], "suffix": FIM["suffix"],
                                                     "max_tokens": 32, "temperature": 0})["choices"][0]["text"])

    def assertStillServing(self, what):
        self.assertIsNone(self.server.proc.poll(), f"the server died after {what}")
        self.assertHealthy()
        self.assertEqual(self.normal(self.server), self.baseline, f"output changed after {what}")

    def assertErrorShape(self, route, r, field):
        err = r.json()
        if route.startswith("/api/"):
            self.assertIsInstance(err.get("error"), str, err)
            msg = err["error"]
        elif route.startswith("/v1/"):
            e = err["error"]
            self.assertEqual(set(e), {"message", "type", "param", "code"}, err)
            self.assertEqual(e["type"], "invalid_request_error")
            msg = e["message"]
            if field:
                self.assertEqual(e["param"], field, err)
        else:
            e = err["error"]
            self.assertEqual(e["code"], r.status, err)
            self.assertIsInstance(e["type"], str)
            msg = e["message"]
        self.assertTrue(msg.strip(), err)
        if field:
            self.assertIn(field, msg, "the message should name the field")
        return msg

    def test_malformed_requests(self):
        for route, body, status, field in CASES:
            with self.subTest(route=route, body=repr(body)[:120]):
                r = self.server.post(route, body)
                self.assertEqual(r.status, status, r)
                self.assertTrue(r.headers.get("content-type", "").startswith("application/json"), r.headers)
                self.assertErrorShape(route, r, field)
        self.assertStillServing("the malformed requests")
        # None of them ran: they were refused before reaching the scheduler.
        m = self.server.metrics()
        self.assertFalse([k for k in m if k.startswith("hyco_requests_total") and 'status="5' in k
                          and "/health" not in k], m)  # /health says 503 while the model loads

    def test_context_overflow(self):
        # OpenAI routes refuse a prompt longer than the context; llama.cpp and Ollama routes
        # keep its end and say so.
        r = self.server.post("/v1/completions", openai(prompt=LONG_TEXT))
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["error"]["code"], "context_length_exceeded")
        r = self.server.post_json("/completion", llama(prompt=LONG_TEXT + PLAIN["prompt"], n_predict=8, temperature=0))
        self.assertIs(r["truncated"], True)
        self.assertLess(r["tokens_evaluated"], 2048)
        r = self.server.post_json("/infill", infill(input_prefix=LONG_TEXT, input_extra=[{"filename": "a", "text": LONG_TEXT}]))
        self.assertIs(r["truncated"], True)
        r = self.server.post_json("/api/generate", ollama(prompt=LONG_TEXT))
        self.assertIs(r["done"], True)
        self.assertStillServing("overlong prompts")

    def test_token_ids_out_of_range_are_quoted_as_sent(self):
        for tok in ("9223372036854775808", "18446744073709551615", "-1", "100000000"):
            with self.subTest(tok=tok):
                r = self.server.request("POST", "/detokenize", '{"tokens": [%s]}' % tok)
                self.assertEqual(r.status, 400, r)
                self.assertIn("token id %s is outside" % tok, self.assertErrorShape("/detokenize", r, "tokens"))
        self.assertStillServing("out-of-range token ids")

    def test_deep_nesting(self):
        for route, body in DEEP_CASES:
            with self.subTest(route=route, size=len(body)):
                r = self.server.post(route, body.encode())
                self.assertIn(r.status, (200, 400), r)
                self.assertIsNone(self.server.proc.poll(), "the server crashed")
        self.assertStillServing("deeply nested JSON")

    def test_ten_megabyte_bodies_get_413(self):
        # Over the default --max-body (8 MiB): refused before parsing, with and without a length.
        big = json.dumps({"prompt": "x" * (10 << 20), "n_predict": 1}).encode()
        for route in ("/completion", "/v1/completions", "/api/generate", "/infill"):
            with self.subTest(route=route):
                r = self.server.post(route, big)
                self.assertEqual(r.status, 413, r)
                self.assertIn("too large", json.dumps(r.json()))
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=30) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                      b"Content-Type: application/json\r\n\r\n")
            try:
                for i in range(0, len(big), 1 << 16):
                    part = big[i:i + (1 << 16)]
                    s.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
                s.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server may stop reading early
            data = read_all(s)
        self.assertRegex(data, rb"^HTTP/1\.1 413 ")
        self.assertStillServing("10 MB bodies")

    def test_special_token_text_is_text(self):
        # Text that spells a control token is tokenized as text: a prompt cannot inject FIM
        # markers or end the sequence.
        toks = self.server.post_json("/tokenize", {"content": "<fim-middle></s><s><fim-prefix>"})["tokens"]
        self.assertFalse(set(toks) & {1, 2, 3, 4, 5}, toks)

    def test_input_extra_filename_is_only_text(self):
        # No request can name a file for the server to read.
        r = self.server.post_json("/infill", infill(input_extra=[{"filename": "/etc/passwd", "text": ""}],
                                                    n_predict=8, temperature=0))
        self.assertNotIn("root:", r["content"])

    def test_wrong_methods(self):
        for method, path in [("GET", "/v1/completions"), ("GET", "/completion"), ("PUT", "/infill"),
                             ("DELETE", "/api/generate"), ("POST", "/health"), ("POST", "/v1/models")]:
            with self.subTest(method=method, path=path):
                r = self.server.request(method, path, b"{}" if method != "GET" else None)
                self.assertGreaterEqual(r.status, 400, r)
                self.assertLess(r.status, 500, r)
        self.assertStillServing("wrong methods")

    def test_garbage_on_the_socket(self):
        for raw in [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello
                    b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 100000 + b"\r\n\r\n",
                    b"POST /completion HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                    b"POST /completion HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
                    b"POST /completion HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                    b"\r\n\r\n\r\n"]:
            with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as s:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
                read_all(s)
        self.assertStillServing("garbage on the socket")


def read_all(s, timeout=10.0):
    """Everything the server sends on socket s until it closes the connection."""
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
    except OSError:
        pass
    return data


def read_response(s):
    """One response with a Content-Length from socket s (its head and body may come in separate
    reads; the connection stays open)."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if len(body) >= (int(m.group(1)) if m else 0):
                return data
        more = s.recv(65536)
        if not more:
            return data
        data += more


def statuses(data):
    """The status codes of the HTTP responses in data, in order."""
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


class Connections(h.ServerTest):
    """Slow, half-closed and pipelined connections (a short --read-timeout keeps this quick)."""
    SERVER_ARGS = ("--threads", "1", "--read-timeout", "2")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.baseline = BadRequests.normal(cls.server)

    normal = staticmethod(BadRequests.normal)
    assertStillServing = BadRequests.assertStillServing

    def connect(self):
        return socket.create_connection(("127.0.0.1", self.server.port), timeout=10)

    def trickle(self, socks, parts, seconds):
        """Sends parts one byte at a time, round robin, until each server answers or time is up;
        returns what each socket received."""
        import select
        import time
        got = {s: b"" for s in socks}
        pos = {s: 0 for s in socks}
        end = time.monotonic() + seconds
        while time.monotonic() < end and any(not got[s] for s in socks):
            for s, part in zip(socks, parts):
                if got[s]:
                    continue
                if select.select([s], [], [], 0)[0]:
                    got[s] = read_all(s) or b"(closed)"
                elif pos[s] < len(part):
                    try:
                        s.sendall(part[pos[s]:pos[s] + 1])
                        pos[s] += 1
                    except OSError:
                        got[s] = read_all(s) or b"(reset)"
            time.sleep(0.1)
        return [got[s] for s in socks]

    def test_slow_loris_headers_and_bodies_get_408(self):
        import time
        head = b"POST /completion HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        body = json.dumps({"prompt": "fn main", "n_predict": 1}).encode()
        parts = [head + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n",                     # headers never end
                 head + b"Content-Length: %d\r\n\r\n" % (len(body) + 400) + body,   # body never ends
                 head + b"X-Slow: " + b"b" * 200 + b"\r\n\r\n"]
        socks = [self.connect() for _ in parts]
        for s, p in zip(socks, parts):  # the first 100 bytes at once, then one byte per 0.1 s
            s.sendall(p[:100])
            parts[parts.index(p)] = p[100:]
        t0 = time.monotonic()
        # While they trickle, the server serves others.
        self.assertEqual(BadRequests.normal(self.server), self.baseline)
        got = self.trickle(socks, parts, 8)
        took = time.monotonic() - t0
        for s, data in zip(socks, got):
            s.close()
            with self.subTest(data=data[:300]):
                self.assertEqual(statuses(data), [408], data[:300])
                self.assertIn(b"read-timeout", data)
        self.assertLess(took, 6, "slow clients should be dropped after --read-timeout (2 s)")
        self.assertStillServing("slow-loris clients")

    def test_half_closed_mid_request(self):
        body = json.dumps({"prompt": "fn main", "n_predict": 1}).encode()
        for raw, want in [(b"POST /completion HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % (len(body) + 50)
                           + body, [400]),                                          # body cut short
                          (b"POST /completion HTTP/1.1\r\nHost: localhost\r\nContent-Le", [400]),  # headers cut short
                          (b"POST /completion HTT", [400])]:                        # request line cut short
            with self.subTest(raw=raw[:60]), self.connect() as s:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
                data = read_all(s)
                self.assertEqual(statuses(data), want, data[:300])
                self.assertIn(b"incomplete", data)
        self.assertStillServing("half-closed connections")

    def test_pipelined_requests_then_garbage(self):
        get = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
        body = json.dumps({"content": "fn main() {}"}).encode()
        post = b"POST /tokenize HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        with self.connect() as s:
            s.sendall(get + post + get + b"\x00\xffGARBAGE / HTTP/9\r\n\r\n" + get)
            data = read_all(s)
        # Three answers in order, a 400 for the garbage, and the connection closed after it.
        self.assertEqual(statuses(data), [200, 200, 200, 400], data[:600])
        self.assertIn(b'"tokens"', data)
        self.assertIn(b"malformed", data)
        self.assertStillServing("pipelined garbage")


class Limits(h.ServerTest):
    SERVER_ARGS = ("--threads", "1", "--max-body", str(MAX_BODY))

    def test_body_over_max_body_is_413(self):
        big = {"prompt": "x" * (MAX_BODY + 10), "n_predict": 1}
        for route in ("/completion", "/v1/completions", "/api/generate"):
            r = self.server.post(route, big)
            self.assertEqual(r.status, 413, (route, r))
            self.assertIn("too large", json.dumps(r.json()))
        # A body just under the limit is fine.
        r = self.server.post("/tokenize", {"content": "x" * (MAX_BODY - 100)})
        self.assertEqual(r.status, 200, r)
        self.assertHealthy()

    def test_chunked_body_over_max_body_is_refused(self):
        payload = json.dumps({"prompt": "x" * (MAX_BODY * 2), "n_predict": 1}).encode()
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as s:
            s.sendall(b"POST /completion HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                      b"Content-Type: application/json\r\nConnection: close\r\n\r\n")
            try:
                for i in range(0, len(payload), 8192):
                    part = payload[i:i + 8192]
                    s.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
                s.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server may close early
            data = read_all(s)
        self.assertTrue(data.startswith(b"HTTP/1.1 413 "), data[:200])
        self.assertHealthy()

    def test_endless_chunked_body_is_cut_off(self):
        # A chunked body has no length up front: the server stops reading once the request is
        # past --max-body (it used to buffer all of it, then answer 413), answers 413 and closes.
        total, sent, part = 256 << 20, 0, b"x" * 65536
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as s:
            s.sendall(b"POST /completion HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                      b"Content-Type: application/json\r\n\r\n")
            try:
                while sent < total:
                    s.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
                    sent += len(part)
            except OSError:
                pass  # the server closed the connection
            data = read_all(s)
        self.assertTrue(data.startswith(b"HTTP/1.1 413 "), data[:200])
        self.assertIn(b"--max-body", data)
        # What the socket buffers took before the close, far from the whole body.
        self.assertLess(sent, 64 << 20)
        self.assertHealthy()


class Bodies(h.ServerTest):
    SERVER_ARGS = ("--threads", "1")

    def test_post_without_a_length_has_an_empty_body(self):
        # Neither Content-Length nor Transfer-Encoding: no body (RFC 9112). It was read to the end
        # of the connection, holding a worker until --read-timeout (30 s) and then a 408.
        import time
        t = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n\r\n")
            s.settimeout(5)
            data = read_response(s)
        self.assertLess(time.monotonic() - t, 3)
        self.assertTrue(data.startswith(b"HTTP/1.1 400 "), data[:200])
        self.assertIn(b"not valid JSON", data)
        self.assertHealthy()

    def test_json_labelled_as_a_form_is_json_past_8_kib(self):
        # What `curl -d` sends without -H (Ollama's own examples do): httplib held such bodies to
        # 8 KiB (413) and split them into form fields.
        # (Padded with JSON whitespace: the test model's context is short.)
        for route, body in (("/v1/completions", openai(max_tokens=1)),
                            ("/api/generate", ollama(stream=False, options={"num_predict": 1}))):
            with self.subTest(route=route):
                r = self.server.request("POST", route, json.dumps(body) + " " * 20000,
                                        headers={"Content-Type": "application/x-www-form-urlencoded"})
                self.assertEqual(r.status, 200, r)


class Limits256(h.ServerTest):
    """A 256-token context: where prompts are cut and what is refused."""
    SERVER_ARGS = ("--threads", "1", "--ctx", "256", "--parallel", "2", "--max-queue", "2")

    def test_prompt_plus_max_tokens_may_fill_the_context(self):
        ids = self.server.post_json("/tokenize", {"content": "fn main() { let x = 1; }\n" * 40})["tokens"]
        self.assertGreater(len(ids), 256)
        ok = self.server.request("POST", "/v1/completions", {"prompt": ids[:252], "max_tokens": 4, "temperature": 0})
        self.assertEqual(ok.status, 200, ok)
        over = self.server.request("POST", "/v1/completions", {"prompt": ids[:253], "max_tokens": 4})
        self.assertEqual(over.status, 400, over)
        self.assertEqual(over.json()["error"]["code"], "context_length_exceeded")

    def test_extra_files_that_do_not_all_fit_are_dropped_from_the_first(self):
        prefix, suffix = "fn main() {\n    let y = ", ";\n}\n"
        body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 4, "temperature": 0}
        alone = self.server.post_json("/infill", body)
        chunk = "pub fn helper(x: u64) -> u64 {\n    x + 1\n}\n" * 2
        one = self.server.post_json("/infill", dict(body, input_extra=[{"filename": "a.rs", "text": chunk}]))
        per_chunk = one["tokens_evaluated"] - alone["tokens_evaluated"]
        self.assertGreater(per_chunk, 0)
        many = [{"filename": f"f{i}.rs", "text": chunk} for i in range(40)]
        r = self.server.post_json("/infill", dict(body, input_extra=many))
        self.assertIs(r["truncated"], True)
        # As many whole files as fit in 256 - 4 (not none, as before), so within one file of it.
        self.assertLessEqual(r["tokens_evaluated"], 252)
        self.assertGreater(r["tokens_evaluated"], 252 - per_chunk - 2)

    def test_more_completions_than_slots_and_queue_is_400(self):
        r = self.server.request("POST", "/v1/completions", {"prompt": "fn", "max_tokens": 2, "n": 5})
        self.assertEqual(r.status, 400, r)
        self.assertEqual(r.json()["error"]["param"], "n")
        self.assertEqual(self.server.request("POST", "/v1/completions",
                                             {"prompt": "fn", "max_tokens": 2, "n": 4}).status, 200)


class BrowserRules(h.ServerTest):
    """A web page must not drive the local server through the user's browser: requests that carry
    a foreign Origin, or (listening on loopback) a Host that is not a loopback name, get 403."""
    SERVER_ARGS = ("--threads", "1")

    def post(self, headers):
        return self.server.request("POST", "/completion", llama(), headers=headers)

    def test_foreign_pages_are_refused(self):
        for origin in ("http://evil.example", "https://evil.example:8012", "null", "http://127.0.0.1.evil.example",
                       "http://localhost.evil.example"):
            with self.subTest(origin=origin):
                r = self.post({"Origin": origin, "Content-Type": "text/plain"})
                self.assertEqual(r.status, 403, r)
                self.assertIn("--cors-origins", r.json()["error"]["message"])
        r = self.server.request("GET", "/v1/models", headers={"Origin": "http://evil.example"})
        self.assertEqual(r.status, 403, r)
        self.assertEqual(r.json()["error"]["code"], "forbidden")
        self.assertHealthy()

    def test_pages_on_this_machine_and_editor_webviews_are_served(self):
        for origin in ("http://localhost:5173", "http://127.0.0.1:8080", "https://[::1]:3000", "http://LOCALHOST",
                       "http://app.localhost:3000", "vscode-webview://1a2b3c"):
            with self.subTest(origin=origin):
                self.assertEqual(self.post({"Origin": origin}).status, 200)

    def test_a_rebound_host_name_is_refused(self):
        port = self.server.port
        for host in (f"evil.example:{port}", "evil.example", f"192.168.1.5:{port}"):
            with self.subTest(host=host):
                self.assertEqual(self.post({"Host": host}).status, 403)
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost."):
            with self.subTest(host=host):
                self.assertEqual(self.post({"Host": host}).status, 200)


class BrowserRulesWithAllowedHost(h.ServerTest):
    SERVER_ARGS = ("--threads", "1", "--allowed-hosts", "code.example.com")

    def test_a_listed_host_is_served(self):
        port = self.server.port
        for host, status in ((f"code.example.com:{port}", 200), ("CODE.example.com", 200),
                             (f"other.example.com:{port}", 403), (f"localhost:{port}", 200)):
            with self.subTest(host=host):
                r = self.server.request("POST", "/completion", llama(), headers={"Host": host})
                self.assertEqual(r.status, status, r)


class BrowserRulesWithAllowedOrigin(h.ServerTest):
    SERVER_ARGS = ("--threads", "1", "--cors-origins", "https://ide.example.com")

    def test_a_listed_origin_is_served_with_cors_headers(self):
        r = self.server.request("POST", "/completion", llama(), headers={"Origin": "https://ide.example.com"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.headers.get("access-control-allow-origin"), "https://ide.example.com")
        r = self.server.request("POST", "/completion", llama(), headers={"Origin": "https://other.example.com"})
        self.assertEqual(r.status, 403, r)


class ApiKey(h.ServerTest):
    SERVER_ARGS = ("--threads", "1", "--api-key", "sekrit-key")

    def test_refused_request_with_a_body_closes_the_connection(self):
        # The 401 comes before the body is read: the unread body must not be taken for the next
        # request on a kept-alive connection (it used to be, and got a 400 of its own).
        body = json.dumps(llama()).encode()
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as s:
            s.sendall(b"POST /completion HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body +
                      b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            data = read_all(s)
        self.assertTrue(data.startswith(b"HTTP/1.1 401 "), data[:200])
        self.assertEqual(data.count(b"HTTP/1.1 "), 1, data)
        self.assertIn(b"Connection: close", data)
        self.assertHealthy()

    def test_health_is_open(self):
        self.assertHealthy()

    def test_every_other_route_needs_the_key(self):
        routes = [("GET", "/v1/models", None), ("GET", "/metrics", None), ("GET", "/props", None),
                  ("GET", "/slots", None), ("GET", "/api/tags", None), ("GET", "/api/version", None),
                  ("POST", "/v1/completions", openai()), ("POST", "/completion", llama()),
                  ("POST", "/infill", infill()), ("POST", "/api/generate", ollama()),
                  ("POST", "/tokenize", {"content": "x"}), ("POST", "/v1/fim/completions", fim())]
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekrit-key"},
                        {"Authorization": "Basic c2Vrcml0LWtleQ=="}, {"Authorization": "Bearer sekrit-key2"},
                        {"Authorization": "Bearer sekrit-ke"}):
            for method, path, body in routes:
                with self.subTest(headers=headers, path=path):
                    r = self.server.request(method, path, body, headers=headers)
                    self.assertEqual(r.status, 401, r)
                    self.assertIn("www-authenticate", r.headers)
                    if path.startswith("/v1/"):
                        self.assertEqual(r.json()["error"]["type"], "authentication_error")
        ok = {"Authorization": "Bearer sekrit-key"}
        for method, path, body in routes:
            with self.subTest(path=path):
                r = self.server.request(method, path, body, headers=ok)
                self.assertEqual(r.status, 200, r)
        # The scheme's case does not matter (RFC 7235); the key's does.
        for auth, status in (("bearer sekrit-key", 200), ("BEARER sekrit-key", 200), ("bearer SEKRIT-KEY", 401)):
            with self.subTest(auth=auth):
                self.assertEqual(self.server.request("GET", "/v1/models", None, headers={"Authorization": auth}).status,
                                 status)
        s = self.server.stream("/completion", llama(stream=True), headers=ok)
        self.assertEqual(s.status, 200)
        h.sse_json(s.sse())
        self.assertHealthy()


if __name__ == "__main__":
    unittest.main()
