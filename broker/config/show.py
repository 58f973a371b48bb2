"""Keys and values as TOML would write them, for the messages of a `ConfigError`."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from broker.protocol import settings as camera_settings


def key(name: str) -> str:
    """A key as TOML would write it, so a path stays unambiguous."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name, ensure_ascii=False)


def show(value: Any) -> str:
    """A value as TOML would write it (long strings shortened)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...", ensure_ascii=False)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return repr(value)


def typed(value: Any) -> str:
    """A value of the wrong type: tables and arrays by kind only, the rest with their kind."""
    if isinstance(value, dict | list):
        return kind(value)
    return f"{show(value)} ({kind(value)})"


def kind(value: Any) -> str:
    return camera_settings.kind_of(value, table="a table")
