"""Grounded output -> phrases and boxes in crop and original-image fractions; never raises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maira_sae.server.engine.types import GroundedBox, GroundedPhrase
from maira_sae.server.maira2.grounding import parse_grounded_output
from maira_sae.server.maira2.image_preprocessing import ImageGeometry

SQUARE = ImageGeometry.for_size(518, 518)


def square_box(x_min: float, y_min: float, x_max: float, y_max: float) -> GroundedBox:
    """A box on a square image, where original fractions are the crop fractions truncated
    to whole pixels of 518."""
    crop = (x_min, y_min, x_max, y_max)
    original = tuple(int(value * 518) / 518 for value in crop)
    return GroundedBox(*crop, *original)


def test_grounded_and_ungrounded_phrases():
    text = (
        " <obj>Left pleural effusion. <box><x55><y45><x70><y56></box></obj>"
        "<obj> No pneumothorax. </obj> "
    )
    phrases, ok = parse_grounded_output(text, SQUARE)
    assert ok
    assert phrases == (
        GroundedPhrase("Left pleural effusion.", (square_box(0.555, 0.455, 0.705, 0.565),)),
        GroundedPhrase("No pneumothorax. ", ()),  # ungrounded phrases are left-stripped only
    )


def test_several_boxes_for_one_phrase():
    text = (
        "<obj>Bilateral effusions <box><x0><y60><x30><y90></box>"
        "<box><x70><y60><x99><y90></box></obj>"
    )
    phrases, ok = parse_grounded_output(text, SQUARE)
    assert ok
    assert phrases == (
        GroundedPhrase(
            "Bilateral effusions",
            (square_box(0.005, 0.605, 0.305, 0.905), square_box(0.705, 0.605, 0.995, 0.905)),
        ),
    )


def test_landscape_image_undoes_the_centre_crop():
    # 1001 x 777: crop side 777, left offset (1001 - 777) // 2 = 112, top 0.
    geometry = ImageGeometry.for_size(1001, 777)
    (phrase,), ok = parse_grounded_output("<obj>A <box><x55><y45><x70><y56></box></obj>", geometry)
    assert ok
    (box,) = phrase.boxes
    assert (box.x_min, box.y_min, box.x_max, box.y_max) == (0.555, 0.455, 0.705, 0.565)
    # x: 0.555 * 777 + 112 = 543.235 -> 543; 0.705 * 777 + 112 = 659.785 -> 659 (of 1001)
    # y: 0.455 * 777 = 353.535 -> 353; 0.565 * 777 = 439.005 -> 439 (of 777)
    assert box.original_x_min == 543 / 1001
    assert box.original_x_max == 659 / 1001
    assert box.original_y_min == 353 / 777
    assert box.original_y_max == 439 / 777


def test_portrait_image_undoes_the_centre_crop():
    # 650 x 1000: crop side 650, left 0, top (1000 - 650) // 2 = 175.
    geometry = ImageGeometry.for_size(650, 1000)
    (phrase,), ok = parse_grounded_output("<obj>A <box><x10><y20><x90><y80></box></obj>", geometry)
    assert ok
    (box,) = phrase.boxes
    # x: 0.105 * 650 = 68.25 -> 68; 0.905 * 650 = 588.25 -> 588 (of 650)
    # y: 0.205 * 650 + 175 = 308.25 -> 308; 0.805 * 650 + 175 = 698.25 -> 698 (of 1000)
    assert (box.original_x_min, box.original_x_max) == (68 / 650, 588 / 650)
    assert (box.original_y_min, box.original_y_max) == (308 / 1000, 698 / 1000)


def test_plain_text_is_one_ungrounded_phrase():
    assert parse_grounded_output("  No acute findings.  ", SQUARE) == (
        (GroundedPhrase("No acute findings.", ()),),
        True,
    )
    assert parse_grounded_output("   ", SQUARE) == ((), True)


GOOD = "<obj>A <box><x1><y2><x3><y4></box></obj>"
GOOD_PHRASE = GroundedPhrase("A", (square_box(0.015, 0.025, 0.035, 0.045),))


@pytest.mark.parametrize(
    ("text", "phrases"),
    [
        (f"{GOOD}<obj>B <box><x1><y2>", [GOOD_PHRASE]),  # unclosed object (length cut)
        (f"{GOOD}<obj>B", [GOOD_PHRASE]),
        (f"Findings: {GOOD}", [GOOD_PHRASE]),  # text outside objects
        (f"{GOOD} and more", [GOOD_PHRASE]),
        (f"<obj>X{GOOD}", [GOOD_PHRASE]),  # nested / unclosed before
        ("<box><x1><y2><x3><y4></box>", []),  # box outside an object
        ("<obj>A <box><x100><y2><x3><y4></box></obj>", [GroundedPhrase("A", ())]),
        ("<obj>A <box><x1><y2><x3></box></obj>", [GroundedPhrase("A", ())]),
        ("<obj>A <box><x1><y2><x3><y4><x5></box></obj>", [GroundedPhrase("A", ())]),
        ("<obj>A <box>junk<x1><y2><x3><y4></box></obj>", [GroundedPhrase("A", ())]),
        ("<obj>A <box><x-1><y2><x3><y4></box></obj>", [GroundedPhrase("A", ())]),
        ("<obj>A <box><x1><y2><x3><y4></obj>", [GroundedPhrase("A", ())]),  # unclosed box
        (
            "<obj>A <box><x1><y2><x3><y4></box> and <box><x1><y2><x3><y4></box></obj>",
            [GroundedPhrase("A", (GOOD_PHRASE.boxes[0], GOOD_PHRASE.boxes[0]))],
        ),
        ("<obj>A </box></obj>", [GroundedPhrase("A </box>", ())]),
        (
            "<obj>A </box><box><x1><y2><x3><y4></box></obj>",
            [GroundedPhrase("A </box>", GOOD_PHRASE.boxes)],
        ),
        ("</obj>", []),
    ],
)
def test_malformed_output_keeps_what_parsed(text, phrases):
    assert parse_grounded_output(text, SQUARE) == (tuple(phrases), False)


@given(
    st.lists(
        st.sampled_from(["<obj>", "</obj>", "<box>", "</box>", "<x5>", "<y99>", "<x100>", " ", "a"])
    ).map("".join)
)
def test_never_raises(text):
    phrases, ok = parse_grounded_output(text, ImageGeometry.for_size(7, 3))
    assert isinstance(ok, bool)
    assert all(isinstance(phrase, GroundedPhrase) for phrase in phrases)
