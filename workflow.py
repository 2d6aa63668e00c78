"""The deterministic orchestrator: one workflow per conversation runs the agent loop.

Primitive 1 of the paper. Temporal rebuilds this object after a crash by replaying the
event history through the same code, so everything here must be deterministic: no I/O,
no randomness, no wall clock, no LiteLLM. The two side effects, asking the model and
running a tool, are activities (`activities.py`). This file names them instead of
importing them, so the orchestrator never loads LiteLLM and the chat client can import
it in a blink.

The dataclasses it exchanges with activities, clients and its next run are the contract
of the event history, in `contract.py`.
"""

import asyncio
import dataclasses
import itertools
import json
from collections import deque
from contextlib import AbstractContextManager, suppress
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.contrib.workflow_streams import WorkflowStream
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    FailureError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)
from temporalio.exceptions import TimeoutError as ActivityTimeoutError

with workflow.unsafe.imports_passed_through():
    # OpenTelemetry's API: a no-op unless the worker traces (tracing.py), which it then
    # does with the SDK's replay-safe tracer provider, safe to open spans with here.
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    # Pure code and frozen dataclasses, no state between runs: safe to share. The sandbox
    # would otherwise import each afresh for every new conversation (30 ms a run here for
    # contract.py), and the data converter would build a decoder for each class again.
    # budget.py is the budget's arithmetic, program.py the interpreter of model programs.
    import program
    from budget import budget_problem, refusal, shares
    from contract import (
        WORKSPACE_TOOLS,
        ApprovalEvent,
        Budget,
        DeltaTarget,
        InvalidSessionInput,
        Message,
        PendingApproval,
        Plan,
        PlanRequest,
        ProgramPolicy,
        SessionInput,
        Status,
        Subagent,
        SubagentUsage,
        ToolCall,
        ToolDecision,
        ToolEvent,
        ToolResult,
        Transcript,
        TurnEvent,
        TurnUsage,
        Usage,
        UsageReport,
        check_session_input,
        truncated,
    )

MAX_MESSAGE_CHARS = 8_000
"""Longest user message accepted; longer ones are rejected before they reach history."""

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

# Subagents: a `delegate` call runs this same loop on a task, as a child workflow.
DELEGATE_TOOL = "delegate"
# A subagent signals its parent what each of its model calls used. Histories recorded
# before it did have no such signal: replay them without sending one.
REPORTS_USAGE = "subagent-reports-usage"
# Programs: a `run_program` call runs the model's program here (program.py); each tool
# call it makes takes the path of a direct call, through `_run_tool`.
PROGRAM_TOOL = "run_program"
NOT_RUN = "Not run: "
"""How the result of a call that was denied, or expired, begins."""


# NamedTuples, not dataclasses: the sandbox runs this module afresh for every run, and
# building a dataclass took 2.8 ms, a NamedTuple 0.9 (docs/performance.md, scale).
class _Inbound(NamedTuple):
    number: int
    text: str
    update_id: str = ""
    stream: bool = False
    trace_context: otel_context.Context | None = None
    """Where the message's update sits in a trace: its turn's span goes under it."""


class _Outcome(NamedTuple):
    reply: str = ""
    error: str = ""


class _BudgetReached(Exception):
    """The budget allows no further model call; the message says which limit, and how to
    raise it."""


# An input that does not decode or makes no sense fails the workflow with its reason: no
# worker could ever run it. Any other exception in this code is a bug, and fails only the
# workflow task, which Temporal retries until a fixed worker runs it.
# Pinned (the versioned worker's default, deployment.py; a workflow that declared it would
# fail on unversioned workers): every workflow task of a run goes to workers of the
# version it started on, so a run never meets code it was not written by. A conversation
# moves to a newer version only by continuing as new onto it, between turns
# (`_should_upgrade`, docs/versioning.md).
@workflow.defn(failure_exception_types=[InvalidSessionInput])
class DurableAgentWorkflow:
    """One conversation. The workflow id is the session id."""

    # `None` only so that a start with no input, or null, is refused with a reason instead
    # of failing every workflow task on the missing argument. `run` refuses a bad input
    # first thing; until then, the defaults stand in for one that is not a SessionInput.
    @workflow.init
    def __init__(self, session: SessionInput | None = None) -> None:
        self._session = session if isinstance(session, SessionInput) else SessionInput()
        self._messages = list(self._session.messages)
        self._earlier_messages = self._session.earlier_messages
        self._inbox: deque[_Inbound] = deque()
        self._outcomes: dict[int, _Outcome] = {}
        self._received = 0
        self._working = False
        self._ended = False
        self._turn = _Inbound(0, "")
        self._pending: dict[str, PendingApproval] = {}
        self._decisions: dict[str, ToolDecision] = {}
        self._expired: dict[str, str] = {}  # call id -> when it expired (ISO 8601)
        self._stream = WorkflowStream(self._session.stream)
        self._last_turn_offset = 0
        self._subagents: list[Subagent] = []
        self._budget = self._session.budget
        self._usage = self._session.usage
        self._last_turn = self._session.last_turn
        self._reports: list[asyncio.Task[None]] = []
        self._workspace = self._session.workspace
        self._pinning = asyncio.Lock()  # held by a file call that runs before any pin
        self._files_offered = False  # with the latest model call

    @workflow.run
    async def run(self, session: SessionInput | None = None) -> Transcript:
        check_session_input(session)  # InvalidSessionInput: the workflow fails with why
        if problem := budget_problem(self._session.budget):
            raise InvalidSessionInput(f"budget: {problem}")
        if self._session.task is not None:  # A subagent: one task, no chat.
            return await self._answer_task(self._session.task)
        # Messages are answered one at a time, in the order their updates were accepted.
        while not self._ended:
            # Between turns: hand over to a fresh run before the history grows large, or
            # when a newer version of the agent is current, to a run on that version.
            if (
                (self._history_is_large() or self._should_upgrade())
                and await self._nothing_in_flight()
                and not self._ended
            ):
                workflow.continue_as_new(
                    self._carry_over(), initial_versioning_behavior=self._next_run_versioning()
                )
            await workflow.wait_condition(
                lambda: bool(self._inbox) or self._ended or self._should_upgrade()
            )
            if self._ended:
                break
            if not self._inbox:
                continue  # Woken by news of a newer version: move to it, above.
            message = self._inbox.popleft()
            self._working, self._turn = True, message
            self._last_turn = TurnUsage(message.update_id)
            with self._turn_span(message) as span:
                outcome = await self._answer(message.text)
                if outcome.error:
                    span.set_status(trace.StatusCode.ERROR)
                span.set_attributes(_usage_attributes(self._last_turn.usage))
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
        if self._session.task is not None:
            raise ValueError("This is a subagent: it answers its parent's task, not messages.")
        if self._ended:
            raise ValueError("This chat has ended. Start a new session to keep talking.")
        if not isinstance(text, str):  # A client that is not ours; the SDK passed it on.
            raise ValueError(f"The message must be a text, not {type(text).__name__}.")
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
                self._undecidable(decision.call_id)
                or f"Tool call {decision.call_id} no longer waits for a decision.",
                type="NotPending",
                non_retryable=True,
            )
        self._decisions[decision.call_id] = decision
        return "approved" if decision.approved else "denied"

    @decide_tool_call.validator
    def _validate_decision(self, decision: ToolDecision) -> None:
        if not isinstance(decision, ToolDecision):  # null, or more than one argument
            raise ValueError('A decision is {"call_id": ..., "approved": ..., "reason": ...}.')
        if refusal := self._undecidable(decision.call_id):
            raise ValueError(refusal)
        # A decision that reaches a worker after the call's expiry is refused, even when
        # the expiry's timer has not fired yet here: after a restart, both can arrive in
        # the same workflow task, and the decision would be applied first. Only here, in
        # the validator, which replay does not run: a check in the handler or after the
        # wait would replay differently any history that recorded such a decision.
        pending = self._pending[decision.call_id]
        if pending.expires_at and workflow.now() >= datetime.fromisoformat(pending.expires_at):
            raise ValueError(_expiry_refusal(decision.call_id, pending.expires_at))

    def _undecidable(self, call_id: str) -> str | None:
        """Why a decision on `call_id` is refused whatever the time, or None."""
        if call_id in self._expired:
            return _expiry_refusal(call_id, self._expired[call_id])
        if call_id in self._decisions:
            return f"Tool call {call_id} has already been decided."
        if call_id not in self._pending:
            waiting = ", ".join(self._pending) or "none"
            return f"No tool call {call_id} waits for approval (waiting: {waiting})."
        return None

    @workflow.signal
    def end_chat(self) -> None:
        """End the conversation once the turn in progress (if any) has been answered.

        Tool calls that wait for approval are denied ("chat ended"); the model answers.
        """
        self._ended = True

    @workflow.signal
    def move_to_current_version(self) -> None:
        """Wake an idle conversation so that it moves to the current version now.

        Nothing to do here: a run hears that a newer version is current only in a workflow
        task, and an idle one has none until something arrives. This signal is that
        something; the loop then continues as new onto the new version, between turns as
        always (a turn in flight finishes first).
        """

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

    @workflow.query
    def subagents(self) -> list[Subagent]:
        """Child workflows this run started, oldest first: what a client shows, one a line."""
        return list(self._subagents)

    @workflow.query
    def usage(self) -> UsageReport:
        """What the conversation and its latest turn spent (subagents included), and the
        limits."""
        return UsageReport(self._usage, self._last_turn, self._budget)

    @workflow.update
    def set_budget(self, budget: Budget) -> UsageReport:
        """Replace the conversation's limits; they apply from its next model call. A
        subagent already running keeps the share it started with."""
        self._budget = budget
        return self.usage()

    @set_budget.validator
    def _validate_budget(self, budget: Budget) -> None:
        if not isinstance(budget, Budget):  # null, from a client that is not ours
            raise ValueError('A budget is {"model_calls": ..., "tokens": ..., "cost_usd": ...}.')
        if problem := budget_problem(budget):
            raise ValueError(problem)

    @workflow.signal
    def subagent_usage(self, report: SubagentUsage) -> None:
        """A subagent of this run reports what a model call used; it counts here too (and,
        in a subagent, is passed on up). Reports from anyone else are ignored."""
        if any(child.workflow_id == report.workflow_id for child in self._subagents):
            self._spent(report.usage)

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
            if is_cancelled_exception(err):
                raise  # The workflow is being cancelled, not the turn failing: end cancelled.
            del self._messages[turn_start:]
            return _Outcome(error=_explain(err))
        except _BudgetReached as stop:
            if self._session.task is not None:  # A subagent fails: its parent's model reads why.
                return _Outcome(error=str(stop))
            self._messages.append(Message("assistant", str(stop)))
            return _Outcome(reply=str(stop))  # The turn ends; the chat goes on.
        # Forget what no longer fits the model's context: the state stays bounded.
        del self._messages[: final.context_dropped]
        self._earlier_messages += final.context_dropped
        return _Outcome(reply=final.reply)

    async def _agent_loop(self) -> Plan:
        """plan -> tools -> plan -> ... -> reply: the loop the paper makes durable."""
        plan = Plan()
        for step in range(self._session.max_model_steps_per_turn):
            self._check_budget()
            stream_to = DeltaTarget(self._turn.update_id, step) if self._turn.stream else None
            plan = await workflow.execute_activity(
                "plan_next_action",
                PlanRequest(
                    self._messages,
                    self._session.tools,
                    stream_to=stream_to,
                    can_delegate=self._may_delegate(),
                    can_run_programs=self._session.allow_programs,
                ),
                result_type=Plan,
                **PLAN_OPTIONS,
            )
            self._spent(plan.usage)
            self._files_offered = plan.files_offered
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

    def _check_budget(self) -> None:
        """Before each model call: once a limit is reached, no further call (budget.py)."""
        subagent = self._session.task is not None
        if stop := refusal(self._budget, self._usage, workflow.info().workflow_id, subagent):
            raise _BudgetReached(stop)

    def _spent(self, usage: Usage) -> None:
        """Count what a model call used, this agent's or a subagent's, in the turn's and
        the conversation's totals. A subagent also signals it to its parent at once (the
        signal goes out with its next step, which does not wait for it): so its parent
        counts every call it made, however it ends (answered, failed, cancelled, timed
        out). `_answer_task` waits for the signals before it ends, so that a parent
        always has them before it learns how its subagent ended."""
        self._usage += usage
        if self._last_turn is not None:
            self._last_turn = TurnUsage(self._last_turn.turn, self._last_turn.usage + usage)
        parent = workflow.info().parent
        if parent is not None and workflow.patched(REPORTS_USAGE):
            report = SubagentUsage(workflow.info().workflow_id, usage)
            self._reports.append(asyncio.create_task(_report(parent.workflow_id, report)))

    async def _run_tool(self, call: ToolCall) -> ToolResult:
        """Run one tool call, after a person approves it if the worker's policy says so."""
        offered = self._session.tools
        run_here = (DELEGATE_TOOL, PROGRAM_TOOL)
        if call.name not in run_here and offered is not None and call.name not in offered:
            return _tool_error(call, f"{call.name} is not one of this agent's tools")
        if call.needs_approval and (refusal := await self._approval(call)):
            self._publish_tool(call, "finished", "not run")
            return refusal
        self._publish_tool(call, "started")
        if call.name == DELEGATE_TOOL:
            result = await self._delegate(call)
        elif call.name == PROGRAM_TOOL:
            result = await self._run_program(call)
        elif call.name in WORKSPACE_TOOLS:
            result = await self._file_tool(call)
        else:
            result = await _execute_tool(call)
        self._publish_tool(call, "finished", "error" if result.is_error else "ok")
        return result

    async def _approval(self, call: ToolCall) -> ToolResult | None:
        """Wait, durably, for a decision on `call`: None if approved, else what the model
        sees instead of a tool result. The wait is a condition (and, with an expiry, a
        timer) in the history: it costs nothing and survives crashes and restarts."""
        if self._session.task is not None:  # Nobody watches a subagent to decide.
            return _not_run(call, "a subagent cannot ask for approval; the parent agent can")
        now, timeout_s = workflow.now(), call.approval_timeout_s
        # Models may reuse a call id in a later turn.
        self._decisions.pop(call.id, None)
        self._expired.pop(call.id, None)
        expires_at = (now + timedelta(seconds=timeout_s)).isoformat() if timeout_s else None
        self._pending[call.id] = PendingApproval(
            call.id, call.name, call.arguments, now.isoformat(), self._turn.update_id, expires_at
        )
        self._publish_approval(call, "requested")
        try:
            await workflow.wait_condition(
                lambda: call.id in self._decisions or self._ended, timeout=timeout_s
            )
        except asyncio.TimeoutError:
            why = f"no decision within {timeout_s:g} s"
            self._expired[call.id] = expires_at or ""  # Late decisions: refused as expired.
            self._publish_approval(call, "expired", why)
            return _not_run(call, why)
        finally:
            del self._pending[call.id]
        decision = self._decisions.setdefault(call.id, ToolDecision(call.id, False, "chat ended"))
        self._publish_approval(call, "approved" if decision.approved else "denied", decision.reason)
        if decision.approved:
            return None
        return _not_run(call, f"the user denied it ({decision.reason or 'no reason given'})")

    async def _file_tool(self, call: ToolCall) -> ToolResult:
        """Run a file tool call where the conversation's files are. The first runs on the
        shared task queue, and the worker that takes it makes the folder there and says so
        in its result: from then on every file call goes to that worker's own queue, as
        the pin in the history says. If that worker does not take a call in time, the
        model reads that the workspace is unavailable, and the turn goes on."""
        async with self._pinning:  # Calls at once wait for the first to pin, or not.
            if self._workspace is None:
                result = await _execute_tool(call)
                self._workspace = result.workspace  # None: that worker keeps no files.
                return result
        pin = self._workspace
        in_workspace = dataclasses.replace(call, workspace=pin.folder)
        if pin.queue is None:  # Shared storage: any worker of the conversation's queue.
            return await _execute_tool(in_workspace)
        try:
            return await _execute_tool(
                in_workspace,
                task_queue=pin.queue,
                schedule_to_start_timeout=timedelta(seconds=pin.unavailable_after_s),
            )
        except ActivityError as err:
            if not isinstance(err.cause, ActivityTimeoutError):
                raise
            return _tool_error(
                call,
                f"workspace unavailable: worker {pin.worker}, which holds this "
                f"conversation's files, did not take the call within "
                f"{pin.unavailable_after_s:g} s; try again later",
            )

    async def _answer_task(self, task: str) -> Transcript:
        """A subagent's whole run: one turn on its parent's task, then it ends. A failed
        turn fails the child workflow, so the parent's model reads why as a tool error."""
        self._working, self._last_turn = True, TurnUsage(self._turn.update_id)
        outcome = await self._answer(task)
        self._working, self._ended = False, True
        await asyncio.gather(*self._reports)  # What it spent reaches its parent first.
        if outcome.error:
            raise ApplicationError(outcome.error, type="SubagentFailed", non_retryable=True)
        return self._transcript()

    async def _delegate(self, call: ToolCall) -> ToolResult:
        """Run a `delegate` call as a child workflow: this loop on the task, with its own
        history. Its answer is the tool result; if it has none, the model reads why."""
        if not self._may_delegate():
            limit = self._session.max_delegation_depth
            return _tool_error(call, f"this agent may not delegate (depth limit {limit})")
        try:
            task, tools = _delegation(call.arguments)
        except ValueError as problem:
            return _tool_error(call, str(problem))
        if self._files_offered and self._workspace is None:
            # The subagent works in this conversation's files, so they must be somewhere
            # before it starts: were its first file call to pin them, the pin would be in
            # its history, not this one, and this conversation's next file call would make
            # a second workspace elsewhere. A listing of the (new) folder pins it, run and
            # recorded like any file call: no third activity type just to say where.
            await self._file_tool(ToolCall(f"{call.id}-workspace", "list_files", "{}"))
        child = Subagent(self._subagent_id(call), task, self._turn.update_id)
        self._subagents.append(child)
        try:
            transcript = await workflow.execute_child_workflow(
                DurableAgentWorkflow.run,
                self._subagent_input(task, tools, self._subagent_budget(call)),
                id=child.workflow_id,
                execution_timeout=timedelta(seconds=self._session.subagent_timeout_s),
                # Cancelling this workflow cancels the child through this await. If it
                # closes with no chance to (terminated, timed out), the server asks each
                # running child to cancel: it stops at its next step, its history says
                # why. TERMINATE would give it no such chance; ABANDON would leave it
                # spending model calls on an answer nobody waits for.
                parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
            )
        except (ChildWorkflowError, WorkflowAlreadyStartedError) as err:
            # If this workflow is cancelled, the child is cancelled with it and this turns
            # into a tool result, but the gather in `_agent_loop` still re-raises the
            # cancellation: the turn does not go on.
            return _tool_error(call, self._subagent_failure(child.workflow_id, err))
        return ToolResult(call.id, call.name, transcript.messages[-1].content)

    async def _run_program(self, call: ToolCall) -> ToolResult:
        """Run a `run_program` call: the interpreter walks the model's program here, in
        the workflow, and replay walks it again, each tool call's result coming from the
        history. A program that cannot run, or stops, is a tool error the model reads."""
        if not self._session.allow_programs:
            return _tool_error(call, f"{PROGRAM_TOOL} is not offered in this conversation")
        try:
            source = _program_source(call.arguments)
        except ValueError as problem:
            return _tool_error(call, str(problem))
        policy = call.program or ProgramPolicy(tools=[])
        with self._program_span(call) as span:
            try:
                output = await program.run(source, policy.tools, self._program_caller(call, policy))
            except program.ProgramError as stopped:
                span.set_status(trace.StatusCode.ERROR)
                return _tool_error(call, str(stopped))
        return ToolResult(call.id, call.name, truncated(output))

    def _program_span(self, call: ToolCall) -> AbstractContextManager[trace.Span]:
        """The program as a span, `agent.program`, in the turn's: its calls go under it."""
        attributes = {"gen_ai.tool.call.id": call.id}
        return trace.get_tracer(__name__).start_as_current_span(
            "agent.program", attributes=attributes
        )

    def _program_caller(self, call: ToolCall, policy: ProgramPolicy) -> program.ToolCaller:
        """How the program's tool calls are made: each one a ToolCall of its own, with an
        id from the program's and a number (call_2_0-1, call_2_0-2, ...), run by
        `_run_tool` as if the model had asked for it: the approval gate, `delegate`'s
        child workflow, the `tool` events, the `execute_tool` activity."""
        numbers = itertools.count(1)

        async def call_tool(name: str, arguments: dict[str, Any]) -> str:
            inner = ToolCall(
                f"{call.id}-{next(numbers)}",
                name,
                json.dumps(arguments),
                needs_approval=name in policy.needs_approval,
                approval_timeout_s=policy.approval_timeout_s,
            )
            result = await self._run_tool(inner)
            if result.is_error:
                raise program.ToolFailed(f"{name} failed: {result.content}")
            if inner.needs_approval and result.content.startswith(NOT_RUN):  # denied, expired
                raise program.ToolFailed(f"{name} was not run: {result.content[len(NOT_RUN) :]}")
            return result.content

        return call_tool

    def _may_delegate(self) -> bool:
        return self._session.depth < self._session.max_delegation_depth

    def _subagent_id(self, call: ToolCall) -> str:
        # A call id may repeat in a later turn (the scripted model numbers calls by message
        # count), so the message's place in the whole conversation comes first. Both are in
        # the history: the id is the same on replay and after continue-as-new. No "/": the
        # Web UI has a history of failing to open workflow ids that contain one.
        place = self._earlier_messages + len(self._messages)
        return f"{workflow.info().workflow_id}-delegate-{place}-{call.id}"

    def _subagent_budget(self, call: ToolCall) -> Budget:
        """The child's share of what remains of this agent's budget: split evenly among
        the delegations of the model reply that asked for it, which run at once. A
        delegation a program makes is in no reply: it gets the whole remainder."""
        reply = next((m for m in reversed(self._messages) if call in m.tool_calls), None)
        siblings = [c.id for c in reply.tool_calls if c.name == DELEGATE_TOOL] if reply else []
        siblings = siblings or [call.id]
        return shares(self._budget, self._usage, len(siblings))[siblings.index(call.id)]

    def _subagent_input(self, task: str, tools: list[str] | None, budget: Budget) -> SessionInput:
        """The child's session: the task, one level deeper, never a tool this agent lacks,
        its share of the budget."""
        allowed = self._session.tools
        if tools is not None:
            allowed = [name for name in dict.fromkeys(tools) if allowed is None or name in allowed]
        return dataclasses.replace(
            self._session,
            task=task,
            depth=self._session.depth + 1,
            tools=allowed,
            messages=[],
            earlier_messages=0,
            budget=budget,
            usage=Usage(),
            last_turn=None,
            workspace=self._workspace,
        )

    def _subagent_failure(self, child_id: str, err: Exception) -> str:
        """What the model reads when a subagent has no answer."""
        cause = err.cause if isinstance(err, ChildWorkflowError) else err
        if isinstance(cause, ActivityTimeoutError):  # The child's own execution timeout.
            timeout_s = self._session.subagent_timeout_s
            return f"subagent {child_id} did not finish within {timeout_s:g} s"
        if is_cancelled_exception(err):
            return f"subagent {child_id} was cancelled"
        detail = cause.message if isinstance(cause, FailureError) else str(err)
        return f"subagent {child_id} failed: {detail}"

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

    def _should_upgrade(self) -> bool:
        """A newer version of the agent is current (or ramping to this conversation). The
        server says so in each workflow task it sends this run, which stays pinned to
        its own version; the news is in the history, so replay decides alike."""
        return workflow.info().is_target_worker_deployment_version_changed()

    def _next_run_versioning(self) -> workflow.ContinueAsNewVersioningBehavior | None:
        """Upgrading, the next run starts on the current version (then is pinned there);
        otherwise it inherits this run's version."""
        if self._should_upgrade():
            return workflow.ContinueAsNewVersioningBehavior.AUTO_UPGRADE
        return None

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
            budget=self._budget,
            usage=self._usage,
            last_turn=self._last_turn,
            workspace=self._workspace,
        )

    def _transcript(self) -> Transcript:
        return Transcript(list(self._messages), self._ended, self._earlier_messages)


async def _report(parent_id: str, usage: SubagentUsage) -> None:
    """Signal a subagent's usage to its parent (`subagent_usage`)."""
    with suppress(FailureError):  # The parent is gone: nobody is left to count it for.
        await workflow.get_external_workflow_handle(parent_id).signal(
            DurableAgentWorkflow.subagent_usage, usage
        )


def _not_run(call: ToolCall, why: str) -> ToolResult:
    """The result the model sees for a call that was denied or expired: not an error of
    the turn, just a fact it can answer from."""
    return ToolResult(call.id, call.name, f"{NOT_RUN}{why}.")


def _expiry_refusal(call_id: str, expires_at: str) -> str:
    return f"Tool call {call_id} expired at {expires_at}: it was not run."


async def _execute_tool(call: ToolCall, **where: Any) -> ToolResult:
    """The call as an `execute_tool` activity; `where`: another task queue, and how long
    the call may wait there for a worker."""
    return await workflow.execute_activity(
        "execute_tool", call, result_type=ToolResult, **TOOL_OPTIONS, **where
    )


def _tool_error(call: ToolCall, why: str) -> ToolResult:
    return ToolResult(call.id, call.name, why, is_error=True)


def _delegation(arguments: str) -> tuple[str, list[str] | None]:
    """The task and tool names of a `delegate` call, or a ValueError the model reads. No
    activity runs `delegate`, so no schema validator checks it: these lines do."""
    try:
        given = json.loads(arguments or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"the arguments are not valid JSON ({err.msg})") from None
    given = given if isinstance(given, dict) else {}
    task, tools = given.get("task"), given.get("tools")
    if not isinstance(task, str) or not 0 < len(task.strip()) <= MAX_MESSAGE_CHARS:
        raise ValueError(f"the task must be a text of 1 to {MAX_MESSAGE_CHARS} characters")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(name, str) for name in tools)
    ):
        raise ValueError("tools must be a list of tool names")
    return task, tools


def _usage_attributes(usage: Usage) -> dict[str, int | float]:
    """A turn's usage on its span: GenAI's token attributes, and ours for the rest."""
    attributes: dict[str, int | float] = {
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "agent.usage.model_calls": usage.model_calls,
    }
    if usage.cost_usd is not None:
        attributes["agent.usage.cost_usd"] = usage.cost_usd
    return attributes


def _program_source(arguments: str) -> str:
    """The source of a `run_program` call, or a ValueError the model reads."""
    try:
        given = json.loads(arguments or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"the arguments are not valid JSON ({err.msg})") from None
    source = given.get("source") if isinstance(given, dict) else None
    if not isinstance(source, str) or not source.strip():
        raise ValueError('the arguments must be {"source": "the program"}')
    return source


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
