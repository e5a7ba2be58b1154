"""A driver process for the worker-lifetime tests: an LLM at TP=2 that prints its workers.

`python tp_driver.py MODEL_DIR MODE`: prints `{"pids": [...]}` once the engine is up, then
MODE `exit` returns from main (interpreter exit, no shutdown call) and `serve` generates
until a signal ends it.
"""

from __future__ import annotations

import faulthandler
import json
import signal
import sys


def main() -> None:
    # The test sends SIGUSR1 before it kills a driver that did not exit: its threads' stacks
    # go to stderr, into the test's report.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # A terminal's Ctrl-C raises KeyboardInterrupt, even when this runs under a shell's
    # background job: those start with SIGINT ignored, which Python then leaves ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from leaflm.engine import LLM, SamplingParams

    model_dir, mode = sys.argv[1], sys.argv[2]
    llm = LLM(model_dir, kv_cache_memory="1MiB", tensor_parallel_size=2)
    print(json.dumps({"pids": llm.llm_engine.executor.pids}), flush=True)
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    llm.generate([[5, 6, 7]], params, use_tqdm=False)
    while mode == "serve":
        llm.generate([[5, 6, 7]], params, use_tqdm=False)


if __name__ == "__main__":
    main()
