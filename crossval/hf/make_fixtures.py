#!/usr/bin/env python3
"""Make Hugging Face transformers "oracle" fixtures for BitNetForCausalLM.

Creates 6 tiny, deterministic, random BitNet b1.58 checkpoints (3 weight layouts x 2 shapes)
with transformers itself, reloads each with `from_pretrained` (proving transformers accepts it)
and records transformers' own logits as the oracle.

Needs (installed on the machine, not part of the Rust build):
    pip install torch transformers safetensors accelerate tokenizers

Usage:  python3 crossval/hf/make_fixtures.py [--out DIR]
Rerunnable: every fixture directory is deleted and rewritten.  See SEMANTICS.md beside this file.

Per fixture directory fixtures/<layout>-<shape>/ :
    config.json, model.safetensors (or model-0000x-of-00002.safetensors + model.safetensors.index.json),
    tokenizer.json, tokenizer_config.json, generation_config.json,
    tokens.json        {"text": ..., "ids": [BOS, ...]}
    logits_f32.bin     int32 n_tokens, int32 n_vocab, then n_tokens*n_vocab float32 (row-major, LE)
    logits_f64.bin     same header, then float64 values: the same model after model.double()
    meta.json          versions, max |f32 - f64|, per-position top-2 margins, greedy continuation, ...
"""

import os

# transformers' BitNet kernels are decorated with @torch.compile; on CPU without a C toolchain
# (and for exact eager semantics) compilation must be disabled *before* torch is imported.
os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import safetensors
import tokenizers
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, BitNetConfig, BitNetForCausalLM
from transformers.integrations import bitnet as hf_bitnet
from transformers.models.bitnet import modeling_bitnet as hf_modeling
from transformers.utils.quantization_config import BitNetQuantConfig

HERE = Path(__file__).resolve().parent

VOCAB = 512
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]  # ids 509, 510, 511
BOS_ID, EOS_ID, EOT_ID = VOCAB - 3, VOCAB - 2, VOCAB - 1

CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = message['role'] | capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)

# LLaMA-3 pre-tokenizer split pattern (BitNet 2B-4T uses the LLaMA-3 tokenizer).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

TRAIN_TEXT = """
The small engine reads a model file, checks every tensor, and then answers questions one token at a time.
Each layer normalizes its input, mixes the tokens with attention, and then passes the result through a
feed-forward block. The weights are ternary: every value is minus one, zero, or plus one, and a single
scale per matrix restores the magnitude. Activations are quantized to eight bits per token before each
matrix multiply, so the heavy work is mostly additions and subtractions.
When the user types a prompt, the tokenizer splits the text into pieces. Common words such as the, and,
of, to, in, is, it, that, for, with, as, on, was, be, at, by, this, from, or, an, are, which, have,
not, but, you, they, we, can, will, one, all, there, their, what, so, if, about, when, more, would,
usually become single tokens, while rare words are broken into several smaller parts.
Numbers like 2024, 3.14, 42 and 1000000 are split into groups of at most three digits.
A good test checks that the same input always gives the same output, that the output matches a trusted
reference, and that mistakes in the file are reported with a clear message instead of a crash.
Rivers run to the sea, the sea rises into clouds, and the clouds bring rain back to the hills.
Once upon a time a curious fox found a lantern in the forest. It was bright and warm, and the fox carried
it home to show its friends. They talked late into the night about where the lantern had come from.
Questions? Answers! Lists: apples, pears, plums; tools - hammers, saws, drills. "Quotes" and 'marks'.
User: Hello, who are you?
Assistant: I am a small language model. How can I help you today?
User: What is the capital of France?
Assistant: The capital of France is Paris.
"""

SENTENCE = "Hello, who are you? The fox found 2024 lanterns"  # 20 tokens with BOS (size budget)
CHAT_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello, who are you?"},
]

SHAPES = {
    "a": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
              intermediate_size=256, seed=41),
    "b": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
              intermediate_size=512, seed=36),
}
# layout name -> (linear_class, quantization_mode)
LAYOUTS = {
    "bitlinear": ("bitlinear", "offline"),
    "autobitlinear_offline": ("autobitlinear", "offline"),
    "autobitlinear_online": ("autobitlinear", "online"),
}
QUANT_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHARDED = {("bitlinear", "b")}
SHARD_SIZE = "150KB"  # bitlinear-b is ~200 KB: embeddings (131 KB) + part of layer 0, then the rest
# Seeds were picked (by a one-off search) so that every layout has all top-2 margins >= 0.1
# on the oracle tokens and a non-constant greedy continuation.
# Random-init scales: embeddings give logits a std of ~EMB_LOGIT_STD; linear weights are large
# enough that the (sub-normed) layer outputs dominate the residual stream, so the logits depend
# on the context and not just on the current token.
EMB_LOGIT_STD = 4.0
LIN_STD = (0.1, 0.3)
GREEDY_PROMPT_LEN = 8
GREEDY_NEW = 12


# ----------------------------------------------------------------------------- tokenizer
def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - len(SPECIALS), min_frequency=1, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    tok.train_from_iterator([TRAIN_TEXT] * 4, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB - len(SPECIALS), tok.get_vocab_size()
    tok.add_special_tokens(SPECIALS)  # appended at the end, like LLaMA-3 (128000..)
    assert [tok.token_to_id(s) for s in SPECIALS] == [BOS_ID, EOS_ID, EOT_ID]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{SPECIALS[0]} $A", pair=f"{SPECIALS[0]} $A {SPECIALS[0]} $B:1",
            special_tokens=[(SPECIALS[0], BOS_ID)],
        ),
    ])
    return tok


def write_tokenizer_files(d: Path, tok: Tokenizer):
    tok.save(str(d / "tokenizer.json"), pretty=False)
    cfg = {
        "added_tokens_decoder": {
            str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for i, s in zip((BOS_ID, EOS_ID, EOT_ID), SPECIALS)
        },
        "bos_token": SPECIALS[0],
        "eos_token": SPECIALS[1],
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 256,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen = {"bos_token_id": BOS_ID, "eos_token_id": [EOS_ID, EOT_ID], "do_sample": False,
           "transformers_version": transformers.__version__}
    (d / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


# ----------------------------------------------------------------------------- weights
def bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16)


def master_weights(shape: dict) -> dict:
    """Deterministic bf16 'master' weights (the autobitlinear-online checkpoint) for one shape."""
    cfg = make_config(shape, None)
    g = torch.Generator().manual_seed(shape["seed"])
    torch.manual_seed(shape["seed"])
    ref = BitNetForCausalLM(cfg)  # only used for the parameter names/shapes
    sd = {}
    h = shape["hidden_size"]
    for name, p in ref.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to model.embed_tokens.weight
        if name == "model.embed_tokens.weight":
            # logits = norm(h) . E^T: std 3/sqrt(h) gives logits with a std of ~3 (top-2 margins spread)
            w = torch.randn(p.shape, generator=g) * (EMB_LOGIT_STD / h ** 0.5)
        elif name.endswith("norm.weight"):
            w = 0.6 + 0.8 * torch.rand(p.shape, generator=g)
        elif name.rsplit(".", 2)[-2] in QUANT_LINEARS:
            std = LIN_STD[0] + (LIN_STD[1] - LIN_STD[0]) * torch.rand((), generator=g).item()
            w = torch.randn(p.shape, generator=g) * std
        else:
            raise RuntimeError(f"unexpected tensor {name}")
        sd[name] = bf16(w)
    return sd


def ternarize(w_bf16: torch.Tensor):
    """Same math as transformers.integrations.bitnet.WeightQuant (f32): t in {-1,0,1}, mean |w|."""
    w = w_bf16.float()
    mean = w.abs().mean().clamp(min=1e-5)
    t = (w * (1.0 / mean)).round().clamp(-1, 1)
    return t, mean


def layout_state_dict(master: dict, layout: str) -> dict:
    if layout == "autobitlinear_online":
        return dict(master)
    out = {}
    for name, w in master.items():
        if name.rsplit(".", 2)[-2] not in QUANT_LINEARS:
            out[name] = w
            continue
        t, mean = ternarize(w)
        base = name[: -len(".weight")]
        if layout == "bitlinear":
            # BitLinear divides by weight_scale -> store the reciprocal of the dequant scale.
            out[name] = hf_bitnet.pack_weights(t.clone())  # uint8 [out/4, in]
            out[base + ".weight_scale"] = bf16((1.0 / mean).reshape(1))
        else:
            # AutoBitLinear (offline) multiplies by weight_scale.
            out[name] = bf16(t)
            out[base + ".weight_scale"] = bf16(mean.reshape(1))
    return out


def make_config(shape: dict, layout):
    kw = {k: v for k, v in shape.items() if k != "seed"}
    cfg = BitNetConfig(
        vocab_size=VOCAB, max_position_embeddings=256, rms_norm_eps=1e-5, hidden_act="relu2",
        tie_word_embeddings=True, rope_theta=500000.0, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        **kw,
    )
    if layout is not None:
        lc, qm = LAYOUTS[layout]
        cfg.quantization_config = BitNetQuantConfig(linear_class=lc, quantization_mode=qm).to_dict()
    cfg.dtype = torch.bfloat16
    return cfg


def save_checkpoint(d: Path, cfg: BitNetConfig, sd: dict, sharded: bool, legacy_config: bool):
    """Build the quantized module tree exactly as transformers' BitNet quantizer does, put the
    tensors in, and let save_pretrained write config.json + safetensors (sharded if asked)."""
    model = BitNetForCausalLM(make_config_for_skeleton(cfg))
    qc = BitNetQuantConfig(**{k: cfg.quantization_config[k] for k in ("linear_class", "quantization_mode")})
    hf_bitnet.replace_with_bitnet_linear(model, modules_to_not_convert=["lm_head"], quantization_config=qc)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    model.lm_head.weight = model.model.embed_tokens.weight  # tied
    model.config = cfg
    kwargs = {"max_shard_size": SHARD_SIZE} if sharded else {}
    model.save_pretrained(d, **kwargs)
    # save_pretrained must have written exactly our tensors
    files = sorted(d.glob("*.safetensors"))
    written = {}
    for f in files:
        with safetensors.safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                written[k] = fh.get_tensor(k)
    assert set(written) == set(sd), (sorted(set(written) ^ set(sd)))
    for k, v in sd.items():
        assert written[k].dtype == v.dtype and torch.equal(written[k], v), k
    if sharded:
        assert len(files) >= 2 and (d / "model.safetensors.index.json").exists(), files
    if legacy_config:
        # Rewrite config.json the way the real microsoft/bitnet-b1.58-2B-4T config looks
        # (top-level rope_theta, torch_dtype); transformers must still accept it.
        c = json.loads((d / "config.json").read_text())
        c["rope_theta"] = c.pop("rope_parameters")["rope_theta"]
        c["torch_dtype"] = c.pop("dtype", "bfloat16")
        c["architectures"] = ["BitNetForCausalLM"]
        (d / "config.json").write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")
    return files


def make_config_for_skeleton(cfg):
    c = BitNetConfig(**{k: v for k, v in cfg.to_dict().items() if k != "quantization_config"})
    c.dtype = torch.bfloat16
    return c


# ----------------------------------------------------------------------------- oracle
def load_f32(d: Path, ids):
    """from_pretrained(dtype=float32). Returns (model, quirk) where quirk is None when transformers
    honoured dtype=float32, else a description of what went wrong and the fallback used."""
    model = BitNetForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    not_f32 = sorted({str(t.dtype) for t in list(model.parameters()) + list(model.buffers())
                      if t.is_floating_point() and t.dtype != torch.float32})
    if not not_f32:
        return model, None
    try:
        logits_of(model, ids)
        err = None
    except Exception as e:  # noqa: BLE001 - we record the exact error text
        err = f"{type(e).__name__}: {e}"
    n_bad = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
             if t.is_floating_point() and t.dtype != torch.float32]
    quirk = {
        "problem": f"from_pretrained(dtype=torch.float32) left {len(n_bad)} tensors in {not_f32} "
                   f"(e.g. {n_bad[:3]}); forward error: {err}",
        "fallback": "from_pretrained(dtype=torch.bfloat16) (forward runs), then model.to(torch.float32)",
    }
    model = BitNetForCausalLM.from_pretrained(d, dtype=torch.bfloat16).eval()
    bf16_logits = logits_of(model, ids)
    quirk["bf16_forward_ok"] = bool(torch.isfinite(bf16_logits).all())
    model = model.to(torch.float32)  # PreTrainedModel.float() refuses quantized models; .to() is allowed
    quirk["max_abs_bf16_minus_f32"] = (bf16_logits.float() - logits_of(model, ids)).abs().max().item()
    return model, quirk


@torch.no_grad()
def logits_of(model, ids) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0]


def compact_json(obj) -> str:
    """indent=1 JSON, but lists of scalars and small dicts on one line (keeps meta.json small)."""
    if isinstance(obj, dict) and any(isinstance(v, (dict, list)) for v in obj.values()) or (
            isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj)):
        if isinstance(obj, dict):
            items = [f"{json.dumps(k)}: {compact_json(v)}" for k, v in obj.items()]
            return "{\n" + ",\n".join(items) + "\n}"
        return "[\n" + ",\n".join(compact_json(v) for v in obj) + "\n]"
    return json.dumps(obj)


def write_logits(path: Path, x: torch.Tensor, np_dtype):
    n, v = x.shape
    arr = np.ascontiguousarray(x.numpy().astype(np_dtype))
    with open(path, "wb") as f:
        f.write(struct.pack("<ii", n, v))
        f.write(arr.tobytes())


def top2_margins(x: torch.Tensor):
    top = torch.topk(x.double(), 2, dim=-1).values
    return (top[:, 0] - top[:, 1]).tolist()


class PureF64:
    """Context manager: patch the spots where transformers' BitNet code forces float32 even after
    model.double() (RMSNorm upcast, RoPE inv_freq/angles, ActQuant/WeightQuant `.float()`),
    to measure the f32 error against a true float64 evaluation. Only used for meta.json."""

    def __enter__(self):
        self.saved = (hf_modeling.BitNetRMSNorm.forward, hf_modeling.BitNetRotaryEmbedding.forward,
                      hf_bitnet.WeightQuant, hf_bitnet.ActQuant)

        def rms_forward(mod, x):
            var = x.pow(2).mean(-1, keepdim=True)
            return mod.weight * (x * torch.rsqrt(var + mod.variance_epsilon))

        def rope_forward(mod, x, position_ids):
            dim = mod.inv_freq.shape[0] * 2
            theta = mod.config.rope_parameters["rope_theta"]
            inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
            freqs = position_ids[..., None].double() * inv
            emb = torch.cat((freqs, freqs), dim=-1)
            return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

        class WQ:
            @staticmethod
            def apply(w):
                s = 1.0 / w.abs().mean().clamp(min=1e-5)
                return (w * s).round().clamp(-1, 1) / s

        class AQ:
            @staticmethod
            def apply(a):
                s = 127 / a.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
                return (a * s).round().clamp(-128, 127) / s

        hf_modeling.BitNetRMSNorm.forward = rms_forward
        hf_modeling.BitNetRotaryEmbedding.forward = rope_forward
        hf_bitnet.WeightQuant, hf_bitnet.ActQuant = WQ, AQ
        return self

    def __exit__(self, *exc):
        (hf_modeling.BitNetRMSNorm.forward, hf_modeling.BitNetRotaryEmbedding.forward,
         hf_bitnet.WeightQuant, hf_bitnet.ActQuant) = self.saved


TIE_EPS = 1e-4  # |x*s - (k + 0.5)| below this counts as a rounding near-tie


def reference_forward(d: Path, ids, dtype, ties=None) -> torch.Tensor:
    """Independent re-implementation of the forward pass from the files alone, written from
    SEMANTICS.md (not from transformers' modules): checks those facts against the oracle.
    If `ties` is a list, rounding near-ties of the quantizers are appended to it."""
    cfg = json.loads((d / "config.json").read_text())
    qc = cfg["quantization_config"]
    theta = cfg["rope_theta"] if "rope_theta" in cfg else cfg["rope_parameters"]["rope_theta"]
    eps, H, KV = cfg["rms_norm_eps"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // H
    t = {}
    for f in sorted(d.glob("*.safetensors")):
        with safetensors.safe_open(str(f), "pt") as fh:
            t.update({k: fh.get_tensor(k) for k in fh.keys()})
    f = lambda k: t[k].to(dtype)  # noqa: E731

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def linear(x, p):
        sx = 127.0 / x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
        xq = (x * sx).round().clamp(-128, 127)
        if ties is not None:
            xs = x * sx
            for pos, ch in ((xs - xs.floor() - 0.5).abs() < TIE_EPS).nonzero().tolist():
                ties.append({"linear": p, "what": "activation", "pos": pos, "ch": ch,
                             "x_times_scale": round(xs[pos, ch].item(), 9)})
        w = t[p + ".weight"]
        if qc["linear_class"] == "bitlinear":
            rows = w.shape[0]
            tern = torch.empty(rows * 4, w.shape[1], dtype=dtype)
            for i in range(4):  # bit pair i of byte [r, c] is output row i*rows + r
                tern[i * rows:(i + 1) * rows] = ((w >> (2 * i)) & 3).to(dtype) - 1
            return (xq @ tern.T) / (f(p + ".weight_scale") * sx)
        if qc["quantization_mode"] == "offline":
            return ((xq / sx) @ w.to(dtype).T) * f(p + ".weight_scale")
        w = w.to(dtype)
        sw = 1.0 / w.abs().mean().clamp(min=1e-5)
        if ties is not None:
            ws = w * sw
            for r, c in (((ws - ws.floor() - 0.5).abs() < TIE_EPS) & (ws.abs() < 1.5)).nonzero().tolist():
                ties.append({"linear": p, "what": "weight", "row": r, "col": c,
                             "w_times_scale": round(ws[r, c].item(), 9)})
        return (xq / sx) @ ((w * sw).round().clamp(-1, 1) / sw).T

    n = len(ids)
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos()] * 2, -1).to(dtype), torch.cat([ang.sin()] * 2, -1).to(dtype)

    def rope(x):  # x [heads, n, hd]; rotate_half convention (first half / second half)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    x = f("model.embed_tokens.weight")[torch.tensor(ids)]
    mask = torch.full((n, n), float("-inf"), dtype=dtype).triu(1)
    for li in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{li}."
        h = rms(x, f(pre + "input_layernorm.weight"))
        q = rope(linear(h, pre + "self_attn.q_proj").view(n, H, hd).transpose(0, 1))
        k = rope(linear(h, pre + "self_attn.k_proj").view(n, KV, hd).transpose(0, 1))
        v = linear(h, pre + "self_attn.v_proj").view(n, KV, hd).transpose(0, 1)
        k, v = k.repeat_interleave(H // KV, 0), v.repeat_interleave(H // KV, 0)  # q head j uses kv head j // (H/KV)
        att = torch.softmax(q @ k.transpose(1, 2) / hd ** 0.5 + mask, -1) @ v
        att = rms(att.transpose(0, 1).reshape(n, H * hd), f(pre + "self_attn.attn_sub_norm.weight"))
        x = x + linear(att, pre + "self_attn.o_proj")
        h = rms(x, f(pre + "post_attention_layernorm.weight"))
        a = torch.relu(linear(h, pre + "mlp.gate_proj")).square() * linear(h, pre + "mlp.up_proj")
        x = x + linear(rms(a, f(pre + "mlp.ffn_sub_norm.weight")), pre + "mlp.down_proj")
    return rms(x, f("model.norm.weight")) @ f("model.embed_tokens.weight").T


def describe_model(model) -> dict:
    lin = model.model.layers[0].self_attn.q_proj
    return {
        "q_proj_class": type(lin).__name__,
        "q_proj_weight_dtype": str(lin.weight.dtype),
        "q_proj_weight_shape": list(lin.weight.shape),
        "q_proj_compute_dtype": str(getattr(lin, "dtype", lin.weight.dtype)),
        "lm_head_class": type(model.lm_head).__name__,
        "lm_head_dtype": str(model.lm_head.weight.dtype),
        "lm_head_tied": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
        "attn_implementation": model.config._attn_implementation,
    }


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "fixtures")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    tok = build_tokenizer()
    enc = tok.encode(SENTENCE)
    ids = enc.ids
    assert ids[0] == BOS_ID and all(0 <= i < VOCAB for i in ids)
    assert tok.decode(ids, skip_special_tokens=True) == SENTENCE

    versions = {"transformers": transformers.__version__, "torch": torch.__version__,
                "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__,
                "python": sys.version.split()[0]}
    summary = []
    logits_by_shape = {}
    for shape_name, shape in SHAPES.items():
        master = master_weights(shape)
        for layout in LAYOUTS:
            name = f"{layout}-{shape_name}"
            d = out / name
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
            cfg = make_config(shape, layout)
            sd = layout_state_dict(master, layout)
            legacy = shape_name == "a"
            save_checkpoint(d, cfg, sd, (layout, shape_name) in SHARDED, legacy)
            write_tokenizer_files(d, tok)

            # the tokenizer as transformers sees it
            hft = AutoTokenizer.from_pretrained(d)
            assert hft(SENTENCE)["input_ids"] == ids, (hft(SENTENCE)["input_ids"], ids)
            chat_text = hft.apply_chat_template(CHAT_MESSAGES, tokenize=False, add_generation_prompt=True)
            chat_ids = tok.encode(chat_text, add_special_tokens=False).ids
            (d / "tokens.json").write_text(json.dumps({"text": SENTENCE, "ids": ids}) + "\n")

            model, quirk = load_f32(d, ids)
            info = describe_model(model)
            if quirk:
                info["load_quirk"] = quirk
            l32 = logits_of(model, ids)
            # greedy continuation that does not stop at EOS (min_new_tokens would mask EOS instead)
            model.generation_config.eos_token_id = None
            greedy = model.generate(torch.tensor([ids[:GREEDY_PROMPT_LEN]]), max_new_tokens=GREEDY_NEW,
                                    do_sample=False, use_cache=True,
                                    pad_token_id=EOS_ID)[0, GREEDY_PROMPT_LEN:].tolist()
            assert len(greedy) == GREEDY_NEW
            # the greedy tokens must agree with a teacher-forced (no cache) argmax
            seq = ids[:GREEDY_PROMPT_LEN] + greedy
            tf_arg = logits_of(model, seq)[GREEDY_PROMPT_LEN - 1:-1].argmax(-1).tolist()
            greedy_margins = top2_margins(logits_of(model, seq)[GREEDY_PROMPT_LEN - 1:-1])
            assert tf_arg == greedy, (tf_arg, greedy)

            model64 = model.double()
            l64 = logits_of(model64, ids)
            with PureF64():
                l64_pure = logits_of(model64, ids)
            del model, model64

            ties = []
            with torch.no_grad():
                ref64 = reference_forward(d, ids, torch.float64, ties)
                ref32 = reference_forward(d, ids, torch.float32)
            write_logits(d / "logits_f32.bin", l32, "<f4")
            write_logits(d / "logits_f64.bin", l64, "<f8")
            margins = top2_margins(l32)
            d32 = (l32.double() - l64).abs().max().item()
            d32p = (l32.double() - l64_pure).abs().max().item()
            logits_by_shape.setdefault(shape_name, {})[layout] = l32
            meta = {
                "fixture": name,
                "layout": {"linear_class": LAYOUTS[layout][0], "quantization_mode": LAYOUTS[layout][1],
                           "packed_uint8": layout == "bitlinear",
                           "weight_scale_applied": {"bitlinear": "divide", "autobitlinear_offline": "multiply",
                                                    "autobitlinear_online": "none (computed at run time)"}[layout]},
                "shape": {k: v for k, v in shape.items() if k != "seed"}, "seed": shape["seed"],
                "config_style": "legacy top-level rope_theta/torch_dtype" if legacy else "transformers-5 rope_parameters/dtype",
                "versions": versions,
                "oracle": ("BitNetForCausalLM.from_pretrained(dir, dtype=torch.float32)" if not quirk else
                           "BitNetForCausalLM.from_pretrained(dir, dtype=torch.bfloat16).to(torch.float32)")
                + "(input_ids).logits, teacher-forced, batch 1, no attention_mask; f64 file: same model .double()",
                "env": {"TORCH_COMPILE_DISABLE": os.environ.get("TORCH_COMPILE_DISABLE")},
                "loaded_model": info,
                "n_tokens": len(ids), "n_vocab": VOCAB,
                "logits_std": float(l32.std()),
                "max_abs_f32_minus_f64": d32,
                "max_abs_f32_minus_f64_pure": d32p,
                "max_abs_f64_minus_f64_pure": (l64 - l64_pure).abs().max().item(),
                "max_abs_reference_f64_minus_f64_pure": (ref64 - l64_pure).abs().max().item(),
                "max_abs_reference_f32_minus_f32": (ref32 - l32).abs().max().item(),
                "per_position_max_abs_f32_minus_f64_pure": [
                    round(v, 9) for v in (l32.double() - l64_pure).abs().amax(-1).tolist()],
                "quant_near_ties": ties,
                "first_fragile_position": min([x["pos"] for x in ties if "pos" in x] + [len(ids)])
                if not any(x["what"] == "weight" for x in ties) else 0,
                "near_tie_note": f"int8/ternary rounding inputs within {TIE_EPS} of k+0.5 (f64 reference); an "
                                 "engine whose float rounding differs may round these the other way, which changes "
                                 "logits at that position and all later ones (via attention) by up to ~0.3-0.6",
                "reference_note": "reference_* = independent forward in make_fixtures.py written from SEMANTICS.md",
                "top2_margins": [round(m, 6) for m in margins],
                "min_top2_margin": min(margins),
                "argmax": l32.argmax(-1).tolist(),
                "greedy": {"prompt_ids": ids[:GREEDY_PROMPT_LEN], "new_ids": greedy,
                           "top2_margins": [round(m, 6) for m in greedy_margins],
                           "how": "model.generate(do_sample=False, use_cache=True, EOS not a stop token), float32; equals teacher-forced argmax"},
                "chat": {"messages": CHAT_MESSAGES, "add_generation_prompt": True, "text": chat_text,
                         "ids_without_bos": chat_ids},
            }
            (d / "meta.json").write_text(compact_json(meta) + "\n")
            size = sum(f.stat().st_size for f in d.iterdir())
            summary.append((name, size, d32, d32p, len(ties), (ref64 - l64_pure).abs().max().item(),
                            (ref32 - l32).abs().max().item(), min(margins), sum(m > 0.5 for m in margins), len(margins),
                            info["q_proj_class"], info["q_proj_weight_dtype"]))

    print(f"versions: {json.dumps(versions)}")
    print(f"tokens ({len(ids)}): {ids}")
    print(f"{'fixture':28s} {'bytes':>8s} {'max|f32-f64|':>13s} {'vs pure f64':>12s} {'ties':>5s} {'ref64-pure':>10s} {'ref32-f32':>10s} {'min margin':>10s} "
          f"{'>0.5':>6s}  module/weight dtype")
    for n, s, a, b, nt, r64, r32, m, k, t, c, wd in summary:
        print(f"{n:28s} {s:8d} {a:13.3e} {b:12.3e} {nt:5d} {r64:10.2e} {r32:10.2e} {m:10.4f} {k:3d}/{t:<3d} {c}/{wd}")
    for shape_name, by in logits_by_shape.items():
        names = list(by)
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                dd = (by[names[i]] - by[names[j]]).abs().max().item()
                print(f"shape {shape_name}: max|{names[i]} - {names[j]}| = {dd:.3e}")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"total size of {out}: {total} bytes ({total / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
