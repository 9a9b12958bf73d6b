"""Streaming text: turn one generated token at a time into the text it adds to the report.

Decoding the generated ids so far and emitting the new suffix keeps the streamed pieces equal,
joined, to the final text, also when a character spans several byte-fallback tokens (held back
until complete) and when the decoder strips the report's single leading space. Only a report
that ends inside an unfinished byte sequence has a final U+FFFD that was never streamed; the
last message of each variant always carries the full text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

_INCOMPLETE_CHARACTER = "\ufffd"


class IncrementalDecoder:
    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._emitted = ""

    @property
    def text(self) -> str:
        """The full report text of every token pushed so far."""
        return self._decode(self._ids)

    def push(self, token_id: int) -> str:
        """Add a token; return the text it completes ("" while a character is incomplete)."""
        self._ids.append(token_id)
        text = self._decode(self._ids)
        if text.endswith(_INCOMPLETE_CHARACTER) or not text.startswith(self._emitted):
            return ""
        piece = text[len(self._emitted) :]
        self._emitted = text
        return piece
