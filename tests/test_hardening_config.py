"""Issue 14, class 8: careless configs are problems `check` reports, never surprises at
run time; validation stays linear; a config path that is not a regular file fails fast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hydrallm.config.load import parse_config
from hydrallm.config.tables import masked_url, url_secrets
from hydrallm.errors import ConfigError


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    return list(info.value.problems)


def endpoint(url: str, extra: str = "") -> str:
    return (
        f'[endpoints.e]\nurl = "{url}"\n{extra}\n'
        '[[models]]\nendpoint = "e"\ntype = "openai"\nmodel = "m"\n'
    )


def hydrallm(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRALLM")}
    return subprocess.run(
        [sys.executable, "-m", "hydrallm", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


@pytest.mark.parametrize("workers", [100000, 257, 4096])
def test_too_many_workers_is_a_problem(workers: int) -> None:
    found = problems(f"[server]\nworkers = {workers}\n" + endpoint("https://api.example"))
    assert any("workers" in p and "at most 256" in p for p in found), found


def test_256_workers_is_allowed() -> None:
    cfg = parse_config("[server]\nworkers = 256\n" + endpoint("https://api.example"), env={})
    assert cfg.server.workers == 256


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example/v1#frag",  # the example
        "https://api.example/#",
        "https://api.example/v1?key=abc#x",
    ],
)
def test_an_endpoint_url_with_a_fragment_is_a_problem(url: str) -> None:
    found = problems(endpoint(url))
    assert any("fragment" in p for p in found), found
    assert all("abc" not in p for p in found)  # a query value is a secret, even here


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pass-SECRET-1@api.example/v1",  # the example
        "https://only-user-SECRET@api.example",
        "http://u:p%40ss-SECRET@127.0.0.1:8080/base",
    ],
)
def test_userinfo_together_with_api_key_is_a_problem_that_hides_the_credentials(
    url: str,
) -> None:
    found = problems(endpoint(url, 'api_key = "sk-x-12345678"'))
    assert any("credentials" in p and "api_key" in p for p in found), found
    assert not any("SECRET" in p for p in found), found


def test_userinfo_without_api_key_and_query_urls_load() -> None:
    cfg = parse_config(endpoint("https://u:secret-pw-1@api.example/v1beta/?key=k-123456"), env={})
    assert cfg.endpoints["e"].url == "https://u:secret-pw-1@api.example/v1beta?key=k-123456"
    assert {"secret-pw-1", "k-123456"} <= cfg.secrets
    # A client's Authorization could not go with URL credentials: the warning says what to do.
    assert any('api_key = "-"' in w and "secret-pw-1" not in w for w in cfg.warnings)


def test_url_secrets_and_masking() -> None:
    url = "https://me:pa%2Fss@h.example/p?key=AIza-123456&alt=sse&flag"
    assert {"me:pa%2Fss", "pa%2Fss", "pa/ss", "AIza-123456", "sse"} <= url_secrets(url)
    assert masked_url(url) == "https://…@h.example/p?key=…&alt=…&flag"
    assert masked_url("https://h.example/v1") == "https://h.example/v1"


def test_check_masks_url_credentials(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(endpoint("https://bob:pw-SECRET-99@api.example/v1?key=QK-SECRET-77"))
    out = hydrallm("check", "--config", str(path))
    assert out.returncode == 0, out.stderr
    assert "SECRET" not in out.stdout + out.stderr
    assert "https://…@api.example/v1?key=…" in out.stdout


def test_a_directory_as_config_is_a_clear_error(tmp_path: Path) -> None:
    out = hydrallm("check", "--config", str(tmp_path))
    assert out.returncode == 1
    assert "is a directory" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("command", [["check"], ["serve"]])
def test_a_fifo_as_config_is_a_clear_error_not_a_hang(tmp_path: Path, command: list[str]) -> None:
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    out = hydrallm(*command, "--config", str(fifo))  # the timeout fails a hang
    assert out.returncode == 1
    assert "FIFO" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


def _lines_run(n: int, kind: str) -> int:
    """Lines of hydrallm.config executed to validate `n` models (deterministic, unlike time)."""
    if kind == "duplicates":
        text = '[endpoints.e]\nurl = "http://127.0.0.1:1"\n' + "".join(
            '[[models]]\nendpoint = "e"\ntype = "openai"\nmodel = "m"\n' for _ in range(n)
        )
    elif kind == "endpoints":
        text = "".join(f'[endpoints.e{i}]\nurl = "http://127.0.0.1:1"\n' for i in range(n))
        text += "".join(
            f'[[models]]\nendpoint = "e{i}"\ntype = "openai"\nmodel = "m"\n' for i in range(n)
        )
    else:
        text = '[providers.e]\nurl = "http://127.0.0.1:1"\n' + "".join(
            f'[models.m{i}]\nendpoint = "e"\ntype = "openai"\nmodel = "m"\n' for i in range(n)
        )
        ids = ", ".join(f'"m{i}"' for i in range(n))
        text += f'[[listeners]]\nname = "a"\nport = 9999\nmodels = [{ids}]\n'
        text += f'[listeners.routes]\n"x*" = [{ids}]\n'
    count = 0
    prefix = str(Path(parse_config.__code__.co_filename).parent)

    def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
        nonlocal count
        if frame.f_code.co_filename.startswith(prefix):
            if event == "line":
                count += 1
            return tracer
        return None

    sys.settrace(tracer)
    try:
        parse_config(text, env={})
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize("kind", ["duplicates", "endpoints", "listener"])
def test_validation_work_grows_linearly_with_the_number_of_models(kind: str) -> None:
    small, large = _lines_run(500, kind), _lines_run(4000, kind)
    # 8x the models: linear work is ~8x; the quadratic it replaces was ~64x.
    assert large < 12 * small, (kind, small, large)
