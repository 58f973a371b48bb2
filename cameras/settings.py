"""Camera settings (seed 002's ``CameraSettings``): their names, types, ranges and
defaults, and all-or-nothing validation of a change.

Settings travel as plain dicts (msgpack to workers, JSON to clients, TOML presets), so
this module is only the rules. A worker narrows a range in its hello when its device
allows less (``supported``); the broker and the worker both validate against that.

Pure and synchronous.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cameras.wire import FORMATS

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
}


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
    unsupported and its min/max/choices narrow ours. Nothing is partly valid."""
    if not isinstance(changes, Mapping):
        raise SettingsError({"settings": f"must be an object of settings, got {_kind(changes)}"})
    errors: dict[str, str] = {}
    clean: Settings = {}
    for key, value in changes.items():
        setting = SETTINGS.get(key) if isinstance(key, str) else None
        if setting is None:
            errors[str(key)] = f"unknown setting (known: {', '.join(SETTINGS)})"
            continue
        if allowed is not None and key not in allowed:
            errors[key] = "not supported by this camera"
            continue
        limits = allowed.get(key, {}) if allowed is not None else {}
        problem = _problem(setting, value, limits)
        if problem is not None:
            errors[key] = problem
        else:
            clean[key] = float(value) if setting.kind is float else value
    if errors:
        raise SettingsError(errors)
    return clean


def _problem(setting: Setting, value: Any, limits: Mapping[str, Any]) -> str | None:
    if isinstance(value, bool) != (setting.kind is bool) or not (
        isinstance(value, setting.kind) or (setting.kind is float and isinstance(value, int))
    ):
        return f"must be {_want(setting, limits)}, got {_show(value)} ({_kind(value)})"
    lo, hi = limits.get("min", setting.lo), limits.get("max", setting.hi)
    choices = limits.get("choices", setting.choices)
    if setting.kind is str and lo is not None:
        if not lo <= len(value) <= hi:
            return f"must be {lo} to {hi} characters long, got {len(value)}"
        return None
    if lo is not None and not (math.isfinite(value) and lo <= value <= hi):
        return f"must be {_want(setting, limits)}, got {_show(value)}"
    if choices and value not in choices:
        return f"must be {_want(setting, limits)}, got {_show(value)}"
    return None


def _want(setting: Setting, limits: Mapping[str, Any]) -> str:
    choices = limits.get("choices", setting.choices)
    lo, hi = limits.get("min", setting.lo), limits.get("max", setting.hi)
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
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    names = {int: "an integer", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}  # fmt: skip
    return next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)
