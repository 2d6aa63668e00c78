"""The deterministic orchestrator: one workflow per conversation runs the agent loop.

Primitive 1 of the paper. Temporal rebuilds this object after a crash by replaying the
event history through the same code, so everything here must be deterministic: no I/O,
no randomness, no wall clock, no LiteLLM. The two side effects, asking the model and
running a tool, are activities (`activities.py`). This file names them instead of
importing them, so the orchestrator never loads LiteLLM and the chat client can import
it in a blink.

The dataclasses below are the contract of the event history: every activity input and
result is stored there as JSON, so they stay small, typed and stable.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.contrib.workflow_streams import WorkflowStream, WorkflowStreamState
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as ActivityTimeoutError

with workflow.unsafe.imports_passed_through():
    # OpenTelemetry's API: a no-op unless the worker traces (tracing.py), which it then
    # does with the SDK's replay-safe tracer provider, safe to open spans with here.
    from opentelemetry import context as otel_context
    from opentelemetry import trace

MAX_MESSAGE_CHARS = 8_000
"""Longest user message accepted; longer ones are rejected before they reach history."""

MAX_MODEL_STEPS_PER_TURN = 8
"""Model calls allowed in one turn, so a model that keeps asking for tools cannot loop forever."""

# A run continues as new (same workflow id, fresh history) past either threshold, or when
# the server suggests it, whichever comes first. Temporal warns at 10 240 events or 10 MB
# and terminates at 51 200 events or 50 MB, so a run stays far below both, and a worker
# that takes over after a crash replays at most this much.
CONTINUE_AS_NEW_AFTER_EVENTS = 2_000
CONTINUE_AS_NEW_AFTER_BYTES = 2_000_000

# One model call. Transient provider errors (rate limit, timeout, 5xx) are retried with
# exponential backoff; after 10 minutes of failures the turn ends with a message. The call
# heartbeats, so a dead worker is noticed in 10 s rather than at the 2-minute timeout.
PLAN_OPTIONS = {
    "start_to_close_timeout": timedelta(seconds=120),
    "heartbeat_timeout": timedelta(seconds=10),
    "schedule_to_close_timeout": timedelta(minutes=10),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=30),
    ),
}

# One tool call. Expected tool failures come back as results, so anything raised here is
# a bug: it is retried without limit, at most a minute apart, until a fixed worker runs it.
TOOL_OPTIONS = {
    "start_to_close_timeout": timedelta(minutes=5),
    "heartbeat_timeout": timedelta(seconds=10),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=60),
    ),
}


@dataclass(frozen=True)
class ToolCall:
    """A tool the model asked for. `arguments` is the model's raw JSON text, valid or not.

    `needs_approval` and `approval_timeout_s` are the worker's approval policy, stamped on
    the call by `plan_next_action` so that the history, not today's worker, decides.
    """

    id: str
    name: str
    arguments: str
    needs_approval: bool = False
    approval_timeout_s: float | None = None
    """How long the call waits for a person's decision; None: as long as it takes."""


@dataclass(frozen=True)
class ToolResult:
    """What a tool returned, or why it failed; the model sees both."""

    call_id: str
    name: str
    content: str
    is_error: bool = False


@dataclass(frozen=True)
class ToolDecision:
    """Input of the `decide_tool_call` update: a person's yes or no for one waiting call."""

    call_id: str
    approved: bool
    reason: str = ""


@dataclass(frozen=True)
class PendingApproval:
    """A tool call that waits for a decision, as the `pending_approvals` query shows it.

    `turn_update_id` is the id of the `send_message` update whose turn waits, so a client
    that decides later can wait for that turn's reply. Times are ISO 8601, UTC.
    """

    call_id: str
    tool: str
    arguments: str
    requested_at: str
    turn_update_id: str
    expires_at: str | None = None


@dataclass(frozen=True)
class Message:
    """One chat message: role is "user", "assistant" or "tool"."""

    role: str
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None


@dataclass(frozen=True)
class DeltaTarget:
    """Where `plan_next_action` publishes the reply's text as it arrives: the turn (its
    `send_message` update id) and the model step within it."""

    turn: str
    step: int


@dataclass(frozen=True)
class PlanRequest:
    """Input of `plan_next_action`. `tools` None offers every tool the worker has;
    `stream_to` None: nobody watches this turn's text arrive, so it is not streamed."""

    conversation: list[Message]
    tools: list[str] | None = None
    stream_to: DeltaTarget | None = None


@dataclass(frozen=True)
class Plan:
    """The model's next step: tool calls to run, or a reply (which may end the chat).

    `context_dropped` counts the oldest messages of the request that did not fit the
    model's context budget; the workflow forgets them, which keeps its state bounded.
    """

    reply: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    end_chat: bool = False
    context_dropped: int = 0


@dataclass(frozen=True)
class SessionInput:
    """How a conversation starts, and what one run hands the next at continue-as-new."""

    tools: list[str] | None = None
    max_model_steps_per_turn: int = MAX_MODEL_STEPS_PER_TURN
    continue_as_new_after_events: int = CONTINUE_AS_NEW_AFTER_EVENTS
    continue_as_new_after_bytes: int = CONTINUE_AS_NEW_AFTER_BYTES
    messages: list[Message] = field(default_factory=list)
    """The context window carried over from the previous run."""
    earlier_messages: int = 0
    """Messages of this conversation no longer held: past the context budget."""
    earlier_turns: int = 0
    """Turns of this conversation answered by earlier runs: traces number turns from there."""
    stream: WorkflowStreamState | None = None
    """The event stream's retained items and offsets, carried over from the previous run."""


@dataclass(frozen=True)
class Transcript:
    """The conversation as held: the newest messages, and how many came before them.

    Earlier messages stay readable in the histories of earlier runs (README, "Long
    conversations").
    """

    messages: list[Message]
    ended: bool
    earlier_messages: int = 0


Status = Literal["idle", "working", "awaiting_approval", "ended"]


# --- The event stream: what a client watches while a turn runs (README, "Streaming") ---
# Every event names its turn: the id of the `send_message` update that asked for it.


@dataclass(frozen=True)
class TextDelta:
    """Topic `delta`: model text as it arrives (from the activity, ~100 ms batches)."""

    turn: str
    step: int
    text: str


@dataclass(frozen=True)
class RetryNotice:
    """Topic `retry`: a model attempt failed; drop the text of this step seen so far."""

    turn: str
    step: int
    attempt: int


@dataclass(frozen=True)
class ToolEvent:
    """Topic `tool`: a call started, or finished with outcome "ok", "error" or "not run"."""

    turn: str
    call_id: str
    name: str
    arguments: str
    state: Literal["started", "finished"]
    outcome: str = ""


@dataclass(frozen=True)
class ApprovalEvent:
    """Topic `approval`: a call waits for a decision, or was approved, denied, expired."""

    turn: str
    call_id: str
    tool: str
    arguments: str
    state: Literal["requested", "approved", "denied", "expired"]
    reason: str = ""


@dataclass(frozen=True)
class TurnEvent:
    """Topic `turn`: the turn's final reply, or the error that ended it."""

    turn: str
    reply: str = ""
    error: str = ""


@dataclass(frozen=True)
class _Inbound:
    number: int
    text: str
    update_id: str = ""
    stream: bool = False
    trace_context: otel_context.Context | None = None
    """Where the message's update sits in a trace: its turn's span goes under it."""


@dataclass(frozen=True)
class _Outcome:
    reply: str = ""
    error: str = ""


@workflow.defn
class DurableAgentWorkflow:
    """One conversation. The workflow id is the session id."""

    @workflow.init
    def __init__(self, session: SessionInput) -> None:
        self._session = session
        self._messages = list(session.messages)
        self._earlier_messages = session.earlier_messages
        self._inbox: deque[_Inbound] = deque()
        self._outcomes: dict[int, _Outcome] = {}
        self._received = 0
        self._working = False
        self._ended = False
        self._turn = _Inbound(0, "")
        self._pending: dict[str, PendingApproval] = {}
        self._decisions: dict[str, ToolDecision] = {}
        self._stream = WorkflowStream(session.stream)
        self._last_turn_offset = 0

    @workflow.run
    async def run(self, session: SessionInput) -> Transcript:
        # Messages are answered one at a time, in the order their updates were accepted.
        while not self._ended:
            # Between turns: hand over to a fresh run before the history grows large.
            if self._history_is_large() and await self._nothing_in_flight() and not self._ended:
                workflow.continue_as_new(self._carry_over())
            await workflow.wait_condition(lambda: bool(self._inbox) or self._ended)
            if self._ended:
                break
            message = self._inbox.popleft()
            self._working, self._turn = True, message
            with self._turn_span(message) as span:
                outcome = await self._answer(message.text)
                if outcome.error:
                    span.set_status(trace.StatusCode.ERROR)
            self._outcomes[message.number] = outcome
            self._working = False
            self._publish("turn", TurnEvent(message.update_id, outcome.reply, outcome.error))
            self._forget_all_but_the_last_turn_of_the_stream()
        for message in self._inbox:
            self._outcomes[message.number] = _Outcome(
                error="The chat ended before this message was answered."
            )
        self._inbox.clear()
        # Let every waiting caller receive its reply before the workflow closes; stream
        # subscribers are let go (they read what is left from the closed workflow).
        self._stream.detach_pollers()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._transcript()

    @workflow.update
    async def send_message(self, text: str, stream: bool = False) -> str:
        """Queue a user message and return the agent's reply to it. With `stream`, the
        reply's text is also published on the `delta` topic as the model writes it."""
        self._received += 1
        number = self._received
        update = workflow.current_update_info()
        trace_context = otel_context.get_current()  # the update's span, if the worker traces
        self._inbox.append(
            _Inbound(number, text, update.id if update else "", stream, trace_context)
        )
        await workflow.wait_condition(lambda: number in self._outcomes)
        outcome = self._outcomes.pop(number)
        if outcome.error:
            # ApplicationError fails this update only; the conversation carries on.
            raise ApplicationError(outcome.error, type="TurnFailed", non_retryable=True)
        return outcome.reply

    @send_message.validator
    def _validate_message(self, text: str, stream: bool = False) -> None:
        # Runs before the update is written to history: a rejection leaves no trace.
        if self._ended:
            raise ValueError("This chat has ended. Start a new session to keep talking.")
        if not text.strip():
            raise ValueError("The message is empty.")
        if len(text) > MAX_MESSAGE_CHARS:
            raise ValueError(
                f"The message has {len(text)} characters; the limit is {MAX_MESSAGE_CHARS}."
            )

    @workflow.update
    def decide_tool_call(self, decision: ToolDecision) -> str:
        """Approve or deny a tool call that waits; the turn then carries on by itself."""
        if decision.call_id not in self._pending:
            # Accepted, but the call expired or the chat ended in the same moment.
            raise ApplicationError(
                f"Tool call {decision.call_id} no longer waits for a decision.",
                type="NotPending",
                non_retryable=True,
            )
        self._decisions[decision.call_id] = decision
        return "approved" if decision.approved else "denied"

    @decide_tool_call.validator
    def _validate_decision(self, decision: ToolDecision) -> None:
        if decision.call_id in self._decisions:
            raise ValueError(f"Tool call {decision.call_id} has already been decided.")
        if decision.call_id not in self._pending:
            waiting = ", ".join(self._pending) or "none"
            raise ValueError(
                f"No tool call {decision.call_id} waits for approval (waiting: {waiting})."
            )

    @workflow.signal
    def end_chat(self) -> None:
        """End the conversation once the turn in progress (if any) has been answered.

        Tool calls that wait for approval are denied ("chat ended"); the model answers.
        """
        self._ended = True

    @workflow.query
    def conversation(self) -> Transcript:
        return self._transcript()

    @workflow.query
    def status(self) -> Status:
        if self._ended:
            return "ended"
        if self._pending:
            return "awaiting_approval"
        return "working" if self._working or self._inbox else "idle"

    @workflow.query
    def pending_approvals(self) -> list[PendingApproval]:
        """Tool calls waiting for a decision, oldest first: what a client shows to decide."""
        return list(self._pending.values())

    @workflow.query
    def turn_in_progress(self) -> str | None:
        """The `send_message` update id of the turn being answered, if any: a client
        that reattaches follows that turn on the stream."""
        return self._turn.update_id if self._working else None

    def _turn_span(self, message: _Inbound) -> AbstractContextManager[trace.Span]:
        """The turn as a span, `agent.turn`, under the update that asked for it; the model
        calls and tools of the turn go under it. No message text: content stays in the
        activities' spans, where the worker's OTEL_INCLUDE_CONTENT decides.

        Replay runs this again, but the tracer provider the worker installs only exports a
        span whose end runs for real, with the ids it had when it started (tracing.py).
        """
        attributes = {
            "gen_ai.conversation.id": workflow.info().workflow_id,
            "agent.turn.number": self._session.earlier_turns + message.number,
        }
        return trace.get_tracer(__name__).start_as_current_span(
            "agent.turn", context=message.trace_context, attributes=attributes
        )

    async def _answer(self, text: str) -> _Outcome:
        """Run one turn; if it fails, undo it so the model never sees half a turn."""
        turn_start = len(self._messages)
        self._messages.append(Message("user", text))
        try:
            final = await self._agent_loop()
        except ActivityError as err:
            del self._messages[turn_start:]
            return _Outcome(error=_explain(err))
        # Forget what no longer fits the model's context: the state stays bounded.
        del self._messages[: final.context_dropped]
        self._earlier_messages += final.context_dropped
        return _Outcome(reply=final.reply)

    async def _agent_loop(self) -> Plan:
        """plan -> tools -> plan -> ... -> reply: the loop the paper makes durable."""
        plan = Plan()
        for step in range(self._session.max_model_steps_per_turn):
            stream_to = DeltaTarget(self._turn.update_id, step) if self._turn.stream else None
            plan = await workflow.execute_activity(
                "plan_next_action",
                PlanRequest(self._messages, self._session.tools, stream_to),
                result_type=Plan,
                **PLAN_OPTIONS,
            )
            self._messages.append(Message("assistant", plan.reply, plan.tool_calls))
            if not plan.tool_calls:
                self._ended = self._ended or plan.end_chat
                return plan
            # Several tool calls from one model reply run concurrently; a call that
            # waits for approval holds up none of the others.
            results: list[ToolResult] = await asyncio.gather(
                *(self._run_tool(call) for call in plan.tool_calls)
            )
            self._messages.extend(
                Message("tool", _observation(result), tool_call_id=result.call_id)
                for result in results
            )
        reply = (
            f"I stopped after {self._session.max_model_steps_per_turn} model steps without "
            "reaching an answer. Please rephrase or split the request."
        )
        self._messages.append(Message("assistant", reply))
        return Plan(reply=reply, context_dropped=plan.context_dropped)

    async def _run_tool(self, call: ToolCall) -> ToolResult:
        """Run one tool call, after a person approves it if the worker's policy says so."""
        if call.needs_approval and (refusal := await self._approval(call)):
            self._publish_tool(call, "finished", "not run")
            return refusal
        self._publish_tool(call, "started")
        result = await workflow.execute_activity(
            "execute_tool", call, result_type=ToolResult, **TOOL_OPTIONS
        )
        self._publish_tool(call, "finished", "error" if result.is_error else "ok")
        return result

    async def _approval(self, call: ToolCall) -> ToolResult | None:
        """Wait, durably, for a decision on `call`: None if approved, else what the model
        sees instead of a tool result. The wait is a condition (and, with an expiry, a
        timer) in the history: it costs nothing and survives crashes and restarts."""
        now, timeout_s = workflow.now(), call.approval_timeout_s
        self._decisions.pop(call.id, None)  # Models may reuse a call id in a later turn.
        expires_at = now + timedelta(seconds=timeout_s) if timeout_s else None
        self._pending[call.id] = PendingApproval(
            call.id,
            call.name,
            call.arguments,
            now.isoformat(),
            self._turn.update_id,
            expires_at.isoformat() if expires_at else None,
        )
        self._publish_approval(call, "requested")
        try:
            await workflow.wait_condition(
                lambda: call.id in self._decisions or self._ended, timeout=timeout_s
            )
        except asyncio.TimeoutError:
            why = f"no decision within {timeout_s:g} s"
            self._decisions[call.id] = ToolDecision(call.id, False, why)  # Late ones: refused.
            self._publish_approval(call, "expired", why)
            return _not_run(call, why)
        finally:
            del self._pending[call.id]
        decision = self._decisions.setdefault(call.id, ToolDecision(call.id, False, "chat ended"))
        self._publish_approval(call, "approved" if decision.approved else "denied", decision.reason)
        if decision.approved:
            return None
        return _not_run(call, f"the user denied it ({decision.reason or 'no reason given'})")

    # --- The event stream ---------------------------------------------------------------

    def _publish(self, topic: str, event: object) -> None:
        """Append to the stream: in memory, no history event; subscribers' polls fetch it."""
        self._stream.topic(topic).publish(event)

    def _publish_tool(self, call: ToolCall, state: str, outcome: str = "") -> None:
        event = ToolEvent(self._turn.update_id, call.id, call.name, call.arguments, state, outcome)
        self._publish("tool", event)

    def _publish_approval(self, call: ToolCall, state: str, reason: str = "") -> None:
        event = ApprovalEvent(
            self._turn.update_id, call.id, call.name, call.arguments, state, reason
        )
        self._publish("approval", event)

    def _forget_all_but_the_last_turn_of_the_stream(self) -> None:
        """Keep the stream's memory bounded: drop the events of every turn before the one
        just answered, whose events a slow subscriber may still be reading."""
        state = self._stream.get_state()
        self._stream.truncate(self._last_turn_offset)
        self._last_turn_offset = state.base_offset + len(state.log)

    def _history_is_large(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self._session.continue_as_new_after_events
            or info.get_current_history_size() >= self._session.continue_as_new_after_bytes
        )

    async def _nothing_in_flight(self) -> bool:
        """Wait until every caller has its reply, unless a new message arrives first.

        An update must be answered by the run that accepted it, so a run continues as new
        only with an empty inbox and no handler still running. No tool call waits for
        approval then either: calls wait only inside a turn. A message sent during the
        switch is not lost: the server hands it to the new run. Stream subscribers are
        let go first; they follow the workflow to its next run.
        """
        self._stream.detach_pollers()
        await workflow.wait_condition(lambda: bool(self._inbox) or workflow.all_handlers_finished())
        return not self._inbox

    def _carry_over(self) -> SessionInput:
        return dataclasses.replace(
            self._session,
            messages=self._messages,
            earlier_messages=self._earlier_messages,
            earlier_turns=self._session.earlier_turns + self._received,
            stream=self._stream.get_state(),
        )

    def _transcript(self) -> Transcript:
        return Transcript(list(self._messages), self._ended, self._earlier_messages)


def _not_run(call: ToolCall, why: str) -> ToolResult:
    """The result the model sees for a call that was denied or expired: not an error of
    the turn, just a fact it can answer from."""
    return ToolResult(call.id, call.name, f"Not run: {why}.")


def _observation(result: ToolResult) -> str:
    return f"Error: {result.content}" if result.is_error else result.content


def _explain(err: ActivityError) -> str:
    """Turn a failed activity into the message the user sees for the failed turn."""
    cause = err.cause
    if isinstance(cause, ActivityTimeoutError):
        return (
            "The model provider did not answer in time, even after retries. "
            "Your message was not processed; please send it again later."
        )
    if isinstance(cause, ApplicationError):
        return cause.message
    return f"The turn failed: {cause or err}. Your message was not processed."
