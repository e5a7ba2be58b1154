"""Structured outputs: constrained vs unconstrained output tok/s, and grammar compile time.

The embedded default model (SmolLM2-135M-Instruct, its real 49k-token vocabulary, which is
what a token bitmask costs), N chat requests sampled at temperature 0.8 with max_tokens, run
once unconstrained and once with a JSON schema (their outputs differ in length, so the batch
shrinks differently), and again with ignore_eos and a schema that cannot end within
max_tokens (same token count on both sides: the per-token cost of the mask); then the compile time of schemas the cache
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
# Never complete within max_tokens: every constrained step pays the mask (fixed-length run).
LONG = {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 200}


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
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    llm = LLM(kv_cache_memory="512MiB", max_model_len=1024)
    tok = llm.get_tokenizer()
    chat = [{"role": "user", "content": "Describe a person as JSON with name, age and tags."}]
    prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    prompts = [tok.encode(prompt)] * args.num_prompts

    def params(seed: int, so=None, ignore_eos=False) -> SamplingParams:
        return SamplingParams(
            temperature=0.8, max_tokens=args.max_tokens, seed=seed, structured_outputs=so,
            ignore_eos=ignore_eos,
        )  # fmt: skip

    grammars = llm.llm_engine.grammars
    t0 = time.perf_counter()
    grammars.compile(StructuredOutputsParams(json=SCHEMA))  # tokenizer analysis + first schema
    first = time.perf_counter() - t0

    run(llm, prompts[:4], params(0))  # warm-up
    so = StructuredOutputsParams(json=SCHEMA)
    long = StructuredOutputsParams(json=LONG)
    n = len(prompts)
    # Alternate the two sides round by round: on a shared machine the load drifts.
    natural, fixed, lengths = [], [], []
    for _ in range(args.rounds):
        free_t, free_n = run(llm, prompts, [params(k) for k in range(n)])
        cons_t, cons_n = run(llm, prompts, [params(k, so) for k in range(n)])
        natural.append((free_n / free_t, cons_n / cons_t))
        lengths.append((free_n / n, cons_n / n))
        # Same token count on both sides: ignore_eos, and a grammar that never ends early.
        ff_t, ff_n = run(llm, prompts, [params(k, None, True) for k in range(n)])
        fc_t, fc_n = run(llm, prompts, [params(k, long, True) for k in range(n)])
        assert ff_n == fc_n == n * args.max_tokens
        fixed.append((ff_n / ff_t, fc_n / fc_t))

    compile_ms = []
    for k in range(args.schemas):
        schema = json.loads(json.dumps(SCHEMA))
        schema["properties"][f"extra_{k}"] = {"type": "integer", "maximum": k + 10}
        t0 = time.perf_counter()
        grammars.compile(StructuredOutputsParams(json=schema))
        compile_ms.append((time.perf_counter() - t0) * 1000)

    def summary(pairs: list[tuple[float, float]]) -> dict:
        return {
            "unconstrained_tok_s": [round(a, 1) for a, _ in pairs],
            "constrained_tok_s": [round(b, 1) for _, b in pairs],
            "median_ratio": round(statistics.median(b / a for a, b in pairs), 3),
        }

    print(
        json.dumps(
            {
                "requests": n,
                "max_tokens": args.max_tokens,
                "natural_lengths": summary(natural),
                "natural_mean_output_tokens": {
                    "unconstrained": [round(a, 1) for a, _ in lengths],
                    "constrained": [round(b, 1) for _, b in lengths],
                },
                "fixed_length": summary(fixed),
                "first_compile_incl_tokenizer_ms": round(first * 1000, 1),
                "new_schema_compile_ms_median": round(statistics.median(compile_ms), 1),
                "new_schema_compile_ms_max": round(max(compile_ms), 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
