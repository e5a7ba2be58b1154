"""After sampling: append tokens and logprobs, detokenize, check stops, shape outputs.

Text is decoded incrementally while a request streams; for requests that only want the
final result and have no stop strings, decoding waits until they finish (one decode instead
of one per step). Outputs are shaped per `output_kind`: cumulative, delta (only what is new,
only the completions that changed) or final_only.
"""

from __future__ import annotations

from typing import Any

import torch

from leaflm import kernels
from leaflm.engine.detokenizer import IncrementalDetokenizer
from leaflm.engine.layers.sampler import SamplerOutput, wants_logprobs
from leaflm.engine.outputs import CompletionOutput, Logprob, RequestOutput
from leaflm.engine.sequence import Request, Sequence
from leaflm.engine.stop_checker import check_stop, stop_by_token, stop_holdback


class OutputProcessor:
    def __init__(self, tokenizer: Any, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len

    def decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def logprob_entry(
        self, token: int, logprob: float, rank: int, top_ids: list[int], top_lps: list[float]
    ) -> dict[int, Logprob]:
        """vLLM's shape: the chosen token plus the top-n, each with rank and text."""
        entry = {token: Logprob(logprob, rank, self.decode_token(token))}
        for r, (tid, lp) in enumerate(zip(top_ids, top_lps, strict=True), start=1):
            if tid not in entry:
                entry[tid] = Logprob(lp, r, self.decode_token(tid))
        return entry

    def add_prompt_logprobs(
        self, logits: torch.Tensor, targets: list[tuple[Request, int, int]]
    ) -> None:
        """Append logprob entries for prompt tokens predicted in this step.

        `targets` are (request, prompt position, row of `logits` that predicts it).
        """
        idx = torch.tensor([row for _, _, row in targets], device=logits.device)
        tokens = torch.tensor([r.prompt_token_ids[q] for r, q, _ in targets], device=logits.device)
        top_n = max(r.params.prompt_logprobs or 0 for r, _, _ in targets)
        lp, top_ids, top_lp, rank = kernels.compute_logprobs(
            logits[idx], tokens, top_n, return_rank=True
        )
        lp, rank, top_ids, top_lp = lp.tolist(), rank.tolist(), top_ids.tolist(), top_lp.tolist()
        for j, (req, q, _) in enumerate(targets):
            n = req.params.prompt_logprobs or 0
            entry = self.logprob_entry(
                req.prompt_token_ids[q], lp[j], rank[j], top_ids[j][:n], top_lp[j][:n]
            )
            req.prompt_logprobs.append(entry)

    def append_sampled(self, seq: Sequence, result: SamplerOutput, row: int) -> None:
        """Record row `row` of the sampler's result (token, logprobs) on `seq`."""
        token = result.token_ids[row]
        if result.logprobs is not None and wants_logprobs(seq):
            seq.cumulative_logprob += result.logprobs[row]
            if seq.logprobs is not None:
                top = seq.request.params.logprobs
                seq.logprobs.append(
                    self.logprob_entry(
                        token, result.logprobs[row], result.ranks[row],
                        result.top_ids[row][:top], result.top_logprobs[row][:top],
                    )
                )  # fmt: skip
        self.append_token(seq, token)

    def append_token(self, seq: Sequence, token: int) -> None:
        """Add a sampled token to `seq`, update its text and decide whether it stops."""
        seq.token_ids.append(token)
        if stop_by_token(seq):
            return
        params = seq.request.params
        if params.output_kind == "final_only" and not params.stop:
            limit = params.max_tokens if params.max_tokens is not None else float("inf")
            if seq.num_output_tokens >= limit or seq.num_tokens >= self.max_model_len:
                seq.finish_reason = "length"
            return
        new_text = self._detokenizer(seq).step([token])
        seq.text += new_text
        check_stop(seq, new_text, self.max_model_len)

    def finalize_text(self, seq: Sequence) -> None:
        """Complete a finished sequence's text: deferred decoding, then held-back bytes."""
        if isinstance(seq.stop_reason, str):  # cut at a stop string: the text is final
            return
        params = seq.request.params
        if params.output_kind == "final_only" and not params.stop and seq.detokenizer is None:
            out = seq.output_token_ids
            if seq.finish_reason == "stop":  # stopped by EOS or a stop token: it adds no text
                out = out[:-1]
            seq.text = self._detokenizer(seq).step(out)
        seq.text += self._detokenizer(seq).flush()

    def _detokenizer(self, seq: Sequence) -> IncrementalDetokenizer:
        if seq.detokenizer is None:
            seq.detokenizer = IncrementalDetokenizer(
                self.tokenizer,
                seq.request.prompt_token_ids,
                seq.request.params.skip_special_tokens,
            )
        return seq.detokenizer

    def make_output(self, req: Request) -> RequestOutput | None:
        """The RequestOutput to emit for `req` now, or None if there is nothing to say."""
        params = req.params
        kind = params.output_kind
        finished = req.finished
        if not finished and (kind == "final_only" or params.num_sequences > params.n):
            # best_of > n: which candidates are returned is only known at the end, so
            # nothing is emitted before then (a delta stream would glue candidates together).
            return None
        seqs = req.seqs
        if finished and len(seqs) > params.n:
            seqs = sorted(seqs, key=lambda s: s.cumulative_logprob, reverse=True)[: params.n]
            seqs = sorted(seqs, key=lambda s: s.index)
        else:
            seqs = seqs[: params.n]
        completions = []
        for position, s in enumerate(seqs):
            if finished and len(req.seqs) > params.n:
                index = position
            else:
                index = s.index
            completion = self._completion(s, index, delta=kind == "delta")
            if completion is not None:
                completions.append(completion)
        if kind == "delta" and not completions and not finished:
            return None
        return RequestOutput(
            request_id=req.request_id,
            prompt=req.prompt,
            prompt_token_ids=req.prompt_token_ids,
            outputs=completions,
            finished=finished,
            metrics=req.metrics,
            prompt_logprobs=req.prompt_logprobs,
        )

    def _completion(self, s: Sequence, index: int, delta: bool) -> CompletionOutput | None:
        done = s.finish_reason is not None
        # Never negative: a stop string longer than the text so far holds back all of it.
        text_end = max(0, len(s.text) - stop_holdback(s))
        out_ids = s.output_token_ids
        lps = s.logprobs
        with_lp = s.request.params.logprobs is not None or len(s.request.seqs) > s.request.params.n
        if delta:
            nothing_new = s.sent_num_tokens == len(out_ids) and s.sent_text_len >= text_end
            if nothing_new and (not done or s.sent_finish):
                return None
            text = s.text[s.sent_text_len : text_end]
            ids = out_ids[s.sent_num_tokens :]
            lps = lps[s.sent_num_tokens :] if lps is not None else None
            s.sent_text_len = max(s.sent_text_len, text_end)
            s.sent_num_tokens = len(out_ids)
            s.sent_finish = done
        else:
            text, ids = s.text[:text_end], list(out_ids)
            lps = list(lps) if lps is not None else None
        return CompletionOutput(
            index=index,
            text=text,
            token_ids=ids,
            cumulative_logprob=s.cumulative_logprob if with_lp else None,
            logprobs=lps,
            finish_reason=s.finish_reason,
            stop_reason=s.stop_reason,
        )
