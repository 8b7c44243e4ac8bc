"""Many clients at once: 16 concurrent streams through 4 slots each get exactly the tokens they
get alone; a client that goes away (mid-stream, while waiting for its whole response, or while
queued) frees its slot at once and is counted in /metrics, and a queued request whose client
left never runs; a full queue answers 503 with Retry-After; the load generator behind the
README's numbers (scripts/bench_server.py) reads streams correctly and runs clean."""

import json
import os
import socket
import threading
import time
import unittest

import harness as h

LONG = 15000  # tokens: seconds of generation at --ctx 16384, so that a test can interrupt it


def corpus_prompts(n):
    """n different prompts: the first 1-3 lines of the corpus's items."""
    with open(os.path.join(h.SOURCE_DIR, "tests", "data", "tiny_corpus.rs"), encoding="utf-8") as f:
        items = [c + "\n" for c in f.read().split("\n\n") if c.strip()]
    out = []
    for lines in (1, 2, 3):
        for it in items:
            p = "".join(it.splitlines(keepends=True)[:lines])
            if p not in out:
                out.append(p)
    return out[:n]


class ConcurrentStreams(h.ServerTest):
    SERVER_ARGS = ("--parallel", "4", "--threads", "2", "--batch-tokens", "64")

    def test_16_streams_get_the_tokens_they_get_alone(self):
        prompts = corpus_prompts(12)
        fims = h.cases()["fim"]

        def body(i):
            if i < 12:
                return "/completion", {"prompt": prompts[i], "n_predict": 48, "temperature": 0,
                                       "ignore_eos": True, "return_tokens": True, "cache_prompt": False}
            c = fims[i - 12]
            return "/infill", {"input_prefix": c["prefix"], "input_suffix": c["suffix"], "n_predict": 48,
                               "temperature": 0, "return_tokens": True, "cache_prompt": False}

        alone = []
        for i in range(16):
            route, b = body(i)
            r = self.server.post_json(route, b)
            alone.append((r["tokens"], r["content"]))
        self.assertEqual(len({tuple(t) for t, _ in alone}), 16, "the prompts should differ")

        results = [None] * 16
        errors = []
        barrier = threading.Barrier(16)

        def client(i):
            try:
                route, b = body(i)
                barrier.wait()
                s = self.server.stream(route, dict(b, stream=True))
                events = h.sse_json(s.sse())
                toks = [t for e in events for t in e["tokens"]]
                results[i] = (toks, h.llamacpp_text(events), s.chunk_times)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append((i, repr(e)))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertFalse(errors, errors)
        for i in range(16):
            self.assertEqual(results[i][0], alone[i][0], f"client {i} tokens")
            self.assertEqual(results[i][1], alone[i][1], f"client {i} text")
        # They did run together: some stream started before another one ended.
        spans = sorted((r[2][0], r[2][-1]) for r in results)
        self.assertTrue(any(spans[k + 1][0] < spans[k][1] for k in range(15)), spans)
        self.server.wait_idle()
        slots = self.server.slots()
        self.assertFalse(any(s["is_processing"] for s in slots), slots)


class HalfOfTheClientsLeave(h.ServerTest):
    SERVER_ARGS = ("--parallel", "4", "--threads", "2", "--ctx", "16384")

    def test_the_others_are_not_disturbed(self):
        # 12 streams through 4 slots; every other one is a long generation that its client
        # drops after a few events. The rest get what they get alone, and all slots end free.
        prompts = corpus_prompts(6)
        alone = [self.server.post_json("/completion", {"prompt": p, "n_predict": 40, "temperature": 0,
                                                       "ignore_eos": True, "return_tokens": True,
                                                       "cache_prompt": False})["tokens"] for p in prompts]
        before = self.server.metrics()
        results, errors = {}, []
        barrier = threading.Barrier(12)

        def client(i):
            try:
                p = prompts[i // 2]
                leave = i % 2 == 1
                body = {"prompt": p, "n_predict": LONG if leave else 40, "temperature": 0, "ignore_eos": True,
                        "return_tokens": True, "cache_prompt": False, "stream": True}
                barrier.wait()
                s = self.server.stream("/completion", body)
                events = s.sse()
                if leave:
                    for _ in range(3):
                        next(events)
                    s.close(abort=i % 4 == 1)
                    return
                results[i] = [t for e in h.sse_json(events) for t in e["tokens"]]
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append((i, repr(e)))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertFalse(errors, errors)
        for i, toks in results.items():
            self.assertEqual(toks, alone[i // 2], f"client {i}")

        def settled():
            m = self.server.metrics()
            return (m["hyco_running_sequences"] == 0 and m["hyco_queue_depth"] == 0
                    and m["hyco_cancelled_total"] == before["hyco_cancelled_total"] + 6)
        self.server.wait_for(settled, 5, "the 6 cancellations")
        self.assertFalse(any(s["is_processing"] for s in self.server.slots()))


class Deadline(h.ServerTest):
    SERVER_ARGS = ("--threads", "1", "--ctx", "16384", "--timeout", "0.5")

    def test_request_past_the_timeout_is_cancelled(self):
        before = self.server.metrics()
        t0 = time.time()
        r = self.server.post_json("/completion", {"prompt": h.cases()["plain"][0]["prompt"], "n_predict": LONG,
                                                  "temperature": 0, "ignore_eos": True})
        self.assertLess(time.time() - t0, 3.0)
        self.assertEqual(r["stop_type"], "none")
        self.assertEqual(r["error"], "deadline passed")
        self.assertLess(r["tokens_predicted"], LONG)
        # The other dialects say the output was cut short.
        o = self.server.post_json("/v1/completions", {"prompt": h.cases()["plain"][0]["prompt"], "max_tokens": LONG,
                                                      "temperature": 0, "ignore_eos": True})
        self.assertEqual(o["choices"][0]["finish_reason"], "length")
        self.assertLess(o["usage"]["completion_tokens"], LONG)
        # Ollama has no ignore_eos, and the test model soon emits EOS: a prompt that fills the
        # context takes longer than the timeout to compute (~1.3 s here), and the deadline
        # passes during its prefill.
        long_prompt = h.cases()["plain"][0]["prompt"] * 1200
        g = self.server.post_json("/api/generate", {"model": h.MODEL_NAME, "prompt": long_prompt, "stream": False,
                                                    "options": {"num_predict": 100, "temperature": 0}})
        self.assertTrue(g["done"])
        self.assertEqual(g["done_reason"], "length")
        self.assertEqual(g["error"], "deadline passed")
        self.assertLess(g["eval_count"], 100)
        # Streaming (NDJSON): whatever was generated, then a last line that says why it ended.
        # Another long prompt: the cancelled request above left its computed prefix in the cache,
        # and reusing it could let this one finish inside the timeout.
        other_prompt = h.cases()["plain"][1]["prompt"] * 1200
        with self.server.stream("/api/generate", {"model": h.MODEL_NAME, "prompt": other_prompt,
                                                  "options": {"num_predict": 100, "temperature": 0}}) as st:
            lines = h.ndjson(st.lines())
        self.assertTrue(lines[-1]["done"])
        self.assertEqual(lines[-1]["done_reason"], "length")
        self.assertEqual(lines[-1]["error"], "deadline passed")
        self.assertTrue(all(not x["done"] for x in lines[:-1]))
        m = self.server.metrics()
        self.assertEqual(m["hyco_cancelled_total"], before["hyco_cancelled_total"] + 4)
        self.assertEqual(m["hyco_client_disconnects_total"], before["hyco_client_disconnects_total"])
        self.server.wait_idle()
        # A short request still runs normally.
        case = h.cases()["plain"][1]
        self.assertEqual(self.server.post_json("/completion", {"prompt": case["prompt"], "n_predict": 64,
                                                               "temperature": 0})["content"], case["continuation"])


class Disconnects(h.ServerTest):
    # One slot, one queue place: the queue tests need them; the others work the same.
    SERVER_ARGS = ("--parallel", "1", "--max-queue", "1", "--ctx", "16384", "--threads", "1")

    def long_body(self, stream=True, prompt=None):
        return {"prompt": prompt or h.cases()["plain"][0]["prompt"], "n_predict": LONG,
                "temperature": 0, "ignore_eos": True, "stream": stream}

    def busy(self):
        return [s for s in self.server.slots() if s["is_processing"]]

    def assertFreedWithin(self, before, cancelled, disconnects, timeout=1.0):
        """Within `timeout`: no slot busy, nothing queued, and the counters went up by these."""
        def freed():
            m = self.server.metrics()
            return (not self.busy() and m["hyco_queue_depth"] == 0
                    and m["hyco_cancelled_total"] == before["hyco_cancelled_total"] + cancelled
                    and m["hyco_client_disconnects_total"] == before["hyco_client_disconnects_total"] + disconnects)
        try:
            self.server.wait_for(freed, timeout, "the slot to be freed")
        except AssertionError:
            m = self.server.metrics()
            self.fail(f"not freed within {timeout} s: slots {self.server.slots()}, "
                      f"cancelled {m['hyco_cancelled_total']} (was {before['hyco_cancelled_total']}), "
                      f"disconnects {m['hyco_client_disconnects_total']} "
                      f"(was {before['hyco_client_disconnects_total']}), queue {m['hyco_queue_depth']}")

    def tearDown(self):
        self.server.wait_idle()
        self.assertHealthy()

    def test_disconnect_mid_stream(self):
        # /completion because it takes ignore_eos (the test model ends every text it knows
        # soon); the relay that notices the disconnect is the same for every route.
        for abort in (False, True):  # a clean close (FIN) and a reset (RST)
            before = self.server.metrics()
            s = self.server.stream("/completion", self.long_body())
            events = s.sse()
            for _ in range(3):
                next(events)
            self.assertTrue(self.busy())
            s.close(abort=abort)
            self.assertFreedWithin(before, cancelled=1, disconnects=1)

    def test_disconnect_while_waiting_for_a_whole_response(self):
        before = self.server.metrics()
        body = json.dumps(self.long_body(stream=False)).encode()
        sock = socket.create_connection(("127.0.0.1", self.server.port))
        sock.sendall(b"POST /completion HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        self.server.wait_for(self.busy, 5, "the request to start")
        sock.close()
        self.assertFreedWithin(before, cancelled=1, disconnects=1)

    def test_queued_request_whose_client_left_never_runs(self):
        before = self.server.metrics()
        running = self.server.stream("/completion", self.long_body())
        next(running.sse())
        # A prompt of another length, so that the prompt-token counter tells which ran.
        queued_prompt = h.cases()["plain"][1]["prompt"]
        queued = self.server.stream("/completion", self.long_body(prompt=queued_prompt))
        self.server.wait_for(lambda: self.server.metrics()["hyco_queue_depth"] == 1, 5, "the queue")
        self.assertEqual(len(self.busy()), 1)
        queued.close()
        # The queued one is dropped at once, while the running one goes on.
        mid = dict(before, hyco_cancelled_total=before["hyco_cancelled_total"],
                   hyco_client_disconnects_total=before["hyco_client_disconnects_total"])

        def dropped():
            m = self.server.metrics()
            return (m["hyco_queue_depth"] == 0 and m["hyco_cancelled_total"] == mid["hyco_cancelled_total"] + 1
                    and m["hyco_client_disconnects_total"] == mid["hyco_client_disconnects_total"] + 1)
        self.server.wait_for(dropped, 1.0, "the queued request to be dropped")
        self.assertEqual(len(self.busy()), 1)
        running.close()
        self.assertFreedWithin(before, cancelled=2, disconnects=2)
        after = self.server.metrics()
        n_running = len(self.server.post_json("/tokenize", {"content": h.cases()["plain"][0]["prompt"],
                                                            "add_special": True})["tokens"])
        self.assertEqual(after["hyco_prompt_tokens_total"] - before["hyco_prompt_tokens_total"], n_running,
                         "the queued request was admitted")

    def test_full_queue_answers_503_with_retry_after(self):
        before = self.server.metrics()
        running = self.server.stream("/completion", self.long_body())
        next(running.sse())
        queued = self.server.stream("/completion", self.long_body())
        self.server.wait_for(lambda: self.server.metrics()["hyco_queue_depth"] == 1, 5, "the queue")
        for route, body, stream in [
            ("/completion", self.long_body(stream=False), False),
            ("/completion", self.long_body(stream=True), True),
            ("/v1/completions", {"prompt": "x", "max_tokens": 4}, False),
            ("/api/generate", {"prompt": "x", "options": {"num_predict": 4}}, True),
        ]:
            r = self.server.post(route, body)
            self.assertEqual(r.status, 503, (route, r))
            self.assertIn("retry-after", r.headers, route)
            self.assertGreaterEqual(int(r.headers["retry-after"]), 1)
            err = r.json()["error"]
            msg = err if isinstance(err, str) else err["message"]
            self.assertIn("busy", msg)
        self.assertGreaterEqual(self.server.metrics()["hyco_rejected_total"], before["hyco_rejected_total"] + 4)
        self.assertHealthy()  # /health stays 200 while busy
        queued.close()
        running.close()
        self.assertFreedWithin(before, cancelled=2, disconnects=2)
        # And the server serves again.
        r = self.server.post_json("/completion", {"prompt": h.cases()["plain"][1]["prompt"],
                                                  "n_predict": 64, "temperature": 0})
        self.assertEqual(r["content"], h.cases()["plain"][1]["continuation"])


if __name__ == "__main__":
    unittest.main()


class ChoicesOfOneRequest(h.ServerTest):
    """The n choices of one request are relayed by one HTTP thread, which sleeps until any of
    them has an event: once a choice had finished early, the thread used to poll the others and
    spin a core until the last one ended."""

    SERVER_ARGS = ("--ctx", "8192")  # room for a long choice

    def thread_cpu_s(self, name):
        """CPU seconds used so far by the server's threads called `name`."""
        total = 0
        task_dir = f"/proc/{self.server.proc.pid}/task"
        for tid in os.listdir(task_dir):
            try:
                with open(os.path.join(task_dir, tid, "stat"), encoding="utf-8") as f:
                    stat = f.read()
            except OSError:
                continue  # the thread ended
            comm = stat[stat.index("(") + 1: stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            if comm == name:
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")

    def test_a_burst_of_connections_is_accepted_at_once(self):
        # 64 clients connecting together (editors opening files, a load generator's first
        # requests) must not overflow the listen queue: a dropped SYN is retried by the client's
        # kernel only after a full second (httplib listens with a backlog of 5).
        import select
        socks = [socket.socket() for _ in range(64)]
        try:
            for s in socks:  # as fast as the kernel takes them
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", self.server.port))
            pending, end = set(socks), time.monotonic() + 0.5
            while pending and time.monotonic() < end:
                _, ready, _ = select.select([], list(pending), [], max(0.0, end - time.monotonic()))
                pending -= set(ready)
            self.assertEqual(len(pending), 0, "connections still waiting for a SYN retry after 0.5 s")
            for s in socks:
                s.setblocking(True)
                s.settimeout(10)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            for s in socks:
                self.assertTrue(s.recv(100).startswith(b"HTTP/1.1 200"))
        finally:
            for s in socks:
                s.close()

    def test_a_choice_that_ends_early_does_not_busy_the_relaying_thread(self):
        names = set()
        for t in os.listdir(f"/proc/{self.server.proc.pid}/task"):
            with open(f"/proc/{self.server.proc.pid}/task/{t}/comm", encoding="utf-8") as f:
                names.add(f.read().strip())
        self.assertTrue({"hyco-sched", "hyco-http"} <= names, names)
        prompts = [c["prompt"] for c in h.cases()["plain"]][:2]
        self.assertEqual(len(prompts), 2)
        long_n = 8000
        first = self.server.post_json("/v1/completions", {"prompt": prompts[0], "max_tokens": long_n, "temperature": 0,
                                                          "ignore_eos": True})["choices"][0]["text"]
        # A stop string the second prompt's output reaches at once and the first's never does.
        second = self.server.post_json("/v1/completions", {"prompt": prompts[1], "max_tokens": 8, "temperature": 0,
                                                           "ignore_eos": True})["choices"][0]["text"]
        stop = next((second[:k] for k in range(1, len(second) + 1) if second[:k] not in first), None)
        self.assertIsNotNone(stop, "no stop string tells the two outputs apart")
        cpu0, t0 = self.thread_cpu_s("hyco-http"), time.time()
        r = self.server.post_json("/v1/completions", {"prompt": prompts, "max_tokens": long_n, "temperature": 0,
                                                      "ignore_eos": True, "stop": [stop]})
        wall, cpu = time.time() - t0, self.thread_cpu_s("hyco-http") - cpu0
        reasons = {c["index"]: c["finish_reason"] for c in r["choices"]}
        self.assertEqual(reasons, {0: "length", 1: "stop"}, r["choices"])
        self.assertEqual(r["choices"][0]["text"], first)
        self.assertGreater(wall, 0.2, "the long choice should take a while")
        # Not streaming, the thread sleeps until a choice has finished (a few per cent of the
        # wall time); polling, it took about a third here (two cores, shared with the engine).
        self.assertLess(cpu, 0.2 * wall, f"HTTP threads used {cpu:.2f} s of CPU in {wall:.2f} s")


class LoadGenerator(h.ServerTest):
    """scripts/bench_server.py, which the README's numbers come from, against the real server:
    its raw-socket stream reader sees the tokens the harness's reader sees, and a short run of
    two levels reports tokens, latencies and prefix reuse without errors."""

    SERVER_ARGS = ("--parallel", "4")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import importlib.util
        spec = importlib.util.spec_from_file_location("bench_server", os.path.join(h.SOURCE_DIR, "scripts", "bench_server.py"))
        cls.bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cls.bench)

    def test_stream_reader_counts_what_the_server_sent(self):
        case = h.cases()["fim"][0]
        body = {"input_prefix": case["prefix"], "input_suffix": case["suffix"], "n_predict": 24,
                "temperature": 0, "ignore_eos": True, "cache_prompt": True}
        events = [json.loads(e) for e in self.server.stream("/infill", dict(body, stream=True)).sse() if e != b"[DONE]"]
        want = [e for e in events if not e.get("stop")]
        ttft, times, n, cached, status = self.bench.Server(f"http://127.0.0.1:{self.server.port}").stream_infill(body)
        self.assertEqual(status, 200)
        self.assertEqual(n, 24)
        self.assertEqual(n, want[-1]["tokens_predicted"])
        self.assertEqual(len(times), 24)
        self.assertGreater(ttft, 0)
        self.assertGreater(cached, 0)  # the same prompt again: its prefix was cached

    def test_short_run_of_two_levels_twice(self):
        out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench_server_{os.getpid()}.json")
        import subprocess
        import sys
        subprocess.run([sys.executable, os.path.join(h.SOURCE_DIR, "scripts", "bench_server.py"),
                        "--url", f"http://127.0.0.1:{self.server.port}", "--sources", os.path.join(h.SOURCE_DIR, "engine"),
                        "--clients", "1,4", "--duration", "1", "--rounds", "2", "--prefix-tokens", "300",
                        "--suffix-tokens", "40", "--n-predict", "16", "--json", out],
                       check=True, capture_output=True, timeout=120)
        with open(out, encoding="utf-8") as f:
            r = json.load(f)
        os.remove(out)
        # Two rounds of both levels, each level scaled against the 1-client level of its round.
        self.assertEqual([(lv["round"], lv["clients"]) for lv in r["levels"]], [(0, 1), (0, 4), (1, 1), (1, 4)])
        for a, b in ((0, 1), (2, 3)):
            one, four = r["levels"][a], r["levels"][b]
            self.assertAlmostEqual(four["scaling_vs_first"], four["tokens_per_s"] / one["tokens_per_s"])
            self.assertEqual(one["scaling_vs_first"], 1.0)
        for lv in r["levels"]:
            self.assertEqual(lv["errors"], 0, lv)
            self.assertGreater(lv["requests"], 0, lv)
            self.assertGreater(lv["generated_tokens"], 0, lv)
            # (the tiny model outruns the reader: events that arrive together share a timestamp)
            self.assertGreater(lv["itl_p99_ms"], 0, lv)
            self.assertEqual(lv["statuses"], {"200": lv["requests"]}, lv)
            # The server's own split of the window (from /metrics).
            self.assertGreater(lv["server"]["generated_tokens"], 0, lv)
            self.assertGreater(lv["server"]["decode_share"] + lv["server"]["prefill_share"], 0, lv)
        self.assertGreater(r["cursor_moved"]["tokens_cached"], 0)
        self.assertHealthy()
