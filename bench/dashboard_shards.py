"""Dashboard throughput of 2 concurrent ``build-dashboard --shard I/2`` processes (then
``merge-dashboards``) against 1 ``build-dashboard`` process over the same studies: the world
demo's model and SAE over its held-out studies, on this machine's CPUs.

Each variant is timed from the first process's start to the finished dashboard (model loading,
the merge and every process's imports included: what a user waits for), alternated A B, B A to
spread drift in a shared machine's load. The single process gets torch's default threads;
each shard gets ``cpus // 2`` (``OMP_NUM_THREADS``), so both variants ask for the same cores.
Also reported: the CPU seconds the children used, whose ratio does not depend on how much of
the machine other work took. The merged dashboard is checked equal, file for file, to the
single process's. The issue sets no target; ``--quick`` runs 16 studies once (48, 3 times).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import bench_arguments, check, emit, machine, median

STUDIES, QUICK_STUDIES = 48, 16
REPEATS, QUICK_REPEATS = 3, 1
SHARDS = 2
SERVER_CLI = (sys.executable, "-m", "maira_sae.server.cli")


def run(*, quick: bool) -> dict[str, Any]:
    from maira_sae.server.demo.layout import MODEL_FOLDER, SAE_FOLDER
    from maira_sae.server.demo.world.materialise import ensure_world_demo
    from maira_sae.server.demo.world.study_export import write_held_out_studies

    count = QUICK_STUDIES if quick else STUDIES
    repeats = QUICK_REPEATS if quick else REPEATS
    threads = max(1, (os.cpu_count() or SHARDS) // SHARDS)
    with tempfile.TemporaryDirectory(prefix="dashboard-shards-") as temporary:
        work = Path(temporary)
        demo = ensure_world_demo(work / "demo")
        write_held_out_studies(work / "studies", count)
        base = ["build-dashboard", "--model", str(demo / MODEL_FOLDER)]
        base += ["--sae", str(demo / SAE_FOLDER), "--studies", str(work / "studies")]
        base += ["--device", "cpu"]
        samples: dict[str, list[dict[str, float]]] = {"one_process": [], "two_shards": []}
        for round_index in range(repeats):
            names = list(samples) if round_index % 2 == 0 else list(samples)[::-1]
            for name in names:
                out = work / f"{name}-{round_index}"
                if name == "one_process":
                    commands = [[*base, "--out", str(out / "dashboard")]]
                    merge = None
                else:
                    commands = [
                        [*base, "--out", str(out / f"part-{i}"), "--shard", f"{i}/{SHARDS}"]
                        for i in range(SHARDS)
                    ]
                    parts = [str(out / f"part-{i}") for i in range(SHARDS)]
                    merge = ["merge-dashboards", *parts, "--out", str(out / "dashboard")]
                env = None if merge is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
                samples[name].append(_timed(commands, merge, env))
            _check_equal(work / f"two_shards-{round_index}", work / f"one_process-{round_index}")
    one, two = (
        {key: median([s[key] for s in samples[name]]) for key in samples[name][0]}
        for name in ("one_process", "two_shards")
    )
    return {
        "bench": "dashboard_shards",
        "studies": count,
        "shards": SHARDS,
        "threads_per_shard": threads,
        "repeats": repeats,
        "samples": samples,
        "machine": machine(),
        "checks": [
            check(
                "throughput_2_shards_over_1",
                one["seconds"] / two["seconds"],
                None,
                one_process_studies_per_s=count / one["seconds"],
                two_shards_studies_per_s=count / two["seconds"],
                one_process_s=one["seconds"],
                two_shards_s=two["seconds"],
                merge_s=two["merge_seconds"],
            ),
            check(
                "cpu_seconds_2_shards_over_1",
                two["cpu_seconds"] / one["cpu_seconds"],
                None,
                one_process_cpu_s=one["cpu_seconds"],
                two_shards_cpu_s=two["cpu_seconds"],
            ),
        ],
    }


def _timed(
    commands: Sequence[list[str]], merge: list[str] | None, env: dict[str, str] | None
) -> dict[str, float]:
    """Run ``commands`` at once, then ``merge``: wall seconds, the merge's, children's CPU."""
    cpu_before = _children_cpu()
    started = time.perf_counter()
    processes = [
        subprocess.Popen([*SERVER_CLI, *c], env=env, stderr=subprocess.DEVNULL) for c in commands
    ]
    if any(process.wait() for process in processes):
        raise RuntimeError(f"a build-dashboard process failed: {commands}")
    merge_started = time.perf_counter()
    if merge is not None:
        subprocess.run([*SERVER_CLI, *merge], check=True, stdout=subprocess.DEVNULL)
    finished = time.perf_counter()
    return {
        "seconds": finished - started,
        "merge_seconds": finished - merge_started,
        "cpu_seconds": _children_cpu() - cpu_before,
        "load_average_1m": os.getloadavg()[0],  # other work on a shared machine, at the end
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _check_equal(merged: Path, single: Path) -> None:
    from tests.support.dashboards import assert_same_dashboard

    assert_same_dashboard(merged / "dashboard", single / "dashboard")


def main() -> None:
    arguments = bench_arguments(__doc__ or "")
    emit(run(quick=arguments.quick), arguments.out)


if __name__ == "__main__":
    main()
