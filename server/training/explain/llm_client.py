"""Chat completions from any OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp,
``transformers serve``, Azure, OpenRouter), bounded, retried and accounted.

    settings = LlmSettings.from_sources(env=os.environ, base_url=..., model=...)
    caller = ChatCaller(settings)
    value, usage = await caller.complete(messages, parse, max_tokens=...)
    await caller.close()

Where the endpoint comes from (the first that is set wins):

    base URL   --llm-base-url, MAIRA_SAE_EXPLAIN_BASE_URL, OPENAI_BASE_URL
    model      --llm-model, MAIRA_SAE_EXPLAIN_MODEL
    key        MAIRA_SAE_EXPLAIN_API_KEY, OPENAI_API_KEY (a key on the command line would
               land in the shell history and the process list, so there is no flag)

Every request is deterministic (temperature 0, the run's seed). At most ``concurrency``
requests are in flight (the HTTP connection pool is sized to match: the client's default pool
holds 100), and ``MinuteBudget`` bounds requests and tokens per minute.

Retries are this module's own loop, not the client's (which is switched off): one loop sees
every way an attempt fails, so a 429 waits for the endpoint's ``Retry-After``; a 5xx, a
timeout, a dropped connection, or a body that is not the JSON it claims to be backs off and
retries; a reply that ``parse`` cannot read (``UnparseableReply``) is asked again; and when the
attempts run out, ``LlmCallFailed`` carries the reason and the last raw reply, which the run
records. Other 4xx answers (a bad key, an unknown model) fail at once.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2
import openai

from maira_sae.server.training.explain.protocols import LlmCallFailed, UnparseableReply, Usage
from maira_sae.server.training.explain.rate_limit import MinuteBudget, retry_delay

T = TypeVar("T")

ENV_PREFIX = "MAIRA_SAE_EXPLAIN_"
CHARS_PER_TOKEN = 4  # the token estimate the minute budget charges before the reply counts


@dataclass(frozen=True)
class LlmSettings:
    base_url: str
    model: str
    api_key: str = "none"  # local servers take any key
    concurrency: int = 32  # requests in flight
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    timeout_s: float = 120.0  # one attempt
    attempts: int = 6  # per request: network, 429 and 5xx retries included
    parse_attempts: int = 2  # of those, how many may end in a reply that cannot be read
    max_retry_wait_s: float = 120.0  # the longest a Retry-After is honoured
    backoff_base_s: float = 0.5
    seed: int = 0

    @classmethod
    def from_sources(
        cls,
        env: Mapping[str, str],
        *,
        base_url: str | None = None,
        model: str | None = None,
        **options: Any,
    ) -> LlmSettings:
        """Settings from flags (``base_url``, ``model``) over the environment; ``ValueError``
        naming what is missing."""
        base_url = base_url or env.get(ENV_PREFIX + "BASE_URL") or env.get("OPENAI_BASE_URL")
        model = model or env.get(ENV_PREFIX + "MODEL")
        missing = [
            text
            for text, value in (
                (f"--llm-base-url (or {ENV_PREFIX}BASE_URL / OPENAI_BASE_URL)", base_url),
                (f"--llm-model (or {ENV_PREFIX}MODEL)", model),
            )
            if not value
        ]
        if missing:
            raise ValueError("the LLM explainer and judge need " + " and ".join(missing))
        key = env.get(ENV_PREFIX + "API_KEY") or env.get("OPENAI_API_KEY") or "none"
        return cls(base_url=base_url, model=model, api_key=key, **options)  # type: ignore[arg-type]


class ChatCaller:
    def __init__(self, settings: LlmSettings) -> None:
        if settings.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {settings.concurrency}")
        self.settings = settings
        pool = httpx2.Limits(
            max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
        )
        self._client = openai.AsyncOpenAI(
            base_url=settings.base_url,
            api_key=settings.api_key,
            max_retries=0,
            timeout=settings.timeout_s,
            http_client=openai.DefaultAsyncHttpxClient(limits=pool, timeout=settings.timeout_s),
        )
        self._in_flight = asyncio.Semaphore(settings.concurrency)
        self._budget = MinuteBudget(settings.requests_per_minute, settings.tokens_per_minute)
        self._rng = random.Random(settings.seed)

    async def close(self) -> None:
        await self._client.close()

    async def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        parse: Callable[[str], T],
        *,
        max_tokens: int,
    ) -> tuple[T, Usage]:
        """``parse`` of the reply to ``messages``, and what every attempt cost."""
        settings = self.settings
        usage = Usage()
        raw_text: str | None = None
        parse_failures = 0
        reason = "no attempt made"
        estimate = len(json.dumps(messages)) // CHARS_PER_TOKEN + max_tokens
        for attempt in range(settings.attempts):
            headers: Mapping[str, str] | None = None
            await self._budget.acquire(estimate)
            try:
                async with self._in_flight:
                    response = await self._client.chat.completions.create(
                        model=settings.model,
                        messages=list(messages),  # type: ignore[arg-type]
                        max_tokens=max_tokens,
                        temperature=0,
                        seed=settings.seed,
                    )
            except openai.APIStatusError as error:
                usage += Usage(requests=1)
                reason = f"HTTP {error.status_code}: {_short(error.message)}"
                raw_text = _body_text(error.response)
                if error.status_code != 429 and error.status_code < 500:
                    raise LlmCallFailed(reason, raw_text, usage) from None
                headers = error.response.headers
            except (openai.APIConnectionError, openai.APIResponseValidationError) as error:
                usage += Usage(requests=1)
                reason = f"{type(error).__name__}: {_short(str(error))}"
            except json.JSONDecodeError as error:  # a 200 whose body is not JSON
                usage += Usage(requests=1)
                reason = f"malformed JSON in the reply: {error}"
            else:
                usage += _usage_of(response)
                raw_text = _text_of(response)
                try:
                    if raw_text is None:
                        raise UnparseableReply("the reply holds no message text", "")
                    return parse(raw_text), usage
                except UnparseableReply as error:
                    parse_failures += 1
                    reason = f"unparseable reply: {error}"
                    if parse_failures >= settings.parse_attempts:
                        break
                    continue  # asked again at once: nothing is wrong with the endpoint
            if attempt + 1 < settings.attempts:
                await asyncio.sleep(
                    retry_delay(
                        attempt,
                        headers,
                        base_s=settings.backoff_base_s,
                        cap_s=settings.max_retry_wait_s,
                        rng=self._rng,
                    )
                )
        raise LlmCallFailed(f"{reason} (after {usage.requests} requests)", raw_text, usage)


def _usage_of(response: Any) -> Usage:
    counted = getattr(response, "usage", None)
    return Usage(
        requests=1,
        prompt_tokens=int(getattr(counted, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(counted, "completion_tokens", 0) or 0),
    )


def _text_of(response: Any) -> str | None:
    choices = getattr(response, "choices", None) or []
    if not choices:
        return None
    message = getattr(choices[0], "message", None)
    return getattr(message, "content", None)


def _body_text(response: httpx2.Response) -> str | None:
    try:
        return response.text
    except (httpx2.ResponseNotRead, UnicodeDecodeError):
        return None


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
