"""Will this snapshot load? Answered from its small files alone, before the 27 GB of weights.

``check_snapshot`` reads config.json, the safetensors index (or one file's header), the
tokenizer files, the chat template and preprocessor_config.json, and runs the same checks the
loader and the processor run on them. Each finding is ``ok``, a ``warning`` (it loads, but
differs from the released MAIRA-2 or from the original code's reading) or an ``error`` (the
server will refuse it). What it cannot see: tensor shapes and data (checked at load from the
shard headers) and whether the SAEs were trained on this model.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from safetensors import SafetensorError, safe_open

from maira_sae.server.maira2.checkpoint import (
    INDEX_FILE,
    SINGLE_FILE,
    expected_tensor_names,
    resolve_snapshot,
)
from maira_sae.server.maira2.config import CheckpointError, Maira2Config, read_maira2_config
from maira_sae.server.maira2.processor import IMAGE_TOKEN, Maira2Processor
from maira_sae.server.maira2.tensor_names import NameForm, TensorNameError, name_form
from maira_sae.server.maira2.tokenizer_files import (
    CHAT_TEMPLATE_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    chat_templates,
    read_tokenizer_config,
)

# What a preflight downloads of a hub snapshot: never weights, never code.
PREFLIGHT_FILES = [
    "config.json",
    INDEX_FILE,
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    CHAT_TEMPLATE_FILE,
    "special_tokens_map.json",
    "added_tokens.json",
    "preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
]
IMAGES_PER_PROMPT = 3  # frontal, lateral, prior
PROMPT_TEXT_TOKENS = 300  # about: the instruction and sections of a findings prompt


class Level(enum.Enum):
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Finding:
    topic: str
    level: Level
    detail: str


@dataclass(frozen=True)
class PreflightReport:
    snapshot: Path
    findings: tuple[Finding, ...]

    @property
    def will_load(self) -> bool:
        return all(finding.level is not Level.ERROR for finding in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot": str(self.snapshot),
            "will_load": self.will_load,
            "findings": [
                {"topic": f.topic, "level": f.level.value, "detail": f.detail}
                for f in self.findings
            ],
        }


def check_snapshot(path_or_hub_id: str) -> PreflightReport:
    """The findings for a local folder, or a hub id (only ``PREFLIGHT_FILES`` downloaded)."""
    is_local = Path(path_or_hub_id).expanduser().is_dir()
    snapshot = resolve_snapshot(path_or_hub_id, allow_patterns=PREFLIGHT_FILES)
    findings: list[Finding] = []
    config = _checked(findings, "config", lambda: _config_finding(snapshot))
    findings.append(_rope_finding(snapshot))
    if config is not None:
        findings.append(_tensor_names_finding(snapshot, config))
        findings.append(_image_tokens_finding(config))
    findings.append(
        _local_shards_finding(snapshot)
        if is_local
        else _hub_shards_finding(snapshot, path_or_hub_id)
    )
    findings.append(_chat_template_finding(snapshot))
    findings.append(_tokenizer_finding(snapshot))
    if config is not None:
        _checked(findings, "processor", lambda: _processor_finding(snapshot, config))
    return PreflightReport(snapshot, tuple(findings))


def _checked(findings: list[Finding], topic: str, check: Callable[[], tuple[Finding, Any]]) -> Any:
    """Run a check that returns (finding, value); a refusal becomes an error finding."""
    try:
        finding, value = check()
    except (CheckpointError, ValueError, OSError) as error:
        findings.append(Finding(topic, Level.ERROR, str(error)))
        return None
    findings.append(finding)
    return value


def _config_finding(snapshot: Path) -> tuple[Finding, Maira2Config]:
    config = read_maira2_config(snapshot / "config.json")
    text, vision = config.text, config.vision
    detail = (
        f"MAIRA-2: Llama {text.num_hidden_layers} x {text.hidden_size} (vocab "
        f"{text.vocab_size}), Dinov2 {vision.num_hidden_layers} x {vision.hidden_size} on "
        f"{vision.image_size} px images, a {config.projector_n_layers}-layer projector"
    )
    return Finding("config", Level.OK, detail), config


def _rope_finding(snapshot: Path) -> Finding:
    try:
        raw = json.loads((snapshot / "config.json").read_text(encoding="utf-8"))
        text = raw["text_config"]
    except (OSError, ValueError, KeyError, TypeError):
        return Finding("RoPE", Level.ERROR, "config.json has no readable text_config")
    scaling, parameters = text.get("rope_scaling"), text.get("rope_parameters")
    if isinstance(scaling, dict):
        kind = scaling.get("rope_type", scaling.get("type"))
        theta = text.get("rope_theta", "the default 10000")
        return Finding(
            "RoPE",
            Level.OK,
            f"transformers 4.x form (rope_scaling): {kind}, factor {scaling.get('factor')}, "
            f"rope_theta {theta}; transformers 5 reads it the same",
        )
    if isinstance(parameters, dict):
        return Finding(
            "RoPE",
            Level.WARNING,
            f"transformers 5.x form only (rope_parameters: {parameters.get('rope_type')}, "
            f"factor {parameters.get('factor')}); this server reads it, but transformers 4.x "
            "(the original MAIRA-2 code) ignores it and would compute other logits",
        )
    return Finding(
        "RoPE", Level.WARNING, "no RoPE scaling: the released MAIRA-2 has linear scaling x1.5"
    )


def _tensor_names_finding(snapshot: Path, config: Maira2Config) -> Finding:
    try:
        names, files = _listed_tensors(snapshot)
        form = name_form(names) or NameForm.TRANSFORMERS_4
    except (CheckpointError, TensorNameError) as error:
        return Finding("tensor names", Level.ERROR, str(error.args[0]))
    expected = expected_tensor_names(config, form)
    missing, unexpected = sorted(expected - set(names)), sorted(set(names) - expected)
    if missing or unexpected:
        parts = [f"{len(missing)} missing, e.g. {missing[:3]}"] if missing else []
        parts += [f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}"] if unexpected else []
        return Finding("tensor names", Level.ERROR, f"{form.value} names: " + "; ".join(parts))
    level = Level.OK if form is NameForm.TRANSFORMERS_4 else Level.WARNING
    note = "" if level is Level.OK else " (loads; the released snapshot has the 4.x names)"
    return Finding(
        "tensor names",
        level,
        f"{form.value} names, all {len(names)} of this config in {files} file(s){note}; "
        "shapes and data are checked at load",
    )


def _listed_tensors(snapshot: Path) -> tuple[list[str], int]:
    """Tensor names from the index, else from the one file's header (no tensor data read)."""
    shards = _shard_tensors(snapshot)
    if (snapshot / INDEX_FILE).is_file():
        return [name for tensors in shards.values() for name in tensors], len(shards)
    single = snapshot / SINGLE_FILE
    if not single.is_file():
        raise CheckpointError(f"{snapshot}: neither {INDEX_FILE} nor {SINGLE_FILE}")
    try:
        with safe_open(single, framework="pt") as f:
            return list(f.keys()), 1
    except SafetensorError as error:
        raise CheckpointError(f"{single}: not a readable safetensors file ({error})") from error


def _shard_tensors(snapshot: Path) -> dict[str, list[str]]:
    """Each weight file the snapshot names (the index's shards, else the single file) -> the
    tensors it should hold."""
    index = snapshot / INDEX_FILE
    if not index.is_file():
        return {SINGLE_FILE: []}
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards: dict[str, list[str]] = {}
        for tensor, shard in weight_map.items():
            shards.setdefault(str(shard), []).append(str(tensor))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{index}: not a safetensors index: {error}") from error
    return shards


def _local_shards_finding(snapshot: Path) -> Finding:
    """Every weight file present, its header readable and covering the file, and holding the
    tensors the index puts in it; no tensor data is read."""
    try:
        shards = _shard_tensors(snapshot)
    except CheckpointError as error:
        return Finding("weight files", Level.ERROR, str(error))
    problems = []
    total = 0
    for name, tensors in sorted(shards.items()):
        path = snapshot / name
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        try:
            with safe_open(path, framework="pt") as f:
                held = set(f.keys())
        except SafetensorError as error:
            problems.append(f"{path}: not a whole safetensors file ({error})")
            continue
        absent = sorted(set(tensors) - held)
        if absent:
            problems.append(f"{path}: lacks {len(absent)} indexed tensor(s), e.g. {absent[:3]}")
        total += path.stat().st_size
    if problems:
        return Finding("weight files", Level.ERROR, "; ".join(problems))
    return Finding(
        "weight files",
        Level.OK,
        f"{len(shards)} file(s), {total / 2**30:.2f} GiB, each header whole and holding the "
        "indexed tensors (tensor data is read at load)",
    )


def _hub_shards_finding(snapshot: Path, hub_id: str) -> Finding:
    """For a hub snapshot the weights are not downloaded: the hub is asked for their sizes."""
    try:
        shards = _shard_tensors(snapshot)
    except CheckpointError as error:
        return Finding("weight files", Level.ERROR, str(error))
    try:
        listed = HfApi(token=os.environ.get("HF_TOKEN")).get_paths_info(hub_id, sorted(shards))
    except (HfHubHTTPError, OSError, ValueError) as error:
        return Finding(
            "weight files",
            Level.WARNING,
            f"could not ask the hub for the weight files ({type(error).__name__}); "
            "they are checked at load",
        )
    sizes = {item.path: getattr(item, "size", None) for item in listed}
    missing = [name for name in sorted(shards) if not sizes.get(name)]
    if missing:
        return Finding(
            "weight files", Level.ERROR, f"{hub_id} lacks (or has empty) {', '.join(missing)}"
        )
    total = sum(size or 0 for size in sizes.values())
    return Finding(
        "weight files",
        Level.OK,
        f"{len(shards)} file(s) on the hub, {total / 2**30:.2f} GiB (sizes only: headers and "
        "data are checked at load)",
    )


def _image_tokens_finding(config: Maira2Config) -> Finding:
    rows, cols = config.patch_grid
    three_images = IMAGES_PER_PROMPT * config.image_seq_length + PROMPT_TEXT_TOKENS
    context = config.text.max_position_embeddings
    notes = [] if config.image_seq_length == 1369 else ["the released model has 1369"]
    if three_images > context:
        notes.append(
            f"a three-image study (about {three_images} tokens) exceeds the context length "
            f"{context} (text_config.max_position_embeddings) that limits.max_prompt_tokens "
            "defaults to: set that limit if the model takes such studies"
        )
    return Finding(
        "image tokens",
        Level.WARNING if notes else Level.OK,
        f"{config.image_seq_length} per image ({rows} x {cols} patches); about {three_images} "
        f"for a study with three images, within the context length {context}"
        if not notes
        else f"{config.image_seq_length} per image ({rows} x {cols} patches); " + "; ".join(notes),
    )


def _chat_template_finding(snapshot: Path) -> Finding:
    try:
        templates = chat_templates(snapshot)
    except CheckpointError as error:
        return Finding("chat template", Level.ERROR, str(error))
    if not templates:
        return Finding(
            "chat template",
            Level.ERROR,
            f"none: neither {TOKENIZER_CONFIG_FILE} nor {CHAT_TEMPLATE_FILE} has one",
        )
    where = " and ".join(templates)
    if len(set(templates.values())) > 1:
        return Finding(
            "chat template",
            Level.WARNING,
            f"in {where}, and they differ: the {TOKENIZER_CONFIG_FILE} one is used, as the "
            "original did",
        )
    return Finding("chat template", Level.OK, f"in {where}")


def _tokenizer_finding(snapshot: Path) -> Finding:
    path = snapshot / TOKENIZER_FILE
    if not path.is_file():
        return Finding(
            "tokenizer",
            Level.ERROR,
            f"no {TOKENIZER_FILE} (the original ran it; tokenizer.model alone is refused)",
        )
    try:
        pipeline = json.loads(path.read_text(encoding="utf-8"))
        config = read_tokenizer_config(snapshot)
    except (OSError, ValueError, CheckpointError) as error:
        return Finding("tokenizer", Level.ERROR, f"{path}: {error}")
    bos = bool(config.get("add_bos_token", True))
    eos = bool(config.get("add_eos_token", False))
    detail = (
        f"{TOKENIZER_FILE} as serialized: normalizer {_component(pipeline, 'normalizer')}, "
        f"pre-tokenizer {_component(pipeline, 'pre_tokenizer')}, decoder "
        f"{_component(pipeline, 'decoder')}; legacy {config.get('legacy', 'unset')} (only "
        f"matters when converting tokenizer.model); post-processor rebuilt as 4.x did from "
        f"add_bos_token {bos} and add_eos_token {eos} (the file's: "
        f"{_component(pipeline, 'post_processor')})"
    )
    return Finding("tokenizer", Level.OK, detail)


def _component(pipeline: dict[str, Any], key: str) -> str:
    part = pipeline.get(key)
    if not isinstance(part, dict):
        return "none"
    inner = part.get("normalizers") or part.get("pretokenizers") or part.get("decoders")
    if isinstance(inner, list):
        return f"{part.get('type')}[{', '.join(str(p.get('type')) for p in inner)}]"
    return str(part.get("type"))


def _processor_finding(snapshot: Path, config: Maira2Config) -> tuple[Finding, None]:
    """Build the processor as the server does: the tokenizer, the template's image markup, the
    injection guard, the image token id and preprocessing all checked."""
    processor = Maira2Processor.for_model(snapshot, config)
    detail = (
        f"builds: {IMAGE_TOKEN} at id {config.image_token_index}, eos id "
        f"{processor.eos_token_id}, pad id {processor.pad_token_id}; typed special tokens stay "
        "text (the original would turn a typed <image> into an image slot and fail)"
    )
    return Finding("processor", Level.OK, detail), None


def format_report(report: PreflightReport) -> str:
    """The report as the ``check-snapshot`` command prints it."""
    width = max(len(finding.topic) for finding in report.findings)
    lines = [f"snapshot {report.snapshot}"]
    lines += [
        f"  {finding.level.value:<8} {finding.topic:<{width}}  {finding.detail}"
        for finding in report.findings
    ]
    verdict = (
        "the server will load this snapshot (tensor shapes and data are checked at load)"
        if report.will_load
        else "the server will NOT load this snapshot: fix the errors above"
    )
    return "\n".join([*lines, f"verdict: {verdict}"])
