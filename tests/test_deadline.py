"""Coalesced deadlines behave like asyncio.timeout."""

from __future__ import annotations

import asyncio
import time

import pytest

from hydrallm.proxy.deadline import GRAIN, Deadlines


async def test_times_out_like_asyncio_timeout() -> None:
    d = Deadlines()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        with d.guard(0.05):
            await asyncio.sleep(1)
    took = time.monotonic() - started
    assert 0.05 <= took < 0.05 + GRAIN + 0.1
    assert d.pending == 0


async def test_completes_in_time_and_leaves_no_timer() -> None:
    d = Deadlines()
    with d.guard(1.0):
        await asyncio.sleep(0.01)
    assert d.pending == 0 and not d._buckets
    # The task is not left with a pending cancellation.
    await asyncio.sleep(0.02)


async def test_many_guards_share_one_timer() -> None:
    d = Deadlines()

    async def one() -> None:
        with d.guard(5.0):
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(one()) for _ in range(100)]
    await asyncio.sleep(0)
    assert d.pending == 100
    assert len(d._buckets) <= 2  # all within one or two 10 ms grains
    await asyncio.gather(*tasks)
    assert d.pending == 0


async def test_outside_cancellation_wins_over_the_deadline() -> None:
    d = Deadlines()

    async def guarded() -> None:
        with d.guard(0.02):
            await asyncio.sleep(1)

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0.05)  # the deadline has fired
    task.cancel()  # ... and someone else cancels too (already done: a no-op)
    with pytest.raises((TimeoutError, asyncio.CancelledError)):
        await task

    async def cancelled_first() -> None:
        with d.guard(10.0):
            await asyncio.sleep(1)

    task = asyncio.create_task(cancelled_first())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert d.pending == 0


async def test_zero_or_negative_delay_times_out_at_once() -> None:
    d = Deadlines()
    with pytest.raises(TimeoutError):
        with d.guard(0):
            await asyncio.sleep(0.5)


async def test_an_earlier_deadline_after_a_later_one_fires_in_time() -> None:
    # The one timer is armed for the later guard first; the earlier one must re-arm it.
    d = Deadlines()

    async def long() -> None:
        with d.guard(5.0):
            await asyncio.sleep(0.3)

    task = asyncio.create_task(long())
    await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        with d.guard(0.05):
            await asyncio.sleep(1)
    assert time.monotonic() - started < 0.05 + GRAIN + 0.1
    await task
    assert d.pending == 0


async def test_a_guard_that_ended_leaves_the_timer_to_the_ones_still_waiting() -> None:
    # The timer armed for the first (ended) guard fires with nothing due and must be
    # re-armed for the second, which then times out on time.
    d = Deadlines()
    with d.guard(0.03):
        await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        with d.guard(0.08):
            await asyncio.sleep(1)
    took = time.monotonic() - started
    assert 0.08 <= took < 0.08 + GRAIN + 0.1
    assert d.pending == 0
