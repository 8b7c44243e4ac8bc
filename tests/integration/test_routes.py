"""Every route answers with its dialect's documented shape (field names and types), streaming
and not: OpenAI /v1/completions and Mistral /v1/fim/completions, llama.cpp /completion,
/infill, /props, /slots, Ollama /api/generate, /api/tags, /api/version, and the ops routes
/health, /v1/models, /metrics, /tokenize, /detokenize."""

import re
import unittest

import harness as h

FIM = h.cases()["fim"][0]
PLAIN = h.cases()["plain"][0]


class Shapes(unittest.TestCase):
    def assertFields(self, obj, spec, where=""):
        """spec: {field: type or tuple of types}; every field present with that type."""
        for k, t in spec.items():
            self.assertIn(k, obj, f"{where}: no '{k}' in {obj!r:.400}")
            self.assertIsInstance(obj[k], t, f"{where}: '{k}' = {obj[k]!r:.200}")
            if t is int or t == (int,):
                self.assertNotIsInstance(obj[k], bool, f"{where}: '{k}' is a boolean")


NUM = (int, float)
NONE = type(None)


class OpenAiRoutes(h.ServerTest, Shapes):
    SERVER_ARGS = ("--threads", "1")

    def check_completion(self, r, n_choices=1):
        self.assertFields(r, {"id": str, "object": str, "created": int, "model": str,
                              "choices": list, "usage": dict}, "/v1/completions")
        self.assertEqual(r["object"], "text_completion")
        self.assertEqual(r["model"], h.MODEL_NAME)
        self.assertEqual(len(r["choices"]), n_choices)
        for i, c in enumerate(r["choices"]):
            self.assertFields(c, {"text": str, "index": int, "logprobs": (dict, NONE),
                                  "finish_reason": str}, "choice")
            self.assertEqual(c["index"], i)
            self.assertIn(c["finish_reason"], ("stop", "length"))
        u = r["usage"]
        self.assertFields(u, {"prompt_tokens": int, "completion_tokens": int, "total_tokens": int})
        self.assertEqual(u["total_tokens"], u["prompt_tokens"] + u["completion_tokens"])

    def test_completions(self):
        r = self.server.post_json("/v1/completions", {
            "model": h.MODEL_NAME, "prompt": PLAIN["prompt"], "max_tokens": 8, "temperature": 0})
        self.check_completion(r)
        self.assertEqual(r["choices"][0]["finish_reason"], "length")
        self.assertEqual(r["usage"]["completion_tokens"], 8)
        self.assertTrue(PLAIN["continuation"].startswith(r["choices"][0]["text"]), r)

    def test_completions_defaults_to_16_tokens(self):
        # The OpenAI default max_tokens is 16.
        r = self.server.post_json("/v1/completions", {
            "prompt": PLAIN["prompt"], "temperature": 0, "stop": "\u0001"})
        self.assertEqual(r["usage"]["completion_tokens"], 16, r)

    def test_completions_several_prompts_and_n(self):
        r = self.server.post_json("/v1/completions", {
            "prompt": [PLAIN["prompt"], h.cases()["plain"][1]["prompt"]], "n": 2,
            "max_tokens": 4, "temperature": 0})
        self.check_completion(r, n_choices=4)
        texts = [c["text"] for c in r["choices"]]
        self.assertEqual(texts[0], texts[1])  # greedy: n copies agree
        self.assertEqual(texts[2], texts[3])
        self.assertNotEqual(texts[0], texts[2])

    def test_completion_prompt_of_ids_is_taken_as_given(self):
        # llama.cpp's rule: ids go in as they are (a list that starts with BOS has one BOS, not
        # two); a leading string is tokenized like a text prompt, BOS included.
        text = PLAIN["prompt"]
        ids = self.server.post_json("/tokenize", {"content": text, "add_special": True})["tokens"]
        body = {"n_predict": 6, "temperature": 0, "cache_prompt": False}
        as_text = self.server.post_json("/completion", dict(body, prompt=text))
        as_ids = self.server.post_json("/completion", dict(body, prompt=ids))
        head, tail = text.split(" ", 1)
        tail_ids = self.server.post_json("/tokenize", {"content": " " + tail})["tokens"]
        mixed = self.server.post_json("/completion", dict(body, prompt=[head] + tail_ids))
        self.assertEqual(as_text["tokens_evaluated"], len(ids))
        self.assertEqual(as_ids["tokens_evaluated"], len(ids))
        self.assertEqual(as_ids["content"], as_text["content"])
        head_ids = self.server.post_json("/tokenize", {"content": head, "add_special": True})["tokens"]
        self.assertEqual(mixed["tokens_evaluated"], len(head_ids) + len(tail_ids))

    def test_completions_token_prompt_echo_logprobs(self):
        ids = self.server.post_json("/tokenize", {"content": PLAIN["prompt"], "add_special": True})["tokens"]
        r = self.server.post_json("/v1/completions", {
            "prompt": ids, "max_tokens": 4, "temperature": 0, "echo": True, "logprobs": 2})
        self.check_completion(r)
        c = r["choices"][0]
        self.assertTrue(c["text"].startswith(PLAIN["prompt"]), c)
        lp = c["logprobs"]
        self.assertFields(lp, {"tokens": list, "token_logprobs": list, "top_logprobs": list,
                               "text_offset": list})
        # echo + logprobs lists the prompt tokens first (OpenAI): the first with null values.
        self.assertEqual(len(lp["tokens"]), len(ids) + 4)
        self.assertIsNone(lp["token_logprobs"][0])
        self.assertIsNone(lp["top_logprobs"][0])
        for t, l, top, off in zip(lp["tokens"][1:], lp["token_logprobs"][1:], lp["top_logprobs"][1:],
                                  lp["text_offset"][1:]):
            self.assertIsInstance(t, str)
            self.assertLessEqual(l, 0.0)
            self.assertLessEqual(len(top), 2)
            self.assertIsInstance(off, int)
        self.assertEqual(lp["text_offset"], sorted(lp["text_offset"]))
        # Greedy: each generated token is the most likely one.
        for k in range(len(ids), len(ids) + 4):
            self.assertAlmostEqual(lp["token_logprobs"][k], max(lp["top_logprobs"][k].values()), places=4)

    def test_completions_fim_suffix(self):
        r = self.server.post_json("/v1/completions", {
            "prompt": FIM["prefix"], "suffix": FIM["suffix"], "max_tokens": 32, "temperature": 0})
        self.check_completion(r)
        self.assertEqual(r["choices"][0]["text"], FIM["middle"])
        self.assertEqual(r["choices"][0]["finish_reason"], "stop")

    def test_completions_stream(self):
        s = self.server.stream("/v1/completions", {
            "prompt": PLAIN["prompt"], "max_tokens": 8, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}})
        self.assertEqual(s.status, 200)
        self.assertTrue(s.headers["content-type"].startswith("text/event-stream"), s.headers)
        events = h.sse_json(s.sse())
        *chunks, usage = events
        for e in chunks:
            self.assertFields(e, {"id": str, "object": str, "created": int, "model": str,
                                  "choices": list})
            self.assertEqual(e["object"], "text_completion")
            self.assertEqual(len(e["choices"]), 1)
            self.assertFields(e["choices"][0], {"text": str, "index": int,
                                                "finish_reason": (str, NONE)})
            self.assertIn("usage", e)
            self.assertIsNone(e["usage"])
        self.assertEqual(len({e["id"] for e in events}), 1)
        self.assertEqual([e["choices"][0]["finish_reason"] for e in chunks][-1], "length")
        self.assertTrue(all(e["choices"][0]["finish_reason"] is None for e in chunks[:-1]))
        self.assertEqual(usage["choices"], [])
        self.assertEqual(usage["usage"]["completion_tokens"], 8)

    def test_fim_completions(self):
        r = self.server.post_json("/v1/fim/completions", {
            "model": h.MODEL_NAME, "prompt": FIM["prefix"], "suffix": FIM["suffix"],
            "max_tokens": 32, "temperature": 0})
        self.assertFields(r, {"id": str, "object": str, "created": int, "model": str,
                              "choices": list, "usage": dict})
        self.assertEqual(r["object"], "chat.completion")
        c = r["choices"][0]
        self.assertFields(c, {"index": int, "message": dict, "finish_reason": str})
        self.assertEqual(c["message"]["role"], "assistant")
        self.assertEqual(c["message"]["content"], FIM["middle"])
        self.assertEqual(c["finish_reason"], "stop")
        self.assertFields(r["usage"], {"prompt_tokens": int, "completion_tokens": int,
                                       "total_tokens": int})

    def test_fim_completions_stream(self):
        s = self.server.stream("/v1/fim/completions", {
            "prompt": FIM["prefix"], "suffix": FIM["suffix"], "max_tokens": 32,
            "temperature": 0, "stream": True})
        events = h.sse_json(s.sse())
        for e in events:
            self.assertEqual(e["object"], "chat.completion.chunk")
            self.assertFields(e["choices"][0], {"index": int, "delta": dict,
                                                "finish_reason": (str, NONE)})
        self.assertEqual(events[0]["choices"][0]["delta"].get("role"), "assistant")
        self.assertEqual(events[-1]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(h.mistral_text(events), FIM["middle"])

    def test_models(self):
        r = self.server.get("/v1/models")
        self.assertEqual(r.status, 200)
        j = r.json()
        self.assertEqual(j["object"], "list")
        self.assertEqual(len(j["data"]), 1)
        self.assertFields(j["data"][0], {"id": str, "object": str, "created": int, "owned_by": str})
        self.assertEqual(j["data"][0]["id"], h.MODEL_NAME)
        self.assertEqual(j["data"][0]["object"], "model")


class LlamaCppRoutes(h.ServerTest, Shapes):
    SERVER_ARGS = ("--threads", "1", "--parallel", "2")

    FINAL = {"content": str, "tokens": list, "stop": bool, "stop_type": str, "stopping_word": str,
             "tokens_cached": int, "tokens_evaluated": int, "tokens_predicted": int,
             "truncated": bool, "timings": dict, "generation_settings": dict, "model": str,
             "index": int, "has_new_line": bool, "id_slot": int}
    TIMINGS = {"prompt_n": int, "prompt_ms": NUM, "prompt_per_token_ms": NUM,
               "prompt_per_second": NUM, "predicted_n": int, "predicted_ms": NUM,
               "predicted_per_token_ms": NUM, "predicted_per_second": NUM}

    def check_final(self, r, where):
        self.assertFields(r, self.FINAL, where)
        self.assertIs(r["stop"], True)
        self.assertIn(r["stop_type"], ("eos", "word", "limit", "none"))
        self.assertFields(r["timings"], self.TIMINGS, where + " timings")
        self.assertEqual(r["timings"]["predicted_n"], r["tokens_predicted"])
        self.assertIn(r["id_slot"], (0, 1), where)  # a slot /slots lists (--parallel 2)

    def test_completion(self):
        r = self.server.post_json("/completion", {
            "prompt": PLAIN["prompt"], "n_predict": 6, "temperature": 0, "return_tokens": True})
        self.check_final(r, "/completion")
        self.assertEqual(r["stop_type"], "limit")
        self.assertEqual(r["tokens_predicted"], 6)
        self.assertEqual(len(r["tokens"]), 6)
        self.assertTrue(all(isinstance(t, int) for t in r["tokens"]))
        detok = self.server.post_json("/detokenize", {"tokens": r["tokens"]})["content"]
        self.assertEqual(detok, r["content"])
        self.assertTrue(PLAIN["continuation"].startswith(r["content"]), r)

    def test_completion_alias_route(self):
        a = self.server.post_json("/completion", {"prompt": PLAIN["prompt"], "n_predict": 6, "temperature": 0})
        b = self.server.post_json("/completions", {"prompt": PLAIN["prompt"], "n_predict": 6, "temperature": 0})
        self.assertEqual(a["content"], b["content"])

    def test_completion_to_eos(self):
        # The second plain case is a whole item: the model ends it with </s>.
        case = h.cases()["plain"][1]
        r = self.server.post_json("/completion", {"prompt": case["prompt"], "n_predict": 64, "temperature": 0})
        self.assertEqual(r["content"], case["continuation"])
        self.assertEqual(r["stop_type"], "eos")

    def test_completion_stream(self):
        s = self.server.stream("/completion", {
            "prompt": PLAIN["prompt"], "n_predict": 6, "temperature": 0, "stream": True})
        self.assertTrue(s.headers["content-type"].startswith("text/event-stream"))
        events = h.sse_json(s.sse())
        *parts, final = events
        self.assertTrue(parts)
        for e in parts:
            self.assertFields(e, {"content": str, "stop": bool, "index": int, "tokens": list, "id_slot": int})
            self.assertIs(e["stop"], False)
        self.check_final(final, "/completion stream end")
        self.assertEqual({e["id_slot"] for e in events}, {final["id_slot"]})
        self.assertEqual(final["content"], "")

    def test_infill(self):
        r = self.server.post_json("/infill", {
            "input_prefix": FIM["prefix"], "input_suffix": FIM["suffix"], "n_predict": 32,
            "temperature": 0})
        self.check_final(r, "/infill")
        self.assertEqual(r["content"], FIM["middle"])
        self.assertEqual(r["stop_type"], "eos")

    def test_infill_stream(self):
        s = self.server.stream("/infill", {
            "input_prefix": FIM["prefix"], "input_suffix": FIM["suffix"], "n_predict": 32,
            "temperature": 0, "stream": True})
        events = h.sse_json(s.sse())
        self.check_final(events[-1], "/infill stream end")
        self.assertEqual(h.llamacpp_text(events), FIM["middle"])

    def test_completion_n_probs(self):
        r = self.server.post_json("/completion", {"prompt": PLAIN["prompt"], "n_predict": 3,
                                                  "temperature": 0, "n_probs": 2})
        probs = r["completion_probabilities"]
        self.assertEqual(len(probs), 3)
        for p in probs:
            self.assertFields(p, {"id": int, "token": str, "logprob": NUM, "bytes": list,
                                  "top_logprobs": list})
            self.assertEqual(len(p["top_logprobs"]), 2)
            self.assertEqual(p["top_logprobs"][0]["id"], p["id"])  # greedy: the top one
            for t in p["top_logprobs"]:
                self.assertFields(t, {"id": int, "token": str, "logprob": NUM, "bytes": list})
        self.assertEqual("".join(p["token"] for p in probs), r["content"])
        events = h.sse_json(self.server.stream("/completion", {
            "prompt": PLAIN["prompt"], "n_predict": 3, "temperature": 0, "n_probs": 2, "stream": True}).sse())
        streamed = [p for e in events[:-1] for p in e.get("completion_probabilities", [])]
        self.assertEqual([p["id"] for p in streamed], [p["id"] for p in probs])

    def test_props(self):
        j = self.server.get("/props").json()
        self.assertFields(j, {"default_generation_settings": dict, "total_slots": int,
                              "model_path": str, "n_ctx": int})
        self.assertEqual(j["total_slots"], 2)
        self.assertEqual(j["n_ctx"], 2048)
        self.assertEqual(j["default_generation_settings"]["n_ctx"], 2048)

    def test_slots(self):
        slots = self.server.slots()
        self.assertEqual(len(slots), 2)
        for i, s in enumerate(slots):
            self.assertFields(s, {"id": int, "is_processing": bool, "n_ctx": int})
            self.assertEqual(s["id"], i)


class OllamaRoutes(h.ServerTest, Shapes):
    SERVER_ARGS = ("--threads", "1")
    FINAL = {"model": str, "created_at": str, "response": str, "done": bool, "done_reason": str,
             "total_duration": int, "load_duration": int, "prompt_eval_count": int,
             "prompt_eval_duration": int, "eval_count": int, "eval_duration": int}

    def test_generate_streams_ndjson_by_default(self):
        s = self.server.stream("/api/generate", {
            "model": h.MODEL_NAME, "prompt": PLAIN["prompt"], "raw": True,
            "options": {"temperature": 0, "num_predict": 6}})
        self.assertEqual(s.status, 200)
        self.assertTrue(s.headers["content-type"].startswith("application/x-ndjson"), s.headers)
        objs = h.ndjson(s.lines())
        for o in objs[:-1]:
            self.assertFields(o, {"model": str, "created_at": str, "response": str, "done": bool})
            self.assertRegex(o["created_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
        self.assertFields(objs[-1], self.FINAL, "final line")
        self.assertEqual(objs[-1]["done_reason"], "length")
        self.assertEqual(objs[-1]["eval_count"], 6)

    def test_generate_not_streaming(self):
        r = self.server.post_json("/api/generate", {
            "model": h.MODEL_NAME + ":latest", "prompt": PLAIN["prompt"], "stream": False,
            "options": {"temperature": 0, "num_predict": 6}})
        self.assertFields(r, self.FINAL)
        self.assertIs(r["done"], True)
        self.assertTrue(PLAIN["continuation"].startswith(r["response"]), r)
        # prompt_eval_count is the whole prompt, as Ollama counts it, also when the cache held it.
        n = len(self.server.post_json("/tokenize", {"content": PLAIN["prompt"], "add_special": True})["tokens"])
        self.assertEqual(r["prompt_eval_count"], n)
        again = self.server.post_json("/api/generate", {
            "model": h.MODEL_NAME, "prompt": PLAIN["prompt"], "stream": False,
            "options": {"temperature": 0, "num_predict": 6}})
        self.assertEqual(again["prompt_eval_count"], n)

    def test_generate_fim_suffix(self):
        r = self.server.post_json("/api/generate", {
            "prompt": FIM["prefix"], "suffix": FIM["suffix"], "stream": False,
            "options": {"temperature": 0, "num_predict": 32}})
        self.assertEqual(r["response"], FIM["middle"])
        self.assertEqual(r["done_reason"], "stop")

    def test_generate_empty_prompt_loads_the_model(self):
        # Ollama's clients send this to load a model and parse created_at as a time; streaming
        # (Ollama's default) it is one NDJSON line.
        raw = self.server.post("/api/generate", {"model": h.MODEL_NAME, "prompt": ""})
        self.assertEqual(raw.status, 200)
        self.assertTrue(raw.body.endswith(b"\n"), raw.body)
        self.assertIn("application/x-ndjson", raw.headers.get("content-type", ""))
        r = raw.json()
        self.assertIs(r["done"], True)
        self.assertEqual(r["response"], "")
        self.assertEqual(r["done_reason"], "load")
        self.assertRegex(r["created_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
        whole = self.server.post_json("/api/generate", {"model": h.MODEL_NAME, "prompt": "", "stream": False})
        self.assertEqual(whole["done_reason"], "load")

    def test_show(self):
        # Continue's Ollama provider reads the template: ".Suffix" in it means FIM through suffix.
        for key in ("model", "name"):
            j = self.server.post_json("/api/show", {key: h.MODEL_NAME})
            self.assertIn(".Suffix", j["template"])
            self.assertIn("insert", j["capabilities"])
            tags = self.server.get("/api/tags").json()["models"][0]
            self.assertEqual(j["details"]["parameter_size"], tags["details"]["parameter_size"])
        r = self.server.post("/api/show", {"model": "no-such-model"})
        self.assertEqual(r.status, 404, r)

    def test_tags(self):
        j = self.server.get("/api/tags").json()
        self.assertEqual(len(j["models"]), 1)
        m = j["models"][0]
        self.assertFields(m, {"name": str, "model": str, "modified_at": str, "size": int,
                              "digest": str, "details": dict})
        self.assertEqual(m["name"], h.MODEL_NAME + ":latest")
        self.assertFields(m["details"], {"format": str, "family": str, "families": list,
                                         "parameter_size": str, "quantization_level": str})

    def test_version(self):
        j = self.server.get("/api/version").json()
        self.assertRegex(j["version"], r"^\d+\.\d+\.\d+")


class OpsRoutes(h.ServerTest, Shapes):
    SERVER_ARGS = ("--threads", "1")

    def test_health(self):
        self.assertHealthy()

    def test_tokenize_detokenize_round_trip(self):
        text = PLAIN["prompt"] + h.cases()["crab"]["char"] + " é 你好"
        toks = self.server.post_json("/tokenize", {"content": text})["tokens"]
        self.assertTrue(toks and all(isinstance(t, int) for t in toks))
        self.assertEqual(self.server.post_json("/detokenize", {"tokens": toks})["content"], text)
        with_bos = self.server.post_json("/tokenize", {"content": text, "add_special": True})["tokens"]
        self.assertEqual(with_bos, [1] + toks)
        pieces = self.server.post_json("/tokenize", {"content": "fn", "with_pieces": True})["tokens"]
        self.assertTrue(all(set(p) == {"id", "piece"} for p in pieces), pieces)
        self.assertEqual("".join(p["piece"] for p in pieces), "fn")

    def test_tokenize_crab_is_four_byte_tokens(self):
        # The property the UTF-8 tests rely on: the test vocabulary spells U+1F980 with 4 bytes.
        toks = self.server.post_json("/tokenize", {"content": h.cases()["crab"]["char"],
                                                   "with_pieces": True})["tokens"]
        self.assertEqual(len(toks), 4, toks)
        self.assertTrue(all(p["piece"].startswith("bytes:") for p in toks), toks)

    def test_metrics_is_prometheus_text(self):
        self.server.post_json("/completion", {"prompt": PLAIN["prompt"], "n_predict": 4, "temperature": 0})
        r = self.server.get("/metrics")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers["content-type"].startswith("text/plain"), r.headers)
        text = r.body.decode()
        sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"'
                            r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? -?[0-9.eE+-]+$|^\S+ [+-]Inf$|^\S+ NaN$')
        types = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                types[name] = kind
            elif line.startswith("# HELP ") or not line:
                continue
            else:
                self.assertRegex(line, sample, "not a Prometheus sample line")
                self.assertTrue(line.startswith("hyco_"), line)
        m = self.server.metrics()
        for name, kind in types.items():
            if kind == "histogram":
                for part in ("_sum", "_count", '_bucket{le="+Inf"}'):
                    self.assertIn(name + part, m, f"histogram {name} lacks {part}")
                self.assertEqual(m[name + "_count"], m[name + '_bucket{le="+Inf"}'])
        for name in ("hyco_requests_total", "hyco_prompt_tokens_total", "hyco_generated_tokens_total",
                     "hyco_time_to_first_token_seconds", "hyco_inter_token_seconds",
                     "hyco_queue_depth", "hyco_running_sequences", "hyco_kv_bytes_used",
                     "hyco_cancelled_total", "hyco_client_disconnects_total", "hyco_prefill_tokens_total",
                     "hyco_scheduler_prefill_steps_total", "hyco_scheduler_step_seconds_total",
                     "hyco_scheduler_forward_seconds_total"):
            self.assertIn(name, types, f"/metrics lacks {name}")
        self.assertGreaterEqual(m['hyco_requests_total{route="/completion",status="200"}'], 1)
        self.assertGreaterEqual(m["hyco_generated_tokens_total"], 4)
        self.assertGreaterEqual(m["hyco_time_to_first_token_seconds_count"], 1)

    def test_metrics_account_for_prefill_and_steps(self):
        # One request alone, its prompt computed afresh: its prompt tokens are prefill tokens, the
        # step that computes them is the one step with a prompt chunk (it also samples the first
        # token), and each later token takes a decode-only step. Both kinds of step are timed.
        self.server.wait_for(lambda: self.server.metrics()["hyco_running_sequences"] == 0, what="an idle server")
        before = self.server.metrics()
        r = self.server.post_json("/completion", {"prompt": PLAIN["prompt"] + " // metrics", "n_predict": 3,
                                                  "temperature": 0, "cache_prompt": False})
        # A step is counted when it has ended, which can be just after the response went out.
        def settled():
            after = self.server.metrics()
            d = {k: after[k] - before.get(k, 0.0) for k in after}
            return d if d["hyco_scheduler_steps_total"] >= r["tokens_predicted"] else None
        d = self.server.wait_for(settled, what="the last step counted")
        self.assertEqual(d["hyco_prefill_tokens_total"], r["tokens_evaluated"])
        self.assertEqual(d["hyco_prompt_tokens_total"], r["tokens_evaluated"])
        self.assertEqual(d["hyco_scheduler_prefill_steps_total"], 1)
        self.assertEqual(d["hyco_scheduler_steps_total"], r["tokens_predicted"])
        self.assertGreater(d['hyco_scheduler_step_seconds_total{kind="prefill"}'], 0)
        self.assertGreater(d['hyco_scheduler_step_seconds_total{kind="decode"}'], 0)
        for kind in ("prefill", "decode"):  # the forward is part of each step
            fwd = d[f'hyco_scheduler_forward_seconds_total{{kind="{kind}"}}']
            self.assertGreater(fwd, 0)
            self.assertLessEqual(fwd, d[f'hyco_scheduler_step_seconds_total{{kind="{kind}"}}'])

    def test_unknown_route_is_404(self):
        r = self.server.get("/v2/nothing")
        self.assertEqual(r.status, 404)
        self.assertIn("error", r.json())
        r = self.server.post("/v1/chat/nothing", {"x": 1})
        self.assertEqual(r.status, 404)


if __name__ == "__main__":
    unittest.main()
