#!/usr/bin/python3
"""Makes the tiny model the integration tests serve: a sentencepiece tokenizer with hyco's FIM
control symbols and a small hybrid decoder (scripts/reference.py's HycoDecoder, 3 local layers
and 1 global) trained for a few hundred steps on tests/data/tiny_corpus.rs, so that

  * greedy decoding after <s> and a line-start prefix of a corpus item continues that item
    (the corpus is memorised);
  * the FIM prompts of TEST_FIM, in hyco's layout
      <s> <fim-suffix> E(suffix) <fim-prefix> E(prefix) <fim-middle>   -> E(middle) </s>
    produce their middle (the rest of the cursor's line) and then </s> (ids: <s> 1, </s> 2,
    <fim-prefix> 3, <fim-suffix> 4, <fim-middle> 5). Random FIM examples of the corpus are
    trained too, but a model this small learns to read through <fim-middle> only slowly
    (measured: after 1000 steps it got a random middle's first token right 1 time in 4), so
    the test prompts are also trained as they are;
  * characters outside the Basic Multilingual Plane (the corpus's crab emoji) are not in the
    vocabulary, so the model spells them as 4 byte tokens: the crab prompt generates a
    character split across tokens.

Writes DIR/{tokenizer.model, config.json, model.safetensors (f32, reference.py's writer)} and
DIR/test_cases.json, the prompts above with their expected outputs, which the integration tests
(tests/integration) read. Deterministic (fixed seeds, one thread); ~25 s on 2 busy cores. Ends with a
check, by the reference forward, that every test case holds, and fails if one does not.

  /usr/bin/python3 scripts/make_test_model.py --out DIR [--steps N] [--reuse]

--reuse keeps a model that DIR already holds when it was made from the same inputs (this
script, the corpus, reference.py and the arguments), as test_cases.json records them.
"""

import argparse
import hashlib
import io
import json
import os
import random
import re
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sentencepiece as spm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402

BOS, EOS, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE = 1, 2, 3, 4, 5
ASTRAL = re.compile("[\U00010000-\U0010FFFF]")  # 4-byte UTF-8 characters: left to byte fallback
MAX_TOKENS = 128  # longest training example

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "max_position_embeddings": 2048, "tie_word_embeddings": True, "sliding_window": 32,
    "layer_types": ["sliding_attention"] * 3 + ["full_attention"], "attention_sinks": 0,
    "bos_token_id": BOS, "eos_token_id": EOS,
}

# FIM test cases: a corpus line with the cursor at "<|>". The prefix is the line's item up to the
# cursor (at most its 3 lines before), the middle the rest of the line, the suffix the next 2
# lines.
TEST_FIM = [
    "        let dx = <|>self.x - other.x;",
    "    for word in text.<|>split_whitespace() {",
    "        let next = <|>a + b;",
    "    let total: f64 = shapes.iter().<|>map(|s| s.area()).sum();",
]
# Plain test cases: a prompt (the start of an item) and the text the model continues it with
# (at most this many characters, up to the end of the item, where the model writes </s>).
TEST_PLAIN = [
    ("pub fn fibonacci(n: u32) -> u64 {\n", 60),
    ("impl Point {\n    pub fn new(x: f64, y: f64) -> Self {\n", 40),
    ("pub fn word_counts(text: &str) -> HashMap<String, usize> {\n", 60),
]
# The crab: a prompt after which the model writes U+1F980 (4 byte tokens).
TEST_CRAB = "pub fn mascot() -> String {\n    // Ferris the crab: "


def corpus_items(text):
    """The corpus cut at blank lines: top-level items (and the halves of impl blocks)."""
    return [c + "\n" for c in text.split("\n\n") if c.strip()]


def train_tokenizer(items, vocab):
    model = io.BytesIO()
    # Multi-line sentences so that pieces can hold newlines (the CLI trainer is line based).
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([ASTRAL.sub("", c) for c in items]), model_writer=model,
        vocab_size=vocab, model_type="bpe", normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False, allow_whitespace_only_pieces=True,
        byte_fallback=True, split_digits=True, character_coverage=1.0, max_sentence_length=16384,
        split_by_whitespace=False, unk_id=0, bos_id=BOS, eos_id=EOS, pad_id=-1,
        control_symbols=["<fim-prefix>", "<fim-suffix>", "<fim-middle>", "<fim-pad>"],
        hard_vocab_limit=False, minloglevel=2)
    proto = model.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    want = {"<s>": BOS, "</s>": EOS, "<fim-prefix>": FIM_PREFIX, "<fim-suffix>": FIM_SUFFIX,
            "<fim-middle>": FIM_MIDDLE}
    for piece, i in want.items():
        assert sp.piece_to_id(piece) == i, (piece, sp.piece_to_id(piece))
    return proto, sp


def line_starts(text):
    return [0] + [i + 1 for i, c in enumerate(text) if c == "\n" and i + 1 < len(text)]


def fim_tokens(sp, prefix, suffix, middle=None):
    """hyco's FIM layout; with a middle, the training example ending in </s>."""
    ids = [BOS, FIM_SUFFIX] + sp.encode(suffix) + [FIM_PREFIX] + sp.encode(prefix) + [FIM_MIDDLE]
    return ids if middle is None else ids + sp.encode(middle) + [EOS]


def fim_weights(ids):
    """Loss weight of each next-token target of a FIM example: <fim-prefix> and <fim-middle>
    are not targets (where the suffix and the prefix end is arbitrary; learning to guess it
    would fight the memorised text); the middle weighs more, its first token most."""
    pre, mid = ids.index(FIM_PREFIX), ids.index(FIM_MIDDLE)
    w = [1.0] * (len(ids) - 1)  # w[i]: of predicting ids[i + 1]
    w[pre - 1] = w[mid - 1] = 0.0
    for i in range(mid, len(ids) - 1):
        w[i] = 2.0
    w[mid] = 4.0
    return w


def test_fim_cases(text):
    """[(prefix, middle, suffix)] of TEST_FIM."""
    cases = []
    for spec in TEST_FIM:
        line = spec.replace("<|>", "")
        at = text.index(line + "\n")
        cursor = at + spec.index("<|>")
        item_start = text.rfind("\n\n", 0, at) + 2
        starts = [s for s in line_starts(text) if item_start <= s <= at]
        p0 = starts[max(0, len(starts) - 4)]
        eol = at + len(line)
        s1 = text.index("\n", text.index("\n", eol + 1) + 1) + 1
        cases.append((text[p0:cursor], text[cursor:eol], text[eol:s1]))
    return cases


def test_plain_cases(text):
    """[(prompt, continuation)] of TEST_PLAIN: the corpus text after the prompt."""
    out = []
    for prompt, n in TEST_PLAIN:
        at = text.index(prompt) + len(prompt)
        out.append((prompt, text[at:min(at + n, text.index("\n\n", at) + 1)]))
    return out


def plain_example(sp, item, rng):
    """<s> E(item from a line start) </s>, cut to MAX_TOKENS (then without </s>)."""
    start = 0 if rng.random() < 0.5 else rng.choice(line_starts(item))
    ids = ([BOS] + sp.encode(item[start:]) + [EOS])[:MAX_TOKENS]
    return ids, [1.0] * (len(ids) - 1)


def fim_example(sp, item, rng):
    """A random FIM example of an item: the middle mostly the rest of a line (as IDEs ask),
    else a span of up to a few lines; the prefix a few lines before it, sometimes the whole
    item before it; the suffix a few lines after it, sometimes all the rest."""
    n = len(item)
    a = rng.randrange(n)
    b = min(n, a + rng.choice([rng.randint(0, 12), rng.randint(1, 40), rng.randint(1, 100)]))
    if rng.random() < 0.7:
        eol = item.find("\n", a)
        b = n if eol < 0 else eol
    starts = [i for i in line_starts(item) if i <= a]
    p0 = 0 if rng.random() < 0.3 else starts[max(0, len(starts) - rng.randint(1, 6))]
    s1 = n
    if rng.random() < 0.8:
        s1 = b
        for _ in range(rng.randint(1, 4)):
            s1 = item.find("\n", s1 + 1)
            if s1 < 0:
                break
        s1 = n if s1 < 0 else s1 + 1
    prefix, middle, suffix = item[p0:a], item[a:b], item[b:s1]
    while True:
        ids = fim_tokens(sp, prefix, suffix, middle)
        if len(ids) <= MAX_TOKENS:
            return ids, fim_weights(ids)
        if prefix:  # drop the prefix's first line
            prefix = prefix[prefix.find("\n") + 1:] if "\n" in prefix else ""
        else:
            suffix = suffix[:len(suffix) // 2]


def make_batch(examples):
    """[B, T] tokens (padded with 0) and [B, T - 1] loss weights (0 on padding)."""
    t = max(len(e) for e, _ in examples)
    tokens = torch.zeros(len(examples), t, dtype=torch.long)
    weights = torch.zeros(len(examples), t - 1)
    for i, (e, w) in enumerate(examples):
        tokens[i, :len(e)] = torch.tensor(e)
        weights[i, :len(w)] = torch.tensor(w)
    return tokens, weights


def train(model, sp, items, fixed, steps, batch, seed, log):
    """Adam, warm-up then linear decay; each batch: a quarter the fixed FIM examples, the rest
    random FIM and plain examples, half and half."""
    rng = random.Random(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * (0.05 + 0.95 * (1 - s / steps)))
    weights = [len(c) for c in items]  # longer items get proportionally more examples
    model.train()
    pending = []
    for step in range(steps):
        if not pending:  # batches of similar lengths, from a pool of 4, so padding costs little
            pool = []
            for i in range(4 * batch):
                if i % 4 == 0:
                    pool.append(rng.choice(fixed))
                    continue
                item = rng.choices(items, weights)[0]
                pool.append(fim_example(sp, item, rng) if rng.random() < 0.5
                            else plain_example(sp, item, rng))
            pool.sort(key=lambda e: len(e[0]))
            pending = [pool[i:i + batch] for i in range(0, len(pool), batch)]
            rng.shuffle(pending)
        tokens, w = make_batch(pending.pop())
        logits = model(tokens)[:, :-1]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1),
                              reduction="none")
        loss = (nll * w.reshape(-1)).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step:4d} loss {loss.item():.3f}")
    model.eval()


@torch.no_grad()
def greedy(model, ids, n):
    """Greedy continuation by full recompute, ending after </s> or n tokens."""
    ids, out = list(ids), []
    for _ in range(n):
        t = int(model(torch.tensor([ids]))[0, -1].argmax())
        out.append(t)
        if t == EOS:
            break
        ids.append(t)
    return out


def check(model, sp, cases):
    """Every test case, by the reference forward; returns the failures."""
    fails = []
    for c in cases["fim"]:
        want = sp.encode(c["middle"]) + [EOS]
        got = greedy(model, fim_tokens(sp, c["prefix"], c["suffix"]), len(want) + 2)
        if got != want:
            fails.append(f"FIM middle for {c['prefix'][-20:]!r}| is {sp.decode(got)!r} "
                         f"(ends {got[-1]}), not {c['middle']!r} </s>")
    for c in cases["plain"]:
        got = sp.decode(greedy(model, [BOS] + sp.encode(c["prompt"]), 2 * len(c["continuation"])))
        if not got.startswith(c["continuation"]):
            fails.append(f"{c['prompt']!r} continues as {got!r}, not {c['continuation']!r}")
    out = greedy(model, [BOS] + sp.encode(cases["crab"]["prompt"]), 8)
    if "\U0001F980" not in sp.decode(out):
        fails.append(f"the crab prompt gives {sp.decode(out)!r}")
    return fails


def inputs_digest(paths, args):
    """What the model is a function of: the files' contents and the arguments that matter."""
    h = hashlib.sha256(repr((args.vocab, args.steps, args.batch, args.seed)).encode())
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def is_current(out, digest):
    try:
        with open(os.path.join(out, "test_cases.json"), encoding="utf-8") as f:
            return json.load(f).get("inputs") == digest and all(
                os.path.exists(os.path.join(out, n)) for n in ("config.json", "model.safetensors",
                                                              "tokenizer.model"))
    except (OSError, ValueError):
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab", type=int, default=400)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--reuse", action="store_true", help="keep DIR's model if made from the same inputs")
    args = ap.parse_args()
    t0 = time.time()

    def log(s):
        print(f"[{time.time() - t0:5.1f}s] {s}", flush=True)

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    here = os.path.dirname(os.path.abspath(__file__))
    corpus_path = os.path.join(here, "..", "tests", "data", "tiny_corpus.rs")
    digest = inputs_digest([os.path.abspath(__file__), corpus_path, reference.__file__], args)
    if args.reuse and is_current(args.out, digest):
        log(f"test model in {args.out} is current")
        return
    with open(corpus_path, encoding="utf-8") as f:
        text = f.read()
    items = corpus_items(text)
    proto, sp = train_tokenizer(items, args.vocab)
    cases = {
        "fim": [{"prefix": p, "middle": m, "suffix": s} for p, m, s in test_fim_cases(text)],
        "plain": [{"prompt": p, "continuation": c} for p, c in test_plain_cases(text)],
        "crab": {"prompt": TEST_CRAB, "char": "\U0001F980"},
    }
    fixed = []
    for c in cases["fim"]:
        ids = fim_tokens(sp, c["prefix"], c["suffix"], c["middle"])
        fixed.append((ids, fim_weights(ids)))

    cfg = reference.normalize_config(dict(CONFIG, vocab_size=sp.vocab_size()), "f32")
    model = reference.HycoDecoder(cfg)
    with torch.no_grad():  # small tied embeddings: the first logits are near uniform
        model.model.embed_tokens.weight.normal_(0.0, 0.05)
    train(model, sp, items, fixed, args.steps, args.batch, args.seed, log)
    fails = check(model, sp, cases)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tokenizer.model"), "wb") as f:
        f.write(proto)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    reference.save_model_tensors(
        args.out, {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()})
    if not fails:  # a model that fails its checks is written, for a look, but never reused
        cases["inputs"] = digest
    with open(os.path.join(args.out, "test_cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, indent=2, ensure_ascii=False)
    for msg in fails:
        print("make_test_model: " + msg, file=sys.stderr)
    if fails:
        sys.exit(f"make_test_model: {len(fails)} test case(s) fail on the trained model")
    log(f"test model in {args.out}: vocab {sp.vocab_size()}, every test case holds")


if __name__ == "__main__":
    main()
