"""Run the real coding agents (Claude Code, Codex CLI, opencode) against a hydrallm process.

The agents come from npm (`.ci/run` installs them into `AGENTS_DIR`).  Each run gets a HOME
of its own under the test's tmp dir, telemetry and update checks off, a fake API key, and
HTTP(S)_PROXY pointing at a `ProxyTrap` on loopback: anything an agent tries to reach
outside 127.0.0.1 is refused there and recorded, so a run never touches the network and
the test can say what it tried.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# The versions tested; `.ci/run` installs exactly these (npm install of this package.json).
VERSIONS: dict[str, str] = json.loads((Path(__file__).with_name("package.json")).read_text())[
    "dependencies"
]

AGENTS_DIR = Path(os.environ.get("HYDRALLM_AGENTS_DIR", Path.home() / ".cache" / "hydrallm-agents"))
BINARIES = {"claude": "claude", "codex": "codex", "opencode": "opencode"}

FAKE_KEY = "sk-agent-test-key-0000"
PROMPT = "Say hello."


def binary(agent: str) -> Path:
    return AGENTS_DIR / "node_modules" / ".bin" / BINARIES[agent]


def missing_reason(agent: str) -> str | None:
    """Why `agent` cannot run here, or None when it can."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm are not installed (.ci/run installs them)"
    path = binary(agent)
    if not path.exists():
        return f"{agent} is not installed at {path} (.ci/run installs the agents there)"
    return None


class ProxyTrap:
    """A loopback 'proxy' that refuses everything and remembers what was asked of it.

    Agents honour HTTP(S)_PROXY; with it pointing here and NO_PROXY covering loopback,
    every request that would leave the machine ends here (CONNECT host:443 or an absolute
    http URL) and fails at once, instead of reaching the network or hanging on DNS.
    """

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> ProxyTrap:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            self.requests.append(line.decode(errors="replace").strip())
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def hosts(self) -> list[str]:
        """The hosts asked for, e.g. ['statsig.anthropic.com:443']."""
        return [r.split()[1] if len(r.split()) > 1 else r for r in self.requests]


@dataclass
class AgentRun:
    agent: str
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        return (
            f"{self.agent} exit={self.returncode} after {self.seconds:.1f}s\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr[-4000:]}"
        )


def base_env(home: Path, trap: ProxyTrap) -> dict[str, str]:
    """A clean environment: a private HOME, no inherited keys or proxies, telemetry off."""
    keep = ("PATH", "LANG", "LC_ALL", "TERM", "TMPDIR", "SSL_CERT_FILE")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        HTTP_PROXY=trap.url,
        HTTPS_PROXY=trap.url,
        ALL_PROXY=trap.url,
        http_proxy=trap.url,
        https_proxy=trap.url,
        all_proxy=trap.url,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        NO_COLOR="1",
        CI="1",
    )
    return env


def claude_setup(home: Path, base: str, env: dict[str, str]) -> list[str]:
    env.update(
        ANTHROPIC_BASE_URL=base,
        ANTHROPIC_API_KEY=FAKE_KEY,
        CLAUDE_CONFIG_DIR=str(home / ".claude"),
        # One switch for telemetry, error reporting, auto-update and feedback surveys.
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
        DISABLE_AUTOUPDATER="1",
        DISABLE_BUG_COMMAND="1",
        CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY="1",
    )
    return [str(binary("claude")), "-p", PROMPT, "--output-format", "text"]


def codex_setup(home: Path, base: str, env: dict[str, str], model: str) -> list[str]:
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(
        f"""model = "{model}"
model_provider = "hydrallm"
check_for_update_on_startup = false

[model_providers.hydrallm]
name = "hydrallm"
base_url = "{base}/v1"
env_key = "HYDRALLM_TEST_KEY"
wire_api = "responses"

[analytics]
enabled = false

# Plugins and apps sync from github.com and chatgpt.com at startup.
[features]
plugins = false
remote_plugin = false
apps = false

[feedback]
enabled = false

[otel]
exporter = "none"
log_user_prompt = false
"""
    )
    env.update(CODEX_HOME=str(codex_home), HYDRALLM_TEST_KEY=FAKE_KEY)
    return [
        str(binary("codex")),
        "exec",
        "--skip-git-repo-check",
        "--color",
        "never",
        PROMPT,
    ]


def opencode_setup(home: Path, base: str, env: dict[str, str], model: str) -> list[str]:
    config = {
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": False,
        "share": "disabled",
        "model": f"hydrallm/{model}",
        "small_model": f"hydrallm/{model}",
        "provider": {
            "hydrallm": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "hydrallm",
                "options": {"baseURL": f"{base}/v1", "apiKey": FAKE_KEY},
                "models": {model: {"name": model}},
            }
        },
    }
    path = home / "opencode.json"
    path.write_text(json.dumps(config, indent=1))
    env.update(
        OPENCODE_CONFIG=str(path),
        OPENCODE_DISABLE_AUTOUPDATE="1",
        OPENCODE_DISABLE_MODELS_FETCH="1",
        OPENCODE_DISABLE_LSP_DOWNLOAD="1",
        OPENCODE_DISABLE_DEFAULT_PLUGINS="1",
        OPENCODE_DISABLE_SHARE="1",
        OPENCODE_DISABLE_CLAUDE_CODE="1",
    )
    return [str(binary("opencode")), "run", PROMPT]


async def run_agent(
    agent: str,
    base: str,
    tmp: Path,
    trap: ProxyTrap,
    *,
    model: str = "fake-model",
    timeout: float = 90.0,
    extra_env: Mapping[str, str] | None = None,
) -> AgentRun:
    """Run `agent` once, non-interactively, against the proxy at `base`; always reaped."""
    home = tmp / f"home-{agent}"
    home.mkdir(parents=True, exist_ok=True)
    work = tmp / f"work-{agent}"
    work.mkdir(exist_ok=True)
    env = base_env(home, trap)
    if agent == "claude":
        argv = claude_setup(home, base, env)
    elif agent == "codex":
        argv = codex_setup(home, base, env, model)
    else:
        argv = opencode_setup(home, base, env, model)
    env.update(extra_env or {})
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=work,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: the agents spawn helpers
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        code: int | None = proc.returncode
    except TimeoutError:
        out, err, code = b"", b"(killed at the timeout)", None
    finally:
        _kill_group(proc.pid)
        if proc.returncode is None:
            await proc.wait()
    return AgentRun(
        agent,
        code,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        time.monotonic() - started,
    )


def _kill_group(pid: int) -> None:
    """Stop the agent and anything it spawned (its process group, created for it)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
