"""Reads the server's configuration from its four sources into one ``ServerConfig``.

Precedence, lowest first: the defaults of ``config``, a config file (TOML or JSON, chosen by
suffix), environment variables, command-line flags. Every setting lives in a section and has
one name in each source::

    file      [limits] max_new_tokens = 512      (TOML; JSON: {"limits": {"max_new_tokens": 512}})
    env       MAIRA_SAE_LIMITS_MAX_NEW_TOKENS=512
    flag      --limits-max-new-tokens 512

Two top-level settings sit outside sections: ``default_sae_id`` (``MAIRA_SAE_DEFAULT_SAE_ID``,
``--default-sae-id``) and ``saes``, a list of SAE specs (file: ``[[saes]]`` tables; env:
``MAIRA_SAE_SAES`` holding a JSON list of objects; flag: ``--sae ID=PATH[,KEY=VALUE...]``,
repeatable, where a key is ``interpretations`` or ``dashboard`` (the files' paths) or any other
field of an SAE spec, such as ``threshold``). The file may also be named by ``--config`` or
``MAIRA_SAE_CONFIG``.

Unknown keys in a file or in ``MAIRA_SAE_SAES`` are refused, so a typo in a Kubernetes
ConfigMap fails the pod at start. Unknown ``MAIRA_SAE_*`` variables are ignored: Kubernetes
injects ``<SERVICE>_PORT`` and ``<SERVICE>_SERVICE_HOST`` variables for a Service named
maira-sae, which no setting name can collide with.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from maira_sae.server.service.config import ConfigError, ServerConfig

ENV_PREFIX = "MAIRA_SAE_"


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def config_from_mapping(data: Mapping[str, Any]) -> ServerConfig:
    """Builds a config from nested plain data (a parsed file); unknown keys are refused."""
    return _build(ServerConfig, data, where="")


def config_from_sources(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    file: Path | None = None,
) -> ServerConfig:
    """Defaults < ``file`` (else ``--config``, else ``MAIRA_SAE_CONFIG``) < env < flags."""
    environ = environ or {}
    if file is None:
        file = getattr(args, "config", None) or environ.get(f"{ENV_PREFIX}CONFIG") or None
    merged: dict[str, Any] = load_file(Path(file)) if file is not None else {}
    for layer in (_from_environ(environ), _from_args(args)):
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return config_from_mapping(merged)


def load_file(path: Path) -> dict[str, Any]:
    """Parses a TOML (``.toml``) or JSON (``.json``) config file into plain data."""
    _require(path.suffix in (".toml", ".json"), f"config file {path}: use a .toml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"config file {path}: {err.strerror}") from err
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except ValueError as err:
        raise ConfigError(f"config file {path}: {err}") from err
    _require(isinstance(data, dict), f"config file {path}: the top level must be a table")
    return data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--config`` and one flag per setting, named ``--<section>-<key>``."""
    parser.add_argument("--config", type=Path, help="TOML or JSON config file")
    for section, section_cls in _sections().items():
        group = parser.add_argument_group(f"{section} settings")
        for f in dataclasses.fields(section_cls):
            if f.metadata.get("secret"):
                continue
            flag = f"--{section}-{f.name}".replace("_", "-")
            kind = _hints(section_cls)[f.name]
            if _base_type(kind) is bool:
                action: Any = argparse.BooleanOptionalAction
                group.add_argument(
                    flag,
                    dest=f"{section}.{f.name}",
                    action=action,
                    default=argparse.SUPPRESS,
                    help=f.metadata.get("help"),
                )
            else:
                group.add_argument(
                    flag,
                    dest=f"{section}.{f.name}",
                    default=argparse.SUPPRESS,
                    metavar=f.name.upper(),
                    help=f.metadata.get("help"),
                )
    parser.add_argument(
        "--default-sae-id",
        dest="default_sae_id",
        default=argparse.SUPPRESS,
        help="SAE used when a request leaves sae_id empty; default the first",
    )
    parser.add_argument(
        "--sae",
        dest="saes",
        action="append",
        default=argparse.SUPPRESS,
        metavar="ID=PATH[,interpretations=FILE]",
        help="an SAE to load, optionally with its interpretation file and other settings"
        " (dashboard=FOLDER, threshold=T, layer=L, or any key of an [[saes]] table), as"
        " ID=PATH,KEY=VALUE,...; repeat for several (with --demo, beside the demo's SAE)",
    )


# -------------------------------------------------------------------------------------------
# Building the typed object from plain data


def _sections() -> dict[str, type]:
    hints = _hints(ServerConfig)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(ServerConfig)
        if dataclasses.is_dataclass(hints[f.name])
    }


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(kind: Any) -> Any:
    """``X | None`` -> X; anything else unchanged."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        (base,) = [a for a in typing.get_args(kind) if a is not type(None)]
        return base
    return kind


def _build(cls: type, data: Any, where: str) -> Any:
    label = where or "config"
    _require(isinstance(data, Mapping), f"{label} must be a table, got {type(data).__name__}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    _require(
        not unknown,
        f"{label}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(names)}",
    )
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    _require(not missing, f"{label}: missing required key(s) {', '.join(missing)}")
    kwargs = {
        name: _convert(value, hints[name], f"{where}.{name}" if where else name)
        for name, value in data.items()
    }
    return cls(**kwargs)


def _convert(value: Any, kind: Any, where: str) -> Any:
    if dataclasses.is_dataclass(kind):
        return _build(kind, value, where)
    if typing.get_origin(kind) is tuple:
        item_kind = typing.get_args(kind)[0]
        _require(isinstance(value, list | tuple), f"{where} must be a list")
        return tuple(_convert(item, item_kind, f"{where}[{i}]") for i, item in enumerate(value))
    base = _base_type(kind)
    if base is not kind and value in (None, ""):  # an optional setting left empty
        return None
    if isinstance(value, str) and base is not str and base is not Path:
        value = _parse_text(value, base, where)
    accepted = {int: (int,), float: (int, float), bool: (bool,), str: (str,), Path: (str, Path)}
    ok = isinstance(value, accepted[base]) and not (base is not bool and isinstance(value, bool))
    _require(ok, f"{where} must be {base.__name__}, got {value!r}")
    return base(value)


def _parse_text(text: str, base: type, where: str) -> Any:
    """Parses an environment variable or flag value."""
    if base is bool:
        lowered = text.strip().lower()
        _require(
            lowered in ("1", "true", "yes", "on", "0", "false", "no", "off"),
            f"{where} must be true or false, got {text!r}",
        )
        return lowered in ("1", "true", "yes", "on")
    try:
        return base(text)
    except ValueError as err:
        raise ConfigError(f"{where} must be {base.__name__}, got {text!r}") from err


def _from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, section_cls in _sections().items():
        for f in dataclasses.fields(section_cls):
            name = f"{ENV_PREFIX}{section}_{f.name}".upper()
            if name in environ:
                out.setdefault(section, {})[f.name] = environ[name]
    if f"{ENV_PREFIX}DEFAULT_SAE_ID" in environ:
        out["default_sae_id"] = environ[f"{ENV_PREFIX}DEFAULT_SAE_ID"]
    if f"{ENV_PREFIX}SAES" in environ:
        try:
            out["saes"] = json.loads(environ[f"{ENV_PREFIX}SAES"])
        except ValueError as err:
            raise ConfigError(f"{ENV_PREFIX}SAES must be a JSON list of objects: {err}") from err
    return out


def _from_args(args: argparse.Namespace | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    given = vars(args) if args is not None else {}
    sections = _sections()
    for dest, value in given.items():  # the parser may hold flags of its own: skip those
        section, _, key = dest.partition(".")
        if section in sections and key:
            out.setdefault(section, {})[key] = value
    if "default_sae_id" in given:
        out["default_sae_id"] = given["default_sae_id"]
    if "saes" in given:
        out["saes"] = [_parse_sae_flag(item) for item in given["saes"]]
    return out


# ``--sae`` keys that name a file, by their short names; any other key is the spec's own.
_SAE_FLAG_KEYS = {"interpretations": "interpretations_path", "dashboard": "dashboard_path"}


def _parse_sae_flag(text: str) -> dict[str, str]:
    """``ID=PATH[,KEY=VALUE...]`` as an ``[[saes]]`` table (checked where tables are)."""
    usage = f"--sae must read ID=PATH[,interpretations=FILE,KEY=VALUE...], got {text!r}"
    sae_id, sep, rest = text.partition("=")
    path, *settings = rest.split(",")
    _require(bool(sep and sae_id and path), usage)
    spec = {"id": sae_id, "path": path}
    for setting in settings:
        key, sep, value = setting.partition("=")
        _require(bool(sep and key and value), usage)
        name = _SAE_FLAG_KEYS.get(key, key)
        _require(name not in spec, f"--sae {sae_id}: {key} is given twice")
        spec[name] = value
    return spec
