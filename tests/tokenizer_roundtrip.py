#!/usr/bin/python3
"""Checks that a sentencepiece tokenizer.model round-trips source files byte-exactly.

  /usr/bin/python3 tests/tokenizer_roundtrip.py MODEL CORPUS_DIR/test.jsonl [--limit N]
  /usr/bin/python3 tests/tokenizer_roundtrip.py MODEL some/file.rs other/dir ...

Inputs are .jsonl files (scripts/corpus.py's output: one {"text": ...} object per line), source
files, or directories (every *.rs below them). For each text, decode(encode(text)) through
sentencepiece's Python API must give the text back exactly.

A literal U+2581 '▁' in the source is sentencepiece's space marker and decodes as a space, so
such texts cannot round-trip through plain encode/decode. The C++ tokenizer (tokenizer/) encodes
each '▁' as its three byte pieces <0xE2><0x96><0x81>; for these files this script does the same
(encode the text between the '▁'s, insert the byte pieces) and decodes piece by piece the way the
C++ detokenizer does (byte piece -> that raw byte, '▁' in a normal piece -> space). They are
counted and reported separately; a failure of either kind fails the test.

Exit status: 0 when every text round-trips, 1 otherwise (or when no text was checked).
Uses Debian's python3-sentencepiece: run it with /usr/bin/python3.
"""

import argparse
import json
import os
import sys

import sentencepiece as spm

MARK = "\u2581"


def texts_from(paths, limit):
    n = 0
    for p in paths:
        if os.path.isdir(p):
            files = []
            for dp, dns, fns in os.walk(p):
                dns.sort()
                files += [os.path.join(dp, f) for f in sorted(fns) if f.endswith(".rs")]
        else:
            files = [p]
        for fp in files:
            if fp.endswith(".jsonl"):
                with open(fp, encoding="utf-8") as f:
                    for line in f:
                        obj = json.loads(line)
                        yield "%s/%s" % (obj.get("crate", "?"), obj.get("path", n)), obj["text"]
                        n += 1
                        if limit and n >= limit:
                            return
            else:
                with open(fp, "rb") as f:
                    data = f.read()
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    print("skip (not UTF-8): %s" % fp)
                    continue
                yield fp, text
                n += 1
                if limit and n >= limit:
                    return


class Escaped:
    """Encode/decode with '▁' escaped as byte pieces, mirroring the C++ tokenizer."""

    def __init__(self, sp):
        self.sp = sp
        self.mark_ids = []
        for b in MARK.encode("utf-8"):
            i = sp.piece_to_id("<0x%02X>" % b)
            if i == sp.unk_id() or not sp.is_byte(i):
                raise SystemExit("model has no byte piece <0x%02X> (needs --byte_fallback)" % b)
            self.mark_ids.append(i)
        self.surface = []
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if sp.is_byte(i):
                self.surface.append(bytes([int(piece[3:5], 16)]))
            elif sp.is_control(i) or sp.is_unknown(i):
                self.surface.append(b"")
            else:
                self.surface.append(piece.replace(MARK, " ").encode("utf-8"))

    def encode(self, text):
        ids = []
        for k, part in enumerate(text.split(MARK)):
            if k:
                ids += self.mark_ids
            if part:
                ids += self.sp.encode(part)
        return ids

    def decode(self, ids):
        return b"".join(self.surface[i] for i in ids).decode("utf-8", "replace")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("inputs", nargs="+", help=".jsonl corpus splits, .rs files or directories")
    ap.add_argument("--limit", type=int, default=0, help="check at most N texts (0 = all)")
    ap.add_argument("--show", type=int, default=5, help="print at most N failures")
    args = ap.parse_args()

    sp = spm.SentencePieceProcessor(model_file=args.model)
    esc = Escaped(sp)
    n = n_mark = fail = fail_mark = nbytes = ntok = 0
    for name, text in texts_from(args.inputs, args.limit):
        n += 1
        nbytes += len(text.encode("utf-8"))
        if MARK in text:
            n_mark += 1
            ids = esc.encode(text)
            ok = esc.decode(ids) == text
            fail_mark += not ok
        else:
            ids = sp.encode(text)
            ok = sp.decode(ids) == text and esc.decode(ids) == text
            fail += not ok
        ntok += len(ids)
        if not ok and fail + fail_mark <= args.show:
            dec = esc.decode(ids) if MARK in text else sp.decode(ids)
            i = next((k for k, (a, b) in enumerate(zip(text, dec)) if a != b), min(len(text), len(dec)))
            print("FAIL %s: first difference at char %d: %r vs %r" % (name, i, text[i:i + 20], dec[i:i + 20]))
    print("roundtrip: %d texts (%.1f MB, %.3f bytes/token): %d plain, %d failed; "
          "%d contain a literal U+2581 (checked with byte-piece escaping), %d failed"
          % (n, nbytes / 1e6, nbytes / max(1, ntok), n - n_mark, fail, n_mark, fail_mark))
    ok = n > 0 and fail == 0 and fail_mark == 0
    print("roundtrip: %s" % ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
