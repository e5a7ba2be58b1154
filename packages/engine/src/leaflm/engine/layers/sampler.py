"""From logits to next tokens: penalties, seeded filtered sampling, logprobs.

Per-row parameters become small tensors once per step; the work itself is the batched
`leaflm.kernels` ops. Every row samples with its sequence's own seed and its count of
generated tokens as the offset, so a request's random stream does not depend on what else is
in the batch. Logprobs are those of the raw model distribution (as vLLM reports them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leaflm import kernels
from leaflm.engine.layers.logit_controls import apply_logit_controls
from leaflm.engine.sequence import Sequence
from leaflm.engine.structured_outputs import apply_grammar_masks


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[float] | None = None  # of each sampled token
    ranks: list[int] | None = None
    top_ids: list[list[int]] | None = None
    top_logprobs: list[list[float]] | None = None


def wants_logprobs(seq: Sequence) -> bool:
    params = seq.request.params
    return params.logprobs is not None or params.num_sequences > params.n


class Sampler:
    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = device

    @torch.inference_mode()  # the runner's logits are inference tensors; penalties edit them
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        """Sample one token per row of `logits` `[len(seqs), V]` (modified in place)."""
        params = [s.request.params for s in seqs]
        need_lp = any(wants_logprobs(s) for s in seqs)
        raw = logits
        penalties = any(p.uses_penalties for p in params)
        controls = any(s.request.has_logit_controls for s in seqs)
        grammar = any(s.request.grammar is not None for s in seqs)
        if need_lp and (penalties or controls or grammar):
            raw = logits.clone()  # logprobs are those of the raw distribution
        if penalties:
            self._apply_penalties(logits, seqs)
        if controls:
            apply_logit_controls(logits, seqs)
        if grammar:
            apply_grammar_masks(logits, seqs)
        dev = self.device
        ids = kernels.sample(
            logits,
            torch.tensor([p.temperature for p in params], dtype=torch.float32, device=dev),
            torch.tensor([self._top_k(p.top_k) for p in params], dtype=torch.int32, device=dev),
            torch.tensor([p.top_p for p in params], dtype=torch.float32, device=dev),
            torch.tensor([p.min_p for p in params], dtype=torch.float32, device=dev),
            torch.tensor([s.seed for s in seqs], dtype=torch.int64, device=dev),
            torch.tensor([s.num_output_tokens for s in seqs], dtype=torch.int64, device=dev),
        )
        out = SamplerOutput(ids.tolist())
        if need_lp:
            top_n = max((p.logprobs or 0) for p in params)
            lp, top_ids, top_lp, rank = kernels.compute_logprobs(raw, ids, top_n, return_rank=True)
            out.logprobs, out.ranks = lp.tolist(), rank.tolist()
            out.top_ids, out.top_logprobs = top_ids.tolist(), top_lp.tolist()
        return out

    def _top_k(self, top_k: int) -> int:
        """A top-k of the whole vocabulary or more is no top-k (and must fit an int32)."""
        return -1 if top_k >= self.vocab_size else top_k

    def _apply_penalties(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        rows, vocab = len(seqs), self.vocab_size
        counts = torch.zeros(rows, vocab + 1, dtype=torch.int32, device=self.device)
        prompt_mask = torch.zeros(rows, vocab + 1, dtype=torch.bool, device=self.device)
        for i, s in enumerate(seqs):
            out_ids = s.output_token_ids
            if out_ids:
                idx = torch.tensor(out_ids, dtype=torch.long, device=self.device)
                counts[i].index_add_(0, idx, torch.ones_like(idx, dtype=torch.int32))
            if s.request.params.repetition_penalty != 1.0:
                prompt = torch.tensor(s.request.prompt_token_ids, device=self.device)
                prompt_mask[i, prompt] = True
        params = [s.request.params for s in seqs]
        kernels.apply_penalties(
            logits,
            counts[:, :vocab],
            torch.tensor([p.presence_penalty for p in params], device=self.device),
            torch.tensor([p.frequency_penalty for p in params], device=self.device),
            torch.tensor([p.repetition_penalty for p in params], device=self.device),
            prompt_mask[:, :vocab],
        )
