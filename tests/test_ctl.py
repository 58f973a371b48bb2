"""`broker ctl` as a subprocess against a real broker: `broker run` with a camera-worker
process, or an in-process broker with tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import config, running_broker
from procs import BrokerProcess, synthetic_camera, write_config

from benchmarks.procs import free_port
from broker import ctl

ROOT = Path(__file__).resolve().parent.parent
NIGHT = "[presets.night]\nbrightness = 30\ncontrast = 60\n"


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "broker", "ctl", *args]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMERA_BROKER_")}
    return {**env, **extra}


def run_ctl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args), capture_output=True, text=True, timeout=60, cwd=ROOT, env=environment(**env)
    )


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One `broker run` with a test-pattern camera whose worker is under control."""
    folder = tmp_path_factory.mktemp("ctl")
    process = BrokerProcess(write_config(folder, NIGHT + synthetic_camera("cam", 160, 120, 10)))
    try:
        process.start()
        deadline = time.monotonic() + 30
        while not process.cameras()["cam"].get("connected"):
            assert time.monotonic() < deadline, process.logs()
            time.sleep(0.2)
        yield process
    finally:
        if process.process is not None:
            process.stop()


def url(broker: BrokerProcess) -> str:
    return f"ws://127.0.0.1:{broker.port}/ws"


def test_list_and_status(broker: BrokerProcess) -> None:
    listed = run_ctl("--url", url(broker), "list")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "ONLINE", "FPS", "SIZE", "FORMAT", "CLIENTS"]
    assert row.split()[0] == "cam" and "160x120" in row

    as_json = run_ctl("list", "--url", url(broker), "--json")  # options after the action too
    assert as_json.returncode == 0 and json.loads(as_json.stdout)[0]["id"] == "cam"

    status = run_ctl("--url", broker.url, "status", "cam")  # an http:// URL means its /ws
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("cam: ") and "  width = 160" in status.stdout.splitlines()

    unknown = run_ctl("--url", url(broker), "status", "nope")
    assert unknown.returncode == 1 and "unknown_camera" in unknown.stderr


def test_set_and_preset(broker: BrokerProcess) -> None:
    changed = run_ctl(
        "--url",
        url(broker),
        "set",
        "cam",
        "brightness=60",
        "auto_exposure=false",
        "name=Front door",
    )
    assert changed.returncode == 0, changed.stderr
    assert "  brightness = 60" in changed.stdout.splitlines()
    status = run_ctl("--url", url(broker), "--json", "status", "cam")
    result = json.loads(status.stdout)
    assert result["success"] and result["command"] == "get_status"
    settings = result["settings"]
    assert (settings["brightness"], settings["auto_exposure"], settings["name"]) == (
        60,
        False,
        "Front door",
    )

    invalid = run_ctl("--url", url(broker), "set", "cam", "brightness=500", "contrast=70")
    assert invalid.returncode == 1 and invalid.stdout == ""
    assert "invalid_settings" in invalid.stderr and "  brightness: " in invalid.stderr
    status = json.loads(run_ctl("--url", url(broker), "--json", "status", "cam").stdout)
    assert status["settings"]["contrast"] == 50  # nothing was applied

    preset = run_ctl("--url", url(broker), "preset", "cam", "night")
    assert preset.returncode == 0, preset.stderr
    assert "preset night applied" in preset.stdout and "  brightness = 30" in preset.stdout
    unknown = run_ctl("--url", url(broker), "--json", "preset", "cam", "nope")
    assert unknown.returncode == 1 and json.loads(unknown.stdout)["error"] == "unknown_preset"


def test_watch_prints_frames(broker: BrokerProcess) -> None:
    watched = run_ctl("--url", url(broker), "watch", "cam", "--frames", "3")
    assert watched.returncode == 0, watched.stderr
    lines: list[Any] = [
        line for line in watched.stdout.splitlines() if not line.startswith("event ")
    ]
    assert len(lines) == 3 and all(line.startswith("cam seq=") for line in lines)
    assert "3 frames" in watched.stderr

    as_json = run_ctl(
        "--url", url(broker), "--json", "watch", "cam", "--frames", "2", "--max-fps", "5"
    )
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    frames = [line for line in lines if line.get("type") != "event"]  # events may come too
    assert len(frames) == 2 and {f["camera"] for f in frames} == {"cam"}
    assert frames[0]["bytes"] > 0 and frames[0]["format"] == "jpeg"


def test_usage_and_connection_errors() -> None:
    usage = run_ctl("set", "cam", "brightness")
    assert usage.returncode == 2 and "expected key=value" in usage.stderr
    assert run_ctl("frobnicate").returncode == 2
    port = free_port()  # nobody listens there
    refused = run_ctl("--url", f"ws://127.0.0.1:{port}/ws", "--timeout", "5", "list")
    assert refused.returncode == 2 and "cannot connect" in refused.stderr
    refused = run_ctl("--url", f"ws://127.0.0.1:{port}/ws", "preset", "cam", "night")
    assert refused.returncode == 2 and "cannot reach" in refused.stderr
    bad_url = run_ctl("--url", "ftp://example.org/ws", "list")
    assert bad_url.returncode == 2 and "ws://" in bad_url.stderr


def test_parse_settings_and_urls() -> None:
    assert ctl.parse_settings(["b=60", "a=true", "f=12.5", "n=Front door", 'q="7"', "e="]) == {
        "b": 60,
        "a": True,
        "f": 12.5,
        "n": "Front door",
        "q": "7",
        "e": "",
    }
    with pytest.raises(ValueError):
        ctl.parse_settings(["=1"])
    assert ctl.ws_url("http://h:8765") == "ws://h:8765/ws"
    assert ctl.ws_url("https://h/") == "wss://h/ws"
    assert ctl.ws_url("h:8765") == "ws://h:8765/ws"
    assert ctl.ws_url("ws://h:1/ws?token=t") == "ws://h:1/ws?token=t"
    assert ctl.http_url("wss://h:1/ws?token=t", "/api/x") == "https://h:1/api/x"
    assert ctl.url_token("ws://h:1/ws?token=t") == "t"


TOKENS = (
    '[[cameras]]\nid = "a"\n'
    '[[tokens]]\ntoken = "viewer-secret"\nrole = "viewer"\n'
    '[[tokens]]\ntoken = "operator-secret"\nrole = "operator"\n'
)


async def test_tokens_decide_and_refusals_exit_2() -> None:
    """An in-process broker with tokens (no worker: commands fail on the camera side)."""

    async def ctl_process(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
        return await trio.run_process(
            command("--url", url_, *args),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=ROOT,
            env=environment(**env),
        )

    async with running_broker(config(TOKENS)) as broker:
        url_ = f"ws://127.0.0.1:{broker.port}/ws"
        with trio.fail_after(90):
            missing = await ctl_process("list")
            assert missing.returncode == 2 and b"401" in missing.stderr
            wrong = await ctl_process("--token", "wrong-secret", "list")
            assert wrong.returncode == 2 and b"401" in wrong.stderr

            viewer = {"CAMERA_BROKER_TOKEN": "viewer-secret"}
            listed = await ctl_process("list", **viewer)
            assert listed.returncode == 0 and listed.stdout.split()[7] == b"a"
            forbidden = await ctl_process("set", "a", "brightness=60", **viewer)
            assert forbidden.returncode == 2 and b"forbidden" in forbidden.stderr
            forbidden = await ctl_process("preset", "a", "night", **viewer)
            assert forbidden.returncode == 2 and b"403" in forbidden.stderr

            operator = await ctl_process("--token", "operator-secret", "status", "a")
            assert operator.returncode == 1 and b"not_connected" in operator.stderr
            in_url = await ctl_process(
                "--url", url_ + "?token=operator-secret", "preset", "a", "night"
            )
            assert in_url.returncode == 1 and b"unknown_preset" in in_url.stderr
