"""Loading and writing SAE folders, from real files in tmp_path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch

from maira_sae.sae import MatryoshkaSAE, SaeFormatError, SaeMetadata, load_sae
from maira_sae.sae import write_dictionary_learning as write_dl

TRAINER = {
    "dict_class": "MatryoshkaBatchTopKSAE",
    "activation_dim": 16,
    "dict_size": 32,
    "k": 4,
    "group_sizes": [4, 12, 16],
    "layer": 15,
    "lm_name": "microsoft/maira-2",
    "submodule_name": "model.language_model.layers.15",
}


def write_dl_folder(folder: Path, weights: dict, state: dict | None = None, trainer=None) -> Path:
    """A dictionary_learning folder written by hand, as the library lays it out."""
    folder.mkdir(parents=True, exist_ok=True)
    full_state = {
        **weights,
        "k": torch.tensor(4, dtype=torch.int),
        "threshold": torch.tensor(0.2),
        "group_sizes": torch.tensor([4, 12, 16]),
        **(state or {}),
    }
    torch.save(full_state, folder / "ae.pt")
    config = {"trainer": {**TRAINER, **(trainer or {})}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_saelens_folder(folder: Path, weights: dict, cfg: dict | None = None, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({**weights, **extra}, folder / "sae_weights.safetensors")
    base = {"d_in": 16, "d_sae": 32, "hook_name": "blocks.15.hook_resid_post"}
    (folder / "cfg.json").write_text(json.dumps({**base, **(cfg or {})}))
    return folder


def raises_naming(file_name: str, match: str = ""):
    return pytest.raises(SaeFormatError, match=re.escape(file_name) + ".*" + match)


def test_dictionary_learning_round_trip_is_bit_identical(make_sae, tokens, tmp_path):
    metadata = SaeMetadata(layer=15, hook_point="layers.15", source_format="memory", path=None)
    sae = make_sae(threshold=0.25, metadata=metadata)
    folder = write_dl(sae, tmp_path / "sae", extra_trainer_config={"lr": 1e-4})
    loaded = load_sae(folder)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        assert torch.equal(getattr(loaded, name), getattr(sae, name)), name
    assert loaded.group_sizes == sae.group_sizes
    assert torch.equal(loaded.encode(tokens), sae.encode(tokens))
    assert torch.equal(loaded.reconstruct(tokens, level=2), sae.reconstruct(tokens, level=2))
    assert loaded.metadata.source_format == "dictionary_learning"
    assert loaded.metadata.layer == 15 and loaded.metadata.hook_point == "layers.15"
    assert loaded.metadata.path == str(folder)
    trainer = json.loads((folder / "config.json").read_text())["trainer"]
    assert trainer["lr"] == 1e-4 and trainer["dict_size"] == 32 and trainer["activation_dim"] == 16


def test_hand_written_dictionary_learning_folder_loads(weights, tokens, tmp_path):
    folder = write_dl_folder(tmp_path / "sae", weights)
    sae = load_sae(folder / "ae.pt")  # the weights file names its folder too
    expected = MatryoshkaSAE(**weights, group_sizes=[4, 12, 16], threshold=0.2)
    assert torch.equal(sae.encode(tokens), expected.encode(tokens))
    assert sae.metadata.k == 4 and sae.metadata.lm_name == "microsoft/maira-2"
    assert sae.metadata.dict_class == "MatryoshkaBatchTopKSAE"


def test_saelens_layout_with_same_weights_encodes_identically(weights, tokens, tmp_path):
    dl = load_sae(write_dl_folder(tmp_path / "dl", weights))
    threshold = torch.full((32,), 0.2)
    saelens = load_sae(write_saelens_folder(tmp_path / "lens", weights, threshold=threshold))
    assert torch.equal(saelens.encode(tokens), dl.encode(tokens))
    assert saelens.group_sizes == (32,)
    assert saelens.metadata.source_format == "saelens" and saelens.metadata.layer == 15
    assert saelens.metadata.hook_point == "blocks.15.hook_resid_post"


def test_saelens_without_b_dec_on_input(weights, tokens, tmp_path):
    folder = write_saelens_folder(
        tmp_path / "lens", weights, {"apply_b_dec_to_input": False}, threshold=torch.zeros(32)
    )
    sae = load_sae(folder)
    expected = torch.relu(tokens @ weights["W_enc"] + weights["b_enc"])
    torch.testing.assert_close(sae.encode(tokens), expected)


def test_b_dec_folding_when_writing_a_saelens_sae(weights, tokens, tmp_path):
    folder = write_saelens_folder(
        tmp_path / "lens", weights, {"apply_b_dec_to_input": False}, threshold=torch.zeros(32)
    )
    sae = load_sae(folder)
    rewritten = load_sae(write_dl(sae, tmp_path / "dl", submodule_name="x"), layer=15)
    torch.testing.assert_close(rewritten.encode(tokens), sae.encode(tokens))


def test_load_options_dtype_layer_and_scale(weights, tmp_path):
    folder = write_dl_folder(tmp_path / "sae", weights, trainer={"layer": None})
    sae = load_sae(folder, dtype=torch.bfloat16, layer=15, input_scale=2.0, device="cpu")
    assert sae.W_enc.dtype == torch.bfloat16 and sae.metadata.layer == 15
    assert sae.input_scale == 2.0


def test_top_k_sae_round_trip_needs_top_k_again(make_sae, tokens, tmp_path):
    sae = make_sae(top_k=3)
    folder = write_dl(sae, tmp_path / "sae")
    with raises_naming("ae.pt", "never set"):
        load_sae(folder)
    assert torch.equal(load_sae(folder, top_k=3).encode(tokens), sae.encode(tokens))


def test_unset_threshold_is_refused_unless_overridden(weights, tokens, tmp_path):
    folder = write_dl_folder(tmp_path / "sae", weights, {"threshold": torch.tensor(-1.0)})
    with raises_naming("ae.pt", "never set"):
        load_sae(folder)
    with_threshold = load_sae(folder, threshold=0.4)
    assert float(with_threshold.threshold) == pytest.approx(0.4)
    with_top_k = load_sae(folder, top_k=2)
    assert with_top_k.top_k == 2
    assert bool(((with_top_k.encode(tokens) > 0).sum(-1) <= 2).all())


def test_threshold_argument_overrides_the_file(weights, tmp_path):
    sae = load_sae(write_dl_folder(tmp_path / "sae", weights), threshold=0.7)
    assert float(sae.threshold) == pytest.approx(0.7)


def test_files_are_never_executed(weights, tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    folder = write_dl_folder(tmp_path / "sae", weights)
    torch.save({**weights, "payload": Payload()}, folder / "ae.pt")
    with raises_naming("ae.pt", "weights-only"):
        load_sae(folder)
    assert not marker.exists()


def test_missing_folder(tmp_path):
    with raises_naming("nowhere", "no such SAE folder"):
        load_sae(tmp_path / "nowhere")


def test_missing_weights_file(weights, tmp_path):
    folder = write_dl_folder(tmp_path / "sae", weights)
    (folder / "ae.pt").unlink()
    with raises_naming("ae.pt", "missing"):
        load_sae(folder)


def test_missing_config_file(weights, tmp_path):
    folder = write_dl_folder(tmp_path / "sae", weights)
    (folder / "config.json").unlink()
    with raises_naming("config.json", "missing"):
        load_sae(folder)


def test_missing_saelens_config(weights, tmp_path):
    folder = write_saelens_folder(tmp_path / "lens", weights)
    (folder / "cfg.json").unlink()
    with raises_naming("cfg.json", "missing"):
        load_sae(folder)


def test_unknown_layout(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0")
    with raises_naming(str(tmp_path), "unknown SAE layout"):
        load_sae(tmp_path)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"W_dec": torch.zeros(32, 15)}, "W_dec has shape"),
        ({"W_enc": torch.zeros(16, 31)}, "W_enc has shape"),
        ({"W_enc": torch.zeros(16)}, "W_enc must be"),
        ({"b_enc": torch.zeros(31)}, "b_enc has shape"),
        ({"b_dec": torch.zeros(15)}, "b_dec has shape"),
    ],
)
def test_malformed_weights(weights, tmp_path, change, match):
    folder = write_dl_folder(tmp_path / "sae", weights, change)
    with raises_naming("ae.pt", match):
        load_sae(folder)


def test_group_sizes_not_summing_to_dict_size(weights, tmp_path):
    sizes = [4, 12, 15]
    folder = write_dl_folder(
        tmp_path / "sae", weights, {"group_sizes": torch.tensor(sizes)}, {"group_sizes": sizes}
    )
    with raises_naming("ae.pt", "sum to 31"):
        load_sae(folder)


def test_weights_disagreeing_with_config(weights, tmp_path):
    folder = write_dl_folder(tmp_path / "sae", weights, trainer={"dict_size": 64})
    with raises_naming("ae.pt", "config.json describes"):
        load_sae(folder)


def test_config_group_sizes_disagreeing_with_weights(weights, tmp_path):
    folder = write_dl_folder(tmp_path / "sae", weights, trainer={"group_sizes": [16, 16]})
    with raises_naming("config.json", "disagree"):
        load_sae(folder)


def test_group_sizes_derived_from_fractions(weights, tmp_path):
    trainer = {"group_sizes": None, "group_fractions": [0.25, 0.25, 0.5]}
    folder = write_dl_folder(tmp_path / "sae", weights, trainer=trainer)
    state = torch.load(folder / "ae.pt", weights_only=True)
    del state["group_sizes"]
    torch.save(state, folder / "ae.pt")
    assert load_sae(folder).group_sizes == (8, 8, 16)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", ["W_enc", "b_dec"])
def test_non_finite_weights(weights, tmp_path, bad, name):
    weights[name].view(-1)[5] = bad
    with raises_naming("ae.pt", f"{name} has NaN or inf"):
        load_sae(write_dl_folder(tmp_path / "sae", weights))


def test_non_finite_saelens_threshold(weights, tmp_path):
    threshold = torch.zeros(32)
    threshold[3] = float("nan")
    folder = write_saelens_folder(tmp_path / "lens", weights, threshold=threshold)
    with raises_naming("sae_weights.safetensors", "NaN"):
        load_sae(folder)


def test_layer_contradicting_the_file(weights, tmp_path):
    with raises_naming("config.json", "layer 15"):
        load_sae(write_dl_folder(tmp_path / "dl", weights), layer=14)
    lens = write_saelens_folder(tmp_path / "lens", weights, threshold=torch.zeros(32))
    with raises_naming("cfg.json", "layer 15"):
        load_sae(lens, layer=3)
    assert load_sae(lens, layer=15).metadata.layer == 15


def test_unreadable_config(weights, tmp_path):
    folder = write_dl_folder(tmp_path / "sae", weights)
    (folder / "config.json").write_text("{not json")
    with raises_naming("config.json", "not readable JSON"):
        load_sae(folder)


def test_write_refuses_to_override_core_config(make_sae, tmp_path):
    with pytest.raises(ValueError, match="dict_size"):
        write_dl(make_sae(), tmp_path, extra_trainer_config={"dict_size": 3})
