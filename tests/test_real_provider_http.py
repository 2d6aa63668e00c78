"""The real-provider path, over HTTP, offline: LiteLLM's OpenAI client talks to a local
OpenAI-compatible server (tests/openai_server.py), as it would to any real provider, and
every provider failure ends as designed: Temporal retries it, the model sees it, or the
user reads a message, and the chat goes on. The API key never reaches the history."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import litellm
import pytest
from conftest import Deltas, history_events, say, scheduled_activities, start_session
from openai_server import OpenAIServer, Scripted, failure, tool_call
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError

import llm_client
import tools
from activities import AgentActivities
from contract import Message, ToolCall
from llm_client import LlmSettings
from worker import build_worker, configured_activities

API_KEY = "sk-test-SECRET-1234567890abcdef"
TIMEOUT_S = 1.0
"""One model call; small, so the timeout test is quick; ample for a local server."""
TOO_LONG = (
    "This model's maximum context length is 128000 tokens. However, your messages "
    "resulted in 131072 tokens. Please reduce the length of the messages."
)


@pytest.fixture
def settings(openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> LlmSettings:
    """The worker's model settings for the local server; the key, as always, from the
    environment."""
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    return LlmSettings(model="openai/test-model", api_base=openai_server.url, timeout_s=TIMEOUT_S)


@pytest.fixture
async def chat(
    client: Client, task_queue: str, notes_file: Path, settings: LlmSettings
) -> AsyncIterator[WorkflowHandle]:
    """A conversation whose worker (in this process) calls the local server."""
    activities = AgentActivities(settings, notes_file)
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        yield await start_session(client, task_queue)


async def plan_attempts(handle: WorkflowHandle) -> list[int]:
    """Each plan_next_action's last attempt, in order: the history records only the last."""
    events = await history_events(handle)
    plans = {
        event.event_id
        for event in events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and event.activity_task_scheduled_event_attributes.activity_type.name == "plan_next_action"
    }
    return [
        event.activity_task_started_event_attributes.attempt
        for event in events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and event.activity_task_started_event_attributes.scheduled_event_id in plans
    ]


async def failed_activities(handle: WorkflowHandle) -> int:
    return sum(
        event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
        for event in await history_events(handle)
    )


# --- Turns ---------------------------------------------------------------------------


async def test_a_turn_over_http_reaches_the_provider_with_the_key_from_the_environment(
    chat: WorkflowHandle, openai_server: OpenAIServer
):
    reply = await say(chat, "hello")

    assert "scripted offline model" in reply  # what the server answered, as the model
    [request] = openai_server.requests
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.body["model"] == "test-model"
    assert [m["role"] for m in request.body["messages"]] == ["system", "user"]
    assert not request.body.get("stream")  # no on_text, no stream


async def test_a_tool_turn_over_http_runs_the_calculator_and_answers_from_its_result(
    chat: WorkflowHandle, openai_server: OpenAIServer
):
    reply = await say(chat, "What is 25 * 4?")

    assert reply == "25 * 4 = 100"
    assert await scheduled_activities(chat) == [
        "plan_next_action",
        "execute_tool",
        "plan_next_action",
    ]
    asked, answered = openai_server.requests
    assert [t["function"]["name"] for t in asked.body["tools"]][-1] == "end_chat"
    call = answered.body["messages"][-2]["tool_calls"][0]
    assert answered.body["messages"][-1] == {
        "role": "tool",
        "tool_call_id": call["id"],
        "content": "100",
    }


# --- Streaming -------------------------------------------------------------------------


async def test_streamed_text_adds_up_to_the_reply_the_plan_returns(
    settings: LlmSettings, openai_server: OpenAIServer
):
    deltas = Deltas()
    streamed = await llm_client.plan(settings, [Message("user", "hello")], [], on_text=deltas)
    plain = await llm_client.plan(settings, [Message("user", "hello")], [])

    assert len(deltas) > 1
    assert "".join(deltas) == streamed.reply
    assert streamed == plain
    assert [r.body.get("stream", False) for r in openai_server.requests] == [True, False]


async def test_a_streamed_tool_call_is_assembled_into_the_same_plan(
    settings: LlmSettings, openai_server: OpenAIServer, notes_file: Path
):
    schemas = [tool.schema() for tool in tools.registry(notes_file).values()]
    question = [Message("user", "What is 2 + 2 and 3 * 3?")]
    deltas = Deltas()
    streamed = await llm_client.plan(settings, question, schemas, on_text=deltas)
    plain = await llm_client.plan(settings, question, schemas)

    assert streamed.tool_calls == [
        ToolCall("call_2_0", "calculator", '{"expression": "2 + 2"}'),
        ToolCall("call_2_1", "calculator", '{"expression": "3 * 3"}'),
    ]
    assert streamed == plain
    assert deltas == []  # a tool request has no text to show


async def test_a_stream_that_breaks_off_mid_reply_is_a_provider_outage_temporal_retries(
    settings: LlmSettings, openai_server: OpenAIServer
):
    openai_server.then(Scripted(break_after=3))
    deltas = Deltas()
    with pytest.raises(Exception) as broken:
        await llm_client.plan(settings, [Message("user", "hello")], [], on_text=deltas)

    classified = llm_client.classify_provider_error(broken.value)
    assert classified is not None and not classified.non_retryable
    full = await llm_client.plan(settings, [Message("user", "hello")], [])
    assert deltas and full.reply.startswith("".join(deltas))  # the consumer saw a part


# --- Provider failures -----------------------------------------------------------------


async def test_a_wrong_api_key_fails_the_turn_at_once_and_the_chat_lives_on(
    chat: WorkflowHandle, openai_server: OpenAIServer
):
    openai_server.then(failure(401, "Incorrect API key provided.", code="invalid_api_key"))

    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await say(chat, "hello")

    assert "Check the provider's API key" in str(failed.value.cause)
    assert len(openai_server.requests) == 1  # neither Temporal nor the OpenAI client retried
    assert await plan_attempts(chat) == [1]
    assert await failed_activities(chat) == 1
    assert await say(chat, "What is 25 * 4?") == "25 * 4 = 100"


@pytest.mark.parametrize(
    ("status", "error"),
    [(429, "Rate limit reached for requests"), (500, "The server had an error")],
    ids=["rate-limit", "server-error"],
)
async def test_a_provider_outage_is_retried_by_temporal_and_the_turn_succeeds(
    chat: WorkflowHandle, openai_server: OpenAIServer, status: int, error: str
):
    openai_server.then(failure(status, error))

    reply = await say(chat, "hello")

    assert "scripted offline model" in reply
    assert len(openai_server.requests) == 2  # one failure, one success: Temporal's retry
    assert await plan_attempts(chat) == [2]
    assert await failed_activities(chat) == 0


async def test_a_provider_that_does_not_answer_in_time_is_retried(
    chat: WorkflowHandle, openai_server: OpenAIServer
):
    openai_server.then(Scripted(delay_s=TIMEOUT_S + 1))

    reply = await say(chat, "hello")

    assert "scripted offline model" in reply
    assert len(openai_server.requests) == 2
    assert await plan_attempts(chat) == [2]


async def test_malformed_tool_arguments_from_the_provider_are_a_tool_error_the_model_sees(
    chat: WorkflowHandle, openai_server: OpenAIServer
):
    openai_server.then(tool_call("calculator", '{"expression": "2 +'))

    reply = await say(chat, "What is 2 + 2?")

    tool_message = openai_server.requests[-1].body["messages"][-1]
    assert tool_message["role"] == "tool"
    assert tool_message["content"].startswith("Error: the arguments are not valid JSON")
    assert "The calculator tool failed" in reply
    assert await failed_activities(chat) == 0


async def test_a_conversation_too_long_for_the_model_tells_the_user(
    chat: WorkflowHandle, openai_server: OpenAIServer
):
    openai_server.then(failure(400, TOO_LONG, code="context_length_exceeded"))

    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await say(chat, "hello")

    assert "too long for this model; start a new session" in str(failed.value.cause)
    assert await plan_attempts(chat) == [1]


async def test_the_api_key_never_reaches_the_history_or_the_log_even_when_quoted(
    chat: WorkflowHandle, openai_server: OpenAIServer, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    quoted = f"Incorrect API key provided: {API_KEY}."
    openai_server.then(failure(500, quoted), Scripted(), failure(401, quoted))

    await say(chat, "hello")  # retried once, then answered
    with pytest.raises(WorkflowUpdateFailedError):
        await say(chat, "hello again")

    assert all(r.headers["Authorization"] == f"Bearer {API_KEY}" for r in openai_server.requests)
    history = (await chat.fetch_history()).to_json()
    assert "[redacted]" in history
    assert API_KEY not in history and "1234567890abcdef" not in history
    assert API_KEY not in caplog.text


async def test_a_provider_error_is_one_line_in_the_worker_log_not_a_traceback(
    chat: WorkflowHandle, openai_server: OpenAIServer, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)  # the worker's level (worker.py)
    openai_server.then(failure(500, "The server had an error"), Scripted(), failure(401, "No."))

    await say(chat, "hello")
    with pytest.raises(WorkflowUpdateFailedError):
        await say(chat, "hello again")

    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in warnings] == ["temporalio.activity", "temporalio.activity"]
    transient, permanent = (r.getMessage() for r in warnings)
    assert (
        "attempt 1 failed, Temporal retries: " in transient and "InternalServerError" in transient
    )
    assert (
        "attempt 1 failed, not retried: " in permanent
        and "Check the provider's API key" in permanent
    )
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in warnings)
    assert "Traceback" not in caplog.text


# --- Configuration ---------------------------------------------------------------------


async def test_a_local_server_needs_a_key_only_where_the_client_insists_on_one(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ollama = {"LLM_MODEL": "ollama_chat/llama3.2", "LLM_API_BASE": "http://localhost:11434"}
    assert LlmSettings.from_env(ollama).api_base == "http://localhost:11434"
    assert LlmSettings.from_env(ollama).missing_keys() == []
    vllm = {"LLM_MODEL": "hosted_vllm/my-model", "LLM_API_BASE": "http://localhost:8000/v1"}
    assert LlmSettings.from_env(vllm).missing_keys() == []

    # The OpenAI client sends nothing without a key: the worker says so at start.
    for name, value in {"LLM_MODEL": "openai/my-model", "LLM_API_BASE": "http://x/v1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=r"needs OPENAI_API_KEY.*OPENAI_API_KEY=unused"):
        async with configured_activities():
            pass


def test_keys_of_any_shape_are_redacted_from_provider_errors(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GEMINI_API_KEY", "AIzaSyFAKE0123456789")
    error = litellm.AuthenticationError(
        message="API key not valid: AIzaSyFAKE0123456789", model="m", llm_provider="gemini"
    )

    classified = llm_client.classify_provider_error(error)

    assert "AIzaSyFAKE0123456789" not in classified.message and "[redacted]" in classified.message
