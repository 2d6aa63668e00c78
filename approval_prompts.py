"""How a person decides a tool call that waits for approval, from the terminal.

The chat client (`start_workflow.py`) hands each newly waiting call of the turn it awaits
to an `Approver`: the interactive chat asks `approve? [y/N]`; a script is told what waits
and the exact commands that decide it, and stops (exit code 3) while the turn keeps
waiting in Temporal. A decision is the workflow's `decide_tool_call` update.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import FailureError

from contract import PendingApproval, ToolDecision
from stream_view import readable
from workflow import DurableAgentWorkflow


class AwaitingApproval(Exception):
    """A turn waits for a decision that this process will not give: exit with code 3."""


Approver = Callable[[WorkflowHandle, list[PendingApproval], asyncio.Future[str]], Awaitable[None]]
"""What to do with tool calls of a turn that newly wait for a decision, given the future
of that turn's reply (which may come first: a call expired, or was decided elsewhere)."""


async def decide(
    handle: WorkflowHandle, call: PendingApproval, approved: bool, reason: str
) -> None:
    """Send one decision; a refusal (decided elsewhere, expired) is said, not raised."""
    try:
        await handle.execute_update(
            DurableAgentWorkflow.decide_tool_call, ToolDecision(call.call_id, approved, reason)
        )
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        print(
            f"error: {cause.message if isinstance(cause, FailureError) else err}", file=sys.stderr
        )
        return
    verdict = "Approved" if approved else "Denied"
    print(f"{verdict}: {describe(call)}", file=sys.stderr)


def describe(call: PendingApproval) -> str:
    return f"{call.tool} {readable(call.arguments)} (call {call.call_id})"


def asking_on(read_line: Callable[[str], Awaitable[str | None]]) -> Approver:
    """Ask the person at the terminal about each waiting call, one after the other;
    `read_line(prompt)` shows the prompt and returns the answer (None: end of input)."""

    async def ask(
        handle: WorkflowHandle, waiting: list[PendingApproval], reply: asyncio.Future[str]
    ) -> None:
        for call in waiting:
            print(f"agent wants to run {call.tool} {readable(call.arguments)}", flush=True)
            line = asyncio.ensure_future(read_line("approve? [y/N] "))
            await asyncio.wait({line, reply}, return_when=asyncio.FIRST_COMPLETED)
            if not line.done():  # The turn ended first: the call expired or was decided.
                line.cancel()
                print()
                return
            if line.result() is None:  # End of input: the call keeps waiting.
                raise AwaitingApproval
            answer = line.result().strip()
            approved = answer.lower() in ("y", "yes")
            reason = "" if approved else answer[1:].strip() if answer[:1] in "nN" else answer
            await decide(handle, call, approved, reason)

    return ask


async def report_and_stop(
    handle: WorkflowHandle, waiting: list[PendingApproval], reply: asyncio.Future[str]
) -> None:
    """For scripts: say what waits and the exact commands that decide it, then stop."""
    for call in waiting:
        print(
            f"Waiting for approval: {describe(call)}.\n"
            f"  approve: uv run start_workflow.py --session {handle.id} --approve {call.call_id}\n"
            f"  deny:    uv run start_workflow.py --session {handle.id} --deny {call.call_id} "
            '--reason "..."',
            file=sys.stderr,
        )
    print(
        "The turn keeps waiting in Temporal; the reply comes once it is decided.", file=sys.stderr
    )
    raise AwaitingApproval


async def nobody_to_ask(
    handle: WorkflowHandle, waiting: list[PendingApproval], reply: asyncio.Future[str]
) -> None:
    """--embedded with no terminal: the server dies with this process, and the turn too."""
    for call in waiting:
        print(f"Waiting for approval: {describe(call)}.", file=sys.stderr)
    print(
        "This embedded server stops when this command exits, so the call cannot be approved "
        "later. Chat interactively (`uv run start_workflow.py --embedded`, no --message) to "
        "be asked, or run a server and a worker (README, three terminals) and decide with "
        "--approve or --deny.",
        file=sys.stderr,
    )
    raise AwaitingApproval
