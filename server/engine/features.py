"""From one study's residuals to SAE results: per-token codes, reconstruction quality, and the
study's strongest features with where they fire. Pure tensor code, no model, no gRPC."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maira_sae.sae.catalogue import FeatureCatalogue
from maira_sae.sae.model import MatryoshkaSAE
from maira_sae.server.engine.token_ranges import RangeSet
from maira_sae.server.engine.types import (
    Aggregation,
    FeatureScore,
    ImageActivationGrid,
    ReconstructionQuality,
    TokenFeatures,
    TokenFilter,
)
from maira_sae.server.maira2.tokens import TokenInfo, TokenKind


def accepted_positions(tokens: Sequence[TokenInfo], token_filter: TokenFilter) -> list[int]:
    """The positions the filter accepts: kinds and image indices in one pass over the tokens,
    ranges as one vectorised test (never tokens x ranges in Python)."""
    images = token_filter.image_indices
    accepted = torch.tensor(
        [
            token.kind in token_filter.kinds
            and (
                images is None
                or token.kind is not TokenKind.IMAGE_PATCH
                or token.image_index in images
            )
            for token in tokens
        ],
        dtype=torch.bool,
    )
    if token_filter.ranges:
        positions = torch.tensor([token.position for token in tokens], dtype=torch.long)
        accepted &= RangeSet(token_filter.ranges).contains(positions)
    return torch.nonzero(accepted).flatten().tolist()


def sparse_codes(
    features: torch.Tensor, tokens: Sequence[TokenInfo], positions: Sequence[int], top_k: int
) -> tuple[TokenFeatures, ...]:
    """The active features of each accepted token, strongest first; ``top_k`` 0 keeps all.

    The top-k runs on the SAE's device; the results cross to Python in one ``tolist`` each,
    not as a few small tensor ops (and, on a GPU, a sync) per token.
    """
    if not positions:
        return ()
    selected = features[list(positions)]
    width = selected.shape[-1]
    keep = width if top_k <= 0 else min(top_k, width)
    values, indices = selected.topk(keep, dim=-1)  # sorted: each row's active features lead
    counts = (values > 0).sum(dim=-1)
    widest = int(counts.max())  # trim the columns no token uses before leaving the device
    rows = zip(
        positions,
        counts.tolist(),
        values[:, :widest].tolist(),
        indices[:, :widest].tolist(),
        strict=True,
    )
    return tuple(
        TokenFeatures(
            token=tokens[position],
            feature_ids=tuple(row_indices[:count]),
            values=tuple(row_values[:count]),
        )
        for position, count, row_values, row_indices in rows
    )


def reconstruction_quality(
    sae: MatryoshkaSAE, residual: torch.Tensor, features: torch.Tensor
) -> ReconstructionQuality:
    """MSE, explained variance and mean cosine of the SAE's reconstruction, in residual units.

    Explained variance is 1 - SSE / total variance around the tokens' mean; with fewer than two
    tokens there is no variance to explain and it is reported as 0.
    """
    if residual.shape[0] == 0:
        return ReconstructionQuality(mse=0.0, explained_variance=0.0, cosine=0.0)
    original = residual.float()
    reconstructed = sae.decode(features).float() / sae.input_scale
    error = (original - reconstructed).pow(2).sum()
    total = (original - original.mean(dim=0, keepdim=True)).pow(2).sum()
    explained = 1.0 - (error / total).item() if total > 0 else 0.0
    cosine = torch.nn.functional.cosine_similarity(original, reconstructed, dim=-1).mean()
    return ReconstructionQuality(
        mse=(error / original.numel()).item(),
        explained_variance=explained,
        cosine=cosine.item(),
    )


def aggregate(features: torch.Tensor, aggregation: Aggregation) -> torch.Tensor:
    """One score per feature over the accepted tokens' codes ``[tokens, features]``."""
    if features.shape[0] == 0:
        return torch.zeros(features.shape[-1])
    if aggregation is Aggregation.MAX:
        return features.max(dim=0).values
    if aggregation is Aggregation.MEAN:
        return features.mean(dim=0)
    if aggregation is Aggregation.SUM:
        return features.sum(dim=0)
    return (features > 0).sum(dim=0).float()


def top_feature_scores(
    features: torch.Tensor,
    tokens: Sequence[TokenInfo],
    positions: Sequence[int],
    *,
    aggregation: Aggregation,
    k: int,
    catalogue: FeatureCatalogue,
    patch_grid: tuple[int, int],
    labelled_only: bool = False,
) -> tuple[FeatureScore, ...]:
    """The ``k`` features with the highest positive score (among the catalogue's, with
    ``labelled_only``), with where each fires."""
    accepted = features[list(positions)]
    scores = aggregate(accepted, aggregation)
    if labelled_only:
        labelled = torch.zeros_like(scores, dtype=torch.bool)
        labelled[[f for f in catalogue.features() if f < len(labelled)]] = True  # a level
        scores = scores.where(labelled, torch.zeros_like(scores))
    count = min(k, int((scores > 0).sum()))
    if count == 0:
        return ()
    top_scores, top_ids = scores.topk(count)
    layout = _PatchLayout([tokens[p] for p in positions], patch_grid)
    result = []
    for feature, score in zip(top_ids.tolist(), top_scores.tolist(), strict=True):
        column = accepted[:, feature]
        interpretation = catalogue.get(feature)
        result.append(
            FeatureScore(
                feature=feature,
                score=score,
                label=interpretation.explanation if interpretation else None,
                interpretation_score=interpretation.score if interpretation else None,
                token_positions=tuple(
                    positions[row] for row in torch.nonzero(column > 0).flatten().tolist()
                ),
                image_grids=layout.grids(column),
            )
        )
    return tuple(result)


class _PatchLayout:
    """Where the accepted image-patch tokens sit: their rows among the accepted tokens, their
    image and their flat index in the patch grid. Built once per study, used per feature."""

    def __init__(self, accepted_tokens: Sequence[TokenInfo], patch_grid: tuple[int, int]) -> None:
        self.rows, self.cols = patch_grid
        patches = [
            (row, token.image_index, token.grid_row * self.cols + token.grid_col)
            for row, token in enumerate(accepted_tokens)
            if token.kind is TokenKind.IMAGE_PATCH
            and token.image_index is not None
            and token.grid_row is not None
            and token.grid_col is not None
        ]
        self.token_rows = torch.tensor([p[0] for p in patches], dtype=torch.long)
        self.image_indices = torch.tensor([p[1] for p in patches], dtype=torch.long)
        self.flat_indices = torch.tensor([p[2] for p in patches], dtype=torch.long)
        self.num_images = int(self.image_indices.max()) + 1 if patches else 0

    def grids(self, column: torch.Tensor) -> tuple[ImageActivationGrid, ...]:
        """The feature's activation over the patch grid of each image where it fires."""
        if self.num_images == 0:
            return ()
        grids = torch.zeros(self.num_images, self.rows * self.cols)
        grids[self.image_indices, self.flat_indices] = column[self.token_rows].float().cpu()
        return tuple(
            ImageActivationGrid(image_index, self.rows, self.cols, tuple(grid.tolist()))
            for image_index, grid in enumerate(grids)
            if bool((grid > 0).any())
        )
