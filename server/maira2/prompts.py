"""MAIRA-2's prompts: the user turn for each task and its rendering through the chat template.

The wording is MAIRA-2's own (maira2-facts.md, "Prompt") and must not change by a byte: the
model was trained on it. The chat template comes from the snapshot's ``chat_template.json``;
it is data, rendered in jinja2's immutable sandbox the way transformers renders chat templates,
and no other code from the snapshot runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from maira_sae.server.errors import InvalidArgument
from maira_sae.server.maira2.study import ImageRole, Study, Task, TaskKind

MISSING_SECTION = "N/A"

ContentItem = Mapping[str, str]  # {"type": "text", "text": ...} or {"type": "image"}

_REPORTING_REQUEST = (
    " Provide a structured description of the findings in the radiology study in comparison to"
    " the prior frontal image."
)
_GROUNDING_REQUEST = (
    " Each finding should be described as a self-contained plain-text sentence. If the finding"
    " is groundable, locate the finding in the current frontal chest X-ray image, with bounding"
    " boxes indicating all locations where it can be seen in the current frontal image."
    " Otherwise, generate just the ungrounded finding without bounding boxes."
)
_PHRASE_GROUNDING_REQUEST = (
    " Repeat the following finding as a grounded phrase with bounding boxes indicating all"
    " locations where it can be seen in the given chest X-ray image. Finding: "
)
_PROMPT_ORDER = (ImageRole.FRONTAL, ImageRole.LATERAL, ImageRole.PRIOR)


@dataclass(frozen=True)
class Sections:
    """The report sections of a study; ``None`` or "" reads "N/A" (the prior report is used
    only with a prior image)."""

    indication: str | None = None
    technique: str | None = None
    comparison: str | None = None
    prior_report: str | None = None

    @classmethod
    def of(cls, study: Study) -> Sections:
        return cls(study.indication, study.technique, study.comparison, study.prior_report)


def user_content(images: Sequence[ImageRole], task: Task, sections: Sections) -> list[ContentItem]:
    """The user turn's items, in MAIRA-2's order, for the images present and the task.

    Raises InvalidArgument for a request MAIRA-2 has no prompt for: no frontal image, images
    out of order, a prior report without a prior image, phrase grounding without a phrase or
    with lateral/prior images (its prompt shows the frontal image only), a phrase on another
    task. Phrase grounding does not use the report sections; they are ignored.
    """
    _check_images(images)
    phrase = task.phrase or None
    if task.kind is TaskKind.PHRASE_GROUNDING:
        if phrase is None:
            raise InvalidArgument(
                "phrase grounding needs a phrase", field="task.phrase", reason="FIELD_REQUIRED"
            )
        if list(images) != [ImageRole.FRONTAL]:
            raise InvalidArgument(
                "phrase grounding uses the current frontal image only; "
                "remove the lateral and prior images",
                field="study",
                reason="IMAGES_NOT_ALLOWED",
            )
        return [
            _text("Given the current frontal image"),
            _IMAGE,
            _text(_PHRASE_GROUNDING_REQUEST + phrase),
        ]
    if phrase is not None:
        raise InvalidArgument(
            f"a phrase is only used by phrase grounding, not {task.kind.value}",
            field="task.phrase",
            reason="FIELD_NOT_ALLOWED",
        )
    has_prior = ImageRole.PRIOR in images
    if sections.prior_report and not has_prior:
        raise InvalidArgument(
            "a prior report needs the prior frontal image",
            field="study.prior_report",
            reason="FIELD_NOT_ALLOWED",
        )
    content = _image_items(has_lateral=ImageRole.LATERAL in images, has_prior=has_prior)
    if has_prior:
        content.append(_text(f" PRIOR_REPORT: {_or_missing(sections.prior_report)}"))
    request = _REPORTING_REQUEST
    if task.kind is TaskKind.GROUNDED_FINDINGS:
        request += _GROUNDING_REQUEST
    content.append(
        _text(
            f"{request} INDICATION: {_or_missing(sections.indication)}"
            f" TECHNIQUE: {_or_missing(sections.technique)}"
            f" COMPARISON: {_or_missing(sections.comparison)}"
        )
    )
    return content


class ChatTemplate:
    """A snapshot's chat template, compiled once, rendered in jinja2's immutable sandbox."""

    def __init__(self, source: str) -> None:
        # The same environment settings transformers uses for chat templates.
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        self._template = environment.from_string(source)

    def render(
        self, content: Sequence[ContentItem], *, response: str | None, eos_token: str
    ) -> str:
        """The prompt for one user turn. Without a response the assistant turn is opened for
        generation; with one (teacher forcing) the turn holds it and is closed by the template,
        for MAIRA-2: "ASSISTANT: " + response + eos_token."""
        messages: list[dict[str, object]] = [{"role": "user", "content": list(content)}]
        if response is not None:
            messages.append({"role": "assistant", "content": [_text(response)]})
        return self._template.render(
            messages=messages, add_generation_prompt=response is None, eos_token=eos_token
        )


_IMAGE: ContentItem = {"type": "image"}


def _text(text: str) -> ContentItem:
    return {"type": "text", "text": text}


def _image_items(*, has_lateral: bool, has_prior: bool) -> list[ContentItem]:
    if not has_lateral and not has_prior:
        return [_text("Given the current frontal image only"), _IMAGE]
    items = [_text("Given the current frontal image"), _IMAGE]
    if has_lateral and has_prior:
        items += [_text(" the current lateral image"), _IMAGE]
        items += [_text(" and the prior frontal image"), _IMAGE]
    elif has_prior:
        items += [_text(" and the prior frontal image"), _IMAGE]
    else:
        items += [_text(" and the current lateral image"), _IMAGE]
    return items


def _check_images(images: Sequence[ImageRole]) -> None:
    if not images or images[0] is not ImageRole.FRONTAL:
        raise InvalidArgument(
            "a study needs the current frontal image",
            field="study.frontal",
            reason="FIELD_REQUIRED",
        )
    if list(images) != [role for role in _PROMPT_ORDER if role in images]:
        raise InvalidArgument(
            "images must be distinct and ordered frontal, lateral, prior; "
            f"got {', '.join(role.value for role in images)}",
            field="study",
            reason="IMAGES_OUT_OF_ORDER",
        )


def _or_missing(section: str | None) -> str:
    return section if section else MISSING_SECTION
