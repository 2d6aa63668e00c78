"""The model delegates a task: a child workflow runs the same loop on it, with its own
history, and its answer comes back as the tool result."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import litellm
import pytest
from conftest import (
    AsksForTools,
    WorkerProcess,
    activity_running,
    activity_tasks,
    asks_for_tools,
    history_events,
    registered,
    run_id_is_not,
    say,
    scheduled_activities,
    start_session,
    until,
)
from litellm import CustomLLM, ModelResponse
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)

from activities import AgentActivities, Faults
from contract import SessionInput, Subagent
from llm_client import LlmSettings
from scripted_model import scripted_reply
from tools import demo_weather
from worker import build_worker
from workflow import DurableAgentWorkflow

SpawnWorker = Callable[..., Awaitable[WorkerProcess]]
TWO_TASKS = "delegate: What is 6 * 7?; delegate: What is the weather in Oslo?"
TWO_ANSWERS = f"6 * 7 = 42; {demo_weather('Oslo')}"


async def subagents_at_work(
    client: Client, handle: WorkflowHandle, text: str = "delegate: What is 6 * 7?"
) -> tuple[asyncio.Task[str], list[WorkflowHandle]]:
    """Send `text` and wait until each subagent it starts runs its tool; return the turn
    (its reply to come) and the subagents."""
    turn = asyncio.create_task(say(handle, text))

    async def started() -> list[Subagent]:
        subagents = await handle.query(DurableAgentWorkflow.subagents)
        return subagents if len(subagents) == text.count("delegate:") else []

    children = [client.get_workflow_handle(s.workflow_id) for s in await until(started)]
    for child in children:
        await until(lambda child=child: activity_running(child, "execute_tool"))
    return turn, children


async def status_of(client: Client, workflow_id: str) -> WorkflowExecutionStatus | None:
    return (await client.get_workflow_handle(workflow_id).describe()).status


async def activity_attempts(handle: WorkflowHandle) -> list[tuple[str, int]]:
    """Each activity the workflow scheduled, in order, with the attempt that completed it."""
    return [
        (scheduled.activity_type.name, started.attempt)
        for scheduled, started in await activity_tasks(handle)
    ]


async def plans_could_delegate(handle: WorkflowHandle) -> list[bool]:
    """For each model call of the workflow: did its PlanRequest offer `delegate`?"""
    return [
        json.loads(e.activity_task_scheduled_event_attributes.input.payloads[0].data)[
            "can_delegate"
        ]
        for e in await history_events(handle)
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "plan_next_action"
    ]


@pytest.fixture
def slow_tools(notes_file: Path) -> AgentActivities:
    """Tools that work 30 s (heartbeating) first: a subagent is caught mid-tool."""
    return AgentActivities(LlmSettings(), notes_file, Faults(tool_delay_s=30))


async def test_a_delegated_task_runs_as_a_child_workflow_whose_answer_is_the_reply(
    client: Client, session: WorkflowHandle
):
    reply = await say(session, "delegate: What is 6 * 7?")

    [subagent] = await session.query(DurableAgentWorkflow.subagents)
    child = client.get_workflow_handle_for(DurableAgentWorkflow.run, subagent.workflow_id)
    description = await child.describe()
    assert reply == "6 * 7 = 42"
    assert subagent.task == "What is 6 * 7?"
    assert subagent.workflow_id.startswith(f"{session.id}-delegate-")
    assert description.parent_id == session.id
    assert description.status == WorkflowExecutionStatus.COMPLETED
    # The child's model calls and tool are in its own history; the parent ran no tool.
    assert await scheduled_activities(child) == [
        "plan_next_action",
        "execute_tool",
        "plan_next_action",
    ]
    assert await scheduled_activities(session) == ["plan_next_action", "plan_next_action"]
    kinds = [e.event_type for e in await history_events(session)]
    assert EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED in kinds
    assert EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED in kinds
    transcript = await child.result()
    said = [(m.role, m.content) for m in transcript.messages if m.role != "tool" and m.content]
    assert said == [("user", "What is 6 * 7?"), ("assistant", "6 * 7 = 42")]


async def test_two_delegations_in_one_reply_run_as_concurrent_children(
    client: Client, task_queue: str, notes_file: Path
):
    # 0.3 s per model call: each child lives for at least 0.6 s, long enough to overlap.
    activities = AgentActivities(LlmSettings(scripted_latency_s=0.3), notes_file)
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        handle = await start_session(client, task_queue)
        reply = await say(handle, TWO_TASKS)
        subagents = await handle.query(DurableAgentWorkflow.subagents)

    assert reply == TWO_ANSWERS
    started, completed = (
        EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED,
        EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED,
    )
    children = [
        e.event_type for e in await history_events(handle) if e.event_type in (started, completed)
    ]
    assert children == [started, started, completed, completed]
    first, second = [await client.get_workflow_handle(s.workflow_id).describe() for s in subagents]
    assert first.start_time < second.close_time and second.start_time < first.close_time


class RefusesSubagents(CustomLLM):
    """The scripted model in a conversation; to every subagent, a provider that refuses."""

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        task = next(m["content"] for m in messages if m["role"] == "user")
        if not task.startswith("delegate:"):
            raise litellm.BadRequestError(message="no subagents", model=model, llm_provider="x")
        return ModelResponse(model=model, choices=[scripted_reply(messages)])


REFUSES_SUBAGENTS = registered("refuses", RefusesSubagents())


async def test_a_failing_subagent_is_a_tool_error_the_model_answers_from(
    client: Client, task_queue: str, notes_file: Path
):
    activities = AgentActivities(REFUSES_SUBAGENTS, notes_file)
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        handle = await start_session(client, task_queue)
        reply = await say(handle, "delegate: What is 6 * 7?")
        [subagent] = await handle.query(DurableAgentWorkflow.subagents)

        assert reply.startswith(
            f"The delegate tool failed. Error: subagent {subagent.workflow_id} failed: "
            "The model provider refused the request (BadRequestError)"
        )
        assert await status_of(client, subagent.workflow_id) == WorkflowExecutionStatus.FAILED
        assert await handle.query(DurableAgentWorkflow.status) == "idle"  # the chat goes on


async def test_a_subagent_past_its_execution_timeout_is_a_tool_error(
    client: Client, task_queue: str, notes_file: Path
):
    activities = AgentActivities(LlmSettings(scripted_latency_s=1.5), notes_file)
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        handle = await start_session(client, task_queue, SessionInput(subagent_timeout_s=1))
        reply = await say(handle, "delegate: What is 6 * 7?")
        [subagent] = await handle.query(DurableAgentWorkflow.subagents)

    assert reply == (
        f"The delegate tool failed. Error: subagent {subagent.workflow_id} "
        "did not finish within 1 s"
    )
    assert await status_of(client, subagent.workflow_id) == WorkflowExecutionStatus.TIMED_OUT


async def test_a_subagent_cancelled_on_its_own_is_a_tool_error_and_the_chat_goes_on(
    client: Client, task_queue: str, slow_tools: AgentActivities
):
    async with build_worker(client, task_queue, slow_tools, max_cached_workflows=0):
        handle = await start_session(client, task_queue)
        turn, [child] = await subagents_at_work(client, handle)

        await child.cancel()

        assert await turn == f"The delegate tool failed. Error: subagent {child.id} was cancelled"
        assert await status_of(client, child.id) == WorkflowExecutionStatus.CANCELED
        assert await handle.query(DurableAgentWorkflow.status) == "idle"


# The cancelled turn's caller is told by the server; the SDK warns about it in the worker.
@pytest.mark.filterwarnings("ignore::temporalio.workflow.UnfinishedUpdateHandlersWarning")
async def test_cancelling_the_parent_cancels_its_running_subagent(
    client: Client, task_queue: str, slow_tools: AgentActivities
):
    async with build_worker(client, task_queue, slow_tools, max_cached_workflows=0):
        handle = await start_session(client, task_queue)
        turn, [child] = await subagents_at_work(client, handle)

        await handle.cancel()

        with pytest.raises(WorkflowUpdateFailedError):  # the workflow ended first
            await turn
        assert await status_of(client, handle.id) == WorkflowExecutionStatus.CANCELED
        assert await status_of(client, child.id) == WorkflowExecutionStatus.CANCELED
    child_events = [e.event_type for e in await history_events(child)]
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED in child_events
    assert child_events[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED
    parent_events = [e.event_type for e in await history_events(handle)]
    assert EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_CANCELED in parent_events
    assert parent_events[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED


async def test_worker_killed_while_two_subagents_run_both_finish_and_nothing_runs_twice(
    client: Client, task_queue: str, spawn_worker: SpawnWorker
):
    slow = await spawn_worker(FAULT_TOOL_DELAY_S="60")
    handle = await start_session(client, task_queue)
    turn, children = await subagents_at_work(client, handle, TWO_TASKS)

    slow.kill()
    await spawn_worker()

    assert await turn == TWO_ANSWERS
    # Every model call ran once; only the tools the kill interrupted ran again (attempt 2).
    assert await activity_attempts(handle) == [("plan_next_action", 1), ("plan_next_action", 1)]
    for child in children:
        assert await activity_attempts(child) == [
            ("plan_next_action", 1),
            ("execute_tool", 2),
            ("plan_next_action", 1),
        ]


async def test_a_subagent_cannot_delegate_further_unless_configured(
    client: Client, task_queue: str, worker: object
):
    handle = await start_session(client, task_queue)
    reply = await say(handle, "delegate: delegate: What is 1 + 1?")

    [subagent] = await handle.query(DurableAgentWorkflow.subagents)
    child = client.get_workflow_handle(subagent.workflow_id)
    assert reply == "The delegate tool failed. Error: this agent may not delegate (depth limit 1)"
    assert await plans_could_delegate(handle) == [True, True]
    assert await plans_could_delegate(child) == [False, False]  # never offered to the model
    assert EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED not in [
        e.event_type for e in await history_events(child)
    ]

    deeper = await start_session(client, task_queue, SessionInput(max_delegation_depth=2))
    assert await say(deeper, "delegate: delegate: What is 1 + 1?") == "1 + 1 = 2"
    [middle] = await deeper.query(DurableAgentWorkflow.subagents)
    middle_handle = client.get_workflow_handle(middle.workflow_id)
    [bottom] = await middle_handle.query(DurableAgentWorkflow.subagents)
    assert (await client.get_workflow_handle(bottom.workflow_id).describe()).parent_id == (
        middle.workflow_id
    )
    assert await plans_could_delegate(middle_handle) == [True, True]


class DelegatesWithToolLists(CustomLLM):
    """Delegates two tasks, each naming the tools its subagent may use; a subagent is the
    scripted model. Notes the tools each request offered, by the task it serves."""

    def __init__(self) -> None:
        super().__init__()
        self.offered: dict[str, list[str]] = {}

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        task = next(m["content"] for m in messages if m["role"] == "user")
        tools = (kwargs.get("optional_params") or {}).get("tools") or []
        self.offered.setdefault(task, [tool["function"]["name"] for tool in tools])
        if task != "split it" or messages[-1]["role"] != "user":
            return ModelResponse(model=model, choices=[scripted_reply(messages)])
        asks = ["What is the weather in Oslo?", "What is 2 + 2?"]
        given = ["weather", "save_note"]
        calls = [("delegate", json.dumps({"task": ask, "tools": given})) for ask in asks]
        return asks_for_tools(model, calls)


DELEGATOR = DelegatesWithToolLists()
DELEGATES_WITH_TOOL_LISTS = registered("delegator", DELEGATOR)


async def test_a_subagent_gets_only_tools_its_parent_has_and_it_was_given(
    client: Client, task_queue: str, notes_file: Path
):
    DELEGATOR.offered.clear()
    activities = AgentActivities(DELEGATES_WITH_TOOL_LISTS, notes_file)
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        parent_tools = SessionInput(tools=["calculator", "weather"])
        handle = await start_session(client, task_queue, parent_tools)
        reply = await say(handle, "split it")
        weather, arithmetic = await handle.query(DurableAgentWorkflow.subagents)

    assert DELEGATOR.offered == {
        "split it": ["calculator", "weather", "delegate", "run_program", "end_chat"],
        # Not save_note, not delegate.
        "What is the weather in Oslo?": ["weather", "run_program", "end_chat"],
        "What is 2 + 2?": ["weather", "run_program", "end_chat"],
    }
    # The scripted model asks for the calculator anyway; the subagent does not run it.
    refused = "The calculator tool failed. Error: calculator is not one of this agent's tools"
    assert reply == f"{demo_weather('Oslo')} {refused}"
    assert await scheduled_activities(client.get_workflow_handle(arithmetic.workflow_id)) == [
        "plan_next_action",
        "plan_next_action",
    ]
    assert weather.task == "What is the weather in Oslo?"


# Three delegations the workflow must refuse: not JSON, no task, tools not a list.
MALFORMED = ['{"task": "x', '{"tools": ["weather"]}', '{"task": "x", "tools": "weather"}']
DELEGATES_BADLY = registered("malformed", AsksForTools([("delegate", a) for a in MALFORMED]))


async def test_malformed_delegations_are_tool_errors_and_start_no_subagent(
    client: Client, task_queue: str, notes_file: Path
):
    activities = AgentActivities(DELEGATES_BADLY, notes_file)
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        handle = await start_session(client, task_queue)
        reply = await say(handle, "delegate badly")

        assert reply.split(" | ") == [
            "Error: the arguments are not valid JSON (Unterminated string starting at)",
            "Error: the task must be a text of 1 to 8000 characters",
            "Error: tools must be a list of tool names",
        ]
        assert await handle.query(DurableAgentWorkflow.subagents) == []


async def test_no_continue_as_new_while_a_subagent_runs(
    client: Client, task_queue: str, notes_file: Path
):
    tools_take_3_s = AgentActivities(LlmSettings(), notes_file, Faults(tool_delay_s=3))
    async with build_worker(client, task_queue, tools_take_3_s, max_cached_workflows=0):
        handle = await start_session(
            client, task_queue, SessionInput(continue_as_new_after_events=10)
        )
        first_run = (await handle.describe()).run_id
        turn, [child] = await subagents_at_work(client, handle)

        description = await handle.describe()
        assert description.history_length > 10  # over the threshold, yet the same run waits
        assert description.run_id == first_run

        assert await turn == "6 * 7 = 42"
        await until(lambda: run_id_is_not(handle, first_run))  # then it hands over
        assert (await child.describe()).status == WorkflowExecutionStatus.COMPLETED
