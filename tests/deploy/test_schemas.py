"""Every rendered object validates strictly (unknown fields are errors) against the Kubernetes
schemas shipped by kubernetes-validate: the oldest version we support and the newest it knows.
Custom resources have no schema there; the ServiceMonitor is checked against the fields of the
Prometheus Operator's CRD that we use."""

from __future__ import annotations

import jsonschema
import pytest
from kubernetes_validate import utils as kubernetes_validate

from tests.deploy.manifests import Rendered

KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.latest_version())
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

BUILT_IN_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
}
EXPECTED_KINDS = {
    "gpu": BUILT_IN_KINDS | {"PersistentVolumeClaim", "Job", "ServiceMonitor"},
    # No weights to download, no Prometheus Operator on a laptop cluster.
    "demo-cpu": BUILT_IN_KINDS,
    # The GPU install plus the research Jobs and their shared volume: no new kinds.
    "research": BUILT_IN_KINDS | {"PersistentVolumeClaim", "Job", "ServiceMonitor"},
}

# The ServiceMonitor fields we use, typed as in the monitoring.coreos.com/v1 CRD; anything
# else (a typo such as `endpoint:`) is refused, as the API server would prune or reject it.
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": _LABELS,
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "additionalProperties": False,
                    "properties": {"matchLabels": _LABELS},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def test_each_overlay_renders_the_expected_kinds(rendered: Rendered):
    assert {obj["kind"] for obj in rendered.objects} == EXPECTED_KINDS[rendered.overlay]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_built_in_objects_validate_strictly(rendered: Rendered, version: str):
    for obj in rendered.objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(map(str, err.path))
            pytest.fail(f"{rendered.overlay} {name} against {version}: {path}: {err.message}")


def test_strict_validation_refuses_unknown_fields(gpu: Rendered):
    """The guard for the test above: a misspelt field must fail, not pass silently."""
    deployment = gpu.deployment
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_service_monitor_has_the_expected_fields(gpu: Rendered):
    monitor = gpu.one("ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    # It must select a Service of the same namespace that has the named port.
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        s
        for s in gpu.all("Service")
        if selector.items() <= s["metadata"].get("labels", {}).items()
        and s["metadata"]["namespace"] == monitor["metadata"]["namespace"]
    ]
    assert [s["metadata"]["name"] for s in services] == ["maira-sae"]
    port_names = {p["name"] for p in services[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"  # where prometheus-client serves
