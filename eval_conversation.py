"""One eval case as a real conversation with the agent, held from outside the workflow.

The harness is a client like the chat client: it starts a conversation on the task queue
of the worker under test, sends the case's messages with the `send_message` update,
decides each tool call that waits for approval with the `decide_tool_call` update (as the
case says), and ends the chat. What the conversation did is then read from the replies
and the event history (`eval_record.py`), and the checks (`eval_checks.py`) judge that.
Nothing of pydantic-evals runs inside a workflow: its online evaluation breaks there
(pydantic-ai #6347), and the agent under test must be the real one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import FailureError
from temporalio.service import RPCError, RPCStatusCode

from contract import SessionInput, ToolDecision
from eval_record import ConversationRecord, Turn, read_record
from workflow import DurableAgentWorkflow

APPROVAL_POLL_S = 0.1
"""How often a turn in progress is asked for calls that wait: the most a decision waits."""


@dataclass(frozen=True)
class Conversation:
    """A case's inputs: what the user says, one message a turn, and how the harness
    decides the tool calls that wait for approval."""

    messages: list[str]
    approve: bool | list[bool] = False
    """Every waiting call approved (true) or denied (false); a list decides them in the
    order they wait, and denies any beyond it."""
    reason: str = "the eval case denies it"
    """The reason a denial gives, which the model reads."""
    tools: list[str] | None = None
    """The tools the agent may use (SessionInput.tools); None: every tool of the worker."""


async def converse(
    client: Client,
    task_queue: str,
    conversation: Conversation,
    notes_file: Path,
    timeout_s: float,
) -> ConversationRecord:
    """Hold the case's conversation with the worker on `task_queue`, end it, and read
    what it did. A conversation that takes longer than `timeout_s` is terminated."""
    handle = await client.start_workflow(
        DurableAgentWorkflow.run,
        SessionInput(tools=conversation.tools),
        id=f"eval-{uuid.uuid4().hex[:12]}",
        task_queue=task_queue,
    )
    try:
        turns = await asyncio.wait_for(_talk(handle, conversation), timeout_s)
    except asyncio.TimeoutError:
        await handle.terminate("the eval case took too long")
        raise TimeoutError(f"no reply within {timeout_s:g} s; the session was terminated") from None
    return await read_record(client, handle.id, turns, notes_file)


async def _talk(handle: WorkflowHandle, conversation: Conversation) -> list[Turn]:
    decisions = _Decisions(conversation)
    turns = [await _turn(handle, text, decisions) for text in conversation.messages]
    try:
        await handle.signal(DurableAgentWorkflow.end_chat)
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:  # Not ended already (by a goodbye): a fault.
            raise
    await handle.result()  # Ended: every model call and tool of the chat is in the history.
    return turns


class _Decisions:
    """The case's decisions, handed out in the order calls come to wait."""

    def __init__(self, conversation: Conversation) -> None:
        approve = conversation.approve
        self._given = list(approve) if isinstance(approve, list) else None
        self._always = bool(approve)
        self._reason = conversation.reason

    def next(self, call_id: str) -> ToolDecision:
        if self._given is None:
            approved = self._always
        else:
            approved = bool(self._given.pop(0)) if self._given else False
        return ToolDecision(call_id, approved, "" if approved else self._reason)


async def _turn(handle: WorkflowHandle, text: str, decisions: _Decisions) -> Turn:
    """Send one message and wait for its reply, deciding each call of the turn that waits."""
    started = time.monotonic()
    reply = asyncio.ensure_future(handle.execute_update(DurableAgentWorkflow.send_message, text))
    decided: set[str] = set()
    while not reply.done():
        await asyncio.wait({reply}, timeout=APPROVAL_POLL_S)
        if reply.done():
            break
        for call in await handle.query(DurableAgentWorkflow.pending_approvals):
            if call.call_id not in decided:
                decided.add(call.call_id)
                await handle.execute_update(
                    DurableAgentWorkflow.decide_tool_call, decisions.next(call.call_id)
                )
    try:
        answer = await reply
    except WorkflowUpdateFailedError as err:  # Refused by the validator, or the turn failed.
        cause = err.cause
        error = cause.message if isinstance(cause, FailureError) else str(err)
        return Turn(text, error=error, latency_s=time.monotonic() - started)
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        # The chat ended and its workflow closed: refused as the chat client says it.
        error = f"Temporal refused the message: {err.message}"
        return Turn(text, error=error, latency_s=time.monotonic() - started)
    return Turn(text, reply=answer, latency_s=time.monotonic() - started)
