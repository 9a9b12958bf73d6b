"""The SAEs a server holds, by id, with the default one."""

from __future__ import annotations

from collections.abc import Sequence

from maira_sae.server.engine.sae_entry import SaeEntry
from maira_sae.server.errors import NotFound, echo


class SaeRegistry:
    def __init__(self, saes: Sequence[SaeEntry], default_sae_id: str | None = None) -> None:
        if not saes:
            raise ValueError("the engine needs at least one SAE")
        self._saes = {entry.sae_id: entry for entry in saes}
        self.default_sae_id = default_sae_id or saes[0].sae_id
        if self.default_sae_id not in self._saes:
            raise ValueError(f"default SAE {self.default_sae_id!r} is not among the SAEs")

    @property
    def entries(self) -> tuple[SaeEntry, ...]:
        return tuple(self._saes.values())

    def get(self, sae_id: str) -> SaeEntry:
        """The SAE with this id ("" is the default one); NotFound names the known ids."""
        entry = self._saes.get(sae_id or self.default_sae_id)
        if entry is None:
            known = ", ".join(sorted(self._saes))
            raise NotFound(
                f"unknown sae_id {echo(sae_id)}; this server has: {known}",
                reason="SAE_NOT_FOUND",
                resource_type="sae",
                resource_name=sae_id,
                metadata={"knownSaeIds": known},
            )
        return entry
