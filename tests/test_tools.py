"""The tools on their own: what the model gets back for good and bad input, and how a
typed function becomes a tool."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import Field
from temporalio.testing import ActivityEnvironment

from activities import AgentActivities
from contract import MAX_TOOL_RESULT_CHARS, ToolCall, truncated
from function_tools import function_tool, module_tools, tool
from llm_client import LlmSettings
from toolbox import ToolError, toolset
from tools import NoteBook, calculate, demo_weather, registry


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("25 * 4", "100"),
        ("2 ** 10", "1024"),
        ("(1 + 2) * -3", "-9"),
        ("7 / 2", "3.5"),
        ("10 / 2", "5"),
        ("7 // 2", "3"),
        ("7 % 4", "3"),
        ("0.1 + 0.2", "0.3"),
    ],
)
def test_calculator_evaluates_arithmetic(expression: str, result: str):
    assert calculate(expression) == result


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("9**9**9", "more than 100 digits"),
        ("'a'*10**9", "only numbers"),
        ("__import__('os')", "only numbers"),
        ("().__class__", "only numbers"),
        ("[x for x in range(10**9)]", "only numbers"),
        ("10**100 * 10**100", "more than 100 digits"),
        ("1e308 * 10", "too large"),
        ("1 / 0", "division by zero"),
        ("(-8) ** 0.5", "not a real number"),
        ("2 ^ 10", r"write 2 \*\* 10"),
        ("1 +", "not an arithmetic expression"),
        ("1" * 201, "longer than 200"),
        ("True + 1", "only numbers"),
        ("1e999", "a number in the expression is too large"),
        ("-1e999", "a number in the expression is too large"),
        ("1e309 - 1e309", "a number in the expression is too large"),
        ("1" * 150, "a number in the expression has more than 100 digits"),
        ("-" + "9" * 120 + " + 1", "a number in the expression has more than 100 digits"),
        ("0x" + "f" * 90, "a number in the expression has more than 100 digits"),
        ("0.5 ** -2000", "too large"),
        ("10 ** 99 / 1e-300", "too large"),
    ],
)
def test_calculator_refuses_unsafe_or_huge_input_quickly(expression: str, complaint: str):
    started = time.perf_counter()
    with pytest.raises(ToolError, match=complaint):
        calculate(expression)
    assert time.perf_counter() - started < 0.5  # refused, not computed


def test_weather_is_labelled_demo_data_and_stable_per_city():
    report = demo_weather("paris")
    assert report.startswith("[demo data] Paris:")
    assert demo_weather("  PARIS ") == report
    with pytest.raises(ToolError):
        demo_weather("   ")


def _activity_environment(activity_id: str) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, workflow_id="chat-1", workflow_run_id="run-1", activity_id=activity_id
    )
    return env


async def test_save_note_is_written_once_when_the_same_activity_runs_twice(tmp_path: Path):
    notes_file = tmp_path / "notes.jsonl"
    activities = AgentActivities(LlmSettings(), notes_file)
    call = ToolCall("c1", "save_note", json.dumps({"text": "buy milk"}))

    first = await _activity_environment("7").run(activities.execute_tool, call)
    retried = await _activity_environment("7").run(activities.execute_tool, call)
    another = await _activity_environment("9").run(activities.execute_tool, call)

    assert first == retried and first.content == "Saved your note: buy milk"
    assert another.content == first.content
    notes = [json.loads(line) for line in notes_file.read_text().splitlines()]
    assert [note["text"] for note in notes] == ["buy milk", "buy milk"]  # activities 7 and 9
    assert notes[0]["session"] == "chat-1"


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_a_note_with_a_unicode_line_separator_is_written_once_when_retried(
    tmp_path: Path, separator: str
):
    notebook = NoteBook(tmp_path / "notes.jsonl")
    text = f"line one{separator}line two"

    _activity_environment("7").run(notebook.save, text)
    _activity_environment("7").run(notebook.save, text)

    records = notebook.path.read_text(encoding="utf-8").split("\n")
    assert [json.loads(record)["text"] for record in records if record] == [text]


def test_a_note_after_a_line_torn_by_a_crash_is_a_record_of_its_own(tmp_path: Path):
    notebook = NoteBook(tmp_path / "notes.jsonl")
    torn = '{"key": "chat-1/run-1/3", "session": "chat-1", "te'
    notebook.path.write_text(torn)

    _activity_environment("7").run(notebook.save, "buy milk")
    _activity_environment("7").run(notebook.save, "buy milk")  # the retry finds it

    lines = notebook.path.read_text().split("\n")
    assert lines[0] == torn and lines[2:] == [""]
    assert json.loads(lines[1])["text"] == "buy milk"


# --- Typed functions as tools (function_tools.py) ------------------------------------------


@tool(needs_approval=True)
def book_table(
    guests: Annotated[int, Field(ge=1, le=12, description="people at the table")],
    day: Literal["fri", "sat"],
    note: str = "",
) -> dict:
    """Book a table.

    This paragraph is for the reader, not the model."""
    return {"guests": guests, "day": day, "note": note}


async def test_a_typed_function_is_offered_with_the_schema_of_its_signature():
    booking = function_tool(book_table, source="my_tools")

    assert booking.schema()["function"] == {
        "name": "book_table",
        "description": "Book a table.",
        "parameters": {
            "type": "object",
            "properties": {
                "guests": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 12,
                    "description": "people at the table",
                },
                "day": {"type": "string", "enum": ["fri", "sat"]},
                "note": {"type": "string", "default": ""},
            },
            "required": ["guests", "day"],
            "additionalProperties": False,
        },
    }
    assert booking.needs_approval and booking.source == "my_tools"
    assert book_table(2, "fri") == {"guests": 2, "day": "fri", "note": ""}  # still a function
    # What is not text comes back as JSON.
    assert await booking.call({"guests": 2, "day": "sat"}) == '{"guests":2,"day":"sat","note":""}'


async def test_bad_arguments_go_back_to_the_model_with_their_reason_not_their_value():
    # Issue 18, item 8: a 7 979-character expression lost "is too long" to the cap.
    env, activities = _activity_environment("1"), AgentActivities(LlmSettings(), Path("x"))
    long_sum = json.dumps({"expression": "1+" * 3989 + "1"})

    too_long = await env.run(activities.execute_tool, ToolCall("c1", "calculator", long_sum))
    with pytest.raises(ToolError) as wrong:
        await function_tool(book_table).call({"guests": 40, "day": "sun", "extra": 1})

    assert too_long.is_error
    assert too_long.content == (
        "invalid arguments for calculator: expression: String should have at most 200 characters"
    )
    assert str(wrong.value) == (
        "invalid arguments for book_table: guests: Input should be less than or equal to 12; "
        "day: Input should be 'fri' or 'sat'; extra: Extra inputs are not permitted"
    )


def test_an_error_longer_than_the_cap_keeps_its_reason_at_the_end():
    error = "x" * 20_000 + " is too long"

    capped = truncated(error, error=True)

    assert capped.endswith(" is too long") and "[12012 characters cut]" in capped
    assert len(capped) < MAX_TOOL_RESULT_CHARS + 40
    assert truncated("y" * 9_000).endswith("[truncated: 1000 more characters not shown]")


def untyped(a: int, b) -> int:  # type: ignore[no-untyped-def]
    """Add."""
    return a + b


def many(*numbers: int) -> int:
    """Add them all."""
    return sum(numbers)


def undocumented(a: int) -> int:
    return a


@pytest.mark.parametrize(
    ("function", "complaint"),
    [
        (untyped, "tool test_tools.untyped: parameter 'b' has no type hint"),
        (many, "tool test_tools.many: parameter 'numbers' must be a plain named parameter"),
        (undocumented, "tool test_tools.undocumented has no docstring"),
    ],
)
def test_a_function_that_cannot_be_a_tool_is_refused_with_its_name(function, complaint: str):
    with pytest.raises(ValueError, match=re.escape(complaint)):
        function_tool(function)


@pytest.mark.parametrize(
    ("source", "complaint"),
    [
        ("import no_such_package", "TOOL_MODULES: {name} does not import: ModuleNotFoundError"),
        ("x = 1", "TOOL_MODULES: {name} declares no tool (mark one with @tool)"),
        (
            "from function_tools import tool\n@tool\ndef weather(city: str) -> str:\n"
            '    """Real weather."""\n    return city',
            "two tools are named 'weather': one from built in, one from {name}",
        ),
    ],
)
def test_a_tool_module_that_cannot_be_loaded_is_refused_with_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, complaint: str
):
    name = f"user_tools_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(source + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(ValueError, match=re.escape(complaint.format(name=name))):
        toolset(registry(tmp_path / "notes.jsonl").values(), module_tools(name))
