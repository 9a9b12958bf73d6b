"""Policy checks on the rendered manifests: they must agree with what the server really does
(its config type, ports, health service, drain, metrics) and keep the security baseline."""

from __future__ import annotations

import dataclasses
import shlex
import typing
from importlib.metadata import entry_points
from pathlib import Path, PurePosixPath

from maira_sae.server.service.config import ServerConfig
from maira_sae.server.service.config_sources import ENV_PREFIX
from maira_sae.server.service.metrics import Metrics
from maira_sae.v1 import maira_sae_pb2
from tests.deploy.manifests import REPO, Rendered

API_SERVICE = maira_sae_pb2.DESCRIPTOR.services_by_name["MairaSaeService"].full_name
# Worst case for loading MAIRA-2: 14 GB of bf16 weights (28 GB stored as fp32) from a network
# volume at ~50 MB/s, then warm-up. The startup probe must allow at least this long.
MODEL_LOAD_BUDGET_S = 600
# The one MAIRA_SAE_* variable that is not a ServerConfig setting: the config file's path.
NON_SETTING_VARIABLES = {f"{ENV_PREFIX}CONFIG"}


def _setting_variables() -> set[str]:
    """Every MAIRA_SAE_* variable ServerConfig reads, derived from the config type itself."""
    hints = typing.get_type_hints(ServerConfig)
    names = {f"{ENV_PREFIX}DEFAULT_SAE_ID", f"{ENV_PREFIX}SAES"}
    for section in dataclasses.fields(ServerConfig):
        if dataclasses.is_dataclass(hints[section.name]):
            names |= {
                f"{ENV_PREFIX}{section.name}_{f.name}".upper()
                for f in dataclasses.fields(hints[section.name])
            }
    return names


def _pod_templates(rendered: Rendered) -> list[dict]:
    return [obj["spec"]["template"]["spec"] for obj in rendered.all("Deployment")] + [
        obj["spec"]["template"]["spec"] for obj in rendered.all("Job")
    ]


def _under(path: str, mount: str) -> bool:
    return PurePosixPath(path).is_relative_to(mount)


def _writable_mounts(pod: dict, container: dict) -> list[str]:
    """Mount paths of emptyDir volumes the container may write."""
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    return [
        m["mountPath"]
        for m in container.get("volumeMounts", [])
        if m["name"] in empty_dirs and not m.get("readOnly", False)
    ]


# Config


def test_configmap_loads_into_the_server_config(rendered: Rendered, tmp_path: Path):
    """The ConfigMap's file goes through the server's own loader (unknown keys are refused),
    then the container's environment on top, exactly as `maira-sae-server serve` does."""
    config = rendered.server_config(tmp_path)
    assert isinstance(config, ServerConfig)
    # ... and the server finds the file where MAIRA_SAE_CONFIG says, in the mounted ConfigMap.
    config_path = PurePosixPath(rendered.server_env[f"{ENV_PREFIX}CONFIG"])
    (mount,) = [
        m for m in rendered.server["volumeMounts"] if m["mountPath"] == str(config_path.parent)
    ]
    assert "configMap" in rendered.volume(mount["name"])
    assert config_path.name == "config.toml"


def test_every_server_variable_is_read_by_the_server(rendered: Rendered):
    """ServerConfig ignores unknown MAIRA_SAE_* variables, so a misspelt one would be lost
    silently: each must name a real setting."""
    variables = {name for name in rendered.server_env if name.startswith(ENV_PREFIX)}
    assert variables - NON_SETTING_VARIABLES <= _setting_variables()


def test_ports_match_the_server_config(rendered: Rendered, tmp_path: Path):
    serving = rendered.server_config(tmp_path).serving
    ports = {p["name"]: p["containerPort"] for p in rendered.server["ports"]}
    assert ports == {
        "grpc": serving.grpc_port,
        "health": serving.health_port,
        "metrics": serving.metrics_port,
    }
    for service in rendered.all("Service"):
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, service["metadata"]["name"]


# Probes, drain


def test_probes_use_grpc_health_on_the_health_port(rendered: Rendered, tmp_path: Path):
    health_port = rendered.server_config(tmp_path).serving.health_port
    server = rendered.server
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = server[probe]["grpc"]
        assert grpc["port"] == health_port, probe
        assert grpc["service"] in ("", API_SERVICE), probe
    # Ready means the API service itself is SERVING.
    assert server["readinessProbe"]["grpc"]["service"] == API_SERVICE


def test_startup_budget_covers_a_model_load(rendered: Rendered):
    startup = rendered.server["startupProbe"]
    budget = startup.get("initialDelaySeconds", 0) + (
        startup["periodSeconds"] * startup["failureThreshold"]
    )
    assert budget >= MODEL_LOAD_BUDGET_S
    # A rollout must not be declared failed while a pod is still inside that budget.
    assert rendered.deployment["spec"]["progressDeadlineSeconds"] > budget


def test_drain_fits_inside_the_termination_grace_period(rendered: Rendered, tmp_path: Path):
    drain_grace_s = rendered.server_config(tmp_path).serving.drain_grace_s
    command = rendered.server["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    assert rendered.pod_spec["terminationGracePeriodSeconds"] > pre_stop_s + drain_grace_s


def test_liveness_does_not_kill_a_draining_server(rendered: Rendered, tmp_path: Path):
    """Health reads NOT_SERVING while draining: liveness must tolerate that long."""
    drain_grace_s = rendered.server_config(tmp_path).serving.drain_grace_s
    liveness = rendered.server["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain_grace_s


# Security


def test_pods_run_non_root_and_locked_down(rendered: Rendered):
    for pod in _pod_templates(rendered):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert not context.get("privileged", False)


def test_home_and_caches_are_writable(rendered: Rendered):
    """With a read-only root filesystem, every path the server may write must be an emptyDir."""
    writable = _writable_mounts(rendered.pod_spec, rendered.server)
    env = rendered.server_env
    for variable in ("HOME", "XDG_CACHE_HOME"):
        assert any(_under(env[variable], mount) for mount in writable), variable
    for mount in rendered.server["volumeMounts"]:
        if mount["mountPath"] not in writable:
            assert mount["readOnly"] is True, mount


def test_service_account_mounts_no_token(rendered: Rendered):
    account = rendered.one("ServiceAccount", rendered.pod_spec["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False


def test_images_are_tagged(rendered: Rendered):
    for pod in _pod_templates(rendered):
        for container in pod["containers"]:
            _, _, tag = container["image"].rpartition(":")
            assert tag and "/" not in tag and tag != "latest", container["image"]


# GPU and demo


def test_gpu_overlay_asks_for_exactly_one_gpu(gpu: Rendered, tmp_path: Path):
    resources = gpu.server["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources.get("requests", {}).get("nvidia.com/gpu", 1) == 1
    assert gpu.pod_spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu.pod_spec["tolerations"])
    model = gpu.server_config(tmp_path).model
    assert (model.device, model.dtype, model.demo) == ("cuda", "bfloat16", False)


def test_demo_overlay_needs_no_gpu_and_no_weights(demo: Rendered, tmp_path: Path):
    assert "nvidia.com" not in repr(demo.objects)
    assert "persistentVolumeClaim" not in repr(demo.pod_spec)
    model = demo.server_config(tmp_path).model
    assert (model.demo, model.device) == (True, "cpu")
    # `serve` writes the demo checkpoint at start: that folder must be a writable emptyDir.
    assert any(_under(model.demo_dir, m) for m in _writable_mounts(demo.pod_spec, demo.server))


# Model weights


def test_weights_are_mounted_read_only_where_the_config_reads_them(gpu: Rendered, tmp_path: Path):
    claim = gpu.one("PersistentVolumeClaim")["metadata"]["name"]
    (volume,) = [v for v in gpu.pod_spec["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
    (mount,) = [m for m in gpu.server["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    config = gpu.server_config(tmp_path)
    paths = [config.model.path] + [
        str(p) for sae in config.saes for p in (sae.path, sae.interpretations_path) if p
    ]
    assert config.saes
    for path in paths:
        assert _under(path, mount["mountPath"]), path


def test_weights_job_fills_the_folders_the_server_reads(gpu: Rendered, tmp_path: Path):
    pod = gpu.one("Job")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["sh", "-c"]
    (script,) = container["args"]
    preflight, *steps = [shlex.split(step) for step in script.split("&&")]
    # First the snapshot is checked from its small files, by the server's own command.
    assert preflight == ["maira-sae-server", "check-snapshot", "microsoft/maira-2"]
    assert "maira-sae-server" in {ep.name for ep in entry_points(group="console_scripts")}
    # `hf download REPO --local-dir DIR`: a console script of huggingface_hub, which the
    # server extra installs into the image.
    hub_scripts = {
        ep.name
        for ep in entry_points(group="console_scripts")
        if ep.value.startswith("huggingface_hub")
    }
    local_dirs = {}
    for words in steps:
        assert words[0] in hub_scripts and words[1] == "download", words
        local_dirs[words[2]] = words[words.index("--local-dir") + 1]
    config = gpu.server_config(tmp_path)
    assert local_dirs["microsoft/maira-2"] == config.model.path
    for sae in config.saes:
        assert _under(str(sae.path), local_dirs["microsoft/maira-2-sae"])
    claim = gpu.one("PersistentVolumeClaim")["metadata"]["name"]
    (claim_volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claim_volume["persistentVolumeClaim"]["claimName"] == claim
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == claim_volume["name"]]
    assert all(_under(d, mount["mountPath"]) for d in local_dirs.values())
    # The gated model's token comes from a Secret the operator creates: never rendered here.
    (token,) = [e for e in container["env"] if e["name"] == "HF_TOKEN"]
    assert set(token["valueFrom"]) == {"secretKeyRef"}
    assert not gpu.all("Secret")


# Scaling and traffic


def test_hpa_scales_on_cost_gauges_the_server_exports_and_the_docs_adapt(rendered: Rendered):
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": rendered.deployment["metadata"]["name"],
    }
    exported = {family.name: family.type for family in Metrics().registry.collect()}
    names = []
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "Pods"
        names.append(metric["pods"]["metric"]["name"])
        assert exported.get(names[-1]) == "gauge"
    assert names == ["maira_sae_queued_cost_tokens", "maira_sae_engine_busy_ratio"]
    docs = (REPO / "deploy" / "README.md").read_text()
    for name in names:  # the prometheus-adapter rule that serves it to the HPA
        assert f'as: "{name}"' in docs
    assert hpa["spec"]["minReplicas"] >= 1  # scale to zero is not an HPA feature (docs)
    # The HPA owns the replica count: the Deployment must not fight it on every apply.
    assert "replicas" not in rendered.deployment["spec"]


def test_services_pdb_and_policy_select_the_server_pods(rendered: Rendered):
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    services = {s["metadata"]["name"]: s["spec"] for s in rendered.all("Service")}
    assert services["maira-sae-headless"]["clusterIP"] == "None"  # client-side round robin
    assert services["maira-sae"]["type"] == "ClusterIP"  # L7 meshes
    selectors = [s["selector"] for s in services.values()] + [
        rendered.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        rendered.one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= pod_labels.items()


def test_network_policy_admits_clients_and_monitoring_only(rendered: Rendered):
    rules = rendered.one("NetworkPolicy")["spec"]["ingress"]
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in rules}
    assert by_port == {
        "grpc": [
            {"namespaceSelector": {}, "podSelector": {"matchLabels": {"maira-sae/client": "true"}}}
        ],
        "metrics": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
    }
