"""Load a MAIRA-2 snapshot (a local folder or a hub id) into ``Maira2ForConditionalGeneration``.

Only JSON and safetensors are read from a snapshot: no pickle, no remote code. The weights are
checked against the model from their headers alone (names, shapes, shards) before any tensor
data is read, and every mismatch is refused with names, because a partial load would serve a
model with uninitialised weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from safetensors import SafetensorError, safe_open
from transformers import GenerationConfig
from transformers.initialization import no_init_weights

from maira_sae.server.maira2.config import (
    CheckpointError,
    ImageFeatures,
    Maira2Config,
    read_maira2_config,
)
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.tensor_names import (
    NameForm,
    TensorNameError,
    name_form,
    to_disk_name,
    to_memory_name,
)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Files a snapshot download fetches: never code, never pickled weights.
_HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]


@dataclass(frozen=True)
class LoadedMaira2:
    model: Maira2ForConditionalGeneration  # in eval mode
    config: Maira2Config
    snapshot_dir: Path


def build_empty_model(
    config: Maira2Config, *, device: str | torch.device, dtype: torch.dtype
) -> Maira2ForConditionalGeneration:
    """The model with allocated but uninitialised weights (no random init of 7 B parameters).

    Non-persistent buffers (RoPE frequencies) are computed as usual, so this works on any real
    device; on "meta" it gives shapes for free.
    """
    with no_init_weights(), _default_dtype(dtype), torch.device(device):
        return Maira2ForConditionalGeneration(config.llava)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def expected_tensor_shapes(
    config: Maira2Config, form: NameForm = NameForm.TRANSFORMERS_4
) -> dict[str, tuple[int, ...]]:
    """On-disk tensor name (spelt as ``form``) -> shape, for a checkpoint of this config."""
    model = build_empty_model(config, device="meta", dtype=torch.float32)
    return {to_disk_name(name, form): tuple(t.shape) for name, t in model.state_dict().items()}


def expected_tensor_names(
    config: Maira2Config, form: NameForm = NameForm.TRANSFORMERS_4
) -> set[str]:
    """On-disk tensor names: text 1 + 9·L + 2, vision 5 + 18·L_vis + 2, projector 2·n."""
    return set(expected_tensor_shapes(config, form))


def resolve_snapshot(
    path_or_hub_id: str, *, allow_patterns: Sequence[str] = _HUB_ALLOW_PATTERNS
) -> Path:
    """A local folder as is; an "owner/name" hub id through the local hub cache or a download
    (``HF_TOKEN`` from the environment: MAIRA-2 is gated) of the files ``allow_patterns``
    match."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if not _HUB_ID.match(path_or_hub_id):
        raise CheckpointError(
            f"{path_or_hub_id!r} is neither an existing folder nor a hub id like 'owner/name'"
        )
    try:
        folder = snapshot_download(
            path_or_hub_id, token=os.environ.get("HF_TOKEN"), allow_patterns=list(allow_patterns)
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        raise CheckpointError(
            f"cannot fetch {path_or_hub_id!r} from the Hugging Face hub ({type(e).__name__}: "
            f"{e}). Offline (HF_HUB_OFFLINE) or gated repositories need the snapshot in the "
            f"local cache, or HF_TOKEN of an account that accepted the licence; or pass a "
            f"local folder instead."
        ) from e
    return Path(folder)


def resolve_device(name: str) -> torch.device:
    """A device setting: "auto" is CUDA when available, else the CPU; any other name as torch
    reads it ("cpu", "cuda:1")."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype | None:
    """A dtype setting: "auto" is None (``load_maira2``'s default), else ``torch.<name>``."""
    return None if name == "auto" else getattr(torch, name)


def load_maira2(
    path_or_hub_id: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    image_features: ImageFeatures = ImageFeatures.FEATURE_MAPS,
) -> LoadedMaira2:
    """Load, check and return MAIRA-2 in eval mode; dtype defaults to bf16 on CUDA, else fp32.
    Tensor names may be spelt as transformers 4.x or 5.x wrote them (``tensor_names``)."""
    snapshot = resolve_snapshot(path_or_hub_id)
    config = read_maira2_config(snapshot / "config.json", image_features=image_features)
    shards = _tensor_shards(snapshot)
    _check_tensors(snapshot, shards, config)

    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_empty_model(config, device=device, dtype=dtype)
    state = model.state_dict()
    with torch.no_grad():
        for shard, names in shards.items():
            with _open_safetensors(shard, device=str(device)) as f:
                for name in names:
                    state[to_memory_name(name)].copy_(f.get_tensor(name))
    if (snapshot / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(snapshot)
    return LoadedMaira2(model=model.eval(), config=config, snapshot_dir=snapshot)


@contextlib.contextmanager
def _open_safetensors(path: Path, device: str = "cpu") -> Iterator[Any]:
    """``safe_open``, with a damaged file (bad header, truncated data) reported as a
    CheckpointError that names it."""
    try:
        with safe_open(path, framework="pt", device=device) as f:
            yield f
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def _tensor_shards(snapshot: Path) -> dict[Path, list[str]]:
    """Shard file -> on-disk tensor names it holds, from the index (or the one file)."""
    index_path = snapshot / INDEX_FILE
    if not index_path.is_file():
        single = snapshot / SINGLE_FILE
        if not single.is_file():
            raise CheckpointError(
                f"{snapshot}: neither {INDEX_FILE} nor {SINGLE_FILE} (only safetensors weights "
                f"are loaded; pickled .bin files never are)"
            )
        with _open_safetensors(single) as f:
            return {single: list(f.keys())}
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{index_path}: not a safetensors index with a weight_map: {e}"
        ) from e
    shards: dict[Path, list[str]] = {}
    for name, file_name in weight_map.items():
        shards.setdefault(snapshot / file_name, []).append(name)
    missing = sorted(shard.name for shard in shards if not shard.is_file())
    if missing:
        raise CheckpointError(f"{index_path}: shard(s) listed in the index are missing: {missing}")
    return shards


def tensor_name_form(snapshot: Path, names: list[str]) -> NameForm:
    """The spelling of a checkpoint's tensor names (the 4.x one when it has no vision
    attention to tell them apart); a checkpoint that mixes both is refused."""
    try:
        return name_form(names) or NameForm.TRANSFORMERS_4
    except TensorNameError as e:
        raise CheckpointError(f"{snapshot}: {e.args[0]}") from e


def _check_tensors(snapshot: Path, shards: dict[Path, list[str]], config: Maira2Config) -> None:
    """Refuse a checkpoint whose tensors (read from the shard headers) differ from the model,
    in either name spelling."""
    found: dict[str, tuple[int, ...]] = {}
    shard_of: dict[str, Path] = {}
    for shard, names in shards.items():
        with _open_safetensors(shard) as f:
            in_shard = set(f.keys())
            absent = [name for name in names if name not in in_shard]
            if absent:
                raise CheckpointError(
                    f"{shard}: the index places {len(absent)} tensor(s) here that the file "
                    f"lacks, e.g. {absent[:3]}"
                )
            for name in names:
                found[name] = tuple(f.get_slice(name).get_shape())
                shard_of[name] = shard
    form = tensor_name_form(snapshot, list(found))
    expected = expected_tensor_shapes(config, form)

    missing = expected.keys() - found.keys()
    if missing:
        raise CheckpointError(
            f"{snapshot}: missing {len(missing)} tensor(s) of a MAIRA-2 checkpoint with "
            f"{form.value} names, e.g. {sorted(missing)[:5]}"
        )
    unexpected = sorted(found.keys() - expected.keys())
    if unexpected:
        where = ", ".join(f"{name} in {shard_of[name].name}" for name in unexpected[:5])
        raise CheckpointError(
            f"{snapshot}: unexpected {len(unexpected)} tensor(s), which no MAIRA-2 module has "
            f"({form.value} names), e.g. {where}"
        )
    for name, shape in sorted(found.items()):
        if shape != expected[name]:
            raise CheckpointError(
                f"{shard_of[name]}: tensor {name} has shape {list(shape)}, expected "
                f"{list(expected[name])} for this config"
            )


def validate_sae_for_model(sae_d_model: int, sae_layer: int, config: Maira2Config) -> None:
    """Refuse an SAE that cannot read this model's residual stream.

    ``sae_layer`` is a 0-based decoder block index; "layer 15" is the output of block 15.
    """
    if sae_d_model != config.hidden_size:
        raise CheckpointError(
            f"SAE d_model {sae_d_model} does not match the model's hidden size {config.hidden_size}"
        )
    if not 0 <= sae_layer < config.num_text_layers:
        raise CheckpointError(
            f"SAE layer {sae_layer} does not exist: the model has decoder blocks "
            f"0..{config.num_text_layers - 1}"
        )
