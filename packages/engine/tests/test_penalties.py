"""Repetition / frequency / presence penalties against an independent greedy reference.

The reference runs HF Transformers forwards and applies HF's RepetitionPenaltyLogitsProcessor
(prompt + output tokens) and the OpenAI frequency/presence formula (output tokens only).
"""

from __future__ import annotations

import pytest
import torch

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.testing import random_token_prompts


def _reference(model_dir, prompt, steps, repetition, frequency, presence):
    from transformers import AutoModelForCausalLM
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rep = RepetitionPenaltyLogitsProcessor(repetition) if repetition != 1.0 else None
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids])).logits[:, -1].float()
            if rep is not None:
                logits = rep(torch.tensor([ids]), logits)
            counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.shape[-1])
            logits = logits - frequency * counts - presence * (counts > 0).float()
            tok = int(logits.argmax())
            out.append(tok)
            ids.append(tok)
    return out


@pytest.mark.parametrize(
    ("repetition", "frequency", "presence"),
    [(1.5, 0.0, 0.0), (1.0, 0.8, 0.0), (1.0, 0.0, 1.5), (1.2, 0.5, 0.5)],
)
def test_penalties_match_reference(llama_dir, repetition, frequency, presence):
    prompts = random_token_prompts(2, vocab=380, lo=5, hi=15, seed=31)
    llm = LLM(str(llama_dir), kv_cache_memory="4MiB")
    params = SamplingParams(
        temperature=0.0,
        max_tokens=16,
        ignore_eos=True,
        repetition_penalty=repetition,
        frequency_penalty=frequency,
        presence_penalty=presence,
    )
    plain = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    # Batch a penalised and an unpenalised request together: rows must not leak into each other.
    outs = llm.generate([prompts[0], prompts[1]], [params, plain], use_tqdm=False)
    expected = _reference(llama_dir, prompts[0], 16, repetition, frequency, presence)
    assert outs[0].outputs[0].token_ids == expected
    assert outs[1].outputs[0].token_ids == _reference(llama_dir, prompts[1], 16, 1.0, 0.0, 0.0)
    assert expected != _reference(llama_dir, prompts[0], 16, 1.0, 0.0, 0.0)
