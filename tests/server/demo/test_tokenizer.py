"""The demo tokenizer: MAIRA-2's vocabulary layout, loadable by transformers offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from maira_sae.server.demo.tokenizer import write_chat_template, write_demo_tokenizer

# MAIRA-2's chat template, byte for byte (maira2-facts.md, "Prompt").
EXPECTED_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
    "{% endif %}You are an expert radiology assistant tasked with interpreting a chest X-ray "
    'study.  {% for message in messages %}{% if message["role"] == "user" %}USER:  '
    '{% else %}ASSISTANT: {% endif %}{% for item in message["content"] %}'
    '{% if item["type"] == "text" %}{{ item["text"] }}'
    '{% elif item["type"] == "image" %}<image>{% endif %}{% endfor %}'
    '{% if message["role"] == "user" %}  {% else %}{{eos_token}}{% endif %}{% endfor %}'
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    write_demo_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(folder: Path):
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def test_vocabulary_has_maira2_size_and_llama_base(tokenizer):
    assert len(tokenizer) == 32207
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 258]) == [
        "<unk>",
        "<s>",
        "</s>",
        "<0x00>",
        "<0xFF>",
    ]
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token_id == 0


def test_added_tokens_sit_at_maira2_ids(tokenizer, folder):
    expected = {"<obj>": 32000, "</obj>": 32001, "<box>": 32202, "</box>": 32203}
    expected |= {f"<x{i}>": 32002 + i for i in range(100)}
    expected |= {f"<y{i}>": 32102 + i for i in range(100)}
    expected |= {"<image>": 32204, "<prev_im>": 32205, "<lat_image>": 32206}
    assert len(expected) == 207
    for token, token_id in expected.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token
        assert tokenizer.convert_ids_to_tokens(token_id) == token
    assert json.loads((folder / "added_tokens.json").read_text()) == expected


def test_config_files_say_llama_as_vicuna(folder):
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "LlamaTokenizer"
    assert config["add_bos_token"] is True
    assert config["add_eos_token"] is False
    assert config["legacy"] is False
    assert len(config["added_tokens_decoder"]) == 210
    special_map = json.loads((folder / "special_tokens_map.json").read_text())
    assert {key: value["content"] for key, value in special_map.items()} == {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<unk>",
        "unk_token": "<unk>",
    }


@pytest.mark.parametrize(
    "text",
    [
        "The lungs are clear. No pleural effusion or pneumothorax.",
        "Left PICC line tip in the distal SVC; 12 mm nodule (stable) since 2024!",
        "Unicode: café, naïve, 肺, 🫁 and tabs\tand\nnewlines.",
        "double  spaces and a trailing space ",
    ],
)
def test_ordinary_text_round_trips(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.eos_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_known_words_are_single_pieces(tokenizer):
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("pleural effusion").input_ids)
    assert pieces == ["<s>", "▁pleural", "▁effusion"]


def test_grounding_tokens_survive_skipping_special_tokens(tokenizer):
    grounded = "<obj>Left effusion <box><x55><y45><x70><y56></box></obj>"
    ids = tokenizer(f"<image>{grounded}</s>").input_ids
    assert ids[:3] == [1, 32204, 32000]
    assert ids[-1] == 2
    assert tokenizer.decode(ids, skip_special_tokens=True) == grounded


def test_image_placeholders_are_special(tokenizer):
    ids = tokenizer.convert_tokens_to_ids(["<image>", "<prev_im>", "<lat_image>"])
    assert tokenizer.decode([*ids, 1, 2], skip_special_tokens=True) == ""


def test_writing_is_deterministic(folder, tmp_path):
    write_demo_tokenizer(tmp_path)
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
    ):
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes(), name


def test_chat_template_file_holds_maira2_template(tmp_path):
    write_chat_template(tmp_path)
    assert json.loads((tmp_path / "chat_template.json").read_text()) == {
        "chat_template": EXPECTED_TEMPLATE
    }
    assert (tmp_path / "chat_template.json").stat().st_size == 611  # as the real file
