"""Request and Sequence: the engine's bookkeeping for one prompt and each of its completions.

A Request owns one Sequence until its prompt is computed; with n/best_of > 1 it then forks
into several Sequences that share the prompt's KV blocks. The scheduler and block manager
work on Sequences; outputs are assembled per Request.
"""

from __future__ import annotations

import enum
import itertools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from leaflm.engine.beam_search import BeamGroup
    from leaflm.engine.detokenizer import IncrementalDetokenizer
    from leaflm.engine.outputs import Logprob, RequestMetrics
    from leaflm.engine.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SWAPPED = "swapped"
    FINISHED = "finished"


_arrival_counter = itertools.count()


class Request:
    """One user request: prompt, parameters, timestamps and its sequences."""

    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        metrics: RequestMetrics,
        eos_token_ids: frozenset[int],
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.metrics = metrics
        self.eos_token_ids = eos_token_ids
        self.arrival_order = next(_arrival_counter)  # FCFS priority: lower is older
        self.seqs: list[Sequence] = []
        self.prompt_logprobs: list[dict[int, Logprob] | None] | None = (
            [None] if params.prompt_logprobs is not None else None
        )
        self.forked = False
        self.aborted = False
        self.beam: BeamGroup | None = None  # set for beam search requests
        # Logit controls, prepared once by the engine (see layers/logit_controls.py).
        self.allowed_ids: torch.Tensor | None = None
        self.bad_words_ids: list[list[int]] = []
        self.logit_bias_tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        self.grammar: Any = None  # an xgrammar CompiledGrammar (structured_outputs.py)
        self.has_logit_controls = bool(
            params.logit_bias or params.allowed_token_ids or params.bad_words
        )

    @property
    def needs_prompt_logprobs(self) -> bool:
        """True while some prompt positions still lack their logprobs."""
        return self.prompt_logprobs is not None and len(self.prompt_logprobs) < len(
            self.prompt_token_ids
        )

    @property
    def finished(self) -> bool:
        return all(s.status is SequenceStatus.FINISHED for s in self.seqs)


class Sequence:
    """One completion's token stream, KV-cache state and decoded text."""

    def __init__(self, seq_id: int, request: Request, index: int, seed: int) -> None:
        self.seq_id = seq_id
        self.request = request
        self.index = index
        self.seed = seed
        self.token_ids: list[int] = list(request.prompt_token_ids)
        self.num_prompt_tokens = len(request.prompt_token_ids)
        self.num_computed_tokens = 0
        self.block_table: list[int] = []  # device block ids, or CPU ids while SWAPPED
        self.block_hashes: list[int] = []  # prefix-cache hash of each full block, in order
        self.num_registered_blocks = 0  # leading blocks already offered to the prefix cache
        self.status = SequenceStatus.WAITING
        self.cumulative_logprob = 0.0
        self.logprobs: list[dict[int, Logprob]] | None = (
            [] if request.params.logprobs is not None else None
        )
        self.detokenizer: IncrementalDetokenizer | None = None
        self.grammar_state: Any = None  # built from the tokens when first sampled
        self.text = ""
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        # What was already sent out, for "delta" outputs.
        self.sent_text_len = 0
        self.sent_num_tokens = 0
        self.sent_finish = False

    @property
    def priority(self) -> tuple[int, int]:
        """Sort key: the oldest request first, then completion index."""
        return (self.request.arrival_order, self.index)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def fork(self, seq_id: int, index: int, seed: int) -> Sequence:
        """A sibling with the same tokens and progress; blocks are shared by the block manager."""
        child = Sequence(seq_id, self.request, index, seed)
        child.token_ids = list(self.token_ids)
        child.num_computed_tokens = self.num_computed_tokens
        child.block_hashes = list(self.block_hashes)
        child.num_registered_blocks = self.num_registered_blocks
        child.status = self.status
        return child
