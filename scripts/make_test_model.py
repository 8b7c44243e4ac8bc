#!/usr/bin/python3
"""Makes the tiny model the integration tests serve: a sentencepiece tokenizer with hyco's FIM
control symbols trained on tests/data/tiny_corpus.rs, and a random-weight hybrid decoder of the
matching vocabulary (scripts/reference.py). Deterministic; a few seconds on 2 cores.

  /usr/bin/python3 scripts/make_test_model.py --out DIR
"""

import argparse
import io
import os
import sys

import sentencepiece as spm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab", type=int, default=400)
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    text = open(os.path.join(here, "..", "tests", "data", "tiny_corpus.rs"), encoding="utf-8").read()
    os.makedirs(args.out, exist_ok=True)
    # Multi-line chunks so that pieces can hold newlines (the CLI trainer is line based).
    chunks = [c for c in text.split("\n\n") if c.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(chunks), model_writer=model, vocab_size=args.vocab, model_type="bpe",
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True, byte_fallback=True, split_digits=True, character_coverage=1.0,
        max_sentence_length=16384, split_by_whitespace=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        control_symbols=["<fim-prefix>", "<fim-suffix>", "<fim-middle>", "<fim-pad>"],
        hard_vocab_limit=False, minloglevel=2)
    with open(os.path.join(args.out, "tokenizer.model"), "wb") as f:
        f.write(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": sp.vocab_size(),
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 2048, "tie_word_embeddings": True, "sliding_window": 32,
        "layer_types": ["sliding_attention"] * 3 + ["full_attention"], "attention_sinks": 0,
        "bos_token_id": 1, "eos_token_id": 2,
    }
    reference.make_model(cfg, args.out, seed=1234, dtype="f32")
    print(f"test model in {args.out}: vocab {sp.vocab_size()}")


if __name__ == "__main__":
    main()
