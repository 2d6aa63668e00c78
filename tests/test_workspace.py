"""The workspace (docs/workspace.md): file tools in a folder per conversation, refused
whatever path leads out, and pinned to the worker whose disk holds the folder."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import WorkerProcess, activity_tasks, history_events, say, start_session, until
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import ActivityEnvironment

from activities import AgentActivities
from contract import WORKSPACE_TOOLS, SessionInput, ToolCall, ToolResult
from llm_client import LlmSettings
from worker import build_worker, connect, serve
from workflow import DurableAgentWorkflow
from workspace import Workspace

SpawnWorker = Callable[..., Awaitable[WorkerProcess]]


@dataclass
class Machine:
    """A worker with a disk of its own: its name (the worker's identity), its root."""

    name: str
    root: Path
    queue: str


def machine(
    client: Client, task_queue: str, root: Path, name: str, cache: int = 0, **limits: float
):
    """A worker named `name` keeping workspaces in `root` (its own disk), and its queue.
    By default it caches no workflow, so every task replays the history so far."""
    workspace = Workspace(root, **limits)  # type: ignore[arg-type]
    activities = AgentActivities(LlmSettings(), root / "notes.jsonl", workspace=workspace)
    running = serve(client, task_queue, activities, max_cached_workflows=cache, identity=name)
    return Machine(name, root, workspace.queue or ""), running


@pytest.fixture
async def two_machines(
    client: Client, task_queue: str, tmp_path: Path
) -> AsyncIterator[tuple[Machine, Machine]]:
    # A client each: the SDK refuses two workers of one queue and build id on one client.
    second = await connect(client.service_client.config.target_host)
    a, running_a = machine(client, task_queue, tmp_path / "a", "worker-a")
    b, running_b = machine(second, task_queue, tmp_path / "b", "worker-b")
    async with running_a, running_b:
        yield a, b


@dataclass(frozen=True)
class Ran:
    """One activity of a history: its type, the tool, the queue it went to, who ran it."""

    activity: str
    tool: str
    queue: str
    worker: str


def holder_of(file_calls: list[Ran], machines: tuple[Machine, ...]) -> Machine:
    """The machine that took the conversation's first file call, from the shared queue."""
    first = file_calls[0]
    assert first.queue not in {m.queue for m in machines}, "the first call was pinned"
    return next(m for m in machines if m.name == first.worker)


async def activities_run(client: Client, handle: WorkflowHandle) -> list[Ran]:
    """The activities of the run's history, in order, with the queue and the worker of each."""
    ran = []
    for scheduled, started in await activity_tasks(handle):
        kind, tool = scheduled.activity_type.name, ""
        if kind == "execute_tool":
            [call] = await client.data_converter.decode(scheduled.input.payloads, [ToolCall])
            tool = call.name
        worker = started.identity if started else ""
        ran.append(Ran(kind, tool, scheduled.task_queue.name, worker))
    return ran


def tree(root: Path) -> dict[str, str]:
    """Every entry under `root`, without following links: what it is, or holds."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(root))] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[str(path.relative_to(root))] = path.read_bytes().decode(errors="replace")
        else:
            found[str(path.relative_to(root))] = "folder" if path.is_dir() else "special"
    return found


def use(tool: str, **arguments: str) -> str:
    return f"use {tool} {json.dumps(arguments)}"


# Each: what the model asks for, and the reason it reads.
ESCAPES = [
    (use("read_file", path="../x"), "'..' is refused"),
    (use("write_file", path="../x", content="out"), "'..' is refused"),
    (use("read_file", path="/etc/passwd"), "is an absolute path"),
    (use("write_file", path="notes/../../../x", content="out"), "'..' is refused"),
    (use("write_file", path="bad\0name", content="x"), "cannot contain a NUL"),
    (use("write_file", path="n" * 300, content="x"), "longer than 255 bytes"),
    (use("read_file", path="link-to-secret"), "is a symbolic link: refused"),
    (use("write_file", path="link-to-secret", content="out"), "is a symbolic link: refused"),
    (use("read_file", path="link-out/secret.txt"), "link-out is a symbolic link"),
    (use("write_file", path="link-out/new.txt", content="out"), "link-out is a symbolic link"),
    (use("read_file", path="pipe"), "is a special file: refused"),
    (use("read_file", path="blob.bin"), "is not text"),
    (use("write_file", path="keep.txt", content="x" * 65), "a file holds at most 64"),
    (use("write_file", path="one-too-many.txt", content="x"), "holds 6 files and folders"),
    (use("list_files", path="link-out"), "link-out is a symbolic link"),
]


async def test_every_path_that_leads_out_is_refused_and_the_workspace_is_untouched(
    client: Client, task_queue: str, tmp_path: Path
):
    # Cached: eighteen turns replayed from the start at every task would take long.
    limits = {"max_file_bytes": 64, "max_files": 6}
    only, running = machine(client, task_queue, tmp_path / "disk", "worker", 100, **limits)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    async with running:
        handle = await start_session(client, task_queue)
        assert await say(handle, "write file keep.txt: kept") == "Wrote keep.txt (4 bytes)."
        assert await say(handle, "write file notes/a.md: a") == "Wrote notes/a.md (1 bytes)."
        [folder] = [p for p in only.root.iterdir() if p.is_dir()]
        # What another process may have left there: links out, a FIFO, a binary file.
        (folder / "link-out").symlink_to(outside)
        (folder / "link-to-secret").symlink_to(outside / "secret.txt")
        os.mkfifo(folder / "pipe")
        (folder / "blob.bin").write_bytes(b"\x00\x01binary")
        before, outside_before = tree(folder), tree(outside)

        for asked, reason in ESCAPES:
            reply = await say(handle, asked)
            tool = asked.split()[1]
            assert reply.startswith(f"The {tool} tool failed. Error: "), asked
            assert reason in reply, (asked, reply)

        assert tree(folder) == before
        assert tree(outside) == outside_before
        listed = await say(handle, "list files")
    assert "link-out (symbolic link: the tools refuse it)" in listed
    assert "keep.txt (4 bytes)" in listed


async def test_every_file_call_lands_on_the_worker_that_took_the_first(
    client: Client, task_queue: str, two_machines: tuple[Machine, Machine]
):
    handle = await start_session(client, task_queue)
    assert await say(handle, "What is 1 + 1?") == "1 + 1 = 2"
    assert await say(handle, "write file plan.md: step one") == "Wrote plan.md (8 bytes)."
    for number in range(2, 4):
        assert await say(handle, f"What is {number} + {number}?") == (
            f"{number} + {number} = {number * 2}"
        )
        assert await say(handle, "read file plan.md") == "step one"
    assert await say(handle, "list files") == "plan.md (8 bytes)"
    assert await say(handle, "search files for STEP") == "plan.md:1: step one"

    ran = await activities_run(client, handle)
    assert {r.activity for r in ran} == {"plan_next_action", "execute_tool"}
    first, *after = [r for r in ran if r.tool in WORKSPACE_TOOLS]
    assert (first.tool, first.queue) == ("write_file", task_queue)
    holder = holder_of([first], two_machines)
    assert len(after) == 4
    assert {(r.queue, r.worker) for r in after} == {(holder.queue, holder.name)}
    # The model calls and the other tools stay on the shared queue, run by either worker
    # (the two workers often alternate, so the model calls alone may all land on one).
    rest = [r for r in ran if r.tool not in WORKSPACE_TOOLS]
    assert {r.queue for r in rest} == {task_queue}
    assert {r.worker for r in rest} == {"worker-a", "worker-b"}
    other = next(m for m in two_machines if m is not holder)
    assert [p.name for p in holder.root.rglob("plan.md")] == ["plan.md"]
    assert not list(other.root.rglob("plan.md"))


async def test_the_pin_survives_continue_as_new(
    client: Client, task_queue: str, two_machines: tuple[Machine, Machine]
):
    handle = await start_session(client, task_queue, SessionInput(continue_as_new_after_events=20))
    first_run = (await handle.describe()).run_id
    assert await say(handle, "write file a.txt: from the first run") == "Wrote a.txt (18 bytes)."
    for _ in range(4):
        assert await say(handle, "read file a.txt") == "from the first run"

    runs = [await activities_run(client, run) for run in await runs_of(client, handle, first_run)]
    assert len(runs) >= 3, "expected several continue-as-new runs"
    file_calls = [r for run in runs for r in run if r.tool]
    holder = holder_of(file_calls, two_machines)
    assert len(file_calls) == 5
    assert {r.queue for r in file_calls[1:]} == {holder.queue}


async def runs_of(client: Client, handle: WorkflowHandle, first_run: str) -> list[WorkflowHandle]:
    """The conversation's runs, from the first, following each continue-as-new."""
    runs = [client.get_workflow_handle(handle.id, run_id=first_run)]
    while True:
        last = (await history_events(runs[-1]))[-1]
        if last.event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            return runs
        next_run = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
        runs.append(client.get_workflow_handle(handle.id, run_id=next_run))


async def test_a_subagent_works_in_its_parents_workspace_even_when_it_writes_first(
    client: Client, task_queue: str, two_machines: tuple[Machine, Machine]
):
    handle = await start_session(client, task_queue)
    assert await say(handle, "delegate: write file brief.md: find 42") == (
        "Wrote brief.md (7 bytes)."
    )
    assert await say(handle, "read file brief.md") == "find 42"
    assert await say(handle, "write file brief.md: find 43") == "Wrote brief.md (7 bytes)."
    assert await say(handle, "delegate: read file brief.md") == "find 43"

    # Before the first delegation, the parent pinned its workspace with a listing of its
    # own; the subagents ran every file call there too.
    parent = [r for r in await activities_run(client, handle) if r.tool]
    holder = holder_of(parent, two_machines)
    assert [(r.tool, r.queue) for r in parent] == [
        ("list_files", task_queue),
        ("read_file", holder.queue),
        ("write_file", holder.queue),
    ]
    children = [
        [(r.tool, r.queue) for r in await activities_run(client, child) if r.tool]
        for child in [
            client.get_workflow_handle(subagent.workflow_id)
            for subagent in await handle.query(DurableAgentWorkflow.subagents)
        ]
    ]
    assert children == [[("write_file", holder.queue)], [("read_file", holder.queue)]]


async def test_pinned_worker_killed_and_restarted_the_conversation_goes_on_with_its_files(
    client: Client, task_queue: str, tmp_path: Path, spawn_worker: SpawnWorker
):
    disk = {"WORKSPACE_ROOT": str(tmp_path / "disk")}
    holder = await spawn_worker(**disk)
    handle = await start_session(client, task_queue)
    assert await say(handle, "write file todo.md: survive") == "Wrote todo.md (7 bytes)."
    holder.kill()

    _, elsewhere = machine(client, task_queue, tmp_path / "elsewhere", "elsewhere")
    async with elsewhere:
        turn = asyncio.create_task(say(handle, "read file todo.md"))
        await until(lambda: file_call_waits(handle))
        # Back on the same disk (in this process: a second subprocess start is seconds
        # more), it reads its identity there, and polls the same queue.
        second = await connect(client.service_client.config.target_host)
        back, restarted = machine(second, task_queue, Path(disk["WORKSPACE_ROOT"]), "back")
        async with restarted:
            assert await turn == "survive"
            assert await say(handle, "write file todo.md: done") == "Wrote todo.md (4 bytes)."
    first, *after = [r for r in await activities_run(client, handle) if r.tool]
    assert first.queue == task_queue
    assert [(r.queue, r.worker) for r in after] == [(back.queue, "back")] * 2


async def file_call_waits(handle: WorkflowHandle) -> bool:
    description = await handle.describe()
    return any(
        p.activity_type.name == "execute_tool"
        for p in description.raw_description.pending_activities
    )


async def test_pinned_worker_gone_for_good_the_model_reads_workspace_unavailable_in_time(
    client: Client, task_queue: str, tmp_path: Path
):
    _, holder = machine(client, task_queue, tmp_path / "gone", "gone", unavailable_after_s=2)
    handle = await start_session(client, task_queue)
    async with holder:
        assert await say(handle, "write file x.md: lost") == "Wrote x.md (4 bytes)."

    _, elsewhere = machine(client, task_queue, tmp_path / "elsewhere", "elsewhere")
    async with elsewhere:
        started = time.monotonic()
        reply = await say(handle, "read file x.md")
        waited = time.monotonic() - started
        assert reply.startswith("The read_file tool failed. Error: workspace unavailable: ")
        assert "did not take the call within 2 s" in reply
        assert 2 <= waited < 10
        assert await say(handle, "What is 2 + 2?") == "2 + 2 = 4"  # The chat goes on.


async def test_a_retried_write_is_the_same_file_and_a_retried_edit_says_it_applied(
    tmp_path: Path,
):
    activities = AgentActivities(LlmSettings(), tmp_path / "n", workspace=Workspace(tmp_path))

    async def attempt(name: str, folder: str | None = None, **arguments: str) -> ToolResult:
        # The same activity (the environment's ids), run again as a retry would run it.
        call = ToolCall("c1", name, json.dumps(arguments), workspace=folder)
        return await ActivityEnvironment().run(activities.execute_tool, call)

    # The first file call (no folder yet) makes the folder, twice the same one.
    first = [await attempt("write_file", path="f.txt", content="a b") for _ in range(2)]
    assert [r.content for r in first] == ["Wrote f.txt (3 bytes)."] * 2
    pin = first[0].workspace
    assert pin is not None and first[1].workspace == pin
    edited = [await attempt("edit_file", pin.folder, path="f.txt", old_text="a", new_text="a a")]
    edited += [await attempt("edit_file", pin.folder, path="f.txt", old_text="a", new_text="a a")]
    assert [r.content for r in edited] == [
        "Edited f.txt.",
        "Already applied: f.txt has the new text.",
    ]
    assert edited[0].workspace is None  # Pinned calls carry no pin.
    assert (tmp_path / pin.folder / "f.txt").read_text() == "a a b"
    assert (await attempt("read_file", pin.folder, path="f.txt")).content == "a a b"


async def test_a_worker_without_a_workspace_takes_the_first_file_call_the_next_asks_again(
    client: Client, task_queue: str, tmp_path: Path
):
    handle = await start_session(client, task_queue)
    keeps_none = AgentActivities(LlmSettings(), tmp_path / "notes.jsonl")
    async with build_worker(client, task_queue, keeps_none):
        reply = await say(handle, "write file a.md: x")
    assert reply == (
        "The write_file tool failed. Error: no workspace: the agent's workers keep no files"
    )
    only, running = machine(client, task_queue, tmp_path / "disk", "worker", 100)
    async with running:
        assert await say(handle, "write file a.md: x") == "Wrote a.md (1 bytes)."
        assert await say(handle, "read file a.md") == "x"
    assert [(r.tool, r.queue) for r in await activities_run(client, handle) if r.tool] == [
        ("write_file", task_queue),
        ("write_file", task_queue),
        ("read_file", only.queue),
    ]


async def test_with_shared_storage_every_worker_runs_file_calls_on_the_shared_queue(
    client: Client, task_queue: str, tmp_path: Path
):
    shared = tmp_path / "nfs"
    second = await connect(client.service_client.config.target_host)
    _, running_a = machine(client, task_queue, shared, "worker-a", affinity=False)
    _, running_b = machine(second, task_queue, shared, "worker-b", affinity=False)
    async with running_a, running_b:
        handle = await start_session(client, task_queue)
        assert await say(handle, "write file s.md: shared") == "Wrote s.md (6 bytes)."
        for _ in range(3):
            assert await say(handle, "read file s.md") == "shared"

    ran = await activities_run(client, handle)
    assert {r.queue for r in ran} == {task_queue}
    assert len([r for r in ran if r.tool in WORKSPACE_TOOLS]) == 4
