"""Replays tests/fuzz/corpus/cases.toml: every escape a fuzz target found, through that
target's own invariant, on every run (see corpus/cases.toml for the fields and formats).

A control script (``control/*.json``) is ``{"steps": [[kind, ...], ...]}`` with kinds
``message`` (identity, payload), ``command`` (camera, command, settings), ``preset``
(camera, preset), ``script`` (camera, payload: the worker's next reply), ``sleep``
(seconds), ``watch`` / ``unwatch`` / ``silence`` (camera) and ``exited`` (camera, pid).
A payload is ``{"hex": "..."}`` or ``{"msgpack": value}``; in a value, ``{"$bytes":
HEX}`` is a msgpack bin, ``{"$float": "nan"}`` a float, a key ``"$bytes:HEX"`` a bin key,
and ``"$default": "supported"`` (or ``"settings"``) first in a map starts it from ours.
Settings are ``{"json": TEXT}`` (parsed as a client's body is) or a JSON value.
`script_json` writes a script the control target found in this format.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from fuzzing import CORPUS
from test_fuzz_control import check_control, check_decode
from test_fuzz_http import check_raw
from test_fuzz_uploads import check_upload
from test_fuzz_wire import check as check_wire
from test_fuzz_ws import VIOLATIONS, check_ws

from broker.protocol import settings as camera_settings

CASES = tomllib.loads((CORPUS / "cases.toml").read_text())["case"]


def params() -> list[Any]:
    return [pytest.param(case, id=case["name"]) for case in CASES]


def from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if value.keys() == {"$bytes"}:
        return bytes.fromhex(value["$bytes"])
    if value.keys() == {"$float"}:
        return float(value["$float"])
    out: dict[Any, Any] = {}
    for key, item in value.items():
        if key == "$default":
            out.update(
                {"supported": camera_settings.supported, "settings": camera_settings.defaults}[
                    item
                ]()
            )
        elif key.startswith("$bytes:"):
            out[bytes.fromhex(key.removeprefix("$bytes:"))] = from_json(item)
        else:
            out[key] = from_json(item)
    return out


def payload(spec: dict[str, Any]) -> bytes:
    if "hex" in spec:
        return bytes.fromhex(spec["hex"])
    return msgpack.packb(from_json(spec["msgpack"]))


def settings(spec: Any) -> Any:
    return json.loads(spec["json"]) if isinstance(spec, dict) and "json" in spec else spec


def script(steps: list[list[Any]]) -> list[tuple[str, Any]]:
    """A control script from its JSON form, as the control target plays it."""
    out: list[tuple[str, Any]] = []
    for kind, *args in steps:
        if kind == "message":
            out.append((kind, (args[0].encode("latin-1"), payload(args[1]))))
        elif kind == "command":
            out.append((kind, (args[0], args[1], settings(args[2]))))
        elif kind == "script":
            out.append((kind, (args[0], payload(args[1]))))
        elif kind in ("preset", "exited"):
            out.append((kind, tuple(args)))
        else:
            out.append((kind, args[0]))
    return out


def script_json(steps: list[tuple[str, Any]]) -> str:
    """A control script the fuzz found, in the corpus's JSON form (to save it there)."""
    out: list[list[Any]] = []
    for kind, arg in steps:
        if kind in ("message", "script"):
            out.append(
                [
                    kind,
                    arg[0].decode("latin-1") if kind == "message" else arg[0],
                    {"hex": arg[1].hex()},
                ]
            )
        elif kind == "command":
            out.append([kind, arg[0], arg[1], {"json": json.dumps(arg[2])}])
        else:
            out.append([kind, *(arg if isinstance(arg, tuple) else (arg,))])
    return json.dumps({"steps": out}, indent=1)


@pytest.fixture(scope="module")
def state_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus") / "state.json"


@pytest.mark.parametrize("case", params())
def test_corpus_case(case: dict[str, Any], state_file: Path) -> None:
    target = case["target"]
    data = (CORPUS / case["file"]).read_bytes() if "file" in case else b""
    if target == "wire":
        check_wire(msgpack.unpackb(data))
    elif target == "control-decode":
        check_decode(data)
    elif target == "control":
        check_control(script(json.loads(data)["steps"]), state_file)
    elif target == "upload":
        check_upload(case["content_type"], data)
    elif target == "http":
        check_raw(
            data,
            tokens=case.get("tokens", False),
            eof=case.get("eof", True),
            read_for=case.get("read_for", 5.0),
            reset=case.get("reset", False),
        )
    elif target == "ws":
        if "violation" in case:
            frame, code = VIOLATIONS[case["violation"]]
            check_ws(frame, close=code, early=case.get("early", False))
        else:
            check_ws(data, tokens=case.get("tokens", False), answers=case.get("answers"))
    else:
        raise AssertionError(f"unknown target {target!r}")


def test_script_json_round_trips() -> None:
    steps = [
        ("message", (b"cam", b"\x81\xa4type\xa9heartbeat")),
        ("sleep", 1.5),
        ("command", ("cam", "update_settings", {"name": "\ud800"})),
        ("exited", ("cam", 4242)),
        ("watch", "od"),
    ]
    assert script(json.loads(script_json(steps))["steps"]) == steps
