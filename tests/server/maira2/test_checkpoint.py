"""MAIRA-2 config parsing, model assembly and checkpoint loading, on the demo snapshot."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants
from safetensors.torch import load_file, save_file
from torch import nn

from maira_sae.server.demo.random_checkpoint import DEMO_CONFIG
from maira_sae.server.maira2.checkpoint import (
    INDEX_FILE,
    LoadedMaira2,
    expected_tensor_names,
    load_maira2,
    validate_sae_for_model,
)
from maira_sae.server.maira2.config import CheckpointError, ImageFeatures, parse_maira2_config
from maira_sae.server.maira2.image_preprocessing import (
    ImagePreprocessingSettings,
    preprocess_image,
)
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image
from maira_sae.server.maira2.tensor_names import to_disk_name, to_memory_name

IMAGE = 32204
SEQ = 1369


@pytest.fixture(scope="module")
def loaded(demo_checkpoint) -> LoadedMaira2:
    return load_maira2(str(demo_checkpoint.model_dir))


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return preprocess_image(synthetic_chest_image(), ImagePreprocessingSettings()).pixel_values


@pytest.fixture
def snapshot(demo_checkpoint, tmp_path) -> Path:
    """A private copy of the demo snapshot that a test may break."""
    return Path(shutil.copytree(demo_checkpoint.model_dir, tmp_path / "maira-2"))


def _config(**changes) -> dict:
    raw = copy.deepcopy(DEMO_CONFIG)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = raw
        for parent in parents:
            target = target[parent]
        if value is None:
            del target[key]
        else:
            target[key] = value
    return raw


def _prompt(*image_counts_and_text: int) -> list[int]:
    """<s>, then alternating text lengths and image counts: _prompt(3, 1, 4) = text, image, text."""
    ids = [1]
    for i, n in enumerate(image_counts_and_text):
        ids += [IMAGE] * (SEQ * n) if i % 2 else [100 + i * 7 + j for j in range(n)]
    return ids


# --- config ---------------------------------------------------------------------------------


def test_config_properties():
    config = parse_maira2_config(_config())
    assert config.patch_grid == (37, 37)
    assert config.image_seq_length == 1369
    assert config.num_text_layers == 16
    assert config.hidden_size == 64
    assert config.image_token_index == IMAGE
    assert config.llava.text_config.rope_parameters["factor"] == 1.5


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"model_type": "llava"}, "model_type"),
        ({"projector_n_layers": None}, "projector_n_layers"),
        ({"text_config__model_type": "mistral"}, "text_config.model_type"),
        ({"vision_config__model_type": "clip_vision_model"}, "vision_config.model_type"),
        ({"vision_feature_select_strategy": "full"}, "vision_feature_select_strategy"),
        ({"vision_feature_layer": -2}, "vision_feature_layer"),
        ({"vision_config__reshape_hidden_states": True}, "vision_config.reshape_hidden_states"),
        (
            {"vision_config__out_features": ["stage1"], "vision_config__out_indices": None},
            "vision_config.out_features",
        ),
        ({"image_seq_length": 1370}, "image_seq_length"),
        ({"text_config__tie_word_embeddings": True}, "text_config.tie_word_embeddings"),
    ],
)
def test_config_refuses_what_is_not_maira2(changes, key):
    with pytest.raises(CheckpointError, match=rf"my/config.json: key '{key}'"):
        parse_maira2_config(_config(**changes), source="my/config.json")


# --- names ----------------------------------------------------------------------------------


def test_expected_tensor_names_follow_the_count_formula():
    config = parse_maira2_config(_config())
    names = expected_tensor_names(config)
    text, vision = config.num_text_layers, config.vision.num_hidden_layers

    def count(prefix: str) -> int:
        return sum(name.startswith(prefix) for name in names)

    assert count("language_model.") == 1 + 9 * text + 2
    assert count("vision_tower.") == 5 + 18 * vision + 2
    assert count("multi_modal_projector.") == 2 * 4
    assert len(names) == 198
    assert "language_model.lm_head.weight" in names
    assert "vision_tower.layernorm.weight" in names
    assert "vision_tower.encoder.layer.1.layer_scale2.lambda1" in names


def test_name_mapping_round_trips_every_tensor():
    names = expected_tensor_names(parse_maira2_config(_config()))
    assert {to_disk_name(to_memory_name(name)) for name in names} == names
    assert to_memory_name("language_model.model.norm.weight") == "model.language_model.norm.weight"
    assert to_memory_name("language_model.lm_head.weight") == "lm_head.weight"
    with pytest.raises(KeyError):
        to_memory_name("model.embed_tokens.weight")


# --- model ----------------------------------------------------------------------------------


def test_projector_is_a_four_layer_mlp_with_biases(loaded):
    layers = loaded.model.model.multi_modal_projector.layers
    linears = [i for i, module in enumerate(layers) if isinstance(module, nn.Linear)]
    assert linears == [0, 2, 4, 6]
    assert all(layers[i].bias is not None for i in linears)
    assert (layers[0].in_features, layers[0].out_features) == (32, 64)
    assert all(type(layers[i]).__name__ == "GELUActivation" for i in (1, 3, 5))


def test_accessors(loaded):
    model = loaded.model
    assert not model.training
    assert len(model.decoder_layers) == model.num_text_layers == 16
    assert model.hidden_size == 64
    assert model.image_token_index == IMAGE
    assert loaded.config.num_text_layers == 16
    assert model.generation_config.eos_token_id == 2


def test_image_features_are_taken_after_the_final_layernorm_without_cls(loaded, pixels):
    model = loaded.model
    tower = model.model.vision_tower
    batch = torch.stack([pixels, pixels.flip(-1)])
    with torch.no_grad():
        features = model.model.get_image_features(batch).pooler_output
        last_block = tower.encoder(tower.embeddings(batch)).last_hidden_state
        expected = model.model.multi_modal_projector(tower.layernorm(last_block)[:, 1:])
        pre_norm = model.model.multi_modal_projector(last_block[:, 1:])
    assert [f.shape for f in features] == [(SEQ, 64), (SEQ, 64)]
    torch.testing.assert_close(torch.stack(features), expected)
    assert not torch.allclose(torch.stack(features), pre_norm, atol=1e-3)
    assert loaded.config.image_features is ImageFeatures.FEATURE_MAPS


def test_hidden_states_setting_feeds_the_projector_before_the_final_layernorm(
    demo_checkpoint, loaded, pixels
):
    """The later release of MAIRA-2's code reads hidden_states[-1]: same weights, other logits."""
    before = load_maira2(str(demo_checkpoint.model_dir), image_features=ImageFeatures.HIDDEN_STATES)
    assert before.config.image_features is ImageFeatures.HIDDEN_STATES
    tower = before.model.model.vision_tower
    input_ids = torch.tensor([[1, *range(100, 110), *[IMAGE] * SEQ, *range(200, 210)]])
    with torch.no_grad():
        features = before.model.model.get_image_features(pixels[None]).pooler_output[0]
        last_block = tower.encoder(tower.embeddings(pixels[None])).last_hidden_state
        expected = before.model.model.multi_modal_projector(last_block[:, 1:])[0]
        logits_before = before.model(input_ids=input_ids, pixel_values=pixels[None]).logits
        logits_after = loaded.model(input_ids=input_ids, pixel_values=pixels[None]).logits
    torch.testing.assert_close(features, expected)
    assert (logits_before - logits_after).abs().max() > 1e-3


def test_forward_and_generate_with_image_tokens(loaded, pixels):
    input_ids = torch.tensor([_prompt(5, 1, 9)])
    with torch.no_grad():
        logits = loaded.model(input_ids=input_ids, pixel_values=pixels[None]).logits
        generated = loaded.model.generate(
            input_ids=input_ids, pixel_values=pixels[None], max_new_tokens=20, do_sample=False
        )
    assert logits.shape == (1, input_ids.shape[1], 32207)
    assert torch.isfinite(logits).all()
    new = generated[0, input_ids.shape[1] :].tolist()
    assert len(new) == 20
    assert 2 not in new


def test_a_batch_of_studies_with_different_image_counts_matches_running_them_alone(loaded, pixels):
    """pixel_values is all images concatenated in study order; rows are left-padded."""
    second = pixels.flip(-1)
    studies = [
        (_prompt(3, 1, 6), pixels[None]),
        (_prompt(3, 1, 2, 1, 4), torch.stack([pixels, second])),
    ]
    width = max(len(ids) for ids, _ in studies)
    input_ids = torch.tensor([[0] * (width - len(ids)) + ids for ids, _ in studies])
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in studies])
    with torch.no_grad():
        batched = loaded.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=torch.cat([p for _, p in studies]),
        ).logits[:, -1]
        alone = [
            loaded.model(input_ids=torch.tensor([ids]), pixel_values=p).logits[0, -1]
            for ids, p in studies
        ]
    torch.testing.assert_close(batched, torch.stack(alone), atol=1e-4, rtol=1e-4)


def test_a_token_count_mismatch_is_refused(loaded, pixels):
    input_ids = torch.tensor([_prompt(3, 1, 3)[: -SEQ // 2]])
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        loaded.model(input_ids=input_ids, pixel_values=pixels[None])


# --- loading --------------------------------------------------------------------------------


def _rewrite_shard(snapshot: Path, edit) -> None:
    """Apply ``edit(tensors, weight_map, shard_name)`` to the first shard and the index."""
    index_path = snapshot / INDEX_FILE
    index = json.loads(index_path.read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    tensors = load_file(snapshot / shard)
    edit(tensors, index["weight_map"], shard)
    save_file(tensors, snapshot / shard)
    index_path.write_text(json.dumps(index))


def test_loads_dtype_and_single_file(snapshot):
    index = json.loads((snapshot / INDEX_FILE).read_text())
    merged = {}
    for shard in set(index["weight_map"].values()):
        merged |= load_file(snapshot / shard)
        (snapshot / shard).unlink()
    (snapshot / INDEX_FILE).unlink()
    save_file(merged, snapshot / "model.safetensors")
    loaded = load_maira2(str(snapshot), dtype=torch.bfloat16)
    assert loaded.snapshot_dir == snapshot
    assert loaded.model.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(
        loaded.model.lm_head.weight, merged["language_model.lm_head.weight"].to(torch.bfloat16)
    )


def test_refuses_a_missing_tensor(snapshot):
    def drop(tensors, weight_map, _shard):
        name = sorted(tensors)[0]
        del tensors[name], weight_map[name]

    _rewrite_shard(snapshot, drop)
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\)"):
        load_maira2(str(snapshot))


def test_refuses_an_unexpected_tensor(snapshot):
    def add(tensors, weight_map, shard):
        tensors["vision_tower.pooler.weight"] = torch.zeros(3)
        weight_map["vision_tower.pooler.weight"] = shard

    _rewrite_shard(snapshot, add)
    with pytest.raises(CheckpointError, match=r"unexpected 1 tensor\(s\).*vision_tower.pooler"):
        load_maira2(str(snapshot))


def test_refuses_a_misshapen_tensor(snapshot):
    def reshape(tensors, _weight_map, _shard):
        name = sorted(tensors)[0]
        tensors[name] = torch.zeros(tensors[name].numel() + 1)

    _rewrite_shard(snapshot, reshape)
    with pytest.raises(CheckpointError, match=r"has shape \[\d+\], expected"):
        load_maira2(str(snapshot))


def test_refuses_a_missing_shard(snapshot):
    shard = sorted(snapshot.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"missing: \['{shard.name}'\]"):
        load_maira2(str(snapshot))


@pytest.mark.parametrize(
    ("changes", "key"),
    [({"model_type": "llava"}, "model_type"), ({"image_seq_length": 576}, "image_seq_length")],
)
def test_refuses_a_config_that_is_not_maira2(snapshot, changes, key):
    (snapshot / "config.json").write_text(json.dumps(_config(**changes)))
    with pytest.raises(CheckpointError, match=rf"config.json: key '{key}'"):
        load_maira2(str(snapshot))


def test_refuses_a_folder_without_safetensors(snapshot):
    for shard in snapshot.glob("model*.safetensors*"):
        shard.unlink()
    with pytest.raises(CheckpointError, match=r"pickled \.bin files never are"):
        load_maira2(str(snapshot))


def test_a_hub_id_that_cannot_be_fetched_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"cannot fetch 'microsoft/maira-2'.*HF_TOKEN"):
        load_maira2("microsoft/maira-2")


def test_neither_a_folder_nor_a_hub_id(tmp_path):
    with pytest.raises(CheckpointError, match="neither an existing folder nor a hub id"):
        load_maira2(str(tmp_path / "no" / "such" / "folder"))


def test_sae_must_fit_the_model(loaded):
    validate_sae_for_model(64, 15, loaded.config)
    with pytest.raises(CheckpointError, match=r"d_model 4096 does not match .* 64"):
        validate_sae_for_model(4096, 15, loaded.config)
    with pytest.raises(CheckpointError, match=r"layer 16 does not exist.*0\.\.15"):
        validate_sae_for_model(64, 16, loaded.config)
