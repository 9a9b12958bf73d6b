"""The LLM run through a proxy that injects faults: 429 with Retry-After, 500, timeouts,
malformed and truncated bodies, replies that answer nothing. Every feature ends explained or
failed with a reason, none is lost and none is written twice."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from maira_sae.server.training.explain.progress import ProgressFile, Status
from tests.support.chat_endpoint import GARBAGE, RETRY_AFTER_S, ChatEndpoint, FaultProxy
from tests.support.synthetic_features import (
    keyword_reply,
    request_kind,
    run_synthetic,
    subject_feature,
)

FIRST_ATTEMPT_FAULTS = ("429", "500", "timeout", "malformed", "truncated", None)
FEATURES = range(40)


def fault_of(body: bytes, attempt: int) -> str | None:
    """Features ending in 3 always get replies that answer nothing when explained; features
    ending in 7 always get 500 when judged; every other request meets one fault, picked by
    its feature and kind, on its first attempt only."""
    request = json.loads(body)
    kind, feature = request_kind(request), subject_feature(request)
    if feature % 10 == 3 and kind == "explain":
        return "garbage"
    if feature % 10 == 7 and kind == "detection":
        return "500"
    if attempt > 0:
        return None
    return FIRST_ATTEMPT_FAULTS[(feature + (kind == "detection")) % len(FIRST_ATTEMPT_FAULTS)]


def test_every_feature_ends_explained_or_failed_with_its_reason_through_faults(tmp_path):
    progress = tmp_path / "run.progress.jsonl"
    requests: list[dict] = []

    def reply(request: dict) -> str:
        requests.append(request)
        return keyword_reply(request)

    with ChatEndpoint(reply) as endpoint, FaultProxy(endpoint, fault_of) as proxy:
        summary = asyncio.run(
            run_synthetic(
                proxy.url,
                str(progress),
                FEATURES,
                concurrency=8,
                timeout_s=1.0,
                attempts=4,
                backoff_base_s=0.05,
            )
        )
        log = list(proxy.log)
        faults = Counter(proxy.faults)

    # deterministic requests: temperature 0, the run's seed, a bounded reply
    assert {(r["temperature"], r["seed"], r["model"]) for r in requests} == {(0, 0, "local")}
    assert all(0 < r["max_tokens"] <= 400 for r in requests)
    assert set(faults) == {"429", "500", "timeout", "malformed", "truncated", "garbage"}
    lines = [json.loads(line) for line in progress.read_text().splitlines()]
    assert sorted(line["feature"] for line in lines) == list(FEATURES)  # each once, none lost

    outcomes = ProgressFile(progress).finished()
    for feature, outcome in outcomes.items():
        if feature % 10 == 3:
            assert outcome.status is Status.FAILED
            assert outcome.reason.startswith("unparseable reply: no line 'EXPLANATION")
            assert outcome.raw_text == GARBAGE  # the endpoint's own words, kept
        elif feature % 10 == 7:
            assert outcome.status is Status.FAILED
            assert outcome.reason.startswith("HTTP 500") and "after 4 requests" in outcome.reason
        else:
            assert outcome.status is Status.EXPLAINED, (feature, outcome.reason)
            assert outcome.record.explanation == f"the word sign{feature}"
            assert outcome.record.auroc == 1.0 and outcome.record.balanced_accuracy == 1.0
            assert outcome.record.n_activating == outcome.record.n_non_activating == 10
            assert outcome.record.explainer == "llm" and outcome.record.explainer_model == "local"
            # 1 explanation + 2 detection batches, and the first attempt of each that faulted
            assert outcome.usage.requests >= 3 and outcome.usage.prompt_tokens >= 30

    assert summary["explained"] == 32 and summary["failed"] == 8
    assert summary["mean_score"] == 1.0
    assert summary["control_features"] == 32 and summary["control_score"] == 0.5
    assert summary["usage"]["requests"] >= len(FEATURES)

    # a 429's Retry-After is honoured: the same request comes back no sooner
    first_seen: dict[bytes, float] = {}
    waits = []
    for digest, attempt, fault, arrived in log:
        if attempt == 0 and fault == "429":
            first_seen[digest] = arrived
        elif attempt == 1 and digest in first_seen:
            waits.append(arrived - first_seen.pop(digest))
    assert not first_seen and waits  # every 429 was asked again...
    assert min(waits) >= RETRY_AFTER_S * 0.95  # ...after the wait it named
