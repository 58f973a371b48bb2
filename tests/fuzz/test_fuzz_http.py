"""Fuzz target: the HTTP server, router and handlers, one connection at a time.

Each example is one connection to the real `Server.handle_connection` of an in-process
broker (a camera with a worker on the control channel and a frame, an upload camera, an
on-demand camera; with or without tokens), over memory streams: one to three requests
built from the routes the broker serves (methods, paths, camera ids, presets, query
strings, headers, bodies: settings JSON, images, garbage), sometimes mutated byte by
byte, sent in arbitrary pieces, sometimes cut short or left open, the client reading
for a while or leaving at once (a dropped upgrade, an MJPEG viewer gone).

Invariant: the handler returns, in bounded time, without an exception and without a
fault counted at a boundary; what it wrote is a sequence of well-formed HTTP/1.1
responses (status line, header syntax, Content-Length matching the body, no 500, JSON
bodies strict JSON, errors naming their code), then WebSocket frames after a 101; no
configured token appears in a log line, a header or an error body.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from urllib.parse import quote

import h11
from fuzzing import (
    OPERATOR_TOKEN,
    SEEDS,
    VIEWER_TOKEN,
    budget,
    check_broker_fine,
    check_no_token_leak,
    check_response,
    client_requests,
    exchange,
    in_process_broker,
    parse_responses,
    production_warnings,
    run_trio,
    server_frames,
    ws_key,
)
from hypothesis import given
from hypothesis import strategies as st
from strategies import json_values, mutate_bytes
from test_fuzz_uploads import mutated_images

from broker.serve.http import header

CAMERA_IDS = [
    "cam",
    "cam",
    "cam",
    "up",
    "up",
    "od",
    "nope",
    "",
    "..",
    "cam%2F..",
    "%ff",
    "CAM",
    "a" * 70,
    "c\u00e9",
]
# (path, the methods it serves, the body it takes): most requests are on a route, with
# its method and body; the rest are anything.
ROUTES = [
    ("/", "GET HEAD", None),
    ("/healthz", "GET HEAD", None),
    ("/api/cameras", "GET", None),
    ("/api/stats", "GET", None),
    ("/api/presets", "GET", None),
    ("/metrics", "GET", None),
    ("/viewer.js", "GET", None),
    ("/api/sessions", "POST", None),
    ("/cameras/{c}/snapshot.jpg", "GET HEAD", None),
    ("/cameras/{c}/mjpeg", "GET HEAD", None),
    ("/cameras/{c}/next.jpg", "GET", None),
    ("/cameras/{c}/frames", "POST", "image"),
    ("/cameras/{c}/frames", "POST", "image"),
    ("/api/cameras/{c}/settings", "GET", None),
    ("/api/cameras/{c}/settings", "PATCH", "settings"),
    ("/api/cameras/{c}/settings", "PATCH", "settings"),
    ("/api/cameras/{c}/presets/{p}", "POST", None),
    ("/ws", "GET", None),
    ("/cameras/{c}", "GET", None),
    ("/cameras/{c}", "GET", None),
    ("/", "GET", None),
]
ODD_PATHS = [
    "/cameras/{c}/",
    "//",
    "/static/../../etc/passwd",
    "*",
    "http://broker/healthz",
    "/api/cameras/{c}",
    "/cameras",
    "/api",
]
QUERY_NAMES = ["fps", "after", "timeout", "x"]
# A token only ever goes in ``token``: another parameter's value is echoed in its error
# as the client's own input.
QUERY_VALUES = [
    "1",
    "0",
    "-1",
    "nan",
    "inf",
    "1e400",
    "1001",
    "0.5",
    "",
    "abc",
    "%ff",
    "%00",
    "9" * 40,
]
TOKEN_VALUES = [OPERATOR_TOKEN, VIEWER_TOKEN, "wrong-token", "", "Zq9x"]
METHODS = [
    "GET",
    "GET",
    "GET",
    "HEAD",
    "POST",
    "POST",
    "PATCH",
    "PATCH",
    "OPTIONS",
    "PUT",
    "DELETE",
    "BREW",
    "get",
]
SETTINGS_BODIES = [
    b'{"brightness": 60}',
    b'{"name": "\\ud800"}',
    b'{"brightness": 1e400}',
    b'{"fps": NaN}',
    b'{"width": 640, "height": 480}',
    b"[]",
    b"{",
    b'"x"',
    b'{"name": "' + b"n" * 70 + b'"}',
    b"\xff\xfe",
    b'{"a": ' * 2000 + b"1" + b"}" * 2000,
]


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    chunked: bool = False
    version: str = "HTTP/1.1"

    def serialize(self) -> bytes:
        head = f"{self.method} {self.target} {self.version}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        body = self.body
        if self.chunked:
            body = (
                (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
                if body
                else (b"0\r\n\r\n")
            )
        return head.encode("latin-1", "replace") + b"\r\n" + body


@st.composite
def targets(draw: st.DrawFn, template: str) -> str:
    path = template.format(
        c=draw(st.sampled_from(CAMERA_IDS)), p=draw(st.sampled_from(["night", "nope", "%00"]))
    )
    if draw(st.integers(0, 9)) == 0:
        path = "/" + draw(st.text(st.characters(codec="latin-1"), max_size=20))
    values = st.sampled_from(QUERY_VALUES) | st.text(
        st.characters(exclude_characters="Z"), max_size=10
    )
    pairs = draw(
        st.lists(
            st.tuples(st.sampled_from(QUERY_NAMES), values)
            | st.tuples(st.just("token"), st.sampled_from(TOKEN_VALUES)),
            max_size=3,
        )
    )
    if pairs:
        raw = draw(st.booleans())
        path += "?" + "&".join(
            f"{k}={v if raw else quote(v, safe='', errors='surrogatepass')}" for k, v in pairs
        )
    return path


@st.composite
def bodies(draw: st.DrawFn, kind: str | None) -> tuple[bytes, str | None]:
    """A body and its Content-Type: of ``kind`` (what the route expects), or anything."""
    if kind is None or draw(st.integers(0, 3)) == 0:
        kind = draw(st.sampled_from(["none", "settings", "json", "image", "garbage"]))
    if kind == "none":
        return b"", None
    if kind == "settings":
        return draw(st.sampled_from(SETTINGS_BODIES)), "application/json"
    if kind == "json":
        value = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=4))
        return json.dumps(value).encode(), "application/json"
    if kind == "image":
        if draw(st.booleans()):
            fmt, data = draw(mutated_images())
        else:
            name = draw(st.sampled_from(sorted(p.name for p in SEEDS.iterdir())))
            data = (SEEDS / name).read_bytes()
            fmt = {"jpg": "jpeg"}.get(name.rsplit(".", 1)[1], name.rsplit(".", 1)[1])
        return data, draw(st.sampled_from([f"image/{fmt}", "image/png", "text/plain"]))
    return draw(st.binary(max_size=300)), draw(st.none() | st.text(max_size=20))


@st.composite
def requests(draw: st.DrawFn, tokens: bool) -> Request:
    path, methods, body_kind = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 3)) == 0:
        path, methods, body_kind = draw(st.sampled_from(ODD_PATHS)), "", None
    method = draw(
        st.sampled_from(methods.split())
        if methods and draw(st.integers(0, 4))
        else st.sampled_from(METHODS)
    )
    target = draw(targets(path))
    request = Request(method, target)
    if draw(st.integers(0, 19)) == 0:
        request.version = draw(st.sampled_from(["HTTP/1.0", "HTTP/2", "HTTP/1.1x", ""]))
    if draw(st.integers(0, 9)):
        request.headers.append(("Host", "broker"))
    if tokens and draw(st.integers(0, 3)):
        token = draw(st.sampled_from([OPERATOR_TOKEN, VIEWER_TOKEN, "wrong", "", "Zq9x"]))
        request.headers.append(
            (
                "Authorization",
                draw(
                    st.sampled_from([f"Bearer {token}", f"bearer  {token} ", token, "Basic dTpw"])
                ),
            )
        )
    body, content_type = draw(bodies(body_kind))
    if content_type is not None:
        request.headers.append(("Content-Type", content_type))
    request.body = body
    framing = draw(st.sampled_from(["length", "length", "length", "chunked", "wrong", "none"]))
    if framing == "length" and (body or request.method in ("POST", "PATCH")):
        request.headers.append(("Content-Length", str(len(body))))
    elif framing == "chunked":
        request.headers.append(("Transfer-Encoding", "chunked"))
        request.chunked = True
    elif framing == "wrong":
        request.headers.append(
            (
                "Content-Length",
                draw(
                    st.sampled_from(
                        [
                            str(len(body) + 5),
                            str(max(len(body) - 1, 0)),
                            "-1",
                            "abc",
                            "99999999999",
                            " 3",
                            "1, 2",
                        ]
                    )
                ),
            )
        )
    if (path in ("/ws", "/cameras/{c}", "/") and draw(st.integers(0, 3))) or (
        draw(st.integers(0, 9)) == 0
    ):  # an upgrade, mostly a proper one
        proper = draw(st.integers(0, 3)) > 0
        upgrade = "websocket" if proper else draw(st.sampled_from(["WebSocket", "h2c", ""]))
        connection = "Upgrade" if proper else draw(st.sampled_from(["keep-alive", "close"]))
        request.headers += [("Upgrade", upgrade), ("Connection", connection)]
        key = (
            ws_key()
            if draw(st.booleans())
            else draw(
                st.sampled_from([ws_key(b"short"), "not base64!", "", ws_key(bytes(17)), "=" * 24])
            )
        )
        if draw(st.integers(0, 9)):
            request.headers.append(("Sec-WebSocket-Key", key))
        if draw(st.integers(0, 9)):
            version = "13" if draw(st.integers(0, 5)) else draw(st.sampled_from(["8", "", "x"]))
            request.headers.append(("Sec-WebSocket-Version", version))
    for _ in range(draw(st.integers(0, 2))):
        request.headers.append(
            draw(
                st.sampled_from(
                    [
                        ("Connection", "close"),
                        ("Origin", "http://evil.example"),
                        ("X-Request-Id", "r" * 200),
                        ("X-Request-Id", "\u00e9\u00ff"),
                        ("Content-Type", "multipart/form-data; boundary=b"),
                        ("Expect", "100-continue"),
                    ]
                )
                | st.tuples(
                    st.text("abcxyz-", min_size=1, max_size=8),
                    st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=30),
                )
            )
        )
    return request


@dataclass
class Connection:
    tokens: bool
    requests: list[Request]
    pieces: list[int]  # sizes the stream is sent in
    cut: int | None  # send only this many bytes
    mutated: bytes | None  # the stream after byte-level mutation
    eof: bool
    read_for: float
    reset: bool = False  # the client's end is reset rather than closed

    def stream(self) -> bytes:
        raw = (
            self.mutated
            if self.mutated is not None
            else b"".join(r.serialize() for r in self.requests)
        )
        return raw if self.cut is None else raw[: self.cut]

    def chunks(self) -> list[bytes]:
        raw, out, at = self.stream(), [], 0
        for size in self.pieces:
            out.append(raw[at : at + size])
            at += size
        out.append(raw[at:])
        return [c for c in out if c]


@st.composite
def connections(draw: st.DrawFn) -> Connection:
    tokens = draw(st.booleans())
    reqs = draw(st.lists(requests(tokens), min_size=1, max_size=3))
    mutated = None
    if draw(st.integers(0, 4)) == 0:
        for request in reqs:  # a mutated stream cannot say which answers had no body
            request.method = "GET" if request.method == "HEAD" else request.method
        mutated = mutate_bytes(draw, b"".join(r.serialize() for r in reqs), most=4)
    total = len(mutated if mutated is not None else b"".join(r.serialize() for r in reqs))
    cut = draw(st.none() | st.integers(0, total)) if draw(st.integers(0, 5)) == 0 else None
    pieces = draw(st.lists(st.integers(1, 64), max_size=4))
    return Connection(
        tokens,
        reqs,
        pieces,
        cut,
        mutated,
        draw(st.booleans()),
        draw(st.sampled_from([0.0, 0.05, 0.3, 5.0, 5.0])),
        draw(st.booleans()),
    )


# -- the invariant -------------------------------------------------------------------------


def check_http(conn: Connection) -> None:
    requests = client_requests(conn.stream())
    heads = [r.method == b"HEAD" for r in requests]

    async def main() -> None:
        async with in_process_broker(tokens=conn.tokens) as target:
            with production_warnings():
                result = await exchange(
                    target, conn.chunks(), eof=conn.eof, read_for=conn.read_for, reset=conn.reset
                )
            assert result.handler_done, "the connection's handler did not return"
            responses, rest = parse_responses(result.output, heads)
            for response in responses:
                check_response(response, "a response")
            if responses and responses[-1].status == 101:
                check_upgrade(requests[len(responses) - 1])
                server_frames(rest)
            check_no_token_leak(conn.stream(), responses, target.log, "http")
            check_broker_fine(target, "http")

    run_trio(main, "one HTTP connection")


def check_upgrade(request: h11.Request) -> None:
    """An upgrade accepted (101) was a valid one (RFC 6455 4.2.1)."""
    assert request.method == b"GET", f"a {request.method!r} request was upgraded"
    key = header(request, b"sec-websocket-key")
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid = False
    assert valid, f"an upgrade with the invalid Sec-WebSocket-Key {key!r} was accepted"
    version = header(request, b"sec-websocket-version")
    assert version == "13", f"an upgrade with version {version!r}"


def check_raw(
    raw: bytes, tokens: bool = False, eof: bool = True, read_for: float = 5.0, reset: bool = False
) -> None:
    """The invariant for a recorded byte stream (the corpus)."""
    check_http(Connection(tokens, [], [], None, raw, eof, read_for, reset))


@budget(800, each=0.03)
@given(connections())
def test_any_connection_gets_well_formed_answers(conn: Connection) -> None:
    check_http(conn)


def test_the_well_behaved_routes_answer_as_documented() -> None:
    """The harness itself: ordinary requests get their documented answers."""
    get = [
        Request("GET", path, [("Host", "b")])
        for path in ("/healthz", "/api/cameras", "/cameras/cam/snapshot.jpg", "/nope")
    ]
    raw = b"".join(r.serialize() for r in get)

    async def main() -> None:
        async with in_process_broker() as target:
            result = await exchange(target, [raw])
            responses, _ = parse_responses(result.output, [False] * 4)
            assert [r.status for r in responses] == [200, 200, 200, 404]
            assert json.loads(responses[0].body)["status"] == "ok"
            assert responses[2].header(b"x-frame-seq") == b"0"
            check_broker_fine(target, "well-behaved")

    run_trio(main, "well-behaved requests")
