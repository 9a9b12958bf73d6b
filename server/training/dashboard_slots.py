"""Example slots of a dashboard build: a fixed number per feature, kept by value (the top
studies) or by random key (a uniform sample), with their token fields and, with content, each
example's heat map and text context. Tensors are [F, slots, ...] on the CPU."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

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


class ExampleSlots:
    """A fixed number of example slots per feature: fields [F, n]; empty slots value -inf."""

    def __init__(self, fields: dict[str, torch.Tensor], extra: dict[str, torch.Tensor]) -> None:
        self.fields = fields
        self.extra = extra  # heatmap [F, n, rows, cols], context ids/values [F, n, window]

    @classmethod
    def empty(
        cls, d_sae: int, slots: int, grid: tuple[int, int], context: int, *, content: bool
    ) -> ExampleSlots:
        fields = {name: torch.full((d_sae, slots), -1, dtype=torch.long) for name in FIELD_DTYPES}
        fields["value"] = torch.full((d_sae, slots), -math.inf)
        extra = {}
        if content:
            window = 2 * context + 1
            extra = {
                "heatmap": torch.zeros(d_sae, slots, *grid),
                "context_ids": torch.full((d_sae, slots, window), -1, dtype=torch.long),
                "context_values": torch.zeros(d_sae, slots, window),
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
        slots = self.fields["value"].shape[1]
        best = candidates.topk(1, dim=1)
        new = {"value": best.values, **meta.gather(best.indices)}
        new_extra = _content_of(new, codes, inputs, self.extra) if content and self.extra else {}
        self._keep(torch.cat([self.fields["value"], best.values], dim=1), new, new_extra, slots)

    def merge_by_key(
        self,
        keys: torch.Tensor,
        current_keys: torch.Tensor,
        candidates: torch.Tensor,
        meta: TokenMeta,
    ) -> torch.Tensor:
        """Keep the slots with the smallest random keys (a uniform sample); returns the keys."""
        slots = current_keys.shape[1]
        best = keys.topk(min(slots, keys.shape[1]), dim=1, largest=False)
        new = {"value": candidates.gather(1, best.indices), **meta.gather(best.indices)}
        all_keys = torch.cat([current_keys, best.values], dim=1)
        order = self._keep(-all_keys, new, {}, slots)
        return all_keys.gather(1, order)

    def _keep(
        self,
        score: torch.Tensor,
        new: dict[str, torch.Tensor],
        new_extra: dict[str, torch.Tensor],
        slots: int,
    ) -> torch.Tensor:
        order = score.topk(slots, dim=1).indices
        for name in self.fields:
            both = torch.cat([self.fields[name], new[name]], dim=1)
            self.fields[name] = both.gather(1, order)
        for name, tensor in self.extra.items():
            both = torch.cat([tensor, new_extra[name]], dim=1)
            index = order.view(*order.shape, *([1] * (tensor.dim() - 2))).expand(
                -1, -1, *tensor.shape[2:]
            )
            self.extra[name] = both.gather(1, index)
        return order

    def take(self, picks: torch.Tensor) -> ExampleSlots:
        return ExampleSlots({name: t.gather(1, picks) for name, t in self.fields.items()}, {})

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
