"""What the activity runs: a `Tool`, whatever it came from, and which tools wait for a person.

Every source of tools ends up in this one shape: a name, a description, a JSON Schema of
its arguments and an async call. `function_tools.py` makes tools of typed Python
functions (the built-in ones in `tools.py`, and those of the modules TOOL_MODULES names),
`mcp_tools.py` of the tools MCP servers list. `execute_tool` in `activities.py` is the only
caller: a tool runs inside an activity, never in the workflow. The worker's set of tools
lives in the activities too, never in workflow code, so a replay never depends on which
tools a worker or a server offers today.

A tool raises `ToolError` for a failure the model should see and can correct (bad
arguments, a bad expression, an MCP result marked `isError`). Anything else it raises is a
bug or an outage, and Temporal retries it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# What OpenAI-style function calling accepts as a function's name.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ToolError(Exception):
    """An expected tool failure: its message goes back to the model as the tool result."""


@dataclass(frozen=True)
class Tool:
    """One tool as the activity runs it."""

    name: str
    description: str
    parameters: dict[str, Any]
    """JSON Schema of the arguments object: offered to the model, and checked by `call`."""
    call: Callable[[Any], Awaitable[str]]
    """Runs the tool on the model's arguments (the JSON it wrote, parsed); returns the text
    the model reads. Checks the arguments first: bad ones raise ToolError."""
    needs_approval: bool = False
    """Its calls wait for a person's decision, unless the worker's policy says otherwise."""
    source: str = "built in"
    """Where it came from, for the worker's banner and its error messages."""

    def schema(self) -> dict[str, Any]:
        """The tool in the function-calling format LiteLLM sends to every provider."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


def toolset(*sources: Iterable[Tool]) -> dict[str, Tool]:
    """The tools of every source, by name. ValueError naming both if two share a name, or
    naming one whose name a provider would refuse."""
    tools: dict[str, Tool] = {}
    for tool in (tool for source in sources for tool in source):
        if not _TOOL_NAME.match(tool.name):
            raise ValueError(
                f"tool name {tool.name!r} ({tool.source}) is not 1 to 64 letters, digits, "
                "'_' or '-': providers refuse it"
            )
        if clash := tools.get(tool.name):
            raise ValueError(
                f"two tools are named {tool.name!r}: one from {clash.source}, "
                f"one from {tool.source}; rename one"
            )
        tools[tool.name] = tool
    return tools


def describe_tools(tools: Mapping[str, Tool]) -> list[str]:
    """The tools by source, one line each, for the worker's start banner."""
    by_source: dict[str, list[str]] = {}
    for tool in tools.values():
        by_source.setdefault(tool.source, []).append(tool.name)
    return [f"Tools ({source}): {', '.join(names)}" for source, names in by_source.items()]


@dataclass(frozen=True)
class ApprovalPolicy:
    """Which tools' calls wait for a person, and for how long: the worker's decision.

    `plan_next_action` stamps it on every tool call it returns, so the decision is in the
    history and a replay never depends on how a worker is configured today.
    """

    tools: frozenset[str]
    timeout_s: float | None = None
    """How long a call waits for its decision; None: as long as it takes."""

    @classmethod
    def declared(cls, tools: Mapping[str, Tool]) -> ApprovalPolicy:
        """Each tool's own `needs_approval`, no expiry."""
        return cls(frozenset(name for name, tool in tools.items() if tool.needs_approval))

    @classmethod
    def from_env(cls, env: Mapping[str, str], tools: Mapping[str, Tool]) -> ApprovalPolicy:
        """APPROVAL_REQUIRED_TOOLS (comma-separated; empty: none; unset: each tool's own
        declaration) and APPROVAL_TIMEOUT_S; ValueError naming the variable if malformed."""
        names = env.get("APPROVAL_REQUIRED_TOOLS")
        gated = cls.declared(tools).tools
        if names is not None:
            gated = frozenset(name.strip() for name in names.split(",") if name.strip())
        if unknown := sorted(gated - tools.keys()):
            raise ValueError(
                f"APPROVAL_REQUIRED_TOOLS names unknown tools: {', '.join(unknown)}; "
                f"the tools are {', '.join(tools)}"
            )
        timeout = env.get("APPROVAL_TIMEOUT_S", "").strip()
        try:
            timeout_s = float(timeout) if timeout else None
        except ValueError:
            raise ValueError(f"APPROVAL_TIMEOUT_S={timeout!r} is not a number") from None
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError("APPROVAL_TIMEOUT_S must be a positive number of seconds")
        return cls(gated, timeout_s)

    def describe(self) -> str:
        """One line for the worker's start banner."""
        if not self.tools:
            return "Approval: no tool waits for a person"
        waits = f"up to {self.timeout_s:g} s" if self.timeout_s else "without a time limit"
        return f"Approval: calls of {', '.join(sorted(self.tools))} wait for a person, {waits}"
