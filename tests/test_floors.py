"""Every dependency the five packages declare has one `>=` floor, the same in every package,
so `nox -s tests-min` can install exactly the floors (it refuses to run otherwise)."""

from __future__ import annotations

from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["kernels", "engine", "gateway", "clients", "bench"]


def _requirements() -> list[tuple[str, Requirement]]:
    out = []
    for pkg in PACKAGES:
        project = tomllib.loads((REPO / "packages" / pkg / "pyproject.toml").read_text())
        specs = list(project["project"]["dependencies"])
        for extra in project["project"].get("optional-dependencies", {}).values():
            specs += extra
        out += [(pkg, Requirement(spec)) for spec in specs]
    return out


def test_every_dependency_declares_one_floor_shared_by_all_packages():
    floors: dict[str, tuple[str, Version]] = {}
    for pkg, req in _requirements():
        if req.name.startswith("leaflm-"):
            continue
        lower = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert len(lower) == 1, f"packages/{pkg}: {req} needs exactly one >= lower bound"
        seen = floors.setdefault(req.name, (pkg, lower[0]))
        assert seen[1] == lower[0], f"{req.name}: {seen[0]} says >={seen[1]}, {pkg} >={lower[0]}"
    assert Version("2.13.0") >= floors["torch"][1]  # the pinned torch the tests run on
