"""BackgroundTasks: tasks kept until they end, drained with those they start.
WriteBehind: batches of what queued meanwhile, one writer at a time, a bounded queue."""

from __future__ import annotations

import asyncio

from services.background import BackgroundTasks, WriteBehind


async def test_items_queued_while_a_batch_is_written_form_the_next_batch() -> None:
    batches: list[list[int]] = []
    tasks: list[asyncio.Task[None]] = []
    gate = asyncio.Event()

    async def write(batch: list[int]) -> None:
        batches.append(batch)
        await gate.wait()

    behind = WriteBehind(write, lambda work: tasks.append(asyncio.create_task(work)),
                         batch=3, max_pending=10)
    behind.put(0)
    await asyncio.sleep(0)  # the writer takes [0] and waits
    for item in range(1, 8):
        assert behind.put(item)
    gate.set()
    await asyncio.gather(*tasks)
    assert batches == [[0], [1, 2, 3], [4, 5, 6], [7]]
    assert len(tasks) == 1 and len(behind) == 0
    behind.put(8)  # idle again: a new writer starts
    await asyncio.gather(*tasks)
    assert len(tasks) == 2 and batches[-1] == [8]


async def test_a_full_queue_refuses_and_keeps_what_it_holds() -> None:
    written: list[int] = []
    tasks: list[asyncio.Task[None]] = []

    async def write(batch: list[int]) -> None:
        written.extend(batch)

    behind = WriteBehind(write, lambda work: tasks.append(asyncio.create_task(work)),
                         batch=256, max_pending=2)
    assert [behind.put(i) for i in range(4)] == [True, True, False, False]
    await asyncio.gather(*tasks)
    assert written == [0, 1]


async def test_drain_waits_for_every_task_those_started_meanwhile_and_failed_ones() -> None:
    background = BackgroundTasks()
    done: list[str] = []

    async def work(name: str, then: str | None = None) -> None:
        await asyncio.sleep(0.01)
        done.append(name)
        if then is not None:
            background.spawn(work(then))

    async def fail() -> None:
        raise RuntimeError("a failure is the task's own to log")

    background.spawn(work("first", then="started by first"))
    background.spawn(fail())
    assert len(background) == 2
    await background.drain()
    assert done == ["first", "started by first"] and len(background) == 0
    await background.drain()  # nothing left: returns at once


async def test_a_batch_counts_until_written_so_a_cancelled_writer_leaves_it_unwritten(
) -> None:
    tasks: list[asyncio.Task[None]] = []

    async def write(batch: list[int]) -> None:
        await asyncio.Event().wait()  # a store that never answers

    behind = WriteBehind(write, lambda work: tasks.append(asyncio.create_task(work)),
                         batch=2, max_pending=3)
    assert [behind.put(i) for i in range(3)] == [True, True, True]
    await asyncio.sleep(0)  # the writer takes [0, 1] and waits
    assert len(behind) == 3 and not behind.put(3)  # the batch in flight counts too
    tasks[0].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert len(behind) == 3  # shutdown sees what was never written
