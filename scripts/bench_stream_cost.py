#!/usr/bin/env python3
"""What streaming costs the server per decode step.

N clients (default 16) send the same kind of /infill request in a closed loop — each its own file,
the cursor a few characters further each time, 64 new tokens — once streamed (a token per SSE
event, an HTTP thread woken per token) and once not streamed (one response at the end), in
alternation. From the server's /metrics it reports, for the decode-only steps inside each
window, the mean step and its forward: the difference between the two modes is what handing out
tokens one by one costs on this machine (context switches of the HTTP threads, formatting,
writes), on top of the same model work.

    build/cli/hyco serve --port 8014 --parallel 16 --cache-seqs 72 --max-queue 128 &
    /usr/bin/python3 scripts/bench_stream_cost.py --url http://127.0.0.1:8014 \\
        --source /usr/src/rustc-1.63.0/library/core/src/iter/traits/iterator.rs --rounds 2
"""

import argparse
import json
import random
import re
import threading
import time
import urllib.request


def metrics(url):
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    d = {}
    for key, pattern in (("step", r'^hyco_scheduler_step_seconds_total\{kind="decode"\} (\S+)'),
                         ("forward", r'^hyco_scheduler_forward_seconds_total\{kind="decode"\} (\S+)'),
                         ("steps", r"^hyco_scheduler_steps_total (\S+)"),
                         ("prefill_steps", r"^hyco_scheduler_prefill_steps_total (\S+)"),
                         ("generated", r"^hyco_generated_tokens_total (\S+)")):
        m = re.search(pattern, text, re.M)
        if not m:
            raise SystemExit(f"/metrics has no {key} counter")
        d[key] = float(m.group(1))
    return d


def run(url, src, n_clients, stream, duration, warmup):
    stop = time.time() + warmup + duration
    errors = []

    def client(i):
        rng = random.Random(i)
        start = (i * 9000) % max(1, len(src) - 12000)
        cursor = start + 8000
        while time.time() < stop:
            cursor += rng.randint(1, 10)
            if cursor > start + 9500:  # a new place in the file now and then, as an editor would
                cursor = start + 8000
            body = {"input_prefix": src[start:cursor], "input_suffix": src[start + 9700:start + 10400],
                    "n_predict": 64, "temperature": 0, "ignore_eos": True, "stream": stream,
                    "samplers": ["top_k"], "top_k": 1}
            req = urllib.request.Request(url + "/infill", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    while r.read(65536):
                        pass
            except OSError as e:
                errors.append(e)
                return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    m0, t0 = metrics(url), time.time()
    time.sleep(duration)
    m1, t1 = metrics(url), time.time()
    for t in threads:
        t.join()
    steps = (m1["steps"] - m1["prefill_steps"]) - (m0["steps"] - m0["prefill_steps"])
    return {"stream": stream, "errors": len(errors), "generated_per_s": (m1["generated"] - m0["generated"]) / (t1 - t0),
            "decode_steps": steps,
            "decode_step_ms": 1000 * (m1["step"] - m0["step"]) / max(1.0, steps),
            "decode_forward_ms": 1000 * (m1["forward"] - m0["forward"]) / max(1.0, steps)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8014")
    ap.add_argument("--source", required=True, help="a source file of at least 12 KB")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=18)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    src = open(args.source, encoding="utf-8", errors="replace").read()
    if len(src) < 12000:
        raise SystemExit(f"{args.source}: need at least 12,000 characters")
    print(f"{'mode':>10} {'err':>4} {'gen tok/s':>10} {'decode steps':>13} {'step ms':>8} {'forward ms':>11}")
    for _ in range(args.rounds):
        for stream in (True, False):
            r = run(args.url, src, args.clients, stream, args.duration, args.warmup)
            print(f"{'stream' if stream else 'one reply':>10} {r['errors']:4d} {r['generated_per_s']:10.0f} "
                  f"{r['decode_steps']:13.0f} {r['decode_step_ms']:8.2f} {r['decode_forward_ms']:11.2f}", flush=True)


if __name__ == "__main__":
    main()
