"""The viewer page's settings drawer (broker/static/settings.js) in headless Chromium
against a real broker process with a supervised test-pattern camera: settings applied
from the form reach the camera's pictures, a refused change shows the broker's problem
next to its field and changes nothing, presets apply, and a viewer token is read-only.

The drawer exposes #settings[data-camera][data-state], .message[data-kind] and, per
setting, [name=KEY] and .error[data-for=KEY]."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest
from helpers import config, get, http, running_broker
from procs import BrokerProcess, synthetic_camera, wait_until, write_config

if TYPE_CHECKING:
    from playwright.sync_api import Page

NIGHT = "[presets.night]\nbrightness = 80\n"
EXTERNAL = '[[cameras]]\nid = "ext"\nname = "External"\n'  # no worker: never connected
VIEWER_TOKEN = "viewer-secret"
OPERATOR_TOKEN = "operator-secret"
TOKENS = (
    f'[[tokens]]\ntoken = "{VIEWER_TOKEN}"\nrole = "viewer"\n'
    f'[[tokens]]\ntoken = "{OPERATOR_TOKEN}"\nrole = "operator"\n'
)
DRAWER = "#settings"


def camera_config(tmp_path: Path, extra: str = "") -> Path:
    return write_config(tmp_path, NIGHT + synthetic_camera("cam", 320, 240, 10) + extra)


def wait_connected(broker: BrokerProcess, camera_id: str = "cam") -> None:
    wait_until(
        lambda: broker.cameras()[camera_id]["connected"],
        30,
        f"the worker of {camera_id} never connected:\n{broker.logs()}",
    )


def snapshot_mean(broker: BrokerProcess, camera_id: str = "cam") -> float:
    url = f"{broker.url}/cameras/{camera_id}/snapshot.jpg"
    with urllib.request.urlopen(url, timeout=10) as response:
        data = response.read()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return float(image.mean())


def open_page(page: Page, broker: BrokerProcess, token: str | None = None) -> None:
    page.goto(broker.url + "/" + (f"?token={token}" if token else ""))
    page.wait_for_function(
        "document.querySelector('.tile[data-camera=\"cam\"]')?.dataset.state === 'live'"
    )


def open_drawer(page: Page, camera_id: str, state: str) -> None:
    page.click(f'.tile[data-camera="{camera_id}"] .gear')
    page.wait_for_selector(f'{DRAWER}[data-camera="{camera_id}"][data-state="{state}"]')


def message(page: Page) -> tuple[str | None, str]:
    box = page.locator(f"{DRAWER} .message")
    return box.get_attribute("data-kind"), box.text_content() or ""


def wait_message(page: Page, kind: str) -> str:
    page.wait_for_selector(f'{DRAWER}[aria-busy="false"] .message[data-kind="{kind}"]')
    return message(page)[1]


@pytest.mark.timeout(60)
async def test_presets_route_lists_the_configured_presets() -> None:
    cameras = NIGHT + "[presets.day]\nbrightness = 50\nauto_exposure = true\n" + EXTERNAL
    async with running_broker(config(cameras + TOKENS)) as broker:
        auth = f"Authorization: Bearer {VIEWER_TOKEN}\r\n"  # a viewer may read them
        head = f"GET /api/presets HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n"
        status, headers, body = await http(broker.port, head.encode())
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body) == {
            "night": {"brightness": 80},
            "day": {"brightness": 50, "auto_exposure": True},
        }
        status, _, _ = await http(broker.port, get(f"/api/presets?token={VIEWER_TOKEN}", "HEAD"))
        assert status == 200
        status, headers, _ = await http(
            broker.port, get(f"/api/presets?token={VIEWER_TOKEN}", "POST")
        )
        assert status == 405 and headers["allow"] == "get, head"  # the helper lowercases
        assert (await http(broker.port, get("/api/presets")))[0] == 401
    async with running_broker(config(EXTERNAL)) as broker:
        status, _, body = await http(broker.port, get("/api/presets"))
        assert status == 200 and json.loads(body) == {}


@pytest.mark.timeout(180)
def test_drawer_applies_changes_shows_refusals_and_applies_presets(
    tmp_path: Path, page: Page
) -> None:
    with BrokerProcess(camera_config(tmp_path, EXTERNAL)) as broker:
        broker.wait_online("cam")
        wait_connected(broker)
        before = snapshot_mean(broker)
        # What the form is built from: the StatusResponse plus the worker's `supported`.
        with urllib.request.urlopen(broker.url + "/api/cameras/cam/settings", timeout=15) as r:
            status = json.load(r)
        assert status["success"] and status["settings"]["brightness"] == 50
        assert status["supported"]["brightness"] == {
            "type": "int",
            "default": 50,
            "min": 0,
            "max": 100,
        }
        open_page(page, broker)

        # The gear is a button: keyboard users open the drawer with Enter.
        page.focus('.tile[data-camera="cam"] .gear')
        page.keyboard.press("Enter")
        page.wait_for_selector(f'{DRAWER}[data-camera="cam"][data-state="ready"]')
        assert not page.is_visible(".tile.big")  # the gear does not enlarge its tile
        fields = page.eval_on_selector_all(
            f"{DRAWER} .field", "rows => rows.map(r => r.dataset.key)"
        )
        assert fields[:4] == ["name", "width", "height", "fps"] and "brightness" in fields
        brightness = page.locator(f'{DRAWER} [name="brightness"]')
        assert brightness.input_value() == "50"
        assert page.locator(f"{DRAWER} [name=format]").evaluate("e => e.tagName") == "SELECT"
        assert page.locator(f"{DRAWER} [name=fps]").input_value() == "10"
        # Exposure time is the camera's choice while auto exposure is on.
        assert page.locator(f"{DRAWER} [name=auto_exposure]").is_checked()
        assert page.locator(f"{DRAWER} [name=exposure_time]").is_disabled()
        page.uncheck(f"{DRAWER} [name=auto_exposure]")
        assert page.locator(f"{DRAWER} [name=exposure_time]").is_enabled()
        page.check(f"{DRAWER} [name=auto_exposure]")

        # The slider drives the value box; Apply sends only what changed.
        page.locator(f'{DRAWER} input[type=range][data-for="brightness"]').fill("90")
        assert brightness.input_value() == "90"
        with page.expect_request(lambda r: r.method == "PATCH") as patch:
            page.click(f"{DRAWER} .apply")
        assert json.loads(patch.value.post_data or "") == {"brightness": 90}
        assert "brightness" in wait_message(page, "ok")
        wait_until(
            lambda: broker.cameras()["cam"]["settings"]["brightness"] == 90,
            10,
            "/api/cameras does not report the new brightness",
        )
        wait_until(
            lambda: snapshot_mean(broker) > before + 40,
            10,
            f"the picture did not get brighter than {before:.1f}",
        )

        # A value the camera refuses: the broker's problem next to the field, nothing changed.
        page.fill(f"{DRAWER} [name=fps]", "0")
        page.fill(f'{DRAWER} [name="brightness"]', "60")
        page.click(f"{DRAWER} .apply")
        assert "Nothing was changed" in wait_message(page, "error")
        problem = page.text_content(f'{DRAWER} .error[data-for="fps"]') or ""
        assert "must be a number from 0.1 to 240, got 0" in problem
        assert page.is_visible(f'{DRAWER} .field.invalid[data-key="fps"]')
        assert page.text_content(f'{DRAWER} .error[data-for="brightness"]') == ""
        time.sleep(1)
        settings = broker.cameras()["cam"]["settings"]
        assert (settings["fps"], settings["brightness"]) == (10.0, 90)

        # A preset button applies the preset and the form shows the result.
        page.wait_for_selector(f'{DRAWER} .preset-list button[data-preset="night"]')
        page.click(f'{DRAWER} button[data-preset="night"]')
        assert "preset night applied" in wait_message(page, "ok")
        assert brightness.input_value() == "80"
        assert page.locator(f"{DRAWER} [name=fps]").input_value() == "10"  # reset too
        assert page.text_content(f'{DRAWER} .error[data-for="fps"]') == ""
        wait_until(
            lambda: broker.cameras()["cam"]["settings"]["brightness"] == 80,
            10,
            "the preset did not reach the camera",
        )
        page.screenshot(path=str(tmp_path / "drawer.png"))

        # The name setting is the camera's display name: the tile and the drawer follow it.
        page.fill(f"{DRAWER} [name=name]", "Gate")
        page.click(f"{DRAWER} .apply")
        wait_message(page, "ok")
        page.wait_for_function(
            "document.querySelector('.tile[data-camera=\"cam\"] .name').textContent === 'Gate'"
            " && document.getElementById('settings-title').textContent === 'Gate'"
        )

        # Escape closes the drawer first and gives the focus back to the gear; with an
        # enlarged tile, the next Escape un-enlarges it.
        page.keyboard.press("Escape")
        assert page.is_hidden(DRAWER)
        assert page.evaluate("document.activeElement.classList.contains('gear')")
        page.click('.tile[data-camera="cam"] img')
        page.wait_for_selector('.tile.big[data-camera="cam"]')
        open_drawer(page, "cam", "ready")
        page.click(f"{DRAWER} .reload")  # a click inside the drawer leaves the tile big
        page.wait_for_selector(f'{DRAWER}[data-state="ready"][aria-busy="false"]')
        assert page.is_visible(".tile.big")
        page.keyboard.press("Escape")
        assert page.is_hidden(DRAWER) and page.is_visible(".tile.big")
        page.keyboard.press("Escape")
        assert not page.is_visible(".tile.big")

        # A camera without a worker on the control channel: a clear message, and only
        # the broker's own settings (analytics), which apply to every camera.
        open_drawer(page, "ext", "ready")
        kind, text = message(page)
        assert kind == "info" and "Camera not connected" in text and "analytics" in text
        fields = page.eval_on_selector_all(
            f"{DRAWER} .field", "rows => rows.map(r => r.dataset.key)"
        )
        assert sorted(fields) == ["ai_confidence", "ai_enabled", "ai_model"]
        assert not page.is_checked(f"{DRAWER} [name=ai_enabled]")
        page.check(f"{DRAWER} [name=ai_enabled]")
        page.select_option(f"{DRAWER} [name=ai_model]", "face")
        page.click(f"{DRAWER} .apply")
        wait_message(page, "ok")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(broker.url + "/api/cameras/ext/settings", timeout=15)
        body = json.load(refused.value)
        assert refused.value.code == 503 and body["error"] == "not_connected"
        assert body["settings"]["ai_enabled"] is True and body["settings"]["ai_model"] == "face"


@pytest.mark.timeout(180)
def test_drawer_is_read_only_with_a_viewer_token(tmp_path: Path, page: Page) -> None:
    config = camera_config(tmp_path, TOKENS)
    with BrokerProcess(config, token=OPERATOR_TOKEN) as broker:
        broker.wait_online("cam")
        wait_connected(broker)
        open_page(page, broker, VIEWER_TOKEN)
        open_drawer(page, "cam", "readonly")
        kind, text = message(page)
        assert kind == "error" and "read-only: needs an operator token" in text.lower()
        assert page.locator(f"{DRAWER} .fields input").count() == 0
        assert "brightness" in (page.text_content(f"{DRAWER} dl.readonly") or "").lower()
        assert page.is_disabled(f"{DRAWER} .apply")
        # The viewer may read the presets, not apply them.
        preset = page.locator(f'{DRAWER} button[data-preset="night"]')
        preset.wait_for()
        assert preset.is_disabled()

        # The same page with an operator token passes it on to the settings routes.
        open_page(page, broker, OPERATOR_TOKEN)
        open_drawer(page, "cam", "ready")
        page.click(f'{DRAWER} button[data-preset="night"]')
        assert "preset night applied" in wait_message(page, "ok")
        wait_until(
            lambda: broker.cameras()["cam"]["settings"]["brightness"] == 80,
            10,
            "the preset did not reach the camera",
        )
