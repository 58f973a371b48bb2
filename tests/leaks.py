"""No token in any log during the whole suite: the autouse fixture `no_token_in_logs`
(installed by conftest.py) checks, after every test, the log records pytest captured
and what every `procs.BrokerProcess` wrote to its log (its stdout and stderr) since the
last check, for:

- every token the tests use: the ``[[tokens]]`` of each broker process's config, the
  content of its ``security.jwt_secret_file``, every static token an in-process broker
  was built with (`broker.serve.access.Access` is watched), and any `register`ed;
- any JWT-shaped string (``eyJ...``.``eyJ...``), whoever made it.

A leak fails the test during which it was written (an error at its teardown); the
message shows only the start of what leaked.
"""

from __future__ import annotations

import contextlib
import re
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from broker.serve.access import Access

JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+")
SECRETS: set[str] = set()
BROKER_LOGS: dict[Path, Path] = {}  # log file -> the config of the broker writing it
_scanned: dict[Path, int] = {}  # log file -> bytes already checked


def register(*tokens: str) -> None:
    """Tokens a test uses that no config shows: they must not be logged either."""
    SECRETS.update(token for token in tokens if token)


def watch_broker(config: Path, log: Path) -> None:
    """A broker process's config (for its tokens) and log (to be checked)."""
    BROKER_LOGS[log] = config


def config_secrets(path: Path) -> set[str]:
    """The static tokens of a config file, and the content of its HS256 secret file."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return set()
    found = {t["token"] for t in data.get("tokens", []) if isinstance(t.get("token"), str)}
    secret_file = data.get("security", {}).get("jwt_secret_file")
    if isinstance(secret_file, str) and secret_file:
        with contextlib.suppress(OSError, ValueError):
            found.add((path.parent / secret_file).read_text().strip())
    return found


def find_leaks(text: str, secrets: Iterable[str]) -> list[str]:
    """What in ``text`` is a token (each shown by its first characters only)."""
    found = [f"a JWT {match.group(0)[:12]}..." for match in JWT_SHAPE.finditer(text)]
    found += [f"the token {secret[:4]}..." for secret in secrets if secret in text]
    return found


def new_log_text(log: Path) -> str:
    """What ``log`` got since the last call."""
    try:
        with open(log, "rb") as file:
            file.seek(_scanned.get(log, 0))
            data = file.read()
    except OSError:
        return ""
    _scanned[log] = _scanned.get(log, 0) + len(data)
    return data.decode(errors="replace")


def leaks_now(records: Iterable[str]) -> list[str]:
    """Every leak in the captured ``records`` and in the broker logs' new lines."""
    for config in BROKER_LOGS.values():
        SECRETS.update(config_secrets(config))
    problems = []
    for text in records:
        problems += [f"log record: {leak}" for leak in find_leaks(text, SECRETS)]
    for log in list(BROKER_LOGS):
        problems += [f"{log.name}: {leak}" for leak in find_leaks(new_log_text(log), SECRETS)]
    return problems


@pytest.fixture(autouse=True)
def no_token_in_logs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    built = Access.__init__

    def recording(self: Access, tokens: Iterable, *args: object, **kwargs: object) -> None:
        tokens = list(tokens)
        register(*(token.token for token in tokens))
        built(self, tokens, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Access, "__init__", recording)
    yield
    records = [
        record.getMessage() + (record.exc_text or "")
        for when in ("setup", "call")
        for record in caplog.get_records(when)
    ]
    problems = leaks_now(records)
    if problems:
        pytest.fail("a token was logged:\n  " + "\n  ".join(problems), pytrace=False)
