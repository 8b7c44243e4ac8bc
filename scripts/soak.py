#!/usr/bin/python3
"""Soak test of a hyco server: many concurrent streaming clients for a while, some of which
hang up mid-stream or while queued, against every completion route. Checks what a server that
runs for days must hold to:

  * no 5xx, every request either answered (200) or refused with 503 + Retry-After;
  * resident memory grows < 5% from after warm-up to the end;
  * once every client is gone, no sequence is left running (/slots all idle, queue empty);
  * /metrics agrees with what the clients saw (requests by route and status, cancellations).

Either starts its own server (--binary, --model; extra server flags after --) or uses --url.

  /usr/bin/python3 scripts/soak.py --binary build/cli/hyco --model build/test-model \
      --clients 64 --seconds 600 [--json out.json] [-- --parallel 8]
Exit status 0 when every check passed.
"""

import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hyco_server import connect_or_start  # noqa: E402

PREFIXES = [
    "fn main() {\n    let ", "impl Point {\n    pub fn ", "use std::collections::", "pub struct ",
    "#[derive(Debug)]\nenum ", "let counts = word_counts(", "for i in 0..", "match self {\n",
]


def request_body(route, rng):
    prefix = rng.choice(PREFIXES) * rng.randint(1, 20)
    n = rng.randint(4, 48)
    if route == "/v1/completions":
        return {"prompt": prefix, "suffix": "\n}\n", "max_tokens": n, "temperature": 0.5, "stream": True,
                "seed": rng.randint(0, 1 << 30)}
    if route == "/infill":
        return {"input_prefix": prefix, "input_suffix": "\n}\n", "n_predict": n, "stream": True,
                "seed": rng.randint(0, 1 << 30)}
    if route == "/completion":
        return {"prompt": prefix, "n_predict": n, "stream": True, "seed": rng.randint(0, 1 << 30)}
    return {"prompt": prefix, "suffix": "\n}\n", "stream": True, "options": {"num_predict": n}}


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_status = {}
        self.by_route_status = {}
        self.hangups = 0
        self.errors = []
        self.tokens = 0
        self.missing_retry_after = 0

    def add(self, route, status):
        with self.lock:
            self.by_status[status] = self.by_status.get(status, 0) + 1
            key = (route, status)
            self.by_route_status[key] = self.by_route_status.get(key, 0) + 1


def one_request(host, port, route, rng, stats, hangup_p):
    body = json.dumps(request_body(route, rng)).encode()
    sock = socket.create_connection((host, port), timeout=120)
    try:
        sock.sendall(f"POST {route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        f = sock.makefile("rb")
        status_line = f.readline()
        m = re.match(rb"HTTP/1\.[01] (\d+)", status_line)
        if not m:
            stats.errors.append(f"{route}: bad status line {status_line!r}")
            return
        status = int(m.group(1))
        headers = {}
        while True:
            line = f.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        hang = rng.random() < hangup_p
        hang_after = rng.randint(0, 6)
        if status != 200:
            stats.add(route, status)
            if status == 503 and "retry-after" not in headers:
                stats.missing_retry_after += 1
            return
        lines = 0
        while True:
            line = f.readline()
            if not line:
                break
            if line.strip():
                lines += 1
            if hang and lines >= hang_after:
                stats.hangups += 1
                stats.add(route, "hangup")
                return  # close without reading the rest: the server must notice and cancel
        stats.add(route, 200)
        with stats.lock:
            stats.tokens += lines
    finally:
        sock.close()


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def get(host, port, path):
    c = http.client.HTTPConnection(host, port, timeout=30)
    c.request("GET", path)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def metric_values(text, name):
    out = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, val = line.rpartition(" ")
            out[key] = float(val)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url")
    ap.add_argument("--binary")
    ap.add_argument("--model")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--warmup", type=float, default=None, help="seconds before the RSS baseline (default 20%%)")
    ap.add_argument("--hangup", type=float, default=0.2, help="probability a client hangs up mid-stream")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    args, server_args = ap.parse_known_args()
    server_args = [a for a in server_args if a != "--"]

    proc, host, port = connect_or_start(args.url, args.binary, args.model, server_args)
    pid = proc.pid if proc else None

    stats = Stats()
    routes = ["/v1/completions", "/infill", "/completion", "/api/generate"]
    stop_at = time.time() + args.seconds
    warmup = args.warmup if args.warmup is not None else 0.2 * args.seconds
    rss = {"baseline": None, "end": None}

    def client(i):
        rng = random.Random(args.seed * 7919 + i)
        while time.time() < stop_at:
            route = rng.choice(routes)
            try:
                one_request(host, port, route, rng, stats, args.hangup)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                stats.errors.append(f"{route}: {type(e).__name__}: {e}")

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    if pid:
        time.sleep(min(warmup, args.seconds))
        rss["baseline"] = rss_kib(pid)
    for t in threads:
        t.join()
    # Let the server notice the last hang-ups (it checks every ~50 ms; a step frees the slot).
    idle = False
    for _ in range(100):
        slots = json.loads(get(host, port, "/slots")[1])
        metrics = get(host, port, "/metrics")[1].decode()
        queue = metric_values(metrics, "hyco_queue_depth").get("hyco_queue_depth", -1)
        if not any(s["is_processing"] for s in slots) and queue == 0:
            idle = True
            break
        time.sleep(0.1)
    if pid:
        rss["end"] = rss_kib(pid)
    metrics = get(host, port, "/metrics")[1].decode()
    served = metric_values(metrics, "hyco_requests_total")
    cancelled = metric_values(metrics, "hyco_cancelled_total").get("hyco_cancelled_total", 0)

    checks = {}
    checks["no 5xx other than 503"] = not any(isinstance(s, int) and s >= 500 and s != 503 for s in stats.by_status)
    checks["only 200 and 503"] = all(s in (200, 503, "hangup") for s in stats.by_status)
    checks["503 carries Retry-After"] = stats.missing_retry_after == 0
    checks["no client errors"] = not stats.errors
    checks["nothing left running"] = idle
    if rss["baseline"] and rss["end"]:
        checks["RSS growth < 5% after warm-up"] = rss["end"] < 1.05 * rss["baseline"]
    # Every request the clients made is counted by the server under its route and status
    # (a hang-up is a 200 the client did not read to the end).
    ok_counts = True
    for route in routes:
        seen = sum(n for (r, s), n in stats.by_route_status.items() if r == route and s in (200, "hangup"))
        got = served.get(f'hyco_requests_total{{route="{route}",status="200"}}', 0)
        refused = sum(n for (r, s), n in stats.by_route_status.items() if r == route and s == 503)
        got503 = served.get(f'hyco_requests_total{{route="{route}",status="503"}}', 0)
        if got != seen or got503 != refused:
            ok_counts = False
            stats.errors.append(f"{route}: clients saw {seen} ok / {refused} refused, /metrics says {got} / {got503}")
    checks["/metrics matches the clients"] = ok_counts
    checks["hang-ups were cancelled"] = cancelled >= 1 if stats.hangups else True

    result = {"seconds": time.time() - t0, "clients": args.clients, "statuses": {str(k): v for k, v in stats.by_status.items()},
              "hangups": stats.hangups, "stream_lines": stats.tokens, "server_cancelled": cancelled,
              "rss_kib": rss, "checks": checks, "errors": stats.errors[:20]}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    if proc:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = -9
        checks["SIGTERM exits 0"] = rc == 0
        print(f"server exit status {rc}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
