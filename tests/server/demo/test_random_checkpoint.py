"""The demo checkpoint: real schema, deterministic bytes, an SAE that fires sparsely."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open

from maira_sae.sae.catalogue import FeatureCatalogue
from maira_sae.sae.formats import load_sae
from maira_sae.server.demo.random_checkpoint import DEMO_CONFIG, SAE_LAYER, write_demo_checkpoint
from maira_sae.server.maira2.checkpoint import (
    INDEX_FILE,
    expected_tensor_names,
    load_maira2,
    validate_sae_for_model,
)
from maira_sae.server.maira2.config import parse_maira2_config, read_maira2_config
from maira_sae.server.maira2.image_preprocessing import (
    ImagePreprocessingSettings,
    preprocess_image,
)
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image

PREFIXES = (
    "language_model.model.",
    "language_model.lm_head.",
    "vision_tower.",
    "multi_modal_projector.",
)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_snapshot_files_and_config_keys(demo_checkpoint):
    folder = demo_checkpoint.model_dir
    for name in (
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.json",
    ):
        assert (folder / name).is_file(), name
    raw = json.loads((folder / "config.json").read_text())
    assert raw["architectures"] == ["Maira2ForConditionalGeneration"]
    assert set(raw["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM", "AutoModelForVision2Seq"}
    assert raw["text_config"]["vocab_size"] == 32207
    assert raw["vision_config"]["out_features"] == ["stage2"]
    generation = json.loads((folder / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (
        1,
        2,
        0,
    )
    settings = ImagePreprocessingSettings.from_file(folder / "preprocessor_config.json")
    assert settings == ImagePreprocessingSettings()
    config = read_maira2_config(folder / "config.json")
    assert config.patch_grid == (37, 37)


def test_weights_are_sharded_with_a_consistent_index_and_real_names(demo_checkpoint):
    folder = demo_checkpoint.model_dir
    index = json.loads((folder / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2
    assert sorted(p.name for p in folder.glob("model-*.safetensors")) == shards
    names, total = set(), 0
    for shard in shards:
        with safe_open(folder / shard, framework="pt") as f:
            in_shard = f.keys()
            for name in in_shard:
                assert index["weight_map"][name] == shard
                names.add(name)
                total += f.get_tensor(name).numel() * 4
    assert names == set(index["weight_map"])
    assert index["metadata"]["total_size"] == total
    assert all(name.startswith(PREFIXES) for name in names)
    assert len(names) == 1 + 9 * 16 + 2 + 5 + 18 * 2 + 2 + 8 == 198
    assert names == expected_tensor_names(read_maira2_config(folder / "config.json"))


def test_same_seed_same_bytes_other_seed_other_weights(demo_checkpoint, tmp_path):
    reference = _hashes(demo_checkpoint.root)
    again = write_demo_checkpoint(tmp_path / "again", seed=0)
    assert _hashes(again.root) == reference
    other = _hashes(write_demo_checkpoint(tmp_path / "other", seed=1).root)
    assert other.keys() == reference.keys()
    changed = {name for name in reference if reference[name] != other[name]}
    assert {"maira-2/model-00001-of-00002.safetensors", "sae-ef4-layer15/ae.pt"} <= changed


def test_sae_fits_the_model_and_fires_sparsely(demo_checkpoint):
    loaded = load_maira2(str(demo_checkpoint.model_dir))
    sae = load_sae(demo_checkpoint.sae_dir)
    assert sae.metadata.layer == SAE_LAYER
    assert sae.group_sizes == (32, 64, 160)
    assert float(sae.threshold) > 0
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(256))
    validate_sae_for_model(sae.d_model, sae.metadata.layer, loaded.config)

    pixels = preprocess_image(
        synthetic_chest_image(640, 520), ImagePreprocessingSettings()
    ).pixel_values
    text = list(range(200, 240))
    input_ids = torch.tensor([[1, *text[:20], *[32204] * 1369, *text[20:]]])
    captured = []
    hook = loaded.model.decoder_layers[SAE_LAYER].register_forward_hook(
        lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
    )
    with torch.no_grad():
        loaded.model(input_ids=input_ids, pixel_values=pixels[None])
    hook.remove()
    l0 = (sae.encode(captured[0][0]) > 0).sum(dim=-1).float()
    image_l0, text_l0 = l0[21:1390].mean(), torch.cat([l0[1:21], l0[1390:]]).mean()
    assert 3 <= image_l0 <= 60, image_l0
    assert 3 <= text_l0 <= 60, text_l0


def test_interpretations_are_marked_demo_and_searchable(demo_checkpoint):
    catalogue = FeatureCatalogue.from_file(demo_checkpoint.interpretations_path)
    assert 0 < len(catalogue) < 256  # some features are left unlabelled
    hits = catalogue.search("pacemakers", limit=5)
    assert hits
    for hit in hits:
        interpretation = hit.interpretation
        assert interpretation.explanation == "DEMO label (random model, not clinical): pacemaker"
        assert 0.0 <= interpretation.score <= 1.0
        assert interpretation.provenance is None  # a three-column file


def test_the_config_is_written_in_the_released_form_and_never_mutated(demo_checkpoint):
    """transformers' config classes normalise rope dicts in place: parsing must copy first."""
    before = copy.deepcopy(DEMO_CONFIG)
    parse_maira2_config(DEMO_CONFIG)
    assert before == DEMO_CONFIG
    written = json.loads((demo_checkpoint.model_dir / "config.json").read_text())
    assert written == DEMO_CONFIG
    assert written["text_config"]["rope_scaling"] == {"factor": 1.5, "type": "linear"}
    assert written["text_config"]["rope_theta"] == 10000.0
    assert "rope_parameters" not in written["text_config"]
