#!/usr/bin/python3
"""Turns a scripts/train.py checkpoint into a hyco / Hugging Face model directory.

  config.json                    HF Llama keys (architectures LlamaForCausalLM, layer_types,
                                 sliding_window, attention_sinks, tie_word_embeddings,
                                 torch_dtype bfloat16, bos/eos ids, max_position_embeddings)
  model-0000i-of-0000K.safetensors + model.safetensors.index.json
                                 bf16 weights (round to nearest even), shards of at most
                                 --max-shard-mib each (a single tensor larger than that gets a
                                 shard of its own: a tensor cannot be split across shards)
  tokenizer.model                the checkpoint's sentencepiece model
  loss.png                       training loss and validation points against tokens seen
  MODEL_CARD.md                  data, training, results, FIM format, config

Usage:
  /usr/bin/python3 scripts/export_model.py --checkpoint RUN/checkpoint --out models/NAME \\
      [--manifest corpus/manifest.json] [--name NAME] [--max-shard-mib 16]
"""

import argparse
import json
import math
import os
import shutil
import struct
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

import reference as ref  # noqa: E402

MIB = 1 << 20


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

def header_bytes(tensors):
    """Size of the safetensors header write_safetensors writes for these tensors."""
    header = {"__metadata__": {"format": "pt"}}
    for name, t in tensors.items():
        header[name] = {"dtype": ref.TORCH_TO_ST[t.dtype], "shape": list(t.shape),
                        "data_offsets": [10 ** 12, 10 ** 12]}   # widest offsets
    n = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + n + 8


def shard_groups(tensors, max_bytes):
    """Tensor names in model order, grouped so that each file stays within max_bytes."""
    groups, cur = [], {}
    for name, t in tensors.items():
        trial = dict(cur, **{name: t})
        size = sum(v.numel() * v.element_size() for v in trial.values()) + header_bytes(trial)
        if cur and size > max_bytes:
            groups.append(list(cur))
            cur = {}
        cur[name] = t
    if cur:
        groups.append(list(cur))
    return groups


def write_shards(out_dir, tensors, max_bytes):
    """Writes the shards + index (the layout of reference.save_model_tensors) and returns
    [(file, bytes)]."""
    for fn in os.listdir(out_dir):
        if fn.startswith("model") and (fn.endswith(".safetensors")
                                       or fn == "model.safetensors.index.json"):
            os.remove(os.path.join(out_dir, fn))
    groups = shard_groups(tensors, max_bytes)
    k = len(groups)
    weight_map, files = {}, []
    for i, group in enumerate(groups):
        fn = f"model-{i + 1:05d}-of-{k:05d}.safetensors"
        path = os.path.join(out_dir, fn)
        ref.write_safetensors(path, {n: tensors[n] for n in group})
        weight_map.update({n: fn for n in group})
        files.append((fn, os.path.getsize(path)))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return files


# ---------------------------------------------------------------------------------------------
# loss.png without matplotlib: a small RGB canvas, lines, a 5x7 font, zlib + struct
# ---------------------------------------------------------------------------------------------

FONT = {  # 5x7 glyphs, rows top to bottom separated by '/'
    "0": ".###./#...#/#..##/#.#.#/##..#/#...#/.###.",
    "1": "..#../.##../..#../..#../..#../..#../.###.",
    "2": ".###./#...#/....#/...#./..#../.#.../#####",
    "3": "#####/...#./..#../...#./....#/#...#/.###.",
    "4": "...#./..##./.#.#./#..#./#####/...#./...#.",
    "5": "#####/#..../####./....#/....#/#...#/.###.",
    "6": "..##./.#.../#..../####./#...#/#...#/.###.",
    "7": "#####/....#/...#./..#../.#.../.#.../.#...",
    "8": ".###./#...#/#...#/.###./#...#/#...#/.###.",
    "9": ".###./#...#/#...#/.####/....#/...#./.##..",
    ".": "...../...../...../...../...../.##../.##..",
    "-": "...../...../...../#####/...../...../.....",
    "k": "#..../#..../#..#./#.#../##.../#.#../#..#.",
    "M": "#...#/##.##/#.#.#/#.#.#/#...#/#...#/#...#",
    "G": ".###./#...#/#..../#.###/#...#/#...#/.####",
    "t": ".#.../.#.../###../.#.../.#.../.#..#/..##.",
    "o": "...../...../.###./#...#/#...#/#...#/.###.",
    "e": "...../...../.###./#...#/#####/#..../.###.",
    "n": "...../...../#.##./##..#/#...#/#...#/#...#",
    "s": "...../...../.####/#..../.###./....#/####.",
    "l": ".##../..#../..#../..#../..#../..#../.###.",
    "a": "...../...../.###./....#/.####/#...#/.####",
    "r": "...../...../#.##./##..#/#..../#..../#....",
    "i": "..#../...../.##../..#../..#../..#../.###.",
    "v": "...../...../#...#/#...#/#...#/.#.#./..#..",
    "d": "....#/....#/.##.#/#..##/#...#/#...#/.####",
    "p": "...../...../####./#...#/####./#..../#....",
    "(": "...#./..#../.#.../.#.../.#.../..#../...#.",
    ")": ".#.../..#../...#./...#./...#./..#../.#...",
    "/": "....#/....#/...#./..#../.#.../#..../#....",
    "F": "#####/#..../#..../####./#..../#..../#....",
    "I": ".###./..#../..#../..#../..#../..#../.###.",
    "h": "#..../#..../#.##./##..#/#...#/#...#/#...#",
    "c": "...../...../.###./#..../#..../#...#/.###.",
    "m": "...../...../##.#./#.#.#/#.#.#/#...#/#...#",
    "b": "#..../#..../#.##./##..#/#...#/#...#/####.",
    "y": "...../...../#...#/#...#/.####/....#/.###.",
    "u": "...../...../#...#/#...#/#...#/#..##/.##.#",
    ":": "...../.##../.##../...../.##../.##../.....",
    "g": "...../.####/#...#/#...#/.####/....#/.###.",
    ",": "...../...../...../...../.##../..#../.#...",
    "K": "#...#/#..#./#.#../##.../#.#../#..#./#...#",
    "V": "#...#/#...#/#...#/#...#/#...#/.#.#./..#..",
    "B": "####./#...#/#...#/####./#...#/#...#/####.",
    "L": "#..../#..../#..../#..../#..../#..../#####",
    "w": "...../...../#...#/#...#/#.#.#/#.#.#/.#.#.",
    "x": "...../...../#...#/.#.#./..#../.#.#./#...#",
    " ": "/".join(["....."] * 7),
}


class Canvas:
    def __init__(self, w, h):
        self.w, self.h = w, h
        self.px = bytearray(b"\xff" * (w * h * 3))

    def dot(self, x, y, c):
        x, y = int(round(x)), int(round(y))
        if 0 <= x < self.w and 0 <= y < self.h:
            i = (y * self.w + x) * 3
            self.px[i:i + 3] = bytes(c)

    def rect(self, x0, y0, x1, y1, c):
        for y in range(int(y0), int(y1) + 1):
            for x in range(int(x0), int(x1) + 1):
                self.dot(x, y, c)

    def line(self, x0, y0, x1, y1, c, width=1):
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        for i in range(n + 1):
            t = i / n
            x, y = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
            for dx in range(width):
                for dy in range(width):
                    self.dot(x + dx - width // 2, y + dy - width // 2, c)

    def text(self, x, y, s, c=(0, 0, 0), scale=2, anchor="left"):
        s = "".join(ch if ch in FONT else " " for ch in s)
        w = len(s) * 6 * scale
        if anchor == "right":
            x -= w
        elif anchor == "center":
            x -= w // 2
        for k, ch in enumerate(s):
            g = FONT[ch].split("/")
            for r in range(7):
                for col in range(5):
                    if g[r][col] == "#":
                        self.rect(x + (k * 6 + col) * scale, y + r * scale,
                                  x + (k * 6 + col) * scale + scale - 1,
                                  y + r * scale + scale - 1, c)

    def png(self):
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3:(y + 1) * self.w * 3])
                       for y in range(self.h))

        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + \
                struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h,
                                                                 8, 2, 0, 0, 0)) + \
            chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def fmt_tokens(n):
    for unit, d in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= d:
            v = n / d
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.1f}{unit}"
    return f"{n:.0f}"


def nice_step(span, n=6):
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def draw_loss_png(records, path):
    """Train loss (line) and validation loss (dots; FIM-middle loss: squares) against tokens,
    log-scaled loss axis."""
    train = [(r["tokens"], r["loss"]) for r in records if r.get("type") == "train"]
    val = [(r["tokens"], r["val_loss"]) for r in records if r.get("type") == "val"]
    fim = [(r["tokens"], r["val_fim_loss"]) for r in records
           if r.get("type") == "val" and r.get("val_fim_loss") is not None]
    pts = train + val + fim
    w, h = 900, 560
    left, right, top, bottom = 100, 30, 30, 80
    cv = Canvas(w, h)
    if not pts:
        cv.text(w // 2, h // 2, "no log records", anchor="center")
        with open(path, "wb") as f:
            f.write(cv.png())
        return
    x_max = max(p[0] for p in pts) or 1
    lo = min(p[1] for p in pts)
    hi = max(p[1] for p in pts)
    lo, hi = math.log(max(lo, 1e-3) * 0.95), math.log(max(hi, lo + 1e-3) * 1.05)
    pw, ph = w - left - right, h - top - bottom

    def sx(x):
        return left + pw * x / x_max

    def sy(y):
        return top + ph * (1 - (math.log(max(y, 1e-3)) - lo) / (hi - lo))

    grid, axis = (225, 225, 225), (0, 0, 0)
    step = nice_step(x_max)
    x = 0.0
    while x <= x_max * 1.0001:
        cv.line(sx(x), top, sx(x), top + ph, grid)
        cv.line(sx(x), top + ph, sx(x), top + ph + 5, axis)
        cv.text(sx(x), top + ph + 12, fmt_tokens(x), anchor="center")
        x += step
    for mantissas in ((1, 2, 5), (1, 1.5, 2, 3, 4, 5, 6, 8), [1 + k / 2 for k in range(18)],
                      [1 + k / 10 for k in range(90)]):
        shown = [round(m * 10 ** e, 6) for e in range(-2, 3) for m in mantissas
                 if lo <= math.log(m * 10 ** e) <= hi]
        if len(shown) >= 4:
            break
    while len(shown) > 10:
        shown = shown[::2]
    for t in shown:
        cv.line(left, sy(t), left + pw, sy(t), grid)
        cv.line(left - 5, sy(t), left, sy(t), axis)
        cv.text(left - 10, sy(t) - 7, f"{t:g}", anchor="right")
    cv.line(left, top, left, top + ph, axis, 2)
    cv.line(left, top + ph, left + pw, top + ph, axis, 2)
    cv.text(left + pw // 2, h - 36, "tokens", anchor="center")
    cv.text(12, top - 22, "loss (nats/token, log scale)")
    blue, red, green = (31, 100, 200), (210, 40, 40), (30, 150, 60)
    for (x0, y0), (x1, y1) in zip(train, train[1:]):
        cv.line(sx(x0), sy(y0), sx(x1), sy(y1), blue, 2)
    for x, y in val:
        cv.rect(sx(x) - 3, sy(y) - 3, sx(x) + 3, sy(y) + 3, red)
    for x, y in fim:
        cv.rect(sx(x) - 3, sy(y) - 3, sx(x) + 3, sy(y) + 3, green)
        cv.rect(sx(x) - 1, sy(y) - 1, sx(x) + 1, sy(y) + 1, (255, 255, 255))
    lx, ly = left + pw - 330, top + 12
    cv.line(lx, ly + 7, lx + 30, ly + 7, blue, 2)
    cv.text(lx + 40, ly, "train")
    cv.rect(lx + 120, ly + 4, lx + 126, ly + 10, red)
    cv.text(lx + 136, ly, "val")
    cv.rect(lx + 190, ly + 4, lx + 196, ly + 10, green)
    cv.text(lx + 206, ly, "val FIM")
    with open(path, "wb") as f:
        f.write(cv.png())


# ---------------------------------------------------------------------------------------------
# MODEL_CARD.md
# ---------------------------------------------------------------------------------------------

def kv_bytes_per_token(cfg, dtype_bytes=2):
    return 2 * cfg["num_key_value_heads"] * cfg["head_dim"] * dtype_bytes


def manifest_section(manifest):
    if not manifest:
        return ["No corpus manifest was given (`--manifest`)."]
    out = []
    src = manifest.get("sources")
    if src:
        out.append(f"Sources: `{json.dumps(src)}`.")
        out.append("")
    splits = manifest.get("splits")
    if isinstance(splits, dict):
        keys = sorted({k for v in splits.values() if isinstance(v, dict) for k in v})
        out.append("| split | " + " | ".join(keys) + " |")
        out.append("|---|" + "---|" * len(keys))
        for name, v in splits.items():
            out.append(f"| {name} | " + " | ".join(f"{v.get(k, ''):,}" if isinstance(
                v.get(k), int) else str(v.get(k, "")) for k in keys) + " |")
        out.append("")
    totals = manifest.get("totals")
    if isinstance(totals, dict):
        out.append("Totals: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                          for k, v in totals.items()) + ".")
        out.append("")
    filt = manifest.get("filters", {})
    if isinstance(filt, dict) and filt.get("dedup"):
        out.append(f"De-duplication: {filt['dedup']}.")
    if manifest.get("split_seed"):
        out.append(f"Split seed: `{manifest['split_seed']}`.")
    return out


def special_ids(tokenizer_path):
    """{piece: id} of the tokens the FIM format uses, read from the tokenizer."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    out = {}
    for p in ("<s>", "</s>", "<fim-prefix>", "<fim-suffix>", "<fim-middle>", "<fim-pad>"):
        i = sp.piece_to_id(p)
        if sp.id_to_piece(i) == p:
            out[p] = i
    return out


def model_card(name, cfg, meta, files, manifest, specials):
    n_params = meta.get("params")
    kinds = cfg["layer_types"]
    pattern = "".join("G" if k == ref.GLOBAL else "L" for k in kinds)
    val = meta.get("val") or {}
    runs = meta.get("runs", [])
    cyc = meta.get("cycle", {})
    tps = meta.get("batch_sequences", 0) * meta.get("ctx", 0)
    wall = meta.get("wall_seconds", 0.0)
    devices = sorted({r.get("device", "?") for r in runs})
    n_local = kinds.count(ref.LOCAL)
    L = [f"# {name}", "",
         "A small Rust code-completion model for hyco, trained from scratch by `scripts/train.py`"
         " (the decoder is `scripts/reference.py`'s `HycoDecoder`, the module the C++ engine is "
         "tested against) and exported by `scripts/export_model.py`.", "",
         "## Model", "",
         f"* Decoder: {cfg['num_hidden_layers']} pre-norm layers, hidden {cfg['hidden_size']}, "
         f"attention {cfg['num_attention_heads']} query heads / {cfg['num_key_value_heads']} "
         f"key-value heads x {cfg['head_dim']}, SwiGLU {cfg['intermediate_size']}, RMSNorm "
         f"(eps {cfg['rms_norm_eps']}), RoPE (theta {cfg['rope_theta']}), vocabulary "
         f"{cfg['vocab_size']}, tied embeddings: {str(cfg['tie_word_embeddings']).lower()}.",
         f"* Parameters: {n_params:,}." if n_params else "* Parameters: see config.",
         f"* Hybrid attention, layers `{pattern}` (L: sliding window of "
         f"{cfg.get('sliding_window')} tokens, {cfg.get('attention_sinks', 0)} attention sinks; "
         f"G: global), see DESIGN.md \"Hybrid attention\". {n_local} of {len(kinds)} layers "
         f"keep a KV cache of constant size.",
         f"* KV cache: {kv_bytes_per_token(cfg):,} bytes per token per layer in bf16.",
         f"* Weights: bf16, {len(files)} safetensors shard(s) "
         f"({', '.join(f'{fn}: {b / MIB:.2f} MiB' for fn, b in files)}).", "",
         "## Training data", ""]
    L += manifest_section(manifest)
    L += ["",
          f"Documents were shuffled per epoch; {meta.get('fim_rate', 0) * 100:.0f}% became FIM "
          f"examples ({meta.get('spm_rate', 0) * 100:.0f}% of those suffix-prefix-middle, the rest "
          f"prefix-suffix-middle; documents cut at line ends into pieces of at most "
          f"{meta.get('fim_max_chars')} characters; "
          + (f"{meta['fim_line_rate'] * 100:.0f}% of them with a middle of whole lines, from a "
             "non-blank line's start to the end of that line or of one of the next seven, the "
             "rest with " if meta.get("fim_line_rate") else "")
          + "split points uniform over the characters), "
          "the rest plain; examples packed into sequences of "
          f"{meta.get('ctx')} tokens.", "",
          "## Training", "",
          "| | |", "|---|---|",
          f"| tokens seen | {meta.get('tokens_seen', 0):,} |",
          f"| optimizer steps | {meta.get('step', 0):,} |",
          f"| batch | {meta.get('batch_sequences')} sequences x {meta.get('ctx')} tokens = "
          f"{tps:,} tokens per step (micro-batch {meta.get('micro_batch')}, accumulation "
          f"{meta.get('grad_accum')}) |",
          f"| learning rate | AdamW (0.9, 0.95), peak {meta.get('lr')}, warm-up "
          f"{cyc.get('warmup')} steps, cosine to 10%; weight decay {meta.get('weight_decay')} "
          "on matrices; gradient clipping 1.0 |",
          f"| schedule cycles | {cyc.get('index', 0) + 1} |",
          f"| hardware | {'; '.join(devices)} |",
          f"| wall time | {wall / 60:.1f} minutes over {len(runs)} run(s) |",
          f"| seed | {meta.get('seed')} |", ""]
    vs = meta.get("val_sample", {})
    L += ["## Results", "",
          f"Validation sample: {vs.get('docs')} held-out documents, {vs.get('tokens', 0):,} "
          f"tokens, {vs.get('bytes', 0):,} bytes (plain layout).", ""]
    if val:
        L += [f"* Final validation loss (step {val.get('step')}): "
              f"{val['val_loss']:.4f} nats/token, {val['val_bpb']:.4f} bits/byte.",
              f"* FIM middle loss (suffix-prefix-middle examples of the same documents, middle "
              f"tokens and the closing `</s>`): {val['val_fim_loss']:.4f} nats/token."
              if val.get("val_fim_loss") is not None else "* FIM middle loss: not measured."]
    else:
        L += ["* No validation result in the checkpoint."]
    L += ["", "![loss curve](loss.png)"]
    L += ["", "## Evaluation", "",
          "Not evaluated at export. `scripts/eval.py` measures bits/byte on the test split and "
          "single-line infill and next-line exact match through the server routes; its results "
          "belong here.", "",
          "## FIM format", "",
          "Special tokens (control symbols, inserted by id, never produced by text): "
          + ", ".join(f"`{p}`={i}" for p, i in specials.items())
          + ". E(x) is sentencepiece encoding without BOS; a literal `▁` (U+2581) in "
          "the text is encoded as its UTF-8 byte pieces.", "",
          "* Suffix-prefix-middle (the order hyco queries): "
          "`<s> <fim-suffix> E(suffix) <fim-prefix> E(prefix) <fim-middle>` -> "
          "`E(middle) </s>`",
          "* Prefix-suffix-middle (also trained): "
          "`<s> <fim-prefix> E(prefix) <fim-suffix> E(suffix) <fim-middle>` -> "
          "`E(middle) </s>`",
          "* Plain: `<s> E(text)` -> continuation, `</s>` at the end of a file.", "",
          "## Config", "", "```json", json.dumps(cfg, indent=2), "```", ""]
    return "\n".join(L)


# ---------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="train.py checkpoint directory")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--manifest", help="corpus manifest.json for the model card")
    ap.add_argument("--log", help="training log (default: the checkpoint's train_log.jsonl)")
    ap.add_argument("--name", help="model name in the card (default: the output folder's name)")
    ap.add_argument("--max-shard-mib", type=float, default=16.0)
    a = ap.parse_args(argv)

    try:   # our own file: it holds numpy RNG state, which weights_only=True refuses
        state = torch.load(os.path.join(a.checkpoint, "state.pt"), map_location="cpu",
                           weights_only=False)
    except TypeError:
        state = torch.load(os.path.join(a.checkpoint, "state.pt"), map_location="cpu")
    meta = state["meta"]
    with open(os.path.join(a.checkpoint, "config.json")) as f:
        cfg = ref.normalize_config(json.load(f), "bf16")
    model = ref.HycoDecoder(cfg)          # checks names and shapes
    model.load_state_dict(state["model"])
    tensors = {k: v.detach().to(torch.bfloat16).contiguous()
               for k, v in model.state_dict().items()}
    del state, model

    os.makedirs(a.out, exist_ok=True)
    max_bytes = int(a.max_shard_mib * MIB)
    files = write_shards(a.out, tensors, max_bytes)
    for fn, b in files:
        if b > max_bytes:
            print(f"warning: {fn} is {b:,} bytes, over {max_bytes:,}: it holds one tensor of "
                  f"{b / MIB:.3f} MiB, which safetensors cannot split", file=sys.stderr)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    shutil.copyfile(os.path.join(a.checkpoint, "tokenizer.model"),
                    os.path.join(a.out, "tokenizer.model"))

    log_path = a.log or os.path.join(a.checkpoint, "train_log.jsonl")
    records = []
    if os.path.exists(log_path):
        with open(log_path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    draw_loss_png(records, os.path.join(a.out, "loss.png"))
    manifest = None
    if a.manifest:
        with open(a.manifest) as f:
            manifest = json.load(f)
    name = a.name or os.path.basename(os.path.abspath(a.out))
    with open(os.path.join(a.out, "MODEL_CARD.md"), "w") as f:
        f.write(model_card(name, cfg, meta, files, manifest,
                           special_ids(os.path.join(a.out, "tokenizer.model"))))
    total = sum(b for _, b in files)
    print(f"wrote {a.out}: {len(tensors)} tensors in {len(files)} shard(s), {total / MIB:.1f} MiB "
          f"bf16; step {meta.get('step')}, {meta.get('tokens_seen', 0):,} tokens")


if __name__ == "__main__":
    main()
