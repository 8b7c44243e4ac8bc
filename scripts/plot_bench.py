#!/usr/bin/python3
"""Plots `hyco bench` results: decode tokens/s (left) and KV cache size (right) against context
length, one line per attention configuration (e.g. all-global against hybrid).

  /usr/bin/python3 scripts/plot_bench.py OUT.png RESULT [RESULT ...] [--title TEXT]

Each RESULT is a `hyco bench --json` file or the table `hyco bench` prints (a log of a run that
was stopped before it wrote its JSON). When several results hold the same configuration and
context, the first one given is plotted. Draws with export_model.py's small PNG canvas (no
matplotlib needed).
"""

import argparse
import json
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_model import Canvas, nice_step  # noqa: E402

ROW = re.compile(r"^(\S+)\s+.*?\s(\d+) \|\s+[\d.]+\s+[\d.]+ \|\s+([\d.]+)\s+[\d.]+ \|\s+[\d.]+\s+([\d.]+)\s*$")


def read_results(path):
    """[(config, context, decode tokens/s, KV MiB)] of one JSON file or printed table."""
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        return [(r["config"], int(r["context"]), float(r["decode_tokens_per_s"]),
                 r["kv_bytes"] / 1048576.0) for r in json.loads(text)["results"]]
    rows = []
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            rows.append((m.group(1), int(m.group(2)), float(m.group(3)), float(m.group(4))))
    return rows


def label(config):
    if config == "global":
        return "all global"
    m = re.match(r"pattern=(\w+),window=(\d+)", config)
    return f"hybrid {m.group(1)}, window {m.group(2)}" if m else config


def fmt_ctx(n):
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def panel(cv, x0, y0, w, h, series, contexts, key, title):
    """One chart: contexts on a log2 axis, values from 0."""
    left, bottom, top = 80, 50, 40
    pw, ph = w - left - 20, h - top - bottom
    lo, hi = math.log2(min(contexts)), math.log2(max(contexts))
    y_max = max(v[key] for pts in series.values() for v in pts) * 1.1

    def sx(c):
        return x0 + left + (pw * (math.log2(c) - lo) / (hi - lo) if hi > lo else pw / 2)

    def sy(v):
        return y0 + top + ph * (1 - v / y_max)

    grid, axis = (225, 225, 225), (0, 0, 0)
    step = nice_step(y_max, 5)
    v = 0.0
    while v <= y_max:
        cv.line(x0 + left, sy(v), x0 + left + pw, sy(v), grid)
        cv.text(x0 + left - 8, sy(v) - 7, f"{v:g}", anchor="right")
        v += step
    for c in contexts:
        cv.line(sx(c), y0 + top, sx(c), y0 + top + ph, grid)
        cv.text(sx(c), y0 + top + ph + 10, fmt_ctx(c), anchor="center")
    cv.line(x0 + left, y0 + top, x0 + left, y0 + top + ph, axis, 2)
    cv.line(x0 + left, y0 + top + ph, x0 + left + pw, y0 + top + ph, axis, 2)
    cv.text(x0 + left, y0 + 8, title)
    cv.text(x0 + left + pw // 2, y0 + h - 22, "context (tokens)", anchor="center")
    for (name, pts), color in zip(series.items(), COLORS):
        pts = sorted(pts, key=lambda p: p["ctx"])
        for a, b in zip(pts, pts[1:]):
            cv.line(sx(a["ctx"]), sy(a[key]), sx(b["ctx"]), sy(b[key]), color, 3)
        for p in pts:
            cv.rect(sx(p["ctx"]) - 4, sy(p[key]) - 4, sx(p["ctx"]) + 4, sy(p[key]) + 4, color)


COLORS = [(210, 40, 40), (31, 100, 200), (30, 150, 60), (150, 80, 180)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("results", nargs="+")
    args = ap.parse_args()
    series, seen = {}, set()
    for path in args.results:
        for config, ctx, decode, kv in read_results(path):
            if (config, ctx) in seen:
                continue
            seen.add((config, ctx))
            series.setdefault(label(config), []).append({"ctx": ctx, "decode": decode, "kv": kv / 1024})
    if not series:
        raise SystemExit("plot_bench.py: no results found in " + ", ".join(args.results))
    contexts = sorted({p["ctx"] for pts in series.values() for p in pts})
    w, h = 1200, 520
    cv = Canvas(w, h)
    panel(cv, 0, 0, w // 2, h - 40, series, contexts, "decode", "decode tokens/s")
    panel(cv, w // 2, 0, w // 2, h - 40, series, contexts, "kv", "KV cache (GiB)")
    x = 100
    for name, color in zip(series, COLORS):
        cv.line(x, h - 20, x + 30, h - 20, color, 3)
        cv.text(x + 40, h - 27, name)
        x += 60 + 12 * len(name)
    with open(args.out, "wb") as f:
        f.write(cv.png())
    for name, pts in series.items():
        print(name + ": " + ", ".join(f"{fmt_ctx(p['ctx'])} {p['decode']:.1f} tok/s {p['kv']:.2f} GiB"
                                      for p in sorted(pts, key=lambda p: p["ctx"])))


if __name__ == "__main__":
    main()
