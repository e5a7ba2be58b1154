"""Structured outputs: constrained vs unconstrained output tok/s, and grammar compile time.

The embedded default model (SmolLM2-135M-Instruct, its real 49k-token vocabulary, which is
what a token bitmask costs), N chat requests sampled at temperature 0.8 with max_tokens, run
once unconstrained and once with a JSON schema; then the compile time of schemas the cache
has not seen (the tokenizer analysis, done once per engine, is reported apart).

    OMP_NUM_THREADS=2 python packages/engine/benchmarks/structured.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import leaflm.engine  # noqa: F401  (first: its OpenMP default must precede torch's import)

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


def run(llm, prompts, params) -> tuple[float, int]:
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    dt = time.perf_counter() - t0
    return dt, sum(len(o.outputs[0].token_ids) for o in outs)


def main() -> None:
    from leaflm.engine import LLM, SamplingParams, StructuredOutputsParams

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--schemas", type=int, default=20, help="new schemas to compile")
    args = parser.parse_args()

    llm = LLM(kv_cache_memory="512MiB", max_model_len=1024)
    tok = llm.get_tokenizer()
    chat = [{"role": "user", "content": "Describe a person as JSON with name, age and tags."}]
    prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    prompts = [tok.encode(prompt)] * args.num_prompts

    def params(seed: int, so=None) -> SamplingParams:
        return SamplingParams(
            temperature=0.8, max_tokens=args.max_tokens, seed=seed, structured_outputs=so
        )

    grammars = llm.llm_engine.grammars
    t0 = time.perf_counter()
    grammars.compile(StructuredOutputsParams(json=SCHEMA))  # tokenizer analysis + first schema
    first = time.perf_counter() - t0

    run(llm, prompts[:4], params(0))  # warm-up
    so = StructuredOutputsParams(json=SCHEMA)
    free_t, free_n = run(llm, prompts, [params(k) for k in range(len(prompts))])
    cons_t, cons_n = run(llm, prompts, [params(k, so) for k in range(len(prompts))])

    compile_ms = []
    for k in range(args.schemas):
        schema = json.loads(json.dumps(SCHEMA))
        schema["properties"][f"extra_{k}"] = {"type": "integer", "maximum": k + 10}
        t0 = time.perf_counter()
        grammars.compile(StructuredOutputsParams(json=schema))
        compile_ms.append((time.perf_counter() - t0) * 1000)

    free_tps, cons_tps = free_n / free_t, cons_n / cons_t
    print(
        json.dumps(
            {
                "requests": len(prompts),
                "max_tokens": args.max_tokens,
                "unconstrained_tok_s": round(free_tps, 1),
                "unconstrained_tokens": free_n,
                "constrained_tok_s": round(cons_tps, 1),
                "constrained_tokens": cons_n,
                "constrained_vs_unconstrained": round(cons_tps / free_tps, 3),
                "first_compile_incl_tokenizer_ms": round(first * 1000, 1),
                "new_schema_compile_ms_median": round(statistics.median(compile_ms), 1),
                "new_schema_compile_ms_max": round(max(compile_ms), 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
