"""Beam search on the paged KV cache: beams are Sequences that fork with copy-on-write.

A beam request starts as one Sequence (its prompt). Each time every live beam of a request
has its next-token logits, one beam step runs, following HF Transformers' `_beam_search`
(so results match `generate(num_beams=W, do_sample=False)`):

- scores: running cumulative logprob + log_softmax of each beam's logits, flattened over
  (beam, token); the top `max(2, 1 + #eos) * W` candidates are kept;
- the best W candidates that do not stop become the next live beams; a parent chosen k
  times continues itself with its first token and forks k - 1 children that share all of
  its KV blocks (the block manager copies a shared partial block on the first write); a
  parent chosen zero times is freed;
- candidates among the top W that stop (EOS, max_tokens, max_model_len) become finished
  hypotheses scored `cum_logprob / generated_len ** length_penalty`; the best W are kept;
- the request ends when every top candidate stops, or when no live beam can beat the worst
  of W finished hypotheses (HF's `early_stopping=False` heuristic).

Beams that already have logits while a sibling is still being computed (after a
preemption) are parked: taken out of the scheduler's running queue, their blocks kept, until
the whole group is ready. If a step's schedule leaves such a sibling out (waiting or swapped:
it needs blocks), the parked beams release theirs (their KV is recomputed after the beam
step; their logits are kept), so a group never holds blocks its own sibling waits for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from leaflm.engine.outputs import CompletionOutput, RequestOutput
from leaflm.engine.sampling_params import SamplingParams
from leaflm.engine.sequence import SequenceStatus

if TYPE_CHECKING:
    from leaflm.engine.engine import LLMEngine
    from leaflm.engine.sequence import Request, Sequence


@dataclass
class BeamSearchParams:
    """Beam search settings; field names and defaults follow vLLM."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        for name in ("beam_width", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a boolean, got {self.ignore_eos!r}")
        for name in ("temperature", "length_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
            setattr(self, name, float(value))
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")

    def sampling_params(self) -> SamplingParams:
        """What the scheduler and stop bookkeeping see of a beam request."""
        return SamplingParams(
            temperature=0.0,
            max_tokens=self.max_tokens,
            ignore_eos=self.ignore_eos,
            output_kind="final_only",
        )


@dataclass
class BeamSearchSequence:
    """One finished hypothesis: prompt + generated `tokens`, the generated `text`."""

    tokens: list[int]
    cum_logprob: float
    text: str | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    score: float = 0.0  # cum_logprob / generated_len ** length_penalty: the ranking key


@dataclass
class BeamSearchOutput:
    """The hypotheses of one prompt, best first."""

    sequences: list[BeamSearchSequence]


@dataclass
class _Hypothesis:
    score: float
    cum_logprob: float
    output_ids: list[int]
    finish_reason: str


@dataclass
class BeamGroup:
    """The beam search state of one request."""

    params: BeamSearchParams
    live: list[Sequence]
    keep: int  # candidates kept per step: max(2, 1 + number of EOS ids) * beam_width
    ready: dict[int, torch.Tensor] = field(default_factory=dict)  # seq_id -> logprob row
    parked: set[int] = field(default_factory=set)  # ready, off the queues, blocks kept
    released: set[int] = field(default_factory=set)  # ready, off the queues, blocks freed
    finished: list[_Hypothesis] = field(default_factory=list)
    can_improve: bool = True
    next_index: int = 1


class BeamSearcher:
    """Runs the beam steps of the engine's beam requests; the engine calls `step` each step."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.groups: dict[str, BeamGroup] = {}

    def add(self, req: Request, seq: Sequence, params: BeamSearchParams) -> None:
        n_eos = 0 if params.ignore_eos else len(req.eos_token_ids)
        group = BeamGroup(params, [seq], max(2, 1 + n_eos) * params.beam_width)
        req.beam = group
        self.groups[req.request_id] = group

    def discard(self, request_id: str) -> None:
        self.groups.pop(request_id, None)

    def release_blocked(self) -> None:
        """Free the blocks of parked beams whose sibling the scheduler left waiting or swapped."""
        for group in self.groups.values():
            if not group.parked:
                continue
            lagging = [s for s in group.live if s.seq_id not in group.ready]
            if all(s.status is SequenceStatus.RUNNING for s in lagging):
                continue  # the sibling runs (it was scheduled): keep the blocks
            for seq in group.live:
                if seq.seq_id in group.parked:
                    self.engine.block_manager.free(seq)
                    seq.num_computed_tokens = 0
                    seq.status = SequenceStatus.WAITING
                    group.released.add(seq.seq_id)
            group.parked.clear()

    def step(
        self, logits: torch.Tensor, seqs: list[Sequence], rows: list[int]
    ) -> list[RequestOutput]:
        """Take the beam sequences out of (`seqs`, `rows`) (in place); run due beam steps."""
        mine = [k for k, s in enumerate(seqs) if s.request.beam is not None]
        if not mine:
            return []
        beam_seqs = [seqs[k] for k in mine]
        beam_rows = [rows[k] for k in mine]
        for k in reversed(mine):
            del seqs[k], rows[k]
        picked = logits.index_select(0, torch.tensor(beam_rows, device=logits.device)).float()
        temps = [s.request.beam.params.temperature for s in beam_seqs]
        if any(t > 0 for t in temps):
            scale = torch.tensor([t if t > 0 else 1.0 for t in temps], device=picked.device)
            picked = picked / scale[:, None]
        logprobs = torch.log_softmax(picked, dim=-1).cpu()
        touched: dict[str, Request] = {}
        for j, seq in enumerate(beam_seqs):
            seq.request.beam.ready[seq.seq_id] = logprobs[j]
            touched[seq.request.request_id] = seq.request
        outs = []
        for req in touched.values():
            group = req.beam
            if len(group.ready) < len(group.live):
                self._park(group)
                continue
            if self._advance(req, group):
                outs.append(self._finish(req, group))
        return outs

    # -- one beam step -----------------------------------------------------------------------
    def _park(self, group: BeamGroup) -> None:
        running = self.engine.scheduler.running
        for seq in group.live:
            if seq.seq_id in group.ready and seq.seq_id not in group.parked and seq in running:
                running.remove(seq)
                group.parked.add(seq.seq_id)

    def _advance(self, req: Request, group: BeamGroup) -> bool:
        """One beam step for `req`; True when the search is over."""
        p, engine = group.params, self.engine
        live = group.live
        lp = torch.stack([group.ready[s.seq_id] for s in live])
        group.ready.clear()
        vocab = lp.shape[1]
        scores = torch.tensor([s.cumulative_logprob for s in live], dtype=torch.float32)
        acc = (lp + scores[:, None]).flatten()
        top = torch.topk(acc, min(group.keep, acc.numel()))
        top_scores, top_idx = top.values.tolist(), top.indices.tolist()
        gen_len = live[0].num_output_tokens + 1
        at_limit = gen_len >= p.max_tokens or live[0].num_tokens + 1 >= engine.outputs.max_model_len
        cands = []  # (score, parent position, token, finish reason or None)
        for score, idx in zip(top_scores, top_idx, strict=True):
            parent, token = divmod(idx, vocab)
            if not p.ignore_eos and token in req.eos_token_ids:
                reason: str | None = "stop"
            else:
                reason = "length" if at_limit else None
            cands.append((score, parent, token, reason))

        if group.can_improve:  # HF adds no finished hypotheses once improvement is impossible
            penalty = gen_len**p.length_penalty
            for score, parent, token, reason in cands[: p.beam_width]:
                if reason is not None:
                    out_ids = [*live[parent].output_token_ids, token]
                    group.finished.append(_Hypothesis(score / penalty, score, out_ids, reason))
            group.finished.sort(key=lambda h: h.score, reverse=True)  # stable: older first
            del group.finished[p.beam_width :]

        going = [c for c in cands if c[3] is None][: p.beam_width]
        if going:
            best = going[0][0] / gen_len**p.length_penalty
            full = len(group.finished) >= p.beam_width
            worst = group.finished[-1].score if full else -1.0e9
            group.can_improve = group.can_improve and best > worst
        if not going or not group.can_improve:
            return True
        self._regroup(req, group, going)
        engine.generation_tokens_total += len(going)
        return False

    def _regroup(self, req: Request, group: BeamGroup, going: list[tuple]) -> None:
        """Make the live beams the chosen continuations: continue, fork or free each parent."""
        engine = self.engine
        sched, bm = engine.scheduler, engine.block_manager
        picks = [0] * len(group.live)
        for _, parent, _, _ in going:
            picks[parent] += 1
        beams: dict[int, list[Sequence]] = {}  # parent position -> its continuing sequences
        for pos, seq in enumerate(group.live):
            if picks[pos] == 0:
                sched.finish(seq)
                continue
            beams[pos] = [seq]
            for _ in range(picks[pos] - 1):  # fork before the parent gets its new token
                child = seq.fork(engine._new_seq_id(), group.next_index, 0)
                group.next_index += 1
                bm.fork(seq, child)
                if child.status is SequenceStatus.RUNNING:
                    sched.add_running(child)
                else:  # a released parent has no blocks: the child recomputes too
                    sched.add(child)
                req.seqs.append(child)
                beams[pos].append(child)
            if seq.seq_id in group.parked:
                sched.add_running(seq)
            elif seq.seq_id in group.released:
                sched.add(seq)  # recomputes its KV, then samples with its siblings
        group.parked.clear()
        group.released.clear()
        live = []  # in candidate rank order, as HF orders its running beams
        for score, parent, token, _ in going:
            seq = beams[parent].pop(0)
            seq.token_ids.append(token)
            seq.cumulative_logprob = score
            live.append(seq)
        group.live = live

    def _finish(self, req: Request, group: BeamGroup) -> RequestOutput:
        """Free every live beam and turn the finished hypotheses into the request's output."""
        engine = self.engine
        for seq in group.live:
            if not seq.is_finished:
                seq.finish_reason = "length"
                engine.scheduler.finish(seq)
        group.live, group.parked, group.released = [], set(), set()
        self.discard(req.request_id)
        engine.requests.pop(req.request_id, None)
        tok = engine.tokenizer
        outputs = []
        for i, h in enumerate(group.finished):
            ids = h.output_ids[:-1] if h.finish_reason == "stop" else h.output_ids
            text = tok.decode(ids, skip_special_tokens=True)
            outputs.append(
                CompletionOutput(i, text, list(h.output_ids), h.cum_logprob, None, h.finish_reason)
            )
        return RequestOutput(
            req.request_id, req.prompt, req.prompt_token_ids, outputs, True, req.metrics
        )


def to_beam_output(out: RequestOutput, length_penalty: float) -> BeamSearchOutput:
    """vLLM's offline shape of a finished beam request (tokens include the prompt)."""
    seqs = []
    for c in out.outputs:
        cum = c.cumulative_logprob or 0.0
        seqs.append(
            BeamSearchSequence(
                tokens=list(out.prompt_token_ids) + list(c.token_ids),
                cum_logprob=cum,
                text=c.text,
                finish_reason=c.finish_reason,
                stop_reason=c.stop_reason,
                score=cum / max(len(c.token_ids), 1) ** length_penalty,
            )
        )
    return BeamSearchOutput(seqs)
