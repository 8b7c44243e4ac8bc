"""Requests shaped exactly as the plugins send them (read from their sources: llama.vim's
autoload/llama.vim, llama.vscode's src/llama-server.ts, Continue's core/llm/llms/LlamaCpp.ts,
Ollama.ts, OpenAI.ts (_streamFim, which its Mistral provider uses) and stream.ts), with the
response fields those plugins read."""

import unittest

import harness as h

FIM = h.cases()["fim"][1]


def vim_split(case):
    """llama.vim's split of a FIM request: input_prefix = the lines before the cursor's line,
    prompt = the cursor line up to the cursor, input_suffix = the rest of the line and the
    lines after."""
    before, _, line_prefix = case["prefix"].rpartition("\n")
    return before + "\n", line_prefix, case["suffix"]


class Plugins(h.ServerTest):
    SERVER_ARGS = ("--threads", "1")

    def test_llama_vim_fim_request(self):
        prefix, line_prefix, suffix = vim_split(FIM)
        fields = ["content", "timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_token_ms",
                  "timings/prompt_per_second", "timings/predicted_n", "timings/predicted_ms",
                  "timings/predicted_per_token_ms", "timings/predicted_per_second", "truncated",
                  "tokens_cached"]
        body = {
            "input_prefix": prefix, "input_suffix": suffix,
            # Ring-buffer chunks carry Vim's reltime() as "time": [seconds, microseconds].
            "input_extra": [{"text": "fn other() {}\n", "time": [1732712345, 123456], "filename": "src/other.rs"}],
            "prompt": line_prefix, "n_predict": 256, "n_indent": 4, "top_k": 40, "top_p": 0.99,
            "stream": False, "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True,
            "t_max_prompt_ms": 500, "t_max_predict_ms": 1500, "response_fields": fields}
        r = self.server.post_json("/infill", body)
        self.assertEqual(set(r), set(fields), r)
        self.assertIsInstance(r["content"], str)
        for k in fields[1:-2]:
            self.assertIsInstance(r[k], (int, float), k)
        # The same request again (the user typed nothing): all but the last token is cached.
        again = self.server.post_json("/infill", body)
        self.assertGreater(again["tokens_cached"], 0)

    def test_llama_vim_ring_update_request(self):
        # Sent in the background to warm the cache with extra context; the answer is ignored
        # but must be a 200.
        r = self.server.post("/infill", {
            "input_prefix": "", "input_suffix": "", "prompt": "", "n_predict": 0, "temperature": 0.0,
            "input_extra": [{"text": "pub fn helper() -> u8 { 1 }\n", "time": [1, 2], "filename": "a.rs"}],
            "stream": False, "samplers": [], "cache_prompt": True, "t_max_prompt_ms": 1,
            "t_max_predict_ms": 1, "response_fields": [""]})
        self.assertEqual(r.status, 200, r)
        r.json()

    def test_llama_vscode_requests(self):
        prefix, line_prefix, suffix = vim_split(FIM)
        chunks = [{"text": "fn other() {}\n", "time": 1732712345123, "filename": "/w/src/other.rs"}]
        # Completion: no response_fields, the whole llama.cpp response; an optional LoRA.
        r = self.server.post_json("/infill", {
            "input_prefix": prefix, "input_suffix": suffix, "input_extra": chunks, "prompt": line_prefix,
            "n_predict": 128, "top_k": 40, "top_p": 0.99, "stream": False,
            "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True, "n_indent": 4,
            "t_max_prompt_ms": 500, "t_max_predict_ms": 2500, "lora": [{"id": 0, "scale": 0.5}]})
        for k in ("content", "tokens_cached", "truncated", "timings"):
            self.assertIn(k, r)
        for k in ("prompt_n", "prompt_ms", "prompt_per_second", "predicted_n", "predicted_ms",
                  "predicted_per_second"):
            self.assertIn(k, r["timings"])
        # Preparation request for the next completion.
        r = self.server.post_json("/infill", {
            "input_prefix": "", "input_suffix": "", "input_extra": chunks, "prompt": "", "n_predict": 0,
            "samplers": [], "cache_prompt": True, "t_max_prompt_ms": 500, "t_max_predict_ms": 1})
        self.assertEqual(r["content"], "")

    def test_continue_llama_cpp_provider(self):
        # Continue always sends an Authorization header ("Bearer undefined" without a key);
        # absent options are left out by JSON.stringify. It streams and reads `content`.
        case = h.cases()["plain"][1]
        s = self.server.stream("/completion", {
            "prompt": case["prompt"], "stream": True, "n_predict": 64, "temperature": 0,
            "stop": ["\n\n", "```", "<|endoftext|>", "</s>", "\nfn ", "\n#", "/src/", "<fim_prefix>"],
            "top_k": 40, "top_p": 0.95, "min_p": 0, "frequency_penalty": 0, "presence_penalty": 0},
            headers={"Authorization": "Bearer undefined"})
        self.assertEqual(s.status, 200)
        events = h.sse_json(s.sse())  # Continue's streamSse stops at "data: [DONE]"
        self.assertNotIn("error", events[-1])
        self.assertEqual(h.llamacpp_text(events), case["continuation"])

    def test_continue_ollama_provider_fim(self):
        # Continue's _streamFim body: model, prompt, suffix, raw (often absent), options with
        # num_ctx, mirostat, num_thread, use_mmap it does not strip, keep_alive in seconds.
        s = self.server.stream("/api/generate", {
            "model": h.MODEL_NAME, "prompt": FIM["prefix"], "suffix": FIM["suffix"],
            "options": {"temperature": 0, "top_p": 1, "top_k": 40, "num_predict": 64, "repeat_penalty": 1,
                        "stop": ["\n\n", "<EOT>", "<|endoftext|>", "```"], "num_ctx": 4096,
                        "mirostat": 0, "num_thread": 2, "use_mmap": True, "min_p": 0},
            "keep_alive": 1800, "stream": True})
        self.assertEqual(s.status, 200)
        objs = h.ndjson(s.lines())
        self.assertEqual(h.ollama_text(objs), FIM["middle"])

    def test_continue_mistral_provider_fim(self):
        # Continue's Mistral provider (supportsFim): _streamFim posts to {apiBase}fim/completions,
        # streaming, with both key headers ("Bearer undefined" without a key), and reads
        # choices[0].delta.content of each event.
        s = self.server.stream("/v1/fim/completions", {
            "model": h.MODEL_NAME, "prompt": FIM["prefix"], "suffix": FIM["suffix"], "max_tokens": 64,
            "temperature": 0, "top_p": 1, "frequency_penalty": 0, "presence_penalty": 0,
            "stop": ["\n\n", "```", "<|endoftext|>", "/src/"], "stream": True},
            headers={"Accept": "application/json", "x-api-key": "", "Authorization": "Bearer undefined"})
        self.assertEqual(s.status, 200)
        events = h.sse_json(s.sse())
        self.assertEqual("".join(e["choices"][0]["delta"]["content"] for e in events), FIM["middle"])


class Browsers(h.ServerTest):
    """A web page (a playground, a browser IDE) may call the server only from an allowed origin."""
    SERVER_ARGS = ("--threads", "1", "--cors-origins", "http://localhost:3000", "--api-key", "k")

    def test_preflight_and_allowed_origin(self):
        r = self.server.request("OPTIONS", "/v1/completions", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        self.assertLess(r.status, 300, r)  # the preflight carries no key and needs none
        self.assertEqual(r.headers.get("access-control-allow-origin"), "http://localhost:3000")
        self.assertIn("POST", r.headers.get("access-control-allow-methods", ""))
        self.assertIn("authorization", r.headers.get("access-control-allow-headers", "").lower())
        r = self.server.post("/v1/completions", {"prompt": "fn", "max_tokens": 2},
                             headers={"Origin": "http://localhost:3000", "Authorization": "Bearer k"})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers.get("access-control-allow-origin"), "http://localhost:3000")

    def test_other_origin_gets_no_cors_headers(self):
        r = self.server.post("/v1/completions", {"prompt": "fn", "max_tokens": 2},
                             headers={"Origin": "http://evil.example", "Authorization": "Bearer k"})
        self.assertNotIn("access-control-allow-origin", r.headers)
        r = self.server.request("OPTIONS", "/v1/completions", headers={"Origin": "http://evil.example"})
        self.assertNotIn("access-control-allow-origin", r.headers)


if __name__ == "__main__":
    unittest.main()
