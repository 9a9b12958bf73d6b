"""Encode and TopFeatures batches (demo checkpoint): a request's result does not depend on the
other requests of its batch."""

from __future__ import annotations

import numpy as np

from maira_sae.server.engine.types import EncodeRequest, TopFeaturesRequest
from maira_sae.server.maira2.study import Study
from maira_sae.server.maira2.synthetic_image import synthetic_chest_image


def test_encode_of_a_study_is_the_same_alone_and_in_a_batch(demo_engine, study):
    image = synthetic_chest_image()
    other = Study(frontal=np.flipud(image).copy(), lateral=image,
                  indication="A much longer indication " * 5)  # fmt: skip
    request = EncodeRequest(study=study, top_k_per_token=0)
    alone = demo_engine.analyse([demo_engine.prepare_analysis(request)])[0]
    batched = demo_engine.analyse(
        [
            demo_engine.prepare_analysis(EncodeRequest(study=other)),
            demo_engine.prepare_analysis(request),
            demo_engine.prepare_analysis(TopFeaturesRequest(study=other)),
        ]
    )[1]
    assert len(alone.tokens) == len(batched.tokens)
    for a, b in zip(alone.tokens, batched.tokens, strict=True):
        assert a.token == b.token
        assert a.feature_ids == b.feature_ids
        assert np.allclose(a.values, b.values, atol=1e-4)
