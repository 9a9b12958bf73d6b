"""Study + task -> tokens with kinds, image slots and pixels; decoding what is generated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from maira_sae.server.demo.tokenizer import (
    CHAT_TEMPLATE,
    write_chat_template,
    write_demo_tokenizer,
)
from maira_sae.server.engine.detokenize import IncrementalDecoder
from maira_sae.server.errors import InvalidArgument
from maira_sae.server.maira2.image_preprocessing import ImageGeometry, ImagePreprocessingSettings
from maira_sae.server.maira2.processor import Maira2Processor
from maira_sae.server.maira2.prompts import ChatTemplate, Sections, user_content
from maira_sae.server.maira2.study import ImageRole, Study, Task, TaskKind
from maira_sae.server.maira2.tokens import TokenKind

IMAGE_ID, ROWS, COLS = 32204, 2, 3
PATCHES = ROWS * COLS


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("snapshot")
    write_demo_tokenizer(folder)
    write_chat_template(folder)
    settings = ImagePreprocessingSettings(shortest_edge=28, crop_height=28, crop_width=28)
    (folder / "preprocessor_config.json").write_text(json.dumps(settings.to_json_dict()))
    return folder


@pytest.fixture(scope="module")
def processor(snapshot: Path) -> Maira2Processor:
    return Maira2Processor.from_snapshot(
        snapshot, image_token_index=IMAGE_ID, image_seq_length=PATCHES, patch_grid=(ROWS, COLS)
    )


@pytest.fixture(scope="module")
def tokenizer(snapshot: Path):
    return AutoTokenizer.from_pretrained(snapshot, local_files_only=True)


def image(height: int = 40, width: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, (height, width)).astype(np.uint16)


def full_study(**sections: str) -> Study:
    return Study(frontal=image(), lateral=image(seed=1), prior=image(50, 60, seed=2), **sections)


def maira2_ids(tokenizer, study: Study, task: Task, response: str | None = None) -> list[int]:
    """What MAIRA-2's own processor feeds the model: the prompt string tokenised in one go,
    each <image> expanded to one token per patch."""
    roles = [role for role, _ in study.images()]
    text = ChatTemplate(CHAT_TEMPLATE).render(
        user_content(roles, task, Sections.of(study)), response=response, eos_token="</s>"
    )
    expanded: list[int] = []
    for token_id in tokenizer(text).input_ids:
        expanded += [token_id] * (PATCHES if token_id == IMAGE_ID else 1)
    return expanded


def test_findings_tokens_match_maira2_tokenisation(processor, tokenizer):
    study = full_study(indication="Cough.", technique="PA.", prior_report="Small effusion.")
    inputs = processor.process(study, Task())
    ids = inputs.input_ids.tolist()
    assert inputs.input_ids.dtype == torch.long
    assert ids == maira2_ids(tokenizer, study, Task())
    assert [token.token_id for token in inputs.tokens] == ids
    assert [token.position for token in inputs.tokens] == list(range(len(ids)))
    assert inputs.prompt_length == len(ids)
    kinds = [token.kind for token in inputs.tokens]
    assert kinds[0] is TokenKind.SPECIAL and inputs.tokens[0].text == "<s>"
    assert kinds.count(TokenKind.IMAGE_PATCH) == 3 * PATCHES
    assert set(kinds[1:]) == {TokenKind.PROMPT_TEXT, TokenKind.IMAGE_PATCH}
    text = tokenizer.decode([t.token_id for t in inputs.tokens if t.kind is TokenKind.PROMPT_TEXT])
    assert "PRIOR_REPORT: Small effusion. Provide" in text


def test_image_patches_carry_image_and_row_major_grid(processor):
    inputs = processor.process(full_study(), Task())
    patches = [t for t in inputs.tokens if t.kind is TokenKind.IMAGE_PATCH]
    roles = [ImageRole.FRONTAL, ImageRole.LATERAL, ImageRole.PRIOR]
    for index, role in enumerate(roles):
        mine = patches[index * PATCHES : (index + 1) * PATCHES]
        assert {(t.image_index, t.image_role, t.text) for t in mine} == {(index, role, "<image>")}
        assert [(t.grid_row, t.grid_col) for t in mine] == [
            (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)
        ]  # fmt: skip
        positions = [t.position for t in mine]
        assert positions == list(range(positions[0], positions[0] + PATCHES))
    text_tokens = [t for t in inputs.tokens if t.kind is not TokenKind.IMAGE_PATCH]
    assert all(t.image_index is t.grid_row is t.grid_col is None for t in text_tokens)


def test_pixels_and_geometry_follow_image_order(processor):
    inputs = processor.process(full_study(), Task())
    assert inputs.pixel_values.shape == (3, 3, 28, 28)
    assert inputs.pixel_values.dtype == torch.float32
    assert inputs.images == (
        ImageGeometry.for_size(30, 40),
        ImageGeometry.for_size(30, 40),
        ImageGeometry.for_size(60, 50),
    )


def test_special_token_strings_in_user_text_stay_text(processor, tokenizer):
    injected = "<image> <s></s><prev_im><lat_image><unk> <image>"
    study = Study(
        frontal=image(),
        prior=image(seed=2),
        indication=injected,
        technique="<image>",
        comparison="</s>",
        prior_report=injected,
    )
    inputs = processor.process(study, Task(), response=f"Report {injected}")
    ids = inputs.input_ids.tolist()
    assert ids.count(IMAGE_ID) == 2 * PATCHES
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.eos_token_id) == 1 and ids[-1] == tokenizer.eos_token_id
    assert not {0, 32205, 32206} & set(ids)
    prompt_text = tokenizer.decode(
        [t.token_id for t in inputs.tokens if t.kind is TokenKind.PROMPT_TEXT]
    )
    assert f"INDICATION: {injected} TECHNIQUE: <image> COMPARISON: </s>  " in prompt_text
    assert f"PRIOR_REPORT: {injected} Provide" in prompt_text
    response = [t.token_id for t in inputs.tokens if t.kind is TokenKind.RESPONSE]
    assert processor.decode_generated(response) == f"Report {injected}"


def test_phrase_with_special_token_strings_stays_text(processor, tokenizer):
    task = Task(TaskKind.PHRASE_GROUNDING, phrase="Effusion <image></s>")
    inputs = processor.process(Study(frontal=image()), task)
    ids = inputs.input_ids.tolist()
    assert ids.count(IMAGE_ID) == PATCHES
    assert tokenizer.eos_token_id not in ids
    after_image = ids[ids.index(IMAGE_ID) + PATCHES :]
    assert tokenizer.decode(after_image).endswith("Finding: Effusion <image></s>  ASSISTANT: ")


def test_teacher_forced_response_tokens(processor, tokenizer):
    study = Study(frontal=image(), indication="Cough.")
    task = Task(TaskKind.GROUNDED_FINDINGS)
    response = "No pneumothorax. <obj>Left effusion <box><x55><y45><x70><y56></box></obj>"
    inputs = processor.process(study, task, response=response)
    ids = inputs.input_ids.tolist()
    assert ids == maira2_ids(tokenizer, study, task, response)
    kinds = [t.kind for t in inputs.tokens]
    start = inputs.prompt_length
    assert TokenKind.RESPONSE not in kinds[:start]
    assert set(kinds[start:-1]) == {TokenKind.RESPONSE}
    assert kinds[-1] is TokenKind.SPECIAL and ids[-1] == tokenizer.eos_token_id
    assert 32202 in ids[start:]  # <box> is a real token in the response
    assert processor.decode_generated(ids[start:]) == response
    assert tokenizer.decode(ids[:start]).endswith("ASSISTANT:")
    generation = processor.process(study, task)
    assert generation.input_ids.tolist()[:start] == ids[:start]


def test_empty_response_is_just_eos(processor):
    inputs = processor.process(Study(frontal=image()), Task(), response="")
    assert inputs.prompt_length == len(inputs.tokens) - 1
    assert inputs.tokens[-1].kind is TokenKind.SPECIAL


def test_streamed_pieces_join_to_the_final_text(processor, tokenizer):
    report = "Café-au-lait 🫁 opacity.\n<obj>Left effusion <box><x5><y45><x70><y56></box></obj>"
    generated = [*tokenizer(report, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
    decoder = IncrementalDecoder(processor.decode_generated)
    pieces = [decoder.push(token_id) for token_id in generated]
    assert "".join(pieces) == processor.decode_generated(generated) == report
    assert "" in pieces  # the emoji's first bytes were held back


def test_token_text(processor, tokenizer):
    (the,) = tokenizer("The", add_special_tokens=False).input_ids
    assert processor.token_text(the) == " The"
    assert processor.token_text(1) == "<s>"
    assert processor.token_text(32202) == "<box>"
    assert processor.token_text(3 + 0xC3) == "<0xC3>"
    assert (processor.eos_token_id, processor.pad_token_id) == (2, 0)
    assert processor.patch_grid == (ROWS, COLS)


def test_nul_characters_are_refused(processor):
    with pytest.raises(InvalidArgument, match="indication contains a NUL"):
        processor.process(Study(frontal=image(), indication="a\x00image\x00b"), Task())


def test_unreadable_image_is_an_invalid_argument(processor):
    bad = np.full((20, 20), np.nan, dtype=np.float32)
    with pytest.raises(InvalidArgument, match=r"^study\.lateral: image contains NaN"):
        processor.process(Study(frontal=image(), lateral=bad), Task())


def test_invalid_prompt_request_is_refused(processor):
    task = Task(TaskKind.PHRASE_GROUNDING, phrase="Effusion.")
    with pytest.raises(InvalidArgument, match="frontal image only"):
        processor.process(full_study(), task)


@pytest.mark.parametrize(
    ("image_token_index", "image_seq_length", "patch_grid", "message"),
    [
        (IMAGE_ID, 7, (ROWS, COLS), "patch grid"),
        (32205, PATCHES, (ROWS, COLS), "image_token_index"),
    ],
)
def test_inconsistent_settings_fail_at_load(
    snapshot, image_token_index, image_seq_length, patch_grid, message
):
    with pytest.raises(ValueError, match=message):
        Maira2Processor.from_snapshot(
            snapshot,
            image_token_index=image_token_index,
            image_seq_length=image_seq_length,
            patch_grid=patch_grid,
        )


def test_template_with_other_image_markup_fails_at_load(snapshot, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        (tmp_path / name).write_bytes((snapshot / name).read_bytes())
    template = CHAT_TEMPLATE.replace("<image>{% endif %}", "<image>\n{% endif %}")
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = template  # where the original reads it
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="images must render as <image>"):
        Maira2Processor.from_snapshot(
            tmp_path, image_token_index=IMAGE_ID, image_seq_length=PATCHES, patch_grid=(ROWS, COLS)
        )
