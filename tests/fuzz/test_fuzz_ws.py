"""Fuzz target: the multiplexed WebSocket ``/ws`` (docs/protocol.md, "Clients → broker:
many cameras on one WebSocket"), through the whole server path of an in-process broker
(`Server.handle_connection`, the upgrade, trio-websocket, `broker.serve.wsapi.Session`).

1. The JSON protocol: requests built from the protocol's shapes (subscribe,
   unsubscribe, ping, list_cameras, get_stats, command with settings and presets) with
   fields replaced by any JSON value (huge and non-finite numbers as raw literals such as
   ``1e400``, lone surrogates as ``\\ud800`` escapes, nesting), dropped or added, the
   text itself mutated, plus binary messages and pings, in well-formed frames.
   Invariant: every message gets exactly one answer (the documented reply or an
   ``error`` with a code, never ``internal_error``), each echoing its ``request_id``;
   every text message is strict JSON (no NaN or Infinity); every binary message is a
   frame (length, JSON header, image); the connection stays up; no fault counted.
2. The framing: a few good messages, then a protocol violation (an unmasked frame,
   reserved bits, an unknown opcode, a continuation with nothing to continue, invalid
   UTF-8, an oversized or fragmented control frame, a bad close code, a length of
   2^62, a message over 1 MiB). Invariant: the broker closes the connection with a close
   frame saying why (1002, 1007 or 1009; RFC 6455 7.4.1), in bounded time, and nothing
   escapes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from fuzzing import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    TEXT,
    budget,
    check_broker_fine,
    client_frame,
    close_code,
    exchange,
    in_process_broker,
    mux_frame,
    run_trio,
    server_frames,
    strict_json,
    upgrade_request,
)
from hypothesis import given
from hypothesis import strategies as st
from strategies import json_values, mutate_bytes

from broker.protocol import control as protocol
from broker.protocol import settings as camera_settings

RAW = "\u0000raw\u0000"  # a placeholder replaced by a raw JSON literal after dumping
RAW_NUMBERS = ["1e400", "-1e400", "1e-400", "123456789012345678901234567890", "-0", "0.1e1"]
ANSWERS = {"subscribed", "unsubscribed", "pong", "cameras", "stats", "command_result", "error"}
CODE = re.compile(r"[a-z][a-z_]*")

# -- the JSON protocol ------------------------------------------------------------------

cameras = st.sampled_from(["cam", "cam", "up", "od", "nope", ""]) | json_values
settings = st.dictionaries(
    st.sampled_from(list(camera_settings.SETTINGS)) | st.text(max_size=8), json_values, max_size=3
)


@st.composite
def request_objects(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(
            [
                "subscribe",
                "subscribe",
                "unsubscribe",
                "ping",
                "list_cameras",
                "get_stats",
                "command",
                "command",
                "bogus",
            ]
        )
    )
    request: dict[str, Any] = {"type": kind}
    if kind in ("subscribe", "unsubscribe", "command"):
        request["camera"] = draw(cameras)
    if kind == "subscribe" and draw(st.booleans()):
        request["max_fps"] = draw(
            st.sampled_from([None, 1, 5, 0.5, 0, -1, 1000, 1001, "5", True, RAW]) | json_values
        )
    if kind == "ping" and draw(st.booleans()):
        request["data"] = draw(json_values)
    if kind == "command":
        request["command"] = draw(st.sampled_from([*protocol.COMMANDS, "apply_preset", "bogus"]))
        if draw(st.booleans()):
            request["settings"] = draw(settings | json_values)
        if draw(st.booleans()):
            request["preset"] = draw(st.sampled_from(["night", "nope", ""]) | json_values)
    if draw(st.integers(0, 4)):
        request["request_id"] = draw(
            st.text(max_size=8)
            | st.integers(-(2**70), 2**70)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.sampled_from([RAW, None, True, [], {}])
        )
    for _ in range(draw(st.integers(0, 2))):
        op = draw(st.sampled_from(["replace", "drop", "add"]) if request else st.just("add"))
        if op == "replace":
            request[draw(st.sampled_from(sorted(request)))] = draw(json_values)
        elif op == "drop":
            request.pop(draw(st.sampled_from(sorted(request))))
        else:
            request[draw(st.text(max_size=6))] = draw(json_values)
    return request


class Message:
    """One client message (not a dataclass: hypothesis prints those field by field, and
    a payload may be 70 KB)."""

    def __init__(
        self, opcode: int, payload: bytes, request_id: Any = None, known_id: bool = False
    ) -> None:
        self.opcode, self.payload = opcode, payload
        self.request_id = request_id  # what its answer must echo, when known
        self.known_id = known_id

    def __repr__(self) -> str:
        more = f"... ({len(self.payload)} bytes)" if len(self.payload) > 200 else ""
        return f"Message({self.opcode}, {self.payload[:200]!r}{more})"


@st.composite
def messages(draw: st.DrawFn) -> Message:
    shape = draw(st.sampled_from(["object"] * 8 + ["mutated", "other", "binary", "large"]))
    if shape == "binary":
        return Message(BINARY, draw(st.binary(max_size=64)))
    if shape == "large":  # over the 64 KiB request limit, under the 1 MiB message limit
        return Message(TEXT, b'{"type": "ping", "data": "' + b"x" * 70_000 + b'"}')
    if shape == "other":
        text = draw(
            st.sampled_from(
                [
                    "",
                    "null",
                    "[]",
                    "1",
                    '"ping"',
                    "{",
                    "NaN",
                    "Infinity",
                    '{"type": "ping"',
                    "[" * 5000,
                    '{"type": 1e400}',
                ]
            )
        )
        return Message(TEXT, text.encode())
    request = draw(request_objects())
    text = json.dumps(request)  # lone surrogates come out as \ud800 escapes
    text = text.replace(json.dumps(RAW), draw(st.sampled_from(RAW_NUMBERS)))
    message = Message(TEXT, text.encode())
    rid = request.get("request_id", None)
    # A request holding a number JSON cannot carry finitely (Infinity, 1e400) may be
    # refused whole as not JSON, with a null request_id; and without a request_id a
    # command_result carries one the broker made up (not the null docs/protocol.md
    # promises). Only a request_id sent in finite JSON is checked.
    if (
        finite(json.loads(text))
        and rid != RAW
        and isinstance(rid, str | int | float)
        and (not isinstance(rid, bool))
    ):
        message.request_id, message.known_id = rid, True
    if shape == "mutated":
        mutated = mutate_bytes(draw, message.payload).decode("utf-8", "replace")
        message = Message(TEXT, mutated.encode())
    return message


def finite(value: Any) -> bool:
    """No infinite or NaN number anywhere in a parsed JSON value."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(finite(v) for v in value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    return True


@dataclass
class Session:
    messages: list[Message]
    pings: int  # control pings between messages (answered by a pong, not an answer)
    tokens: bool

    def frames(self) -> bytes:
        data = b""
        for i, message in enumerate(self.messages):
            data += client_frame(message.payload, message.opcode)
            if i < self.pings:
                data += client_frame(b"hi", PING)
        return data


sessions = st.builds(
    Session, st.lists(messages(), min_size=1, max_size=8), st.integers(0, 3), st.booleans()
)


def answers_in(output: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The frames after the 101, and how many of them are answers."""
    frames, _ = server_frames(output.partition(b"\r\n\r\n")[2])
    count = 0
    for opcode, payload in frames:
        if opcode == TEXT:
            try:
                count += json.loads(payload).get("type") in ANSWERS
            except (ValueError, AttributeError):
                count += 1  # not JSON: checked (and failed) below
    return frames, count


def check_ws(
    frames: bytes,
    *,
    tokens: bool = False,
    answers: int | None = None,
    close: int | None = None,
    ids: list[Any] | None = None,
    early: bool = False,
) -> None:
    """Open /ws, send ``frames`` after the 101 and check what comes back: ``answers``
    answers (strict JSON, no internal_error, each of ``ids`` echoed) and no close; or,
    after a protocol violation, a close frame with the code ``close``. With ``early``
    the frames go with the upgrade request, before the 101, as a client must not send
    them (RFC 6455 4.1): the broker may ignore them, but nothing may escape."""
    headers = "Authorization: Bearer Zq9xOperatorToken-0001\r\n" if tokens else ""

    def complete(output: bytes) -> bool:
        frames, count = answers_in(output)
        return (answers is not None and count >= answers) or any(op == CLOSE for op, _ in frames)

    async def main() -> None:
        async with in_process_broker(tokens=tokens) as target:
            upgrade = upgrade_request("/ws", headers)
            result = await exchange(
                target,
                [upgrade + frames] if early else [upgrade],
                then=None if early else [frames],
                eof=False,
                read_for=30,
                until=complete,
            )
            assert result.handler_done, "the /ws handler did not return"
            if not early:  # early frames may end the handshake before the 101
                assert result.output.startswith(b"HTTP/1.1 101 "), result.output[:200]
            got, _ = answers_in(result.output)
            closes = [close_code(p) for op, p in got if op == CLOSE]
            if close is not None:
                allowed = ([close], []) if early else ([close],)
                assert closes in allowed, f"closed with {closes}, expected [{close}]"
            else:
                assert not closes, f"the broker closed /ws with {closes} on well-formed messages"
            replies = check_messages(got)
            if answers is not None:
                assert len(replies) == answers, f"{len(replies)} answers to {answers}: {replies}"
            echoed = [reply.get("request_id") for reply in replies]
            for request_id in ids or []:
                assert request_id in echoed, f"no answer echoes {request_id!r}: {echoed}"
                echoed.remove(request_id)
            check_broker_fine(target, "/ws")

    run_trio(main, "one /ws session")


def check_messages(frames: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
    """Every frame the broker sent is well-formed; returns the answers (not events)."""
    replies = []
    for opcode, payload in frames:
        if opcode == BINARY:
            mux_frame(payload)
        if opcode != TEXT:
            continue
        message = strict_json(payload, "a /ws message")
        assert isinstance(message, dict) and isinstance(message.get("type"), str), message
        if message["type"] == "event":
            continue
        assert message["type"] in ANSWERS, message
        replies.append(message)
        if message["type"] == "error":
            code = message.get("code")
            assert isinstance(code, str) and CODE.fullmatch(code), message
            assert code != "internal_error", f"internal_error: {message}"
            assert isinstance(message.get("message"), str), message
    return replies


def check_session(session: Session) -> None:
    check_ws(
        session.frames(),
        tokens=session.tokens,
        answers=len(session.messages),
        ids=[m.request_id for m in session.messages if m.known_id],
    )


# -- the framing -------------------------------------------------------------------------

VIOLATIONS: dict[str, tuple[bytes, int]] = {  # the frame, and the close code RFC 6455 asks
    "unmasked": (client_frame(b'{"type": "ping"}', TEXT, masked=False), 1002),
    "reserved bits": (client_frame(b'{"type": "ping"}', TEXT, rsv=4), 1002),
    "unknown opcode": (client_frame(b"x", 0x3), 1002),
    "unknown control opcode": (client_frame(b"x", 0xB), 1002),
    "lone continuation": (client_frame(b"x", CONTINUATION), 1002),
    "invalid UTF-8": (client_frame(b'{"type": "\xff\xfe"}', TEXT), 1007),
    "ping over 125 bytes": (client_frame(b"p" * 126, PING), 1002),
    "fragmented ping": (client_frame(b"p", PING, fin=False), 1002),
    "close code 999": (client_frame(b"\x03\xe7", CLOSE), 1002),
    "close of 1 byte": (client_frame(b"\x03", CLOSE), 1002),
    "claims 2^62 bytes": (client_frame(b"x" * 10, TEXT, length=2**62), 1009),
    "over 1 MiB": (client_frame(b"x" * (1024 * 1024 + 1), TEXT), 1009),
    "text inside a fragmented text": (
        client_frame(b'{"type":', TEXT, fin=False) + client_frame(b"{}", TEXT),
        1002,
    ),
}


@dataclass
class Violation:
    before: list[Message]
    name: str
    cut: int | None  # send only this much of the offending frame
    early: bool  # with the upgrade request, before the 101


violations = st.builds(
    Violation,
    st.lists(messages(), max_size=2),
    st.sampled_from(sorted(VIOLATIONS)),
    st.none() | st.integers(0, 20),
    st.booleans(),
)


def check_violation(case: Violation) -> None:
    frame, code = VIOLATIONS[case.name]
    if case.cut is not None and case.name in ("claims 2^62 bytes", "over 1 MiB"):
        frame = frame[: 14 + case.cut]  # the claim is made; the data stops short
    check_ws(Session(case.before, 0, False).frames() + frame, close=code, early=case.early)


# -- the tests ---------------------------------------------------------------------------


@budget(600, each=0.04)
@given(sessions)
def test_every_ws_request_gets_one_strict_json_answer(session: Session) -> None:
    check_session(session)


@budget(150, each=0.05)
@given(violations)
def test_protocol_violations_are_closed_with_the_right_code(case: Violation) -> None:
    check_violation(case)


def test_the_documented_requests_get_their_documented_answers() -> None:
    """The harness itself, on the examples of docs/protocol.md."""
    requests: list[dict[str, Any]] = [
        {"type": "subscribe", "camera": "cam", "max_fps": 5, "request_id": "1"},
        {"type": "ping", "data": {"sent": 1.5}, "request_id": 3},
        {"type": "list_cameras", "request_id": 4},
        {
            "type": "command",
            "camera": "cam",
            "command": "update_settings",
            "settings": {"brightness": 60},
            "request_id": "7",
        },
        {"type": "unsubscribe", "camera": "cam", "request_id": "2"},
    ]
    session = Session(
        [Message(TEXT, json.dumps(r).encode(), r["request_id"], True) for r in requests], 0, False
    )
    check_session(session)
