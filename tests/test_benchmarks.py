"""The benchmark suite runs end to end and writes its results.

One ``python -m benchmarks all --quick --duration 1`` runs every scenario with tiny sizes
(fanout and mjpeg 2 x 2 clients, saturation 2 steps, connections up to 200, ...); each
test below checks one scenario's JSON and PNG from that run. Only that they complete and
have the fields the README documents: never a timing, CI machines vary too much.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("fanout", "mjpeg", "saturation", "slow-clients", "connections", "ingest", "worker")
Suite = tuple[
    subprocess.CompletedProcess[str], Path
]  # the run of `python -m benchmarks all`, its folder
TIMEOUT = 300  # the first test waits for the whole suite (about a minute)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Suite:
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "all",
            "--quick",
            "--duration",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT - 30,
    )
    return result, out


def results(suite: tuple[subprocess.CompletedProcess, Path], name: str) -> dict:
    completed, out = suite
    found = list(out.glob(f"{name}-*.json"))
    assert len(found) == 1, (
        f"{name}: no results\n{completed.stdout[-3000:]}{completed.stderr[-6000:]}"
    )
    assert found[0].with_suffix(".png").stat().st_size > 0
    data = json.loads(found[0].read_text())
    assert data["scenario"] == name
    assert data["machine"]["cores"] >= 1
    assert {"python", "trio", "pyzmq", "libzmq", "trio-websocket", "camera-broker"} <= set(
        data["versions"]
    )
    assert data["parameters"]["quick"] is True
    return data


@pytest.mark.timeout(TIMEOUT)
def test_all_runs_every_scenario_and_writes_a_summary(suite: Suite) -> None:
    completed, out = suite
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-6000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["scenario"] for r in summary["runs"]] == list(SCENARIOS)
    assert all(r["exit_code"] == 0 and r["rows"] for r in summary["runs"])
    text = (out / "summary.md").read_text()
    assert "| scenario | target | measured | met |" in text
    for name in SCENARIOS:
        assert f"| {name} |" in text
    assert "saturation-" in text and ".png)" in text  # the chart for the README
    assert completed.stdout.count("targets:") == len(SCENARIOS)  # each printed its table


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("name", ["fanout", "mjpeg"])
def test_fanout_and_mjpeg(suite: Suite, name: str) -> None:
    data = results(suite, name)
    assert data["parameters"]["protocol"] == ("mjpeg" if name == "mjpeg" else "websocket")
    assert (
        len(data["clients"]) == data["parameters"]["cameras"] * data["parameters"]["clients"] == 4
    )
    for client in data["clients"]:
        assert {"fps", "frames", "drops", "delivered", "p50_ms", "p99_ms", "max_ms"} <= set(client)
        assert client["frames"] > 0
    assert set(data["targets"]) == {"p50_ms", "p99_ms", "delivered", "broker_cores"}
    assert {"cores", "rss_bytes", "health"} <= set(data["broker"]) and "cores" in data["loadgen"]


@pytest.mark.timeout(TIMEOUT)
def test_saturation(suite: Suite) -> None:
    data = results(suite, "saturation")
    assert data["parameters"]["steps"] == [1, 2]
    assert 1 <= len(data["steps"]) <= 2
    for step in data["steps"]:
        assert {
            "egress_mb_s",
            "frames_per_s",
            "latency",
            "min_delivered",
            "sustained",
            "reasons",
            "broker_cores",
            "loadgen_cores",
        } <= set(step["broker"])
        assert {"egress_mb_s", "frames_per_s", "sender_cores", "client_cores"} <= set(
            step["ceiling"]
        )
        assert step["broker"]["frames"] > 0 and step["ceiling"]["frames"] > 0
    assert "ratio" in data and set(data["targets"]) == {"ratio"}


@pytest.mark.timeout(TIMEOUT)
def test_slow_clients(suite: Suite) -> None:
    data = results(suite, "slow-clients")
    p = data["parameters"]
    assert p["slow_rcvbuf"] == "kernel default"  # SO_RCVBUF only with --rcvbuf
    assert set(data["phases"]) == {"alone", "with_slow"}
    for phase in data["phases"].values():
        assert len(phase["fast"]) == p["cameras"] * p["clients"]
        for client in phase["fast"]:
            assert {"fps", "frames", "drops", "p50_ms", "p99_ms", "max_ms"} <= set(client)
    slow = data["phases"]["with_slow"]
    assert len(slow["throttled"]) == p["cameras"] * p["throttled"]
    for client in slow["throttled"]:
        assert {"lag_series", "lag_first_third_ms", "lag_last_third_ms"} <= set(client)
    assert len(slow["stalled"]) == p["cameras"] * p["stalled"]
    assert slow["slow_client_disconnects"] is not None
    assert set(data["targets"]) == {
        "fast_fps_ratio",
        "fast_p99_ms",
        "throttled_lag_p99_ms",
        "throttled_lag_growth_ms",
        "stalled_disconnected",
        "broker_peak_rss_bytes",
    }


@pytest.mark.timeout(TIMEOUT)
def test_connections(suite: Suite) -> None:
    data = results(suite, "connections")
    assert [s["connections"] for s in data["steps"]] == [50, 200]
    for step in data["steps"]:
        assert step["reported"] == step["connections"]
        assert {
            "rss_bytes",
            "rss_per_connection_bytes",
            "broker_cores",
            "fps_median",
            "latency",
            "closed",
        } <= set(step)
    assert data["broker_open_files"] >= 200
    assert set(data["targets"]) == {"connections", "rss_per_connection_bytes"}


@pytest.mark.timeout(TIMEOUT)
def test_ingest(suite: Suite) -> None:
    data = results(suite, "ingest")
    assert data["frame_bytes"] > 100_000
    for phase in ("bare", "broker"):
        assert {"frames", "seconds", "fps", "receiver_cores", "publisher_cores"} <= set(data[phase])
        assert data[phase]["frames"] > 0
    assert data["broker"]["health"]["ingest"]["frames"] > 0
    assert set(data["targets"]) == {"ratio"}
    assert {"limit", "value", "met"} <= set(data["targets"]["ratio"])


@pytest.mark.timeout(TIMEOUT)
def test_worker(suite: Suite) -> None:
    data = results(suite, "worker")
    assert [r["resolution"] for r in data["results"]] == ["1280x720", "1920x1080"]
    for r in data["results"]:
        assert {"frames", "fps", "cores", "cpu_ms_per_frame"} <= set(r["worker"])
        assert r["worker"]["frames"] > 0
        assert {"draw_ms", "encode_ms", "stamp_ms", "pipeline_ms"} <= set(r["bare"])
        assert {"ratio", "ratio_pipeline", "met"} <= set(r)
    assert set(data["targets"]) == {"ratio"}
    assert {"limit", "worst", "met"} <= set(data["targets"]["ratio"])


@pytest.mark.timeout(120)
def test_4k_runs_small(tmp_path: Path) -> None:
    """``4k`` at a small size, lz4 and jpeg to one viewer: it completes and reports
    source and delivered rates, latency (from the /ws header for lz4) and the broker's
    memory. Not part of ``all`` (minutes at 4K)."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "4k",
            "--quick",
            "--duration",
            "1",
            "--formats",
            "lz4,jpeg",
            "--viewers",
            "1",
            "--width",
            "640",
            "--height",
            "480",
            "--fps",
            "10",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    found = list(tmp_path.glob("4k-*.json"))
    assert len(found) == 1, completed.stdout[-3000:] + completed.stderr[-3000:]
    data = json.loads(found[0].read_text())
    assert [r["format"] for r in data["results"]] == ["lz4", "jpeg"]
    for result in data["results"]:
        (step,) = result["steps"]
        assert step["source_fps"] > 0 and step["viewer_fps_min"] > 0, step
        assert step["p99_ms"] > 0 and step["unstamped"] == 0, step
        assert step["broker_peak_rss_bytes"] > 0 and step["worker_cpu_ms_per_frame"], step
    assert "targets:" in completed.stdout


def run_scenario(tmp_path: Path, name: str, *args: str) -> dict:
    """Run one scenario that ``all`` leaves out, small; its JSON."""
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", name, "--quick", *args, "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    found = list(tmp_path.glob(f"{name}-*.json"))
    assert len(found) == 1, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "targets:" in completed.stdout
    return json.loads(found[0].read_text())


@pytest.mark.timeout(120)
def test_analytics_runs_small(tmp_path: Path) -> None:
    """``analytics``: viewers with analysis off and on, event latency, each detector's
    cost per analysed frame."""
    data = run_scenario(tmp_path, "analytics")
    assert set(data["targets"]) == {"fps_ratio", "p99_ratio", "event_p99_ms"}
    assert all(t["worst"] is not None for t in data["targets"].values()), data["targets"]
    models = {d["model"]: d for d in data["detectors"]}
    assert set(models) == {"motion", "face", "person"}
    assert all(d["frames"] > 0 and d["cpu_ms_per_frame"] > 0 for d in models.values()), models


@pytest.mark.timeout(120)
def test_tls_runs_small(tmp_path: Path) -> None:
    """``tls``: a plain and a TLS broker stepped up together; their egress ratio."""
    data = run_scenario(tmp_path, "tls")
    assert data["targets"]["ratio"]["value"] > 0, data["targets"]


@pytest.mark.timeout(120)
def test_ingest_with_curve_runs_small(tmp_path: Path) -> None:
    """``ingest --curve``: the broker's ingest over CURVE against plain, in one run."""
    data = run_scenario(tmp_path, "ingest", "--curve", "--duration", "1")
    assert data["targets"]["curve_ratio"]["value"] > 0, data["targets"]
