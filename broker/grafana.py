"""``broker grafana``: Grafana dashboards and a provisioning file for a broker's cameras.

`render` is pure: from a `Config` and the broker's public URL it builds every output file
as text (three dashboards, a dashboard provider and a README). `write` puts them on disk.
Dashboards have fixed uids and the JSON is sorted, so re-running replaces the dashboards
in Grafana instead of duplicating them, and unchanged input gives byte-identical files.
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker.config import CameraConfig, Config

PLUGIN_ID = "yourorg-live-image-panel"
PROVIDER_PATH = "/var/lib/grafana/dashboards/camera-broker"
SCHEMA_VERSION = 39
COLUMNS = 24  # Grafana's grid width
LIVE_FILE = "camera-broker-live.json"
MJPEG_FILE = "camera-broker-mjpeg.json"
HEALTH_FILE = "camera-broker-health.json"
PROVIDER_FILE = "provisioning/dashboards/camera-broker.yaml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# (title, PromQL, legend, unit) of the health dashboard's panels.
HEALTH_PANELS: tuple[tuple[str, str, str, str], ...] = (
    (
        "Frames received /s",
        "sum by (camera) (rate(camera_broker_frames_received_total[1m]))",
        "{{camera}}",
        "short",
    ),
    (
        "Frames delivered /s",
        "sum by (camera) (rate(camera_broker_frames_delivered_total[1m]))",
        "{{camera}}",
        "short",
    ),
    (
        "Frames dropped /s",
        "sum by (camera) (rate(camera_broker_frames_dropped_total[1m]))",
        "{{camera}}",
        "short",
    ),
    ("Connected clients", "sum(camera_broker_clients)", "clients", "short"),
    (
        "Ingest errors /s",
        "sum by (reason) (rate(camera_broker_ingest_errors_total[5m]))",
        "{{reason}}",
        "short",
    ),
    (
        "Latency p99",
        "histogram_quantile(0.99, sum by (le) (rate(camera_broker_latency_seconds_bucket[5m])))",
        "p99",
        "s",
    ),
    (
        "Worker restarts (1h)",
        "sum by (camera) (increase(camera_broker_worker_restarts_total[1h]))",
        "{{camera}}",
        "short",
    ),
    # Analytics ([analytics] enabled): empty without it.
    ("Motion", "max by (camera) (camera_broker_motion_active)", "{{camera}}", "short"),
    (
        "Detections /min",
        "sum by (camera, label) (rate(camera_broker_detections_total[1m])) * 60",
        "{{camera}} {{label}}",
        "short",
    ),
    (
        "Frames analysed /s",
        "sum by (camera) (rate(camera_broker_frames_analysed_total[1m]))",
        "{{camera}}",
        "short",
    ),
    (
        "Analyzer lag",
        "max by (camera) (camera_broker_analyzer_lag_seconds)",
        "{{camera}}",
        "s",
    ),
)

# Annotations from the Prometheus metrics: motion as a region per camera while
# camera_broker_motion_active is 1, detections as marks where the count rose.
ANNOTATIONS: tuple[tuple[str, str, str, str], ...] = (
    ("Motion", "max by (camera) (camera_broker_motion_active) == 1", "red", "motion {{camera}}"),
    (
        "Detections",
        "sum by (camera, label) (increase(camera_broker_detections_total[1m])) > 0",
        "orange",
        "{{label}} on {{camera}}",
    ),
)


def public_base(url: str) -> str:
    """The broker's public URL without a trailing slash; ValueError says what is wrong."""
    parts = urlsplit(url)
    try:
        _ = parts.port  # raises ValueError on a malformed port
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid or parts.query or parts.fragment:
        raise ValueError(
            f"must be an http:// or https:// URL such as http://HOST:8765, got {url!r}"
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def ws_base(public_url: str) -> str:
    """The WebSocket form of the public URL: an https Grafana page may not open ws://."""
    base = public_base(public_url)
    return "wss" + base[5:] if base.startswith("https:") else "ws" + base[4:]


def live_dashboard(config: Config, public_url: str) -> dict[str, Any]:
    base = ws_base(public_url)
    panels = [
        _panel(
            i,
            camera.display_name,
            PLUGIN_ID,
            _live_options(f"{base}/cameras/{camera.id}", image_format(camera.format)),
        )
        for i, camera in enumerate(config.cameras)
    ]
    return _dashboard("camera-broker-live", "Cameras (live)", _grid(panels, 2, 10))


def mjpeg_dashboard(config: Config, public_url: str) -> dict[str, Any]:
    """The cameras as built-in Text panels, for a Grafana without the plugin."""
    base = public_base(public_url)
    panels = [
        _panel(i, camera.display_name, "text", _mjpeg_options(base, camera))
        for i, camera in enumerate(config.cameras)
    ]
    return _dashboard("camera-broker-mjpeg", "Cameras (MJPEG)", _grid(panels, 2, 10))


def health_dashboard(public_url: str) -> dict[str, Any]:
    panels = [_health_panel(i, *spec) for i, spec in enumerate(HEALTH_PANELS)]
    dashboard = _dashboard("camera-broker-health", "Camera Broker health", _grid(panels, 2, 8))
    dashboard["description"] = (
        f"Needs a Prometheus data source scraping {public_base(public_url)}/metrics"
    )
    dashboard["templating"] = {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
            }
        ]
    }
    dashboard["refresh"] = "30s"
    dashboard["annotations"] = {"list": [_annotation(*spec) for spec in ANNOTATIONS]}
    return dashboard


def _annotation(name: str, expr: str, color: str, title: str) -> dict[str, Any]:
    """A Prometheus annotation query: a region for each run of samples it returns."""
    return {
        "name": name,
        "datasource": DATASOURCE,
        "enable": True,
        "iconColor": color,
        "expr": expr,
        "step": "15s",
        "titleFormat": title,
        "tagKeys": "camera",
        "useValueForTime": False,
    }


def render(config: Config, public_url: str) -> dict[str, str]:
    """Every output file, path relative to the output folder -> text. No I/O."""
    return {
        LIVE_FILE: _json(live_dashboard(config, public_url)),
        MJPEG_FILE: _json(mjpeg_dashboard(config, public_url)),
        HEALTH_FILE: _json(health_dashboard(public_url)),
        PROVIDER_FILE: PROVIDER_YAML,
        "README.md": _readme(public_base(public_url)),
    }


def write(out_dir: str | Path, files: dict[str, str]) -> list[Path]:
    """Write `render`'s files under out_dir (created if missing); returns their paths."""
    written = []
    for name, text in files.items():
        path = Path(out_dir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))  # bytes: no platform newline translation
        written.append(path)
    return written


def run(config: Config, public_url: str, out_dir: str) -> int:
    """The ``broker grafana`` command once the config is loaded; returns the exit code."""
    try:
        files = render(config, public_url)
    except ValueError as exc:
        print(f"--public-url: {exc}", file=sys.stderr)
        return 2
    if config.server.tls_cert and urlsplit(public_url).scheme.lower() != "https":
        print(
            "--public-url: the broker serves only https and wss (server.tls_cert is set): "
            f"use https://, got {public_url!r}",
            file=sys.stderr,
        )
        return 2
    for path in write(out_dir, files):
        print(path)
    return 0


# --- building blocks ---


def _dashboard(uid: str, title: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["camera-broker"],
        "schemaVersion": SCHEMA_VERSION,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "panels": panels,
    }


def _panel(index: int, title: str, kind: str, options: dict[str, Any]) -> dict[str, Any]:
    return {"id": index + 1, "type": kind, "title": title, "options": options}


def _grid(panels: list[dict[str, Any]], columns: int, height: int) -> list[dict[str, Any]]:
    """Place panels left to right, top to bottom, in equal cells across the 24 columns."""
    width = COLUMNS // columns
    for i, panel in enumerate(panels):
        row, column = divmod(i, columns)
        panel["gridPos"] = {"x": column * width, "y": row * height, "w": width, "h": height}
    return panels


def image_format(format: str) -> str:
    """The Live Image Panel's ``imageFormat`` for a camera sending ``format``: ``auto``
    sniffs JPEG, PNG, WebP and TIFF by their magic bytes; raw BMP and LZ4 frames must be
    named (LZ4 has no image header: the panel infers the size from the pixel count)."""
    return {"lz4": "image/lz4", "bmp": "image/bmp"}.get(format, "auto")


def _live_options(ws_url: str, image_format: str = "auto") -> dict[str, Any]:
    return {
        "wsUrl": ws_url,
        "reconnectDelay": 2000,
        "objectFit": "contain",
        "showStatusIndicator": True,
        "imageFormat": image_format,
    }


def _mjpeg_options(base: str, camera: CameraConfig) -> dict[str, Any]:
    src = html.escape(f"{base}/cameras/{camera.id}/mjpeg")  # the URL may hold "&"
    content = f'<img src="{src}" style="width:100%;height:100%;object-fit:contain">'
    return {"mode": "html", "content": content}


def _health_panel(index: int, title: str, expr: str, legend: str, unit: str) -> dict[str, Any]:
    panel = _panel(
        index,
        title,
        "timeseries",
        {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
    )
    panel["datasource"] = DATASOURCE
    panel["fieldConfig"] = {"defaults": {"unit": unit}, "overrides": []}
    panel["targets"] = [
        {"refId": "A", "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
    ]
    return panel


def _json(dashboard: dict[str, Any]) -> str:
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


PROVIDER_YAML = f"""\
apiVersion: 1
providers:
  - name: camera-broker
    type: file
    folder: Cameras
    options:
      path: {PROVIDER_PATH}
"""


def _readme(base: str) -> str:
    return f"""\
# Camera Broker dashboards for Grafana

Generated by `broker grafana` for the broker at {base}.

| file | where it goes |
| --- | --- |
| `{LIVE_FILE}` | live cameras through the Live Image Panel plugin |
| `{MJPEG_FILE}` | the same cameras as Text panels showing MJPEG: no plugin needed |
| `{HEALTH_FILE}` | broker health from Prometheus metrics |
| `{PROVIDER_FILE}` | Grafana's `provisioning/dashboards/` folder |

Copy the JSON files into the provider's path, `{PROVIDER_PATH}`
(they appear in the folder "Cameras"), or import each through Dashboards → Import.

The live dashboard needs the `{PLUGIN_ID}` plugin, which is unsigned:
start Grafana with `GF_PLUGINS_ALLOW_LOADING_UNSIGNED_PLUGINS={PLUGIN_ID}`.

The health dashboard needs a Prometheus data source that scrapes {base}/metrics.
"""
