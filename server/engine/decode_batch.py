"""The contract of a decode batch, and the parts both batches share.

A decode batch holds the rows of every running generation and decodes them together, one
forward per step for all. Calls join between steps with the KV cache of their prefill, and
their rows leave as they end or when the call is stopped. ``DecodeBatch.step`` is the same for
both kinds: each call samples its rows' next tokens from the logits of the last forward
(``GenerationCall.take``), the rows that ended are freed, and one forward runs for the others.
How the rows are laid out (where a row's cache lives, how freed rows are reclaimed and how the
forward's inputs are built) is each kind's own: ``DynamicDecodeBatch`` grows and cuts
transformers' own cache, ``StaticDecodeBatch`` writes preallocated slots in place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from maira_sae.server.engine.generation import GenerationCall, Prefilled
from maira_sae.server.engine.types import GeneratedToken, VariantFinished
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration


@dataclass(frozen=True)
class CallEvents:
    """What one call produced in a decode step: its new tokens, and each variant's result
    once its last row ended (``done``)."""

    request_id: int
    tokens: tuple[GeneratedToken, ...]
    done: bool
    finished: tuple[VariantFinished, ...] = ()


@dataclass(eq=False)
class Member:
    """A call in the batch: where each of its active rows lives, and the logits its rows
    sample from at the next step (``[active, vocab]``)."""

    call: GenerationCall
    rows: list[int]  # the batch row (a cache row, or a slot) of each active row, in order
    logits: torch.Tensor | None


class DecodeBatch(ABC):
    """Running generation calls and their KV cache (used by the engine thread only)."""

    def __init__(self, model: Maira2ForConditionalGeneration) -> None:
        self._model = model
        self._members: list[Member] = []  # in the order the calls joined
        self._cache: object = None

    @property
    def calls(self) -> tuple[GenerationCall, ...]:
        return tuple(member.call for member in self._members)

    @property
    def rows(self) -> int:
        return sum(len(member.rows) for member in self._members)

    @property
    @abstractmethod
    def cached_positions(self) -> int:
        """Columns of the KV cache the running rows span (padding included)."""

    @abstractmethod
    def join(self, call: GenerationCall, prefilled: Prefilled) -> None:
        """Add a call after its prefill; its first tokens are sampled at the next step."""

    @abstractmethod
    def reset(self) -> DecodeBatch:
        """Empty (after a failed step): every call goes."""

    def step(self) -> list[CallEvents]:
        """Sample every row's next token, free the rows that end, and run one forward for
        the others; returns what each call produced (the calls that ended leave)."""
        events: list[CallEvents] = []
        freed: list[int] = []
        for member in self._members:
            call = member.call
            assert member.logits is not None
            going_on, tokens = call.take(member.logits)
            kept = [member.rows[index] for index in going_on]
            freed += [row for row in member.rows if row not in kept]
            member.rows, member.logits = kept, None
            events.append(
                CallEvents(call.request_id, tokens, call.done, call.finished() if call.done else ())
            )
        self._members = [member for member in self._members if not member.call.done]
        self._free(freed)
        if self._members:
            logits = self._forward()
            for member in self._members:
                index = torch.tensor(member.rows, dtype=torch.long, device=logits.device)
                member.logits = logits.index_select(0, index)
        return events

    def remove(self, call: GenerationCall) -> None:
        """Take a stopped call's rows out (``call.stop`` first)."""
        for member in self._members:
            if member.call is call:
                self._members.remove(member)
                self._free(member.rows)
                return

    def _add(self, call: GenerationCall, rows: list[int], prefilled: Prefilled) -> None:
        self._members.append(Member(call, rows, prefilled.logits))

    @abstractmethod
    def _free(self, rows: list[int]) -> None:
        """Give back the cache rows of rows that left (the members hold the others)."""

    @abstractmethod
    def _forward(self) -> torch.Tensor:
        """One forward for every running row: logits ``[batch rows, vocab]``."""

    def _decode(
        self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The decode forward both kinds run: one token per row at its own position, on the
        batch's cache (written in place); the logits of each row's next token."""
        output = self._model(
            input_ids=tokens.unsqueeze(1),
            attention_mask=mask,
            position_ids=positions.unsqueeze(1),
            cache=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return output.logits[:, -1, :]
