"""The one mapping between MAIRA-2's tensor names on disk and the modules they load into.

Two spellings exist on disk, and both are accepted:

- **transformers 4.x** (the released snapshot, written with 4.4x): the LLaVA prefixes below and
  Dinov2's attention as ``attention.attention.{query,key,value}`` and
  ``attention.output.dense``;
- **transformers 5.x** (what ``save_pretrained`` writes today): the same prefixes, with the
  attention renamed ``attention.{q,k,v,o}_proj``, as transformers 5 also keeps it in memory.

In memory the modules sit where transformers 5 puts them (``model.language_model``,
``model.vision_tower``, ``model.multi_modal_projector``, ``lm_head``). Transformers applies
the Dinov2 renaming itself only inside ``from_pretrained``, which this loader does not use
(it reads shards itself to check them first), so the renaming is spelt out here; a test holds
it equal to transformers' own rule for Dinov2. Any other name is refused.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable


class NameForm(enum.Enum):
    """Which transformers generation spelt a checkpoint's tensor names."""

    TRANSFORMERS_4 = "transformers 4.x"  # the released MAIRA-2 snapshot
    TRANSFORMERS_5 = "transformers 5.x"


# (on disk, in memory) prefixes; every tensor name starts with exactly one.
KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)

# Dinov2 attention inside a vision encoder layer: (transformers 4.x, transformers 5.x).
VISION_ATTENTION_NAMES: tuple[tuple[str, str], ...] = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)

_VISION_LAYER = re.compile(r"^(vision_tower\.encoder\.layer\.\d+\.)(.*)$")


class TensorNameError(KeyError):
    """A tensor name that belongs to no MAIRA-2 module in either spelling."""


def to_memory_name(disk_name: str) -> str:
    """On-disk tensor name (either spelling) -> ``Maira2ForConditionalGeneration`` name."""
    return _swap_prefix(_attention_name(disk_name, NameForm.TRANSFORMERS_5), KEY_PREFIXES)


def to_disk_name(memory_name: str, form: NameForm = NameForm.TRANSFORMERS_4) -> str:
    """``Maira2ForConditionalGeneration`` name -> on-disk name in ``form`` (default: as the
    released snapshot spells it)."""
    disk = _swap_prefix(memory_name, tuple((memory, disk) for disk, memory in KEY_PREFIXES))
    return _attention_name(disk, form)


def name_form(disk_names: Iterable[str]) -> NameForm | None:
    """The spelling of a checkpoint's vision attention names; None when it has neither (no
    vision encoder layers). Raises ``TensorNameError`` for a checkpoint that mixes both."""
    forms = {form for name in disk_names if (form := _attention_form(name)) is not None}
    if len(forms) > 1:
        raise TensorNameError(
            "the vision tower's attention tensors mix the transformers 4.x names "
            "(attention.attention.query) and the 5.x names (attention.q_proj)"
        )
    return forms.pop() if forms else None


def _attention_form(disk_name: str) -> NameForm | None:
    match = _VISION_LAYER.match(disk_name)
    if match is None:
        return None
    rest = match.group(2)
    for old, new in VISION_ATTENTION_NAMES:
        if rest.startswith(old):
            return NameForm.TRANSFORMERS_4
        if rest.startswith(new):
            return NameForm.TRANSFORMERS_5
    return None


def _attention_name(disk_name: str, form: NameForm) -> str:
    """``disk_name`` with a vision layer's attention spelt as in ``form``."""
    match = _VISION_LAYER.match(disk_name)
    if match is None:
        return disk_name
    layer, rest = match.groups()
    for old, new in VISION_ATTENTION_NAMES:
        source, target = (new, old) if form is NameForm.TRANSFORMERS_4 else (old, new)
        if rest.startswith(source):
            return layer + target + rest[len(source) :]
    return disk_name


def _swap_prefix(name: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        if name.startswith(old):
            return new + name[len(old) :]
    raise TensorNameError(f"{name!r} starts with none of {[old for old, _ in pairs]}")
