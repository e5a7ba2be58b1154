"""The five packages build as wheels, and engine + gateway install on their own.

DESIGN.md promises `pip install ./packages/engine ./packages/gateway` works with no other part
of the repo on the path. This builds every wheel, installs only engine and gateway (their
kernels dependency comes from the built wheels, everything else from the package index) into
a fresh venv outside the repo, and runs the installed `leaflm` command there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {
    "kernels": "leaflm_kernels",
    "engine": "leaflm_engine",
    "gateway": "leaflm_gateway",
    "clients": "leaflm_client",
    "bench": "leaflm_bench",
}
TORCH = "torch==2.13.0"  # installed first: an unpinned torch pulls GBs of CUDA wheels


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    dirs = [str(REPO / "packages" / p) for p in PACKAGES]
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), *dirs], REPO)
    return out


def test_every_package_builds_a_wheel_without_a_namespace_init(wheels: Path) -> None:
    import zipfile

    for pkg, dist in PACKAGES.items():
        found = list(wheels.glob(f"{dist}-*.whl"))
        assert len(found) == 1, f"no wheel for packages/{pkg}: {sorted(wheels.iterdir())}"
        names = zipfile.ZipFile(found[0]).namelist()
        assert "leaflm/__init__.py" not in names, f"{found[0].name} breaks the PEP 420 namespace"
        module = "client" if pkg == "clients" else pkg
        assert f"leaflm/{module}/__init__.py" in names


@pytest.mark.slow
def test_engine_and_gateway_install_alone_into_a_fresh_venv(wheels: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run([py, "-m", "pip", "install", "-q", TORCH], tmp_path, clean_env)
    engine = next(wheels.glob("leaflm_engine-*.whl"))
    gateway = next(wheels.glob("leaflm_gateway-*.whl"))
    _run(
        [py, "-m", "pip", "install", "-q", "--find-links", str(wheels), str(engine), str(gateway)],
        tmp_path,
        clean_env,
    )
    where = _run(
        [py, "-c", "import leaflm.engine, leaflm.gateway; print(leaflm.engine.__file__)"],
        tmp_path,
        clean_env,
    )
    assert str(env_dir) in where and str(REPO) not in where
    help_text = _run([str(env_dir / "bin" / "leaflm"), "--help"], tmp_path, clean_env)
    assert "serve" in help_text and "generate" in help_text
    assert "skipping" not in help_text, help_text
    installed = _run([py, "-m", "pip", "list"], tmp_path, clean_env)
    assert "leaflm-bench" not in installed and "leaflm-client" not in installed
