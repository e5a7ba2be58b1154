"""LLMEngine: one step = schedule, run the model, sample, then update and emit outputs.

    add_request -> Scheduler.schedule() -> Executor.execute_model() -> Sampler
                -> OutputProcessor (append, detokenize, stop) -> RequestOutput per request

The engine is single-threaded; `AsyncLLM` drives it from one background thread. The model
runs behind an executor (`leaflm.engine.executor`): in-process for one device, else on one
worker per tensor-parallel rank; everything else here runs once, in this process.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from leaflm.engine.beam_search import BeamSearcher, BeamSearchParams
from leaflm.engine.block_manager import BlockManager
from leaflm.engine.config import EngineArgs, ModelConfig
from leaflm.engine.engine_setup import load_model_config, size_kv_cache
from leaflm.engine.executor import make_executor
from leaflm.engine.layers.logit_controls import prepare_request
from leaflm.engine.layers.sampler import Sampler
from leaflm.engine.model_runner import take_rows
from leaflm.engine.output_processor import OutputProcessor
from leaflm.engine.outputs import EngineStats, RequestMetrics, RequestOutput
from leaflm.engine.sampling_params import SamplingParams
from leaflm.engine.scheduler import Scheduler, SchedulerOutput
from leaflm.engine.sequence import Request, Sequence
from leaflm.engine.structured_outputs import GrammarCache

_SEED_MASK = (1 << 63) - 1
logger = logging.getLogger(__name__)


class LLMEngine:
    def __init__(self, args: EngineArgs) -> None:
        self.args = args
        start = time.perf_counter()
        self.model_config, self.tokenizer, self.eos_token_ids = load_model_config(args)
        self.executor = make_executor(args, self.model_config)
        try:
            self._init_cache_and_state(args)
        except BaseException:
            self.executor.shutdown()
            raise
        mc = self.model_config
        kv = "" if mc.cache_dtype == mc.dtype else f", KV cache {mc.cache_dtype}"
        logger.info(
            "ready in %.1f s: %s on %s, %s%s, max_model_len=%d",
            time.perf_counter() - start, mc.served_name, mc.device,
            str(mc.dtype).replace("torch.", ""), kv.replace("torch.", ""), mc.max_model_len,
        )  # fmt: skip

    def _init_cache_and_state(self, args: EngineArgs) -> None:
        self.runner = getattr(self.executor, "runner", None)  # the in-process one (`uni`)
        self.vocab_size = self.executor.vocab_size
        cache = size_kv_cache(args, self.model_config, self.executor)  # type: ignore[arg-type]
        self.cache_config = cache
        self.executor.init_kv_cache(
            cache.num_blocks, cache.block_size, cache.num_cpu_blocks, cache.num_prefault_blocks
        )
        self.block_manager = BlockManager(
            cache.num_blocks, cache.block_size, cache.enable_prefix_caching, cache.num_cpu_blocks
        )
        mc = self.model_config
        budget = args.max_num_batched_tokens or (2048 if mc.device.type == "cpu" else 8192)
        self.scheduler = Scheduler(
            self.block_manager, args.max_num_seqs, budget, use_swap=cache.num_cpu_blocks > 0
        )
        self.sampler = Sampler(self.vocab_size, self.executor.driver_device)
        self.outputs = OutputProcessor(self.tokenizer, mc.max_model_len)
        self.beam_search = BeamSearcher(self)
        self.grammars = GrammarCache(self.tokenizer, self.vocab_size, sorted(self.eos_token_ids))
        self.rng = random.Random(args.seed)
        self.requests: dict[str, Request] = {}
        self._next_seq_id = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0

    # -- requests ----------------------------------------------------------------------------
    def tokenize(
        self, prompt: str | list[int], truncate_prompt_tokens: int | None = None
    ) -> tuple[str | None, list[int]]:
        """(prompt text or None, token ids), validating what users may pass as a prompt.

        `truncate_prompt_tokens` keeps only that many of the prompt's last tokens.
        """
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
            text: str | None = prompt
        elif isinstance(prompt, (list, tuple)) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt
        ):
            ids, text = list(prompt), None
        else:
            raise ValueError(
                f"prompt must be a string or a list of token ids, got {type(prompt).__name__}"
            )
        if not ids:
            raise ValueError("prompt must not be empty")
        if truncate_prompt_tokens is not None:
            ids = ids[-truncate_prompt_tokens:]
        vocab = self.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(
                f"prompt contains token ids outside the vocabulary [0, {vocab}): {bad[:5]}"
            )
        if len(ids) >= self.model_config.max_model_len:
            raise ValueError(
                f"prompt is {len(ids)} tokens long, which leaves no room to generate within "
                f"max_model_len={self.model_config.max_model_len}"
            )
        return text, ids

    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | BeamSearchParams | None = None,
        arrival_time: float | None = None,
        prompt_token_ids: list[int] | None = None,
    ) -> None:
        """Validate and queue a request; raises ValueError for bad input.

        `prompt_token_ids`, when given, are the already-validated tokens of a text `prompt`.
        `BeamSearchParams` make it a beam search request (see beam_search.py).
        """
        params = params if params is not None else SamplingParams()
        beam = None
        if isinstance(params, BeamSearchParams):
            if params.beam_width > self.args.max_num_seqs:
                raise ValueError(
                    f"beam_width must be <= max_num_seqs ({self.args.max_num_seqs}), "
                    f"got {params.beam_width}"
                )
            beam, params = params, params.sampling_params()
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling_params must be SamplingParams, got {type(params).__name__}")
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if params.logprobs is not None and params.logprobs > self.vocab_size:
            raise ValueError(f"logprobs must be <= vocab size {self.vocab_size}")
        self.executor.check_alive()
        text: str | None
        if prompt_token_ids is not None and isinstance(prompt, str):
            text, ids = prompt, list(prompt_token_ids)
        else:
            text, ids = self.tokenize(prompt, params.truncate_prompt_tokens)
        metrics = RequestMetrics(arrival_time or time.monotonic())
        req = Request(request_id, text, ids, params, metrics, self.eos_token_ids)
        prepare_request(
            req, self.tokenizer, self.vocab_size, self.executor.driver_device, self.grammars
        )
        seed = params.seed if params.seed is not None else self.rng.getrandbits(63)
        seq = Sequence(self._new_seq_id(), req, 0, seed & _SEED_MASK)
        req.seqs.append(seq)
        if beam is not None:
            self.beam_search.add(req, seq, beam)
        self.requests[request_id] = req
        self.scheduler.add(seq)
        self.prompt_tokens_total += len(ids)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request and free its blocks; returns its final output, None if unknown."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        req.aborted = True
        self.beam_search.discard(request_id)
        for seq in req.seqs:
            if not seq.is_finished:
                seq.finish_reason = "abort"
                self.scheduler.finish(seq)
        return self.outputs.make_output(req) or self._final(req)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # -- the step ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        sched = self.scheduler.schedule()
        if self.beam_search.groups:
            self.beam_search.release_blocked()
        if sched.empty:
            return []
        now = time.monotonic()
        try:
            return self._run(sched, now)
        except Exception:
            # Never leak blocks: fail the requests of this batch, or of every request once
            # the workers are gone (the executor has shut them down).
            failed = self.executor.failed is not None
            doomed = list(self.requests) if failed else [s.request.request_id for s in sched.seqs]
            for request_id in doomed:
                if request_id in self.requests:
                    self.abort(request_id)
            raise

    def _run(self, sched: SchedulerOutput, now: float) -> list[RequestOutput]:
        rows: list[tuple[int, int]] = []
        prompt_targets: list[tuple[Request, int, int]] = []  # (request, position, row)
        samplers: list[tuple[Sequence, int]] = []
        for i, (seq, n) in enumerate(zip(sched.seqs, sched.num_tokens, strict=True)):
            req = seq.request
            if req.metrics.first_scheduled_time is None:
                req.metrics.first_scheduled_time = now
            start = seq.num_computed_tokens
            if req.needs_prompt_logprobs:
                have = len(req.prompt_logprobs)
                for off in range(n):
                    q = start + off + 1  # the prompt token predicted by this row
                    if have <= q < seq.num_prompt_tokens:
                        prompt_targets.append((req, q, len(rows)))
                        rows.append((i, off))
            if start + n == seq.num_tokens:
                samplers.append((seq, len(rows)))
                rows.append((i, n - 1))
        logits = self.executor.execute_model(sched, rows)

        for seq, n in zip(sched.seqs, sched.num_tokens, strict=True):
            seq.num_computed_tokens += n
            self.block_manager.cache_full_blocks(seq)
        if prompt_targets:
            self.outputs.add_prompt_logprobs(logits, prompt_targets)
        sample_seqs, sample_rows = self._fork(samplers)
        beam_outs = []
        if self.beam_search.groups:  # takes its sequences out of sample_seqs / sample_rows
            beam_outs = self.beam_search.step(logits, sample_seqs, sample_rows)
        if not sample_seqs:
            return beam_outs
        result = self.sampler(take_rows(logits, sample_rows), sample_seqs)

        touched: dict[str, Request] = {}
        now = time.monotonic()
        for j, seq in enumerate(sample_seqs):
            self.outputs.append_sampled(seq, result, j)
            self.generation_tokens_total += 1
            req = seq.request
            if req.metrics.first_token_time is None:
                req.metrics.first_token_time = now
            req.metrics.last_token_time = now
            if seq.finish_reason is not None:
                self.outputs.finalize_text(seq)
                self.scheduler.finish(seq)
            touched[req.request_id] = req

        outs = []
        for req in touched.values():
            if req.finished:
                req.metrics.finished_time = now
                self.requests.pop(req.request_id, None)
            out = self.outputs.make_output(req)
            if out is not None:
                outs.append(out)
        return outs + beam_outs

    def _fork(self, samplers: list[tuple[Sequence, int]]) -> tuple[list[Sequence], list[int]]:
        """Sequences to sample and their logits rows; forks n/best_of siblings after prefill."""
        seqs, rows = [], []
        for seq, row in samplers:
            seqs.append(seq)
            rows.append(row)
            req = seq.request
            if req.params.num_sequences > 1 and not req.forked:
                req.forked = True
                for k in range(1, req.params.num_sequences):
                    child_seed = hash((seq.seed, k)) & _SEED_MASK
                    child = seq.fork(self._new_seq_id(), k, child_seed)
                    self.block_manager.fork(seq, child)
                    self.scheduler.add_running(child)
                    req.seqs.append(child)
                    seqs.append(child)
                    rows.append(row)
        return seqs, rows

    def shutdown(self) -> None:
        """Stop the executor's workers (idempotent; also happens at garbage collection)."""
        self.executor.shutdown()

    # -- introspection -----------------------------------------------------------------------
    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            num_swapped=len(self.scheduler.swapped),
            num_blocks_total=bm.num_blocks,
            num_blocks_free=bm.num_free_blocks,
            prefix_cache_hit_rate=bm.hit_rate,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
        )

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def _new_seq_id(self) -> int:
        self._next_seq_id += 1
        return self._next_seq_id

    def _final(self, req: Request) -> RequestOutput:
        return RequestOutput(
            req.request_id, req.prompt, req.prompt_token_ids, [], True, req.metrics
        )


__all__ = ["LLMEngine", "ModelConfig"]
