"""A person approves or denies a tool call, and the agent waits for it durably."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import (
    AsksForTools,
    WorkerProcess,
    approvals_waiting,
    decide,
    history_events,
    registered,
    run_id_is_not,
    say,
    scheduled_activities,
    start_session,
    until,
)
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError

from activities import AgentActivities
from contract import SessionInput
from llm_client import LlmSettings
from toolbox import ApprovalPolicy
from tools import registry
from worker import build_worker
from workflow import DurableAgentWorkflow


def saved_notes(notes_file: Path) -> list[str]:
    if not notes_file.exists():
        return []
    return [json.loads(line)["text"] for line in notes_file.read_text().splitlines()]


@pytest.fixture
def weather_needs_approval(notes_file: Path) -> AgentActivities:
    return AgentActivities(
        LlmSettings(), notes_file, approvals=ApprovalPolicy(frozenset({"weather"}))
    )


async def test_approved_note_is_saved_exactly_once(session: WorkflowHandle, notes_file: Path):
    turn = asyncio.create_task(say(session, "note: buy milk"))
    [waiting] = await approvals_waiting(session)

    assert waiting.tool == "save_note"
    assert json.loads(waiting.arguments) == {"text": "buy milk"}
    assert await session.query(DurableAgentWorkflow.status) == "awaiting_approval"
    assert saved_notes(notes_file) == []  # nothing runs before a person says yes

    assert await decide(session, waiting.call_id, approved=True) == "approved"

    assert await turn == "Saved your note: buy milk"
    assert saved_notes(notes_file) == ["buy milk"]
    assert await scheduled_activities(session) == [
        "plan_next_action",
        "execute_tool",
        "plan_next_action",
    ]
    assert await session.query(DurableAgentWorkflow.status) == "idle"


async def test_denied_note_never_runs_and_the_model_answers_with_the_reason(
    session: WorkflowHandle, notes_file: Path
):
    turn = asyncio.create_task(say(session, "note: sell the car"))
    [waiting] = await approvals_waiting(session)

    await decide(session, waiting.call_id, approved=False, reason="not my car")

    assert await turn == "I did not run save_note. Not run: the user denied it (not my car)."
    assert saved_notes(notes_file) == []
    assert await scheduled_activities(session) == ["plan_next_action", "plan_next_action"]
    assert "100" in await say(session, "What is 25 * 4?")  # a denial is no error: chat goes on


async def test_a_call_without_a_decision_expires_after_the_workers_timeout(
    client: Client, task_queue: str, notes_file: Path
):
    policy = ApprovalPolicy(frozenset({"save_note"}), timeout_s=1)
    async with build_worker(
        client, task_queue, AgentActivities(LlmSettings(), notes_file, approvals=policy)
    ):
        handle = await start_session(client, task_queue)
        turn = asyncio.create_task(say(handle, "note: too late"))
        [waiting] = await approvals_waiting(handle)
        assert waiting.expires_at is not None

        assert await turn == "I did not run save_note. Not run: no decision within 1 s."
        with pytest.raises(WorkflowUpdateFailedError) as late:
            await decide(handle, waiting.call_id, approved=True)
        assert f"Tool call {waiting.call_id} expired at {waiting.expires_at}" in str(
            late.value.cause
        )

    assert saved_notes(notes_file) == []
    kinds = [e.event_type for e in await history_events(handle)]
    assert EventType.EVENT_TYPE_TIMER_FIRED in kinds  # the expiry is a durable timer


async def test_a_decision_that_reaches_a_restarted_worker_after_the_expiry_is_refused(
    client: Client, task_queue: str, notes_file: Path
):
    # The decision and the expiry's timer arrive in the same workflow task: the decision
    # must not win, the call must not run.
    activities = AgentActivities(
        LlmSettings(), notes_file, approvals=ApprovalPolicy(frozenset({"save_note"}), 2)
    )
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        handle = await start_session(client, task_queue)
        turn = asyncio.create_task(say(handle, "note: too late"))
        [waiting] = await approvals_waiting(handle)
    assert waiting.expires_at is not None
    expires_at = datetime.fromisoformat(waiting.expires_at)
    await until(lambda: datetime.now(timezone.utc) > expires_at + timedelta(seconds=0.5))
    late = asyncio.create_task(decide(handle, waiting.call_id, approved=True))
    await asyncio.sleep(0.5)  # the decision waits on the server for a worker
    assert not late.done()

    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        reply = await turn
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await late

    assert reply == "I did not run save_note. Not run: no decision within 2 s."
    assert saved_notes(notes_file) == []
    assert f"Tool call {waiting.call_id} expired" in str(refused.value.cause)
    assert await scheduled_activities(handle) == ["plan_next_action", "plan_next_action"]


async def test_a_second_decision_and_an_unknown_call_are_rejected_before_history(
    session: WorkflowHandle, notes_file: Path
):
    turn = asyncio.create_task(say(session, "note: once"))
    [waiting] = await approvals_waiting(session)
    events_before = len(await history_events(session))
    with pytest.raises(WorkflowUpdateFailedError) as unknown:
        await decide(session, "call_nope", approved=True)
    assert len(await history_events(session)) == events_before

    await decide(session, waiting.call_id, approved=True)
    await turn
    events_after = len(await history_events(session))
    with pytest.raises(WorkflowUpdateFailedError) as again:
        await decide(session, waiting.call_id, approved=False)

    assert "No tool call call_nope waits for approval (waiting: call_" in str(unknown.value.cause)
    assert "already been decided" in str(again.value.cause)
    assert len(await history_events(session)) == events_after
    assert saved_notes(notes_file) == ["once"]


async def test_two_waiting_calls_decided_in_reverse_order_each_get_their_own_outcome(
    client: Client, task_queue: str, weather_needs_approval: AgentActivities
):
    async with build_worker(client, task_queue, weather_needs_approval, max_cached_workflows=0):
        handle = await start_session(client, task_queue)
        turn = asyncio.create_task(say(handle, "What is the weather in Paris and Oslo?"))
        paris, oslo = await approvals_waiting(handle, count=2)

        await decide(handle, oslo.call_id, approved=False, reason="no")
        assert [p.call_id for p in await handle.query(DurableAgentWorkflow.pending_approvals)] == [
            paris.call_id
        ]
        await decide(handle, paris.call_id, approved=True)
        reply = await turn

    assert "[demo data] Paris" in reply
    assert "I did not run weather. Not run: the user denied it (no)." in reply
    assert await scheduled_activities(handle) == [
        "plan_next_action",
        "execute_tool",  # Paris only
        "plan_next_action",
    ]


CALCULATOR_AND_NOTE = registered(
    "mixed",
    AsksForTools([("calculator", '{"expression": "6 * 7"}'), ("save_note", '{"text": "42"}')]),
)


async def test_ungated_calls_of_the_same_reply_run_while_a_gated_one_waits(
    client: Client, task_queue: str, notes_file: Path
):
    activities = AgentActivities(CALCULATOR_AND_NOTE, notes_file)
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        handle = await start_session(client, task_queue)
        turn = asyncio.create_task(say(handle, "sum and note"))
        [waiting] = await approvals_waiting(handle)

        async def completed() -> list:
            events = await history_events(handle)
            done = [
                e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
            ]
            return done if len(done) == 2 else []

        # The calculator's call completes while the note's waits (it runs in a thread:
        # give it the moment it takes, rather than reading the history once).
        completed_while_waiting = await until(completed)
        still_waiting = await handle.query(DurableAgentWorkflow.pending_approvals)
        await decide(handle, waiting.call_id, approved=True)
        reply = await turn

    assert waiting.tool == "save_note"
    assert len(completed_while_waiting) == 2  # the plan, and the calculator
    assert [call.call_id for call in still_waiting] == [waiting.call_id]
    assert reply == "42 | Saved your note: 42"


async def test_ending_the_chat_denies_a_waiting_call_and_the_model_still_answers(
    session: WorkflowHandle, notes_file: Path
):
    turn = asyncio.create_task(say(session, "note: never mind"))
    await approvals_waiting(session)

    await session.signal(DurableAgentWorkflow.end_chat)

    assert await turn == "I did not run save_note. Not run: the user denied it (chat ended)."
    assert (await session.result()).ended
    assert saved_notes(notes_file) == []


async def test_no_continue_as_new_while_a_call_waits(
    client: Client, task_queue: str, worker: object, notes_file: Path
):
    handle = await start_session(client, task_queue, SessionInput(continue_as_new_after_events=10))
    first_run = (await handle.describe()).run_id
    turn = asyncio.create_task(say(handle, "note: stay"))
    [waiting] = await approvals_waiting(handle)
    await asyncio.sleep(0.5)
    description = await handle.describe()
    assert description.history_length > 10  # over the threshold, yet the same run waits
    assert description.run_id == first_run

    await decide(handle, waiting.call_id, approved=True)

    assert await turn == "Saved your note: stay"
    await until(lambda: run_id_is_not(handle, first_run))  # then it hands over
    assert saved_notes(notes_file) == ["stay"]


async def test_worker_killed_while_a_call_waits_then_a_new_worker_runs_it_once_approved(
    client: Client,
    task_queue: str,
    notes_file: Path,
    spawn_worker: Callable[..., Awaitable[WorkerProcess]],
):
    first = await spawn_worker()
    handle = await start_session(client, task_queue)
    turn = asyncio.create_task(say(handle, "note: survive"))
    [waiting] = await approvals_waiting(handle)

    first.kill()
    await spawn_worker()
    await decide(handle, waiting.call_id, approved=True)

    assert await turn == "Saved your note: survive"
    assert saved_notes(notes_file) == ["survive"]
    assert await scheduled_activities(handle) == [
        "plan_next_action",
        "execute_tool",
        "plan_next_action",
    ]


def test_the_worker_policy_names_known_tools_and_a_positive_timeout(notes_file: Path):
    tools = registry(notes_file)
    assert ApprovalPolicy.from_env({}, tools) == ApprovalPolicy(frozenset({"save_note"}))
    assert ApprovalPolicy.from_env({"APPROVAL_REQUIRED_TOOLS": ""}, tools).tools == frozenset()
    assert ApprovalPolicy.from_env(
        {"APPROVAL_REQUIRED_TOOLS": "weather, calculator", "APPROVAL_TIMEOUT_S": "90"}, tools
    ) == ApprovalPolicy(frozenset({"weather", "calculator"}), 90.0)
    for env, complaint in [
        ({"APPROVAL_REQUIRED_TOOLS": "save_note,teleport"}, "unknown tools: teleport"),
        ({"APPROVAL_TIMEOUT_S": "soon"}, "APPROVAL_TIMEOUT_S='soon' is not a number"),
        ({"APPROVAL_TIMEOUT_S": "0"}, "positive"),
    ]:
        with pytest.raises(ValueError, match=complaint):
            ApprovalPolicy.from_env(env, tools)
