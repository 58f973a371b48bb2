"""The validation engine: checks a table's values against one `Spec` per field and
collects every problem, each under the key path at fault.

It knows kinds, ranges, choices and arrays; what each key accepts is data
(`broker.config.fields.SPECS`), and the rules that relate fields are
`broker.config.rules`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, Final

from broker.config.model import SECTIONS
from broker.config.show import key, show, typed
from broker.protocol import settings as camera_settings


@dataclass(frozen=True, slots=True)
class Spec:
    """What one key accepts."""

    kind: type  # bool, int, float, str, tuple for an array of `item`; object: `rule` decides
    lo: float | None = None  # inclusive range, for int and float
    hi: float | None = None
    choices: tuple[str, ...] = ()
    rule: Callable[[Any], str | None] | None = None  # extra check once the type is right
    item: Spec | None = None  # for arrays


class Problems:
    """Every problem found so far, and the key paths they concern."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.paths: set[str] = set()

    def add(self, path: str, problem: str) -> None:
        self.messages.append(f"{path}: {problem}")
        self.paths.add(path)


INVALID: Final = object()  # marks a value that failed its check


def table(
    cls: type, specs: Mapping[str, Spec], data: Any, path: str, problems: Problems
) -> dict[str, Any]:
    """The valid values of one table of dataclass ``cls``, keyed by field; the rest become
    problems."""
    if not isinstance(data, dict):
        problems.add(path, f"must be a table, got {typed(data)}")
        return {}
    for spec_field in fields(cls):
        if spec_field.default is MISSING and spec_field.name not in data:
            problems.add(f"{path}.{spec_field.name}", "is required")
    values: dict[str, Any] = {}
    for name, value in data.items():
        key_path = f"{path}.{key(name)}"
        if name not in specs:
            problems.add(key_path, unknown(name, list(specs), path))
            continue
        checked = check(specs[name], value, key_path, problems)
        if checked is not INVALID:
            values[name] = checked
    return values


def tables(
    cls: type, specs: Mapping[str, Spec], data: Any, path: str, problems: Problems
) -> list[dict[str, Any]]:
    """An array of tables such as [[cameras]]: each one's valid values."""
    if not isinstance(data, list):
        problems.add(path, f"must be an array of tables ([[{path}]]), got {typed(data)}")
        return []
    return [table(cls, specs, item, f"{path}[{i}]", problems) for i, item in enumerate(data)]


def check(spec: Spec, value: Any, path: str, problems: Problems) -> Any:
    """The value as stored (floats as float, arrays as tuples), or `INVALID`."""
    if spec.kind is list:  # an array of tables, checked by its own function
        return value
    if spec.item is not None:
        return _check_array(spec.item, value, path, problems)
    problem = _problem(spec, value)
    if problem is not None:
        problems.add(path, problem)
        return INVALID
    return float(value) if spec.kind is float else value


def _check_array(item: Spec, value: Any, path: str, problems: Problems) -> Any:
    if not isinstance(value, list):
        problems.add(path, f"must be an array of {_plural(item)}, got {typed(value)}")
        return INVALID
    checked = [check(item, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    # Our arrays list endpoints to bind (binding one twice fails) or camera ids.
    check_unique([(f"{path}[{i}]", v) for i, v in enumerate(value)], "entry", problems)
    return INVALID if INVALID in checked else tuple(checked)


def _problem(spec: Spec, value: Any) -> str | None:
    if not _has_kind(spec.kind, value):
        return f"must be {_want(spec)}, got {typed(value)}"
    out_of_range = spec.lo is not None and not (
        (not isinstance(value, float) or math.isfinite(value)) and spec.lo <= value <= spec.hi
    )
    if out_of_range or (spec.choices and value not in spec.choices):
        return f"must be {_want(spec)}, got {show(value)}"
    return spec.rule(value) if spec.rule is not None else None


def _has_kind(kind: type, value: Any) -> bool:
    if kind is object:  # any value: the rule says what is wrong
        return True
    if isinstance(value, bool):  # bool is an int subclass, but true is not a number
        return kind is bool
    if kind is float:  # an int is a fine float: `fps = 15`
        return isinstance(value, int | float)
    return isinstance(value, kind)


def _want(spec: Spec) -> str:
    return camera_settings.want(spec.kind, spec.lo, spec.hi, spec.choices)


def _plural(spec: Spec) -> str:
    plurals: dict[type, str] = {str: "strings"}  # the only arrays so far
    return plurals[spec.kind]


def check_unique(items: list[tuple[str, Any]], what: str, problems: Problems) -> None:
    first: dict[str, str] = {}
    for path, value in items:
        if not isinstance(value, str):
            continue  # already reported as the wrong type
        if value in first:
            problems.add(path, f"duplicate {what} {show(value)} (also {first[value]})")
        else:
            first[value] = path


def unknown(name: str, known: list[str], table: str = "") -> str:
    """Why key ``name`` is refused, with the likely key meant."""
    if table and name in (*SECTIONS, "cameras"):
        # TOML puts every key after a [table] header into that table.
        return "unknown key (a top-level key, so it must come before the first [table])"
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (known keys: {', '.join(known)})"
