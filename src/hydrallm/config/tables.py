"""Reading TOML tables for the config loader: typed getters that record problems.

Every getter returns a usable value (or the default) and records what was wrong with its
place, so that one parse reports every problem at once; `$NAME` / `${NAME}` references
are resolved here, and every resolved secret is collected for redaction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import field
from typing import Any, Final, TypeVar
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

from hydrallm.config import units
from hydrallm.dataclass import dataclass

ENV_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_T = TypeVar("_T")


def shown(value: object) -> str:
    """A value as it may appear inside a one-line problem message."""
    if isinstance(value, str):
        return units.show_value(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return units.show_value(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return shown(str(value))


def suggestion(word: str, options: Iterable[str], *, brackets: bool = False) -> str:
    """` (did you mean "x"?)` for the closest of `options`, or nothing."""
    import difflib  # only a config with a typo pays for it

    close = difflib.get_close_matches(word, list(options), n=1)
    if not close:
        return ""
    return f" (did you mean [{close[0]}]?)" if brackets else f" (did you mean {shown(close[0])}?)"


def url_secrets(url: str) -> set[str]:
    """The secret parts of an endpoint URL: userinfo, and every query parameter value
    (Gemini-style `?key=...`), both as written and percent-decoded."""
    try:
        parts = urlsplit(url)
        username, password = parts.username, parts.password
    except ValueError:
        return set()
    found: set[str] = set()
    netloc = parts.netloc
    if "@" in netloc:
        userinfo = netloc.rpartition("@")[0]
        found.update({userinfo, unquote(userinfo)})
    for value in (username, password):
        if value:
            found.update({value, unquote(value)})
    for pair in parts.query.split("&"):
        _, eq, value = pair.partition("=")
        if eq and value:
            found.update({value, unquote_plus(value)})
    return {s for s in found if s}


def masked_url(url: str) -> str:
    """`url` as it may be shown: userinfo as `…@`, every query value as `…`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an invalid URL)"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "…@" + netloc.rpartition("@")[2]
    query = "&".join(
        f"{name}=…" if eq else name
        for name, eq, _ in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def unset_consequence(key: str) -> str:
    if key == "api_key":
        return "the client's own credentials will pass through"
    if key.startswith("aws_"):
        return "it is treated as not configured"
    if key == "auth_keys":
        return "that key is ignored"
    if key in ("api_keys", "access_key_id", "secret_access_key"):
        return "that key is left out of the pool"
    return "it is treated as not set"


# --------------------------------------------------------------------------- reading tables

# Compiled by `re` at its first use (only a secret is checked): not every start.
_HEADER_UNSAFE = r"[\r\n\x00]"
MISSING: Final = object()


@dataclass
class Report:
    """What one parse found: problems (fatal), warnings, and secrets to redact."""

    env: Mapping[str, str]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)

    def problem(self, message: str) -> None:
        if message not in self.problems:
            self.problems.append(message)

    def resolve(self, value: str, place: str, key: str) -> str | None:
        """Replace a whole-value `$NAME` / `${NAME}` by the variable; None when unset/empty."""
        match = ENV_REF.fullmatch(value)
        if match is None:
            return value
        name = match.group(1) or match.group(2)
        resolved = self.env.get(name)
        if resolved:
            return resolved
        warning = f"{place}: {key} refers to {value}, which is not set; {unset_consequence(key)}"
        if warning not in self.warnings:
            self.warnings.append(warning)
        return None


class Table:
    """Typed, validated access to the keys of one TOML table.

    Each getter returns the default (after recording a problem) when the value is unusable,
    so reading continues and every problem of the file is reported at once.
    """

    def __init__(
        self,
        raw: object,
        place: str,
        report: Report,
        allowed: Sequence[str],
        *,
        dotted: bool = False,
    ) -> None:
        self.place = place
        self.report = report
        self.dotted = dotted
        self.raw: Mapping[str, object] = raw if isinstance(raw, dict) else {}
        if not isinstance(raw, dict):
            report.problem(f"{place}: expected a table, got {shown(raw)}")
        for key in self.raw:
            if key not in allowed:
                report.problem(f"{place}: unknown key {shown(key)}{suggestion(key, allowed)}")

    def where(self, key: str) -> str:
        return f"{self.place}.{key}" if self.dotted else f"{self.place}: {key}"

    def has(self, key: str) -> bool:
        return key in self.raw

    def _wrong(self, key: str, expected: str, value: object) -> None:
        self.report.problem(f"{self.where(key)}: expected {expected}, got {shown(value)}")

    def _value(self, key: str) -> tuple[object, bool]:
        """The raw value (env references resolved) and whether it came from the environment."""
        value = self.raw.get(key, MISSING)
        if isinstance(value, str) and ENV_REF.fullmatch(value):
            resolved = self.report.resolve(value, self.place, key)
            return (MISSING if resolved is None else resolved), True
        return value, False

    def string(self, key: str, *, secret: bool = False) -> str | None:
        value, _ = self._value(key)
        if value is MISSING:
            return None
        if not isinstance(value, str):
            self._wrong(key, "a string", value)
            return None
        if secret and re.search(_HEADER_UNSAFE, value):
            # Keys go into HTTP headers: a line break there would inject a header.
            self.report.problem(
                f"{self.where(key)}: contains a line break or NUL, which cannot go into an HTTP header"
            )
            return None
        if secret and value != "-":
            self.report.secrets.add(value)
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value, from_env = self._value(key)
        if value is MISSING:
            return default
        if from_env and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            self._wrong(key, "true or false", value)
            return default
        return value

    def integer(
        self, key: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value, from_env = self._value(key)
        if value is MISSING:
            return default
        if from_env and isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,18}", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self._wrong(key, "an integer", value)
            return default
        if minimum is not None and value < minimum:
            self.report.problem(f"{self.where(key)}: must be at least {minimum}, got {value}")
            return default
        if maximum is not None and value > maximum:
            self.report.problem(f"{self.where(key)}: must be at most {maximum}, got {value}")
            return default
        return value

    def port(self, key: str, default: int) -> int:
        value = self.integer(key, default)
        if not 1 <= value <= 65535:
            self.report.problem(f"{self.place}: {key} {value} is out of range (1..65535)")
            return default
        return value

    def _parsed(
        self, key: str, parse: Callable[[Any], _T], kinds: tuple[type, ...], expected: str
    ) -> _T | None:
        value, _ = self._value(key)
        if value is MISSING:
            return None
        if isinstance(value, bool) or not isinstance(value, kinds):
            self._wrong(key, expected, value)
            return None
        try:
            return parse(value)
        except ValueError as exc:
            self.report.problem(f"{self.where(key)}: {exc}")
            return None

    def duration(self, key: str) -> float | None:
        return self._parsed(
            key, units.parse_duration, (str, int, float), 'a duration such as "30s"'
        )

    def size(self, key: str) -> int | None:
        return self._parsed(key, units.parse_size, (str, int), 'a size such as "100MiB"')

    def choice(self, key: str, options: Sequence[_T]) -> _T | None:
        value = self.string(key)
        if value is None:
            return None
        for option in options:
            if value == option:
                return option
        allowed = ", ".join(str(o) for o in options)
        self.report.problem(f"{self.where(key)}: {shown(value)} is not one of {allowed}")
        return None

    def strings(self, key: str, *, secret: bool = False) -> tuple[str, ...] | None:
        """A list of strings; `$NAME` items that are unset are dropped (with a warning)."""
        value = self.raw.get(key, MISSING)
        if value is MISSING:
            return None
        if not isinstance(value, list):
            self._wrong(key, "an array of strings", value)
            return None
        items: list[str] = []
        for item in value:
            if not isinstance(item, str):
                self._wrong(key, "an array of strings", item)
                continue
            resolved = self.report.resolve(item, self.place, key)
            if resolved is None:
                continue
            if secret and re.search(_HEADER_UNSAFE, resolved):
                self.report.problem(
                    f"{self.where(key)}: contains a line break or NUL, which cannot go into an HTTP header"
                )
                continue
            if secret:
                self.report.secrets.add(resolved)
            items.append(resolved)
        return tuple(items)

    def statuses(self, key: str) -> frozenset[int] | None:
        value = self.raw.get(key, MISSING)
        if value is MISSING:
            return None
        if not isinstance(value, list):
            self._wrong(key, "an array of HTTP status codes", value)
            return None
        codes: set[int] = set()
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int):
                self._wrong(key, "an array of HTTP status codes", item)
            elif not 100 <= item <= 599:
                self.report.problem(f"{self.where(key)}: status {item} is out of range (100..599)")
            else:
                codes.add(item)
        return frozenset(codes)


def or_default(value: _T | None, default: _T) -> _T:
    return default if value is None else value
