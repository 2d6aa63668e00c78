"""MCP servers' tools, each call an `execute_tool` activity: a real server (tests/mcp_server.py)
over stdio and streamable HTTP, a real dev server, and workers killed as in a crash."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from conftest import (
    WorkerProcess,
    approvals_waiting,
    decide,
    free_port,
    history_events,
    say,
    scheduled_activities,
    start_session,
    until,
)
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Replayer

from activities import AgentActivities
from llm_client import LlmSettings
from mcp_tools import McpServer, connected, servers_in
from toolbox import Tool, toolset
from tools import registry
from worker import build_worker, configured_activities, data_converter
from workflow import DurableAgentWorkflow

SERVER = Path(__file__).with_name("mcp_server.py")
SpawnWorker = Callable[..., Awaitable[WorkerProcess]]


def stdio_server(calls_file: Path, **env: str) -> McpServer:
    return McpServer("test", sys.executable, [str(SERVER)], {"CALLS_FILE": str(calls_file), **env})


@pytest.fixture(scope="module")
def calls_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcp") / "calls.jsonl"


@pytest.fixture(scope="module")
async def stdio_tools(calls_file: Path) -> AsyncIterator[list[Tool]]:
    """One stdio session for the module's in-process workers, as a worker keeps one."""
    async with connected([stdio_server(calls_file)]) as tools:
        yield tools


@asynccontextmanager
async def serving(
    client: Client, task_queue: str, notes_file: Path, mcp: list[Tool]
) -> AsyncIterator[None]:
    """An in-process worker offering the built-in tools and these MCP tools."""
    tools = toolset(registry(notes_file).values(), mcp)
    activities = AgentActivities(LlmSettings(), notes_file, tools=tools)
    async with build_worker(client, task_queue, activities, max_cached_workflows=0):
        yield


@pytest.fixture
async def mcp_worker(
    client: Client, task_queue: str, notes_file: Path, stdio_tools: list[Tool]
) -> AsyncIterator[None]:
    async with serving(client, task_queue, notes_file, stdio_tools):
        yield


def calls_of(calls_file: Path, handle: WorkflowHandle) -> list[dict]:
    """The calls the server saw from this conversation (its key starts with the session id)."""
    if not calls_file.exists():
        return []
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
    return [call for call in calls if (call["key"] or "").startswith(f"{handle.id}/")]


async def tool_activity_ids(handle: WorkflowHandle) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_id
        for e in await history_events(handle)
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "execute_tool"
    ]


async def tool_attempts(handle: WorkflowHandle) -> list[int]:
    return [
        e.activity_task_started_event_attributes.attempt
        for e in await history_events(handle)
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]


async def test_a_read_only_mcp_tool_answers_without_approval_with_the_calls_key(
    client: Client, task_queue: str, mcp_worker: None, calls_file: Path
):
    handle = await start_session(client, task_queue)

    reply = await say(handle, 'use test__lookup {"word": "durable"}')

    assert reply == "durable: a word of 7 letters"
    [activity_id] = await tool_activity_ids(handle)
    run_id = (await handle.describe()).run_id
    assert calls_of(calls_file, handle) == [
        {
            "tool": "lookup",
            "arguments": {"word": "durable"},
            "key": f"{handle.id}/{run_id}/{activity_id}",
            "authorization": None,
        }
    ]
    assert await scheduled_activities(handle) == [
        "plan_next_action",
        "execute_tool",
        "plan_next_action",
    ]


async def test_a_writing_mcp_tool_waits_for_approval_and_runs_once(
    client: Client, task_queue: str, mcp_worker: None, calls_file: Path
):
    handle = await start_session(client, task_queue)
    turn = asyncio.create_task(say(handle, 'use test__write_entry {"text": "ship it"}'))
    [waiting] = await approvals_waiting(handle)
    assert waiting.tool == "test__write_entry" and calls_of(calls_file, handle) == []

    assert await decide(handle, waiting.call_id, approved=True) == "approved"

    assert await turn == "Wrote: ship it"
    assert [call["tool"] for call in calls_of(calls_file, handle)] == ["write_entry"]


async def test_a_raising_tool_and_an_is_error_result_reach_the_model_as_tool_errors(
    client: Client, task_queue: str, mcp_worker: None, calls_file: Path
):
    handle = await start_session(client, task_queue)

    raised = await say(handle, "use test__broken")
    refused = await say(handle, 'use test__refuse {"reason": "not on a Sunday"}')

    # The server hides an unexpected exception's message; a result with isError says its own.
    assert raised == "The test__broken tool failed. Error: Error executing tool broken"
    assert refused == "The test__refuse tool failed. Error: not on a Sunday"
    assert [call["tool"] for call in calls_of(calls_file, handle)] == ["broken", "refuse"]
    assert await tool_attempts(handle) == [1, 1, 1, 1, 1, 1]  # none retried


async def test_bad_arguments_are_refused_before_the_server_sees_the_call(
    client: Client, task_queue: str, mcp_worker: None, calls_file: Path
):
    handle = await start_session(client, task_queue)

    wrong_type = await say(handle, 'use test__lookup {"word": 5}')
    too_long = await say(handle, json.dumps({"word": "a" * 7_000}).join(["use test__lookup ", ""]))

    assert wrong_type == (
        "The test__lookup tool failed. Error: invalid arguments for test__lookup: "
        "word: 5 is not of type 'string'"
    )
    # The reason survives; the quoted value is cut short (issue 18, item 8).
    assert too_long.endswith("…(7002 characters) is too long") and len(too_long) < 200
    assert calls_of(calls_file, handle) == []


async def test_a_server_that_dies_mid_call_is_reconnected_and_the_call_retried_by_temporal(
    client: Client, task_queue: str, mcp_worker: None, calls_file: Path
):
    handle = await start_session(client, task_queue)

    assert await say(handle, "use test__crash_once") == "Still here"

    assert len(calls_of(calls_file, handle)) == 2  # the first ended with the server process
    failed_attempt = [
        e.activity_task_started_event_attributes
        for e in await history_events(handle)
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and e.activity_task_started_event_attributes.attempt == 2
    ]
    [second] = failed_attempt
    assert second.last_failure.application_failure_info.type == "McpServerUnavailable"
    # The session is open again for everyone: the next call needs no retry.
    assert await say(handle, 'use test__lookup {"word": "again"}') == "again: a word of 5 letters"


@pytest.fixture
async def http_server(calls_file: Path) -> AsyncIterator[str]:
    """tests/mcp_server.py over streamable HTTP, in its own process: its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(SERVER), "--http", str(port)],
        env={**os.environ, "CALLS_FILE": str(calls_file)},
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        await until(lambda: _accepts(port), timeout_s=30)
        yield url
    finally:
        process.kill()
        process.wait()


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_a_streamable_http_server_is_called_with_the_configured_headers(
    client: Client, task_queue: str, notes_file: Path, http_server: str, calls_file: Path
):
    web = McpServer("web", url=http_server, headers={"Authorization": "Bearer test-token"})
    async with connected([web]) as tools, serving(client, task_queue, notes_file, tools):
        handle = await start_session(client, task_queue)
        reply = await say(handle, 'use web__lookup {"word": "remote"}')

    assert reply == "remote: a word of 6 letters"
    [call] = calls_of(calls_file, handle)
    assert call["authorization"] == "Bearer test-token"


async def test_the_worker_banner_lists_each_server_and_tool_and_who_waits_for_approval(
    calls_file: Path, tmp_path: Path
):
    config = tmp_path / "mcp.json"
    server = {"command": sys.executable, "args": [str(SERVER)], "env": {"CALLS_FILE": "x"}}
    config.write_text(json.dumps({"mcpServers": {"test": server}}))
    env = {"MCP_CONFIG": str(config), "NOTES_FILE": str(tmp_path / "notes.jsonl")}

    async with configured_activities(env) as activities:
        banner = activities.describe()

    assert "Tools (built in): calculator, weather, save_note" in banner
    assert (
        f"Tools (MCP server test, stdio: {sys.executable} {SERVER}): test__lookup, "
        "test__write_entry, test__broken, test__refuse, test__slow, test__crash_once"
    ) in banner
    assert "Approval: calls of save_note, test__slow, test__write_entry wait" in banner


async def test_a_server_that_cannot_start_stops_the_worker_with_a_message_naming_it(
    tmp_path: Path,
):
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"files": {"command": "no-such-server"}}}))

    with pytest.raises(
        ValueError,
        match=r"MCP server files \(stdio: no-such-server\) did not start: FileNotFoundError",
    ):
        async with configured_activities({"MCP_CONFIG": str(config)}):
            pass


@pytest.mark.parametrize(
    ("config", "complaint"),
    [
        ("not json", "cannot read it as JSON"),
        ('{"servers": {}}', "expected"),
        ('{"mcpServers": {"x": {"args": []}}}', "give it a command"),
        ('{"mcpServers": {"x": {"command": "x", "args": "a b"}}}', "args a list of strings"),
        ('{"mcpServers": {"x": {"url": "http://h/sse"}}}', "SSE is not supported"),
    ],
)
def test_a_malformed_config_names_the_file_and_the_server(
    tmp_path: Path, config: str, complaint: str
):
    path = tmp_path / "mcp.json"
    path.write_text(config)
    with pytest.raises(ValueError, match=complaint):
        servers_in(path)


def test_the_config_takes_the_format_mcp_clients_keep(tmp_path: Path):
    path = tmp_path / "mcp.json"
    path.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "files": {"command": "npx", "args": ["-y", "fs"], "env": {"A": "1"}},
                    "my.docs": {"url": "https://x/mcp", "headers": {"Authorization": "t"}},
                    "off": {"command": "x", "disabled": True},
                }
            }
        )
    )
    assert servers_in(path) == [
        McpServer("files", "npx", ["-y", "fs"], {"A": "1"}),
        McpServer("my_docs", url="https://x/mcp", headers={"Authorization": "t"}),
    ]


async def test_worker_killed_mid_call_to_a_slow_mcp_tool_runs_it_again_with_the_same_key(
    client: Client, task_queue: str, spawn_worker: SpawnWorker, tmp_path: Path
):
    calls = tmp_path / "calls.jsonl"
    config = tmp_path / "mcp.json"
    server = {"command": sys.executable, "args": [str(SERVER)], "env": {"CALLS_FILE": str(calls)}}
    config.write_text(json.dumps({"mcpServers": {"test": server}}))
    settings = {"MCP_CONFIG": str(config), "APPROVAL_REQUIRED_TOOLS": ""}
    first = await spawn_worker(**settings)
    handle = await start_session(client, task_queue)
    turn = asyncio.create_task(say(handle, 'use test__slow {"seconds": 4}'))
    await until(lambda: calls_of(calls, handle))

    first.kill()  # mid-call: the server has the call, the worker never gets its answer
    await spawn_worker(**settings)

    assert await turn == "Done after 4 s"
    [activity_id] = await tool_activity_ids(handle)
    key = f"{handle.id}/{(await handle.describe()).run_id}/{activity_id}"
    # At least once, not exactly once: the server saw the call twice, with the same key.
    assert [call["key"] for call in calls_of(calls, handle)] == [key, key]
    assert await scheduled_activities(handle) == [
        "plan_next_action",
        "execute_tool",  # its first attempt died with the worker; the second completed
        "plan_next_action",
    ]


async def test_a_recorded_mcp_call_replays_after_the_server_changed_its_tool_list(
    client: Client, task_queue: str, notes_file: Path, stdio_tools: list[Tool], calls_file: Path
):
    handle = await start_session(client, task_queue)
    async with serving(client, task_queue, notes_file, stdio_tools):
        assert await say(handle, 'use test__lookup {"word": "old"}') == "old: a word of 3 letters"

    # The server now offers `define`, not `lookup`; the new worker replays the first turn
    # on every task (max_cached_workflows=0) and never asks the server what it had.
    async with connected([stdio_server(calls_file, TOOL_LIST="renamed")]) as renamed:
        assert "test__lookup" not in [tool.name for tool in renamed]
        async with serving(client, task_queue, notes_file, renamed):
            reply = await say(handle, 'use test__define {"word": "new"}')
            unknown = await say(handle, 'use test__lookup {"word": "old"}')

    assert reply == "new: a word of 3 letters"
    assert "unknown tool 'test__lookup'" in unknown
    replayer = Replayer(workflows=[DurableAgentWorkflow], data_converter=data_converter())
    await replayer.replay_workflow(await handle.fetch_history())
