"""Files the project writes get the modes of any file the process creates (0644 under the usual
umask 022), never safetensors' private 0600: dashboards and checkpoints are shared by the jobs
and people that read them, and a umask that wants them private still gets its way."""

from __future__ import annotations

import os
import re
from pathlib import Path

_UMASK_LINE = re.compile(r"^Umask:\s*([0-7]+)$", re.MULTILINE)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it."""
    try:
        match = _UMASK_LINE.search(Path("/proc/self/status").read_text(encoding="ascii"))
    except OSError:
        match = None
    if match:
        return int(match.group(1), 8)
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting, restored at once
    os.umask(mask)
    return mask


def with_default_mode(path: str | os.PathLike[str]) -> Path:
    """Give ``path`` the mode a new file gets under the umask (0666 masked); returns it."""
    path = Path(path)
    path.chmod(0o666 & ~current_umask())
    return path
