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


def tiny_config(arch: str, vocab_size: int, **overrides: Any):
    """A tiny `transformers` config for one architecture family."""
    import transformers

    base = _base_config(vocab_size)
    if arch == "llama":
        cfg = transformers.LlamaConfig(**base)
    elif arch == "mistral":
        cfg = transformers.MistralConfig(**{**base, "sliding_window": 16})
    elif arch == "qwen2":
        cfg = transformers.Qwen2Config(**base)
    else:
        raise ValueError(f"tiny_config: unknown architecture family {arch!r}")
    for key, value in overrides.items():
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
