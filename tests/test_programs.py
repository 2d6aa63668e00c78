"""The model writes a program: the workflow runs it, and each tool call the program makes
is the activity (or approval, or child workflow) a direct call would be, in the history."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    WorkerProcess,
    activity_running,
    approvals_waiting,
    decide,
    history_events,
    say,
    scheduled_activities,
    start_session,
    until,
)
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from test_approval import saved_notes
from test_stream_events import events_of, send

import program
from activities import AgentActivities, Faults
from contract import SessionInput
from llm_client import LlmSettings
from scripted_model import scripted_reply, warmest_three, weather_program
from tools import demo_weather
from worker import build_worker

SpawnWorker = Callable[..., Awaitable[WorkerProcess]]
THREE_CITIES = "What is the weather in Oslo, Rome and Paris?"
MANY_CITIES = ["Oslo", "Rome", "Paris", "Lima", "Cairo", "Tokyo", "Delhi", "Quito"]
THREE_REPORTS = " ".join(demo_weather(city) for city in ("Oslo", "Rome", "Paris"))


async def tool_calls_run(handle: WorkflowHandle) -> list[tuple[str, str, str]]:
    """Each `execute_tool` the workflow scheduled, in order: (call id, tool, arguments)."""
    calls = []
    for event in await history_events(handle):
        scheduled = event.activity_task_scheduled_event_attributes
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED and (
            scheduled.activity_type.name == "execute_tool"
        ):
            call = json.loads(scheduled.input.payloads[0].data)
            calls.append((call["id"], call["name"], call["arguments"]))
    return calls


@pytest.fixture
def slow_tools(notes_file: Path) -> AgentActivities:
    """Tools that work 0.5 s first: long enough to see calls overlap, or not."""
    return AgentActivities(LlmSettings(), notes_file, Faults(tool_delay_s=0.5))


async def test_a_loop_in_a_program_runs_each_call_as_its_own_execute_tool_activity(
    session: WorkflowHandle,
):
    program = 'for city in ["Oslo", "Rome", "Paris"]:\n    print(weather(city=city))'

    reply = await say(session, f"program: {program}")

    assert reply == "\n".join(demo_weather(city) for city in ("Oslo", "Rome", "Paris"))
    assert await scheduled_activities(session) == [
        "plan_next_action",
        *["execute_tool"] * 3,  # no activity for the program itself: the workflow ran it
        "plan_next_action",
    ]
    assert await tool_calls_run(session) == [
        ("call_2_0-1", "weather", '{"city": "Oslo"}'),
        ("call_2_0-2", "weather", '{"city": "Rome"}'),
        ("call_2_0-3", "weather", '{"city": "Paris"}'),
    ]


async def test_the_weather_in_three_places_is_one_program_whose_calls_overlap(
    client: Client, task_queue: str, slow_tools: AgentActivities
):
    async with build_worker(client, task_queue, slow_tools, max_cached_workflows=0):
        handle = await start_session(client, task_queue)
        reply = await say(handle, THREE_CITIES)

    events = await history_events(handle)
    scheduled = {
        e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    }
    times: dict[str, list[float]] = {"started": [], "completed": []}
    for e in events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attributes, kind = e.activity_task_started_event_attributes, "started"
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attributes, kind = e.activity_task_completed_event_attributes, "completed"
        else:
            continue
        if scheduled[attributes.scheduled_event_id] == "execute_tool":
            times[kind].append(e.event_time.ToDatetime().timestamp())
    assert reply == THREE_REPORTS  # what the separate calls give, from two model calls
    assert list(scheduled.values()) == [
        "plan_next_action",
        *["execute_tool"] * 3,
        "plan_next_action",
    ]
    assert max(times["started"]) < min(times["completed"])  # all three ran at once


@pytest.mark.parametrize(
    ("ask", "offered", "calls"),
    [
        (THREE_CITIES, ["weather", "run_program"], [("run_program", ["Oslo", "Rome", "Paris"])]),
        (
            THREE_CITIES,
            ["weather"],
            [("weather", "Oslo"), ("weather", "Rome"), ("weather", "Paris")],
        ),
        (
            "weather in Oslo and Rome",
            ["weather", "run_program"],
            [("weather", "Oslo"), ("weather", "Rome")],
        ),
    ],
)
def test_the_scripted_model_writes_a_program_for_many_places_only_when_it_is_offered(
    ask: str, offered: list[str], calls: list[tuple[str, object]]
):
    choice = scripted_reply([{"role": "user", "content": ask}], offered)

    asked = [
        (call["function"]["name"], json.loads(call["function"]["arguments"]))
        for call in choice["message"]["tool_calls"]
    ]
    expected = [
        (name, {"source": weather_program(what)} if name == "run_program" else {"city": what})
        for name, what in calls
    ]
    assert asked == expected


async def scripted_turn(ask: str, offered: list[str]) -> tuple[int, str]:
    """A turn of the scripted model, its calls answered by the demo weather tool and its
    programs run by the interpreter: (model calls, reply)."""

    async def weather(name: str, arguments: dict[str, object]) -> str:
        return demo_weather(str(arguments["city"]))

    messages: list[dict[str, Any]] = [{"role": "user", "content": ask}]
    for model_calls in range(1, 30):
        message = scripted_reply(messages, offered)["message"]
        messages.append(message)
        if not message.get("tool_calls"):
            return model_calls, message["content"]
        for call in message["tool_calls"]:
            arguments = json.loads(call["function"]["arguments"])
            if call["function"]["name"] == "run_program":
                content = await program.run(arguments["source"], ["weather"], weather)
            else:
                content = await weather("weather", arguments)
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": content})
    raise AssertionError("the scripted model never answered")


@pytest.mark.parametrize("count", [4, 16])
async def test_the_warmest_three_comes_out_the_same_one_call_a_reply_at_once_or_by_program(
    count: int,
):
    cities = (MANY_CITIES + [f"New {city}" for city in MANY_CITIES])[:count]
    temperatures = [(int(demo_weather(c).split(": ")[1].split("°")[0]), c) for c in cities]
    places = f"{', '.join(cities[:-1])} and {cities[-1]}"
    offered = ["weather", "run_program"]

    one_by_one = await scripted_turn(f"The warmest three of {places} one at a time.", offered)
    at_once = await scripted_turn(f"what are the warmest three of {places}, at once", offered)
    by_program = await scripted_turn(f"Warmest three of {places} by program", offered)

    answer = warmest_three(temperatures)
    assert answer.startswith("The warmest three: ") and answer.count("°C") == 3
    assert one_by_one == (count + 1, answer)  # a model call per city, and the answer
    assert at_once == by_program == (2, answer)
    hottest = max(temperatures)
    assert answer.startswith(f"The warmest three: {hottest[1]} {hottest[0]}°C")


async def test_with_programs_turned_off_the_model_calls_the_tools_one_by_one(
    client: Client, task_queue: str, worker: object
):
    handle = await start_session(client, task_queue, SessionInput(allow_programs=False))

    assert await say(handle, THREE_CITIES) == THREE_REPORTS
    refused = await say(handle, 'program: weather(city="Oslo")')

    assert (
        refused
        == "The run_program tool failed. Error: run_program is not offered in this conversation"
    )
    assert [name for _, name, _ in await tool_calls_run(handle)] == ["weather"] * 3
    plans = [
        json.loads(e.activity_task_scheduled_event_attributes.input.payloads[0].data)
        for e in await history_events(handle)
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "plan_next_action"
    ]
    assert [plan["can_run_programs"] for plan in plans] == [False] * 4


async def test_a_gated_call_inside_a_program_waits_for_approval_then_runs_once(
    session: WorkflowHandle, notes_file: Path
):
    turn = asyncio.create_task(
        say(session, 'program: saved = save_note(text="buy milk")\nf"{saved}!"')
    )
    [waiting] = await approvals_waiting(session)
    waited_without_running = await tool_calls_run(session) == []

    await decide(session, waiting.call_id, approved=True)

    assert await turn == "Saved your note: buy milk!"
    assert (waiting.call_id, waiting.tool, waiting.arguments) == (
        "call_2_0-1",
        "save_note",
        '{"text": "buy milk"}',
    )
    assert waited_without_running
    assert await tool_calls_run(session) == [("call_2_0-1", "save_note", '{"text": "buy milk"}')]
    assert saved_notes(notes_file) == ["buy milk"]


async def test_a_denied_call_inside_a_program_stops_it_and_the_model_reads_why(
    session: WorkflowHandle, notes_file: Path
):
    turn = asyncio.create_task(
        say(session, 'program: save_note(text="one")\nsave_note(text="two")')
    )
    [waiting] = await approvals_waiting(session)

    await decide(session, waiting.call_id, approved=False, reason="not now")

    assert await turn == (
        "The run_program tool failed. Error: line 1: save_note was not run: "
        "the user denied it (not now)."
    )
    assert await tool_calls_run(session) == []  # neither note: the program stopped at line 1
    assert saved_notes(notes_file) == []


async def test_a_denial_inside_parallel_cancels_the_sibling_call_in_flight(
    client: Client, task_queue: str, notes_file: Path
):
    activities = AgentActivities(LlmSettings(), notes_file, Faults(tool_delay_s=30))
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        handle = await start_session(client, task_queue)
        program = 'parallel(weather(city="Oslo"), save_note(text="later"))'
        turn = asyncio.create_task(say(handle, f"program: {program}"))
        [waiting] = await approvals_waiting(handle)
        await until(lambda: activity_running(handle, "execute_tool"))

        await decide(handle, waiting.call_id, approved=False)
        reply = await turn  # at once, not after the weather's 30 s

    assert reply == (
        "The run_program tool failed. Error: line 1: save_note was not run: "
        "the user denied it (no reason given)."
    )
    kinds = [e.event_type for e in await history_events(handle)]
    assert kinds.count(EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED) == 1
    assert await tool_calls_run(handle) == [("call_2_0-1", "weather", '{"city": "Oslo"}')]


async def test_each_call_of_a_program_is_on_the_stream_between_the_program_s_own_events(
    client: Client, session: WorkflowHandle
):
    turn, reply = send(session, THREE_CITIES)
    events = await events_of(client, session, turn)

    tools = [
        (e.data["call_id"], e.data["name"], e.data["state"], e.data["outcome"])
        for e in events
        if e.topic == "tool"
    ]
    assert await reply == THREE_REPORTS
    assert tools[0] == ("call_2_0", "run_program", "started", "")
    assert tools[-1] == ("call_2_0", "run_program", "finished", "ok")
    assert sorted(tools[1:-1]) == sorted(
        (f"call_2_0-{n}", "weather", state, outcome)
        for n in (1, 2, 3)
        for state, outcome in (("started", ""), ("finished", "ok"))
    )


async def test_worker_killed_mid_program_resumes_without_repeating_completed_calls(
    client: Client, task_queue: str, notes_file: Path, spawn_worker: SpawnWorker
):
    slow = await spawn_worker(FAULT_TOOL_DELAY_S="2", APPROVAL_REQUIRED_TOOLS="")
    handle = await start_session(client, task_queue)
    program = 'for text in ["one", "two", "three"]:\n    save_note(text=text)\n"all saved"'
    turn = asyncio.create_task(say(handle, f"program: {program}"))

    async def second_call_running() -> bool:
        return len(await tool_calls_run(handle)) == 2 and await activity_running(
            handle, "execute_tool"
        )

    await until(second_call_running)
    slow.kill()
    await spawn_worker(APPROVAL_REQUIRED_TOOLS="")

    assert await turn == "all saved"
    assert saved_notes(notes_file) == ["one", "two", "three"]
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in await history_events(handle)
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    # The plan and the first note completed before the kill and were not run again; the
    # second note's attempt died with the worker, and its second attempt completed.
    assert await scheduled_activities(handle) == [
        "plan_next_action",
        *["execute_tool"] * 3,
        "plan_next_action",
    ]
    assert attempts == [1, 1, 2, 1, 1]


# The cancelled turn's caller is told by the server; the SDK warns about it in the worker.
@pytest.mark.filterwarnings("ignore::temporalio.workflow.UnfinishedUpdateHandlersWarning")
async def test_cancelling_the_conversation_cancels_the_calls_a_program_has_in_flight(
    client: Client, task_queue: str, notes_file: Path
):
    activities = AgentActivities(LlmSettings(), notes_file, Faults(tool_delay_s=30))
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        handle = await start_session(client, task_queue)
        turn = asyncio.create_task(
            say(handle, 'program: parallel(weather(city="Oslo"), weather(city="Rome"))')
        )

        async def both_running() -> bool:
            description = await handle.describe()
            return len(description.raw_description.pending_activities) == 2

        await until(both_running)
        await handle.cancel()

        with pytest.raises(WorkflowUpdateFailedError):  # the workflow ended first
            await turn
        assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    kinds = [e.event_type for e in await history_events(handle)]
    assert kinds.count(EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED) == 2
    assert kinds[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED


@pytest.mark.parametrize(
    ("program", "error"),
    [
        ("2 ** 10 ** 10", "line 1: the power would have more than 100 digits"),
        ("x = ().__class__", "line 1: no attribute __class__ here"),
        ("xs = [1]\nfor x in xs:\n    xs.append(x)", "line 2: the program ran more than 10000"),
        ("x = 1\nfor i in range(3)\n    x += i", "line 2: syntax error: expected ':'"),
    ],
)
async def test_a_hostile_or_broken_program_is_a_tool_error_and_the_worker_carries_on(
    session: WorkflowHandle, program: str, error: str
):
    reply = await say(session, f"program: {program}")

    assert reply.startswith(f"The run_program tool failed. Error: {error}")
    assert await say(session, "What is 2 + 2?") == "2 + 2 = 4"
    assert await scheduled_activities(session) == [
        "plan_next_action",
        "plan_next_action",  # the program ran no tool
        "plan_next_action",
        "execute_tool",
        "plan_next_action",
    ]
