"""Load what the server serves, as the config says: MAIRA-2, its processor and the SAEs.

Every file problem surfaces as one ``StartupError`` whose message names the file and the
problem, so ``serve`` can exit with one clear line. For ``serve --demo`` the command line has
already put the demo's folders into the config (``server/cli.py``); ``model.demo`` only names
the model as the demo in GetInfo.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

import maira_sae
from maira_sae.sae.catalogue import FeatureCatalogue
from maira_sae.sae.dashboard import DEFAULT_FOLDER as DEFAULT_DASHBOARD_FOLDER
from maira_sae.sae.formats import SaeFormatError, load_sae
from maira_sae.server.engine.dashboard_source import DashboardSource
from maira_sae.server.engine.decode_sizing import DecodeSizing, RowLimits, size_decode
from maira_sae.server.engine.engine import Engine, SaeEntry
from maira_sae.server.engine.schedule import BatchLimits
from maira_sae.server.engine.token_limits import TokenLimits
from maira_sae.server.maira2.checkpoint import (
    load_maira2,
    resolve_device,
    resolve_dtype,
    resolve_snapshot,
    validate_sae_for_model,
)
from maira_sae.server.maira2.config import CheckpointError, ImageFeatures, Maira2Config
from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
from maira_sae.server.maira2.processor import Maira2Processor
from maira_sae.server.service.config import SaeSpec, ServerConfig
from maira_sae.server.service.descriptions import ModelDescription, SaeDescription
from maira_sae.server.service.metrics import Metrics

log = logging.getLogger(__name__)

DEMO_MODEL_NAME = "maira-sae synthetic world demo (tiny trained MAIRA-2-shaped model; not clinical)"


class StartupError(Exception):
    """The server cannot start: a file is missing, corrupt or does not fit the model."""


@dataclass(frozen=True)
class Runtime:
    engine: Engine
    decode_limits: BatchLimits  # the batching settings, bounded by the accelerator's memory
    model: ModelDescription
    saes: tuple[SaeDescription, ...]
    versions: dict[str, str]


def load_runtime(config: ServerConfig, metrics: Metrics) -> Runtime:
    model_path, sae_specs = _what_to_load(config)
    device = resolve_device(config.model.device)
    try:
        started = time.perf_counter()
        loaded = load_maira2(
            model_path,
            device=device,
            dtype=resolve_dtype(config.model.dtype),
            image_features=ImageFeatures(config.model.image_features),
        )
        metrics.model_loaded(time.perf_counter() - started)
        maira = loaded.config
        processor = Maira2Processor.for_model(loaded.snapshot_dir, maira)
        entries = [_load_sae(spec, maira, device, metrics) for spec in sae_specs]
    except (CheckpointError, SaeFormatError, OSError, ValueError) as error:
        raise StartupError(str(error)) from error
    token_limits = TokenLimits.resolve(
        max_prompt_tokens=config.limits.max_prompt_tokens,
        max_sequence_tokens=config.limits.max_sequence_tokens,
        context_length=maira.text.max_position_embeddings,
        max_activation_text_tokens=config.limits.max_activation_text_tokens,
    )
    decode = _size_decode(config, loaded.model, token_limits)
    engine = Engine(
        loaded.model,
        processor,
        entries,
        default_sae_id=config.resolved_default_sae_id or None,
        token_limits=token_limits,
        static_decode=decode.static,
    )
    rows, cols = maira.patch_grid
    return Runtime(
        engine=engine,
        decode_limits=decode.limits,
        model=ModelDescription(
            name=DEMO_MODEL_NAME if config.model.demo else "MAIRA-2",
            path=str(loaded.snapshot_dir),
            dtype=str(loaded.model.dtype).removeprefix("torch."),
            device=str(device),
            num_layers=maira.num_text_layers,
            hidden_size=maira.hidden_size,
            image_tokens_per_image=maira.image_seq_length,
            patch_grid_rows=rows,
            patch_grid_cols=cols,
            demo=config.model.demo,
            image_features=maira.image_features.value,
        ),
        saes=tuple(_describe(entry) for entry in entries),
        versions={
            "maira_sae": maira_sae.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    )


def _size_decode(
    config: ServerConfig, model: Maira2ForConditionalGeneration, token_limits: TokenLimits
) -> DecodeSizing:
    batching = config.batching
    requested = BatchLimits(
        max_rows=batching.max_decode_rows,
        max_kv_positions=batching.max_kv_positions,
        prefill_token_budget=batching.prefill_token_budget,
        short_call_rows=batching.short_call_rows,
        long_call_tokens=batching.long_call_tokens,
    )
    rows = RowLimits(
        max_prompt_tokens=token_limits.max_prompt_tokens,
        max_new_tokens=config.limits.max_new_tokens,
        max_sequence_tokens=token_limits.max_sequence_tokens,
        rows_per_call=config.limits.max_variants,
        interventions_per_row=config.limits.max_interventions_per_variant,
    )
    try:
        decode = size_decode(
            requested,
            model,
            setting=batching.decode_setting,
            rows=rows,
            memory_fraction=batching.kv_memory_fraction,
        )
    except ValueError as error:
        raise StartupError(str(error)) from error
    if decode.warning is not None:
        log.warning(json.dumps({"event": "static_decode_off_cuda", "warning": decode.warning}))
    if decode.limits != requested:
        log.info(json.dumps({"event": "decode_limits", **vars(decode.limits)}))
    return decode


def _what_to_load(config: ServerConfig) -> tuple[str, tuple[SaeSpec, ...]]:
    if not config.model.path and config.model.demo:
        raise StartupError(
            "model.demo without a model.path: `maira-sae-server serve` materialises the demo"
            " (server/cli.py with_demo); a server started in code needs with_demo(config)"
        )
    if not config.model.path:
        raise StartupError("no model: set model.path (a MAIRA-2 folder or hub id) or model.demo")
    if not config.saes:
        raise StartupError("no SAE: configure at least one [[saes]] entry (id and path)")
    return config.model.path, config.saes


def _load_sae(
    spec: SaeSpec, maira: Maira2Config, device: torch.device, metrics: Metrics
) -> SaeEntry:
    started = time.perf_counter()
    folder = _sae_folder(spec.path)
    sae = load_sae(
        folder,
        device=device,
        threshold=spec.threshold,
        layer=spec.layer,
        input_scale=spec.input_scale,
    )
    layer = sae.metadata.layer
    if layer is None:
        raise StartupError(
            f"SAE {spec.id!r} ({spec.path}): its files name no layer; set saes.layer"
        )
    validate_sae_for_model(sae.d_model, layer, maira)
    catalogue = (
        FeatureCatalogue.from_file(
            spec.interpretations_path,
            feature_column=spec.feature_column,
            explanation_column=spec.label_column,
            score_column=spec.score_column,
        )
        if spec.interpretations_path is not None
        else FeatureCatalogue.empty()
    )
    beyond = [feature for feature in catalogue.features() if feature >= sae.d_sae]
    if beyond:
        raise StartupError(
            f"{spec.interpretations_path}: features {beyond[:5]} are out of range: SAE "
            f"{spec.id!r} has features 0..{sae.d_sae - 1}"
        )
    dashboard = _load_dashboard(spec, folder, sae.d_sae)
    metrics.sae_loaded(spec.id, time.perf_counter() - started)
    return SaeEntry(sae_id=spec.id, sae=sae, catalogue=catalogue, layer=layer, dashboard=dashboard)


def _load_dashboard(spec: SaeSpec, sae_folder: Path, d_sae: int) -> DashboardSource:
    """The configured dashboard folder (which must load now), else the SAE folder's (which must
    load now if it holds one); either is read again when build-dashboard rewrites it."""
    source = DashboardSource(
        spec.id,
        spec.dashboard_path or sae_folder / DEFAULT_DASHBOARD_FOLDER,
        d_sae,
        configured=spec.dashboard_path is not None,
    )
    try:
        source.load_at_start()
    except ValueError as error:
        raise StartupError(str(error)) from error
    return source


def _sae_folder(path: Path) -> Path:
    """A local folder, or "owner/name[/sub/folder]" on the hub (the SAE repo holds several)."""
    if path.exists():
        return path
    parts = path.as_posix().split("/")
    if len(parts) < 2:
        raise StartupError(f"SAE path {path} does not exist")
    subfolder = "/".join(parts[2:])
    patterns = [f"{subfolder}/*" if subfolder else "*", "*.csv", "*.jsonl"]
    return resolve_snapshot("/".join(parts[:2]), allow_patterns=patterns).joinpath(*parts[2:])


def _describe(entry: SaeEntry) -> SaeDescription:
    sae = entry.sae
    return SaeDescription(
        id=entry.sae_id,
        layer=entry.layer,
        hook_point=sae.metadata.hook_point or f"model.language_model.layers.{entry.layer}",
        d_model=sae.d_model,
        d_sae=sae.d_sae,
        group_sizes=sae.group_sizes,
        num_interpretations=len(entry.catalogue),
        source_format=sae.metadata.source_format,
    )
