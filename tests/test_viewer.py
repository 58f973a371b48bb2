"""The viewer page (broker/static/) in headless Chromium against a real demo broker:
tiles go live, go offline when a camera's worker stalls, and come back by themselves
after a broker restart. Tiles expose data-camera, data-state, data-frames, data-nodata."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from procs import BrokerProcess, demo_config

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

DEMO = ["lobby", "yard", "garage", "desk"]
ALL_LIVE = (
    "(n) => { const tiles = [...document.querySelectorAll('.tile')];"
    " return tiles.length === n && tiles.every((t) => t.dataset.state === 'live'); }"
)


def open_viewer(page: Page, broker: BrokerProcess, count: int = 4) -> None:
    broker.wait_online(*DEMO)
    page.goto(broker.url + "/")
    page.wait_for_function(ALL_LIVE, arg=count)


def tile(page: Page, camera_id: str) -> Locator:
    return page.locator(f'.tile[data-camera="{camera_id}"]')


def frames(page: Page) -> dict[str, int]:
    return page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('.tile')].map("
        "(t) => [t.dataset.camera, Number(t.dataset.frames)]))"
    )


def worker_pid(broker_pid: int, camera_id: str) -> int:
    """The camera worker the broker started for ``camera_id``."""
    needle = f"--camera-id\x00{camera_id}\x00".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes() + b"\x00"
            if ppid == broker_pid and needle in cmdline:
                return int(entry)
    raise LookupError(f"no worker for camera {camera_id!r} under pid {broker_pid}")


@pytest.mark.timeout(120)
def test_every_tile_shows_moving_pictures(tmp_path: Path, page: Page) -> None:
    from PIL import Image, ImageChops, ImageStat

    with BrokerProcess(demo_config(tmp_path)) as broker:
        open_viewer(page, broker)
        first = {c: tile(page, c).screenshot() for c in DEMO}
        time.sleep(1)
        second = {c: tile(page, c).screenshot() for c in DEMO}
        page.screenshot(path=str(tmp_path / "viewer.png"))
        for camera_id in DEMO:
            a, b = (
                Image.open(io.BytesIO(shot[camera_id])).convert("RGB") for shot in (first, second)
            )
            assert a.size == b.size
            diff = ImageStat.Stat(ImageChops.difference(a, b)).sum
            assert sum(diff) > 0, f"tile {camera_id} did not change in a second"
        summary = page.text_content("#summary")
        assert summary == "4 of 4 cameras live"
        fps = {c: tile(page, c).locator(".fps").text_content() for c in DEMO}
        assert all(
            text is not None and text.endswith(" fps") and float(text.split()[0]) > 0
            for text in fps.values()
        ), fps
        latency = tile(page, "lobby").locator(".lat").text_content()
        assert latency is not None and latency.endswith(" ms"), latency


@pytest.mark.timeout(120)
def test_stalled_camera_turns_offline_and_shows_no_data(tmp_path: Path, page: Page) -> None:
    with BrokerProcess(demo_config(tmp_path)) as broker:
        open_viewer(page, broker)
        assert broker.process is not None
        pid = worker_pid(broker.process.pid, "yard")
        os.kill(pid, signal.SIGSTOP)  # alive but silent: the supervisor leaves it be
        try:
            page.wait_for_function(
                "document.querySelector('.tile[data-camera=\"yard\"]').dataset.state === 'offline'"
            )
            yard = tile(page, "yard")
            shown = yard.get_attribute("data-frames")
            assert shown is not None
            before = int(shown)
            # "No Data" images keep arriving (about one a second) and are recognised as such
            page.wait_for_function(
                "(n) => { const t = document.querySelector('.tile[data-camera=\"yard\"]');"
                " return Number(t.dataset.frames) > n && t.dataset.nodata === 'true'; }",
                arg=before,
            )
            assert broker.cameras()["yard"]["online"] is False
            assert yard.get_attribute("data-state") == "offline"
            assert yard.locator(".dot.offline").count() == 1
            assert yard.locator(".lat").text_content() == "—"
            states = {c: tile(page, c).get_attribute("data-state") for c in DEMO}
            assert states == {"lobby": "live", "yard": "offline", "garage": "live", "desk": "live"}
            assert page.text_content("#summary") == "3 of 4 cameras live"
            os.kill(pid, signal.SIGCONT)
            page.wait_for_function(ALL_LIVE, arg=4)  # and back when the camera is
            assert yard.get_attribute("data-nodata") == "false"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # so the broker can stop it


@pytest.mark.timeout(120)
def test_page_recovers_after_broker_restart_and_shows_new_cameras(
    tmp_path: Path, page: Page
) -> None:
    config = demo_config(tmp_path)
    broker = BrokerProcess(config)
    with broker:
        open_viewer(page, broker)
        page.wait_for_function(
            "[...document.querySelectorAll('.tile')].every((t) => Number(t.dataset.frames) >= 3)"
        )
        assert broker.stop() == 0
        page.wait_for_function(
            "[...document.querySelectorAll('.tile')].every((t) => t.dataset.state === 'connecting')"
        )
        page.wait_for_function(
            "document.getElementById('summary').textContent.includes('broker unreachable')"
        )
        before = frames(page)
        with config.open("a") as toml:  # a camera added while the broker is down
            toml.write(
                '\n[[cameras]]\nid = "porch"\nname = "Porch"\nsource = "test-pattern"\n'
                "width = 320\nheight = 240\nfps = 5\n"
            )
        broker.start()  # same port; the page is not reloaded
        broker.wait_online(*DEMO, "porch")
        page.wait_for_function(ALL_LIVE, arg=5)
        page.wait_for_function(
            "(before) => [...document.querySelectorAll('.tile')].every("
            "(t) => Number(t.dataset.frames) > (before[t.dataset.camera] ?? 0) + 3)",
            arg=before,
        )
        assert [t.get_attribute("data-camera") for t in page.locator(".tile").all()] == [
            *DEMO,
            "porch",
        ]
        assert page.text_content("#summary") == "5 of 5 cameras live"
