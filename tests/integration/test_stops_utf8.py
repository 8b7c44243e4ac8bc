"""Text boundaries that do not fall on token boundaries: a stop string that starts inside one
generated token and ends inside another cuts the output exactly before it and is never sent,
not even in part, on any route; a character spelled by several byte tokens (the test model
writes U+1F980 as 4 byte tokens) reaches the client whole, in strict UTF-8, never as U+FFFD."""

import time
import unittest

import harness as h

CRAB = h.cases()["crab"]


class StopStrings(h.ServerTest):
    SERVER_ARGS = ("--threads", "1")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # The greedy output of a memorised prompt, and its token boundaries (as byte offsets
        # into the text), from the generated ids and /detokenize.
        cls.prompt = h.cases()["plain"][2]["prompt"]
        r = cls.server.post_json("/completion", {"prompt": cls.prompt, "n_predict": 40,
                                                 "temperature": 0, "return_tokens": True})
        cls.text, ids = r["content"], r["tokens"]
        cls.bounds = [len(cls.server.post_json("/detokenize", {"tokens": ids[:k]})["content"])
                      for k in range(len(ids) + 1)]
        assert cls.bounds[-1] == len(cls.text), (cls.bounds, cls.text)

    def split_stop(self, min_start=4):
        """A stop string that starts one character into a token of >= 2 characters and ends one
        character into a later token of >= 2 characters; its first occurrence is where it was
        taken from. Returns (stop, text before it)."""
        b = self.bounds
        long_tokens = [k for k in range(len(b) - 1) if b[k + 1] - b[k] >= 2 and b[k] >= min_start]
        for i in long_tokens:
            for j in long_tokens:
                if j > i:
                    start, end = b[i] + 1, b[j] + 1
                    stop = self.text[start:end]
                    if self.text.find(stop) == start and stop.strip():
                        return stop, self.text[:start]
        self.fail(f"no token of 2+ characters twice in {self.text!r}")

    def test_stop_inside_tokens_on_completion(self):
        stop, before = self.split_stop()
        r = self.server.post_json("/completion", {"prompt": self.prompt, "n_predict": 40,
                                                  "temperature": 0, "stop": ["\u0007never", stop]})
        self.assertEqual(r["content"], before)
        self.assertEqual(r["stop_type"], "word")
        self.assertEqual(r["stopping_word"], stop)

    def test_stop_never_streamed_in_part(self):
        stop, before = self.split_stop()
        for route, body, field in [
            ("/completion", {"prompt": self.prompt, "n_predict": 40, "temperature": 0,
                             "stop": [stop]}, "content"),
            ("/v1/completions", {"prompt": self.prompt, "max_tokens": 40, "temperature": 0,
                                 "stop": stop}, None),
        ]:
            s = self.server.stream(route, dict(body, stream=True))
            events = h.sse_json(s.sse())
            deltas = [e[field] for e in events] if field else \
                [e["choices"][0]["text"] for e in events if e.get("choices")]
            self.assertEqual("".join(deltas), before, route)
            for d in deltas:
                self.assertNotIn(stop, d)
            # Nothing past the cut was sent, not even the stop string's first characters.
            self.assertFalse("".join(deltas)[len(before):], route)
        s = self.server.stream("/api/generate", {"prompt": self.prompt, "raw": True,
                                                 "options": {"temperature": 0, "num_predict": 40,
                                                             "repeat_penalty": 1, "stop": [stop]}})
        objs = h.ndjson(s.lines())
        self.assertEqual(h.ollama_text(objs), before)
        self.assertEqual(objs[-1]["done_reason"], "stop")

    def test_stop_on_openai_sets_finish_reason(self):
        stop, before = self.split_stop()
        r = self.server.post_json("/v1/completions", {"prompt": self.prompt, "max_tokens": 40,
                                                      "temperature": 0, "stop": [stop]})
        self.assertEqual(r["choices"][0]["text"], before)
        self.assertEqual(r["choices"][0]["finish_reason"], "stop")

    def test_stop_at_the_first_character(self):
        r = self.server.post_json("/completion", {"prompt": self.prompt, "n_predict": 40,
                                                  "temperature": 0, "stop": [self.text[:3]]})
        self.assertEqual(r["content"], "")
        self.assertEqual(r["stop_type"], "word")

    def test_stop_on_fim(self):
        case = h.cases()["fim"][0]
        cut = len(case["middle"]) // 2
        stop = case["middle"][cut:cut + 3]
        before = case["middle"][:case["middle"].find(stop)]
        r = self.server.post_json("/infill", {"input_prefix": case["prefix"], "input_suffix": case["suffix"],
                                              "n_predict": 32, "temperature": 0, "stop": [stop]})
        self.assertEqual(r["content"], before)
        r = self.server.post_json("/v1/fim/completions", {"prompt": case["prefix"], "suffix": case["suffix"],
                                                          "max_tokens": 32, "temperature": 0, "stop": stop})
        self.assertEqual(r["choices"][0]["message"]["content"], before)


class PluginStops(h.ServerTest):
    """llama.cpp's stops that IDE plugins set: n_indent and t_max_predict_ms."""
    SERVER_ARGS = ("--threads", "1", "--ctx", "16384")

    def test_n_indent_ends_at_a_less_indented_line(self):
        # The item's body is indented 4 and 8; its closing brace is not indented.
        prompt = h.cases()["plain"][2]["prompt"]
        body = {"prompt": prompt, "n_predict": 200, "temperature": 0}
        free = self.server.post_json("/completion", body)["content"]
        for n_indent in (4, 8):
            r = self.server.post_json("/completion", dict(body, n_indent=n_indent))
            text = r["content"]
            self.assertTrue(free.startswith(text.rstrip(" \t")), (n_indent, text, free))
            self.assertLess(len(text), len(free))
            self.assertEqual(r["stop_type"], "limit")
            for line in text.split("\n")[1:]:
                if line.strip():
                    self.assertGreaterEqual(len(line) - len(line.lstrip(" \t")), n_indent, (n_indent, text))
            # Cut at the first line that is indented less (the rest of the text is dropped).
            cut = next(i for i, line in enumerate(free.split("\n")[1:], 1)
                       if line.strip() and len(line) - len(line.lstrip(" ")) < n_indent)
            self.assertEqual(text.rstrip(" "), "\n".join(free.split("\n")[:cut]) + "\n")

    def test_t_max_predict_ms_ends_a_long_generation(self):
        t0 = time.time()
        r = self.server.post_json("/completion", {
            "prompt": h.cases()["plain"][2]["prompt"], "n_predict": 15000, "temperature": 0,
            "ignore_eos": True, "t_max_predict_ms": 200})
        self.assertLess(time.time() - t0, 5)
        self.assertLess(r["tokens_predicted"], 15000)
        self.assertEqual(r["stop_type"], "limit")
        self.assertIn("\n", r["content"])  # it only stops once a line is complete

    def test_n_predict_is_exact(self):
        for n in (1, 2, 7):
            r = self.server.post_json("/completion", {"prompt": h.cases()["plain"][2]["prompt"], "n_predict": n,
                                                      "temperature": 0, "return_tokens": True})
            self.assertEqual(r["tokens_predicted"], n)
            self.assertEqual(len(r["tokens"]), n)


class SplitCharacters(h.ServerTest):
    SERVER_ARGS = ("--threads", "1")

    def check_deltas(self, deltas):
        text = "".join(deltas)
        self.assertIn(CRAB["char"], text)
        self.assertTrue(any(CRAB["char"] in d for d in deltas), deltas)
        for d in deltas:
            self.assertNotIn("\ufffd", d, deltas)
        return text

    def test_crab_streams_whole_on_every_route(self):
        p = CRAB["prompt"]
        # /completion, raw events (sse_json checks each event's bytes are strict UTF-8).
        events = h.sse_json(self.server.stream("/completion", {
            "prompt": p, "n_predict": 8, "temperature": 0, "stream": True, "return_tokens": True}).sse())
        text = self.check_deltas([e["content"] for e in events])
        # The crab's 4 tokens came in one event, with the character.
        crab_event = next(e for e in events if CRAB["char"] in e["content"])
        self.assertGreaterEqual(len(crab_event["tokens"]), 4, crab_event)
        whole = self.server.post_json("/completion", {"prompt": p, "n_predict": 8, "temperature": 0})
        self.assertEqual(text, whole["content"])
        # OpenAI, with logprobs per token on the stream.
        events = h.sse_json(self.server.stream("/v1/completions", {
            "prompt": p, "max_tokens": 8, "temperature": 0, "stream": True}).sse())
        self.assertEqual(self.check_deltas([e["choices"][0]["text"] for e in events]), text)
        # Ollama NDJSON.
        objs = h.ndjson(self.server.stream("/api/generate", {
            "prompt": p, "raw": True, "options": {"temperature": 0, "num_predict": 8, "repeat_penalty": 1}}).lines())
        self.assertEqual(self.check_deltas([o["response"] for o in objs]), text)

    def test_stop_strings_made_of_split_characters(self):
        # The crab as a stop string (4 tokens), and one that starts right after its last byte.
        for stop, before in ((CRAB["char"], ""), (" s", CRAB["char"]), (CRAB["char"] + " s", "")):
            body = {"prompt": CRAB["prompt"], "n_predict": 8, "temperature": 0, "stop": [stop]}
            r = self.server.post_json("/completion", body)
            self.assertEqual((r["content"], r["stop_type"], r["stopping_word"]), (before, "word", stop))
            events = h.sse_json(self.server.stream("/completion", dict(body, stream=True)).sse())
            self.assertEqual(h.llamacpp_text(events), before)

    def test_crab_as_token_logprobs(self):
        r = self.server.post_json("/v1/completions", {"prompt": CRAB["prompt"], "max_tokens": 4,
                                                      "temperature": 0, "logprobs": 1})
        c = r["choices"][0]
        self.assertEqual(c["text"], CRAB["char"])
        # Byte tokens are shown as OpenAI does: "bytes:\\xNN".
        self.assertEqual(c["logprobs"]["tokens"], ["bytes:\\xf0", "bytes:\\x9f", "bytes:\\xa6", "bytes:\\x80"])

    def test_crab_cut_by_the_token_limit(self):
        # 1-3 of its 4 bytes: the response is still valid UTF-8 JSON; the partial character is
        # at most one U+FFFD at the end (as llama.cpp sends it), never raw bytes.
        for n in (1, 2, 3):
            r = self.server.post("/completion", {"prompt": CRAB["prompt"], "n_predict": n, "temperature": 0})
            self.assertEqual(r.status, 200)
            r.body.decode("utf-8")
            self.assertIn(r.json()["content"], ("", "\ufffd"), n)
            events = h.sse_json(self.server.stream("/completion", {
                "prompt": CRAB["prompt"], "n_predict": n, "temperature": 0, "stream": True}).sse())
            self.assertIn(h.llamacpp_text(events), ("", "\ufffd"), n)

    def test_multibyte_text_in_prompts_and_fim(self):
        # Prompt text with 2-, 3- and 4-byte characters round-trips through every prompt path.
        prefix = 'let s = "héllo wörld 你好 ' + CRAB["char"]
        suffix = '";\n'
        a = self.server.post_json("/infill", {"input_prefix": prefix, "input_suffix": suffix,
                                              "n_predict": 6, "temperature": 0})
        a["content"].encode("utf-8")
        b = self.server.post_json("/v1/completions", {"prompt": prefix, "suffix": suffix,
                                                      "max_tokens": 6, "temperature": 0, "echo": True})
        self.assertEqual(b["choices"][0]["text"], prefix + a["content"])


if __name__ == "__main__":
    unittest.main()
