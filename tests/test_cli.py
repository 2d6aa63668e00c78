"""The chat client as a user runs it, in a subprocess."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import chat_client
from temporalio.client import Client

from start_workflow import EXIT_AWAITING_APPROVAL
from tools import demo_weather
from workflow import DurableAgentWorkflow


async def test_message_flags_print_one_reply_per_line_and_the_session_continues(
    client: Client, task_queue: str, worker: object
):
    where = ["--address", client.service_client.config.target_host, "--task-queue", task_queue]

    first = await chat_client(
        *where,
        "--session",
        f"cli-{task_queue}",
        "--message",
        "What is 25 * 4?",
        "--message",
        "What is the weather in Oslo?",
    )
    again = await chat_client(*where, "--session", f"cli-{task_queue}", "--message", "hello")
    ended = await chat_client(*where, "--session", f"cli-{task_queue}", "--end")

    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["25 * 4 = 100", demo_weather("Oslo")]
    assert "scripted offline model" in again.stdout
    assert ended.returncode == 0
    assert "you> hello" in ended.stdout and "agent> 25 * 4 = 100" in ended.stdout


async def test_delegation_prints_one_line_per_subagent_whose_transcript_end_prints(
    client: Client, task_queue: str, worker: object
):
    where = ["--address", client.service_client.config.target_host, "--task-queue", task_queue]
    session = f"cli-{task_queue}"
    two_tasks = "delegate: What is 6 * 7?; delegate: What is 2 + 2?"

    delegated = await chat_client(*where, "--session", session, "--message", two_tasks)
    first, second = await client.get_workflow_handle(session).query(DurableAgentWorkflow.subagents)
    child = await chat_client(*where, "--session", first.workflow_id, "--end")

    assert delegated.returncode == 0, delegated.stderr
    assert delegated.stdout == "6 * 7 = 42; 2 + 2 = 4\n"  # stdout: replies only
    assert f"delegated to subagent {first.workflow_id}: What is 6 * 7?\n" in delegated.stderr
    assert f"delegated to subagent {second.workflow_id}: What is 2 + 2?\n" in delegated.stderr
    assert child.returncode == 0, child.stderr
    assert child.stdout == "--- transcript ---\nyou> What is 6 * 7?\nagent> 6 * 7 = 42\n"


async def test_a_script_stops_with_code_3_at_a_waiting_call_and_approve_prints_the_reply(
    client: Client, task_queue: str, worker: object, notes_file: Path
):
    where = ["--address", client.service_client.config.target_host, "--task-queue", task_queue]
    session = ["--session", f"cli-{task_queue}"]

    waiting = await chat_client(*where, *session, "--message", "note: call Ann")
    approved = await chat_client(*where, *session, "--approve")

    assert waiting.returncode == EXIT_AWAITING_APPROVAL, waiting.stderr
    assert waiting.stdout == ""
    assert 'Waiting for approval: save_note {"text": "call Ann"}' in waiting.stderr
    command = f"uv run start_workflow.py --session cli-{task_queue} --approve call_"
    assert command in waiting.stderr
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout == "Saved your note: call Ann\n"
    assert "Approved: save_note" in approved.stderr
    assert len(notes_file.read_text().splitlines()) == 1


async def test_deny_by_call_id_with_a_reason_prints_the_models_answer(
    client: Client, task_queue: str, worker: object, notes_file: Path
):
    where = ["--address", client.service_client.config.target_host, "--task-queue", task_queue]
    session = ["--session", f"cli-{task_queue}"]
    await chat_client(*where, *session, "--message", "note: call Bob")
    handle = client.get_workflow_handle(f"cli-{task_queue}")
    [call] = await handle.query(DurableAgentWorkflow.pending_approvals)

    denied = await chat_client(*where, *session, "--deny", call.call_id, "--reason", "Bob moved")
    again = await chat_client(*where, *session, "--deny", call.call_id)

    assert denied.returncode == 0, denied.stderr
    assert denied.stdout == "I did not run save_note. Not run: the user denied it (Bob moved).\n"
    assert again.returncode == 1
    assert f"No tool call {call.call_id} waits in session" in again.stderr
    assert not notes_file.exists()


async def test_rejected_message_exits_non_zero_with_the_reason(
    client: Client, task_queue: str, worker: object
):
    where = ["--address", client.service_client.config.target_host, "--task-queue", task_queue]

    result = await chat_client(*where, "--message", "   ")

    assert result.returncode == 1
    assert "error: The message is empty." in result.stderr
    assert "Traceback" not in result.stderr


async def test_no_server_says_what_to_run_instead_of_a_traceback():
    result = await chat_client("--address", "127.0.0.1:1", "--message", "hi")

    assert result.returncode == 1
    assert "Cannot reach Temporal at 127.0.0.1:1" in result.stderr
    assert "uv run dev_server.py" in result.stderr
    assert "Traceback" not in result.stderr


async def test_embedded_mode_answers_with_no_server_running(tmp_path: Path):
    result = await chat_client("--embedded", "--message", "What is 25 * 4?", timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "25 * 4 = 100\n"  # stdout carries replies only
    # The embedded server's own log (a "Cluster Id" warning at every start) goes to its file.
    assert "level=" not in result.stderr and "Temporal Server:" not in result.stderr
    assert "--session" not in result.stderr  # its server dies with it: nothing to resume


async def test_embedded_script_says_a_waiting_call_cannot_be_approved_after_it_exits():
    result = await chat_client("--embedded", "--message", "note: lost", timeout=120)

    assert result.returncode == EXIT_AWAITING_APPROVAL
    assert "cannot be approved later" in result.stderr
    assert "Traceback" not in result.stderr


async def test_budget_and_usage_flags_stop_a_turn_say_what_it_used_and_lift_the_limit(
    client: Client, task_queue: str, worker: object
):
    where = ["--address", client.service_client.config.target_host, "--task-queue", task_queue]
    session = ["--session", f"cli-{task_queue}"]

    limited = await chat_client(*where, *session, "--budget", "calls=1,cost=0.5")
    stopped = await chat_client(*where, *session, "--usage", "--message", "What is 25 * 4?")
    nonsense = await chat_client(*where, *session, "--budget", "calls=-1")
    lifted = await chat_client(
        *where, *session, "--budget", "calls=none", "--usage", "--message", "What is 25 * 4?"
    )
    ended = await chat_client(*where, *session, "--end")

    assert limited.returncode == 0, limited.stderr
    assert f"Budget of session cli-{task_queue}: calls 1, tokens none, cost 0.5" in limited.stderr
    assert stopped.stdout.startswith(
        "I stopped before the next model call: this conversation has reached its budget of "
        "1 model call (used: 1). To go on, raise the limit"
    )
    assert re.search(
        r"\(usage, this turn: 1 model call, \d+ tokens in \(0 cached\), \d+ out, \$0\)",
        stopped.stderr,
    )
    assert nonsense.returncode == 1
    assert nonsense.stderr.endswith(
        "error: The model_calls limit must be a whole number, 0 or more (got -1).\n"
    )
    assert lifted.stdout == "25 * 4 = 100\n"
    assert "calls none, tokens none, cost 0.5" in lifted.stderr
    assert "(usage, this turn: 2 model calls, " in lifted.stderr
    assert "(usage, the conversation: 3 model calls, " in ended.stderr
