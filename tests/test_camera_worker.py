"""camera-worker as a real process against a real ZMQ SUB socket."""

from __future__ import annotations

import os
import signal
import socket as stdlib_socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import cv2
import lz4.frame
import numpy as np
import pytest
import zmq

from broker.protocol import control, layout, stamp, wire
from broker.protocol.settings import SETTINGS, SettingsError, validate
from broker.support.backoff import Backoff
from cameras import cli, commands
from cameras.encoding import encode
from cameras.sources.capture import STREAM_TIMEOUT_MS
from cameras.sources.testpattern import TestPattern
from cameras.sources.v4l2 import (
    QUERYCTRL,
    ControlRange,
    device_value,
    query_control,
    use_passthrough,
)
from cameras.worker import Stop, late_slots


@contextmanager
def subscriber() -> Iterator[tuple[zmq.Socket, str]]:
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.setsockopt(zmq.RCVTIMEO, 10_000)
    socket.bind("tcp://127.0.0.1:*")
    try:
        yield socket, socket.getsockopt_string(zmq.LAST_ENDPOINT)
    finally:
        context.destroy(linger=0)


@contextmanager
def worker(endpoint: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "cameras.worker", "--broker", endpoint, "--camera-id", "cam", *args],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None  # a pipe
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()


def stderr_text(process: subprocess.Popen[bytes]) -> str:
    """What a `worker` wrote to its standard error."""
    assert process.stderr is not None  # a pipe
    return process.stderr.read().decode()


def frames(socket: zmq.Socket, count: int) -> list[tuple[wire.FrameHeader, bytes]]:
    """The next ``count`` frames, checked; each payload is the part received (bytes)."""
    return [
        cast(tuple[wire.FrameHeader, bytes], wire.decode(socket.recv_multipart(), 1 << 24))
        for _ in range(count)
    ]


def decoded_size(payload: bytes) -> tuple[int, int]:
    image = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image.shape[1], image.shape[0]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- pure parts -----------------------------------------------------------------


def test_test_pattern_has_realistic_jpeg_sizes_and_moves() -> None:
    pattern = TestPattern(1280, 720)
    first, second = pattern.draw(0, 1000.0), pattern.draw(1, 1000.1)
    size = len(encode(first, "jpeg", 80))
    assert 100_000 <= size <= 200_000, size
    assert np.mean(cv2.absdiff(first, second)) > 5


@pytest.mark.parametrize("fmt", wire.FORMATS)
def test_encode_each_format(fmt: str) -> None:
    image = TestPattern(64, 48).draw(0)
    data = encode(image, fmt, 80)
    assert wire.sniff_format(data) == fmt
    if fmt == "lz4":  # raw BGR pixels, top-down, no padding: equal bytes
        assert lz4.frame.decompress(data) == image.tobytes()
    else:
        assert decoded_size(data) == (64, 48)
    if fmt in ("bmp", "tiff", "lz4"):
        assert layout.check(fmt, data, 64, 48) is not None


def test_tiff_is_8_bit_rgb_or_16_bit_grey_and_lossless() -> None:
    image = TestPattern(64, 48).draw(0)
    rgb = cv2.imdecode(np.frombuffer(encode(image, "tiff", 80), np.uint8), cv2.IMREAD_UNCHANGED)
    assert rgb is not None and rgb.dtype == np.uint8 and np.array_equal(rgb, image)
    data = encode(image, "tiff", 80, tiff_depth=16)
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert grey is not None and grey.dtype == np.uint16 and grey.shape == (48, 64)
    expected = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257
    assert np.array_equal(grey, expected)
    assert layout.tiff_layout(data) == layout.Layout(64, 48, 1, 16)


def test_passthrough_only_when_the_camera_gives_exactly_what_was_asked() -> None:
    assert use_passthrough("jpeg", (1280, 720), (1280, 720), "MJPG")
    assert use_passthrough("jpeg", None, (640, 480), "MJPG")
    assert not use_passthrough("jpeg", (1280, 720), (640, 480), "MJPG")
    assert not use_passthrough("png", None, (640, 480), "MJPG")
    assert not use_passthrough("jpeg", None, (640, 480), "YUYV")


def test_settings_map_onto_a_v4l2_control_range_around_its_default() -> None:
    limits = ControlRange(lo=-64, hi=64, default=0)
    assert [device_value(v, limits) for v in (0, 25, 50, 75, 100)] == [-64, -32, 0, 32, 64]
    lopsided = ControlRange(lo=0, hi=255, default=128)
    assert device_value(0, lopsided) == 0 and device_value(100, lopsided) == 255
    assert device_value(50, lopsided) == 128
    assert QUERYCTRL.size == 68  # struct v4l2_queryctrl
    assert query_control("/dev/video99", 0x00980900) is None  # no such device: software


def test_pacing_drops_late_slots_and_backoff_doubles_to_a_cap() -> None:
    assert late_slots(1.0, 1.05, 0.1) == 0
    assert late_slots(1.35, 1.0, 0.1) == 3
    backoff = Backoff(1, 8)
    assert [backoff.next() for _ in range(5)] == [1, 2, 4, 8, 8]
    backoff.reset()
    assert backoff.next() == 1


def test_stop_wakes_a_waiting_sleep_and_stays_set() -> None:
    stop = Stop()
    try:
        assert stop.wait(0.01) is False
        threading.Timer(0.1, stop.set).start()
        started = time.monotonic()
        assert stop.wait(10) is True
        assert time.monotonic() - started < 2
        assert stop.wait(10) is True  # at once: the pipe is never drained
    finally:
        stop.close()


def test_every_command_has_a_handler() -> None:
    assert set(commands.HANDLERS) == set(control.COMMANDS)


@pytest.mark.parametrize("name", ["width", "height", "fps", "quality"])
def test_the_cli_takes_camera_ranges_from_the_settings_table(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = SETTINGS[name]
    assert spec.lo is not None and spec.hi is not None
    base = ["--broker", "tcp://127.0.0.1:1", "--camera-id", "c", "--source", "test-pattern"]
    other = {"width": "--height", "height": "--width"}.get(name)
    for value in (spec.lo, spec.hi):
        args = [f"--{name}", f"{value:g}", *([other, "320"] if other else [])]
        options = cli.parse([*base, *args])
        assert validate(options.camera_settings())  # what it reports, its checks accept
    for value in (spec.lo - 1 if spec.kind is int else spec.lo / 2, spec.hi + 1):
        args = [f"--{name}", f"{value:g}", *([other, "320"] if other else [])]
        with pytest.raises(SystemExit) as exited:
            cli.parse([*base, *args])
        assert exited.value.code == 2
        with pytest.raises(SettingsError) as refused:  # the number as written: 241, 0.05
            validate({name: int(value) if float(value).is_integer() else value})
        assert f"argument --{name}: {refused.value.errors[name]}" in capsys.readouterr().err


def test_the_heartbeat_range_is_the_protocols(capsys: pytest.CaptureFixture[str]) -> None:
    base = [
        "--broker",
        "tcp://127.0.0.1:1",
        "--camera-id",
        "c",
        "--source",
        "test-pattern",
        "--control",
        "tcp://127.0.0.1:2",
    ]
    lo, hi = control.HEARTBEAT_RANGE
    assert cli.parse([*base, "--heartbeat", f"{lo:g}"]).heartbeat == lo
    assert cli.parse([*base, "--heartbeat", f"{hi:g}"]).heartbeat == hi
    with pytest.raises(SystemExit):
        cli.parse([*base, "--heartbeat", f"{lo / 2:g}"])
    assert f"must be a number from {lo:g} to {hi:g}, got {lo / 2:g}" in capsys.readouterr().err


def test_worker_options_built_in_code_are_checked_too() -> None:
    good = cli.WorkerOptions(broker="tcp://127.0.0.1:1", camera_id="c", source="test-pattern")
    assert good.camera_settings() == {"fps": 15.0, "format": "jpeg", "quality": 80}
    bad_options: tuple[dict[str, Any], ...] = (
        {"size": (8, 8)},
        {"fps": 0.0},
        {"heartbeat": 0.05},
        {"paused": True},
        {"device": "/dev/video0"},
        {"camera_id": "a b"},
    )
    for bad in bad_options:
        with pytest.raises(ValueError):
            cli.WorkerOptions(
                **{"broker": "tcp://127.0.0.1:1", "camera_id": "c", "source": "test-pattern", **bad}
            )


def test_the_worker_imports_nothing_of_the_brokers_runtime() -> None:
    probe = "import cameras.worker, sys; print(sorted({'trio', 'h11', 'trio_websocket'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


# -- real processes ---------------------------------------------------------------


@pytest.mark.timeout(30)
def test_test_pattern_worker_publishes_stamped_frames_at_the_requested_rate() -> None:
    with (
        subscriber() as (socket, endpoint),
        worker(
            endpoint, "--source", "test-pattern", "--width", "320", "--height", "240", "--fps", "10"
        ),
    ):
        frames(socket, 2)  # connected
        started = time.monotonic()
        received = frames(socket, 20)
        rate = 20 / (time.monotonic() - started)
        assert 7 <= rate <= 13, rate
        seqs = [header.seq for header, _ in received]
        assert seqs == sorted(set(seqs))
        for header, payload in received:
            assert (header.camera, header.format, header.width, header.height) == (
                "cam",
                "jpeg",
                320,
                240,
            )
            assert decoded_size(payload) == (320, 240)
            found = stamp.read(payload)
            assert found is not None
            seq, captured_at = found
            assert seq == header.seq and captured_at == pytest.approx(header.captured_at, abs=1e-6)


@pytest.mark.timeout(30)
def test_png_output() -> None:
    with (
        subscriber() as (socket, endpoint),
        worker(
            endpoint,
            "--source",
            "test-pattern",
            "--width",
            "160",
            "--height",
            "120",
            "--format",
            "png",
        ),
    ):
        header, payload = frames(socket, 1)[0]
        assert header.format == "png" and wire.sniff_format(payload) == "png"


@pytest.mark.timeout(30)
def test_video_file_loops_and_folder_cycles(tmp_path: Path) -> None:
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 20, (160, 120))
    pattern = TestPattern(160, 120)
    for seq in range(10):
        writer.write(pattern.draw(seq))
    writer.release()
    folder = tmp_path / "images"
    folder.mkdir()
    for seq in range(3):
        cv2.imwrite(str(folder / f"{seq}.png"), pattern.draw(seq))
    for source, size in ((video, (160, 120)), (folder, (80, 60))):
        args = ["--source", str(source), "--fps", "30"]
        if size == (80, 60):
            args += ["--width", "80", "--height", "60"]  # resized to what was asked
        with subscriber() as (socket, endpoint), worker(endpoint, *args):
            received = frames(socket, 25)  # more than the clip has: it loops
            assert all(decoded_size(payload) == size for _, payload in received)


@pytest.mark.timeout(30)
def test_missing_device_is_retried_with_backoff_without_spinning() -> None:
    with subscriber() as (_, endpoint), worker(endpoint, "--device", "/dev/video99") as process:
        time.sleep(1.0)
        cpu_before = cpu_seconds(process.pid)
        time.sleep(3.0)
        assert cpu_seconds(process.pid) - cpu_before < 0.3  # under 10% of a core
        assert process.poll() is None  # still running, not a crash loop
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert process.wait(5) == 0
        assert time.monotonic() - started < 2
        log = stderr_text(process)
        assert "cannot open device /dev/video99; retrying in 1 s" in log
        assert "retrying in 2 s" in log


@pytest.mark.timeout(30)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_stop_the_worker_cleanly(signum: int) -> None:
    with (
        subscriber() as (socket, endpoint),
        worker(
            endpoint, "--source", "test-pattern", "--width", "320", "--height", "240"
        ) as process,
    ):
        frames(socket, 2)
        process.send_signal(signum)
        started = time.monotonic()
        assert process.wait(5) == 0
        assert time.monotonic() - started < 2


def test_bad_arguments_are_refused() -> None:
    for args in (
        ["--source", "test-pattern", "--quality", "101"],
        ["--fps", "0", "--source", "x"],
        ["--source", "a", "--device", "b"],
        ["--source", "test-pattern", "--width", "10"],
        ["--source", "test-pattern", "--paused"],  # nothing could ever start it
        ["--source", "test-pattern", "--control", "tcp://127.0.0.1:1", "--heartbeat", "0"],
        ["--source", "test-pattern", "--control", "nonsense://x"],
    ):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "cameras.worker",
                "--broker",
                "tcp://127.0.0.1:1",
                "--camera-id",
                "c",
                *args,
            ],
            capture_output=True,
            timeout=20,
        )
        assert result.returncode == 2, args


@pytest.mark.timeout(30)
def test_folder_skips_an_undecodable_image(tmp_path: Path) -> None:
    for seq in range(3):
        cv2.imwrite(str(tmp_path / f"{seq}.png"), TestPattern(80, 60).draw(seq))
    (tmp_path / "1b.jpg").write_bytes(b"not an image")
    with (
        subscriber() as (socket, endpoint),
        worker(endpoint, "--source", str(tmp_path), "--fps", "20") as process,
    ):
        frames(socket, 2)
        started = time.monotonic()
        frames(socket, 20)
        assert 20 / (time.monotonic() - started) >= 10  # not stalled by the bad file
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
        log = stderr_text(process)
        assert log.count("cannot decode") == 1, log  # said once, then skipped


@pytest.mark.timeout(30)
def test_a_silent_stream_url_neither_hangs_nor_holds_up_sigterm() -> None:
    server = stdlib_socket.create_server(("127.0.0.1", 0))
    accepted: list[stdlib_socket.socket] = []  # accepted, never answered

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/stream.mjpg"
    try:
        with subscriber() as (_, endpoint), worker(endpoint, "--source", url) as process:
            time.sleep(1.0)
            process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            assert process.wait(STREAM_TIMEOUT_MS / 1000 + 5) == 0
            assert time.monotonic() - started < STREAM_TIMEOUT_MS / 1000 + 1.5
            assert f"cannot open {url}; retrying in 1 s" in stderr_text(process)
    finally:
        server.close()
        for connection in accepted:
            connection.close()
