"""Tensor names on disk: the released (transformers 4.x) spelling and the 5.x one both load, to
the same logits; the full-size expectation is exactly MAIRA-2's 522 names; nothing else loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers.conversion_mapping import get_checkpoint_conversion_mapping

from maira_sae.server.demo.random_checkpoint import full_size_config
from maira_sae.server.demo.snapshot import write_weights
from maira_sae.server.maira2.checkpoint import INDEX_FILE, expected_tensor_names, load_maira2
from maira_sae.server.maira2.config import CheckpointError, parse_maira2_config
from maira_sae.server.maira2.image_preprocessing import (
    ImagePreprocessingSettings,
    preprocess_image,
)
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image
from maira_sae.server.maira2.tensor_names import (
    VISION_ATTENTION_NAMES,
    NameForm,
    TensorNameError,
    name_form,
    to_disk_name,
    to_memory_name,
)

FIXTURE = Path(__file__).parent / "fixtures" / "maira2-tensor-names.txt"
FIVE_X_ATTENTION = "vision_tower.encoder.layer.0.attention.q_proj.weight"
FOUR_X_ATTENTION = "vision_tower.encoder.layer.0.attention.attention.query.weight"


def fixture_names() -> set[str]:
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    return {line for line in lines if line and not line.startswith("#")}


def test_the_full_size_expectation_is_exactly_maira2s_522_names():
    names = expected_tensor_names(parse_maira2_config(full_size_config()))
    assert names == fixture_names()
    by_part = {
        part: sum(name.startswith(prefix) for name in names)
        for part, prefix in (
            ("text", "language_model."),
            ("vision", "vision_tower."),
            ("projector", "multi_modal_projector."),
        )
    }
    assert by_part == {"text": 291, "vision": 223, "projector": 8}


def test_both_spellings_map_to_the_same_module_and_back():
    memory = "model.vision_tower.encoder.layer.0.attention.q_proj.weight"
    assert to_memory_name(FOUR_X_ATTENTION) == to_memory_name(FIVE_X_ATTENTION) == memory
    assert to_disk_name(memory) == FOUR_X_ATTENTION
    assert to_disk_name(memory, NameForm.TRANSFORMERS_5) == FIVE_X_ATTENTION
    dense = "vision_tower.encoder.layer.3.attention.output.dense.bias"
    assert to_memory_name(dense).endswith("layer.3.attention.o_proj.bias")
    assert name_form([FOUR_X_ATTENTION, "language_model.lm_head.weight"]) is NameForm.TRANSFORMERS_4
    assert name_form([FIVE_X_ATTENTION]) is NameForm.TRANSFORMERS_5
    assert name_form(["language_model.lm_head.weight"]) is None
    with pytest.raises(TensorNameError, match="mix"):
        name_form([FOUR_X_ATTENTION, FIVE_X_ATTENTION])
    with pytest.raises(TensorNameError):
        to_memory_name("model.embed_tokens.weight")


def test_the_table_agrees_with_transformers_own_dinov2_renaming():
    rules = get_checkpoint_conversion_mapping("Dinov2Model")
    renames = {
        (source, target)
        for rule in rules
        for source, target in zip(rule.source_patterns, rule.target_patterns, strict=False)
        if source.startswith("attention.")
    }
    assert {(old.rstrip("."), new.rstrip(".")) for old, new in VISION_ATTENTION_NAMES} == renames


def copy_snapshot_with_names(demo_checkpoint, folder: Path, form: NameForm) -> Path:
    """The demo snapshot with its weights re-written in ``form``."""
    shutil.copytree(
        demo_checkpoint.model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors*")
    )
    write_weights(load_maira2(str(demo_checkpoint.model_dir)).model, folder, names=form)
    return folder


def first_vision_names(folder: Path) -> list[str]:
    weight_map = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
    return sorted(name for name in weight_map if name.startswith("vision_tower.encoder.layer.0."))


def logits(folder: Path) -> torch.Tensor:
    model = load_maira2(str(folder)).model
    pixels = preprocess_image(synthetic_chest_image(), ImagePreprocessingSettings()).pixel_values
    input_ids = torch.tensor([[1, *range(300, 320), *[32204] * 1369, *range(400, 420)]])
    with torch.no_grad():
        return model(input_ids=input_ids, pixel_values=pixels[None]).logits


def test_the_demo_is_written_in_the_released_spelling(demo_checkpoint):
    names = first_vision_names(demo_checkpoint.model_dir)
    assert "vision_tower.encoder.layer.0.attention.attention.query.weight" in names
    assert not [name for name in names if "_proj" in name]


def test_a_checkpoint_in_either_spelling_gives_identical_logits(demo_checkpoint, tmp_path):
    four = copy_snapshot_with_names(demo_checkpoint, tmp_path / "4x", NameForm.TRANSFORMERS_4)
    five = copy_snapshot_with_names(demo_checkpoint, tmp_path / "5x", NameForm.TRANSFORMERS_5)
    assert FIVE_X_ATTENTION in first_vision_names(five)
    assert torch.equal(logits(four), logits(five))


def test_a_checkpoint_mixing_both_spellings_is_refused_naming_the_problem(
    demo_checkpoint, tmp_path
):
    folder = copy_snapshot_with_names(demo_checkpoint, tmp_path / "mixed", NameForm.TRANSFORMERS_4)
    index_path = folder / INDEX_FILE
    index = json.loads(index_path.read_text())
    shard = index["weight_map"].pop(FOUR_X_ATTENTION)
    tensors = load_file(folder / shard)
    tensors[FIVE_X_ATTENTION] = tensors.pop(FOUR_X_ATTENTION)
    save_file(tensors, folder / shard, metadata={"format": "pt"})
    index["weight_map"][FIVE_X_ATTENTION] = shard
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"mixed: the vision tower's attention tensors mix"):
        load_maira2(str(folder))
