"""Tools a user brings as typed Python functions: a module TOOL_MODULES names, loaded at
worker start, each call an `execute_tool` activity like the built-in tools'."""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    WorkerProcess,
    activity_running,
    chat_client,
    say,
    start_session,
    until,
)
from temporalio.client import Client

from activities import AgentActivities
from function_tools import function_tool, tool
from llm_client import LlmSettings
from toolbox import toolset
from tools import registry
from worker import build_worker, configured_activities

SpawnWorker = Callable[..., Awaitable[WorkerProcess]]


@tool
def nap(seconds: float) -> str:
    """Sleep, as a slow blocking call (a sync tool) would."""
    time.sleep(seconds)
    return f"Slept {seconds:g} s"


async def test_a_sync_tool_sleeping_2_s_does_not_hold_up_another_conversations_turn(
    client: Client, task_queue: str, notes_file: Path
):
    tools = toolset(registry(notes_file).values(), [function_tool(nap)])
    activities = AgentActivities(LlmSettings(), notes_file, tools=tools)
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        sleeper = await start_session(client, task_queue)
        other = await start_session(client, task_queue)
        napping = asyncio.create_task(say(sleeper, 'use nap {"seconds": 2}'))
        await until(lambda: activity_running(sleeper, "execute_tool"))

        started = time.perf_counter()
        reply = await say(other, "hello")
        waited = time.perf_counter() - started

        assert "scripted offline model" in reply
        assert waited < 1.0, f"a plain turn took {waited:.2f} s while a sync tool slept"
        assert await napping == "Slept 2 s"


USER_MODULE = '''
import asyncio
from typing import Annotated, Literal

from pydantic import Field

from function_tools import tool


@tool
async def convert(
    amount: Annotated[float, Field(ge=0)], to: Literal["km", "mi"] = "km"
) -> str:
    """Convert a distance between kilometres and miles."""
    await asyncio.sleep(0.01)  # an async tool: awaited on the worker's event loop
    value = amount * 1.609344 if to == "km" else amount / 1.609344
    return f"{value:.1f} {to}"
'''


async def test_a_typed_async_tool_from_a_user_module_is_offered_and_called(
    client: Client, task_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "distance_tools.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    env = {"TOOL_MODULES": "distance_tools", "NOTES_FILE": str(tmp_path / "notes.jsonl")}

    async with (
        configured_activities(env) as activities,
        build_worker(client, task_queue, activities, max_cached_workflows=0),
    ):
        handle = await start_session(client, task_queue)
        converted = await say(handle, 'use convert {"amount": 10, "to": "km"}')
        refused = await say(handle, 'use convert {"amount": -1}')

    assert "Tools (distance_tools): convert" in activities.describe()
    assert converted == "16.1 km"
    assert refused == (
        "The convert tool failed. Error: invalid arguments for convert: "
        "amount: Input should be greater than or equal to 0"
    )


async def test_a_module_with_an_untyped_tool_stops_the_worker_with_a_message_naming_it(
    spawn_worker: SpawnWorker, tmp_path: Path
):
    (tmp_path / "sloppy_tools.py").write_text(
        "from function_tools import tool\n\n\n@tool\ndef add(a: int, b):\n"
        '    """Add two numbers."""\n    return a + b\n'
    )

    with pytest.raises(RuntimeError) as stopped:
        await spawn_worker(TOOL_MODULES="sloppy_tools", PYTHONPATH=str(tmp_path))

    assert (
        "worker: tool sloppy_tools.add: parameter 'b' has no type hint; the hints are the "
        "schema the model's arguments are checked against"
    ) in str(stopped.value)


async def test_add_your_own_tool_runs_as_the_docs_write_it(tmp_path: Path):
    section = (ROOT / "docs" / "tools.md").read_text().split("## Add your own tool")[1]
    module = section.split("```python\n")[1].split("```")[0]
    command, printed = section.split("```sh\n")[1].split("```")[0].splitlines()
    words = shlex.split(command)
    start = words.index("uv")
    settings, args = words[:start], words[start + 3 :]
    assert words[start : start + 3] == ["uv", "run", "start_workflow.py"]
    assert len(module.splitlines()) + 1 <= 10  # ten lines, from nothing to a tool called
    # The module goes to a folder of the test's, on PYTHONPATH, not into the project's.
    (tmp_path / "my_tools.py").write_text(module)
    env = dict(setting.split("=", 1) for setting in settings)

    chat = await chat_client(*args, env={**env, "PYTHONPATH": str(tmp_path)}, timeout=120)

    assert chat.returncode == 0, chat.stderr
    assert chat.stdout == printed.removeprefix("# prints: ") + "\n"
