#!/usr/bin/python3
"""Trains hyco's sentencepiece BPE tokenizer on the train split of the Rust corpus.

  /usr/bin/python3 scripts/train_tokenizer.py --corpus /work/data/corpus \
      --out /work/data/tokenizer/tokenizer.model [--vocab-size 16384] [--sample-mb 24]

Input is scripts/corpus.py's output (train.jsonl, valid.jsonl, manifest.json). Training goes
through sentencepiece's Python trainer with a sentence iterator over multi-line chunks of source
files (the CLI tools are line-based and cannot learn pieces that contain '\\n', like ";\\n    "),
with the flags that round-trip code byte-exactly (shared/ENVIRONMENT.md) and
split_by_whitespace=false. Ids: 0 <unk>, 1 <s>, 2 </s>, 3 <fim-prefix>, 4 <fim-suffix>,
5 <fim-middle>, 6 <fim-pad> (control symbols: never produced from text, inserted by id; the C++
tokenizer finds them by name), then the 256 byte pieces <0x00>..<0xFF>, then learned pieces.

The training input is a deterministic sample of train files (hash of crate/path) of about
--sample-mb MB, so that training takes a few minutes on 2 cores. At the end the script prints
bytes/token on a deterministic sample of the validation split (--eval-mb MB).
Uses Debian's python3-sentencepiece (0.1.97): run it with /usr/bin/python3.
"""

import argparse
import hashlib
import io
import json
import os
import sys
import time

import sentencepiece as spm

CONTROL_SYMBOLS = ["<fim-prefix>", "<fim-suffix>", "<fim-middle>", "<fim-pad>"]
MAX_SENTENCE_BYTES = 16384


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def frac_hash(key, seed):
    h = hashlib.sha256(("%s:%s" % (seed, key)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64


def split_bytes(path):
    """Total text bytes of a split from manifest.json, else the file size (an upper bound)."""
    d = os.path.dirname(path)
    name = os.path.basename(path).split(".")[0]
    try:
        with open(os.path.join(d, "manifest.json"), encoding="utf-8") as f:
            return json.load(f)["splits"][name]["bytes"]
    except (OSError, KeyError, ValueError):
        return os.path.getsize(path)


def sample_texts(path, budget_bytes, seed):
    """Yields the texts of a deterministic ~budget_bytes sample of a jsonl split."""
    total = split_bytes(path)
    p = 1.0 if budget_bytes <= 0 else min(1.0, budget_bytes / max(1, total))
    with open(path, encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            if p >= 1.0 or frac_hash(obj["crate"] + "/" + obj["path"], seed) < p:
                yield obj["text"]


def chunks(text, chunk_bytes):
    """Multi-line chunks of about chunk_bytes UTF-8 bytes, never above MAX_SENTENCE_BYTES.
    Chunks keep their newlines, so pieces can span line ends."""
    cur, cur_len = [], 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if n > MAX_SENTENCE_BYTES:  # only possible with filters off; cut it by characters
            if cur:
                yield "".join(cur)
                cur, cur_len = [], 0
            step = MAX_SENTENCE_BYTES // 4
            for i in range(0, len(line), step):
                yield line[i:i + step]
            continue
        if cur and cur_len + n > chunk_bytes:
            yield "".join(cur)
            cur, cur_len = [], 0
        cur.append(line)
        cur_len += n
    if cur:
        yield "".join(cur)


def bytes_per_token(sp, texts):
    nbytes = ntok = 0
    batch = []

    def flush():
        nonlocal ntok
        for ids in sp.encode(batch, num_threads=2):
            ntok += len(ids)
        batch.clear()

    for t in texts:
        nbytes += len(t.encode("utf-8"))
        batch.append(t)
        if len(batch) >= 256:
            flush()
    if batch:
        flush()
    return nbytes / max(1, ntok), nbytes, ntok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True, help="directory with train.jsonl / valid.jsonl")
    ap.add_argument("--out", required=True, help="path of the tokenizer.model to write")
    ap.add_argument("--vocab-size", type=int, default=16384)
    ap.add_argument("--sample-mb", type=float, default=24.0,
                    help="MB of train text to learn from (sampled by file; 0 = all)")
    ap.add_argument("--chunk-bytes", type=int, default=2048,
                    help="target size of one training sentence (multi-line chunk)")
    ap.add_argument("--eval-mb", type=float, default=8.0,
                    help="MB of validation text to measure bytes/token on (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", default="hyco-tokenizer-v1", help="sampling seed (a string)")
    ap.add_argument("--eval-only", action="store_true",
                    help="do not train: measure bytes/token of the existing --out model")
    args = ap.parse_args()

    train_path = os.path.join(args.corpus, "train.jsonl")
    valid_path = os.path.join(args.corpus, "valid.jsonl")

    if not args.eval_only:
        t0 = time.time()
        stat = dict(files=0, bytes=0, sentences=0)

        def sentences():
            for text in sample_texts(train_path, int(args.sample_mb * 1e6), args.seed):
                stat["files"] += 1
                stat["bytes"] += len(text.encode("utf-8"))
                for c in chunks(text, args.chunk_bytes):
                    stat["sentences"] += 1
                    yield c

        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_writer=model,
            model_type="bpe",
            vocab_size=args.vocab_size,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            byte_fallback=True,
            split_digits=True,
            split_by_whitespace=False,
            character_coverage=0.9999,
            max_sentence_length=MAX_SENTENCE_BYTES,
            input_sentence_size=0,          # the sample above is the whole input
            shuffle_input_sentence=False,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
            control_symbols=",".join(CONTROL_SYMBOLS),
            num_threads=args.threads,
            minloglevel=1,
        )
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "wb") as f:
            f.write(model.getvalue())
        os.replace(tmp, args.out)
        log("train_tokenizer: vocab %d from %d files (%.1f MB, %d sentences) in %.0f s -> %s"
            % (args.vocab_size, stat["files"], stat["bytes"] / 1e6, stat["sentences"],
               time.time() - t0, args.out))

    sp = spm.SentencePieceProcessor(model_file=args.out)
    expect = ["<unk>", "<s>", "</s>"] + CONTROL_SYMBOLS
    got = [sp.id_to_piece(i) for i in range(len(expect))]
    if got != expect:
        sys.exit("train_tokenizer: unexpected special pieces %r" % got)
    t0 = time.time()
    bpt, nbytes, ntok = bytes_per_token(sp, sample_texts(valid_path, int(args.eval_mb * 1e6), "eval"))
    print("vocab_size=%d valid_bytes=%d tokens=%d bytes_per_token=%.3f (%.0f s)"
          % (sp.get_piece_size(), nbytes, ntok, bpt, time.time() - t0), flush=True)


if __name__ == "__main__":
    main()
