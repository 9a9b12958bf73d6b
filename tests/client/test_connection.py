"""Connection behaviour against real servers with other settings: retries on a full queue
(honouring the server's delay), TLS with client certificates, and the bearer token."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import numpy as np
import pytest
from PIL import Image

from maira_sae.client import (
    AuthenticationError,
    Client,
    GenerationSettings,
    RetryPolicy,
    ServerBusyError,
    Study,
    TlsFiles,
    TokenEvent,
    UnavailableError,
)
from maira_sae.client.cli import main
from tests.client.tls_files import write_pki

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def one_slot_server(demo_checkpoint):
    """A server whose queue holds one request: a running generation fills it."""
    from maira_sae.server.service.config import BatchingConfig
    from tests.support.servers import demo_config, running_server

    config = demo_config(demo_checkpoint, batching=BatchingConfig(queue_size=1))
    with running_server(config) as server:
        yield server


def big_study() -> Study:
    """A study over 256 KiB: gRPC core only replays requests that fit its retry buffer."""
    noise = np.random.default_rng(0).integers(0, 256, size=(600, 600), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 256 * 1024
    return Study.of(buffer.getvalue())


def access_codes(records, method: str) -> list[str]:
    return [
        json.loads(r.message)["code"]
        for r in records
        if r.name == "maira_sae.access" and method in r.message
    ]


def test_full_queue_is_retried_after_the_servers_delay_then_succeeds(
    one_slot_server, study, caplog
):
    caplog.set_level(logging.INFO, logger="maira_sae.access")
    study_over_buffer = big_study()
    with Client(one_slot_server.target, retry=None) as blocker_client:
        blocker = blocker_client.generate_steered(
            study, settings=GenerationSettings(max_new_tokens=1000)
        )
        assert isinstance(next(blocker), TokenEvent)  # admitted: the queue is full now

        with pytest.raises(ServerBusyError) as busy:
            blocker_client.top_features(study, k=1)
        # The server's delay adapts to how long places are held (warm-up included), from 0.2 s.
        assert busy.value.retry_after_s >= 0.2

        release = threading.Timer(0.3, blocker.close)
        release.start()
        retry = RetryPolicy(max_attempts=5, initial_backoff_s=0.01, max_backoff_s=0.02)
        with Client(one_slot_server.target, retry=retry) as client:
            started = time.monotonic()
            result = client.encode(study_over_buffer, top_k_per_token=1)
            elapsed = time.monotonic() - started
        release.join()
    assert result.tokens
    codes = access_codes(caplog.records, "/Encode")
    assert codes[-1] == "OK" and "RESOURCE_EXHAUSTED" in codes
    rejected = codes.count("RESOURCE_EXHAUSTED")
    # Each retry waited the server's 0.2 s pushback, not the 0.01-0.02 s backoff.
    assert elapsed >= 0.2 * rejected - 0.05


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(demo_checkpoint, pki):
    """TLS with required client certificates (mTLS) and a bearer token."""
    from maira_sae.server.service.config import AuthConfig, TlsConfig
    from tests.support.servers import demo_config, running_server

    config = demo_config(
        demo_checkpoint,
        tls=TlsConfig(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca),
        auth=AuthConfig(token=TOKEN),
    )
    with running_server(config) as server:
        yield server


def test_mtls_and_token(tls_server, pki, study):
    tls = TlsFiles(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    with Client(tls_server.target, tls=tls, token=TOKEN) as client:
        assert client.health() == "SERVING"
        assert client.info().default_sae_id == "demo-ef4-layer15"
        results = client.generate_texts(study, settings=GenerationSettings(max_new_tokens=2))
        assert results[0].num_tokens == 2
    with Client(tls_server.target, tls=tls, token="wrong") as client:
        with pytest.raises(AuthenticationError) as denied:
            client.info()
        assert "invalid bearer token" in denied.value.message
        assert client.health() == "SERVING"  # health stays open for probes
    without_cert = TlsFiles(ca_file=pki.ca)
    with (
        Client(tls_server.target, tls=without_cert, token=TOKEN, retry=None, timeout_s=5) as c,
        pytest.raises(UnavailableError),
    ):
        c.info()


def test_cli_over_mtls_with_token_file(tls_server, pki, tmp_path, capsys):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    argv = [
        "--target", f"localhost:{tls_server.ports.grpc}",
        "--tls-ca", str(pki.ca),
        "--tls-cert", str(pki.client_cert),
        "--tls-key", str(pki.client_key),
        "--token-file", str(token_file),
        "info", "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["model"]["patch_grid_rows"] == 37
