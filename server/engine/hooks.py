"""Forward hooks at decoder block outputs: capture the residual stream and edit it in place.

"Layer L" is the output of decoder block L (0-based), i.e. ``hidden_states[L + 1]`` in
transformers' counting. A hook sees the block's output tensor ``[batch, tokens, d_model]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

ResidualEdit = Callable[[torch.Tensor], torch.Tensor]


class StopForward(Exception):
    """Raised by a capture hook once every wanted layer is captured: later blocks and the LM head
    are never run, which roughly halves the cost of Encode at layer 15 of 32."""


def _block_output(output: torch.Tensor | tuple) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_block_output(output: torch.Tensor | tuple, hidden: torch.Tensor) -> object:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def capture_residuals(
    decoder_layers: nn.ModuleList, layers: set[int], *, stop_after_last: bool
) -> Iterator[dict[int, torch.Tensor]]:
    """Record the output of each block in ``layers`` into the yielded dict (layer -> tensor).

    With ``stop_after_last`` the forward pass is cut after the deepest wanted block: the caller
    must run the forward inside ``run_until_stopped``.
    """
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers)

    def make_hook(layer: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: object, output: torch.Tensor | tuple) -> None:
            captured[layer] = _block_output(output).detach()
            if stop_after_last and layer == deepest:
                raise StopForward

        return hook

    handles = [decoder_layers[layer].register_forward_hook(make_hook(layer)) for layer in layers]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def edit_residuals(
    decoder_layers: nn.ModuleList, edits: Mapping[int, ResidualEdit]
) -> Iterator[None]:
    """Replace the output of each block in ``edits`` by ``edit(output)`` during the forward."""

    def make_hook(edit: ResidualEdit) -> Callable[..., object]:
        def hook(_module: nn.Module, _args: object, output: torch.Tensor | tuple) -> object:
            return _replace_block_output(output, edit(_block_output(output)))

        return hook

    handles = [
        decoder_layers[layer].register_forward_hook(make_hook(edit))
        for layer, edit in edits.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def branch_batch(decoder_layers: nn.ModuleList, layer: int, rows: int) -> Iterator[None]:
    """Run the blocks below ``layer`` on one row and repeat its hidden states into ``rows``
    rows as they enter block ``layer``: rows identical up to there are computed once.

    The blocks' other inputs (mask, positions, rotary embeddings) keep batch 1 and broadcast;
    afterwards the KV cache of the blocks below ``layer`` has batch 1 and must be repeated.
    """

    def hook(_module: nn.Module, args: tuple) -> tuple:
        hidden, *rest = args
        return (hidden.expand(rows, *hidden.shape[1:]).contiguous(), *rest)

    handle = decoder_layers[layer].register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def run_until_stopped(forward: Callable[[], object]) -> None:
    """Run a forward pass that a capture hook may cut short with StopForward."""
    try:
        forward()
    except StopForward:
        return
