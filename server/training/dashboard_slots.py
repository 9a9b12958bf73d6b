"""Example slots of a dashboard build: a fixed number per feature, kept by value (the top
studies) or by random key (a uniform sample), with their token fields and, with content, each
example's heat map and text context. Tensors are [F, slots, ...] on the CPU."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from maira_sae.server.maira2.processor import ModelInputs

MAX_IMAGES = 3


@dataclass
class TokenMeta:
    """Example fields of one study's kept tokens ([kept] each)."""

    study: torch.Tensor
    position: torch.Tensor
    kind: torch.Tensor
    image: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor

    @classmethod
    def of(cls, index: int, kept: list[Any], kind: torch.Tensor) -> TokenMeta:
        def column(values: Iterator[int]) -> torch.Tensor:
            return torch.tensor(list(values), dtype=torch.long)

        return cls(
            study=torch.full((len(kept),), index, dtype=torch.long),
            position=column(t.position for t in kept),
            kind=kind,
            image=column(-1 if t.image_index is None else t.image_index for t in kept),
            row=column(-1 if t.grid_row is None else t.grid_row for t in kept),
            col=column(-1 if t.grid_col is None else t.grid_col for t in kept),
        )

    def gather(self, token: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fields of the tokens at ``token`` [F, n] (indices into the kept tokens)."""
        return {
            name: getattr(self, name)[token]
            for name in ("study", "position", "kind", "image", "row", "col")
        }


FIELD_DTYPES = {
    "value": np.float32,
    "study": np.int32,
    "position": np.int32,
    "kind": np.int8,
    "image": np.int16,
    "row": np.int16,
    "col": np.int16,
}
# What an empty slot holds, whatever token it was last drawn from.
EMPTY_FIELDS = {"value": -math.inf, **dict.fromkeys(FIELD_DTYPES.keys() - {"value"}, -1)}
EMPTY_CONTENT = {"heatmap": 0.0, "context_ids": -1, "context_values": 0.0}


class ExampleSlots:
    """A fixed number of example slots per feature: fields [F, n]; empty slots value -inf."""

    def __init__(self, fields: dict[str, torch.Tensor], extra: dict[str, torch.Tensor]) -> None:
        self.fields = fields
        self.extra = extra  # heatmap [F, n, rows, cols], context ids/values [F, n, window]

    @classmethod
    def empty(
        cls, d_sae: int, slots: int, grid: tuple[int, int], context: int, *, content: bool
    ) -> ExampleSlots:
        fields = {
            name: torch.full((d_sae, slots), empty, dtype=_dtype(name))
            for name, empty in EMPTY_FIELDS.items()
        }
        extra = {}
        if content:
            window = (2 * context + 1,)
            shapes = {"heatmap": grid, "context_ids": window, "context_values": window}
            extra = {
                name: torch.full((d_sae, slots, *shapes[name]), empty, dtype=_dtype(name))
                for name, empty in EMPTY_CONTENT.items()
            }
        return cls(fields, extra)

    @classmethod
    def restore(cls, tensors: dict[str, np.ndarray], group: str) -> ExampleSlots:
        fields = {
            name: torch.from_numpy(tensors[f"{group}_{name}"].astype(np.int64))
            for name in FIELD_DTYPES
            if name != "value"
        }
        value = torch.from_numpy(tensors[f"{group}_value"].astype(np.float32))
        fields["value"] = torch.nan_to_num(value, nan=-math.inf)
        extra = {
            name: torch.from_numpy(tensors[f"{group}_{name}"].astype(np.float32))
            for name in ("heatmap", "context_values")
            if f"{group}_{name}" in tensors
        }
        if f"{group}_context_ids" in tensors:
            extra["context_ids"] = torch.from_numpy(
                tensors[f"{group}_context_ids"].astype(np.int64)
            )
        return cls(fields, extra)

    def merge(
        self,
        candidates: torch.Tensor,
        meta: TokenMeta,
        codes: torch.Tensor,
        inputs: ModelInputs,
        content: bool,
    ) -> None:
        """Keep the strongest of the current slots and this study's strongest token of each
        feature (``candidates`` [F, kept]): one example per study, so the top examples are
        the studies where the feature fires hardest, each at its peak token."""
        best = candidates.topk(1, dim=1)
        new = {"value": best.values, **meta.gather(best.indices)}
        new_extra = _content_of(new, codes, inputs, self.extra) if content and self.extra else {}
        self.keep_strongest(ExampleSlots(new, new_extra))

    def merge_by_key(
        self,
        keys: torch.Tensor,
        current_keys: torch.Tensor,
        candidates: torch.Tensor,
        meta: TokenMeta,
    ) -> torch.Tensor:
        """Keep the slots with the smallest random keys (a uniform sample); returns the keys."""
        best = keys.topk(min(current_keys.shape[1], keys.shape[1]), dim=1, largest=False)
        new = {"value": candidates.gather(1, best.indices), **meta.gather(best.indices)}
        return self.keep_smallest_keys(current_keys, ExampleSlots(new, {}), best.values)

    def keep_strongest(self, other: ExampleSlots) -> None:
        """Keep the strongest examples of both, by value, ties by study then position: an order
        that does not depend on the order examples arrive in, so the shards of a build merge
        into the slots one process keeps."""
        both = self._joined(other)
        fields = both.fields
        order = _ascending(-fields["value"], fields["study"], fields["position"])
        self._become(both.take(order[:, : self.slots]))

    def keep_smallest_keys(
        self, keys: torch.Tensor, other: ExampleSlots, other_keys: torch.Tensor
    ) -> torch.Tensor:
        """Keep the examples of both with the smallest keys (ties by study then position);
        returns their keys."""
        both = self._joined(other)
        all_keys = torch.cat([keys, other_keys], dim=1)
        order = _ascending(all_keys, both.fields["study"], both.fields["position"])
        order = order[:, : self.slots]
        self._become(both.take(order))
        return all_keys.gather(1, order)

    @property
    def slots(self) -> int:
        return self.fields["value"].shape[1]

    def take(self, picks: torch.Tensor) -> ExampleSlots:
        """The examples at ``picks`` [F, n] (slot indices), content included."""
        extra = {
            name: tensor.gather(1, picks.view(*picks.shape, *[1] * (tensor.dim() - 2)).expand(
                -1, -1, *tensor.shape[2:]))
            for name, tensor in self.extra.items()
        }  # fmt: skip
        return ExampleSlots({name: t.gather(1, picks) for name, t in self.fields.items()}, extra)

    def _joined(self, other: ExampleSlots) -> ExampleSlots:
        """Both sets of slots side by side; ``other``'s empty slots blanked first, so an empty
        slot is the same whatever token it was drawn from."""
        empty = ~torch.isfinite(other.fields["value"])
        fields = {
            name: torch.cat([mine, other.fields[name].masked_fill(empty, EMPTY_FIELDS[name])], 1)
            for name, mine in self.fields.items()
        }
        extra = {}
        for name, tensor in self.extra.items():
            theirs = other.extra[name]
            mask = empty.view(*empty.shape, *[1] * (theirs.dim() - 2))
            blank = theirs.masked_fill(mask, EMPTY_CONTENT[name])
            extra[name] = torch.cat([tensor, blank], dim=1)
        return ExampleSlots(fields, extra)

    def _become(self, other: ExampleSlots) -> None:
        self.fields, self.extra = other.fields, other.extra

    def arrays(self, group: str, *, content: bool) -> dict[str, np.ndarray]:
        value = self.fields["value"]
        out = {
            f"{group}_value": torch.where(torch.isfinite(value), value, math.nan).numpy(),
            **{
                f"{group}_{name}": self.fields[name].numpy().astype(dtype)
                for name, dtype in FIELD_DTYPES.items()
                if name != "value"
            },
        }
        if content:
            out[f"{group}_heatmap"] = self.extra["heatmap"].numpy().astype(np.float16)
            out[f"{group}_context_ids"] = self.extra["context_ids"].numpy().astype(np.int32)
            out[f"{group}_context_values"] = self.extra["context_values"].numpy().astype(np.float16)
        return out


def _content_of(
    new: dict[str, torch.Tensor],
    codes: torch.Tensor,
    inputs: ModelInputs,
    extra: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Heat maps of patch candidates and text windows of text candidates [F, n, ...]."""
    features = torch.arange(codes.shape[1]).view(-1, 1).expand_as(new["position"])
    rows, cols = extra["heatmap"].shape[2:]
    starts = _image_starts(inputs)
    image = new["image"].clamp(min=0)
    first = starts[image]  # [F, n]: where each candidate's image begins
    patch = first.unsqueeze(-1) + torch.arange(rows * cols)
    heatmap = codes.T[features.unsqueeze(-1), patch.clamp(max=codes.shape[0] - 1)]
    heatmap = heatmap * (new["image"] >= 0).unsqueeze(-1)
    window = extra["context_ids"].shape[2]
    offsets = torch.arange(window) - window // 2
    where = new["position"].unsqueeze(-1) + offsets
    inside = (where >= 0) & (where < codes.shape[0]) & (new["image"] < 0).unsqueeze(-1)
    where = where.clamp(0, codes.shape[0] - 1)
    ids = torch.where(inside, inputs.input_ids[where], -1)
    values = torch.where(inside, codes.T[features.unsqueeze(-1), where], 0.0)
    return {"heatmap": heatmap.view(*heatmap.shape[:2], rows, cols), "context_ids": ids,
            "context_values": values}  # fmt: skip


def _image_starts(inputs: ModelInputs) -> torch.Tensor:
    starts = [0] * MAX_IMAGES
    for token in inputs.tokens:
        if token.image_index is not None and token.grid_row == 0 and token.grid_col == 0:
            starts[token.image_index] = token.position
    return torch.tensor(starts, dtype=torch.long)


def _ascending(*keys: torch.Tensor) -> torch.Tensor:
    """Per row, the slot indices that sort ``keys`` [F, n] ascending, the first key first and
    each next one breaking its ties (stable sorts, least significant key first)."""
    order = keys[-1].argsort(dim=1, stable=True)
    for key in reversed(keys[:-1]):
        order = order.gather(1, key.gather(1, order).argsort(dim=1, stable=True))
    return order


def _dtype(name: str) -> torch.dtype:
    """Slots hold token fields as int64 and values as float32 (written narrower)."""
    return torch.float32 if name in ("value", "heatmap", "context_values") else torch.long
