"""Headless Chromium doing what the Grafana Live Image Panel does: binaryType
arraybuffer, a Blob and object URL per message on an <img>, the previous URL revoked,
reconnect after a delay unless the close code is 1000."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from procs import BrokerProcess, demo_config

if TYPE_CHECKING:
    from playwright.sync_api import Page

PANEL = """
<img id="img">
<script>
window.loaded = 0; window.received = 0; window.closes = [];
let url = null;
const img = document.getElementById("img");
img.onload = () => { window.loaded += 1; window.width = img.naturalWidth; };
function connect() {
  const ws = new WebSocket(WS_URL);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (event) => {
    if (typeof event.data === "string") return;
    window.received += 1;
    const next = URL.createObjectURL(new Blob([event.data], {type: "image/jpeg"}));
    img.src = next;
    if (url) URL.revokeObjectURL(url);
    url = next;
  };
  ws.onclose = (event) => {
    window.closes.push(event.code);
    if (event.code !== 1000) setTimeout(connect, RECONNECT_MS);
  };
}
connect();
</script>
"""


def open_panel(page: Page, ws_url: str, reconnect_ms: int = 500) -> None:
    page.set_content(
        PANEL.replace("WS_URL", repr(ws_url)).replace("RECONNECT_MS", str(reconnect_ms))
    )


def wait_for_more_images(page: Page, count: int) -> int:
    page.wait_for_function(f"window.loaded >= {count}")
    return page.evaluate("window.loaded")


@pytest.mark.timeout(120)
def test_panel_shows_live_frames_and_recovers_after_broker_restart(
    tmp_path: Path, page: Page
) -> None:
    broker = BrokerProcess(demo_config(tmp_path))
    with broker:
        broker.wait_online("lobby", "yard", "garage", "desk")
        open_panel(page, f"ws://127.0.0.1:{broker.port}/cameras/lobby")
        loaded = wait_for_more_images(page, 5)
        assert page.evaluate("window.width") == 1280
        wait_for_more_images(page, loaded + 5)  # the count rises: live
        assert broker.stop() == 0
        page.wait_for_function("window.closes.length >= 1")
        assert page.evaluate("window.closes[0]") == 1001
        before = page.evaluate("window.loaded")
        broker.start()  # same port
        broker.wait_online("lobby")
        wait_for_more_images(page, before + 5)  # reconnected by itself


@pytest.mark.timeout(120)
def test_viewer_page_shows_every_demo_camera_live(tmp_path: Path, page: Page) -> None:
    with BrokerProcess(demo_config(tmp_path)) as broker:
        broker.wait_online("lobby", "yard", "garage", "desk")
        page.goto(broker.url + "/")
        # Each tile shows its camera's own frames. A tile's image is briefly empty while
        # the next frame decodes, so wait for a moment when all four show a frame.
        expected = {"lobby": 1280, "yard": 640, "garage": 1920, "desk": 320}
        page.wait_for_function(
            "(expected) => document.querySelectorAll('.dot.live').length === 4 && "
            "[...document.querySelectorAll('.tile')].every("
            "(t) => t.querySelector('img').naturalWidth === expected[t.dataset.camera])",
            arg=expected,
        )


@pytest.mark.timeout(120)
def test_panel_imitation_shows_every_camera_of_the_generated_dashboard(
    tmp_path: Path, page: Page
) -> None:
    """The Live Image Panel, imitated, against every wsUrl `broker grafana` generates."""
    from broker import config as configuration
    from broker import grafana

    path = demo_config(tmp_path)
    with BrokerProcess(path) as broker:
        broker.wait_online("lobby", "yard", "garage", "desk")
        dashboard = grafana.live_dashboard(configuration.load(path), broker.url)
        urls = [panel["options"]["wsUrl"] for panel in dashboard["panels"]]
        assert len(urls) == 4
        for url in urls:
            open_panel(page, url)
            wait_for_more_images(page, 3)
            assert page.evaluate("window.width") > 0
