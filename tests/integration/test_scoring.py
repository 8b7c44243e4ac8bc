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


class PromptScoringInChunks(PromptScoring):
    # Steps of 5 tokens: the prompt is scored over several prefill chunks.
    SERVER_ARGS = ("--threads", "1", "--batch-tokens", "5")


if __name__ == "__main__":
    unittest.main()
