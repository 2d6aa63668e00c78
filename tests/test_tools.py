"""The tools on their own: what the model gets back for good and bad input."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from activities import AgentActivities
from contract import ToolCall
from llm_client import LlmSettings
from tools import NoteBook, ToolError, calculate, demo_weather


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
