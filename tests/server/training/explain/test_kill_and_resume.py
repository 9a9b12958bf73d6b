"""kill -9 of a running explain process, then a rerun: it finishes the rest, and no feature
finished before the kill is asked of the LLM again or written twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from maira_sae.server.training.explain.progress import ProgressFile, Status
from tests.support.chat_endpoint import ChatEndpoint
from tests.support.synthetic_features import keyword_reply, request_kind, subject_feature

pytestmark = pytest.mark.slow
FEATURES = "0:48"
REPO = Path(__file__).resolve().parents[4]


def explain_process(url: str, progress: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "tests.support.synthetic_features", url, str(progress)]
    return subprocess.Popen(
        [*command, FEATURES, "--concurrency", "4"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def lines_in(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_run_killed_mid_way_resumes_with_no_feature_twice_or_lost(tmp_path):
    progress = tmp_path / "run.progress.jsonl"
    explained_when: list[tuple[int, str]] = []  # (feature, "first" | "rerun"), per explain call
    phase = "first"

    def reply(request: dict) -> str:
        if request_kind(request) == "explain":
            explained_when.append((subject_feature(request), phase))
        return keyword_reply(request)

    with ChatEndpoint(reply, latency_s=0.05) as endpoint:
        first = explain_process(endpoint.url, progress)
        try:
            deadline = time.monotonic() + 60
            while lines_in(progress) < 10 and first.poll() is None:
                assert time.monotonic() < deadline, "the first run wrote too few features"
                time.sleep(0.02)
        finally:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
        assert first.returncode == -signal.SIGKILL
        before = ProgressFile(progress).finished()
        assert 10 <= len(before) < 48  # killed mid-way
        with progress.open("a") as handle:
            handle.write('{"feature": 47, "status": "expl')  # a line torn by the kill

        phase = "rerun"
        rerun = explain_process(endpoint.url, progress)
        out, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err

    summary = json.loads(out)
    assert summary["features"] == 48 and summary["resumed"] == len(before)
    assert summary["explained"] == 48 and summary["failed"] == 0
    written = Counter(json.loads(line)["feature"] for line in progress.read_text().splitlines())
    assert written == Counter(range(48))  # every feature once: none twice, none lost
    asked_again = {feature for feature, when in explained_when if when == "rerun"}
    assert not asked_again & set(before)  # nothing finished before the kill was redone
    assert all(o.status is Status.EXPLAINED for o in ProgressFile(progress).finished().values())
