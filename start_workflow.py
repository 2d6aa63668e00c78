"""The chat client: starts or attaches to a conversation and talks to it.

    uv run start_workflow.py                      # interactive chat, new session
    uv run start_workflow.py --session ID         # attach to (or start) session ID
    uv run start_workflow.py --message "Hi" ...   # send, print each reply, exit 0
    uv run start_workflow.py --session ID --approve [CALL_ID]   # or --deny [CALL_ID]
    uv run start_workflow.py --session ID --end   # end a session, print its transcript
                                                  # (a subagent's id: print what it did)
    uv run start_workflow.py --session ID --budget calls=20,cost=0.5   # set its limits
    uv run start_workflow.py --usage --message "Hi"   # and what each turn used
    uv run start_workflow.py --embedded ...       # with its own dev server and worker

The client holds no state of its own: the conversation lives in the workflow, so the
client can crash, or be stopped with Ctrl-C, and `--session ID` picks up where it was.
Each message carries an update id, so resending it after a lost connection never makes
the agent answer it twice.

A tool call that needs approval waits in the workflow, not here: the interactive chat
asks `approve? [y/N]`; with `--message` the client says what waits and how to decide it,
and exits with code 3 (EXIT_AWAITING_APPROVAL) while the turn keeps waiting in Temporal.

A turn that delegates says so on stderr, one line per subagent, with the subagent's
workflow id: `--session THAT_ID --end` prints the subagent's transcript.

What a conversation spends goes to stderr too: with `--usage`, a line per turn; `/usage`
in the interactive chat; the totals when a chat ends (docs/usage.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, TypeVar

from dotenv import load_dotenv
from temporalio.client import (
    Client,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
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

import deployment
import tracing
import worker
from approval_prompts import (
    Approver,
    AwaitingApproval,
    asking_on,
    decide,
    nobody_to_ask,
    report_and_stop,
)
from contract import PendingApproval, SessionInput, Transcript
from dev_server import NoTemporalBinary, port_is_free, start_dev_server
from stream_view import TurnView
from usage_lines import print_usage, set_budget
from workflow import DurableAgentWorkflow

T = TypeVar("T")
UI_PORT = 8233
WAITING_NOTICE_AFTER_S = 5.0
RETRY_EVERY_S = 2.0
APPROVAL_CHECK_EVERY_S = 0.5
END_WORDS = {"quit", "exit", "bye"}
USAGE_COMMAND = "/usage"
EXIT_AWAITING_APPROVAL = 3
"""`--message` and `--approve`/`--deny`: a turn waits for a person's decision."""


class ChatError(Exception):
    """A failure the user should read, not a traceback."""


@asynccontextmanager
async def embedded_temporal(task_queue: str) -> AsyncIterator[Client]:
    """A dev server and a worker inside this process, for a one-command demo."""
    ui = port_is_free(UI_PORT)
    async with await start_dev_server(ui_port=UI_PORT if ui else None) as env:
        where = f"Web UI at http://localhost:{UI_PORT}" if ui else "Web UI off (port in use)"
        target = env.client.service_client.config.target_host
        print(f"Embedded Temporal dev server at {target}; {where}.", file=sys.stderr)
        # The dev server's own client has the SDK's default data converter; connect as
        # every other process does, so encryption (if configured) applies here too.
        client = await worker.connect(target)
        version = deployment.deployment_config()
        await deployment.make_current_if_first(client, version)  # on a fresh server, it is
        async with (
            worker.configured_activities() as activities,
            worker.serve(client, task_queue, activities, deployment_config=version),
        ):
            yield client


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


async def send(
    handle: WorkflowHandle, text: str, approver: Approver, view: TurnView | None = None
) -> str:
    """Send one message and wait for its reply, however long the system is down. With a
    view, the reply streams: the view prints it as the model writes it."""
    update_id = str(uuid.uuid4())

    def request() -> Awaitable[str]:
        return handle.execute_update(
            DurableAgentWorkflow.send_message, args=[text, view is not None], id=update_id
        )

    return await await_reply(handle, update_id, request, approver, view)


async def await_reply(
    handle: WorkflowHandle,
    update_id: str,
    request: Callable[[], Awaitable[str]],
    approver: Approver,
    view: TurnView | None = None,
) -> str:
    """Wait for the reply of the turn `update_id`, resending `request` while Temporal is
    unreachable, and handing each of its tool calls that waits for approval to `approver`.
    A view, if given, shows the turn as it happens, the reply included."""
    if view is None:
        return await _reply(handle, update_id, request, approver)
    view.watch(update_id)
    reply = None
    try:
        reply = await _reply(handle, update_id, request, approver)
        return reply
    finally:
        await view.finish(reply)


async def _reply(
    handle: WorkflowHandle,
    update_id: str,
    request: Callable[[], Awaitable[str]],
    approver: Approver,
) -> str:
    asked: set[str] = set()
    announced: set[str] = set()
    started = time.monotonic()
    while True:
        attempt = asyncio.ensure_future(request())
        try:
            noticed = False
            while not attempt.done():
                await asyncio.wait({attempt}, timeout=APPROVAL_CHECK_EVERY_S)
                if attempt.done():
                    break
                if not noticed and time.monotonic() - started > WAITING_NOTICE_AFTER_S:
                    noticed = True
                    print(
                        "(still waiting for the reply; if no worker is running, start one "
                        "with `uv run worker.py`. Ctrl-C leaves the conversation safe.)",
                        file=sys.stderr,
                    )
                waiting = [
                    p for p in await _waiting_calls(handle, update_id) if p.call_id not in asked
                ]
                if waiting:
                    asked.update(p.call_id for p in waiting)
                    await approver(handle, waiting, attempt)
                await announce_subagents(handle, update_id, announced)
            reply = await attempt
            await announce_subagents(handle, update_id, announced)  # The quick ones, too.
            return reply
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
        finally:
            # Stop waiting (the update itself lives on in Temporal); the SDK turns the
            # cancellation into an error nobody needs to read.
            attempt.cancel()
            attempt.add_done_callback(lambda done: done.cancelled() or done.exception())


async def _waiting_calls(handle: WorkflowHandle, update_id: str) -> list[PendingApproval]:
    """The calls of the turn `update_id` that wait for a decision."""
    pending = await _quick_query(handle, DurableAgentWorkflow.pending_approvals, [])
    return [p for p in pending if p.turn_update_id == update_id]


async def announce_subagents(handle: WorkflowHandle, update_id: str, announced: set[str]) -> None:
    """One line on stderr for each subagent the turn `update_id` started, once each."""
    for subagent in await _quick_query(handle, DurableAgentWorkflow.subagents, []):
        if subagent.turn_update_id == update_id and subagent.workflow_id not in announced:
            announced.add(subagent.workflow_id)
            print(f"delegated to subagent {subagent.workflow_id}: {subagent.task}", file=sys.stderr)


async def _quick_query(handle: WorkflowHandle, query: Any, default: T) -> T:
    """A query's answer, or `default` if nobody can answer now: a query needs a running
    worker, and the reply's own wait already tells the user when there is none."""
    try:
        return await handle.query(query, rpc_timeout=timedelta(seconds=1))
    except (RPCError, WorkflowQueryFailedError):
        return default


async def decide_waiting(
    handle: WorkflowHandle, call_id: str | None, approved: bool, reason: str
) -> list[str]:
    """--approve/--deny: decide one waiting call, or every one; return their turns' ids."""
    try:
        pending = await handle.query(DurableAgentWorkflow.pending_approvals)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise ChatError(f"There is no session {handle.id}.") from None
        raise
    chosen = [p for p in pending if call_id in (None, p.call_id)]
    if not chosen:
        waiting = ", ".join(p.call_id for p in pending) or "none"
        raise ChatError(f"No tool call {call_id or ''} waits in session {handle.id} ({waiting}).")
    for call in chosen:
        await decide(handle, call, approved, reason)
    return list(dict.fromkeys(call.turn_update_id for call in chosen))


async def reply_of(
    handle: WorkflowHandle, turn_id: str, approver: Approver, view: TurnView | None = None
) -> str:
    """The reply to a message another client sent (its turn's update id)."""
    update = handle.get_update_handle(turn_id)
    return await await_reply(handle, turn_id, update.result, approver, view)


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
    except WorkflowFailureError as err:  # It failed, timed out or was cancelled (a subagent).
        cause = err.cause
        why = cause.message if isinstance(cause, FailureError) else str(err)
        raise ChatError(f"Session {handle.id} ended without a transcript: {why}") from None


def print_transcript(transcript: Transcript) -> None:
    print("--- transcript ---")
    for message in transcript.messages:
        if message.role in ("user", "assistant") and message.content:
            print(f"{'you' if message.role == 'user' else 'agent'}> {message.content}")


async def chat(handle: WorkflowHandle, lines: asyncio.Queue[str | None], view: TurnView) -> None:
    """The interactive loop; quit, exit or bye end the chat and print the transcript.
    Replies stream as the model writes them."""
    print(f"Session {handle.id}. Type a message; quit, exit or bye end the chat.", file=sys.stderr)
    ask = asking_on(lines)
    try:
        # Back after Ctrl-C, or after a script left a call waiting: follow that turn first.
        if turn_id := await _quick_query(handle, DurableAgentWorkflow.turn_in_progress, None):
            await reply_of(handle, turn_id, ask, view)
        await _converse(handle, lines, ask, view)
    except AwaitingApproval:
        print(
            "(The call keeps waiting; decide it later with --approve or --deny.)", file=sys.stderr
        )


async def _converse(
    handle: WorkflowHandle, lines: asyncio.Queue[str | None], ask: Approver, view: TurnView
) -> None:
    while True:
        print("you> ", end="", flush=True)
        text = await lines.get()
        if text is None:  # End of input: leave the session running, as Ctrl-C does.
            return
        word = text.strip().lower()
        if not word:
            continue
        if word == USAGE_COMMAND:
            await print_usage(handle)
            continue
        if word == "bye" or word not in END_WORDS:
            try:
                await send(handle, text, ask, view)
            except ChatError as err:
                print(f"error: {err}", file=sys.stderr)
        if word in END_WORDS:
            print_transcript(await end_session(handle))
            await print_usage(handle, turn=False)
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
    deciding = args.approve is not None or args.deny is not None
    if args.end:
        handle = client.get_workflow_handle_for(DurableAgentWorkflow.run, session)
        print_transcript(await end_session(handle))
        await print_usage(handle, turn=False)
        return 0
    if args.budget and not args.message and not deciding:
        await set_budget(await open_session(client, session, task_queue), args.budget)
        return 0
    if not args.message and not deciding:
        view = TurnView(client, session, prefix="agent> ")
        await chat(await open_session(client, session, task_queue), _stdin_lines(), view)
        return 0
    if deciding:
        handle = client.get_workflow_handle_for(DurableAgentWorkflow.run, session)
    else:
        handle = await open_session(client, session, task_queue)
    print(f"Session {session} (continue it with --session {session})", file=sys.stderr)
    approver = script_approver(args.embedded)
    if args.budget:
        await set_budget(handle, args.budget)
    # stdout carries the replies alone; with --stream, each as the model writes it.
    view = TurnView(client, session, prefix="") if args.stream else None
    try:
        if deciding:
            approved = args.approve is not None
            call_id = (args.approve if approved else args.deny) or None
            for turn_id in await decide_waiting(handle, call_id, approved, args.reason):
                reply = await reply_of(handle, turn_id, approver, view)
                if view is None:
                    print(reply, flush=True)
        for text in args.message or []:
            reply = await send(handle, text, approver, view)
            if view is None:
                print(reply, flush=True)
            if args.usage:
                await print_usage(handle, total=False)
    except AwaitingApproval:
        return EXIT_AWAITING_APPROVAL
    return 0


def script_approver(embedded: bool) -> Approver:
    """Without the interactive chat, a waiting call is reported and the script stops; an
    embedded server dies with this process, so there the terminal is asked, if any."""
    if not embedded:
        return report_and_stop
    return asking_on(_stdin_lines()) if sys.stdin.isatty() else nobody_to_ask


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
    decision = parser.add_mutually_exclusive_group()
    decision.add_argument(
        "--approve", nargs="?", const="", metavar="CALL_ID", help="approve waiting tool calls"
    )
    decision.add_argument(
        "--deny", nargs="?", const="", metavar="CALL_ID", help="deny waiting tool calls"
    )
    parser.add_argument("--reason", default="", help="why, with --deny")
    parser.add_argument(
        "--stream", action="store_true", help="with --message: print replies as they are written"
    )
    parser.add_argument(
        "--usage", action="store_true", help="with --message: print what each turn used"
    )
    parser.add_argument(
        "--budget",
        metavar="calls=N,tokens=N,cost=USD",
        help="set the session's limits (none: lift)",
    )
    parser.add_argument("--embedded", action="store_true", help="run a dev server and worker")
    parser.add_argument("--address", help=f"Temporal frontend (default {worker.DEFAULT_ADDRESS})")
    parser.add_argument("--task-queue", help=f"default {worker.DEFAULT_TASK_QUEUE}")
    args = parser.parse_args()
    if (args.approve is not None or args.deny is not None) and not args.session:
        parser.error("--approve and --deny need --session ID")
    load_dotenv()
    quiet_sdk_core()
    try:
        tracing.setup("durable-agent-chat")  # spans go to stderr or a collector, never stdout
        if args.embedded:
            async with embedded_temporal(worker.task_queue_name(args.task_queue)) as client:
                return await run(args, client)
        return await run(args, await worker.connect(args.address))
    except (ChatError, worker.TemporalUnreachable, NoTemporalBinary, ValueError) as err:
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
