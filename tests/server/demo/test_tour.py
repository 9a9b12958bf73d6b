"""`make demo` runs this tour: it must start the server, call every RPC and stop cleanly."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from maira_sae.server.demo.world.reports import concepts_in_text


@pytest.mark.slow
def test_the_demo_tour_calls_every_rpc_and_stops_the_server_cleanly(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "maira_sae.server.demo.tour",
            "--checkpoint",
            str(tmp_path / "checkpoint"),
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for rpc in ("GetInfo", "SearchFeatures", "GetFeature", "Encode", "TopFeatures",
                "GenerateSteered"):  # fmt: skip
        assert f"=== {rpc}" in result.stdout or rpc in result.stdout
    assert "health: SERVING" in result.stdout
    assert "exit code 0" in result.stdout
    assert "SYNTHETIC WORLD" in result.stdout
    # The world demo's story: a pacemaker feature tops the labelled features of the film with a
    # pacemaker, and clamping it writes a pacemaker into the report of the study without one.
    assert re.search(r"feature \d+ \(pacemaker\): rank 1 among the labelled", result.stdout)
    # Search by activation: the text's tokens, then features with the token where each peaks.
    assert re.search(
        r"\$ maira-sae search --by-activation '.+' --limit 5\n"
        r"tokens  '<s>' .*\nactivation  feature",
        result.stdout,
    ), result.stdout
    # The offline explainer's explanation of that feature, its score and the control, computed.
    explained = re.search(
        r'=== explain: .* feature (\d+),.*\nfeature \1: "(.+)"\n  detection AUROC ([\d.]+)'
        r".*\n  shuffled control .*AUROC ([\d.]+)\n  over \d+ live features: mean AUROC "
        r"([\d.]+), shuffled control ([\d.]+)",
        result.stdout,
    )
    assert explained, result.stdout
    assert "pacemaker" in explained.group(2).split("; ")
    assert float(explained.group(3)) >= 0.8 > float(explained.group(4))
    assert float(explained.group(5)) >= float(explained.group(6)) + 0.2
    baseline = re.search(r"== baseline: .*==\n(.*)", result.stdout)
    steered = re.search(r"== \d+:clamp:[\d.]+@all: .*==\n(.*)", result.stdout)
    assert baseline and steered, result.stdout
    assert "pacemaker" not in concepts_in_text(baseline.group(1))
    assert "pacemaker" in concepts_in_text(steered.group(1))
    assert (tmp_path / "out" / "top-features.png").stat().st_size > 0
    assert "<html" in (tmp_path / "out" / "top-features.html").read_text().lower()
    (page,) = (tmp_path / "out").glob("feature-*.html")
    assert "data:image/png;base64," in page.read_text()  # the dashboard's films
    server_log = (tmp_path / "out" / "server.log").read_text()
    assert "Traceback" not in server_log
    assert "Pacemaker check" not in server_log, "request text must never reach the logs"
