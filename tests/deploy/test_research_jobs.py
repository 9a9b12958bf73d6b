"""The research Jobs (components/research-jobs, rendered in overlays/research): each runs a real
command of the server's CLI with arguments its parser accepts, the steps hand each other their
folders on the shared volume, and the pods are the server's (image, security context).

The schema and security tests of test_schemas.py and test_policies.py run on this overlay too
(``OVERLAYS``); here are the checks that only Jobs need."""

from __future__ import annotations

import argparse
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from maira_sae.sae.dashboard import DEFAULT_FOLDER
from maira_sae.server.cli import _parser as server_parser
from maira_sae.server.training.explain.progress import progress_path_for
from tests.deploy.manifests import Rendered, render

HARVEST, TRAIN, EXPLAIN = "maira-sae-harvest", "maira-sae-train-sae", "maira-sae-explain"
DASHBOARD, MERGE_DASHBOARDS = "maira-sae-dashboard", "maira-sae-merge-dashboards"
MERGE_EXPLANATIONS = "maira-sae-merge-explanations"
JOBS = (HARVEST, TRAIN, DASHBOARD, MERGE_DASHBOARDS, EXPLAIN, MERGE_EXPLANATIONS)
GPU_JOBS = (HARVEST, TRAIN, DASHBOARD)
RESEARCH_CLAIM = "maira-sae-research"


@pytest.fixture(scope="module")
def research() -> Rendered:
    return render("research")


def job(rendered: Rendered, name: str) -> dict[str, Any]:
    return rendered.one("Job", name)


def container(job_object: dict[str, Any]) -> dict[str, Any]:
    (only,) = job_object["spec"]["template"]["spec"]["containers"]
    return only


def expanded_args(job_object: dict[str, Any], index: int) -> list[str]:
    """The container's arguments as the kubelet expands them, for completion index ``index``."""
    return [
        arg.replace("$(JOB_COMPLETION_INDEX)", str(index)) for arg in container(job_object)["args"]
    ]


def option(args: list[str], name: str) -> str:
    (value,) = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"{name}=")]
    return value


def test_the_research_overlay_adds_the_jobs_to_the_serving_install(research: Rendered):
    gpu = render("gpu")
    serving = {(o["kind"], o["metadata"]["name"]) for o in gpu.objects}
    ours = {(o["kind"], o["metadata"]["name"]) for o in research.objects}
    assert ours - serving == {("Job", name) for name in JOBS} | {
        ("PersistentVolumeClaim", RESEARCH_CLAIM)
    }
    claim = research.one("PersistentVolumeClaim", RESEARCH_CLAIM)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert {o["metadata"].get("namespace") for o in research.objects} - {None} == {"maira-sae"}


def test_jobs_run_the_servers_image_and_security_context(research: Rendered):
    server_pod = research.pod_spec
    for name in JOBS:
        pod = job(research, name)["spec"]["template"]["spec"]
        assert pod["securityContext"] == server_pod["securityContext"], name
        assert pod["serviceAccountName"] == server_pod["serviceAccountName"]
        only = container(job(research, name))
        assert only["image"] == research.server["image"], name
        assert only["securityContext"] == research.server["securityContext"], name
        # Read-only root: HOME and the caches are on the /tmp emptyDir.
        (tmp,) = [m for m in only["volumeMounts"] if m["mountPath"] == "/tmp"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
        assert "emptyDir" in volume
        env = {e["name"]: e.get("value") for e in only["env"]}
        assert env["HOME"] == "/tmp" and env["XDG_CACHE_HOME"].startswith("/tmp/")


def test_every_job_sets_its_resources_and_mounts_the_shared_volume(research: Rendered):
    for name in JOBS:
        pod = job(research, name)["spec"]["template"]["spec"]
        resources = container(job(research, name))["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys(), name
        assert "memory" in resources["limits"], name
        (volume,) = [v for v in pod["volumes"] if v["name"] == "research"]
        assert volume["persistentVolumeClaim"] == {"claimName": RESEARCH_CLAIM}
    gpus = {name: container(job(research, name))["resources"]["limits"] for name in GPU_JOBS}
    assert all(limits["nvidia.com/gpu"] == 1 for limits in gpus.values())
    for name in set(JOBS) - set(GPU_JOBS):  # interpretation and the merges run on CPUs
        assert "nvidia.com" not in repr(job(research, name)), name


def indexed_pods(rendered: Rendered, name: str, command: str) -> list[argparse.Namespace]:
    """The parsed arguments of every pod of an Indexed Job whose pod I runs shard I/N, N being
    its completions, of ``command``."""
    indexed = job(rendered, name)
    spec = indexed["spec"]
    assert spec["completionMode"] == "Indexed"
    pods = [
        server_parser().parse_args(expanded_args(indexed, index))
        for index in range(spec["completions"])
    ]
    assert {args.command for args in pods} == {command}
    assert [args.shard for args in pods] == [(i, spec["completions"]) for i in range(len(pods))]
    env = {e["name"]: e for e in container(indexed)["env"]}
    field = env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    return pods


def test_harvest_is_indexed_and_each_pod_harvests_its_own_shard(research: Rendered):
    pods = indexed_pods(research, HARVEST, "harvest")
    assert len({args.out for args in pods}) == 1  # one store


def test_training_trains_on_the_harvests_store_and_waits_its_turn(research: Rendered):
    harvest = server_parser().parse_args(expanded_args(job(research, HARVEST), 0))
    train_job = job(research, TRAIN)
    train = server_parser().parse_args(expanded_args(train_job, 0))
    assert train.command == "train-sae" and train.resume
    assert (train.store, train.studies, train.model) == (
        harvest.out,
        harvest.studies,
        harvest.model,
    )
    assert train.layer == harvest.layer
    for name in set(JOBS) - {HARVEST}:  # each waits for the step before it
        assert job(research, name)["spec"]["suspend"] is True, name
    assert "suspend" not in job(research, HARVEST)["spec"]


def test_dashboard_shards_cover_the_studies_and_merge_into_the_sae_folder(research: Rendered):
    harvest = server_parser().parse_args(expanded_args(job(research, HARVEST), 0))
    train = server_parser().parse_args(expanded_args(job(research, TRAIN), 0))
    pods = indexed_pods(research, DASHBOARD, "build-dashboard")
    for args in pods:
        assert args.sae == train.out / "sae" and args.layer in (None, train.layer)
        assert (args.studies, args.model) == (harvest.studies, harvest.model)
    parts = [args.out for args in pods]
    assert len(set(parts)) == len(parts)  # each pod writes its own partial
    merge = server_parser().parse_args(expanded_args(job(research, MERGE_DASHBOARDS), 0))
    assert merge.command == "merge-dashboards"
    assert merge.partials == parts  # every shard's, no other
    assert merge.out == train.out / "sae" / DEFAULT_FOLDER  # where the server finds it


def test_interpretation_pods_cover_every_feature_once_and_merge(research: Rendered, tmp_path: Path):
    """The shell line each pod runs, run here by sh with the pod's environment and a stand-in
    ``maira-sae-server`` on PATH that prints the arguments it gets."""
    explain = job(research, EXPLAIN)
    spec, only = explain["spec"], container(explain)
    assert spec["completionMode"] == "Indexed" and only["command"] == ["sh", "-c"]
    stand_in = tmp_path / "maira-sae-server"
    stand_in.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    env = {e["name"]: e["value"] for e in only["env"] if "value" in e}
    secret = [e for e in only["env"] if e["name"] == "OPENAI_API_KEY"]
    assert set(secret[0]["valueFrom"]) == {"secretKeyRef"} and not research.all("Secret")
    train = server_parser().parse_args(expanded_args(job(research, TRAIN), 0))
    covered: list[int] = []
    outputs: list[Path] = []
    for index in range(spec["completions"]):
        printed = subprocess.run(
            ["sh", "-c", *only["args"]],
            env={**env, "JOB_COMPLETION_INDEX": str(index), "PATH": f"{tmp_path}:/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        args = server_parser().parse_args(printed)  # the real parser: real flags only
        assert args.command == "explain" and args.sae == train.out / "sae"
        assert args.llm_base_url == env["OPENAI_BASE_URL"] and args.explainer == "llm"
        assert args.out.suffix == ".csv"  # the interpretation file; progress beside it
        covered += args.features
        outputs.append(args.out)
    assert covered == list(range(train.dict_size))  # every feature once, in order
    assert len(set(outputs)) == spec["completions"]  # each pod writes its own file
    merge = server_parser().parse_args(expanded_args(job(research, MERGE_EXPLANATIONS), 0))
    assert merge.command == "merge-explanations"
    assert merge.progress == [progress_path_for(out) for out in outputs]
    assert merge.out == train.out / "sae" / "interpretations.csv"
