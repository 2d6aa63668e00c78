"""Every failure has a designed outcome: the model sees it, Temporal retries it, or the user
reads a message, and the conversation survives. Each test names who handles the failure."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

import litellm
import pytest
from conftest import AsksForTools, history_events, registered, say, start_session
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities import AgentActivities, Faults
from llm_client import LlmSettings
from worker import DEFAULT_WORKFLOW_CACHE_SIZE, build_worker, workflow_cache_size
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


# What a client that is not ours may start a conversation with (as JSON, through the SDK's
# default converter), and the reason the workflow fails with.
MALFORMED_INPUTS = [
    ([{"tools": 5}], "tools: Input should be a valid list"),
    (["a string"], "the input: Input should be a dictionary or an instance of SessionInput"),
    ([{"messages": [{"role": "user"}]}], "messages.0.content: Field required"),
    ([None], "expected an object, got no input (or null); send {} for the defaults"),
    ([], "expected an object, got no input (or null)"),
    ([{"max_model_steps_per_turn": -1}], "max_model_steps_per_turn must be at least 1, not -1"),
    ([{"continue_as_new_after_bytes": 0}], "continue_as_new_after_bytes must be at least 1"),
    ([{"depth": -1}], "depth must be at least 0, not -1"),
    ([{"subagent_timeout_s": 0}], "subagent_timeout_s must be a positive number of seconds"),
    ([{"task": " "}], "task must not be empty"),
    ([{"budget": {"tokens": -5}}], "budget: The tokens limit must be a whole number, 0 or more"),
    (
        [{"messages": [{"role": "system", "content": "obey"}]}],
        "messages[0].role must be one of user, assistant, tool, not 'system'",
    ),
]


async def test_a_conversation_started_with_malformed_input_fails_at_once_with_the_reason(
    temporal: WorkflowEnvironment, client: Client, task_queue: str, worker: object
):
    foreign = temporal.client  # the SDK's default converter: plain JSON
    handles = [
        await foreign.start_workflow(
            "DurableAgentWorkflow", args=args, id=f"foreign-{uuid.uuid4()}", task_queue=task_queue
        )
        for args, _ in MALFORMED_INPUTS
    ]

    for handle, (_, reason) in zip(handles, MALFORMED_INPUTS, strict=True):
        with pytest.raises(WorkflowFailureError) as failed:
            await asyncio.wait_for(client.get_workflow_handle(handle.id).result(), 10)
        cause = failed.value.cause
        assert isinstance(cause, ApplicationError) and cause.type == "InvalidSessionInput"
        assert cause.message.startswith("Invalid SessionInput: ") and reason in cause.message
        kinds = [e.event_type for e in await history_events(handle)]
        assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in kinds  # failed, not retried


async def test_a_conversation_started_by_another_client_with_valid_json_works(
    temporal: WorkflowEnvironment, client: Client, task_queue: str, worker: object
):
    started = await temporal.client.start_workflow(
        "DurableAgentWorkflow",
        {"tools": ["calculator"], "max_model_steps_per_turn": 3},
        id=f"foreign-{uuid.uuid4()}",
        task_queue=task_queue,
    )

    assert await say(client.get_workflow_handle(started.id), "What is 2 + 2?") == "2 + 2 = 4"


async def test_malformed_updates_from_another_client_are_refused_and_the_chat_goes_on(
    temporal: WorkflowEnvironment, client: Client, task_queue: str, worker: object
):
    started = await temporal.client.start_workflow(
        "DurableAgentWorkflow", {}, id=f"foreign-{uuid.uuid4()}", task_queue=task_queue
    )
    handle = client.get_workflow_handle(started.id)  # reads failures even when encrypted
    refusals = []
    malformed = [("send_message", 5), ("send_message", None), ("decide_tool_call", None)]
    for update, argument in malformed:
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(update, argument)
        refusals.append(str(refused.value.cause))

    assert refusals == [
        "ValueError: The message must be a text, not int.",
        "ValueError: The message must be a text, not NoneType.",
        'ValueError: A decision is {"call_id": ..., "approved": ..., "reason": ...}.',
    ]
    assert await say(handle, "What is 2 + 2?") == "2 + 2 = 4"


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


def test_a_malformed_workflow_cache_size_stops_the_worker_naming_it():
    assert workflow_cache_size({}) == DEFAULT_WORKFLOW_CACHE_SIZE
    assert workflow_cache_size({"WORKFLOW_CACHE_SIZE": "0"}) == 0  # replay every task

    for bad in ("lots", "-1", "1.5"):
        with pytest.raises(ValueError, match=f"WORKFLOW_CACHE_SIZE='{re.escape(bad)}'"):
            workflow_cache_size({"WORKFLOW_CACHE_SIZE": bad})
