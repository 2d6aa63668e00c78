"""The contract of the event history: every dataclass that crosses the workflow's edge.

Activity inputs and results, update and query payloads, what one run hands the next at
continue-as-new, and the events of the conversation's stream: all are stored (or sent)
as JSON, and histories written today must read tomorrow. So they stay small, typed and
stable: a new field gets a default, and no field changes its meaning. `workflow.py`
is the loop that exchanges them.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import GetCoreSchemaHandler, ValidationError
from pydantic_core import CoreSchema, core_schema
from temporalio.contrib.workflow_streams import WorkflowStreamState

MAX_MODEL_STEPS_PER_TURN = 8
"""Model calls allowed in one turn, so a model that keeps asking for tools cannot loop forever."""

# A run continues as new (same workflow id, fresh history) past either threshold, or when
# the server suggests it, whichever comes first. Temporal warns at 10 240 events or 10 MB
# and terminates at 51 200 events or 50 MB, so a run stays far below both, and a worker
# that takes over after a crash replays at most this much.
CONTINUE_AS_NEW_AFTER_EVENTS = 2_000
CONTINUE_AS_NEW_AFTER_BYTES = 2_000_000

MAX_DELEGATION_DEPTH = 1
"""How deep delegation goes: 1 lets a conversation delegate, and its subagents not."""
SUBAGENT_TIMEOUT_S = 600.0
"""A subagent's execution timeout; past it, the model gets a tool error instead of an answer."""
MAX_TOOL_RESULT_CHARS = 8_000
"""Longest tool result the model sees; `truncated` cuts longer ones, with a marker."""


def truncated(text: str, *, error: bool = False) -> str:
    """Cap a tool result, with a marker, so one huge result cannot flood the context.

    An error keeps both ends: its reason may come last ("... is too long"), after the
    input it quotes.
    """
    if len(text) <= MAX_TOOL_RESULT_CHARS:
        return text
    hidden = len(text) - MAX_TOOL_RESULT_CHARS
    if error:
        head = MAX_TOOL_RESULT_CHARS // 2
        tail = text[-(MAX_TOOL_RESULT_CHARS - head) :]
        return f"{text[:head]}\n[{hidden} characters cut]\n{tail}"
    return f"{text[:MAX_TOOL_RESULT_CHARS]}\n[truncated: {hidden} more characters not shown]"


@dataclass(frozen=True)
class ProgramPolicy:
    """What the calls of one `run_program` call may do, stamped on it by `plan_next_action`
    like `needs_approval`: the tools offered with it, which of them wait for a person (the
    worker's approval policy), and for how long. The history decides, not today's worker."""

    tools: list[str]
    needs_approval: list[str] = field(default_factory=list)
    approval_timeout_s: float | None = None


WORKSPACE_TOOLS = ("read_file", "write_file", "edit_file", "list_files", "search_files")
"""The file tools (workspace.py): the workflow sends their calls to the worker whose disk
holds the conversation's workspace, as its `WorkspacePin` says."""


@dataclass(frozen=True)
class WorkspacePin:
    """Where a conversation's files are: on the result of its first file call
    (`ToolResult.workspace`), recorded in the history, carried over at continue-as-new and
    handed to subagents (docs/workspace.md)."""

    folder: str
    """The conversation's folder in the worker's WORKSPACE_ROOT."""
    queue: str | None
    """The task queue of the worker whose disk holds it; None: any worker's (shared
    storage, WORKSPACE_AFFINITY=0)."""
    worker: str = ""
    unavailable_after_s: float = 60.0
    """How long a file call waits for that worker before the model reads "workspace
    unavailable"."""


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
    program: ProgramPolicy | None = None
    """Set on a `run_program` call only: what the calls of its program may do."""
    workspace: str | None = None
    """Set by the workflow on a file tool call once the conversation's workspace is
    pinned: the folder it works in. None on the first file call: the worker that takes it
    makes the folder."""


@dataclass(frozen=True)
class ToolResult:
    """What a tool returned, or why it failed; the model sees both."""

    call_id: str
    name: str
    content: str
    is_error: bool = False
    workspace: WorkspacePin | None = None
    """Set on the result of a conversation's first file call only: the worker that ran
    it made the conversation's folder on its disk, and this pin leads every file call
    after it there."""


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


ROLES = ("user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    """One chat message: role is one of ROLES, "user", "assistant" or "tool"."""

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
class Usage:
    """What model calls used, and what they cost. Usages add up with `+`.

    Tokens are the provider's counts, or LiteLLM's where the provider reports none (the
    scripted model); the cost is from LiteLLM's price list: zero for the scripted model,
    None once any call was made by a model that list has no price for.
    """

    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    """Input tokens the provider served from its prompt cache (part of input_tokens)."""
    cost_usd: float | None = 0.0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: "Usage") -> "Usage":
        unknown = self.cost_usd is None or other.cost_usd is None
        return Usage(
            self.model_calls + other.model_calls,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_tokens + other.cached_tokens,
            None if unknown else self.cost_usd + other.cost_usd,
        )


@dataclass(frozen=True)
class Budget:
    """What a conversation may spend, its subagents included; None: no limit. Set in
    `SessionInput.budget`, changed with the `set_budget` update (docs/usage.md)."""

    model_calls: int | None = None
    tokens: int | None = None
    """Input plus output tokens."""
    cost_usd: float | None = None


@dataclass(frozen=True)
class TurnUsage:
    """What one turn spent; `turn` is the id of the `send_message` update that asked for it."""

    turn: str
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class UsageReport:
    """The `usage` query: the conversation's totals (earlier runs and subagents included),
    the latest turn's (None before the first), and the limits."""

    conversation: Usage
    last_turn: TurnUsage | None
    budget: Budget


@dataclass(frozen=True)
class SubagentUsage:
    """Signal `subagent_usage`: what a subagent's model call used, sent by the subagent to
    its parent, which adds it to its own totals."""

    workflow_id: str
    usage: Usage


@dataclass(frozen=True)
class PlanRequest:
    """Input of `plan_next_action`. `tools` None offers every tool the worker has;
    `stream_to` None: nobody watches this turn's text arrive, so it is not streamed;
    `can_delegate` adds the `delegate` tool and `can_run_programs` the `run_program` tool,
    both of which the workflow runs itself."""

    conversation: list[Message]
    tools: list[str] | None = None
    stream_to: DeltaTarget | None = None
    can_delegate: bool = False
    can_run_programs: bool = False


@dataclass(frozen=True)
class Plan:
    """The model's next step: tool calls to run, or a reply (which may end the chat).

    `context_dropped` counts the oldest messages of the request that did not fit the
    model's context budget; the workflow forgets them, which keeps its state bounded.
    `usage` is what the call used, `model` the model that answered (a fallback's, if the
    primary kept failing); histories written before they existed read as zero and "".
    """

    reply: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    end_chat: bool = False
    context_dropped: int = 0
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    files_offered: bool = False
    """The workspace's file tools were offered with this call: a delegation it asks for
    pins the workspace first, so the subagent works in its parent's files."""


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
    task: str | None = None
    """Set for a subagent: its parent's task, its only message; it ends once answered."""
    depth: int = 0
    """Delegations above this agent: 0 for a conversation, 1 for its subagents."""
    max_delegation_depth: int = MAX_DELEGATION_DEPTH
    subagent_timeout_s: float = SUBAGENT_TIMEOUT_S
    budget: Budget = field(default_factory=Budget)
    """Limits on model calls, tokens and cost; a subagent's is its share of what remains."""
    usage: Usage = field(default_factory=Usage)
    """What the conversation spent in earlier runs."""
    last_turn: TurnUsage | None = None
    """What the latest turn spent, carried over so the `usage` query still shows it."""
    allow_programs: bool = True
    """Offer `run_program`: the model may write a program that calls the tools
    (docs/programs.md). Subagents inherit it. False: the model calls tools one by one."""
    workspace: WorkspacePin | None = None
    """Where the conversation's files are, once a file call (or a delegation) asked: its
    parent's for a subagent, the previous run's after continue-as-new."""

    def check(self) -> None:
        """Raise InvalidSessionInput naming the first field whose value makes no sense."""
        at_least = {
            "max_model_steps_per_turn": 1,
            "continue_as_new_after_events": 1,
            "continue_as_new_after_bytes": 1,
            "earlier_messages": 0,
            "earlier_turns": 0,
            "depth": 0,
            "max_delegation_depth": 0,
        }
        for name, least in at_least.items():
            if (value := getattr(self, name)) < least:
                raise InvalidSessionInput(f"{name} must be at least {least}, not {value}")
        if not (math.isfinite(self.subagent_timeout_s) and self.subagent_timeout_s > 0):
            raise InvalidSessionInput(
                f"subagent_timeout_s must be a positive number of seconds, not "
                f"{self.subagent_timeout_s}"
            )
        if self.task is not None and not self.task.strip():
            raise InvalidSessionInput("task must not be empty")
        for number, message in enumerate(self.messages):
            if message.role not in ROLES:
                raise InvalidSessionInput(
                    f"messages[{number}].role must be one of {', '.join(ROLES)}, "
                    f"not {message.role[:40]!r}"
                )

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        # The data converter decodes a workflow's input with pydantic, before any workflow
        # code runs. Its ValidationError would fail the workflow task, again on every
        # retry, forever; InvalidSessionInput fails the workflow (workflow.py names it).
        # Only this type's decoding raises it: an activity result that does not decode
        # is a bug, and still fails just the task.
        return core_schema.no_info_wrap_validator_function(_decoded_or_refused, handler(source))


def check_session_input(value: object) -> None:
    """Raise InvalidSessionInput if `value`, a workflow's input, is not a sensible
    SessionInput. No input, null and bytes reach the workflow undecoded."""
    if not isinstance(value, SessionInput):
        got = "no input (or null)" if value is None else type(value).__name__
        raise InvalidSessionInput(f"expected an object, got {got}; send {{}} for the defaults")
    value.check()


class InvalidSessionInput(Exception):
    """A conversation's input that does not decode or makes no sense, from a client that
    is not ours: the workflow fails with this message. Not a ValueError, which pydantic
    would turn back into a ValidationError."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"Invalid SessionInput: {problem}")


def _decoded_or_refused(value: object, decode: Callable[[object], SessionInput]) -> SessionInput:
    try:
        return decode(value)
    except ValidationError as err:
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or 'the input'}: {error['msg']}"
            for error in err.errors()[:3]
        ]
        raise InvalidSessionInput("; ".join(problems)) from None


@dataclass(frozen=True)
class Transcript:
    """The conversation as held: the newest messages, and how many came before them.

    Earlier messages stay readable in the histories of earlier runs
    (docs/long-conversations.md).
    """

    messages: list[Message]
    ended: bool
    earlier_messages: int = 0


@dataclass(frozen=True)
class Subagent:
    """A child workflow started by a `delegate` call, as the `subagents` query shows it.

    `turn_update_id` is the `send_message` update whose turn delegated (empty in a
    subagent), so a client can say which subagents its message started.
    """

    workflow_id: str
    task: str
    turn_update_id: str


Status = Literal["idle", "working", "awaiting_approval", "ended"]


# --- The event stream: what a client watches while a turn runs (docs/streaming.md) ---
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
