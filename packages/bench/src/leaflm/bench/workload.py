"""Benchmark workloads: what to send (prompts, output lengths) and when (arrival times).

Every workload is a seeded, reproducible list of `BenchRequest`s carrying both the prompt's
token ids (offline backends get exactly these) and its text (HTTP targets get this), so all
peers in one run see the same inputs. Lengths follow `vllm bench`'s random dataset: a fixed
length, or a range `[len*(1-r), len*(1+r)]` drawn uniformly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class Tokenizer(Protocol):
    """The slice of a HF tokenizer the workloads need."""

    all_special_ids: list[int]

    def __len__(self) -> int: ...
    def decode(self, ids: list[int], **kwargs: Any) -> str: ...
    def encode(self, text: str, **kwargs: Any) -> list[int]: ...


@dataclass
class BenchRequest:
    """One request of a workload.

    `messages` is set for chat workloads (HTTP targets then use /v1/chat/completions);
    `prompt_token_ids` is always the exact model input (chat template applied).
    """

    prompt: str
    prompt_token_ids: list[int]
    output_len: int
    messages: list[dict[str, str]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


def sample_lengths(mean: int, range_ratio: float, n: int, rng: np.random.Generator) -> list[int]:
    """`n` lengths, all `mean` when `range_ratio` is 0, else uniform in [mean(1-r), mean(1+r)]."""
    if mean < 1:
        raise ValueError(f"length must be >= 1, got {mean}")
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"range_ratio must be in [0, 1), got {range_ratio}")
    low = max(1, math.floor(mean * (1 - range_ratio)))
    high = max(low, math.ceil(mean * (1 + range_ratio)))
    return [int(x) for x in rng.integers(low, high + 1, size=n)]


def _candidate_ids(tokenizer: Tokenizer) -> np.ndarray:
    special = set(tokenizer.all_special_ids)
    ids = np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)
    if ids.size == 0:
        raise ValueError("tokenizer has no non-special tokens to build prompts from")
    return ids


def _text_of_length(
    tokenizer: Tokenizer, ids: list[int], length: int, rng: np.random.Generator, pool: np.ndarray
) -> tuple[str, list[int]]:
    """Decode random ids to text whose re-encoding has `length` tokens (vLLM's trick).

    Returns the text and its own encoding, so HTTP and offline peers get the same input even
    when token merges keep the length a token or two off (small tokenizers; rare otherwise).
    """
    for _ in range(16):
        text = tokenizer.decode(ids, skip_special_tokens=True)
        again = tokenizer.encode(text, add_special_tokens=False)
        if len(again) == length:
            return text, again
        if len(again) > length:
            ids = again[:length]
        else:
            ids = again + [int(x) for x in rng.choice(pool, size=length - len(again))]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return text, tokenizer.encode(text, add_special_tokens=False)


def random_workload(
    tokenizer: Tokenizer,
    num_requests: int,
    input_len: int = 128,
    output_len: int = 128,
    range_ratio: float = 0.0,
    seed: int = 0,
) -> list[BenchRequest]:
    """Random-token prompts; outputs are meant to run with `ignore_eos` to exactly `output_len`."""
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    rng = np.random.default_rng(seed)
    pool = _candidate_ids(tokenizer)
    in_lens = sample_lengths(input_len, range_ratio, num_requests, rng)
    out_lens = sample_lengths(output_len, range_ratio, num_requests, rng)
    requests = []
    for n_in, n_out in zip(in_lens, out_lens, strict=True):
        ids = [int(x) for x in rng.choice(pool, size=n_in)]
        text, ids = _text_of_length(tokenizer, ids, n_in, rng, pool)
        requests.append(BenchRequest(prompt=text, prompt_token_ids=ids, output_len=n_out))
    return requests


_TOPICS = (
    "paged attention keeps the key value cache in fixed size blocks",
    "continuous batching admits new requests at every decoding step",
    "the river runs past the old stone bridge under a quiet green tree",
    "a small model answers questions about the weather and the sea",
    "prefix caching reuses the blocks of a shared system prompt",
    "the scheduler gives every running sequence a budget of tokens",
)


def chat_workload(
    tokenizer: Any,
    num_requests: int,
    num_system_prompts: int = 4,
    system_prompt_len: int = 256,
    question_len: int = 32,
    output_len: int = 128,
    seed: int = 0,
) -> list[BenchRequest]:
    """Synthetic chats sharing a few long system prompts, to show what prefix caching saves.

    Each request is `[system, user]` with the system prompt drawn from `num_system_prompts`
    shared ones (about `system_prompt_len` tokens each) and a unique user question.
    """
    if num_requests < 1 or num_system_prompts < 1:
        raise ValueError("num_requests and num_system_prompts must be >= 1")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the chat workload needs a tokenizer with a chat template")
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    pool = _candidate_ids(tokenizer)

    def sentences(n_tokens: int) -> str:
        words: list[str] = []
        while len(tokenizer.encode(" ".join(words), add_special_tokens=False)) < n_tokens:
            words.append(rng.choice(_TOPICS) + ".")
        return " ".join(words)

    systems = [
        f"You are assistant number {i}. " + sentences(system_prompt_len)
        for i in range(num_system_prompts)
    ]
    requests = []
    for i in range(num_requests):
        question_ids = [int(x) for x in np_rng.choice(pool, size=question_len)]
        question = tokenizer.decode(question_ids, skip_special_tokens=True)
        messages = [
            {"role": "system", "content": systems[i % num_system_prompts]},
            {"role": "user", "content": f"Question {i}: {question}"},
        ]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        requests.append(
            BenchRequest(
                prompt=text,
                prompt_token_ids=[int(t) for t in ids],
                output_len=output_len,
                messages=messages,
                extra={"system_prompt": i % num_system_prompts},
            )
        )
    return requests


def arrival_times(
    num_requests: int, request_rate: float = math.inf, burstiness: float = 1.0, seed: int = 0
) -> list[float]:
    """Send offsets in seconds from the start: all zero for an infinite rate, else gamma gaps.

    Gaps follow Gamma(shape=burstiness, scale=1/(rate*burstiness)), as `vllm bench serve`:
    mean gap 1/rate for any burstiness; burstiness 1 is a Poisson process, < 1 is burstier.
    """
    if request_rate <= 0:
        raise ValueError(f"request_rate must be > 0, got {request_rate}")
    if burstiness <= 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    if math.isinf(request_rate):
        return [0.0] * num_requests
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=num_requests)
    return [float(x) for x in np.cumsum(gaps)]
