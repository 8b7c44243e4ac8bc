#!/usr/bin/python3
"""Load generator for a running hyco server: what users of an IDE plugin feel.

Each client edits its own source file: FIM requests with a ~2K-token prefix and ~200-token
suffix; every request is the same file with the cursor a few characters further on (the user
typed them), as llama.vim/llama.vscode send it — so prefix reuse matters — and every ~36
requests the user moves to another place in the file (the whole prompt is new). Requests go to
/infill, streaming, 64 new tokens (EOS ignored so every request generates the same amount).

Each level runs N clients in a closed loop for --duration seconds (each sends its next request
when the last one ends) and counts what happens inside that window. Each client's first
--warmup requests (the file was just opened) come before the window: the levels measure an
editing session, the cursor-moved line measures the cold/warm difference.

  /usr/bin/python3 scripts/bench_server.py --url http://127.0.0.1:8012 --sources DIR \
      [--clients 1,4,16,64] [--duration 20] [--rounds 1] [--json out.json]

Reports per concurrency level: TTFT p50/p99 (request sent → first token), inter-token latency
p50/p99, generated tokens/s over the window, errors; and the "cursor moved" speed-up: TTFT of a
request extending a cached prompt vs the same request with cache_prompt false.
"""

import argparse
import http.client
import json
import os
import random
import selectors
import socket
import statistics
import sys
import time
import urllib.parse


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Server:
    def __init__(self, url, api_key=None):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port or 80
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = "Bearer " + api_key

    def get(self, path):
        c = http.client.HTTPConnection(self.host, self.port, timeout=60)
        c.request("GET", path, headers=self.headers)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def n_tokens(self, text):
        """Tokens of text by the server's /tokenize."""
        c = http.client.HTTPConnection(self.host, self.port, timeout=60)
        c.request("POST", "/tokenize", body=json.dumps({"content": text}), headers=self.headers)
        r = c.getresponse()
        data = r.read()
        c.close()
        if r.status != 200:
            raise RuntimeError(f"/tokenize: {r.status} {data[:200]!r}")
        return len(json.loads(data)["tokens"])

    def metrics(self):
        """{sample name with labels: value} of /metrics."""
        status, data = self.get("/metrics")
        if status != 200:
            return {}
        out = {}
        for line in data.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def start_infill(self, body):
        """Sends a streaming /infill request on a new socket; returns (socket, SseStream)."""
        payload = json.dumps(dict(body, stream=True)).encode()
        head = [f"POST /infill HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(payload)}",
                "Connection: close"] + [f"{k}: {v}" for k, v in self.headers.items()]
        sock = socket.create_connection((self.host, self.port), timeout=600)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream = SseStream(time.perf_counter())
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        except BaseException:
            sock.close()
            raise
        return sock, stream

    def stream_infill(self, body):
        """Streams /infill to its end; returns (ttft_s, token_times, n_tokens, tokens_cached, status)."""
        sock, stream = self.start_infill(body)
        try:
            while not stream.feed(sock.recv(65536), time.perf_counter()):
                pass
            return stream.result()
        finally:
            sock.close()


class SseStream:
    """Incremental reader of one streaming /infill response, fed the bytes of each recv.

    The load generator shares the cores with the server, so it parses each burst of events with a
    few bytes operations (http.client's readline over chunked bodies cost ~90 us of CPU per
    event here), and one thread serves every client (see run_level)."""

    def __init__(self, t0):
        self.t0 = t0
        self.head = b""      # bytes before the end of the headers
        self.status = None
        self.chunked = False
        self.raw = b""       # received body bytes not yet de-chunked
        self.body = b""      # de-chunked bytes not yet split into events
        self.ttft, self.times, self.n, self.cached = None, [], 0, 0
        self.done = False

    def result(self):
        if self.status != 200:
            return None, [], 0, 0, self.status
        return self.ttft, self.times, self.n, self.cached, 200

    def feed(self, data, now):
        """Takes the bytes of one recv (b"" when the server closed), received at `now`; returns
        True once the response is complete."""
        if self.status is None:
            if not data:
                raise ConnectionError("connection closed before the response headers")
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return False
            head, _, data = self.head.partition(b"\r\n\r\n")
            self.status = int(head.split(b" ", 2)[1])
            if self.status != 200:
                self.done = True
                return True
            self.chunked = b"transfer-encoding: chunked" in head.lower()
        elif not data:
            self.done = True
            return True
        self.raw += data
        if self.chunked:  # take every complete chunk out of `raw`
            while True:
                eol = self.raw.find(b"\r\n")
                if eol < 0:
                    break
                size = int(self.raw[:eol].split(b";")[0], 16)
                if len(self.raw) < eol + 2 + size + 2:
                    break
                if size == 0:
                    self.done = True
                    break
                self.body += self.raw[eol + 2:eol + 2 + size]
                self.raw = self.raw[eol + 4 + size:]
        else:
            self.body, self.raw = self.body + self.raw, b""
        *events, self.body = self.body.split(b"\n\n")
        for ev in events:
            ev = ev.strip()
            if not ev.startswith(b"data: "):
                continue
            if ev == b"data: [DONE]":
                self.done = True
                break
            e = json.loads(ev[6:])
            if e.get("stop"):
                self.cached = e.get("tokens_cached", 0)
                continue
            k = e.get("tokens_predicted", 0) - self.n
            if k > 0:
                if self.ttft is None:
                    self.ttft = now - self.t0
                self.times.extend([now] * k)
                self.n += k
        return self.done


def load_sources(path, min_bytes):
    files = []
    for root, _, names in os.walk(path):
        for n in sorted(names):
            if n.endswith((".rs", ".cpp", ".h", ".py", ".c")):
                p = os.path.join(root, n)
                try:
                    t = open(p, encoding="utf-8").read()
                except (UnicodeDecodeError, OSError):
                    continue
                if len(t) >= min_bytes:
                    files.append(t)
    files.sort(key=len)
    return files


class Doc:
    """One client's file. The user types the text that follows the cursor, a few characters per
    request (the prefix grows, the suffix stays); after ~200 characters they move to another
    place in the file, where the prefix is again ~prefix_tokens long, and the whole prompt is
    computed again. Every request of every client thus has about the same prompt, whatever the
    number of clients and however long the run."""

    GAP = 200  # characters typed at one place before moving on

    def __init__(self, server, text, prefix_tokens, suffix_tokens, rng):
        # Characters per token of this file (the model's tokenizer), so that every file's prompt
        # has about the same number of tokens.
        sample = text[:16000]
        n_bytes_per_token = len(sample) / max(1, server.n_tokens(sample))
        self.full = text
        self.want_pre = int(prefix_tokens * n_bytes_per_token)
        self.want_suf = int(suffix_tokens * n_bytes_per_token)
        self.move(rng)
        # Each client starts at its own point of the typing cycle, so that the moves, the costly
        # requests, are spread over the run instead of falling together.
        self.gap = rng.randint(20, self.GAP + 19)

    def move(self, rng):
        """The cursor goes to a random place with ~want_pre characters before it."""
        last = max(0, len(self.full) - self.want_pre - self.want_suf - self.GAP - 20)
        start = rng.randint(0, last)
        self.text = self.full[start:]
        self.cursor = min(self.want_pre, len(self.text))
        self.gap = self.GAP

    def request(self, n_predict, cache_prompt=True):
        prefix = self.text[: self.cursor]
        suffix = self.text[self.cursor + self.gap: self.cursor + self.gap + self.want_suf]
        return {"input_prefix": prefix, "input_suffix": suffix, "n_predict": n_predict, "temperature": 0,
                "ignore_eos": True, "cache_prompt": cache_prompt, "samplers": ["top_k"], "top_k": 1}

    def type(self, rng):
        k = rng.randint(1, 10)
        self.cursor += k
        self.gap -= k
        if self.gap < 20:
            self.move(rng)


def run_level(server, docs, n_clients, duration, n_predict, seed, warmup):
    """n_clients edit their files for `duration` seconds, each sending its next request as soon as
    the last one ends (a closed loop). Only what happens inside the window counts: tokens that
    arrive after it, and the TTFT/ITL samples they would give, do not; requests still running at
    its end finish (unmeasured) before the next level starts.

    One thread drives every client over non-blocking sockets: a step of the server's batch sends a
    token to each stream at about the same time, and one wake-up reads them all (a thread per
    client cost a wake-up and a GIL hand-over per token: ~0.14 of a core at 16 clients, now ~0.08)."""
    ttfts, itls, errors, statuses = [], [], 0, {}
    tokens, requests = 0, 0
    sel = selectors.DefaultSelector()
    clients = [{"rng": random.Random(seed * 1000 + i), "doc": docs[i], "warmup": warmup, "stream": None}
               for i in range(n_clients)]
    window = {"end": None}

    def send(c):
        """Starts the client's next request; False (counted as an error) when it cannot be sent."""
        try:
            sock, stream = server.start_infill(c["doc"].request(n_predict))
        except OSError:
            return False
        sock.setblocking(False)
        c["stream"] = stream
        sel.register(sock, selectors.EVENT_READ, c)
        return True

    def finished(c, result):
        """Counts a request that ended (result None: a transport failure) and starts the next."""
        nonlocal errors, tokens, requests
        c["stream"] = None
        c["doc"].type(c["rng"])
        if window["end"] is None:  # warm-up (not measured): the editor opened the file and asked once already
            c["warmup"] -= 1
            if c["warmup"] > 0:
                send(c)
            return
        ttft, times, n, _, status = result if result else (None, [], 0, 0, -1)
        t_end = window["end"]
        inside = [t for t in times if t <= t_end]
        statuses[status] = statuses.get(status, 0) + 1
        if status != 200 or ttft is None:
            errors += 1
        else:
            requests += 1
            if inside:
                ttfts.append(ttft)
            itls.extend(b - a for a, b in zip(inside, inside[1:]))
            tokens += len(inside)
        while time.perf_counter() < t_end:
            if send(c):
                return
            statuses[-1] = statuses.get(-1, 0) + 1
            errors += 1

    def pump(timeout):
        for key, _ in sel.select(timeout):
            sock, c = key.fileobj, key.data
            try:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:  # readiness without data: wait again
                    continue
                done = c["stream"].feed(data, time.perf_counter())
                result = c["stream"].result() if done else None
            except (OSError, ValueError):  # any transport or protocol failure counts as an error
                done, result = True, None
            if done:
                sel.unregister(sock)
                sock.close()
                finished(c, result)

    # Warm-up: every client's first requests, together; the window opens when all have ended.
    for c in clients:
        if c["warmup"] > 0 and not send(c):
            c["warmup"] = 0
    while sel.get_map():
        pump(1.0)
    m0 = server.metrics()
    t0 = time.perf_counter()
    window["end"] = t0 + duration
    for c in clients:
        if not send(c):
            finished(c, None)
    m1 = None
    while sel.get_map() or m1 is None:
        now = time.perf_counter()
        if m1 is None and now >= window["end"]:
            m1 = server.metrics()
            continue
        pump(max(0.0, window["end"] - now) if m1 is None else 1.0)
    d = {k: v - m0.get(k, 0.0) for k, v in m1.items()}
    return {"clients": n_clients, "requests": requests, "errors": errors, "statuses": statuses,
            "ttft_p50_ms": 1e3 * percentile(ttfts, 50), "ttft_p99_ms": 1e3 * percentile(ttfts, 99),
            "itl_p50_ms": 1e3 * percentile(itls, 50), "itl_p99_ms": 1e3 * percentile(itls, 99),
            "generated_tokens": tokens, "wall_s": duration, "tokens_per_s": tokens / duration,
            "server": server_split(d, duration)}


def server_split(d, duration):
    """Where the server's time went during the window, from its /metrics counters: prompt tokens
    computed per generated token, and the shares of the window spent in decode-only steps, in
    steps that carried prompt chunks, and outside steps (admission, HTTP work and the load
    generator on the same cores, idle). Steps are counted when they end, so the shares are off
    by a step or two at the window's ends (the "outside" share can read slightly negative)."""
    gen = d.get("hyco_generated_tokens_total", 0.0)
    dec = d.get('hyco_scheduler_step_seconds_total{kind="decode"}', 0.0)
    pre = d.get('hyco_scheduler_step_seconds_total{kind="prefill"}', 0.0)
    fwd = d.get('hyco_scheduler_forward_seconds_total{kind="decode"}', 0.0)
    n_decode = d.get("hyco_scheduler_steps_total", 0.0) - d.get("hyco_scheduler_prefill_steps_total", 0.0)
    return {"prefill_tokens": d.get("hyco_prefill_tokens_total", 0.0), "generated_tokens": gen,
            "prefill_per_generated": d.get("hyco_prefill_tokens_total", 0.0) / gen if gen else float("nan"),
            "steps": d.get("hyco_scheduler_steps_total", 0.0), "prefill_steps": d.get("hyco_scheduler_prefill_steps_total", 0.0),
            "decode_share": dec / duration, "prefill_share": pre / duration,
            "other_share": 1.0 - (dec + pre) / duration,
            "decode_step_ms": 1e3 * dec / n_decode if n_decode > 0 else float("nan"),
            "decode_forward_ms": 1e3 * fwd / n_decode if n_decode > 0 else float("nan")}


def cursor_moved(server, doc, n_predict, repeats=5):
    """TTFT of a request after a keystroke, with and without reuse of the cached prompt (medians
    of `repeats` keystrokes)."""
    doc.gap = Doc.GAP  # no move during these keystrokes
    server.stream_infill(doc.request(n_predict))  # the request before the first keystroke
    warm, cold, cached = [], [], []
    for _ in range(repeats):
        doc.cursor += 3
        doc.gap -= 3
        w = server.stream_infill(doc.request(n_predict))
        warm.append(w[0])
        cached.append(w[3])
        doc.cursor += 3
        doc.gap -= 3
        cold.append(server.stream_infill(doc.request(n_predict, cache_prompt=False))[0])
        server.stream_infill(doc.request(n_predict))  # the next keystroke starts from a cached prompt
    w, c = statistics.median(warm), statistics.median(cold)
    return {"ttft_reused_ms": 1e3 * w, "tokens_cached": int(statistics.median(cached)), "ttft_recomputed_ms": 1e3 * c,
            "speedup": c / w, "repeats": repeats}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8012")
    ap.add_argument("--api-key", default=os.environ.get("HYCO_API_KEY"))
    ap.add_argument("--sources", required=True, help="directory of source files to edit")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured requests per client first (the file is open)")
    ap.add_argument("--prefix-tokens", type=int, default=2048)
    ap.add_argument("--suffix-tokens", type=int, default=200)
    ap.add_argument("--n-predict", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the whole list of levels this many times (the machine's speed drifts: "
                         "each round's ratios come from levels measured a minute or two apart)")
    ap.add_argument("--json")
    args = ap.parse_args()

    server = Server(args.url, args.api_key)
    status, _ = server.get("/health")
    if status != 200:
        sys.exit(f"server at {args.url} is not ready (/health {status})")
    need = int((args.prefix_tokens + args.suffix_tokens) * 5) + 1200  # room for up to 5 bytes per token
    sources = load_sources(args.sources, need)
    if not sources:
        sys.exit(f"no source file of at least {need} bytes under {args.sources}")
    levels = [int(x) for x in args.clients.split(",")]
    rng = random.Random(args.seed)
    props = json.loads(server.get("/props")[1])
    out = {"url": args.url, "props": props, "settings": vars(args), "levels": []}
    print(f"# {props.get('model_alias')} on {props.get('backend')}, {props.get('total_slots')} slots; "
          f"prefix ~{args.prefix_tokens} tokens, suffix ~{args.suffix_tokens}, {args.n_predict} new tokens, "
          f"{args.duration:g} s per level")
    print(f"{'clients':>7} {'reqs':>5} {'err':>4} | {'TTFT p50':>9} {'p99':>8} ms | {'ITL p50':>8} {'p99':>7} ms | {'tok/s':>8} | "
          f"server: prefill/gen, time in decode / prefill steps / other, decode step (forward) ms")
    if args.rounds < 1:
        sys.exit("--rounds must be at least 1")
    for rnd in range(args.rounds):
        for n in levels:
            docs = [Doc(server, sources[(i * 7919) % len(sources)], args.prefix_tokens, args.suffix_tokens, rng)
                    for i in range(n)]
            r = run_level(server, docs, n, args.duration, args.n_predict, args.seed + 1000 * rnd, args.warmup)
            r["round"] = rnd
            out["levels"].append(r)
            sv = r["server"]
            print(f"{n:7d} {r['requests']:5d} {r['errors']:4d} | {r['ttft_p50_ms']:9.1f} {r['ttft_p99_ms']:8.1f}    | "
                  f"{r['itl_p50_ms']:8.2f} {r['itl_p99_ms']:7.2f}    | {r['tokens_per_s']:8.1f} | "
                  f"{sv['prefill_per_generated']:.2f}, {100 * sv['decode_share']:.0f}% / {100 * sv['prefill_share']:.0f}% / "
                  f"{100 * sv['other_share']:.0f}%, {sv['decode_step_ms']:.2f} ({sv['decode_forward_ms']:.2f})", flush=True)
    # Each level against the first level of its own round.
    for rnd in range(args.rounds):
        rs = [r for r in out["levels"] if r["round"] == rnd]
        if len(rs) > 1 and rs[0]["tokens_per_s"] > 0:
            for r in rs:
                r["scaling_vs_first"] = r["tokens_per_s"] / rs[0]["tokens_per_s"]
    if len(levels) > 1:
        for n in levels[1:]:
            ratios = sorted(r["scaling_vs_first"] for r in out["levels"]
                            if r["clients"] == n and "scaling_vs_first" in r)
            if ratios:
                print(f"{n} clients / {levels[0]}: " + ", ".join(f"{x:.2f}x" for x in ratios) +
                      f" (median {statistics.median(ratios):.2f}x over {len(ratios)} round(s))")
    doc = Doc(server, sources[-1], args.prefix_tokens, args.suffix_tokens, rng)
    cm = cursor_moved(server, doc, args.n_predict)
    out["cursor_moved"] = cm
    print(f"cursor moved: TTFT {cm['ttft_reused_ms']:.1f} ms reusing {cm['tokens_cached']} cached tokens vs "
          f"{cm['ttft_recomputed_ms']:.1f} ms recomputing: {cm['speedup']:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
