"""Camera keys (ZeroMQ CURVE) and safe defaults (issue 11), against real `broker run`
processes, real camera workers with their keys, and rogue ZeroMQ peers played by the
test: a PUB without a key, with another camera's key, with the right key for another
camera's id, with a key the broker never saw; a DEALER claiming a camera's routing id
without a key and with another camera's key. Each is refused and counted, viewers see
only the real camera, the real worker still answers settings, and removing a key file
cuts a camera off without a restart.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket as net
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from helpers import sample_jpeg
from procs import ROOT, BrokerProcess, free_port, get_json, http_json, wait_until
from survival import Viewer

from broker.cli import main
from broker.protocol import control as protocol
from broker.protocol import settings as camera_settings
from broker.protocol import wire
from broker.trust import keys as keyfiles
from cameras.link import KeyFileProblem, curve_client

PYTHON = sys.executable
FORGED = sample_jpeg(160, 120, quality=11)  # what no real worker sends


def broker_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``broker ARGS`` run in this process (it is quick and synchronous), its exit code
    and output as a `CompletedProcess`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    for args in (["init"], ["add", "front"], ["add", "back"]):
        done = broker_cli("keys", *args, "--dir", str(folder))
        assert done.returncode == 0, done.stderr
    return folder


class Lab:
    """A broker with keys: cameras front and back (external workers) and local (a
    supervised worker, over ipc with its throw-away key)."""

    def __init__(self, tmp_path: Path, keys_dir: Path) -> None:
        self.tmp_path, self.keys = tmp_path, keys_dir
        self.ingest = f"tcp://127.0.0.1:{free_port()}"
        self.control = f"tcp://127.0.0.1:{free_port()}"
        config = tmp_path / "broker.toml"
        config.write_text(
            f'[ingest]\nendpoints = ["{self.ingest}"]\noffline_after = 1.0\n'
            f'[control]\nendpoints = ["{self.control}"]\nheartbeat_interval = 0.25\n'
            "lost_after = 1.0\n"
            '[security]\nkeys_dir = "keys"\n'
            '[[cameras]]\nid = "front"\n[[cameras]]\nid = "back"\n'
            '[[cameras]]\nid = "local"\nsource = "test-pattern"\nwidth = 160\nheight = 120\n'
            "fps = 10\n"
        )
        self.broker = BrokerProcess(config)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.sockets: list[zmq.Socket[bytes]] = []
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()

    def worker(self, camera: str, key: str | None = None) -> subprocess.Popen[bytes]:
        """A real camera-worker with ``camera``'s key (or ``key``'s)."""
        log = open(self.tmp_path / f"worker-{camera}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "cameras.worker",
                "--broker",
                self.ingest,
                "--control",
                self.control,
                "--heartbeat",
                "0.25",
                "--camera-id",
                camera,
                "--source",
                "test-pattern",
                "--width",
                "160",
                "--height",
                "120",
                "--fps",
                "10",
                "--broker-key",
                str(keyfiles.broker_public(self.keys)),
                "--key",
                str(keyfiles.camera_secret(self.keys, key or camera)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()
        self.workers.append(process)
        return process

    def socket(self, kind: int, key: str | None = None, random_key: bool = False) -> zmq.Socket:
        """A rogue socket: no CURVE, ``key``'s CURVE key pair, or one the broker never saw."""
        socket = self.context.socket(kind)
        socket.setsockopt(zmq.LINGER, 0)
        if key is not None:
            options = curve_client(
                str(keyfiles.broker_public(self.keys)), str(keyfiles.camera_secret(self.keys, key))
            )
            for option, value in options.items():
                socket.setsockopt(option, value)
        elif random_key:
            public, secret = zmq.curve_keypair()
            server, _ = zmq.auth.load_certificate(keyfiles.broker_public(self.keys))
            socket.curve_serverkey, socket.curve_publickey, socket.curve_secretkey = (
                server,
                public,
                secret,
            )
        self.sockets.append(socket)
        return socket

    def health(self) -> dict[str, Any]:
        health = get_json(self.broker.url + "/healthz")
        assert isinstance(health, dict)
        return health

    def close(self) -> None:
        for socket in self.sockets:
            socket.close(linger=0)
        self.context.destroy(linger=0)
        for process in self.workers:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)


@pytest.fixture
def lab(tmp_path: Path, keys_dir: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path, keys_dir)
    try:
        with lab.broker:
            yield lab
    finally:
        lab.close()


def forged_frame(camera: str, seq: int) -> list[wire.Buffer]:
    header = wire.FrameHeader(camera, seq, time.time(), 160, 120, "jpeg")
    return wire.encode(header, FORGED)


def snapshot(lab: Lab, camera: str) -> bytes:
    with urllib.request.urlopen(f"{lab.broker.url}/cameras/{camera}/snapshot.jpg", timeout=10) as r:
        return r.read()


def worker_connected(lab: Lab, camera: str) -> bool:
    worker = lab.health()["control"]["workers"].get(camera)
    return bool(worker and worker["connected"])


def test_forged_frames_are_refused_and_counted(lab: Lab) -> None:
    lab.worker("front")
    lab.broker.wait_online("front", "local")  # local: a supervised worker over ipc, keyed
    no_key = lab.socket(zmq.PUB)
    other_key = lab.socket(zmq.PUB, key="back")  # back's key, frames as front
    wrong_id = lab.socket(zmq.PUB, key="front")  # front's key, frames as back
    unknown = lab.socket(zmq.PUB, random_key=True)  # a key not in keys_dir
    for socket in (no_key, other_key, wrong_id, unknown):
        socket.connect(lab.ingest)
    with Viewer(lab.broker.port, "front") as viewer:
        seen = len(viewer.arrivals)
        deadline = time.monotonic() + 3.0
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            no_key.send_multipart(forged_frame("front", seq))
            other_key.send_multipart(forged_frame("front", seq))
            wrong_id.send_multipart(forged_frame("back", seq))
            unknown.send_multipart(forged_frame("front", seq))
            assert snapshot(lab, "front") != FORGED
            time.sleep(0.05)
        assert len(viewer.arrivals) > seen + 10  # the real camera streams on
    errors = lab.health()["ingest"]["errors"]
    # Without a key: refused at the handshake, seen as a mechanism mismatch, or as a
    # failed handshake when the peer noticed first and hung up.
    assert errors.get("no_curve", 0) + errors.get("handshake_failed", 0) >= 1, errors
    assert errors.get("unknown_key", 0) >= 1, errors
    assert errors.get("wrong_camera", 0) >= 20, errors  # other_key's and wrong_id's frames
    cameras = lab.broker.cameras()
    assert cameras["front"]["online"] and not cameras["back"]["online"]
    assert cameras["front"]["width"] == 160
    logs = lab.broker.logs()
    assert "ingest: refused (wrong_camera)" in logs and "ingest: refused (unknown_key)" in logs


def test_supervised_workers_get_private_keys_in_a_private_folder(lab: Lab) -> None:
    lab.broker.wait_online("local")
    health = lab.health()
    assert health["camera_keys"] is True and health["insecure_network"] is False
    (ipc,) = [e for e in health["control"]["endpoints"] if e.startswith("ipc://")]
    folder = Path(ipc.removeprefix("ipc://")).parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "keys" / "local.key_secret").stat().st_mode) == 0o600
    # Its key is local's only: the same key publishing as front is refused.
    rogue = lab.socket(zmq.PUB)
    options = curve_client(
        str(keyfiles.broker_public(lab.keys)), str(folder / "keys" / "local.key_secret")
    )
    for option, value in options.items():
        rogue.setsockopt(option, value)
    rogue.connect(lab.ingest)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        rogue.send_multipart(forged_frame("front", 1))
        time.sleep(0.05)
    assert lab.health()["ingest"]["errors"].get("wrong_camera", 0) >= 10
    assert not lab.broker.cameras()["front"]["online"]


def rogue_hello(socket: zmq.Socket[bytes], camera: str) -> None:
    socket.send(
        protocol.encode(
            "hello",
            camera=camera,
            device="rogue",
            supported=camera_settings.supported(),
            settings={**camera_settings.defaults(), "name": "HIJACKED"},
            streaming=True,
            pid=4242,
        ),
        zmq.NOBLOCK,
    )


def test_a_rogue_dealer_cannot_take_over_a_camera(lab: Lab) -> None:
    lab.worker("front")
    wait_until(lambda: worker_connected(lab, "front"), 20, "front's worker to say hello")
    no_key = lab.socket(zmq.DEALER)
    other_key = lab.socket(zmq.DEALER, key="back")
    for socket in (no_key, other_key):
        socket.setsockopt(zmq.ROUTING_ID, b"front")
    drawn = lab.socket(zmq.DEALER, key="back")  # back's key, a drawn route, hello as front
    for socket in (no_key, other_key, drawn):
        socket.connect(lab.control)
    time.sleep(0.5)
    for _ in range(5):
        for socket in (no_key, other_key, drawn):
            with contextlib.suppress(zmq.Again):
                rogue_hello(socket, "front")
        time.sleep(0.1)
    code, answer = http_json(
        "PATCH", f"{lab.broker.url}/api/cameras/front/settings", {"quality": 55}
    )
    assert code == 200 and answer["success"], answer
    assert answer["settings"]["quality"] == 55
    code, answer = http_json("GET", f"{lab.broker.url}/api/cameras/front/settings")
    assert code == 200 and answer["settings"]["quality"] == 55
    for socket in (no_key, other_key, drawn):
        while socket.poll(200):  # the drawn one is asked for a hello as back, nothing else
            message = protocol.decode(socket.recv())
            assert message["type"] in ("hello_request", "heartbeat"), message
    errors = lab.health()["control"]["errors"]
    assert errors.get("identity_mismatch", 0) >= 1, errors
    assert errors.get("no_curve", 0) + errors.get("handshake_failed", 0) >= 1, errors
    assert errors.get("wrong_camera", 0) >= 1, errors
    assert lab.broker.cameras()["front"]["name"] != "HIJACKED"
    assert worker_connected(lab, "front")


class CuttableProxy(threading.Thread):
    """A TCP forwarder to ``target`` whose connections the test can cut: the peer's
    ZeroMQ socket then reconnects, as after a network blip."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(name="proxy", daemon=True)
        self.target = target
        self.listener = net.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: list[net.socket] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = net.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    @staticmethod
    def pump(source: net.socket, sink: net.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(net.SHUT_RDWR)
            end.close()

    def cut(self) -> int:
        with self.lock:
            ends, self.open = self.open, []
        for end in ends:
            with contextlib.suppress(OSError):
                end.shutdown(net.SHUT_RDWR)
            end.close()
        return len(ends) // 2

    def close(self) -> None:
        self.listener.close()
        self.cut()


def test_a_keyed_worker_that_reconnects_is_answered_on_its_new_route(lab: Lab) -> None:
    host, port = lab.control.removeprefix("tcp://").rsplit(":", 1)
    proxy = CuttableProxy((host, int(port)))
    proxy.start()
    try:
        lab.control = f"tcp://127.0.0.1:{proxy.port}"  # the worker's control goes through it
        lab.worker("front")
        wait_until(lambda: worker_connected(lab, "front"), 20, "front's worker to say hello")
        assert proxy.cut() == 1
        time.sleep(1.0)  # the worker reconnects (a new route); heartbeats flow again
        code, answer = http_json(
            "PATCH", f"{lab.broker.url}/api/cameras/front/settings", {"quality": 44}
        )
        assert code == 200 and answer["success"], answer
        assert answer["settings"]["quality"] == 44
    finally:
        proxy.close()


def test_removing_a_key_cuts_the_camera_off_without_a_restart(lab: Lab) -> None:
    lab.worker("front")
    lab.broker.wait_online("front")
    wait_until(lambda: worker_connected(lab, "front"), 20, "front's worker to say hello")
    pid = lab.broker.process.pid if lab.broker.process else None
    keyfiles.camera_public(lab.keys, "front").unlink()
    started = time.monotonic()
    wait_until(lambda: not lab.broker.cameras()["front"]["online"], 10, "front to go offline")
    wait_until(lambda: not worker_connected(lab, "front"), 10, "front's worker to be lost")
    took = time.monotonic() - started
    assert took < 8, took
    errors = lab.health()["ingest"]["errors"]
    assert errors.get("key_removed", 0) >= 1, errors
    # New handshakes with the removed key are refused too.
    again = lab.socket(zmq.PUB, key="front")
    again.connect(lab.ingest)
    wait_until(
        lambda: lab.health()["ingest"]["errors"].get("unknown_key", 0) >= 1,
        10,
        "a handshake with the removed key to be refused",
    )
    assert lab.broker.process is not None and lab.broker.process.pid == pid
    assert lab.broker.process.poll() is None
    lab.broker.wait_online("local")  # the others carry on


def test_keys_cli(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    refused = broker_cli("keys", "add", "front", "--dir", str(folder))
    assert refused.returncode == 1 and "broker keys init" in refused.stderr
    assert broker_cli("keys", "init", "--dir", str(folder)).returncode == 0
    again = broker_cli("keys", "init", "--dir", str(folder))
    assert again.returncode == 1 and "exists already" in again.stderr
    added = broker_cli("keys", "add", "front", "--dir", str(folder))
    assert added.returncode == 0, added.stderr
    secret = keyfiles.camera_secret(folder, "front")
    assert (
        f"--broker-key {keyfiles.broker_public(folder)} --key {secret} --camera-id front"
        in added.stdout
    )
    for path, mode in (
        (folder, 0o700),
        (folder / "cameras", 0o700),
        (keyfiles.broker_secret(folder), 0o600),
        (secret, 0o600),
    ):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    public = keyfiles.load_public(keyfiles.camera_public(folder, "front"))
    listed = broker_cli("keys", "list", "--dir", str(folder))
    assert listed.stdout == f"front\t{public}\n"
    assert broker_cli("keys", "add", "../x", "--dir", str(folder)).returncode == 1
    assert broker_cli("keys", "remove", "front", "--dir", str(folder)).returncode == 0
    assert not secret.exists()
    assert broker_cli("keys", "list", "--dir", str(folder)).stdout == ""
    assert broker_cli("keys", "remove", "front", "--dir", str(folder)).returncode == 1


def test_a_worker_refuses_a_secret_key_others_can_read(keys_dir: Path) -> None:
    secret = keyfiles.camera_secret(keys_dir, "front")
    broker = str(keyfiles.broker_public(keys_dir))
    assert set(curve_client(broker, str(secret))) == {
        zmq.CURVE_SERVERKEY,
        zmq.CURVE_PUBLICKEY,
        zmq.CURVE_SECRETKEY,
    }
    os.chmod(secret, 0o644)
    with pytest.raises(KeyFileProblem, match="chmod 600"):
        curve_client(broker, str(secret))
    with pytest.raises(KeyFileProblem, match="holds no secret key"):
        curve_client(broker, str(keyfiles.camera_public(keys_dir, "front")))


# --- safe defaults ---

EXPOSED = (
    'ingest.endpoints[0]: "tcp://0.0.0.0:5555" is reachable from other hosts, and without '
    "camera keys anyone who reaches it can publish video as any camera: set "
    "security.keys_dir (see `broker keys init`), or security.allow_insecure_network = true "
    "to accept that"
)


def test_check_refuses_a_network_endpoint_without_keys(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[ingest]\nendpoints = ["tcp://0.0.0.0:5555"]\n')
    done = broker_cli("check", str(config))
    assert done.returncode == 2
    assert done.stderr.splitlines()[1:] == [f"  {EXPOSED}"]
    run = subprocess.run(
        [PYTHON, "-m", "broker", "run", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert run.returncode == 2 and EXPOSED in run.stderr


@pytest.mark.parametrize(
    "endpoint",
    ["tcp://127.0.0.1:5555", "tcp://127.8.0.1:5555", "tcp://[::1]:5555", "tcp://localhost:1"],
)
def test_loopback_endpoints_need_no_keys(tmp_path: Path, endpoint: str) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(f'[control]\nendpoints = ["{endpoint}", "ipc:///tmp/x"]\n')
    assert broker_cli("check", str(config)).stdout == "ok\n"


def test_a_network_frame_feed_needs_an_explicit_yes(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    feed = '[analytics]\nfeed_endpoints = ["tcp://127.0.0.1:1", "tcp://0.0.0.0:5557"]\n'
    config.write_text(feed)
    done = broker_cli("check", str(config))
    assert done.returncode == 2
    assert 'analytics.feed_endpoints[1]: "tcp://0.0.0.0:5557" is reachable' in done.stderr
    assert "feed_endpoints[0]" not in done.stderr
    config.write_text(feed + "[security]\nallow_insecure_network = true\n")
    assert broker_cli("check", str(config)).stdout == "ok\n"


def test_check_refuses_keys_dir_without_the_broker_key(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[security]\nkeys_dir = "nowhere"\n')
    done = broker_cli("check", str(config))
    assert done.returncode == 2
    assert "security.keys_dir:" in done.stderr and "broker keys init" in done.stderr


def test_insecure_network_is_allowed_when_asked_and_shown(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(
        '[ingest]\nendpoints = ["tcp://0.0.0.0:*"]\n[control]\nendpoints = []\n'
        "[security]\nallow_insecure_network = true\n"
    )
    assert broker_cli("check", str(config)).stdout == "ok\n"
    with BrokerProcess(config) as broker:
        health = get_json(broker.url + "/healthz")
        assert isinstance(health, dict)
        assert health["insecure_network"] is True and health["camera_keys"] is False
        assert "security.allow_insecure_network: tcp://0.0.0.0:* reachable" in broker.logs()


# --- the ZAP answers, pure ---


def zap_keys(keys_dir: Path) -> tuple[Any, Any]:
    from collections import Counter

    from broker.trust.curve import CameraKeys, Refusals

    counts: Counter[str] = Counter()
    keys = CameraKeys(keys_dir, Refusals({"ingest": counts}))
    keys.reload()
    return keys, counts


def test_zap_accepts_only_listed_keys(keys_dir: Path) -> None:
    from zmq.utils import z85

    keys, counts = zap_keys(keys_dir)
    front = keyfiles.load_public(keyfiles.camera_public(keys_dir, "front"))
    request = [b"peer", b"", b"1.0", b"7", b"ingest", b"10.0.0.9", b"", b"CURVE"]
    ok = keys.answer([*request, z85.decode(front)])
    assert ok == [b"peer", b"", b"1.0", b"7", b"200", b"OK", front.encode(), b""]
    stranger, _ = zmq.curve_keypair()
    no = keys.answer([*request, z85.decode(stranger)])
    assert no is not None and no[4] == b"400" and no[6] == b""
    plain = keys.answer([b"peer", b"", b"1.0", b"8", b"ingest", b"x", b"", b"NULL"])
    assert plain is not None and plain[4] == b"400"
    assert dict(counts) == {"unknown_key": 1, "not_curve": 1}
    assert keys.answer([b"peer", b"1.0"]) is None  # no envelope delimiter
    assert keys.answer([b"peer", b"", b"2.0", b"1", b"", b"", b"", b"CURVE", b"k"]) is None
    assert keys.answer([*request, b"short"]) is not None  # refused, never an exception


def test_the_key_set_follows_the_folder(keys_dir: Path) -> None:
    keys, _ = zap_keys(keys_dir)
    assert sorted(keys.owners.values()) == ["back", "front"]
    assert not keys.reload()  # nothing changed
    keyfiles.camera_public(keys_dir, "back").unlink()
    assert keys.reload() and sorted(keys.owners.values()) == ["front"]
    (keys_dir / "cameras" / "bad name.key").write_text("not a key")
    (keys_dir / "cameras" / "odd.key").write_text("not a key either")
    assert keys.reload() and sorted(keys.owners.values()) == ["front"]


def test_the_worker_needs_both_key_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from cameras.cli import parse

    base = ["--broker", "tcp://127.0.0.1:5555", "--camera-id", "front", "--source", "test-pattern"]
    with pytest.raises(SystemExit) as exited:
        parse([*base, "--broker-key", "broker.key"])
    assert exited.value.code == 2
    assert "--broker-key and --key go together" in capsys.readouterr().err
    options = parse([*base, "--broker-key", "b.key", "--key", "front.key_secret"])
    assert (options.broker_key, options.key) == ("b.key", "front.key_secret")


def test_a_worker_with_an_unreadable_key_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "cameras.worker",
            "--broker",
            "tcp://127.0.0.1:1",
            "--camera-id",
            "front",
            "--source",
            "test-pattern",
            "--broker-key",
            str(tmp_path / "missing.key"),
            "--key",
            str(tmp_path / "missing.key_secret"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "--broker-key" in done.stderr and "cannot read" in done.stderr
