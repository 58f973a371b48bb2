"""The worker's end of the control channel: a ZeroMQ DEALER connected to the broker's
ROUTER (docs/protocol.md, "Control channel").

The link says hello on connect, sends a heartbeat every interval, answers the broker's
``hello_request``, and says hello again when the broker speaks after a silence of
`LOST_AFTER_BEATS` heartbeats (a restarted broker does not know this worker). Commands
are handed to the worker, which answers each with `ControlLink.reply`.

It never blocks: sends are NOBLOCK and dropped when the broker is not reading, receives
drain what is queued. `Liveness` is the pure timing part.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

import msgpack
import zmq
import zmq.auth

from broker.protocol import control
from broker.support.logthrottle import LogThrottle

log = logging.getLogger("camera-worker")

LOST_AFTER_BEATS = 3  # heartbeats of silence after which the broker counts as gone
SEND_HWM = 16  # messages queued for an absent broker; older news is worthless anyway
LOG_INTERVAL = 5.0  # at most one line per kind of trouble (a reason, the key) this often
CONNECT_TIMEOUT_MS = 1000  # a connection attempt that has not completed by then is retried


class Liveness:
    """When to send a heartbeat, and whether the broker has gone silent. Pure: every
    method takes the time (``time.monotonic``)."""

    def __init__(self, interval: float, now: float) -> None:
        self.interval = interval
        self.next_beat = now + interval
        self.last_heard = now
        self.gone = False

    def beat_due(self, now: float) -> bool:
        """True once per interval; a late caller gets one heartbeat, not a burst."""
        if now < self.next_beat:
            return False
        self.next_beat += self.interval
        if self.next_beat <= now:
            self.next_beat = now + self.interval
        return True

    def check(self, now: float) -> bool:
        """True exactly when the broker has just gone silent for too long."""
        if not self.gone and now - self.last_heard > LOST_AFTER_BEATS * self.interval:
            self.gone = True
            return True
        return False

    def silent_for(self, now: float) -> float:
        """Seconds since the broker last spoke (or since the link started)."""
        return now - self.last_heard

    def heard(self, now: float) -> bool:
        """The broker spoke. True when it had gone silent: it is owed a fresh hello."""
        self.last_heard = now
        was_gone, self.gone = self.gone, False
        return was_gone


class KeyFileProblem(ValueError):
    """A key file the worker cannot use; the message names it."""


def curve_client(broker_key: str, key: str) -> dict[int, bytes]:
    """The CURVE client options from the broker's public key file and this camera's
    secret key file (ZeroMQ's certificate format); `KeyFileProblem` says what is wrong."""
    try:
        server, _ = zmq.auth.load_certificate(broker_key)
    except (OSError, ValueError) as exc:
        raise KeyFileProblem(f"--broker-key {broker_key}: cannot read: {exc}") from None
    try:
        mode = os.stat(key).st_mode
        public, secret = zmq.auth.load_certificate(key)
    except (OSError, ValueError) as exc:
        raise KeyFileProblem(f"--key {key}: cannot read: {exc}") from None
    if server is None or len(server) != 40:
        raise KeyFileProblem(f"--broker-key {broker_key}: holds no CURVE public key")
    if secret is None or public is None or len(secret) != 40:
        raise KeyFileProblem(f"--key {key}: holds no secret key (give the .key_secret file)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileProblem(f"--key {key}: other users may read it (chmod 600 it)")
    return {zmq.CURVE_SERVERKEY: server, zmq.CURVE_PUBLICKEY: public, zmq.CURVE_SECRETKEY: secret}


def open_dealer(
    context: zmq.Context[zmq.Socket[bytes]],
    endpoint: str,
    camera: str,
    interval: float,
    curve: dict[int, bytes] | None = None,
) -> zmq.Socket[bytes]:
    """A DEALER connected to ``endpoint`` (`zmq.ZMQError` for a bad endpoint). Its
    routing id is the camera id; with ``curve`` (the `curve_client` options) it has
    none: the broker knows the camera by its key and draws the route itself, so a
    restarted worker never finds its old route still held (docs/security.md)."""
    socket: zmq.Socket[bytes] = context.socket(zmq.DEALER)
    try:
        for option, value in (curve or {}).items():
            socket.setsockopt(option, value)
        if not curve:
            socket.setsockopt(zmq.ROUTING_ID, camera.encode())
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        socket.setsockopt(zmq.MAXMSGSIZE, 16 * control.MAX_MESSAGE_BYTES)
        keep_connection_fresh(socket, interval)
        socket.connect(endpoint)
    except zmq.ZMQError:
        socket.close(linger=0)
        raise
    return socket


def keep_connection_fresh(socket: zmq.Socket[bytes], interval: float) -> None:
    """Options (set before ``connect``) that bound how long a broken network holds a
    socket back. ZMTP pings every ``interval`` drop a TCP connection whose peer stopped
    answering (a partition, a vanished host) after `LOST_AFTER_BEATS` of them, with
    whatever the kernel still held for it: nothing stale is delivered later. Connection
    attempts then time out after `CONNECT_TIMEOUT_MS` and start again, rather than
    waiting out the kernel's SYN backoff: a healed network is used again within about a
    second, where TCP's own retransmission backoff took over five after a 20 s cut."""
    socket.setsockopt(zmq.HEARTBEAT_IVL, max(100, int(interval * 1000)))
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(300, int(LOST_AFTER_BEATS * interval * 1000)))
    socket.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)


class ControlLink:
    """``hello`` gives the hello's fields, ``streaming`` whether frames flow (sent with
    each heartbeat). ``clock`` is injectable for tests."""

    def __init__(
        self,
        socket: zmq.Socket[bytes],
        interval: float,
        hello: Callable[[], dict[str, Any]],
        streaming: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket = socket
        self.hello = hello
        self.streaming = streaming
        self.clock = clock
        self.liveness = Liveness(interval, clock())
        self.throttle = LogThrottle(log, LOG_INTERVAL)

    def start(self) -> None:
        # Queued until the connection is up (no ZMQ_IMMEDIATE): a broker that binds
        # later still gets it first.
        self.send_hello()

    def send_hello(self) -> None:
        self.send("hello", **self.hello())

    def next_due(self) -> float:
        return self.liveness.next_beat

    def tick(self) -> None:
        """Send the heartbeat when due; notice a silent broker."""
        now = self.clock()
        if self.liveness.check(now):
            log.info(
                "broker silent for %.1f s: will say hello when it speaks again",
                now - self.liveness.last_heard,
            )
        if self.liveness.beat_due(now):
            self.send("heartbeat", streaming=self.streaming())

    def reply(
        self,
        request_id: str,
        success: bool,
        message: str,
        settings: dict[str, Any],
        streaming: bool,
        **extra: Any,
    ) -> None:
        self.send(
            "reply",
            request_id=request_id,
            success=success,
            message=message,
            settings=settings,
            streaming=streaming,
            timestamp=time.time(),
            **extra,
        )

    def send(self, kind: str, **fields: Any) -> bool:
        try:
            self.socket.send(control.encode(kind, **fields), zmq.NOBLOCK)
        except zmq.Again:  # the broker is away or not reading: news goes stale, drop it
            log.debug("control: broker not reading; dropped a %s", kind)
            return False
        return True

    def receive(self) -> list[dict[str, Any]]:
        """Every command queued now, each a decoded ``command`` message. A command too
        malformed to run but with a request id comes back with an ``error`` text, so the
        worker still answers it; anything else malformed is logged and ignored."""
        commands: list[dict[str, Any]] = []
        while True:
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return commands
            owed = self.liveness.heard(self.clock())
            if owed:
                log.info("broker speaks again: saying hello")
                self.send_hello()
            if len(parts) != 1:
                self.throttle.warning(
                    "parts", "control: ignoring a message of %d parts (expected 1)", len(parts)
                )
                continue
            try:
                message = control.decode(parts[0])
            except control.ControlError as exc:
                self.throttle.warning("malformed", "control: ignoring a malformed message: %s", exc)
                request_id = salvage_request_id(parts[0])
                if request_id is not None:
                    error = f"malformed command: {exc}"
                    commands.append(
                        {"request_id": request_id, "command": "", "settings": {}, "error": error}
                    )
                continue
            kind = message["type"]
            if kind == "command":
                commands.append(message)
            elif kind == "hello_request" and not owed:
                self.send_hello()
            elif kind not in ("heartbeat", "hello_request"):
                self.throttle.warning(
                    "direction",
                    "control: ignoring a %r from the broker (a worker sends those)",
                    kind,
                )


def salvage_request_id(data: bytes) -> str | None:
    """The request id of a malformed ``command``, if it has a usable one."""
    try:
        message = msgpack.unpackb(data)
    except Exception:  # msgpack raises several unrelated types
        return None
    if isinstance(message, dict) and message.get("type") == "command":
        request_id = message.get("request_id")
        if isinstance(request_id, str) and len(request_id) <= 200:
            return request_id
    return None
