"""SAE checkpoints on disk: dictionary_learning and SAELens folders.

dictionary_learning (what the MAIRA-2 release uses): ``ae.pt``, a torch state dict with
``W_enc`` [d_model, F], ``b_enc``, ``W_dec`` [F, d_model], ``b_dec``, ``k``, ``threshold``
(-1 until training sets it) and ``group_sizes``; plus ``config.json`` whose ``trainer`` object
describes the run. SAELens: ``sae_weights.safetensors`` (per-feature ``threshold`` for JumpReLU)
plus ``cfg.json``; it has no Matryoshka groups, so it loads as a single group.

Files are only ever read as data: ``torch.load(weights_only=True)``, safetensors and JSON.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from maira_sae.sae.model import UNSET_THRESHOLD, MatryoshkaSAE, SaeMetadata

DL_WEIGHTS = "ae.pt"
DL_CONFIG = "config.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_CONFIG = "cfg.json"
WEIGHT_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
DEFAULT_LM_NAME = "microsoft/maira-2"
_HOOK_LAYER = re.compile(r"(?:^|\.)(?:blocks|layers)\.(\d+)(?:\.|$)")


class SaeFormatError(ValueError):
    """An SAE checkpoint is missing, malformed or inconsistent; the message names the file."""


@dataclass(frozen=True)
class _Checkpoint:
    """What a reader found on disk, before caller overrides are applied."""

    weights: dict[str, torch.Tensor]
    group_sizes: list[int]
    threshold: torch.Tensor | None
    top_k: int | None  # a per-token top-k the format itself prescribes (SAELens TopK)
    apply_b_dec_to_input: bool
    metadata: SaeMetadata
    weights_path: Path
    config_path: Path


def load_sae(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    threshold: float | None = None,
    top_k: int | None = None,
    layer: int | None = None,
    input_scale: float = 1.0,
) -> MatryoshkaSAE:
    """Load an SAE folder (or a path to its weights file), detecting the layout.

    Encoding rule, first match wins: the ``threshold`` argument; the ``top_k`` argument; the
    file's threshold (a dictionary_learning threshold of -1, never set, is refused). ``layer``
    fills in a layer the files do not state and must agree with one they do. ``input_scale``
    is a serving setting, not stored in the files. Raises ``SaeFormatError``.
    """
    folder = _folder_of(Path(path))
    checkpoint = _read_checkpoint(folder)
    checkpoint = replace(checkpoint, metadata=_with_layer(checkpoint, layer))
    if threshold is not None:
        rule: dict[str, Any] = {"threshold": threshold, "top_k": None}
    elif top_k is not None:
        rule = {"threshold": None, "top_k": top_k}
    else:
        rule = {"threshold": checkpoint.threshold, "top_k": checkpoint.top_k}
    weights = {name: tensor.to(device) for name, tensor in checkpoint.weights.items()}
    try:
        return MatryoshkaSAE(
            **weights,
            group_sizes=checkpoint.group_sizes,
            input_scale=input_scale,
            metadata=checkpoint.metadata,
            compute_dtype=dtype,
            apply_b_dec_to_input=checkpoint.apply_b_dec_to_input,
            **rule,
        )
    except ValueError as error:
        raise SaeFormatError(f"{checkpoint.weights_path}: {error}") from error


def write_dictionary_learning(
    sae: MatryoshkaSAE,
    folder: str | os.PathLike[str],
    *,
    lm_name: str | None = None,
    submodule_name: str | None = None,
    extra_trainer_config: dict[str, Any] | None = None,
) -> Path:
    """Write ``ae.pt`` and ``config.json`` as ``load_sae`` reads them; returns the folder.

    ``lm_name`` and ``submodule_name`` default to the SAE's metadata. An SAE without a
    threshold is written with threshold -1 when it uses top-k (load it again with ``top_k=``)
    and 0 when it is a plain ReLU SAE (the same code). An SAE that does not subtract ``b_dec``
    before encoding gets it folded into ``b_enc``, which is exact up to rounding. ``input_scale``
    is not stored.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(_dictionary_learning_state(sae), folder / DL_WEIGHTS)
    config = {"trainer": _trainer_config(sae, lm_name, submodule_name, extra_trainer_config)}
    (folder / DL_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder


def _dictionary_learning_state(sae: MatryoshkaSAE) -> dict[str, torch.Tensor]:
    state = {name: getattr(sae, name).detach().cpu().clone() for name in WEIGHT_NAMES}
    if not sae.apply_b_dec_to_input:
        state["b_enc"] = state["b_enc"] + state["b_dec"] @ state["W_enc"]
    if sae.threshold is not None:
        state["threshold"] = sae.threshold.detach().cpu().clone()
    else:
        unset = sae.top_k is not None
        state["threshold"] = torch.tensor(UNSET_THRESHOLD if unset else 0.0, dtype=torch.float32)
    k = sae.metadata.k if sae.metadata.k is not None else sae.top_k
    if k is not None:
        state["k"] = torch.tensor(k, dtype=torch.int)
    state["group_sizes"] = torch.tensor(sae.group_sizes, dtype=torch.long)
    return state


def _trainer_config(
    sae: MatryoshkaSAE,
    lm_name: str | None,
    submodule_name: str | None,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    metadata = sae.metadata
    layer = metadata.layer
    if submodule_name is None and metadata.hook_point is None and layer is not None:
        submodule_name = f"model.language_model.layers.{layer}"
    core = {
        "dict_class": metadata.dict_class or "MatryoshkaBatchTopKSAE",
        "activation_dim": sae.d_model,
        "dict_size": sae.d_sae,
        "k": metadata.k if metadata.k is not None else sae.top_k,
        "group_sizes": list(sae.group_sizes),
        "layer": layer,
        "lm_name": lm_name or metadata.lm_name or DEFAULT_LM_NAME,
        "submodule_name": submodule_name or metadata.hook_point,
    }
    clashes = sorted(set(core) & set(extra or {}))
    if clashes:
        raise ValueError(f"extra_trainer_config may not set {clashes}: they come from the SAE")
    return {**core, **(extra or {})}


def _folder_of(path: Path) -> Path:
    if path.is_file() and path.name in (DL_WEIGHTS, SAELENS_WEIGHTS):
        return path.parent
    if not path.is_dir():
        raise SaeFormatError(f"{path}: no such SAE folder")
    return path


def _read_checkpoint(folder: Path) -> _Checkpoint:
    if (folder / DL_WEIGHTS).exists() or (folder / DL_CONFIG).exists():
        return _read_dictionary_learning(folder)
    if (folder / SAELENS_WEIGHTS).exists() or (folder / SAELENS_CONFIG).exists():
        return _read_saelens(folder)
    found = sorted(child.name for child in folder.iterdir())
    raise SaeFormatError(
        f"{folder}: unknown SAE layout: expected {DL_WEIGHTS} + {DL_CONFIG} (dictionary_learning) "
        f"or {SAELENS_WEIGHTS} + {SAELENS_CONFIG} (SAELens); found {found}"
    )


def _read_dictionary_learning(folder: Path) -> _Checkpoint:
    weights_path, config_path = folder / DL_WEIGHTS, folder / DL_CONFIG
    _require_files(weights_path, config_path)
    trainer = _read_json(config_path).get("trainer")
    if not isinstance(trainer, dict):
        raise SaeFormatError(f"{config_path}: expected a 'trainer' object")
    state = _torch_load(weights_path)
    weights = _take_weights(state, weights_path)
    _check_config_dims(
        weights["W_enc"],
        _config_int(trainer, "activation_dim", config_path),
        _config_int(trainer, "dict_size", config_path),
        weights_path,
        config_path,
    )
    d_sae = weights["W_enc"].shape[-1]
    k = int(state["k"]) if "k" in state else _config_int(trainer, "k", config_path)
    threshold = state.get("threshold", torch.tensor(UNSET_THRESHOLD))
    metadata = SaeMetadata(
        layer=_config_int(trainer, "layer", config_path),
        hook_point=trainer.get("submodule_name"),
        source_format="dictionary_learning",
        path=str(folder),
        lm_name=trainer.get("lm_name"),
        dict_class=trainer.get("dict_class"),
        k=k,
    )
    return _Checkpoint(
        weights=weights,
        group_sizes=_dictionary_learning_groups(state, trainer, d_sae, config_path),
        threshold=threshold,
        top_k=None,
        apply_b_dec_to_input=True,
        metadata=metadata,
        weights_path=weights_path,
        config_path=config_path,
    )


def _dictionary_learning_groups(
    state: dict[str, Any], trainer: dict[str, Any], d_sae: int, config_path: Path
) -> list[int]:
    """Group sizes from the state dict, checked against config.json, else derived from it."""
    from_config = trainer.get("group_sizes")
    if "group_sizes" in state:
        sizes = [int(size) for size in torch.as_tensor(state["group_sizes"]).reshape(-1).tolist()]
        if from_config is not None and list(from_config) != sizes:
            raise SaeFormatError(
                f"{config_path}: group_sizes {from_config} disagree with {sizes} in {DL_WEIGHTS}"
            )
        return sizes
    if from_config is not None:
        return [int(size) for size in from_config]
    fractions = trainer.get("group_fractions")
    if fractions:  # the rule dictionary_learning's Matryoshka trainer uses
        sizes = [int(fraction * d_sae) for fraction in fractions[:-1]]
        return [*sizes, d_sae - sum(sizes)]
    return [d_sae]


def _read_saelens(folder: Path) -> _Checkpoint:
    weights_path, config_path = folder / SAELENS_WEIGHTS, folder / SAELENS_CONFIG
    _require_files(weights_path, config_path)
    cfg = _read_json(config_path)
    try:
        tensors = safetensors.torch.load_file(weights_path, device="cpu")
    except (OSError, safetensors.SafetensorError) as error:
        raise SaeFormatError(f"{weights_path}: not a readable safetensors file: {error}") from error
    weights = _take_weights(tensors, weights_path)
    _check_config_dims(
        weights["W_enc"],
        _config_int(cfg, "d_in", config_path),
        _config_int(cfg, "d_sae", config_path),
        weights_path,
        config_path,
    )
    nested = cfg.get("metadata")  # SAELens 6 moved hook_name and model_name under metadata
    described = {**(nested if isinstance(nested, dict) else {}), **cfg}
    hook_name = described.get("hook_name")
    top_k = None
    if "threshold" not in tensors and cfg.get("architecture") == "topk":
        top_k = _config_int(cfg, "k", config_path)
    metadata = SaeMetadata(
        layer=_saelens_layer(described, config_path),
        hook_point=hook_name,
        source_format="saelens",
        path=str(folder),
        lm_name=described.get("model_name"),
        dict_class=cfg.get("architecture"),
        k=top_k,
    )
    return _Checkpoint(
        weights=weights,
        group_sizes=[weights["W_enc"].shape[-1]],
        threshold=tensors.get("threshold"),
        top_k=top_k,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        metadata=metadata,
        weights_path=weights_path,
        config_path=config_path,
    )


def _saelens_layer(described: dict[str, Any], config_path: Path) -> int | None:
    hook_layer = _config_int(described, "hook_layer", config_path)
    match = _HOOK_LAYER.search(described.get("hook_name") or "")
    parsed = int(match.group(1)) if match else None
    if hook_layer is not None and parsed is not None and hook_layer != parsed:
        raise SaeFormatError(
            f"{config_path}: hook_layer {hook_layer} contradicts hook_name "
            f"{described.get('hook_name')!r}"
        )
    return hook_layer if hook_layer is not None else parsed


def _with_layer(checkpoint: _Checkpoint, layer: int | None) -> SaeMetadata:
    metadata = checkpoint.metadata
    if layer is None:
        return metadata
    if metadata.layer is not None and metadata.layer != layer:
        raise SaeFormatError(
            f"{checkpoint.config_path}: the SAE was trained on layer {metadata.layer}, "
            f"but layer {layer} was requested"
        )
    return replace(metadata, layer=layer)


def _require_files(weights_path: Path, config_path: Path) -> None:
    for path in (weights_path, config_path):
        if not path.is_file():
            raise SaeFormatError(
                f"{path}: missing; this SAE folder needs both {weights_path.name} "
                f"and {config_path.name}"
            )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SaeFormatError(f"{path}: not readable JSON: {error}") from error
    if not isinstance(content, dict):
        raise SaeFormatError(f"{path}: expected a JSON object")
    return content


def _torch_load(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign or unsafe pickles
        raise SaeFormatError(
            f"{path}: not a weights-only torch state dict: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(state, dict):
        raise SaeFormatError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _take_weights(state: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    missing = [name for name in WEIGHT_NAMES if not torch.is_tensor(state.get(name))]
    if missing:
        raise SaeFormatError(f"{path}: missing weight tensors {missing}")
    return {name: state[name] for name in WEIGHT_NAMES}


def _check_config_dims(
    W_enc: torch.Tensor,  # noqa: N803
    d_model: int | None,
    d_sae: int | None,
    weights_path: Path,
    config_path: Path,
) -> None:
    if W_enc.ndim != 2:
        raise SaeFormatError(
            f"{weights_path}: W_enc must be a [d_model, d_sae] matrix, "
            f"got shape {tuple(W_enc.shape)}"
        )
    expected = (
        d_model if d_model is not None else W_enc.shape[0],
        d_sae if d_sae is not None else W_enc.shape[-1],
    )
    if tuple(W_enc.shape) != expected:
        raise SaeFormatError(
            f"{weights_path}: W_enc has shape {tuple(W_enc.shape)}, but {config_path} "
            f"describes [d_model, d_sae] = {list(expected)}"
        )


def _config_int(config: dict[str, Any], key: str, path: Path) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SaeFormatError(f"{path}: {key} must be an integer, got {value!r}")
    return value
