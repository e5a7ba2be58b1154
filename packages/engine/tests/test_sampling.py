"""Sampling: seeds, n/best_of, logprobs, and the filtered distributions (statistical test)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.testing import hf_greedy, random_token_prompts


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(str(llama_dir), block_size=4, kv_cache_memory="4MiB")


def _tokens(outs):
    return [[c.token_ids for c in o.outputs] for o in outs]


def test_seeded_sampling_is_reproducible_and_batch_independent(llm, assert_no_leaks):
    prompts = random_token_prompts(6, vocab=380, seed=11)
    target = SamplingParams(temperature=1.0, top_k=50, seed=1234, max_tokens=16, ignore_eos=True)
    alone = llm.generate(prompts[:1], target, use_tqdm=False)[0].outputs[0].token_ids
    again = llm.generate(prompts[:1], target, use_tqdm=False)[0].outputs[0].token_ids
    assert alone == again
    others = [SamplingParams(temperature=0.8, max_tokens=n, ignore_eos=True) for n in (3, 20, 9)]
    mixed = llm.generate(
        [prompts[1], prompts[0], prompts[2], prompts[3]],
        [others[0], target, others[1], others[2]],
        use_tqdm=False,
    )
    assert mixed[1].outputs[0].token_ids == alone
    different = SamplingParams(temperature=1.0, top_k=50, seed=99, max_tokens=16, ignore_eos=True)
    assert llm.generate(prompts[:1], different, use_tqdm=False)[0].outputs[0].token_ids != alone
    assert_no_leaks(llm)


def test_n_greedy_completions_share_prompt_and_match_hf(llm, llama_dir, assert_no_leaks):
    # Prompt of 6 tokens with block_size 4: the last prompt block is partial and shared, so
    # each completion's first write triggers copy-on-write.
    prompt = random_token_prompts(1, vocab=380, lo=6, hi=7, seed=5)[0]
    ref_ids, _ = hf_greedy(llama_dir, [prompt], 10)[0]
    out = llm.generate(
        [prompt],
        SamplingParams(n=3, temperature=0.0, max_tokens=10, ignore_eos=True),
        use_tqdm=False,
    )[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(c.token_ids == ref_ids for c in out.outputs)
    assert_no_leaks(llm)


def test_n_sampled_completions_differ_and_best_of_picks_highest(llm, assert_no_leaks):
    prompt = random_token_prompts(1, vocab=380, seed=6)[0]
    out = llm.generate(
        [prompt], SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=8), use_tqdm=False
    )[0]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    common = {"temperature": 1.0, "seed": 3, "max_tokens": 8, "ignore_eos": True}
    best = llm.generate([prompt], SamplingParams(n=2, best_of=5, **common), use_tqdm=False)[0]
    assert [c.index for c in best.outputs] == [0, 1]
    # The same seed gives the same five candidates with n=5; best_of keeps the two with the
    # highest cumulative logprob.
    five = llm.generate([prompt], SamplingParams(n=5, logprobs=0, **common), use_tqdm=False)[0]
    ranked = sorted(five.outputs, key=lambda c: c.cumulative_logprob, reverse=True)
    assert {tuple(c.token_ids) for c in best.outputs} == {tuple(c.token_ids) for c in ranked[:2]}
    for c in best.outputs:
        assert c.cumulative_logprob == pytest.approx(
            next(r.cumulative_logprob for r in ranked if r.token_ids == c.token_ids), abs=1e-6
        )
    assert_no_leaks(llm)


def test_logprobs_have_vllm_shape(llm):
    prompt = random_token_prompts(1, vocab=380, seed=9)[0]
    out = llm.generate(
        [prompt],
        SamplingParams(temperature=1.0, seed=0, max_tokens=5, logprobs=3, prompt_logprobs=2),
        use_tqdm=False,
    )[0]
    comp = out.outputs[0]
    assert len(comp.logprobs) == len(comp.token_ids)
    total = 0.0
    for tok, entry in zip(comp.token_ids, comp.logprobs, strict=True):
        assert tok in entry and 3 <= len(entry) <= 4
        ranks = sorted(lp.rank for t, lp in entry.items() if t != tok or lp.rank <= 3)
        assert ranks[:3] == [1, 2, 3]
        best = max(entry.values(), key=lambda lp: lp.logprob)
        assert best.rank == 1 and isinstance(best.decoded_token, str)
        total += entry[tok].logprob
    assert comp.cumulative_logprob == pytest.approx(total, abs=1e-5)
    plp = out.prompt_logprobs
    assert len(plp) == len(prompt) and plp[0] is None
    assert all(prompt[i] in plp[i] for i in range(1, len(prompt)))


def _first_token_distribution(llama_dir, prompt, temperature):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1].double()
    return torch.softmax(logits / temperature, -1)


@pytest.mark.parametrize(
    "filt",
    [{"top_k": 5}, {"top_p": 0.6}, {"min_p": 0.2}, {"top_k": 8, "top_p": 0.8, "min_p": 0.05}],
)
def test_filtered_sampling_frequencies(llm, llama_dir, filt):
    """Samples come only from the allowed set, with frequencies matching the renormalised
    probabilities (chi-square goodness of fit; deterministic given the seed)."""
    from scipy.stats import chisquare

    prompt = random_token_prompts(1, vocab=380, seed=21)[0]
    temperature = 1.5  # flatten the tiny model's peaked distribution so filters bite
    probs = _first_token_distribution(llama_dir, prompt, temperature)
    order = torch.argsort(probs, descending=True)
    sorted_p = probs[order]
    keep = torch.ones_like(sorted_p, dtype=torch.bool)
    if "top_k" in filt:
        keep[filt["top_k"] :] = False
    if "top_p" in filt:
        mass = torch.where(keep, sorted_p, 0).cumsum(0) / torch.where(keep, sorted_p, 0).sum()
        cutoff = int(torch.searchsorted(mass, torch.tensor(filt["top_p"], dtype=mass.dtype)))
        keep[cutoff + 1 :] = False
    if "min_p" in filt:
        keep &= sorted_p >= filt["min_p"] * sorted_p[0]
    allowed = order[keep].tolist()
    expected_p = (sorted_p[keep] / sorted_p[keep].sum()).tolist()
    assert 2 <= len(allowed) < len(probs) // 2  # the filter really removes tokens

    n = 600
    out = llm.generate(
        [prompt],
        SamplingParams(n=n, temperature=temperature, seed=7, max_tokens=1, **filt),
        use_tqdm=False,
    )[0]
    counts = Counter(c.token_ids[0] for c in out.outputs)
    assert set(counts) <= set(allowed), set(counts) - set(allowed)
    observed = [counts.get(t, 0) for t in allowed]
    # Pool the rare tail so every expected count is >= 5 (chi-square validity).
    exp_counts = [p * n for p in expected_p]
    obs_pooled, exp_pooled, tail_o, tail_e = [], [], 0, 0.0
    for o, e in zip(observed, exp_counts, strict=True):
        if e >= 5:
            obs_pooled.append(o)
            exp_pooled.append(e)
        else:
            tail_o, tail_e = tail_o + o, tail_e + e
    if tail_e > 0:
        obs_pooled.append(tail_o)
        exp_pooled.append(tail_e)
    if len(obs_pooled) >= 2:
        assert math.isclose(sum(exp_pooled), n)
        assert chisquare(obs_pooled, exp_pooled).pvalue > 1e-3
