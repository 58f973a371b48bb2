"""The ``ingest`` and ``worker`` benchmark scenarios run end to end (``--quick``) and
write their results. Only that they complete: never a timing, CI machines vary too much."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_scenario(name: str, out: Path) -> tuple[subprocess.CompletedProcess, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", name, "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [json_path] = out.glob(f"{name}-*.json")
    assert json_path.with_suffix(".png").stat().st_size > 0
    data = json.loads(json_path.read_text())
    assert data["scenario"] == name
    assert data["machine"]["cores"] >= 1
    assert {"python", "pyzmq", "libzmq", "camera-broker"} <= set(data["versions"])
    assert "targets:" in result.stdout
    return result, data


@pytest.mark.timeout(150)
def test_ingest_quick_writes_json_and_png(tmp_path: Path) -> None:
    _, data = run_scenario("ingest", tmp_path)
    assert data["frame_bytes"] > 100_000
    for phase in ("bare", "broker"):
        fields = {"frames", "seconds", "fps", "receiver_cores", "publisher_cores"}
        assert fields <= set(data[phase])
        assert data[phase]["frames"] > 0
    assert data["broker"]["health"]["ingest"]["frames"] > 0
    assert "ratio" in data
    assert set(data["targets"]) == {"ratio"}
    assert {"limit", "value", "met"} <= set(data["targets"]["ratio"])


@pytest.mark.timeout(150)
def test_worker_quick_writes_json_and_png(tmp_path: Path) -> None:
    _, data = run_scenario("worker", tmp_path)
    assert [r["resolution"] for r in data["results"]] == ["1280x720", "1920x1080"]
    for r in data["results"]:
        assert {"frames", "fps", "cores", "cpu_ms_per_frame"} <= set(r["worker"])
        assert r["worker"]["frames"] > 0
        assert {"draw_ms", "encode_ms", "stamp_ms", "pipeline_ms"} <= set(r["bare"])
        assert {"ratio", "ratio_pipeline", "met"} <= set(r)
    assert set(data["targets"]) == {"ratio"}
    assert {"limit", "worst", "met"} <= set(data["targets"]["ratio"])
