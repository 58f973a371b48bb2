"""`python -m benchmarks slow-clients --quick` runs end to end and writes its results.
Only that it completes: never a timing, CI machines vary too much."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_slow_clients_quick_writes_json_and_png(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "slow-clients", "--quick", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [json_path] = tmp_path.glob("slow-clients-*.json")
    assert json_path.with_suffix(".png").stat().st_size > 0
    data = json.loads(json_path.read_text())
    p = data["parameters"]
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
        "fast_fps_ratio", "fast_p99_ms", "throttled_lag_p99_ms", "throttled_lag_growth_ms",
        "stalled_disconnected", "broker_peak_rss_bytes",
    }  # fmt: skip
    assert "targets:" in result.stdout
