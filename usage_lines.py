"""What the chat client says about spending: a usage line, and the `--budget` flag.

Lines go to stderr, as the client's other notices do: stdout carries the replies alone.
The numbers come from the workflow's `usage` query; limits change through its
`set_budget` update, whose validator has the last word (docs/usage.md).
"""

from __future__ import annotations

import dataclasses
import sys
from datetime import timedelta

from temporalio.client import WorkflowHandle, WorkflowQueryFailedError, WorkflowUpdateFailedError
from temporalio.service import RPCError

from budget import budget_problem, usd
from contract import Budget, Usage, UsageReport
from workflow import DurableAgentWorkflow

BUDGET_LIMITS = {"calls": "model_calls", "tokens": "tokens", "cost": "cost_usd"}
"""`--budget calls=N,tokens=N,cost=USD`: the flag's names for the `Budget` fields."""


def usage_line(what: str, usage: Usage) -> str:
    """One line of what `what` ("this turn", "the conversation") spent."""
    cost = "cost unknown" if usage.cost_usd is None else usd(usage.cost_usd)
    calls = f"{usage.model_calls} model call{'' if usage.model_calls == 1 else 's'}"
    return (
        f"(usage, {what}: {calls}, {usage.input_tokens} tokens in "
        f"({usage.cached_tokens} cached), {usage.output_tokens} out, {cost})"
    )


async def print_usage(handle: WorkflowHandle, turn: bool = True, total: bool = True) -> None:
    """The latest turn's usage and the conversation's; nothing if no worker answers (a
    query needs one, and the client says so elsewhere)."""
    try:
        report: UsageReport = await handle.query(
            DurableAgentWorkflow.usage, rpc_timeout=timedelta(seconds=2)
        )
    except (RPCError, WorkflowQueryFailedError):
        return
    if turn and report.last_turn is not None:
        print(usage_line("this turn", report.last_turn.usage), file=sys.stderr)
    if total:
        print(usage_line("the conversation", report.conversation), file=sys.stderr)


def parse_budget(spec: str, current: Budget) -> Budget:
    """`calls=20,tokens=100000,cost=0.5` over the current limits; `none` lifts one.
    Raises ValueError with the message the user reads."""
    changed: dict[str, int | float | None] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = (word.strip().lower() for word in item.partition("="))
        if name not in BUDGET_LIMITS or not value:
            raise ValueError(f"--budget takes calls=N, tokens=N, cost=USD (or none), not {item!r}")
        field = BUDGET_LIMITS[name]
        try:
            changed[field] = None if value == "none" else (float if name == "cost" else int)(value)
        except ValueError:
            raise ValueError(f"--budget: {item!r} is not a number") from None
    budget = dataclasses.replace(current, **changed)
    if problem := budget_problem(budget):
        raise ValueError(problem)
    return budget


async def set_budget(handle: WorkflowHandle, spec: str) -> None:
    """--budget: change the session's limits, then say what they are."""
    try:
        current: UsageReport = await handle.query(
            DurableAgentWorkflow.usage, rpc_timeout=timedelta(seconds=10)
        )
    except (RPCError, WorkflowQueryFailedError) as err:
        raise ValueError(f"Cannot read the budget of session {handle.id}: {err}") from None
    budget = parse_budget(spec, current.budget)
    try:
        await handle.execute_update(DurableAgentWorkflow.set_budget, budget)
    except WorkflowUpdateFailedError as err:
        raise ValueError(f"The budget was refused: {err.cause or err}") from None
    limits = ", ".join(
        f"{name} {'none' if (value := getattr(budget, field)) is None else value}"
        for name, field in BUDGET_LIMITS.items()
    )
    print(f"Budget of session {handle.id}: {limits}", file=sys.stderr)
