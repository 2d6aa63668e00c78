"""Determinism: the workflow code must replay the histories it has written before.

`tests/histories/` keeps histories recorded with earlier versions of `workflow.py`. A change
that breaks their replay would break every conversation already running. Record a new one
with `uv run temporal workflow show --workflow-id ID --output json > tests/histories/NAME.json`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import approvals_waiting, decide, say
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.worker import Replayer

from worker import data_converter
from workflow import DurableAgentWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_history_replays_with_the_current_workflow_code(path: Path):
    await replayer().replay_workflow(recorded(path))


def recorded(path: Path) -> WorkflowHistory:
    text = path.read_text()
    # Under the id it ran with: a subagent's workflow id is derived from its parent's.
    started = json.loads(text)["events"][0]["workflowExecutionStartedEventAttributes"]
    return WorkflowHistory.from_json(started.get("workflowId", "recorded"), text)


async def test_fresh_conversation_with_every_kind_of_turn_replays(
    client: Client, session: WorkflowHandle
):
    await say(session, "What is 2 + 2 and 3 * 3?")
    await say(session, "delegate: What is 6 * 7?; delegate: delegate: What is 1 + 1?")
    await say(session, "hello")
    await say(session, "weather in Oslo, Rome and Paris")  # a program, its calls in parallel
    for text, approved in [
        ("note: replay me", True),
        ("note: not me", False),
        ('program: save_note(text="from a program")', True),
    ]:
        turn = asyncio.create_task(say(session, text))
        [waiting] = await approvals_waiting(session)
        await decide(session, waiting.call_id, approved)
        await turn
    await say(session, "bye")
    await session.result()

    await replayer().replay_workflow(await session.fetch_history())
    for subagent in await session.query(DurableAgentWorkflow.subagents):
        child = client.get_workflow_handle(subagent.workflow_id)
        await replayer().replay_workflow(await child.fetch_history())


def replayer() -> Replayer:
    """With the product's data converter: an encrypted history replays only through it."""
    return Replayer(workflows=[DurableAgentWorkflow], data_converter=data_converter())
