"""What a caller asks for, besides the study: tasks, token filters, steering, settings.

Plain frozen dataclasses; zero or None means "the server's default", as in the contract.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from maira_sae.client.results import TokenKind


class TaskKind(enum.StrEnum):
    FINDINGS = "findings"
    GROUNDED_FINDINGS = "grounded_findings"
    PHRASE_GROUNDING = "phrase_grounding"


class Aggregation(enum.StrEnum):
    MAX = "max"
    MEAN = "mean"
    SUM = "sum"
    COUNT = "count"


class Priority(enum.StrEnum):
    """How the server should rank a call: ``INTERACTIVE`` (a caller waits for it) or ``BATCH``
    (dataset work: ``encode_many`` marks its calls so, and interactive callers go first). Sent
    as the ``x-maira-sae-priority`` metadata."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


PRIORITY_METADATA_KEY = "x-maira-sae-priority"


class SteeringMode(enum.StrEnum):
    ADD = "add"  # h += value * unit direction
    CLAMP = "clamp"  # set the activation to value
    ABLATE = "ablate"  # set the activation to 0; value is ignored
    SCALE = "scale"  # multiply the activation by value


class PositionScope(enum.StrEnum):
    ALL = "all"
    PROMPT = "prompt"
    GENERATED = "generated"
    IMAGE = "image"
    TEXT = "text"
    RANGES = "ranges"  # the explicit ranges of the intervention


@dataclass(frozen=True)
class Task:
    kind: TaskKind = TaskKind.FINDINGS
    phrase: str = ""  # required for PHRASE_GROUNDING, empty otherwise


@dataclass(frozen=True)
class TokenRange:
    """Half-open range [start, end) of absolute token positions."""

    start: int
    end: int


@dataclass(frozen=True)
class TokenFilter:
    """Which tokens count; every condition that is set must hold. Empty kinds: every kind but
    SPECIAL. ``image_indices`` restricts image patch tokens to those images (0-based among
    the present images, in prompt order); text tokens are not affected by it. Empty: every
    image. ``ranges``: only tokens inside one of them."""

    kinds: frozenset[TokenKind] = frozenset()
    image_indices: frozenset[int] = frozenset()
    ranges: tuple[TokenRange, ...] = ()


@dataclass(frozen=True)
class Intervention:
    """One steering edit on a feature (or, with ``direction``, on a raw residual direction)."""

    mode: SteeringMode
    value: float = 0.0  # ADD: strength; CLAMP: target activation; SCALE: factor
    feature: int | None = None
    direction: tuple[float, ...] | None = None
    scope: PositionScope = PositionScope.ALL
    ranges: tuple[TokenRange, ...] = ()  # only with scope RANGES

    def __post_init__(self) -> None:
        if (self.feature is None) == (self.direction is None):
            raise ValueError("an intervention needs exactly one of feature or direction")

    @classmethod
    def parse(cls, spec: str) -> Intervention:
        """``FEATURE:MODE[:VALUE][@SCOPE]``, e.g. ``123:add:8``, ``77:clamp:0``, ``5:ablate``,
        ``9:scale:0.5@generated``."""
        body, _, scope = spec.partition("@")
        parts = body.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"steering spec {spec!r} is not FEATURE:MODE[:VALUE][@SCOPE]")
        try:
            feature = int(parts[0])
            mode = SteeringMode(parts[1].lower())
            value = float(parts[2]) if len(parts) == 3 else 0.0
            position_scope = PositionScope(scope.lower()) if scope else PositionScope.ALL
        except ValueError as exc:
            modes = ", ".join(m.value for m in SteeringMode)
            scopes = ", ".join(s.value for s in PositionScope if s is not PositionScope.RANGES)
            raise ValueError(
                f"steering spec {spec!r}: {exc} (modes: {modes}; scopes: {scopes})"
            ) from exc
        if feature < 0 or not math.isfinite(value):
            raise ValueError(f"steering spec {spec!r}: feature must be >= 0, value finite")
        if mode is not SteeringMode.ABLATE and len(parts) == 2:
            raise ValueError(f"steering spec {spec!r}: mode {mode.value} needs a value")
        return cls(mode=mode, value=value, feature=feature, scope=position_scope)


@dataclass(frozen=True)
class Variant:
    """One row of a steered generation; no interventions: the baseline."""

    name: str = ""
    interventions: tuple[Intervention, ...] = ()

    @classmethod
    def of(cls, name: str, *interventions: Intervention | str) -> Variant:
        """A variant from interventions or their ``Intervention.parse`` specs."""
        return cls(
            name=name,
            interventions=tuple(
                Intervention.parse(i) if isinstance(i, str) else i for i in interventions
            ),
        )


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 0  # 0: the server's default
    temperature: float = 0.0  # 0: greedy
    top_p: float = 0.0  # 0: 1.0 (no nucleus cut)
    seed: int = 0  # shared by every variant of the call
