#!/usr/bin/python3
"""scripts/train.py's FIM examples: whole-line middles (--fim-line-rate) start at a line start
and end at a line end, the three parts put together give the text back, and the token layout is
the one the C++ server queries (suffix-prefix-middle: <s> <fim-suffix> E(suffix) <fim-prefix>
E(prefix) <fim-middle> E(middle) </s>).

  /usr/bin/python3 tests/train_fim_test.py [-v]
"""

import collections
import os
import random
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import train  # noqa: E402

TOKENIZER = os.path.join(ROOT, "models", "hyco-rust", "tokenizer.model")
PIECE = ("use std::fmt;\n\npub struct Point {\n    x: f64,\n    y: f64,\n}\n\n"
         "impl Point {\n    pub fn norm(&self) -> f64 {\n        (self.x * self.x + self.y * self.y).sqrt()\n"
         "    }\n}\n")


class LineSpan(unittest.TestCase):
    def test_spans_are_whole_lines(self):
        rng = random.Random(5)
        counts = collections.Counter()
        for _ in range(4000):
            a, b = train.line_span(PIECE, rng)
            self.assertLessEqual(a, b)
            self.assertTrue(a == 0 or PIECE[a - 1] == "\n", (a, b))
            self.assertTrue(b == len(PIECE) or PIECE[b] == "\n", (a, b))
            counts[PIECE[a:b].count("\n") + 1] += 1
        # one line in about half of the examples, never more than 8
        self.assertGreater(counts[1], 1600)
        self.assertLess(counts[1], 2400)
        self.assertLessEqual(max(counts), 8)

    def test_a_text_without_newline_is_one_line(self):
        self.assertEqual(train.line_span("let x = 1;", random.Random(1)), (0, 10))

    def test_middles_start_on_a_line_with_text(self):
        rng = random.Random(7)
        for _ in range(2000):
            a, b = train.line_span(PIECE, rng)
            self.assertTrue(PIECE[a:b].split("\n")[0].strip(), (a, b, PIECE[a:b]))

    def test_past_the_last_line_the_middle_keeps_no_newline(self):
        # The last line has no newline: a span that would run past it ends at the newline before.
        text = "fn a() {}\nfn b() {}\nfn c() {}"
        for seed in range(400):
            a, b = train.line_span(text, random.Random(seed))
            self.assertFalse(text[a:b].endswith("\n"), (a, b))
            self.assertTrue(b == len(text) or text[b] == "\n", (a, b))
            if b == len(text):  # only the last line alone runs to the end
                self.assertEqual(a, text.rindex("\n") + 1)


class FimExample(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        train.worker_init(TOKENIZER)
        import sentencepiece as spm
        cls.sp = spm.SentencePieceProcessor(model_file=TOKENIZER)
        cls.ids = train._W["ids"]

    def parts(self, toks, mid_at):
        """(prefix, middle, suffix) texts of an SPM example."""
        ids = self.ids
        self.assertEqual(toks[:2], [ids.bos, ids.suffix])
        self.assertEqual(toks[mid_at - 1], ids.middle)
        self.assertEqual(toks[-1], ids.eos)
        p = toks.index(ids.prefix)
        return (self.sp.decode(toks[p + 1:mid_at - 1]), self.sp.decode(toks[mid_at:-1]),
                self.sp.decode(toks[2:p]))

    def test_whole_line_examples_put_the_text_back_together(self):
        rng = random.Random(3)
        for _ in range(200):
            toks, mid_at = train.fim_example(PIECE, rng, True, whole_lines=True)
            prefix, middle, suffix = self.parts(toks, mid_at)
            self.assertEqual(prefix + middle + suffix, PIECE)
            self.assertTrue(prefix == "" or prefix.endswith("\n"))
            self.assertTrue(suffix == "" or suffix.startswith("\n"))

    def test_character_examples_are_unchanged_by_the_option(self):
        # The same generator state gives the same example with whole_lines off as before it existed.
        a = train.fim_example(PIECE, random.Random(9), True)
        b = train.fim_example(PIECE, random.Random(9), True, whole_lines=False)
        self.assertEqual(a, b)

    def test_line_rate_zero_draws_nothing_more(self):
        stats = {"plain": 0, "spm": 0, "psm": 0, "lines": 0}
        r1, r2 = random.Random(11), random.Random(11)
        ex1 = train.document_examples(PIECE, r1, 1.0, 0.5, 64, dict(stats), 0.0)
        # the draws of the code before --fim-line-rate: fim_rate, then per piece the order and two cuts
        r2.random()
        pieces = train.fim_pieces(PIECE, 64)
        ex2 = []
        for piece in pieces:
            spm_order = r2.random() < 0.5
            ex2.append(train.fim_example(piece, r2, spm_order)[0])
        self.assertEqual(ex1, ex2)
        self.assertEqual(r1.random(), r2.random())

    def test_line_rate_one_gives_only_whole_lines(self):
        stats = {"plain": 0, "spm": 0, "psm": 0, "lines": 0}
        train.document_examples(PIECE, random.Random(2), 1.0, 1.0, 64, stats, 1.0)
        self.assertEqual(stats["lines"], stats["spm"] + stats["psm"])
        self.assertGreater(stats["lines"], 1)


if __name__ == "__main__":
    unittest.main()
