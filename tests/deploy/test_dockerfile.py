"""The Dockerfile and .dockerignore, read as text (docker cannot run here): pinned bases, the
right torch build per target, a non-root user that matches the manifests, the server's default
ports, an entrypoint that is a real console script, and a build context without weights."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass
from importlib.metadata import entry_points

import pytest

from maira_sae.server.demo.world.materialise import ARTIFACT_DIR
from maira_sae.server.service.config import ServingConfig
from tests.deploy.manifests import REPO, Rendered

DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
TARGETS = ("gpu", "demo")


@dataclass(frozen=True)
class Stage:
    base: str
    instructions: tuple[tuple[str, str], ...]  # (INSTRUCTION, arguments), in order

    def args(self, instruction: str) -> list[str]:
        return [rest for name, rest in self.instructions if name == instruction]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; comments dropped, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", re.sub(r"(?m)^\s*#.*\n", "", text))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            name, _, rest = line.strip().partition(" ")
            pairs.append((name.upper(), " ".join(rest.split())))
    return pairs


def _stages() -> dict[str, Stage]:
    stages: dict[str, list] = {}
    current: list | None = None
    for name, rest in _instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if name == "FROM":
            base, _, target = rest.partition(" AS ")
            current = stages[target] = [base]
        elif current is not None:
            current.append((name, rest))
    return {target: Stage(items[0], tuple(items[1:])) for target, items in stages.items()}


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return _stages()


def test_each_target_exists(stages: dict[str, Stage]):
    assert set(stages) == set(TARGETS)
    assert list(stages)[-1] == "gpu"  # the default target of a plain `docker build`


def test_base_images_are_pinned_by_version(stages: dict[str, Stage]):
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d+\.\d+", stages["gpu"].base)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", stages["demo"].base)


def test_torch_is_pinned_with_the_right_build(stages: dict[str, Stage]):
    top = _instructions(DOCKERFILE.read_text(encoding="utf-8"))
    (torch_version,) = [rest for name, rest in top if name == "ARG" and "TORCH_VERSION=" in rest]
    assert re.fullmatch(r"TORCH_VERSION=\d+\.\d+\.\d+", torch_version)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    server_extra = pyproject["project"]["optional-dependencies"]
    (pin,) = [req for req in server_extra["server"] if req.startswith("torch")]
    assert pin == f"torch=={torch_version.removeprefix('TORCH_VERSION=')}"  # the one pin
    indexes = {
        "gpu": r"https://download\.pytorch\.org/whl/cu\d+",
        "demo": r"https://download\.pytorch\.org/whl/cpu",
    }
    for target, index in indexes.items():
        stage = stages[target]
        text = " ".join(stage.args("ARG") + stage.args("RUN"))
        (torch_install,) = [r for r in stage.args("RUN") if '"torch==${TORCH_VERSION}"' in r]
        assert "--index-url" in torch_install
        assert re.search(index, text), target
        # torch first: the `server` extra must find it installed rather than pull another build.
        runs = stage.args("RUN")
        assert runs.index(torch_install) < runs.index('pip install ".[server]"')


def test_runs_as_the_non_root_user_of_the_manifests(stages: dict[str, Stage], gpu: Rendered):
    uid = gpu.pod_spec["securityContext"]["runAsUser"]
    gid = gpu.pod_spec["securityContext"]["runAsGroup"]
    for target in TARGETS:
        instructions = stages[target].instructions
        names = [name for name, _ in instructions]
        last_user = len(names) - 1 - names[::-1].index("USER")
        assert instructions[last_user][1] == f"{uid}:{gid}", target
        assert "RUN" not in names[last_user:], f"{target}: RUN after USER runs as the user"
        assert any(f"--uid {uid} --gid {gid}" in r for r in stages[target].args("RUN"))


def test_ports_are_the_server_defaults(stages: dict[str, Stage]):
    defaults = ServingConfig()
    expected = {defaults.grpc_port, defaults.health_port, defaults.metrics_port}
    for target in TARGETS:
        (exposed,) = stages[target].args("EXPOSE")
        assert {int(port) for port in exposed.split()} == expected, target


def test_entrypoint_is_the_console_script_serve(stages: dict[str, Stage]):
    (script,) = entry_points(group="console_scripts", name="maira-sae-server")
    assert script.value == "maira_sae.server.cli:main"
    for target in TARGETS:
        (entrypoint,) = stages[target].args("ENTRYPOINT")
        assert json.loads(entrypoint) == ["maira-sae-server", "serve"], target


def test_demo_target_serves_the_demo_checkpoint(stages: dict[str, Stage]):
    # model.demo_dir is left to its default, under the user's own (writable) home.
    assert stages["demo"].args("ENV")[-1] == "MAIRA_SAE_MODEL_DEMO=true"


def test_images_get_the_packages_and_nothing_else(stages: dict[str, Stage]):
    """Every package folder is copied in; the context leaves out weights, tests and the venv."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    package_roots = {
        folder.split("/")[0] for folder in pyproject["tool"]["setuptools"]["package-dir"].values()
    }
    ignored = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for target in TARGETS:
        copied = {source for rest in stages[target].args("COPY") for source in rest.split()[:-1]}
        assert package_roots | {"pyproject.toml", "README.md"} == copied, target
        assert not copied & ignored
    assert {".git", ".venv", "tests", "**/*.safetensors", "**/*.pt"} <= ignored


def test_the_demo_artifact_stays_in_the_build_context_while_other_weights_do_not():
    """Rules apply in order and the last match decides, as Docker's do (fnmatch stands in
    for Docker's matcher: its ``*`` also crosses ``/``, which these rules rely on)."""
    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        verdict = False
        for rule in rules:
            negated = rule.startswith("!")
            if fnmatch.fnmatch(path, rule.removeprefix("!")):
                verdict = not negated
        return verdict

    artifact = sorted(ARTIFACT_DIR.rglob("*.safetensors")) + sorted(ARTIFACT_DIR.rglob("*.pt"))
    assert artifact
    for path in artifact:
        assert not ignored(path.relative_to(REPO).as_posix()), path
    assert ignored("models/maira-2/model-00001-of-00002.safetensors")
    assert ignored("server/sae-ef4/ae.pt")
