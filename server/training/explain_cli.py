"""``maira-sae-server explain``: explain and score every feature of an SAE over a study folder,
and write an interpretation file the server loads as it is.

    maira-sae-server explain --model microsoft/maira-2 --sae SAE --studies STUDIES \\
        --out SAE/interpretations.csv [--explainer offline|llm] [--judge offline|llm] \\
        [--features A:B] [--concurrency 32] [--requests-per-minute N] \\
        [--tokens-per-minute N] [--llm-base-url URL --llm-model NAME] [--seed 0]
    maira-sae-server merge-explanations --out FILE PROGRESS [PROGRESS ...]

The model runs once over the studies (each study's peak activation of each feature of the
range), then per feature: Delphi-style examples, one explanation, its detection score over
held-out examples (AUROC, balanced accuracy) and, with the LLM judge, its fuzzing score; and
at the end a shuffled control (the same explanations scored on other features' examples),
printed beside the mean score in the JSON summary on stdout.

The offline explainer and judge (the default) need no LLM. ``llm`` uses any OpenAI-compatible
endpoint (vLLM, SGLang, llama.cpp, ``transformers serve``, Azure, OpenRouter; the ``llm``
extra: ``pip install 'maira-sae[llm]'``): base URL from --llm-base-url,
MAIRA_SAE_EXPLAIN_BASE_URL or OPENAI_BASE_URL; model from --llm-model or
MAIRA_SAE_EXPLAIN_MODEL; key from MAIRA_SAE_EXPLAIN_API_KEY or OPENAI_API_KEY. Requests are
deterministic (temperature 0, --seed), at most --concurrency in flight, retried on 429 (after
its Retry-After), 5xx, timeouts and unreadable replies.

Each finished feature is one line of OUT's progress file (``out.csv`` ->
``out.progress.jsonl``): kill the run at any point and run the same command again to finish
the rest. Run ranges (--features 0:4096, 4096:8192, ...) as separate processes or pods, each
with its own --out, then ``merge-explanations`` their progress files into one file. Studies
hold patient data, and the examples sent to an LLM carry their text: use an endpoint you may
send them to.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from maira_sae.server.training.model_loading import (
    add_model_loading_arguments,
    add_sae_run_arguments,
)


def add_explain_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``explain`` and ``merge-explanations`` on the ``maira-sae-server`` commands."""
    parser = commands.add_parser(
        "explain",
        help="explain and score every feature of an SAE (offline or with an LLM)",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    add_sae_run_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, help="the interpretation file (CSV)")
    parser.add_argument(
        "--dashboard",
        type=Path,
        help="the SAE's dashboard (build-dashboard --thumbnails), for --with-images;"
        " default: the SAE folder's dashboard/",
    )
    parser.add_argument(
        "--with-images",
        type=int,
        default=0,
        metavar="N",
        help="send up to N films of each feature's explain examples, with its heat map over"
        " them, to a vision model (the LLM explainer; films from --dashboard)",
    )
    parser.add_argument(
        "--explainer", choices=("offline", "llm"), default="offline", help="who writes them"
    )
    parser.add_argument("--judge", choices=("offline", "llm"), help="default: as --explainer")
    parser.add_argument(
        "--no-fuzzing", action="store_true", help="skip the fuzzing score (run with --judge llm)"
    )
    parser.add_argument("--features", type=feature_range, help="A:B, features A..B-1; default all")
    parser.add_argument("--concurrency", type=_positive, default=32, help="LLM requests in flight")
    parser.add_argument("--requests-per-minute", type=_positive, help="default: no bound")
    parser.add_argument("--tokens-per-minute", type=_positive, help="default: no bound")
    parser.add_argument("--llm-base-url", help="e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--llm-model", help="the model name the endpoint serves")
    parser.add_argument("--llm-timeout", type=float, default=120.0, help="seconds per attempt")
    parser.add_argument(
        "--llm-explanation-tokens",
        type=_positive,
        default=400,
        help="the most tokens an explanation reply may take (room to think, then the answer)",
    )
    parser.add_argument("--seed", type=int, default=0, help="of the requests and the control")
    parser.add_argument(
        "--control-features",
        type=int,
        default=256,
        help="explained features the shuffled control scores (a seeded sample; 0: none)",
    )
    parser.add_argument(
        "--retry-failed", action="store_true", help="also rerun the features that failed before"
    )
    parser.add_argument("--batch", type=_positive, default=4, help="studies per forward")
    add_model_loading_arguments(parser)
    merge = commands.add_parser(
        "merge-explanations",
        help="merge the progress files of explain runs (ranges) into one interpretation file",
    )
    merge.add_argument("--out", required=True, type=Path, help="the interpretation file (CSV)")
    merge.add_argument("progress", nargs="+", type=Path, help="progress files (*.progress.jsonl)")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each option's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS:
            return help_text
        return f"{help_text} (default: {default})".strip()


def feature_range(text: str) -> range:
    start, colon, stop = text.partition(":")
    try:
        bounds = int(start), int(stop)
    except ValueError:
        bounds = None
    if not colon or bounds is None or not 0 <= bounds[0] < bounds[1]:
        raise argparse.ArgumentTypeError(f"expected A:B with 0 <= A < B, got {text!r}")
    return range(*bounds)


def run_explain(args: argparse.Namespace) -> int:
    """Run ``explain``: arguments checked first; torch and the model load only then."""
    try:
        llm = _llm_settings(args)
    except ValueError as error:
        print(f"maira-sae-server explain: {error}", file=sys.stderr)
        return 2
    for name in ("sae", "studies"):
        if not getattr(args, name).is_dir():
            folder = getattr(args, name)
            print(f"maira-sae-server explain: --{name} {folder} is not a folder", file=sys.stderr)
            return 2
    if args.with_images:
        problem = _films_problem(args)
        if problem:
            print(f"maira-sae-server explain: {problem}", file=sys.stderr)
            return 2
    if args.out.is_dir():
        print(
            f"maira-sae-server explain: --out {args.out} is a folder; give a file", file=sys.stderr
        )
        return 2
    from maira_sae.server.training.explain.command import explain_command

    summary = explain_command(args, llm)
    if summary is None:
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def run_merge_explanations(args: argparse.Namespace) -> int:
    from maira_sae.server.training.explain.command import merge_command

    missing = [str(path) for path in args.progress if not path.is_file()]
    if missing:
        print(
            f"maira-sae-server merge-explanations: no such file: {', '.join(missing)}",
            file=sys.stderr,
        )
        return 2
    try:
        summary = merge_command(args.progress, args.out)
    except ValueError as error:
        print(f"maira-sae-server merge-explanations: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def _films_problem(args: argparse.Namespace) -> str | None:
    """Why --with-images cannot run (None when it can), read from the dashboard's metadata."""
    from maira_sae.sae.dashboard import DEFAULT_FOLDER, read_metadata

    if args.explainer != "llm":
        return "--with-images sends films to the LLM explainer; add --explainer llm"
    args.dashboard = args.dashboard or args.sae / DEFAULT_FOLDER
    try:
        metadata = read_metadata(args.dashboard)
    except (OSError, ValueError) as error:
        return f"--with-images needs the SAE's dashboard ({error})"
    if not metadata.get("has_content"):
        return f"{args.dashboard} holds no films: build it with build-dashboard --thumbnails"
    return None


def _llm_settings(args: argparse.Namespace) -> object | None:
    """The LLM settings when the explainer or the judge is the LLM (``ValueError`` naming what
    is missing), else None."""
    judge = args.judge or args.explainer
    args.judge = judge
    if "llm" not in (args.explainer, judge):
        return None
    try:
        from maira_sae.server.training.explain.llm_client import LlmSettings
    except ImportError as error:
        raise ValueError(
            f"the LLM explainer needs the llm extra ({error.name} is missing): "
            "pip install 'maira-sae[llm]'"
        ) from None
    return LlmSettings.from_sources(
        os.environ,
        base_url=args.llm_base_url,
        model=args.llm_model,
        concurrency=args.concurrency,
        requests_per_minute=args.requests_per_minute,
        tokens_per_minute=args.tokens_per_minute,
        timeout_s=args.llm_timeout,
        seed=args.seed,
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value
