"""What one eval conversation did, read from outside: the record the checks judge.

The replies are what the harness received (`eval_conversation.py`); everything else is
read from the event histories of the conversation and of its subagents — which tools the
model asked for and with what arguments, how each call went, which waited for approval
and what was decided, every model call and its attempts, the usage each call recorded —
and from the notes file of the worker that ran it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from contract import Plan, ToolCall, ToolDecision, ToolResult, Transcript
from workflow import DELEGATE_TOOL, PROGRAM_TOOL


@dataclass
class Turn:
    """One message and what the user got back: a reply, or the error that refused it."""

    message: str
    reply: str = ""
    error: str = ""
    latency_s: float = 0.0


@dataclass
class ToolUse:
    """A tool call the model asked for, and what became of it.

    `outcome` is "ok" or "error" (the tool's result, or the subagent's answer or failure),
    or "not run": denied, or refused by the workflow itself (a tool the agent lacks).
    """

    name: str
    arguments: Any
    """The JSON the model wrote, parsed; the text as written if it is not JSON."""
    subagent: str = ""
    """The workflow id of the subagent whose model asked; empty for the conversation's."""
    needs_approval: bool = False
    decision: str = ""
    """"approved" or "denied" by the harness, for a call that waited."""
    outcome: str = "not run"
    result: str = ""
    attempts: int = 0
    program: str = ""
    """For a call a program made: the id of the model's run_program call that made it."""


@dataclass
class ConversationRecord:
    """What one conversation did, subagents included: the output the evaluators read."""

    session: str
    turns: list[Turn]
    tools: list[ToolUse] = field(default_factory=list)
    model_calls: int = 0
    retries: int = 0
    """Activity attempts beyond each one's first: what failures cost in work."""
    ended: bool = False
    """The model ended the chat (it said goodbye)."""
    subagents: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Notes the worker saved for this conversation, in order, as its notes file holds them."""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    """None once a model whose price LiteLLM does not know has answered."""

    @property
    def latency_s(self) -> float:
        """From the first message sent to the last reply received."""
        return sum(turn.latency_s for turn in self.turns)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def metrics(self) -> dict[str, float]:
        """The numbers a report shows per case; unknown ones left out."""
        known = {
            "latency_s": self.latency_s,
            "model_calls": self.model_calls,
            "tool_calls": len(self.tools),
            "retries": self.retries,
            "tokens": self.tokens,
            "cost_usd": self.cost_usd,
        }
        return {name: value for name, value in known.items() if value is not None}

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "latency_s": self.latency_s, "tokens": self.tokens}


async def read_record(
    client: Client, session: str, turns: list[Turn], notes_file: Path
) -> ConversationRecord:
    """The record of the ended conversation `session`, whose turns went as `turns`."""
    record = ConversationRecord(session, turns)
    await _read_history(client, session, "", record)
    record.notes = _notes_of(notes_file, {session, *record.subagents})
    return record


async def _read_history(
    client: Client, workflow_id: str, subagent: str, record: ConversationRecord
) -> None:
    """Add to `record` what the history of `workflow_id` says, then its subagents' do."""
    reader = _HistoryReader(client, subagent, record)
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        await reader.read(event)
    for child in reader.children:
        await _read_history(client, child, child, record)


class _HistoryReader:
    """Reads one workflow's history, event by event, into the record.

    Only a final attempt writes events (its start carries the attempt number), so an
    activity's retries are its last attempt less one. A tool call's result is matched
    to the call by id: the latest call with that id is the one it answers.
    """

    def __init__(self, client: Client, subagent: str, record: ConversationRecord) -> None:
        self._decode = client.data_converter.decode
        self._subagent = subagent
        self._record = record
        self._calls: dict[str, ToolUse] = {}
        self._activities: dict[int, tuple[str, ToolUse | None]] = {}
        self._attempts: dict[int, int] = {}
        self._delegations: dict[int, ToolUse | None] = {}
        self.children: list[str] = []

    async def read(self, event: HistoryEvent) -> None:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            name, use = attributes.activity_type.name, None
            if name == "execute_tool":
                [call] = await self._decode(attributes.input.payloads, [ToolCall])
                use = self._calls.get(call.id) or self._program_call(call)
            self._activities[event.event_id] = (name, use)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attributes = event.activity_task_started_event_attributes
            self._attempts[attributes.scheduled_event_id] = attributes.attempt
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attributes = event.activity_task_completed_event_attributes
            name, use = self._finished(attributes.scheduled_event_id)
            if name == "plan_next_action":
                [plan] = await self._decode(attributes.result.payloads, [Plan])
                self._planned(plan)
            elif use is not None:
                [result] = await self._decode(attributes.result.payloads, [ToolResult])
                use.outcome = "error" if result.is_error else "ok"
                use.result = result.content
        elif kind in _ACTIVITY_GAVE_UP:
            attributes = _ACTIVITY_GAVE_UP[kind](event)
            _, use = self._finished(attributes.scheduled_event_id)
            if use is not None:
                use.outcome = "error"
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            request = event.workflow_execution_update_accepted_event_attributes.accepted_request
            if request.input.name == "decide_tool_call":
                [decision] = await self._decode(request.input.args.payloads, [ToolDecision])
                if use := self._calls.get(decision.call_id):
                    use.decision = "approved" if decision.approved else "denied"
        elif kind == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            child = event.start_child_workflow_execution_initiated_event_attributes.workflow_id
            self.children.append(child)
            self._record.subagents.append(child)
            self._delegations[event.event_id] = self._delegation(child)
        elif kind == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED:
            attributes = event.child_workflow_execution_completed_event_attributes
            if use := self._delegations.get(attributes.initiated_event_id):
                [transcript] = await self._decode(attributes.result.payloads, [Transcript])
                use.outcome, use.result, use.attempts = "ok", transcript.messages[-1].content, 1
        elif kind in _CHILD_GAVE_UP:
            initiated = _CHILD_GAVE_UP[kind](event).initiated_event_id
            if use := self._delegations.get(initiated):
                use.outcome, use.attempts = "error", 1

    def _delegation(self, child: str) -> ToolUse | None:
        """The delegate call that started subagent `child`, which the workflow names after
        the call (`_subagent_id` in workflow.py). A subagent is a child workflow, not an
        activity: its call has one attempt."""
        for call_id, use in self._calls.items():
            if use.name == DELEGATE_TOOL and child.endswith(f"-{call_id}"):
                return use
        return None

    def _program_call(self, call: ToolCall) -> ToolUse | None:
        """A call a program made, which the model did not ask for itself: a tool use of
        its own, found by its id (the run_program call's, then a number: `call_2_0-1`).
        Only its activity shows it, so a call that never got one (denied) is not here."""
        program, _, number = call.id.rpartition("-")
        made_by = self._calls.get(program)
        if made_by is None or made_by.name != PROGRAM_TOOL or not number.isdigit():
            return None
        use = ToolUse(
            call.name, _parsed(call.arguments), self._subagent, call.needs_approval, program=program
        )
        self._record.tools.append(use)
        self._calls[call.id] = use
        return use

    def _finished(self, scheduled_event_id: int) -> tuple[str, ToolUse | None]:
        name, use = self._activities[scheduled_event_id]
        attempt = self._attempts.get(scheduled_event_id, 1)
        self._record.retries += attempt - 1
        if use is not None:
            use.attempts = attempt
        return name, use

    def _planned(self, plan: Plan) -> None:
        record = self._record
        record.model_calls += 1
        record.ended = record.ended or plan.end_chat
        _add_usage(record, plan)
        for call in plan.tool_calls:
            use = ToolUse(call.name, _parsed(call.arguments), self._subagent, call.needs_approval)
            record.tools.append(use)
            self._calls[call.id] = use


def _add_usage(record: ConversationRecord, plan: Plan) -> None:
    """Add what the call used, as its plan recorded it. One call of a model with no known
    price makes the conversation's cost unknown."""
    usage = plan.usage
    record.input_tokens += usage.input_tokens
    record.output_tokens += usage.output_tokens
    if record.cost_usd is not None:
        record.cost_usd = None if usage.cost_usd is None else record.cost_usd + usage.cost_usd


_ACTIVITY_GAVE_UP = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: lambda e: e.activity_task_failed_event_attributes,
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: (
        lambda e: e.activity_task_timed_out_event_attributes
    ),
}
_CHILD_GAVE_UP = {
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED: (
        lambda e: e.child_workflow_execution_failed_event_attributes
    ),
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TIMED_OUT: (
        lambda e: e.child_workflow_execution_timed_out_event_attributes
    ),
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_CANCELED: (
        lambda e: e.child_workflow_execution_canceled_event_attributes
    ),
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TERMINATED: (
        lambda e: e.child_workflow_execution_terminated_event_attributes
    ),
}


def _parsed(arguments: str) -> Any:
    try:
        return json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return arguments


def _notes_of(notes_file: Path, sessions: set[str]) -> list[str]:
    """The notes the worker saved for these sessions (tools.NoteBook's JSON lines)."""
    if not notes_file.exists():
        return []
    notes = []
    for line in notes_file.read_text(encoding="utf-8").split("\n"):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("session") in sessions:
            notes.append(str(record.get("text", "")))
    return notes
