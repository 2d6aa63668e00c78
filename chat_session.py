"""One conversation as the chat client sees it: send a message, wait for its reply, decide.

The conversation lives in its workflow; a `ChatSession` holds nothing but the way to it, so
the client can crash or be stopped, and `--session ID` picks up where it was. Each message
carries an update id of its own, so resending it (Temporal unreachable, or refusing the
update while no worker can run the workflow task) never makes the agent answer it twice.

While the reply is slow, the session says why, from what Temporal knows
(`waiting_reasons.py`): no worker polling the task queue, a pending activity's attempt and
last failure, or a workflow task that keeps failing (docs/chat.md).
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import FailureError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from approval_prompts import Approver, decide
from contract import Message, PendingApproval, SessionInput, Transcript
from stream_view import TurnView
from waiting_reasons import why_waiting, worker_command, workers_poll
from workflow import DurableAgentWorkflow

T = TypeVar("T")
WAITING_NOTICE_AFTER_S = 5.0
"""How long a reply may take before the client says why it waits."""
RETRY_EVERY_S = 2.0
APPROVAL_CHECK_EVERY_S = 0.5
WHY_CHECK_EVERY_S = 3.0

_RETRYABLE_RPC = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.UNKNOWN,
}
_TASK_FAILING = "Workflow Task in failed state"
"""The server refuses updates once the workflow task has failed a few times in a row
(measured: about 20 s, at its third attempt): no worker can run it, whatever the cause."""


class ChatError(Exception):
    """A failure the user should read, not a traceback."""


class _Refused(Exception):
    """Temporal refused the update for now; the message is kept and resent."""


class ChatSession:
    """A conversation (its workflow) and what the client says while it waits."""

    def __init__(self, client: Client, session: str) -> None:
        self.client = client
        self.id = session
        self.handle = client.get_workflow_handle_for(DurableAgentWorkflow.run, session)
        self.undelivered: str | None = None
        """A message Temporal refused and the client holds until it is accepted."""

    async def open(self, task_queue: str) -> ChatSession:
        """Start the conversation, or attach to it if it is already running."""
        try:
            self.handle = await self.client.start_workflow(
                DurableAgentWorkflow.run,
                SessionInput(),
                id=self.id,
                task_queue=task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
        except WorkflowAlreadyStartedError:
            raise ChatError(
                f"Session {self.id} has ended. Print it with --session {self.id} --end, "
                "or start a new one."
            ) from None
        return self

    async def send(self, text: str, approver: Approver, view: TurnView | None = None) -> str:
        """Send one message and wait for its reply, however long the system is down. With
        a view, the reply streams: the view prints it as the model writes it."""
        update_id = str(uuid.uuid4())

        async def request() -> str:
            try:
                update = await self.handle.start_update(
                    DurableAgentWorkflow.send_message,
                    args=[text, view is not None],
                    id=update_id,
                    wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                )
            except RPCError as err:
                if _TASK_FAILING not in err.message:
                    raise
                self.undelivered = text  # Not in the history: resent, with the same id.
                raise _Refused(err.message) from None
            self.undelivered = None
            return await update.result()

        return await self.await_reply(update_id, request, approver, view)

    async def reply_of(self, turn_id: str, approver: Approver, view: TurnView | None = None) -> str:
        """The reply to a message another client sent (its turn's update id)."""
        update = self.handle.get_update_handle(turn_id)
        return await self.await_reply(turn_id, update.result, approver, view)

    async def await_reply(
        self,
        update_id: str,
        request: Callable[[], Awaitable[str]],
        approver: Approver,
        view: TurnView | None = None,
    ) -> str:
        """Wait for the reply of the turn `update_id`, resending `request` while Temporal
        is unreachable or refuses it, and handing each of its tool calls that waits for
        approval to `approver`. A view, if given, shows the turn as it happens."""
        if view is None:
            return await self._reply(update_id, request, approver)
        view.watch(update_id)
        reply = None
        try:
            reply = await self._reply(update_id, request, approver)
            return reply
        finally:
            await view.finish(reply)

    async def _reply(
        self, update_id: str, request: Callable[[], Awaitable[str]], approver: Approver
    ) -> str:
        asked: set[str] = set()
        announced: set[str] = set()
        said = ""
        started = checked = time.monotonic()
        while True:
            attempt = asyncio.ensure_future(request())
            try:
                while not attempt.done():
                    await asyncio.wait({attempt}, timeout=APPROVAL_CHECK_EVERY_S)
                    if attempt.done():
                        break
                    now = time.monotonic()
                    if now - started > WAITING_NOTICE_AFTER_S and now - checked > WHY_CHECK_EVERY_S:
                        checked = now
                        said = self._say_once(said, await why_waiting(self.client, self.handle))
                    waiting = [
                        p for p in await self._waiting_calls(update_id) if p.call_id not in asked
                    ]
                    if waiting:
                        asked.update(p.call_id for p in waiting)
                        await approver(self.handle, waiting, attempt)
                    await self.announce_subagents(update_id, announced)
                reply = await attempt
                await self.announce_subagents(update_id, announced)  # The quick ones, too.
                return reply
            except WorkflowUpdateFailedError as err:
                cause = err.cause
                raise ChatError(
                    cause.message if isinstance(cause, FailureError) else str(err)
                ) from None
            except _Refused:
                why = (
                    await why_waiting(self.client, self.handle)
                    or "Temporal refuses new messages for now"
                )
                said = self._say_once(
                    said,
                    f"{why}. Your message is kept and resent every {RETRY_EVERY_S:g} s "
                    "until a worker takes it",
                )
                await asyncio.sleep(RETRY_EVERY_S)
            except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
                if isinstance(err, RPCError) and err.status not in _RETRYABLE_RPC:
                    raise ChatError(f"Temporal refused the message: {err.message}") from None
                said = self._say_once(said, f"Temporal is unreachable or slow: {err}. Retrying")
                await asyncio.sleep(RETRY_EVERY_S)
            finally:
                # Stop waiting (the update itself lives on in Temporal); the SDK turns the
                # cancellation into an error nobody needs to read.
                attempt.cancel()
                attempt.add_done_callback(lambda done: done.cancelled() or done.exception())

    @staticmethod
    def _say_once(said: str, why: str) -> str:
        """Print why the reply is late, unless it was the last thing said."""
        why = why or "still waiting for the reply"
        if why != said:
            print(f"({why}; Ctrl-C leaves the conversation safe.)", file=sys.stderr, flush=True)
        return why

    async def _waiting_calls(self, update_id: str) -> list[PendingApproval]:
        """The calls of the turn `update_id` that wait for a decision."""
        pending = await self.quick_query(DurableAgentWorkflow.pending_approvals, [])
        return [p for p in pending if p.turn_update_id == update_id]

    async def announce_subagents(self, update_id: str, announced: set[str]) -> None:
        """One line on stderr for each subagent the turn `update_id` started, once each."""
        for subagent in await self.quick_query(DurableAgentWorkflow.subagents, []):
            if subagent.turn_update_id == update_id and subagent.workflow_id not in announced:
                announced.add(subagent.workflow_id)
                print(
                    f"delegated to subagent {subagent.workflow_id}: {subagent.task}",
                    file=sys.stderr,
                    flush=True,
                )

    async def quick_query(self, query: Any, default: T, timeout_s: float = 1) -> T:
        """A query's answer, or `default` if nobody can answer now: a query needs a
        running worker, and the reply's own wait already tells the user when there is none."""
        try:
            return await self.handle.query(query, rpc_timeout=timedelta(seconds=timeout_s))
        except (RPCError, WorkflowQueryFailedError):
            return default

    async def _describe(self) -> WorkflowExecutionDescription:
        """The conversation as Temporal describes it; ChatError if there is none."""
        try:
            return await self.handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise ChatError(f"There is no session {self.id}.") from None
            raise

    async def decide_waiting(self, call_id: str | None, approved: bool, reason: str) -> list[str]:
        """--approve/--deny: decide one waiting call, or every one; return their turns' ids."""
        description = await self._describe()
        if description.status != WorkflowExecutionStatus.RUNNING:
            raise ChatError(f"Session {self.id} has ended: no tool call waits in it.")
        queue = description.task_queue
        no_worker = (
            f"No worker is running for session {self.id} (task queue {queue}), so nothing can"
            f" be decided now: start one with {worker_command(queue)}, then run this command"
            " again."
        )
        if not await workers_poll(self.client, queue):
            raise ChatError(no_worker)
        try:
            pending = await self.handle.query(
                DurableAgentWorkflow.pending_approvals, rpc_timeout=timedelta(seconds=10)
            )
        except (RPCError, WorkflowQueryFailedError):
            raise ChatError(no_worker) from None
        chosen = [p for p in pending if call_id in (None, p.call_id)]
        if not chosen:
            raise ChatError(_nothing_waits(self.id, call_id, pending))
        for call in chosen:
            await decide(self.handle, call, approved, reason)
        return list(dict.fromkeys(call.turn_update_id for call in chosen))

    async def end(self) -> Transcript:
        """Ask the workflow to end (if it has not yet) and wait for its transcript."""
        description = await self._describe()
        # Only a running workflow takes the signal: signalling one that ended (the model
        # said goodbye) is an error the server records, and a trace shows as one.
        if description.status == WorkflowExecutionStatus.RUNNING:
            try:
                await self.handle.signal(DurableAgentWorkflow.end_chat)
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:  # It ended in the same moment.
                    raise
        try:
            return await self.handle.result()
        except WorkflowFailureError as err:  # It failed, timed out or was cancelled.
            cause = err.cause
            why = cause.message if isinstance(cause, FailureError) else str(err)
            raise ChatError(f"Session {self.id} ended without a transcript: {why}") from None

    async def last_exchange(self) -> list[Message]:
        """The last message the user sent and what the agent answered, if any."""
        # Once, on attach: a worker that replays a long history under load takes seconds.
        transcript = await self.quick_query(DurableAgentWorkflow.conversation, None, 5)
        if transcript is None:
            return []
        said = spoken(transcript.messages)
        last_user = max((i for i, m in enumerate(said) if m.role == "user"), default=None)
        return [] if last_user is None else said[last_user:]

    def resend_hint(self) -> str:
        """How to send again a message Temporal refused ("" if none waits)."""
        if self.undelivered is None:
            return ""
        command = f"uv run start_workflow.py --session {self.id} --message "
        return (
            "Your last message was not delivered (Temporal refused it: no worker could run "
            f"the conversation). Send it again with:\n  {command}{shlex.quote(self.undelivered)}"
        )


def _nothing_waits(session: str, call_id: str | None, pending: list[PendingApproval]) -> str:
    if call_id is None:
        return f"No tool call waits for approval in session {session}."
    waiting = f" (waiting: {', '.join(p.call_id for p in pending)})" if pending else ""
    return f"No tool call {call_id} waits in session {session}{waiting}."


def spoken(messages: list[Message]) -> list[Message]:
    """What the user and the agent said to each other: no tool calls, no tool results."""
    return [m for m in messages if m.role in ("user", "assistant") and m.content]


def print_messages(messages: list[Message]) -> None:
    """Each message as the chat shows it: `you> ...` and `agent> ...`."""
    for message in messages:
        print(f"{'you' if message.role == 'user' else 'agent'}> {message.content}")


def print_transcript(transcript: Transcript) -> None:
    print("--- transcript ---")
    print_messages(spoken(transcript.messages))
