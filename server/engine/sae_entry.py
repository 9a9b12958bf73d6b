"""One served SAE as the engine holds it, and the error for a feature beyond its dictionary."""

from __future__ import annotations

from dataclasses import dataclass

from maira_sae.sae.catalogue import FeatureCatalogue
from maira_sae.sae.model import FeatureOutOfRange, MatryoshkaSAE
from maira_sae.server.engine.dashboard_source import DashboardSource
from maira_sae.server.errors import OutOfRange


@dataclass(frozen=True)
class SaeEntry:
    """One served SAE: its id, the layer it reads and its feature interpretations."""

    sae_id: str
    sae: MatryoshkaSAE
    catalogue: FeatureCatalogue
    layer: int
    # its dashboard folder, read again when maira-sae-server build-dashboard rewrites it
    dashboard: DashboardSource | None = None


def feature_out_of_range(entry: SaeEntry, error: FeatureOutOfRange, where: str) -> OutOfRange:
    return OutOfRange(
        f"{where} {error.feature} is out of range: SAE {entry.sae_id!r} has features "
        f"0..{error.d_sae - 1}",
        field=where,
        reason="FEATURE_OUT_OF_RANGE",
        metadata={"saeId": entry.sae_id, "dSae": error.d_sae, "value": error.feature},
    )
