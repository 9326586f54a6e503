"""`[journal]` and `[prices]` in the config: defaults, values, and clear problems."""

from __future__ import annotations

import pytest

from hydrallm.config import JournalConfig, Price
from hydrallm.config.load import parse_config
from hydrallm.errors import ConfigError

BASE = '[endpoints.e]\nurl = "http://127.0.0.1:9"\n[[models]]\nendpoint = "e"\ntype = "openai"\nmodel = "m"\n'


def test_defaults() -> None:
    config = parse_config(BASE, env={})
    assert config.journal == JournalConfig()
    assert config.journal.retention == 30 * 86400 and config.journal.max_size == 200 * 2**20
    assert config.prices == ()


def test_values() -> None:
    text = BASE + (
        '[journal]\nenabled = false\npath = "/tmp/x.db"\nretention = "2w"\n'
        'max_size = "1GiB"\nbodies = true\n'
        '[prices."glm-*"]\ninput = 1\noutput = 3.2\ncache_read = 0.2\n'
    )
    config = parse_config(text, env={})
    assert config.journal == JournalConfig(False, "/tmp/x.db", 14 * 86400.0, 2**30, True)
    assert config.prices == (("glm-*", Price(1.0, 3.2, 0.2, None)),)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('[journal]\nretention = "a while"\n', "journal.retention: invalid duration"),
        ("[journal]\nkeep = 3\n", 'journal: unknown key "keep"'),
        ('[prices."x"]\ninput = "cheap"\n', "expected USD per million tokens"),
        ('[prices."x"]\ninput = -1\n', "expected USD per million tokens"),
        ('[prices."x"]\ninptu = 1\n', 'unknown key "inptu" (did you mean "input"?)'),
    ],
)
def test_problems_are_clear(extra: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + extra, env={})
    assert problem in str(info.value)
