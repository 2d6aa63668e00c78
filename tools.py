"""The built-in tools: typed functions, each declared with `@tool` (`function_tools.py`).

Their signatures are their schemas (the limits included), their docstrings' first
paragraphs what the model reads. `registry` makes the worker's built-in set of them; a
user adds their own without editing this file (TOOL_MODULES, MCP_CONFIG: docs/tools.md).

A tool raises `ToolError` for a failure the model should see and can correct (a bad
expression, an empty city). Anything else it raises is a bug, and Temporal retries it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import operator
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field
from temporalio import activity

from function_tools import function_tool, tool
from program import ARITHMETIC
from toolbox import Tool, ToolError, toolset

try:
    import fcntl  # POSIX: serialises note writers from several worker processes.
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

MAX_EXPRESSION_CHARS = 200
MAX_RESULT_DIGITS = 100
MAX_NOTE_CHARS = 2_000
MAX_CITY_CHARS = 100


def registry(notes_file: Path) -> dict[str, Tool]:
    """The built-in tools, by name: calculator, weather, and save_note into `notes_file`."""
    return toolset(
        [
            function_tool(calculate),
            function_tool(demo_weather),
            function_tool(NoteBook(notes_file).save),
        ]
    )


# --- calculator: a small AST walker, so no Python but arithmetic ever runs ------------

_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


@tool(name="calculator")
def calculate(expression: Annotated[str, Field(max_length=MAX_EXPRESSION_CHARS)]) -> str:
    """Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses.

    Safely: names, calls, attributes and huge numbers are refused."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ToolError(f"'{expression}' is not an arithmetic expression") from None
    value = _evaluate(tree.body)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.12g}"
    return str(value)


def _evaluate(node: ast.expr) -> int | float:
    # Every number the walker produces passes `_checked`, literals too: `1e999` parses
    # to inf and a 150-digit literal is as big as any result.
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(node.value, "a number in the expression")
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            result = ARITHMETIC[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("the result is too large") from None
        return _checked(result)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise ToolError("'^' is not a power here; write 2 ** 10")
    raise ToolError(
        "only numbers, + - * / // % ** and parentheses are allowed "
        f"(found {type(node).__name__.lower()})"
    )


def _check_power(base: float, exponent: float) -> None:
    # Estimate the size before computing: 9 ** 9 ** 9 must fail in microseconds.
    if abs(base) > 1 and exponent * math.log10(abs(base)) > MAX_RESULT_DIGITS:
        raise ToolError(f"the result would have more than {MAX_RESULT_DIGITS} digits")


def _checked(value: Any, what: str = "the result") -> int | float:
    if isinstance(value, complex):
        raise ToolError(f"{what} is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError(f"{what} is too large")
    if isinstance(value, int) and abs(value) >= 10**MAX_RESULT_DIGITS:
        raise ToolError(f"{what} has more than {MAX_RESULT_DIGITS} digits")
    return value


# --- weather: demo data ---------------------------------------------------------------

_CONDITIONS = ["sunny", "partly cloudy", "overcast", "light rain", "windy", "snow showers"]


@tool(name="weather")
def demo_weather(city: Annotated[str, Field(min_length=1, max_length=MAX_CITY_CHARS)]) -> str:
    """DEMO DATA, not a real forecast: made-up but stable weather for a city.

    Stable per city, and labelled as demo data wherever it shows."""
    name = " ".join(city.split()).title()
    if not name:
        raise ToolError("the city name is empty")
    digest = hashlib.sha256(name.lower().encode()).digest()
    celsius = digest[0] % 36 - 5
    return f"[demo data] {name}: {celsius}°C, {_CONDITIONS[digest[1] % len(_CONDITIONS)]}."


# --- save_note: an idempotent append ----------------------------------------------------


@dataclass(frozen=True)
class NoteBook:
    """Notes as JSON lines. Each note is keyed by the activity that wrote it, so a retried
    or re-executed activity (say, after a worker crash) never writes it twice."""

    path: Path

    # It writes to the user's file: a person says yes first.
    @tool(name="save_note", needs_approval=True)
    def save(self, text: Annotated[str, Field(min_length=1, max_length=MAX_NOTE_CHARS)]) -> str:
        """Save a note for the user in their notes file."""
        info = activity.info()
        # Activity ids restart in each run after continue-as-new, so the run id is in the key.
        key = f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+", encoding="utf-8") as notes:
            if fcntl is not None:
                fcntl.flock(notes, fcntl.LOCK_EX)
            notes.seek(0)
            held = notes.read()
            if key not in _keys(held):
                record = {"key": key, "session": info.workflow_id, "text": text}
                # A line torn by a crash mid-write must not swallow this record too.
                torn = "\n" if held and not held.endswith("\n") else ""
                notes.write(torn + json.dumps(record, ensure_ascii=False) + "\n")
                notes.flush()
                os.fsync(notes.fileno())
        return f"Saved your note: {text}"


def _keys(notes: str) -> set[str]:
    # Records end in "\n", which json.dumps always escapes inside a text; str.splitlines
    # would also cut a record at a U+2028, U+2029 or U+0085 that a note contains.
    keys = set()
    for line in notes.split("\n"):
        try:
            keys.add(json.loads(line)["key"])
        except (ValueError, KeyError, TypeError):
            continue  # A hand-edited or torn line is not ours to judge.
    return keys
