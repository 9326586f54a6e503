"""Peer gateways for `python -m bench --peers`: LiteLLM's proxy and Portkey's gateway.

Each is installed on first use into a cache directory outside the repository
($HYDRALLM_BENCH_CACHE, else ~/.cache/hydrallm-bench): LiteLLM from PyPI into its own
virtualenv, Portkey from npm (with `@hono/node-server` held below 1.14.2 through an npm
override: later versions break Portkey's streaming).  Both are pointed at the same fake
upstream as hydrallm, with their telemetry and network look-ups off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import Procs, free_port, wait_port

LITELLM_VERSION = "1.108.7"
PORTKEY_VERSION = "1.15.2"
HONO_NODE_SERVER = "1.14.1"  # Portkey's streaming needs < 1.14.2


@dataclass
class Peer:
    name: str
    version: str
    url: str
    pid: int
    headers: dict[str, str] = field(default_factory=dict)


def cache_dir() -> Path:
    root = os.environ.get("HYDRALLM_BENCH_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "hydrallm-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(argv: list[str], cwd: Path | None = None) -> None:
    print(f"bench: installing: {' '.join(argv)}", file=sys.stderr, flush=True)
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, timeout=900)


def install_litellm(cache: Path) -> Path:
    venv = cache / f"litellm-{LITELLM_VERSION}"
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([str(venv / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"])
    return exe


def install_portkey(cache: Path) -> Path:
    root = cache / f"portkey-{PORTKEY_VERSION}"
    server = root / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if not server.exists():
        root.mkdir(parents=True, exist_ok=True)
        (root / "package.json").write_text(
            json.dumps(
                {
                    "name": "hydrallm-bench-portkey",
                    "private": True,
                    "dependencies": {"@portkey-ai/gateway": PORTKEY_VERSION},
                    "overrides": {"@hono/node-server": HONO_NODE_SERVER},
                }
            )
        )
        _run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=root)
    return server


_LITELLM_CONFIG = """\
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench-upstream-model
      api_base: http://127.0.0.1:{upstream}/v1
      api_key: sk-bench
general_settings:
  master_key: {master}
litellm_settings:
  telemetry: false
  drop_params: true
  num_retries: 0
"""


def start_litellm(procs: Procs, work: Path, upstream: int) -> Peer:
    exe = install_litellm(cache_dir())
    config = work / "litellm.yaml"
    # LiteLLM refuses to start without a master key; the load generator presents it.
    master = "sk-bench-litellm-master-key"
    config.write_text(_LITELLM_CONFIG.format(upstream=upstream, master=master))
    port = free_port()
    env = os.environ | {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the price table
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "DISABLE_SCHEMA_UPDATE": "True",
    }
    proc = procs.spawn(
        "litellm",
        [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        env=env,
    )
    wait_port(port, proc, timeout=120)
    headers = {"Authorization": f"Bearer {master}"}
    return Peer("litellm", LITELLM_VERSION, f"http://127.0.0.1:{port}", proc.pid, headers)


def start_portkey(procs: Procs, upstream: int) -> Peer:
    server = install_portkey(cache_dir())
    port = free_port()
    proc = procs.spawn(
        "portkey", ["node", str(server), f"--port={port}"], env=os.environ | {"PORT": str(port)}
    )
    wait_port(port, proc, timeout=60)
    headers = {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": f"http://127.0.0.1:{upstream}/v1",
        "Authorization": "Bearer sk-bench",
    }
    return Peer("portkey", PORTKEY_VERSION, f"http://127.0.0.1:{port}", proc.pid, headers)
