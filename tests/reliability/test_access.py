"""Access and data: bearer-token auth (compared in constant time, health left open for
probes), TLS and mutual TLS with certificates made here, and no patient text in any log line."""

from __future__ import annotations

import datetime
import hmac
import inspect
import ipaddress
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from maira_sae.server.service import interceptors
from maira_sae.server.service.config import AuthConfig, TlsConfig
from maira_sae.server.service.logs import JsonFormatter
from maira_sae.v1 import maira_sae_pb2 as pb
from maira_sae.v1 import maira_sae_pb2_grpc as pb_grpc
from tests.reliability._support import (
    CANARY,
    SERVING,
    SMALL_PNG,
    canary_calls,
    health_status,
    length_delimited,
    outcome_of,
    study,
)
from tests.support.servers import RunningServer, demo_config, running_server
from tests.support.waiting import wait_until

TOKEN = "t0ken-" + "x" * 26
Code = grpc.StatusCode


# -------------------------------------------------------------------------------------------
# Token auth


@pytest.fixture(scope="module")
def auth_server(demo_checkpoint) -> Iterator[RunningServer]:
    with running_server(demo_config(demo_checkpoint, auth=AuthConfig(token=TOKEN))) as server:
        yield server


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ((), Code.UNAUTHENTICATED),
        ((("authorization", "Bearer wrong-token"),), Code.UNAUTHENTICATED),
        ((("authorization", f"Bearer {TOKEN}x"),), Code.UNAUTHENTICATED),
        ((("authorization", f"Basic {TOKEN}"),), Code.UNAUTHENTICATED),
        ((("authorization", TOKEN),), Code.UNAUTHENTICATED),
        ((("authorization", f"Bearer {TOKEN}"),), Code.OK),
        ((("authorization", f"bearer {TOKEN}"),), Code.OK),
    ],
    ids=["missing", "wrong", "prefix", "basic", "no-scheme", "right", "scheme-case"],
)
def test_bearer_token(auth_server, metadata, code):
    with grpc.insecure_channel(auth_server.target) as channel:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        assert outcome_of(lambda: stub.GetInfo(pb.GetInfoRequest(), metadata=metadata)).code == code
        search = pb.SearchFeaturesRequest(query="pacemaker")
        assert outcome_of(lambda: stub.SearchFeatures(search, metadata=metadata)).code == code
        generate = pb.GenerateSteeredRequest(
            study=study(SMALL_PNG), settings=pb.GenerationSettings(max_new_tokens=1)
        )
        assert outcome_of(lambda: stub.GenerateSteered(generate, metadata=metadata)).code == code


def test_rejected_calls_are_never_parsed_or_run(auth_server):
    """Without the token even a malformed message gets UNAUTHENTICATED, not a parse error."""
    with grpc.insecure_channel(auth_server.target) as channel:
        raw = channel.unary_unary("/maira_sae.v1.MairaSaeService/Encode", request_serializer=None)
        outcome = outcome_of(lambda: raw(length_delimited(1, b"\xff\xff\xff"), timeout=10))
    assert outcome.code == Code.UNAUTHENTICATED


def test_health_and_reflection_stay_open_for_probes(auth_server):
    assert health_status(auth_server.target) == SERVING
    assert health_status(f"127.0.0.1:{auth_server.ports.health}") == SERVING
    with grpc.insecure_channel(auth_server.target) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert "maira_sae.v1.MairaSaeService" in names


def test_token_is_compared_in_constant_time(auth_server, monkeypatch):
    source = inspect.getsource(interceptors.BearerTokenInterceptor)
    assert "compare_digest(" in source
    assert "== self._token" not in source and "self._token ==" not in source
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with grpc.insecure_channel(auth_server.target) as channel:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        outcome = outcome_of(
            lambda: stub.GetInfo(pb.GetInfoRequest(), metadata=(("authorization", "Bearer nope"),))
        )
    assert outcome.code == Code.UNAUTHENTICATED
    assert compared == [(b"nope", TOKEN.encode())]


# -------------------------------------------------------------------------------------------
# TLS and mutual TLS


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue(
    common_name: str, issuer: Pem | None = None, *, ca: bool = False, server: bool = False
) -> Pem:
    """An EC P-256 certificate, self-signed when ``issuer`` is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    signer_key = key
    issuer_name = _name(common_name)
    if issuer is not None:
        signer_key = serialization.load_pem_private_key(issuer.key, None)  # type: ignore[assignment]
        issuer_name = x509.load_pem_x509_certificate(issuer.cert).subject
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(signer_key, hashes.SHA256())  # type: ignore[arg-type]
    return Pem(
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    stranger: Pem  # a client certificate from a CA the server does not trust
    folder: Path

    def write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    ca = issue("maira-sae test CA", ca=True)
    other_ca = issue("someone else's CA", ca=True)
    return Pki(
        ca=ca,
        server=issue("localhost", ca, server=True),
        client=issue("client", ca),
        stranger=issue("stranger", other_ca),
        folder=tmp_path_factory.mktemp("pki"),
    )


def tls_config(pki: Pki, mutual: bool) -> TlsConfig:
    return TlsConfig(
        cert=pki.write("server.pem", pki.server.cert),
        key=pki.write("server.key", pki.server.key),
        client_ca=pki.write("ca.pem", pki.ca.cert) if mutual else None,
    )


def get_info(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    channel = (
        grpc.secure_channel(target, credentials)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        return outcome_of(lambda: stub.GetInfo(pb.GetInfoRequest(), timeout=5)).code


def credentials(pki: Pki, client: Pem | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=pki.ca.cert)
    return grpc.ssl_channel_credentials(pki.ca.cert, client.key, client.cert)


def test_tls(demo_checkpoint, pki):
    with running_server(demo_config(demo_checkpoint, tls=tls_config(pki, mutual=False))) as s:
        assert get_info(s.target, credentials(pki)) == Code.OK
        assert get_info(s.target, None) == Code.UNAVAILABLE  # plaintext is not spoken
        wrong_root = grpc.ssl_channel_credentials(root_certificates=pki.stranger.cert)
        assert get_info(s.target, wrong_root) == Code.UNAVAILABLE  # server not trusted
        # The probe port stays plaintext for the kubelet.
        assert health_status(f"127.0.0.1:{s.ports.health}") == SERVING


def test_mutual_tls_refuses_clients_without_a_trusted_certificate(demo_checkpoint, pki):
    with running_server(demo_config(demo_checkpoint, tls=tls_config(pki, mutual=True))) as s:
        assert get_info(s.target, credentials(pki, pki.client)) == Code.OK
        assert get_info(s.target, credentials(pki)) == Code.UNAVAILABLE  # no client cert
        assert get_info(s.target, credentials(pki, pki.stranger)) == Code.UNAVAILABLE
        assert get_info(s.target, None) == Code.UNAVAILABLE
        assert health_status(f"127.0.0.1:{s.ports.health}") == SERVING


# -------------------------------------------------------------------------------------------
# Patient data never reaches the logs


def test_canary_never_appears_in_logs_even_at_debug(demo_server, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)  # the root logger: every logger's records arrive here
    for name in list(logging.root.manager.loggerDict):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "level", logging.NOTSET)  # none filters its own debug
    logging.getLogger().manager._clear_cache()  # type: ignore[attr-defined]
    with grpc.insecure_channel(demo_server.target) as channel:
        stub = pb_grpc.MairaSaeServiceStub(channel)
        codes = canary_calls(stub)
        # An unexpected error inside the engine is logged with its traceback: still no canary.
        engine = demo_server.server.runtime.engine

        def broken(requests):
            raise RuntimeError("simulated failure")

        monkeypatch.setattr(engine, "analyse", broken)
        failure = outcome_of(
            lambda: stub.Encode(pb.EncodeRequest(study=study(SMALL_PNG, indication=CANARY)))
        )
        codes.append(failure.code)
    assert Code.OK in codes and Code.INTERNAL in codes and len(set(codes)) >= 4, codes
    # The access line of a call is written just after its status went out: wait for the last.
    wait_until(
        lambda: sum(r.name == "maira_sae.access" for r in caplog.records) >= len(codes),
        5,
        what="the access log to have seen every call",
    )
    formatter = JsonFormatter()
    records = list(caplog.records)
    lines = [formatter.format(record) for record in records]
    lines += [repr(record.args) for record in records]
    assert any(r.levelno == logging.DEBUG for r in caplog.records), "debug must be captured"
    assert any("Traceback" in line for line in lines), "the forced error must be logged"
    leaked = [line for line in lines if CANARY in line]
    assert not leaked, leaked[:3]
