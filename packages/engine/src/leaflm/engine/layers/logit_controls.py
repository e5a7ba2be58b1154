"""Per-request logit controls applied before sampling: allowed tokens, bad words, logit bias.

vLLM's semantics: `allowed_token_ids` keeps only those tokens; a bad word (its token ids,
with and without a leading space, see `bad_words_token_ids`) is banned at the step where the
tokens generated so far end with all of the word but its last token; `logit_bias` adds its
value to the token's logit (OpenAI's [-100, 100]). Only rows of requests that set one of
them are touched, and the engine checks `Request.has_logit_controls` before calling here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from leaflm.engine.sequence import Sequence


def bad_words_token_ids(tokenizer: Any, bad_words: list[str]) -> list[list[int]]:
    """Token ids of each bad word, alone and after a space (vLLM's rule)."""
    out: list[list[int]] = []
    for word in bad_words:
        for add_prefix_space in (False, True):
            prefix = " " if add_prefix_space else ""
            ids = tokenizer.encode(prefix + word.lstrip(), add_special_tokens=False)
            if not ids:
                continue
            if not add_prefix_space or (out and ids[0] != out[-1][0] and len(ids) == len(out[-1])):
                out.append(list(ids))
    return out


def apply_logit_controls(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """Apply each constrained row's controls to `logits` `[len(seqs), V]` in place."""
    neg_inf = float("-inf")
    for i, seq in enumerate(seqs):
        req = seq.request
        if not req.has_logit_controls:
            continue
        params = req.params
        row = logits[i]
        if req.allowed_ids is not None:
            keep = row.index_select(0, req.allowed_ids)
            row.fill_(neg_inf)
            row.index_copy_(0, req.allowed_ids, keep)
        if req.bad_words_ids:
            past = seq.output_token_ids
            for word in req.bad_words_ids:
                prefix = len(word) - 1
                if prefix > len(past):
                    continue
                if prefix == 0 or past[-prefix:] == word[:prefix]:
                    row[word[-1]] = neg_inf
        if params.logit_bias:
            ids, bias = req.logit_bias_tensors
            row.index_add_(0, ids, bias)


def prepare_request(
    req: Any, tokenizer: Any, vocab_size: int, device: torch.device, grammars: Any
) -> None:
    """Check a request's controls against the vocabulary and build what sampling reads.

    Raises ValueError naming the field; compiles the structured-output grammar (cached).
    """
    params = req.params
    for name, ids in (
        ("logit_bias", list(params.logit_bias or ())),
        ("allowed_token_ids", params.allowed_token_ids or []),
    ):
        bad = [t for t in ids if t >= vocab_size]
        if bad:
            raise ValueError(
                f"{name} has token ids outside the vocabulary [0, {vocab_size}): {bad[:5]}"
            )
    if params.allowed_token_ids:
        req.allowed_ids = torch.tensor(sorted(set(params.allowed_token_ids)), device=device)
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), dtype=torch.long, device=device)
        bias = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32, device=device)
        req.logit_bias_tensors = (ids, bias)
    if params.bad_words:
        req.bad_words_ids = bad_words_token_ids(tokenizer, params.bad_words)
    if params.structured_outputs is not None:
        req.grammar = grammars.compile(params.structured_outputs)
