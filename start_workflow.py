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

This file is the command line; `chat_session.py` talks to the conversation (send,
wait and say why, resend, decide, end) and `interactive_chat.py` is the `you>` prompt.
The client holds no state of its own: the conversation lives in the workflow, so the
client can crash, or be stopped with Ctrl-C, and `--session ID` picks up where it was
(docs/chat.md).

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
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dotenv import load_dotenv
from temporalio.client import Client
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

import codec
import deployment
import tracing
import worker
from approval_prompts import Approver, AwaitingApproval, asking_on, nobody_to_ask, report_and_stop
from chat_session import ChatError, ChatSession, print_transcript
from dev_server import LOG, NoTemporalBinary, port_is_free, start_dev_server
from interactive_chat import Terminal, chat, leave_on_ctrl_c
from stream_view import TurnView
from usage_lines import print_usage, set_budget

UI_PORT = 8233
EXIT_AWAITING_APPROVAL = 3
"""`--message` and `--approve`/`--deny`: a turn waits for a person's decision."""


@asynccontextmanager
async def embedded_temporal(task_queue: str) -> AsyncIterator[Client]:
    """A dev server and a worker inside this process, for a one-command demo."""
    ui = port_is_free(UI_PORT)
    async with await start_dev_server(ui_port=UI_PORT if ui else None) as env:
        where = f"Web UI at http://localhost:{UI_PORT}" if ui else "Web UI off (port in use)"
        target = env.client.service_client.config.target_host
        print(
            f"Embedded Temporal dev server at {target} (its log: {LOG}); {where}.", file=sys.stderr
        )
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


async def run(args: argparse.Namespace, client: Client) -> int:
    task_queue = worker.task_queue_name(args.task_queue)
    session = ChatSession(client, args.session or f"chat-{uuid.uuid4().hex[:8]}")
    deciding = args.approve is not None or args.deny is not None
    if args.end:
        print_transcript(await session.end())
        await print_usage(session.handle, turn=False)
        return 0
    if args.budget and not args.message and not deciding:
        await set_budget((await session.open(task_queue)).handle, args.budget)
        return 0
    if not args.message and not deciding:
        terminal = Terminal()
        leave_on_ctrl_c(session, args.embedded, terminal)
        view = TurnView(client, session.id, prefix="agent> ")
        await session.open(task_queue)
        await chat(session, terminal, view, attached=bool(args.session), embedded=args.embedded)
        return 0
    leave_on_ctrl_c(session, args.embedded, None)
    if not deciding:
        await session.open(task_queue)
        if not args.embedded:  # An embedded server's conversations die with this process.
            print(
                f"Session {session.id} (continue it with --session {session.id})", file=sys.stderr
            )
    approver = script_approver(args.embedded)
    if args.budget:
        await set_budget(session.handle, args.budget)
    # stdout carries the replies alone; with --stream, each as the model writes it.
    view = TurnView(client, session.id, prefix="") if args.stream else None
    try:
        if deciding:
            approved = args.approve is not None
            call_id = (args.approve if approved else args.deny) or None
            for turn_id in await session.decide_waiting(call_id, approved, args.reason):
                reply = await session.reply_of(turn_id, approver, view)
                if view is None:
                    print(reply, flush=True)
        for text in args.message or []:
            reply = await session.send(text, approver, view)
            if view is None:
                print(reply, flush=True)
            if args.usage:
                await print_usage(session.handle, total=False)
    except AwaitingApproval:
        return EXIT_AWAITING_APPROVAL
    return 0


def script_approver(embedded: bool) -> Approver:
    """Without the interactive chat, a waiting call is reported and the script stops; an
    embedded server dies with this process, so there the terminal is asked, if any."""
    if not embedded:
        return report_and_stop
    return asking_on(Terminal().line) if sys.stdin.isatty() else nobody_to_ask


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
    if args.embedded and args.session:
        parser.error(
            "--embedded runs a server that lives in memory and stops with this command, so "
            "it has no earlier sessions: leave out --session, or run a server (README)"
        )
    load_dotenv()
    quiet_sdk_core()
    try:
        tracing.setup("durable-agent-chat")  # spans go to stderr or a collector, never stdout
        if args.embedded:
            async with embedded_temporal(worker.task_queue_name(args.task_queue)) as client:
                return await run(args, client)
        client = await worker.connect(args.address)
        if args.session:  # Nothing is sent to a conversation this client cannot read.
            await codec.check_readable(client, args.session)
        return await run(args, client)
    except (ChatError, worker.TemporalUnreachable, NoTemporalBinary, ValueError) as err:
        print(f"error: {codec.unreadable(err) or err}", file=sys.stderr)
        return 1
    except (codec.ConversationUnreadable, KeyError, codec.DecryptionError) as err:
        # The check above, or a result that does not decrypt: one line, no traceback.
        if (unreadable := codec.unreadable(err)) is None:
            raise
        print(f"error: {unreadable}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    try:
        code = asyncio.run(main())
    except asyncio.CancelledError:  # Ctrl-C with an embedded server, which has now stopped
        code = 130
    except KeyboardInterrupt:
        print("\nLeft.", file=sys.stderr)  # Before a session existed: nothing to resume.
        code = 130
    worker.exit_process(code)
