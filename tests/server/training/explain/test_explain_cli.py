"""``maira-sae-server explain`` on the demo checkpoint: arguments checked before the model
loads, the offline run writes a file the server reads, a rerun resumes, ranges merge."""

from __future__ import annotations

import base64
import io
import json
import stat
from dataclasses import replace

import pytest
from PIL import Image

from maira_sae.sae.file_modes import current_umask
from maira_sae.sae.interpretation_file import read_interpretation_file
from maira_sae.server.cli import main
from maira_sae.server.training.explain.progress import ProgressFile, Status
from tests.support.chat_endpoint import ChatEndpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def explain(world, out, *extra: str) -> list[str]:
    model, sae, studies = world
    return [
        "explain",
        *("--model", str(model), "--sae", str(sae), "--studies", str(studies)),
        *("--out", str(out), "--device", "cpu"),
        *extra,
    ]


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["explain", "--help"])
    assert exited.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 32)", "(default: offline)", "(default: 0)", "(default: 256)"):
        assert default in shown


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--features", "9:3"], "expected A:B with 0 <= A < B, got '9:3'"),
        (["--concurrency", "0"], "expected a whole number >= 1, got '0'"),
    ],
)
def test_bad_arguments_stop_before_anything_loads(tmp_path, extra, message, capsys):
    argv = ["explain", "--model", "m", "--sae", "s", "--studies", "d", "--out", "o.csv", *extra]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_the_llm_explainer_needs_an_endpoint_and_a_model(tmp_path, capsys, monkeypatch):
    for name in ("OPENAI_BASE_URL", "MAIRA_SAE_EXPLAIN_BASE_URL", "MAIRA_SAE_EXPLAIN_MODEL"):
        monkeypatch.delenv(name, raising=False)
    argv = ["explain", "--model", "m", "--sae", str(tmp_path), "--studies", str(tmp_path)]
    assert main([*argv, "--out", str(tmp_path / "o.csv"), "--judge", "llm"]) == 2
    err = capsys.readouterr().err
    assert "--llm-base-url (or MAIRA_SAE_EXPLAIN_BASE_URL / OPENAI_BASE_URL)" in err
    assert "--llm-model (or MAIRA_SAE_EXPLAIN_MODEL)" in err
    missing = tmp_path / "missing"
    argv[4] = str(missing)  # --sae
    assert main([*argv, "--out", str(tmp_path / "o.csv")]) == 2
    assert f"--sae {missing} is not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_offline_ranges_resume_and_merge_into_one_file(world, tmp_path, capsys):
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(explain(world, first, "--features", "0:12")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["features"] == 12 and summary["explained"] + summary["failed"] == 12
    assert summary["explained"] >= 2 and summary["resumed"] == 0
    assert summary["usage"] == {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    assert summary["control_features"] == summary["explained"]
    assert 0 <= summary["mean_score"] <= 1 and 0 <= summary["control_score"] <= 1

    outcomes = ProgressFile(first.with_name("a.progress.jsonl")).finished()
    assert sorted(outcomes) == list(range(12))
    for outcome in outcomes.values():
        if outcome.status is Status.FAILED:
            assert outcome.reason.startswith("too few examples")
    records = read_interpretation_file(first)
    assert [r.feature for r in records] == sorted(
        f for f, o in outcomes.items() if o.status is Status.EXPLAINED
    )
    for record in records:
        assert record.explainer == "offline-contrastive" and record.scorer == "detection-phrase"
        assert record.score == record.auroc and record.n_activating and record.n_non_activating
        assert record.created and record.explainer_model is None

    again = main(explain(world, first, "--features", "0:12"))
    assert again == 0 and json.loads(capsys.readouterr().out)["resumed"] == 12
    assert len(first.with_name("a.progress.jsonl").read_text().splitlines()) == 12

    assert main(explain(world, second, "--features", "12:20")) == 0
    capsys.readouterr()
    merged = tmp_path / "merged.csv"
    progress = [str(first.with_name("a.progress.jsonl")), str(second.with_name("b.progress.jsonl"))]
    assert main(["merge-explanations", "--out", str(merged), *progress]) == 0
    assert json.loads(capsys.readouterr().out)["features"] == 20
    assert read_interpretation_file(merged) == records + read_interpretation_file(second)

    whole = tmp_path / "whole.csv"  # the ranges merged equal one run over all (but the dates)
    assert main(explain(world, whole, "--features", "0:20")) == 0
    capsys.readouterr()
    undated = [
        [replace(r, created=None) for r in read_interpretation_file(f)] for f in (merged, whole)
    ]
    assert undated[0] == undated[1]
    assert stat.S_IMODE(merged.stat().st_mode) == 0o666 & ~current_umask()  # group-readable


def test_films_with_heat_maps_reach_the_llm_explainer(world, tmp_path, capsys):
    """--with-images: the LLM explainer gets films with the feature's heat map (PNG parts)
    from the SAE's dashboard; the offline judge scores its explanations."""
    films: list[bytes] = []

    def reply(request: dict) -> str:
        for message in request["messages"]:
            if isinstance(message["content"], list):
                films.extend(
                    base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
                    for part in message["content"]
                    if part["type"] == "image_url"
                )
        return "EXPLANATION: left pleural effusion"

    out = tmp_path / "films.csv"
    with ChatEndpoint(reply) as endpoint:
        argv = explain(world, out, "--features", "0:16", "--explainer", "llm")
        argv += ["--judge", "offline", "--with-images", "2", "--llm-base-url", endpoint.url]
        assert main([*argv, "--llm-model", "vision"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["judge"] == "offline" and summary["explained"] >= 1
    assert films and len(films) <= 2 * endpoint.requests
    picture = Image.open(io.BytesIO(films[0]))
    assert picture.format == "PNG" and picture.mode == "RGB"
    for record in read_interpretation_file(out):
        assert record.explanation == "left pleural effusion" and record.explainer == "llm"
        assert record.explainer_model == "vision" and record.scorer == "detection-phrase"


def test_with_images_needs_the_llm_explainer_and_a_dashboard_with_films(world, tmp_path, capsys):
    argv = explain(world, tmp_path / "o.csv", "--with-images", "2")
    assert main(argv) == 2
    assert "add --explainer llm" in capsys.readouterr().err
    empty = tmp_path / "no-dashboard"
    empty.mkdir()
    argv += ["--explainer", "llm", "--llm-base-url", "http://127.0.0.1:9/v1", "--llm-model", "m"]
    assert main([*argv, "--dashboard", str(empty)]) == 2
    assert "--with-images needs the SAE's dashboard" in capsys.readouterr().err
