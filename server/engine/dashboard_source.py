"""An SAE's dashboard folder as the server reads it: loaded at start when it is there, and read
again when ``maira-sae-server build-dashboard`` writes or rewrites it, with no restart.

Each lookup stats the folder's two files (microseconds) and loads only when they changed since
the last look; a load that fails (a build still running, a damaged file, another SAE's
dashboard) is remembered for those same files, so a folder costs at most one load per change
whatever the request rate. ``write_dashboard`` replaces the tensors first and the metadata
last, each by rename, so a lookup sees the old dashboard, the new one, or a pair that fails to
load and is read again once the second rename lands.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from maira_sae.sae.dashboard import METADATA_FILE, TENSORS_FILE, Dashboard, FeatureStats

_log = logging.getLogger(__name__)

_Signature = tuple[tuple[int, int, int] | None, ...]


class DashboardSource:
    """The dashboard of SAE ``sae_id`` in ``folder`` (``configured``: named by
    ``saes.dashboard_path`` rather than the SAE folder's ``dashboard/``). Thread-safe."""

    def __init__(self, sae_id: str, folder: Path, d_sae: int, *, configured: bool) -> None:
        self.sae_id = sae_id
        self.folder = folder
        self.d_sae = d_sae
        self.configured = configured
        self._lock = threading.Lock()
        self._signature: _Signature | None = None
        self._dashboard: Dashboard | None = None
        self._failure = ""

    def load_at_start(self) -> None:
        """The load at start: ``ValueError`` naming the file and the problem when a dashboard
        is configured, or is there, and cannot be read. A folder with none is no error."""
        dashboard, _ = self.current()
        if dashboard is None and (self.configured or self._failure):
            raise ValueError(self._failure or f"{self.folder}: no dashboard ({METADATA_FILE})")

    def feature(self, feature: int) -> tuple[FeatureStats | None, str]:
        """One feature's page, or None with a note saying why and what to do."""
        dashboard, note = self.current()
        return (dashboard.feature(feature), "") if dashboard is not None else (None, note)

    def current(self) -> tuple[Dashboard | None, str]:
        """The current dashboard, read again if its files changed; else None and a note."""
        signature = self._files_signature()
        if signature != self._signature:
            with self._lock:
                if signature != self._signature:
                    self._reload(signature)
        if self._dashboard is not None:
            return self._dashboard, ""
        return None, self._note()

    def _reload(self, signature: _Signature) -> None:
        self._signature = signature
        if signature[0] is None:  # no metadata: nothing built (yet)
            self._dashboard, self._failure = None, ""
            return
        try:
            dashboard = Dashboard.load(self.folder)
            if dashboard.d_sae != self.d_sae:
                raise ValueError(
                    f"{self.folder}: a dashboard of {dashboard.d_sae} features; SAE "
                    f"{self.sae_id!r} has {self.d_sae}"
                )
        except ValueError as error:
            self._failure = str(error)
            _log.warning("dashboard of SAE %r not loaded: %s", self.sae_id, error)
            return
        self._dashboard, self._failure = dashboard, ""
        _log.info("dashboard of SAE %r loaded from %s", self.sae_id, self.folder)

    def _files_signature(self) -> _Signature:
        return tuple(_file_signature(self.folder / name) for name in (METADATA_FILE, TENSORS_FILE))

    def _note(self) -> str:
        where = "saes.dashboard_path" if self.configured else "the SAE folder's dashboard/"
        if self._failure:
            return (
                f"SAE {self.sae_id!r} has no dashboard loaded: the one in {where} is being built "
                "or cannot be read (the server log says which); it is read again, without a "
                "restart, once its files change"
            )
        return (
            f"SAE {self.sae_id!r} has no dashboard: build one with maira-sae-server "
            f"build-dashboard into {where}; the server reads it at the next GetFeature, "
            "without a restart"
        )


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)
