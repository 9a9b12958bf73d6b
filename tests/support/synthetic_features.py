"""Features whose examples and whose "LLM" are known exactly, for the LLM run's tests and bench.

Feature ``f`` fires on the word ``sign<f>``: its activating examples mark that word, its
non-activating ones are clear reports. ``keyword_reply`` is a deterministic stand-in for the
model behind ``ChatEndpoint``: asked to explain, it names the first marked word ("the word
sign7"); asked to detect or fuzz, it answers 1 for each example holding the explanation's
word (marked, when fuzzing). So an explained feature's detection AUROC is 1 and the shuffled
control's is 0.5, and every request a run sends is a function of the feature alone.

    python -m tests.support.synthetic_features URL PROGRESS A:B [--concurrency N]

runs ``explain_features`` over features A..B-1 against the endpoint at URL (the kill -9 test
runs it as a process of its own) and prints the summary as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from typing import Any

from maira_sae.server.training.explain.protocols import Example, ExampleKind, FeatureExamples
from tests.support.chat_endpoint import user_text

_MARKED = re.compile(r"<<(\w+)>>")
_EXAMPLE = re.compile(r"^Example \d+:\n", re.M)


def synthetic_examples(feature: int, *, held_out: int = 10) -> FeatureExamples:
    def fires(i: int) -> Example:
        text = f"Study {i}: there is a <<sign{feature}>> over the left lung base."
        return Example(f"s{i}", ExampleKind.TEXT, 1.0 + i, text, token=f"sign{feature}")

    def silent(i: int) -> Example:
        return Example(f"c{i}", ExampleKind.TEXT, 0.0, f"Study {i}: the <<lungs>> are clear.")

    return FeatureExamples(
        feature,
        explain=tuple(fires(i) for i in range(5)),
        activating=tuple(fires(i) for i in range(5, 5 + held_out)),
        non_activating=tuple(silent(i) for i in range(held_out)),
    )


def request_kind(request: dict[str, Any]) -> str:
    system = request["messages"][0]["content"]
    if "EXPLANATION:" in system:
        return "explain"
    return "fuzzing" if "marked words fit" in system else "detection"


def subject_feature(request: dict[str, Any]) -> int:
    """The feature a request is about: whose examples are explained, or whose explanation
    is judged."""
    return int(re.search(r"sign(\d+)", user_text(request)).group(1))  # type: ignore[union-attr]


def keyword_reply(request: dict[str, Any]) -> str:
    text = user_text(request)
    if request_kind(request) == "explain":
        return f"They share one word.\nEXPLANATION: the word {_MARKED.search(text).group(1)}"  # type: ignore[union-attr]
    word = text.split("\n", 1)[0].split()[-1]
    blocks = _EXAMPLE.split(text)[1:]
    pattern = rf"<<{word}>>" if request_kind(request) == "fuzzing" else rf"\b{word}\b"
    answers = [int(re.search(pattern, block) is not None) for block in blocks]
    return json.dumps(answers)


async def run_synthetic(
    url: str,
    progress_path: str,
    features: range,
    *,
    concurrency: int = 8,
    control_features: int = 256,
    **llm: Any,
) -> dict[str, Any]:
    from maira_sae.server.training.explain.llm_client import ChatCaller, LlmSettings
    from maira_sae.server.training.explain.llm_roles import LlmDetectionJudge, LlmExplainer
    from maira_sae.server.training.explain.progress import ProgressFile
    from maira_sae.server.training.explain.runner import RunSettings, explain_features

    settings = LlmSettings(base_url=url, model="local", concurrency=concurrency, **llm)
    caller = ChatCaller(settings)
    try:
        summary = await explain_features(
            features,
            synthetic_examples,
            LlmExplainer(caller),
            LlmDetectionJudge(caller),
            ProgressFile(progress_path),
            settings=RunSettings(
                features_in_flight=concurrency,
                control_features=control_features,
                progress_bar=False,
            ),
        )
    finally:
        await caller.close()
    return summary.to_dict()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("progress")
    parser.add_argument("features")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    start, stop = (int(part) for part in args.features.split(":"))
    summary = asyncio.run(
        run_synthetic(args.url, args.progress, range(start, stop), concurrency=args.concurrency)
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
