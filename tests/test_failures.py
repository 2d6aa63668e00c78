"""Every failure has a designed outcome: the model sees it, Temporal retries it, or the user
reads a message, and the conversation survives. Each test names who handles the failure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import litellm
import pytest
from conftest import AsksForTools, history_events, registered, say, start_session
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowUpdateFailedError

from activities import AgentActivities, Faults
from llm_client import LlmSettings
from worker import build_worker
from workflow import DurableAgentWorkflow

# A model that emits broken tool calls, then repeats what the tools said.
MISBEHAVING = registered(
    "misbehaving",
    AsksForTools(
        [
            ("calculator", '{"expression": "2 +'),  # not JSON
            ("teleport", '{"to": "Mars"}'),  # no such tool
            ("calculator", "{}"),  # missing argument
            ("calculator", '{"expression": "1/0"}'),  # the tool's own error
        ]
    ),
)


async def test_malformed_and_failing_tool_calls_are_shown_to_the_model_not_retried(
    client: Client, task_queue: str, notes_file: Path
):
    activities = AgentActivities(MISBEHAVING, notes_file)
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        handle = await start_session(client, task_queue)
        reply = await say(handle, "do things")

    assert "the arguments are not valid JSON" in reply
    assert "unknown tool 'teleport'; available tools: calculator, weather, save_note" in reply
    assert "invalid arguments for calculator: expression: Field required" in reply
    assert "division by zero" in reply
    events = await history_events(handle)
    assert not [e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED]
    assert all(
        e.activity_task_started_event_attributes.attempt == 1
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    )


async def test_permanent_provider_error_fails_the_turn_with_the_fix_and_the_chat_lives_on(
    client: Client, task_queue: str, notes_file: Path
):
    misconfigured = AgentActivities(LlmSettings(model="scripted/no-such-model"), notes_file)
    async with build_worker(client, task_queue, misconfigured, max_cached_workflows=0):
        handle = await start_session(client, task_queue)
        with pytest.raises(WorkflowUpdateFailedError) as failed:
            await say(handle, "What is 25 * 4?")

    message = str(failed.value.cause)
    assert "NotFoundError" in message and "Check LLM_MODEL" in message
    failures = [
        e
        for e in await history_events(handle)
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    ]
    assert len(failures) == 1  # non-retryable: one attempt, no retries

    fixed = AgentActivities(LlmSettings(), notes_file)
    async with build_worker(client, task_queue, fixed, max_cached_workflows=0):
        assert await say(handle, "What is 25 * 4?") == "25 * 4 = 100"
        transcript = await handle.query(DurableAgentWorkflow.conversation)
    # The failed turn was rolled back: the model never sees a question without an answer.
    assert [m.content for m in transcript.messages if m.role == "user"] == ["What is 25 * 4?"]


def test_fault_switches_reject_unknown_or_malformed_values():
    assert Faults.from_env({"FAULT_LLM_FAILURES": "3"}) == Faults(llm_failures=3)
    for env, complaint in [
        ({"FAULT_LLM_FAILURES": "three"}, "FAULT_LLM_FAILURES='three' is not a valid int"),
        ({"FAULT_TOOL_BUG": "yes"}, "FAULT_TOOL_BUG"),
        ({"FAULT_FAILURE_RATE": "1.5"}, "between 0 and 1"),
        ({"FAULT_TOOL_DELAY": "3"}, "unknown fault switch FAULT_TOOL_DELAY"),
    ]:
        with pytest.raises(ValueError, match=complaint):
            Faults.from_env(env)


def test_provider_errors_are_classified_transient_or_permanent():
    from llm_client import classify_provider_error

    def error(kind: type[Exception], **extra: Any) -> Exception:
        return kind(message="boom sk-abcdefghijklmnop", model="m", llm_provider="p", **extra)

    transient = [litellm.RateLimitError, litellm.Timeout, litellm.ServiceUnavailableError]
    for kind in transient:
        assert not classify_provider_error(error(kind)).non_retryable
    permanent = [litellm.AuthenticationError, litellm.NotFoundError, litellm.BadRequestError]
    for kind in permanent:
        classified = classify_provider_error(error(kind))
        assert classified.non_retryable
        assert "sk-abcdefghijklmnop" not in classified.message  # keys never reach history
    context = classify_provider_error(error(litellm.ContextWindowExceededError))
    assert "too long for this model" in context.message
    assert json.dumps(context.message)
