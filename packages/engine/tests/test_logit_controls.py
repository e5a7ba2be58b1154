"""logit_bias, allowed_token_ids, bad_words and truncate_prompt_tokens against a reference.

The reference is HF Transformers' model run one full forward per step, with the control
applied to its logits in plain PyTorch, then argmax: leaflm's greedy output (several
requests batched together, constrained and unconstrained side by side) must equal it.
"""

from __future__ import annotations

import pytest
import torch

from leaflm.engine import LLM, SamplingParams
from leaflm.engine.layers.logit_controls import bad_words_token_ids
from leaflm.engine.testing import random_token_prompts

STEPS = 10


@pytest.fixture(scope="module")
def hf_model(llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def llm(llama_dir):
    return LLM(str(llama_dir), block_size=4, kv_cache_memory=4 << 20)


def reference(model, prompt, control):
    """Greedy tokens with `control(logits, generated)` editing each step's logits."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(STEPS):
            logits = model(torch.tensor([ids])).logits[0, -1].float().clone()
            control(logits, out)
            tok = int(torch.argmax(logits))
            out.append(tok)
            ids.append(tok)
    return out


def test_controls_match_reference(llm, hf_model, llama_dir, assert_no_leaks):
    prompts = random_token_prompts(4, hf_model.config.vocab_size, lo=4, hi=12, seed=11)
    plain = [reference(hf_model, p, lambda lg, out: None) for p in prompts]

    # logit_bias: push a token the model never picks to the top, pull down its favourite.
    fav = plain[0][0]
    bias = {fav: -100.0, 57: 30.0}

    def with_bias(lg, out):
        lg[fav] -= 100.0
        lg[57] += 30.0

    allowed = [40, 41, 42, 43, 44, 45]

    def only_allowed(lg, out):
        mask = torch.full_like(lg, float("-inf"))
        mask[allowed] = 0.0
        lg += mask

    # bad_words: a word the model would write (two of its greedy tokens decoded).
    tok = llm.get_tokenizer()
    word = tok.decode(plain[2][1:3])
    banned = bad_words_token_ids(tok, [word])

    def no_bad(lg, out):
        for seq in banned:
            if len(seq) - 1 <= len(out) and (len(seq) == 1 or out[-(len(seq) - 1) :] == seq[:-1]):
                lg[seq[-1]] = float("-inf")

    params = [
        SamplingParams(temperature=0.0, max_tokens=STEPS, ignore_eos=True, logit_bias=bias),
        SamplingParams(
            temperature=0.0, max_tokens=STEPS, ignore_eos=True, allowed_token_ids=allowed
        ),
        SamplingParams(temperature=0.0, max_tokens=STEPS, ignore_eos=True, bad_words=[word]),
        SamplingParams(temperature=0.0, max_tokens=STEPS, ignore_eos=True),
    ]
    outs = llm.generate(prompts, params, use_tqdm=False)
    got = [o.outputs[0].token_ids for o in outs]
    assert got[0] == reference(hf_model, prompts[0], with_bias) != plain[0]
    assert got[1] == reference(hf_model, prompts[1], only_allowed)
    assert set(got[1]) <= set(allowed)
    assert got[2] == reference(hf_model, prompts[2], no_bad) != plain[2]
    assert got[3] == plain[3]  # the unconstrained row beside them is untouched
    assert_no_leaks(llm)


def test_logprobs_stay_raw_under_bias(llm, hf_model):
    """As vLLM: reported logprobs are the model's, before biases change the choice."""
    prompt = random_token_prompts(1, hf_model.config.vocab_size, seed=5)[0]
    params = SamplingParams(temperature=0.0, max_tokens=3, logit_bias={57: 100.0}, logprobs=0)
    comp = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0]
    assert comp.token_ids == [57, 57, 57]
    with torch.no_grad():
        logits = hf_model(torch.tensor([prompt])).logits[0, -1]
    ref = float(torch.log_softmax(logits.float(), -1)[57])
    assert abs(comp.logprobs[0][57].logprob - ref) < 1e-4


def test_bad_words_token_ids_decode_back(llm):
    tok = llm.get_tokenizer()
    ids = bad_words_token_ids(tok, ["model cache"])
    assert ids and all(tok.decode(t).strip() == "model cache" for t in ids)


def test_truncate_prompt_tokens(llm):
    prompt = list(range(10, 40))
    params = SamplingParams(temperature=0.0, max_tokens=5, truncate_prompt_tokens=7)
    out = llm.generate([prompt], params, use_tqdm=False)[0]
    assert out.prompt_token_ids == prompt[-7:]
    same = llm.generate(
        [prompt[-7:]], SamplingParams(temperature=0.0, max_tokens=5), use_tqdm=False
    )
    assert out.outputs[0].token_ids == same[0].outputs[0].token_ids


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"logit_bias": {5: 101.0}}, "logit_bias"),
        ({"logit_bias": {5: float("nan")}}, "logit_bias"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias"),
        ({"logit_bias": [1, 2]}, "logit_bias"),
        ({"allowed_token_ids": []}, "allowed_token_ids"),
        ({"allowed_token_ids": [1, "x"]}, "allowed_token_ids"),
        ({"bad_words": ["ok", ""]}, "bad_words"),
        ({"bad_words": "word"}, "bad_words"),
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
        ({"truncate_prompt_tokens": True}, "truncate_prompt_tokens"),
        ({"structured_outputs": {"json": {}}}, "structured_outputs"),
    ],
)
def test_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_out_of_vocab_ids_rejected(llm):
    vocab = llm.llm_engine.vocab_size
    for kwargs, field in (
        ({"logit_bias": {vocab: 1.0}}, "logit_bias"),
        ({"allowed_token_ids": [1, vocab + 3]}, "allowed_token_ids"),
    ):
        with pytest.raises(ValueError, match=field):
            llm.generate([[5, 6, 7]], SamplingParams(**kwargs), use_tqdm=False)
    assert not llm.llm_engine.requests
