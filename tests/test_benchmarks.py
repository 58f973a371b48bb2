"""The benchmark suite runs end to end (`python -m benchmarks fanout --quick`) and writes
its results. Only that it completes: never a timing, CI machines vary too much."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(150)
def test_fanout_quick_writes_json_and_png(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "fanout", "--quick", "--cameras", "2", "--clients", "2", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [json_path] = tmp_path.glob("fanout-*.json")
    assert json_path.with_suffix(".png").stat().st_size > 0
    data = json.loads(json_path.read_text())
    assert data["machine"]["cores"] >= 1
    assert {"python", "trio", "pyzmq", "trio-websocket", "camera-broker"} <= set(data["versions"])
    assert len(data["clients"]) == 4
    for client in data["clients"]:
        assert {"fps", "frames", "drops", "p50_ms", "p99_ms", "max_ms"} <= set(client)
        assert client["frames"] > 0
    assert set(data["targets"]) == {"p50_ms", "p99_ms", "delivered", "broker_cores"}
    assert "targets:" in result.stdout
