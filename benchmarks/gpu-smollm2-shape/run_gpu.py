"""GPU bench driver for the `device` machine (no network, packages not pip-installed).

Builds a SmolLM2-135M-shaped model (random bf16 weights, the real SmolLM2 tokenizer), runs
offline throughput leaflm vs HF, then a short serving sweep if locust and fastapi exist.
Inputs: .devout/gpu/config.json and .devout/gpu/tok/ = config and tokenizer files of the
engine-converted default model (~/.cache/leaflm/gguf/SmolLM2-135M-Instruct.Q4_1-*/).
Run from the repo root with PYTHONPATH=packages/{kernels,engine,gateway,clients,bench}/src
and OUT=<dir>; BACKENDS=a,b picks backends, SERVE_IF_UNDER=0 skips serving.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
import traceback
from pathlib import Path

import torch
import transformers

from leaflm.bench.offline import run_throughput
from leaflm.bench.workload import random_workload

OUT = Path(os.environ["OUT"])
SRC = Path(".devout/gpu")
MODEL = Path("/tmp/smol-shape")


def main() -> None:
    t0 = time.time()
    print(torch.__version__, transformers.__version__, torch.cuda.get_device_name(0), flush=True)
    wanted = ("pandas", "matplotlib", "locust", "psutil", "fastapi", "uvicorn", "accelerate")
    missing = [m for m in wanted if importlib.util.find_spec(m) is None]
    print("missing:", missing, flush=True)
    MODEL.mkdir(exist_ok=True)
    for f in (SRC / "tok").iterdir():
        shutil.copy(f, MODEL / f.name)
    torch.manual_seed(0)
    config = transformers.AutoConfig.from_pretrained(SRC)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(MODEL)
    del model
    tok = transformers.AutoTokenizer.from_pretrained(MODEL)
    reqs = random_workload(tok, int(os.environ.get("NREQ", "256")), 128, 128, seed=0)
    results = []
    for backend in os.environ.get("BACKENDS", "leaflm,hf-static,hf-single,hf-cb").split(","):
        try:
            run = run_throughput(reqs, MODEL, [backend], device="cuda", dtype="bfloat16",
                                 subsets={"hf-single": 8}, batch_size=32)  # fmt: skip
            results += [r.to_dict() for r in run]
        except Exception:
            traceback.print_exc()
        (OUT / "offline.json").write_text(json.dumps(results, indent=1))
        print("elapsed", time.time() - t0, flush=True)
        torch.cuda.empty_cache()
    if "psutil" not in missing:
        from leaflm.bench.machine import describe_machine

        (OUT / "machine.json").write_text(json.dumps(describe_machine(), indent=1))
    if {"locust", "fastapi", "uvicorn"} & set(missing):
        return
    if time.time() - t0 > float(os.environ.get("SERVE_IF_UNDER", "200")):
        return
    from leaflm.bench.serve import parse_target, run_serve

    rows, raw, problems = run_serve(
        [parse_target("leaflm"), parse_target("naive")], random_workload(tok, 64, 128, 128),
        str(MODEL), [1, 16, 64], OUT / "logs", slo={"ttft": 0.5, "tpot": 0.05},
        max_requests=128, time_limit=40, device="cuda", dtype="bfloat16",
    )  # fmt: skip
    (OUT / "serving.json").write_text(json.dumps({"rows": rows, "raw": raw, "problems": problems}))


if __name__ == "__main__":
    main()
