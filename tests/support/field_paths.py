"""Proto field paths as the server's BadRequest field violations write them."""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor


def resolves(descriptor: Descriptor, path: str) -> bool:
    """Whether ``path`` (``a.b[0].c``) names a field (or, as the leaf, a oneof) of the message
    type ``descriptor``; a repeated field unindexed (the whole list) only as the leaf."""
    steps = path.split(".")
    for number, step in enumerate(steps):
        last = number == len(steps) - 1
        name = step.split("[")[0]
        if last and name in descriptor.oneofs_by_name:
            return True
        field = descriptor.fields_by_name.get(name)
        if field is None:
            return False
        if ("[" in step) != field.is_repeated and not (last and field.is_repeated):
            return False
        descriptor = field.message_type or descriptor
    return True
