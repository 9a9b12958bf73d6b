"""The files of a MAIRA-2 snapshot as the hub has them, for the demos: config, generation and
processor configs, tokenizer and chat template, and the sharded weights with their index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from maira_sae.sae.file_modes import with_default_mode
from maira_sae.server.demo.tokenizer import write_chat_template, write_demo_tokenizer
from maira_sae.server.maira2.checkpoint import INDEX_FILE
from maira_sae.server.maira2.image_preprocessing import ImagePreprocessingSettings
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.tensor_names import NameForm, to_disk_name

NUM_SHARDS = 2
GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
# [assumed] MAIRA-2's processor settings: one <image> expands to (518 / 14)^2 + 1 - 1 tokens.
PROCESSOR_CONFIG = {
    "processor_class": "Maira2Processor",
    "auto_map": {"AutoProcessor": "processing_maira2.Maira2Processor"},
    "image_token": "<image>",
    "num_additional_image_tokens": 1,
    "patch_size": 14,
    "vision_feature_select_strategy": "default",
}


def write_snapshot_files(
    folder: Path, config: dict[str, Any], preprocessing: ImagePreprocessingSettings
) -> None:
    """Everything of a MAIRA-2 snapshot but the weights: config, generation and processor
    configs, the demo tokenizer and the chat template."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", config)
    _write_json(folder / "generation_config.json", GENERATION_CONFIG)
    _write_json(folder / "preprocessor_config.json", preprocessing.to_json_dict())
    _write_json(folder / "processor_config.json", PROCESSOR_CONFIG)
    write_demo_tokenizer(folder)
    write_chat_template(folder)


def write_weights(
    model: Maira2ForConditionalGeneration,
    folder: Path,
    *,
    dtype: torch.dtype | None = None,
    names: NameForm = NameForm.TRANSFORMERS_4,
) -> None:
    """On-disk names (spelt as the released snapshot spells them, unless ``names`` says
    otherwise), split in order into NUM_SHARDS files of about equal size, plus the index;
    ``dtype`` converts the tensors (default: as they are)."""
    tensors = {
        to_disk_name(name, names): t.to(dtype or t.dtype).contiguous()
        for name, t in model.state_dict().items()
    }
    ordered = sorted(tensors)
    total_size = sum(t.numel() * t.element_size() for t in tensors.values())
    file_names = [f"model-{i + 1:05d}-of-{NUM_SHARDS:05d}.safetensors" for i in range(NUM_SHARDS)]
    weight_map: dict[str, str] = {}
    written = 0
    for name in ordered:
        shard = min(written * NUM_SHARDS // total_size, NUM_SHARDS - 1)
        weight_map[name] = file_names[shard]
        written += tensors[name].numel() * tensors[name].element_size()
    for file_name in file_names:
        shard_tensors = {n: tensors[n] for n in ordered if weight_map[n] == file_name}
        save_file(shard_tensors, folder / file_name, metadata={"format": "pt"})
        with_default_mode(folder / file_name)
    _write_json(
        folder / INDEX_FILE, {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    )


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
