"""What each token of a request is, so clients can filter and plot by kind and image position."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from maira_sae.server.maira2.study import ImageRole


class TokenKind(enum.Enum):
    IMAGE_PATCH = "image_patch"  # one expanded <image> slot: one patch feature of one image
    PROMPT_TEXT = "prompt_text"  # instruction, sections, prior report: text of the user turn
    SPECIAL = "special"  # <s>, </s> and other special tokens
    RESPONSE = "response"  # the assistant turn: teacher-forced report text or generated tokens


@dataclass(frozen=True)
class TokenInfo:
    """One token of a request. ``position`` is its index in the full sequence (prompt first,
    then response or generated tokens). Image fields are set for IMAGE_PATCH tokens only;
    ``grid_row``/``grid_col`` index the image's patch grid (37 x 37 for the real model)."""

    position: int
    token_id: int
    text: str
    kind: TokenKind
    image_index: int | None = None
    image_role: ImageRole | None = None
    grid_row: int | None = None
    grid_col: int | None = None
