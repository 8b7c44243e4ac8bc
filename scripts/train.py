#!/usr/bin/python3
"""hyco model training: a HycoDecoder (scripts/reference.py, the very module the C++ engine is
tested against) trained on a Rust corpus with fill-in-the-middle examples.

Runs with Debian's /usr/bin/python3 + torch 1.13 on the CPU (float32, --threads) and with
PyTorch 2.x on CUDA (bf16 autocast, TF32, fused AdamW, attention through
F.scaled_dot_product_attention with the same masks, torch.compile; if compiling fails the run
goes on eagerly, and on out-of-memory the micro-batch is halved with the effective batch kept).

Data
  * Corpus: jsonl files (optionally .xz), one object per source file with a "text" field.
  * Examples, per document, with a random generator seeded by (seed, epoch, document):
      plain (rate 1 - fim_rate):  <s> E(text) </s>
      FIM (rate fim_rate), the document cut into pieces of at most --fim-max-chars characters at
      line ends, each piece split at two uniformly random character positions (so the middle
      can start and end mid-line and mid-token) or, in a share --fim-line-rate of them, around
      whole lines (from a line start to a line end, 1 line in 2 of them, 2 in 4, ...: what an
      editor asks to fill), the three parts tokenized separately:
        SPM (share --spm-rate):
          <s> <fim-suffix> E(suffix) <fim-prefix> E(prefix) <fim-middle> E(middle) </s>
        PSM (the rest):
          <s> <fim-prefix> E(prefix) <fim-suffix> E(suffix) <fim-middle> E(middle) </s>
    E = sentencepiece encode without BOS, a literal U+2581 as its three UTF-8 byte pieces (as
    the C++ tokenizer does). These are exactly the prompt layouts of the C++ server.
  * Each epoch's documents are shuffled, turned into examples and written as one token stream
    (example after example, each ending in </s>) to a cache file <out>/cache/train-<key>-eNNN.bin
    by --workers processes; a resume finds it there and does not re-tokenize. When the run will
    need the next epoch it is tokenized in the background.
  * Training sequences are --ctx + 1 token windows of that stream at stride --ctx (attention
    crosses example boundaries), visited in a seeded random order per epoch.

Schedule: AdamW (betas 0.9/0.95, weight decay on matrices only), gradient clipping 1.0, linear
warm-up over --warmup steps, then cosine decay to 10% of --lr at the last step.
  * --tokens N: the last step is ceil(N / tokens per step).
  * --minutes M: M is the wall-clock budget of this whole process (tokenization, compile,
    evaluation and the final checkpoint included). After the first steps (the first 1-3 are
    skipped: compile) the seconds per step are measured over >= 10 steps and >= 5 s (or 30 s, or
    50 steps, whichever comes first); the last step is then set once to
        step + 0.97 * (time left - time of the remaining evaluations and checkpoints) / (s/step)
    and stored in the checkpoint (a resume continues the same schedule). Until then the
    learning rate is the warm-up / the peak. Training also stops when the next step would not
    leave time for the final evaluation and checkpoint.
  * Both: the smaller of the two.
  * --resume DIR continues the checkpoint's schedule when it is unfinished; when it is finished
    (or with --new-cycle) a new warm-up + cosine cycle starts from the checkpoint's weights and
    optimizer state with this invocation's budget.

Output (--out OUT): OUT/train_log.jsonl (one JSON object per progress line / evaluation / run
start), OUT/checkpoint/ (state.pt: model, optimizer, step, RNG states, data position, schedule;
config.json, tokenizer.model, train_state.json, a copy of the log), OUT/cache/. A checkpoint is
written at the end, every --ckpt-minutes, and on SIGINT / SIGTERM (then without the final
evaluation). Resuming is exact: the same losses step for step as an uninterrupted run (CPU).

Validation (every --val-every steps and at the end): a fixed sample of --val-tokens tokens of
whole documents from the validation file, plain layout, packed like training; val_loss = mean
nats per predicted token, val_bpb = total nats / ln 2 / UTF-8 bytes of those documents. Also
val_fim_loss: mean nats per middle token (and its </s>) of SPM examples of the same documents.

Usage:
  /usr/bin/python3 scripts/train.py --config models/shapes/hyco-rust.json \\
      --train corpus/train.jsonl --valid corpus/valid.jsonl --tokenizer tokenizer.model \\
      --out runs/r1 --minutes 8 [--ctx 2048 --batch 64 --lr 1.5e-3]
  /usr/bin/python3 scripts/train.py ... --resume runs/r1/checkpoint --out runs/r2
"""

import argparse
import contextlib
import hashlib
import json
import lzma
import math
import os
import platform
import random
import shutil
import signal
import sys
import threading
import time

FORMAT_VERSION = 2          # of the token cache; bump when example construction changes
VAL_SEED = 20240917         # the validation sample does not depend on --seed
SPACE_MARKER = "\u2581"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__[__doc__.index("Data\n"):])
    a = ap.add_argument
    a("--config", help="model config.json (HF keys); default: the --resume checkpoint's")
    a("--train", required=True, help="train jsonl (or .jsonl.xz)")
    a("--valid", required=True, help="validation jsonl (or .jsonl.xz)")
    a("--tokenizer", required=True, help="sentencepiece tokenizer.model")
    a("--out", required=True, help="output directory (log, checkpoint, token cache)")
    a("--cache-dir", help="token cache directory (default OUT/cache)")
    a("--resume", metavar="DIR", help="checkpoint directory to continue from")
    a("--new-cycle", action="store_true", help="with --resume: start a new warm-up/cosine cycle")
    a("--init-from", metavar="MODEL_DIR",
      help="start from the weights of an exported model directory (fresh optimizer)")
    # budget and schedule
    a("--tokens", type=float, help="token budget of this cycle (e.g. 2e8)")
    a("--minutes", type=float, help="wall-clock budget of this process, in minutes")
    a("--stop-at-step", type=int, help="stop (and checkpoint) at this global step")
    a("--ctx", type=int, default=2048, help="sequence length")
    a("--batch", type=int, default=64, help="sequences per forward (micro-batch)")
    a("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    a("--lr", type=float, default=1.5e-3, help="peak learning rate")
    a("--warmup", type=int, default=100, help="warm-up steps (at most 10%% of the cycle)")
    a("--weight-decay", type=float, default=0.1)
    a("--grad-clip", type=float, default=1.0)
    a("--seed", type=int, default=1234)
    # data
    a("--fim-rate", type=float, default=0.5, help="share of documents turned into FIM examples")
    a("--spm-rate", type=float, default=0.5,
      help="share of FIM examples in suffix-prefix-middle order (the rest: prefix-suffix-middle)")
    a("--fim-line-rate", type=float, default=0.5,
      help="share of FIM examples whose middle is whole lines (the rest: between two random "
           "characters)")
    a("--fim-max-chars", type=int, default=0,
      help="FIM documents are cut into pieces of at most this many characters (0: 3 x ctx)")
    a("--workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes")
    a("--vocab-size", type=int, default=0,
      help="model vocabulary (0: the tokenizer's size; may be larger, e.g. a round number)")
    # evaluation, logging, checkpoints
    a("--val-tokens", type=int, default=0,
      help="validation sample size in tokens (0: 1M on CUDA, 64K on the CPU)")
    a("--val-every", type=int, default=250, help="validate every N steps (0: only at the end)")
    a("--no-initial-val", action="store_true", help="skip the evaluation before the first step")
    a("--log-every", type=int, default=10, help="progress line every N steps")
    a("--ckpt-minutes", type=float, default=15.0,
      help="checkpoint every N minutes (0: only at the end)")
    # device
    a("--device", default="auto", choices=["auto", "cpu", "cuda"])
    a("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (torch and BLAS)")
    a("--no-compile", action="store_true", help="CUDA: do not torch.compile")
    a("--no-sdpa", action="store_true", help="CUDA: use the written-out reference attention")
    a("--grad-checkpoint", action="store_true", help="recompute layer activations in backward")
    a("--no-auto-micro", action="store_true",
      help="CUDA: do not halve the micro-batch (doubling --grad-accum) on out-of-memory")
    args = ap.parse_args(argv)
    if args.log_every < 1 or args.batch < 1 or args.grad_accum < 1 or args.ctx < 2:
        ap.error("--log-every, --batch, --grad-accum must be >= 1 and --ctx >= 2")
    if args.tokens is None and args.minutes is None and args.stop_at_step is None \
            and not args.resume:
        ap.error("give a budget: --tokens and/or --minutes (or --stop-at-step)")
    return args


# ---------------------------------------------------------------------------------------------
# Tokenization (runs in worker processes; nothing here touches torch)
# ---------------------------------------------------------------------------------------------

_W = {}   # per-process tokenizer state


class SpecialIds:
    def __init__(self, sp):
        def control(piece):
            i = sp.piece_to_id(piece)
            if sp.id_to_piece(i) != piece or not sp.is_control(i):
                raise SystemExit(f"tokenizer: {piece!r} is not a control symbol")
            return i
        self.bos, self.eos = sp.bos_id(), sp.eos_id()
        if self.bos < 0 or self.eos < 0:
            raise SystemExit("tokenizer: needs <s> and </s>")
        self.prefix, self.suffix, self.middle = (control("<fim-prefix>"), control("<fim-suffix>"),
                                                 control("<fim-middle>"))
        self.marker_bytes = []  # the byte pieces of U+2581 (E2 96 81)
        for b in SPACE_MARKER.encode():
            i = sp.piece_to_id(f"<0x{b:02X}>")
            if not sp.is_byte(i):
                raise SystemExit("tokenizer: needs byte fallback")
            self.marker_bytes.append(i)


def worker_init(tokenizer_path, nice=0):
    import sentencepiece as spm
    if nice:   # a pool worker: Ctrl-C is for the main process (it stops the pool itself)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(OSError):
            os.nice(nice)
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    _W["sp"], _W["ids"] = sp, SpecialIds(sp)


def encode(text):
    """E(text): the C++ Tokenizer::encode. A literal U+2581 becomes its three byte pieces (the
    text between markers is encoded run by run, as there)."""
    sp, ids = _W["sp"], _W["ids"]
    if SPACE_MARKER not in text:
        return sp.encode(text) if text else []
    out = []
    for i, run in enumerate(text.split(SPACE_MARKER)):
        if i:
            out += ids.marker_bytes
        if run:
            out += sp.encode(run)
    return out


def fim_pieces(text, max_chars):
    """Cuts text at line ends into pieces of at most max_chars characters (a longer line is cut
    anywhere)."""
    if len(text) <= max_chars:
        return [text]
    pieces, cur = [], ""
    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:
            if cur:
                pieces.append(cur)
                cur = ""
            pieces.append(line[:max_chars])
            line = line[max_chars:]
        if len(cur) + len(line) > max_chars:
            pieces.append(cur)
            cur = ""
        cur += line
    if cur:
        pieces.append(cur)
    return pieces


def line_span(piece, rng):
    """(a, b): a middle of whole lines, as an editor's single- or multi-line completion sees it:
    from the start of a random line to the end of that line or of one of the next few (the
    newline after it stays in the suffix). 1 line in 2, 2 in 4, ..., at most 8."""
    starts = [0] + [i + 1 for i, c in enumerate(piece) if c == "\n" and i + 1 < len(piece)]
    # Only lines with something on them start a middle (an empty middle would teach the model to
    # close at once); a piece of blank lines alone takes any.
    def line_at(a):
        nl = piece.find("\n", a)
        return piece[a:nl if nl >= 0 else len(piece)]
    filled = [a for a in starts if line_at(a).strip()]
    starts = filled or starts
    a = starts[rng.randrange(len(starts))]
    k = 1
    while k < 8 and rng.random() < 0.5:
        k += 1
    b, pos = a, a
    for i in range(k):
        nl = piece.find("\n", pos)
        if nl < 0:
            # The last line has no newline: it is the middle when it is the first one; past it,
            # the middle ends at the newline before (which stays in the suffix).
            return a, (len(piece) if i == 0 else b)
        b, pos = nl, nl + 1
    return a, b


def fim_example(piece, rng, spm_order, whole_lines=False):
    """(tokens, index of the first middle token) for one FIM example of `piece`: the middle
    between two uniformly random characters, or with whole_lines, whole lines (line_span)."""
    ids = _W["ids"]
    n = len(piece)
    if whole_lines:
        a, b = line_span(piece, rng)
    else:
        a, b = sorted((rng.randint(0, n), rng.randint(0, n)))
    prefix, middle, suffix = piece[:a], piece[a:b], piece[b:]
    if spm_order:
        head = [ids.bos, ids.suffix] + encode(suffix) + [ids.prefix] + encode(prefix)
    else:
        head = [ids.bos, ids.prefix] + encode(prefix) + [ids.suffix] + encode(suffix)
    head.append(ids.middle)
    return head + encode(middle) + [ids.eos], len(head)


def document_examples(text, rng, fim_rate, spm_rate, max_chars, stats, line_rate=0.0):
    ids = _W["ids"]
    if rng.random() >= fim_rate:
        stats["plain"] += 1
        return [[ids.bos] + encode(text) + [ids.eos]]
    out = []
    for piece in fim_pieces(text, max_chars):
        spm_order = rng.random() < spm_rate
        stats["spm" if spm_order else "psm"] += 1
        # (no draw at line_rate 0: the examples of earlier runs stay as they were)
        whole_lines = line_rate > 0 and rng.random() < line_rate
        stats["lines"] += whole_lines
        out.append(fim_example(piece, rng, spm_order, whole_lines)[0])
    return out


def tokenize_train_chunk(task):
    """task: (seed, epoch, [(doc_id, text)], fim_rate, spm_rate, max_chars, line_rate) ->
    (uint16/int32 array of the examples in order, stats)."""
    import numpy as np
    seed, epoch, docs, fim_rate, spm_rate, max_chars, line_rate = task
    stats = {"docs": 0, "plain": 0, "spm": 0, "psm": 0, "lines": 0, "bytes": 0}
    toks = []
    for doc_id, text in docs:
        rng = random.Random(f"{seed}:{epoch}:{doc_id}")
        for ex in document_examples(text, rng, fim_rate, spm_rate, max_chars, stats, line_rate):
            toks += ex
        stats["docs"] += 1
        stats["bytes"] += len(text.encode("utf-8"))
    dtype = np.uint16 if _W["sp"].get_piece_size() <= 65536 else np.int32
    return np.asarray(toks, dtype=dtype), stats


def tokenize_valid_doc(task):
    """(text, fim_seed, max_chars) -> (plain tokens, [(SPM tokens, middle start)], n bytes)."""
    text, fim_seed, max_chars = task
    ids = _W["ids"]
    plain = [ids.bos] + encode(text) + [ids.eos]
    rng = random.Random(fim_seed)
    fims = [fim_example(p, rng, True) for p in fim_pieces(text, max_chars)]
    return plain, fims, len(text.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# Corpus and token cache
# ---------------------------------------------------------------------------------------------

def clean_text(s):
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:  # lone surrogates from JSON \ud800 escapes: not text an IDE sends
        return s.encode("utf-8", "replace").decode("utf-8")


def read_corpus(path):
    """[(text)] of the non-empty documents and a content hash of the file."""
    h = hashlib.blake2b(digest_size=16)
    opener = lzma.open if path.endswith(".xz") else open
    texts = []
    with opener(path, "rb") as f:
        for line in f:
            h.update(line)
            if line.strip():
                t = json.loads(line)["text"]
                if t:
                    texts.append(clean_text(t))
    return texts, h.hexdigest()


def file_hash(path):
    with open(path, "rb") as f:
        return hashlib.blake2b(f.read(), digest_size=16).hexdigest()


class TrainData:
    """The training token streams, one per epoch, and the sequence order within each."""

    def __init__(self, args, texts, corpus_hash, tok_hash, pool, dtype_np):
        import numpy as np
        self.np = np
        self.args, self.texts, self.pool = args, texts, pool
        self.max_chars = args.fim_max_chars or 3 * args.ctx
        key = [FORMAT_VERSION, corpus_hash, tok_hash, args.seed, args.fim_rate,
               args.spm_rate, self.max_chars]
        if args.fim_line_rate:   # (so that the caches of runs without it keep their keys)
            key.append(args.fim_line_rate)
        key = json.dumps(key)
        self.key = hashlib.blake2b(key.encode(), digest_size=6).hexdigest()
        self.cache = args.cache_dir or os.path.join(args.out, "cache")
        os.makedirs(self.cache, exist_ok=True)
        self.dtype = dtype_np
        self.building = {}    # epoch -> thread
        self.loaded = {}      # epoch -> (memmap, permutation)
        self.stats = {}       # epoch -> stats dict
        self.lock = threading.Lock()

    def path(self, epoch):
        return os.path.join(self.cache, f"train-{self.key}-e{epoch:03d}")

    def build(self, epoch, background=False):
        """Tokenizes the epoch into its cache file unless it is there (or being built)."""
        with self.lock:
            if os.path.exists(self.path(epoch) + ".json") or epoch in self.building:
                return
            th = threading.Thread(target=self._build, args=(epoch,), daemon=True)
            self.building[epoch] = th
        th.start()
        if not background:
            th.join()

    def _build(self, epoch):
        np, args = self.np, self.args
        t0 = time.time()
        order = np.random.default_rng([args.seed, epoch, 1]).permutation(len(self.texts))

        def tasks():
            batch, size = [], 0
            for i in order:
                t = self.texts[i]
                batch.append((int(i), t))
                size += len(t)
                if size >= 1 << 20 or len(batch) >= 512:
                    yield (args.seed, epoch, batch, args.fim_rate, args.spm_rate, self.max_chars,
                           args.fim_line_rate)
                    batch, size = [], 0
            if batch:
                yield (args.seed, epoch, batch, args.fim_rate, args.spm_rate, self.max_chars,
                       args.fim_line_rate)

        base = self.path(epoch)
        stats = {"docs": 0, "plain": 0, "spm": 0, "psm": 0, "lines": 0, "bytes": 0, "tokens": 0}
        with open(base + ".tmp", "wb") as f:
            for arr, st in self.pool.imap(tokenize_train_chunk, tasks()):
                arr.astype(self.dtype, copy=False).tofile(f)
                for k, v in st.items():
                    stats[k] += v
                stats["tokens"] += len(arr)
        os.replace(base + ".tmp", base + ".bin")
        stats["seconds"] = round(time.time() - t0, 1)
        with open(base + ".json.tmp", "w") as f:
            json.dump(stats, f)
        os.replace(base + ".json.tmp", base + ".json")
        log(f"tokenized epoch {epoch}: {stats['docs']} documents, {stats['tokens']:,} tokens "
            f"({stats['bytes'] / max(1, stats['tokens']):.2f} bytes/token), examples plain "
            f"{stats['plain']} / SPM {stats['spm']} / PSM {stats['psm']} (whole lines "
            f"{stats['lines']}), {stats['seconds']} s")

    def epoch(self, epoch):
        """(tokens memmap, sequence order) of an epoch, building it if needed."""
        if epoch not in self.loaded:
            th = self.building.get(epoch)
            if th is not None:
                th.join()
            self.build(epoch)
            base = self.path(epoch)
            with open(base + ".json") as f:
                self.stats[epoch] = json.load(f)
            toks = self.np.memmap(base + ".bin", dtype=self.dtype, mode="r")
            n_seq = (len(toks) - 1) // self.args.ctx
            if n_seq < 1:
                raise SystemExit(f"epoch {epoch}: {len(toks)} tokens, less than one sequence")
            perm = self.np.random.default_rng([self.args.seed, epoch, 2]).permutation(n_seq)
            self.loaded = {k: v for k, v in self.loaded.items() if k >= epoch - 1}
            self.loaded[epoch] = (toks, perm)
        return self.loaded[epoch]

    def n_sequences(self, epoch):
        return len(self.epoch(epoch)[1])

    def next_batch(self, pos, n):
        """n sequences [n, ctx + 1] from data position pos = [epoch, cursor]; advances pos. An
        epoch's last incomplete batch is skipped."""
        ep, cur = pos
        toks, perm = self.epoch(ep)
        if cur + n > len(perm):
            ep, cur = ep + 1, 0
            toks, perm = self.epoch(ep)
            if n > len(perm):
                raise SystemExit(f"an epoch has {len(perm)} sequences, fewer than a batch ({n})")
        ctx = self.args.ctx
        idx = perm[cur:cur + n]
        rows = self.np.stack([toks[i * ctx:i * ctx + ctx + 1] for i in idx]).astype(self.np.int64)
        pos[0], pos[1] = ep, cur + n
        return rows


def build_valid(args, pool, tok_hash, max_chars):
    """The fixed validation sample: {"plain": tokens, "bytes": n, "docs": n,
    "fim": [(tokens, middle start)]}: whole documents in a fixed random order until there are
    --val-tokens tokens (documents of more than half of that skipped), cached."""
    import numpy as np
    texts, vhash = read_corpus(args.valid)
    key = hashlib.blake2b(json.dumps([FORMAT_VERSION, vhash, tok_hash, args.val_tokens,
                                      max_chars, args.ctx]).encode(), digest_size=6).hexdigest()
    cache = args.cache_dir or os.path.join(args.out, "cache")
    path = os.path.join(cache, f"valid-{key}.npz")
    if os.path.exists(path):
        z = np.load(path)
        fim = [(z["fim_tokens"][a:b].tolist(), int(m)) for a, b, m in z["fim_index"]]
        return {"plain": z["plain"], "bytes": int(z["bytes"]), "docs": int(z["docs"]), "fim": fim}
    order = np.random.default_rng(VAL_SEED).permutation(len(texts))
    chosen, chars = [], 0
    for i in order:          # generously many characters, then cut at the token budget
        chosen.append(int(i))
        chars += len(texts[i])
        if chars >= 16 * args.val_tokens:
            break
    plain, fim, n_bytes, n_docs = [], [], 0, 0
    block = 8 * max(1, getattr(pool, "_processes", 1))
    for b in range(0, len(chosen), block):   # in blocks: stop tokenizing once there is enough
        tasks = [(texts[i], f"{VAL_SEED}:{i}", max_chars) for i in chosen[b:b + block]]
        for toks, fims, nb in pool.map(tokenize_valid_doc, tasks, chunksize=1):
            if len(plain) >= args.val_tokens:
                break
            if len(toks) > args.val_tokens // 2 and len(toks) > args.ctx:
                continue     # one huge file would be most of the sample
            plain += toks
            fim += [f for f in fims if len(f[0]) <= args.ctx + 1]
            n_bytes += nb
            n_docs += 1
        if len(plain) >= args.val_tokens:
            break
    plain = np.asarray(plain, dtype=np.int64)
    flat = np.asarray([t for f in fim for t in f[0]], dtype=np.int64)
    ends = np.cumsum([len(f[0]) for f in fim], dtype=np.int64)
    index = np.stack([ends - [len(f[0]) for f in fim], ends,
                      [f[1] for f in fim]], axis=1) if fim else np.zeros((0, 3), np.int64)
    np.savez(path + ".tmp.npz", plain=plain, bytes=n_bytes, docs=n_docs, fim_tokens=flat,
             fim_index=index)
    os.replace(path + ".tmp.npz", path)
    return {"plain": plain, "bytes": n_bytes, "docs": n_docs, "fim": fim}


# ---------------------------------------------------------------------------------------------
# Model, optimizer, schedule
# ---------------------------------------------------------------------------------------------

def init_weights(model, seed):
    """GPT-2 style: N(0, 0.02) for projections and embeddings, residual outputs (o_proj,
    down_proj) scaled by 1/sqrt(2 * layers), norms 1, biases 0."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    n_layers = model.config["num_hidden_layers"]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                std = 0.02
                if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                    std /= math.sqrt(2 * n_layers)
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def lr_at(step, cyc, peak):
    """Learning rate of optimizer step `step` (0-based, global) in cycle cyc
    {start, total (steps in the cycle or None), warmup}."""
    s = step - cyc["start"]
    warm = cyc["warmup"]
    if s < warm:
        return peak * (s + 1) / warm
    if not cyc["total"]:
        return peak
    p = min(1.0, (s - warm) / max(1, cyc["total"] - warm))
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * p)))


def param_count(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------

T_START = time.time()


def log(msg):
    print(f"[{fmt_time(time.time() - T_START)}] {msg}", flush=True)


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m{s % 60:02d}s" if s >= 3600 else \
        f"{s // 60}m{s % 60:02d}s"


def fmt_count(n):
    for unit, d in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= d:
            return f"{n / d:.2f}{unit}"
    return str(int(n))


class JsonLog:
    """The training log (jsonl). A resumed run starts from the checkpoint's copy of it, less the
    records after the checkpoint's step (they will be redone); a fresh run starts empty."""

    def __init__(self, path, copy_from=None, keep_until_step=0):
        self.path = path
        lines = []
        if copy_from and os.path.exists(copy_from):
            with open(copy_from) as f:
                for line in f:
                    if line.strip():
                        rec = json.loads(line)
                        if rec.get("step", 0) <= keep_until_step and rec.get("type") != "end":
                            lines.append(line if line.endswith("\n") else line + "\n")
        with open(path, "w") as f:
            f.writelines(lines)

    def write(self, rec):
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

def save_checkpoint(ckpt_dir, model, opt, meta, cfg, tokenizer, log_path):
    import numpy as np
    import torch
    t0 = time.time()
    rng = {"python": random.getstate(), "numpy": np.random.get_state(),
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    tmp = ckpt_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "meta": meta,
                "rng": rng}, os.path.join(tmp, "state.pt"))
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    shutil.copyfile(tokenizer, os.path.join(tmp, "tokenizer.model"))
    if os.path.exists(log_path):
        shutil.copyfile(log_path, os.path.join(tmp, "train_log.jsonl"))
    with open(os.path.join(tmp, "train_state.json"), "w") as f:
        json.dump(meta, f, indent=2)
    old = ckpt_dir.rstrip("/") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(ckpt_dir):
        os.replace(ckpt_dir, old)
    os.replace(tmp, ckpt_dir)
    shutil.rmtree(old, ignore_errors=True)
    return time.time() - t0


def load_state(path):
    """torch.load of our own state.pt: it holds numpy RNG state, which torch >= 2.6's default
    weights_only=True refuses."""
    import torch
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except TypeError:   # torch < 1.13 has no weights_only
        return torch.load(path, map_location="cpu")


def restore_rng(rng):
    import numpy as np
    import torch
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

def eval_batches(val, ctx, micro):
    """(kind, x [B, T + 1], mask [B, T]) batches: kind 0 = the plain stream in windows of ctx + 1
    at stride ctx (every token but the first predicted once), kind 1 = the SPM examples, one per
    row, sorted by length and padded to the longest of their batch, mask on the middle and its
    </s>."""
    import numpy as np
    s = val["plain"]
    starts = list(range(0, len(s) - 1, ctx))
    for b in range(0, len(starts), micro):
        x = np.zeros((len(starts[b:b + micro]), ctx + 1), np.int64)
        m = np.zeros((len(x), ctx), np.float32)
        for r, i in enumerate(starts[b:b + micro]):
            seg = s[i:i + ctx + 1]
            x[r, :len(seg)] = seg
            m[r, :len(seg) - 1] = 1
        yield 0, x, m
    fim = sorted(val["fim"], key=lambda f: len(f[0]))
    for b in range(0, len(fim), micro):
        group = fim[b:b + micro]
        n = max(len(t) for t, _ in group)
        x = np.zeros((len(group), n), np.int64)
        m = np.zeros((len(group), n - 1), np.float32)
        for r, (toks, mid) in enumerate(group):
            x[r, :len(toks)] = toks
            m[r, mid - 1:len(toks) - 1] = 1   # targets: the middle and its </s>
        yield 1, x, m


def evaluate(model, val, args, device, amp, micro):
    """{val_loss, val_bpb, val_fim_loss, val_tokens, val_fim_tokens} through the eager
    (uncompiled) model."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    was_training = model.training
    model.eval()
    sums, counts = np.zeros(2), np.zeros(2)
    with torch.no_grad():
        for kind, x, m in eval_batches(val, args.ctx, micro):
            x, m = torch.from_numpy(x).to(device), torch.from_numpy(m).to(device)
            with amp():
                logits = model(x[:, :-1])
            nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                  x[:, 1:].reshape(-1), reduction="none").view(m.shape)
            sums[kind] += float((nll * m).double().sum())
            counts[kind] += float(m.double().sum())
    model.train(was_training)
    return {"val_loss": sums[0] / max(1, counts[0]),
            "val_bpb": sums[0] / math.log(2) / max(1, val["bytes"]),
            "val_fim_loss": sums[1] / counts[1] if counts[1] else None,
            "val_tokens": int(counts[0]), "val_fim_tokens": int(counts[1])}


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def device_name(torch, device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    return f"{cpu} ({torch.get_num_threads()} threads)"


class Trainer:
    """One training process: set-up (tokenizer processes, model, optimizer, data, run state),
    the step loop, evaluation, the --minutes schedule, checkpoints."""

    def __init__(self, args):
        self.args = a = args
        if a.device in ("cpu", "auto"):
            # torch's CPU matmuls go to OpenBLAS: the same thread count (read when it loads)
            os.environ.setdefault("OPENBLAS_NUM_THREADS", str(a.threads))
            os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
        os.makedirs(a.out, exist_ok=True)
        import multiprocessing as mp
        import numpy as np
        self.np = np
        # The tokenizer processes first: forked before torch starts threads or CUDA.
        self.tok_hash = file_hash(a.tokenizer)
        worker_init(a.tokenizer)
        self.n_tok_vocab = _W["sp"].get_piece_size()
        self.pool = mp.get_context("fork").Pool(max(1, a.workers), initializer=worker_init,
                                                initargs=(a.tokenizer, 5))
        import torch
        import torch.nn.functional as F
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import reference as ref
        self.torch, self.F, self.ref = torch, F, ref
        if a.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device")
        cuda = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if cuda else "cpu")
        self.cuda = cuda
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            torch.set_num_threads(a.threads)
        if not a.val_tokens:
            a.val_tokens = (1 << 20) if cuda else (1 << 16)
        self.amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda \
            else contextlib.nullcontext

        state = self.build_model()
        t0 = time.time()
        texts, corpus_hash = read_corpus(a.train)
        log(f"train corpus: {len(texts):,} documents, {sum(map(len, texts)) / 1e6:.1f}M "
            f"characters ({time.time() - t0:.1f} s)")
        dtype_np = np.uint16 if self.n_tok_vocab <= 65536 else np.int32
        self.data = TrainData(a, texts, corpus_hash, self.tok_hash, self.pool, dtype_np)
        self.val = build_valid(a, self.pool, self.tok_hash, self.data.max_chars)
        log(f"validation sample: {self.val['docs']} documents, {len(self.val['plain']):,} "
            f"tokens, {self.val['bytes']:,} bytes, {len(self.val['fim'])} SPM examples")
        self.init_run_state(state, corpus_hash)
        self.build_step()

    # ---- set-up

    def build_model(self):
        """Model (from the checkpoint, --init-from or fresh) and optimizer; returns the
        checkpoint's state dict (None without --resume)."""
        a, torch, ref = self.args, self.torch, self.ref
        state = None
        if a.resume:
            state = load_state(os.path.join(a.resume, "state.pt"))
            with open(os.path.join(a.resume, "config.json")) as f:
                cfg = json.load(f)
            if state["meta"]["tokenizer_hash"] != self.tok_hash:
                raise SystemExit("--tokenizer differs from the checkpoint's tokenizer.model")
            if state["meta"]["ctx"] != a.ctx:
                log(f"note: --ctx {a.ctx} differs from the checkpoint's {state['meta']['ctx']}")
            # (runs from before --fim-line-rate existed drew no whole-line middles)
            old_rate = state["meta"].get("fim_line_rate", 0.0)
            if old_rate != a.fim_line_rate:
                log(f"note: --fim-line-rate {a.fim_line_rate} differs from the checkpoint's "
                    f"{old_rate}: the examples from here on are drawn differently")
        else:
            if not a.config:
                raise SystemExit("--config is required without --resume")
            with open(a.config) as f:
                cfg = json.load(f)
            vocab = a.vocab_size or self.n_tok_vocab
            if vocab < self.n_tok_vocab:
                raise SystemExit(f"--vocab-size {vocab} < the tokenizer's {self.n_tok_vocab}")
            if cfg.get("vocab_size") != vocab:
                log(f"vocab_size {cfg.get('vocab_size')} -> {vocab} "
                    f"(tokenizer: {self.n_tok_vocab})")
            ids = _W["ids"]
            cfg.update(vocab_size=vocab, bos_token_id=ids.bos, eos_token_id=ids.eos,
                       max_position_embeddings=max(cfg.get("max_position_embeddings", 0), a.ctx))
        model = ref.HycoDecoder(cfg)
        self.cfg = model.config
        if state is not None:
            model.load_state_dict(state["model"])
        elif a.init_from:
            w = ref.load_model_tensors(a.init_from)
            model.load_state_dict({k: v.float() for k, v in w.items()})
            log(f"initialized from {a.init_from}")
        else:
            init_weights(model, a.seed)
        model.to(self.device)
        model.gradient_checkpointing = a.grad_checkpoint
        if self.cuda and not a.no_sdpa and hasattr(self.F, "scaled_dot_product_attention"):
            model.use_sdpa(True)
        self.model = model
        self.n_params = param_count(model)
        pattern = "".join("G" if k == ref.GLOBAL else "L" for k in self.cfg["layer_types"])
        log(f"model: {self.n_params / 1e6:.2f}M parameters, hidden {self.cfg['hidden_size']}, "
            f"{self.cfg['num_hidden_layers']} layers {pattern}, window "
            f"{self.cfg.get('sliding_window')}, vocab {self.cfg['vocab_size']}; device "
            f"{device_name(torch, self.device)}, torch {torch.__version__}")
        groups = [{"params": [p for p in model.parameters() if p.dim() >= 2],
                   "weight_decay": a.weight_decay},
                  {"params": [p for p in model.parameters() if p.dim() < 2],
                   "weight_decay": 0.0}]
        try:
            self.opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8,
                                         fused=self.cuda)
        except (TypeError, RuntimeError):   # torch without fused AdamW
            self.opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
        if state is not None:
            self.opt.load_state_dict(state["optimizer"])
        return state

    def init_run_state(self, state, corpus_hash):
        """meta (everything a checkpoint records) and the schedule cycle."""
        a, np, torch = self.args, self.np, self.torch
        self.deadline = T_START + a.minutes * 60 if a.minutes else None
        self.micro, self.accum = a.batch, a.grad_accum
        self.eff = a.batch * a.grad_accum
        self.tok_per_step = self.eff * a.ctx
        if state is not None:
            meta = state["meta"]
            if meta["corpus_hash"] != corpus_hash or meta["data_key"] != self.data.key:
                log("note: the training data differ from the checkpoint's: data position reset")
                meta["data_pos"] = [0, 0]
            cyc = meta["cycle"]
            finished = cyc["total"] is not None and meta["step"] >= cyc["start"] + cyc["total"]
            if finished or a.new_cycle:
                cyc = {"start": meta["step"], "total": None, "warmup": a.warmup,
                       "index": cyc.get("index", 0) + 1, "lr": a.lr,
                       "tokens_per_step": self.tok_per_step}
                log(f"new schedule cycle {cyc['index']} from step {meta['step']}")
            elif self.tok_per_step != cyc.get("tokens_per_step", self.tok_per_step):
                log("note: tokens per step differ from the checkpoint's schedule")
            restore_rng(state["rng"])
        else:
            cyc = {"start": 0, "total": None, "warmup": a.warmup, "index": 0, "lr": a.lr,
                   "tokens_per_step": self.tok_per_step}
            meta = {"step": 0, "tokens_seen": 0, "data_pos": [0, 0], "wall_seconds": 0.0,
                    "runs": [], "val": None}
            random.seed(a.seed)
            np.random.seed(a.seed)
            torch.manual_seed(a.seed)
        new_cycle = cyc["total"] is None
        self.estimate_pending = new_cycle and self.deadline is not None
        if new_cycle and a.tokens:
            cyc["total"] = math.ceil(a.tokens / self.tok_per_step)
            cyc["warmup"] = min(a.warmup, max(1, cyc["total"] // 10))
        val = self.val
        meta.update({"cycle": cyc, "ctx": a.ctx, "micro_batch": self.micro,
                     "grad_accum": self.accum, "batch_sequences": self.eff,
                     "corpus_hash": corpus_hash, "data_key": self.data.key,
                     "tokenizer_hash": self.tok_hash, "params": self.n_params,
                     "config": self.cfg, "lr": cyc["lr"], "weight_decay": a.weight_decay,
                     "seed": a.seed, "fim_rate": a.fim_rate, "spm_rate": a.spm_rate,
                     "fim_line_rate": a.fim_line_rate,
                     "fim_max_chars": self.data.max_chars,
                     "train_file": os.path.abspath(a.train),
                     "valid_file": os.path.abspath(a.valid),
                     "val_sample": {"docs": val["docs"], "tokens": int(len(val["plain"])),
                                    "bytes": val["bytes"], "fim_examples": len(val["fim"])}})
        self.run_rec = {"start_step": meta["step"], "device": device_name(torch, self.device),
                        "torch": torch.__version__,
                        "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        meta["runs"].append(self.run_rec)
        self.meta, self.cyc = meta, cyc
        self.step0 = meta["step"]
        self.wall_before = meta["wall_seconds"]
        self.ckpt_dir = os.path.join(a.out, "checkpoint")
        self.log_path = os.path.join(a.out, "train_log.jsonl")
        self.jlog = JsonLog(self.log_path, os.path.join(a.resume, "train_log.jsonl")
                            if a.resume else None, keep_until_step=self.step0)
        self.jlog.write({"type": "run", "step": self.step0, "args": vars(a),
                         "device": self.run_rec["device"], "torch": torch.__version__,
                         "params": self.n_params, "cycle": dict(cyc)})

    def build_step(self):
        """The loss function of a micro-batch, compiled on CUDA."""
        torch, F = self.torch, self.F

        class LossModule(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x, y):   # x, y: [B, T] token ids -> mean cross-entropy
                logits = self.m(x)
                return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                       y.reshape(-1))

        self.eager_loss_fn = self.loss_fn = LossModule(self.model)
        self.compiled = self.cuda and not self.args.no_compile and hasattr(torch, "compile")
        self.steps_ok = 0
        if self.compiled:
            self.loss_fn = torch.compile(self.loss_fn, dynamic=False)

    # ---- pieces of the loop

    def to_device(self, a):
        t = self.torch.from_numpy(a)
        return t.pin_memory().to(self.device, non_blocking=True) if self.cuda else t

    def train_step(self, rows):
        """One optimizer step over rows [eff, ctx + 1]; returns (mean loss tensor, grad norm).
        On CUDA out-of-memory the micro-batch is halved (accumulation doubled) and the step
        retried: the same data, the same effective batch."""
        torch = self.torch
        oom = getattr(torch.cuda, "OutOfMemoryError", RuntimeError)
        while True:
            try:
                total = 0.0
                n_micro = len(rows) // self.micro
                for i in range(n_micro):
                    chunk = self.to_device(rows[i * self.micro:(i + 1) * self.micro])
                    with self.amp():
                        loss = self.loss_fn(chunk[:, :-1], chunk[:, 1:])
                    (loss / n_micro).backward()
                    total = total + loss.detach()
                gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.grad_clip)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                self.steps_ok += 1
                return total / n_micro, gn
            except Exception as e:   # noqa: BLE001 (re-raised unless handled)
                is_oom = isinstance(e, oom) and "out of memory" in str(e)
                if not is_oom and self.compiled and self.steps_ok == 0:
                    log(f"torch.compile failed ({type(e).__name__}: {str(e)[:300]}): "
                        "continuing without it")
                    self.opt.zero_grad(set_to_none=True)
                    self.loss_fn, self.compiled = self.eager_loss_fn, False
                    continue
                if not is_oom or not self.cuda or self.args.no_auto_micro or self.micro == 1:
                    raise
                self.opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                self.micro //= 2
                self.accum *= 2
                self.meta.update({"micro_batch": self.micro, "grad_accum": self.accum})
                log(f"out of memory: micro-batch {self.micro * 2} -> {self.micro}, "
                    f"accumulation {self.accum}")

    def run_eval(self):
        t = time.time()
        r = evaluate(self.model, self.val, self.args, self.device, self.amp, self.micro)
        r["seconds"] = time.time() - t
        fim = f", FIM middle {r['val_fim_loss']:.4f}" if r["val_fim_loss"] is not None else ""
        log(f"step {self.meta['step']}: val loss {r['val_loss']:.4f} nats/token, "
            f"{r['val_bpb']:.4f} bits/byte{fim} ({r['seconds']:.1f} s)")
        self.jlog.write({"type": "val", "step": self.meta["step"],
                         "tokens": self.meta["tokens_seen"],
                         **{k: v for k, v in r.items() if k != "seconds"}})
        self.meta["val"] = {"step": self.meta["step"], **r}
        self.eval_s = r["seconds"]

    def save(self, reason):
        self.meta["wall_seconds"] = self.wall_before + time.time() - T_START
        self.run_rec.update({"end_step": self.meta["step"],
                             "minutes": (time.time() - T_START) / 60})
        self.ckpt_s = save_checkpoint(self.ckpt_dir, self.model, self.opt, self.meta, self.cfg,
                                      self.args.tokenizer, self.log_path)
        self.last_ckpt = time.time()
        log(f"checkpoint ({reason}) at step {self.meta['step']}: {self.ckpt_dir} "
            f"({self.ckpt_s:.1f} s)")

    def stop_reason(self):
        a, cyc, step = self.args, self.cyc, self.meta["step"]
        if cyc["total"] is not None and step >= cyc["start"] + cyc["total"]:
            return "schedule done"
        if a.stop_at_step is not None and step >= a.stop_at_step:
            return f"--stop-at-step {a.stop_at_step}"
        if self.deadline is not None:
            need = (self.sec_per_step or self.last_step_s) + self.eval_s + self.ckpt_s + 1.0
            if time.time() + need > self.deadline:
                return "time budget"
        return None

    def time_steps(self):
        """Measures seconds per step once (skipping the first steps: compile) and, for a
        --minutes budget, fixes the cycle's last step from it."""
        done_here = self.meta["step"] - self.step0
        skip = 3 if self.compiled else 1
        if done_here == skip:
            if self.cuda:
                self.torch.cuda.synchronize()
            self.timing = [time.time(), 0]
            return
        if self.timing is None or self.sec_per_step is not None:
            return
        self.timing[1] += 1
        el = time.time() - self.timing[0]
        n_timed = self.timing[1]
        if not ((n_timed >= 10 and el >= 5) or el >= 30 or n_timed >= 50):
            return
        if self.cuda:
            self.torch.cuda.synchronize()
        self.sec_per_step = (time.time() - self.timing[0]) / n_timed
        if not self.estimate_pending:
            return
        self.estimate_pending = False
        a, cyc, step = self.args, self.cyc, self.meta["step"]
        avail = self.deadline - time.time() - self.eval_s - self.ckpt_s - 2.0
        n_ckpt = int(avail / 60 / a.ckpt_minutes) if a.ckpt_minutes else 0

        def evals_until(last):
            return max(0, last // a.val_every - step // a.val_every) if a.val_every else 0

        n = max(1, int(0.97 * avail / self.sec_per_step))
        for _ in range(3):   # evaluations and checkpoints on the way cost steps
            cost = evals_until(step + n) * self.eval_s + n_ckpt * self.ckpt_s
            n = max(1, int(0.97 * (avail - cost) / self.sec_per_step))
        est = step + n - cyc["start"]
        cyc["total"] = min(est, cyc["total"]) if cyc["total"] else est
        cyc["warmup"] = min(cyc["warmup"], max(1, cyc["total"] // 10))
        log(f"{self.sec_per_step:.3f} s/step measured over {n_timed} steps: the schedule ends "
            f"at step {cyc['start'] + cyc['total']}")
        self.jlog.write({"type": "schedule", "step": step, "sec_per_step": self.sec_per_step,
                         "cycle": dict(cyc)})

    def log_progress(self, lr, gn):
        now = time.time()
        acc, meta, cyc = self.acc, self.meta, self.cyc
        mean_loss = float(acc["loss"]) / acc["n"]
        tps = (meta["tokens_seen"] - acc["tok"]) / max(1e-9, now - acc["t"])
        total = f"/{cyc['start'] + cyc['total']}" if cyc["total"] else ""
        log(f"step {meta['step']}{total} | tokens {fmt_count(meta['tokens_seen'])} | "
            f"loss {mean_loss:.4f} | lr {lr:.2e} | grad norm {float(gn):.3f} | "
            f"{fmt_count(tps)} tok/s")
        self.jlog.write({"type": "train", "step": meta["step"], "tokens": meta["tokens_seen"],
                         "loss": mean_loss, "lr": lr, "grad_norm": float(gn), "tok_s": tps,
                         "elapsed": now - T_START})
        self.acc = {"t": now, "tok": meta["tokens_seen"], "loss": 0.0, "n": 0}

    # ---- the loop

    def train(self):
        a, meta, cyc = self.args, self.meta, self.cyc
        self.eval_s = 0.0
        self.ckpt_s = 2.0 + 3 * self.n_params * 4 / 200e6  # guess: model + 2 AdamW moments
        self.sec_per_step, self.last_step_s, self.timing = None, 0.0, None
        if not a.no_initial_val and self.step0 == 0:
            self.run_eval()
        self.last_ckpt = time.time()
        self.acc = {"t": time.time(), "tok": meta["tokens_seen"], "loss": 0.0, "n": 0}
        log(f"training: {self.eff} x {a.ctx} tokens per step ({self.micro} x {self.accum} "
            f"accumulation), peak lr {cyc['lr']}, warm-up {cyc['warmup']}, cycle "
            f"{cyc['index']}, last step "
            f"{cyc['start'] + cyc['total'] if cyc['total'] else '(to be estimated)'}")
        lr = gn = None

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        # SIGINT / SIGTERM (Ctrl-C, `timeout`): stop after checkpointing, also where the shell
        # started this process with SIGINT ignored (a background job)
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, interrupt)
        try:
            while (reason := self.stop_reason()) is None:
                step = meta["step"]
                pos = list(meta["data_pos"])   # committed with the step
                rows = self.data.next_batch(pos, self.eff)
                if cyc["total"] is not None:   # tokenize the next epoch in time
                    left = (cyc["start"] + cyc["total"] - step) * self.eff
                    ep, cur = pos
                    if left > self.data.n_sequences(ep) - cur:
                        self.data.build(ep + 1, background=True)
                lr = lr_at(step, cyc, cyc["lr"])
                for g in self.opt.param_groups:
                    g["lr"] = lr
                t = time.time()
                loss, gn = self.train_step(rows)
                self.last_step_s = time.time() - t
                meta["step"], meta["data_pos"] = step + 1, pos
                meta["tokens_seen"] += self.tok_per_step
                self.acc["loss"] += loss      # a device tensor: no sync until a progress line
                self.acc["n"] += 1
                self.time_steps()
                if meta["step"] % a.log_every == 0:
                    self.log_progress(lr, gn)
                if a.val_every and meta["step"] % a.val_every == 0:
                    t = time.time()
                    self.run_eval()
                    self.acc["t"] += time.time() - t
                if a.ckpt_minutes and time.time() - self.last_ckpt > a.ckpt_minutes * 60:
                    t = time.time()
                    self.save("periodic")
                    self.acc["t"] += time.time() - t
        except KeyboardInterrupt:
            reason = "interrupted"
        signal.signal(signal.SIGINT, signal.SIG_IGN)    # the final checkpoint is not cut short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log(f"stopping at step {meta['step']}: {reason}")
        if self.acc["n"]:
            self.log_progress(lr, gn)
        if reason != "interrupted" and meta["step"] > self.step0 \
                and (not meta["val"] or meta["val"]["step"] != meta["step"]):
            self.run_eval()
        self.save("final")
        v = meta["val"] or {}
        self.jlog.write({"type": "end", "step": meta["step"], "tokens": meta["tokens_seen"],
                         "reason": reason, "wall_seconds": meta["wall_seconds"],
                         "val_loss": v.get("val_loss"), "val_bpb": v.get("val_bpb")})
        shutil.copyfile(self.log_path, os.path.join(self.ckpt_dir, "train_log.jsonl"))
        log(f"done: {meta['step']} steps, {fmt_count(meta['tokens_seen'])} tokens, "
            f"{(time.time() - T_START) / 60:.1f} min this run")
        self.pool.terminate()


def main(argv=None):
    Trainer(parse_args(argv)).train()


if __name__ == "__main__":
    main()
