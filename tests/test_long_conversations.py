"""A conversation that goes on for thousands of turns: the context budget keeps the state
bounded, and continue-as-new keeps each run's history small, with no message lost."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from conftest import say, start_session
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Replayer

from activities import AgentActivities
from contract import MAX_TOOL_RESULT_CHARS, SessionInput, truncated
from llm_client import LlmSettings, oldest_turns_over_budget
from toolbox import ApprovalPolicy
from worker import build_worker
from workflow import DurableAgentWorkflow


def _turn(n: int) -> list[dict]:
    """A tool turn in the provider format: question, tool call, result, answer."""
    return [
        {"role": "user", "content": f"question {n}"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": f"c{n}"}]},
        {"role": "tool", "tool_call_id": f"c{n}", "content": f"result {n}"},
        {"role": "assistant", "content": f"answer {n}"},
    ]


def _ten_tokens(message: dict) -> int:
    return 10


def test_budget_keeps_the_newest_whole_turns_that_fit():
    messages = _turn(1) + _turn(2) + _turn(3)  # 40 tokens per turn

    assert oldest_turns_over_budget(messages, 120, _ten_tokens) == 0
    assert oldest_turns_over_budget(messages, 119, _ten_tokens) == 4  # turn 1 goes whole
    assert oldest_turns_over_budget(messages, 80, _ten_tokens) == 4
    assert oldest_turns_over_budget(messages, 79, _ten_tokens) == 8


def test_budget_never_drops_the_latest_user_message_even_when_it_alone_is_too_big():
    messages = [*_turn(1), {"role": "user", "content": "a very long question"}]

    assert oldest_turns_over_budget(messages, 5, _ten_tokens) == 4


def test_budget_never_separates_a_tool_call_from_its_result():
    messages = _turn(1) + _turn(2) + [{"role": "user", "content": "latest"}]
    for budget in range(0, 100):
        kept = messages[oldest_turns_over_budget(messages, budget, _ten_tokens) :]
        assert kept[0]["role"] == "user"
        call_ids = {c["id"] for m in kept for c in m.get("tool_calls", [])}
        result_ids = {m["tool_call_id"] for m in kept if m["role"] == "tool"}
        assert call_ids == result_ids


def test_budget_is_respected_whenever_the_latest_turn_fits():
    messages = _turn(1) + _turn(2) + _turn(3)
    for budget in range(40, 130):
        kept = messages[oldest_turns_over_budget(messages, budget, _ten_tokens) :]
        assert 10 * len(kept) <= budget


def test_oversized_tool_result_is_truncated_with_a_marker_the_model_sees():
    result = truncated("x" * (MAX_TOOL_RESULT_CHARS + 500))

    assert result.startswith("x" * MAX_TOOL_RESULT_CHARS)
    assert result.endswith("[truncated: 500 more characters not shown]")
    assert truncated("short") == "short"


async def _runs(client: Client, handle: WorkflowHandle) -> list[str]:
    return [
        execution.run_id async for execution in client.list_workflows(f"WorkflowId = '{handle.id}'")
    ]


async def test_long_conversation_continues_as_new_and_loses_no_message(
    client: Client, task_queue: str, notes_file: Path
):
    activities = AgentActivities(LlmSettings(context_tokens=1_000), notes_file)
    small_runs = SessionInput(continue_as_new_after_events=60)
    questions = [f"What is {n} + 1000?" for n in range(1, 31)]
    burst = [f"What is {n} * 2?" for n in range(31, 46)]
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        handle = await start_session(client, task_queue, small_runs)
        for n, question in enumerate(questions, start=1):
            assert await say(handle, question) == f"{n} + 1000 = {n + 1000}"
        after_questions = await handle.query(DurableAgentWorkflow.conversation)
        # Queued messages, and messages sent during a switch, are answered too.
        replies = await asyncio.gather(*(say(handle, text) for text in burst))
        after_burst = await handle.query(DurableAgentWorkflow.conversation)

    assert replies == [f"{n} * 2 = {n * 2}" for n in range(31, 46)]
    assert len(await _runs(client, handle)) >= 3, "expected several continue-as-new runs"
    # Every tool turn is 4 messages: those held plus those counted as earlier add up,
    # and the held ones are the newest, in order.
    assert after_questions.earlier_messages + len(after_questions.messages) == 4 * 30
    assert after_questions.earlier_messages > 0
    held = [m.content for m in after_questions.messages if m.role == "user"]
    assert held == questions[-len(held) :]
    assert after_burst.earlier_messages + len(after_burst.messages) == 4 * 45
    held = [m.content for m in after_burst.messages if m.role == "user"]
    assert len(set(held)) == len(held) and set(held) <= set(burst)


async def test_every_message_is_answered_exactly_once_across_runs(
    client: Client, task_queue: str, notes_file: Path
):
    no_approvals = ApprovalPolicy(frozenset())  # Notes save at once, as with a trusted user.
    activities = AgentActivities(
        LlmSettings(context_tokens=300), notes_file, approvals=no_approvals
    )
    async with build_worker(client, task_queue, activities):
        handle = await start_session(
            client, task_queue, SessionInput(continue_as_new_after_events=40)
        )
        texts = [f"note: item {n}" for n in range(24)]
        for batch in range(0, 24, 6):
            await asyncio.gather(*(say(handle, t) for t in texts[batch : batch + 6]))

    notes = Counter(line for line in notes_file.read_text().splitlines())
    assert len(notes) == 24 and set(notes.values()) == {1}


async def test_history_with_continue_as_new_replays(
    client: Client, task_queue: str, notes_file: Path
):
    activities = AgentActivities(LlmSettings(context_tokens=300), notes_file)
    async with build_worker(client, task_queue, activities):
        handle = await start_session(
            client, task_queue, SessionInput(continue_as_new_after_events=30)
        )
        for n in range(8):
            await say(handle, f"What is {n} + 1?")

    first_run = client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id)
    history = await first_run.fetch_history()
    assert history.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    await Replayer(workflows=[DurableAgentWorkflow]).replay_workflow(history)
