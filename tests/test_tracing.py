"""Traces: each turn is one tree of spans, from the client's update to each model call.

The tests trace into memory: the module installs a replay-safe tracer provider whose
spans an `InMemorySpanExporter` keeps, and connects through `worker.connect`, which then
adds the SDK's tracing plugin, as it does for a process started with OTEL_TRACES_EXPORTER.
Every worker here keeps no workflow in cache, so every workflow task replays the whole
history: a replayed span that was exported again would show up as a duplicate.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import litellm
import pytest
from conftest import Deltas, chat_client, say, scheduled_activities, start_session
from openai_server import USAGE, OpenAIServer, Scripted, failure
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler, SamplingResult
from opentelemetry.trace import StatusCode
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.contrib.opentelemetry import create_tracer_provider
from temporalio.testing import WorkflowEnvironment

import llm_client
import tracing
from activities import AgentActivities, Faults
from llm_client import LlmSettings
from worker import build_worker, connect
from workflow import Message, SessionInput

QUESTION = "What is 1234 * 5678?"
REPLY = "1234 * 5678 = 7006652"


class WhileTheseTestsRun(Sampler):
    """Records every span while this module's tests run, and none after."""

    on = True

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return (ALWAYS_ON if self.on else ALWAYS_OFF).should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return "WhileTheseTestsRun"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """This process's tracer provider, keeping spans in memory, for the tests of this module.

    OpenTelemetry takes one tracer provider per process, for good. Afterwards it records
    nothing, and `tracing.shutdown` stops clients connected later from getting the plugin.
    """
    spans, sampler = InMemorySpanExporter(), WhileTheseTestsRun()
    provider = create_tracer_provider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(spans))  # exported as each span ends
    tracing.install(provider)
    yield spans
    sampler.on = False
    tracing.shutdown()


@pytest.fixture
async def traced(temporal: WorkflowEnvironment, exporter: InMemorySpanExporter) -> Client:
    """A client connected as every process connects, with tracing on: the plugin is in."""
    exporter.clear()
    return await connect(temporal.client.service_client.config.target_host)


@asynccontextmanager
async def traced_worker(
    client: Client, task_queue: str, activities: AgentActivities
) -> AsyncIterator[None]:
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        yield


def spans_of(exporter: InMemorySpanExporter, handle: WorkflowHandle) -> list[ReadableSpan]:
    """The spans of the traces that the session's updates started."""
    finished = exporter.get_finished_spans()
    traces = {
        span.context.trace_id
        for span in finished
        if span.name == "StartWorkflowUpdate:send_message"
        and span.attributes.get("temporalWorkflowID") == handle.id
    }
    return [span for span in finished if span.context.trace_id in traces]


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.name == name), key=lambda s: s.start_time or 0)


def lineage(span: ReadableSpan, spans: list[ReadableSpan]) -> list[str]:
    """The names of the span's ancestors, nearest first, up to the root of its trace;
    fails if a parent is missing, i.e. if the tree is broken."""
    by_id = {s.context.span_id: s for s in spans}
    names = []
    while span.parent is not None:
        assert span.parent.span_id in by_id, f"{span.name}: its parent span is missing"
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


def print_tree(spans: list[ReadableSpan]) -> None:
    """For a failing test: the spans as an indented tree."""
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        children.setdefault(span.parent.span_id if span.parent else None, []).append(span)

    def show(parent: int | None, depth: int) -> None:
        for span in children.get(parent, []):
            print("  " * depth + span.name, dict(span.attributes or {}))
            show(span.context.span_id, depth + 1)

    show(None, 0)


# --- One turn, one tree ---------------------------------------------------------------------


async def test_a_tool_turn_is_one_tree_from_the_update_to_each_model_call(
    traced: Client, task_queue: str, notes_file: Path, exporter: InMemorySpanExporter
):
    async with traced_worker(traced, task_queue, AgentActivities(LlmSettings(), notes_file)):
        handle = await start_session(traced, task_queue)
        reply = await say(handle, QUESTION)

    spans = spans_of(exporter, handle)
    print_tree(spans)  # shown if the test fails
    [turn] = named(spans, "agent.turn")
    [tool] = named(spans, "RunActivity:execute_tool")
    calls = named(spans, f"chat {LlmSettings().model}")
    assert reply == REPLY
    turn_lineage = ["agent.turn", "HandleUpdate:send_message", "StartWorkflowUpdate:send_message"]
    assert lineage(turn, spans) == turn_lineage[1:]  # the client's update is the root
    assert lineage(tool, spans) == ["StartActivity:execute_tool", *turn_lineage]
    assert len(calls) == 2  # model -> calculator -> model
    for call in calls:
        assert lineage(call, spans) == [
            "RunActivity:plan_next_action",  # the attempt, on the worker
            "StartActivity:plan_next_action",  # the workflow schedules it
            *turn_lineage,
        ]
    assert turn.attributes["gen_ai.conversation.id"] == handle.id
    assert turn.attributes["agent.turn.number"] == 1
    assert [call.attributes["gen_ai.response.finish_reasons"] for call in calls] == [
        ("tool_calls",),
        ("stop",),
    ]
    assert all(call.attributes["gen_ai.request.model"] == LlmSettings().model for call in calls)
    assert all(call.attributes["temporal.activity.attempt"] == 1 for call in calls)
    # The scripted model reports no usage: LiteLLM counts it; the turn adds its calls up.
    for kind in ("input", "output"):
        counts = [call.attributes[f"gen_ai.usage.{kind}_tokens"] for call in calls]
        assert all(count > 0 for count in counts)
        assert turn.attributes[f"gen_ai.usage.{kind}_tokens"] == sum(counts)
    assert turn.attributes["agent.usage.model_calls"] == 2
    assert turn.attributes["agent.usage.cost_usd"] == 0.0
    assert tool.attributes["gen_ai.tool.name"] == "calculator"
    assert tool.attributes["agent.tool.outcome"] == "ok"
    assert turn.start_time < tool.start_time < tool.end_time < turn.end_time  # real durations


async def test_the_calls_of_a_program_are_under_its_span_in_the_turn_s_tree(
    traced: Client, task_queue: str, notes_file: Path, exporter: InMemorySpanExporter
):
    async with traced_worker(traced, task_queue, AgentActivities(LlmSettings(), notes_file)):
        handle = await start_session(traced, task_queue)
        await say(handle, "What is the weather in Oslo, Rome and Paris?")
        await say(handle, "program: 1 / 0")

    spans = spans_of(exporter, handle)
    print_tree(spans)
    ran, stopped = named(spans, "agent.program")
    tools = named(spans, "RunActivity:execute_tool")
    turn_lineage = ["agent.turn", "HandleUpdate:send_message", "StartWorkflowUpdate:send_message"]
    assert lineage(ran, spans) == lineage(stopped, spans) == turn_lineage
    assert [lineage(tool, spans) for tool in tools] == [
        ["StartActivity:execute_tool", "agent.program", *turn_lineage]
    ] * 3
    assert ran.attributes["gen_ai.tool.call.id"] == "call_2_0"
    assert (ran.status.status_code, stopped.status.status_code) == (
        StatusCode.UNSET,
        StatusCode.ERROR,
    )


async def test_a_retried_model_call_shows_as_a_second_attempt_under_the_same_step(
    traced: Client, task_queue: str, notes_file: Path, exporter: InMemorySpanExporter
):
    outage = AgentActivities(LlmSettings(), notes_file, Faults(llm_failures=1))
    async with traced_worker(traced, task_queue, outage):
        handle = await start_session(traced, task_queue)
        await say(handle, "hello")

    spans = spans_of(exporter, handle)
    print_tree(spans)
    [step] = named(spans, "StartActivity:plan_next_action")
    failed, retried = named(spans, "RunActivity:plan_next_action")
    [call] = named(spans, f"chat {LlmSettings().model}")
    assert failed.parent.span_id == retried.parent.span_id == step.context.span_id
    assert [event.name for event in failed.events] == ["exception"]  # the simulated outage
    # The outage is injected before the model is called: only the retry calls it.
    assert call.parent.span_id == retried.context.span_id
    assert call.attributes["temporal.activity.attempt"] == 2


async def test_a_failed_turn_is_an_error_in_its_trace_with_the_providers_error_type(
    traced: Client, task_queue: str, notes_file: Path, exporter: InMemorySpanExporter
):
    unknown = LlmSettings(model="no-such-provider/model")  # LiteLLM refuses: BadRequestError
    async with traced_worker(traced, task_queue, AgentActivities(unknown, notes_file)):
        handle = await start_session(traced, task_queue)
        with pytest.raises(WorkflowUpdateFailedError):
            await say(handle, "hello")

    spans = spans_of(exporter, handle)
    [turn] = named(spans, "agent.turn")
    [call] = named(spans, f"chat {unknown.model}")
    assert turn.status.status_code == StatusCode.ERROR
    assert call.status.status_code == StatusCode.ERROR
    assert call.attributes["error.type"] == "BadRequestError"


# --- Replay: no duplicates -----------------------------------------------------------------


async def test_replaying_every_workflow_task_exports_each_span_once(
    traced: Client, task_queue: str, notes_file: Path, exporter: InMemorySpanExporter
):
    async with traced_worker(traced, task_queue, AgentActivities(LlmSettings(), notes_file)):
        handle = await start_session(traced, task_queue)
        for text in (QUESTION, "What is the weather in Paris and Oslo?", "bye"):
            await say(handle, text)
        await handle.result()

    spans = exporter.get_finished_spans()  # this test's, the session's start included
    names = Counter(span.name for span in spans)
    assert len({span.context.span_id for span in spans}) == len(spans)
    assert names["RunWorkflow:DurableAgentWorkflow"] == 1
    assert names["HandleUpdate:send_message"] == 3
    turns = named(list(spans), "agent.turn")
    assert [turn.attributes["agent.turn.number"] for turn in turns] == [1, 2, 3]
    started = names["StartActivity:plan_next_action"] + names["StartActivity:execute_tool"]
    assert started == len(await scheduled_activities(handle))  # one span per history event
    assert names["RunActivity:execute_tool"] == 3  # the calculator, then two cities at once


async def test_turns_are_numbered_across_continue_as_new(
    traced: Client, task_queue: str, notes_file: Path, exporter: InMemorySpanExporter
):
    small_runs = SessionInput(continue_as_new_after_events=10)  # a new run after each turn
    async with traced_worker(traced, task_queue, AgentActivities(LlmSettings(), notes_file)):
        handle = await start_session(traced, task_queue, small_runs)
        for _ in range(3):
            await say(handle, "hello")

    spans = spans_of(exporter, handle)
    turns = named(spans, "agent.turn")
    by_id = {span.context.span_id: span for span in spans}
    updates = [by_id[turn.parent.span_id] for turn in turns]
    assert [turn.attributes["agent.turn.number"] for turn in turns] == [1, 2, 3]
    assert {update.name for update in updates} == {"HandleUpdate:send_message"}
    assert len({update.attributes["temporalRunID"] for update in updates}) == 3  # three runs


# --- Content: none by default -----------------------------------------------------------------


def texts_in(spans: list[ReadableSpan]) -> str:
    """Everything a span says, in one string: names, attributes, events, statuses."""
    said = []
    for span in spans:
        said += [span.name, str(span.status.description), json.dumps(dict(span.attributes or {}))]
        for event in span.events:
            said += [event.name, json.dumps(dict(event.attributes or {}))]
    return "\n".join(said)


@pytest.mark.parametrize("include", [False, True], ids=["by-default", "OTEL_INCLUDE_CONTENT=1"])
async def test_spans_hold_no_message_tool_argument_or_reply_unless_asked(
    include: bool,
    traced: Client,
    task_queue: str,
    notes_file: Path,
    exporter: InMemorySpanExporter,
):
    activities = AgentActivities(LlmSettings(), notes_file, trace_content=include)
    async with traced_worker(traced, task_queue, activities):
        handle = await start_session(traced, task_queue)
        reply = await say(handle, QUESTION)

    said = texts_in(list(exporter.get_finished_spans()))  # every span of this test
    assert reply == REPLY
    # The question, the calculator's argument and the reply all quote "1234 * 5678".
    for content in ("1234 * 5678", "7006652"):
        assert (content in said) == include, content
    if include:
        spans = spans_of(exporter, handle)
        first_call, last_call = named(spans, f"chat {LlmSettings().model}")
        [tool] = named(spans, "RunActivity:execute_tool")
        assert QUESTION in first_call.attributes["gen_ai.input.messages"]
        assert json.loads(tool.attributes["gen_ai.tool.call.arguments"]) == {
            "expression": "1234 * 5678"
        }
        assert tool.attributes["gen_ai.tool.call.result"] == "7006652"
        assert REPLY in last_call.attributes["gen_ai.output.messages"]


# --- The model call ---------------------------------------------------------------------------


async def test_a_model_call_span_has_the_providers_token_counts_plain_or_streamed(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter
):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-1234567890")
    settings = LlmSettings(model="openai/test-model", api_base=openai_server.url)
    openai_server.then(Scripted(), Scripted(), failure(429, f"Rate limit reached: {QUESTION}"))
    exporter.clear()

    await llm_client.plan(settings, [Message("user", "hello")], [], attempt=3)
    await llm_client.plan(settings, [Message("user", "hello")], [], on_text=Deltas(), attempt=3)
    with pytest.raises(litellm.RateLimitError):
        await llm_client.plan(settings, [Message("user", "hello")], [], attempt=4)

    plain, streamed, failed = named(list(exporter.get_finished_spans()), "chat openai/test-model")
    for span in (plain, streamed):
        assert span.attributes["gen_ai.usage.input_tokens"] == USAGE["prompt_tokens"]
        assert span.attributes["gen_ai.usage.output_tokens"] == USAGE["completion_tokens"]
        assert span.attributes["gen_ai.response.finish_reasons"] == ("stop",)
        assert span.attributes["temporal.activity.attempt"] == 3
    assert openai_server.requests[1].body["stream_options"] == {"include_usage": True}
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["error.type"] == "RateLimitError"
    assert QUESTION not in texts_in([failed])  # a provider's message can quote the request


# --- Setting it up: the standard variables, off by default ---------------------------------


def test_traces_are_off_unless_an_exporter_is_named():
    for env in ({}, {"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_TRACES_EXPORTER": " "}):
        assert tracing.span_exporters(env) == {}
        assert tracing.setup("durable-agent-test", env) == "Traces: off"
    disabled = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
    assert tracing.span_exporters(disabled) == {}


def test_the_console_exporter_writes_to_stderr_or_to_traces_file(tmp_path: Path):
    [to_stderr] = tracing.span_exporters({"OTEL_TRACES_EXPORTER": "console"}).values()
    env = {"OTEL_TRACES_EXPORTER": "console", "TRACES_FILE": str(tmp_path / "spans.json")}
    [to_file] = tracing.span_exporters(env).values()

    assert isinstance(to_stderr, ConsoleSpanExporter) and to_stderr.out is sys.stderr
    assert isinstance(to_file, ConsoleSpanExporter) and to_file.out.name == env["TRACES_FILE"]
    to_file.out.close()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "unknown exporter zipkin"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"},
            "use grpc or http/protobuf",
        ),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, r"uv sync --extra otlp"),
    ],
)
def test_bad_trace_settings_are_refused_at_start_with_a_clear_message(
    env: dict[str, str], message: str
):
    # As if the optional OTLP exporter were not installed (it is not, by default).
    missing = dict.fromkeys(
        [
            "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
            "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        ]
    )
    with mock.patch.dict(sys.modules, missing), pytest.raises(ValueError, match=message):
        tracing.span_exporters(env)


def test_content_is_in_spans_only_with_otel_include_content():
    assert not tracing.include_content({})
    assert not tracing.include_content({"OTEL_INCLUDE_CONTENT": "0"})
    assert tracing.include_content({"OTEL_INCLUDE_CONTENT": "1"})
    with pytest.raises(ValueError, match="use 1 to include content"):
        tracing.include_content({"OTEL_INCLUDE_CONTENT": "yes"})


async def test_the_chat_client_traces_to_stderr_and_its_trace_goes_on_in_the_worker(
    traced: Client, task_queue: str, notes_file: Path, exporter: InMemorySpanExporter
):
    where = ["--address", traced.service_client.config.target_host, "--task-queue", task_queue]
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "chat-test"}
    async with traced_worker(traced, task_queue, AgentActivities(LlmSettings(), notes_file)):
        run = await chat_client(*where, "--message", QUESTION, env=env)

    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{REPLY}\n"  # the reply alone: spans never go to stdout
    client_spans = [json.loads(s) for s in console_spans(run.stderr)]
    [update] = [s for s in client_spans if s["name"] == "StartWorkflowUpdate:send_message"]
    assert update["resource"]["attributes"]["service.name"] == "chat-test"
    [turn] = named(list(exporter.get_finished_spans()), "agent.turn")
    assert f"0x{turn.context.trace_id:032x}" == update["context"]["trace_id"]


def console_spans(text: str) -> list[str]:
    """The JSON objects the console exporter wrote, one per span, among other lines."""
    spans, current = [], []
    for line in text.splitlines():
        if line == "{" or current:
            current.append(line)
        if line == "}":
            spans.append("\n".join(current))
            current = []
    return spans
