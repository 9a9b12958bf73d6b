"""Feature dashboards: what an SAE's features do over a set of studies, in one columnar file.

A dashboard folder (by default ``dashboard/`` inside the SAE folder) holds two files:

``dashboard.json``
    ``format`` ("maira-sae-dashboard"), ``version`` (1), ``d_sae``, ``layer``, ``study_ids``
    (the studies, in the order their index refers to), ``kinds`` (token kinds, in the order
    ``kind`` codes and ``firing_by_kind`` rows refer to), ``tokens_by_kind`` (tokens seen per
    kind), ``histogram_edges`` (shared bin edges of the activation histograms: 0, then
    log-spaced, then infinity), ``top_k``, ``quantiles`` (the quantiles the lower examples sit
    at), ``grid`` ([rows, cols] of an image's patch grid), ``context`` (text tokens each side
    of a text example), ``has_content`` and ``complete`` (false while a build can resume).

``dashboard.safetensors`` (F = d_sae; empty example slots have value NaN and index -1)
    ``firing_by_kind`` int64 [kinds, F]: tokens of each kind on which each feature fired;
    ``histogram`` int64 [F, bins]: its non-zero activations per bin;
    ``top_*`` [F, top_k] and ``quantile_*`` [F, quantiles]: ``value`` float32, ``study``,
    ``position`` int32, ``kind`` int8, ``image``, ``row``, ``col`` int16 (-1 for text tokens).
    With content only (``has_content``; studies hold patient data, so by default a dashboard
    has ids and positions only): ``*_heatmap`` float16 [F, n, rows, cols] (the feature over the
    example's image), ``*_context_ids`` int32 and ``*_context_values`` float16
    [F, n, 2 * context + 1] (the tokens around a text example, -1 padded) and ``thumbnails``
    uint8 [studies, images, side, side] (each study's films, downscaled; zeros where absent).
    While incomplete it also holds the builder's ``sample_*`` reservoir (``sample_key``
    float32 [F, sample] plus the example fields), from which the quantile examples are drawn.
    Empty slots hold -1 in every field and no content, whatever the build saw before.

A *partial* dashboard is what one shard of a build writes (``build-dashboard --shard I/N``):
the same two files, whose metadata adds ``shard``: ``{"index": I, "count": N, "studies":
[first, end)}`` (the contiguous run of studies it covers; ``studies_done`` counts from the
whole set's start), and whose tensors are the builder's state over those studies: counts,
``top_*`` and the ``sample_*`` reservoir with its keys (the quantile examples are drawn only
once all shards are merged), ``thumbnails`` of its own studies only. Slots are ordered by a
total order (top: value descending, then study, then position; sample: key ascending, then
study, then position), so merging the partials of shards 0..N-1 (``merge-dashboards``) gives
the very files one process writes. ``Dashboard.load`` refuses a partial.

No pickle: JSON and safetensors only. Files get the process's default mode (group-readable
under umask 022), never safetensors' 0600.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from maira_sae.sae.file_modes import with_default_mode

FORMAT = "maira-sae-dashboard"
VERSION = 1
METADATA_FILE = "dashboard.json"
TENSORS_FILE = "dashboard.safetensors"
DEFAULT_FOLDER = "dashboard"
EXAMPLE_FIELDS = ("value", "study", "position", "kind", "image", "row", "col")
SHARD_KEY = "shard"


def histogram_edges(low: float = 1e-3, high: float = 1e4, per_decade: int = 10) -> np.ndarray:
    """0, log-spaced edges from ``low`` to ``high``, then infinity: no value falls outside."""
    decades = round(math.log10(high / low))
    inner = np.logspace(math.log10(low), math.log10(high), decades * per_decade + 1)
    return np.concatenate([[0.0], inner, [np.inf]])


@dataclass(frozen=True)
class Example:
    """One token where a feature fired."""

    study_id: str
    position: int
    kind: str
    value: float
    image_index: int | None
    grid_row: int | None
    grid_col: int | None
    quantile: float | None = None
    heatmap: np.ndarray | None = None  # [rows, cols], with content only
    thumbnail: np.ndarray | None = None  # uint8 [side, side], with content only
    context: tuple[tuple[int, float, bool], ...] = ()  # (token id, value, is the example)


@dataclass(frozen=True)
class FeatureStats:
    """One feature's page of a dashboard."""

    feature: int
    num_studies: int
    num_tokens: int
    density: float
    density_by_kind: dict[str, float]
    histogram_edges: tuple[float, ...]
    histogram_counts: tuple[int, ...]
    top_examples: tuple[Example, ...]
    quantile_examples: tuple[Example, ...]


class Dashboard:
    """A complete dashboard, loaded; ``feature(i)`` reads one feature's page."""

    def __init__(self, metadata: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        self.metadata = metadata
        self._tensors = tensors
        self._study_ids: list[str] = metadata["study_ids"]
        self._kinds: list[str] = metadata["kinds"]

    @classmethod
    def load(cls, folder: Path) -> Dashboard:
        """Read a complete dashboard; ``ValueError`` names the file and the problem."""
        metadata = read_metadata(folder)
        if SHARD_KEY in metadata:
            raise ValueError(
                f"{folder / METADATA_FILE}: the partial dashboard of shard {_shard_name(metadata)};"
                " merge the shards' partials with merge-dashboards"
            )
        if not metadata.get("complete"):
            raise ValueError(f"{folder / METADATA_FILE}: the build is incomplete; resume it")
        try:
            tensors = load_file(str(folder / TENSORS_FILE))
        except (OSError, ValueError) as error:
            raise ValueError(f"{folder / TENSORS_FILE}: {error}") from error
        d_sae = metadata["d_sae"]
        expected = {
            "firing_by_kind": (len(metadata["kinds"]), d_sae),
            "histogram": (d_sae, len(metadata["histogram_edges"]) - 1),
            "top_value": (d_sae, metadata["top_k"]),
            "quantile_value": (d_sae, len(metadata["quantiles"])),
        }
        for name, shape in expected.items():
            if name not in tensors or tensors[name].shape != shape:
                raise ValueError(
                    f"{folder / TENSORS_FILE}: {name!r} is missing or not of shape {shape}"
                )
        return cls(metadata, tensors)

    @property
    def d_sae(self) -> int:
        return int(self.metadata["d_sae"])

    @property
    def has_content(self) -> bool:
        return bool(self.metadata.get("has_content"))

    def feature(self, feature: int) -> FeatureStats:
        tokens_by_kind = self.metadata["tokens_by_kind"]
        firing = self._tensors["firing_by_kind"][:, feature]
        num_tokens = int(sum(tokens_by_kind.values()))
        return FeatureStats(
            feature=feature,
            num_studies=len(self._study_ids),
            num_tokens=num_tokens,
            density=float(firing.sum()) / max(num_tokens, 1),
            density_by_kind={
                kind: float(count) / max(tokens_by_kind[kind], 1)
                for kind, count in zip(self._kinds, firing.tolist(), strict=True)
            },
            histogram_edges=tuple(self.metadata["histogram_edges"]),
            histogram_counts=tuple(int(c) for c in self._tensors["histogram"][feature]),
            top_examples=self._examples("top", feature, None),
            quantile_examples=self._examples("quantile", feature, self.metadata["quantiles"]),
        )

    def _examples(
        self, group: str, feature: int, quantiles: list[float] | None
    ) -> tuple[Example, ...]:
        t = self._tensors
        fields = {name: t[f"{group}_{name}"][feature] for name in EXAMPLE_FIELDS}
        examples = []
        for slot in range(len(fields["value"])):
            value = float(fields["value"][slot])
            if math.isnan(value):
                continue
            study, image = int(fields["study"][slot]), int(fields["image"][slot])
            is_patch = image >= 0
            examples.append(
                Example(
                    study_id=self._study_ids[study],
                    position=int(fields["position"][slot]),
                    kind=self._kinds[int(fields["kind"][slot])],
                    value=value,
                    image_index=image if is_patch else None,
                    grid_row=int(fields["row"][slot]) if is_patch else None,
                    grid_col=int(fields["col"][slot]) if is_patch else None,
                    quantile=quantiles[slot] if quantiles is not None else None,
                    heatmap=self._content(f"{group}_heatmap", feature, slot, is_patch),
                    thumbnail=(
                        t["thumbnails"][study, image]
                        if is_patch and self.has_content and "thumbnails" in t
                        else None
                    ),
                    context=self._context(group, feature, slot, is_patch),
                )
            )
        return tuple(examples)

    def _content(self, name: str, feature: int, slot: int, wanted: bool) -> np.ndarray | None:
        if not (wanted and self.has_content and name in self._tensors):
            return None
        return self._tensors[name][feature, slot].astype(np.float32)

    def _context(
        self, group: str, feature: int, slot: int, is_patch: bool
    ) -> tuple[tuple[int, float, bool], ...]:
        name = f"{group}_context_ids"
        if is_patch or not self.has_content or name not in self._tensors:
            return ()
        ids = self._tensors[name][feature, slot]
        values = self._tensors[f"{group}_context_values"][feature, slot]
        middle = len(ids) // 2
        return tuple(
            (int(token), float(value), index == middle)
            for index, (token, value) in enumerate(zip(ids, values, strict=True))
            if token >= 0
        )


def read_metadata(folder: Path) -> dict[str, Any]:
    path = folder / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read it as JSON: {error}") from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    if metadata.get("version") != VERSION:
        raise ValueError(f"{path}: version {metadata.get('version')!r}; this reads {VERSION}")
    return metadata


def write_dashboard(folder: Path, metadata: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    """Write both files, tensors first, each through a temporary name (an interrupted write
    leaves the previous state readable)."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, "version": VERSION, **metadata}
    staging = folder / f".{TENSORS_FILE}.partial"
    save_file({name: np.ascontiguousarray(value) for name, value in tensors.items()}, str(staging))
    with_default_mode(staging).replace(folder / TENSORS_FILE)
    staging_json = folder / f".{METADATA_FILE}.partial"
    staging_json.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    staging_json.replace(folder / METADATA_FILE)


def read_state(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """A build's saved state (metadata, tensors), or None when the folder has none."""
    if not (folder / METADATA_FILE).is_file():
        return None
    return read_metadata(folder), load_file(str(folder / TENSORS_FILE))


def read_partial_metadata(folder: Path) -> dict[str, Any]:
    """The metadata of a shard's complete partial dashboard; ``ValueError`` says why not."""
    metadata = read_metadata(folder)
    if SHARD_KEY not in metadata:
        raise ValueError(f"{folder}: a whole dashboard, not a shard's partial one")
    if not metadata.get("complete"):
        name = _shard_name(metadata)
        raise ValueError(
            f"{folder}: shard {name} is incomplete (done up to study "
            f"{metadata.get('studies_done')}); rerun build-dashboard --shard {name} to finish it"
        )
    return metadata


def read_partial_tensors(folder: Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(folder / TENSORS_FILE))
    except (OSError, ValueError) as error:
        raise ValueError(f"{folder / TENSORS_FILE}: {error}") from error


def check_shards_cover_the_studies(partials: list[tuple[dict[str, Any], Path]]) -> None:
    """``ValueError`` unless the partials (sorted by first study) are of one split into N shards
    and cover every study once: each of the N shards, no more, no less."""
    count = partials[0][0][SHARD_KEY]["count"]
    indices = sorted(metadata[SHARD_KEY]["index"] for metadata, _ in partials)
    if any(metadata[SHARD_KEY]["count"] != count for metadata, _ in partials):
        raise ValueError("the partials come from splits into different numbers of shards")
    if indices != list(range(count)):
        missing = sorted(set(range(count)) - set(indices))
        twice = sorted({i for i in indices if indices.count(i) > 1})
        raise ValueError(
            f"the merge needs each of the {count} shards once: missing {missing or 'none'}, "
            f"given twice {twice or 'none'}"
        )
    end = 0
    for metadata, path in partials:
        first, stop = metadata[SHARD_KEY]["studies"]
        if first != end:
            raise ValueError(f"{path}: covers studies {first}..{stop - 1}, expected from {end}")
        end = stop
    if end != len(partials[0][0]["study_ids"]):
        raise ValueError(f"the shards cover {end} of {len(partials[0][0]['study_ids'])} studies")


def _shard_name(metadata: dict[str, Any]) -> str:
    shard = metadata[SHARD_KEY]
    return f"{shard['index']}/{shard['count']}"
