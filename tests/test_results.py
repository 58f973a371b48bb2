"""The one table of error codes covers every code the broker answers with."""

from __future__ import annotations

import re
from pathlib import Path

from broker.protocol.results import COMMAND_ERRORS, ERRORS, CommandResult, http_status

BROKER = Path(__file__).resolve().parent.parent / "broker"


def sources() -> str:
    return "\n".join(p.read_text() for p in BROKER.rglob("*.py"))


def test_every_http_error_is_in_the_table_with_its_status() -> None:
    """HTTP answers name a code and take its status from the table (``error(code, ...)``,
    ``UploadError(code, ...)``, ``SessionRefused(code, ...)``): no status is written
    beside a code, where it could drift from the table."""
    text = sources()
    used = set(re.findall(r'(?<![A-Za-z_.])error\(\s*"([a-z_]+)"', text))
    used |= set(re.findall(r'(?:UploadError|SessionRefused)\(\s*"([a-z_]+)"', text))
    assert used, "the scan found nothing: the pattern no longer matches the code"
    assert used <= set(ERRORS), used - set(ERRORS)
    literal = re.findall(r'(?:error|UploadError|SessionRefused)\(\s*(\d{3}), "([a-z_]+)"', text)
    assert not literal, f"a status written beside its code: {literal}"


def test_every_ws_and_command_error_is_in_the_table() -> None:
    text = sources()
    codes = set(re.findall(r'RequestError\(\s*"([a-z_]+)"', text))
    codes |= set(re.findall(r'(?:failed|fail)\(\s*"([a-z_]+)"', text))
    codes |= set(re.findall(r'error="([a-z_]+)"', text)) - {"invalid_token"}  # RFC 6750's
    assert codes
    assert codes <= set(ERRORS), codes - set(ERRORS)


def test_command_results_round_trip_and_carry_their_status() -> None:
    result = CommandResult(
        False,
        "nope",
        {"fps": 5.0},
        "r1",
        1.5,
        "cam",
        "update_settings",
        "invalid_settings",
        {"fps": "too fast"},
    )
    assert CommandResult.from_json(result.to_json()) == result
    assert http_status(result.error) == 400 and http_status(None) == 200
    assert {http_status(code) for code in COMMAND_ERRORS} <= {400, 404, 502, 503, 504}
    assert CommandResult.from_json({"timestamp": float("nan")}).timestamp == 0.0
