"""infra/ is checked, not just shipped: the compose and k8s files load, name images the repo's
Dockerfiles build, and run real `leaflm` commands with real flags (parsed by the actual CLI
parser); the Dockerfiles pin what the test suite itself installs.

Docker and kubectl are not needed: the files are parsed, not run.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
COMPOSE = INFRA / "compose" / "compose.yaml"
K8S = INFRA / "k8s" / "leaflm.yaml"
DOCKERFILES = sorted((INFRA / "docker").glob("*.Dockerfile"))


# --- parsing helpers ------------------------------------------------------------------------


def parse_command(argv: list[str]):
    """Parse one command line with the parser of the program it runs; AssertionError if not."""
    if argv[0] == "leaflm":
        from leaflm.engine.cli import build_parser

        parser, args = build_parser(), argv[1:]
    elif argv[:3] == ["python", "-m", "leaflm.bench.naive_server"]:
        from leaflm.bench.naive_server import build_parser

        parser, args = build_parser(), argv[3:]
    else:
        raise AssertionError(f"no parser known for {shlex.join(argv)}")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parser.parse_args(args)
        except SystemExit as exc:
            if exc.code == 0:  # --help
                return None
            raise AssertionError(f"{shlex.join(argv)}: {err.getvalue().strip()}") from None


def shell_commands(argv: list[str], env: dict[str, str]) -> list[list[str]]:
    """The program argvs a container command runs: `sh -c "exec ..."` is unwrapped, compose's
    `$$VAR` (a literal `$VAR` for the container's shell) takes the service's environment."""
    if argv[:2] != ["sh", "-c"]:
        return [argv]
    script = re.sub(r"\$\$(\w+)", lambda m: env[m.group(1)], argv[2])
    inner = shlex.split(script)
    return [inner[1:] if inner[0] == "exec" else inner]


def compose_interpolate(text: str) -> str:
    """Compose's own `${VAR:-default}` interpolation, with no variables set."""
    return re.sub(r"(?<!\$)\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), text)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def built_images() -> dict[str, Path]:
    """Image name -> Dockerfile, from the `docker build -f FILE ... -t NAME` lines in infra/."""
    images: dict[str, Path] = {}
    for doc in [*DOCKERFILES, COMPOSE, INFRA / "README.md"]:
        for m in re.finditer(r"docker build -f (\S+)[^\n]*?-t (\S+)", doc.read_text()):
            dockerfile = REPO / m.group(1)
            assert dockerfile.is_file(), f"{doc.name} builds {m.group(1)}, which does not exist"
            name = m.group(2).split(":")[0]
            assert images.setdefault(name, dockerfile) == dockerfile, f"{name}: two Dockerfiles"
    return images


def nox_pins() -> dict[str, str]:
    """name -> version of the `==` pins the noxfile installs for every test run."""
    tree = ast.parse((REPO / "noxfile.py").read_text())
    pins = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][^\s]*)", node.value)
            if m:
                pins[m.group(1).lower()] = m.group(2)
    return pins


def declared_floor(package: str, dependency: str) -> Version:
    project = tomllib.loads((REPO / "packages" / package / "pyproject.toml").read_text())
    for spec in project["project"]["dependencies"]:
        req = Requirement(spec)
        if req.name == dependency:
            return Version(next(s.version for s in req.specifier if s.operator == ">="))
    raise AssertionError(f"packages/{package} does not depend on {dependency}")


def published_ports(service: dict) -> set[int]:
    """Ports a compose service's healthcheck probes on 127.0.0.1."""
    test = " ".join(service.get("healthcheck", {}).get("test", []))
    return {urlsplit(u).port for u in re.findall(r"http://127\.0\.0\.1:\d+", test)}


def port_flag(argv: list[str]) -> int | None:
    return int(argv[argv.index("--port") + 1]) if "--port" in argv else None


# --- compose --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(compose_interpolate(COMPOSE.read_text()))


def _service_commands(service: dict) -> list[list[str]]:
    argv = service.get("entrypoint") or service.get("command")
    if argv is None:
        return []
    if isinstance(argv, str):
        argv = shlex.split(argv)
    env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    return shell_commands(argv, env)


def test_compose_services_use_images_the_repo_builds_or_pinned_ones(compose):
    images = built_images()
    assert {"leaflm", "leaflm-bench"} <= set(images)
    for name, service in compose["services"].items():
        image = service["image"]
        if "/" in image:  # an outside image: pinned to a release tag
            tag = image.rpartition(":")[2]
            assert ":" in image and re.fullmatch(r"\d+(\.\d+)+", tag), f"{name}: {image} unpinned"
        else:
            assert image.split(":")[0] in images, f"{name}: no Dockerfile builds {image!r}"
        for dep in service.get("depends_on", {}):
            assert dep in compose["services"], f"{name} depends on unknown service {dep}"


def test_compose_leaflm_commands_are_real_subcommands_and_flags(compose):
    checked = 0
    for name, service in compose["services"].items():
        for argv in _service_commands(service):
            if argv[0] == "python" and argv[1] == "-c":  # every name it imports exists
                for node in ast.walk(ast.parse(argv[2])):
                    if isinstance(node, ast.ImportFrom) and node.module.startswith("leaflm"):
                        module = importlib.import_module(node.module)
                        for alias in node.names:
                            assert hasattr(module, alias.name), (
                                f"{name}: {node.module}.{alias.name}"
                            )
                checked += 1
            elif argv[0] == "leaflm" or argv[:2] == ["python", "-m"]:
                parse_command(argv)
                checked += 1
            # `transformers serve` and TGI's launcher are other projects' CLIs
            ports = published_ports(service)
            if ports and port_flag(argv) is not None:
                assert ports == {port_flag(argv)}, f"{name}: health check probes {ports}"
    assert checked == 4  # model-prep, leaflm, naive, bench


def test_compose_bench_targets_point_at_the_servers_it_waits_for(compose):
    bench = compose["services"]["bench"]
    (argv,) = _service_commands(bench)
    args = parse_command(argv)
    assert args is not None and args.bench_command == "serve"
    served = {}
    for dep in bench["depends_on"]:
        for port in published_ports(compose["services"][dep]):
            served[port] = dep
    targets = {t.split("=", 1)[0]: urlsplit(t.split("=", 1)[1]).port for t in args.target}
    assert set(targets.values()) == set(served), (targets, served)


# --- k8s ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_k8s_deployment_runs_a_real_leaflm_serve_on_the_pod_ip(k8s):
    assert set(k8s) == {"Deployment", "Service"}
    (container,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["image"].split(":")[0] in built_images()
    args = parse_command(container["command"])
    assert args is not None and args.command == "serve"
    assert args.host == "0.0.0.0", "inside a pod the server must listen on the pod IP"
    (port,) = container["ports"]
    assert port["containerPort"] == args.port
    from leaflm.gateway.routes.ops import router

    routes = {r.path for r in router.routes}
    for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
        assert container[probe]["httpGet"]["port"] == port["name"]
    service = k8s["Service"]
    assert service["spec"]["selector"] == k8s["Deployment"]["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    notes = service["metadata"]["annotations"]
    assert notes["prometheus.io/path"] in routes and int(notes["prometheus.io/port"]) == args.port


# --- Dockerfiles ----------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_what_the_tests_install_and_runs_real_commands(dockerfile):
    steps = dockerfile_instructions(dockerfile)
    args = {}
    for word, rest in steps:
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value.strip('"')
        if word == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest)
            if image.split(":")[0] in built_images():  # built by a sibling Dockerfile
                continue
            name, _, tag = image.partition(":")
            assert tag and tag != "latest", f"{dockerfile.name}: base image {image} unpinned"
            if name == "pytorch/pytorch":  # its torch must meet the declared floor
                assert Version(tag.split("-")[0]) >= declared_floor("engine", "torch")
        if word == "COPY":
            for src in rest.split()[:-1]:
                assert (REPO / src).exists(), f"{dockerfile.name} copies missing {src}"
        if word == "RUN":
            for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.+!]*)", rest):
                want = nox_pins().get(name.lower())
                assert want == version, f"{dockerfile.name}: {name}=={version}, tests use {want}"
    runs = [exec_form(r) for w, r in steps if w in ("ENTRYPOINT", "CMD") and r.startswith("[")]
    argv = [part for cmd in runs for part in cmd]
    assert argv, f"{dockerfile.name} runs nothing"
    parsed = parse_command(argv)
    if parsed is not None and getattr(parsed, "command", None) == "serve":
        assert parsed.host == "0.0.0.0", "`docker run -p` reaches only a server on 0.0.0.0"
        exposed = {int(r) for w, r in steps if w == "EXPOSE"}
        assert exposed == {parsed.port}
        health = next(r for w, r in steps if w == "HEALTHCHECK")
        assert f"127.0.0.1:{parsed.port}/health" in health


# --- the checks themselves catch breakage ---------------------------------------------------


def test_a_broken_flag_or_subcommand_is_caught():
    with pytest.raises(AssertionError, match="unrecognized arguments: --prot"):
        parse_command(["leaflm", "serve", "--prot", "8000"])
    with pytest.raises(AssertionError, match="invalid choice: 'srve'"):
        parse_command(["leaflm", "srve"])
    with pytest.raises(AssertionError, match="invalid int value"):
        parse_command(["python", "-m", "leaflm.bench.naive_server", "--model", "m", "--port", "x"])
