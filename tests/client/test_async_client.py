"""Every method of the asyncio AsyncClient against the real demo server."""

from __future__ import annotations

import asyncio

import pytest

from maira_sae.client import (
    AsyncClient,
    DeadlineExceededError,
    GenerationSettings,
    NotFoundError,
    TokenEvent,
    TokenKind,
    Variant,
    VariantResult,
)


def run(demo_server, scenario):
    async def main():
        async with AsyncClient(demo_server.target) as client:
            return await scenario(client)

    return asyncio.run(main())


def test_unary_methods(demo_server, study):
    async def scenario(client):
        health, info, encoded, top, feature, found, fired = await asyncio.gather(
            client.health(),
            client.info(),
            client.encode(study, top_k_per_token=2),
            client.top_features(study, k=5),
            client.feature(3),
            client.search_features("pacemaker", limit=2),
            client.search_by_activation("Enlarged heart.", limit=3),
        )
        assert health == "SERVING"
        assert info.model.image_tokens_per_image == 1369
        kinds = {t.token.kind for t in encoded.tokens}
        assert {TokenKind.IMAGE_PATCH, TokenKind.PROMPT_TEXT} <= kinds
        assert len(top.features) == 5
        assert feature.feature == 3
        assert len(found.matches) == 2
        assert len(fired.matches) == 3 and fired.activation_tokens[0] == "<s>"
        assert len(feature.nearest_features) == 10
        with pytest.raises(NotFoundError):
            await client.feature(1, sae_id="nope")

    run(demo_server, scenario)


def test_generation_stream_results_and_cancel(demo_server, study):
    async def scenario(client):
        settings = GenerationSettings(max_new_tokens=5)
        variants = [Variant("baseline"), Variant.of("clamp", "3:clamp:40")]
        events = [e async for e in client.generate_steered(study, variants, settings=settings)]
        assert sum(isinstance(e, TokenEvent) for e in events) == 10
        results = await client.generate_texts(study, variants, settings=settings)
        assert [r.text for r in results] == [e.text for e in events if isinstance(e, VariantResult)]

        stream = client.generate_steered(study, settings=GenerationSettings(max_new_tokens=1000))
        assert isinstance(await stream.__anext__(), TokenEvent)
        stream.close()
        assert [e async for e in stream] == []

        with pytest.raises(DeadlineExceededError):
            await client.encode(study, timeout=0.001)

    run(demo_server, scenario)
