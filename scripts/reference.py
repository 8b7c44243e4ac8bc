#!/usr/bin/python3
"""hyco reference decoder — the independent PyTorch implementation of the model.

Owns:
  * the decoder itself (`HycoDecoder`, an nn.Module built from a config.json dict, whose
    state_dict() keys are exactly the Hugging Face tensor names), reusable by scripts/train.py;
  * the model directory format: config.json + safetensors (single file or sharded with
    model.safetensors.index.json), with a hand-written safetensors reader and writer;
  * the expected outputs that the C++ engine is tested against (`logits`, `suite`).

Written from /work/shared/DESIGN.md ("Model format", "Hybrid attention — the exact semantics"),
not from the engine's code: it is the spec in code, kept plain on purpose.

  * Pre-norm blocks: x += attn(rmsnorm(x)); x += mlp(rmsnorm(x)); logits = lm_head(rmsnorm(x)).
  * RMSNorm: x * rsqrt(mean(x^2) + eps) * w.
  * RoPE as HF Llama ("rotate_half": dims i and i + head_dim/2 form a pair),
    inv_freq[i] = theta^(-2i/head_dim), applied to q and k at their absolute positions.
  * Attention: causal softmax, scale 1/sqrt(head_dim); GQA: query head h reads kv head
    h // (n_heads / n_kv_heads). Per layer (`layer_types`):
      global ("full_attention"):     query i attends keys j <= i;
      local  ("sliding_attention"):  keys j with i - W < j <= i, plus the sinks j < S
                                     (W = sliding_window, S = attention_sinks), each key once.
  * SwiGLU MLP: down(silu(gate(x)) * up(x)).

Precision. The same forward code runs two ways:
  * float64 with all weights upcast from their stored dtype: the reference (`logits`);
  * float32 for f32 models, and for bf16/f16 models a "naive" low-precision forward that rounds
    to the stored dtype after every op the way PyTorch eager would (matmuls/softmax/norm compute in
    f32 and round their outputs; elementwise ops round their results; the norm is computed in f32
    then cast, as in HF) — `logits_naive`, from which tests derive their tolerance
    (FlashAttention-3 rule: error(impl) <= 2 * max|naive - f64| + floor).

Usage (Debian's Python, torch 1.13):
  /usr/bin/python3 scripts/reference.py make-model --config CFG.json --out DIR --seed N \
        [--dtype f32|bf16|f16] [--shards K]
  /usr/bin/python3 scripts/reference.py logits --model DIR --tokens 1,2,3 --out FILE.safetensors \
        [--greedy 32]
  /usr/bin/python3 scripts/reference.py suite --out DIR
  /usr/bin/python3 scripts/reference.py selftest

expected.safetensors (from `logits`, and one per suite model): tokens [n] I32 (the prompt),
logits [n, V] F32 (float64 forward rounded to f32), logits_naive [n, V] F32, greedy [G] I32
(greedy continuation of the float64 model, EOS not special), greedy_gap [G] F32 (top-1 minus
top-2 logit at each greedy step); __metadata__ max_naive_err = max|logits_naive - f64|.
`suite --out DIR` writes DIR/<name>/{config.json, weights, expected.safetensors} and
DIR/suite.json, whose model_dir / expected paths are relative to DIR.
"""

import argparse
import json
import math
import os
import struct
import sys
import time

if __name__ == "__main__":
    # torch runs its own thread pool (see main); an OpenBLAS pool on top of it made this
    # tiny-model forward 4-5x slower on 2 cores (measured).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.checkpoint

GLOBAL = "full_attention"
LOCAL = "sliding_attention"

# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------

ARCHS = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
DTYPE_NAMES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}
TORCH_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16,
                "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def layer_kinds(cfg):
    """The attention kind of every layer: `layer_types` when present, else what transformers
    derives for the family (Mistral: all sliding when sliding_window is set; Qwen2: sliding from
    max_window_layers on when use_sliding_window; Llama: all full)."""
    n = cfg["num_hidden_layers"]
    if cfg.get("layer_types") is not None:
        kinds = list(cfg["layer_types"])
        if len(kinds) != n:
            raise ValueError(f"layer_types has {len(kinds)} entries for {n} layers")
        for k in kinds:
            if k not in (GLOBAL, LOCAL):
                raise ValueError(f"unknown layer type {k!r}")
        if LOCAL in kinds and not cfg.get("sliding_window"):
            raise ValueError("sliding_attention layers need sliding_window")
        return kinds
    mt = cfg.get("model_type", "llama")
    w = cfg.get("sliding_window")
    if mt == "mistral" and w:
        return [LOCAL] * n
    if mt == "qwen2" and w and cfg.get("use_sliding_window"):
        first = cfg.get("max_window_layers", 0)
        return [LOCAL if i >= first else GLOBAL for i in range(n)]
    return [GLOBAL] * n


def normalize_config(cfg, dtype=None):
    """Fill in derived keys so that config.json is complete and explicit."""
    cfg = dict(cfg)
    mt = cfg.setdefault("model_type", "llama")
    if mt not in ARCHS:
        raise ValueError(f"model_type {mt!r} not one of {sorted(ARCHS)}")
    cfg.setdefault("architectures", [ARCHS[mt]])
    cfg.setdefault("num_key_value_heads", cfg["num_attention_heads"])
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    cfg.setdefault("rms_norm_eps", 1e-5)
    cfg.setdefault("rope_theta", 10000.0)
    cfg.setdefault("max_position_embeddings", 4096)
    cfg.setdefault("tie_word_embeddings", False)
    cfg.setdefault("sliding_window", None)
    cfg["layer_types"] = layer_kinds(cfg)
    if mt == "llama":
        cfg.setdefault("attention_bias", False)
    if mt == "qwen2":
        # transformers' Qwen2 honours sliding_window only with use_sliding_window.
        cfg.setdefault("use_sliding_window", LOCAL in cfg["layer_types"])
    cfg.setdefault("attention_sinks", 0)
    cfg.setdefault("bos_token_id", 1)
    cfg.setdefault("eos_token_id", 2)
    if dtype is not None:
        cfg["torch_dtype"] = DTYPE_NAMES[dtype]
    cfg.setdefault("torch_dtype", "float32")
    if cfg["num_attention_heads"] % cfg["num_key_value_heads"]:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    if cfg["head_dim"] % 2:
        raise ValueError("head_dim must be even for RoPE")
    if cfg.get("rope_scaling"):
        raise ValueError("rope_scaling is not part of the hyco model format")
    first = ("architectures", "model_type")
    return dict({k: cfg[k] for k in first}, **{k: v for k, v in cfg.items() if k not in first})


def has_qkv_bias(cfg):
    return cfg["model_type"] == "qwen2" or bool(cfg.get("attention_bias", False))


def has_o_bias(cfg):
    # Qwen2 has q/k/v bias only; Llama's attention_bias covers all four projections.
    return cfg["model_type"] != "qwen2" and bool(cfg.get("attention_bias", False))


# ---------------------------------------------------------------------------------------------
# The decoder
# ---------------------------------------------------------------------------------------------

def no_rounding(t):
    return t


def rounding_to(dtype):
    """Rounds a tensor to `dtype` and back: emulates storing an op's result in that dtype."""
    if dtype is None:
        return no_rounding
    return lambda t: t.to(dtype).to(t.dtype)


def attention_mask(q_pos, k_pos, kind, window, sinks):
    """Boolean [Tq, Tk]: True where the query at absolute position q_pos[i] may read the key at
    absolute position k_pos[j]. Exactly DESIGN.md's definition."""
    i = q_pos[:, None]
    j = k_pos[None, :]
    causal = j <= i
    if kind == GLOBAL:
        return causal
    in_window = j > i - window
    is_sink = j < sinks
    return causal & (in_window | is_sink)


def rope_cos_sin(positions, head_dim, theta, dtype):
    """cos, sin of shape [T, head_dim] (the half-size angles duplicated, HF layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=dtype,
                                             device=positions.device) / head_dim))
    angles = positions.to(dtype)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class RMSNorm(torch.nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x, rnd=no_rounding):
        # HF: the normalization is computed in float32 (here: in the compute dtype, f32 or f64),
        # cast to the working dtype, then multiplied by the weight.
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return rnd(self.weight * rnd(normed))


class Attention(torch.nn.Module):
    def __init__(self, cfg, kind):
        super().__init__()
        d = cfg["hidden_size"]
        self.n_heads = cfg["num_attention_heads"]
        self.n_kv_heads = cfg["num_key_value_heads"]
        self.head_dim = cfg["head_dim"]
        self.kind = kind
        self.window = cfg.get("sliding_window") or 0
        self.sinks = cfg.get("attention_sinks") or 0
        qkv_bias, o_bias = has_qkv_bias(cfg), has_o_bias(cfg)
        self.q_proj = torch.nn.Linear(d, self.n_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = torch.nn.Linear(d, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = torch.nn.Linear(d, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = torch.nn.Linear(self.n_heads * self.head_dim, d, bias=o_bias)
        # Training only (HycoDecoder.use_sdpa): the same mask through torch >= 2's fused
        # F.scaled_dot_product_attention instead of the written-out softmax below.
        self.sdpa = False

    def forward(self, x, cos, sin, positions, rnd=no_rounding):
        *batch, t, _ = x.shape
        hd = self.head_dim
        # [..., T, H*hd] -> [..., H, T, hd]
        q = rnd(self.q_proj(x)).view(*batch, t, self.n_heads, hd).transpose(-2, -3)
        k = rnd(self.k_proj(x)).view(*batch, t, self.n_kv_heads, hd).transpose(-2, -3)
        v = rnd(self.v_proj(x)).view(*batch, t, self.n_kv_heads, hd).transpose(-2, -3)

        cos, sin = rnd(cos), rnd(sin)
        q = rnd(rnd(q * cos) + rnd(rotate_half(q) * sin))
        k = rnd(rnd(k * cos) + rnd(rotate_half(k) * sin))

        # GQA: query head h reads kv head h // group.
        group = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(group, dim=-3)
        v = v.repeat_interleave(group, dim=-3)

        if self.sdpa:
            out = self.fused_attention(q, k, v, positions, rnd)
            return rnd(self.o_proj(out.transpose(-2, -3).reshape(*batch, t, self.n_heads * hd)))

        scores = rnd(rnd(q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(hd)))
        allowed = attention_mask(positions, positions, self.kind, self.window, self.sinks)
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = rnd(torch.softmax(scores, dim=-1))
        out = rnd(probs @ v)                                   # [..., H, T, hd]
        out = out.transpose(-2, -3).reshape(*batch, t, self.n_heads * hd)
        return rnd(self.o_proj(out))

    def fused_attention(self, q, k, v, positions, rnd):
        """softmax(q k^T / sqrt(hd) + mask) v by F.scaled_dot_product_attention: [..., H, T, hd].
        Global layers take the kernel's own causal mask (the same mask for the strictly
        increasing positions that forward uses), local layers the boolean attention_mask."""
        if rnd is not no_rounding:
            raise ValueError("the fused attention path has no per-op rounding emulation")
        q, k = q.to(v.dtype), k.to(v.dtype)  # RoPE in the f32 cos/sin promoted them under autocast
        if self.kind == GLOBAL:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        allowed = attention_mask(positions, positions, self.kind, self.window, self.sinks)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


class MLP(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, f = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = torch.nn.Linear(d, f, bias=False)
        self.up_proj = torch.nn.Linear(d, f, bias=False)
        self.down_proj = torch.nn.Linear(f, d, bias=False)

    def forward(self, x, rnd=no_rounding):
        gate = rnd(F.silu(rnd(self.gate_proj(x))))
        up = rnd(self.up_proj(x))
        return rnd(self.down_proj(rnd(gate * up)))


class DecoderLayer(torch.nn.Module):
    def __init__(self, cfg, kind):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.self_attn = Attention(cfg, kind)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, positions, rnd=no_rounding):
        x = rnd(x + self.self_attn(self.input_layernorm(x, rnd), cos, sin, positions, rnd))
        x = rnd(x + self.mlp(self.post_attention_layernorm(x, rnd), rnd))
        return x


class Backbone(torch.nn.Module):
    """`model.*` in the HF naming."""

    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = torch.nn.ModuleList(DecoderLayer(cfg, kind) for kind in layer_kinds(cfg))
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class HycoDecoder(torch.nn.Module):
    """The hyco decoder. state_dict() keys are the HF tensor names (lm_head.weight absent when
    tie_word_embeddings). forward(tokens [..., T]) -> logits [..., T, V] in the parameters' dtype.
    """

    def __init__(self, cfg):
        super().__init__()
        self.config = normalize_config(cfg)
        self.model = Backbone(self.config)
        self.tied = bool(self.config["tie_word_embeddings"])
        if not self.tied:
            self.lm_head = torch.nn.Linear(self.config["hidden_size"], self.config["vocab_size"],
                                           bias=False)
        # Training only: recompute each layer's activations in the backward pass
        # (torch.utils.checkpoint) instead of keeping them. Off by default.
        self.gradient_checkpointing = False

    def use_sdpa(self, on=True):
        """Training only: attention through F.scaled_dot_product_attention (torch >= 2.0; fused
        flash / memory-efficient kernels on CUDA) with exactly the same mask. Off by default:
        the written-out attention is the reference."""
        if on and not hasattr(F, "scaled_dot_product_attention"):
            raise RuntimeError(f"torch {torch.__version__} has no scaled_dot_product_attention")
        for layer in self.model.layers:
            layer.self_attn.sdpa = bool(on)
        return self

    def output_weight(self):
        return self.model.embed_tokens.weight if self.tied else self.lm_head.weight

    def forward(self, tokens, positions=None, rnd=no_rounding):
        """tokens: int tensor [..., T]; positions: absolute positions [T] (default 0..T-1);
        rnd: rounding applied after each op (see `rounding_to`), identity by default."""
        t = tokens.shape[-1]
        if positions is None:
            positions = torch.arange(t, device=tokens.device)
        dtype = self.model.embed_tokens.weight.dtype
        cos, sin = rope_cos_sin(positions, self.config["head_dim"], self.config["rope_theta"],
                                dtype)
        x = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, positions, rnd,
                                                      use_reentrant=False)
            else:
                x = layer(x, cos, sin, positions, rnd)
        x = self.model.norm(x, rnd)
        return rnd(F.linear(x, self.output_weight()))

    @classmethod
    def from_dir(cls, model_dir, dtype=torch.float64):
        """Loads a model directory; weights are converted from their stored dtype to `dtype`."""
        cfg = read_config(model_dir)
        model = cls(cfg)
        tensors = load_model_tensors(model_dir)
        model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=True)
        return model.to(dtype).eval()


def read_config(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return normalize_config(json.load(f))


def stored_dtype(cfg):
    return TORCH_DTYPES[cfg.get("torch_dtype", "float32")]


# ---------------------------------------------------------------------------------------------
# safetensors, by hand
# ---------------------------------------------------------------------------------------------

ST_DTYPES = {  # safetensors name -> (torch dtype, numpy dtype used to carry the bytes)
    "F64": (torch.float64, np.float64),
    "F32": (torch.float32, np.float32),
    "F16": (torch.float16, np.float16),
    "BF16": (torch.bfloat16, np.int16),
    "I64": (torch.int64, np.int64),
    "I32": (torch.int32, np.int32),
    "I16": (torch.int16, np.int16),
    "I8": (torch.int8, np.int8),
    "U8": (torch.uint8, np.uint8),
}
TORCH_TO_ST = {v[0]: k for k, v in ST_DTYPES.items()}


def tensor_bytes(t):
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)          # raw bits
    a = t.numpy()
    return a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


def write_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> torch tensor. Tensors are laid out contiguously (no holes, as the
    format requires), larger element sizes first so every tensor is naturally aligned; the header
    is padded with spaces so the data starts on an 8-byte boundary."""
    names = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header = {"__metadata__": dict({"format": "pt"}, **(metadata or {}))}
    blobs, offset = [], 0
    for name in names:
        t = tensors[name]
        data = tensor_bytes(t)
        header[name] = {"dtype": TORCH_TO_ST[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-(8 + len(hjson)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)


def read_safetensors(path, with_metadata=False):
    """Returns dict name -> torch tensor (and the __metadata__ dict when asked)."""
    with open(path, "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen])
    data = memoryview(raw)[8 + hlen:]
    meta = header.pop("__metadata__", {})
    out = {}
    for name, info in header.items():
        tdtype, ndtype = ST_DTYPES[info["dtype"]]
        a, b = info["data_offsets"]
        if not (0 <= a <= b <= len(data)):
            raise ValueError(f"{path}: {name} offsets {a},{b} outside the data ({len(data)})")
        arr = np.frombuffer(data[a:b], dtype=np.dtype(ndtype).newbyteorder("<"))
        t = torch.from_numpy(arr.astype(ndtype)).reshape(info["shape"])
        if tdtype == torch.bfloat16:
            t = t.view(torch.bfloat16)
        if t.numel() * t.element_size() != b - a:
            raise ValueError(f"{path}: {name} size does not match its shape")
        out[name] = t
    return (out, meta) if with_metadata else out


def save_model_tensors(model_dir, tensors, shards=1):
    """Writes model.safetensors, or K shards model-0000i-of-0000K.safetensors + index."""
    os.makedirs(model_dir, exist_ok=True)
    for fn in os.listdir(model_dir):  # stale weights from an earlier run would confuse loaders
        if fn.startswith("model") and (fn.endswith(".safetensors")
                                       or fn == "model.safetensors.index.json"):
            os.remove(os.path.join(model_dir, fn))
    if shards <= 1:
        write_safetensors(os.path.join(model_dir, "model.safetensors"), tensors)
        return
    names = list(tensors)  # model order: embeddings, layer 0, layer 1, ..., norm, lm_head
    if shards > len(names):
        raise ValueError("more shards than tensors")
    sizes = [tensors[n].numel() * tensors[n].element_size() for n in names]
    total = sum(sizes)
    groups, cur, acc = [], [], 0
    for i, (n, s) in enumerate(zip(names, sizes)):
        cur.append(n)
        acc += s
        left_names, left_groups = len(names) - i - 1, shards - len(groups) - 1
        if left_groups > 0 and (acc >= total * (len(groups) + 1) / shards
                                or left_names == left_groups):
            groups.append(cur)
            cur = []
    groups.append(cur)
    assert len(groups) == shards and all(groups)
    weight_map = {}
    for k, group in enumerate(groups):
        fn = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(os.path.join(model_dir, fn), {n: tensors[n] for n in group})
        weight_map.update({n: fn for n in group})
    with open(os.path.join(model_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def load_model_tensors(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if not os.path.exists(index):
        return read_safetensors(os.path.join(model_dir, "model.safetensors"))
    with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    out = {}
    for fn in sorted(set(weight_map.values())):
        part = read_safetensors(os.path.join(model_dir, fn))
        for name, t in part.items():
            if weight_map.get(name) != fn:
                raise ValueError(f"{fn} holds {name}, which the index puts elsewhere")
            out[name] = t
    missing = set(weight_map) - set(out)
    if missing:
        raise ValueError(f"index names tensors no shard holds: {sorted(missing)[:5]}")
    return out


# ---------------------------------------------------------------------------------------------
# Random models
# ---------------------------------------------------------------------------------------------

def random_weights(cfg, seed):
    """Weights with well separated logits: projections ~ N(0, 1/fan_in), norm weights 1 ± 0.1,
    biases ~ N(0, 0.5^2), embeddings ~ N(0, 1), lm_head (or the tied embedding) scaled so that
    logits have a standard deviation of about 3. Drawn in float32, in state_dict order."""
    gen = torch.Generator().manual_seed(seed)
    skeleton = HycoDecoder(cfg)
    d = cfg["hidden_size"]
    out = {}
    for name, p in skeleton.state_dict().items():
        shape = tuple(p.shape)
        z = torch.randn(shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight"):
            w = 1.0 + 0.1 * z
        elif name.endswith(".bias"):
            w = 0.5 * z
        elif name == "model.embed_tokens.weight":
            w = z * (3.0 / math.sqrt(d) if skeleton.tied else 1.0)
        elif name == "lm_head.weight":
            w = z * (3.0 / math.sqrt(d))
        else:  # a projection [out, in]
            w = z / math.sqrt(shape[1])
        out[name] = w
    return out


def make_model(cfg, out_dir, seed, dtype="f32", shards=1):
    cfg = normalize_config(cfg, dtype)
    tensors = {k: v.to(TORCH_DTYPES[dtype]) for k, v in random_weights(cfg, seed).items()}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save_model_tensors(out_dir, tensors, shards)
    return cfg


# ---------------------------------------------------------------------------------------------
# Expected outputs
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def naive_logits(model_dir, tokens):
    """The forward in the model's stored precision (f32: plain float32; bf16/f16: float32 math
    rounded to the stored dtype after every op)."""
    dt = stored_dtype(read_config(model_dir))
    model = HycoDecoder.from_dir(model_dir, torch.float32)
    rnd = no_rounding if dt == torch.float32 else rounding_to(dt)
    return model(torch.tensor(tokens), rnd=rnd)


@torch.no_grad()
def greedy_decode(model, tokens, steps, stop_below=None):
    """Greedy continuation by full recompute; returns (tokens [G], top1 - top2 gaps [G]).
    With stop_below, stops early at the first gap below it (used to reject prompts)."""
    seq = list(tokens)
    out, gaps = [], []
    for _ in range(steps):
        if stop_below is not None and gaps and gaps[-1] < stop_below:
            break
        last = model(torch.tensor(seq))[-1]
        top = torch.topk(last, 2)
        nxt = int(top.indices[0])
        out.append(nxt)
        gaps.append(float(top.values[0] - top.values[1]))
        seq.append(nxt)
    return out, gaps


@torch.no_grad()
def expected_outputs(model_dir, tokens, greedy=32, decoded=None):
    """The tensors of expected.safetensors and max|naive - f64|. `decoded`: a (tokens, gaps)
    result of greedy_decode for this model and prompt, to avoid decoding twice."""
    model = HycoDecoder.from_dir(model_dir, torch.float64)
    ref = model(torch.tensor(tokens))
    naive = naive_logits(model_dir, tokens)
    g, gaps = decoded if decoded is not None else greedy_decode(model, tokens, greedy)
    return {
        "tokens": torch.tensor(tokens, dtype=torch.int32),
        "logits": ref.to(torch.float32),
        "logits_naive": naive.to(torch.float32),
        "greedy": torch.tensor(g, dtype=torch.int32),
        "greedy_gap": torch.tensor(gaps, dtype=torch.float32),
    }, float((naive.double() - ref).abs().max())


def write_expected(path, tensors, naive_err):
    write_safetensors(path, tensors, {"max_naive_err": repr(naive_err)})


# ---------------------------------------------------------------------------------------------
# The test suite
# ---------------------------------------------------------------------------------------------

def L(n):
    return [LOCAL] * n


def G(n):
    return [GLOBAL] * n


def base(**kw):
    cfg = dict(model_type="llama", vocab_size=256, hidden_size=64, intermediate_size=160,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, head_dim=16,
               rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=2048,
               tie_word_embeddings=False, sliding_window=None, attention_sinks=0)
    cfg.update(kw)
    cfg.setdefault("layer_types", G(cfg["num_hidden_layers"]))
    return cfg


SUITE = [
    # name, config, dtype, shards, model seed, description
    ("global", base(), "f32", 1, 11,
     "Llama, 2 global layers, 4 heads x 16, MHA"),
    ("local", base(model_type="mistral", vocab_size=320, num_hidden_layers=3,
                   num_key_value_heads=2, sliding_window=8, layer_types=L(3)), "f32", 1, 12,
     "Mistral, 3 local layers with window 8 (the prompt wraps the ring many times), GQA 4/2"),
    ("hybrid", base(vocab_size=384, hidden_size=96, intermediate_size=256, num_hidden_layers=4,
                    head_dim=24, num_key_value_heads=2, sliding_window=16,
                    layer_types=L(3) + G(1), rope_theta=500000.0), "f32", 1, 13,
     "Llama, layers local,local,local,global, window 16, 4 heads x 24, GQA 4/2"),
    ("sinks", base(num_hidden_layers=3, sliding_window=12, attention_sinks=4,
                   layer_types=[LOCAL, GLOBAL, LOCAL]), "f32", 1, 14,
     "Llama, layers local,global,local, window 12 + 4 attention sinks"),
    ("gqa", base(vocab_size=448, hidden_size=128, intermediate_size=352, num_attention_heads=8,
                 num_key_value_heads=2, head_dim=16), "f32", 1, 15,
     "Llama, 2 global layers, 8 query heads / 2 kv heads x 16"),
    ("narrow", base(hidden_size=128, intermediate_size=320, num_attention_heads=2,
                    num_key_value_heads=2, head_dim=16, sliding_window=16,
                    layer_types=[LOCAL, GLOBAL]), "f32", 1, 16,
     "Llama, hidden 128, attention width 2 x 16 = 32, layers local(16),global"),
    ("tied", base(vocab_size=288, tie_word_embeddings=True, num_key_value_heads=2,
                  sliding_window=16, layer_types=[GLOBAL, LOCAL]), "f32", 1, 17,
     "Llama, tie_word_embeddings (no lm_head tensor), layers global,local(16), GQA 4/2"),
    ("qkv_bias", base(model_type="qwen2", vocab_size=512, num_key_value_heads=2,
                      rope_theta=1000000.0, rms_norm_eps=1e-6), "f32", 1, 18,
     "Qwen2, q/k/v bias (no o_proj bias), 2 global layers, GQA 4/2"),
    ("llama_bias", base(attention_bias=True, head_dim=32, num_attention_heads=2,
                        num_key_value_heads=1, intermediate_size=192), "f32", 1, 19,
     "Llama attention_bias: q/k/v/o bias, 2 global layers, 2 heads x 32, MQA"),
    ("sharded_bf16", base(vocab_size=320, hidden_size=96, intermediate_size=256,
                          num_hidden_layers=4, head_dim=24, num_key_value_heads=2,
                          sliding_window=16, layer_types=L(3) + G(1)), "bf16", 3, 20,
     "bf16 weights in 3 shards + index, layers local,local,local,global, window 16"),
    ("f16", base(vocab_size=256, num_key_value_heads=2, sliding_window=16,
                 layer_types=[LOCAL, GLOBAL]), "f16", 1, 21,
     "f16 weights, single file, layers local(16),global, GQA 4/2"),
]

GREEDY_STEPS = 32
MIN_GAP = 1e-3   # every suite prompt: min greedy gap above this; preferred, in this order:
GAP_TARGETS = {"f32": [1e-2, MIN_GAP],                     # room for TF32-like engine error
               "bf16": [0.25, 0.1, 0.03, 1e-2, MIN_GAP],   # 0.25 ~ 2x the naive bf16 error
               "f16": [0.25, 0.1, 0.03, 1e-2, MIN_GAP]}


def suite_prompt(cfg, seed, attempt):
    """bos followed by 79..159 random ids (never bos/eos/0), drawn from (seed, attempt)."""
    gen = torch.Generator().manual_seed(1000 * seed + attempt)
    n = int(torch.randint(80, 161, (1,), generator=gen))
    return [cfg["bos_token_id"]] + torch.randint(3, cfg["vocab_size"], (n - 1,),
                                                 generator=gen).tolist()


def make_suite(out_dir, greedy=GREEDY_STEPS, verbose=True):
    os.makedirs(out_dir, exist_ok=True)
    entries = []
    t_all = time.time()
    for name, cfg, dtype, shards, seed, desc in SUITE:
        t0 = time.time()
        mdir = os.path.join(out_dir, name)
        cfg = make_model(cfg, mdir, seed, dtype, shards)
        model = HycoDecoder.from_dir(mdir, torch.float64)
        # Prompt: bos + random ids, re-drawn until every greedy step's top-1/top-2 gap exceeds
        # the first reachable target of GAP_TARGETS (large for bf16/f16 models, so that an
        # engine computing in reduced precision can still be expected to reproduce them).
        found = None
        for target in GAP_TARGETS[dtype]:
            for attempt in range(30):
                prompt = suite_prompt(cfg, seed, attempt)
                g, gaps = greedy_decode(model, prompt, greedy, stop_below=target)
                if len(g) == greedy and min(gaps, default=math.inf) > target:
                    found = (min(gaps, default=math.inf), prompt, attempt, (g, gaps))
                    break
            if found:
                break
        if found is None:
            raise RuntimeError(f"{name}: no prompt with min greedy gap > {MIN_GAP}")
        min_gap, prompt, attempt, decoded = found
        tensors, naive_err = expected_outputs(mdir, prompt, greedy, decoded)
        exp_path = os.path.join(mdir, "expected.safetensors")
        write_expected(exp_path, tensors, naive_err)
        entries.append({"name": name, "model_dir": name,
                        "expected": f"{name}/expected.safetensors", "prompt": prompt,
                        "dtype": dtype, "description": desc,
                        "min_greedy_gap": min_gap, "max_naive_err": naive_err})
        if verbose:
            print(f"{name:13s} {dtype:4s} n={len(prompt):3d} prompt_try={attempt} "
                  f"min_greedy_gap={min_gap:.4f} max|naive-f64|={naive_err:.2e} "
                  f"({time.time() - t0:.2f} s)", flush=True)
    with open(os.path.join(out_dir, "suite.json"), "w") as f:
        json.dump(entries, f, indent=1)
    if verbose:
        print(f"suite: {len(entries)} configurations in {out_dir} ({time.time() - t_all:.1f} s)")
    return entries


# ---------------------------------------------------------------------------------------------
# Self-test
# ---------------------------------------------------------------------------------------------

def loop_logits(model_dir, tokens):
    """A second, deliberately different reading of the spec for the self-test: numpy float64,
    query by query and head by head over explicit key lists, RoPE as pair rotations."""
    cfg = read_config(model_dir)
    w = {k: v.double().numpy() for k, v in load_model_tensors(model_dir).items()}
    get = lambda name: w.get(name)  # noqa: E731  (None when the tensor is absent)
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    win, sinks = cfg.get("sliding_window") or 0, cfg.get("attention_sinks") or 0
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]

    def norm(x, wt):
        return np.stack([r / math.sqrt(float(np.mean(r * r)) + eps) * wt for r in x])

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        return y + get(name + ".bias") if get(name + ".bias") is not None else y

    def rope(x, pos):  # x [H, hd]: rotate pairs (p, p + hd/2) by pos * theta^(-2p/hd)
        y = x.copy()
        for p in range(hd // 2):
            ang = pos * theta ** (-2.0 * p / hd)
            a, b = x[:, p], x[:, p + hd // 2]
            y[:, p] = a * math.cos(ang) - b * math.sin(ang)
            y[:, p + hd // 2] = b * math.cos(ang) + a * math.sin(ang)
        return y

    t = len(tokens)
    x = w["model.embed_tokens.weight"][tokens]
    for li, kind in enumerate(cfg["layer_types"]):
        pre = f"model.layers.{li}."
        h = norm(x, w[pre + "input_layernorm.weight"])
        q = lin(h, pre + "self_attn.q_proj").reshape(t, nh, hd)
        k = lin(h, pre + "self_attn.k_proj").reshape(t, nkv, hd)
        v = lin(h, pre + "self_attn.v_proj").reshape(t, nkv, hd)
        q = np.stack([rope(q[i], i) for i in range(t)])
        k = np.stack([rope(k[i], i) for i in range(t)])
        att = np.zeros((t, nh, hd))
        for i in range(t):
            keys = [j for j in range(i + 1)
                    if kind == GLOBAL or j > i - win or j < sinks]
            for hh in range(nh):
                kvh = hh // (nh // nkv)
                s = np.array([q[i, hh] @ k[j, kvh] for j in keys]) / math.sqrt(hd)
                pr = np.exp(s - s.max())
                pr /= pr.sum()
                att[i, hh] = sum(p_ * v[j, kvh] for p_, j in zip(pr, keys))
        x = x + lin(att.reshape(t, nh * hd), pre + "self_attn.o_proj")
        h = norm(x, w[pre + "post_attention_layernorm.weight"])
        g = lin(h, pre + "mlp.gate_proj")
        x = x + lin(g / (1 + np.exp(-g)) * lin(h, pre + "mlp.up_proj"), pre + "mlp.down_proj")
    x = norm(x, w["model.norm.weight"])
    out_w = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return torch.from_numpy(x @ out_w.T)


def selftest():
    import tempfile
    torch.manual_seed(0)
    ok = True

    def check(cond, what):
        nonlocal ok
        print(("ok   " if cond else "FAIL ") + what)
        ok &= bool(cond)

    # 1. the mask is the text of DESIGN.md, query by query
    for kind, w, s in [(GLOBAL, 0, 0), (LOCAL, 1, 0), (LOCAL, 5, 0), (LOCAL, 5, 3), (LOCAL, 4, 7)]:
        pos = torch.arange(40)
        m = attention_mask(pos, pos, kind, w, s)
        good = True
        for i in range(40):
            keys = set(range(i + 1)) if kind == GLOBAL else \
                set(range(max(0, i - w + 1), i + 1)) | set(range(min(s, i + 1)))
            good &= set(torch.nonzero(m[i]).flatten().tolist()) == keys
        check(good, f"mask {kind} W={w} S={s} matches the per-query key sets")

    tokens = torch.randint(0, 256, (50,)).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        def build(name, cfg, dtype="f32", shards=1, seed=5):
            d = os.path.join(tmp, name)
            make_model(cfg, d, seed, dtype, shards)
            return d

        def logits64(d, toks=tokens):
            with torch.no_grad():
                return HycoDecoder.from_dir(d, torch.float64)(torch.tensor(toks))

        ref = logits64(build("g", base(num_hidden_layers=3, layer_types=G(3))))
        # 2. local with window >= prompt length is global; sinks=0 is no sinks
        wide = logits64(build("w", base(num_hidden_layers=3, sliding_window=50,
                                        layer_types=L(3))))
        check(torch.equal(ref, wide), "local layers with window >= prompt length == global")
        a = logits64(build("s0", base(num_hidden_layers=3, sliding_window=8, attention_sinks=0,
                                      layer_types=L(3))))
        b = logits64(build("sn", base(num_hidden_layers=3, sliding_window=8,
                                      layer_types=L(3))))
        check(torch.equal(a, b), "attention_sinks 0 == no sinks key")
        check((a - ref).abs().max() > 1e-3, "window 8 differs from global")
        c = logits64(build("s3", base(num_hidden_layers=3, sliding_window=8, attention_sinks=3,
                                      layer_types=L(3))))
        check((a - c).abs().max() > 1e-3, "sinks 3 differ from no sinks")
        check(torch.equal(a[:8], c[:8]) and torch.equal(a[:8], ref[:8]),
              "before the window fills, local == local+sinks == global")
        c2 = logits64(build("sw", base(num_hidden_layers=3, sliding_window=8, attention_sinks=50,
                                       layer_types=L(3))))
        check(torch.equal(c2, ref), "sinks >= prompt length == global")
        # 3. positions are absolute and the model is causal: a prefix gives the same logits
        d_h = build("h", base(num_hidden_layers=4, sliding_window=6, attention_sinks=2,
                              num_key_value_heads=2, layer_types=L(3) + G(1)))
        full = logits64(d_h)
        pre = logits64(d_h, tokens[:30])
        check((full[:30] - pre).abs().max() < 1e-12, "causality: prefix logits unchanged")
        # 4. float64 vs naive float32
        naive = naive_logits(d_h, tokens)
        err = float((naive.double() - full).abs().max())
        check(err < 1e-4, f"naive f32 vs f64: max err {err:.2e} (logit std "
                          f"{float(full.std()):.2f})")
        # 4b. a second reading of the spec (loops over explicit key lists) agrees
        for nm, cfg, dt in [
                ("l1", base(num_hidden_layers=4, sliding_window=5, attention_sinks=2,
                            num_attention_heads=4, num_key_value_heads=2, attention_bias=True,
                            layer_types=[LOCAL, GLOBAL, LOCAL, LOCAL]), "f32"),
                ("l2", base(model_type="qwen2", tie_word_embeddings=True, sliding_window=7,
                            num_attention_heads=8, num_key_value_heads=2, head_dim=8,
                            rope_theta=1e6, layer_types=[GLOBAL, LOCAL]), "bf16"),
                ("l3", base(model_type="mistral", sliding_window=4, num_attention_heads=2,
                            num_key_value_heads=1, head_dim=32, layer_types=None), "f16")]:
            d_l = build(nm, cfg, dt)
            toks = tokens[:30]
            e = float((loop_logits(d_l, toks) - logits64(d_l, toks)).abs().max())
            check(e < 1e-9, f"loop reference == module ({nm}: {read_config(d_l)['layer_types']},"
                            f" {dt}): max diff {e:.1e}")
        # 5. a batch forward equals the single-sequence forward
        m = HycoDecoder.from_dir(d_h, torch.float64)
        with torch.no_grad():
            bt = m(torch.tensor([tokens, tokens[::-1]]))
        check(torch.equal(bt[0], full) or (bt[0] - full).abs().max() < 1e-12,
              "batched forward == single forward")
        # 6. sharded bf16 reads back identical tensors; state_dict names are HF names
        d_s = build("sh", base(num_hidden_layers=4, sliding_window=6, layer_types=L(3) + G(1)),
                    "bf16", 3, seed=9)
        d_1 = build("s1", base(num_hidden_layers=4, sliding_window=6, layer_types=L(3) + G(1)),
                    "bf16", 1, seed=9)
        ts, t1 = load_model_tensors(d_s), load_model_tensors(d_1)
        check(set(ts) == set(t1) and all(torch.equal(ts[k].view(torch.int16),
                                                     t1[k].view(torch.int16)) for k in ts)
              and all(v.dtype == torch.bfloat16 for v in ts.values()),
              "3 shards + index == single file, bit for bit (bf16)")
        idx = json.load(open(os.path.join(d_s, "model.safetensors.index.json")))
        sizes = sum(v.numel() * 2 for v in ts.values())
        check(idx["metadata"]["total_size"] == sizes and len(set(idx["weight_map"].values())) == 3,
              "index total_size and 3 files")
        w32 = {k: v.to(torch.bfloat16).float() for k, v in random_weights(
            read_config(d_s), 9).items()}
        check(all(torch.equal(ts[k].float(), w32[k]) for k in ts), "bf16 = rounded f32 init")
        # 7. naive bf16 error is larger than f32's but bounded
        toks = tokens[:40]
        ref_s = logits64(d_s, toks)
        err_bf = float((naive_logits(d_s, toks).double() - ref_s).abs().max())
        check(1e-3 < err_bf < 1.0, f"naive bf16 vs f64: max err {err_bf:.2e}")
        # 8. safetensors round trip of every dtype, zero-size tensors included
        p = os.path.join(tmp, "x.safetensors")
        xs = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16),
              "c": torch.randn(2, 2).half(), "d": torch.arange(5, dtype=torch.int32),
              "e": torch.zeros(0, dtype=torch.int32), "f": torch.randn(4).double()}
        write_safetensors(p, xs)
        ys = read_safetensors(p)
        check(all(ys[k].dtype == xs[k].dtype and ys[k].shape == xs[k].shape
                  and torch.equal(ys[k].float(), xs[k].float()) for k in xs),
              "safetensors round trip F32/BF16/F16/I32/F64")
        raw = open(p, "rb").read()
        hlen = struct.unpack("<Q", raw[:8])[0]
        hdr = json.loads(raw[8:8 + hlen])
        spans = sorted(v["data_offsets"] for k, v in hdr.items() if k != "__metadata__")
        contiguous = spans[0][0] == 0 and all(x[1] == y[0] for x, y in zip(spans, spans[1:])) \
            and spans[-1][1] == len(raw) - 8 - hlen
        check(contiguous and (8 + hlen) % 8 == 0, "safetensors data has no holes, 8-aligned")
        # 9. tied model has no lm_head tensor; state_dict keys are HF names
        d_t = build("t", base(tie_word_embeddings=True))
        check("lm_head.weight" not in load_model_tensors(d_t), "tied: no lm_head tensor")
        d_q = build("q", base(model_type="qwen2"))
        names = set(load_model_tensors(d_q))
        check("model.layers.1.self_attn.k_proj.bias" in names
              and "model.layers.1.self_attn.o_proj.bias" not in names, "qwen2: q/k/v bias only")
        d_lb = build("lb", base(attention_bias=True))
        check("model.layers.0.self_attn.o_proj.bias" in set(load_model_tensors(d_lb)),
              "llama attention_bias: o_proj bias too")
        # 10. greedy == argmax of a full forward over prompt + greedy prefix
        m = HycoDecoder.from_dir(d_h, torch.float64)
        g, gaps = greedy_decode(m, tokens, 12)
        with torch.no_grad():
            lg = m(torch.tensor(tokens + g))
        am = lg[len(tokens) - 1:-1].argmax(-1).tolist()
        top2 = torch.topk(lg[len(tokens) - 1:-1], 2).values
        check(am == g and torch.allclose(top2[:, 0] - top2[:, 1],
                                         torch.tensor(gaps, dtype=torch.float64)),
              "greedy tokens == argmax of full forward over prompt + greedy prefix")
        # 11. the logits command's file
        out = os.path.join(tmp, "exp.safetensors")
        main(["logits", "--model", d_s, "--tokens", ",".join(map(str, toks)), "--out", out,
              "--greedy", "5"])
        e = read_safetensors(out)
        check(e["logits"].dtype == torch.float32 and tuple(e["logits"].shape) == (40, 256)
              and e["greedy"].dtype == torch.int32 and e["greedy"].shape == (5,)
              and torch.equal(e["logits"], ref_s.float()), "logits command output")
    print("selftest:", "PASS" if ok else "FAIL")
    return ok


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make-model", help="random-weight model directory from a config")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--dtype", choices=["f32", "bf16", "f16"], default="f32")
    p.add_argument("--shards", type=int, default=1)
    p = sub.add_parser("logits", help="expected logits / greedy tokens for a prompt")
    p.add_argument("--model", required=True)
    p.add_argument("--tokens", required=True, help="comma-separated token ids")
    p.add_argument("--out", required=True)
    p.add_argument("--greedy", type=int, default=32)
    p = sub.add_parser("suite", help="the whole reference test suite")
    p.add_argument("--out", required=True)
    sub.add_parser("selftest", help="check this file against the spec")
    a = ap.parse_args(argv)
    # One thread by default (HYCO_REF_THREADS overrides): these matrices are tiny, and on 2
    # cores with the other one busy (a parallel build, ctest -j2) 2 torch threads made `suite`
    # 9x slower (8 s -> 70 s, OpenMP barriers spinning), while idle they gain nothing.
    torch.set_num_threads(int(os.environ.get("HYCO_REF_THREADS", "1")))

    if a.cmd == "make-model":
        with open(a.config) as f:
            cfg = make_model(json.load(f), a.out, a.seed, a.dtype, a.shards)
        print(f"wrote {a.out}: {cfg['num_hidden_layers']} layers {cfg['layer_types']}, "
              f"{a.dtype}, {a.shards} shard(s)")
    elif a.cmd == "logits":
        tokens = [int(x) for x in a.tokens.split(",") if x.strip()]
        vocab = read_config(a.model)["vocab_size"]
        if not tokens or any(not 0 <= t < vocab for t in tokens):
            sys.exit(f"--tokens: need ids in [0, {vocab})")
        tensors, err = expected_outputs(a.model, tokens, a.greedy)
        write_expected(a.out, tensors, err)
        gaps = tensors["greedy_gap"]
        print(f"wrote {a.out}: {len(tokens)} positions, max|naive-f64|={err:.2e}"
              + (f", min greedy gap {float(gaps.min()):.4f}" if len(gaps) else ""))
    elif a.cmd == "suite":
        make_suite(a.out)
    elif a.cmd == "selftest":
        if not selftest():
            sys.exit(1)


if __name__ == "__main__":
    main()
