"""Grounded output -> phrases and boxes, never raising on what the model writes.

MAIRA-2 writes ``<obj>phrase <box><x55><y45><x70><y56></box></obj>`` per finding (several boxes
possible) and ``<obj>phrase</obj>`` for an ungrounded one. A coordinate is a bin 0..99 read as
(bin + 0.5) / 100 of the centre-cropped square; mapping it back to the original image undoes
the crop exactly as MAIRA-2's processor does (maira2-facts.md, "Output"). That parser asserts on
malformed text; this one keeps every well-formed phrase and box and reports ``ok=False``.

Strip rules follow the original: the whole text is stripped, a grounded phrase is stripped
before its first box, an ungrounded one is left-stripped. Text without any grounding tag is one
ungrounded phrase (the original returns it unchanged as plain text). Unlike the original,
whitespace between objects is accepted; any other text outside objects makes ``ok`` false.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from maira_sae.server.maira2.image_preprocessing import ImageGeometry

NUM_COORDINATE_BINS = 100

_TAGS = ("<obj>", "</obj>", "<box>", "</box>")
_OBJECT = re.compile(r"<obj>((?:(?!<obj>).)*?)</obj>", re.DOTALL)
_BOX = re.compile(r"<box>((?:(?!<box>).)*?)</box>", re.DOTALL)
_COORDINATES = re.compile(r"<x(\d+)><y(\d+)><x(\d+)><y(\d+)>")


@dataclass(frozen=True)
class GroundedBox:
    """A box relative to the centre-cropped square (0..1) and in original image pixels (0..1 of
    the original width and height)."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float
    original_x_min: float
    original_y_min: float
    original_x_max: float
    original_y_max: float


@dataclass(frozen=True)
class GroundedPhrase:
    text: str
    boxes: tuple[GroundedBox, ...]


def parse_grounded_output(
    text: str, frontal: ImageGeometry
) -> tuple[tuple[GroundedPhrase, ...], bool]:
    """The phrases of a grounded report, boxes mapped through the frontal image's crop, and
    whether the whole text was well formed."""
    text = text.strip()
    if not any(tag in text for tag in _TAGS):
        return ((GroundedPhrase(text, ()),) if text else ()), True
    phrases: list[GroundedPhrase] = []
    ok = True
    end = 0
    for match in _OBJECT.finditer(text):
        ok &= not text[end : match.start()].strip()
        end = match.end()
        phrase, phrase_ok = _parse_object(match.group(1), frontal)
        phrases.append(phrase)
        ok &= phrase_ok
    ok &= not text[end:].strip()
    return tuple(phrases), ok


def _parse_object(inner: str, frontal: ImageGeometry) -> tuple[GroundedPhrase, bool]:
    first_box = inner.find("<box>")
    if first_box == -1:
        return GroundedPhrase(inner.lstrip(), ()), "</box>" not in inner
    phrase, boxes_text = inner[:first_box], inner[first_box:]
    boxes: list[GroundedBox] = []
    ok = "</box>" not in phrase
    end = 0
    for match in _BOX.finditer(boxes_text):
        ok &= match.start() == end  # boxes follow each other with nothing between
        end = match.end()
        box = _parse_box(match.group(1), frontal)
        if box is None:
            ok = False
        else:
            boxes.append(box)
    ok &= end == len(boxes_text)
    return GroundedPhrase(phrase.strip(), tuple(boxes)), ok


def _parse_box(coordinates: str, frontal: ImageGeometry) -> GroundedBox | None:
    match = _COORDINATES.fullmatch(coordinates)
    if match is None:
        return None
    bins = [int(value) for value in match.groups()]
    if any(value >= NUM_COORDINATE_BINS for value in bins):
        return None
    x_min, y_min, x_max, y_max = ((value + 0.5) / NUM_COORDINATE_BINS for value in bins)

    # Back to whole pixels of the original image first (truncated), as MAIRA-2 does.
    def across(fraction: float) -> float:
        return int(fraction * frontal.crop_side + frontal.crop_left) / frontal.original_width

    def down(fraction: float) -> float:
        return int(fraction * frontal.crop_side + frontal.crop_top) / frontal.original_height

    return GroundedBox(
        x_min=x_min,
        y_min=y_min,
        x_max=x_max,
        y_max=y_max,
        original_x_min=across(x_min),
        original_y_min=down(y_min),
        original_x_max=across(x_max),
        original_y_max=down(y_max),
    )
