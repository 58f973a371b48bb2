"""``broker grafana``: dashboard structure and layout, determinism, the CLI, and that the
live dashboard's URLs are ones a real broker serves."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import config, publisher, running_broker
from trio_websocket import open_websocket_url

from broker import grafana
from broker.cli import main

CAMERAS = (
    '[[cameras]]\nid = "lobby"\nname = "Front Lobby"\n'
    '[[cameras]]\nid = "yard"\n'
    '[[cameras]]\nid = "dock.2"\nname = "Dock <2> & gate"\n'
)
FILES = (
    grafana.LIVE_FILE,
    grafana.MJPEG_FILE,
    grafana.HEALTH_FILE,
    grafana.PROVIDER_FILE,
    "README.md",
)


def dashboards(public_url: str = "http://cams.example:8765") -> list[dict[str, Any]]:
    cfg = config(CAMERAS)
    return [
        grafana.live_dashboard(cfg, public_url),
        grafana.mjpeg_dashboard(cfg, public_url),
        grafana.health_dashboard(public_url),
    ]


def overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def test_dashboards_are_well_formed() -> None:
    boards = dashboards()
    uids = [board["uid"] for board in boards]
    assert len(set(uids)) == len(uids) and all(8 <= len(uid) <= 40 for uid in uids)
    for board in boards:
        assert board["title"] and board["schemaVersion"] >= 36
        panels = board["panels"]
        assert panels and len({p["id"] for p in panels}) == len(panels)
        for panel in panels:
            assert panel["type"] and panel["title"] and isinstance(panel["options"], dict)
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["y"] >= 0 and pos["w"] > 0 and pos["h"] > 0
            assert pos["x"] + pos["w"] <= 24
        for a, b in combinations(panels, 2):
            assert not overlap(a["gridPos"], b["gridPos"]), (a["title"], b["title"])


def test_one_panel_per_camera_in_config_order() -> None:
    live, mjpeg, _ = dashboards()
    names = ["Front Lobby", "yard", "Dock <2> & gate"]
    assert [p["title"] for p in live["panels"]] == names
    assert [p["title"] for p in mjpeg["panels"]] == names
    assert {p["type"] for p in live["panels"]} == {"yourorg-live-image-panel"}
    assert live["panels"][0]["options"] == {
        "wsUrl": "ws://cams.example:8765/cameras/lobby",
        "reconnectDelay": 2000,
        "objectFit": "contain",
        "showStatusIndicator": True,
        "imageFormat": "auto",
    }
    assert {p["type"] for p in mjpeg["panels"]} == {"text"}
    assert mjpeg["panels"][2]["options"] == {
        "mode": "html",
        "content": '<img src="http://cams.example:8765/cameras/dock.2/mjpeg" '
        'style="width:100%;height:100%;object-fit:contain">',
    }


@pytest.mark.parametrize(
    ("public_url", "ws_url"),
    [
        ("http://cams.example:8765", "ws://cams.example:8765/cameras/yard"),
        ("http://cams.example:8765/", "ws://cams.example:8765/cameras/yard"),
        ("https://cams.example", "wss://cams.example/cameras/yard"),
        ("HTTPS://cams.example/broker/", "wss://cams.example/broker/cameras/yard"),
    ],
)
def test_websocket_scheme_follows_the_public_url(public_url: str, ws_url: str) -> None:
    live = grafana.live_dashboard(config(CAMERAS), public_url)
    assert live["panels"][1]["options"]["wsUrl"] == ws_url


@pytest.mark.parametrize(
    "public_url",
    ["ftp://cams.example", "cams.example:8765", "ws://cams.example:8765", "http://", "http://h:x"],
)
def test_bad_public_url_is_refused(public_url: str) -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        grafana.render(config(CAMERAS), public_url)


def test_health_dashboard_queries_prometheus() -> None:
    health = grafana.health_dashboard("http://cams.example:8765/")
    assert "http://cams.example:8765/metrics" in health["description"]
    [variable] = health["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    exprs = [t["expr"] for p in health["panels"] for t in p["targets"]]
    assert "sum(camera_broker_clients)" in exprs
    assert all("camera_broker_" in expr for expr in exprs)
    assert {p["type"] for p in health["panels"]} == {"timeseries"}
    assert all(p["datasource"]["uid"] == "${datasource}" for p in health["panels"])
    # Analytics: panels, and annotations from the metrics on the time axis.
    assert "max by (camera) (camera_broker_motion_active)" in exprs
    annotations = {a["name"]: a for a in health["annotations"]["list"]}
    assert annotations["Motion"]["expr"] == "max by (camera) (camera_broker_motion_active) == 1"
    assert "camera_broker_detections_total" in annotations["Detections"]["expr"]
    assert all(a["datasource"]["uid"] == "${datasource}" for a in annotations.values())


def test_output_is_deterministic(tmp_path: Path) -> None:
    for run in ("one", "two"):
        grafana.write(tmp_path / run, grafana.render(config(CAMERAS), "http://h:8765"))
    for name in FILES:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_cli_writes_every_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cameras.toml"
    cfg.write_text(CAMERAS)
    out = tmp_path / "out" / "grafana"
    assert main(["grafana", str(cfg), "--public-url", "https://h", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert sorted(printed) == sorted(str(out / name) for name in FILES)
    live = json.loads((out / grafana.LIVE_FILE).read_text())
    assert live["panels"][0]["options"]["wsUrl"] == "wss://h/cameras/lobby"
    provider = (out / grafana.PROVIDER_FILE).read_text()
    assert "apiVersion: 1" in provider and "type: file" in provider
    assert "path: /var/lib/grafana/dashboards/camera-broker" in provider
    assert "GF_PLUGINS_ALLOW_LOADING_UNSIGNED_PLUGINS" in (out / "README.md").read_text()


def test_cli_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cameras.toml"
    cfg.write_text(CAMERAS)
    out = tmp_path / "out"
    assert main(["grafana", str(cfg), "--public-url", "h:8765", "--out", str(out)]) == 2
    assert "--public-url: must be an http:// or https:// URL" in capsys.readouterr().err
    assert not out.exists()
    cfg.write_text('[[cameras]]\nid = "a"\nfps = 0\n')
    assert main(["grafana", str(cfg), "--public-url", "http://h", "--out", str(out)]) == 2
    assert "cameras[0].fps" in capsys.readouterr().err


async def test_live_urls_are_served_by_the_broker() -> None:
    cfg = config(CAMERAS)
    async with running_broker(cfg) as broker, publisher(broker) as pub, trio.open_nursery() as n:
        for camera in cfg.cameras:
            n.start_soon(pub.stream, camera.id, 10.0)
        live = grafana.live_dashboard(cfg, f"http://127.0.0.1:{broker.port}")
        assert len(live["panels"]) == len(cfg.cameras)
        for panel in live["panels"]:
            async with open_websocket_url(panel["options"]["wsUrl"]) as ws:
                with trio.fail_after(5):
                    message = await ws.get_message()
            assert isinstance(message, bytes) and message.startswith(b"\xff\xd8")
        n.cancel_scope.cancel()


async def test_mjpeg_text_panels_point_at_served_streams() -> None:
    import re

    from helpers import MjpegReader

    cfg = config(CAMERAS)
    async with running_broker(cfg) as broker, publisher(broker) as pub, trio.open_nursery() as n:
        for camera in cfg.cameras:
            n.start_soon(pub.stream, camera.id, 10.0)
        base = f"http://127.0.0.1:{broker.port}"
        text = grafana.mjpeg_dashboard(cfg, base)
        assert len(text["panels"]) == len(cfg.cameras)
        for panel in text["panels"]:
            assert panel["options"]["mode"] == "html"
            (src,) = re.findall(r'<img src="([^"]+)"', panel["options"]["content"])
            assert src.startswith(base) and src.endswith("/mjpeg")
            reader, head = await MjpegReader.open(broker.port, src.removeprefix(base))
            assert b"multipart/x-mixed-replace" in head
            with trio.fail_after(5):
                _, body = await reader.part()
            assert body.startswith(b"\xff\xd8")
            await reader.aclose()
        n.cancel_scope.cancel()


def test_each_live_panel_decodes_its_camera_format() -> None:
    """auto sniffs JPEG, PNG, WebP and TIFF; raw BMP and LZ4 must be named."""
    formats = ("jpeg", "png", "webp", "tiff", "bmp", "lz4")
    text = "".join(f'[[cameras]]\nid = "c{i}"\nformat = "{f}"\n' for i, f in enumerate(formats))
    live = grafana.live_dashboard(config(text), "http://cams.example:8765")
    found = [panel["options"]["imageFormat"] for panel in live["panels"]]
    assert found == ["auto", "auto", "auto", "auto", "image/bmp", "image/lz4"]
