#!/usr/bin/python3
"""Evaluation of a completion model through the C++ engine and the real server routes.

  * bits per byte on the test split: /v1/completions with echo + logprobs and max_tokens 0
    scores each file (files longer than the window of --score-chars characters are scored in
    consecutive pieces, each from a fresh context);
  * single-line infilling: lines of the test files with >= 10 non-blank characters, other than
    a file's first line (a seeded sample of --lines); prefix = everything before the line, suffix = everything after (both cut
    to --context-chars around the cursor, as a plugin sends them); /infill, greedy, stop at the
    newline; exact match (trailing blanks ignored) and edit similarity;
  * next-line completion: the same lines with no suffix, through /completion.

Starts `hyco serve` itself (--binary, --model, extra flags after --) or uses --url.

  /usr/bin/python3 scripts/eval.py --binary build/cli/hyco --model models/hyco-rust \
      --test /work/data/corpus/test.jsonl --lines 1000 --json eval.json
"""

import argparse
import http.client
import json
import math
import os
import random
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hyco_server import connect_or_start  # noqa: E402


def post(host, port, path, body):
    c = http.client.HTTPConnection(host, port, timeout=600)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        raise RuntimeError(f"{path}: HTTP {r.status}: {data[:300]!r}")
    return json.loads(data)


def edit_similarity(a, b):
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        prev = cur
    return 1.0 - prev[len(b)] / max(len(a), len(b))


def load_docs(path, max_docs):
    docs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            docs.append(d["text"])
    docs.sort(key=lambda t: (len(t), t))
    rng = random.Random(7)
    rng.shuffle(docs)
    return docs[:max_docs] if max_docs else docs


def score(host, port, piece):
    """Nats of a piece of text; halves it while it is longer than the model's context."""
    try:
        r = post(host, port, "/v1/completions", {"prompt": piece, "max_tokens": 0, "echo": True, "logprobs": 0})
    except RuntimeError as e:
        if "context_length_exceeded" not in str(e) or len(piece) < 2:
            raise
        half = len(piece) // 2
        return score(host, port, piece[:half]) + score(host, port, piece[half:])
    return -sum(x for x in r["choices"][0]["logprobs"]["token_logprobs"] if x is not None)


def bits_per_byte(host, port, docs, chars, budget_bytes):
    nats, n_bytes = 0.0, 0
    for text in docs:
        for i in range(0, len(text), chars):
            piece = text[i:i + chars]
            if not piece.strip():
                continue
            nats += score(host, port, piece)
            n_bytes += len(piece.encode("utf-8"))
        if n_bytes >= budget_bytes:
            break
    return nats / math.log(2) / n_bytes, n_bytes


def pick_lines(docs, n, seed):
    cands = []
    for di, text in enumerate(docs):
        pos = 0
        for line in text.split("\n"):
            # (not a file's first line: next-line completion needs a prefix to continue)
            if pos > 0 and len(line.strip()) >= 10 and len(re.sub(r"\s", "", line)) >= 10:
                cands.append((di, pos, len(line)))
            pos += len(line) + 1
    rng = random.Random(seed)
    rng.shuffle(cands)
    return cands[:n]


def line_tasks(host, port, docs, lines, context_chars, infill):
    em, es, n = 0, 0.0, 0
    examples = []
    for di, pos, length in lines:
        text = docs[di]
        want = text[pos:pos + length]
        prefix = text[max(0, pos - context_chars):pos]
        if infill:
            suffix = text[pos + length:pos + length + context_chars // 4]
            r = post(host, port, "/infill", {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 128,
                                             "temperature": 0, "top_k": 1, "stop": ["\n"], "cache_prompt": True})
        else:
            r = post(host, port, "/completion", {"prompt": prefix, "n_predict": 128, "temperature": 0, "top_k": 1,
                                                 "stop": ["\n"], "cache_prompt": True})
        got = r["content"].split("\n")[0]
        hit = got.rstrip() == want.rstrip()
        em += hit
        es += edit_similarity(got.rstrip(), want.rstrip())
        n += 1
        if len(examples) < 8:
            examples.append({"want": want, "got": got})
    return {"lines": n, "exact_match": em / n, "edit_similarity": es / n, "examples": examples}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url")
    ap.add_argument("--binary")
    ap.add_argument("--model")
    ap.add_argument("--test", required=True, help="test split jsonl (scripts/corpus.py)")
    ap.add_argument("--lines", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--context-chars", type=int, default=4000, help="prefix characters before the cursor")
    ap.add_argument("--score-chars", type=int, default=4000)
    ap.add_argument("--score-bytes", type=int, default=400000, help="bytes of the test split scored for bits/byte")
    ap.add_argument("--json")
    args, extra = ap.parse_known_args()
    extra = [a for a in extra if a != "--"]
    proc, host, port = connect_or_start(args.url, args.binary, args.model, extra)
    try:
        docs = load_docs(args.test, 0)
        t0 = time.time()
        bpb, scored = bits_per_byte(host, port, docs, args.score_chars, args.score_bytes)
        t1 = time.time()
        lines = pick_lines(docs, args.lines, args.seed)
        print(f"bits/byte {bpb:.4f} over {scored} bytes ({t1 - t0:.0f} s)", flush=True)
        infill = line_tasks(host, port, docs, lines, args.context_chars, True)
        t2 = time.time()
        print(f"single-line infill EM {100 * infill['exact_match']:.1f}% ES {100 * infill['edit_similarity']:.1f}% "
              f"({infill['lines']} lines, {t2 - t1:.0f} s)", flush=True)
        nextline = line_tasks(host, port, docs, lines, args.context_chars, False)
        t3 = time.time()
        out = {"model": args.model or args.url, "bits_per_byte": bpb, "bytes_scored": scored,
               "single_line_infill": infill, "next_line": nextline,
               "seconds": {"bpb": t1 - t0, "infill": t2 - t1, "next_line": t3 - t2}, "settings": vars(args)}
        print(f"bits/byte {bpb:.4f} over {scored} bytes; single-line infill EM {100 * infill['exact_match']:.1f}% "
              f"ES {100 * infill['edit_similarity']:.1f}% ({infill['lines']} lines); next line EM "
              f"{100 * nextline['exact_match']:.1f}% ES {100 * nextline['edit_similarity']:.1f}%")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=2)
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
