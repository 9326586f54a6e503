"""The real coding agents against a real `hydrallm serve`, in front of fake upstreams.

Claude Code (`claude -p`), Codex CLI (`codex exec`) and opencode (`opencode run`), as
installed from npm by `.ci/run`, each ask one question through a chain of two models on
loopback.  What a user would notice is what the agent prints: the whole answer, once.
See docs/clients.md for each agent's setup and what it does with a mid-stream error.

Skipped (with the reason) when node/npm or an agent is missing; run only these with
`pytest -m agents tests/test_agents.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agents import AgentRun, ProxyTrap, missing_reason, run_agent
from agents.stack import Stack, stack
from hydrallm.testing import error_event_after, overloaded, reset_mid_stream
from hydrallm.testing.agents import AgentUpstream, PrefillBehaviour
from hydrallm.testing.faults import Fault

pytestmark = pytest.mark.agents

AGENTS = ("claude", "codex", "opencode")
# The API family each agent is configured to speak (see docs/clients.md).
FAMILY = {"claude": "anthropic", "codex": "openai", "opencode": "openai"}
OTHER_FAMILY = {"anthropic": "openai", "openai": "anthropic"}
# What the fallback model does with hydrallm's continuation prefill, as the real thing
# would: Claude Code enables thinking, so an Anthropic model refuses it; OpenAI's APIs
# answer anew.
FALLBACK_PREFILL: dict[str, PrefillBehaviour] = {
    "anthropic": "refuse_with_thinking",
    "openai": "ignore",
}

# Two models, two different answers (real models never give the same one): a splice of
# one into the other shows as two beginnings or as an answer without its own end.
PRIMARY = "HELLO-BEGIN " + " ".join(f"w{i:02d}" for i in range(1, 30)) + " HELLO-END."
FALLBACK = "FALLBACK-BEGIN " + " ".join(f"f{i:02d}" for i in range(1, 30)) + " FALLBACK-END."
BEGINNINGS = ("HELLO-BEGIN", "FALLBACK-BEGIN")

# What each agent still tries to reach outside loopback with the setup in tests/agents
# (refused by the trap): opencode's background npm install of its config directory.
OUTSIDE_ALLOWED = {"claude": set(), "codex": set(), "opencode": {"registry.npmjs.org:443"}}

AGENT_TIMEOUT = 90.0  # seconds; a healthy run takes 1-15 s


def agent_param(agent: str, *marks: pytest.MarkDecorator) -> object:
    reason = missing_reason(agent)
    skip = [pytest.mark.skip(reason=reason)] if reason else []
    return pytest.param(agent, id=agent, marks=[*skip, *marks])


@pytest.fixture
async def trap() -> AsyncIterator[ProxyTrap]:
    async with ProxyTrap() as t:
        yield t


def chain(agent: str) -> tuple[AgentUpstream, AgentUpstream]:
    family = FAMILY[agent]
    primary = AgentUpstream(name="primary", text=PRIMARY)
    fallback = AgentUpstream(name="fallback", text=FALLBACK, prefill=FALLBACK_PREFILL[family])
    return primary, fallback


def assert_one_answer(run: AgentRun, expected: tuple[str, ...], trap: ProxyTrap) -> str:
    """The agent succeeded and printed one of `expected` whole, and nothing else of them."""
    where = f"{run.describe()}\nrefused outside requests: {trap.requests}"
    assert run.returncode == 0, where
    starts = sum(run.stdout.count(b) for b in BEGINNINGS)
    assert starts == 1, f"{starts} answers in the output (a splice?)\n{where}"
    whole = [answer for answer in expected if run.stdout.count(answer) == 1]
    assert whole, f"no complete answer among {len(expected)} expected\n{where}"
    return whole[0]


def turns(fake: AgentUpstream) -> int:
    """The agent's own requests (those that carry tools) the fake received."""
    return sum(1 for r in fake.requests if r.method == "POST" and r.json().get("tools"))


def check_proxy_alive(st: Stack) -> None:
    assert st.proxy.proc.poll() is None, st.proxy.log()


@pytest.mark.parametrize("agent", [agent_param(a) for a in AGENTS])
async def test_healthy_answer_printed_once(agent: str, tmp_path: Path, trap: ProxyTrap) -> None:
    primary, fallback = chain(agent)
    async with stack(tmp_path, FAMILY[agent], primary, fallback) as st:
        run = await run_agent(agent, st.base, tmp_path, trap, timeout=AGENT_TIMEOUT)
        check_proxy_alive(st)
    assert assert_one_answer(run, (PRIMARY,), trap) == PRIMARY
    assert turns(primary) == 1, run.describe()
    assert fallback.requests == []
    # Telemetry, update checks and plugin syncs are off: nothing else tried the network.
    assert set(trap.hosts()) <= OUTSIDE_ALLOWED[agent], trap.requests


@pytest.mark.parametrize("agent", [agent_param(a) for a in AGENTS])
async def test_primary_down_before_first_byte_fallback_answers(
    agent: str, tmp_path: Path, trap: ProxyTrap
) -> None:
    """The first model is overloaded (529 on Anthropic paths, 503 on OpenAI ones) for every
    request: the fallback's answer is printed, whole, once, at the agent's first try."""
    primary, fallback = chain(agent)
    primary.default = overloaded()
    async with stack(tmp_path, FAMILY[agent], primary, fallback) as st:
        run = await run_agent(agent, st.base, tmp_path, trap, timeout=AGENT_TIMEOUT)
        check_proxy_alive(st)
    assert assert_one_answer(run, (FALLBACK,), trap) == FALLBACK
    assert turns(primary) == 1 and turns(fallback) == 1, run.describe()


def cut_param(agent: str, cut: str) -> object:
    reason = missing_reason(agent)
    skip = [pytest.mark.skip(reason=reason)] if reason else []
    return pytest.param(agent, cut, id=f"{agent}-{cut}", marks=skip)


CUTS: dict[str, Fault] = {
    # The connection drops (TCP reset) after five words of the answer.
    "reset": reset_mid_stream(after_chunks=5),
    # The provider reports an overload inside the 200 stream after five words.
    "error_event": error_event_after(after_chunks=5),
    # A reset, and a fallback that gives the very same answer (a deterministic model):
    # here hydrallm can restart on the fallback and relay only what the agent lacks.
    "reset-same-answer": reset_mid_stream(after_chunks=5),
}


@pytest.mark.parametrize(("agent", "cut"), [cut_param(a, c) for a in AGENTS for c in CUTS])
async def test_cut_mid_answer_never_two_answers(
    agent: str, cut: str, tmp_path: Path, trap: ProxyTrap
) -> None:
    """The agent's turn breaks after a few words; the fallback answers differently and
    does with hydrallm's prefill what the real one would (refuse it with thinking on,
    or answer anew).  The agent prints one whole answer -- hydrallm's recovery, or the
    agent's own retry after hydrallm gave up cleanly -- never two glued together."""
    primary, fallback = chain(agent)
    if cut.endswith("same-answer"):
        fallback.text = PRIMARY
    primary.script_turn(CUTS[cut])
    async with stack(tmp_path, FAMILY[agent], primary, fallback) as st:
        run = await run_agent(agent, st.base, tmp_path, trap, timeout=AGENT_TIMEOUT)
        check_proxy_alive(st)
    assert primary.turn_pending == 0, "the cut never happened: " + run.describe()
    assert_one_answer(run, (PRIMARY, FALLBACK), trap)


@pytest.mark.parametrize("agent", [agent_param(a) for a in AGENTS])
async def test_fallback_of_another_family_answers(
    agent: str, tmp_path: Path, trap: ProxyTrap
) -> None:
    """Issue 16: the agent's own family is down; the healthy model speaks the other API
    (Claude Code falls back to an OpenAI-type model, Codex and opencode to an Anthropic
    one) and hydrallm translates both ways."""
    primary, fallback = chain(agent)
    primary.default = overloaded()
    family = FAMILY[agent]
    async with stack(tmp_path, family, primary, fallback, fallback_type=OTHER_FAMILY[family]) as st:
        run = await run_agent(agent, st.base, tmp_path, trap, timeout=AGENT_TIMEOUT)
        check_proxy_alive(st)
    assert assert_one_answer(run, (FALLBACK,), trap) == FALLBACK
    assert turns(fallback) >= 1, run.describe()
