"""The chat client as a user runs it, in a subprocess."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

from tools import demo_weather

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


async def chat(*args: str, timeout: float = 60) -> Run:
    """Run the client in a subprocess; async, so the test's in-process worker keeps working."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "start_workflow.py"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    return Run(process.returncode or 0, stdout.decode(), stderr.decode())


async def test_message_flags_print_one_reply_per_line_and_the_session_continues(
    client: Client, task_queue: str, worker: object
):
    where = ["--address", client.service_client.config.target_host, "--task-queue", task_queue]

    first = await chat(
        *where,
        "--session",
        f"cli-{task_queue}",
        "--message",
        "What is 25 * 4?",
        "--message",
        "What is the weather in Oslo?",
    )
    again = await chat(*where, "--session", f"cli-{task_queue}", "--message", "note: call Ann")
    ended = await chat(*where, "--session", f"cli-{task_queue}", "--end")

    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["25 * 4 = 100", demo_weather("Oslo")]
    assert again.stdout.splitlines() == ["Saved your note: call Ann"]
    assert ended.returncode == 0
    assert "you> note: call Ann" in ended.stdout and "agent> 25 * 4 = 100" in ended.stdout


async def test_rejected_message_exits_non_zero_with_the_reason(
    client: Client, task_queue: str, worker: object
):
    where = ["--address", client.service_client.config.target_host, "--task-queue", task_queue]

    result = await chat(*where, "--message", "   ")

    assert result.returncode == 1
    assert "error: The message is empty." in result.stderr
    assert "Traceback" not in result.stderr


async def test_no_server_says_what_to_run_instead_of_a_traceback():
    result = await chat("--address", "127.0.0.1:1", "--message", "hi")

    assert result.returncode == 1
    assert "Cannot reach Temporal at 127.0.0.1:1" in result.stderr
    assert "uv run temporal server start-dev" in result.stderr
    assert "Traceback" not in result.stderr


async def test_embedded_mode_answers_with_no_server_running(tmp_path: Path):
    result = await chat("--embedded", "--message", "What is 25 * 4?", timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "25 * 4 = 100\n"  # stdout carries replies only
