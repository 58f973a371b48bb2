"""Camera links authenticated and encrypted with ZeroMQ CURVE, one key per camera.

With ``security.keys_dir`` the ingest SUB and the control ROUTER are CURVE servers with
the broker's secret key. Three checks stand between a peer and a camera:

1. The handshake. libzmq asks the ZAP handler (ZeroMQ RFC 27), `Zap`, served under trio
   on ``inproc://zeromq.zap.01`` in the broker's context, about each CURVE client key:
   a key that is not in the live set (`CameraKeys`) is refused. The answer's User-Id is
   the key itself (Z85), and libzmq attaches it to every message of that connection.
   A peer without CURVE never gets that far: its handshake fails, which a socket
   monitor (`watch_handshakes`) counts: as ``no_curve`` when the broker saw the
   mechanism mismatch, as ``handshake_failed`` when the peer hung up first.
2. Each message (`CameraKeys.refusal`): a frame, hello, heartbeat or reply for camera X
   is accepted only when its User-Id is a key of the live set that belongs to X. So a
   key is bound to its camera, and a removed key is refused from its next message on,
   on connections it opened before the removal too.
3. Routes: libzmq gives ZAP the *server's* routing id, not the peer's (seen with libzmq
   4.3.5: the identity field is empty), so the handshake cannot refuse a DEALER that
   claims another camera's routing id. So on the control ROUTER a camera is known by
   its key, not by its routing id: workers with keys set no routing id (the ROUTER
   draws one, starting with a zero byte), the broker answers a camera on the route its
   latest message came on, and the ROUTER runs without ``ROUTER_HANDOVER``, so no peer
   can take over a route in use. A peer that chooses a routing id other than its
   key's camera has every message dropped (``wrong_camera``).

The live set is re-read when ``keys_dir/cameras`` changes (`watch_keys` polls every
`POLL_INTERVAL`): adding or removing a key takes effect within seconds, no restart.
Workers the broker starts itself get a throw-away key pair per run, in the broker's
private folder (`supervised_keys`), added to the live set for their camera.

Every refusal is counted by reason in the socket's own error counters (ingest errors or
control errors, in /healthz and /metrics) and logged at most once per reason and
interval (`Refusals`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import trio
import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from broker.support.faults import Faults
from broker.support.logthrottle import LogThrottle
from broker.support.zmqtrio import TrioSocket
from broker.trust import keys as keyfiles

log = logging.getLogger("broker.trust")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
POLL_INTERVAL = 1.0  # seconds between looks at keys_dir/cameras
INGEST, CONTROL = "ingest", "control"  # the ZAP domains, one per socket

# The monitor events that mean a peer was refused before any message.
HANDSHAKE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
MECHANISM_MISMATCH = zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH


class Refusals:
    """Counts each refusal by reason in its socket's counter and logs it at most once per
    (socket, reason) and interval: keys are reasons, never a peer's value."""

    def __init__(self, counters: Mapping[str, Counter[str]]) -> None:
        self.counters = counters
        self.throttle = LogThrottle(log)

    def __call__(self, domain: str, reason: str, detail: str) -> None:
        counter = self.counters.get(domain)
        if counter is None:
            return  # not one of our sockets' domains: nothing of ours to count
        counter[reason] += 1
        self.throttle.warning(f"{domain}:{reason}", "%s: refused (%s): %s", domain, reason, detail)


class CameraKeys:
    """The live key set: each accepted public key (Z85 text) and the camera it speaks
    for. ``folder`` is ``security.keys_dir``; ``fixed`` the keys of supervised workers."""

    def __init__(
        self, folder: Path, refused: Refusals, fixed: Mapping[str, str] | None = None
    ) -> None:
        self.folder = folder
        self.refused = refused
        self.fixed = dict(fixed or {})
        self.owners: dict[str, str] = dict(self.fixed)
        self._seen: tuple[tuple[str, int, int], ...] | None = None

    def add_fixed(self, public: str, camera: str) -> None:
        self.fixed[public] = camera
        self.owners[public] = camera

    def reload(self) -> bool:
        """Re-read ``cameras/`` if it changed; True when it did."""
        now = keyfiles.signature(self.folder)
        if now == self._seen:
            return False
        found = keyfiles.read_camera_keys(self.folder)
        before = set(self.owners.values())
        owners = {key.public: key.camera for key in found}
        owners.update(self.fixed)
        self.owners = owners  # replaced whole: readers never see half a set
        after = set(owners.values())
        if self._seen is not None:
            log.info(
                "camera keys changed: %d key(s) for %d camera(s); added %s, removed %s",
                len(owners),
                len(after),
                ", ".join(sorted(after - before)) or "none",
                ", ".join(sorted(before - after)) or "none",
            )
        else:
            log.info("camera keys: %d key(s) for %d camera(s)", len(owners), len(after))
        self._seen = now
        return True

    def sender(self, frame: zmq.Frame) -> tuple[str | None, str]:
        """(the camera whose key sent ``frame``, "") or (None, why not). A message
        carries its connection's User-Id: the key the handshake accepted, which may have
        been removed since."""
        try:
            user = frame.get("User-Id")
        except zmq.ZMQError:
            return None, "no_key"
        owner = self.owners.get(user) if isinstance(user, str) else None
        return (owner, "") if owner is not None else (None, "key_removed")

    def refusal(self, frame: zmq.Frame, camera: str) -> str | None:
        """Why a message for ``camera`` that came in ``frame`` is refused, or None."""
        owner, why = self.sender(frame)
        if owner is None:
            return why
        return None if owner == camera else "wrong_camera"

    def answer(self, request: Sequence[bytes]) -> list[bytes] | None:
        """The ZAP reply to one request as a ROUTER receives it (envelope, empty frame,
        then RFC 27's version, request id, domain, address, identity, mechanism,
        credentials); None for something that is not a ZAP request."""
        try:
            split = list(request).index(b"")
        except ValueError:
            return None
        envelope, body = list(request[: split + 1]), request[split + 1 :]
        if len(body) < 6 or body[0] != b"1.0":
            return None
        _, request_id, domain_bytes, address_bytes, _, mechanism, *credentials = body
        domain = domain_bytes.decode("ascii", "replace")
        address = address_bytes.decode("ascii", "replace")[:64]
        if mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
            public = z85.encode(credentials[0]).decode("ascii")
            if public in self.owners:
                return [*envelope, b"1.0", request_id, b"200", b"OK", public.encode(), b""]
            self.refused(domain, "unknown_key", f"a key not in keys_dir/cameras, from {address}")
            text = b"unknown key"
        else:
            self.refused(domain, "not_curve", f"a {mechanism[:16]!r} handshake from {address}")
            text = b"CURVE only"
        return [*envelope, b"1.0", request_id, b"400", text, b"", b""]


def server_options(secret: bytes, domain: str) -> dict[int, int | bytes]:
    """The socket options that make a bound socket a CURVE server asking ZAP."""
    return {
        zmq.CURVE_SERVER: 1,
        zmq.CURVE_SECRETKEY: secret,
        zmq.ZAP_DOMAIN: domain.encode(),
    }


def bind_zap(context: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
    """The ZAP handler's socket. Bind it before any CURVE socket: libzmq lets a CURVE
    client in without asking when no handler is bound."""
    socket: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind(ZAP_ENDPOINT)
    return socket


async def serve_zap(socket: TrioSocket, keys: CameraKeys) -> None:
    """Answer every ZAP request until cancelled (the socket stays open: the composition
    root closes it with the context, after the CURVE sockets)."""
    while True:
        parts = await socket.receive_multipart()
        reply = keys.answer([part.bytes for part in parts])
        if reply is not None:
            try:
                socket.send_multipart(reply)
            except zmq.ZMQError as exc:  # libzmq gave up on the handshake meanwhile
                log.debug("ZAP: reply not sent: %s", exc)


async def watch_keys(keys: CameraKeys, interval: float = POLL_INTERVAL) -> None:
    """Re-read the key set whenever ``keys_dir/cameras`` changes, until cancelled."""
    while True:
        await trio.sleep(interval)
        keys.reload()


def monitor(socket: zmq.Socket[bytes]) -> zmq.Socket[bytes]:
    """A PAIR socket reporting ``socket``'s failed handshakes."""
    return socket.get_monitor_socket(HANDSHAKE_FAILURES)


async def watch_handshakes(
    monitor_socket: zmq.Socket[bytes], domain: str, refused: Refusals, faults: Faults
) -> None:
    """Count the peers refused at the handshake (no CURVE, or a broken one) until
    cancelled; closes the monitor socket on the way out."""
    receiver = TrioSocket(monitor_socket)
    try:
        while True:
            parts = await receiver.receive_multipart()
            with faults.contain("handshakes"):
                handshake_failed(parse_monitor_message([p.bytes for p in parts]), domain, refused)
    finally:
        receiver.close()


def handshake_failed(event: Mapping[str, object], domain: str, refused: Refusals) -> None:
    """Count one monitor event; anything but a failed handshake is ignored."""
    endpoint = event.get("endpoint")
    where = endpoint.decode("ascii", "replace") if isinstance(endpoint, bytes) else "?"
    value = event.get("value")
    if event.get("event") == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == MECHANISM_MISMATCH:
            refused(domain, "no_curve", f"a peer without CURVE (no key) on {where}")
        else:
            refused(domain, "handshake_failed", f"a ZMTP error in a handshake on {where}")
    elif event.get("event") == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        # No detail: the peer hung up first (one without CURVE often does).
        why = os.strerror(value) if isinstance(value, int) and value else "closed"
        refused(domain, "handshake_failed", f"a handshake that failed on {where}: {why}")


def supervised_keys(folder: Path, cameras: Iterable[str]) -> dict[str, tuple[str, Path]]:
    """A throw-away key pair per supervised camera in ``folder`` (created 0700): camera
    id to (its Z85 public key, its secret key file)."""
    keyfiles.private_folder(folder)
    made = {}
    for camera in cameras:
        public, secret = keyfiles.write_pair(folder, camera)
        made[camera] = (keyfiles.load_public(public), secret)
    return made
