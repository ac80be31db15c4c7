"""One step at a time per object, and watch events coalesced (`orchard.handlers.serial`)."""

from __future__ import annotations

import asyncio

import kopf
import pytest

from orchard import kube
from orchard.handlers.serial import MAX_STATUS_ATTEMPTS, Serial, live_after_first, until_written

KEY = ("ml", "iris")


async def test_a_burst_of_events_behind_a_running_step_costs_one_more_step() -> None:
    serial = Serial()
    steps: list[int] = []
    release = asyncio.Event()

    async def step(number: int, coalesce: bool) -> None:
        if coalesce and serial.covered(KEY):
            return
        async with serial.turn(KEY):
            steps.append(number)
            if number == 0:
                await release.wait()

    first = asyncio.create_task(step(0, coalesce=False))
    await asyncio.sleep(0)
    burst = [asyncio.create_task(step(i, coalesce=True)) for i in range(1, 101)]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, *burst)
    # The first step, and one that waited for it and read after the whole burst.
    assert steps == [0, 1]


async def test_steps_that_must_run_always_run_and_in_turn() -> None:
    serial = Serial()
    order: list[int] = []

    async def step(number: int) -> None:
        async with serial.turn(KEY):
            order.append(number)
            await asyncio.sleep(0)

    await asyncio.gather(*(step(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert not serial.covered(KEY)


async def test_a_step_cancelled_while_waiting_is_no_longer_counted() -> None:
    serial = Serial()
    async with serial.turn(KEY):
        waiting = asyncio.create_task(_take_turn(serial))
        await asyncio.sleep(0)
        assert serial.covered(KEY)
        waiting.cancel()
        await asyncio.sleep(0)
    assert not serial.covered(KEY)
    serial.forget(KEY)
    assert not serial.lock(KEY).locked()


async def test_other_keys_do_not_wait() -> None:
    serial = Serial()
    async with serial.turn(KEY):
        async with asyncio.timeout(1):
            async with serial.turn(("ml", "other")):
                pass


async def _take_turn(serial: Serial) -> None:
    async with serial.turn(KEY):
        pass


async def test_a_conflicting_write_takes_the_step_again_on_the_newer_object() -> None:
    reads: list[int] = []

    async def step() -> None:
        reads.append(len(reads))
        if len(reads) < 3:
            raise kube.Conflict(409, "the object has been modified")

    await until_written(step, "TrainingJob iris")
    assert reads == [0, 1, 2]


async def test_only_the_first_try_reads_the_watch_and_each_one_after_a_409_reads_live() -> None:
    lives: list[bool] = []

    async def step(live: bool) -> None:
        lives.append(live)
        if len(lives) < 3:
            raise kube.Conflict(409, "the object has been modified")

    await until_written(live_after_first(step), "ModelVersion iris-v1")
    assert lives == [False, True, True]


async def test_an_object_that_keeps_changing_is_left_to_kopf_s_retry() -> None:
    steps = 0

    async def step() -> None:
        nonlocal steps
        steps += 1
        raise kube.Conflict(409, "the object has been modified")

    with pytest.raises(kopf.TemporaryError, match="ModelDeployment iris keeps changing"):
        await until_written(step, "ModelDeployment iris")
    assert steps == MAX_STATUS_ATTEMPTS
