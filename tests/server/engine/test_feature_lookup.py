"""Feature lookups (demo checkpoint): the range of feature ids is the SAE's."""

from __future__ import annotations

import pytest

from maira_sae.server.errors import OutOfRange


def test_feature_lookup_range_is_the_saes(demo_engine):
    d_sae = demo_engine.sae("").sae.d_sae
    assert demo_engine.feature("", d_sae - 1).description.feature == d_sae - 1
    with pytest.raises(OutOfRange, match=f"feature {d_sae} is out of range: SAE '.*' has features"):
        demo_engine.feature("", d_sae)
