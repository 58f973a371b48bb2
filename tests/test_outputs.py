"""HTTP outputs with real sockets: snapshot, MJPEG, /api/stats and /metrics."""

from __future__ import annotations

import json
import time

import trio
from helpers import (
    MjpegReader,
    config,
    get,
    http,
    publisher,
    read_stamp,
    running_broker,
    sample_jpeg,
)
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from broker.protocol import stamp


async def test_snapshot_is_the_latest_frame_or_no_data() -> None:
    async with running_broker(config()) as broker:
        status, headers, body = await http(broker.port, get("/cameras/a/snapshot.jpg"))
        assert status == 200 and headers["x-camera-online"] == "false"
        assert body[:2] == b"\xff\xd8" and stamp.read(body) is None  # "No Data"
        assert headers["cache-control"] == "no-store"
        async with publisher(broker) as pub:
            pub.send("a", sample_jpeg(320, 240), 320, 240)
            await trio.sleep(0.3)
            status, headers, body = await http(broker.port, get("/cameras/a/snapshot.jpg"))
        assert status == 200 and headers["content-type"] == "image/jpeg"
        assert read_stamp(body)[0] == int(headers["x-frame-seq"]) == 0
        assert 0 <= int(headers["x-frame-age-ms"]) < 1000
        assert (await http(broker.port, get("/cameras/zz/snapshot.jpg")))[0] == 404
        assert (await http(broker.port, get("/cameras/a/snapshot.jpg", "POST")))[0] == 405


async def test_mjpeg_parts_carry_content_length_and_a_slow_reader_does_not_slow_a_fast_one() -> (
    None
):
    fps = 15
    async with (
        running_broker(config()) as broker,
        publisher(broker) as pub,
        trio.open_nursery() as n,
    ):
        n.start_soon(pub.stream, "a", float(fps))
        fast, head = await MjpegReader.open(broker.port, "/cameras/a/mjpeg")
        slow, _ = await MjpegReader.open(broker.port, "/cameras/a/mjpeg")
        assert b"multipart/x-mixed-replace; boundary=camera-broker-frame" in head
        counts = {"fast": 0, "slow": 0}
        lags: list[float] = []

        async def read(name: str, reader: MjpegReader, pace: float) -> None:
            while True:
                headers, body = await reader.part(pace)
                assert headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
                counts[name] += 1
                if name == "slow":
                    lags.append(time.time() - read_stamp(body)[1])

        n.start_soon(read, "fast", fast, 0)
        n.start_soon(read, "slow", slow, 500_000)
        await trio.sleep(4)
        assert counts["fast"] >= 0.9 * fps * 4, counts
        assert 1 <= counts["slow"] < 0.9 * counts["fast"], counts
        assert max(lags) < 1.5, lags
        stats = json.loads((await http(broker.port, get("/api/stats")))[2])
        (camera,) = stats["cameras"]
        kinds = sorted(s["kind"] for s in camera["subscribers"])
        assert kinds == ["mjpeg", "mjpeg"]
        assert sum(s["frames_dropped"] for s in camera["subscribers"]) > 0
        assert max(s["fps"] for s in camera["subscribers"]) >= 0.9 * fps  # the fast reader
        assert min(s["fps"] for s in camera["subscribers"]) < 0.9 * fps  # the slow one
        assert all(s["queue_depth"] <= 2 and s["lag_ms"] >= 0 for s in camera["subscribers"])
        n.cancel_scope.cancel()
    await fast.aclose()
    await slow.aclose()


async def test_large_frames_reach_mjpeg_and_websocket_whole() -> None:
    """Frames over JOIN_BELOW go out as header and payload, two buffers (no copy): an
    MJPEG reader and a WebSocket viewer each get every byte of each, and the parts
    around them stay well formed."""
    from broker.core.frame import JOIN_BELOW

    big = sample_jpeg(1600, 1200, quality=100)
    assert len(big) >= JOIN_BELOW, len(big)
    small = sample_jpeg(64, 48)
    async with running_broker(config()) as broker, publisher(broker) as pub:
        mjpeg, _ = await MjpegReader.open(broker.port, "/cameras/a/mjpeg")
        async with open_websocket_url(
            f"ws://127.0.0.1:{broker.port}/cameras/a", max_message_size=8 << 20
        ) as ws:
            await trio.sleep(0.3)  # both subscribed
            with trio.fail_after(10):
                for seq, (jpeg, width, height) in enumerate(
                    [(big, 1600, 1200), (small, 64, 48), (big, 1600, 1200)]
                ):
                    pub.send("a", jpeg, width, height)
                    message = await ws.get_message()
                    _, body = await mjpeg.part()
                    while stamp.read(body) is None:  # "No Data" before the first frame
                        _, body = await mjpeg.part()
                    assert message == body, seq  # the same stamped bytes both ways
                    assert read_stamp(body)[0] == seq and len(body) >= len(jpeg)
        await mjpeg.aclose()


async def test_mjpeg_fps_cap_and_head() -> None:
    async with (
        running_broker(config()) as broker,
        publisher(broker) as pub,
        trio.open_nursery() as n,
    ):
        n.start_soon(pub.stream, "a", 20.0, sample_jpeg(320, 240), 320, 240)
        reader, _ = await MjpegReader.open(broker.port, "/cameras/a/mjpeg?fps=4")
        await reader.part()
        started = time.monotonic()
        for _ in range(8):
            await reader.part()
        assert 1.6 <= time.monotonic() - started <= 2.6
        await reader.aclose()
        status, headers, body = await http(broker.port, get("/cameras/a/mjpeg", "HEAD"))
        assert status == 200 and body == b""
        assert headers["content-type"].startswith("multipart/x-mixed-replace")
        assert (await http(broker.port, get("/cameras/a/mjpeg?fps=-1")))[0] == 400
        n.cancel_scope.cancel()


async def test_metrics_parse_and_count() -> None:
    async with running_broker(config()) as broker, publisher(broker) as pub:
        async with open_websocket_url(f"ws://127.0.0.1:{broker.port}/cameras/a") as ws:
            for _ in range(5):
                pub.send("a", sample_jpeg(320, 240), 320, 240)
                await trio.sleep(0.05)
            for _ in range(5):
                await ws.get_message()
            pub.send_raw([b"junk"])
            await trio.sleep(0.2)
            status, headers, body = await http(broker.port, get("/metrics"))
        assert status == 200 and headers["content-type"].startswith("text/plain")
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }
        camera = (("camera", "a"),)
        assert samples[("camera_broker_frames_received_total", camera)] == 5
        assert samples[("camera_broker_frames_delivered_total", camera)] == 5
        assert samples[("camera_broker_clients", camera)] == 1
        assert samples[("camera_broker_ingest_errors_total", (("reason", "parts"),))] == 1
        assert samples[("camera_broker_latency_seconds_count", camera)] == 5
        assert samples[("camera_broker_sent_bytes_total", camera)] > 0


async def test_a_stalled_mjpeg_reader_is_disconnected_after_the_send_timeout() -> None:
    async with (
        running_broker(config(server="send_timeout = 1.0")) as broker,
        publisher(broker) as pub,
        trio.open_nursery() as n,
    ):
        n.start_soon(pub.stream, "a", 15.0)
        stalled, _ = await MjpegReader.open(broker.port, "/cameras/a/mjpeg")  # never reads on
        fast, _ = await MjpegReader.open(broker.port, "/cameras/a/mjpeg")
        started = time.monotonic()
        count = 0
        with trio.fail_after(10):
            while (
                json.loads((await http(broker.port, get("/healthz")))[2])["slow_client_disconnects"]
                < 1
            ):
                for _ in range(3):
                    await fast.part()
                    count += 1
        assert count >= 0.8 * 15 * (time.monotonic() - started) - 3  # the fast one kept its rate
        n.cancel_scope.cancel()
    await stalled.aclose()
    await fast.aclose()
