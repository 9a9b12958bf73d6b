"""A tiny random MAIRA-2 snapshot plus SAE and labels, written in seconds, for tests and benches.

(The demo that ``serve --demo`` serves is the trained synthetic world, ``server/demo/world``;
what both share, the folder layout and the snapshot files, is in ``layout`` and ``snapshot``.)

The real checkpoints are gated and 27 GB; this writes files with their exact schema (config
keys, tensor names and sharding, tokenizer, chat template, image processor, dictionary_learning
SAE folder, interpretation table) at toy sizes: 16 text layers of width 64, a 2-layer Dinov2
of width 32 on 518 x 518 images (so 1369 image tokens per image, as for the real model). The
weights are random: the demo model's words and the SAE's labels mean nothing clinically.
Every file is a pure function of the seed: same seed, same bytes.
"""

from __future__ import annotations

import copy
import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maira_sae.sae.formats import write_dictionary_learning
from maira_sae.sae.model import MatryoshkaSAE, SaeMetadata
from maira_sae.server.demo.layout import INTERPRETATIONS_FILE, MODEL_FOLDER, SAE_FOLDER, build_once
from maira_sae.server.demo.snapshot import write_snapshot_files, write_weights
from maira_sae.server.demo.tokenizer import (
    filler_token_ids,
)
from maira_sae.server.maira2.checkpoint import build_empty_model
from maira_sae.server.maira2.config import Maira2Config, parse_maira2_config
from maira_sae.server.maira2.image_preprocessing import (
    ImagePreprocessingSettings,
    preprocess_image,
)
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image

RANDOM_DEMO_VERSION = "random demo checkpoint, seed 0"

SAE_LAYER = 15
SAE_EXPANSION = 4
SAE_GROUP_SIZES = (32, 64, 160)  # sums to 4 x 64
SAE_TARGET_L0 = 24  # mean active features per token (image and text weighed equally)
IMAGE_TOKEN_INDEX = 32204
# Tokens a report never contains: <unk>/pad, <s>, </s>, <image>, <prev_im>, <lat_image>.
NEVER_GENERATED = (0, 1, 2, 32204, 32205, 32206)
RESIDUAL_WRITERS = ("o_proj.weight", "down_proj.weight")
_RESIDUAL_WRITE_SCALE = 0.2
_CLINICAL_WORDS = (
    "pacemaker",
    "pleural effusion",
    "cardiomegaly",
    "central venous catheter",
    "endotracheal tube",
    "nasogastric tube",
    "pneumothorax",
    "atelectasis",
    "consolidation",
    "pulmonary oedema",
    "sternotomy wires",
    "interval change since the prior study",
    "the word 'unchanged' in the report",
    "lateral view",
    "hilar enlargement",
    "rib fracture",
)

DEMO_CONFIG: dict[str, Any] = {
    "architectures": ["Maira2ForConditionalGeneration"],
    "auto_map": {
        "AutoConfig": "configuration_maira2.Maira2Config",
        "AutoModelForCausalLM": "modeling_maira2.Maira2ForConditionalGeneration",
        "AutoModelForVision2Seq": "modeling_maira2.Maira2ForConditionalGeneration",
    },
    "hidden_size": 64,
    "ignore_index": -100,
    "image_seq_length": 1369,
    "image_token_index": IMAGE_TOKEN_INDEX,
    "model_type": "maira2",
    "multimodal_projector_bias": True,
    "pad_token_id": 0,
    "projector_hidden_act": "gelu",
    "projector_n_layers": 4,
    "text_config": {
        "model_type": "llama",
        "vocab_size": 32207,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 16,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        # Vicuna's 4096 positions stretched by the linear RoPE factor: room for three images.
        "max_position_embeddings": 6144,
        # The transformers 4.x form, as the released config has it (4.x ignores the 5.x
        # "rope_parameters"; transformers 5 reads this form as the same linear scaling).
        "rope_scaling": {"factor": 1.5, "type": "linear"},
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    },
    "torch_dtype": "float32",
    "vision_config": {
        "model_type": "dinov2",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "mlp_ratio": 4,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "layerscale_value": 1.0,
        "patch_size": 14,
        "image_size": 518,
        "num_channels": 3,
        "qkv_bias": True,
        "use_swiglu_ffn": False,
        "use_mask_token": True,
        "out_features": ["stage2"],
        "out_indices": [2],
        "apply_layernorm": True,
        "reshape_hidden_states": False,
        "torch_dtype": "float32",
    },
    "vision_feature_layer": -1,
    "vision_feature_select_strategy": "default",
}


# The real model's sizes (shared/maira2-facts.md); every other value is the demo's.
FULL_SIZES: dict[str, dict[str, Any]] = {
    "text_config": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
    },
    "vision_config": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "out_features": ["stage12"],
        "out_indices": [12],
    },
}


def full_size_config() -> dict[str, Any]:
    """DEMO_CONFIG at MAIRA-2's real sizes (for benches on a GPU and the tensor-name fixture)."""
    raw = copy.deepcopy(DEMO_CONFIG)
    for section, sizes in FULL_SIZES.items():
        raw[section].update(sizes)
    raw["hidden_size"] = raw["text_config"]["hidden_size"]
    return raw


@dataclass(frozen=True)
class DemoCheckpoint:
    root: Path
    model_dir: Path
    sae_dir: Path
    interpretations_path: Path


def write_demo_checkpoint(root: Path, *, seed: int = 0) -> DemoCheckpoint:
    """Write the demo model, SAE and interpretations under ``root``; same seed, same bytes."""
    root = Path(root)
    generator = torch.Generator().manual_seed(seed)
    config = parse_maira2_config(DEMO_CONFIG, source="demo config")
    model = _random_model(config, generator)

    model_dir = root / MODEL_FOLDER
    write_snapshot_files(model_dir, DEMO_CONFIG, ImagePreprocessingSettings())
    write_weights(model, model_dir)

    sae_dir = root / SAE_FOLDER
    sae = _demo_sae(model, config, generator)
    write_dictionary_learning(sae, sae_dir, lm_name="maira-sae demo (random weights)")
    interpretations_path = root / INTERPRETATIONS_FILE
    _write_interpretations(interpretations_path, sae.d_sae, generator)
    return DemoCheckpoint(root, model_dir, sae_dir, interpretations_path)


def _random_model(
    config: Maira2Config, generator: torch.Generator
) -> Maira2ForConditionalGeneration:
    """Random weights drawn in sorted-name order (so construction order cannot change them).

    Token embeddings are N(0, 1) and the matrices that write into the residual stream are
    scaled down (``_RESIDUAL_WRITE_SCALE``), so a token's identity survives to layer 15 and
    greedy decoding varies instead of collapsing onto one repeated token. Other matrices get
    N(0, 1/fan_in); norm weights and layer scales are 1; biases N(0, 0.02^2).

    A random model would stop whenever ``</s>`` happened to win: the lm_head rows of ``</s>``,
    ``<s>``, ``<unk>`` and the image placeholders are zeroed, so their logit is 0 while the
    best of the other tokens is several standard deviations above it, and generation runs to
    ``max_new_tokens``. The rows of the tokenizer's filler pieces (``<unusedN>``, which only
    pad the demo vocabulary to Llama's 32000) are zeroed too, so the random model writes
    random word pieces rather than filler names. Both are properties of this demo only.
    """
    model = build_empty_model(config, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            param.copy_(_random_tensor(name, param.shape, generator))
        model.lm_head.weight[[*NEVER_GENERATED, *filler_token_ids()]] = 0.0
    return model.eval()


def _random_tensor(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    if name.endswith("embed_tokens.weight"):
        return torch.randn(shape, generator=generator)
    if len(shape) >= 2:
        scale = _RESIDUAL_WRITE_SCALE if name.endswith(RESIDUAL_WRITERS) else 1.0
        return torch.randn(shape, generator=generator) * scale / math.sqrt(math.prod(shape[1:]))
    if name.endswith(("weight", "lambda1")):
        return torch.ones(shape)
    return torch.randn(shape, generator=generator) * 0.02


def _demo_sae(
    model: Maira2ForConditionalGeneration, config: Maira2Config, generator: torch.Generator
) -> MatryoshkaSAE:
    """An SAE shaped like a trained one, measured on the demo model instead of trained.

    Decoder rows are (noisy, unit-norm) offsets of block 15 outputs from ``b_dec``, half from
    image tokens and half from text tokens, so both kinds find features that point their way;
    ``W_enc`` is their transpose, scaled by least squares. ``b_dec`` and the threshold weigh
    image and text tokens equally; the threshold is the pre-activation quantile that leaves
    SAE_TARGET_L0 active features per token on average over the two kinds.
    """
    d_sae = SAE_EXPANSION * config.hidden_size
    image, text = _calibration_activations(model, config, generator)
    image = image[torch.randperm(len(image), generator=generator)[: len(text)]]
    b_dec = (image.mean(dim=0) + text.mean(dim=0)) / 2
    half = d_sae // 2
    picks = [
        tokens[torch.randint(len(tokens), (half,), generator=generator)] for tokens in (image, text)
    ]
    offsets = torch.cat(picks) - b_dec
    noise = torch.randn(offsets.shape, generator=generator) * offsets.norm(dim=1, keepdim=True)
    directions = offsets + 0.3 * noise / math.sqrt(config.hidden_size)
    w_dec = (directions / directions.norm(dim=1, keepdim=True))[
        torch.randperm(d_sae, generator=generator)
    ]
    centred = torch.cat([image, text]) - b_dec
    pre = torch.relu(centred @ w_dec.T)
    threshold = torch.quantile(pre.flatten(), 1 - SAE_TARGET_L0 / d_sae).item()
    # One least-squares scale for the encoder (and threshold, so L0 stays put) makes the codes
    # reconstruct the calibration activations as well as these fixed directions can.
    reconstruction = (pre * (pre > threshold)) @ w_dec
    scale = ((centred * reconstruction).sum() / reconstruction.pow(2).sum()).item()
    return MatryoshkaSAE(
        W_enc=scale * w_dec.T,
        b_enc=torch.zeros(d_sae),
        W_dec=w_dec,
        b_dec=b_dec,
        group_sizes=SAE_GROUP_SIZES,
        threshold=scale * threshold,
        metadata=SaeMetadata(
            layer=SAE_LAYER,
            hook_point=None,
            source_format="memory",
            path=None,
            dict_class="MatryoshkaBatchTopKSAE",
            k=SAE_TARGET_L0,
        ),
    )


def _calibration_activations(
    model: Maira2ForConditionalGeneration, config: Maira2Config, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block SAE_LAYER's output on one demo image, laid out like a MAIRA-2 prompt (a short
    text before the image, a longer one after): (image tokens, text tokens without <s>)."""
    pixels = preprocess_image(synthetic_chest_image(), ImagePreprocessingSettings()).pixel_values
    before, after = 25, 80
    text_ids = torch.randint(3, 32000, (before + after,), generator=generator)
    image_ids = torch.full((config.image_seq_length,), config.image_token_index)
    input_ids = torch.cat([torch.tensor([1]), text_ids[:before], image_ids, text_ids[before:]])
    captured: list[torch.Tensor] = []

    def capture(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)

    handle = model.decoder_layers[SAE_LAYER].register_forward_hook(capture)
    try:
        with torch.no_grad():
            model(input_ids=input_ids[None], pixel_values=pixels[None])
    finally:
        handle.remove()
    hidden = captured[0][0]
    is_image = input_ids == config.image_token_index
    return hidden[is_image], hidden[~is_image][1:]


def _write_interpretations(path: Path, d_sae: int, generator: torch.Generator) -> None:
    """Labels for four features in five (so unlabelled ones exist), plainly marked as demo."""
    scores = torch.rand(d_sae, generator=generator)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["feature", "explanation", "score"])
        for feature in range(d_sae):
            if feature % 5 == 4:
                continue
            word = _CLINICAL_WORDS[feature % len(_CLINICAL_WORDS)]
            label = f"DEMO label (random model, not clinical): {word}"
            writer.writerow([feature, label, f"{0.1 + 0.8 * scores[feature].item():.3f}"])


def ensure_random_demo(folder: Path) -> Path:
    """The random demo checkpoint (seed 0) in ``folder``, written there once."""
    return build_once(folder, RANDOM_DEMO_VERSION, write_demo_checkpoint)
