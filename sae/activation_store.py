"""An activation store: a folder of fixed-size safetensors shards plus JSON manifests, filled by
any number of independent writers ("parts") and read row by row without loading it whole.

Layout of STORE:

    parts/part-00001-of-00003.json          one part's manifest (rewritten after each shard)
    shards/part-00001-of-00003-00000.safetensors
    manifest.json                           assembled from the parts once every part is complete

Each shard holds ``activations`` [n, d_model] in the harvest dtype and one int64 column per
per-token field the writer names (e.g. study index, position, kind, token id). Rows are grouped
by *item* (for a harvest, a study): a shard holds whole items and is closed at the first item
boundary at or past ``shard_rows`` rows, so a rerun restarts at an item and never mid-way.

A part manifest records the store's settings (whatever the writer describes the data with:
model, layer, token filter...), d_model, dtype, the part's item range, and for each shard its
file, row count, sha256 and item range; ``complete`` once its last item is written. A shard is
written to a temporary name and renamed before the part manifest that lists it is replaced, so
a killed writer leaves at most an unlisted temporary file. A rerun keeps the listed shards whose
digests check and continues after the last of them. The rows of the store are the rows of part
0's shards in order, then part 1's, ...: the same order one writer of everything would give.

Files are written with the process's default mode (``with_default_mode``), not safetensors'
0600, because the jobs and people reading a store are not the process that wrote it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from maira_sae.sae.file_modes import with_default_mode

MANIFEST_FILE = "manifest.json"
ACTIVATIONS = "activations"
STORE_FORMAT = 1
_DIGEST_BLOCK = 1 << 24


@dataclass(frozen=True)
class ShardInfo:
    """One shard file: ``rows`` rows covering items ``first_item`` .. ``end_item`` - 1."""

    file: str  # relative to the store folder
    rows: int
    sha256: str
    first_item: int
    end_item: int


@dataclass(frozen=True)
class StoreManifest:
    """A part's manifest, or the assembled manifest of the whole store (part 0 of 1 covering
    every item, its shards those of all parts in order)."""

    settings: dict[str, Any]
    d_model: int
    dtype: str
    columns: tuple[str, ...]
    part: int
    num_parts: int
    first_item: int
    end_item: int
    num_items: int
    shards: tuple[ShardInfo, ...]
    complete: bool

    @property
    def rows(self) -> int:
        return sum(shard.rows for shard in self.shards)

    def to_json(self) -> str:
        content = {
            "format": STORE_FORMAT,
            "settings": self.settings,
            "d_model": self.d_model,
            "dtype": self.dtype,
            "columns": list(self.columns),
            "part": self.part,
            "num_parts": self.num_parts,
            "items": [self.first_item, self.end_item],
            "num_items": self.num_items,
            "rows": self.rows,
            "shards": [dataclasses.asdict(shard) for shard in self.shards],
            "complete": self.complete,
        }
        return json.dumps(content, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, source: Path) -> StoreManifest:
        content = json.loads(text)
        if content.get("format") != STORE_FORMAT:
            raise ValueError(f"{source}: not an activation store manifest of format 1")
        return cls(
            settings=content["settings"],
            d_model=int(content["d_model"]),
            dtype=content["dtype"],
            columns=tuple(content["columns"]),
            part=int(content["part"]),
            num_parts=int(content["num_parts"]),
            first_item=int(content["items"][0]),
            end_item=int(content["items"][1]),
            num_items=int(content["num_items"]),
            shards=tuple(ShardInfo(**shard) for shard in content["shards"]),
            complete=bool(content["complete"]),
        )


def item_range(part: int, num_parts: int, num_items: int) -> range:
    """The contiguous items of ``part`` of ``num_parts``: a deterministic, disjoint split whose
    parts differ in size by at most one item."""
    if not 0 <= part < num_parts:
        raise ValueError(f"part {part} is not in 0..{num_parts - 1}")
    return range(part * num_items // num_parts, (part + 1) * num_items // num_parts)


def part_manifest_path(store: Path, part: int, num_parts: int) -> Path:
    return Path(store) / "parts" / f"part-{part:05d}-of-{num_parts:05d}.json"


class StoreWriter:
    """Writes one part of a store; ``resume_item`` is the first item still to write."""

    def __init__(
        self,
        store: Path,
        *,
        part: int,
        num_parts: int,
        num_items: int,
        settings: dict[str, Any],
        d_model: int,
        dtype: torch.dtype,
        columns: tuple[str, ...],
        shard_rows: int,
    ) -> None:
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        self._store = Path(store)
        self._dtype = dtype
        self._shard_rows = shard_rows
        items = item_range(part, num_parts, num_items)
        _check_other_parts(self._store, settings, num_parts, num_items)
        fresh = StoreManifest(
            settings=settings,
            d_model=d_model,
            dtype=str(dtype).removeprefix("torch."),
            columns=columns,
            part=part,
            num_parts=num_parts,
            first_item=items.start,
            end_item=items.stop,
            num_items=num_items,
            shards=(),
            complete=False,
        )
        self.manifest = _verified_prefix(self._store, fresh)
        self.skipped_shards = len(self.manifest.shards)
        self._pending: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []
        self._pending_rows = 0
        self._pending_first = self.resume_item

    @property
    def resume_item(self) -> int:
        shards = self.manifest.shards
        return shards[-1].end_item if shards else self.manifest.first_item

    @property
    def complete(self) -> bool:
        return self.manifest.complete

    def add_item(self, activations: torch.Tensor, columns: Mapping[str, torch.Tensor]) -> None:
        """The rows of the next item; a shard is written once ``shard_rows`` are pending."""
        if set(columns) != set(self.manifest.columns):
            raise ValueError(f"columns {sorted(columns)} != {list(self.manifest.columns)}")
        if activations.ndim != 2 or activations.shape[1] != self.manifest.d_model:
            raise ValueError(f"expected [n, {self.manifest.d_model}], got {activations.shape}")
        self._pending.append((activations.to("cpu", self._dtype), dict(columns)))
        self._pending_rows += activations.shape[0]
        if self._pending_rows >= self._shard_rows:
            self._flush(end_item=self._pending_first + len(self._pending))

    def finish(self) -> StoreManifest:
        """Write the last shard, mark the part complete, and assemble the store's manifest if
        every part is now complete; returns this part's manifest."""
        if self._pending:
            self._flush(end_item=self._pending_first + len(self._pending))
        if self.resume_item != self.manifest.end_item:
            raise ValueError(
                f"part ends at item {self.resume_item}, not at {self.manifest.end_item}"
            )
        self.manifest = _replace_manifest(self.manifest, complete=True)
        self._write_manifest()
        assemble_manifest(self._store)
        return self.manifest

    def _flush(self, *, end_item: int) -> None:
        index = len(self.manifest.shards)
        name = (
            f"shards/part-{self.manifest.part:05d}-of-{self.manifest.num_parts:05d}-"
            f"{index:05d}.safetensors"
        )
        tensors = {ACTIVATIONS: torch.cat([rows for rows, _ in self._pending])}
        for column in self.manifest.columns:
            tensors[column] = torch.cat(
                [values[column].to(torch.long) for _, values in self._pending]
            )
        path = self._store / name
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".tmp")
        save_file(tensors, str(staging))
        with_default_mode(staging)
        os.replace(staging, path)
        shard = ShardInfo(
            name, self._pending_rows, file_digest(path), self._pending_first, end_item
        )
        self.manifest = _replace_manifest(self.manifest, shards=(*self.manifest.shards, shard))
        self._write_manifest()
        self._pending, self._pending_rows, self._pending_first = [], 0, end_item

    def _write_manifest(self) -> None:
        manifest = self.manifest
        _write_text(
            part_manifest_path(self._store, manifest.part, manifest.num_parts), manifest.to_json()
        )


def open_store(store: Path) -> StoreManifest:
    """The store's manifest: manifest.json, or assembled from the part manifests; a
    ``ValueError`` says which parts are missing or incomplete."""
    store = Path(store)
    path = store / MANIFEST_FILE
    if path.is_file():
        return StoreManifest.from_json(path.read_text(encoding="utf-8"), path)
    manifest = assemble_manifest(store)
    if manifest is None:
        raise ValueError(f"{store}: {_incomplete_parts(store)}")
    return manifest


def assemble_manifest(store: Path) -> StoreManifest | None:
    """Write manifest.json from the parts when all are present and complete (any part's last
    writer may do it; the content is the same whoever does); else None."""
    store = Path(store)
    parts = _read_parts(store)
    if not parts or not all(part.complete for part in parts.values()):
        return None
    num_parts = next(iter(parts.values())).num_parts
    if sorted(parts) != list(range(num_parts)):
        return None
    ordered = [parts[index] for index in range(num_parts)]
    first = ordered[0]
    manifest = _replace_manifest(
        first,
        part=0,
        num_parts=1,
        first_item=0,
        end_item=first.num_items,
        shards=tuple(shard for part in ordered for shard in part.shards),
    )
    _write_text(store / MANIFEST_FILE, manifest.to_json())
    return manifest


class StoreReader:
    """Rows of a store by global row number, each read from its shard's memory map (opened for
    the read and closed after it, so nothing stays mapped between reads)."""

    def __init__(self, store: Path, manifest: StoreManifest | None = None) -> None:
        self.folder = Path(store)
        self.manifest = manifest or open_store(self.folder)
        self.d_model = self.manifest.d_model
        self.dtype: torch.dtype = getattr(torch, self.manifest.dtype)
        starts = [0]
        for shard in self.manifest.shards:
            starts.append(starts[-1] + shard.rows)
        self._starts = starts

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def fingerprint(self) -> str:
        """sha256 over the shards' digests: which data this is, for a checkpoint to check."""
        digests = "".join(shard.sha256 for shard in self.manifest.shards)
        return hashlib.sha256(digests.encode("ascii")).hexdigest()

    def read(self, start: int, stop: int, column: str = ACTIVATIONS) -> torch.Tensor:
        """Rows ``start`` .. ``stop`` - 1 of ``column``, across shards."""
        pieces = [
            self._read_shard(shard, begin, end, column)
            for shard, begin, end in self._spans(start, stop)
        ]
        if not pieces:
            width = (0, self.d_model) if column == ACTIVATIONS else (0,)
            return torch.zeros(width, dtype=self.dtype if column == ACTIVATIONS else torch.long)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def _spans(self, start: int, stop: int) -> Iterator[tuple[ShardInfo, int, int]]:
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"rows {start}:{stop} outside 0:{len(self)}")
        for index, shard in enumerate(self.manifest.shards):
            low, high = self._starts[index], self._starts[index + 1]
            if high > start and low < stop:
                yield shard, max(start, low) - low, min(stop, high) - low

    def _read_shard(self, shard: ShardInfo, begin: int, end: int, column: str) -> torch.Tensor:
        with safe_open(str(self.folder / shard.file), framework="pt") as handle:
            return handle.get_slice(column)[begin:end]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_DIGEST_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _verified_prefix(store: Path, fresh: StoreManifest) -> StoreManifest:
    """The part's existing manifest cut to the shards whose files still check (all of them, and
    ``complete`` kept, when every one does); ``fresh`` when there is none."""
    path = part_manifest_path(store, fresh.part, fresh.num_parts)
    if not path.is_file():
        return fresh
    existing = StoreManifest.from_json(path.read_text(encoding="utf-8"), path)
    if _description(existing) != _description(fresh):
        raise ValueError(
            f"{path}: this part was harvested with other settings; use another store folder"
        )
    kept: list[ShardInfo] = []
    for shard in existing.shards:
        file = store / shard.file
        if not file.is_file() or file_digest(file) != shard.sha256:
            break
        kept.append(shard)
    complete = existing.complete and len(kept) == len(existing.shards)
    return _replace_manifest(existing, shards=tuple(kept), complete=complete)


def _check_other_parts(
    store: Path, settings: dict[str, Any], num_parts: int, num_items: int
) -> None:
    for path in sorted((store / "parts").glob("part-*.json")):
        other = StoreManifest.from_json(path.read_text(encoding="utf-8"), path)
        if (other.settings, other.num_parts, other.num_items) != (settings, num_parts, num_items):
            raise ValueError(
                f"{path}: the store holds a harvest of other settings or another split "
                f"({other.num_parts} parts of {other.num_items} items); use another store folder"
            )


def _description(manifest: StoreManifest) -> tuple[Any, ...]:
    return (
        manifest.settings,
        manifest.d_model,
        manifest.dtype,
        manifest.columns,
        manifest.num_parts,
        manifest.first_item,
        manifest.end_item,
        manifest.num_items,
    )


def _read_parts(store: Path) -> dict[int, StoreManifest]:
    parts = {}
    for path in sorted((store / "parts").glob("part-*.json")):
        manifest = StoreManifest.from_json(path.read_text(encoding="utf-8"), path)
        parts[manifest.part] = manifest
    return parts


def _incomplete_parts(store: Path) -> str:
    parts = _read_parts(store)
    if not parts:
        return "no activation store here (no manifest.json, no parts/)"
    num_parts = next(iter(parts.values())).num_parts
    missing = [index for index in range(num_parts) if index not in parts]
    unfinished = [index for index, part in sorted(parts.items()) if not part.complete]
    return (
        f"the store is not complete: of {num_parts} parts, missing {missing}, "
        f"unfinished {unfinished}; run the harvest of those parts"
    )


def _replace_manifest(manifest: StoreManifest, **changes: Any) -> StoreManifest:
    return dataclasses.replace(manifest, **changes)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".tmp{os.getpid()}")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)
