"""The dialects are views of one engine: at temperature 0 the same prefix/suffix gives the same
middle through /v1/completions (suffix), /v1/fim/completions, /infill and /api/generate
(suffix), the same prompt gives the same text through /v1/completions, /completion and
/api/generate (with Ollama's default repeat_penalty of 1.1 turned off: the other dialects
default to none), and a streamed response concatenates to exactly the non-streamed text (SSE
ending with data: [DONE] on OpenAI and llama.cpp routes, NDJSON ending with done: true on
Ollama's)."""

import unittest

import harness as h


def fim_requests(prefix, suffix, n, stream):
    """(route, body, text-of-response) for the four FIM routes."""
    return [
        ("/v1/completions", {"prompt": prefix, "suffix": suffix, "max_tokens": n, "temperature": 0,
                             "stream": stream},
         lambda r: h.openai_text(r) if stream else r["choices"][0]["text"]),
        ("/v1/fim/completions", {"prompt": prefix, "suffix": suffix, "max_tokens": n,
                                 "temperature": 0, "stream": stream},
         lambda r: h.mistral_text(r) if stream else r["choices"][0]["message"]["content"]),
        ("/infill", {"input_prefix": prefix, "input_suffix": suffix, "n_predict": n,
                     "temperature": 0, "stream": stream},
         lambda r: h.llamacpp_text(r) if stream else r["content"]),
        ("/api/generate", {"prompt": prefix, "suffix": suffix, "stream": stream,
                           "options": {"temperature": 0, "num_predict": n, "repeat_penalty": 1}},
         lambda r: h.ollama_text(r) if stream else r["response"]),
    ]


def plain_requests(prompt, n, stream):
    return [
        ("/v1/completions", {"prompt": prompt, "max_tokens": n, "temperature": 0, "stream": stream},
         lambda r: h.openai_text(r) if stream else r["choices"][0]["text"]),
        ("/completion", {"prompt": prompt, "n_predict": n, "temperature": 0, "stream": stream},
         lambda r: h.llamacpp_text(r) if stream else r["content"]),
        ("/api/generate", {"prompt": prompt, "raw": True, "stream": stream,
                           "options": {"temperature": 0, "num_predict": n, "repeat_penalty": 1}},
         lambda r: h.ollama_text(r) if stream else r["response"]),
    ]


class DialectsAgree(h.ServerTest):
    SERVER_ARGS = ("--threads", "1")

    def run_one(self, route, body, text):
        if not body["stream"]:
            return text(self.server.post_json(route, body))
        s = self.server.stream(route, body)
        self.assertEqual(s.status, 200, route)
        if route == "/api/generate":
            return text(h.ndjson(s.lines()))
        return text(h.sse_json(s.sse()))

    def test_fim_same_middle_on_every_route(self):
        for case in h.cases()["fim"]:
            got = {}
            for stream in (False, True):
                for route, body, text in fim_requests(case["prefix"], case["suffix"], 48, stream):
                    got[(route, stream)] = self.run_one(route, body, text)
            self.assertEqual(set(got.values()), {case["middle"]}, got)

    def test_fim_without_a_learned_answer_still_agrees(self):
        # Text the model never saw: whatever it writes, every route writes the same.
        prefix, suffix = "fn odd(x: u8) -> bool {\n    let y = ", ";\n    y\n}\n"
        got = {}
        for stream in (False, True):
            for route, body, text in fim_requests(prefix, suffix, 12, stream):
                got[(route, stream)] = self.run_one(route, body, text)
        self.assertEqual(len(set(got.values())), 1, got)

    def test_plain_same_text_on_every_route(self):
        for case in h.cases()["plain"]:
            got = {}
            for stream in (False, True):
                for route, body, text in plain_requests(case["prompt"], 24, stream):
                    got[(route, stream)] = self.run_one(route, body, text)
            self.assertEqual(len(set(got.values())), 1, got)
            text = next(iter(got.values()))
            self.assertTrue(text.startswith(case["continuation"][:len(text)]), (text, case))

    def test_stream_of_a_long_generation_equals_the_whole(self):
        # 300 tokens, past the end of what the model learned: text from every corner of the
        # vocabulary (byte tokens included) must stream exactly as it is returned whole.
        prompt = h.cases()["crab"]["prompt"]
        body = {"prompt": prompt, "n_predict": 300, "temperature": 0, "ignore_eos": True}
        whole = self.server.post_json("/completion", dict(body, stream=False))
        s = self.server.stream("/completion", dict(body, stream=True))
        events = h.sse_json(s.sse())
        self.assertEqual(h.llamacpp_text(events), whole["content"])
        self.assertEqual(events[-1]["tokens_predicted"], 300)
        self.assertNotIn("\ufffd", whole["content"])

    def test_openai_stream_with_several_prompts_n_and_echo(self):
        prompts = [h.cases()["plain"][0]["prompt"], h.cases()["plain"][2]["prompt"]]
        body = {"prompt": prompts, "n": 2, "max_tokens": 12, "temperature": 0, "echo": True}
        whole = self.server.post_json("/v1/completions", body)
        events = h.sse_json(self.server.stream("/v1/completions", dict(body, stream=True)).sse())
        self.assertEqual(len(whole["choices"]), 4)
        for c in whole["choices"]:
            i = c["index"]
            self.assertTrue(c["text"].startswith(prompts[i // 2]), c)
            self.assertEqual(h.openai_text(events, i), c["text"], i)
            finishes = [e["choices"][0]["finish_reason"] for e in events
                        if e["choices"][0]["index"] == i and e["choices"][0]["finish_reason"]]
            self.assertEqual(finishes, [c["finish_reason"]], i)
        # usage counts each prompt once, however many choices it has (OpenAI), and every choice's
        # tokens.
        alone = [self.server.post_json("/v1/completions", dict(body, prompt=p, n=1))["usage"] for p in prompts]
        self.assertEqual(whole["usage"]["prompt_tokens"], sum(u["prompt_tokens"] for u in alone))
        self.assertEqual(whole["usage"]["completion_tokens"], 2 * sum(u["completion_tokens"] for u in alone))

    def test_sampling_with_a_seed_is_reproducible(self):
        # Not greedy: the seed fixes the draw, on every route that takes one.
        prompt = h.cases()["plain"][2]["prompt"]
        body = {"prompt": prompt, "n_predict": 24, "temperature": 1.5, "seed": 42, "top_k": 0,
                "top_p": 1, "min_p": 0}
        a = self.server.post_json("/completion", body)["content"]
        b = self.server.post_json("/completion", dict(body, stream=False))["content"]
        self.assertEqual(a, b)
        c = self.run_one("/completion", dict(body, stream=True), h.llamacpp_text)
        self.assertEqual(a, c)
        o1 = self.server.post_json("/v1/completions", {"prompt": prompt, "max_tokens": 24,
                                                       "temperature": 1.5, "seed": 42})
        o2 = self.server.post_json("/v1/completions", {"prompt": prompt, "max_tokens": 24,
                                                       "temperature": 1.5, "seed": 42})
        self.assertEqual(o1["choices"][0]["text"], o2["choices"][0]["text"])
        # Ollama: a positive seed fixes the draw; -1 (its runner's default) and 0 (its documented
        # default) draw a fresh one each time.
        def ollama(seed):
            return self.server.post_json("/api/generate", {
                "prompt": prompt, "raw": True, "stream": False,
                "options": {"num_predict": 24, "temperature": 2, "top_k": 0, "top_p": 1, "seed": seed}})["response"]
        self.assertEqual(ollama(42), ollama(42))
        for seed in (-1, 0):
            self.assertGreater(len({ollama(seed) for _ in range(4)}), 1, f"seed {seed} gave one text four times")


if __name__ == "__main__":
    unittest.main()
