"""Build an SAE's feature dashboards over a set of studies, through the server's own hooks.

Every study is run as the server runs it (processor, block-output capture at the SAE's layer,
threshold encode), and for every feature the build accumulates: on how many tokens of each kind
it fires, a histogram of its non-zero activations, the ``top_k`` studies where it fires hardest
(each at its peak token), and a
uniform sample of its firing tokens (a bottom-k sketch over seeded random keys) from which the
lower-quantile examples are drawn at the end. The file format is ``maira_sae.sae.dashboard``.

Resumable: the state is written every ``save_every`` studies, and a build that finds a state of
the same SAE, studies and settings continues after its last saved study. Random keys are drawn
per study from the seed, so a resumed build equals an uninterrupted one. Patient data: by
default only study ids and token positions are stored; ``with_content`` adds each example's
heat map and text context and downscaled films.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from maira_sae.sae import dashboard as fmt
from maira_sae.sae.activation_store import item_range
from maira_sae.sae.model import MatryoshkaSAE
from maira_sae.server.engine.types import DEFAULT_TOKEN_KINDS
from maira_sae.server.maira2.study import Study, Task
from maira_sae.server.maira2.tokens import TokenKind
from maira_sae.server.training.dashboard_slots import MAX_IMAGES, ExampleSlots, TokenMeta

if TYPE_CHECKING:  # the merge runs no model, so it needs none of the model's code
    from maira_sae.server.maira2.model import Maira2ForConditionalGeneration
    from maira_sae.server.maira2.processor import Maira2Processor, ModelInputs

KINDS = tuple(kind for kind in TokenKind if kind in DEFAULT_TOKEN_KINDS)


@dataclass(frozen=True)
class DashboardStudy:
    study_id: str
    study: Study
    report: str | None = None  # teacher-forced when given, so report tokens count too


@dataclass(frozen=True)
class DashboardSettings:
    top_k: int = 20
    quantiles: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75)
    sample_size: int = 64
    context: int = 4
    with_content: bool = False
    thumbnail_side: int = 128
    batch_size: int = 4
    save_every: int = 32
    seed: int = 0


def build_dashboard(
    model: Maira2ForConditionalGeneration,
    processor: Maira2Processor,
    sae: MatryoshkaSAE,
    layer: int,
    studies: Sequence[DashboardStudy],
    out: Path,
    settings: DashboardSettings = DashboardSettings(),
    *,
    task: Task | None = None,
    study_ids: Sequence[str] | None = None,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
) -> Path:
    """Write (or finish) the dashboard of ``sae`` over ``studies`` into ``out`` (findings
    reports by default). ``studies`` may read each study on access: each is read once, and
    ``study_ids`` spares reading them all for their ids. With ``shard`` (I, N), only part I of
    N of the studies (``shard_studies``) is run and ``out`` gets a partial dashboard, which
    ``merge_dashboards`` combines with the other parts."""
    from maira_sae.server.engine.capture import capture_batch

    task = task or Task()
    ids = list(study_ids) if study_ids is not None else [s.study_id for s in studies]
    todo = range(len(studies)) if shard is None else shard_studies(*shard, len(studies), settings)
    identity = _identity(sae, layer, ids, settings, processor.patch_grid)
    if shard is not None:
        covered = [todo.start, todo.stop]
        identity[fmt.SHARD_KEY] = {"index": shard[0], "count": shard[1], "studies": covered}
    state = fmt.read_state(out)
    builder = _Builder(sae.d_sae, processor.patch_grid, todo, settings)
    done = todo.start
    if state is not None:
        if not _same_build(state[0], identity):
            raise ValueError(
                f"{out} holds a dashboard of another SAE, study set, settings or shard; remove it"
                " or choose another output folder"
            )
        if state[0]["complete"]:
            return out
        builder.restore(state[1], state[0])
        done = state[0]["studies_done"]
    bar = tqdm(total=len(todo), initial=done - todo.start, disable=not progress, desc="dashboard")
    for start in range(done, todo.stop, settings.batch_size):
        chunk = range(start, min(start + settings.batch_size, todo.stop))
        read = [studies[i] for i in chunk]
        inputs = [processor.process(s.study, task, s.report) for s in read]
        residuals = capture_batch(model, inputs, {layer}, pad_token_id=processor.pad_token_id)
        for index, study, study_inputs, by_layer in zip(
            chunk, read, inputs, residuals, strict=True
        ):
            codes = sae.encode(by_layer[layer]).float().cpu()
            builder.add(index, study_inputs, codes, study.study)
        done = chunk.stop
        bar.update(len(chunk))
        if done < todo.stop and done // settings.save_every > start // settings.save_every:
            _save(out, identity, builder, done, complete=False)
    bar.close()
    _save(out, identity, builder, done, complete=True)
    return out


def shard_studies(
    part: int, num_parts: int, num_studies: int, settings: DashboardSettings
) -> range:
    """The studies of part ``part`` of ``num_parts``: contiguous runs of whole batches, so each
    study is run in the batch one process would run it in (its codes equal to the last bit)."""
    batch = settings.batch_size
    batches = item_range(part, num_parts, -(-num_studies // batch))
    return range(min(batches.start * batch, num_studies), min(batches.stop * batch, num_studies))


def merge_dashboards(partials: Sequence[Path], out: Path) -> Path:
    """Merge the partial dashboards of every shard of one build into the dashboard ``out``, the
    one a single process writes (same top examples in the same order, same counts, same
    files). ``ValueError`` names a partial that is incomplete, of another build, or missing."""
    headers = sorted(
        ((fmt.read_partial_metadata(p), p) for p in partials),
        key=lambda pair: pair[0][fmt.SHARD_KEY]["studies"][0],
    )
    first = headers[0][0]
    identity = {key: first[key] for key in first if key not in _PROGRESS_KEYS}
    fmt.check_shards_cover_the_studies(headers)
    for metadata, path in headers:
        if not _same_build(metadata, identity):
            raise ValueError(f"{path}: a partial of another SAE, study set or settings")
    settings = DashboardSettings(
        **{**first["settings"], "quantiles": tuple(first["settings"]["quantiles"])}
    )
    grid = (first["grid"][0], first["grid"][1])
    merged: _Builder | None = None
    for metadata, path in headers:  # one partial in memory at a time, beside the merge
        part = _Builder(first["d_sae"], grid, range(*metadata[fmt.SHARD_KEY]["studies"]), settings)
        part.restore(fmt.read_partial_tensors(path), metadata)
        merged = part if merged is None else merged.absorb(part)
    assert merged is not None
    _save(out, identity, merged, len(first["study_ids"]), complete=True)
    return out


# What differs between a build's saved states: the rest of their metadata is its identity.
_PROGRESS_KEYS = frozenset({fmt.SHARD_KEY, "tokens_by_kind", "studies_done", "complete"})


def _identity(
    sae: MatryoshkaSAE,
    layer: int,
    study_ids: list[str],
    settings: DashboardSettings,
    grid: tuple[int, int],
) -> dict[str, Any]:
    return {
        "d_sae": sae.d_sae,
        "sae_sha256": _fingerprint(sae),
        "layer": layer,
        "study_ids": study_ids,
        "kinds": [kind.value for kind in KINDS],
        "histogram_edges": [float(edge) for edge in fmt.histogram_edges()],
        "top_k": settings.top_k,
        "quantiles": list(settings.quantiles),
        "grid": list(grid),
        "context": settings.context,
        "has_content": settings.with_content,
        # what changes the result (batch size and save interval do not)
        "settings": {
            key: value
            for key, value in dataclasses.asdict(settings).items()
            if key not in ("batch_size", "save_every")
        },
    }


def _fingerprint(sae: MatryoshkaSAE) -> str:
    """A digest of the SAE's weights: a saved state of another SAE is never resumed."""
    digest = hashlib.sha256()
    for name, tensor in sorted(sae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _same_build(saved: dict[str, Any], identity: dict[str, Any]) -> bool:
    as_saved = json.loads(json.dumps(identity))  # tuples read back as lists
    return all(saved.get(key) == value for key, value in as_saved.items())


def _save(
    out: Path, identity: dict[str, Any], builder: _Builder, done: int, *, complete: bool
) -> None:
    metadata = {
        **identity,
        "tokens_by_kind": builder.tokens_by_kind(),
        "studies_done": done,
        "complete": complete,
    }
    final = complete and fmt.SHARD_KEY not in identity  # a shard keeps its sample to merge
    fmt.write_dashboard(out, metadata, builder.tensors(final=final))


class _Builder:
    """The running statistics of every feature (CPU tensors)."""

    def __init__(
        self, d_sae: int, grid: tuple[int, int], studies: range, settings: DashboardSettings
    ) -> None:
        self._settings = settings
        self._studies = studies  # the study indices it may be given (thumbnails are of these)
        self._grid = grid
        self._edges = torch.tensor(fmt.histogram_edges()[1:-1], dtype=torch.float32)
        self._num_bins = len(self._edges) + 1
        self._tokens = torch.zeros(len(KINDS), dtype=torch.int64)
        self._firing = torch.zeros(len(KINDS), d_sae, dtype=torch.int64)
        self._histogram = torch.zeros(d_sae, self._num_bins, dtype=torch.int64)
        self._top = ExampleSlots.empty(
            d_sae, settings.top_k, grid, settings.context, content=settings.with_content
        )
        self._sample = ExampleSlots.empty(d_sae, settings.sample_size, grid, 0, content=False)
        self._sample_key = torch.full((d_sae, settings.sample_size), math.inf)
        side = settings.thumbnail_side
        self._thumbnails = (
            np.zeros((len(studies), MAX_IMAGES, side, side), dtype=np.uint8)
            if settings.with_content
            else None
        )

    def add(self, index: int, inputs: ModelInputs, codes: torch.Tensor, study: Study) -> None:
        """One study's codes [tokens, d_sae] (every position of its sequence)."""
        tokens = inputs.tokens
        kept = [t for t in tokens if t.kind in DEFAULT_TOKEN_KINDS]
        rows = torch.tensor([t.position for t in kept], dtype=torch.long)
        kind = torch.tensor([KINDS.index(t.kind) for t in kept], dtype=torch.long)
        values = codes[rows]  # [kept, d_sae]
        fires = values > 0
        self._tokens += torch.bincount(kind, minlength=len(KINDS))
        self._firing.index_add_(0, kind, fires.long())
        token, feature = fires.nonzero(as_tuple=True)
        bins = torch.bucketize(values[token, feature], self._edges, right=True)
        self._histogram.view(-1).index_add_(
            0, feature * self._num_bins + bins, torch.ones_like(bins)
        )
        meta = TokenMeta.of(index, kept, kind)
        candidates = torch.where(fires, values, torch.tensor(-math.inf)).T  # [d_sae, kept]
        self._top.merge(candidates, meta, codes, inputs, self._settings.with_content)
        generator = torch.Generator().manual_seed(self._settings.seed * 1_000_003 + index)
        keys = torch.rand(candidates.shape, generator=generator)
        keys = torch.where(fires.T, keys, torch.tensor(math.inf))
        self._sample_key = self._sample.merge_by_key(keys, self._sample_key, candidates, meta)
        if self._thumbnails is not None:
            for image_index, (_, pixels) in enumerate(study.images()):
                self._thumbnails[index - self._studies.start, image_index] = _thumbnail(
                    pixels, self._settings.thumbnail_side
                )

    def tokens_by_kind(self) -> dict[str, int]:
        return {kind.value: int(n) for kind, n in zip(KINDS, self._tokens.tolist(), strict=True)}

    def tensors(self, *, final: bool) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {
            "firing_by_kind": self._firing.numpy(),
            "histogram": self._histogram.numpy(),
            **self._top.arrays("top", content=self._settings.with_content),
        }
        if final:
            out |= self._quantile_examples().arrays("quantile", content=False)
        else:
            out |= self._sample.arrays("sample", content=False)
            out["sample_key"] = self._sample_key.numpy()
        if self._thumbnails is not None:
            out["thumbnails"] = self._thumbnails
        return out

    def restore(self, tensors: dict[str, np.ndarray], metadata: dict[str, Any]) -> None:
        self._tokens = torch.tensor([metadata["tokens_by_kind"][k.value] for k in KINDS])
        self._firing = torch.from_numpy(tensors["firing_by_kind"].copy())
        self._histogram = torch.from_numpy(tensors["histogram"].copy())
        self._top = ExampleSlots.restore(tensors, "top")
        self._sample = ExampleSlots.restore(tensors, "sample")
        self._sample_key = torch.from_numpy(tensors["sample_key"].copy())
        if self._thumbnails is not None:
            self._thumbnails = tensors["thumbnails"].copy()

    def absorb(self, other: _Builder) -> _Builder:
        """Add the statistics of ``other``, built over the studies right after this one's; the
        result is what one builder given both runs of studies holds."""
        if other._studies.start != self._studies.stop:
            raise ValueError(f"studies {other._studies} do not follow {self._studies}")
        self._tokens += other._tokens
        self._firing += other._firing
        self._histogram += other._histogram
        self._top.keep_strongest(other._top)
        self._sample_key = self._sample.keep_smallest_keys(
            self._sample_key, other._sample, other._sample_key
        )
        if self._thumbnails is not None and other._thumbnails is not None:
            self._thumbnails = np.concatenate([self._thumbnails, other._thumbnails])
        self._studies = range(self._studies.start, other._studies.stop)
        return self

    def _quantile_examples(self) -> ExampleSlots:
        """From each feature's sample, sorted by value: the tokens at the quantiles."""
        quantiles = self._settings.quantiles
        sample = self._sample
        valid = torch.isfinite(self._sample_key)
        values = torch.where(valid, sample.fields["value"], torch.tensor(math.inf))
        order = values.argsort(dim=1, stable=True)  # ascending; empty slots last
        count = valid.sum(dim=1, keepdim=True)
        ranks = torch.tensor(quantiles).view(1, -1) * (count - 1).clamp(min=0)
        picks = order.gather(1, ranks.round().long())
        picked = sample.take(picks)
        empty = (count == 0).expand_as(picks)
        picked.fields["value"][empty] = math.nan
        return picked


def _thumbnail(pixels: np.ndarray, side: int) -> np.ndarray:
    """The image as MAIRA-2 sees it (greyscale, min-max to 8 bits, centre square), downscaled."""
    values = pixels.astype(np.float64)
    if values.ndim == 3:
        values = values.mean(axis=2)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) * 255 if high > low else np.zeros_like(values)
    height, width = scaled.shape
    crop = min(height, width)
    top, left = (height - crop) // 2, (width - crop) // 2
    square = Image.fromarray(scaled[top : top + crop, left : left + crop].astype(np.uint8))
    return np.asarray(square.resize((side, side), Image.Resampling.BICUBIC))
