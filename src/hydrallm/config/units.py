"""Durations and sizes as written in the config file, and durations as shown to people.

Durations follow Go's `time.ParseDuration` ("250ms", "1h30m", "1.5s", "500us"), except that a
bare number means seconds.  Sizes accept bytes or a decimal (KB = 1000) or binary (KiB = 1024)
unit.  Every parse failure is a `ValueError` whose message quotes the bad value on one line.
"""

from __future__ import annotations

import json
import math
import re

_DURATION_UNITS: tuple[tuple[str, float], ...] = (
    ("ns", 1e-9),
    ("us", 1e-6),
    ("µs", 1e-6),  # MICRO SIGN, as Go accepts
    ("μs", 1e-6),  # GREEK SMALL LETTER MU, as Go accepts
    ("ms", 1e-3),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_DURATION_HINT = 'use a number of seconds or a value such as "250ms", "30s", "10m" or "1h30m"'

_SIZE_UNITS: tuple[tuple[str, int], ...] = (
    ("b", 1),
    ("kb", 1000),
    ("mb", 1000**2),
    ("gb", 1000**3),
    ("tb", 1000**4),
    ("kib", 1024),
    ("mib", 1024**2),
    ("gib", 1024**3),
    ("tib", 1024**4),
)
# Compiled by `re` at its first use (a size written as text): not every start.
_SIZE = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)"
_SIZE_HINT = 'use a number of bytes or a value such as "512KiB", "100MiB" or "1MB"'


def show_value(value: object) -> str:
    """A value for an error message, on one line: strings quoted with escapes, truncated."""
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        shown = json.dumps(text, ensure_ascii=False)
        # json leaves some line-breaking characters (U+2028, U+0085, ...) raw; escape them.
        return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in shown)
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _finite_seconds(number: float, original: object) -> float:
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"invalid duration {show_value(original)}: must be a finite number")
    if number < 0:
        raise ValueError(f"invalid duration {show_value(original)}: must not be negative")
    return number


def parse_duration(value: str | int | float) -> float:
    """Return the duration `value` in seconds.

    Accepts a bare number of seconds (int, float or numeric string) or a Go-style duration
    string made of number+unit parts (ns, us/µs, ms, s, m, h), e.g. "1h30m" or "1.5s".
    Raises ValueError for anything else, including negative values.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {show_value(value)}: {_DURATION_HINT}")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            raise ValueError(f"invalid duration {show_value(value)}: too large") from None
        return _finite_seconds(number, value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration {show_value(value)}: {_DURATION_HINT}")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"invalid duration {show_value(value)}: must not be negative")
    text = text.removeprefix("+")
    if _NUMBER.fullmatch(text):
        return _finite_seconds(float(text), value)
    total = 0.0
    position = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        scale = dict(_DURATION_UNITS)[match.group(2)]
        total += float(match.group(1)) * scale
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f"invalid duration {show_value(value)}: {_DURATION_HINT}")
    return _finite_seconds(total, value)


def parse_long_duration(value: str | int | float) -> float:
    """A duration that may also use days and weeks ("30d", "2w", "1d12h"), for retention
    and look-back periods, where Go's largest unit (hours) is awkward."""
    if isinstance(value, str):
        text = value.strip()
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([dw])(.*)", text)
        if match is not None:
            days = float(match.group(1)) * (7 if match.group(2) == "w" else 1)
            rest = match.group(3)
            return days * 86400 + (parse_duration(rest) if rest else 0.0)
    return parse_duration(value)


def parse_size(value: str | int) -> int:
    """Return the size `value` in bytes.

    Accepts an int or a string: a bare number of bytes ("1024") or number+unit where
    KB/MB/GB/TB are powers of 1000 and KiB/MiB/GiB/TiB powers of 1024 (case-insensitive).
    Raises ValueError for anything else, including negative values.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"invalid size {show_value(value)}: {_SIZE_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {show_value(value)}: must not be negative")
        return value
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"invalid size {show_value(value)}: must not be negative")
    match = re.fullmatch(_SIZE, text)
    units = dict(_SIZE_UNITS)
    if match is None or match.group(2).lower() not in {*units, ""}:
        raise ValueError(f"invalid size {show_value(value)}: {_SIZE_HINT}")
    number = float(match.group(1)) * units.get(match.group(2).lower(), 1)
    if math.isinf(number):
        raise ValueError(f"invalid size {show_value(value)}: too large")
    return int(number)


def _trim(number: float) -> str:
    """Up to three decimals, without trailing zeros: 1.5 -> "1.5", 2.0 -> "2"."""
    return f"{number:.3f}".rstrip("0").rstrip(".")


def format_duration(seconds: float) -> str:
    """Show a duration the way it is written in the config: "100ms", "30s", "10m", "1h30m"."""
    if math.isnan(seconds) or math.isinf(seconds):
        return str(seconds)
    if seconds == 0:
        return "0s"
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 1e-3:
        return _trim(seconds * 1e6) + "µs"
    if seconds < 1:
        return _trim(seconds * 1e3) + "ms"
    # Round to the millisecond first so 59.9996 shows as "1m", not "60s".
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if rest:
        parts.append(_trim(rest / 1000) + "s")
    return "".join(parts)
