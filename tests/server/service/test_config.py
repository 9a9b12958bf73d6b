"""ServerConfig: defaults, precedence file < env < flags, strict keys, range checks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from maira_sae.client.imaging.dicom import DicomOptions
from maira_sae.server.service.config import (
    AuthConfig,
    ConfigError,
    LimitsConfig,
    ServerConfig,
)
from maira_sae.server.service.config_sources import (
    add_arguments,
    config_from_mapping,
    config_from_sources,
    load_file,
)

TOML = """
default_sae_id = "f4"

[serving]
grpc_port = 1000
metrics_port = 1001
log_level = "DEBUG"

[limits]
max_new_tokens = 512

[[saes]]
id = "f2"
path = "/saes/f2"

[[saes]]
id = "f4"
path = "/saes/f4"
interpretations_path = "/saes/f4.csv"
threshold = 0.25
"""


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_fit_the_real_model():
    config = config_from_sources(parse(), {})
    assert config == ServerConfig()
    limits = config.limits
    assert (limits.max_image_bytes, limits.max_image_pixels) == (32 * 2**20, 40_000_000)
    assert (limits.max_images, limits.max_text_chars) == (3, 4000)
    assert (limits.max_new_tokens, limits.default_max_new_tokens) == (1024, 300)
    assert (limits.max_variants, limits.max_interventions_per_variant) == (8, 16)
    assert (limits.max_top_k, limits.max_abs_strength) == (256, 1e4)
    assert (config.batching.max_batch_size, config.batching.batch_window_ms) == (8, 5)
    assert config.batching.queue_size == 64
    assert (config.serving.grpc_port, config.serving.metrics_port) == (50051, 9090)
    assert config.serving.drain_grace_s == 30
    assert config.serving.max_message_bytes == 64 * 2**20
    assert config.auth.load_token() is None


def test_precedence_file_then_env_then_flags(tmp_path):
    file = tmp_path / "config.toml"
    file.write_text(TOML)
    environ = {
        "MAIRA_SAE_SERVING_METRICS_PORT": "2001",
        "MAIRA_SAE_SERVING_GRPC_PORT": "2000",
        "MAIRA_SAE_LIMITS_MAX_TOP_K": "64",
    }
    config = config_from_sources(parse("--serving-grpc-port", "3000"), environ, file)
    assert config.serving.grpc_port == 3000  # flag beats env and file
    assert config.serving.metrics_port == 2001  # env beats file
    assert config.serving.log_level == "DEBUG"  # file beats default
    assert config.limits.max_new_tokens == 512
    assert config.limits.max_top_k == 64
    assert config.limits.max_images == 3  # untouched sections keep their defaults
    assert [s.id for s in config.saes] == ["f2", "f4"]
    assert config.saes[1].threshold == 0.25
    assert config.resolved_default_sae_id == "f4"


def test_json_file_named_by_flag_or_env_is_the_same(tmp_path):
    file = tmp_path / "config.json"
    file.write_text(json.dumps({"model": {"path": "/models/maira-2", "dtype": "bfloat16"}}))
    by_flag = config_from_sources(parse("--config", str(file)), {})
    by_env = config_from_sources(parse(), {"MAIRA_SAE_CONFIG": str(file)})
    assert by_flag == by_env
    assert by_flag.model.path == "/models/maira-2"
    assert by_flag.model.dtype == "bfloat16"


def test_configmap_mapping_loads_and_unknown_keys_are_refused():
    data = {"serving": {"grpc_port": 50051}, "batching": {"queue_size": 16}}
    assert config_from_mapping(data).batching.queue_size == 16
    with pytest.raises(ConfigError, match=r"batching: unknown key\(s\) 'queue_sise'"):
        config_from_mapping({"batching": {"queue_sise": 16}})
    with pytest.raises(ConfigError, match=r"config: unknown key\(s\) 'limit'"):
        config_from_mapping({"limit": {}})
    with pytest.raises(ConfigError, match=r"saes\[0\]: unknown key\(s\) 'pth'"):
        config_from_mapping({"saes": [{"id": "a", "pth": "/x"}]})
    with pytest.raises(ConfigError, match=r"saes\[0\]: missing required key\(s\) path"):
        config_from_mapping({"saes": [{"id": "a"}]})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"serving": {"grpc_port": 70000}}, "serving.grpc_port must be in 0..65535, got 70000"),
        ({"serving": {"grpc_port": "50051"}}, None),  # strings parse, as from env
        ({"serving": {"grpc_port": 1.5}}, "serving.grpc_port must be int, got 1.5"),
        ({"serving": {"grpc_port": True}}, "serving.grpc_port must be int, got True"),
        ({"serving": {"log_level": "LOUD"}}, "serving.log_level must be one of"),
        ({"limits": {"max_top_k": 0}}, "limits.max_top_k must be > 0, got 0"),
        ({"limits": {"max_abs_strength": "nan"}}, "limits.max_abs_strength must be > 0, got nan"),
        (
            {"limits": {"default_max_new_tokens": 2000}},
            "limits.default_max_new_tokens (2000) must not exceed limits.max_new_tokens (1024)",
        ),
        (
            {"limits": {"max_variants": 9}},
            "limits.max_variants (9) must not exceed batching.max_batch_size (8)",
        ),
        ({"batching": {"batch_window_ms": -1}}, "batching.batch_window_ms must be >= 0"),
        ({"batching": {"decode_path": "paged"}}, "batching.decode_path must be one of dynamic"),
        ({"batching": {"decode_compile": "fast"}}, "batching.decode_compile must be one of off"),
        (
            {"batching": {"decode_compile": "reduce-overhead"}},
            "batching.decode_compile needs batching.decode_path = 'static'",
        ),
        ({"batching": {"decode_path": "static", "decode_compile": "reduce-overhead"}}, None),
        ({"batching": {"kv_memory_fraction": 1.5}}, "batching.kv_memory_fraction must be in"),
        ({"batching": {"long_call_share": 0}}, "batching.long_call_share must be in (0, 1]"),
        ({"batching": {"batch_weight": 2}}, "batching.batch_weight must be in (0, 1], got 2"),
        ({"batching": {"max_call_s": 0}}, "batching.max_call_s must be > 0, got 0"),
        (
            {"batching": {"max_decode_rows": 4, "short_call_rows": 4}},
            "batching.short_call_rows must be in 0..3 (below max_decode_rows), got 4",
        ),
        ({"batching": {"long_call_tokens": -5}}, "batching.long_call_tokens must be > 0"),
        ({"model": {"device": "gpu"}}, "model.device must be auto, cpu, mps, cuda or cuda:N"),
        ({"model": {"dtype": "int8"}}, "model.dtype must be one of"),
        (
            {"model": {"image_features": "pooler"}},
            "model.image_features must be one of feature_maps, hidden_states, got 'pooler'",
        ),
        ({"tls": {"cert": "/c.pem"}}, "tls.cert and tls.key must be set together"),
        ({"tls": {"client_ca": "/ca.pem"}}, "tls.client_ca needs tls.cert"),
        ({"saes": [{"id": "a b", "path": "/x"}]}, "saes: id 'a b' must be letters"),
        ({"saes": [{"id": "a", "path": "/x"}] * 2}, "saes: duplicate id(s) a"),
        ({"default_sae_id": "zz"}, "default_sae_id 'zz' is not one of the saes"),
        ({"saes": [{"id": "a", "path": "/x", "input_scale": 0}]}, "saes[a].input_scale must be"),
    ],
)
def test_validation_messages(data, message):
    if message is None:
        config_from_mapping(data)
        return
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data)
    assert message in str(info.value)


def test_env_values_are_parsed_and_checked():
    config = config_from_sources(
        None,
        {
            "MAIRA_SAE_MODEL_DEMO": "true",
            "MAIRA_SAE_LIMITS_MAX_ABS_STRENGTH": "250.5",
            "MAIRA_SAE_TLS_CERT": "",  # empty: unset
            "MAIRA_SAE_SAES": '[{"id": "a", "path": "/x", "layer": 15}]',
        },
    )
    assert config.model.demo is True
    assert config.limits.max_abs_strength == 250.5
    assert config.tls.cert is None
    assert config.saes[0].layer == 15
    with pytest.raises(ConfigError, match=r"model.demo must be true or false, got 'maybe'"):
        config_from_sources(None, {"MAIRA_SAE_MODEL_DEMO": "maybe"})
    with pytest.raises(ConfigError, match=r"limits.max_images must be int, got 'three'"):
        config_from_sources(None, {"MAIRA_SAE_LIMITS_MAX_IMAGES": "three"})


def test_dicom_settings_from_env_and_flags():
    assert ServerConfig().dicom.options() == DicomOptions()  # CR, DX, DR; window applied
    config = config_from_sources(
        parse("--no-dicom-apply-voi"), {"MAIRA_SAE_DICOM_MODALITIES": "cr, dx,OT"}
    )
    assert config.dicom.options() == DicomOptions(
        modalities=frozenset({"CR", "DX", "OT"}), apply_voi=False
    )
    assert config_from_sources(None, {"MAIRA_SAE_DICOM_MODALITIES": "*"}).dicom.options() == (
        DicomOptions(modalities=None)
    )
    with pytest.raises(ConfigError, match=r"dicom.modalities must list modalities"):
        config_from_sources(None, {"MAIRA_SAE_DICOM_MODALITIES": " , "})


def test_kubernetes_service_variables_are_ignored():
    environ = {
        "MAIRA_SAE_PORT": "tcp://10.0.0.1:50051",
        "MAIRA_SAE_SERVICE_HOST": "10.0.0.1",
        "MAIRA_SAE_PORT_50051_TCP_PORT": "50051",
    }
    assert config_from_sources(None, environ) == ServerConfig()


def test_flags_for_booleans_and_saes():
    args = parse("--model-demo", "--sae", "f2=/saes/f2", "--sae", "f4=/saes/f4")
    config = config_from_sources(args, {"MAIRA_SAE_MODEL_DEMO": "false"})
    assert config.model.demo is True
    assert [(s.id, str(s.path)) for s in config.saes] == [("f2", "/saes/f2"), ("f4", "/saes/f4")]
    with pytest.raises(ConfigError, match=r"--sae must read ID=PATH"):
        config_from_sources(parse("--sae", "f2"), {})


def test_an_sae_flag_can_name_its_interpretations_and_other_settings():
    flag = "mine=/saes/mine,interpretations=/labels.csv,dashboard=/dash,threshold=0.25"
    (spec,) = config_from_sources(parse("--sae", flag), {}).saes
    assert (spec.id, spec.path, spec.interpretations_path, spec.dashboard_path) == (
        "mine",
        Path("/saes/mine"),
        Path("/labels.csv"),
        Path("/dash"),
    )
    assert spec.threshold == 0.25
    for bad, refusal in (
        ("mine=/s,interpretations", r"--sae must read ID=PATH\[,interpretations=FILE"),
        ("mine=/s,colour=red", r"saes\[0\]: unknown key\(s\) 'colour'"),
        ("mine=/s,threshold=x", r"saes\[0\]\.threshold must be float"),
        ("mine=/s,interpretations=/a,interpretations_path=/b", r"--sae mine: .* twice"),
    ):
        with pytest.raises(ConfigError, match=refusal):
            config_from_sources(parse("--sae", bad), {})


def test_flags_of_the_host_parser_are_left_alone():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parser.add_argument("--verbose", action="store_true")
    assert config_from_sources(parser.parse_args(["--verbose"]), {}) == ServerConfig()


def test_auth_token_is_secret(tmp_path, capsys):
    config = config_from_sources(parse(), {"MAIRA_SAE_AUTH_TOKEN": "t0ken"})
    assert config.auth.load_token() == "t0ken"
    assert "t0ken" not in repr(config)
    with pytest.raises(SystemExit):
        parse("--help")
    assert "--auth-token " not in capsys.readouterr().out  # a flag would show in `ps`
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert AuthConfig(token_file=token_file).load_token() == "from-file"
    token_file.write_text("\n")
    with pytest.raises(ConfigError, match=r"is empty"):
        AuthConfig(token_file=token_file).load_token()
    with pytest.raises(ConfigError, match=r"exclusive"):
        AuthConfig(token="a", token_file=token_file)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"use a .toml or .json file"):
        load_file(tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match=r"config file .*missing.toml"):
        load_file(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[limits\n")
    with pytest.raises(ConfigError, match=r"broken.toml"):
        load_file(broken)


def test_grpc_server_options():
    options = dict(ServerConfig().grpc_server_options())
    assert options["grpc.max_receive_message_length"] == 64 * 2**20
    assert options["grpc.max_connection_age_ms"] == 600_000
    no_ageing = config_from_mapping({"keepalive": {"max_connection_age_s": 0}})
    assert "grpc.max_connection_age_ms" not in dict(no_ageing.grpc_server_options())


def test_limits_are_frozen():
    with pytest.raises(AttributeError):
        LimitsConfig().max_top_k = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("queue_size", "share", "places"), [(64, 0.75, 48), (2, 0.75, 1), (1, 0.1, 1)]
)
def test_long_calls_get_their_share_of_the_queue_and_at_least_one_place(queue_size, share, places):
    batching = config_from_mapping(
        {"batching": {"queue_size": queue_size, "long_call_share": share}}
    ).batching
    assert batching.long_call_places == places
