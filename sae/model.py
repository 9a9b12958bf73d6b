"""The Matryoshka sparse autoencoder used at serve time.

Two spaces appear throughout. The *residual space* is where the language model's hidden states
live. The *SAE space* is residual space multiplied by ``input_scale`` (1.0 unless the release
asks for a normalisation): the encoder reads it and the decoder writes it.

Serving never uses batch top-k (a training rule): a token keeps the features whose activation
is above the threshold, or, when an SAE has no threshold, its own ``top_k`` largest. Either way a
token's code never depends on the other tokens in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch

UNSET_THRESHOLD = -1.0  # what dictionary_learning stores until training has set a threshold
# Tokens per encoder matmul; see _blockwise_matmul. A full encode multiplies by the whole
# [d_model, d_sae] encoder, which each block streams from memory once: 256-row blocks read it
# 4x less often than 64-row ones (about 2x the throughput at d_sae 16384 on a CPU), at most
# 255 padded rows of waste. ``encode_features`` reads a few columns, so its blocks stay small:
# it runs at every steered decode step on a handful of rows.
ENCODE_BLOCK_ROWS = 256
FEATURE_BLOCK_ROWS = 64


@dataclass(frozen=True)
class SaeMetadata:
    """Where an SAE came from and what it reads; informational, never used in the math."""

    layer: int | None
    hook_point: str | None
    source_format: str  # "dictionary_learning" | "saelens" | "memory"
    path: str | None
    lm_name: str | None = None
    dict_class: str | None = None
    k: int | None = None  # the training top-k; serving uses MatryoshkaSAE.top_k


MEMORY_METADATA = SaeMetadata(layer=None, hook_point=None, source_format="memory", path=None)


class FeatureOutOfRange(ValueError):
    """A feature index past the SAE's dictionary (``MatryoshkaSAE.check_feature``)."""

    def __init__(self, feature: int, d_sae: int) -> None:
        super().__init__(f"feature {feature} is out of range: the SAE has features 0..{d_sae - 1}")
        self.feature = feature
        self.d_sae = d_sae


class MatryoshkaSAE(torch.nn.Module):
    """Encoder, decoder and Matryoshka groups of one SAE, held in ``compute_dtype``.

    ``threshold`` is a scalar or a per-feature vector; a scalar below zero (dictionary_learning
    stores -1 until training sets it) means "no threshold", which is only accepted together with
    ``top_k``. With neither, the code is the plain ReLU. When both are given the threshold wins.
    ``apply_b_dec_to_input=False`` (a SAELens option) skips subtracting ``b_dec`` before
    encoding. Invalid shapes, group sizes or non-finite weights raise ``ValueError``.
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor | None

    def __init__(
        self,
        W_enc: torch.Tensor,  # noqa: N803 - the names every SAE library uses
        b_enc: torch.Tensor,
        W_dec: torch.Tensor,  # noqa: N803
        b_dec: torch.Tensor,
        group_sizes: Sequence[int],
        threshold: float | torch.Tensor | None = None,
        top_k: int | None = None,
        input_scale: float = 1.0,
        metadata: SaeMetadata | None = None,
        compute_dtype: torch.dtype = torch.float32,
        apply_b_dec_to_input: bool = True,
    ) -> None:
        super().__init__()
        d_model, d_sae = _check_weight_shapes(W_enc, b_enc, W_dec, b_dec)
        self._group_sizes = _check_group_sizes(group_sizes, d_sae)
        threshold_tensor = _resolve_threshold(threshold, top_k, d_sae)
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if not (math.isfinite(input_scale) and input_scale > 0):
            raise ValueError(f"input_scale must be a finite number > 0, got {input_scale}")
        weights = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
        if threshold_tensor is not None:
            weights["threshold"] = threshold_tensor
        else:
            self.register_buffer("threshold", None)
        for name, tensor in weights.items():
            converted = tensor.detach().to(dtype=compute_dtype).contiguous()
            if not bool(torch.isfinite(converted).all()):
                raise ValueError(f"{name} has NaN or inf values (in {compute_dtype})")
            self.register_buffer(name, converted)
        self._d_model = d_model
        self._d_sae = d_sae
        self._top_k = top_k if threshold_tensor is None else None
        self._input_scale = float(input_scale)
        self._apply_b_dec_to_input = apply_b_dec_to_input
        self._metadata = metadata if metadata is not None else MEMORY_METADATA
        self._compute_dtype = compute_dtype

    @property
    def d_model(self) -> int:
        return self._d_model

    @property
    def d_sae(self) -> int:
        return self._d_sae

    @property
    def group_sizes(self) -> tuple[int, ...]:
        return self._group_sizes

    def check_feature(self, feature: int) -> None:
        """Raise ``FeatureOutOfRange`` unless ``feature`` indexes this SAE's dictionary."""
        if not 0 <= feature < self._d_sae:
            raise FeatureOutOfRange(feature, self._d_sae)

    @property
    def group_boundaries(self) -> tuple[int, ...]:
        """Cumulative group ends; the last one is ``d_sae``."""
        return tuple(accumulate(self._group_sizes))

    @property
    def num_levels(self) -> int:
        return len(self._group_sizes)

    @property
    def top_k(self) -> int | None:
        """The per-token top-k in use: None whenever a threshold is in use."""
        return self._top_k

    @property
    def input_scale(self) -> float:
        return self._input_scale

    @property
    def apply_b_dec_to_input(self) -> bool:
        return self._apply_b_dec_to_input

    @property
    def metadata(self) -> SaeMetadata:
        return self._metadata

    @property
    def compute_dtype(self) -> torch.dtype:
        return self._compute_dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def level_width(self, level: int | None) -> int:
        """Number of features in the first ``level`` groups; None means all (``d_sae``)."""
        if level is None:
            return self._d_sae
        if not 1 <= level <= self.num_levels:
            raise ValueError(f"Matryoshka level must be in 1..{self.num_levels}, got {level}")
        return self.group_boundaries[level - 1]

    def encode(self, x: torch.Tensor, level: int | None = None) -> torch.Tensor:
        """Sparse code of residual-space ``x`` [..., d_model] -> [..., level_width(level)].

        Returned in ``compute_dtype`` on the SAE's device, whatever ``x``'s dtype. A level's
        code is exactly the prefix of the full code.
        """
        width = self.level_width(level)
        pre = _blockwise_matmul(self._scaled_input(x), self.W_enc, ENCODE_BLOCK_ROWS) + self.b_enc
        if self._top_k is not None:
            f = self._top_k_code(pre)
        elif self.threshold is None:
            f = torch.relu(pre)
        else:
            f = _keep_above(torch.relu(pre), self.threshold)
        return f[..., :width]  # computing all columns keeps a level bit-identical to the prefix

    def encode_features(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Activations of the listed features only: [..., d_model] -> [..., len(features)].

        Equal to ``encode(x)[..., features]`` up to float rounding; under a threshold it
        computes only those columns.
        """
        features = features.to(device=self.device, dtype=torch.long)
        if self._top_k is not None:
            return self.encode(x)[..., features]
        columns = self.W_enc[:, features]
        scaled = self._scaled_input(x)
        pre = _blockwise_matmul(scaled, columns, FEATURE_BLOCK_ROWS) + self.b_enc[features]
        if self.threshold is None:
            return torch.relu(pre)
        threshold = self.threshold if self.threshold.ndim == 0 else self.threshold[features]
        return _keep_above(torch.relu(pre), threshold)

    def encode_row_features(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Each row's own features: ``x`` [B, T, d_model] and ``features`` [B, K] (indices)
        -> [B, T, K], row b reading features[b]. Fixed shapes whatever the indices, so a
        captured graph can take new indices in place.

        Equal to ``encode(x)[b, :, features[b]]`` up to float rounding.
        """
        features = features.to(device=self.device, dtype=torch.long)
        if self._top_k is not None:
            code = self.encode(x)
            return code.gather(-1, features.unsqueeze(1).expand(-1, code.shape[1], -1))
        columns = self.W_enc[:, features]  # [d_model, B, K]
        pre = torch.einsum("btd,dbk->btk", self._scaled_input(x), columns)
        pre = pre + self.b_enc[features].unsqueeze(1)
        if self.threshold is None:
            return torch.relu(pre)
        threshold = self.threshold if self.threshold.ndim == 0 else self.threshold[features]
        return _keep_above(torch.relu(pre), threshold.unsqueeze(1) if threshold.ndim else threshold)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """SAE-space reconstruction ``f @ W_dec[:w] + b_dec`` (approximates ``x * input_scale``).

        ``f``'s last dimension ``w`` must be a level width (a group boundary).
        """
        width = f.shape[-1]
        if width not in self.group_boundaries:
            raise ValueError(
                f"cannot decode {width} features: the width must be one of the Matryoshka "
                f"level widths {self.group_boundaries}"
            )
        f = f.to(device=self.device, dtype=self._compute_dtype)
        return f @ self.W_dec[:width] + self.b_dec

    def reconstruct(self, x: torch.Tensor, level: int | None = None) -> torch.Tensor:
        """Residual-space reconstruction of residual-space ``x``, in ``compute_dtype``."""
        return self.decode(self.encode(x, level)) / self._input_scale

    def _scaled_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self._d_model:
            raise ValueError(f"expected inputs of size {self._d_model}, got shape {tuple(x.shape)}")
        scaled = x.to(device=self.device, dtype=self._compute_dtype) * self._input_scale
        return scaled - self.b_dec if self._apply_b_dec_to_input else scaled

    def _top_k_code(self, pre: torch.Tensor) -> torch.Tensor:
        assert self._top_k is not None
        values, indices = torch.relu(pre).topk(min(self._top_k, pre.shape[-1]), dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, values)


def _blockwise_matmul(x: torch.Tensor, weight: torch.Tensor, block_rows: int) -> torch.Tensor:
    """``x @ weight`` over the last dimension, bit-identical for a row whatever the batch.

    BLAS libraries pick kernels (and so summation orders) by matrix shape, so one big matmul can
    round a token differently depending on how many tokens share the batch. Every product here
    has exactly ``block_rows`` rows (zero-padded), so every token goes through the same
    kernel and summation order (checked on CPU with MKL; cuBLAS also picks kernels by shape).
    """
    rows = x.reshape(-1, x.shape[-1])
    padding = (-rows.shape[0]) % block_rows
    if padding:
        rows = torch.cat([rows, rows.new_zeros(padding, rows.shape[1])])
    blocks = [block @ weight for block in rows.split(block_rows)]
    out = torch.cat(blocks) if blocks else rows.new_zeros(0, weight.shape[1])
    return out[: rows.shape[0] - padding].reshape(*x.shape[:-1], weight.shape[1])


def _keep_above(f: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(f > threshold, f, torch.zeros((), dtype=f.dtype, device=f.device))


def _check_weight_shapes(
    W_enc: torch.Tensor,  # noqa: N803
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,  # noqa: N803
    b_dec: torch.Tensor,
) -> tuple[int, int]:
    if W_enc.ndim != 2:
        raise ValueError(f"W_enc must be a [d_model, d_sae] matrix, got shape {tuple(W_enc.shape)}")
    d_model, d_sae = W_enc.shape
    expected = {
        "W_dec": (W_dec, (d_sae, d_model)),
        "b_enc": (b_enc, (d_sae,)),
        "b_dec": (b_dec, (d_model,)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, expected {shape} to match W_enc "
                f"[d_model={d_model}, d_sae={d_sae}]"
            )
    return d_model, d_sae


def _check_group_sizes(group_sizes: Sequence[int], d_sae: int) -> tuple[int, ...]:
    sizes = tuple(int(size) for size in group_sizes)
    if not sizes or any(size < 1 for size in sizes):
        raise ValueError(f"group sizes must be a non-empty list of positive sizes, got {sizes}")
    if sum(sizes) != d_sae:
        raise ValueError(f"group sizes {sizes} sum to {sum(sizes)}, expected d_sae = {d_sae}")
    return sizes


def _resolve_threshold(
    threshold: float | torch.Tensor | None, top_k: int | None, d_sae: int
) -> torch.Tensor | None:
    """The threshold tensor to store, or None when the code is top-k or plain ReLU."""
    if threshold is None:
        return None
    tensor = torch.as_tensor(threshold)
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError("threshold has NaN or inf values")
    if tensor.ndim == 0:
        if float(tensor) >= 0:
            return tensor
        if top_k is None:
            raise ValueError(
                f"threshold is {float(tensor)}: it was never set during training; pass a "
                "threshold or a per-token top_k to serve this SAE"
            )
        return None
    if tuple(tensor.shape) != (d_sae,):
        raise ValueError(
            f"threshold must be a scalar or a vector of d_sae = {d_sae}, "
            f"got shape {tuple(tensor.shape)}"
        )
    return tensor
