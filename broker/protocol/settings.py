"""Camera settings (docs/protocol.md): their names, types, ranges and
defaults, and all-or-nothing validation of a change.

Settings travel as plain dicts (msgpack to workers, JSON to clients, TOML presets), so
this module is only the rules. A worker narrows a range in its hello when its device
allows less (``supported``); the broker and the worker both validate against that.

Pure and synchronous.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from broker.protocol.wire import FORMATS, MAX_DIMENSION

Settings = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Setting:
    kind: type  # int, float, str or bool
    default: Any
    lo: float | None = None  # inclusive range, for int and float
    hi: float | None = None
    choices: tuple[str, ...] = ()
    doc: str = ""

    def describe(self) -> dict[str, Any]:
        """This setting as a worker advertises it in its hello (and clients see it)."""
        described: dict[str, Any] = {"type": self.kind.__name__, "default": self.default}
        if self.lo is not None:
            described.update(min=self.lo, max=self.hi)
        if self.choices:
            described["choices"] = list(self.choices)
        return described


# brightness, contrast, saturation and sharpness are 0..100 with 50 meaning "as the
# camera delivers": a device maps them onto its own control range, software onto gains.
SETTINGS: dict[str, Setting] = {
    "width": Setting(int, 1280, 16, 7680, doc="frame width in pixels"),
    "height": Setting(int, 720, 16, 4320, doc="frame height in pixels"),
    "fps": Setting(float, 15.0, 0.1, 240, doc="frames per second"),
    "format": Setting(str, "jpeg", choices=FORMATS, doc="image format"),
    "quality": Setting(int, 80, 1, 100, doc="encoder quality"),
    "brightness": Setting(int, 50, 0, 100, doc="50 = unchanged"),
    "contrast": Setting(int, 50, 0, 100, doc="50 = unchanged"),
    "saturation": Setting(int, 50, 0, 100, doc="50 = unchanged, 0 = grey"),
    "sharpness": Setting(int, 50, 0, 100, doc="50 = unchanged, below softens, above sharpens"),
    "auto_exposure": Setting(bool, True, doc="let the camera choose the exposure"),
    "exposure_time": Setting(
        int,
        100,
        1,
        10000,
        doc="in 100 µs units (V4L2's exposure_time_absolute), when "
        "auto_exposure is off; 100 = 10 ms = unchanged in software",
    ),
    "name": Setting(str, "", 0, 64, doc="display name; its length is 0..64"),
    # Analytics (broker-owned: the broker analyses its own frames, so these work for
    # every camera, also one without a worker or control channel).
    "ai_enabled": Setting(bool, False, doc="analyse this camera's frames ([analytics] on)"),
    "ai_model": Setting(
        str,
        "motion",
        choices=("motion", "face", "person", "onnx"),
        doc="the detector; seed 002's object_detection and face_recognition are aliases "
        "of person and face",
    ),
    "ai_confidence": Setting(float, 0.5, 0, 1, doc="least confidence of a reported object"),
}

# The settings the broker applies itself (never sent to a worker).
BROKER_KEYS = ("ai_enabled", "ai_model", "ai_confidence")
# Other names accepted for a setting's value (seed 002's model names), normalised by
# `validate` to the canonical value.
ALIASES: dict[str, dict[str, str]] = {
    "ai_model": {"object_detection": "person", "face_recognition": "face"},
}


def split(changes: Mapping[str, Any]) -> tuple[Settings, Settings]:
    """``changes`` as (the keys a worker applies, the broker's own keys)."""
    worker = {k: v for k, v in changes.items() if k not in BROKER_KEYS}
    return worker, {k: v for k, v in changes.items() if k in BROKER_KEYS}


def worker_supported() -> dict[str, dict[str, Any]]:
    """Every setting a worker applies, described (the broker's own keys left out)."""
    return {n: s.describe() for n, s in SETTINGS.items() if n not in BROKER_KEYS}


class SettingsError(ValueError):
    """An invalid change. ``errors`` maps each bad key to what is wrong with it."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{key}: {problem}" for key, problem in self.errors.items()))


def defaults() -> Settings:
    return {name: setting.default for name, setting in SETTINGS.items()}


def supported() -> dict[str, dict[str, Any]]:
    """Every setting described, as a source that can apply them all advertises them."""
    return {name: setting.describe() for name, setting in SETTINGS.items()}


def validate(changes: Any, allowed: Mapping[str, Mapping[str, Any]] | None = None) -> Settings:
    """The change normalised (ints as int, floats as float), or `SettingsError` naming
    every bad key. ``allowed`` is a worker's ``supported`` map: keys it lacks are
    unsupported and its min/max/choices narrow ours. Nothing is partly valid.

    Total: whatever ``changes`` and ``allowed`` hold, only `SettingsError` is raised,
    and its text and keys are safe to encode (no lone surrogates, bounded length)."""
    if not isinstance(changes, Mapping):
        raise SettingsError({"settings": f"must be an object of settings, got {kind_of(changes)}"})
    errors: dict[str, str] = {}
    clean: Settings = {}
    for key, value in changes.items():
        setting = SETTINGS.get(key) if isinstance(key, str) else None
        if setting is None:
            errors[_name(key)] = f"unknown setting (known: {', '.join(SETTINGS)})"
            continue
        value = ALIASES.get(key, {}).get(value, value) if isinstance(value, str) else value
        # The broker's own keys are never narrowed by a worker.
        limits = allowed.get(key) if allowed is not None and key not in BROKER_KEYS else {}
        if not isinstance(limits, Mapping):
            errors[key] = "not supported by this camera"
            continue
        problem = _problem(setting, value, limits)
        if problem is not None:
            errors[key] = problem
        else:
            clean[key] = float(value) if setting.kind is float else value
    if errors:
        raise SettingsError(errors)
    return clean


# A worker's ``settings`` report its device, which may be set outside what a client may
# ask for: width and height are whatever size the frame protocol carries, and fps what
# camera-worker's --fps accepts (above 0).
REPORT_LIMITS: dict[str, dict[str, Any]] = {
    **{name: setting.describe() for name, setting in SETTINGS.items()},
    "width": {"min": 1, "max": MAX_DIMENSION},
    "height": {"min": 1, "max": MAX_DIMENSION},
    "fps": {"min": 1e-6, "max": 240},
}


def check_reported(values: Any) -> Settings:
    """A worker's current settings (its hello, its replies), normalised like `validate`:
    every key known, every value of its kind and in range (width and height up to the
    frame protocol's limit). Raises only `SettingsError`."""
    return validate(values, REPORT_LIMITS)


DESCRIPTION_KEYS = ("type", "default", "min", "max", "choices")


def check_supported(described: Any) -> dict[str, dict[str, Any]]:
    """A worker's ``supported`` map checked: known setting names, each described as
    `Setting.describe` does (its type's name; a default of that type; min and max finite
    numbers with min <= max, both or neither; choices a list of strings). Raises only
    `SettingsError` naming every bad entry."""
    if not isinstance(described, Mapping):
        raise SettingsError({"supported": f"must be an object, got {kind_of(described)}"})
    errors: dict[str, str] = {}
    for name, description in described.items():
        setting = SETTINGS.get(name) if isinstance(name, str) else None
        if setting is None:
            errors[_name(name)] = f"unknown setting (known: {', '.join(SETTINGS)})"
            continue
        problem = _description_problem(setting, description)
        if problem is not None:
            errors[name] = problem
    if errors:
        raise SettingsError(errors)
    return {name: dict(description) for name, description in described.items()}


def _description_problem(setting: Setting, description: Any) -> str | None:
    if not isinstance(description, Mapping):
        return f"must be an object, got {kind_of(description)}"
    unknown = [_name(key) for key in description if key not in DESCRIPTION_KEYS]
    if unknown:
        return f"unknown key(s) {', '.join(unknown)} (known: {', '.join(DESCRIPTION_KEYS)})"
    kind = setting.kind.__name__
    if description.get("type", kind) != kind:
        return f"type must be {kind!r}, got {_show(description['type'])}"
    if "default" in description and not _ofkind_of(description["default"], setting.kind):
        return f"default must be of type {kind}, got {_show(description['default'])}"
    if ("min" in description) != ("max" in description):
        return "min and max come together"
    if "min" in description:
        lo, hi = description["min"], description["max"]
        if not (_number(lo) and _number(hi)):
            return f"min and max must be finite numbers, got {_show(lo)} and {_show(hi)}"
        if lo > hi:
            return f"min {_show(lo)} is above max {_show(hi)}"
    choices = description.get("choices", [])
    if not isinstance(choices, list | tuple) or not all(isinstance(c, str) for c in choices):
        return f"choices must be a list of strings, got {_show(choices)}"
    return None


def _ofkind_of(value: Any, kind: type) -> bool:
    if isinstance(value, bool) or kind is bool:
        return isinstance(value, bool) and kind is bool
    return isinstance(value, kind) or (kind is float and isinstance(value, int))


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    )


def _problem(setting: Setting, value: Any, limits: Mapping[str, Any]) -> str | None:
    if isinstance(value, bool) != (setting.kind is bool) or not (
        isinstance(value, setting.kind) or (setting.kind is float and isinstance(value, int))
    ):
        return f"must be {_want(setting, limits)}, got {_show(value)} ({kind_of(value)})"
    lo, hi = _limit(limits, "min", setting.lo), _limit(limits, "max", setting.hi)
    choices = _choices(limits, setting.choices)
    if isinstance(value, str):
        if not _encodable(value):
            return "must be valid Unicode text (it holds a lone surrogate)"
        if lo is not None and hi is not None and not lo <= len(value) <= hi:
            return f"must be {_num(lo)} to {_num(hi)} characters long, got {len(value)}"
    elif lo is not None and hi is not None and not _within(cast(float, value), lo, hi):
        return f"must be {_want(setting, limits)}, got {_show(value)}"
    if choices and value not in choices:
        return f"must be {_want(setting, limits)}, got {_show(value)}"
    return None


def _within(value: float, lo: float, hi: float) -> bool:
    # An int is compared as it is: math.isfinite() of a huge one would overflow.
    return (isinstance(value, int) or math.isfinite(value)) and lo <= value <= hi


def _limit(limits: Mapping[str, Any], name: str, ours: float | None) -> float | None:
    """A worker's min or max when it is a finite number, else ours."""
    value = limits.get(name, ours)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ours
    return value if math.isfinite(value) else ours


def _choices(limits: Mapping[str, Any], ours: Sequence[str]) -> Sequence[str]:
    """A worker's choices when they are a list of strings, else ours."""
    value = limits.get("choices", ours)
    if isinstance(value, list | tuple) and all(isinstance(c, str) for c in value):
        return value
    return ours


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _name(key: Any) -> str:
    """An unknown key as an error names it: itself when it is short, plain text."""
    if isinstance(key, str) and len(key) <= 64 and _encodable(key):
        return key
    return _show(key)


def _want(setting: Setting, limits: Mapping[str, Any]) -> str:
    choices = _choices(limits, setting.choices)
    lo, hi = _limit(limits, "min", setting.lo), _limit(limits, "max", setting.hi)
    return want(setting.kind, lo, hi, choices)


def want(kind: type, lo: float | None, hi: float | None, choices: Sequence[str] = ()) -> str:
    """What a value must be, as error messages say it (also used by broker.config)."""
    if choices:
        return "one of " + ", ".join(choices)
    if kind is int:
        return f"an integer from {_num(lo)} to {_num(hi)}"
    if kind is float:
        return f"a number from {_num(lo)} to {_num(hi)}"
    return {bool: "true or false", str: "a string"}[kind]


def _num(x: float | None) -> str:
    """A range bound: 300, not 300.0; 0.1 as is."""
    assert x is not None
    return str(int(x)) if float(x).is_integer() else repr(x)


def _show(value: Any) -> str:
    """A value as an error message shows it: short, and ASCII-safe (repr escapes lone
    surrogates)."""
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than Python will print
        return f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def kind_of(value: Any, table: str = "an object") -> str:
    """A value's kind as every error message says it (settings, config, /ws): one
    vocabulary. ``table`` names a mapping in the dialect at hand ("a table" in TOML)."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "a boolean"
    kinds: list[tuple[type, str]] = [
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, table),
        (type(None), "null"),
        (dt.datetime, "a date-time"),  # before date: datetime is a date subclass
        (dt.date, "a date"),
        (dt.time, "a time"),
    ]
    return next((name for t, name in kinds if isinstance(value, t)), type(value).__name__)
