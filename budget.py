"""Budgets: whether a conversation may make its next model call, in plain arithmetic.

Workflow-space code: the workflow asks before every model call, and replay asks again,
so there is no clock, no randomness and no I/O here; every answer follows from the
`Budget` and the `Usage` passed in. Like `contract.py`, it passes through the sandbox.

"Reached" is judged before a call, on what the calls before it used: a call that starts
with room left runs to its end, so tokens and cost can end past their limit by what that
one call (or each subagent's call in flight) used. A model call limit holds exactly.
"""

import math

from contract import Budget, Usage


def budget_problem(budget: Budget) -> str | None:
    """Why `budget` makes no sense, in one line; None if it does."""
    for name in ("model_calls", "tokens"):
        value = getattr(budget, name)
        if value is not None and (type(value) is not int or value < 0):
            return f"The {name} limit must be a whole number, 0 or more (got {value!r})."
    cost = budget.cost_usd
    if cost is not None and not (isinstance(cost, (int, float)) and math.isfinite(cost)):
        return f"The cost_usd limit must be a number of US dollars (got {cost!r})."
    if cost is not None and cost < 0:
        return f"The cost_usd limit must be 0 or more (got {cost!r})."
    return None


def limit_reached(budget: Budget, spent: Usage) -> str | None:
    """The limit that `spent` has reached, said as the user reads it; None while every
    limit has room. An unknown cost counts as reached: a cost limit cannot hold then."""
    if budget.model_calls is not None and spent.model_calls >= budget.model_calls:
        plural = "" if budget.model_calls == 1 else "s"
        return f"{budget.model_calls} model call{plural} (used: {spent.model_calls})"
    if budget.tokens is not None and spent.tokens >= budget.tokens:
        return f"{budget.tokens} tokens (used: {spent.tokens})"
    if budget.cost_usd is not None:
        if spent.cost_usd is None:
            return (
                f"{usd(budget.cost_usd)}, which cannot hold: a model with no price in "
                "LiteLLM's list answered, so the cost is unknown"
            )
        if spent.cost_usd >= budget.cost_usd:
            return f"{usd(budget.cost_usd)} (used: {usd(spent.cost_usd)})"
    return None


def refusal(budget: Budget, spent: Usage, session_id: str, subagent: bool) -> str | None:
    """The reply that ends a turn whose budget is reached, or None if there is room."""
    reached = limit_reached(budget, spent)
    if reached is None:
        return None
    if subagent:
        return (
            "This subagent stopped before its next model call: its share of the "
            f"conversation's budget, {reached}, is used up."
        )
    return (
        f"I stopped before the next model call: this conversation has reached its budget "
        f"of {reached}. To go on, raise the limit (uv run start_workflow.py --session "
        f"{session_id} --budget calls=N,tokens=N,cost=USD, or none for no limit) and send "
        "your message again."
    )


def shares(budget: Budget, spent: Usage, count: int) -> list[Budget]:
    """What remains of `budget`, split evenly among `count` subagents started by one model
    reply, so that together they cannot spend more than their parent has left."""

    def split(limit: int | None, used: int) -> list[int | None]:
        if limit is None:
            return [None] * count
        left = max(limit - used, 0)
        return [left // count + (i < left % count) for i in range(count)]

    if budget.cost_usd is None:
        costs: list[float | None] = [None] * count
    else:  # An unknown cost leaves nothing known to remain.
        left = 0.0 if spent.cost_usd is None else max(budget.cost_usd - spent.cost_usd, 0.0)
        costs = [left / count] * count
    return [
        Budget(calls, tokens, cost)
        for calls, tokens, cost in zip(
            split(budget.model_calls, spent.model_calls),
            split(budget.tokens, spent.tokens),
            costs,
            strict=True,
        )
    ]


def usd(amount: float) -> str:
    """Dollars as people read them, small amounts too: $0, $0.000006, $1.50."""
    if amount == 0:
        return "$0"
    return f"${amount:.2f}" if amount >= 0.01 else f"${amount:.6f}"
