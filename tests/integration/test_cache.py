"""Prefix reuse across requests: a request that extends (or slightly edits) an earlier prompt
reports tokens_cached > 0 and gives exactly the output of the same request with
cache_prompt: false; /infill with n_predict: 0 answers nothing but fills the cache, as plugins
use it to warm up. The test model has local layers (window 32), so reuse past the window runs
through the KV ring and its rollback reserve."""

import os
import unittest

import harness as h


def corpus():
    with open(os.path.join(h.SOURCE_DIR, "tests", "data", "tiny_corpus.rs"), encoding="utf-8") as f:
        return f.read()


class PrefixReuse(h.ServerTest):
    # Two slots and room for cached sequences; one thread keeps timing out of the picture.
    SERVER_ARGS = ("--parallel", "2", "--threads", "1")

    def n_tokens(self, text):
        return len(self.server.post_json("/tokenize", {"content": text, "add_special": True})["tokens"])

    def completion(self, prompt, cache=True, n=24):
        return self.server.post_json("/completion", {"prompt": prompt, "n_predict": n, "temperature": 0,
                                                     "cache_prompt": cache, "return_tokens": True})

    def assertSameOutput(self, cached, uncached):
        self.assertEqual(cached["tokens"], uncached["tokens"])
        self.assertEqual(cached["content"], uncached["content"])
        self.assertEqual(uncached["tokens_cached"], 0)

    def test_extended_prompt_reuses_the_cache(self):
        text = corpus()
        start = text.index("impl Shape {")
        p1 = text[start:start + 200]  # ~100 tokens: past the local window
        p2 = text[start:start + 230]
        first = self.completion(p1)
        self.assertLessEqual(first["tokens_cached"], 1)  # at most <s>, from other tests
        second = self.completion(p2)
        n1 = self.n_tokens(p1)
        self.assertGreater(second["tokens_cached"], n1 // 2, second)
        self.assertLess(second["tokens_cached"], self.n_tokens(p2))
        self.assertEqual(second["timings"]["cache_n"], second["tokens_cached"])
        self.assertEqual(second["timings"]["prompt_n"], second["tokens_evaluated"] - second["tokens_cached"])
        self.assertSameOutput(second, self.completion(p2, cache=False))

    def test_prompt_that_continues_the_generated_text(self):
        # The generated tokens are cached too: prompt + output + more reuses all of it.
        text = corpus()
        start = text.index("fn main() {")
        p1 = text[start:start + 120]
        first = self.completion(p1, n=16)
        p2 = p1 + first["content"] + "\n"
        second = self.completion(p2)
        self.assertGreaterEqual(second["tokens_cached"], self.n_tokens(p1), second)
        self.assertSameOutput(second, self.completion(p2, cache=False))

    def test_edited_prompt_rolls_back(self):
        # The user deleted the last characters and typed others: the common part is reused.
        text = corpus()
        start = text.index("#[cfg(test)]")
        p1 = text[start:start + 180]
        p2 = p1[:-12] + "let z = 1;\n"
        self.completion(p1)
        second = self.completion(p2)
        self.assertGreater(second["tokens_cached"], 0, second)
        self.assertSameOutput(second, self.completion(p2, cache=False))

    def test_infill_cursor_moved_reuses_the_cache(self):
        # The IDE case: same file, the cursor a few characters further.
        case = h.cases()["fim"][1]
        prefix, suffix = case["prefix"], case["suffix"]
        body = {"input_suffix": suffix, "n_predict": 16, "temperature": 0, "return_tokens": True}
        first = self.server.post_json("/infill", dict(body, input_prefix=prefix[:-6]))
        second = self.server.post_json("/infill", dict(body, input_prefix=prefix))
        self.assertGreater(second["tokens_cached"], 0, second)
        uncached = self.server.post_json("/infill", dict(body, input_prefix=prefix, cache_prompt=False))
        self.assertSameOutput(second, uncached)
        self.assertEqual(second["content"], case["middle"])
        self.assertGreater(first["tokens_evaluated"], 0)

    def test_n_predict_0_only_fills_the_cache(self):
        case = h.cases()["fim"][2]
        body = {"input_prefix": case["prefix"], "input_suffix": case["suffix"], "temperature": 0}
        warm = self.server.post_json("/infill", dict(body, n_predict=0))
        self.assertEqual(warm["content"], "")
        self.assertEqual(warm["tokens_predicted"], 0)
        self.assertGreater(warm["tokens_evaluated"], 0)
        again = self.server.post_json("/infill", dict(body, n_predict=16))
        self.assertGreaterEqual(again["tokens_cached"], warm["tokens_evaluated"] - 1, again)
        self.assertEqual(again["content"], case["middle"])
        # The warm-up is counted as a request that generated nothing.
        self.assertEqual(warm["timings"]["predicted_n"], 0)


if __name__ == "__main__":
    unittest.main()


class PrefixReuseQ8(PrefixReuse):
    """The same with an 8-bit KV cache: reuse, rollback and fresh computation must still agree
    exactly (the kernels round the step's own keys as the cache stores them)."""

    SERVER_ARGS = PrefixReuse.SERVER_ARGS + ("--kv-dtype", "q8")
