"""What every fuzz target shares: the example budget, a real broker built in-process with
stand-in workers, a connection served over memory streams, and the checks of what comes
back (strict JSON, well-formed HTTP and WebSocket, no token leaked, no fault counted).

Nothing here opens a socket: `InProcessBroker` is the real `broker.app.Broker` (its hub,
control plane, router, handlers, /ws sessions and server) with the ZeroMQ ROUTER replaced by
`FakeWorkers`, and each connection is `Server.handle_connection` over a
`trio.testing.memory_stream_pair`. Time is trio's `MockClock` jumping ahead whenever
every task waits, so a 60 s long-poll costs nothing and every timeout is exercised.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import re
import struct
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote

import h11
import msgpack
import pytest
import trio
import trio.testing
import zmq
from hypothesis import HealthCheck, Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from broker import config as configuration
from broker.app import Broker
from broker.control import store as state
from broker.control.channel import Complaints, Deliver, RouterChannel
from broker.core.frame import Frame
from broker.protocol import control as protocol
from broker.protocol import settings as camera_settings
from broker.serve.http import Response, h11_response
from broker.serve.server import MAX_REQUEST_HEAD
from broker.support.faults import Faults

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
SEEDS = CORPUS / "seeds"

# -- the budget ------------------------------------------------------------------------

# FUZZ_SCALE multiplies every target's examples (CI: 1). Above 1 the run is random rather
# than the same every time, shrinks what it finds and keeps it in .hypothesis/fuzz, so a
# failure found in a long run is replayed first by the next one.
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
EXPLORE = SCALE != 1 or bool(os.environ.get("FUZZ_RANDOM"))
# Real seconds one example may take (beyond that it is not "bounded time"); generous,
# because two busy cores run the suite.
WALL_LIMIT = float(os.environ.get("FUZZ_WALL_LIMIT", "10"))


def budget(examples: int, each: float) -> Callable[[Any], Any]:
    """Hypothesis settings for a target worth ``examples`` examples in CI, and a pytest
    timeout that fits them: ``each`` is about what one example takes on a busy 2-core
    machine; the timeout allows four times the total, and at least the suite's 120 s."""
    count = max(1, int(examples * SCALE))
    if EXPLORE:
        chosen = settings(
            max_examples=count,
            deadline=None,
            derandomize=False,
            database=DirectoryBasedExampleDatabase(
                str(HERE.parent.parent / ".hypothesis" / "fuzz")
            ),
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )
    else:
        # CI: the same examples every run (no flaky discoveries), no shrinking (a failure
        # is reported as found, at once; run with FUZZ_SCALE for a minimal one).
        chosen = settings(
            max_examples=count,
            deadline=None,
            derandomize=True,
            database=None,
            phases=(Phase.explicit, Phase.generate),
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        )
    timeout = pytest.mark.timeout(max(120, int(60 + 4 * count * each)))
    return lambda test: timeout(chosen(test))


@contextlib.contextmanager
def bounded(what: str, limit: float = WALL_LIMIT) -> Iterator[None]:
    """Fail when the block takes more than ``limit`` real seconds."""
    started = time.perf_counter()
    yield
    took = time.perf_counter() - started
    assert took < limit, f"{what} took {took:.2f} s (bound {limit:g} s)"


# How fast the mock clock runs with real time, beside its jumps. Not zero: a loop that
# waits "until now" (a deadline rounded to the present, as Workers.keep_alive can) must
# see time pass, or it would spin forever where the broker spins a microsecond. Not
# one either: then a real stall of the test process (a busy shared machine, a garbage
# collection) counts in full against the broker's 2 s header timeout, and a handshake
# that was never slow times out (seen once in a FUZZ_SCALE=8 run beside a soak).
CLOCK_RATE = 0.01


def run_trio(fn: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Run ``fn`` under a mock clock that jumps ahead whenever every task waits (and
    otherwise runs at `CLOCK_RATE`), within the real-time bound."""
    with bounded(what):
        clock = trio.testing.MockClock(rate=CLOCK_RATE, autojump_threshold=0)
        return trio.run(fn, clock=clock)


@contextlib.contextmanager
def production_warnings() -> Iterator[None]:
    """Warnings as the running broker has them: printed at most once per place, never
    raised. The test suite turns every warning into an error, which a deployed broker
    does not do; Pillow warns about odd EXIF data and large images (under its bomb limit)
    and carries on, and so does the broker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- strict JSON ---------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"{name} is not JSON")


def strict_json(data: str | bytes, what: str) -> Any:
    """Parse ``data`` as JSON that any client accepts: no NaN or Infinity, UTF-8."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, AssertionError) as exc:
        raise AssertionError(f"{what} is not strict JSON ({exc}): {data[:300]!r}") from None


# -- the broker, in-process -----------------------------------------------------------

# Distinctive tokens: their values, and their first four characters (the old way of
# naming an unnamed token in the log), never appear in an answer or a log line.
OPERATOR_TOKEN = "Zq9xOperatorToken-0001"
VIEWER_TOKEN = "Jm7vViewerToken-0002"  # no name in the config, limited to camera "cam"
TOKENS = (OPERATOR_TOKEN, VIEWER_TOKEN)
CAMERAS = ("cam", "up", "od")  # a worker on the control channel; uploads only; on demand


def config_text(tokens: bool, state_file: str = "") -> str:
    lines = [
        '[server]\nlisten = "127.0.0.1:0"\nheader_timeout = 2.0\nsend_timeout = 2.0\n',
        "[ingest]\nendpoints = []\nhttp_sessions = true\n",
        f'[control]\nendpoints = []\nstate_file = "{state_file}"\ncommand_timeout = 1.0\n'
        "heartbeat_interval = 1.0\nlost_after = 3.0\n",
        "[presets.night]\nbrightness = 70\nauto_exposure = false\n",
        '[[cameras]]\nid = "cam"\nname = "Front"\n',
        '[[cameras]]\nid = "up"\n',
        '[[cameras]]\nid = "od"\non_demand = true\nidle_after = 1.0\n',
    ]
    if tokens:
        lines += [
            f'[[tokens]]\ntoken = "{OPERATOR_TOKEN}"\nrole = "operator"\nname = "ops"\n',
            f'[[tokens]]\ntoken = "{VIEWER_TOKEN}"\nrole = "viewer"\ncameras = ["cam"]\n',
        ]
    return "\n".join(lines)


@dataclass
class FakeWorker:
    """A camera worker as the broker's control plane sees it: says hello, answers every
    command at once as cameras/worker.py would (or with ``scripted`` replies first)."""

    camera: str
    pid: int = 4242
    settings: dict[str, Any] = field(default_factory=camera_settings.defaults)
    supported: dict[str, Any] = field(default_factory=camera_settings.supported)
    streaming: bool = True
    scripted: list[bytes] = field(default_factory=list)  # raw reply payloads, used first
    silent: bool = False  # answers no heartbeat (hung): the broker loses it

    def hello(self) -> bytes:
        return protocol.encode(
            "hello",
            camera=self.camera,
            device="fuzz pattern",
            supported=self.supported,
            settings=self.settings,
            streaming=self.streaming,
            pid=self.pid,
        )

    def adopt(self, payload: bytes) -> None:
        """A hello "from" this worker says what its state is: later replies carry the
        same settings (a worker that reports a strange value keeps reporting it)."""
        try:
            hello = msgpack.unpackb(payload, strict_map_key=False)
        except Exception:  # not even msgpack: nothing to adopt
            return
        if not isinstance(hello, dict) or hello.get("type") != "hello":
            return
        if isinstance(hello.get("settings"), dict) and msgpack_packable(hello["settings"]):
            self.settings = hello["settings"]
        if type(hello.get("pid")) is int and msgpack_packable(hello["pid"]):
            self.pid = hello["pid"]

    def answer(self, command: dict[str, Any]) -> bytes:
        if self.scripted:
            return self.scripted.pop(0)
        name, success, message, errors = command["command"], True, "done", None
        if name == "update_settings":
            try:
                changes = camera_settings.validate(command["settings"], self.supported)
                self.settings.update(changes)
                message = "changed " + ", ".join(changes)
            except camera_settings.SettingsError as bad:
                success, message, errors = False, str(bad), bad.errors
        elif name in ("start_stream", "stop_stream"):
            self.streaming = name == "start_stream"
        extra = {"errors": errors} if errors is not None else {}
        return protocol.encode(
            "reply",
            request_id=command["request_id"],
            success=success,
            message=message,
            settings=self.settings,
            streaming=self.streaming,
            timestamp=time.time(),
            **extra,
        )


class FakeWorkers(RouterChannel):
    """Stands in for `broker.control.channel.RouterChannel` without a socket: what the
    broker sends goes to in-process workers, whose answers come back through the real
    receive path (`RouterChannel.take`: the frame, routing id and codec checks, then the
    control plane). A send to a camera with no worker fails like the real ROUTER
    (``EHOSTUNREACH``)."""

    def __init__(self, complaints: Complaints) -> None:  # no super(): no ZeroMQ socket
        self.complaints = complaints
        self.workers: dict[bytes, FakeWorker] = {}
        self._in, self._out = trio.open_memory_channel[list[bytes]](math.inf)
        self.sent: list[dict[str, Any]] = []

    def add(self, worker: FakeWorker) -> None:
        self.workers[worker.camera.encode()] = worker
        self.deliver(worker.camera.encode(), worker.hello())

    def deliver(self, identity: bytes, payload: bytes) -> None:
        """A message from a worker (or from anything that connected to the ROUTER)."""
        self._in.send_nowait([identity, payload])

    async def serve(self, deliver: Deliver, faults: Faults) -> None:
        while True:
            parts = await self._out.receive()
            with faults.contain("control"):
                self.take(parts, deliver)

    def send(self, identity: bytes, payload: bytes) -> None:
        worker = self.workers.get(identity)
        if worker is None:
            raise zmq.ZMQError(zmq.EHOSTUNREACH)
        message = protocol.decode(payload)  # the broker must only send what decodes
        self.sent.append(message)
        if message["type"] == "command":
            self.deliver(identity, worker.answer(message))
        elif message["type"] == "hello_request":
            self.deliver(identity, worker.hello())
        elif message["type"] == "heartbeat" and not worker.silent:  # alive: never lost
            self.deliver(identity, protocol.encode("heartbeat", streaming=worker.streaming))

    def close(self) -> None:
        pass


class LogCapture(logging.Handler):
    """Every record the broker logs during an example, formatted as it would be written."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class InProcessBroker:
    broker: Broker
    workers: FakeWorkers
    log: LogCapture
    nursery: trio.Nursery

    @property
    def server(self) -> Any:
        return self.broker.server

    async def settle(self) -> None:
        """Until every task waits (the control plane has read what was delivered)."""
        await trio.testing.wait_all_tasks_blocked()


@contextlib.asynccontextmanager
async def in_process_broker(
    tokens: bool = False,
    state_file: str = "",
    frames: bool = True,
    workers: tuple[FakeWorker, ...] | None = None,
) -> AsyncIterator[InProcessBroker]:
    """The real broker without sockets: control plane running with `FakeWorkers` (a
    worker for "cam" and "od" says hello), "cam" sending 10 frames a second, logs
    captured."""
    broker = Broker(configuration.parse(config_text(tokens, state_file)))
    channel = FakeWorkers(broker.control.complaints)
    # What Control.bind does, without a ROUTER socket.
    broker.control._channel = broker.control.commands.channel = channel
    capture = LogCapture()
    logger = logging.getLogger("broker")
    logger.addHandler(capture)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.DEBUG)
    # Only to `capture`: pytest's own log capture would keep every record of every
    # example (thousands per test) and slow the suite; a failure shows its last lines.
    logger.propagate = False
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(broker.control.run)
            for worker in (
                workers if workers is not None else (FakeWorker("cam"), FakeWorker("od", pid=77))
            ):
                channel.add(worker)
            if frames:
                nursery.start_soon(camera_stream, broker, "cam")
            await trio.testing.wait_all_tasks_blocked()
            try:
                yield InProcessBroker(broker, channel, capture, nursery)
            finally:
                nursery.cancel_scope.cancel()
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
        logger.propagate = propagate


async def camera_stream(broker: Broker, camera: str, interval: float = 0.1) -> None:
    """Frames of ``camera`` every ``interval`` (mock-clock) seconds, as a worker sends
    them: streams go on writing after their client has gone, as they do for real."""
    seq = 0
    while True:
        publish_frame(broker, camera, seq)
        seq += 1
        await trio.sleep(interval)


def publish_frame(broker: Broker, camera: str, seq: int) -> None:
    data = (SEEDS / "baseline.jpg").read_bytes()
    broker.hub.publish(Frame.received(camera, seq, time.time(), 24, 16, "jpeg", data))


def write_state(path: Path, stored: dict[str, dict[str, Any]]) -> None:
    state.save(path, stored)


# -- one connection over memory streams ------------------------------------------------


class _Peer:
    """What `Server.handle_connection` asks of a socket: its peer's address."""

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 40000)


class PeerStream(trio.abc.HalfCloseableStream):
    """The server half of a memory stream pair, dressed as a `trio.SocketStream`:
    ``setsockopt`` does nothing and the peer is 127.0.0.1. It has no OS socket, so the
    broker writes frames through its task path, not `broker.serve.delivery`'s direct write."""

    def __init__(self, stream: trio.abc.HalfCloseableStream) -> None:
        self.stream = stream
        self.socket = _Peer()

    def setsockopt(self, *args: object) -> None:
        pass

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


@dataclass
class Exchange:
    """What one connection gave back."""

    output: bytes  # every byte the broker wrote, in order
    closed_by_server: bool  # the broker ended the connection (EOF) before we did
    handler_done: bool  # handle_connection returned within the bound


async def exchange(
    target: InProcessBroker,
    chunks: list[bytes],
    *,
    then: list[bytes] | None = None,
    eof: bool = True,
    read_for: float = 5.0,
    until: Callable[[bytes], bool] | None = None,
    reset: bool = False,
) -> Exchange:
    """Serve one connection: send ``chunks``; once the response head has arrived, send
    ``then`` (a WebSocket client waits for the 101 before its first frame); then EOF if
    ``eof``. Read for up to ``read_for`` (virtual) seconds or until ``until(output)``,
    close our side and wait (bounded) for the broker's handler to return. With ``reset``
    our side stops receiving first and closes a moment later, as a reset connection
    looks to the broker: its writes fail before its reads see the end. An exception
    that escapes the handler escapes from here."""
    client, server_side = trio.testing.memory_stream_pair()
    done = trio.Event()
    output = bytearray()
    changed = trio.Event()
    closed = False

    async def serve() -> None:
        try:
            await target.server.handle_connection(PeerStream(server_side))
        finally:
            done.set()

    async def read() -> None:
        nonlocal changed, closed
        while True:
            try:
                data = await client.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                closed = True
            output.extend(data)
            changed.set()
            changed = trio.Event()
            if closed:
                return

    async def wait_for(predicate: Callable[[bytes], bool]) -> None:
        while not closed and not predicate(bytes(output)):
            await changed.wait()

    target.nursery.start_soon(serve)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for chunk in chunks:  # a memory stream takes it all at once
                await client.send_all(chunk)
                await trio.lowlevel.checkpoint()
            if then is not None:
                with trio.move_on_after(read_for):
                    await wait_for(lambda out: b"\r\n\r\n" in out)
                for chunk in then if not closed and b"\r\n\r\n" in output else []:
                    await client.send_all(chunk)
                    await trio.lowlevel.checkpoint()
            if eof:
                await client.send_eof()
        with trio.move_on_after(read_for):
            await wait_for(until or (lambda out: False))
        nursery.cancel_scope.cancel()
    if reset:
        await client.receive_stream.aclose()
        await trio.sleep(0.5)
    await client.aclose()
    await finished(done)
    return Exchange(bytes(output), closed, done.is_set())


async def finished(done: trio.Event, virtual: float = 60.0, real: float = 5.0) -> None:
    """Wait for ``done`` up to ``virtual`` seconds of the mock clock, then up to ``real``
    seconds of wall time: the clock jumps ahead while a worker thread runs (a "No Data"
    render), so virtual time alone would not wait for the thread."""
    with trio.move_on_after(virtual):
        await done.wait()
    deadline = time.monotonic() + real
    while not done.is_set() and time.monotonic() < deadline:
        await trio.to_thread.run_sync(time.sleep, 0.01)


# -- HTTP answers ----------------------------------------------------------------------

TOKEN_CHARS = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
STATUS_LINE = re.compile(rb"^HTTP/1\.1 (\d{3}) ([^\r\n]*)$")
# 5xx the broker answers on purpose: a camera that failed or did not answer a command.
ALLOWED_5XX = {502, 503, 504}


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


def client_requests(sent: bytes) -> list[h11.Request]:
    """The requests in ``sent`` as the broker's h11 reads them, up to the first one it
    refuses, an upgrade or the end of the connection."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    conn.receive_data(sent)
    found = []
    with contextlib.suppress(h11.ProtocolError):
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                found.append(event)
            elif isinstance(event, h11.EndOfMessage):
                conn.send(h11.Response(status_code=204, headers=[]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
            elif not isinstance(event, h11.Data):
                break  # NEED_DATA, PAUSED (an upgrade) or the connection closed
    return found


def parse_responses(output: bytes, head_requests: list[bool]) -> tuple[list[HttpResponse], bytes]:
    """Split the broker's output into well-formed responses (asserting they are); the
    bytes after a 101 (WebSocket frames) are returned unparsed. ``head_requests`` says,
    per response in order, whether it answers a HEAD (no body)."""
    responses: list[HttpResponse] = []
    rest = output
    while rest:
        head, sep, after = rest.partition(b"\r\n\r\n")
        assert sep, f"an incomplete response head: {rest[:300]!r}"
        lines = head.split(b"\r\n")
        match = STATUS_LINE.match(lines[0])
        assert match, f"not a status line: {lines[0][:200]!r}"
        status = int(match.group(1))
        assert status in {s.value for s in HTTPStatus}, f"unknown status {status}"
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            assert colon and TOKEN_CHARS.match(name), f"bad header line {line[:200]!r}"
            assert not re.search(rb"[\r\n\x00]", value), f"bad header value {line[:200]!r}"
            headers.append((name.lower(), value.strip()))
        response = HttpResponse(status, headers, b"")
        head_only = head_requests[len(responses)] if len(responses) < len(head_requests) else False
        responses.append(response)
        if status == 101:
            return responses, after
        content_type = response.header(b"content-type") or b""
        length = response.header(b"content-length")
        if content_type.startswith(b"multipart/x-mixed-replace"):
            response.body, rest = after, b""  # a stream until the connection ends
            break
        assert length is not None and length.isdigit(), f"{status}: no Content-Length"
        size = 0 if status in (204, 304) else int(length)
        if head_only and not (status >= 400 and after[:size] and not after.startswith(b"HTTP/")):
            size = 0  # a refused request is refused before h11 knows it is a HEAD
        assert len(after) >= size, f"{status}: body cut short ({len(after)} of {size} bytes)"
        response.body, rest = after[:size], after[size:]
    return responses, b""


def from_route(response: Response) -> HttpResponse:
    """A route's `Response` as the server writes it (its headers included)."""
    head, body = h11_response(response)
    return HttpResponse(head.status_code, [(k.lower(), v) for k, v in head.headers], body)


def check_response(response: HttpResponse | Response, what: str) -> None:
    """A response the broker means to give: no internal error, JSON bodies strict, every
    error a JSON object naming its code."""
    if isinstance(response, Response):
        response = from_route(response)
    status = response.status
    assert status < 500 or status in ALLOWED_5XX, (
        f"{what}: answered {status}: {response.body[:300]!r}"
    )
    content_type = response.header(b"content-type") or b""
    if content_type.startswith(b"application/json") and response.body:
        body = strict_json(response.body, f"{what}: the {status} body")
        if status >= 400:
            assert isinstance(body, dict) and isinstance(body.get("error"), str), body
            assert isinstance(body.get("message"), str), body
    if status == 401:
        assert response.header(b"www-authenticate"), f"{what}: 401 without a challenge"


def presented(token: str, sent: bytes) -> bool:
    """Whether the client presented ``token`` as a token (``Authorization`` or a
    ``token`` query parameter); a token-like string elsewhere (a path, another
    parameter) is the client's own text, which an answer may quote back."""
    quoted = re.escape(quote(token, safe="").encode())
    plain = re.escape(token.encode())
    return bool(
        re.search(rb"\?(?:[^\s]*&)?token=(" + quoted + rb"|" + plain + rb")", sent)
        or re.search(rb"(?i)authorization:[^\r\n]*" + plain, sent)
    )


def check_no_token_leak(
    sent: bytes, responses: list[HttpResponse], log: LogCapture, what: str
) -> None:
    """No token the client presented appears in the log (nor its first four characters,
    the old name of an unnamed token), nor in an answer except where it belongs: the
    viewer page opened as ``/?token=T`` carries T on to its script (a 200 of text/html)."""
    for token in TOKENS:
        if not presented(token, sent):
            continue
        for shown in (token, token[:4]):
            leaked = [line for line in log.lines if shown in line]
            assert not leaked, f"{what}: the log shows {shown!r}: {leaked[0][:300]}"
        for response in responses:
            html = (response.header(b"content-type") or b"").startswith(b"text/html")
            if response.status == 200 and html:
                continue
            carried = [v for _, v in response.headers if token.encode() in v]
            assert not carried, f"{what}: a header carries the token: {carried[0][:200]!r}"
            assert token.encode() not in response.body, (
                f"{what}: a {response.status} body carries the token: {response.body[:300]!r}"
            )


def check_broker_fine(target: InProcessBroker, what: str) -> None:
    """Nothing was contained at a boundary: a fault there is a bug the fuzz found."""
    faults = target.broker.faults.as_dict()
    assert not faults, f"{what}: faults counted {faults}:\n" + "\n".join(target.log.lines[-20:])


# -- WebSocket frames (RFC 6455), for a client that may break the rules -----------------

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def ws_key(raw: bytes = b"fuzz-key-0123456") -> str:
    return base64.b64encode(raw).decode()


def upgrade_request(path: str, headers: str = "", key: str | None = None) -> bytes:
    key = ws_key() if key is None else key
    return (
        f"GET {path} HTTP/1.1\r\nHost: broker\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
    ).encode()


def client_frame(
    payload: bytes,
    opcode: int,
    *,
    fin: bool = True,
    masked: bool = True,
    rsv: int = 0,
    length: int | None = None,
    mask: bytes = b"\x37\xfa\x21\x3d",
) -> bytes:
    """One client frame; ``length`` may claim other than the payload's size."""
    length = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)
    flag = 0x80 if masked else 0
    if length < 126:
        head = struct.pack(">BB", first, flag | length)
    elif length < 1 << 16:
        head = struct.pack(">BBH", first, flag | 126, length)
    else:
        head = struct.pack(">BBQ", first, flag | 127, length)
    if not masked:
        return head + payload
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return head + mask + bytes(a ^ b for a, b in zip(payload, key, strict=True))


def server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The complete (opcode, payload) frames the broker wrote, asserting each is a valid
    server frame (unmasked, final: the broker never fragments); and the leftover bytes."""
    frames = []
    view = data
    while len(view) >= 2:
        first, second = view[0], view[1]
        assert first & 0x70 == 0, f"reserved bits set in a server frame: {view[:20]!r}"
        assert first & 0x80, "the broker fragmented a message"
        assert not second & 0x80, "a masked server frame"
        opcode, length, offset = first & 0x0F, second & 0x7F, 2
        assert opcode in (TEXT, BINARY, CLOSE, PING, PONG), f"opcode {opcode:#x}"
        if length == 126:
            if len(view) < 4:
                break
            (length,) = struct.unpack(">H", view[2:4])
            offset = 4
        elif length == 127:
            if len(view) < 10:
                break
            (length,) = struct.unpack(">Q", view[2:10])
            offset = 10
        if len(view) < offset + length:
            break
        frames.append((opcode, bytes(view[offset : offset + length])))
        view = view[offset + length :]
    return frames, bytes(view)


def close_code(payload: bytes) -> int | None:
    return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None


def mux_frame(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """A /ws binary frame: uint16 N, N bytes of JSON header, the image."""
    assert len(payload) >= 2, "a /ws frame shorter than its length field"
    (length,) = struct.unpack(">H", payload[:2])
    header = strict_json(payload[2 : 2 + length], "a /ws frame header")
    assert isinstance(header, dict) and {"camera", "seq", "format"} <= header.keys(), header
    return header, payload[2 + length :]


def msgpack_packable(value: Any) -> bool:
    try:
        msgpack.packb(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True
