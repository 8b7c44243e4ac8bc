"""Prompt scoring through OpenAI's echo + logprobs (max_tokens 0): the log-probability the server
reports for each prompt token equals a log-softmax of scripts/reference.py's float64 forward
over the same tokens (an independent implementation), within the f32 engine's tolerance."""

import json
import math
import os
import sys
import unittest

import harness as h

sys.path.insert(0, os.path.join(h.SOURCE_DIR, "scripts"))
import torch  # noqa: E402  (Debian's torch, as reference.py uses)
import reference  # noqa: E402


class PromptScoring(h.ServerTest):
    SERVER_ARGS = ("--threads", "1")

    def test_prompt_logprobs_match_the_reference(self):
        prompt = h.cases()["plain"][0]["prompt"] + " let total = 0;"
        got = self.server.post_json("/v1/completions", {"prompt": prompt, "max_tokens": 0, "echo": True,
                                                         "logprobs": 2})
        lp = got["choices"][0]["logprobs"]
        self.assertEqual(got["choices"][0]["text"], prompt)
        self.assertIsNone(lp["token_logprobs"][0])
        ids = self.server.post_json("/tokenize", {"content": prompt, "add_special": True})["tokens"]
        self.assertEqual(len(lp["token_logprobs"]), len(ids))
        model = reference.HycoDecoder.from_dir(h.MODEL, torch.float64)
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0]
        want = torch.log_softmax(logits, dim=-1)
        for i in range(1, len(ids)):
            self.assertAlmostEqual(lp["token_logprobs"][i], float(want[i - 1, ids[i]]), delta=1e-4)
            # The alternatives are the two most likely tokens (a JSON object: no order).
            top = sorted(lp["top_logprobs"][i].values(), reverse=True)
            self.assertLessEqual(len(top), 2)  # two tokens with the same text share a key
            self.assertAlmostEqual(top[0], float(want[i - 1].max()), delta=1e-4)
        # Scoring does not disturb generation: the same prompt then completes as without it.
        plain = self.server.post_json("/v1/completions", {"prompt": prompt, "max_tokens": 8, "temperature": 0})
        scored = self.server.post_json("/v1/completions", {"prompt": prompt, "max_tokens": 8, "temperature": 0,
                                                            "echo": True, "logprobs": 0})
        self.assertEqual(scored["choices"][0]["text"], prompt + plain["choices"][0]["text"])

    def test_streamed_scoring_adds_up_to_the_whole_response(self):
        # Streaming, the scored prompt comes in as many chunks as it was computed in (here, with
        # --batch-tokens 5, many): the text once, then each chunk's logprobs with its offsets.
        body = {"prompt": h.cases()["plain"][1]["prompt"], "max_tokens": 4, "temperature": 0, "echo": True,
                "logprobs": 1, "cache_prompt": False}
        whole = self.server.post_json("/v1/completions", body)["choices"][0]
        events = [json.loads(e) for e in self.server.stream("/v1/completions", dict(body, stream=True)).sse()
                  if e != b"[DONE]"]
        text, got = "", {"tokens": [], "token_logprobs": [], "text_offset": []}
        for e in events:
            c = e["choices"][0]
            text += c["text"]
            for k in got:
                if c["logprobs"] is not None:
                    got[k] += c["logprobs"][k]
            self.assertFalse(c["text"] == "" and c["logprobs"] is not None and not c["logprobs"]["tokens"], e)
        self.assertEqual(text, whole["text"])
        for k in ("tokens", "text_offset"):
            self.assertEqual(got[k], whole["logprobs"][k], k)
        self.assertEqual(len(got["token_logprobs"]), len(whole["logprobs"]["token_logprobs"]))
        for a, b in zip(got["token_logprobs"], whole["logprobs"]["token_logprobs"]):
            self.assertTrue(a == b or abs(a - b) < 1e-5, (a, b))


class PromptScoringInChunks(PromptScoring):
    # Steps of 5 tokens: the prompt is scored over several prefill chunks.
    SERVER_ARGS = ("--threads", "1", "--batch-tokens", "5")


if __name__ == "__main__":
    unittest.main()
