"""The contract of the event history: every dataclass that crosses the workflow's edge.

Activity inputs and results, update and query payloads, what one run hands the next at
continue-as-new, and the events of the conversation's stream: all are stored (or sent)
as JSON, and histories written today must read tomorrow. So they stay small, typed and
stable: a new field gets a default, and no field changes its meaning. `workflow.py`
is the loop that exchanges them.
"""

from dataclasses import dataclass, field
from typing import Literal

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
    `stream_to` None: nobody watches this turn's text arrive, so it is not streamed;
    `can_delegate` adds the `delegate` tool, which the workflow runs itself."""

    conversation: list[Message]
    tools: list[str] | None = None
    stream_to: DeltaTarget | None = None
    can_delegate: bool = False


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
    task: str | None = None
    """Set for a subagent: its parent's task, its only message; it ends once answered."""
    depth: int = 0
    """Delegations above this agent: 0 for a conversation, 1 for its subagents."""
    max_delegation_depth: int = MAX_DELEGATION_DEPTH
    subagent_timeout_s: float = SUBAGENT_TIMEOUT_S


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
