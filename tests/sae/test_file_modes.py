import os
import stat

import numpy as np

from maira_sae.sae import dashboard
from maira_sae.sae.file_modes import current_umask, with_default_mode


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_umask_is_read_without_changing_it():
    before = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(before)


def test_a_dashboard_is_written_readable_by_the_group_not_0600(tmp_path):
    dashboard.write_dashboard(tmp_path, {"d_sae": 1}, {"histogram": np.zeros((1, 2), np.int64)})
    assert mode(tmp_path / dashboard.TENSORS_FILE) == 0o666 & ~current_umask()
    assert mode(tmp_path / dashboard.TENSORS_FILE) & 0o040


def test_a_private_umask_still_makes_it_private(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    path.chmod(0o600)
    before = os.umask(0o077)
    try:
        assert mode(with_default_mode(path)) == 0o600
    finally:
        os.umask(before)
    assert mode(with_default_mode(path)) == 0o666 & ~before
