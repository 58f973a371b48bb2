"""broker.config: defaults, parsing, and the exact message for each kind of mistake."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from broker.config import (
    AnalyticsConfig,
    CameraConfig,
    Config,
    ConfigError,
    ControlConfig,
    IngestConfig,
    RetentionConfig,
    SecurityConfig,
    ServerConfig,
    WorkersConfig,
    from_dict,
    load,
    parse,
)
from broker.protocol.wire import CAMERA_ID

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
ID_RULE = f"must match {CAMERA_ID.pattern}"
DEVICE_RULE = (
    'must be a device path such as "/dev/video0" or a camera index (an integer from 0 to 1023)'
)
CAMERA_KEYS = "id, name, source, device, width, height, fps, format, quality"

# Each row: a config with mistakes, and exactly the messages it must produce, in order.
BAD_CONFIGS = [
    pytest.param(
        "[control]\nheartbeat_interval = 5\nlost_after = 10\n[workers]\norphan_timeout = 8",
        [
            "workers.orphan_timeout: must be at least twice control.heartbeat_interval (5.0), "
            "got 8.0"
        ],
        id="orphan-timeout-too-short",
    ),
    pytest.param(
        '[ingest]\nmax_cameras = 1\n[[cameras]]\nid = "a"\n[[cameras]]\nid = "b"',
        ["ingest.max_cameras: must be at least the number of configured cameras (2), got 1"],
        id="max-cameras-below-configured",
    ),
    # --- control, presets, schedules, tokens ---
    pytest.param(
        "[control]\nheartbeat_interval = 2\nlost_after = 3",
        ["control.lost_after: must be at least twice heartbeat_interval (2.0), got 3.0"],
        id="lost-after-too-short",
    ),
    pytest.param(
        "[presets.night]\nbrightness = 120\nglow = 1",
        [
            "presets.night.brightness: must be an integer from 0 to 100, got 120",
            "presets.night.glow: unknown setting (known: width, height, fps, format, quality, "
            "brightness, contrast, saturation, sharpness, auto_exposure, exposure_time, name, "
            "ai_enabled, ai_model, ai_confidence)",
        ],
        id="preset-bad-settings",
    ),
    pytest.param(
        '[presets.day]\nbrightness = 50\n[[cameras]]\nid = "a"\n'
        'schedule = [{at = "25:00", preset = "day"}, {at = "07:00", preset = "dusk"}]',
        [
            'cameras[0].schedule[0].at: must be a time of day such as "07:30", got "25:00" '
            "(a string)",
            'cameras[0].schedule[1].preset: must name a preset (day), got "dusk"',
        ],
        id="schedule-bad-entries",
    ),
    pytest.param(
        '[[cameras]]\nid = "a"\n[[tokens]]\ntoken = "short"\nrole = "admin"\ncameras = ["b"]',
        [
            "tokens[0].token: must be at least 8 characters without spaces "
            "(e.g. from `openssl rand -hex 16`)",
            'tokens[0].role: must be one of viewer, operator, got "admin"',
            'tokens[0].cameras[0]: must name a configured camera (a), got "b"',
        ],
        id="token-mistakes",
    ),
    # --- types and ranges ---
    pytest.param(
        "[server]\nqueue_depth = 0",
        ["server.queue_depth: must be an integer from 1 to 64, got 0"],
        id="int-below-range",
    ),
    pytest.param(
        "[server]\nqueue_depth = 65",
        ["server.queue_depth: must be an integer from 1 to 64, got 65"],
        id="int-above-range",
    ),
    pytest.param(
        "[server]\nqueue_depth = 2.0",
        ["server.queue_depth: must be an integer from 1 to 64, got 2.0 (a float)"],
        id="float-for-int",
    ),
    pytest.param(
        "[server]\nqueue_depth = true",
        ["server.queue_depth: must be an integer from 1 to 64, got true (a boolean)"],
        id="bool-for-int",
    ),
    pytest.param(
        '[server]\nsend_timeout = "fast"',
        ['server.send_timeout: must be a number from 0.1 to 300, got "fast" (a string)'],
        id="string-for-float",
    ),
    pytest.param(
        "[server]\nheader_timeout = 0.05",
        ["server.header_timeout: must be a number from 0.1 to 300, got 0.05"],
        id="float-below-range",
    ),
    pytest.param(
        "[server]\nsend_timeout = nan",
        ["server.send_timeout: must be a number from 0.1 to 300, got nan"],
        id="nan",
    ),
    pytest.param(
        "[ingest]\noffline_after = inf",
        ["ingest.offline_after: must be a number from 0.1 to 3600, got inf"],
        id="inf",
    ),
    pytest.param(
        "[server]\nsend_timeout = 1979-05-27",
        ["server.send_timeout: must be a number from 0.1 to 300, got 1979-05-27 (a date)"],
        id="date-for-float",
    ),
    pytest.param(
        "[workers]\nrestart_delay = false",
        ["workers.restart_delay: must be a number from 0.1 to 60, got false (a boolean)"],
        id="bool-for-float",
    ),
    pytest.param(
        "[ingest]\nmax_frame_bytes = 100",
        ["ingest.max_frame_bytes: must be an integer from 1024 to 268435456, got 100"],
        id="max-frame-bytes",
    ),
    pytest.param(
        "[ingest]\naccept_unknown_cameras = 1",
        ["ingest.accept_unknown_cameras: must be true or false, got 1 (an integer)"],
        id="int-for-bool",
    ),
    pytest.param(
        '[server]\ndefault_camera = ["a"]',
        ["server.default_camera: must be a string, got an array"],
        id="array-for-string",
    ),
    # --- listen ---
    pytest.param(
        '[server]\nlisten = "localhost"',
        ['server.listen: must be HOST:PORT with PORT from 0 to 65535, got "localhost"'],
        id="listen-no-port",
    ),
    pytest.param(
        '[server]\nlisten = "localhost:70000"',
        ['server.listen: must be HOST:PORT with PORT from 0 to 65535, got "localhost:70000"'],
        id="listen-port-range",
    ),
    pytest.param(
        '[server]\nlisten = ":8765"',
        [
            "server.listen: must be HOST:PORT with HOST an IPv4 address, a hostname or "
            '[IPv6 address], got ":8765"'
        ],
        id="listen-no-host",
    ),
    pytest.param(
        '[server]\nlisten = "::1:8765"',
        [
            "server.listen: must be HOST:PORT with HOST an IPv4 address, a hostname or "
            '[IPv6 address], got "::1:8765"'
        ],
        id="listen-bare-ipv6",
    ),
    pytest.param(
        '[server]\nlisten = "300.1.2.3:80"',
        [
            "server.listen: must be HOST:PORT with HOST an IPv4 address, a hostname or "
            '[IPv6 address], got "300.1.2.3:80"'
        ],
        id="listen-bad-ipv4",
    ),
    pytest.param(
        '[server]\nlisten = "my host:80"',
        [
            "server.listen: must be HOST:PORT with HOST an IPv4 address, a hostname or "
            '[IPv6 address], got "my host:80"'
        ],
        id="listen-bad-hostname",
    ),
    pytest.param(
        "[server]\nlisten = 8765",
        ["server.listen: must be a string, got 8765 (an integer)"],
        id="listen-int",
    ),
    # --- unknown keys ---
    pytest.param(
        "[server]\nqueue_dept = 3",
        ["server.queue_dept: unknown key (did you mean queue_depth?)"],
        id="unknown-key-hint",
    ),
    pytest.param(
        '[server]\ncolour = "red"',
        [
            "server.colour: unknown key (known keys: listen, queue_depth, send_timeout, "
            "header_timeout, default_camera, cors_origins, ws_request_rate, auth_failure_burst, auth_failure_rate, tls_cert, tls_key)"
        ],
        id="unknown-key-list",
    ),
    pytest.param(
        "[sever]\nqueue_depth = 3",
        ["sever: unknown key (did you mean server?)"],
        id="unknown-table",
    ),
    pytest.param(
        '[server]\n"queue.depth" = 3',
        ['server."queue.depth": unknown key (did you mean queue_depth?)'],
        id="unknown-quoted-key",
    ),
    pytest.param(
        "[workers]\ncameras = []",
        [
            "workers.cameras: unknown key (a top-level key, so it must come before "
            "the first [table])"
        ],
        id="top-level-key-after-a-table",
    ),
    pytest.param(
        "[[cameras]]\nid = 'a'\nqualty = 50",
        ["cameras[0].qualty: unknown key (did you mean quality?)"],
        id="unknown-camera-key",
    ),
    # --- tables that are not tables ---
    pytest.param(
        "server = 5",
        ["server: must be a table, got 5 (an integer)"],
        id="section-not-table",
    ),
    pytest.param(
        "[[workers]]\nstop_grace = 1",
        ["workers: must be a table, got an array"],
        id="section-array",
    ),
    pytest.param(
        '[cameras]\nid = "a"',
        ["cameras: must be an array of tables ([[cameras]]), got a table"],
        id="cameras-table",
    ),
    pytest.param(
        'cameras = "front"',
        ['cameras: must be an array of tables ([[cameras]]), got "front" (a string)'],
        id="cameras-string",
    ),
    pytest.param(
        'cameras = [{ id = "a" }, 1]',
        ["cameras[1]: must be a table, got 1 (an integer)"],
        id="camera-not-table",
    ),
    # --- ingest endpoints ---
    pytest.param(
        '[ingest]\nendpoints = "tcp://*:5555"',
        ['ingest.endpoints: must be an array of strings, got "tcp://*:5555" (a string)'],
        id="endpoints-not-array",
    ),
    pytest.param(
        '[ingest]\nendpoints = ["tcp://*:5555", "udp://*:5556", 5]',
        [
            'ingest.endpoints[1]: must be tcp://HOST:PORT or ipc://PATH, got "udp://*:5556"',
            "ingest.endpoints[2]: must be a string, got 5 (an integer)",
        ],
        id="endpoint-bad-entries",
    ),
    pytest.param(
        '[ingest]\nendpoints = ["tcp://localhost", "ipc://"]',
        [
            'ingest.endpoints[0]: must be tcp://HOST:PORT or ipc://PATH, got "tcp://localhost"',
            'ingest.endpoints[1]: must be tcp://HOST:PORT or ipc://PATH, got "ipc://"',
        ],
        id="endpoint-incomplete",
    ),
    pytest.param(
        '[ingest]\nendpoints = ["ipc:///tmp/b", "tcp://*:1", "ipc:///tmp/b"]',
        ['ingest.endpoints[2]: duplicate entry "ipc:///tmp/b" (also ingest.endpoints[0])'],
        id="endpoint-duplicate",
    ),
    # --- workers ---
    pytest.param(
        "[workers]\nrestart_delay = 10\nrestart_delay_max = 5",
        ["workers.restart_delay_max: must be at least restart_delay (10.0), got 5.0"],
        id="restart-delay-max-below",
    ),
    pytest.param(
        "[workers]\nrestart_delay = 45",
        [
            "workers.restart_delay_max: must be at least restart_delay (45.0), "
            "got 30.0 (the default)"
        ],
        id="restart-delay-above-default-max",
    ),
    pytest.param(
        "[workers]\nrestart_delay = 45\nrestart_delay_max = 0.5\nstop_grace = 0",
        [
            "workers.restart_delay_max: must be a number from 1 to 3600, got 0.5",
            "workers.stop_grace: must be a number from 0.1 to 60, got 0",
        ],
        id="no-comparison-when-one-is-invalid",
    ),
    # --- cameras ---
    pytest.param(
        '[[cameras]]\nname = "Front"',
        ["cameras[0].id: is required"],
        id="camera-id-required",
    ),
    pytest.param(
        '[[cameras]]\nid = "front door"\n[[cameras]]\nid = ""\n[[cameras]]\nid = 7',
        [
            f'cameras[0].id: {ID_RULE}, got "front door"',
            f'cameras[1].id: {ID_RULE}, got ""',
            "cameras[2].id: must be a string, got 7 (an integer)",
        ],
        id="camera-id-invalid",
    ),
    pytest.param(
        '[[cameras]]\nid = "front"\n[[cameras]]\nid = "back"\n[[cameras]]\nid = "front"',
        ['cameras[2].id: duplicate camera id "front" (also cameras[0].id)'],
        id="camera-id-duplicate",
    ),
    pytest.param(
        '[[cameras]]\nid = "a"\nsource = "test-pattern"\ndevice = "/dev/video0"',
        ["cameras[0]: must not set both source and device"],
        id="source-and-device",
    ),
    pytest.param(
        '[[cameras]]\nid = "a"\nsource = "udp://10.0.0.1:1234"',
        [
            "cameras[0].source: must be test-pattern, a file or folder path, or an rtsp://, "
            'http:// or https:// URL, got "udp://10.0.0.1:1234"'
        ],
        id="source-scheme",
    ),
    pytest.param(
        '[[cameras]]\nid = "a"\ndevice = -1\n[[cameras]]\nid = "b"\ndevice = true\n'
        '[[cameras]]\nid = "c"\nformat = "tiff"\ntiff_depth = 12',
        [
            f"cameras[0].device: {DEVICE_RULE}, got -1",
            f"cameras[1].device: {DEVICE_RULE}, got true",
            "cameras[2].tiff_depth: must be 8 or 16, got 12",
        ],
        id="device-index-and-tiff-depth",
    ),
    pytest.param(
        '[[cameras]]\nid = "a"\ndevice = "video0"',
        [f'cameras[0].device: {DEVICE_RULE}, got "video0"'],
        id="device-path",
    ),
    pytest.param(
        '[[cameras]]\nid = "a"\nformat = "gif"\n[[cameras]]\nid = "b"\nformat = 1',
        [
            'cameras[0].format: must be one of jpeg, png, webp, bmp, tiff, lz4, got "gif"',
            "cameras[1].format: must be one of jpeg, png, webp, bmp, tiff, lz4, got 1 (an integer)",
        ],
        id="format",
    ),
    pytest.param(
        '[[cameras]]\nid = "a"\nwidth = 8000\nheight = 8\nfps = 0\nquality = 101',
        [
            "cameras[0].width: must be an integer from 16 to 7680, got 8000",
            "cameras[0].height: must be an integer from 16 to 4320, got 8",
            "cameras[0].fps: must be a number from 0.1 to 240, got 0",
            "cameras[0].quality: must be an integer from 1 to 100, got 101",
        ],
        id="camera-ranges",
    ),
    pytest.param(
        '[[cameras]]\nid = "a"\nwidth = 640.0\nfps = "15"',
        [
            "cameras[0].width: must be an integer from 16 to 7680, got 640.0 (a float)",
            'cameras[0].fps: must be a number from 0.1 to 240, got "15" (a string)',
        ],
        id="camera-types",
    ),
    # --- default camera ---
    pytest.param(
        '[server]\ndefault_camera = "back"\n[[cameras]]\nid = "front"\n[[cameras]]\nid = "yard"',
        ['server.default_camera: must name a configured camera (front, yard), got "back"'],
        id="default-camera-unknown",
    ),
    pytest.param(
        '[server]\ndefault_camera = "back"',
        ['server.default_camera: must name a configured camera (there are none), got "back"'],
        id="default-camera-no-cameras",
    ),
]


@pytest.mark.parametrize(("text", "errors"), BAD_CONFIGS)
def test_bad_config_messages(text: str, errors: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert caught.value.errors == errors
    assert str(caught.value) == "\n".join(errors)


def test_every_mistake_is_reported_at_once() -> None:
    text = """
[server]
queue_depth = 0
[[cameras]]
id = "front"
format = "gif"
[[cameras]]
id = "front"
"""
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert caught.value.errors == [
        "server.queue_depth: must be an integer from 1 to 64, got 0",
        'cameras[0].format: must be one of jpeg, png, webp, bmp, tiff, lz4, got "gif"',
        'cameras[1].id: duplicate camera id "front" (also cameras[0].id)',
    ]


# --- good configs ---


def test_empty_file_is_the_defaults() -> None:
    assert parse("") == Config() == from_dict({})
    config = Config()
    assert config.cameras == ()
    assert config.default_camera is None
    assert (config.server.host, config.server.port) == ("0.0.0.0", 8765)
    assert config.ingest.endpoints == ("tcp://127.0.0.1:5555",)
    assert config.control.endpoints == ("tcp://127.0.0.1:5556",)


def test_empty_tables_are_the_defaults() -> None:
    assert parse("cameras = []\n[server]\n[ingest]\n[workers]") == Config()


def test_overrides() -> None:
    config = parse(
        """
[server]
listen = "127.0.0.1:0"
queue_depth = 8
default_camera = "yard"
[ingest]
endpoints = []
accept_unknown_cameras = true
[workers]
restart_delay = 0.5
restart_delay_max = 1
[[cameras]]
id = "front"
[[cameras]]
id = "yard"
name = "Back yard"
device = "/dev/video2"
width = 640
height = 480
format = "png"
"""
    )
    assert config.server == ServerConfig(listen="127.0.0.1:0", queue_depth=8, default_camera="yard")
    assert config.ingest == IngestConfig(endpoints=(), accept_unknown_cameras=True)
    assert config.workers == WorkersConfig(restart_delay=0.5, restart_delay_max=1.0)
    front, yard = config.cameras
    assert front == CameraConfig(id="front")
    assert not front.supervised
    assert front.display_name == "front"
    assert yard.supervised
    assert yard.display_name == "Back yard"
    assert (yard.width, yard.height, yard.format) == (640, 480, "png")
    assert config.camera("yard") is yard
    assert config.camera("garage") is None
    assert config.default_camera == "yard"


def test_control_presets_schedule_tokens(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(
        '[control]\nendpoints = []\nstate_file = "state/s.json"\n'
        "[presets.night]\nbrightness = 70\nauto_exposure = false\n"
        '[[cameras]]\nid = "a"\non_demand = true\nidle_after = 5\n'
        'schedule = [{at = "19:30", preset = "night"}, {at = 06:15:00, preset = "night"}]\n'
        '[[tokens]]\ntoken = "operator-token"\nrole = "operator"\ncameras = ["a"]\n'
    )
    config = load(path)
    assert config.control.endpoints == ()
    assert config.control.state_file == str(tmp_path / "state" / "s.json")
    assert config.presets == {"night": {"brightness": 70, "auto_exposure": False}}
    camera = config.cameras[0]
    assert (camera.on_demand, camera.idle_after) == (True, 5.0)
    assert [(e.at.hour, e.at.minute, e.preset) for e in camera.schedule] == [
        (19, 30, "night"),
        (6, 15, "night"),
    ]
    assert config.tokens[0].cameras == ("a",)
    assert config.tokens[0].label.startswith("token ") and "oper" not in config.tokens[0].label


def test_first_camera_is_the_default() -> None:
    config = parse('[[cameras]]\nid = "b"\n[[cameras]]\nid = "a"')
    assert config.default_camera == "b"


def test_int_is_accepted_for_float() -> None:
    config = parse('[server]\nsend_timeout = 5\n[[cameras]]\nid = "a"\nfps = 30')
    assert config.server.send_timeout == 5.0
    assert type(config.server.send_timeout) is float
    assert type(config.cameras[0].fps) is float


@pytest.mark.parametrize(
    "source",
    ["test-pattern", "/srv/video/a.mp4", "frames/", "rtsp://10.0.0.2:554/s", "https://x/y.mjpg"],
)
def test_sources(source: str) -> None:
    (camera,) = parse(f'[[cameras]]\nid = "a"\nsource = "{source}"').cameras
    assert camera.source == source
    assert camera.supervised


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("0.0.0.0:8765", "0.0.0.0", 8765),
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("localhost:65535", "localhost", 65535),
        ("cams.example.com:443", "cams.example.com", 443),
        ("[::1]:80", "::1", 80),
        ("[::]:8765", "::", 8765),
        ("[fe80::1%eth0]:8080", "fe80::1%eth0", 8080),
    ],
)
def test_listen_parsing(listen: str, host: str, port: int) -> None:
    server = parse(f'[server]\nlisten = "{listen}"').server
    assert (server.host, server.port) == (host, port)


def test_listen_property_on_an_unchecked_value() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        _ = ServerConfig(listen="nowhere").port


@pytest.mark.parametrize("endpoint", ["tcp://*:5555", "tcp://[::1]:5555", "ipc:///tmp/cams"])
def test_endpoints(endpoint: str) -> None:
    config = parse(f'[ingest]\nendpoints = ["{endpoint}"]\n[security]\nkeys_dir = "keys"')
    assert config.ingest.endpoints == (endpoint,)


def test_config_error_from_one_message() -> None:
    error = ConfigError("x: wrong")
    assert error.errors == ["x: wrong"]
    assert str(error) == "x: wrong"


# --- files ---


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.errors == [f"{path}: cannot read: No such file or directory"]


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "broker.toml"
    path.write_text('[[cameras]]\nid = "a"\n', encoding="utf-8")
    assert load(path).cameras == (CameraConfig(id="a"),)
    assert load(str(path)) == load(path)


def test_toml_syntax_error_names_source_and_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("[server]\nqueue_depth = 2\nlisten = \n", source="broker.toml")
    (message,) = caught.value.errors
    assert message.startswith("broker.toml: invalid TOML: ")
    assert "line 3" in message


# --- the shipped samples ---


def test_example_config_is_the_defaults() -> None:
    config = load(CONFIG_DIR / "example.toml")
    assert config.server == ServerConfig()
    assert config.ingest == IngestConfig()
    assert config.workers == WorkersConfig()
    assert config.retention == RetentionConfig()
    assert config.security == SecurityConfig()
    assert config.control.endpoints == ControlConfig().endpoints
    assert Path(config.control.state_file) == CONFIG_DIR / ControlConfig().state_file
    assert config.cameras == (CameraConfig(id="front"),)
    assert config.presets == {} and config.tokens == ()


def test_example_config_has_every_key() -> None:
    raw = tomllib.loads((CONFIG_DIR / "example.toml").read_text(encoding="utf-8"))
    expected = {
        "server": ServerConfig,
        "ingest": IngestConfig,
        "workers": WorkersConfig,
        "retention": RetentionConfig,
        "control": ControlConfig,
        "security": SecurityConfig,
        "analytics": AnalyticsConfig,
        "cameras": CameraConfig,
    }
    commented = {"presets", "tokens"}  # examples in comments: the default is none
    assert set(raw) | commented == {f.name for f in dataclasses.fields(Config)}
    assert set(raw) == set(expected)
    for table, cls in expected.items():
        section = raw[table][0] if table == "cameras" else raw[table]
        assert set(section) == {f.name for f in dataclasses.fields(cls)}, table
    # The commented examples are valid once uncommented.
    text = (CONFIG_DIR / "example.toml").read_text(encoding="utf-8")
    start, end = text.index("# [presets.day]"), text.index("# One [[cameras]]")
    block = re.sub(r"(?m)^# (\[presets|\[\[tokens|[a-z_]+ = )", r"\1", text[start:end])
    config = parse(text[:start] + text[end:] + "\n" + block.replace("cameras = []", ""))
    assert set(config.presets) == {"day", "night"}
    assert config.tokens[0].role == "operator"


def test_example_config_explains_every_key() -> None:
    lines = (CONFIG_DIR / "example.toml").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"[a-z_]+ = ", line):
            assert lines[i - 1].startswith("#"), f"no comment above {line!r}"


def test_demo_config() -> None:
    config = load(CONFIG_DIR / "demo.toml")
    assert len(config.cameras) == 4
    assert all(c.supervised and c.source == "test-pattern" for c in config.cameras)
    assert len({(c.width, c.height) for c in config.cameras}) == 4
    assert all(c.name for c in config.cameras)
    assert config.server.listen == "0.0.0.0:8765"
    assert config.ingest.endpoints == ("tcp://127.0.0.1:5555",)
