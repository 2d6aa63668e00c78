"""The paper's failure scenarios, as MANUAL_TESTS.md runs them by hand: real worker
processes with fault switches, killed with SIGKILL, and a dev server that dies too.
Each test checks what the user sees and, in the history, why."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

from conftest import (
    DevServerProcess,
    WorkerProcess,
    activity_running,
    history_events,
    pending_attempt,
    say,
    scheduled_activities,
    start_session,
    until,
)
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from approval_prompts import report_and_stop
from chat_session import ChatSession
from worker import connect
from workflow import DurableAgentWorkflow

SpawnWorker = Callable[..., Awaitable[WorkerProcess]]


async def test_worker_killed_mid_tool_resumes_without_repeating_the_plan(
    client: Client, task_queue: str, notes_file: Path, spawn_worker: SpawnWorker
):
    slow = await spawn_worker(FAULT_TOOL_DELAY_S="60", APPROVAL_REQUIRED_TOOLS="")
    handle = await start_session(client, task_queue)
    turn = asyncio.create_task(say(handle, "note: water the plants"))
    await until(lambda: activity_running(handle, "execute_tool"))

    slow.kill()
    await spawn_worker(APPROVAL_REQUIRED_TOOLS="")

    assert await turn == "Saved your note: water the plants"
    assert await scheduled_activities(handle) == [
        "plan_next_action",  # completed before the crash, not run again
        "execute_tool",  # its first attempt died with the worker; the second completed
        "plan_next_action",
    ]
    notes = [json.loads(line)["text"] for line in notes_file.read_text().splitlines()]
    assert notes == ["water the plants"]


async def test_provider_outage_is_retried_by_temporal_until_the_fourth_attempt_succeeds(
    client: Client, task_queue: str, spawn_worker: SpawnWorker
):
    await spawn_worker(FAULT_LLM_FAILURES="3")
    handle = await start_session(client, task_queue)

    assert await say(handle, "What is 25 * 4?") == "25 * 4 = 100"

    started = [
        e.activity_task_started_event_attributes
        for e in await history_events(handle)
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    # One scheduled activity per step: the retries are Temporal's attempts of the same
    # activity (the workflow has no retry loop of its own), and each plan needed four.
    assert await scheduled_activities(handle) == [
        "plan_next_action",
        "execute_tool",
        "plan_next_action",
    ]
    assert [s.attempt for s in started] == [4, 1, 4]
    assert started[0].last_failure.application_failure_info.type == "InjectedFault"


async def test_tool_bug_is_retried_until_a_fixed_worker_completes_the_turn(
    client: Client, task_queue: str, spawn_worker: SpawnWorker
):
    buggy = await spawn_worker(FAULT_TOOL_BUG="1")
    handle = await start_session(client, task_queue)
    turn = asyncio.create_task(say(handle, "What is 6 * 7?"))
    await until(lambda: pending_attempt(handle, "execute_tool"), timeout_s=30)
    await until(lambda: _at_least(pending_attempt(handle, "execute_tool"), 2), timeout_s=30)

    buggy.kill()  # deploy the fix
    await spawn_worker()

    assert await turn == "6 * 7 = 42"
    assert await scheduled_activities(handle) == [
        "plan_next_action",  # planned before the fix and reused
        "execute_tool",
        "plan_next_action",
    ]


async def _at_least(attempt: Awaitable[int], minimum: int) -> bool:
    return await attempt >= minimum


async def test_server_killed_and_restarted_the_conversation_goes_on(
    tmp_path: Path, task_queue: str, spawn_worker: SpawnWorker
):
    server = await DevServerProcess(tmp_path / "temporal.db").start()
    try:
        await spawn_worker(address=server.address)
        client = await connect(server.address)
        handle = await start_session(client, task_queue)
        assert await say(handle, "What is 1 + 1?") == "1 + 1 = 2"

        server.kill()
        # The client keeps trying while the server is down, with the same update id.
        turn = ChatSession(client, handle.id).send("What is 2 + 2?", report_and_stop)
        reply = asyncio.create_task(turn)
        await asyncio.sleep(3)
        await server.start()

        assert await asyncio.wait_for(reply, 90) == "2 + 2 = 4"
        transcript = await handle.query(DurableAgentWorkflow.conversation)
        assert [m.content for m in transcript.messages if m.role == "user"] == [
            "What is 1 + 1?",
            "What is 2 + 2?",
        ]
    finally:
        server.kill()


async def test_chaos_thirty_turns_with_ten_worker_kills_lose_and_repeat_nothing(
    client: Client, task_queue: str, notes_file: Path, spawn_worker: SpawnWorker
):
    """Bounded: about a minute and a half. The kills land at random (seeded) moments.

    The user thinks for a second between messages, as people do; otherwise a worker that
    lives a second or two would finish the whole conversation before the tenth kill.
    """
    chance = random.Random(2026)
    kills = 0
    trusted = {"APPROVAL_REQUIRED_TOOLS": ""}  # notes save at once: the kills are the point
    worker = await spawn_worker(**trusted)
    handle = await start_session(client, task_queue)
    texts = [f"note: n{turn}" for turn in range(30)]

    async def converse() -> list[str]:
        replies = []
        for text in texts:
            replies.append(await say(handle, text))
            await asyncio.sleep(1)
        return replies

    conversation = asyncio.create_task(converse())
    while kills < 10 and not conversation.done():
        await asyncio.sleep(chance.uniform(0.2, 1.5))
        worker.kill()
        kills += 1
        worker = await spawn_worker(**trusted)
    replies = await asyncio.wait_for(conversation, 120)

    notes = [json.loads(line)["text"] for line in notes_file.read_text().splitlines()]
    transcript = await handle.query(DurableAgentWorkflow.conversation)
    said = [m.content for m in transcript.messages if m.role == "user"]
    print(f"chaos: {kills} kills, {len(replies)} turns, {len(notes)} notes written")
    assert kills >= 10
    assert replies == [f"Saved your note: n{turn}" for turn in range(30)]
    assert said == texts
    assert sorted(notes) == sorted(f"n{turn}" for turn in range(30))  # each exactly once
