"""Films for a vision explainer: an image example's film with the feature's heat map over it,
taken from a dashboard built with content (``build-dashboard --thumbnails``).

    with_dashboard_films(examples, dashboard, limit) -> FeatureExamples

The dashboard holds, for each feature's top and quantile examples, the study's downscaled
film and the feature's activation grid over it. An ``explain`` example of a film patch whose
study and film the dashboard holds for that feature gets that picture (``heat_map_png``), up
to ``limit`` per feature; held-out examples never do, so a film shown to the explainer is
never one the scorer holds out.
"""

from __future__ import annotations

import io
from dataclasses import replace

from PIL import Image

from maira_sae.client.imaging.heatmap import overlay_heatmap
from maira_sae.sae.dashboard import Dashboard
from maira_sae.server.training.explain.protocols import ExampleKind, FeatureExamples


def with_dashboard_films(
    examples: FeatureExamples, dashboard: Dashboard, limit: int
) -> FeatureExamples:
    page = dashboard.feature(examples.feature)
    films = {
        (example.study_id, example.image_index): example
        for example in (*page.top_examples, *page.quantile_examples)
        if example.heatmap is not None and example.thumbnail is not None
    }
    explain, attached = [], 0
    for example in examples.explain:
        film = films.get((example.study_id, example.image))
        if example.kind is ExampleKind.IMAGE and film is not None and attached < limit:
            picture = overlay_heatmap(film.thumbnail, film.heatmap)  # type: ignore[arg-type]
            example = replace(example, heat_map_png=_png(picture))
            attached += 1
        explain.append(example)
    return replace(examples, explain=tuple(explain))


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
