"""What a conversation spends, the budget that stops it, and the fallback model that answers
when the provider fails: usage in every plan, totals in the `usage` query, subagents'
usage signalled to their parent, limits checked before each model call."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import litellm
import pytest
from conftest import (
    history_events,
    registered,
    run_id_is_not,
    say,
    scheduled_activities,
    start_session,
    until,
)
from litellm import CustomLLM, ModelResponse
from openai_server import USAGE, OpenAIServer, failure
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)

import llm_client
from activities import AgentActivities
from budget import shares
from contract import Budget, Message, Plan, SessionInput, TurnUsage, Usage
from llm_client import LlmSettings
from scripted_model import scripted_reply
from worker import build_worker, configured_activities
from workflow import DurableAgentWorkflow

PRICED = "openai/gpt-4o-mini"
"""A model in LiteLLM's price list, served here by the local server."""


def priced(prompt_tokens: int, completion_tokens: int) -> float:
    return sum(litellm.cost_per_token(PRICED, prompt_tokens, completion_tokens))


ONE_CALL = priced(USAGE["prompt_tokens"], USAGE["completion_tokens"])
ONE_CALL_TOKENS = USAGE["prompt_tokens"] + USAGE["completion_tokens"]


async def plans_of(client: Client, handle: WorkflowHandle) -> list[Plan]:
    """Every Plan the workflow's history records, in order, decoded as the worker does."""
    events = await history_events(handle)
    plans = {
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "plan_next_action"
    }
    found = []
    for e in events:
        done = e.activity_task_completed_event_attributes
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED and (
            done.scheduled_event_id in plans
        ):
            [plan] = await client.data_converter.decode(done.result.payloads, [Plan])
            found.append(plan)
    return found


def total(usages: list[Usage]) -> Usage:
    return sum(usages, Usage())


async def send(handle: WorkflowHandle, text: str) -> tuple[str, str]:
    """Send a message; its reply and its turn's id."""
    turn = str(uuid.uuid4())
    reply = await handle.execute_update(DurableAgentWorkflow.send_message, text, id=turn)
    return reply, turn


async def usage_signals(handle: WorkflowHandle) -> int:
    return sum(
        e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        and e.workflow_execution_signaled_event_attributes.signal_name == "subagent_usage"
        for e in await history_events(handle)
    )


# --- Usage ------------------------------------------------------------------------------


async def test_usage_adds_up_over_turns_with_counted_tokens_and_no_cost(
    client: Client, session: WorkflowHandle
):
    for text in ["What is 25 * 4?", "hello"]:
        await say(session, text)
    reply, turn = await send(session, "weather in Paris")

    report = await session.query(DurableAgentWorkflow.usage)
    plans = await plans_of(client, session)
    assert "Paris" in reply
    assert report.conversation == total([plan.usage for plan in plans])
    assert report.conversation.model_calls == 5
    assert report.conversation.input_tokens > 0 and report.conversation.output_tokens > 0
    assert report.conversation.cost_usd == 0.0  # the scripted model is free
    assert report.last_turn == TurnUsage(turn, total([plan.usage for plan in plans[-2:]]))
    assert {plan.model for plan in plans} == {"scripted/agent"}
    assert report.budget == Budget()  # no limit unless asked


async def test_usage_is_carried_across_continue_as_new(client: Client, task_queue: str, worker):
    handle = await start_session(client, task_queue, SessionInput(continue_as_new_after_events=30))
    first_run = (await handle.describe()).run_id
    for n in range(6):
        await say(handle, f"What is {n} + 1?")
    await until(lambda: run_id_is_not(handle, first_run))

    runs = [
        client.get_workflow_handle(handle.id, run_id=run.run_id)
        async for run in client.list_workflows(f"WorkflowId = '{handle.id}'")
    ]
    every_plan = [plan for run in runs for plan in await plans_of(client, run)]
    report = await handle.query(DurableAgentWorkflow.usage)
    assert len(runs) > 1
    assert report.conversation.model_calls == 12
    assert report.conversation == total([plan.usage for plan in every_plan])


async def test_a_subagents_usage_is_rolled_into_its_parents(
    client: Client, session: WorkflowHandle
):
    reply, _ = await send(session, "delegate: What is 6 * 7?")

    [subagent] = await session.query(DurableAgentWorkflow.subagents)
    child = client.get_workflow_handle(subagent.workflow_id)
    own, childs = await plans_of(client, session), await plans_of(client, child)
    report = await session.query(DurableAgentWorkflow.usage)
    assert reply == "6 * 7 = 42"
    assert (len(own), len(childs)) == (2, 2)
    assert report.conversation == total([plan.usage for plan in own + childs])
    assert report.last_turn.usage.model_calls == 4
    assert await usage_signals(session) == 2  # one per model call of the subagent


class SubagentsThatEndBadly(CustomLLM):
    """The scripted model, except for a subagent's second call: for a task starting
    "fail", the provider refuses it; for "hang", it answers too late."""

    async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
        task = next(m["content"] for m in messages if m["role"] == "user")
        if not task.startswith("delegate:") and messages[-1]["role"] == "tool":
            if task.startswith("fail"):
                raise litellm.BadRequestError(message="refused", model=model, llm_provider="x")
            await asyncio.sleep(6)
        return ModelResponse(model=model, choices=[scripted_reply(messages)])


ENDS_BADLY = registered("ends-badly", SubagentsThatEndBadly())


async def test_failed_and_timed_out_subagents_usage_still_counts(
    client: Client, task_queue: str, notes_file: Path
):
    activities = AgentActivities(ENDS_BADLY, notes_file)
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        handle = await start_session(client, task_queue, SessionInput(subagent_timeout_s=4))
        reply = await say(handle, "delegate: fail: What is 1 + 1?; delegate: hang: What is 2 + 2?")
        failed, hung = await handle.query(DurableAgentWorkflow.subagents)
        report = await handle.query(DurableAgentWorkflow.usage)

    statuses = [
        (await client.get_workflow_handle(s.workflow_id).describe()).status for s in (failed, hung)
    ]
    assert statuses == [WorkflowExecutionStatus.FAILED, WorkflowExecutionStatus.TIMED_OUT]
    assert reply.count("The delegate tool failed.") == 2
    # Two calls of its own, and the one call each subagent made before it ended.
    assert report.conversation.model_calls == 4
    assert await usage_signals(handle) == 2


# --- Cost: LiteLLM's price list ------------------------------------------------------------


@pytest.fixture
def http_settings(openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> LlmSettings:
    """A model LiteLLM has a price for, served by the local server."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-1234567890")
    return LlmSettings(model=PRICED, api_base=openai_server.url, timeout_s=2)


@pytest.fixture
async def priced_chat(
    client: Client, task_queue: str, notes_file: Path, http_settings: LlmSettings
) -> AsyncIterator[WorkflowHandle]:
    activities = AgentActivities(http_settings, notes_file)
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        yield await start_session(client, task_queue)


async def test_a_priced_model_costs_what_litellms_price_list_says(priced_chat: WorkflowHandle):
    await say(priced_chat, "What is 25 * 4?")

    report = await priced_chat.query(DurableAgentWorkflow.usage)
    assert report.conversation.model_calls == 2
    assert report.conversation.input_tokens == 2 * USAGE["prompt_tokens"]  # as reported
    assert report.conversation.cost_usd == pytest.approx(2 * ONE_CALL)
    assert ONE_CALL > 0


async def test_a_model_without_a_price_has_an_unknown_cost(http_settings: LlmSettings):
    unpriced = LlmSettings(model="openai/test-model", api_base=http_settings.api_base)

    plan = await llm_client.plan(unpriced, [Message("user", "hello")], [])

    assert plan.usage == Usage(1, USAGE["prompt_tokens"], USAGE["completion_tokens"], 0, None)
    assert plan.model == "openai/test-model"


# --- Budgets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "reached"),
    [
        (Budget(model_calls=1), "1 model call (used: 1)"),
        (Budget(tokens=ONE_CALL_TOKENS), f"{ONE_CALL_TOKENS} tokens (used: {ONE_CALL_TOKENS})"),
        (Budget(cost_usd=ONE_CALL / 2), f"${ONE_CALL / 2:.6f} (used: ${ONE_CALL:.6f})"),
    ],
    ids=["model-calls", "tokens", "cost"],
)
async def test_each_budget_stops_the_next_model_call_and_the_chat_goes_on_once_raised(
    priced_chat: WorkflowHandle, budget: Budget, reached: str
):
    await priced_chat.execute_update(DurableAgentWorkflow.set_budget, budget)

    stopped = await say(priced_chat, "What is 25 * 4?")  # the first call asks for the tool
    refused = await say(priced_chat, "What is 25 * 4?")
    after_stop = await scheduled_activities(priced_chat)
    await priced_chat.execute_update(DurableAgentWorkflow.set_budget, Budget())
    answered = await say(priced_chat, "What is 25 * 4?")

    assert stopped == (
        "I stopped before the next model call: this conversation has reached its budget of "
        f"{reached}. To go on, raise the limit (uv run start_workflow.py --session "
        f"{priced_chat.id} --budget calls=N,tokens=N,cost=USD, or none for no limit) and "
        "send your message again."
    )
    assert refused == stopped  # no call at all this time: nothing more spent
    assert after_stop == ["plan_next_action", "execute_tool"]  # the tool ran; no model after
    assert answered == "25 * 4 = 100"
    transcript = await priced_chat.query(DurableAgentWorkflow.conversation)
    assert [m.content for m in transcript.messages if m.role == "assistant"][-4:-2] == [
        stopped,
        refused,
    ]


async def test_a_cost_limit_cannot_hold_for_a_model_without_a_price(
    client: Client, task_queue: str, notes_file: Path, http_settings: LlmSettings
):
    unpriced = LlmSettings(model="openai/test-model", api_base=http_settings.api_base)
    async with build_worker(client, task_queue, AgentActivities(unpriced, notes_file)):
        handle = await start_session(client, task_queue, SessionInput(budget=Budget(cost_usd=1)))
        first = await say(handle, "hello")  # nothing known to be spent yet
        second = await say(handle, "hello")

    assert "scripted offline model" in first
    assert "its budget of $1.00, which cannot hold: a model with no price" in second


async def test_a_nonsense_budget_is_refused_before_it_reaches_the_history(
    client: Client, session: WorkflowHandle
):
    await say(session, "hello")
    events_before = len(await history_events(session))

    for nonsense in (Budget(model_calls=-1), Budget(tokens=-5), Budget(cost_usd=-0.5)):
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await session.execute_update(DurableAgentWorkflow.set_budget, nonsense)
        assert "must be" in str(refused.value.cause)

    assert len(await history_events(session)) == events_before
    assert (await session.query(DurableAgentWorkflow.usage)).budget == Budget()


async def test_a_subagent_draws_on_its_parents_remaining_budget(
    client: Client, task_queue: str, worker: object
):
    handle = await start_session(client, task_queue, SessionInput(budget=Budget(model_calls=2)))

    reply = await say(handle, "delegate: What is 6 * 7?")

    [subagent] = await handle.query(DurableAgentWorkflow.subagents)
    child = client.get_workflow_handle(subagent.workflow_id)
    with pytest.raises(WorkflowFailureError) as failed:
        await child.result()
    # One call left for the subagent: it asks for the calculator, then may not go on.
    assert failed.value.cause.message == (
        "This subagent stopped before its next model call: its share of the conversation's "
        "budget, 1 model call (used: 1), is used up."
    )
    assert await scheduled_activities(child) == ["plan_next_action", "execute_tool"]
    assert reply.startswith(
        "I stopped before the next model call: this conversation has "
        "reached its budget of 2 model calls (used: 2)."
    )
    assert await scheduled_activities(handle) == ["plan_next_action"]


def test_subagents_started_together_split_what_remains():
    spent = Usage(model_calls=3, input_tokens=900, output_tokens=100, cost_usd=0.25)
    budget = Budget(model_calls=10, tokens=1_500, cost_usd=1.0)

    split = shares(budget, spent, 2)

    assert split == [Budget(4, 250, 0.375), Budget(3, 250, 0.375)]
    assert shares(Budget(), spent, 3) == [Budget()] * 3  # no limit stays no limit
    assert shares(Budget(model_calls=2), spent, 2) == [Budget(model_calls=0)] * 2


# --- Fallback models ---------------------------------------------------------------------


@pytest.fixture
def with_fallback(
    http_settings: LlmSettings, openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> LlmSettings:
    """The primary at the local server (LLM_API_BASE); the fallback at its provider's
    address, which OPENAI_API_BASE moves to the same local server."""
    monkeypatch.setenv("OPENAI_API_BASE", openai_server.url)
    return LlmSettings(
        model="openai/test-model", api_base=openai_server.url, fallback_models=(PRICED,)
    )


async def test_the_fallback_model_answers_after_the_primary_fails_twice(
    client: Client,
    task_queue: str,
    notes_file: Path,
    with_fallback: LlmSettings,
    openai_server: OpenAIServer,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.INFO)
    openai_server.then(failure(503, "Service unavailable"), failure(503, "Service unavailable"))
    async with build_worker(client, task_queue, AgentActivities(with_fallback, notes_file)):
        handle = await start_session(client, task_queue)
        reply = await say(handle, "hello")

    [plan] = await plans_of(client, handle)
    assert "scripted offline model" in reply
    assert [r.body["model"] for r in openai_server.requests] == [
        "test-model",
        "test-model",
        "gpt-4o-mini",
    ]
    assert plan.model == PRICED
    assert plan.usage.cost_usd == pytest.approx(ONE_CALL)  # priced as the model that answered
    assert "plan_next_action attempt 3 falls back to openai/gpt-4o-mini" in caplog.text
    assert "plan_next_action -> reply (openai/gpt-4o-mini, " in caplog.text


async def test_a_wrong_key_for_the_primary_does_not_fall_back(
    client: Client,
    task_queue: str,
    notes_file: Path,
    with_fallback: LlmSettings,
    openai_server: OpenAIServer,
):
    openai_server.then(failure(401, "Incorrect API key provided.", code="invalid_api_key"))
    async with build_worker(client, task_queue, AgentActivities(with_fallback, notes_file)):
        handle = await start_session(client, task_queue)
        with pytest.raises(WorkflowUpdateFailedError) as failed:
            await say(handle, "hello")

    assert "Check the provider's API key" in str(failed.value.cause)
    assert [r.body["model"] for r in openai_server.requests] == ["test-model"]


async def test_the_worker_checks_every_fallback_models_keys_at_start(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("LLM_MODEL", "")
    monkeypatch.setenv("LLM_FALLBACK_MODELS", "scripted/agent, anthropic/claude-3-5-haiku-latest")

    with pytest.raises(ValueError) as refused:
        async with configured_activities():
            pass

    assert str(refused.value) == (
        "LLM_FALLBACK_MODELS: anthropic/claude-3-5-haiku-latest needs ANTHROPIC_API_KEY: "
        "add it to .env"
    )


def test_each_model_gets_two_attempts_in_turn_round_and_round():
    settings = LlmSettings(model="a/primary", api_base="http://x", fallback_models=("b/1", "c/2"))

    chosen = [settings.for_attempt(attempt) for attempt in range(1, 9)]

    assert [s.model for s in chosen] == ["a/primary"] * 2 + ["b/1"] * 2 + ["c/2"] * 2 + [
        "a/primary"
    ] * 2
    assert [s.api_base for s in chosen[:4]] == ["http://x"] * 2 + [None] * 2
