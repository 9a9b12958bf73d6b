"""Encode results as arrays: scipy.sparse, numpy and pandas (the ``arrays`` extra).

scipy and pandas are imported on first use only, so the plain client imports without them;
without the extra these functions raise ``MissingExtraError`` naming it. ``EncodeResult``'s
``to_sparse``, ``to_numpy`` and ``to_frame`` call these.

Rows are the result's tokens in their order (the accepted tokens, by position); columns are
feature ids. An EncodeResult does not say how wide its SAE is, so the width is the SAE's d_sae
when its ``SaeInfo`` is given (``client.info().sae(result.sae_id)``), else the highest feature
that fired plus one. A Matryoshka level keeps the features of the first ``level`` groups:
columns ``[0, sum(group_sizes[:level]))``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from maira_sae.client.errors import MissingExtraError

if TYPE_CHECKING:
    import pandas
    import scipy.sparse

    from maira_sae.client.results import EncodeResult, SaeInfo

EXTRA = "arrays"


def _require(module: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(what, EXTRA, module.partition(".")[0]) from error


def level_width(group_sizes: Sequence[int], level: int) -> int:
    """Features in the first ``level`` Matryoshka groups (1 = the coarsest)."""
    if not 1 <= level <= len(group_sizes):
        raise ValueError(f"Matryoshka level must be 1..{len(group_sizes)}, got {level}")
    return int(sum(group_sizes[:level]))


def _width(result: EncodeResult, sae: SaeInfo | None) -> int:
    if sae is not None:
        if sae.id != result.sae_id:
            raise ValueError(f"the result is of SAE {result.sae_id!r}, not {sae.id!r}")
        return sae.d_sae
    return max((max(t.feature_ids, default=-1) for t in result.tokens), default=-1) + 1


def _coordinates(result: EncodeResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR parts (indptr, feature ids, values) of the result's tokens."""
    counts = np.fromiter((len(t.feature_ids) for t in result.tokens), np.int64, len(result.tokens))
    indptr = np.concatenate([[0], np.cumsum(counts)])
    total = int(indptr[-1])
    ids = np.fromiter((f for t in result.tokens for f in t.feature_ids), np.int64, total)
    values = np.fromiter((v for t in result.tokens for v in t.values), np.float32, total)
    return indptr, ids, values


def to_sparse(result: EncodeResult, sae: SaeInfo | None = None) -> scipy.sparse.csr_array:
    """Tokens x features, float32, one stored value per (token, fired feature)."""
    sparse = _require("scipy.sparse", "EncodeResult.to_sparse")
    indptr, ids, values = _coordinates(result)
    shape = (len(result.tokens), _width(result, sae))
    matrix = sparse.csr_array((values, ids, indptr), shape=shape)
    matrix.sort_indices()  # the wire orders each token's features by value, CSR by column
    return matrix


def to_numpy(
    result: EncodeResult, sae: SaeInfo | None = None, *, level: int | None = None
) -> np.ndarray:
    """Tokens x features as a dense float32 array, zeros where a feature did not fire; with
    ``level``, only the first ``level`` Matryoshka groups' features (needs ``sae``). Plain
    numpy: no extra needed."""
    width = _width(result, sae)
    if level is not None:
        if sae is None:
            raise ValueError("a Matryoshka level needs the SAE's group sizes: pass its SaeInfo")
        width = level_width(sae.group_sizes, level)
    indptr, ids, values = _coordinates(result)
    rows = np.repeat(np.arange(len(result.tokens)), np.diff(indptr))
    kept = ids < width
    dense = np.zeros((len(result.tokens), width), dtype=np.float32)
    dense[rows[kept], ids[kept]] = values[kept]
    return dense


FRAME_COLUMNS = (
    "position",
    "token_id",
    "text",
    "kind",
    "image_index",
    "image_role",
    "grid_row",
    "grid_col",
    "num_active",
)


def to_frame(result: EncodeResult) -> pandas.DataFrame:
    """One row per token, in the result's order: ``FRAME_COLUMNS``. Image columns are
    nullable integers (``<NA>`` for text tokens); kind and image_role are categoricals of the
    enums' string values."""
    pd = _require("pandas", "EncodeResult.to_frame")
    tokens = [item.token for item in result.tokens]

    def optional_ints(values: list[int | None]) -> pandas.Series:
        return pd.array(values, dtype="Int64")

    return pd.DataFrame(
        {
            "position": np.array([t.position for t in tokens], dtype=np.int64),
            "token_id": np.array([t.token_id for t in tokens], dtype=np.int64),
            "text": [t.text for t in tokens],
            "kind": pd.Categorical([t.kind.value for t in tokens]),
            "image_index": optional_ints([t.image_index for t in tokens]),
            "image_role": pd.Categorical(
                [t.image_role.value if t.image_role else None for t in tokens]
            ),
            "grid_row": optional_ints([t.grid_row for t in tokens]),
            "grid_col": optional_ints([t.grid_col for t in tokens]),
            "num_active": np.array([len(item.feature_ids) for item in result.tokens], np.int64),
        },
        columns=list(FRAME_COLUMNS),
    )
