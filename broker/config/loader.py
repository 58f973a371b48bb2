"""From TOML to a `Config`: read the file, parse it, validate every table, then apply
the rules that relate fields; raise one `ConfigError` listing every problem."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from broker.config import rules
from broker.config.engine import Problems, table, unknown
from broker.config.fields import SPECS
from broker.config.model import (
    SECTIONS,
    TOP_LEVEL,
    AnalyticsConfig,
    CameraConfig,
    Config,
    ConfigError,
    ControlConfig,
    IngestConfig,
    RetentionConfig,
    SecurityConfig,
    ServerConfig,
    TokenConfig,
    WorkersConfig,
)
from broker.config.show import key, typed


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file."""
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: cannot read: not UTF-8 (byte {exc.start})") from exc
    return parse(text, source, base=Path(path).resolve().parent)


def parse(text: str, source: str = "<config>", base: Path | None = None) -> Config:
    """Validate TOML text; ``source`` names it in syntax errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)".
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    return from_dict(data, base)


def from_dict(data: Mapping[str, Any], base: Path | None = None) -> Config:
    """Validate already-parsed TOML; raises `ConfigError` listing every problem.
    A relative ``control.state_file``, ``server.tls_cert``, ``server.tls_key``,
    ``security.keys_dir``, ``security.jwt_secret_file`` or ``security.jwks_file`` is
    resolved against ``base`` (the config's folder)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: must be a table, got {typed(data)}")
    problems = Problems()
    tables: dict[str, dict[str, Any]] = {}
    cameras: list[dict[str, Any]] = []
    camera_ids: set[str] = set()
    presets = rules.presets(data.get("presets", {}), problems)
    tokens = rules.tokens(data.get("tokens", []), problems)
    for name, value in data.items():
        if name in SECTIONS:
            cls = SECTIONS[name]
            tables[name] = table(cls, SPECS[cls], value, name, problems)
        elif name == "cameras":
            cameras, camera_ids = rules.cameras(value, presets, problems)
        elif name not in ("presets", "tokens"):
            problems.add(key(name), unknown(name, TOP_LEVEL))
    rules.check_restart_delays(tables.get("workers", {}), problems)
    rules.check_heartbeat(tables.get("control", {}), problems)
    rules.check_orphan_timeout(tables.get("workers", {}), tables.get("control", {}), problems)
    rules.check_default_camera(tables.get("server", {}), camera_ids, problems)
    rules.check_token_cameras(tokens, camera_ids, problems)
    rules.check_max_cameras(tables.get("ingest", {}), len(cameras), problems)
    rules.tls_files(tables.setdefault("server", {}), base, problems)
    rules.check_network_exposure(
        tables.get("ingest", {}), tables.get("control", {}), tables.get("security", {}), problems
    )
    rules.check_feed_exposure(tables.get("analytics", {}), tables.get("security", {}), problems)
    security = tables.get("security", {})
    for name in ("jwt_secret_file", "jwks_file"):  # key files: relative to the config
        if security.get(name) and base is not None:
            security[name] = str(base / security[name])
    rules.check_signed_tokens(security, problems)
    if problems.messages:
        raise ConfigError(problems.messages)
    control = tables.get("control", {})
    state_file = control.get("state_file", ControlConfig().state_file)
    if state_file and base is not None:
        control["state_file"] = str(base / state_file)  # an absolute one stays as it is
    security = tables.get("security", {})
    if security.get("keys_dir") and base is not None:
        security["keys_dir"] = str(base / security["keys_dir"])
    analytics = tables.get("analytics", {})
    for name in ("onnx_model", "onnx_labels"):
        if analytics.get(name) and base is not None:
            analytics[name] = str(base / analytics[name])
    return Config(
        server=ServerConfig(**tables.get("server", {})),
        ingest=IngestConfig(**tables.get("ingest", {})),
        workers=WorkersConfig(**tables.get("workers", {})),
        retention=RetentionConfig(**tables.get("retention", {})),
        control=ControlConfig(**control),
        security=SecurityConfig(**security),
        analytics=AnalyticsConfig(**analytics),
        cameras=tuple(CameraConfig(**camera) for camera in cameras),
        presets=presets,
        tokens=tuple(TokenConfig(**token) for token in tokens),
    )
