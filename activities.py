"""Managed side effects: the two activity types, `plan_next_action` and `execute_tool`.

Primitive 2 of the paper. Everything that touches the world (the model provider, the
notes file, the clock) happens here, inside an activity, where Temporal records the
result, applies the timeouts and retry policies set in `workflow.py`, and never runs it
again once its completion is in the history.

Failure classification, in one place (an MCP server's own: `mcp_tools.py`):

| failure                                        | who sees it | how                           |
|------------------------------------------------|-------------|-------------------------------|
| bad or missing tool arguments, unknown tool,   | the model   | ToolResult(is_error=True);    |
| arguments that are not JSON, a ToolError (a    |             | never retried                 |
| calculator error, an MCP `isError` result)     |             |                               |
| provider rate limit, timeout, 5xx, connection; | Temporal    | retryable ApplicationError,   |
| an MCP server that cannot be reached           |             | backoff from PLAN_OPTIONS or  |
|                                                |             | TOOL_OPTIONS; with            |
|                                                |             | LLM_FALLBACK_MODELS, a model  |
|                                                |             | fallback from attempt 3 on    |
| provider auth, bad request, context too long,  | the user    | non-retryable ApplicationError|
| unknown model                                  |             | naming cause and fix; the     |
|                                                |             | update fails, the chat lives  |
| any other exception in a tool (a bug)          | Temporal    | retried, at most a minute     |
|                                                |             | apart, until a fixed worker   |
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry import trace
from temporalio import activity
from temporalio.contrib.workflow_streams import WorkflowStreamClient
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

import llm_client
import workspace
from contract import (
    WORKSPACE_TOOLS,
    Plan,
    PlanRequest,
    ProgramPolicy,
    RetryNotice,
    TextDelta,
    ToolCall,
    ToolResult,
    WorkspacePin,
    truncated,
)
from llm_client import FALLBACK_AFTER_ATTEMPTS, LlmSettings, env_number
from toolbox import ApprovalPolicy, Tool, ToolError, describe_tools, toolset
from tools import registry
from workspace import Workspace

HEARTBEAT_EVERY_S = 1.0
DELTA_BATCH = timedelta(milliseconds=100)
"""Streamed text goes to the workflow in batches: each batch is a signal in the history."""
T = TypeVar("T")


@dataclass(frozen=True)
class Faults:
    """Fault switches for the paper's failure scenarios, read from the environment at start."""

    llm_failures: int = 0
    tool_bug: bool = False
    tool_delay_s: float = 0.0
    failure_rate: float = 0.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Faults:
        """Parse FAULT_* variables; raise ValueError naming the variable on a bad value."""
        env = dict(os.environ if env is None else env)
        known = {"FAULT_LLM_FAILURES", "FAULT_TOOL_BUG", "FAULT_TOOL_DELAY_S", "FAULT_FAILURE_RATE"}
        if unknown := sorted(k for k in env if k.startswith("FAULT_") and k not in known):
            raise ValueError(f"unknown fault switch {', '.join(unknown)}; known: {sorted(known)}")
        faults = cls(
            llm_failures=env_number(env, "FAULT_LLM_FAILURES", int, 0),
            tool_bug=env_number(env, "FAULT_TOOL_BUG", int, 0) == 1,
            tool_delay_s=env_number(env, "FAULT_TOOL_DELAY_S", float, 0.0),
            failure_rate=env_number(env, "FAULT_FAILURE_RATE", float, 0.0),
        )
        if env.get("FAULT_TOOL_BUG", "0") not in ("0", "1"):
            raise ValueError("FAULT_TOOL_BUG must be 0 or 1")
        if faults.llm_failures < 0 or faults.tool_delay_s < 0:
            raise ValueError("FAULT_LLM_FAILURES and FAULT_TOOL_DELAY_S must not be negative")
        if not 0.0 <= faults.failure_rate <= 1.0:
            raise ValueError("FAULT_FAILURE_RATE must be between 0 and 1")
        return faults

    def describe(self) -> list[str]:
        """The active switches, one line each, for the worker's start banner."""
        lines = []
        if self.llm_failures:
            lines.append(f"FAULT_LLM_FAILURES={self.llm_failures}: first plan attempts fail")
        if self.tool_bug:
            lines.append("FAULT_TOOL_BUG=1: every execute_tool attempt raises a simulated bug")
        if self.tool_delay_s:
            lines.append(f"FAULT_TOOL_DELAY_S={self.tool_delay_s:g}: tools work that long first")
        if self.failure_rate:
            lines.append(f"FAULT_FAILURE_RATE={self.failure_rate:g}: random transient failures")
        return lines

    def before_model_call(self) -> None:
        """Fail this plan attempt if a switch says so, as a provider outage would."""
        attempt = activity.info().attempt
        if attempt <= self.llm_failures:
            _inject(f"provider outage, attempt {attempt} (FAULT_LLM_FAILURES={self.llm_failures})")
        self._maybe_fail_at_random()

    async def before_tool_call(self) -> None:
        """Delay, fail or crash this tool attempt if a switch says so."""
        self._maybe_fail_at_random()
        if self.tool_delay_s:
            activity.logger.warning(
                "FAULT INJECTED: tool works %gs first (FAULT_TOOL_DELAY_S)", self.tool_delay_s
            )
            await _heartbeating(asyncio.sleep(self.tool_delay_s))  # a slow tool
        if self.tool_bug:
            activity.logger.warning("FAULT INJECTED: simulated tool bug (FAULT_TOOL_BUG=1)")
            raise RuntimeError("simulated bug in execute_tool (FAULT_TOOL_BUG=1)")

    def _maybe_fail_at_random(self) -> None:
        if self.failure_rate and random.random() < self.failure_rate:
            _inject(f"random transient failure (FAULT_FAILURE_RATE={self.failure_rate:g})")


class AgentActivities:
    """The two activities, sharing the settings read once when the worker starts."""

    def __init__(
        self,
        llm: LlmSettings,
        notes_file: Path,
        faults: Faults | None = None,
        approvals: ApprovalPolicy | None = None,
        *,
        tools: Mapping[str, Tool] | None = None,
        trace_content: bool = False,
        workspace: Workspace | None = None,
    ) -> None:
        """`tools`: what the model is offered, by name (default: the built-in ones, and
        the workspace's file tools if there is one). `workspace`: this worker's
        WORKSPACE_ROOT (workspace.py), None for no file tools.
        `trace_content`: message text, tool arguments and results go into the spans too
        (OTEL_INCLUDE_CONTENT=1); otherwise spans carry names, counts and outcomes only."""
        self._llm = llm
        self._trace_content = trace_content
        self._faults = faults or Faults()
        self._notes_file = notes_file
        self.workspace = workspace
        if tools is None:
            tools = toolset(registry(notes_file).values(), workspace.tools() if workspace else [])
        self._tools = dict(tools)
        self._approvals = approvals or ApprovalPolicy.declared(self._tools)

    def describe(self) -> str:
        """What this worker will do, for its start banner."""
        model = self._llm.model
        if self._llm.is_scripted:
            model += " (the offline scripted model; set LLM_MODEL in .env for a real one)"
        elif self._llm.api_base:
            model += f" at {self._llm.api_base}"
        lines = [f"Model: {model}"]
        if fallbacks := self._llm.fallback_models:
            lines.append(
                f"Fallback models: {', '.join(fallbacks)} (after {FALLBACK_AFTER_ATTEMPTS} "
                "failed attempts of the model before, in turn)"
            )
        lines.append(f"Notes file: {self._notes_file}")
        if self.workspace:
            lines.append(self.workspace.describe())
        lines += [*describe_tools(self._tools), self._approvals.describe()]
        switches = self._faults.describe()
        lines += [f"Fault switch on: {line}" for line in switches] or ["Fault switches: none"]
        if self._trace_content:
            lines.append("Traces include messages, tool arguments, results (OTEL_INCLUDE_CONTENT)")
        return "\n".join(lines)

    async def warm_up(self) -> None:
        """Load now what the first model call would load lazily (tokenizer, provider code),
        so a worker that replaces a crashed one answers its first turn at full speed."""
        await llm_client.warm_up(self._llm)

    @activity.defn
    async def plan_next_action(self, request: PlanRequest) -> Plan:
        """Ask the model for the next step of the turn."""
        offered = [
            tool.schema()
            for tool in self._tools.values()
            if request.tools is None or tool.name in request.tools
        ]
        if request.can_delegate:  # The workflow runs it, as a child workflow.
            offered.append(llm_client.DELEGATE_SCHEMA)
        if request.can_run_programs:  # The workflow runs it too (program.py).
            offered.append(llm_client.PROGRAM_SCHEMA)
        attempt = activity.info().attempt
        llm = self._llm.for_attempt(attempt)
        if llm.model != self._llm.model:
            activity.logger.info("plan_next_action attempt %d falls back to %s", attempt, llm.model)
        try:
            self._faults.before_model_call()
            plan = await _heartbeating(self._plan(llm, request, offered))
        except Exception as err:
            if classified := llm_client.classify_provider_error(err):
                # One line in the worker log; the error is BENIGN, so the SDK adds no stack
                # trace. "from None": the provider's own exception may quote a key; keep it
                # out of the history, where the redacted message says all that is needed.
                outcome = "not retried" if classified.non_retryable else "Temporal retries"
                activity.logger.warning(
                    "plan_next_action attempt %d failed, %s: %s",
                    attempt,
                    outcome,
                    classified.message,
                )
                raise classified from None
            raise
        chosen = ", ".join(call.name for call in plan.tool_calls) or "reply"
        activity.logger.info(
            "plan_next_action -> %s (%s, %d tokens)",
            "end_chat" if plan.end_chat else chosen,
            plan.model,
            plan.usage.tokens,
        )
        names = [schema["function"]["name"] for schema in offered]
        stamped = [self._stamped(call, names) for call in plan.tool_calls]
        files = any(name in WORKSPACE_TOOLS for name in names)
        return dataclasses.replace(plan, tool_calls=stamped, files_offered=files)

    async def _plan(
        self, llm: LlmSettings, request: PlanRequest, offered: list[dict[str, Any]]
    ) -> Plan:
        """The model call; streamed to the workflow's `delta` topic if someone watches.

        The stream is a view: the `Plan` this returns, recorded in the history, is the
        truth. A retried attempt first says so on the `retry` topic, so a watcher drops
        the text that the failed attempt had already streamed.
        """
        target, attempt = request.stream_to, activity.info().attempt
        traced = {"attempt": attempt, "trace_content": self._trace_content}
        if target is None:
            return await llm_client.plan(llm, request.conversation, offered, **traced)
        stream = WorkflowStreamClient.from_within_activity(batch_interval=DELTA_BATCH)
        async with stream:  # Flushes what is left before the activity completes.
            if attempt > 1:
                retry = RetryNotice(target.turn, target.step, attempt)
                stream.topic("retry", type=RetryNotice).publish(retry, force_flush=True)
            deltas = stream.topic("delta", type=TextDelta)

            async def publish(text: str) -> None:
                deltas.publish(TextDelta(target.turn, target.step, text))

            return await llm_client.plan(
                llm, request.conversation, offered, on_text=publish, **traced
            )

    def _stamped(self, call: ToolCall, offered: list[str]) -> ToolCall:
        """The call with this worker's approval policy on it, recorded in the history; a
        program's call gets the policy for the calls its program makes."""
        if call.name == llm_client.PROGRAM_TOOL and llm_client.PROGRAM_TOOL in offered:
            tools = [name for name in offered if name != llm_client.PROGRAM_TOOL]
            gated = [name for name in tools if name in self._approvals.tools]
            policy = ProgramPolicy(tools, gated, self._approvals.timeout_s)
            return dataclasses.replace(call, program=policy)
        if call.name not in self._approvals.tools:
            return call
        return dataclasses.replace(
            call, needs_approval=True, approval_timeout_s=self._approvals.timeout_s
        )

    @activity.defn
    async def execute_tool(self, call: ToolCall) -> ToolResult:
        """Run one tool call; expected failures become a result the model can act on."""
        # This attempt's span (the tracing plugin's) says which tool ran, and how it went.
        span = trace.get_current_span()
        span.set_attributes({"gen_ai.tool.name": call.name, "gen_ai.tool.call.id": call.id})
        if self._trace_content:
            span.set_attribute("gen_ai.tool.call.arguments", call.arguments)
        await self._faults.before_tool_call()
        pin = None
        try:
            if call.name in WORKSPACE_TOOLS:
                call, pin = await self._in_workspace(call)
            content = await _heartbeating(self._run_tool(call))
            result = ToolResult(call.id, call.name, truncated(content), workspace=pin)
        except ToolError as err:
            why = truncated(str(err), error=True)
            result = ToolResult(call.id, call.name, why, is_error=True, workspace=pin)
        outcome = "error" if result.is_error else "ok"
        activity.logger.info("execute_tool %s -> %s", call.name, outcome)
        span.set_attribute("agent.tool.outcome", outcome)
        if self._trace_content:
            span.set_attribute("gen_ai.tool.call.result", result.content)
        return result

    async def _in_workspace(self, call: ToolCall) -> tuple[ToolCall, WorkspacePin | None]:
        """A file call in the folder the workflow names; or, the conversation's first
        (no folder named yet), in a folder made now on this worker's disk, with the pin
        that sends every file call after it here. Even if the call itself then fails:
        the folder is here."""
        if self.workspace is None:  # A first call pins nothing: the next one tries again.
            raise ToolError("no workspace: the agent's workers keep no files")
        if call.workspace is not None:
            return call, None
        # The workflow that asks, as Temporal says: its folder, never the model's choice.
        pin = await asyncio.to_thread(self.workspace.open, activity.info().workflow_id)
        return dataclasses.replace(call, workspace=pin.folder), pin

    async def _run_tool(self, call: ToolCall) -> str:
        tool = self._tools.get(call.name)
        if tool is None:
            raise ToolError(
                f"unknown tool '{call.name}'; available tools: {', '.join(self._tools)}"
            )
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError as err:
            raise ToolError(
                f"the arguments are not valid JSON ({err.msg}): {call.arguments[:200]}"
            ) from err
        if call.workspace is not None:  # A file tool: the workflow says whose folder.
            workspace.folder.set(call.workspace)
        return await tool.call(arguments)  # It checks them against its schema first.


def _inject(what: str) -> None:
    """Fail this attempt as a transient provider error would, logged on one line.

    BENIGN keeps the SDK from logging each injected failure again with a stack trace.
    """
    activity.logger.warning("FAULT INJECTED: %s", what)
    raise ApplicationError(
        f"simulated failure: {what}",
        type="InjectedFault",
        category=ApplicationErrorCategory.BENIGN,
    )


async def _heartbeating(work: Awaitable[T]) -> T:
    """Await `work`, heartbeating meanwhile: if this worker dies, Temporal notices within
    the heartbeat timeout and retries elsewhere, instead of waiting out the whole call."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY_S)
            if done:
                return task.result()
            activity.heartbeat()
    finally:
        task.cancel()
