"""Loading config files: both schemas, defaults, $ENV values, and every validation message."""

from __future__ import annotations

import copy
import json
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hydrallm.config import Config, ListenerConfig, Route
from hydrallm.config.load import (
    apply_overrides,
    default_config_path,
    default_template,
    load_config,
    parse_config,
    resolve_config_path,
)
from hydrallm.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"
ENV = {"ZAI_API_KEY": "zai-secret"}

ONE_ENDPOINT = """
[endpoints.zai]
url = "https://api.z.ai/api/paas/v4"
"""


def parse(text: str, env: dict[str, str] | None = None) -> Config:
    return parse_config(textwrap.dedent(text), path="config.toml", env=env or {})


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    for problem in info.value.problems:
        assert len(problem.splitlines()) == 1
    return info.value.problems


def chain_of(config: Config, listener: int = 0) -> list[tuple[str, str, str, int]]:
    models = config.chain(config.listeners[listener].models)
    return [(m.endpoint, m.type, m.model, m.attempts) for m in models]


# --------------------------------------------------------------------------- the fixtures


@pytest.mark.parametrize(
    ("fixture", "api_type", "port", "strip"),
    [
        ("glm-5-coding-plan-openai.toml", "openai", 8101, True),
        ("glm-5-coding-plan-anthropic.toml", "anthropic", 8102, False),
    ],
)
def test_schema1_fixtures_load_into_one_default_listener(
    fixture: str, api_type: str, port: int, strip: bool
) -> None:
    config = load_config(FIXTURES / fixture, env=ENV)

    assert config.warnings == ()
    [listener] = config.listeners
    assert (listener.name, listener.host, listener.port) == ("default", "0.0.0.0", port)
    assert (listener.read_timeout, listener.write_timeout) == (60.0, 600.0)
    assert chain_of(config) == [
        ("zai-coding-plan-global", api_type, "glm-5", 5),
        ("zai-coding-plan-cn", api_type, "glm-5", 2),
        ("zai-coding-plan-global", api_type, "glm-4.7", 2),
        ("zai-coding-plan-cn", api_type, "glm-4.7", 2),
    ]
    assert listener.models[0] == "zai-coding-plan-global/glm-5"
    for model in config.models.values():
        assert model.interval == 0.1
        assert model.timeout == 600.0
    for endpoint in config.endpoints.values():
        assert endpoint.strip_version_prefix is strip
        assert endpoint.api_key == "zai-secret"
    assert config.retry.max_cycles == 10
    assert "zai-secret" in config.secrets
    assert config.path == str(FIXTURES / fixture)


def test_v2_fixture_has_two_listeners_of_one_type_each() -> None:
    config = load_config(FIXTURES / "v2-glm-coding-plan.toml", env=ENV)

    openai, anthropic = config.listeners
    assert (openai.name, openai.port) == ("openai-compatible", 8101)
    assert (anthropic.name, anthropic.port) == ("anthropic-compatible", 8102)
    assert openai.models == (
        "glm5-openai-global",
        "glm5-openai-cn",
        "glm47-openai-global",
        "glm47-openai-cn",
    )
    assert anthropic.models == (
        "glm5-anthropic-global",
        "glm5-anthropic-cn",
        "glm47-anthropic-global",
        "glm47-anthropic-cn",
    )
    assert {m.type for m in config.chain(openai.models)} == {"openai"}
    assert {m.type for m in config.chain(anthropic.models)} == {"anthropic"}
    assert [m.attempts for m in config.chain(openai.models)] == [5, 2, 2, 2]
    assert config.endpoints["zai-coding-plan-global-openai"].strip_version_prefix is True
    assert config.endpoints["zai-coding-plan-global-anthropic"].strip_version_prefix is False
    assert config.warnings == ()


def test_schema1_and_schema2_describe_the_same_chain() -> None:
    v1 = parse(
        """
        [endpoints.a]
        url = "https://a.example/v1/"
        interval = "1s"
        [endpoints.b]
        url = "https://b.example"
        [[models]]
        name = "first"
        endpoint = "a"
        type = "openai"
        model = "gpt-4o"
        attempts = 3
        [[models]]
        name = "second"
        endpoint = "b"
        type = "openai"
        model = "gpt-4o-mini"
        timeout = "20s"
        """
    )
    v2 = parse(
        """
        [providers.a]
        url = "https://a.example/v1/"
        interval = "1s"
        [providers.b]
        url = "https://b.example"
        [models.first]
        provider = "a"
        type = "openai"
        model = "gpt-4o"
        attempts = 3
        [models.second]
        endpoint = "b"
        type = "openai"
        model = "gpt-4o-mini"
        timeout = "20s"
        [[listeners]]
        name = "default"
        port = 8080
        models = ["first", "second"]
        """
    )
    assert v1.chain(v1.listeners[0].models) == v2.chain(v2.listeners[0].models)
    assert dict(v1.endpoints) == dict(v2.endpoints)
    assert v1.listeners == v2.listeners


def test_schema2_without_listeners_serves_every_model_from_server_settings() -> None:
    config = parse(
        """
        [server]
        port = 9000
        [providers.p]
        url = "https://p.example"
        [models.one]
        provider = "p"
        type = "anthropic"
        model = "m1"
        [models.two]
        provider = "p"
        type = "anthropic"
        model = "m2"
        """
    )
    assert config.listeners == (ListenerConfig(name="default", port=9000, models=("one", "two")),)


# --------------------------------------------------------------------------- ids and defaults


def test_repeated_endpoint_and_model_get_numbered_ids() -> None:
    config = parse(
        ONE_ENDPOINT
        + """
        [[models]]
        endpoint = "zai"
        type = "openai"
        model = "glm-5"
        [[models]]
        endpoint = "zai"
        type = "openai"
        model = "glm-5"
        [[models]]
        endpoint = "zai"
        type = "openai"
        model = "glm-5"
        """
    )
    assert config.listeners[0].models == ("zai/glm-5", "zai/glm-5#2", "zai/glm-5#3")
    assert list(config.models) == ["zai/glm-5", "zai/glm-5#2", "zai/glm-5#3"]


def test_interval_precedence_is_model_then_endpoint_then_retry_default() -> None:
    config = parse(
        """
        [retry]
        default_interval = "3s"
        [endpoints.slow]
        url = "https://slow.example"
        interval = "2s"
        [endpoints.plain]
        url = "https://plain.example"
        [[models]]
        endpoint = "slow"
        type = "openai"
        model = "own"
        interval = "1s"
        [[models]]
        endpoint = "slow"
        type = "openai"
        model = "from-endpoint"
        [[models]]
        endpoint = "plain"
        type = "openai"
        model = "from-retry"
        """
    )
    intervals = {m.model: m.interval for m in config.models.values()}
    assert intervals == {"own": 1.0, "from-endpoint": 2.0, "from-retry": 3.0}


@pytest.mark.parametrize("attempts", [0, -3])
def test_attempts_of_zero_or_less_mean_one_try(attempts: int) -> None:
    config = parse(
        ONE_ENDPOINT
        + f"""
        [[models]]
        endpoint = "zai"
        type = "openai"
        model = "glm-5"
        attempts = {attempts}
        """
    )
    assert config.models["zai/glm-5"].attempts == 1


MINIMAL = (
    ONE_ENDPOINT
    + """
[[models]]
endpoint = "zai"
type = "openai"
model = "glm-5"
"""
)


def test_defaults_apply_when_sections_are_left_out() -> None:
    config = parse(MINIMAL)
    assert config.server.port == 8080
    assert config.listeners[0].host == "127.0.0.1"
    assert config.retry.max_cycles == 10
    assert config.retry.retry_on is None
    assert config.log.level == "info"
    assert config.models["zai/glm-5"].timeout == 30.0
    assert config.models["zai/glm-5"].interval == 0.1


def test_durations_sizes_and_retry_settings_are_converted() -> None:
    config = parse(
        """
        [server]
        read_timeout = "1m30s"
        write_timeout = 45
        max_body_size = "512KiB"
        shutdown_timeout = "2.5s"
        workers = 4
        [log]
        level = "WARNING"
        include_error_body = true
        [retry]
        default_timeout = "250ms"
        exponential_backoff = true
        total_timeout = "1h"
        retry_on = [429, 503]
        fallback_on = [400]
        fallback_on_body = ["too long"]
        midstream = "error"
        [cooldown]
        enabled = false
        failures = 5
        duration = "1m"
        """
        + MINIMAL
    )
    assert (config.server.read_timeout, config.server.write_timeout) == (90.0, 45.0)
    assert config.server.max_body_size == 512 * 1024
    assert (config.server.shutdown_timeout, config.server.workers) == (2.5, 4)
    assert config.log.level == "warn"
    assert config.log.include_error_body is True
    assert config.retry.default_timeout == 0.25
    assert config.retry.total_timeout == 3600.0
    assert config.retry.is_retryable_status(503) and not config.retry.is_retryable_status(500)
    assert config.retry.fallback_on == frozenset({400})
    assert config.retry.fallback_on_body == ("too long",)
    assert config.retry.midstream == "error"
    assert (config.cooldown.enabled, config.cooldown.failures) == (False, 5)
    assert config.cooldown.duration == 60.0
    assert config.models["zai/glm-5"].timeout == 0.25


def test_url_trailing_slashes_are_trimmed() -> None:
    config = parse(MINIMAL.replace("paas/v4", "paas/v4//"))
    assert config.endpoints["zai"].url == "https://api.z.ai/api/paas/v4"


# --------------------------------------------------------------------------- bedrock


BEDROCK = """
[endpoints.aws]
{extra}
[[models]]
endpoint = "aws"
type = "bedrock"
model = "anthropic.claude-3-haiku"
"""


@pytest.mark.parametrize(
    ("extra", "region"),
    [('aws_region = "eu-west-1"', "eu-west-1"), ("", None)],
)
def test_bedrock_url_may_be_omitted(extra: str, region: str | None) -> None:
    # The regional URL is built by the bedrock provider from the region it resolves
    # (aws_region, environment, profile, us-east-1): see test_bedrock.py.
    config = parse(BEDROCK.format(extra=extra), {"AWS_REGION": "ap-south-1"})
    assert config.endpoints["aws"].url == ""
    assert config.endpoints["aws"].aws_region == region


def test_bedrock_keys_from_env_are_secrets() -> None:
    extra = 'aws_access_key_id = "$AK"\naws_secret_access_key = "${SK}"'
    config = parse(BEDROCK.format(extra=extra), {"AK": "AKIAXXX", "SK": "shh"})
    assert config.endpoints["aws"].aws_access_key_id == "AKIAXXX"
    assert config.endpoints["aws"].aws_secret_access_key == "shh"
    assert {"AKIAXXX", "shh"} <= config.secrets


# --------------------------------------------------------------------------- $ENV values


def test_env_reference_is_resolved_in_both_forms() -> None:
    text = MINIMAL.replace("[endpoints.zai]", '[endpoints.zai]\napi_key = "${ZAI_API_KEY}"')
    config = parse(text, ENV)
    assert config.endpoints["zai"].api_key == "zai-secret"
    assert config.secrets == frozenset({"zai-secret"})
    assert config.warnings == ()


@pytest.mark.parametrize("env", [{}, {"ZAI_API_KEY": ""}])
def test_unset_or_empty_env_reference_is_absent_with_a_warning(env: dict[str, str]) -> None:
    text = MINIMAL.replace("[endpoints.zai]", '[endpoints.zai]\napi_key = "$ZAI_API_KEY"')
    config = parse(text, env)
    assert config.endpoints["zai"].api_key is None
    assert config.warnings == (
        'endpoint "zai": api_key refers to $ZAI_API_KEY, which is not set;'
        " the client's own credentials will pass through",
    )
    assert config.secrets == frozenset()


def test_env_references_inside_lists_drop_unset_items() -> None:
    config = parse(
        """
        [server]
        auth_keys = ["$KEY_A", "${KEY_B}", "literal-key"]
        """
        + MINIMAL,
        {"KEY_A": "alpha"},
    )
    assert config.server.auth_keys == ("alpha", "literal-key")
    assert config.listeners[0].auth_keys == ("alpha", "literal-key")
    assert {"alpha", "literal-key"} <= config.secrets
    assert len(config.warnings) == 1
    assert "server: auth_keys refers to ${KEY_B}, which is not set" in config.warnings[0]


def test_strip_marker_api_key_is_kept_and_not_a_secret() -> None:
    config = parse(MINIMAL.replace("[endpoints.zai]", '[endpoints.zai]\napi_key = "-"'))
    assert config.endpoints["zai"].api_key == "-"
    assert "-" not in config.secrets


def test_a_required_value_from_an_unset_variable_is_reported_missing() -> None:
    assert problems(MINIMAL.replace('model = "glm-5"', 'model = "$MODEL"')) == [
        "model 0: model is required"
    ]


# --------------------------------------------------------------------------- routes and listeners


LISTENERS = """
[providers.p]
url = "https://p.example"
[models.big]
provider = "p"
type = "anthropic"
model = "claude-opus"
[models.glm-air]
provider = "p"
type = "anthropic"
model = "glm-4.5-air"
[models.glm-flash]
provider = "p"
type = "anthropic"
model = "glm-4.5-flash"
"""


def test_routes_are_kept_in_file_order() -> None:
    config = parse(
        LISTENERS
        + """
        [[listeners]]
        name = "main"
        port = 8102
        auth_keys = ["k1"]
        models = ["big"]
        [listeners.routes]
        "*haiku*" = ["glm-air", "glm-flash"]
        "*sonnet*" = ["big", "glm-air"]
        "claude-3*" = "glm-flash"
        """
    )
    [listener] = config.listeners
    assert listener.routes == (
        Route("*haiku*", ("glm-air", "glm-flash")),
        Route("*sonnet*", ("big", "glm-air")),
        Route("claude-3*", ("glm-flash",)),
    )
    assert listener.auth_keys == ("k1",)
    assert config.warnings == ()


def test_listener_mistakes_are_all_reported() -> None:
    found = problems(
        LISTENERS
        + """
        [[listeners]]
        name = "a"
        port = 8101
        models = ["big", "bigg"]
        [listeners.routes]
        "*haiku*" = ["nope"]
        [[listeners]]
        name = "a"
        port = 8102
        models = ["big"]
        [[listeners]]
        name = "c"
        port = 8101
        [[listeners]]
        models = ["big"]
        port = 70000
        """
    )
    assert found == [
        'listener "a": unknown model "bigg" (did you mean "big"?)',
        'listener "a": route "*haiku*": unknown model "nope"',
        'listener "c": no models configured (set models = [...])',
        "listener 3: name is required",
        "listener 3: port 70000 is out of range (1..65535)",
        'listener "a": the name is used by more than one listener',
        'listener "c": 127.0.0.1:8101 is already used by listener "a"',
    ]


def test_unused_models_and_ignored_server_port_are_warned_about() -> None:
    config = parse(
        "[server]\nport = 9000\n"
        + LISTENERS
        + """
        [[listeners]]
        name = "main"
        models = ["big", "glm-air"]
        """
    )
    assert config.warnings == (
        'model "glm-flash" is not used by any listener',
        "server: port is not used when [[listeners]] are configured",
    )


def test_server_provides_defaults_for_listeners() -> None:
    config = parse(
        """
        [server]
        auth_keys = ["shared"]
        read_timeout = "5s"
        max_body_size = 1000
        """
        + LISTENERS
        + """
        [[listeners]]
        name = "main"
        models = ["big", "glm-air", "glm-flash"]
        """
    )
    [listener] = config.listeners
    assert listener.auth_keys == ("shared",)
    assert listener.read_timeout == 5.0
    assert (listener.host, listener.port) == ("127.0.0.1", 8080)
    assert config.server.max_body_size == 1000


# --------------------------------------------------------------------------- validation messages


def model_entry(**keys: object) -> str:
    body = "\n".join(f"{key} = {json.dumps(value)}" for key, value in keys.items())
    return f"[[models]]\n{body}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "at least one model must be configured"),
        (model_entry(type="openai", model="m"), "model 0: endpoint is required"),
        (
            ONE_ENDPOINT + model_entry(endpoint="nope", type="openai", model="m"),
            'model 0: endpoint "nope" not found',
        ),
        (ONE_ENDPOINT + model_entry(endpoint="zai", type="openai"), "model 0: model is required"),
        (ONE_ENDPOINT + model_entry(endpoint="zai", model="m"), "model 0: type is required"),
        (
            ONE_ENDPOINT + model_entry(endpoint="zai", type="vertex", model="m"),
            'model 0: unsupported type "vertex" (supported: openai, anthropic, bedrock, gemini)',
        ),
        (
            ONE_ENDPOINT + model_entry(endpoint="zai", type="openai", model="m", api="batch"),
            'model 0: api "batch" must be "chat" or "responses"',
        ),
        (
            ONE_ENDPOINT + model_entry(endpoint="zai", type="anthropic", model="m", api="chat"),
            'model 0: api applies only to type "openai" models',
        ),
        (
            BEDROCK.format(extra='aws_access_key_id = "AKIA"'),
            'endpoint "aws": bedrock requires both aws_access_key_id and aws_secret_access_key'
            " to be configured together",
        ),
        (
            BEDROCK.format(extra='aws_session_token = "tok"'),
            'endpoint "aws": bedrock aws_session_token requires aws_access_key_id'
            " and aws_secret_access_key",
        ),
        (
            MINIMAL.replace("https://api.z.ai", "ftp://api.z.ai"),
            'endpoint "zai": url "ftp://api.z.ai/api/paas/v4" must start with http:// or https://',
        ),
        (
            MINIMAL.replace("https://api.z.ai/api/paas/v4", "https:///v4"),
            'endpoint "zai": url "https:///v4" has no host',
        ),
        (
            MINIMAL.replace('url = "https://api.z.ai/api/paas/v4"', ""),
            'endpoint "zai": url is required',
        ),
        ("[server]\nport = 70000\n" + MINIMAL, "server: port 70000 is out of range (1..65535)"),
        ("[server]\nport = 0\n" + MINIMAL, "server: port 0 is out of range (1..65535)"),
        (
            '[retry]\ndefault_timeout = "abc"\n' + MINIMAL,
            'retry.default_timeout: invalid duration "abc": use a number of seconds or a value'
            ' such as "250ms", "30s", "10m" or "1h30m"',
        ),
        (
            '[server]\nmax_body_size = "lots"\n' + MINIMAL,
            'server.max_body_size: invalid size "lots": use a number of bytes or a value'
            ' such as "512KiB", "100MiB" or "1MB"',
        ),
        (
            MINIMAL + 'attempts = "three"\n',
            'model 0: attempts: expected an integer, got "three"',
        ),
        (
            MINIMAL + "timeout = true\n",
            'model 0: timeout: expected a duration such as "30s", got true',
        ),
        ("[retry]\nmax_cycles = 0\n" + MINIMAL, "retry.max_cycles: must be at least 1, got 0"),
        (
            "[retry]\nretry_on = [429, 42]\n" + MINIMAL,
            "retry.retry_on: status 42 is out of range (100..599)",
        ),
        (
            '[log]\nlevel = "loud"\n' + MINIMAL,
            'log.level: "loud" is not one of debug, info, warn, error',
        ),
        (
            '[retry]\nmidstream = "retry"\n' + MINIMAL,
            'retry.midstream: "retry" is not one of continue, error',
        ),
        (
            '[server]\nauth_keys = "k"\n' + MINIMAL,
            'server.auth_keys: expected an array of strings, got "k"',
        ),
        (
            '[endpoints.zai]\nurl = "https://b.example"\n[providers.zai]\nurl = "https://c.example"\n'
            + model_entry(endpoint="zai", type="openai", model="m"),
            'endpoint "zai": defined in both [endpoints] and [providers]',
        ),
        (
            ONE_ENDPOINT
            + model_entry(endpoint="zai", type="openai", model="m", name="x")
            + model_entry(endpoint="zai", type="openai", model="n", name="x"),
            'model 1: name "x" is already used',
        ),
        ("server = 5\n" + MINIMAL, "server: expected a table, got 5"),
        ("models = 5\n", "models: expected [[models]] entries or [models.ID] tables, got 5"),
    ],
)
def test_each_problem_has_its_exact_message(text: str, expected: str) -> None:
    assert problems(text) == [expected]


def test_the_rendered_error_for_an_empty_config() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("", env={})
    assert str(info.value) == "config validation failed: at least one model must be configured"


def test_mixed_types_are_allowed_in_a_chain_and_its_routes() -> None:
    # Issue 16: a chain may mix API families (the original refused this).
    text = LISTENERS.replace(
        '[models.glm-flash]\nprovider = "p"\ntype = "anthropic"',
        '[models.glm-flash]\nprovider = "p"\ntype = "openai"',
    )
    ok = parse(
        text
        + """
        [[listeners]]
        name = "a"
        models = ["big", "glm-flash"]
        [listeners.routes]
        "*" = ["glm-flash"]
        """
    )
    assert [m.type for m in ok.chain(ok.listeners[0].models)] == ["anthropic", "openai"]
    mixed = parse(
        ONE_ENDPOINT
        + model_entry(endpoint="zai", type="openai", model="a", api="responses")
        + model_entry(endpoint="zai", type="anthropic", model="b")
    )
    assert [(m.type, m.api) for m in mixed.models.values()] == [
        ("openai", "responses"),
        ("anthropic", "chat"),
    ]


def test_a_gemini_only_endpoint_defaults_to_googles_url() -> None:
    config = parse(
        '[endpoints.g]\napi_key = "k"\n' + model_entry(endpoint="g", type="gemini", model="m")
    )
    assert config.endpoints["g"].url == "https://generativelanguage.googleapis.com"
    assert config.models["g/m"].type == "gemini"


def test_every_problem_is_reported_together() -> None:
    found = problems(
        """
        [server]
        port = 70000
        [retyr]
        max_cycles = 3
        [endpoints.a]
        url = "ftp://x"
        [[models]]
        endpoint = "missing"
        type = "openai"
        atempts = 2
        [[models]]
        endpoint = "a"
        type = "cohere"
        model = "m"
        """
    )
    assert found == [
        "unknown table [retyr] (did you mean [retry]?)",
        "server: port 70000 is out of range (1..65535)",
        'model 0: unknown key "atempts" (did you mean "attempts"?)',
        'model 0: endpoint "missing" not found',
        "model 0: model is required",
        'model 1: unsupported type "cohere" (supported: openai, anthropic, bedrock, gemini)',
        'endpoint "a": url "ftp://x" must start with http:// or https://',
    ]
    with pytest.raises(ConfigError) as info:
        parse("[server]\nport = 70000\n")
    assert str(info.value).splitlines() == [
        "config validation failed: 2 problems",
        "  in config.toml",
        "  - server: port 70000 is out of range (1..65535)",
        "  - at least one model must be configured",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[retry]\nmax_cycle = 3\n", 'retry: unknown key "max_cycle" (did you mean "max_cycles"?)'),
        ("[endpoints.zai]\nurll = 1\n", 'endpoint "zai": unknown key "urll" (did you mean "url"?)'),
        ("[models.x]\nname = 'y'\n", 'model "x": unknown key "name"'),
        ("[srever]\nport = 1\n", "unknown table [srever] (did you mean [server]?)"),
        ("[[listener]]\nport = 1\n", "unknown table [listener] (did you mean [listeners]?)"),
        ("zzz = 1\n", 'unknown top-level key "zzz"'),
    ],
)
def test_unknown_keys_name_the_closest_valid_key(text: str, expected: str) -> None:
    assert expected in problems(text)


def test_toml_syntax_error_gives_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('[server]\nport = 8080\nhost = "x\n', path="/etc/config.toml", env={})
    [problem] = info.value.problems
    assert problem.startswith("config.toml: TOML syntax error at line 3, column ")
    assert info.value.path == "/etc/config.toml"


# --------------------------------------------------------------------------- files and paths


def test_missing_file_names_the_path_and_suggests_edit(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "config.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, env={})
    assert str(missing) in str(info.value)
    assert "hydrallm edit" in str(info.value)


def test_unreadable_paths_give_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, env={})
    binary = tmp_path / "config.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(binary, env={})


def test_config_path_precedence(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "HYDRALLM_CONFIG": "/from/env.toml"}
    assert resolve_config_path("/from/flag.toml", env) == Path("/from/flag.toml")
    assert resolve_config_path(None, env) == Path("/from/env.toml")
    default = tmp_path / ".config" / "hydrallm" / "config.toml"
    assert resolve_config_path(None, {"HOME": str(tmp_path)}) == default
    assert default_config_path({"HOME": str(tmp_path)}) == default


def test_the_default_template_is_a_valid_config() -> None:
    config = parse_config(default_template(), env={"ANTHROPIC_API_KEY": "sk-ant"})
    assert config.warnings == ()
    [listener] = config.listeners
    assert len(listener.models) >= 2
    assert {m.type for m in config.chain(listener.models)} == {"anthropic"}
    assert "sk-ant" in config.secrets


# --------------------------------------------------------------------------- CLI overrides


def test_overrides_replace_file_values() -> None:
    config = apply_overrides(parse(MINIMAL), host="0.0.0.0", port=9999, log_level="debug")
    assert (config.listeners[0].host, config.listeners[0].port) == ("0.0.0.0", 9999)
    assert (config.server.host, config.server.port) == ("0.0.0.0", 9999)
    assert config.log.level == "debug"
    unchanged = parse(MINIMAL)
    assert apply_overrides(unchanged, host=None, port=None, log_level=None) == unchanged


def test_host_override_applies_to_every_listener_but_port_is_refused() -> None:
    config = load_config(FIXTURES / "v2-glm-coding-plan.toml", env=ENV)
    moved = apply_overrides(config, host="::1", port=None, log_level="warning")
    assert [item.host for item in moved.listeners] == ["::1", "::1"]
    assert moved.log.level == "warn"
    with pytest.raises(ConfigError) as info:
        apply_overrides(config, host=None, port=9000, log_level=None)
    assert info.value.problems == [
        "--port cannot be used with several listeners; set each listener's port in the config"
    ]


def test_bad_override_values_are_refused() -> None:
    config = parse(MINIMAL)
    with pytest.raises(ConfigError, match="--log-level"):
        apply_overrides(config, host=None, port=None, log_level="chatty")
    with pytest.raises(ConfigError, match="out of range"):
        apply_overrides(config, host=None, port=0, log_level=None)


# --------------------------------------------------------------------------- never anything but ConfigError

_ALL_KEYS = [
    "server", "log", "retry", "cooldown", "endpoints", "providers", "models", "listeners",
    "routes", "host", "port", "read_timeout", "write_timeout", "max_body_size", "auth_keys",
    "workers", "level", "max_cycles", "default_timeout", "default_interval", "retry_on",
    "fallback_on", "fallback_on_body", "midstream", "total_timeout", "enabled", "failures",
    "url", "api_key", "interval", "aws_region", "aws_access_key_id", "aws_secret_access_key",
    "aws_session_token", "prefill", "endpoint", "provider", "type", "model", "attempts",
    "timeout", "name", "a", "zai",
]  # fmt: skip
_STRINGS = st.sampled_from(
    ["30s", "abc", "openai", "bedrock", "anthropic", "$HOME", "${NOPE}", "https://x.io/",
     "http://[::1", "ftp://x", "-", "a", "zai", "512KiB", "1h30m", "warning", "*", ""]
)  # fmt: skip
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    items = ", ".join(
        f"{json.dumps(k, ensure_ascii=False)} = {_toml_value(v)}" for k, v in value.items()
    )
    return "{" + items + "}"


_SCALARS = st.one_of(
    st.booleans(), st.integers(-5, 70000), st.integers(), st.floats(), _STRINGS, _TEXT
)
_KEYS = st.one_of(st.sampled_from(_ALL_KEYS), _TEXT)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=5)),
    max_leaves=20,
)
_DOCUMENTS = st.dictionaries(_KEYS, _VALUES, max_size=6).map(
    lambda doc: "\n".join(
        f"{json.dumps(k, ensure_ascii=False)} = {_toml_value(v)}" for k, v in doc.items()
    )
)


_BASES = [tomllib.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.toml"))]


@st.composite
def _mutated_documents(draw: st.DrawFn) -> str:
    """A valid config with a few values replaced or removed, to reach the deeper checks."""
    doc = copy.deepcopy(draw(st.sampled_from(_BASES)))
    for _ in range(draw(st.integers(1, 4))):
        node: Any = doc
        while True:
            keys: list[object] = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = draw(st.sampled_from(keys))
            child = node[key]
            if isinstance(child, dict | list) and child and draw(st.booleans()):
                node = child
                continue
            if isinstance(node, dict) and draw(st.booleans()):
                del node[key]
            else:
                node[key] = draw(_VALUES)
            break
    return "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items())


def _only_config_errors(text: str) -> None:
    try:
        config = parse_config(text, path="fuzz.toml", env={"HOME": "/home/x"})
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert len(problem.splitlines()) == 1, problem
    else:
        assert config.listeners


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(_DOCUMENTS)
def test_any_toml_document_gives_a_config_or_a_config_error(text: str) -> None:
    _only_config_errors(text)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated_documents())
def test_any_broken_real_config_gives_a_config_or_a_config_error(text: str) -> None:
    _only_config_errors(text)


@settings(max_examples=100)
@given(st.text())
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    _only_config_errors(text)
