"""The broker's configuration: built-in defaults, then a TOML file, then validation.

Every problem is collected, not just the first, and each names the path of the key at
fault (``server.queue_depth``, ``cameras[2].fps``), so one run tells the user all there
is to fix. Unknown keys are errors, with the likely key meant: a misspelt key must not
silently leave a default in force. ``config/example.toml`` documents every key at its
default value, and the tests keep it equal to the defaults and complete.

Pure and synchronous; the only I/O is `load` reading the file. The parts:

- `model`: the dataclasses, one per table, with the defaults; `ConfigError`.
- `loader`: TOML to a `Config` (`load`, `parse`, `from_dict`).
- `engine`: the validation engine, driven by one `Spec` per field.
- `fields`: the specs (`SPECS`) and the rules for single values.
- `rules`: cameras, presets and tokens, and the rules that relate two fields.
- `show`: keys and values as TOML writes them, for the messages.
"""

from __future__ import annotations

from broker.config.loader import from_dict, load, parse
from broker.config.model import (
    ROLES,
    AnalyticsConfig,
    CameraConfig,
    Config,
    ConfigError,
    ControlConfig,
    IngestConfig,
    RetentionConfig,
    ScheduleEntry,
    SecurityConfig,
    ServerConfig,
    TokenConfig,
    WorkersConfig,
)

__all__ = [
    "ROLES",
    "AnalyticsConfig",
    "CameraConfig",
    "Config",
    "ConfigError",
    "ControlConfig",
    "IngestConfig",
    "RetentionConfig",
    "ScheduleEntry",
    "SecurityConfig",
    "ServerConfig",
    "TokenConfig",
    "WorkersConfig",
    "from_dict",
    "load",
    "parse",
]
