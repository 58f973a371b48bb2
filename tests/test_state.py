"""The state file (broker/state.py): atomic writes; a bad file never stops the broker."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from broker.control import store as state


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state.save(path, {"lobby": {"brightness": 60, "fps": 5.0}, "yard": {"name": "Yard"}})
    assert json.loads(path.read_text()) == {
        "version": 1,
        "cameras": {"lobby": {"brightness": 60, "fps": 5.0}, "yard": {"name": "Yard"}},
    }
    assert state.load(path) == {"lobby": {"brightness": 60, "fps": 5.0}, "yard": {"name": "Yard"}}


def test_save_replaces_atomically_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state.save(path, {"a": {"brightness": 10}})
    inode = path.stat().st_ino
    state.save(path, {"a": {"brightness": 20}})
    assert path.stat().st_ino != inode  # a new file renamed over the old, not rewritten
    assert state.load(path) == {"a": {"brightness": 20}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_cameras_without_settings_are_not_written(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state.save(path, {"a": {}, "b": {"contrast": 70}})
    assert json.loads(path.read_text())["cameras"] == {"b": {"contrast": 70}}


def test_empty_path_disables_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    state.save("", {"a": {"brightness": 1}})
    assert list(tmp_path.iterdir()) == []
    assert state.load("") == {}


def test_missing_file_is_no_state_and_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert state.load(tmp_path / "absent.json") == {}
    assert caplog.records == []


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("{not json", "not JSON"),
        ("", "not JSON"),
        ("[1, 2]", "not a version 1 state file"),
        ('{"version": 2, "cameras": {}}', "not a version 1 state file (got 2)"),
        ('{"version": 1, "cameras": []}', '"cameras" must be an object'),
        ('{"version": 1}', '"cameras" must be an object'),
    ],
)
def test_corrupt_file_is_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, logged: str
) -> None:
    path = tmp_path / "state.json"
    path.write_text(text)
    with caplog.at_level(logging.WARNING, "broker.state"):
        assert state.load(path) == {}
    assert logged in caplog.text


def test_binary_garbage_is_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert state.load(path) == {}
    assert "cannot read" in caplog.text


def test_unreadable_path_is_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert state.load(tmp_path) == {}  # a directory: IsADirectoryError
    assert "cannot read" in caplog.text


def test_invalid_settings_are_dropped_one_by_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "cameras": {
                    "a": {"brightness": 500, "contrast": 70, "colour": 3},
                    "b": "not an object",
                    "c": {"fps": 5},
                },
            }
        )
    )
    assert state.load(path) == {"a": {"contrast": 70}, "c": {"fps": 5.0}}
    assert "camera a: brightness: must be an integer from 0 to 100, got 500; ignored" in caplog.text
    assert "camera a: colour: unknown setting" in caplog.text
    assert "camera b: not an object" in caplog.text


def test_save_to_an_unwritable_place_raises_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state.save(path, {"a": {"brightness": 10}})
    with pytest.raises(OSError):
        state.save(tmp_path / "missing-folder" / "state.json", {"a": {"brightness": 20}})
    if os.geteuid() != 0:  # root writes anywhere
        tmp_path.chmod(0o500)
        try:
            with pytest.raises(OSError):
                state.save(path, {"a": {"brightness": 30}})
        finally:
            tmp_path.chmod(0o700)
    assert state.load(path) == {"a": {"brightness": 10}}
