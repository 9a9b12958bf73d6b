"""A deterministic OpenAI-compatible chat endpoint, and a proxy that injects faults before it.

    with ChatEndpoint(reply, latency_s=0.0) as endpoint:          # endpoint.url ends in /v1
        with FaultProxy(endpoint, fault_of) as proxy:             # proxy.url, the same API
            ...

Both are small HTTP/1.1 servers (asyncio streams, keep-alive, Content-Length bodies) bound to
127.0.0.1 on a free port, each in a thread of its own, stopped on leaving the block.
``ChatEndpoint`` answers ``POST /v1/chat/completions`` with ``reply(request)`` as the message
text, after ``latency_s``, and counts requests and the most in flight at once. ``FaultProxy``
forwards each request to the endpoint unless ``fault_of(body, attempt)`` (``attempt`` counts
the times the proxy has seen that exact body, from 0) names a fault:

    "429"        Too Many Requests with Retry-After: RETRY_AFTER_S
    "500"        Internal Server Error
    "timeout"    no answer until the client gives up (the connection is held, then closed)
    "malformed"  200, application/json, a body that is not JSON
    "truncated"  200 with a Content-Length longer than what is sent, then the connection closes
    "garbage"    200, a valid completion whose text answers nothing that was asked
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

RETRY_AFTER_S = 1
GARBAGE = "<unused25233> lorem ipsum, no answer here"

Reply = Callable[[dict[str, Any]], str]
FaultOf = Callable[[bytes, int], str | None]


class _HttpServer:
    """An asyncio HTTP/1.1 server in its own thread; ``handle`` answers one request."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stopping = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> _HttpServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        self._stopping.set()
        assert self._server is not None
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                keep_open = await self.handle(request, writer)
                if not keep_open:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the server is stopping
        finally:
            self._connections.discard(task)
            writer.close()

    async def handle(self, body: bytes, writer: asyncio.StreamWriter) -> bool:
        raise NotImplementedError

    async def held_until_stopped(self) -> None:
        await self._stopping.wait()


class ChatEndpoint(_HttpServer):
    def __init__(self, reply: Reply, *, latency_s: float = 0.0) -> None:
        super().__init__()
        self.reply = reply
        self.latency_s = latency_s
        self.requests = 0
        self.in_flight = 0
        self.most_in_flight = 0

    def __enter__(self) -> ChatEndpoint:
        super().__enter__()
        return self

    async def handle(self, body: bytes, writer: asyncio.StreamWriter) -> bool:
        self.requests += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            request = json.loads(body)
            answer = completion(request.get("model", ""), self.reply(request))
        finally:
            self.in_flight -= 1
        await _write(writer, 200, json.dumps(answer).encode())
        return True


class FaultProxy(_HttpServer):
    def __init__(self, upstream: ChatEndpoint, fault_of: FaultOf) -> None:
        super().__init__()
        self.upstream = upstream
        self.fault_of = fault_of
        self.seen: Counter[bytes] = Counter()  # by body digest
        self.faults: Counter[str] = Counter()
        # (body digest, attempt, fault or None, monotonic arrival time), in arrival order
        self.log: list[tuple[bytes, int, str | None, float]] = []

    def __enter__(self) -> FaultProxy:
        super().__enter__()
        return self

    async def handle(self, body: bytes, writer: asyncio.StreamWriter) -> bool:
        digest = hashlib.sha256(body).digest()
        attempt = self.seen[digest]
        self.seen[digest] += 1
        fault = self.fault_of(body, attempt)
        self.log.append((digest, attempt, fault, time.monotonic()))
        if fault is not None:
            self.faults[fault] += 1
        if fault == "429":
            error = b'{"error": {"message": "slow down", "type": "rate_limit"}}'
            await _write(writer, 429, error, {"Retry-After": str(RETRY_AFTER_S)})
            return True
        if fault == "500":
            await _write(writer, 500, b'{"error": {"message": "upstream broke"}}')
            return True
        if fault == "timeout":
            await self.held_until_stopped()
            return False
        if fault == "malformed":
            await _write(writer, 200, b'{"id": "x", "choices": [ {"message": ')
            return True
        if fault == "garbage":
            request = json.loads(body)
            await _write(writer, 200, json.dumps(completion(request["model"], GARBAGE)).encode())
            return True
        answer = await self._forward(body)
        if fault == "truncated":
            head = _head(200, len(answer))
            writer.write(head + answer[: len(answer) // 2])
            await writer.drain()
            return False
        await _write(writer, 200, answer)
        return True

    async def _forward(self, body: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream.port)
        try:
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: upstream\r\n"
                b"Content-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = _content_length(head)
            return await reader.readexactly(length)
        finally:
            writer.close()


def completion(model: str, text: str) -> dict[str, Any]:
    """A chat completion answering ``text``, with a usage block (4 characters a token)."""
    return {
        "id": "chatcmpl-local",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": max(len(text) // 4, 1),
            "total_tokens": 10 + max(len(text) // 4, 1),
        },
    }


def user_text(request: dict[str, Any]) -> str:
    """The text of a request's last user message (its text parts, for a list content)."""
    content = [m for m in request["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content if part.get("type") == "text")


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    return await reader.readexactly(_content_length(head))


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


_REASONS = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error"}


def _head(status: int, length: int, headers: dict[str, str] | None = None) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _write(
    writer: asyncio.StreamWriter, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    writer.write(_head(status, len(body), headers) + body)
    await writer.drain()
