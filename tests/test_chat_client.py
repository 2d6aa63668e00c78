"""The chat client as a person meets it: typed into a terminal (a pseudo-terminal here), or
run as a script while workers are missing, failing, or have the wrong key."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    chat_client,
    chat_client_process,
    history_events,
    say,
    start_session,
    until,
)
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from activities import AgentActivities, Faults
from codec import new_key
from llm_client import LlmSettings
from tools import demo_weather
from worker import WorkerProcess, build_worker, connect
from workflow import MAX_MESSAGE_CHARS, DurableAgentWorkflow

SpawnWorker = Callable[..., Awaitable[WorkerProcess]]


class Terminal:
    """The chat client on a pseudo-terminal: what a person types, and what they see."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self._master, slave = pty.openpty()
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "start_workflow.py"), *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            env={**os.environ, "TERM": "xterm", **(env or {})},
            start_new_session=True,  # its own session, with this terminal as its own:
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # Ctrl-C is SIGINT
        )
        os.close(slave)
        self.settings = termios.tcgetattr(self._master)
        self.seen = ""
        self._read_to = 0
        os.set_blocking(self._master, False)
        asyncio.get_running_loop().add_reader(self._master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except OSError:  # The client has exited: the terminal has no other end.
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self._master)
        self.seen += data.decode(errors="replace").replace("\r\n", "\n")

    async def sees(self, text: str, timeout_s: float = 30) -> str:
        """Wait until `text` shows after what was seen last; return what came up to it."""
        try:
            await until(lambda: text in self.seen[self._read_to :], timeout_s)
        except AssertionError:
            raise AssertionError(f"{text!r} not shown; the screen:\n{self.seen[-3000:]}") from None
        end = self.seen.index(text, self._read_to) + len(text)
        shown, self._read_to = self.seen[self._read_to : end], end
        return shown

    async def types(self, line: bytes | str, enter: bool = True) -> None:
        data = (line.encode() if isinstance(line, str) else line) + (b"\r" if enter else b"")
        while data:  # A long paste fills the terminal's buffer: write as the client reads.
            try:
                data = data[os.write(self._master, data[:1024]) :]
            except BlockingIOError:
                await asyncio.sleep(0.01)

    async def exits(self, timeout_s: float = 30) -> int:
        code = await until(lambda: self.process.poll() is not None, timeout_s)
        return self.process.returncode if code else -1

    def terminal_settings(self) -> list:
        return termios.tcgetattr(self._master)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        asyncio.get_running_loop().remove_reader(self._master)
        os.close(self._master)


@pytest.fixture
async def terminals() -> Callable[..., Terminal]:
    opened: list[Terminal] = []

    def open_one(*args: str, env: dict[str, str] | None = None) -> Terminal:
        opened.append(Terminal(*args, env=env))
        return opened[-1]

    yield open_one
    for terminal in opened:
        terminal.close()


def where(client: Client, task_queue: str) -> list[str]:
    return ["--address", client.service_client.config.target_host, "--task-queue", task_queue]


async def test_a_long_paste_arrives_whole_and_ctrl_d_says_how_to_resume(
    client: Client, task_queue: str, worker: object, terminals: Callable[..., Terminal]
):
    chat = terminals(*where(client, task_queue), "--session", f"tty-{task_queue}")
    await chat.sees("you> ")

    await chat.types("x" * 9000)  # a terminal in canonical mode passes 4 095 of them
    too_long = await chat.sees("you> ")
    await chat.types("What is 2 + 2?")
    answered = await chat.sees("you> ")
    await chat.types(b"\x04", enter=False)  # Ctrl-D
    code = await chat.exits()

    assert f"The message has 9000 characters; the limit is {MAX_MESSAGE_CHARS}." in too_long
    assert "agent> 2 + 2 = 4" in answered
    assert code == 0
    assert chat.seen.endswith(
        "you> \nLeft the chat; the conversation is kept: resume it with "
        f"--session tty-{task_queue}.\n"
    )
    handle = client.get_workflow_handle(f"tty-{task_queue}")
    messages = (await handle.query(DurableAgentWorkflow.conversation)).messages
    assert [m.content for m in messages if m.role == "user"] == ["What is 2 + 2?"]


async def test_a_piped_line_that_is_not_utf8_is_refused_and_the_next_is_answered(
    client: Client, task_queue: str, worker: object
):
    chat = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "start_workflow.py"),
        *where(client, task_queue),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(
        chat.communicate(b"caf\xe9 au lait\nWhat is 3 * 3?\nquit\n"), timeout=60
    )

    assert chat.returncode == 0, err.decode()
    assert "error: that line has bytes that are not utf-8 text" in err.decode().lower()
    assert "agent> 3 * 3 = 9" in out.decode()
    assert "you> What is 3 * 3?" in out.decode()  # the transcript: one message, the good one
    assert "caf" not in out.decode()


async def test_reattaching_shows_the_last_exchange_and_ctrl_c_mid_turn_leaves_at_once(
    client: Client, task_queue: str, notes_file: Path, terminals: Callable[..., Terminal]
):
    slow_tools = AgentActivities(LlmSettings(), notes_file, Faults(tool_delay_s=2))
    async with build_worker(client, task_queue, slow_tools, max_cached_workflows=0):
        handle = await start_session(client, task_queue)
        await say(handle, "What is 9 * 9?")  # answered while no chat was attached
        chat = terminals(*where(client, task_queue), "--session", handle.id)
        attached = await chat.sees("agent> 9 * 9 = 81\nyou> ")
        await chat.types("What is 2 + 2?")
        await until(lambda: handle.query(DurableAgentWorkflow.turn_in_progress))
        await chat.types(b"\x03", enter=False)  # Ctrl-C while the tool works
        code = await chat.exits()
        await until(lambda: _answered(handle, "2 + 2 = 4"))  # the turn goes on in Temporal

    assert "(the last exchange:)\nyou> What is 9 * 9?\nagent> 9 * 9 = 81\nyou> " in attached
    assert code == 130
    assert chat.seen.endswith(  # the last thing the client printed; nothing came after it
        f"Left the chat; the conversation is kept: resume it with --session {handle.id}.\n"
    )
    assert "[tool]" not in chat.seen
    assert chat.terminal_settings() == chat.settings  # the terminal is given back as it was


async def _answered(handle: WorkflowHandle, reply: str) -> bool:
    transcript = await handle.query(DurableAgentWorkflow.conversation)
    return any(m.role == "assistant" and m.content == reply for m in transcript.messages)


class Script:
    """The chat client run as a script whose stderr a test reads while it runs."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stderr = ""
        self._reading = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> Script:
        return cls(await chat_client_process(*args, env=env))

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.stderr += line.decode()

    async def says(self, pattern: str, timeout_s: float = 30) -> None:
        """Wait until stderr has a match for the regular expression."""
        await until(lambda: re.search(pattern, self.stderr), timeout_s)

    async def result(self, timeout_s: float = 60) -> tuple[int, str]:
        assert self.process.stdout is not None
        stdout = await asyncio.wait_for(self.process.stdout.read(), timeout_s)
        await asyncio.wait_for(self.process.wait(), timeout_s)
        await self._reading
        return self.process.returncode or 0, stdout.decode()

    def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


async def test_a_slow_reply_says_why_the_model_failing_or_no_worker_polling(
    client: Client, task_queue: str, notes_file: Path
):
    failing_model = AgentActivities(LlmSettings(), notes_file, Faults(llm_failures=100))
    nobody = f"nobody-{task_queue}"
    async with build_worker(client, task_queue, failing_model):
        model_down = await Script.start(*where(client, task_queue), "--message", "What is 1 + 1?")
        no_worker = await Script.start(*where(client, nobody), "--message", "What is 1 + 1?")
        try:
            await model_down.says(
                r"\(the model call failed \d+ times, retrying: simulated failure: provider "
                r"outage, attempt \d+ \(FAULT_LLM_FAILURES=100\); Ctrl-C leaves"
            )
            await no_worker.says(re.escape(f"(no worker polls task queue {nobody}: start one"))
        finally:
            model_down.stop()
            no_worker.stop()

    assert "no worker" not in model_down.stderr  # its worker polls: the model is the problem
    assert f"`uv run worker.py --task-queue {nobody}`" in no_worker.stderr


async def test_readable_lines_one_per_tool_call_and_bye_ends_without_an_error_span(
    client: Client,
    task_queue: str,
    worker: object,
    notes_file: Path,
    tmp_path: Path,
    terminals: Callable[..., Terminal],
):
    traces = tmp_path / "client-spans.json"
    chat = terminals(
        *where(client, task_queue),
        env={"OTEL_TRACES_EXPORTER": "console", "TRACES_FILE": str(traces)},
    )
    await chat.sees("you> ")

    await chat.types("note: café in Zürich")
    asked = await chat.sees("approve? [y/N] ")
    await chat.types("y")
    approved = await chat.sees("you> ")
    await chat.types("What is the weather in Oslo and Lima?")
    weather = await chat.sees("you> ")
    await chat.types("delegate: What is 6 * 7?; delegate: What is 2 + 2?")
    delegated = await chat.sees("you> ")
    await chat.types("bye")
    code = await chat.exits()

    assert 'agent wants to run save_note {"text": "café in Zürich"}' in asked
    tool_line = '[tool] save_note {"text": "café in Zürich"} -> ok'
    assert approved.index('Approved: save_note {"text": "café in Zürich"}') < approved.index(
        tool_line
    )
    assert approved.count("[tool]") == 1
    assert f"agent> {demo_weather('Oslo')} {demo_weather('Lima')}\n" in weather
    assert weather.count("[tool] weather") == 2
    subagents = [line for line in delegated.splitlines() if line.startswith("delegated to")]
    assert [line.split(": ", 1)[1] for line in subagents] == ["What is 6 * 7?", "What is 2 + 2?"]
    assert "[tool] delegate" not in delegated
    assert "agent> 6 * 7 = 42; 2 + 2 = 4" in delegated
    assert code == 0
    assert "--- transcript ---" in chat.seen
    spans = traces.read_text()
    assert '"name": "SignalWorkflow:end_chat"' not in spans  # the model had ended it
    assert "already completed" not in spans  # the error span a signal to it would leave


async def test_approval_commands_say_one_clean_sentence(
    client: Client, task_queue: str, worker: object
):
    idle = await start_session(client, f"no-worker-{task_queue}")  # no worker polls it
    busy = await start_session(client, task_queue)
    started = time.monotonic()

    nothing, nosuch, no_worker, embedded = await asyncio.gather(
        chat_client(*where(client, task_queue), "--session", busy.id, "--approve"),
        chat_client(*where(client, task_queue), "--session", f"nosuch-{task_queue}", "--approve"),
        chat_client(*where(client, task_queue), "--session", idle.id, "--approve"),
        chat_client("--embedded", "--session", "earlier", "--message", "hi"),
    )

    assert (nothing.returncode, nothing.stderr) == (
        1,
        f"error: No tool call waits for approval in session {busy.id}.\n",
    )
    assert (nosuch.returncode, nosuch.stderr) == (
        1,
        f"error: There is no session nosuch-{task_queue}.\n",
    )
    assert no_worker.returncode == 1
    assert no_worker.stderr == (
        f"error: No worker is running for session {idle.id} (task queue no-worker-{task_queue}), "
        "so nothing can be decided now: start one with `uv run worker.py --task-queue "
        f"no-worker-{task_queue}`, then run this command again.\n"
    )
    assert time.monotonic() - started < 20  # not the query's 30 s wait for a worker
    assert embedded.returncode == 2
    assert "error: --embedded runs a server that lives in memory" in embedded.stderr
    assert "Traceback" not in nothing.stderr + nosuch.stderr + no_worker.stderr + embedded.stderr


async def test_a_message_refused_while_only_a_wrong_key_worker_runs_is_kept_and_answered_once(
    client: Client, task_queue: str, activities: AgentActivities
):
    address = client.service_client.config.target_host
    ours = {"ENCRYPTION_KEYS": new_key("ours"), "ENCRYPTION_KEY_ID": "ours"}
    theirs = {"ENCRYPTION_KEYS": new_key("theirs"), "ENCRYPTION_KEY_ID": "theirs"}
    with_our_key, with_their_key = (
        await connect(address, env=ours),
        await connect(address, env=theirs),
    )
    session = f"keys-{task_queue}"
    chat = gives_up = None
    try:
        async with build_worker(with_their_key, task_queue, activities):
            chat = await Script.start(
                *where(client, task_queue),
                "--session",
                session,
                "--message",
                "What is 6 * 7?",
                env=ours,
            )
            gives_up = await Script.start(
                *where(client, task_queue),
                "--session",
                session,
                "--message",
                "What's 1 + 1?",
                env=ours,
            )
            # The server refuses the update once the workflow task has failed a few times.
            await chat.says("Your message is kept and resent every 2 s", timeout_s=60)
            await gives_up.says("Your message is kept and resent every 2 s", timeout_s=30)
            gives_up.process.send_signal(signal.SIGINT)  # Ctrl-C
            gave_up, _ = await gives_up.result()
        async with build_worker(with_our_key, task_queue, activities):
            code, stdout = await chat.result(timeout_s=90)
            handle = with_our_key.get_workflow_handle(session)
            transcript = await handle.query(DurableAgentWorkflow.conversation)
    finally:
        for script in (chat, gives_up):
            if script is not None:
                script.stop()

    assert code == 0, chat.stderr
    assert stdout == "6 * 7 = 42\n"
    assert "the workers fail this conversation's workflow task" in chat.stderr
    assert "a worker with other ENCRYPTION_KEYS? Its error does not decode: a payload is " in (
        chat.stderr
    )
    assert "with key 'theirs', which is not in ENCRYPTION_KEYS" in chat.stderr
    assert gave_up == 130
    assert gives_up.stderr.endswith(
        f"Left the chat; the conversation is kept: resume it with --session {session}.\n"
        "Your last message was not delivered (Temporal refused it: no worker could run the "
        "conversation). Send it again with:\n"
        f"  uv run start_workflow.py --session {session} --message 'What'\"'\"'s 1 + 1?'\n"
    )
    events = [event.event_type for event in await history_events(handle)]
    assert events.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED) == 1
    assert [m.content for m in transcript.messages if m.role == "user"] == ["What is 6 * 7?"]
