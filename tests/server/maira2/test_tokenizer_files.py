"""The tokenizer and chat template as the snapshot's files say, in both forms 4.x writes:
exact ids around <image> and after added tokens, BOS from add_bos_token, the template read
where the original read it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from maira_sae.server.demo.tokenizer import CHAT_TEMPLATE, write_chat_template
from maira_sae.server.maira2.config import CheckpointError
from maira_sae.server.maira2.image_preprocessing import ImagePreprocessingSettings
from maira_sae.server.maira2.processor import Maira2Processor
from maira_sae.server.maira2.study import Study, Task, TaskKind
from maira_sae.server.maira2.tokenizer_files import read_chat_template
from tests.server.maira2.tokenizer_fixtures import write_4x_tokenizer

IMAGE_ID, PATCHES, GRID = 32204, 4, (2, 2)
BOS = 1


def snapshot(folder: Path, *, legacy: bool, post_processor: bool = True) -> Path:
    write_4x_tokenizer(folder, legacy=legacy, post_processor=post_processor)
    settings = ImagePreprocessingSettings(shortest_edge=28, crop_height=28, crop_width=28)
    (folder / "preprocessor_config.json").write_text(json.dumps(settings.to_json_dict()))
    return folder


def processor(folder: Path) -> Maira2Processor:
    return Maira2Processor.from_snapshot(
        folder, image_token_index=IMAGE_ID, image_seq_length=PATCHES, patch_grid=GRID
    )


def piece(folder: Path, text: str) -> int:
    """A vocabulary lookup (not the pipeline under test)."""
    token_id = Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id(text)
    assert token_id is not None, text
    return token_id


def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (30, 30)).astype(np.uint8)


def after_images(ids: list[int], count: int) -> list[list[int]]:
    """The ``count`` ids after the last patch of each image block."""
    ends = [i for i in range(len(ids)) if ids[i] == IMAGE_ID and ids[i + 1] != IMAGE_ID]
    return [ids[end + 1 : end + 1 + count] for end in ends]


@pytest.mark.parametrize("legacy", [False, True])
def test_ids_around_each_image_follow_the_files_pipeline(tmp_path, legacy):
    folder = snapshot(tmp_path, legacy=legacy)
    study = Study(frontal=image(), lateral=image(), prior=image(), indication="Cough.")
    ids = processor(folder).process(study, Task()).input_ids.tolist()
    space, the, and_, prior = (piece(folder, p) for p in ("▁", "▁the", "▁and", "▁PRIOR_REPORT:"))
    assert ids[0] == BOS and ids.count(BOS) == 1
    # frontal<image> the current lateral<image> and the prior frontal<image> PRIOR_REPORT: ...
    expected = [[the], [and_, the], [prior]]
    if legacy:  # 4.x's legacy normaliser prepends "▁" to every segment after an added token
        expected = [[space, *after] for after in expected]
    assert [ids[: len(e)] for ids, e in zip(after_images(ids, 3), expected, strict=True)] == (
        expected
    )


@pytest.mark.parametrize("legacy", [False, True])
def test_ids_after_grounding_tokens_follow_the_files_pipeline(tmp_path, legacy):
    folder = snapshot(tmp_path, legacy=legacy)
    response = "<obj>Left effusion<box><x10><y20><x30><y40></box></obj>"
    inputs = processor(folder).process(
        Study(frontal=image()), Task(TaskKind.GROUNDED_FINDINGS), response
    )
    ids = inputs.input_ids.tolist()
    start = ids.index(piece(folder, "<obj>"))
    word = piece(folder, "▁Left") if legacy else piece(folder, "L")
    assert ids[start + 1] == word  # legacy: "▁Left"; otherwise no "▁" after an added token
    coordinates = [piece(folder, t) for t in ("<box>", "<x10>", "<y20>", "<x30>", "<y40>")]
    box = ids.index(coordinates[0])
    assert ids[box : box + 5] == coordinates
    assert ids[-1] == 2  # the teacher-forced turn closes with </s>


@pytest.mark.parametrize("add_bos", [True, False])
def test_bos_comes_from_add_bos_token_even_without_a_post_processor(tmp_path, add_bos):
    folder = snapshot(tmp_path, legacy=False, post_processor=False)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["add_bos_token"] = add_bos
    config_path.write_text(json.dumps(config))
    ids = processor(folder).process(Study(frontal=image()), Task()).input_ids.tolist()
    assert (ids[0] == BOS) is add_bos
    assert ids.count(BOS) == int(add_bos)


def test_a_snapshot_with_only_tokenizer_model_is_refused_saying_what_is_missing(tmp_path):
    folder = snapshot(tmp_path, legacy=True)
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.model").write_bytes(b"\x0a\x05")
    with pytest.raises(CheckpointError, match=r"no tokenizer.json.*tokenizer.model alone"):
        processor(folder)


def test_the_tokenizers_chat_template_is_the_one_rendered(tmp_path):
    folder = snapshot(tmp_path, legacy=False)  # tokenizer_config.json holds the template
    assert read_chat_template(folder) == CHAT_TEMPLATE
    other = CHAT_TEMPLATE.replace("You are an expert", "You are a careful")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": other}))
    assert read_chat_template(folder) == CHAT_TEMPLATE  # the original used the tokenizer's
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["chat_template"]
    config_path.write_text(json.dumps(config))
    assert read_chat_template(folder) == other  # the processor's copy when the tokenizer has none
    (folder / "chat_template.json").unlink()
    with pytest.raises(CheckpointError, match="no chat template"):
        read_chat_template(folder)


def test_the_demo_writes_the_template_in_both_places(tmp_path):
    folder = snapshot(tmp_path, legacy=False)
    write_chat_template(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    copy = json.loads((folder / "chat_template.json").read_text())
    assert config["chat_template"] == copy["chat_template"] == CHAT_TEMPLATE
