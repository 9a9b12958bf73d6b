"""What the LLM path reads and sends: replies parsed or refused, Retry-After, the minute budget."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time

import pytest

from maira_sae.server.training.explain.llm_client import LlmSettings
from maira_sae.server.training.explain.llm_prompts import (
    explanation_messages,
    read_answers,
    read_explanation,
)
from maira_sae.server.training.explain.llm_roles import move_mark
from maira_sae.server.training.explain.protocols import (
    Example,
    ExampleKind,
    FeatureExamples,
    UnparseableReply,
)
from maira_sae.server.training.explain.rate_limit import MinuteBudget, retry_delay


def test_the_explanation_is_the_last_explanation_line():
    reply = "Most mention a device.\nExplanation: wires\n**EXPLANATION:**  pacemaker  leads \n"
    assert read_explanation(reply) == "pacemaker leads"
    with pytest.raises(UnparseableReply) as caught:
        read_explanation("<unused1><unused2>")
    assert caught.value.raw_text == "<unused1><unused2>"
    with pytest.raises(UnparseableReply, match="empty or longer"):
        read_explanation("EXPLANATION: " + "x" * 400)


def test_answers_are_a_list_of_zeros_and_ones_of_the_asked_length():
    assert read_answers("Thinking [1, 2].\nAnswer: [1, 0, 1]", 3) == [1.0, 0.0, 1.0]
    for bad in ("[1, 0]", "[1, 0, 2]", "[true, false, true]", "yes no yes", "[1, 0, 1"):
        with pytest.raises(UnparseableReply, match="no JSON list of 3"):
            read_answers(bad, 3)


def test_heat_maps_go_to_a_vision_model_as_png_parts_only_when_asked():
    film = Example(
        "s1",
        ExampleKind.IMAGE,
        2.0,
        "Findings: pacemaker.",
        image=0,
        row=3,
        column=4,
        heat_map_png=b"\x89PNG...",
    )
    examples = FeatureExamples(1, (film,), (), ())
    plain = explanation_messages(examples)
    assert isinstance(plain[1]["content"], str)
    assert "film 0, patch row 3, column 4" in plain[1]["content"]
    assert "activation 10" in plain[1]["content"]
    parts = explanation_messages(examples, with_images=2)[1]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert urls == ["data:image/png;base64,iVBORy4uLg=="]


def test_a_fuzzed_example_marks_another_word():
    rng = random.Random(0)
    moved = {move_mark("a <<pacemaker>> lead", rng) for _ in range(20)}
    assert moved == {"<<a>> pacemaker lead", "a pacemaker <<lead>>"}
    assert move_mark("<<alone>>", rng) is None


def test_retry_after_is_honoured_in_seconds_milliseconds_or_as_a_date():
    assert retry_delay(0, {"Retry-After": "7"}) == 7
    assert retry_delay(0, {"retry-after-ms": "250"}) == 0.25
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_delay(0, {"Retry-After": when}) <= 30
    assert retry_delay(0, {"Retry-After": "600"}, cap_s=60) == 60
    rng = random.Random(1)
    backoffs = [retry_delay(attempt, {}, base_s=1, cap_s=8, rng=rng) for attempt in range(6)]
    assert all(0 <= delay <= min(8, 2**attempt) for attempt, delay in enumerate(backoffs))


def test_the_minute_budget_holds_back_requests_past_it():
    async def scenario() -> float:
        budget = MinuteBudget(requests_per_minute=600, tokens_per_minute=None)  # 10 a second
        started = time.monotonic()
        for _ in range(615):  # a full bucket of 600, then 15 more at 10 a second
            await budget.acquire(1)
        return time.monotonic() - started

    assert asyncio.run(scenario()) >= 1.0

    async def tokens() -> float:
        budget = MinuteBudget(requests_per_minute=None, tokens_per_minute=6000)  # 100 a second
        started = time.monotonic()
        await budget.acquire(9000)  # more than a minute's worth: capped at the whole bucket
        await budget.acquire(100)  # then waits for 100 tokens to drip back
        return time.monotonic() - started

    assert asyncio.run(tokens()) >= 0.9
    with pytest.raises(ValueError, match="tokens per minute must be >= 1"):
        MinuteBudget(None, 0)


def test_settings_come_from_flags_over_the_environment():
    env = {
        "OPENAI_BASE_URL": "http://openai.local/v1",
        "MAIRA_SAE_EXPLAIN_BASE_URL": "http://vllm.local/v1",
        "OPENAI_API_KEY": "sk-openai",
        "MAIRA_SAE_EXPLAIN_MODEL": "qwen",
    }
    settings = LlmSettings.from_sources(env)
    assert (settings.base_url, settings.model, settings.api_key) == (
        "http://vllm.local/v1",
        "qwen",
        "sk-openai",
    )
    flagged = LlmSettings.from_sources(env, base_url="http://x/v1", model="m", concurrency=128)
    assert (flagged.base_url, flagged.model, flagged.concurrency) == ("http://x/v1", "m", 128)
    with pytest.raises(ValueError, match="--llm-model"):
        LlmSettings.from_sources({"OPENAI_BASE_URL": "http://openai.local/v1"})
