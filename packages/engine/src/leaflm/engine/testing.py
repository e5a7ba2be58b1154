"""Tiny random HF models with a real trained tokenizer, for tests and cheap benchmarks.

Nothing may be downloaded from a model hub, so every test that compares leaflm with
HuggingFace Transformers builds its model here: a `transformers` config, random weights
(seeded, with a wide init so greedy choices are not near-ties), `save_pretrained` into a
directory, and a small byte-level BPE tokenizer trained on a fixed corpus with a ChatML
chat template. Both leaflm and Transformers then load the same directory.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = (
    "the a an of to in on for with by from at about into over after under between "
    "model token cache block page memory batch request server engine kernel tensor layer "
    "attention query key value head norm rotary weight scale softmax sample stream client "
    "fast slow small large quiet bright green leaf tree river stone cloud rain sun wind "
    "runs reads writes moves grows falls sings waits jumps finds keeps holds gives takes "
    "one two three four five six seven eight nine ten hundred thousand "
    "héllo naïve café über straße 東京 数据 🙂 🌿"
).split()


def tiny_corpus(num_lines: int = 400, seed: int = 0) -> list[str]:
    """Deterministic pseudo-English lines (with some non-ASCII) to train the tokenizer on."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        n = rng.randint(4, 16)
        words = [rng.choice(_WORDS) for _ in range(n)]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ","]))
    return lines


def train_tiny_tokenizer(directory: str | Path, vocab_size: int = 384) -> Path:
    """Train a byte-level BPE tokenizer and save it as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(directory)
    return directory


def _base_config(vocab_size: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "initializer_range": 0.2,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 3,
    }


def _gpt2(tf: Any, b: dict[str, Any]) -> Any:
    return tf.GPT2Config(
        vocab_size=b["vocab_size"], n_positions=b["max_position_embeddings"], n_embd=b["hidden_size"],
        n_layer=b["num_hidden_layers"], n_head=b["num_attention_heads"], n_inner=b["intermediate_size"],
        initializer_range=b["initializer_range"], tie_word_embeddings=True, **_ids(b),
    )  # fmt: skip


def _gpt_neox(tf: Any, b: dict[str, Any]) -> Any:
    return tf.GPTNeoXConfig(
        **_shape(b), use_parallel_residual=True, tie_word_embeddings=False, **_ids(b),
        rope_parameters={"rope_type": "default", "rope_theta": 20000.0, "partial_rotary_factor": 0.25},
    )  # fmt: skip


def _bloom(tf: Any, b: dict[str, Any]) -> Any:
    return tf.BloomConfig(
        vocab_size=b["vocab_size"], hidden_size=b["hidden_size"], n_layer=b["num_hidden_layers"],
        n_head=b["num_attention_heads"], initializer_range=b["initializer_range"], **_ids(b),
    )  # fmt: skip


def _falcon(tf: Any, b: dict[str, Any]) -> Any:
    """Falcon-7B style: multi-query attention, parallel attention + MLP, one shared layernorm."""
    return tf.FalconConfig(
        **_shape(b, intermediate=False), multi_query=True, parallel_attn=True, bias=False,
        new_decoder_architecture=False, alibi=False, tie_word_embeddings=True, **_ids(b),
        rope_parameters={"rope_type": "default", "rope_theta": 30000.0},
    )  # fmt: skip


def _falcon_new(tf: Any, b: dict[str, Any]) -> Any:
    """Falcon-40B/180B style: grouped KV heads, two layernorms feeding the parallel branches."""
    return tf.FalconConfig(
        **_shape(b, intermediate=False), new_decoder_architecture=True, num_kv_heads=2,
        num_ln_in_parallel_attn=2, parallel_attn=True, bias=True, alibi=False,
        tie_word_embeddings=False, ffn_hidden_size=b["intermediate_size"], **_ids(b),
        rope_parameters={"rope_type": "default", "rope_theta": 30000.0},
    )  # fmt: skip


def _qwen3(tf: Any, b: dict[str, Any]) -> Any:
    return tf.Qwen3Config(**{**b, "head_dim": 32, "rope_theta": 1000000.0})


def _gemma3(tf: Any, b: dict[str, Any]) -> Any:
    """Sliding (window 16, local rope base) and global layers interleaved, softcapped logits."""
    return tf.Gemma3TextConfig(
        **{**b, "num_hidden_layers": 3, "head_dim": 32, "bos_token_id": 0},
        sliding_window=16, query_pre_attn_scalar=24, final_logit_softcapping=30.0,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        },
    )  # fmt: skip


def _shape(b: dict[str, Any], intermediate: bool = True) -> dict[str, Any]:
    keys = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"]
    keys += ["max_position_embeddings", "initializer_range"]
    keys += ["intermediate_size"] if intermediate else []
    return {k: b[k] for k in keys}


def _ids(b: dict[str, Any]) -> dict[str, Any]:
    return {k: b[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}


_OTHER_CONFIGS = {
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "bloom": _bloom,
    "falcon": _falcon,
    "falcon_new": _falcon_new,
    "qwen3": _qwen3,
    "gemma3": _gemma3,
}


def tiny_config(arch: str, vocab_size: int, **overrides: Any):
    """A tiny `transformers` config for one architecture family."""
    import transformers

    # LLaMA-family overrides go into the constructor: values the config derives from others
    # (head_dim from hidden_size / num_attention_heads) must follow them, or the "shape" is
    # not the one asked for. Other families pin their own derived values.
    base = _base_config(vocab_size)
    if arch in ("llama", "mistral", "qwen2"):
        base = {**base, **overrides}
    if arch == "llama":
        cfg: transformers.PretrainedConfig = transformers.LlamaConfig(**base)
    elif arch == "mistral":
        cfg = transformers.MistralConfig(**{"sliding_window": 16, **base})
    elif arch == "qwen2":
        cfg = transformers.Qwen2Config(**base)
    elif arch in _OTHER_CONFIGS:
        cfg = _OTHER_CONFIGS[arch](transformers, base)
    else:
        raise ValueError(f"tiny_config: unknown architecture family {arch!r}")
    for key, value in overrides.items():  # names a family's config maps differently
        setattr(cfg, key, value)
    return cfg


def build_tiny_model(
    directory: str | Path, arch: str = "llama", seed: int = 0, **config_overrides: Any
) -> Path:
    """Save a tiny random model of `arch` plus a trained tokenizer into `directory`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(directory)
    train_tiny_tokenizer(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = tiny_config(arch, len(tokenizer), **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory, safe_serialization=True)
    return directory


# --- GGUF files from tiny HF models (llama.cpp's layout, written independently of leaflm's
# --- converter so that round-trip tests check it against llama.cpp's conventions).

_GGUF_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_GGUF_LAYER = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
}
_GGUF_LAYER_NORMS = {
    "llama": {"post_attention_layernorm": "ffn_norm"},
    "qwen2": {"post_attention_layernorm": "ffn_norm"},
    "qwen3": {"post_attention_layernorm": "ffn_norm"},
    "gemma3": {
        "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
    },
}


def _gguf_tensor_name(arch: str, hf_name: str) -> str:
    if hf_name in _GGUF_GLOBAL:
        return _GGUF_GLOBAL[hf_name]
    parts = hf_name.split(".")  # model.layers.{i}.{module...}.{weight|bias}
    layer, module, kind = parts[2], ".".join(parts[3:-1]), parts[-1]
    table = {**_GGUF_LAYER, **_GGUF_LAYER_NORMS.get(arch, _GGUF_LAYER_NORMS["llama"])}
    return f"blk.{layer}.{table[module]}.{kind}"


def _llama_cpp_permute(weights: Any, num_heads: int) -> Any:
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute` (HF rotate-half -> interleaved)."""
    rows = weights.shape[0]
    w = weights.reshape(num_heads, 2, rows // num_heads // 2, *weights.shape[1:])
    return w.swapaxes(1, 2).reshape(weights.shape)


def write_tiny_gguf(
    hf_dir: str | Path,
    out_path: str | Path,
    *,
    arch: str | None = None,
    qtypes: dict[str, Any] | None = None,
    raw_tensors: dict[str, tuple[Any, Any]] | None = None,
    drop: tuple[str, ...] = (),
) -> Path:
    """Write the tiny HF model in `hf_dir` as a GGUF file the way llama.cpp's converter does.

    Args:
        arch: the GGUF architecture name (default: from the config's model_type).
        qtypes: GGUF tensor name -> `gguf.GGMLQuantizationType` to quantize it to (default F32).
        raw_tensors: GGUF tensor name -> (raw bytes as a uint8 array, quantization type), for
            types gguf-py cannot quantize (Q4_K, Q6_K) or for deliberately bad data.
        drop: GGUF tensor names to leave out.
    """
    import json

    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    hf_dir, out_path = Path(hf_dir), Path(out_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    arch = arch or {"gemma3_text": "gemma3"}.get(cfg["model_type"], cfg["model_type"])
    qtypes, raw_tensors = qtypes or {}, raw_tensors or {}
    n_head, n_kv = (
        cfg["num_attention_heads"],
        cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
    )
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    rope = cfg.get("rope_parameters") or {}
    if "full_attention" in rope:
        rope = rope["full_attention"]

    w = gguf.GGUFWriter(str(out_path), arch)
    w.add_name("leaflm tiny test model")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    if arch == "gemma3":
        w.add_sliding_window(cfg["sliding_window"])

    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    tok_cfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
    vocab = {**tok["model"]["vocab"], **{t["content"]: t["id"] for t in tok["added_tokens"]}}
    by_id = {idx: token for token, idx in vocab.items()}
    tokens = [by_id[idx] for idx in range(len(vocab))]  # ids are dense: 0 .. len - 1
    special = {t["id"] for t in tok["added_tokens"] if t["special"]}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(vocab[tok_cfg["bos_token"]])
    w.add_eos_token_id(vocab[tok_cfg["eos_token"]])
    w.add_pad_token_id(vocab[tok_cfg["pad_token"]])
    w.add_unk_token_id(vocab[tok_cfg["unk_token"]])
    w.add_add_bos_token(False)
    template = hf_dir / "chat_template.jinja"
    w.add_chat_template(template.read_text() if template.is_file() else tok_cfg["chat_template"])

    for hf_name, value in sorted(load_file(str(hf_dir / "model.safetensors")).items()):
        name = _gguf_tensor_name(arch, hf_name)
        if name in drop:
            continue
        value = value.astype(np.float32)
        if arch == "llama" and name.endswith("attn_q.weight"):
            value = _llama_cpp_permute(value, n_head)
        elif arch == "llama" and name.endswith("attn_k.weight"):
            value = _llama_cpp_permute(value, n_kv)
        elif arch == "gemma3" and name.endswith("norm.weight"):
            value = value + 1.0
        if name in raw_tensors:
            data, qtype = raw_tensors.pop(name)
            w.add_tensor(name, data, raw_dtype=qtype)
        elif name in qtypes:
            w.add_tensor(name, gguf.quants.quantize(value, qtypes[name]), raw_dtype=qtypes[name])
        else:
            w.add_tensor(name, np.ascontiguousarray(value))
    for name, (data, qtype) in raw_tensors.items():  # extra tensors the model does not have
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out_path


def random_token_prompts(
    n: int, vocab: int, lo: int = 3, hi: int = 40, seed: int = 0
) -> list[list[int]]:
    """`n` random token-id prompts with lengths in [lo, hi), avoiding the special tokens."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi, (n,), generator=g).tolist()
    first = len(SPECIAL_TOKENS)
    return [torch.randint(first, vocab, (k,), generator=g).tolist() for k in lens]


def hf_greedy(
    model_dir: str | Path, prompts: list[list[int]], max_new_tokens: int
) -> list[tuple[list[int], list[float]]]:
    """HF Transformers greedy reference: (token ids, logprob of each chosen token) per prompt.

    A plain full forward per step (no generate(), no EOS handling), so the reference does
    exactly one thing: argmax of the model's next-token distribution.
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    results = []
    with torch.no_grad():
        for prompt in prompts:
            ids, out, lps = list(prompt), [], []
            for _ in range(max_new_tokens):
                logits = model(torch.tensor([ids])).logits[0, -1].float()
                tok = int(torch.argmax(logits))
                lps.append(float(torch.log_softmax(logits, -1)[tok]))
                out.append(tok)
                ids.append(tok)
            results.append((out, lps))
    return results


def assert_greedy_parity(
    outputs: list[Any], reference: list[tuple[list[int], list[float]]], tol: float = 1e-4
) -> None:
    """Each completion's token ids equal the `hf_greedy` reference's, and the logprob of each
    chosen token (the request asked for logprobs) is within `tol` of HF's."""
    for n, (out, (ref_ids, ref_lps)) in enumerate(zip(outputs, reference, strict=True)):
        comp = out.outputs[0]
        where = f"request {n} ({len(out.prompt_token_ids)} prompt tokens)"
        if comp.token_ids != ref_ids:  # raised, not asserted: this holds under `python -O` too
            raise AssertionError(f"{where}: {comp.token_ids} != HF's {ref_ids}")
        got = [comp.logprobs[i][t].logprob for i, t in enumerate(comp.token_ids)]
        worst = max((abs(a - b) for a, b in zip(got, ref_lps, strict=True)), default=0.0)
        if worst > tol:
            raise AssertionError(f"{where}: a chosen token's logprob is {worst:.2e} off HF's")


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie or a missing pid is not running): for tests that
    check no worker outlives its engine."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
