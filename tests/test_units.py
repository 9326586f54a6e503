"""Durations and sizes as users write them in the config file."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hydrallm.config.units import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("500us", 0.0005),
        ("500µs", 0.0005),
        ("500μs", 0.0005),
        ("100ns", 1e-7),
        ("2h45m30.5s", 2 * 3600 + 45 * 60 + 30.5),
        ("0", 0.0),
        ("30", 30.0),
        ("2.5", 2.5),
        (".5s", 0.5),
        (45, 45.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration_accepts_go_style_and_bare_seconds(
    text: str | int | float, seconds: float
) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad",
    ["", "abc", "10x", "s", "1h 30m", "-5s", "1.2.3s", "10sm", "ms10", -1, -0.5, True],
)
def test_parse_duration_rejects_nonsense_with_the_value_in_the_message(
    bad: str | int | float,
) -> None:
    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_duration(bad)
    assert "\n" not in str(info.value)


def test_parse_duration_rejects_infinite_and_nan() -> None:
    for bad in (math.inf, math.nan, 10**400, "9" * 400 + "s"):
        with pytest.raises(ValueError, match="invalid duration"):
            parse_duration(bad)


def test_parse_duration_negative_message_says_so() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_duration("-1s")


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1024, 1024),
        ("1024", 1024),
        ("512KiB", 512 * 1024),
        ("100MiB", 100 * 1024 * 1024),
        ("1MB", 1_000_000),
        ("1GB", 1_000_000_000),
        ("10KB", 10_000),
        ("2GiB", 2 * 1024**3),
        ("1.5KiB", 1536),
        ("10 kb", 10_000),
        ("7B", 7),
    ],
)
def test_parse_size(value: str | int, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("bad", ["", "big", "10XB", "-1KB", -1, "1e5", "KB", True, "9" * 400])
def test_parse_size_rejects_nonsense(bad: str | int) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(bad)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.1, "100ms"),
        (30, "30s"),
        (600, "10m"),
        (5400, "1h30m"),
        (90, "1m30s"),
        (1.5, "1.5s"),
        (0, "0s"),
        (0.0005, "500µs"),
        (3600, "1h"),
        (59.9996, "1m"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**7))
def test_format_then_parse_round_trips_whole_milliseconds(millis: int) -> None:
    seconds = millis / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@given(st.one_of(st.text(max_size=30), st.integers(), st.floats()))
def test_parse_duration_only_ever_raises_value_error(value: str | int | float) -> None:
    try:
        result = parse_duration(value)
    except ValueError as exc:
        assert len(str(exc).splitlines()) == 1
    else:
        assert result >= 0 and math.isfinite(result)
