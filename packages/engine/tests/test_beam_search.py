"""Beam search equals HF Transformers' `generate(num_beams=W, do_sample=False)`.

Tiny random Llama, Qwen2 and GPT-2 models; W = 1, 2, 4; with EOS ignored (every beam runs
the full length) and with an EOS token the model often emits, so that some beams end early
and finished hypotheses compete under the length penalty. The best sequence must be the
same token for token, its cumulative logprob within 1e-4 of the logprob HF's model assigns
to it, its length-penalised score within 1e-4 of HF's `sequences_scores`; afterwards every
KV block is free.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from leaflm.engine import LLM, BeamSearchParams
from leaflm.engine.testing import random_token_prompts

ARCHS = ["llama", "qwen2", "gpt2"]
MAX_TOKENS = 8


def hf_beam(model, prompt, width, length_penalty, eos):
    """HF's best hypothesis: (generated ids, its score); `eos` None = no EOS at all."""
    model.generation_config.eos_token_id = eos
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        num_beams=width,
        do_sample=False,
        max_new_tokens=MAX_TOKENS,
        length_penalty=length_penalty,
        early_stopping=False,
        eos_token_id=eos,
        pad_token_id=3,
        return_dict_in_generate=True,
        output_scores=True,
    )
    ids = out.sequences[0, len(prompt) :].tolist()
    if eos is not None:
        ends = [i for i, t in enumerate(ids) if t in eos]
        ids = ids[: ends[0] + 1] if ends else ids
    score = float(out.sequences_scores[0]) if width > 1 else None
    return ids, score


def teacher_forced_logprob(model, prompt, generated):
    with torch.no_grad():
        logits = model(torch.tensor([prompt + generated])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return sum(float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(generated))


@pytest.fixture(scope="module", params=ARCHS)
def arch_setup(request, tiny_models, tmp_path_factory):
    """(HF model, LLM with EOS ignored by params, LLM whose EOS is a frequent token, prompts)."""
    from transformers import AutoModelForCausalLM

    src = tiny_models(request.param)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    prompts = random_token_prompts(3, vocab, lo=3, hi=12, seed=7)
    plain = LLM(str(src), block_size=4, kv_cache_memory=4 << 20, enable_prefix_caching=False)
    # An EOS that ends beams early: the third token of a full-length beam search.
    probe = plain.beam_search([prompts[0]], BeamSearchParams(4, MAX_TOKENS, ignore_eos=True))
    frequent = probe[0].sequences[0].tokens[len(prompts[0]) + 2]
    eos_dir = tmp_path_factory.mktemp(f"{request.param}_eos")
    shutil.copytree(src, eos_dir, dirs_exist_ok=True)
    gen = json.loads((eos_dir / "generation_config.json").read_text())
    gen["eos_token_id"] = [2, frequent]
    (eos_dir / "generation_config.json").write_text(json.dumps(gen))
    with_eos = LLM(str(eos_dir), block_size=4, kv_cache_memory=4 << 20)
    assert with_eos.llm_engine.eos_token_ids == {2, frequent}
    return model, plain, with_eos, prompts


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("mode", ["ignore_eos", "eos"])
def test_beam_search_matches_hf(arch_setup, width, mode, assert_no_leaks):
    model, plain, with_eos, prompts = arch_setup
    length_penalty = 1.0 if width != 2 else 0.5
    ignore = mode == "ignore_eos"
    llm = plain if ignore else with_eos
    eos = None if ignore else sorted(llm.llm_engine.eos_token_ids)
    params = BeamSearchParams(width, MAX_TOKENS, ignore_eos=ignore, length_penalty=length_penalty)
    outs = llm.beam_search(prompts, params)
    assert_no_leaks(llm)
    early = 0
    for prompt, out in zip(prompts, outs, strict=True):
        assert len(out.sequences) == width
        scores = [s.score for s in out.sequences]
        assert scores == sorted(scores, reverse=True)
        best = out.sequences[0]
        assert best.tokens[: len(prompt)] == prompt
        got = best.tokens[len(prompt) :]
        ref, ref_score = hf_beam(model, prompt, width, length_penalty, eos)
        assert got == ref, (got, ref)
        assert abs(best.cum_logprob - teacher_forced_logprob(model, prompt, got)) < 1e-4
        if ref_score is not None:
            assert abs(best.score - ref_score) < 1e-4
        if ignore:
            assert all(len(s.tokens) == len(prompt) + MAX_TOKENS for s in out.sequences)
            assert {s.finish_reason for s in out.sequences} == {"length"}
        early += sum(s.finish_reason == "stop" for s in out.sequences)
        for s in out.sequences:
            ids = s.tokens[len(prompt) :]
            if s.finish_reason == "stop":
                ids = ids[:-1]
            assert s.text == llm.get_tokenizer().decode(ids, skip_special_tokens=True)
    if not ignore and width > 1:
        assert early > 0, "the frequent EOS ended no beam early; the test lost its point"


def test_prompt_forms_and_validation(arch_setup):
    _, plain, _, prompts = arch_setup
    tok = plain.get_tokenizer()
    text = tok.decode(prompts[1])
    params = BeamSearchParams(2, 4, ignore_eos=True)
    a, b, c = plain.beam_search(
        [{"prompt_token_ids": prompts[1]}, {"prompt": text}, tok.encode(text)], params
    )
    assert a.sequences[0].tokens[: len(prompts[1])] == prompts[1]
    assert b.sequences[0].tokens == c.sequences[0].tokens
    for bad in (dict(beam_width=0, max_tokens=4), dict(beam_width=2, max_tokens=0)):
        with pytest.raises(ValueError, match=next(iter(k for k, v in bad.items() if v == 0))):
            BeamSearchParams(**bad)
    with pytest.raises(ValueError, match="temperature"):
        BeamSearchParams(2, 4, temperature=-1.0)
    with pytest.raises(ValueError, match="prompt"):
        plain.beam_search([{"text": "x"}], params)


def test_beams_share_prompt_blocks(llama_dir, assert_no_leaks):
    """Forked beams point at the prompt's blocks instead of copying them."""
    llm = LLM(str(llama_dir), block_size=4, kv_cache_memory=4 << 20, enable_prefix_caching=False)
    engine = llm.llm_engine
    prompt = list(range(10, 50))  # 10 full blocks
    engine.add_request("b", prompt, BeamSearchParams(4, 6, ignore_eos=True))
    for _ in range(3):
        engine.step()
    seqs = [s for s in engine.requests["b"].seqs if not s.is_finished]
    assert len(seqs) == 4
    prompt_blocks = {b for s in seqs for b in s.block_table[:10]}
    assert len(prompt_blocks) == 10  # every beam shares the same 10 prompt blocks
    used = engine.block_manager.num_blocks - engine.block_manager.num_free_blocks
    assert used <= 10 + 4  # plus at most one tail block per beam
    while engine.has_unfinished():
        engine.step()
    assert_no_leaks(llm)


@pytest.mark.parametrize(
    "tight", [{"num_blocks": 24}, {"num_blocks": 16}, {"num_blocks": 12, "swap_space_gb": 0.0001}]
)
def test_preemption_gives_same_beams(llama_dir, assert_no_leaks, tight):
    """A cache too small for every beam at once: preempted beams are recomputed or swapped,
    parked siblings give their blocks back while they wait, and the result is the same."""
    prompts = random_token_prompts(4, 300, lo=8, hi=16, seed=3)
    params = BeamSearchParams(4, 10, ignore_eos=True)
    big = LLM(str(llama_dir), block_size=4, kv_cache_memory=4 << 20)
    ref = big.beam_search(prompts, params)
    tight = dict(tight)
    block_bytes = 2 * 2 * 4 * 2 * 16 * 4  # tiny llama: K+V, 2 layers, block 4, 2 heads x 16
    memory = tight.pop("num_blocks") * block_bytes
    small = LLM(str(llama_dir), block_size=4, kv_cache_memory=memory, **tight)
    got = small.beam_search(prompts, params)
    assert small.llm_engine.scheduler.num_preemptions > 0
    for r, g in zip(ref, got, strict=True):
        assert [s.tokens for s in r.sequences] == [s.tokens for s in g.sequences]
        for a, b in zip(r.sequences, g.sequences, strict=True):
            assert abs(a.cum_logprob - b.cum_logprob) < 1e-4
    assert_no_leaks(small)


def test_abort_mid_search_frees_every_block(llama_dir, assert_no_leaks):
    llm = LLM(str(llama_dir), block_size=4, kv_cache_memory=4 << 20)
    engine = llm.llm_engine
    engine.add_request("a", list(range(10, 30)), BeamSearchParams(3, 8, ignore_eos=True))
    engine.add_request("b", list(range(40, 50)), BeamSearchParams(2, 4, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert len([s for s in engine.requests["a"].seqs if not s.is_finished]) == 3
    out = engine.abort("a")
    assert out is not None and out.finished
    while engine.has_unfinished():
        engine.step()
    assert "a" not in engine.beam_search.groups and not engine.beam_search.groups
    assert_no_leaks(llm)
