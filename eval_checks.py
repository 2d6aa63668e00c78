"""The checks a case file can name: pydantic-evals evaluators of what a conversation did.

Each reads the `ConversationRecord` that `eval_record.py` read from the replies and
the event history, and says pass or fail, with why when it fails. In `evals/cases.yaml`:

    evaluators:
      - ReplyContains: "100"                      # one argument: the first field
      - ToolCalled: {tool: calculator, arguments: {expression: "25 * 4"}}
      - MaxModelCalls: 2

Replies are compared case-insensitively; `turn` picks a turn (default: the last).
"""

from __future__ import annotations

import json
import re
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

from pydantic_evals.evaluators import EvaluationReason, Evaluator, EvaluatorContext
from pydantic_evals.evaluators.llm_as_a_judge import judge_output

from eval_conversation import Conversation
from eval_record import ConversationRecord, ToolUse, Turn

Context = EvaluatorContext[Conversation, ConversationRecord, Any]


class _Check(Evaluator[Conversation, ConversationRecord, Any]):
    """Names itself after what it checks, e.g. `ToolCalled(calculator)`, so that a failure
    line says which check of the case failed."""

    @abstractmethod
    def evaluate(self, ctx: Context) -> Any: ...

    def subject(self) -> str:
        return ""

    def get_default_evaluation_name(self) -> str:
        return f"{type(self).__name__}({self.subject()})"


def _verdict(passed: bool, why: str) -> EvaluationReason:
    return EvaluationReason(value=passed, reason=None if passed else why)


def _turn(record: ConversationRecord, number: int) -> Turn | None:
    """Turn `number` (from 1; negative counts from the end), or None if there is none."""
    index = number - 1 if number > 0 else number
    in_range = number != 0 and -len(record.turns) <= index < len(record.turns)
    return record.turns[index] if in_range else None


def _said(turn: Turn | None) -> str:
    if turn is None:
        return "no such turn"
    return f"reply {_short(turn.reply)}" if not turn.error else f"refused: {_short(turn.error)}"


def _short(text: str, limit: int = 160) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _calls(uses: list[ToolUse]) -> str:
    """The calls, one phrase each, for a failure's reason."""
    if not uses:
        return "no tool calls"
    phrases = [
        f"{u.name} {json.dumps(u.arguments, ensure_ascii=False)} -> {u.outcome}" for u in uses
    ]
    return "calls: " + "; ".join(phrases)[:300]


@dataclass(repr=False)
class ReplyContains(_Check):
    """The reply contains `value`."""

    value: str
    turn: int = -1
    case_sensitive: bool = False

    def subject(self) -> str:
        return repr(self.value) + ("" if self.turn == -1 else f", turn {self.turn}")

    def evaluate(self, ctx: Context) -> EvaluationReason:
        turn = _turn(ctx.output, self.turn)
        reply, value = (turn.reply if turn else ""), self.value
        if not self.case_sensitive:
            reply, value = reply.lower(), value.lower()
        return _verdict(value in reply, f"{_said(turn)} does not contain {self.value!r}")


@dataclass(repr=False)
class ReplyMatches(_Check):
    """The reply matches the regular expression `pattern` somewhere (re.search)."""

    pattern: str
    turn: int = -1
    case_sensitive: bool = False

    def subject(self) -> str:
        return repr(self.pattern) + ("" if self.turn == -1 else f", turn {self.turn}")

    def evaluate(self, ctx: Context) -> EvaluationReason:
        turn = _turn(ctx.output, self.turn)
        flags = 0 if self.case_sensitive else re.IGNORECASE
        found = turn is not None and re.search(self.pattern, turn.reply, flags) is not None
        return _verdict(found, f"{_said(turn)} does not match {self.pattern!r}")


@dataclass(repr=False)
class Refused(_Check):
    """The message was refused, or its turn failed, with an error that matches `pattern`
    (re.search, case-insensitive); any error if empty."""

    pattern: str = ""
    turn: int = -1

    def subject(self) -> str:
        return repr(self.pattern)

    def evaluate(self, ctx: Context) -> EvaluationReason:
        turn = _turn(ctx.output, self.turn)
        error = turn.error if turn else ""
        matches = bool(error) and re.search(self.pattern, error, re.IGNORECASE) is not None
        return _verdict(matches, f"{_said(turn)}, not refused with {self.pattern!r}")


@dataclass(repr=False)
class ToolCalled(_Check):
    """The model asked for `tool` (its subagents' calls count too, and the calls its
    programs made), with arguments that include `arguments` if given, whose outcome ("ok",
    "error", "not run") is `outcome` if given; `count` times exactly if given, else at
    least once."""

    tool: str
    arguments: dict[str, Any] | None = None
    outcome: str | None = None
    count: int | None = None

    def subject(self) -> str:
        wanted = self.tool
        if self.arguments is not None:
            wanted += f" {json.dumps(self.arguments, ensure_ascii=False)}"
        if self.outcome is not None:
            wanted += f" -> {self.outcome}"
        return wanted + ("" if self.count is None else f" x{self.count}")

    def evaluate(self, ctx: Context) -> EvaluationReason:
        found = [use for use in ctx.output.tools if self._matches(use)]
        passed = len(found) == self.count if self.count is not None else bool(found)
        wanted = self.subject().removesuffix(f" x{self.count}")
        if self.count is None:
            why = f"no call of {wanted}"
        else:
            why = f"{len(found)} calls of {wanted}, not {self.count}"
        return _verdict(passed, f"{why}; {_calls(ctx.output.tools)}")

    def _matches(self, use: ToolUse) -> bool:
        if use.name != self.tool or self.outcome not in (None, use.outcome):
            return False
        if self.arguments is None:
            return True
        given = use.arguments if isinstance(use.arguments, dict) else {}
        return all(name in given and given[name] == v for name, v in self.arguments.items())


@dataclass(repr=False)
class ToolNotCalled(_Check):
    """The model never asked for `tool` (None: for any tool)."""

    tool: str | None = None

    def subject(self) -> str:
        return self.tool or "any"

    def evaluate(self, ctx: Context) -> EvaluationReason:
        found = [u for u in ctx.output.tools if self.tool in (None, u.name)]
        return _verdict(not found, _calls(found))


@dataclass(repr=False)
class ToolNotRun(_Check):
    """No call of `tool` (None: of any tool) ran: each was denied or refused, if asked."""

    tool: str | None = None

    def subject(self) -> str:
        return self.tool or "any"

    def evaluate(self, ctx: Context) -> EvaluationReason:
        ran = [
            u for u in ctx.output.tools if self.tool in (None, u.name) and u.outcome != "not run"
        ]
        return _verdict(not ran, _calls(ran))


@dataclass(repr=False)
class MaxModelCalls(_Check):
    """At most `limit` model calls in the whole conversation, subagents included."""

    limit: int

    def subject(self) -> str:
        return str(self.limit)

    def evaluate(self, ctx: Context) -> EvaluationReason:
        calls = ctx.output.model_calls
        return _verdict(calls <= self.limit, f"{calls} model calls, more than {self.limit}")


@dataclass(repr=False)
class ApprovalRequested(_Check):
    """A call of `tool` (None: of any tool) waited for a person's decision."""

    tool: str | None = None

    def subject(self) -> str:
        return self.tool or "any"

    def evaluate(self, ctx: Context) -> EvaluationReason:
        waited = [u for u in ctx.output.tools if u.needs_approval and self.tool in (None, u.name)]
        return _verdict(bool(waited), f"no call waited for approval; {_calls(ctx.output.tools)}")


@dataclass(repr=False)
class NotesSaved(_Check):
    """The notes file holds exactly these notes for the conversation, each once."""

    notes: list[str]

    def subject(self) -> str:
        return ", ".join(repr(note) for note in self.notes) or "none"

    def evaluate(self, ctx: Context) -> EvaluationReason:
        saved = ctx.output.notes
        return _verdict(saved == self.notes, f"the notes file holds {saved!r}")


@dataclass(repr=False)
class ChatEnded(_Check):
    """The model ended the chat (it called `end_chat`)."""

    def evaluate(self, ctx: Context) -> EvaluationReason:
        return _verdict(
            ctx.output.ended, f"the model did not end the chat; {_said(_turn(ctx.output, -1))}"
        )


@dataclass(repr=False)
class Judge(_Check):
    """An LLM judge's verdict on the replies against `rubric`: pydantic-evals' judge, with
    `model` a pydantic-ai model name ("openai:gpt-4o-mini"), which `evals.py --judge`
    gives. With no model it gives no verdict: offline, the case is judged on the rest."""

    rubric: str
    model: str | None = None

    def subject(self) -> str:
        return _short(self.rubric, 40)

    async def evaluate(self, ctx: Context) -> EvaluationReason | dict[str, bool]:
        if not self.model:
            return {}
        replies = "\n".join(
            f"user: {t.message}\nagent: {t.reply or t.error}" for t in ctx.output.turns
        )
        grading = await judge_output(replies, self.rubric, self.model)
        return _verdict(grading.pass_, grading.reason)


CHECKS = (
    ReplyContains,
    ReplyMatches,
    Refused,
    ToolCalled,
    ToolNotCalled,
    ToolNotRun,
    MaxModelCalls,
    ApprovalRequested,
    NotesSaved,
    ChatEnded,
    Judge,
)
"""Every check a case file may name."""
