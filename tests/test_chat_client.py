"""The chat client as a person meets it: typed into a terminal (a pseudo-terminal here), or
run as a script while workers are missing, failing, or have the wrong key."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import subprocess
import sys
import termios
from collections.abc import Awaitable, Callable

import pytest
from conftest import ROOT, until
from temporalio.client import Client

from worker import WorkerProcess
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
        await until(lambda: text in self.seen[self._read_to :], timeout_s)
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
