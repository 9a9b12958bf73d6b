"""MAIRA-2's prompts, byte for byte, for every variant."""

from __future__ import annotations

import pytest
from jinja2.exceptions import SecurityError

from maira_sae.server.demo.tokenizer import CHAT_TEMPLATE
from maira_sae.server.errors import InvalidArgument
from maira_sae.server.maira2.prompts import ChatTemplate, Sections, user_content
from maira_sae.server.maira2.study import ImageRole, Task, TaskKind

FRONTAL, LATERAL, PRIOR = ImageRole.FRONTAL, ImageRole.LATERAL, ImageRole.PRIOR
SECTIONS = Sections(indication="Dyspnea.", technique="PA and lateral.", comparison="None.")
TEMPLATE = ChatTemplate(CHAT_TEMPLATE)
FINDINGS = Task()


def prompt(images, task=FINDINGS, sections=SECTIONS, response=None):
    return TEMPLATE.render(
        user_content(images, task, sections), response=response, eos_token="</s>"
    )


def test_findings_frontal_only():
    assert prompt([FRONTAL]) == (
        "You are an expert radiology assistant tasked with interpreting a chest X-ray study.  "
        "USER:  Given the current frontal image only<image> Provide a structured description "
        "of the findings in the radiology study in comparison to the prior frontal image. "
        "INDICATION: Dyspnea. TECHNIQUE: PA and lateral. COMPARISON: None.  ASSISTANT: "
    )


def test_findings_frontal_and_lateral():
    assert prompt([FRONTAL, LATERAL]) == (
        "You are an expert radiology assistant tasked with interpreting a chest X-ray study.  "
        "USER:  Given the current frontal image<image> and the current lateral image<image> "
        "Provide a structured description of the findings in the radiology study in "
        "comparison to the prior frontal image. INDICATION: Dyspnea. TECHNIQUE: PA and "
        "lateral. COMPARISON: None.  ASSISTANT: "
    )


def test_findings_frontal_and_prior_with_prior_report():
    sections = Sections("Dyspnea.", "PA and lateral.", "Prior from 2020.", "Small effusion.")
    assert prompt([FRONTAL, PRIOR], sections=sections) == (
        "You are an expert radiology assistant tasked with interpreting a chest X-ray study.  "
        "USER:  Given the current frontal image<image> and the prior frontal image<image> "
        "PRIOR_REPORT: Small effusion. Provide a structured description of the findings in "
        "the radiology study in comparison to the prior frontal image. INDICATION: Dyspnea. "
        "TECHNIQUE: PA and lateral. COMPARISON: Prior from 2020.  ASSISTANT: "
    )


def test_findings_all_three_images_without_prior_report():
    assert prompt([FRONTAL, LATERAL, PRIOR]) == (
        "You are an expert radiology assistant tasked with interpreting a chest X-ray study.  "
        "USER:  Given the current frontal image<image> the current lateral image<image> and "
        "the prior frontal image<image> PRIOR_REPORT: N/A Provide a structured description of "
        "the findings in the radiology study in comparison to the prior frontal image. "
        "INDICATION: Dyspnea. TECHNIQUE: PA and lateral. COMPARISON: None.  ASSISTANT: "
    )


def test_grounded_findings_uses_the_same_images():
    assert prompt([FRONTAL, LATERAL], Task(TaskKind.GROUNDED_FINDINGS)) == (
        "You are an expert radiology assistant tasked with interpreting a chest X-ray study.  "
        "USER:  Given the current frontal image<image> and the current lateral image<image> "
        "Provide a structured description of the findings in the radiology study in "
        "comparison to the prior frontal image. Each finding should be described as a "
        "self-contained plain-text sentence. If the finding is groundable, locate the finding "
        "in the current frontal chest X-ray image, with bounding boxes indicating all "
        "locations where it can be seen in the current frontal image. Otherwise, generate "
        "just the ungrounded finding without bounding boxes. INDICATION: Dyspnea. TECHNIQUE: "
        "PA and lateral. COMPARISON: None.  ASSISTANT: "
    )


def test_phrase_grounding_ignores_sections():
    task = Task(TaskKind.PHRASE_GROUNDING, phrase="Left pleural effusion.")
    assert prompt([FRONTAL], task) == (
        "You are an expert radiology assistant tasked with interpreting a chest X-ray study.  "
        "USER:  Given the current frontal image<image> Repeat the following finding as a "
        "grounded phrase with bounding boxes indicating all locations where it can be seen in "
        "the given chest X-ray image. Finding: Left pleural effusion.  ASSISTANT: "
    )


def test_missing_and_empty_sections_read_not_available():
    sections = Sections(indication=None, technique="", comparison=None, prior_report="")
    assert prompt([FRONTAL, PRIOR], sections=sections) == (
        "You are an expert radiology assistant tasked with interpreting a chest X-ray study.  "
        "USER:  Given the current frontal image<image> and the prior frontal image<image> "
        "PRIOR_REPORT: N/A Provide a structured description of the findings in the radiology "
        "study in comparison to the prior frontal image. INDICATION: N/A TECHNIQUE: N/A "
        "COMPARISON: N/A  ASSISTANT: "
    )


def test_teacher_forced_response_closes_the_turn_with_eos():
    assert prompt([FRONTAL], response="The lungs are clear.") == (
        "You are an expert radiology assistant tasked with interpreting a chest X-ray study.  "
        "USER:  Given the current frontal image only<image> Provide a structured description "
        "of the findings in the radiology study in comparison to the prior frontal image. "
        "INDICATION: Dyspnea. TECHNIQUE: PA and lateral. COMPARISON: None.  "
        "ASSISTANT: The lungs are clear.</s>"
    )


def test_teacher_forced_phrase_grounding():
    task = Task(TaskKind.PHRASE_GROUNDING, phrase="Effusion.")
    response = "<obj>Effusion.<box><x10><y20><x30><y40></box></obj>"
    assert prompt([FRONTAL], task, response=response).endswith(
        "Finding: Effusion.  ASSISTANT: <obj>Effusion.<box><x10><y20><x30><y40></box></obj></s>"
    )


@pytest.mark.parametrize(
    ("images", "task", "sections", "message"),
    [
        ([FRONTAL, LATERAL], Task(TaskKind.PHRASE_GROUNDING, "x"), SECTIONS, "frontal image only"),
        ([FRONTAL, PRIOR], Task(TaskKind.PHRASE_GROUNDING, "x"), SECTIONS, "frontal image only"),
        ([FRONTAL], Task(TaskKind.PHRASE_GROUNDING), SECTIONS, "needs a phrase"),
        ([FRONTAL], Task(TaskKind.PHRASE_GROUNDING, ""), SECTIONS, "needs a phrase"),
        ([FRONTAL], Task(TaskKind.FINDINGS, "x"), SECTIONS, "only used by phrase grounding"),
        ([FRONTAL], Task(), Sections(prior_report="Old."), "needs the prior frontal image"),
        ([LATERAL], Task(), SECTIONS, "needs the current frontal image"),
        ([], Task(), SECTIONS, "needs the current frontal image"),
        ([FRONTAL, PRIOR, LATERAL], Task(), SECTIONS, "ordered frontal, lateral, prior"),
        ([FRONTAL, FRONTAL], Task(), SECTIONS, "ordered frontal, lateral, prior"),
    ],
)
def test_requests_without_a_maira2_prompt_are_refused(images, task, sections, message):
    with pytest.raises(InvalidArgument, match=message):
        prompt(images, task, sections)


def test_template_renders_in_an_immutable_sandbox():
    template = ChatTemplate("{% set _ = messages.append('x') %}")
    with pytest.raises(SecurityError):
        template.render([], response=None, eos_token="</s>")
