"""A client watches a turn on the conversation's event stream: the reply as it is written,
each tool call, each approval, the turn's end; across a retry, a worker crash, a reconnect
and continue-as-new. The reply the update returns stays the truth."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from conftest import WorkerProcess, approvals_waiting, decide, start_session, until
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.workflow_streams import WorkflowStreamClient, WorkflowStreamItem

from activities import AgentActivities, Faults
from contract import SessionInput
from llm_client import LlmSettings
from worker import build_worker
from workflow import DurableAgentWorkflow

TOPICS = ["delta", "retry", "tool", "approval", "turn"]


def send(handle: WorkflowHandle, text: str) -> tuple[str, asyncio.Task[str]]:
    """Send a message that asks for streaming; return its turn id and its reply."""
    turn = str(uuid.uuid4())
    reply = handle.execute_update(DurableAgentWorkflow.send_message, args=[text, True], id=turn)
    return turn, asyncio.ensure_future(reply)


async def events_of(
    client: Client, handle: WorkflowHandle, turn: str, from_offset: int = 0
) -> list[WorkflowStreamItem]:
    """Every event of the turn, in order, up to and including its `turn` event."""
    seen = []
    stream = WorkflowStreamClient.create(client, handle.id)
    async for item in stream.subscribe(TOPICS, from_offset=from_offset):
        if item.data["turn"] == turn:
            seen.append(item)
            if item.topic == "turn":
                return seen
    raise AssertionError("the stream ended before the turn did")


def text_of(events: list[WorkflowStreamItem], step: int) -> str:
    return "".join(e.data["text"] for e in events if e.topic == "delta" and e.data["step"] == step)


async def test_the_reply_streams_in_pieces_that_add_up_to_the_reply(
    client: Client, task_queue: str, notes_file: Path
):
    slow = AgentActivities(LlmSettings(scripted_latency_s=0.3), notes_file)
    async with build_worker(client, task_queue, slow, max_cached_workflows=0):
        handle = await start_session(client, task_queue)
        turn, reply = send(handle, "hello")
        events = await events_of(client, handle, turn)

    deltas = [e for e in events if e.topic == "delta"]
    assert len(deltas) > 3  # it arrived in pieces, not at once
    assert text_of(events, step=0) == await reply
    assert events[-1].topic == "turn" and events[-1].data["reply"] == await reply


async def test_a_tool_turn_streams_tool_events_then_the_final_text(
    client: Client, task_queue: str, worker: object
):
    handle = await start_session(client, task_queue)
    turn, reply = send(handle, "What is 25 * 4?")
    events = await events_of(client, handle, turn)

    tools = [
        (e.data["name"], e.data["state"], e.data["outcome"]) for e in events if e.topic == "tool"
    ]
    assert tools == [("calculator", "started", ""), ("calculator", "finished", "ok")]
    assert text_of(events, step=1) == await reply == "25 * 4 = 100"
    assert [e.topic for e in events][-1] == "turn"


async def test_approval_requests_and_decisions_are_published(session: WorkflowHandle, client):
    turn, reply = send(session, "note: stream me")
    [waiting] = await approvals_waiting(session)
    await decide(session, waiting.call_id, approved=False, reason="no")
    await reply
    events = await events_of(client, session, turn)

    approvals = [(e.data["state"], e.data["tool"]) for e in events if e.topic == "approval"]
    assert approvals == [("requested", "save_note"), ("denied", "save_note")]
    tools = [(e.data["state"], e.data["outcome"]) for e in events if e.topic == "tool"]
    assert tools == [("finished", "not run")]


async def test_a_retried_model_call_says_so_and_the_new_attempt_streams_the_whole_text(
    client: Client, task_queue: str, notes_file: Path
):
    flaky = AgentActivities(LlmSettings(), notes_file, Faults(llm_failures=1))
    async with build_worker(client, task_queue, flaky, max_cached_workflows=0):
        handle = await start_session(client, task_queue)
        turn, reply = send(handle, "hello")
        events = await events_of(client, handle, turn)

    assert [e.topic for e in events if e.topic != "delta"] == ["retry", "turn"]
    assert events[0].data["attempt"] == 2
    assert text_of(events, step=0) == await reply


async def test_worker_killed_mid_stream_the_watcher_sees_retry_then_the_full_text_once(
    client: Client, task_queue: str, spawn_worker: Callable[..., Awaitable[WorkerProcess]]
):
    slow = await spawn_worker(SCRIPTED_LATENCY_MS="6000")
    handle = await start_session(client, task_queue)
    turn, reply = send(handle, "hello")
    watched = asyncio.ensure_future(events_of(client, handle, turn))
    stream = WorkflowStreamClient.create(client, handle.id)
    await until(lambda: stream.get_offset(), timeout_s=30)  # the first pieces are out

    slow.kill()
    await spawn_worker()
    events = await asyncio.wait_for(watched, 60)

    retry = next(i for i, e in enumerate(events) if e.topic == "retry")
    before, after = events[:retry], events[retry + 1 :]
    assert text_of(before, step=0)  # part of the first attempt's text had streamed
    assert text_of(after, step=0) == await reply  # the new attempt streams all of it
    assert [e.topic for e in events].count("turn") == 1


async def test_a_watcher_that_reconnects_from_its_offset_sees_no_event_twice(
    client: Client, task_queue: str, notes_file: Path
):
    slow = AgentActivities(LlmSettings(scripted_latency_s=0.5), notes_file)
    async with build_worker(client, task_queue, slow):
        handle = await start_session(client, task_queue)
        turn, reply = send(handle, "hello")
        first: list[WorkflowStreamItem] = []
        stream = WorkflowStreamClient.create(client, handle.id)
        async for item in stream.subscribe(TOPICS, from_offset=0):
            first.append(item)
            if len(first) == 3:
                break  # Ctrl-C
        rest = await events_of(client, handle, turn, from_offset=first[-1].offset + 1)

    offsets = [e.offset for e in first + rest]
    assert offsets == sorted(set(offsets))
    assert text_of(first + rest, step=0) == await reply


async def test_the_stream_keeps_only_the_last_turn_and_survives_continue_as_new(
    client: Client, task_queue: str, worker: object
):
    handle = await start_session(client, task_queue, SessionInput(continue_as_new_after_events=60))
    first_run = (await handle.describe()).run_id
    for n in range(6):
        turn, reply = send(handle, f"What is {n} + 1?")
        events = await events_of(client, handle, turn)
        assert events[-1].data["reply"] == await reply == f"{n} + 1 = {n + 1}"

    assert (await handle.describe()).run_id != first_run
    stream = WorkflowStreamClient.create(client, handle.id)
    end = await stream.get_offset()
    retained = []
    async for item in stream.subscribe(TOPICS, from_offset=0):
        retained.append(item)
        if item.offset == end - 1:
            break
    assert retained[0].offset > 0  # earlier turns' events were dropped...
    assert len({e.data["turn"] for e in retained}) <= 2  # ...all but the last two turns'
    assert retained[-1].data == {"turn": turn, "reply": "5 + 1 = 6", "error": ""}
