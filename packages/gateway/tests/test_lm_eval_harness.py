"""lm-evaluation-harness, unmodified, against a real leaflm server on 127.0.0.1.

lm-eval's `local-completions` model runs a multiple-choice task (loglikelihood: prompt
scoring with echo + logprobs) and a short-answer task (generate_until, with the stop
strings lm-eval adds, `<|im_end|>` among them); `local-chat-completions` runs the
short-answer task through /v1/chat/completions. The tasks are the jsonl + yaml files in
lm_eval_tasks/ (no downloads: datasets run offline on local json files). The model is the
embedded default, SmolLM2-135M-Instruct, in float32, so answers are right often enough for
exact match to mean something.

The reference is HF Transformers on the same weights and the same token ids: lm-eval's own
tokenization (`_encode_pair`, `tok_encode`, the tokenizer's chat template) is replayed
into a plain forward pass. Every per-sample loglikelihood must be within 1e-3 of HF's,
every generated answer must equal HF's greedy answer, and so the task scores must too.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
MODEL_NAME = "smollm2-135m"
LOGLIK_TOL = 1e-3


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as mp:
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            mp.setenv(var, "1")
        mp.setenv("OPENAI_API_KEY", "")  # lm-eval's local models read it; the server has none
        yield


@pytest.fixture(scope="module")
def model_dir(offline) -> Path:
    from leaflm.engine.model_source import resolve_model_path

    return Path(resolve_model_path(None))


@pytest.fixture(scope="module")
def lm_server(model_dir):
    from leaflm.engine import AsyncLLM
    from leaflm.gateway.server import ServerThread
    from leaflm.gateway.settings import GatewaySettings

    llm = AsyncLLM(str(model_dir), device="cpu", dtype="float32", kv_cache_memory="256MiB",
                   max_model_len=2048, seed=0)  # fmt: skip
    try:
        with ServerThread(llm, GatewaySettings(served_model_name=MODEL_NAME)) as srv:
            yield srv
    finally:
        asyncio.run(llm.shutdown())


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def task_config(name: str) -> dict[str, Any]:
    """The shipped task yaml with its data file made absolute (lm-eval resolves from cwd)."""
    cfg = yaml.safe_load((TASKS_DIR / f"{name}.yaml").read_text())
    files = cfg["dataset_kwargs"]["data_files"]
    cfg["dataset_kwargs"]["data_files"] = {k: str(TASKS_DIR / v) for k, v in files.items()}
    return cfg


def evaluate(lm: Any, task: str, chat: bool = False) -> tuple[float, list[dict[str, Any]]]:
    from lm_eval import simple_evaluate

    out = simple_evaluate(model=lm, tasks=[task_config(task)], log_samples=True,
                          apply_chat_template=chat, random_seed=0, numpy_random_seed=0,
                          torch_random_seed=0, fewshot_random_seed=0)  # fmt: skip
    metric = "acc,none" if task == "leaflm_mc" else "exact_match,last_word"
    return float(out["results"][task][metric]), out["samples"][task]


def completions_lm(url: str, model_dir: Path, batch_size: int = 1) -> Any:
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    return LocalCompletionsAPI(base_url=f"{url}/v1/completions", model=MODEL_NAME,
                               tokenizer_backend="huggingface", tokenizer=str(model_dir),
                               batch_size=batch_size, num_concurrent=1, max_retries=1)  # fmt: skip


def hf_loglikelihood(model: Any, context: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    n = len(context)
    return sum(float(logprobs[n - 1 + i, tok]) for i, tok in enumerate(continuation))


def hf_greedy_text(
    model: Any, tokenizer: Any, ids: list[int], max_new: int, stops: list[str]
) -> str:
    """Greedy decode like the server: stop at EOS or `max_new`, cut at the first stop string."""
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    ids, out = list(ids), []
    with torch.no_grad():
        for _ in range(max_new):
            tok = int(torch.argmax(model(torch.tensor([ids])).logits[0, -1]))
            if tok in eos_ids:
                break
            out.append(tok)
            ids.append(tok)
            text = tokenizer.decode(out, skip_special_tokens=True)
            cuts = [text.find(s) for s in stops if s and s in text]
            if cuts:
                return text[: min(cuts)]
    return tokenizer.decode(out, skip_special_tokens=True)


def record_payloads(lm: Any) -> list[dict[str, Any]]:
    """Keep every JSON body lm-eval sends, so the reference replays exactly those."""
    sent: list[dict[str, Any]] = []
    build = lm._create_payload

    def create(*args: Any, **kwargs: Any) -> dict[str, Any]:
        payload = build(*args, **kwargs)
        sent.append(payload)
        return payload

    lm._create_payload = create
    return sent


def test_loglikelihood_matches_hf(lm_server, model_dir, hf_model):
    lm = completions_lm(lm_server.url, model_dir, batch_size=4)  # list prompts, 4 a request
    acc, samples = evaluate(lm, "leaflm_mc")
    assert len(samples) == 8
    worst, hf_acc = 0.0, []
    for sample in samples:
        hf_scores = []
        for (context, continuation), (loglik, _greedy) in zip(
            sample["arguments"], [r[0] for r in sample["resps"]], strict=True
        ):
            ctx, cont = lm._encode_pair(context, continuation)
            ref = hf_loglikelihood(hf_model, ctx, cont)
            worst = max(worst, abs(loglik - ref))
            assert abs(loglik - ref) <= LOGLIK_TOL, (context, continuation, loglik, ref)
            hf_scores.append(ref)
        hf_acc.append(float(hf_scores.index(max(hf_scores)) == sample["target"]))
    assert acc == pytest.approx(sum(hf_acc) / len(hf_acc))
    print(
        f"lm-eval acc {acc:.3f} (HF {sum(hf_acc) / len(hf_acc):.3f}); worst |Δ loglik| {worst:.2e}"
    )


def _exact_match(answer: str, target: str) -> float:
    """The task's score of one raw answer: its filter, then its exact_match settings."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    cfg = task_config("leaflm_gen")
    regex = cfg["filter_list"][0]["filter"][0]
    last = RegexFilter(regex["regex_pattern"], regex["group_select"]).apply([[answer]], [{}])
    metric = next(m for m in cfg["metric_list"] if m["metric"] == "exact_match")
    kwargs = {k: v for k, v in metric.items() if k.startswith("ignore")}
    scored = exact_match_hf_evaluate(predictions=[last[0][0]], references=[target], **kwargs)
    return float(scored["exact_match"])


def _check_generations(samples, score, sent, hf_model, tokenizer, key, prompt_ids) -> None:
    """Each sample's answer equals HF's greedy answer to the very body lm-eval sent for it."""
    by_key = {key(p): p for p in sent}
    hf_scores = []
    for sample in samples:
        payload = by_key[key(sample["arguments"][0][0])]
        assert "<|im_end|>" in payload["stop"], payload["stop"]
        max_new = payload.get("max_tokens") or payload.get("max_completion_tokens")
        ref = hf_greedy_text(hf_model, tokenizer, prompt_ids(payload), max_new, payload["stop"])
        got = sample["resps"][0][0]
        assert got == ref, (payload, got, ref)
        hf_scores.append(_exact_match(ref, sample["target"]))
        assert sample["exact_match"] == hf_scores[-1], (sample, ref)
    assert score == pytest.approx(sum(hf_scores) / len(hf_scores))


def _ids(prompt: Any) -> tuple[int, ...]:
    """A completions prompt lm-eval sent (token ids, maybe wrapped in a batch list)."""
    return tuple(prompt[0] if prompt and isinstance(prompt[0], list) else prompt)


def test_generate_until_matches_hf_greedy(lm_server, model_dir, hf_model):
    lm = completions_lm(lm_server.url, model_dir)
    sent = record_payloads(lm)
    score, samples = evaluate(lm, "leaflm_gen")
    assert len(samples) == 8 and len(sent) == 8

    def key(item: Any) -> tuple[int, ...]:
        if isinstance(item, dict):
            return _ids(item["prompt"])
        return tuple(lm.tok_encode(item, add_special_tokens=lm.add_bos_token))

    _check_generations(samples, score, sent, hf_model, lm.tokenizer, key,
                       lambda p: list(_ids(p["prompt"])))  # fmt: skip
    print(f"local-completions exact match {score:.3f}")


def test_chat_generate_until_matches_hf_greedy(lm_server, model_dir, hf_model):
    from lm_eval.models.openai_completions import LocalChatCompletion
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # no tokenizer on lm-eval's side here, so its EOS stop string is given, as users do
    lm = LocalChatCompletion(base_url=f"{lm_server.url}/v1/chat/completions", model=MODEL_NAME,
                             eos_string=tokenizer.eos_token, max_retries=1)  # fmt: skip
    sent = record_payloads(lm)
    score, samples = evaluate(lm, "leaflm_gen", chat=True)
    assert len(samples) == 8 and len(sent) == 8

    def key(item: Any) -> str:
        if isinstance(item, (tuple, list)):  # a logged JsonChatStr(prompt)
            item = item[0]
        messages = item["messages"] if isinstance(item, dict) else json.loads(item)
        return json.dumps(messages, sort_keys=True)

    def prompt_ids(payload: dict[str, Any]) -> list[int]:
        return list(
            tokenizer.apply_chat_template(
                payload["messages"], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )

    _check_generations(samples, score, sent, hf_model, tokenizer, key, prompt_ids)
    print(f"local-chat-completions exact match {score:.3f}")


def test_tasks_are_local_files():
    for name in ("leaflm_mc", "leaflm_gen"):
        for path in task_config(name)["dataset_kwargs"]["data_files"].values():
            assert Path(path).is_file() and os.path.isabs(path)
