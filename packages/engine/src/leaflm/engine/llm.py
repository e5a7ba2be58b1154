"""LLM: the offline, vLLM-compatible entry point (`generate`, `chat`) over LLMEngine."""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any

from leaflm.engine.beam_search import BeamSearchOutput, BeamSearchParams, to_beam_output
from leaflm.engine.config import EngineArgs
from leaflm.engine.engine import LLMEngine
from leaflm.engine.outputs import RequestOutput
from leaflm.engine.sampling_params import SamplingParams

PromptType = str | list[int]


class LLM:
    """Load a model once, then generate for batches of prompts with continuous batching."""

    def __init__(self, model: str | Path | None = None, **kwargs: Any) -> None:
        self.llm_engine = LLMEngine(EngineArgs(model=model, **kwargs))
        self.model_config = self.llm_engine.model_config
        self._ids = itertools.count()

    def get_tokenizer(self) -> Any:
        return self.llm_engine.tokenizer

    def shutdown(self) -> None:
        """Stop the engine's workers now (otherwise at garbage collection or exit)."""
        self.llm_engine.shutdown()

    def generate(
        self,
        prompts: PromptType | list[PromptType],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for every prompt; outputs come back in input order."""
        if isinstance(prompts, str) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]  # type: ignore[list-item]
        if not isinstance(prompts, (list, tuple)):
            raise ValueError(f"prompts must be a string or a list, got {type(prompts).__name__}")
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(
                    f"sampling_params has {len(params_list)} entries for {len(prompts)} prompts"
                )
        engine = self.llm_engine
        ids = []
        try:
            for prompt, params in zip(prompts, params_list, strict=True):
                request_id = str(next(self._ids))
                # Only final results are returned, so skip per-step output shaping.
                engine.add_request(
                    request_id, prompt, dataclasses.replace(params, output_kind="final_only")
                )
                ids.append(request_id)
            return self._run(ids, use_tqdm)
        except BaseException:
            for request_id in ids:
                engine.abort(request_id)
            raise

    def beam_search(
        self,
        prompts: PromptType | dict | list[PromptType | dict],
        params: BeamSearchParams,
        use_tqdm: bool = False,
    ) -> list[BeamSearchOutput]:
        """Beam search for every prompt (string, token ids, {"prompt"} or {"prompt_token_ids"}).

        Returns one BeamSearchOutput per prompt, in input order, its sequences best first.
        """
        if not isinstance(params, BeamSearchParams):
            raise ValueError(f"params must be BeamSearchParams, got {type(params).__name__}")
        if isinstance(prompts, (str, dict)) or (
            isinstance(prompts, list) and prompts and isinstance(prompts[0], int)
        ):
            prompts = [prompts]  # type: ignore[list-item]
        if not isinstance(prompts, (list, tuple)):
            raise ValueError(f"prompts must be a string or a list, got {type(prompts).__name__}")
        engine = self.llm_engine
        ids = []
        try:
            for prompt in prompts:
                request_id = str(next(self._ids))
                engine.add_request(request_id, _prompt_of(prompt), params)
                ids.append(request_id)
            outs = self._run(ids, use_tqdm)
        except BaseException:
            for request_id in ids:
                engine.abort(request_id)
            raise
        return [to_beam_output(out, params.length_penalty) for out in outs]

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Apply the tokenizer's chat template to each conversation, then generate."""
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list of message dicts (or of lists)")
        conversations = messages if isinstance(messages[0], list) else [messages]
        tokenizer = self.get_tokenizer()
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the model's tokenizer has no chat template")
        prompts: list[PromptType] = []
        for conv in conversations:
            ids = tokenizer.apply_chat_template(
                conv, add_generation_prompt=add_generation_prompt, tokenize=True
            )
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            prompts.append(list(ids))
        return self.generate(prompts, sampling_params, use_tqdm)

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        engine = self.llm_engine
        results: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ids), desc="Processed prompts", unit="req", dynamic_ncols=True)
        start, out_tokens = time.perf_counter(), 0
        wanted = set(ids)
        while len(results) < len(ids):
            for out in engine.step():
                if out.finished and out.request_id in wanted:
                    results[out.request_id] = out
                    out_tokens += sum(len(c.token_ids) for c in out.outputs)
                    if bar is not None:
                        elapsed = max(time.perf_counter() - start, 1e-9)
                        bar.set_postfix_str(f"output: {out_tokens / elapsed:.1f} tok/s")
                        bar.update(1)
            if not engine.has_unfinished() and len(results) < len(ids):
                raise RuntimeError("engine stopped with requests unaccounted for")
        if bar is not None:
            bar.close()
        return [results[i] for i in ids]


def _prompt_of(prompt: Any) -> PromptType:
    """A prompt as a string or token ids, from vLLM's dict forms too."""
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return prompt["prompt_token_ids"]
        if "prompt" in prompt:
            return prompt["prompt"]
        raise ValueError("a prompt dict needs a 'prompt' or a 'prompt_token_ids' key")
    return prompt
