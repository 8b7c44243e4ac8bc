#!/usr/bin/env python3
"""Windowed prefill attention alone, from two `hyco bench` runs of one layer that differ only in
the window (models/shapes/attention-32x128.json: 32 heads x 128, a tiny MLP and vocabulary):

  hyco bench --preset models/shapes/attention-32x128.json --contexts 32768 --chunk 8192 \\
      --configs 'pattern=L,window=1024;pattern=L,window=16' --json attention.json
  python3 scripts/attention_tflops.py attention.json

Everything but attention (projections, norms, the tiny MLP and logits) costs the same in both
runs, so the difference of their prefill times is the attention over the extra keys, and the
unmasked work over those keys divided by it is attention's rate: 4 x head_dim x heads FLOPs per
(query, key) pair that the window lets through (QK^T and PV, 2 FLOPs per multiply-add).
Standard library only.
"""

import json
import os
import sys

SHAPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "shapes", "attention-32x128.json")


def pairs(context, window):
    """(query, key) pairs a causal window of `window` keys (the query's own included) allows."""
    full = max(0, context - window)
    return full * window + min(context, window) * (min(context, window) + 1) // 2


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        data = json.load(f)
    rows = sorted(data["results"], key=lambda r: r["window"])
    if len(rows) != 2 or rows[0]["context"] != rows[1]["context"]:
        sys.exit("attention_tflops.py: needs exactly two results of one context, two windows")
    small, large = rows
    with open(SHAPE) as f:
        shape = json.load(f)
    heads = shape["num_attention_heads"] * shape["head_dim"]
    flops = 4 * heads * (pairs(large["context"], large["window"]) - pairs(small["context"], small["window"]))
    seconds = large["prefill_seconds"] - small["prefill_seconds"]
    out = {"context": large["context"], "windows": [small["window"], large["window"]],
           "attention_seconds": seconds, "attention_tflops": flops / seconds / 1e12 if seconds > 0 else None}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
